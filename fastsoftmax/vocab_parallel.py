"""Vocab-parallel cross-entropy: the classes split across ranks, O(rows) communication.

Each rank holds the logits of a contiguous slice of the classes,
``[vocab_start, vocab_start + V_local)``, for every row; targets (global class ids) are
the same on every rank. The loss and each rank's gradient shard equal
``cross_entropy_with_grad`` on the gathered logits, in three phases:

1. :func:`local_stats` (a compiled kernel, one sweep of the shard): per row the shard's
   max, ``sum exp(x - max)``, the target's logit where this shard owns it and, for label
   smoothing, ``sum w (x - max)`` (probability targets: ``sum w t (x - max)`` and
   ``sum w t``). ``exp(x - max)`` is left in the gradient buffer (16-bit logits: not
   kept; phase 3 computes it again, see fastsoftmax/_numba/_vocab_parallel.py).
2. :func:`combine`: two all-reduces through a communicator: MAX of the row maxima, then
   one SUM of the statistics shifted to the global max (at most 5 values per row in
   all, plus 4 scalars: the shard sizes, their ends, their ``end**2 - start**2`` (a
   check of the tiling) and the class-weight sums).
3. :func:`finish` (a compiled kernel, one sweep of the gradient buffer): the loss, from
   the combined statistics alone (so every rank gets the same value bit for bit), and
   the gradient shard ``exp(x - max) * exp(max - M) / S * T - target terms``.

:func:`cross_entropy_with_grad` runs the three; :func:`simulate` runs P ranks in one
process (tests, experiments). :mod:`fastsoftmax.torch_vocab_parallel` is the PyTorch
front end over ``torch.distributed``.

A communicator is any object with two methods that reduce a 1-D float64 array in place
across the ranks, every rank receiving the same result::

    allreduce_max(array)   # array[k] = max over ranks
    allreduce_sum(array)   # array[k] = sum over ranks
"""
import threading
from dataclasses import dataclass

import numpy as np

from . import _backends, _dtypes, _validate, api

__all__ = ["local_stats", "combine", "finish", "cross_entropy_with_grad", "simulate",
           "LocalStats", "GlobalStats", "SimulatedGroup"]

_NOT_OWNED, _IGNORED = -1, -2  # as fastsoftmax._numba._vocab_parallel


@dataclass
class LocalStats:
    """One rank's phase-1 result (see :func:`local_stats`); pass it on unchanged."""
    args: object             # _validate.CrossEntropyArgs of this shard
    vocab_start: int
    stats: np.ndarray        # float64 (k, rows): max, sum exp, then the kind's terms
    result: np.ndarray       # the gradient returned (logits' shape)
    grad: np.ndarray         # C-contiguous (rows, V_local): exp(x - shift), then the gradient
    rows: np.ndarray         # C-contiguous (rows, V_local) logits (16-bit: read again)
    local_target: object     # int64 (rows,): column in this shard, _NOT_OWNED or _IGNORED
    valid: object            # bool (rows,): index target not ignore_index

    @property
    def n_rows(self):
        return self.grad.shape[0]

    @property
    def n_classes(self):
        return self.grad.shape[1]


@dataclass
class GlobalStats:
    """The combined statistics (see :func:`combine`), identical on every rank except
    ``factor``, this rank's ``exp(local max - global max)`` per row."""
    sum_exp: np.ndarray      # sum over all classes of exp(x - M) per row
    log_sum: np.ndarray      # its log
    target_term: np.ndarray  # x_y - M (index) or sum w t (x - M) (probabilities)
    target_weight: np.ndarray  # w_y (index; 1 without class weights) or sum w t
    smoothing_term: object   # sum over all classes of w (x - M), or None
    factor: np.ndarray
    n_classes: int           # the global class count
    weight_sum: float        # sum of every class weight (the class count without weights)


def _kernels():
    """The Numba kernels (the only compiled ones), with fastsoftmax's thread count."""
    _backends._load("numba")
    return _backends.kernels("numba").vocab_parallel


