"""Numba kernels of vocab-parallel cross-entropy (:mod:`fastsoftmax.vocab_parallel`).

The single-process kernel (``_cross_entropy.cross_entropy_index``) split at its
``log(sum)`` line: a statistics kernel (the row max, then the exp pass that leaves
exp(x - shift) in the gradient buffer, plus the target and smoothing terms) runs before
the collectives, and a finishing kernel (``row_rescale`` with the global factor, the
target's one-hot term on the rank that owns it) after them. One exp per element, and
the logits are read by the statistics kernel only.

``shift`` is the shard's row max, or 0 when the shard's row is all -inf (its softmax
terms are then 0 and nothing is subtracted from -inf). Row statistics are written to
``stats`` (float64, one column per row):

* index targets: ``[max, sum exp(x - shift), x_y - shift (owner only), sum w (x - shift)]``
* probability targets: ``[max, sum exp(x - shift), sum w t (x - shift), sum w t,
  sum w (x - shift)]``

the last one only when ``smoothing`` is True. ``local_target`` holds the target's
column in this shard, ``NOT_OWNED`` when another shard has it, or ``IGNORED``: that row's
gradient is set to 0 and its statistics say "no classes" (max -inf, sum 0).

A 16-bit gradient buffer would round the kept exponentials (and the gradient would be
rounded twice), and a float32 buffer of the shard's size would cost twice the 16-bit
logits: so for 16-bit logits the statistics kernel keeps nothing, and the finishing
kernel computes each row's exponentials again from the logits into a float32 row
(``_math.kept_exps``) before it writes the gradient, rounded once. With ``inplace=True``
the logits are still intact then: only the statistics kernel's zeroed ignored rows are
written before, and those the finishing kernel leaves alone.
"""
import math

import numpy as np

from numba import njit, prange, types
from numba.extending import overload

from . import _cross_entropy  # noqa: F401  (registers its row helpers for over_chunks)
from ._math import (HALF_BITS, JIT, JIT_PARALLEL, JIT_ROW, exps_source, kept_exps,
                    kept_value, load, scalar_like, store, vexp, weighted)
from ._split import over_chunks

NOT_OWNED = -1
IGNORED = -2

KERNELS = ("vocab_parallel_stats_index", "vocab_parallel_stats_prob",
           "vocab_parallel_shard_terms", "vocab_parallel_row_terms",
           "vocab_parallel_finish_index", "vocab_parallel_finish_prob")


@njit(**JIT)
def _shift(row, m):
    """The point the shard's row is shifted by: its max, or 0 for an all -inf row; in the
    row's dtype (a float64 shift made the float32 exp pass float64: 1.37 vs 0.7 ns/elem)."""
    return scalar_like(row, 0) if m == -math.inf else m


def exps_kept_in(grad):
    """Where the statistics kernel keeps exp(x - shift) for the finishing kernel: the
    gradient row, or None for a 16-bit one (see the top of this file)."""
    raise NotImplementedError("exps_kept_in is only callable from Numba-compiled code")


@overload(exps_kept_in)
def _exps_kept_in_overload(grad):
    if isinstance(grad, types.Array) and grad.dtype in HALF_BITS:
        return lambda grad: None
    return lambda grad: grad


def exps_again(x, shift, kept, source, chunks):
    """kept = exp(x - shift) when the statistics kernel kept none (``source``, from
    ``_math.exps_source``, is not None); nothing otherwise."""
    raise NotImplementedError("exps_again is only callable from Numba-compiled code")


@overload(exps_again)
def _exps_again_overload(x, shift, kept, source, chunks):
    if isinstance(source, types.NoneType):
        return lambda x, shift, kept, source, chunks: None

    def again(x, shift, kept, source, chunks):
        over_chunks("row_sumexp", chunks, x, shift, kept)
    return again


@njit(**JIT_ROW)
def _index_stats_row(row, y, weight, smoothing, stats, i, grad, chunks):
    if y == IGNORED:
        grad[:] = 0
        stats[0, i] = -math.inf
        stats[1, i] = 0.0
        stats[2, i] = 0.0
        if smoothing:
            stats[3, i] = 0.0
        return
    m = over_chunks("row_max", chunks, row)
    shift = _shift(row, m)
    # read before the exp pass overwrites the row (grad may be row)
    stats[2, i] = float(load(row, y)) - shift if y >= 0 else 0.0
    if smoothing:
        stats[3, i] = over_chunks("row_shifted_dot", chunks, weight, row, shift)
    stats[0, i] = m
    stats[1, i] = over_chunks("row_sumexp", chunks, row, shift, exps_kept_in(grad))


