"""Fused linear + cross-entropy: the output layer's loss and gradients without the N x V logits.

``loss = cross_entropy(h @ weight.T + bias, target)`` computed over chunks of rows. Per
chunk, one GEMM writes the chunk's logits into a buffer reused by every chunk, the
fused cross-entropy kernel turns them into their gradient G in place, and two more GEMMs
give ``grad_h[chunk] = G @ weight`` and ``grad_weight += G.T @ h[chunk]`` (accumulated by
the GEMM itself, beta = 1: no V x D temporary and no zero-fill). Rows whose target is
ignored never reach a GEMM. Peak extra memory is the chunk budget, whatever N is; the
chunk buffers are kept for the next call (:func:`release_linear_cross_entropy_buffers`).

The GEMMs use the BLAS of the array library in hand (:class:`_Blas` below: SciPy's BLAS
for NumPy when SciPy is installed, torch ops for :mod:`fastsoftmax.torch`). BLAS and the
kernels run one after the other, never nested, on ``fastsoftmax.get_num_threads()``
threads each.

float16 and bfloat16: with torch's GEMMs (``_Blas.runs_half``) the chunk's GEMMs run in
the 16-bit dtype, as torch's unfused version does (the logits and G are 16-bit; the
cross-entropy math is float32 inside the kernel). NumPy's and SciPy's BLAS have no 16-bit
GEMM, so there h and weight are widened to float32 copies (twice their 16-bit size) and
the loop runs in float32. Either way grad_weight and grad_bias accumulate over the chunks
in float32 and are rounded once at the end (a 16-bit accumulator rounds at every chunk:
Liger #512 and #827, training that diverged; a single chunk's grad_weight is one GEMM,
rounded by it), and the loss is float32.
"""
import contextlib
import functools
import operator
import os
import threading

import numpy as np

from . import _backends, _dtypes, _validate, api

NEEDS = ("h", "weight", "bias")

# Default chunk budget (bytes of the logits chunk plus its row buffers), from
# fs.linear_cross_entropy_with_grad(chunk_bytes=...) against three np.matmul calls on the
# whole arrays, fp32, 2 threads, interleaved rounds (noisy machines):
#   AMD EPYC (AVX2), 2048 x 1024 x 32768: 16/32/64/128/256 MiB 1.28/1.13/1.05/1.07/1.06 x;
#   Xeon (AVX-512), 4096 x 1024 x 32768: 32/64/128/256/512 MiB 1.32/1.13-1.20/1.05-1.07/
#   1.08-1.09/1.11 x; 16384 x 512 x 32768: 64/128/256 MiB 1.24/1.16-1.17/1.12-1.13 x.
# 256 MiB has the smallest worst case. Between the GEMMs OpenBLAS's idle threads spin
# and take a core from the loss kernel (see README, fused linear + cross-entropy).
DEFAULT_CHUNK_BYTES = 256 * 2 ** 20
_chunk_bytes = DEFAULT_CHUNK_BYTES


def set_linear_cross_entropy_chunk_bytes(nbytes=None):
    """Set the default chunk budget of :func:`linear_cross_entropy` and its gradient.

    Parameters
    ----------
    nbytes : int or None
        Bytes of the per-chunk buffers (the chunk's logits, plus two chunks of ``h``'s
        rows when targets are ignored); at least one row is always processed. None
        restores the measured default (256 MiB).
    """
    global _chunk_bytes
    _chunk_bytes = DEFAULT_CHUNK_BYTES if nbytes is None else _checked_bytes(nbytes)
    release_linear_cross_entropy_buffers()


def get_linear_cross_entropy_chunk_bytes():
    """Return the default chunk budget in bytes (see :func:`set_linear_cross_entropy_chunk_bytes`).

    Returns
    -------
    int
    """
    return _chunk_bytes


def release_linear_cross_entropy_buffers():
    """Free the chunk buffers that :func:`linear_cross_entropy` keeps between calls.

    A call keeps its chunk buffers (at most the default chunk budget for NumPy arrays,
    as much for torch tensors; see
    :func:`set_linear_cross_entropy_chunk_bytes`) for the next call to reuse; this returns
    that memory. Calls running in other threads keep the buffers they hold until they end.

    Returns
    -------
    None
    """
    with _kept_lock:
        _kept_buffers.clear()


def _checked_bytes(nbytes):
    try:
        value = operator.index(nbytes)
    except TypeError:
        raise TypeError(f"chunk_bytes must be an integer number of bytes, got {nbytes!r}") from None
    if value < 1:
        raise ValueError(f"chunk_bytes must be positive, got {value}")
    return value


