"""float16 and bfloat16 (issue 18) in the vocab-parallel cross-entropy: P simulated ranks
(fastsoftmax.vocab_parallel.simulate) against the single-process reference on the gathered
16-bit logits, every option, uneven and empty shards, long rows, in place.

The statistics kernel keeps no exponentials for 16-bit logits; the finishing kernel
computes them again from the logits in float32 and rounds each gradient element once, so
a gradient shard is within one 16-bit ulp of the reference's (``conftest.
assert_within_one_ulp_16``); losses are float32.
"""
import itertools

import ml_dtypes
import numpy as np
import pytest

from fastsoftmax import reference, vocab_parallel

from conftest import assert_within_one_ulp_16, loss_options

DTYPES = [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)]
SPLITS = {"500+501": (500, 501), "0+3+7": (0, 3, 7), "long": (40000, 30001)}
OPTIONS = {
    "plain": {},
    "weighted smoothing": {"weight": True, "label_smoothing": 0.1},
    "none": {"reduction": "none", "grad_output": "rows"},
    "sum ignore": {"reduction": "sum", "ignore_index": 2},
}


def _problem(split, dtype, probabilities, seed=0):
    rng = np.random.default_rng(seed)
    n_classes = sum(SPLITS[split])
    n_rows = 2 if split == "long" else 12  # long: few rows, each split over the threads
    logits = (rng.standard_normal((n_rows, n_classes)) * 3).astype(dtype)
    if probabilities:
        target = reference.softmax(rng.standard_normal((n_rows, n_classes))).astype(dtype)
    else:
        target = rng.integers(0, n_classes, n_rows)
        target[0] = -100
        target[-1] = min(SPLITS[split][0], n_classes - 1)  # the second shard's first class
    return logits, target, (rng.random(n_classes) + 0.5).astype(dtype)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_simulated_ranks_match_the_gathered_reference(dtype, split, probabilities, option,
                                                      inplace):
    logits, target, weight = _problem(split, dtype, probabilities)
    kwargs = loss_options(OPTIONS[option], weight, logits.shape[0])
    if probabilities:
        kwargs.pop("ignore_index", None)
    elif "ignore_index" in kwargs:  # the ignored row holds this option's ignore_index
        target = np.where(target == -100, kwargs["ignore_index"], target)
    context = f"{dtype} {split} prob={probabilities} {option} inplace={inplace}"
    loss_ref, grad_ref = reference.cross_entropy_with_grad(logits, target, **kwargs)
    before = logits.copy()
    losses, grads, _ = vocab_parallel.simulate(logits, target, SPLITS[split], **kwargs,
                                               inplace=inplace)
    np.testing.assert_array_equal(logits.view(np.uint16), before.view(np.uint16),
                                  err_msg=f"{context}: the caller's logits changed")
    for loss in losses:
        assert np.asarray(loss).dtype == np.float32, context
        np.testing.assert_allclose(loss, loss_ref, rtol=2e-5, err_msg=context)
    grad = np.concatenate(grads, axis=-1)
    assert grad.dtype == dtype, context
    assert_within_one_ulp_16(grad, grad_ref, context, _cancellation(logits, target))


def _cancellation(logits, target):
    """float32 rounding of ``s (T p - w t')``, which subtracts (the shards' exponentials
    are computed from their own maxima, so the float32 terms differ from the single
    process's in the last bit): 4 float32 ulps of the terms, times 3, a bound of the
    gradient scale (grad_output <= 2, weights <= 1.5)."""
    p = reference.softmax(logits.astype(np.float64))
    t = target.astype(np.float64) if target.shape == logits.shape else 1.0
    return 12 * np.finfo(np.float32).eps * (p + t)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_rank_gets_the_same_loss_bits(dtype):
    logits, target, weight = _problem("500+501", dtype, False)
    losses, _, _ = vocab_parallel.simulate(logits, target, SPLITS["500+501"], weight=weight,
                                           label_smoothing=0.1)
    assert len({np.float32(loss).tobytes() for loss in losses}) == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_logit_gives_a_nan_row(dtype):
    logits, target, _ = _problem("500+501", dtype, False)
    logits[3, 700] = np.nan
    losses, grads, _ = vocab_parallel.simulate(logits, target, SPLITS["500+501"],
                                               reduction="none")
    assert np.isnan(losses[0][3]) and not np.isnan(np.delete(losses[0], 3)).any()
    for grad in grads:
        assert np.isnan(grad[3].astype(np.float32)).all()
        assert not np.isnan(np.delete(grad, 3, axis=0).astype(np.float32)).any()


def test_16_bit_and_float32_shards_agree_in_float32():
    """The 16-bit path (exponentials computed again in the finishing kernel) and the
    float32 path (kept in the gradient buffer) compute the same float32 gradient: the
    16-bit one is the float32 one rounded (to within one ulp), on the same inputs."""
    for dtype, (kind, split) in itertools.product(DTYPES, [(False, "500+501"), (True, "long")]):
        logits, target, _ = _problem(split, dtype, kind)
        _, grads16, _ = vocab_parallel.simulate(logits, target, SPLITS[split])
        _, grads32, _ = vocab_parallel.simulate(logits.astype(np.float32),
                                                target.astype(np.float32) if kind else target,
                                                SPLITS[split])
        for g16, g32 in zip(grads16, grads32):
            assert_within_one_ulp_16(g16, g32.astype(dtype), f"{dtype} {split}")
