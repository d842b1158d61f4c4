"""Numba kernel of the generalised JSD between a student's and a teacher's logits (and its
limits, the forward and reverse KL), with the gradient for the student in the same passes.

Per row, with a = s / T and b = t / T (student s, teacher t, temperature T),
log Q = a - lse(a), log P = b - lse(b), M = beta P + (1 - beta) Q:
    L = beta KL(P || M) + (1 - beta) KL(Q || M)                       (0 < beta < 1)
      = beta sum P (log P - log M) + (1 - beta) sum Q (log Q - log M)
    L = KL(P || Q) = sum P (log P - log Q)                            (beta = 0)
    L = KL(Q || P) = sum Q (log Q - log P)                            (beta = 1)
Gradient, in closed form. As a function of Q alone (P is a constant),
dL/dQ_j = (1 - beta) (log Q_j + 1) - (1 - beta) (log M_j + 1) = (1 - beta) r_j with
r = log Q - log M; the softmax's Jacobian dQ_k/da_j = Q_k (delta_kj - Q_j) then gives
    dL/da_j = (1 - beta) Q_j (r_j - K),   K = sum_k Q_k r_k = KL(Q || M),
and likewise Q_j (r_j - K) with r = log Q - log P at beta = 1 (K = the loss) and
Q_j - P_j at beta = 0; dL/ds = dL/da / T.

Passes over a row (each array is read from memory once, in the first; the later passes
find the row in cache): the maxima m_s, m_t; the sums S = sum(exp((x - m) / T)) of both
rows, exp((s - m_s) / T) kept in grad and exp((t - m_t) / T) in a float row of scratch;
the loss and K, P and Q from the kept exponentials, where grad gets r and the scratch row
Q (or, at beta = 0, grad the gradient itself, which needs no K); the gradient
k Q (r - K). So 2 exps and a log per element (computing P and Q again took 4 exps and a
log: 0.74x the time at 16777 x 1000, Cython, bench.ab). The forward KL, which would save
one exp by the scratch row, computes P again (see _jsd_row). A
term weighted by a probability of 0 adds 0 (a select, not 0 * log 0); M is clamped to the
smallest normal number before its log, so that it stays finite where both probabilities
underflow (a term that differs by this is below 1e-37).
The exp pass keeps exp((s - m_s) / T), and the loss pass r, in grad itself, or for a
16-bit grad in a float32 row (``_math.kept_exps``), so that the gradient is rounded once.
"""
import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._math import (BLOCK, JIT, JIT_PARALLEL, JIT_REDUCTION, JIT_ROW, JIT_ROW_WRITER,
                    block_or_none, empty_like_compute, exps_source, fill_nan, keep_value,
                    kept_exps, kept_value, load, row_scale_at, scalar_like, smallest_normal,
                    store, vexp_core, vlog)
from ._split import over_chunks, splittable

FORWARD, REVERSE, MIXTURE = 0, 1, 2  # beta = 0, beta = 1, 0 < beta < 1


def _or_else(a, b):
    """``a``, or ``b`` when ``a`` is None, decided by ``a``'s type at compile time."""
    raise NotImplementedError("_or_else is only callable from Numba-compiled code")


@overload(_or_else, inline="always")
def _or_else_overload(a, b):
    if isinstance(a, (types.NoneType, types.Omitted)):
        return lambda a, b: b
    return lambda a, b: a


@njit(**JIT_ROW_WRITER)
def _sums_blocks(s, t, c, out, out_t):
    """(sum(exp((s - m_s) / T)), sum(exp((t - m_t) / T))) as float64, c = (m_s, m_t, 1/T);
    with ``out`` (not None), also out = exp((s - m_s) / T), and with ``out_t`` (not None)
    out_t = exp((t - m_t) / T)."""
    m_s, m_t, inv_t = scalar_like(s, c[0]), scalar_like(s, c[1]), scalar_like(s, c[2])
    sum_s = 0.0
    sum_t = 0.0
    for start in range(0, s.size, BLOCK):
        acc_s = scalar_like(s, 0)
        acc_t = scalar_like(s, 0)
        block_s, block_t = s[start:start + BLOCK], t[start:start + BLOCK]
        if out is not None:
            dest = out[start:start + BLOCK]
        dest_t = block_or_none(out_t, start, start + BLOCK)
        for j in range(block_s.size):
            e_s = vexp_core((load(block_s, j) - m_s) * inv_t)
            e_t = vexp_core((load(block_t, j) - m_t) * inv_t)
            if out is not None:
                dest[j] = e_s
            if out_t is not None:
                dest_t[j] = e_t
            acc_s += e_s
            acc_t += e_t
        sum_s += acc_s
        sum_t += acc_t
    return sum_s, sum_t


