"""Numba cross-entropy kernels: loss per row and, fused in the same passes, the gradient.

Per row (torch semantics, eps = label_smoothing, w = class weights, W = sum(w)):
  index target y:  loss = (1-eps) w_y (lse - z_y) + eps/C * sum_c w_c (lse - z_c)
                   grad = s * (((1-eps) w_y + eps/C W) p - (1-eps) w_y onehot(y) - eps/C w)
  probabilities t: t' = (1-eps) t + eps/C,  T = sum_c w_c t'_c
                   loss = sum_c w_c t'_c (lse - z_c),  grad = s * (T p - w t')
with p = softmax(z), s = the caller's scale (grad_output / reduction denominator).
Everything is computed relative to the row max m (lse - z_c = log(sum) - (z_c - m)).
``grad=None`` compiles the loss-only kernel: the same body with the write pass pruned.
"""
import math

from numba import njit, prange

from ._math import (BLOCK, JIT, JIT_PARALLEL, JIT_REDUCTION, JIT_ROW_WRITER, row_max,
                    row_scale_at, row_shifted_dot, row_sumexp, same_buffer, scalar_like, vexp)


@njit(**JIT_ROW_WRITER)
def _index_grad_row(row, m, exp_scale, weight_scale, weight, out):
    """out = exp(row - m) * exp_scale - weight_scale * weight (weight term skipped at 0)."""
    k = scalar_like(row, exp_scale)
    if weight_scale != 0.0:
        f = scalar_like(row, weight_scale)
        for j in range(row.size):
            out[j] = vexp(row[j] - m) * k - f * weight[j]
    else:
        for j in range(row.size):
            out[j] = vexp(row[j] - m) * k


@njit(**JIT_PARALLEL)
def cross_entropy_index(x, target, weight, weight_sum, ignore_index, smoothing,
                        scale, row_scale, row_loss, grad):
    n_classes = x.shape[1]
    eps_c = smoothing / n_classes
    # inplace=True: grad *is* x; the writer reads the row through grad (see JIT_ROW_WRITER).
    in_place = grad is not None and same_buffer(x, grad)
    for i in prange(x.shape[0]):
        row = x[i]
        y = target[i]
        if y == ignore_index:
            row_loss[i] = 0.0
            if grad is not None:
                grad[i, :] = 0
            continue
        m = row_max(row)
        sum_exp = row_sumexp(row, m)
        log_sum = math.log(sum_exp)
        w_y = float(weight[y])
        shifted_y = float(row[y] - m)
        loss = (1.0 - smoothing) * w_y * (log_sum - shifted_y)
        if smoothing != 0.0:
            loss += eps_c * (weight_sum * log_sum - row_shifted_dot(weight, row, m))
        row_loss[i] = loss
        if grad is not None:
            s = row_scale_at(scale, row_scale, i)
            onehot_coef = (1.0 - smoothing) * w_y
            exp_scale = s * (onehot_coef + eps_c * weight_sum) / sum_exp
            if in_place:
                _index_grad_row(grad[i], m, exp_scale, s * eps_c, weight, grad[i])
            else:
                _index_grad_row(row, m, exp_scale, s * eps_c, weight, grad[i])
            grad[i, y] -= scalar_like(row, s * onehot_coef)


@njit(**JIT_REDUCTION)
def _prob_row_sums(row, t, weight, m, keep, eps_c):
    """One pass: sum(exp(row - m)), T = sum(w t'), and sum(w t' (row - m)), as float64."""
    sum_exp = 0.0
    total_wt = 0.0
    shifted_wt = 0.0
    k = scalar_like(row, keep)
    e = scalar_like(row, eps_c)
    for start in range(0, row.size, BLOCK):
        acc_exp = scalar_like(row, 0)
        acc_wt = scalar_like(row, 0)
        acc_shifted = scalar_like(row, 0)
        block, block_t, block_w = (row[start:start + BLOCK], t[start:start + BLOCK],
                                   weight[start:start + BLOCK])
        for j in range(block.size):
            z = block[j] - m
            wt = block_w[j] * (block_t[j] * k + e)
            acc_exp += vexp(z)
            acc_wt += wt
            acc_shifted += wt * z
        sum_exp += acc_exp
        total_wt += acc_wt
        shifted_wt += acc_shifted
    return sum_exp, total_wt, shifted_wt


@njit(**JIT_ROW_WRITER)
def _prob_grad_row(row, t, weight, m, exp_scale, target_scale, keep, eps_c, out):
    """out = exp(row - m) * exp_scale - target_scale * w * t'."""
    k = scalar_like(row, exp_scale)
    f = scalar_like(row, target_scale)
    kt = scalar_like(row, keep)
    e = scalar_like(row, eps_c)
    for j in range(row.size):
        out[j] = vexp(row[j] - m) * k - f * weight[j] * (t[j] * kt + e)


@njit(**JIT_PARALLEL)
def cross_entropy_prob(x, target, weight, smoothing, scale, row_scale, row_loss, grad):
    keep = 1.0 - smoothing
    eps_c = smoothing / x.shape[1]
    in_place = grad is not None and same_buffer(x, grad)
    for i in prange(x.shape[0]):
        row = x[i]
        m = row_max(row)
        sum_exp, total_wt, shifted_wt = _prob_row_sums(row, target[i], weight, m, keep, eps_c)
        row_loss[i] = total_wt * math.log(sum_exp) - shifted_wt
        if grad is not None:
            s = row_scale_at(scale, row_scale, i)
            exp_scale = s * total_wt / sum_exp
            if in_place:
                _prob_grad_row(grad[i], target[i], weight, m, exp_scale, s, keep, eps_c, grad[i])
            else:
                _prob_grad_row(row, target[i], weight, m, exp_scale, s, keep, eps_c, grad[i])