# ------------------------------------------------------- chunk buffers kept between calls

# Free byte buffers (1-D uint8 arrays, with the allocator that made them), at most
# _chunk_bytes per allocator. Fresh memory is paid for at its first write, and on this
# project's cloud VMs that write is slow once freed memory has gone back to the host
# (a second or more later, as in a training step): 4096 x 1024 x 32768 fp32, Xeon, 2
# threads, each call after the gemm-floor's three GEMMs: the logits GEMMs 1.45 s with a
# fresh buffer, 0.72 s with a kept one (perf: 25% of the samples in the kernel's
# clear_page); calls back to back ran alike either way.
_kept_buffers = []
_kept_lock = threading.Lock()


def _new_lock_after_fork():
    """A fork while another thread held the lock would leave the child's copy held."""
    global _kept_lock
    _kept_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


@contextlib.contextmanager
def _chunk_buffers(blas, *specs):
    """Uninitialised arrays for ``specs``, each a (shape, dtype) or None (gives None),
    viewing buffers kept between calls (else new ones from ``blas.empty``), kept again
    when the block ends. A buffer is in at most one call at a time."""
    sizes = [0 if spec is None else int(np.prod(spec[0])) * np.dtype(spec[1]).itemsize
             for spec in specs]
    taken = [_take_buffer(blas, size) if size else None for size in sizes]
    try:
        yield [None if buffer is None else buffer[:size].view(spec[1]).reshape(spec[0])
               for buffer, size, spec in zip(taken, sizes, specs)]
    finally:
        _keep_buffers(blas, [b for b in taken if b is not None])


def _take_buffer(blas, nbytes):
    """The smallest kept buffer of at least ``nbytes`` bytes that ``blas`` allocated (torch
    aligns and pages its buffers differently: _TorchBlas.empty), or a new one."""
    allocator = type(blas).empty
    with _kept_lock:
        fitting = [i for i, (a, b) in enumerate(_kept_buffers)
                   if a is allocator and b.size >= nbytes]
        if fitting:
            return _kept_buffers.pop(min(fitting, key=lambda i: _kept_buffers[i][1].size))[1]
    return blas.empty((nbytes,), np.uint8)


def _keep_buffers(blas, buffers):
    """Keep ``buffers`` for later calls, largest first, while each allocator's kept total
    stays within the default chunk budget (a one-off larger ``chunk_bytes`` is not kept)."""
    with _kept_lock:
        candidates = _kept_buffers + [(type(blas).empty, b) for b in buffers]
        candidates.sort(key=lambda entry: entry[1].size, reverse=True)
        _kept_buffers.clear()
        totals = {}
        for allocator, buffer in candidates:
            total = totals.get(allocator, 0) + buffer.size
            if total <= _chunk_bytes:
                _kept_buffers.append((allocator, buffer))
                totals[allocator] = total


# ---------------------------------------------------------------- the GEMMs, per library

class _Blas:
    """The three GEMMs of a chunk on NumPy arrays, and the thread limit around them.

    ``logits(h, w, out)``: out = h @ w.T. ``grad_h(g, w, out)``: out = g @ w.
    ``grad_weight(g, h, out, accumulate)``: out (+)= g.T @ h, ``out`` float32 for 16-bit
    g and h over several chunks (the accumulator). Every operand is C-contiguous and
    ``out`` is written in place. ``runs_half``: whether the GEMMs take float16 and
    bfloat16 operands (else the loop runs on float32 copies).
    """

    runs_half = False

    def empty(self, shape, dtype):
        """An uninitialised chunk buffer (the logits, gathered h rows) for these GEMMs."""
        return np.empty(shape, dtype)

    def cast(self, a, dtype):
        """``a`` rounded to ``dtype`` (``a`` itself when it has it)."""
        return a.astype(dtype, copy=False)

    def linear(self, h, w, bias, out):
        """out = h @ w.T + bias (bias may be None)."""
        self.logits(h, w, out)
        if bias is not None:
            out += bias

    def add_column_sums(self, g, out):
        """out += g.sum(axis=0), summed in out's dtype."""
        out += np.sum(g, axis=0, dtype=out.dtype)

    def threads(self, n):
        return _blas_threads(n)