@splittable(2)
@njit(**JIT_REDUCTION)
def _jsd_sums(s, t, c, out, out_t):
    return _sums_blocks(s, t, c, out, out_t)


@njit(**JIT_ROW_WRITER)
def _terms_blocks(s, t, c, out, source, exps_t, mode):
    """(loss, K) of the row as float64 (see the top of this file), c = (m_s, m_t, 1/T,
    log S_s, log S_t, 1/S_s, beta, k, 1/S_t). With ``out`` (not None; it, or ``source``,
    holding exp((s - m_s) / T): _math.kept_value), also r kept there and Q in ``exps_t``,
    or at beta = 0 the gradient k (Q - P) into out. Without ``out``, ``source`` (if not
    None) holds exp((s - m_s) / T). ``exps_t``: exp((t - m_t) / T), or None (P from its
    exp; always at beta = 0). ``mode`` (a constant)."""
    m_s, m_t, inv_t = scalar_like(s, c[0]), scalar_like(s, c[1]), scalar_like(s, c[2])
    log_sum_s, log_sum_t = scalar_like(s, c[3]), scalar_like(s, c[4])
    inv_sum_s, beta, k = scalar_like(s, c[5]), scalar_like(s, c[6]), scalar_like(s, c[7])
    inv_sum_t = scalar_like(s, c[8])
    keep = scalar_like(s, 1.0 - c[6])
    zero = scalar_like(s, 0)
    tiny = smallest_normal(s)
    loss = 0.0
    kl_q = 0.0
    for start in range(0, s.size, BLOCK):
        acc_loss = scalar_like(s, 0)
        acc_kl_q = scalar_like(s, 0)
        block_s, block_t = s[start:start + BLOCK], t[start:start + BLOCK]
        if out is not None:
            dest = out[start:start + BLOCK]
        kept = block_or_none(source, start, start + BLOCK)
        kept_t = block_or_none(exps_t, start, start + BLOCK)
        for j in range(block_s.size):
            log_q = (load(block_s, j) - m_s) * inv_t - log_sum_s
            log_p = (load(block_t, j) - m_t) * inv_t - log_sum_t
            if out is not None:
                q = kept_value(dest, kept, j) * inv_sum_s
            elif source is not None:  # the loss alone, s's exps kept
                q = kept[j] * inv_sum_s
            else:
                q = vexp_core(log_q)
            if exps_t is not None:
                p = kept_t[j] * inv_sum_t
            else:
                p = vexp_core(log_p)
            if mode == FORWARD:
                acc_loss += p * (log_p - log_q) if p > zero else zero
                if out is not None:
                    store(dest, j, k * (q - p))
            elif mode == REVERSE:
                acc_loss += q * (log_q - log_p) if q > zero else zero
                if out is not None:
                    keep_value(dest, kept, j, log_q - log_p)
                    if exps_t is not None:  # (always with out: a pruned branch)
                        kept_t[j] = q
            else:
                mix = beta * p + keep * q
                log_m = vlog(mix if mix > tiny else tiny)
                term_q = q * (log_q - log_m) if q > zero else zero
                term_p = p * (log_p - log_m) if p > zero else zero
                acc_loss += beta * term_p + keep * term_q
                acc_kl_q += term_q
                if out is not None:
                    keep_value(dest, kept, j, log_q - log_m)
                    if exps_t is not None:  # (always with out: a pruned branch)
                        kept_t[j] = q
        loss += acc_loss
        kl_q += acc_kl_q
    return loss, (loss if mode == REVERSE else kl_q)


@splittable(2)
@njit(**JIT_REDUCTION)
def _forward_terms(s, t, c, out, source, exps_t):
    return _terms_blocks(s, t, c, out, source, exps_t, FORWARD)


@splittable(2)
@njit(**JIT_REDUCTION)
def _reverse_terms(s, t, c, out, source, exps_t):
    return _terms_blocks(s, t, c, out, source, exps_t, REVERSE)


@splittable(2)
@njit(**JIT_REDUCTION)
def _mixture_terms(s, t, c, out, source, exps_t):
    return _terms_blocks(s, t, c, out, source, exps_t, MIXTURE)


@splittable(0)
@njit(**JIT)
def _jsd_gradient(q_row, c, out, source):
    """out = k Q (r - K), r kept in out (or source: _math.kept_value), Q in q_row; c = (k, K)."""
    k, kl_q = scalar_like(q_row, c[0]), scalar_like(q_row, c[1])
    zero = scalar_like(q_row, 0)
    for j in range(q_row.size):
        q = q_row[j]
        # a statement of its own, not inside store(): see _entropy._gradient_from_exp
        g = k * q * (kept_value(out, source, j) - kl_q) if q > zero else zero
        store(out, j, g)


