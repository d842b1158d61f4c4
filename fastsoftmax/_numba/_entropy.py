"""Numba entropy kernels: H = -sum(p log p) of p = softmax(x) per row and, fused in the
same passes, dH/dx = p * (mean_d - d).

With m the row max, d = x - m (<= 0), e = exp(d) and S = sum(e):
  H = log(S) - sum(e d) / S,  dH/dx_j = p_j (mean_d - d_j),  mean_d = sum(e d) / S.
Both terms of H are >= 0, so nothing cancels at large logits (lse - sum(p x) would).
A -inf logit has d = -inf; d is clamped to D_FLOOR, where e is 0, so that it adds 0
(not 0 * -inf = NaN) to H and gets a 0 gradient, as in torch's Categorical.
The exp pass keeps e for the write pass, which turns it into the gradient with d
recomputed from x. In place (grad is x) it keeps d instead, which the write pass needs
once x is overwritten, and computes e again from it (see fs_entropy_grad in
fastsoftmax/_cython/rows_typed.h for the measured cost of that second exp). They are
kept in grad itself, or for a 16-bit grad in a float32 row (``_math.kept_exps``), so that
the gradient is rounded once; in place the 16-bit write pass then reads that row alone
(``_math.exps_source``).
"""
import math

import numpy as np
from numba import njit, prange

from ._math import (BLOCK, JIT, JIT_PARALLEL, JIT_REDUCTION, JIT_ROW, JIT_ROW_WRITER,
                    exps_source, fill_nan, kept_exps, kept_value, load, row_scale_at, same_buffer,
                    scalar_like, store, vexp_core)
from ._small import _blocks, _columns, _logs
from ._split import over_chunks, splittable

D_FLOOR = -1e30  # below the exp's underflow threshold in both dtypes: e = 0 there


@njit(**JIT_ROW_WRITER)
def _sums_blocks(row, m, out, read_out, keep_d):
    """(sum(e), sum(e d)) as float64 with d = max(row - m, D_FLOOR), e = exp(d); with
    ``out`` (not None), also out = d (``keep_d``) or e. ``read_out`` (out is row): as
    ``in_place`` in _math._sumexp_blocks. Both flags are constants."""
    sum_e = 0.0
    sum_ed = 0.0
    floor = scalar_like(row, D_FLOOR)
    for start in range(0, row.size, BLOCK):
        acc_e = scalar_like(row, 0)
        acc_ed = scalar_like(row, 0)
        block = row[start:start + BLOCK]
        if out is not None:
            dest = out[start:start + BLOCK]
            if read_out:
                block = dest
        for j in range(block.size):
            d = load(block, j) - m
            d = d if d > floor else floor
            e = vexp_core(d)
            if out is not None:
                dest[j] = d if keep_d else e
            acc_e += e
            acc_ed += e * d
        sum_e += acc_e
        sum_ed += acc_ed
    return sum_e, sum_ed


@splittable(2)
@njit(**JIT_REDUCTION)
def _row_sums(row, m, out, keep_d):
    if out is not None:
        if same_buffer(row, out):
            return _sums_blocks(out, m, out, True, True)
    if keep_d:
        return _sums_blocks(row, m, out, False, True)
    return _sums_blocks(row, m, out, False, False)


@splittable(0)
@njit(**JIT)
def _gradient_from_d(out, k, mean_d, source):
    """out = k * exp(d) * (mean_d - d), d kept in out (or source: _math.kept_value)."""
    kk = scalar_like(out, k)
    mean = scalar_like(out, mean_d)
    for j in range(out.size):
        d = kept_value(out, source, j)
        store(out, j, kk * vexp_core(d) * (mean - d))


@splittable(0)
@njit(**JIT)
def _gradient_from_exp(row, m, out, k, mean_d, source):
    """out = k * e * (mean_d - d), e kept in out (or source), d = max(row - m, D_FLOOR)."""
    kk = scalar_like(out, k)
    mean = scalar_like(out, mean_d)
    floor = scalar_like(row, D_FLOOR)
    for j in range(out.size):
        d = load(row, j) - m
        # a statement of its own: as a conditional expression inside store's argument,
        # Numba 0.68 dropped the store (the element kept e)
        d = d if d > floor else floor
        store(out, j, kk * kept_value(out, source, j) * (mean - d))


