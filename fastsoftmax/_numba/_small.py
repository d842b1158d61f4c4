"""Kernels for few classes (C < SMALL_C): rows are processed in transposed blocks.

A row of 10 classes is shorter than one vector, so the row kernels run their exp
and their row reductions as scalar code (C = 10, float32, 2 threads: ~10 ns/elem
for cross_entropy_with_grad). Here a task copies a block of rows into a
(classes, rows) scratch, so that the max, exp and sum of every row run across
the rows of the block as contiguous vector loops, then writes each output row
from the scratch. Measured on one block of 409 x 10 float32, one thread:
softmax 14.3 ns/elem with row-wise block loops -> 2.8 ns/elem transposed.

Each kernel ``<name>_blocks`` has the signature and semantics of its row-kernel twin
``<name>``; the exp values are computed once and kept in the scratch, which is in the
compute type (float32 for 16-bit arrays, so each output is rounded once). The
log_softmax backward needs no row reduction before its exps, so its block is not
transposed: the exps run over the block as one contiguous loop.
"""
import math

import numpy as np
from numba import njit, prange

from ._math import (JIT, JIT_PARALLEL, class_weight, compute_rows, empty_like_compute, load,
                    maximum, round_into, row_scale_at, scalar_like, softcap, softcap_slope, store,
                    vexp, vlog, weighted)

SMALL_C = 64           # below this many classes the block kernels are used
BLOCK_ELEMENTS = 4096  # elements per task: the block and its scratch stay in L1