@njit(**JIT_ROW)
def _jsd_row(s, t, beta, inv_t, scale, grad, chunks):
    """The loss of one row; with grad (not None, not s or t), also scale * dL/ds into it."""
    m_s = over_chunks("row_max", chunks, s)
    m_t = over_chunks("row_max", chunks, t)
    if not (math.isfinite(m_s) and math.isfinite(m_t)):  # NaN, +inf or all -inf: NaN
        if grad is not None:
            fill_nan(grad)
        return np.nan
    mode = FORWARD if beta == 0.0 else (REVERSE if beta == 1.0 else MIXTURE)
    maxima = (float(m_s), float(m_t))
    # Not for the forward KL here (the Cython kernel keeps them for rows up to BLOCK): with
    # log P used in log P - log Q alone, the reassociating reduction folded that
    # difference, and a one-class row's loss came out 2e-16, not 0.
    if grad is None:
        if mode != FORWARD and s.size <= BLOCK:  # the loss alone: both rows' exps kept
            return _jsd_passes(s, t, beta, inv_t, scale, None, empty_like_compute(s.size, s),
                               maxima, mode, chunks, empty_like_compute(s.size, s))
        return _jsd_passes(s, t, beta, inv_t, scale, None, None, maxima, mode, chunks, None)
    if mode != FORWARD:
        return _jsd_passes(s, t, beta, inv_t, scale, grad, empty_like_compute(s.size, s),
                           maxima, mode, chunks, None)
    return _jsd_passes(s, t, beta, inv_t, scale, grad, None, maxima, mode, chunks, None)


@njit(**JIT_ROW)
def _jsd_passes(s, t, beta, inv_t, scale, grad, exps_t, maxima, mode, chunks, exps_s):
    """_jsd_row's passes after the maxima; ``exps_t``: a row for t's exponentials, then Q
    (None: at beta = 0, whose gradient the loss pass writes, or for a long row's loss
    alone); ``exps_s``: without grad, a row for s's exponentials (or None)."""
    # chosen by type, not in a branch: inlined, a branch on grad is not pruned, and kept
    # typed as an optional array was not cut into the split path's chunks
    kept = _or_else(kept_exps(grad), exps_s)
    source = _or_else(exps_source(grad, kept), exps_s)
    sum_s, sum_t = over_chunks("_jsd_sums", chunks, s, t, (maxima[0], maxima[1], inv_t),
                               kept, exps_t)
    k = scale * inv_t * (1.0 - beta if mode == MIXTURE else 1.0)
    c = (maxima[0], maxima[1], inv_t, math.log(sum_s), math.log(sum_t), 1.0 / sum_s, beta, k,
         1.0 / sum_t)
    if mode == FORWARD:
        loss, kl_q = over_chunks("_forward_terms", chunks, s, t, c, grad, source, exps_t)
    elif mode == REVERSE:
        loss, kl_q = over_chunks("_reverse_terms", chunks, s, t, c, grad, source, exps_t)
    else:
        loss, kl_q = over_chunks("_mixture_terms", chunks, s, t, c, grad, source, exps_t)
    if grad is not None:  # (each test is on an argument: pruned at compile time)
        if exps_t is not None:  # (None at beta = 0)
            if mode != FORWARD:
                if math.isfinite(kl_q):
                    over_chunks("_jsd_gradient", chunks, exps_t, (k, kl_q), grad, source)
                else:  # an infinite reverse KL (Q > 0 = P somewhere) has no gradient
                    fill_nan(grad)
    return loss


# The row function gets grad[i] from a branch on ``grad is None`` (pruned at compile
# time), as in _cross_entropy._ce_row_at.
@njit(**JIT_ROW)
def _jsd_row_at(student, teacher, i, beta, inv_t, scale, row_scale, grad, chunks):
    s = row_scale_at(scale, row_scale, i)
    if grad is None:
        return _jsd_row(student[i], teacher[i], beta, inv_t, s, None, chunks)
    return _jsd_row(student[i], teacher[i], beta, inv_t, s, grad[i], chunks)


@njit(**JIT_PARALLEL)
def jsd_logits(student, teacher, beta, inv_temperature, scale, row_scale, row_loss, grad, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(student.shape[0]):
            row_loss[i] = _jsd_row_at(student, teacher, i, beta, inv_temperature, scale,
                                      row_scale, grad, chunks)
    else:
        for i in range(student.shape[0]):
            row_loss[i] = _jsd_row_at(student, teacher, i, beta, inv_temperature, scale,
                                      row_scale, grad, chunks)