@njit(**JIT_PARALLEL)
def vocab_parallel_stats_index(x, local_target, weight, smoothing, stats, grad, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(x.shape[0]):
            _index_stats_row(x[i], local_target[i], weight, smoothing, stats, i, grad[i], chunks)
    else:
        for i in range(x.shape[0]):
            _index_stats_row(x[i], local_target[i], weight, smoothing, stats, i, grad[i],
                             chunks)


@njit(**JIT_ROW)
def _prob_stats_row(row, t, weight, smoothing, stats, i, grad, chunks):
    m = over_chunks("row_max", chunks, row)
    shift = _shift(row, m)
    if smoothing:  # before the exp pass overwrites the row
        stats[4, i] = over_chunks("row_shifted_dot", chunks, weight, row, shift)
    sum_exp, total_wt, shifted_wt = over_chunks("_prob_row_sums", chunks, row, t, weight,
                                                shift, 1.0, 0.0, exps_kept_in(grad), None)
    stats[0, i] = m
    stats[1, i] = sum_exp
    stats[2, i] = shifted_wt
    stats[3, i] = total_wt


@njit(**JIT_PARALLEL)
def vocab_parallel_stats_prob(x, target, weight, smoothing, stats, grad, chunks):
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(x.shape[0]):
            _prob_stats_row(x[i], target[i], weight, smoothing, stats, i, grad[i], chunks)
    else:
        for i in range(x.shape[0]):
            _prob_stats_row(x[i], target[i], weight, smoothing, stats, i, grad[i], chunks)


# The O(rows) arithmetic between the sweeps: one loop per phase instead of a dozen NumPy
# passes over rows-long arrays (python -m bench.vocab_parallel 16384x1000 --threads 2,
# in place: 1.40 -> 1.32-1.38 x the single kernel). The exp is vexp: math.exp's libm
# call per row made the combine loop 92 us instead of 18 (16384 rows).

@njit(**JIT)
def vocab_parallel_shard_terms(stats, global_max, local_target, weight, smoothing,
                               local_weight_sum, shard_values):
    """Phase 2's terms of this shard, moved from its shift to the global max M:
    (factor, sums, terms), factor[i] = exp(max - M) and sums the array for the SUM
    all-reduce: terms (a (k, rows) view), then ``shard_values`` (the shard's own sums:
    its size, class-weight sum ``local_weight_sum``, ...; vocab_parallel.combine).
    terms[:, i] = [sum exp(x - M), target term (index: x_y - M where owned, else 0;
    probabilities: sum w t (x - M)), with class weights or probabilities the target
    weight (w_y where owned, else 0; sum w t), with smoothing sum w (x - M)].
    ``local_target`` is None for probability targets; a row it marks IGNORED has no
    class anywhere and takes M = 0 (kept finite)."""
    n = stats.shape[1]
    k = (3 if local_target is None or weight is not None else 2) + smoothing
    factor, sums = np.empty(n), np.empty(k * n + shard_values.size)
    terms = sums[:k * n].reshape(k, n)
    for i in range(n):
        m = stats[0, i]
        ignored = local_target is not None and local_target[i] == IGNORED
        global_m = 0.0 if ignored else global_max[i]
        factor[i] = vexp(m - global_m)
        delta = (0.0 if m == -math.inf else m) - global_m
        terms[0, i] = stats[1, i] * factor[i]
        if local_target is None:
            terms[1, i] = stats[2, i] + stats[3, i] * delta
            terms[2, i] = stats[3, i]
        else:
            owned = local_target[i] >= 0
            terms[1, i] = stats[2, i] + delta if owned else 0.0
            if weight is not None:
                terms[2, i] = weight[local_target[i]] if owned else 0.0
        if smoothing:
            terms[-1, i] = stats[-1, i] + local_weight_sum * delta
    sums[k * n:] = shard_values
    return factor, sums, terms


@njit(**JIT)
def vocab_parallel_row_terms(sum_exp, log_sum, target_term, target_weight, smoothing_term,
                             factor, valid, scale, row_scale, keep, eps_c, weight_sum,
                             probabilities):
    """Phase 3's per-row values from the combined statistics: (row_loss, exp_scale, s,
    target_scale) with s the row's gradient scale, ``scale`` times ``row_scale[i]`` (an
    empty ``row_scale``: 1), as the finishing kernels take them. ``smoothing_term`` and
    ``valid`` (index targets) may be None."""
    n = log_sum.shape[0]
    row_loss, exp_scale, s, target_scale = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        total_wt = keep * target_weight[i] + eps_c * weight_sum
        shifted_wt = keep * target_term[i] if probabilities else \
            keep * target_weight[i] * target_term[i]
        if smoothing_term is not None:
            shifted_wt += eps_c * smoothing_term[i]
        row_loss[i] = total_wt * log_sum[i] - shifted_wt
        if valid is not None and not valid[i]:
            row_loss[i] = 0.0
        s[i] = scale * row_scale[i] if row_scale.size else scale
        exp_scale[i] = s[i] * total_wt * factor[i] / sum_exp[i]
        target_scale[i] = s[i] * keep * target_weight[i]
    return row_loss, exp_scale, s, target_scale


@njit(**JIT_ROW)
def _index_finish_row(out, x, local_max, y, weight, exp_scale, smoothing_scale, target_scale,
                      chunks):
    if y == IGNORED:  # zeroed by the statistics kernel
        return
    kept = kept_exps(out)
    source = exps_source(out, kept)
    exps_again(x, _shift(x, scalar_like(x, local_max)), kept, source, chunks)
    e_y = scalar_like(out, 0)
    if y >= 0:  # read before row_rescale overwrites it (float: kept in out)
        e_y = kept_value(out, source, y)
    over_chunks("row_rescale", chunks, out, exp_scale, smoothing_scale, weight, 0.0, None,
                source)
    if y >= 0:  # the target's element written again from its exponential: one rounding
        g_y = (e_y * scalar_like(out, exp_scale)
               - weighted(scalar_like(out, smoothing_scale), weight, y)
               - scalar_like(out, target_scale))
        store(out, y, g_y)


@njit(**JIT_PARALLEL)
def vocab_parallel_finish_index(x, local_max, grad, local_target, weight, exp_scale,
                                scale, eps_c, target_scale, chunks):
    """grad[i] = exp(x[i] - shift) * exp_scale[i] - scale[i] * eps_c * w, and
    target_scale[i] subtracted at the owned target's column (IGNORED rows left as they
    are); exp(x - shift) kept in grad by the statistics kernel, or computed again from x
    and the shard's row maxima ``local_max`` for 16-bit."""
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(grad.shape[0]):
            _index_finish_row(grad[i], x[i], local_max[i], local_target[i], weight,
                              exp_scale[i], scale[i] * eps_c, target_scale[i], chunks)
    else:
        for i in range(grad.shape[0]):
            _index_finish_row(grad[i], x[i], local_max[i], local_target[i], weight,
                              exp_scale[i], scale[i] * eps_c, target_scale[i], chunks)


@njit(**JIT_ROW)
def _prob_finish_row(out, x, local_max, t, weight, exp_scale, scale, keep, eps_c, chunks):
    kept = kept_exps(out)
    source = exps_source(out, kept)
    exps_again(x, _shift(x, scalar_like(x, local_max)), kept, source, chunks)
    over_chunks("_prob_rescale_row", chunks, out, t, weight, exp_scale, scale, keep, eps_c,
                0.0, None, source)


@njit(**JIT_PARALLEL)
def vocab_parallel_finish_prob(x, local_max, grad, target, weight, exp_scale, scale, keep,
                               eps_c, chunks):
    """grad[i] = exp(x[i] - shift) * exp_scale[i] - scale[i] * w * (keep * t + eps_c),
    exp(x - shift) as in vocab_parallel_finish_index."""
    if chunks is None:  # WHOLE_ROW: a thread per row (see _split)
        for i in prange(grad.shape[0]):
            _prob_finish_row(grad[i], x[i], local_max[i], target[i], weight, exp_scale[i],
                             scale[i], keep, eps_c, chunks)
    else:
        for i in range(grad.shape[0]):
            _prob_finish_row(grad[i], x[i], local_max[i], target[i], weight, exp_scale[i],
                             scale[i], keep, eps_c, chunks)
