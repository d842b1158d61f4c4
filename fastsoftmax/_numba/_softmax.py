"""Numba kernels of the softmax family on C-contiguous (rows, classes) arrays.

Every kernel takes its inputs and a caller-allocated output and runs its row function
through the row driver (``_split``: whole rows per thread, or few long rows split over
the threads); the per-row work lives in small helpers (Numba's parfor analysis is
happier with calls than with inline reductions). Pass 1 of a row reads it from
memory, the later passes find it in L2.
"""
import math

from numba import njit, prange

from ._math import (JIT, JIT_PARALLEL, JIT_ROW, JIT_ROW_WRITER, exps_source, kept_exps, load,
                    restore_exp, same_buffer, scalar_like, store, vexp)
from ._split import over_chunks, splittable

# log_softmax rows from this many classes copy the row into out in the exp pass
# (row_sumexp_copy). bench.ab --backend numba, float32, 2 threads, time with / without
# the copy: C = 100 1.03, 1000 1.06; 2048 0.85, 4096 0.79, 32768 0.75.
COPY_MIN_CLASSES = 2048


@splittable(0)
@njit(**JIT)
def _scale(out, k, m, source):
    """out = e * k, e = exp(row - m) as row_sumexp kept it in out (source None) or in
    source (_math.restore_exp)."""
    for j in range(out.size):
        e, _ = restore_exp(out, source, j, m, None)
        store(out, j, e * k)


@splittable(0)
@njit(**JIT_ROW_WRITER)
def _shift(row, m, log_sum, out):
    """out = (row - m) - log_sum"""
    for j in range(row.size):
        store(out, j, (load(row, j) - m) - log_sum)


@splittable(0)
@njit(**JIT)
def _softmax_backward_write(y, dy, dot, out):
    """out = y * (dy - dot)"""
    for j in range(y.size):
        store(out, j, load(y, j) * (load(dy, j) - dot))


@splittable(0)
@njit(**JIT)
def _log_softmax_backward_write(logp, dy, total, out):
    """out = dy - exp(logp) * total"""
    for j in range(logp.size):
        store(out, j, load(dy, j) - vexp(load(logp, j)) * total)


@njit(**JIT_ROW)
def _softmax_row(row, out, chunks):
    m = over_chunks("row_max", chunks, row)
    kept = kept_exps(out)
    inv = scalar_like(row, 1.0 / over_chunks("row_sumexp", chunks, row, m, kept))
    over_chunks("_scale", chunks, out, inv, m, exps_source(out, kept))


@njit(**JIT_ROW)
def _log_softmax_row(row, out, chunks):
    m = over_chunks("row_max", chunks, row)
    if row.size >= COPY_MIN_CLASSES and not same_buffer(row, out):
        # the exp pass copies the row into out, and the write pass reads it there
        log_sum = scalar_like(row, math.log(over_chunks("row_sumexp_copy", chunks, row, m, out)))
        over_chunks("_shift", chunks, out, m, log_sum, out)
    else:
        log_sum = scalar_like(row, math.log(over_chunks("row_sumexp", chunks, row, m)))
        over_chunks("_shift", chunks, row, m, log_sum, out)


@njit(**JIT_ROW)
def _logsumexp_row(row, chunks):
    m = over_chunks("row_max", chunks, row)
    # As torch.logsumexp: a row holding NaN gives NaN, +inf gives +inf, all -inf
    # gives -inf: its max in each case.
    return m + math.log(over_chunks("row_sumexp", chunks, row, m)) if math.isfinite(m) else m


@njit(**JIT_ROW)
def _softmax_backward_row(y, dy, out, chunks):
    dot = scalar_like(y, over_chunks("row_dot", chunks, y, dy))
    over_chunks("_softmax_backward_write", chunks, y, dy, dot, out)


@njit(**JIT_ROW)
def _log_softmax_backward_row(logp, dy, out, chunks):
    total = scalar_like(logp, over_chunks("row_sum", chunks, dy))
    over_chunks("_log_softmax_backward_write", chunks, logp, dy, total, out)


@njit(**JIT_PARALLEL)
def softmax(x, out, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(x.shape[0]):
            _softmax_row(x[i], out[i], chunks)
    else:
        for i in range(x.shape[0]):
            _softmax_row(x[i], out[i], chunks)


@njit(**JIT_PARALLEL)
def log_softmax(x, out, chunks):
    # In place, out *is* x: reading the row through out keeps x read-only-safe, and
    # gives LLVM one pointer (see JIT_ROW_WRITER).
    in_place = same_buffer(x, out)
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(x.shape[0]):
            if in_place:
                _log_softmax_row(out[i], out[i], chunks)
            else:
                _log_softmax_row(x[i], out[i], chunks)
    else:
        for i in range(x.shape[0]):
            if in_place:
                _log_softmax_row(out[i], out[i], chunks)
            else:
                _log_softmax_row(x[i], out[i], chunks)


@njit(**JIT_PARALLEL)
def logsumexp(x, out, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(x.shape[0]):
            store(out, i, _logsumexp_row(x[i], chunks))
    else:
        for i in range(x.shape[0]):
            store(out, i, _logsumexp_row(x[i], chunks))


@njit(**JIT_PARALLEL)
def softmax_backward(y, dy, out, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(y.shape[0]):
            _softmax_backward_row(y[i], dy[i], out[i], chunks)
    else:
        for i in range(y.shape[0]):
            _softmax_backward_row(y[i], dy[i], out[i], chunks)


@njit(**JIT_PARALLEL)
def log_softmax_backward(logp, dy, out, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(logp.shape[0]):
            _log_softmax_backward_row(logp[i], dy[i], out[i], chunks)
    else:
        for i in range(logp.shape[0]):
            _log_softmax_backward_row(logp[i], dy[i], out[i], chunks)