def local_stats(logits, target, *, vocab_start, weight=None, ignore_index=-100,
                reduction="mean", label_smoothing=0.0, inplace=False, out=None):
    """Phase 1 of a vocab-parallel cross-entropy: this rank's row statistics.

    One compiled sweep over this rank's shard of the logits (``prange`` over rows) that
    also leaves ``exp(x - row max)`` in the gradient buffer for :func:`finish`.

    Parameters
    ----------
    logits : array_like
        float32, float64, float16 or bfloat16, shape ``(..., V_local)``: the classes
        ``[vocab_start, vocab_start + V_local)`` on the last axis (V_local may be 0).
        16-bit logits are computed in float32; the gradient is rounded once to their
        dtype and the loss is float32.
    target : array_like
        Global class indices of shape ``logits.shape[:-1]`` (the same on every rank), or
        this shard's columns of the class probabilities (``logits``' shape).
    vocab_start : int
        Global id of this shard's first class.
    weight : array_like, optional
        This shard's class weights, shape ``(V_local,)``.
    ignore_index : int, optional
        Index target that contributes nothing (default -100).
    reduction : {"mean", "sum", "none"}, optional
        As in :func:`fastsoftmax.cross_entropy`; checked here, used by :func:`finish`.
    label_smoothing : float, optional
        In [0, 1], over the global class count.
    inplace : bool, optional
        Use ``logits`` (writeable, C-contiguous) as the gradient buffer: no extra
        (rows, V_local) memory; the logits are lost.
    out : ndarray, optional
        The gradient buffer: the logits' shape and dtype; not sharing memory with a
        probability ``target`` (ValueError).

    Returns
    -------
    LocalStats
        For :func:`combine` and :func:`finish`.
    """
    args, vocab_start = _validate.vocab_shard_args(logits, target, weight, ignore_index,
                                                   reduction, label_smoothing, vocab_start)
    _validate.separate_out(out, {"target": args.target})
    if inplace:
        _validate.inplace_buffer(args, out, logits)
        result = args.logits
    elif out is not None:
        result = _validate.out_array(out, args.logits.shape, args.logits.dtype,
                                     {"logits": args.logits})
    else:
        result = np.empty(args.logits.shape, args.logits.dtype)
    n_classes = args.logits.shape[-1]
    n_rows = args.logits.size // n_classes if n_classes else int(np.prod(args.loss_shape))
    grad = result.reshape(n_rows, n_classes) if result.flags.c_contiguous else \
        np.empty((n_rows, n_classes), args.logits.dtype)
    rows = np.ascontiguousarray(args.logits).reshape(n_rows, n_classes)
    smoothing = args.label_smoothing != 0.0
    local_target = valid = None
    if args.probabilities:
        stats = np.zeros((5 if smoothing else 4, n_rows))
        kernel = _kernels().vocab_parallel_stats_prob
        kernel_target = np.ascontiguousarray(args.target).reshape(n_rows, n_classes)
    else:
        stats = np.zeros((4 if smoothing else 3, n_rows))
        y = args.target.reshape(-1)
        valid = y != args.ignore_index
        column = y - vocab_start
        owned = valid & (column >= 0) & (column < n_classes)
        local_target = np.where(owned, column, np.where(valid, _NOT_OWNED, _IGNORED))
        kernel = _kernels().vocab_parallel_stats_index
        kernel_target = local_target
    if n_classes == 0 or n_rows == 0:  # no classes here: max -inf, sum 0
        stats[0] = -np.inf
    else:
        view = _dtypes.kernel_view
        kernel(view(rows), view(kernel_target), args.weight, smoothing, stats, view(grad))
    return LocalStats(args, vocab_start, stats, result, grad, rows, local_target, valid)


