"""Kernels for few classes (C < SMALL_C): rows are processed in transposed blocks.

A row of 10 classes is shorter than one vector, so the row kernels run their exp
and their row reductions as scalar code (C = 10, float32, 2 threads: ~10 ns/elem
for cross_entropy_with_grad). Here a task copies a block of rows into a
(classes, rows) scratch, so that the max, exp and sum of every row run across
the rows of the block as contiguous vector loops, then writes each output row
from the scratch. Measured on one block of 409 x 10 float32, one thread:
softmax 14.3 ns/elem with row-wise block loops -> 2.8 ns/elem transposed.

Each kernel ``<name>_blocks`` has the signature and semantics of its row-kernel twin
``<name>``; the exp values are computed once and kept in the scratch.
"""
import math

import numpy as np
from numba import njit, prange

from ._math import (JIT, JIT_PARALLEL, class_weight, maximum, row_scale_at, scalar_like, vexp,
                    weighted)

SMALL_C = 64           # below this many classes the block kernels are used
BLOCK_ELEMENTS = 4096  # elements per task: the block and its scratch stay in L1


@njit(**JIT)
def _blocks(n_rows, n_classes):
    """(rows per block, number of blocks)."""
    rows = max(1, BLOCK_ELEMENTS // n_classes)
    return rows, (n_rows + rows - 1) // rows


@njit(**JIT)
def _columns(x):
    """(e, m): e[j, r] = x[r, j] - m[r], with m[r] the max of row r."""
    n_rows, n_classes = x.shape
    e = np.empty((n_classes, n_rows), x.dtype)
    for r in range(n_rows):
        for j in range(n_classes):
            e[j, r] = x[r, j]
    m = e[0].copy()
    for j in range(1, n_classes):
        column = e[j]
        for r in range(n_rows):
            m[r] = maximum(m[r], column[r])
    for j in range(n_classes):
        column = e[j]
        for r in range(n_rows):
            column[r] -= m[r]
    return e, m


@njit(**JIT)
def _exp_columns(e):
    """e = exp(e) in place; returns the row sums (float64)."""
    sums = np.zeros(e.shape[1])
    for j in range(e.shape[0]):
        column = e[j]
        for r in range(e.shape[1]):
            v = vexp(column[r])
            column[r] = v
            sums[r] += v
    return sums


@njit(**JIT)
def _softmax_block(x, out):
    e, _ = _columns(x)
    sums = _exp_columns(e)
    for r in range(x.shape[0]):
        inv = scalar_like(x, 1.0 / sums[r])
        for j in range(x.shape[1]):
            out[r, j] = e[j, r] * inv


@njit(**JIT)
def _log_softmax_block(x, out):
    e, m = _columns(x)
    sums = _exp_columns(e)
    for r in range(x.shape[0]):
        log_sum = scalar_like(x, math.log(sums[r]))
        mr = m[r]
        for j in range(x.shape[1]):
            out[r, j] = (x[r, j] - mr) - log_sum


@njit(**JIT)
def _logsumexp_block(x, out):
    e, m = _columns(x)
    sums = _exp_columns(e)
    for r in range(x.shape[0]):
        # as torch.logsumexp: a row whose max is +-inf gives that max (NaN stays NaN)
        out[r] = m[r] + math.log(sums[r]) if math.isfinite(m[r]) else m[r]


@njit(**JIT_PARALLEL)
def softmax_blocks(x, out):
    rows, n_blocks = _blocks(x.shape[0], x.shape[1])
    for b in prange(n_blocks):
        _softmax_block(x[b * rows:(b + 1) * rows], out[b * rows:(b + 1) * rows])


@njit(**JIT_PARALLEL)
def log_softmax_blocks(x, out):
    rows, n_blocks = _blocks(x.shape[0], x.shape[1])
    for b in prange(n_blocks):
        _log_softmax_block(x[b * rows:(b + 1) * rows], out[b * rows:(b + 1) * rows])


@njit(**JIT_PARALLEL)
def logsumexp_blocks(x, out):
    rows, n_blocks = _blocks(x.shape[0], x.shape[1])
    for b in prange(n_blocks):
        _logsumexp_block(x[b * rows:(b + 1) * rows], out[b * rows:(b + 1) * rows])


@njit(**JIT)
def _index_block(x, target, weight, weight_sum, ignore_index, smoothing, scale, row_scale,
                 row_loss, grad, lo, hi):
    """Rows lo:hi of cross_entropy_index (x is read into the scratch before grad is written,
    so grad may be x itself)."""
    x, target = x[lo:hi], target[lo:hi]
    n_rows, n_classes = x.shape
    eps_c = smoothing / n_classes
    e, _ = _columns(x)
    shifted_y = np.zeros(n_rows)
    shifted_w = np.zeros(n_rows)
    for r in range(n_rows):
        if target[r] != ignore_index:
            shifted_y[r] = e[target[r], r]
    if smoothing != 0.0:
        for j in range(n_classes):
            w = class_weight(weight, j)
            column = e[j]
            for r in range(n_rows):
                shifted_w[r] += w * column[r]
    sums = _exp_columns(e)
    for r in range(n_rows):
        y = target[r]
        if y == ignore_index:
            row_loss[lo + r] = 0.0
            if grad is not None:
                grad[lo + r, :] = 0
            continue
        log_sum = math.log(sums[r])
        w_y = class_weight(weight, y)
        loss = (1.0 - smoothing) * w_y * (log_sum - shifted_y[r])
        if smoothing != 0.0:
            loss += eps_c * (weight_sum * log_sum - shifted_w[r])
        row_loss[lo + r] = loss
        if grad is not None:
            s = row_scale_at(scale, row_scale, lo + r)
            onehot_coef = (1.0 - smoothing) * w_y
            k = scalar_like(x, s * (onehot_coef + eps_c * weight_sum) / sums[r])
            f = scalar_like(x, s * eps_c)
            out = grad[lo + r]
            for j in range(n_classes):
                out[j] = e[j, r] * k - weighted(f, weight, j)
            out[y] -= scalar_like(x, s * onehot_coef)


@njit(**JIT_PARALLEL)
def cross_entropy_index_blocks(x, target, weight, weight_sum, ignore_index, smoothing,
                        scale, row_scale, row_loss, grad):
    rows, n_blocks = _blocks(x.shape[0], x.shape[1])
    for b in prange(n_blocks):
        _index_block(x, target, weight, weight_sum, ignore_index, smoothing, scale, row_scale,
                     row_loss, grad, b * rows, min(x.shape[0], (b + 1) * rows))


@njit(**JIT)
def _prob_block(x, target, weight, smoothing, scale, row_scale, row_loss, grad, lo, hi):
    """Rows lo:hi of cross_entropy_prob (grad may be x itself, as in _index_block)."""
    x, target = x[lo:hi], target[lo:hi]
    n_rows, n_classes = x.shape
    keep = scalar_like(x, 1.0 - smoothing)
    eps_c = scalar_like(x, smoothing / n_classes)
    e, _ = _columns(x)
    total_wt = np.zeros(n_rows)
    shifted_wt = np.zeros(n_rows)
    for j in range(n_classes):
        column = e[j]
        for r in range(n_rows):
            wt = weighted(target[r, j] * keep + eps_c, weight, j)
            total_wt[r] += wt
            shifted_wt[r] += wt * column[r]
    sums = _exp_columns(e)
    for r in range(n_rows):
        row_loss[lo + r] = total_wt[r] * math.log(sums[r]) - shifted_wt[r]
        if grad is not None:
            s = row_scale_at(scale, row_scale, lo + r)
            k = scalar_like(x, s * total_wt[r] / sums[r])
            f = scalar_like(x, s)
            out = grad[lo + r]
            for j in range(n_classes):
                out[j] = e[j, r] * k - f * weighted(target[r, j] * keep + eps_c, weight, j)


@njit(**JIT_PARALLEL)
def cross_entropy_prob_blocks(x, target, weight, smoothing, scale, row_scale, row_loss, grad):
    rows, n_blocks = _blocks(x.shape[0], x.shape[1])
    for b in prange(n_blocks):
        _prob_block(x, target, weight, smoothing, scale, row_scale, row_loss, grad,
                    b * rows, min(x.shape[0], (b + 1) * rows))