class _ScipyBlas(_Blas):
    """SciPy's BLAS: gemm's beta = 1 accumulates grad_weight in place.

    NumPy's matmul has no beta, so accumulating with it needs a V x D temporary per
    chunk (Liger #1323). The arrays are passed transposed (C order is Fortran order of
    the transpose), so the Fortran gemm copies nothing; ``_checked`` proves it."""

    def __init__(self):
        from scipy.linalg import blas
        self._gemm = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}

    @staticmethod
    def _checked(result, out):
        if not np.shares_memory(result, out):  # f2py copied: would silently lose the result
            raise RuntimeError("SciPy's gemm did not write into the output buffer")

    def logits(self, h, w, out):  # out.T (V x B) = w (V x D) @ h.T (D x B)
        self._checked(self._gemm[out.dtype](1.0, w.T, h.T, trans_a=1, c=out.T, overwrite_c=1),
                      out)

    def grad_h(self, g, w, out):  # out.T (D x B) = w.T (D x V) @ g.T (V x B)
        self._checked(self._gemm[out.dtype](1.0, w.T, g.T, c=out.T, overwrite_c=1), out)

    def grad_weight(self, g, h, out, accumulate):  # out.T (D x V) (+)= h.T (D x B) @ g (B x V)
        self._checked(self._gemm[out.dtype](1.0, h.T, g.T, trans_b=1, c=out.T, overwrite_c=1,
                                            beta=1.0 if accumulate else 0.0), out)


class _NumpyBlas(_Blas):
    """NumPy's matmul alone (no SciPy): accumulating grad_weight costs a V x D temporary."""

    def __init__(self):
        self._scratch = None

    def logits(self, h, w, out):
        np.matmul(h, w.T, out=out)

    def grad_h(self, g, w, out):
        np.matmul(g, w, out=out)

    def grad_weight(self, g, h, out, accumulate):
        if not accumulate:
            np.matmul(g.T, h, out=out)
            return
        if self._scratch is None or self._scratch.shape != out.shape or \
                self._scratch.dtype != out.dtype:
            self._scratch = np.empty_like(out)
        np.matmul(g.T, h, out=self._scratch)
        out += self._scratch


