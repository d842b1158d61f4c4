"""The row driver of the Numba kernels: whole rows per thread, or long rows split.

A kernel runs its row function once per row. With many rows each thread takes whole
rows (``prange`` over rows). With few long rows (fewer than SPLIT_ROWS rows of at least
4 * SPLIT_MIN_CHUNK classes) that left threads idle (1 x 2**20 ran on one thread), so
the kernel then walks its rows in order and each row helper runs over chunks of the
row on all threads, through ``over_chunks``. Partial results are merged in chunk
order, so a result does not depend on the thread count; the rule and the chunk lengths
are the Cython backend's (``rows.h``, ``row_functions_typed.h``), so both backends add
the same partials.

A kernel takes the chunk count as its last argument, ``chunks`` (``kernel_chunks``, which
the backend's call wrapper appends), and is written as::

    @njit(**JIT_PARALLEL)
    def my_kernel(x, out, chunks):
        if chunks is None:  # WHOLE_ROW
            for i in prange(x.shape[0]):
                _my_row(x[i], out[i], chunks)
        else:
            for i in range(x.shape[0]):
                _my_row(x[i], out[i], chunks)

with ``_my_row`` (``JIT_ROW``) calling ``over_chunks("row_sumexp", chunks, row, m, out)``
instead of ``row_sumexp(row, m, out)``. Whole rows get ``chunks`` = ``WHOLE_ROW`` (None, a
type of its own): Numba compiles the kernel for it with the split branch pruned, and
``over_chunks`` is the helper's plain call there, so a shape that never splits never
compiles the split path. Split rows walk the rows in order, and ``over_chunks`` calls a
parallel runner of the helper (a prange over the chunks, compiled once per helper and
argument types, not inlined), which is the only parallel region running then.

Compile time, the JSD kernel with its gradient, float32, a fresh cache: 106 s when the
runner's prange was inlined at every call site and whole rows shared the specialisation
(Numba analysed each nested prange, though it ran them as plain loops); now 11 s for
whole rows, 23 s for split rows.
"""
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._math import (JIT, empty_like_compute, row_dot, row_max, row_rescale, row_shifted_dot,
                    row_sum, row_sumexp, row_sumexp_copy)

SPLIT_ROWS = 4           # split the rows of an array with fewer rows than this ...
SPLIT_MIN_CHUNK = 16384  # ... and at least 4 chunks of this many classes
SPLIT_MAX_CHUNKS = 64
WHOLE_ROW = None  # the chunks argument of a row function run whole, on one thread

# Row helpers over_chunks can split: name -> (helper, how its results merge): "max" (one
# result, the maximum), n >= 1 (n float results, each summed) or 0 (no result: it writes).
SPLITTABLE = {}


def splittable(merge):
    """Register a row helper for ``over_chunks``. Its 1-D array arguments are columns of
    the row (cut into chunks); its other arguments are passed to every chunk as they are.
    ``merge``: "max", the number of float results it returns, or 0."""
    def register(helper):
        name = helper.py_func.__name__
        assert name not in SPLITTABLE, f"two splittable row helpers named {name}"
        SPLITTABLE[name] = (helper, merge)
        return helper
    return register


for _helper, _merge in [(row_max, "max"), (row_sumexp, 1), (row_sumexp_copy, 1), (row_dot, 1),
                       (row_sum, 1), (row_shifted_dot, 1), (row_rescale, 0)]:
    splittable(_merge)(_helper)


def row_chunks(n_rows, n_classes):
    """Chunks per row: 1 (whole rows per thread) unless the rows are few and long. Decided
    by the shape alone, not the thread count, so that results do not depend on it."""
    if n_rows >= SPLIT_ROWS or n_classes < 4 * SPLIT_MIN_CHUNK:
        return 1
    length = _chunk_length.py_func(n_classes)
    return (n_classes + length - 1) // length


def kernel_chunks(n_rows, n_classes, serial=False):
    """A row kernel's ``chunks`` argument: WHOLE_ROW, or the chunks per row when split; for
    a kernel compiled without ``parallel`` (``serial``: a forked child's), the count in a
    1-tuple, whose type gives it a runner without a parallel region (same chunks, same
    results)."""
    chunks = row_chunks(n_rows, n_classes)
    if chunks == 1:
        return WHOLE_ROW
    return (chunks,) if serial else chunks