@njit(**JIT)
def _blocks(n_rows, n_classes):
    """(rows per block, number of blocks)."""
    rows = max(1, BLOCK_ELEMENTS // n_classes)
    return rows, (n_rows + rows - 1) // rows


@njit(**JIT)
def _columns(x, cap=None):
    """(e, m): e[j, r] = z[r, j] - m[r], with z = softcap(x, cap) (x when cap is None) and
    m[r] the max of row r of z."""
    n_rows, n_classes = x.shape
    e = empty_like_compute((n_classes, n_rows), x)
    # column by column (strided loads) rather than row by row (strided stores):
    # 409 x 10 float32, one thread: 0.34 -> 0.28 ns/elem
    for j in range(n_classes):
        column = e[j]
        for r in range(n_rows):
            column[r] = softcap(load(x, (r, j)), cap)
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
    """e = exp(e) in place; returns the row sums, in e's type: a float32 sum of at most
    SMALL_C terms each <= 1 is within 4e-6 of the exact one, and float64 sums halved the
    vector width (409 x 10 float32 softmax block, one thread: 1.49 -> 1.26 ns/elem)."""
    sums = np.zeros(e.shape[1], e.dtype)
    for j in range(e.shape[0]):
        column = e[j]
        for r in range(e.shape[1]):
            v = vexp(column[r])
            column[r] = v
            sums[r] += v
    return sums


@njit(**JIT)
def _logs(sums):
    """The log of each row sum, in their type: vlog vectorises across the rows, where a
    math.log call per row took a third of a 409 x 10 float32 cross-entropy block (0.49
    of 1.38 ns/elem, one thread)."""
    logs = np.empty_like(sums)
    for r in range(sums.size):
        logs[r] = vlog(sums[r])
    return logs


@njit(**JIT)
def _softmax_block(x, out):
    e, _ = _columns(x)
    sums = _exp_columns(e)
    rows = compute_rows(out)
    for r in range(x.shape[0]):
        inv = scalar_like(x, 1.0 / sums[r])
        for j in range(x.shape[1]):
            store(rows, (r, j), e[j, r] * inv)
    round_into(out, rows)


@njit(**JIT)
def _log_softmax_block(x, out):
    e, m = _columns(x)
    log_sums = _logs(_exp_columns(e))
    rows = compute_rows(out)  # in place: x is read before round_into writes it
    for r in range(x.shape[0]):
        log_sum = log_sums[r]
        mr = m[r]
        for j in range(x.shape[1]):
            store(rows, (r, j), (load(x, (r, j)) - mr) - log_sum)
    round_into(out, rows)


@njit(**JIT)
def _logsumexp_block(x, out):
    e, m = _columns(x)
    log_sums = _logs(_exp_columns(e))
    for r in range(x.shape[0]):
        # as torch.logsumexp: a row whose max is +-inf gives that max (NaN stays NaN)
        store(out, r, m[r] + log_sums[r] if math.isfinite(m[r]) else m[r])


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
def _index_block_sums(e, y, weight, weight_sum, ignore_index, keep, eps_c):
    """T and sum(w t' (x - m)) of each row for t = onehot(y[r]) (see _cross_entropy), by
    lookup; e holds x - m as (classes, rows). Ignored rows get 0."""
    n_classes, n_rows = e.shape
    shifted_w = np.zeros(n_rows)
    if eps_c != 0.0:
        for j in range(n_classes):
            w = class_weight(weight, j)
            column = e[j]
            for r in range(n_rows):
                shifted_w[r] += w * column[r]
    total_wt = np.zeros(n_rows)
    shifted_wt = np.zeros(n_rows)
    for r in range(n_rows):
        if y[r] != ignore_index:
            w_y = class_weight(weight, y[r])
            total_wt[r] = keep * w_y + eps_c * weight_sum
            shifted_wt[r] = keep * w_y * e[y[r], r] + eps_c * shifted_w[r]
    return total_wt, shifted_wt


@njit(**JIT)
def _prob_block_sums(e, t, weight, keep, eps_c):
    """T and sum(w t' (x - m)) of each row (see _cross_entropy); e holds x - m as
    (classes, rows)."""
    n_classes, n_rows = e.shape
    k = scalar_like(e, keep)
    c = scalar_like(e, eps_c)
    total_wt = np.zeros(n_rows)
    shifted_wt = np.zeros(n_rows)
    for j in range(n_classes):
        column = e[j]
        for r in range(n_rows):
            wt = weighted(load(t, (r, j)) * k + c, weight, j)
            total_wt[r] += wt
            shifted_wt[r] += wt * column[r]
    return total_wt, shifted_wt


@njit(**JIT)
def _ce_block(x, y, t, weight, weight_sum, ignore_index, smoothing, z_loss, cap, scale,
              z_scale, row_scale, row_loss, row_z_loss, grad, lo, hi):
    """Rows lo:hi of cross_entropy_index (index targets y, t None) or cross_entropy_prob
    (probability rows t, y None); x is read into the scratch before grad is written, so
    grad may be x itself. The z-loss of each row goes to row_z_loss (when not empty).
    With ``cap``, the scratch holds the capped logits, and the gradient of row r is
    multiplied by dz/dx, from x[r] as it is written (in place: each element read before
    it is overwritten; the target's slope before the row is written)."""
    x = x[lo:hi]
    n_rows, n_classes = x.shape
    keep = 1.0 - smoothing
    eps_c = smoothing / n_classes
    e, m = _columns(x, cap)
    # The target kind is chosen at compile time, as in _cross_entropy._ce_row.
    if t is None:
        if y is not None:
            total_wt, shifted_wt = _index_block_sums(e, y, weight, weight_sum, ignore_index,
                                                     keep, eps_c)
    else:
        total_wt, shifted_wt = _prob_block_sums(e, t, weight, keep, eps_c)
    sums = _exp_columns(e)
    log_sums = _logs(sums)
    # the gradient rows (x is read before round_into writes it, in place too)
    rows = compute_rows(grad[lo:hi]) if grad is not None else None
    for r in range(n_rows):
        if t is None:
            if y is not None:
                if y[r] == ignore_index:  # 0, not 0 * log(sum) - 0 (NaN for a NaN row)
                    row_loss[lo + r] = 0.0
                    if row_z_loss.size:
                        row_z_loss[lo + r] = 0.0
                    if grad is not None:
                        rows[r, :] = 0
                    continue
        log_sum = np.float64(log_sums[r])  # the loss in float64
        lse = m[r] + log_sum
        row_loss[lo + r] = total_wt[r] * log_sum - shifted_wt[r]
        if row_z_loss.size:
            row_z_loss[lo + r] = z_loss * lse * lse
        if grad is None:
            continue
        out = rows[r]
        s = row_scale_at(scale, row_scale, lo + r)
        exp_scale = s * total_wt[r]
        if z_loss != 0.0:  # d(lse**2)/dx = 2 lse p
            exp_scale += 2.0 * z_loss * row_scale_at(z_scale, row_scale, lo + r) * lse
        k = scalar_like(x, exp_scale / sums[r])
        if t is None:
            if y is not None:
                f = scalar_like(x, s * eps_c)
                slope_y = softcap_slope(softcap(load(x, (r, y[r])), cap), cap)
                target_term = scalar_like(x, s * keep * class_weight(weight, y[r])) * slope_y
                for j in range(n_classes):
                    store(out, j, (e[j, r] * k - weighted(f, weight, j))
                          * softcap_slope(softcap(load(x, (r, j)), cap), cap))
                # the target's element written again, minus the target term
                store(out, y[r], (e[y[r], r] * k - weighted(f, weight, y[r])) * slope_y
                      - target_term)
        else:
            kt = scalar_like(x, keep)
            c = scalar_like(x, eps_c)
            f = scalar_like(x, s)
            for j in range(n_classes):
                store(out, j, (e[j, r] * k - f * weighted(load(t, (r, j)) * kt + c, weight, j))
                      * softcap_slope(softcap(load(x, (r, j)), cap), cap))
    if grad is not None:
        round_into(grad[lo:hi], rows)


@njit(**JIT_PARALLEL)
def cross_entropy_index_blocks(x, target, weight, weight_sum, ignore_index, smoothing, z_loss,
                               softcap, scale, z_scale, row_scale, row_loss, row_z_loss, grad):
    rows, n_blocks = _blocks(x.shape[0], x.shape[1])
    for b in prange(n_blocks):
        lo, hi = b * rows, min(x.shape[0], (b + 1) * rows)
        _ce_block(x, target[lo:hi], None, weight, weight_sum, ignore_index, smoothing, z_loss,
                  softcap, scale, z_scale, row_scale, row_loss, row_z_loss, grad, lo, hi)


@njit(**JIT_PARALLEL)
def cross_entropy_prob_blocks(x, target, weight, smoothing, z_loss, softcap, scale, z_scale,
                              row_scale, row_loss, row_z_loss, grad):
    rows, n_blocks = _blocks(x.shape[0], x.shape[1])
    for b in prange(n_blocks):
        lo, hi = b * rows, min(x.shape[0], (b + 1) * rows)
        _ce_block(x, None, target[lo:hi], weight, 0.0, None, smoothing, z_loss, softcap, scale,
                  z_scale, row_scale, row_loss, row_z_loss, grad, lo, hi)


@njit(**JIT)
def _log_softmax_backward_block(logp, dy, out):
    """out = dy - exp(logp) * sum(dy) for a block of rows: the exps of the whole block in
    one vectorised loop (a row of 10 is shorter than a vector, and its exps ran as scalar
    code: 1677721 x 10 float32, 2 threads, 1.15 -> 0.65 ns/elem), the rest row by row;
    sum(dy) in the compute type, as the forward blocks' sums (a float64 sum: 0.82)."""
    n_rows, n_classes = logp.shape
    flat = logp.reshape(logp.size)
    e = empty_like_compute(flat.size, logp)
    for i in range(flat.size):
        e[i] = vexp(load(flat, i))
    rows = compute_rows(out)  # out may be logp or dy: both are read before round_into
    for r in range(n_rows):
        total = scalar_like(logp, 0.0)
        for j in range(n_classes):
            total += load(dy, (r, j))
        for j in range(n_classes):
            store(rows, (r, j), load(dy, (r, j)) - e[r * n_classes + j] * total)
    round_into(out, rows)


@njit(**JIT_PARALLEL)
def log_softmax_backward_blocks(logp, dy, out):
    rows, n_blocks = _blocks(logp.shape[0], logp.shape[1])
    for b in prange(n_blocks):
        block = slice(b * rows, (b + 1) * rows)
        _log_softmax_backward_block(logp[block], dy[block], out[block])