def numpy_blas():
    """The GEMMs for NumPy arrays: SciPy's BLAS when installed, else NumPy's matmul."""
    try:
        return _ScipyBlas()
    except ImportError:
        return _NumpyBlas()


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries (built once: it scans every
    loaded library), or None without threadpoolctl."""
    try:
        import scipy.linalg.blas  # noqa: F401  (load SciPy's BLAS before the scan)
    except ImportError:
        pass
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _blas_threads(n):
    """Limit NumPy's and SciPy's BLAS to ``n`` threads for the duration of a call.

    Without threadpoolctl the BLAS keeps its own count (OPENBLAS_NUM_THREADS)."""
    controller = _blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=n, user_api="blas")


# ------------------------------------------------------------------------- validation

def _arguments(h, weight, target, bias, class_weight, ignore_index, reduction,
               label_smoothing, softcap):
    """Check everything before any GEMM; return (h2, weight, bias, ce_args) with h2 the
    C-contiguous (N, D) rows and ce_args the cross-entropy arguments of the (N, V) logits."""
    h = _validate.float_array(h, "h")
    weight = _validate.float_array(weight, "weight")
    if h.ndim < 1:
        raise ValueError("h must have shape (..., D), got a 0-d array")
    if weight.ndim != 2:
        raise ValueError(f"weight must have shape (V, D) (the nn.Linear layout), "
                         f"got shape {weight.shape}")
    if weight.shape[1] != h.shape[-1]:
        raise ValueError(f"h has shape {h.shape} and weight has shape {weight.shape}: h's last "
                         f"axis ({h.shape[-1]}) must equal weight's second ({weight.shape[1]})")
    if weight.dtype != h.dtype:
        raise TypeError(f"h has dtype {h.dtype} but weight has dtype {weight.dtype}; convert "
                        f"one with .astype({_dtype_name(h.dtype)})")
    n_classes = weight.shape[0]
    if bias is not None:
        bias = _validate.float_array(bias, "bias")
        if bias.shape != (n_classes,):
            raise ValueError(f"bias has shape {bias.shape} but weight has shape "
                             f"{weight.shape}; bias must have shape ({n_classes},)")
        if bias.dtype != h.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but h has dtype {h.dtype}; convert "
                            f"it with .astype({_dtype_name(h.dtype)})")
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape != h.shape[:-1]:
        raise ValueError(f"target has shape {target.shape} but h has shape {h.shape}; the "
                         f"target must have shape {h.shape[:-1]}")
    # The cross-entropy checks (target range, class weight, options) on the logits' shape,
    # given as a zero-stride view: no N x V memory.
    logits = np.broadcast_to(np.zeros(1, h.dtype), h.shape[:-1] + (n_classes,))
    ce = _validate.cross_entropy_args(logits, target, class_weight, ignore_index, reduction,
                                      label_smoothing, softcap=softcap)
    rows = np.ascontiguousarray(h.reshape(-1, h.shape[-1]))
    return rows, np.ascontiguousarray(weight), bias, ce


def _dtype_name(dtype):
    """How a user names ``dtype`` in NumPy code."""
    return "ml_dtypes.bfloat16" if dtype.name == "bfloat16" else f"np.{dtype.name}"


def _widened(a, blas):
    """A 16-bit array as float32 when ``blas`` has no 16-bit GEMM (see the top of this
    file); others as they are."""
    if a is None or not _dtypes.is_half(a.dtype) or blas.runs_half:
        return a
    return a.astype(np.float32)


def _needs(need, bias):
    """The set of gradients to compute, from ``need`` (bias only when there is one)."""
    chosen = (need,) if isinstance(need, str) else tuple(need)
    unknown = [name for name in chosen if name not in NEEDS]
    if unknown:
        raise ValueError(f"need names unknown gradients {unknown}; choose from {NEEDS}")
    return {name for name in chosen if name != "bias" or bias is not None}


def _chunk_rows(chunk_bytes, n_rows, n_classes, dim, itemsize, gathers):
    """Rows per chunk: as many as fit in the byte budget (the logits chunk, plus the
    gathered h rows and grad_h rows when targets are ignored), at least 1."""
    budget = _chunk_bytes if chunk_bytes is None else _checked_bytes(chunk_bytes)
    row_bytes = itemsize * (n_classes + (2 * dim if gathers else 0))
    return max(1, min(n_rows, budget // row_bytes))


# ------------------------------------------------------------------------- the loop

def _run(h, weight, bias, ce, grad_output, needs, chunk_bytes, blas, kernels, threads):
    """The chunk loop. ``needs`` empty: loss only (one GEMM per chunk). Returns
    (row losses float64 of the valid rows, valid row indices or None, denominator,
    grad_h, grad_weight, grad_bias) with None for gradients not needed."""
    n_rows, dim = h.shape
    n_classes = weight.shape[0]
    dtype = h.dtype
    target = ce.target.reshape(-1)
    # Rows with an ignored target are left out before any GEMM; they keep grad_h = 0.
    valid = np.flatnonzero(target != ce.ignore_index) if ce.may_ignore else None
    if valid is not None and valid.size == n_rows:
        valid = None
    n_valid = n_rows if valid is None else valid.size
    denominator = api._reduction_scale(ce)
    class_weight, weight_sum = api._class_weight(ce.weight, n_classes)
    grad_needed = bool(needs)
    scale, row_scale = api._grad_scales(grad_output, denominator) if grad_needed \
        else (1.0, np.empty(0))

    chunk = _chunk_rows(chunk_bytes, n_valid, n_classes, dim, dtype.itemsize, valid is not None)
    # A 16-bit grad_weight summed over several chunks is summed in float32; one chunk's is
    # one GEMM, rounded once by it (no float32 V x D array, no copy and rounding pass).
    accumulator = dtype if chunk >= n_valid else _dtypes.compute_dtype(dtype)
    grad_h = grad_weight = grad_bias = None
    if "h" in needs:  # zeros only where ignored rows stay untouched (calloc: no pass)
        grad_h = np.empty((n_rows, dim), dtype) if valid is None else \
            np.zeros((n_rows, dim), dtype)
    if "weight" in needs:  # the first chunk's GEMM writes it (beta = 0)
        grad_weight = np.empty((n_classes, dim), accumulator) if n_valid else \
            np.zeros((n_classes, dim), accumulator)
    if "bias" in needs:
        grad_bias = np.zeros(n_classes, _dtypes.compute_dtype(dtype))
    row_loss = np.empty(n_valid, dtype=np.float64)
    if n_valid == 0:
        return row_loss, valid, denominator, grad_h, grad_weight, grad_bias

    gathers = valid is not None
    with _chunk_buffers(blas, ((chunk, n_classes), dtype),
                        ((chunk, dim), dtype) if gathers else None,
                        ((chunk, dim), dtype) if gathers and grad_h is not None else None
                        ) as (logits_buffer, h_buffer, grad_h_buffer), \
            blas.threads(threads):
        for start in range(0, n_valid, chunk):
            stop = min(start + chunk, n_valid)
            size = stop - start
            if valid is None:
                rows, h_chunk = slice(start, stop), h[start:stop]
            else:
                rows = valid[start:stop]
                h_chunk = np.take(h, rows, axis=0, out=h_buffer[:size])
            logits = logits_buffer[:size]
            blas.linear(h_chunk, weight, bias, logits)
            chunk_scale = row_scale[rows] if row_scale.size else row_scale
            api._cross_entropy_chunk(kernels, logits, target[rows], class_weight, weight_sum,
                                     ce.ignore_index, ce.label_smoothing, ce.softcap, scale,
                                     chunk_scale, row_loss[start:stop], inplace=grad_needed)
            # ``logits`` now holds the chunk's gradient G = d loss / d logits.
            if grad_weight is not None:
                blas.grad_weight(logits, h_chunk, grad_weight, accumulate=start > 0)
            if grad_h is not None:
                if valid is None:
                    blas.grad_h(logits, weight, grad_h[rows])
                else:
                    blas.grad_h(logits, weight, grad_h_buffer[:size])
                    grad_h[rows] = grad_h_buffer[:size]
            if grad_bias is not None:
                blas.add_column_sums(logits, grad_bias)
    return row_loss, valid, denominator, grad_h, grad_weight, grad_bias


def _loss(row_loss, valid, ce, denominator):
    """The loss as cross_entropy returns it, from the valid rows' float64 losses."""
    if ce.reduction == "none" and valid is not None:
        full = np.zeros(ce.target.size, dtype=np.float64)
        full[valid] = row_loss
        row_loss = full
    return api._reduce(row_loss, ce.reduction, denominator, ce.loss_shape,
                       _dtypes.compute_dtype(ce.logits.dtype))


