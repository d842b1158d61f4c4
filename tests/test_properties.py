"""Property-based tests (hypothesis): every public function, every backend, hostile inputs.

Each generated case either matches the float64 reference within the stated tolerance
(NaN and inf in the same places) or raises the same exception type as the reference
before any kernel runs. Profiles: "ci" (default, ~150 examples per test) and "long"
(HYPOTHESIS_PROFILE=long, 3000 per test).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import BACKENDS, LAYOUTS, ROW_OPS, op_id, op_inputs, with_layout

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# float32 kernels vs the float64 reference: relative to the largest finite magnitude.
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}
CLASS_COUNTS = [1, 2, 3, 10, 17, 33, 63, 64, 65, 100, 127, 128, 129, 1000]


@st.composite
def logits(draw, min_rows=0):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.lists(st.integers(min_rows, 5), min_size=1, max_size=2))
    shape = (*batch, draw(st.sampled_from(CLASS_COUNTS)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    scale = draw(st.sampled_from([1.0, 100.0, 1e4]))
    x = rng.standard_normal(shape) * scale
    kind = draw(st.sampled_from(["normal", "constant", "one-huge", "specials"]))
    if kind == "constant":
        x[...] = draw(st.sampled_from([0.0, -3.5, 1e4]))
    elif kind == "one-huge" and x.size:
        x[..., rng.integers(0, shape[-1])] = draw(st.sampled_from([1e4, 3e38, -3e38]))
    elif kind == "specials" and x.size:
        mask = rng.random(shape) < 0.1
        x[mask] = rng.choice([np.nan, np.inf, -np.inf], size=int(mask.sum()))
    x = x.astype(dtype)
    x = with_layout(x, draw(st.sampled_from(LAYOUTS)))
    if draw(st.booleans()):
        x.flags.writeable = False
    return x


def compare(got, want, dtype, context):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, context
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN: {context}")
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=f"inf: {context}")
    tol = TOLERANCE[dtype]
    scale = np.max(np.abs(want[finite]), initial=1.0)
    np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=tol * scale,
                               err_msg=context)


def both(call_ours, call_reference):
    """Run both; they must raise the same exception type or neither; return the results."""
    try:
        want = call_reference()
    except Exception as exc:  # noqa: BLE001 - compared below
        with pytest.raises(type(exc)):
            call_ours()
        return None
    return call_ours(), want


def reference64(func, *arrays, **kwargs):
    """The reference on float64 copies, rounded to the inputs' dtype like a kernel result."""
    dtype = arrays[0].dtype
    result = func(*(a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays),
                  **kwargs)
    if isinstance(result, tuple):
        return tuple(np.asarray(r).astype(dtype) for r in result)
    return np.asarray(result).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ROW_OPS, ids=op_id)
@given(x=logits(), axis_choice=st.integers(-3, 2), seed=st.integers(0, 1000))
def test_rows_op(backend, op, x, axis_choice, seed):
    """Every rows op of the table; a bad axis (out of range, or an empty one) must raise
    like the reference."""
    try:
        args = op_inputs(op, x, axis_choice, seed)
    except (ValueError, IndexError):  # the same axis is given to the op below
        args = op_inputs(op, x, -1, seed)
    before = [a.copy() for a in args]
    result = both(lambda: getattr(fs, op.name)(*args, axis_choice, backend=backend),
                  lambda: reference64(getattr(reference, op.name), *args, axis=axis_choice))
    if result is not None:
        compare(result[0], result[1], x.dtype.type,
                f"{op.name} {x.dtype}{x.shape} axis={axis_choice}")
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b)


@st.composite
def cross_entropy_case(draw):
    x = draw(logits())
    n_classes = x.shape[-1]
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if draw(st.booleans()):  # probability targets, not necessarily summing to 1
        target = rng.random(x.shape).astype(x.dtype) * draw(st.sampled_from([1.0, 0.3, 5.0]))
    else:
        target = rng.integers(0, n_classes, x.shape[:-1])
        kind = draw(st.sampled_from(["valid", "ignored", "out-of-range", "negative"]))
        if target.size and kind != "valid":
            value = {"ignored": -100, "out-of-range": n_classes, "negative": -1}[kind]
            target.flat[rng.integers(0, target.size)] = value
    options = dict(
        weight=(rng.uniform(0.1, 3.0, n_classes).astype(x.dtype) if draw(st.booleans())
                else None),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        label_smoothing=draw(st.sampled_from([0.0, 0.1, 1.0, 1.5])))
    return x, target, options


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=cross_entropy_case(), inplace=st.booleans())
def test_cross_entropy(backend, case, inplace):
    x, target, options = case
    context = f"{x.dtype}{x.shape} target {target.dtype} {options}"
    before = (x.copy(), target.copy())
    result = both(lambda: fs.cross_entropy(x, target, backend=backend, **options),
                  lambda: reference64(reference.cross_entropy, x, target, **options))
    if result is not None:
        compare(result[0], result[1], x.dtype.type, "loss " + context)
    buffer = np.ascontiguousarray(x).copy() if inplace else x
    result = both(lambda: fs.cross_entropy_with_grad(buffer, target, inplace=inplace,
                                                     backend=backend, **options),
                  lambda: reference64(reference.cross_entropy_with_grad, x, target, **options))
    if result is not None:
        (loss, grad), (want_loss, want_grad) = result
        compare(loss, want_loss, x.dtype.type, "loss " + context)
        compare(grad, want_grad, x.dtype.type, "grad " + context)
        assert (grad is buffer) == inplace
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(target, before[1])


finite_logits = logits(min_rows=1).filter(lambda a: np.isfinite(a).all() and a.size > 0)


@pytest.mark.parametrize("backend", BACKENDS)
@given(x=finite_logits, shift=st.sampled_from([-50.0, 3.0, 1000.0]))
def test_softmax_invariants(backend, x, shift):
    tol = 10 * TOLERANCE[x.dtype.type]
    p = fs.softmax(x, backend=backend)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=tol, err_msg="rows sum to 1")
    if np.abs(x).max() < 1e3:  # shifting keeps x exact only for moderate values
        np.testing.assert_allclose(fs.softmax(x + x.dtype.type(shift), backend=backend), p,
                                   rtol=tol, atol=tol, err_msg="shift invariance")
    lse = fs.logsumexp(x, backend=backend)
    np.testing.assert_allclose(fs.log_softmax(x, backend=backend), x - lse[..., None],
                               rtol=tol, atol=tol * np.abs(x).max(), err_msg="x - logsumexp")


@pytest.mark.parametrize("backend", BACKENDS)
@given(x=finite_logits, smoothing=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 100))
def test_cross_entropy_invariants(backend, x, smoothing, seed):
    x = x.astype(np.float64)
    target = np.random.default_rng(seed).integers(0, x.shape[-1], x.shape[:-1])
    loss, grad = fs.cross_entropy_with_grad(x, target, reduction="none",
                                            label_smoothing=smoothing, backend=backend)
    assert np.all(loss >= -1e-12 * np.abs(x).max()), "loss >= 0"
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-9 * max(1.0, x.shape[-1]),
                               err_msg="unweighted hard-target gradient rows sum to 0")
