"""Candidate samplers with TensorFlow's semantics (``tf.random.log_uniform_candidate_sampler``,
``tf.random.uniform_candidate_sampler``), for :func:`fastsoftmax.sampled_softmax_loss`.

A sampler draws ``num_sampled`` classes from ``[0, range_max)`` shared by the whole batch
and returns how often each true and each sampled class is expected among the draws (the
Q(y|x) of TensorFlow's candidate sampling reference), whose log the sampled softmax
subtracts from the logits.

* Draws: with ``unique=False`` independent draws; with ``unique=True`` draws are repeated
  until ``num_sampled`` distinct classes have come up, kept in the order of first
  appearance, and ``num_tries`` counts every draw made.
* Expected count of a class of probability p: ``p * num_sampled`` when
  ``num_tries == num_sampled`` (always for ``unique=False``, and for ``unique=True`` when
  no draw was rejected), else ``-expm1(num_tries * log1p(-p))`` = 1 - (1 - p)**num_tries,
  TensorFlow's approximation of the probability that the class is among the draws.

Random numbers come from a NumPy ``Generator``: ``seed=None`` draws fresh entropy, an int
(or a ``SeedSequence``) gives reproducible draws, a ``Generator`` is used as it is. The
streams differ from TensorFlow's (its Philox), so the same seed gives other classes.
"""
import numpy as np

from . import _validate

__all__ = ["log_uniform_candidate_sampler", "uniform_candidate_sampler"]


class _LogUniform:
    """P(k) = (log(k + 2) - log(k + 1)) / log(range_max + 1) on [0, range_max): Zipf-like,
    for classes sorted by decreasing frequency."""

    def __init__(self, range_max):
        self.range_max = range_max
        self.log_range = np.log1p(range_max)

    def draw(self, rng, size):
        # exp(U log(R + 1)) is in [1, R + 1); rounding can reach R + 1, hence the modulo
        # (TensorFlow's LogUniformSampler::Sample does the same).
        values = np.exp(rng.random(size) * self.log_range).astype(np.int64) - 1
        return values % self.range_max

    def probability(self, classes):
        return np.log1p(1.0 / (classes + 1.0)) / self.log_range


class _Uniform:
    """P(k) = 1 / range_max on [0, range_max)."""

    def __init__(self, range_max):
        self.range_max = range_max

    def draw(self, rng, size):
        return rng.integers(0, self.range_max, size, dtype=np.int64)

    def probability(self, classes):
        return np.full(np.shape(classes), 1.0 / self.range_max)


def _distinct_draws(distribution, rng, num_sampled):
    """(the first ``num_sampled`` distinct classes of a stream of draws, in the order they
    appear; the number of draws it took). Draws come in growing batches; the count is
    that of drawing one at a time and stopping at the last new class."""
    draws = np.empty(0, np.int64)
    batch = 2 * num_sampled
    while True:
        draws = np.concatenate([draws, distribution.draw(rng, batch)])
        _, first = np.unique(draws, return_index=True)
        if first.size >= num_sampled:
            chosen = np.sort(first)[:num_sampled]
            return draws[chosen], int(chosen[-1]) + 1
        batch = draws.size


def expected_count(p, num_sampled, num_tries):
    """TensorFlow's expected count of classes of probability ``p`` among the draws.

    Parameters
    ----------
    p : ndarray
        Probabilities of the classes under the base distribution.
    num_sampled : int
        Classes returned by the sampler.
    num_tries : int
        Draws made (``num_sampled`` when none was rejected).

    Returns
    -------
    ndarray
        ``p * num_sampled`` when ``num_tries == num_sampled``, else
        ``-expm1(num_tries * log1p(-p))``; float64.
    """
    if num_tries == num_sampled:
        return p * num_sampled
    return -np.expm1(num_tries * np.log1p(-p))