def _compute(h, weight, target, bias, class_weight, ignore_index, reduction, label_smoothing,
             softcap, chunk_bytes, grad_output, need, backend, blas):
    """Validate, then run the chunk loop; shared by the NumPy and torch front ends.
    ``need`` None: the loss alone. Returns (loss, grad_h in h's shape, grad_weight, grad_bias)."""
    h_rows, weight_rows, bias, ce = _arguments(h, weight, target, bias, class_weight,
                                               ignore_index, reduction, label_smoothing,
                                               softcap)
    needs = set() if need is None else _needs(need, bias)
    g = _validate.grad_output_array(grad_output, reduction, ce.loss_shape)
    if chunk_bytes is not None:
        _checked_bytes(chunk_bytes)
    kernels = _backends.kernels(_backends.resolve(backend))
    dtype = h_rows.dtype
    row_loss, valid, denominator, *grads = _run(
        _widened(h_rows, blas), _widened(weight_rows, blas), _widened(bias, blas), ce, g, needs,
        chunk_bytes, blas, kernels, _backends.get_num_threads())
    grad_h, grad_weight, grad_bias = (None if grad is None else blas.cast(grad, dtype)
                                      for grad in grads)
    if grad_h is not None:
        grad_h = grad_h.reshape(np.shape(h))
    return _loss(row_loss, valid, ce, denominator), grad_h, grad_weight, grad_bias


# ------------------------------------------------------------------------- public API

_PARAMETERS_DOC = """h : array_like
        float32, float64, float16 or bfloat16 hidden states of shape ``(..., D)``;
        leading axes are flattened into N rows. 16-bit inputs are computed in float32
        (float32 copies of h and weight for the call: NumPy has no 16-bit GEMM;
        :func:`fastsoftmax.torch.linear_cross_entropy` runs 16-bit GEMMs); the gradients
        are rounded once to their dtype and the loss is float32.
    weight : array_like
        The output layer's weight, shape ``(V, D)`` (the ``nn.Linear`` layout), h's dtype.
    target : array_like
        Integer class indices of shape ``h.shape[:-1]``, in ``0..V-1`` or equal to
        ``ignore_index``.
    bias : array_like, optional
        The output layer's bias, shape ``(V,)``, h's dtype.
    class_weight : array_like, optional
        Per-class weights of the loss, shape ``(V,)`` (``weight=`` of
        :func:`fastsoftmax.cross_entropy`).
    ignore_index : int, optional
        Rows whose target equals it contribute neither loss nor gradient, are left out
        of the mean's denominator and skip every GEMM. Default -100.
    reduction : {"none", "mean", "sum"}, optional
        As :func:`fastsoftmax.cross_entropy`; a mean over no target is NaN.
    label_smoothing : float, optional
        In [0, 1]: the target is mixed with the uniform distribution.
    softcap : float, optional
        Logit soft-capping, ``softcap * tanh(logit / softcap)`` (Gemma 2 uses 30.0), in
        the cross-entropy kernel's sweep over each chunk (:func:`fastsoftmax.cross_entropy`).
        Default None (no capping).
    chunk_bytes : int, optional
        Budget in bytes of the per-chunk buffers (the chunk's logits, plus two chunks of
        h rows when targets are ignored); at least one row per chunk. Default: the
        global setting (:func:`set_linear_cross_entropy_chunk_bytes`, 256 MiB)."""