@njit(**JIT_ROW)
def _row_entropy(row, grad, s, chunks):
    """H of one row; with grad (not None), also s * dH/drow into grad (may be row)."""
    m = over_chunks("row_max", chunks, row)
    if not math.isfinite(m):  # a NaN, +inf or all -inf row: NaN, as torch
        if grad is not None:
            fill_nan(grad)
        return np.nan
    kept = kept_exps(grad)
    source = exps_source(grad, kept)
    in_place = False
    if grad is not None:
        in_place = same_buffer(row, grad)
    sum_e, sum_ed = over_chunks("_row_sums", chunks, row, m, kept, in_place)
    mean_d = sum_ed / sum_e
    if grad is not None:
        if in_place:
            over_chunks("_gradient_from_d", chunks, grad, s / sum_e, mean_d, source)
        else:
            over_chunks("_gradient_from_exp", chunks, row, m, grad, s / sum_e, mean_d, source)
    return math.log(sum_e) - mean_d


@njit(**JIT_PARALLEL)
def entropy(logits, out, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(logits.shape[0]):
            store(out, i, _row_entropy(logits[i], None, 1.0, chunks))
    else:
        for i in range(logits.shape[0]):
            store(out, i, _row_entropy(logits[i], None, 1.0, chunks))


@njit(**JIT_PARALLEL)
def entropy_with_grad(logits, scale, row_scale, row_loss, grad, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(logits.shape[0]):
            row_loss[i] = _row_entropy(logits[i], grad[i], row_scale_at(scale, row_scale, i),
                                       chunks)
    else:
        for i in range(logits.shape[0]):
            row_loss[i] = _row_entropy(logits[i], grad[i], row_scale_at(scale, row_scale, i),
                                       chunks)


# ---- few classes (C < _small.SMALL_C): blocks of rows, transposed (see _small) ----

@njit(**JIT)
def _block_rows(x, scale, row_scale, row_loss, grad, lo, hi):
    """Rows lo:hi: row_loss = H and, with grad (not None), the scaled gradient. x is read
    into the scratch (in the compute type) before grad is written, so grad may be x
    itself."""
    x = x[lo:hi]
    n_rows, n_classes = x.shape
    d, m = _columns(x)
    e = np.empty_like(d)
    sum_e = np.zeros(n_rows)
    sum_ed = np.zeros(n_rows)
    floor = scalar_like(x, D_FLOOR)
    for j in range(n_classes):
        d_j, e_j = d[j], e[j]
        for r in range(n_rows):
            v = d_j[r] if d_j[r] > floor else floor
            d_j[r] = v
            e_j[r] = vexp_core(v)
            sum_e[r] += e_j[r]
            sum_ed[r] += e_j[r] * v
    log_sum_e = _logs(sum_e)
    for r in range(n_rows):
        mean_d = sum_ed[r] / sum_e[r] if math.isfinite(m[r]) else np.nan
        store(row_loss, lo + r, log_sum_e[r] - mean_d)
        if grad is not None:
            k = scalar_like(x, row_scale_at(scale, row_scale, lo + r) / sum_e[r])
            mean = scalar_like(x, mean_d)
            out = grad[lo + r]
            for j in range(n_classes):
                store(out, j, k * e[j, r] * (mean - d[j, r]))


@njit(**JIT_PARALLEL)
def entropy_blocks(logits, out):
    rows, n_blocks = _blocks(logits.shape[0], logits.shape[1])
    no_row_scale = np.empty(0)
    for b in prange(n_blocks):
        _block_rows(logits, 1.0, no_row_scale, out, None, b * rows,
                    min(logits.shape[0], (b + 1) * rows))


@njit(**JIT_PARALLEL)
def entropy_with_grad_blocks(logits, scale, row_scale, row_loss, grad):
    rows, n_blocks = _blocks(logits.shape[0], logits.shape[1])
    for b in prange(n_blocks):
        _block_rows(logits, scale, row_scale, row_loss, grad, b * rows,
                    min(logits.shape[0], (b + 1) * rows))
