"""Numba cross-entropy kernels: loss per row and, fused in the same passes, the gradient.

Per row (torch semantics, eps = label_smoothing, w = class weights, W = sum(w)), with
probability targets t, t' = (1-eps) t + eps/C and T = sum_c w_c t'_c:
    loss = sum_c w_c t'_c (lse - z_c) = T log(sum) - sum_c w_c t'_c (z_c - m)
    grad = s * (T p - w t')
with p = softmax(z), m the row max, sum = sum_c exp(z_c - m), and s the caller's scale
(grad_output / reduction denominator). An index target y is the probability row
onehot(y), so both kinds run one row function, ``_ce_row``, and one block function
(``_small._ce_block``); an index target supplies T = (1-eps) w_y + eps/C W and its
shifted sum by lookup (z_y, w_y) where a probability row is summed in the exp pass.
The exp pass stores exp(z - m) in grad (a 16-bit grad: in a float32 row,
``_math.kept_exps``) and the write pass rescales it (one exp per element);
``grad=None`` compiles the loss-only kernel, the same body without the stores and the
write pass, and ``weight=None`` the one where every class weighs 1.
With ``softcap`` (a float; None: no cap) every logit x is first replaced by
z = softcap * tanh(x / softcap) (Gemma 2): the passes read x and cap it on the way, the
row max is the cap of the max (tanh is increasing), the exp pass keeps z, and the write
pass computes exp(z - m) again and multiplies the gradient by dz/dx = 1 - (z/softcap)^2
(``_math.softcap_restore``): the same three passes over the row, two exps per element.
"""
import math

import numpy as np
from numba import njit, prange

from ._math import (BLOCK, JIT, JIT_PARALLEL, JIT_REDUCTION, JIT_ROW, JIT_ROW_WRITER,
                    class_weight, exps_source, kept_exps, load, restore_exp, row_scale_at,
                    same_buffer, scalar_like, softcap, softcap_slope, softcap_stored, store,
                    vexp_core, block_or_none, weighted)
from ._split import over_chunks, splittable


@njit(**JIT_ROW_WRITER)
def _prob_sums_blocks(row, t, weight, m, keep, eps_c, out, in_place, cap):
    """sum(exp(z - m)), T = sum(w t'), sum(w t' (z - m)) as float64, z = softcap(row, cap);
    with ``out`` (not None), also out = softcap_stored(z, exp(z - m)). ``in_place``: as in
    _math._sumexp_blocks."""
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
                                   block_or_none(weight, start, start + BLOCK))
        if out is not None:
            dest = out[start:start + BLOCK]
            if in_place:
                block = dest
        for j in range(block.size):
            capped = softcap(load(block, j), cap)
            z = capped - m
            wt = weighted(load(block_t, j) * k + e, block_w, j)
            exp_z = vexp_core(z)
            if out is not None:
                dest[j] = softcap_stored(capped, exp_z, cap)
            acc_exp += exp_z
            acc_wt += wt
            acc_shifted += wt * z
        sum_exp += acc_exp
        total_wt += acc_wt
        shifted_wt += acc_shifted
    return sum_exp, total_wt, shifted_wt


@splittable(3)
@njit(**JIT_REDUCTION)
def _prob_row_sums(row, t, weight, m, keep, eps_c, out, cap):
    """One pass over a row (see _prob_sums_blocks); all NaN when m is not finite."""
    if not math.isfinite(m):
        if out is not None:
            out[:] = np.nan
        return np.nan, np.nan, np.nan
    if out is not None:
        if same_buffer(row, out):
            return _prob_sums_blocks(out, t, weight, m, keep, eps_c, out, True, cap)
    return _prob_sums_blocks(row, t, weight, m, keep, eps_c, out, False, cap)


@splittable(0)
@njit(**JIT)
def _prob_rescale_row(out, t, weight, exp_scale, target_scale, keep, eps_c, m, cap,
                      source=None):
    """out = e * exp_scale - target_scale * w * t' (weight None: ones), times dz/dx with
    a cap (e and the slope from out, or from source when given: _math.row_rescale)."""
    k = scalar_like(out, exp_scale)
    f = scalar_like(out, target_scale)
    kt = scalar_like(out, keep)
    e = scalar_like(out, eps_c)
    for j in range(out.size):
        exp_z, slope = restore_exp(out, source, j, m, cap)
        store(out, j, (exp_z * k - f * weighted(load(t, j) * kt + e, weight, j)) * slope)


@njit(**JIT_ROW)
def _index_sums(row, y, weight, weight_sum, m, keep, eps_c, cap, kept, chunks):
    """What _prob_row_sums returns, for t = onehot(y): sum(exp(z - m)) (kept in kept, if
    not None), T = keep w_y + eps_c W and sum(w t' (z - m)), the target terms by lookup."""
    # Both read the row before the exp pass overwrites it (inplace=True).
    shifted_y = float(softcap(load(row, y), cap) - m)
    shifted_w = 0.0
    if eps_c != 0.0:
        shifted_w = over_chunks("row_shifted_dot", chunks, weight, row, m, cap)
    sum_exp = over_chunks("row_sumexp", chunks, row, m, kept, cap)
    w_y = class_weight(weight, y)
    return sum_exp, keep * w_y + eps_c * weight_sum, keep * w_y * shifted_y + eps_c * shifted_w