_documented = api.filled_doc(parameters=_PARAMETERS_DOC, backend=api.CROSS_ENTROPY_BACKEND_DOC)


@_documented
def linear_cross_entropy(h, weight, target, *, bias=None, class_weight=None, ignore_index=-100,
                         reduction="mean", label_smoothing=0.0, softcap=None, chunk_bytes=None,
                         backend=None):
    """Cross-entropy of the logits ``h @ weight.T + bias``, without making the logits.

    The rows run in chunks: one GEMM per chunk into a reused buffer, then the fused
    cross-entropy kernel (loss only). Memory beyond the inputs is the chunk budget,
    whatever N is.

    Parameters
    ----------
    {parameters}
    {backend}

    Returns
    -------
    numpy scalar or ndarray
        A scalar of h's dtype (float32 for 16-bit h) for "mean"/"sum" (accumulated in
        float64), an array of shape ``h.shape[:-1]`` for "none".

    Raises
    ------
    ValueError, TypeError, IndexError
        Before any GEMM: shapes that do not fit (both shapes named), a bias of the wrong
        length, h, weight and bias of different dtypes, targets out of range, bad options.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> h, weight = np.zeros((2, 3)), np.zeros((4, 3))
    >>> float(fs.linear_cross_entropy(h, weight, np.array([1, 3])))  # log(4)
    1.3862943611198906
    """
    return _compute(h, weight, target, bias, class_weight, ignore_index, reduction,
                    label_smoothing, softcap, chunk_bytes, 1.0, None, backend, numpy_blas())[0]


@_documented
def linear_cross_entropy_with_grad(h, weight, target, *, bias=None, class_weight=None,
                                   ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                   softcap=None, chunk_bytes=None, grad_output=1.0, need=NEEDS,
                                   backend=None):
    """Loss of :func:`linear_cross_entropy` and its gradients, without the N x V logits.

    Per chunk of rows, G = the chunk's logits (one GEMM into a reused buffer) turned
    into ``d(loss * grad_output)/d(logits)`` in place by the fused kernel; then
    ``grad_h[chunk] = G @ weight`` and ``grad_weight += G.T @ h[chunk]`` (accumulated
    by the GEMM itself, beta = 1), ``grad_bias += G.sum(0)``. Ignored rows skip every
    GEMM.

    Parameters
    ----------
    {parameters}
    grad_output : float or array_like, optional
        Gradient flowing into the loss: a scalar, or for ``reduction="none"`` an array of
        the loss's shape (each row's gradient is scaled by its own value). Default 1.
    need : iterable of str, optional
        Which gradients to compute, a subset of ``("h", "weight", "bias")`` (default:
        all). Without "weight" only two GEMMs run per chunk (a frozen output layer).
    {backend}

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`linear_cross_entropy`.
    grad_h : ndarray or None
        ``d(loss * grad_output)/dh``, h's shape (0 on rows with an ignored target).
    grad_weight : ndarray or None
        Shape ``(V, D)``.
    grad_bias : ndarray or None
        Shape ``(V,)``; None without a bias. A gradient not in ``need`` is None.

    Raises
    ------
    ValueError, TypeError, IndexError
        As :func:`linear_cross_entropy`, and for a bad ``need`` or ``grad_output``.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> h, weight = np.ones((1, 2)), np.zeros((4, 2))
    >>> loss, grad_h, grad_weight, grad_bias = fs.linear_cross_entropy_with_grad(
    ...     h, weight, np.array([1]))
    >>> grad_weight[:, 0]  # softmax - onehot, times h
    array([ 0.25, -0.75,  0.25,  0.25])
    """
    return _compute(h, weight, target, bias, class_weight, ignore_index, reduction,
                    label_smoothing, softcap, chunk_bytes, grad_output, need, backend,
                    numpy_blas())