def combine(stats, comm):
    """Phase 2: combine every rank's statistics with two all-reduces through ``comm``.

    MAX of ``rows + 1`` values (the row maxima and the shard's end), then SUM of
    ``k * rows + 3`` values: per row the softmax sum and the target term shifted to the
    global max, plus the target's class weight (with weights) and the smoothing term
    (with smoothing), then the shard's size, ``end**2 - vocab_start**2`` and class-weight
    sum. Every rank must call it, in the same order as its other collectives.

    Parameters
    ----------
    stats : LocalStats
        From :func:`local_stats` on this rank.
    comm : communicator
        An object with ``allreduce_max(a)`` and ``allreduce_sum(a)`` that reduce a 1-D
        float64 array in place across the ranks (see the module docstring).

    Returns
    -------
    GlobalStats
        For :func:`finish`.

    Raises
    ------
    ValueError
        When the shards do not tile ``[0, C)``: their sizes add up to C, the last ends
        at C, and the sum of ``end**2 - vocab_start**2`` over the shards is C**2 exactly
        when they tile (it telescopes), so a shard placed wrong, whose overlap with
        another leaves a gap of the same size, is found too. (Exact in float64 below
        2**26 classes; misplacements that balance each other's sums can still pass.)
    IndexError
        For a target class id >= C (other than ignore_index). Every rank raises together.
    """
    args, n_rows = stats.args, stats.n_rows
    weighted = args.weight is not None
    smoothing = args.label_smoothing != 0.0
    local_max = stats.stats[0]
    maxima = np.empty(n_rows + 1)
    maxima[:n_rows] = local_max
    maxima[n_rows] = stats.vocab_start + stats.n_classes
    comm.allreduce_max(maxima)
    global_max = maxima[:n_rows]
    local_weight_sum = float(np.sum(args.weight, dtype=np.float64)) if weighted \
        else float(stats.n_classes)
    end = stats.vocab_start + stats.n_classes
    shard_values = np.array([stats.n_classes, end ** 2 - stats.vocab_start ** 2,
                             local_weight_sum], dtype=np.float64)
    factor, sums, terms = _kernels().vocab_parallel_shard_terms(
        stats.stats, global_max, stats.local_target, args.weight, smoothing, local_weight_sum,
        shard_values)
    comm.allreduce_sum(sums)
    n_classes, square_sum, weight_sum = int(sums[-3]), float(sums[-2]), float(sums[-1])
    _check_tiling(n_classes, int(maxima[n_rows]), square_sum, stats)
    target_weight = terms[2] if args.probabilities or weighted else \
        stats.valid.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sum = np.log(terms[0])
    return GlobalStats(terms[0], log_sum, terms[1], target_weight,
                       terms[-1] if smoothing else None, factor, n_classes, weight_sum)


def _check_tiling(n_classes, end, square_sum, stats):
    """Raise unless the shards tile [0, n_classes) (combine's Raises), and for an index
    target out of range."""
    this_rank = (f"this rank's vocab_start is {stats.vocab_start} with {stats.n_classes} "
                 f"classes (each rank must pass the global id of its first class, shards in "
                 f"rank order)")
    if end != n_classes:
        raise ValueError(f"the shards do not tile the classes: their sizes add up to "
                         f"{n_classes} but the last ends at {end}; {this_rank}")
    if square_sum != float(n_classes) ** 2:
        raise ValueError(f"the shards do not tile the classes: their sizes add up to "
                         f"{n_classes} and the last ends there, but some overlap and leave a "
                         f"gap (the sum of end**2 - vocab_start**2 is {square_sum:.0f}, not "
                         f"{n_classes}**2); {this_rank}")
    args = stats.args
    if not args.probabilities:
        y = args.target.reshape(-1)
        bad = stats.valid & (y >= n_classes)
        if bad.any():
            raise IndexError(f"target value {y[bad][0]} is out of range for {n_classes} "
                             f"classes (valid: 0..{n_classes - 1}, or "
                             f"ignore_index={args.ignore_index})")