@njit(**JIT_ROW)
def _ce_row(row, y, t, weight, weight_sum, smoothing, z_loss, cap, s, s_z, grad, chunks):
    """(loss, lse) of one row against the index target y (t None) or the probability row
    t (y None), its logits capped by ``cap`` (None: not); with grad (not None), also
    d(s * loss + s_z * z_loss * lse**2)/drow into grad (may be row)."""
    keep = 1.0 - smoothing
    eps_c = smoothing / row.size
    m = softcap(over_chunks("row_max", chunks, row), cap)
    kept = kept_exps(grad)
    # The target kind is chosen at compile time. Numba prunes a branch on ``arg is None``
    # only where arg is typed None: ``t is None`` is decided for index targets and the
    # inner ``y is not None`` for probability targets, so each kernel compiles one kind.
    if t is None:
        if y is not None:
            z_y = softcap(load(row, y), cap)  # read before grad is written
            sum_exp, total_wt, shifted_wt = _index_sums(row, y, weight, weight_sum, m, keep,
                                                        eps_c, cap, kept, chunks)
    else:
        sum_exp, total_wt, shifted_wt = over_chunks("_prob_row_sums", chunks, row, t, weight,
                                                    m, keep, eps_c, kept, cap)
    log_sum = math.log(sum_exp)
    lse = m + log_sum
    if grad is not None:
        exp_scale = s * total_wt / sum_exp
        if z_loss != 0.0:  # d(lse**2)/dx = 2 lse p
            exp_scale += 2.0 * z_loss * s_z * lse / sum_exp
        source = exps_source(grad, kept)
        if t is None:
            if y is not None:
                over_chunks("row_rescale", chunks, grad, exp_scale, s * eps_c, weight, m, cap,
                            source)
                # the target's element written again from z_y, as row_rescale wrote it,
                # minus the target term: one rounding for a 16-bit gradient
                slope_y = softcap_slope(z_y, cap)
                k = scalar_like(row, exp_scale)
                f = scalar_like(row, s * eps_c)
                store(grad, y, (vexp_core(z_y - m) * k - weighted(f, weight, y)) * slope_y
                      - scalar_like(row, s * keep * class_weight(weight, y)) * slope_y)
        else:
            over_chunks("_prob_rescale_row", chunks, grad, t, weight, exp_scale, s, keep,
                        eps_c, m, cap, source)
    return total_wt * log_sum - shifted_wt, lse


# The kernels hand the row function grad[i] from a branch on ``grad is None`` (pruned at
# compile time). Through a helper returning "grad[i] or None" instead (an overload),
# Numba 0.62-0.68 dropped the row function's element writes such as grad[y] -= c as dead
# code inside the prange (reproduced on a 3-line kernel).
@njit(**JIT_ROW)
def _ce_row_at(x, i, y, t, weight, weight_sum, smoothing, z_loss, cap, scale, z_scale,
               row_scale, row_z_loss, grad, chunks):
    """The loss of row i; its z-loss into row_z_loss[i] (when given, not empty)."""
    s = row_scale_at(scale, row_scale, i)
    s_z = row_scale_at(z_scale, row_scale, i)
    if grad is None:
        loss, lse = _ce_row(x[i], y, t, weight, weight_sum, smoothing, z_loss, cap, s, s_z,
                            None, chunks)
    else:
        loss, lse = _ce_row(x[i], y, t, weight, weight_sum, smoothing, z_loss, cap, s, s_z,
                            grad[i], chunks)
    if row_z_loss.size:
        row_z_loss[i] = z_loss * lse * lse
    return loss


@njit(**JIT_ROW)
def _index_row_at(x, i, target, weight, weight_sum, ignore_index, smoothing, z_loss, cap,
                  scale, z_scale, row_scale, row_z_loss, grad, chunks):
    if target[i] == ignore_index:
        if grad is not None:
            grad[i, :] = 0
        if row_z_loss.size:
            row_z_loss[i] = 0.0
        return 0.0
    return _ce_row_at(x, i, target[i], None, weight, weight_sum, smoothing, z_loss, cap,
                      scale, z_scale, row_scale, row_z_loss, grad, chunks)


@njit(**JIT_PARALLEL)
def cross_entropy_index(x, target, weight, weight_sum, ignore_index, smoothing, z_loss,
                        softcap, scale, z_scale, row_scale, row_loss, row_z_loss, grad, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(x.shape[0]):
            row_loss[i] = _index_row_at(x, i, target, weight, weight_sum, ignore_index,
                                        smoothing, z_loss, softcap, scale, z_scale,
                                        row_scale, row_z_loss, grad, chunks)
    else:
        for i in range(x.shape[0]):
            row_loss[i] = _index_row_at(x, i, target, weight, weight_sum, ignore_index,
                                        smoothing, z_loss, softcap, scale, z_scale,
                                        row_scale, row_z_loss, grad, chunks)


@njit(**JIT_PARALLEL)
def cross_entropy_prob(x, target, weight, smoothing, z_loss, softcap, scale, z_scale,
                       row_scale, row_loss, row_z_loss, grad, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(x.shape[0]):
            row_loss[i] = _ce_row_at(x, i, None, target[i], weight, 0.0, smoothing, z_loss,
                                     softcap, scale, z_scale, row_scale, row_z_loss, grad,
                                     chunks)
    else:
        for i in range(x.shape[0]):
            row_loss[i] = _ce_row_at(x, i, None, target[i], weight, 0.0, smoothing, z_loss,
                                     softcap, scale, z_scale, row_scale, row_z_loss, grad,
                                     chunks)