@njit(**JIT)
def _chunk_length(n_classes):
    """A multiple of SPLIT_MIN_CHUNK giving at most SPLIT_MAX_CHUNKS chunks."""
    span = SPLIT_MAX_CHUNKS * SPLIT_MIN_CHUNK
    return (n_classes + span - 1) // span * SPLIT_MIN_CHUNK


@njit(**JIT)
def sum_in_order(parts):
    """parts[0] + parts[1] + ... in this order (float64; no reassociation)."""
    total = 0.0
    for c in range(parts.size):
        total += parts[c]
    return total


# Arguments of a split helper: at most this many. Fixed names, not *args: Numba cannot
# lower an inlined overload that takes *args.
_ARG_NAMES = tuple(f"a{k}" for k in range(10))


def over_chunks(name, chunks, a0, a1=None, a2=None, a3=None, a4=None, a5=None, a6=None,
                a7=None, a8=None, a9=None):
    """``SPLITTABLE[name](a0, a1, ...)``, run over ``chunks`` chunks of the row on all threads,
    with the partial results merged in chunk order; with ``chunks`` WHOLE_ROW, the plain
    call."""
    raise NotImplementedError("over_chunks is only callable from Numba-compiled code")


@overload(over_chunks, inline="always", prefer_literal=True)
def _over_chunks_overload(name, chunks, a0, a1=None, a2=None, a3=None, a4=None, a5=None,
                          a6=None, a7=None, a8=None, a9=None):
    if not isinstance(name, types.StringLiteral):
        return None
    helper, merge = SPLITTABLE[name.literal_value]
    given = [t for t in (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9)
             if t is not None and not isinstance(t, types.Omitted)]
    return _split_implementation(helper, merge, given, chunks)


def _split_implementation(helper, merge, arg_types, chunks_type):
    """Source of the split call for these argument types: a 1-D array argument is cut
    into chunks, anything else passed whole; results merge as ``merge`` says. By the type
    of ``chunks`` (kernel_chunks): WHOLE_ROW, the helper's plain call; an integer, the
    runner on all threads; a 1-tuple, the runner on this thread alone."""
    names = _ARG_NAMES[:len(arg_types)]
    signature = ", ".join(n + ("=None" if k else "") for k, n in enumerate(_ARG_NAMES))
    whole = isinstance(chunks_type, types.NoneType)
    serial = isinstance(chunks_type, types.BaseTuple)
    if whole:
        source = f"""
def split_call(name, chunks, {signature}):
    return helper({", ".join(names)})
"""
    else:
        columns = [k for k, t in enumerate(arg_types)
                   if isinstance(t, types.Array) and t.ndim == 1]
        per_chunk = ", ".join(f"{n}[lo:hi]" if k in columns else n for k, n in enumerate(names))
        row = names[columns[0]]
        if merge == "max":
            # the chunk maxima in the compute type (float32 for a 16-bit row)
            parts, store, result = f"empty_like_compute(chunks, {row})", "parts[c] = r", \
                "row_max(parts)"
        elif merge == 0:
            parts, store, result = "None", "pass", "None"
        else:
            parts = f"np.empty(({merge}, chunks))"
            store = "; ".join(f"parts[{k}, c] = r" + (f"[{k}]" if merge > 1 else "")
                              for k in range(merge))
            merged = [f"sum_in_order(parts[{k}])" for k in range(merge)]
            result = merged[0] if merge == 1 else "(" + ", ".join(merged) + ")"
        source = f"""
def split_call(name, chunks, {signature}):
    return runner({"chunks[0]" if serial else "chunks"}, {", ".join(names)})

def runner(chunks, {", ".join(names)}):
    size = _chunk_length({row}.size)
    parts = {parts}
    for c in prange(chunks):
        lo = c * size
        hi = min(lo + size, {row}.size)
        r = helper({per_chunk})
        {store}
    return {result}
"""
    scope = dict(helper=helper, np=np, prange=prange, _chunk_length=_chunk_length,
                 sum_in_order=sum_in_order, row_max=row_max,
                 empty_like_compute=empty_like_compute)
    exec(compile(source, f"<over_chunks {helper.py_func.__name__}>", "exec"), scope)
    if not whole:
        # not cached itself (exec'd source has no file), but compiled into each cached kernel
        options = {k: v for k, v in JIT.items() if k != "cache"}
        scope["runner"] = njit(parallel=not serial, **options)(scope["runner"])
    return scope["split_call"]