def finish(stats, combined, *, grad_output=1.0):
    """Phase 3: the loss and this rank's gradient shard.

    The loss comes from the combined statistics alone, so every rank computes the same
    value bit for bit. The gradient is one compiled sweep over the buffer
    :func:`local_stats` filled.

    Parameters
    ----------
    stats : LocalStats
        From :func:`local_stats` on this rank.
    combined : GlobalStats
        From :func:`combine` on this rank.
    grad_output : float or array_like, optional
        Gradient flowing into the loss: a scalar, or for ``reduction="none"`` an array of
        the loss's shape. Default 1.

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`fastsoftmax.cross_entropy` on the gathered logits: the logits' dtype
        (float32 for 16-bit logits), shape ``logits.shape[:-1]`` for "none".
    grad : ndarray
        d(loss * grad_output) / d(this shard), the shard's shape and dtype (the logits
        themselves with ``inplace=True``, ``out`` when given).
    """
    args = stats.args
    g = _validate.grad_output_array(grad_output, args.reduction, args.loss_shape)
    eps = args.label_smoothing
    keep, eps_c = 1.0 - eps, eps / combined.n_classes
    if args.probabilities or args.reduction != "mean":
        denominator = np.float64(stats.n_rows if args.reduction == "mean" else 1.0)
    else:
        denominator = np.sum(combined.target_weight[stats.valid], dtype=np.float64)
    scale, row_scale = api._grad_scales(g, denominator)
    row_loss, exp_scale, row_scale, target_scale = _kernels().vocab_parallel_row_terms(
        combined.sum_exp, combined.log_sum, combined.target_term, combined.target_weight,
        combined.smoothing_term, combined.factor, stats.valid, scale, row_scale, keep, eps_c,
        combined.weight_sum, args.probabilities)
    if stats.n_rows and stats.n_classes:
        view = _dtypes.kernel_view
        rows, local_max, grad = view(stats.rows), stats.stats[0], view(stats.grad)
        if args.probabilities:
            target = np.ascontiguousarray(args.target).reshape(stats.grad.shape)
            _kernels().vocab_parallel_finish_prob(rows, local_max, grad, view(target),
                                                  args.weight, exp_scale, row_scale, keep, eps_c)
        else:
            _kernels().vocab_parallel_finish_index(rows, local_max, grad, stats.local_target,
                                                   args.weight, exp_scale, row_scale, eps_c,
                                                   target_scale)
    api._copy_back(stats.result, stats.grad)
    loss = api._reduce(row_loss, args.reduction, denominator, args.loss_shape,
                       _dtypes.compute_dtype(args.logits.dtype))
    return loss, stats.result


def cross_entropy_with_grad(logits, target, *, vocab_start, comm, weight=None,
                            ignore_index=-100, reduction="mean", label_smoothing=0.0,
                            grad_output=1.0, inplace=False, out=None):
    """Vocab-parallel cross-entropy of this rank's shard, and its gradient shard.

    :func:`local_stats`, :func:`combine` and :func:`finish` in a row: the loss and the
    gradient of ``fastsoftmax.cross_entropy_with_grad`` on the logits gathered over the
    ranks (classes concatenated in rank order), with two all-reduces of O(rows) values.
    Every rank must call it with the same ``target`` (index targets), options and
    ``grad_output``.

    Parameters
    ----------
    logits : array_like
        This rank's shard, float32, float64, float16 or bfloat16, shape ``(..., V_local)``
        (V_local may be 0).
    target : array_like
        Global class indices of shape ``logits.shape[:-1]``, or this shard's columns of
        the class probabilities (``logits``' shape).
    vocab_start : int
        Global id of this shard's first class.
    comm : communicator
        ``allreduce_max(a)`` / ``allreduce_sum(a)`` on 1-D float64 arrays, in place (a
        :class:`SimulatedGroup` rank, or
        ``fastsoftmax.torch_vocab_parallel.TorchCommunicator``).
    weight : array_like, optional
        This shard's class weights, shape ``(V_local,)``.
    ignore_index : int, optional
        Default -100.
    reduction : {"mean", "sum", "none"}, optional
        "mean" divides by the summed weight of the non-ignored targets (the row count
        for probability targets), over all classes, as torch.
    label_smoothing : float, optional
        In [0, 1], spread over the global class count.
    grad_output : float or array_like, optional
        A scalar, or for "none" an array of the loss's shape. Default 1.
    inplace : bool, optional
        Write the gradient into ``logits`` (writeable, C-contiguous) and return it.
    out : ndarray, optional
        Where to write the gradient: the logits' shape and dtype.

    Returns
    -------
    loss : numpy scalar or ndarray
        The global loss, the same bits on every rank; logits' dtype.
    grad : ndarray
        This shard's gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import vocab_parallel as vp
    >>> ranks = vp.SimulatedGroup(1).ranks   # one process playing one rank
    >>> loss, grad = vp.cross_entropy_with_grad(np.zeros((1, 4)), np.array([1]),
    ...                                         vocab_start=0, comm=ranks[0])
    >>> grad
    array([[ 0.25, -0.75,  0.25,  0.25]])
    """
    stats = local_stats(logits, target, vocab_start=vocab_start, weight=weight,
                        ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing, inplace=inplace, out=out)
    return finish(stats, combine(stats, comm), grad_output=grad_output)


