"""Numba kernels of the softmax family on C-contiguous (rows, classes) arrays.

Every kernel takes its inputs and a caller-allocated output and runs one prange
over rows; the per-row work lives in small helpers (Numba's parfor analysis is
happier with calls than with inline reductions). Pass 1 of a row reads it from
memory, the later passes find it in L2.
"""
import math

from numba import njit, prange

from ._math import (JIT, JIT_PARALLEL, JIT_ROW_WRITER, row_dot, row_max, row_sum, row_sumexp,
                    same_buffer, scalar_like, vexp)


@njit(**JIT)
def _softmax_row(row, out):
    inv = scalar_like(row, 1.0 / row_sumexp(row, row_max(row), out))
    for j in range(out.size):
        out[j] *= inv


@njit(**JIT_ROW_WRITER)
def _log_softmax_row(row, out):
    m = row_max(row)
    log_sum = scalar_like(row, math.log(row_sumexp(row, m)))
    for j in range(row.size):
        out[j] = (row[j] - m) - log_sum


@njit(**JIT)
def _softmax_backward_row(y, dy, out):
    dot = scalar_like(y, row_dot(y, dy))
    for j in range(y.size):
        out[j] = y[j] * (dy[j] - dot)


@njit(**JIT)
def _log_softmax_backward_row(logp, dy, out):
    total = scalar_like(logp, row_sum(dy))
    for j in range(logp.size):
        out[j] = dy[j] - vexp(logp[j]) * total


@njit(**JIT_PARALLEL)
def softmax(x, out):
    for i in prange(x.shape[0]):
        _softmax_row(x[i], out[i])


@njit(**JIT_PARALLEL)
def log_softmax(x, out):
    # In place, out *is* x: reading the row through out keeps x read-only-safe.
    in_place = same_buffer(x, out)
    for i in prange(x.shape[0]):
        if in_place:
            _log_softmax_row(out[i], out[i])
        else:
            _log_softmax_row(x[i], out[i])


@njit(**JIT_PARALLEL)
def logsumexp(x, out):
    for i in prange(x.shape[0]):
        m = row_max(x[i])
        # As torch.logsumexp: a row holding NaN gives NaN, +inf gives +inf, all -inf
        # gives -inf: its max in each case.
        out[i] = m + math.log(row_sumexp(x[i], m)) if math.isfinite(m) else m


@njit(**JIT_PARALLEL)
def softmax_backward(y, dy, out):
    for i in prange(y.shape[0]):
        _softmax_backward_row(y[i], dy[i], out[i])


@njit(**JIT_PARALLEL)
def log_softmax_backward(logp, dy, out):
    for i in prange(logp.shape[0]):
        _log_softmax_backward_row(logp[i], dy[i], out[i])