def _sample(distribution, args, seed):
    rng = np.random.default_rng(seed)
    if args.unique:
        sampled, num_tries = _distinct_draws(distribution, rng, args.num_sampled)
    else:
        sampled, num_tries = distribution.draw(rng, args.num_sampled), args.num_sampled
    return (sampled,
            expected_count(distribution.probability(args.true_classes), args.num_sampled,
                           num_tries),
            expected_count(distribution.probability(sampled), args.num_sampled, num_tries))


_SAMPLER_DOC = """Parameters
    ----------
    true_classes : array_like
        Integer target classes of shape ``(N, num_true)``, in ``0..range_max-1``.
    num_true : int
        Target classes per example.
    num_sampled : int
        Classes to draw for the whole batch.
    unique : bool
        Draw distinct classes (by rejection; needs ``num_sampled <= range_max``), else
        independent draws that may repeat.
    range_max : int
        The number of classes.
    seed : None, int, numpy.random.SeedSequence or numpy.random.Generator, optional
        None (default): fresh entropy on every call; an int: reproducible draws; a
        Generator: its stream (it advances).

    Returns
    -------
    sampled_candidates : ndarray
        int64, shape ``(num_sampled,)``.
    true_expected_count : ndarray
        float64, shape ``(N, num_true)``: expected count of each true class among the
        draws (TensorFlow returns float32).
    sampled_expected_count : ndarray
        float64, shape ``(num_sampled,)``: the same for each sampled class.

    Raises
    ------
    ValueError
        ``unique=True`` with ``num_sampled > range_max``, a count below 1, or
        ``true_classes`` not of shape ``(N, num_true)``.
    IndexError
        A true class outside ``0..range_max-1``.
    TypeError
        Non-integer counts or classes, a non-bool ``unique``."""


def log_uniform_candidate_sampler(true_classes, num_true, num_sampled, unique, range_max, *,
                                  seed=None):
    args = _validate.sampler_args(true_classes, num_true, num_sampled, unique, range_max)
    return _sample(_LogUniform(args.range_max), args, seed)


def uniform_candidate_sampler(true_classes, num_true, num_sampled, unique, range_max, *,
                              seed=None):
    args = _validate.sampler_args(true_classes, num_true, num_sampled, unique, range_max)
    return _sample(_Uniform(args.range_max), args, seed)


log_uniform_candidate_sampler.__doc__ = """Draw classes from the log-uniform (Zipfian)
    distribution, as ``tf.random.log_uniform_candidate_sampler``.

    ``P(k) = (log(k + 2) - log(k + 1)) / log(range_max + 1)`` for ``k`` in
    ``[0, range_max)``: meant for classes sorted by decreasing frequency (class 0 the most
    frequent). A draw is ``floor(exp(U * log(range_max + 1))) - 1`` with U uniform in
    [0, 1). Expected counts as in :mod:`fastsoftmax.candidate_sampling`.

    """ + _SAMPLER_DOC + """

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> sampled, true_count, sampled_count = fs.log_uniform_candidate_sampler(
    ...     np.array([[0], [5]]), 1, 4, False, 10, seed=0)
    >>> sampled.shape, true_count.shape
    ((4,), (2, 1))
    >>> round(float(true_count[0, 0]), 6)  # p(0) * num_sampled = 4 log(2) / log(11)
    1.156259
    """
uniform_candidate_sampler.__doc__ = """Draw classes uniformly from ``[0, range_max)``, as
    ``tf.random.uniform_candidate_sampler``.

    ``P(k) = 1 / range_max``. Expected counts as in :mod:`fastsoftmax.candidate_sampling`.

    """ + _SAMPLER_DOC + """

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> sampled, true_count, sampled_count = fs.uniform_candidate_sampler(
    ...     np.array([[3]]), 1, 4, True, 4, seed=0)
    >>> sorted(sampled.tolist())  # all 4 classes, each once
    [0, 1, 2, 3]
    """