class SimulatedGroup:
    """P ranks in one process, for tests: ``ranks[r]`` is rank r's communicator.

    The ranks' calls must run concurrently (one thread per rank, as :func:`simulate`
    does); a reduction waits for every rank, combines their arrays in rank order, and
    hands every rank the same result. ``calls`` records ``(op, size)`` per collective.

    Parameters
    ----------
    size : int
        The number of ranks, >= 1.
    timeout : float, optional
        Seconds a rank waits for the others before raising. Default 60.
    """

    def __init__(self, size, *, timeout=60.0):
        if size < 1:
            raise ValueError(f"a group needs at least one rank, got size={size}")
        self.size = size
        self.calls = []
        self._barrier = threading.Barrier(size, timeout=timeout)
        self._arrays = [None] * size
        self._result = None
        self.ranks = [_SimulatedRank(self, r) for r in range(size)]

    def _reduce(self, rank, array, op):
        self._arrays[rank] = array
        if self._barrier.wait() == 0:  # one thread combines, in rank order
            shapes = {a.shape for a in self._arrays}
            if len(shapes) != 1:
                self._barrier.abort()  # the other ranks raise BrokenBarrierError at once
                raise ValueError(f"ranks passed arrays of different shapes to {op}: {shapes}")
            result = self._arrays[0].copy()
            for other in self._arrays[1:]:
                result = np.maximum(result, other) if op == "max" else result + other
            self._result = result
            self.calls.append((op, result.size))
        self._barrier.wait()
        array[...] = self._result
        self._barrier.wait()  # nobody starts the next reduction before all have copied


class _SimulatedRank:
    def __init__(self, group, rank):
        self.group, self.rank = group, rank

    def allreduce_max(self, array):
        self.group._reduce(self.rank, array, "max")

    def allreduce_sum(self, array):
        self.group._reduce(self.rank, array, "sum")


def simulate(logits, target, sizes, *, weight=None, ignore_index=-100, reduction="mean",
             label_smoothing=0.0, grad_output=1.0, inplace=False):
    """Run :func:`cross_entropy_with_grad` on P simulated ranks in one process.

    The classes of ``logits`` (and of probability targets and ``weight``) are split into
    consecutive shards of the given sizes; phases 1 and 3 run rank after rank, the
    combine step on one thread per rank through a :class:`SimulatedGroup`.

    Parameters
    ----------
    logits : array_like
        The full logits, shape ``(..., C)``.
    target : array_like
        Global class indices, or full class probabilities (``logits``' shape).
    sizes : sequence of int
        Classes per rank, summing to C (0 allowed: an empty shard).
    weight : array_like, optional
        The full class weights, ``(C,)``.
    ignore_index, reduction, label_smoothing, grad_output
        As :func:`cross_entropy_with_grad`.
    inplace : bool, optional
        Each rank's shard (a copy of its columns) is its gradient buffer.

    Returns
    -------
    losses : list
        Each rank's loss.
    grads : list of ndarray
        Each rank's gradient shard.
    group : SimulatedGroup
        The group (its ``calls`` list the collectives).
    """
    logits = _validate.float_array(logits, "logits")
    sizes = [int(s) for s in sizes]
    if sum(sizes) != logits.shape[-1] or min(sizes) < 0:
        raise ValueError(f"sizes {sizes} must be >= 0 and add up to the {logits.shape[-1]} "
                         f"classes of logits {logits.shape}")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    target = np.asarray(target)
    probabilities = target.dtype.kind == "f" or _dtypes.is_half(target.dtype)
    stats = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        shard = np.array(logits[..., lo:hi], order="C")  # a copy: inplace=True writes it
        stats.append(local_stats(
            shard, np.ascontiguousarray(target[..., lo:hi]) if probabilities else target,
            vocab_start=int(lo), weight=None if weight is None else np.asarray(weight)[lo:hi],
            ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
            inplace=inplace))
    group = SimulatedGroup(len(sizes))
    combined, errors = [None] * len(sizes), [None] * len(sizes)

    def run(rank):
        try:
            combined[rank] = combine(stats[rank], group.ranks[rank])
        except Exception as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(sizes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    results = [finish(s, c, grad_output=grad_output) for s, c in zip(stats, combined)]
    return [loss for loss, _ in results], [grad for _, grad in results], group
