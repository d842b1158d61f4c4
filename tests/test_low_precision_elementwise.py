"""float16 and bfloat16 (issue 18) in the elementwise ops: sigmoid, log_sigmoid,
binary_cross_entropy_with_logits(_with_grad) and kl_div(_with_grad), on every backend against
the reference (float64 math on the same 16-bit values, rounded once); options, NaN/inf and
the edge of the range, float16 overflow on write, in place == out= == out of place, the
conversion of mixed-dtype targets and weights, and the torch wrappers with autograd.

A kernel computes in float32 and rounds every output once, so a 16-bit output may be one
unit in the last place off the reference's (``_close_16``), plus float32 rounding where
the gradient subtracts (BCE's ``(1 - y) sigmoid(x) - pw y sigmoid(-x)``). Losses are
float32, compared with an allowance of a few float32 roundings of their terms' size.
Shapes: a short array and one of several parallel chunks (16384 elements each); both run
the same kernel specialisation, so compile time grows with the options, not the shapes.
"""
import ml_dtypes
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference

from conftest import assert_within_one_ulp_16, spacing_16

BF16, F16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)
DTYPES = [BF16, F16]
EPS32 = float(np.finfo(np.float32).eps)
SHAPES = [(6, 50), (3, 40000)]


def _close_loss(actual, expected, size, context):
    """A float32 loss (a scalar or elementwise) within 16 float32 roundings of ``size``,
    the magnitude of the terms that make it up."""
    assert np.asarray(actual).dtype == np.float32, f"{context}: loss dtype {actual.dtype}"
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{context}: NaN places")
    finite = np.isfinite(e)
    np.testing.assert_array_equal(a[~finite], e[~finite], err_msg=f"{context}: infinities")
    with np.errstate(invalid="ignore"):  # inf - inf outside ``finite``
        error = np.abs(a - e)[finite]
    assert np.all(error <= 16 * EPS32 * np.broadcast_to(size, e.shape)[finite] + 1e-30), context


def _logits(shape, dtype, seed=0, scale=4.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _probabilities(shape, dtype, seed=1):
    p = np.random.default_rng(seed).random(shape)
    p[..., 0] = 0.0  # 0 log 0 and a zero gradient
    return p.astype(dtype)


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


# ---- sigmoid, log_sigmoid ----

def _edge_values(dtype):
    """NaN, the infinities, the type's extremes, its smallest subnormal, and values where
    sigmoid rounds to 0 or 1 (|x| not above 87.3, where the kernels' float32 exp(-|x|) is 0 and
    bfloat16 has subnormals: see fastsoftmax.sigmoid)."""
    info = np.finfo(dtype)
    top, tiny = float(info.max), float(info.smallest_subnormal)
    return np.array([np.nan, np.inf, -np.inf, top, -top, tiny, -tiny, 0.0, -0.0, 20.0, -20.0,
                     85.0, -85.0, -17.5, 17.5]).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["sigmoid", "log_sigmoid"])
def test_sigmoid_family_matches_reference(name, dtype, shape, backend):
    x = _logits(shape, dtype)
    x.reshape(-1)[:15] = _edge_values(dtype)
    context = f"{name} {dtype} {shape} {backend}"
    expected = getattr(reference, name)(x)
    actual = getattr(fs, name)(x, backend=backend)
    assert_within_one_ulp_16(actual, expected, context)
    out = np.empty_like(x)
    assert getattr(fs, name)(x, out=out, backend=backend) is out
    np.testing.assert_array_equal(out.view(np.uint16), actual.view(np.uint16), err_msg=context)
    in_place = x.copy()
    assert getattr(fs, name)(in_place, out=in_place, backend=backend) is in_place
    np.testing.assert_array_equal(in_place.view(np.uint16), actual.view(np.uint16),
                                  err_msg=f"{context} in place")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sigmoid_of_a_strided_view(dtype, backend):
    """A non-contiguous 16-bit input and out= (the API copies it)."""
    x = _logits((8, 60), dtype)[:, ::3]
    out = np.empty((20, 8), dtype).T
    assert fs.sigmoid(x, out=out, backend=backend) is out
    assert_within_one_ulp_16(out, reference.sigmoid(x), f"strided {dtype} {backend}")


# ---- binary cross-entropy with logits ----

def _bce_size(x, y, weight, pos_weight):
    """|w| ((1 - y) softplus(x) + |pw| y softplus(-x)) elementwise, float64: the terms'
    size, for the loss's allowance."""
    x, y = _f64(x), _f64(y)
    w = 1.0 if weight is None else np.abs(_f64(weight))
    pw = 1.0 if pos_weight is None else np.abs(_f64(pos_weight))
    with np.errstate(invalid="ignore", over="ignore"):
        size = w * (np.abs(1 - y) * np.logaddexp(0, x) + pw * np.abs(y) * np.logaddexp(0, -x))
    return np.where(np.isfinite(size), size, 0.0)


def _bce_grad_size(x, y, weight, pos_weight, scale):
    """|w| (|1 - y| sigmoid(x) + |pw y| sigmoid(-x)) |scale|: what the gradient subtracts."""
    x, y = _f64(x), _f64(y)
    w = 1.0 if weight is None else np.abs(_f64(weight))
    pw = 1.0 if pos_weight is None else np.abs(_f64(pos_weight))
    with np.errstate(invalid="ignore", over="ignore"):
        sig = 1 / (1 + np.exp(-x))
        size = w * (np.abs(1 - y) * sig + pw * np.abs(y) * (1 - sig)) * np.abs(scale)
    return np.where(np.isfinite(size), size, 0.0)


BCE_OPTIONS = {
    "mean": {},
    "weights": {"weight": "classes", "pos_weight": "classes"},
    "sum": {"reduction": "sum", "grad_output": 3.0},
    "none": {"reduction": "none", "grad_output": "elements", "pos_weight": "classes"},
}


def _bce_problem(shape, dtype, option):
    rng = np.random.default_rng(2)
    x = _logits(shape, dtype)
    y = rng.random(shape).astype(dtype)
    y.reshape(-1)[:4] = [0, 1, 0, 1]  # hard labels too
    kwargs = dict(BCE_OPTIONS[option])
    for name in ("weight", "pos_weight"):
        if kwargs.get(name) == "classes":
            kwargs[name] = rng.uniform(0.2, 3.0, shape[-1])
    if kwargs.get("grad_output") == "elements":
        kwargs["grad_output"] = rng.uniform(-2.0, 2.0, shape)
    return x, y, kwargs


def _grad_scale(kwargs, n, reduction):
    return np.asarray(kwargs.get("grad_output", 1.0), np.float64) / (n if reduction == "mean"
                                                                     else 1)


@pytest.mark.parametrize("option", BCE_OPTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bce_matches_reference(dtype, shape, option, backend):
    x, y, kwargs = _bce_problem(shape, dtype, option)
    context = f"BCE {dtype} {shape} {option} {backend}"
    loss_ref, grad_ref = reference.binary_cross_entropy_with_logits_with_grad(x, y, **kwargs)
    loss, grad = fs.binary_cross_entropy_with_logits_with_grad(x, y, **kwargs, backend=backend)
    w, pw = kwargs.get("weight"), kwargs.get("pos_weight")
    reduction = kwargs.get("reduction", "mean")
    size = _bce_size(x, y, w, pw)
    loss_size = size if reduction == "none" else size.sum() / (x.size if reduction == "mean"
                                                               else 1)
    _close_loss(loss, loss_ref, loss_size, context)
    scale = _grad_scale(kwargs, x.size, reduction)
    assert_within_one_ulp_16(grad, grad_ref, context,
                             8 * EPS32 * _bce_grad_size(x, y, w, pw, scale))
    kwargs.pop("grad_output", None)
    _close_loss(fs.binary_cross_entropy_with_logits(x, y, **kwargs, backend=backend),
                loss_ref, loss_size, f"{context} loss only")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bce_at_nan_inf_and_the_edge_of_the_range(dtype, backend):
    top = float(np.finfo(dtype).max)
    x = np.array([np.nan, np.inf, np.inf, -np.inf, -np.inf, -np.inf, top, -top, top, 0.0])
    y = np.array([0.5, 1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 1.0, 0.5])
    x, y = x.astype(dtype), y.astype(dtype)
    context = f"BCE edges {dtype} {backend}"
    loss_ref, grad_ref = reference.binary_cross_entropy_with_logits_with_grad(
        x, y, reduction="none")
    loss, grad = fs.binary_cross_entropy_with_logits_with_grad(x, y, reduction="none",
                                                               backend=backend)
    _close_loss(loss, loss_ref, np.abs(_f64(loss_ref)), context)
    assert_within_one_ulp_16(grad, grad_ref, context)
    assert np.isnan(loss[0]) and loss[1] == 0 and loss[3] == 0 and loss[5] == np.inf, context


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bce_with_grad_in_place_and_out(dtype, backend):
    """inplace=True and out= write the same 16-bit gradient as a new array."""
    x, y, kwargs = _bce_problem((3, 40000), dtype, "weights")
    loss, grad = fs.binary_cross_entropy_with_logits_with_grad(x, y, **kwargs, backend=backend)
    out = np.empty_like(x)
    loss_out, result = fs.binary_cross_entropy_with_logits_with_grad(x, y, **kwargs, out=out,
                                                                     backend=backend)
    assert result is out and loss_out == loss
    buffer = x.copy()
    loss_in_place, result = fs.binary_cross_entropy_with_logits_with_grad(
        buffer, y, **kwargs, inplace=True, backend=backend)
    assert result is buffer and loss_in_place == loss
    for a in (out, buffer):
        np.testing.assert_array_equal(a.view(np.uint16), grad.view(np.uint16),
                                      err_msg=f"{dtype} {backend}")


# ---- KL divergence ----

def _kl_size(x, t, log_target):
    """|t log t| + |t x| (|e^t| (|t| + |x|) for log targets), float64: the terms' size."""
    x, t = _f64(x), _f64(t)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if log_target:
            size = np.exp(t) * (np.abs(t) + np.abs(x))
        else:
            size = np.abs(np.where(t == 0, 0.0, t * np.log(t))) + np.abs(t * x)
    return np.where(np.isfinite(size), size, 0.0)


KL_OPTIONS = {
    "mean": {},
    "batchmean": {"reduction": "batchmean", "grad_output": 0.5},
    "none": {"reduction": "none", "grad_output": "elements"},
    "log_target": {"log_target": True, "reduction": "sum"},
    "broadcast_target": {"reduction": "sum", "target": "classes"},
}


@pytest.mark.parametrize("option", KL_OPTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kl_div_matches_reference(dtype, shape, option, backend):
    rng = np.random.default_rng(3)
    x = np.log(_f64(_probabilities(shape, dtype, seed=4)) + 1e-3).astype(dtype)
    kwargs = dict(KL_OPTIONS[option])
    t = _probabilities(shape[-1:] if kwargs.pop("target", None) else shape, dtype)
    if kwargs.get("log_target"):
        t = np.log(_f64(t) + 1e-3).astype(dtype)
    if kwargs.get("grad_output") == "elements":
        kwargs["grad_output"] = rng.uniform(-2.0, 2.0, shape)
    context = f"KL {dtype} {shape} {option} {backend}"
    loss_ref, grad_ref = reference.kl_div_with_grad(x, t, **kwargs)
    loss, grad = fs.kl_div_with_grad(x, t, **kwargs, backend=backend)
    reduction = kwargs.get("reduction", "mean")
    size = _kl_size(x, np.broadcast_to(t, shape), kwargs.get("log_target", False))
    denominator = {"mean": x.size, "batchmean": shape[0]}.get(reduction, 1)
    _close_loss(loss, loss_ref, size if reduction == "none" else size.sum() / denominator,
                context)
    # -t (or -exp(t)) times the scale: no subtraction
    assert_within_one_ulp_16(grad, grad_ref, context)
    kwargs.pop("grad_output", None)
    if reduction != "none":
        _close_loss(fs.kl_div(x, t, **kwargs, backend=backend), loss_ref,
                    size.sum() / denominator, f"{context} loss only")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kl_div_nan_inf_and_in_place(dtype, backend):
    """NaN and infinite log-probabilities, zero targets; inplace=True and out= give the
    out-of-place gradient bit for bit."""
    x = np.array([[np.nan, -np.inf, -np.inf, 0.0, -3.0, float(-np.finfo(dtype).max)]])
    t = np.array([[0.5, 0.0, 0.25, 0.0, 0.125, 0.125]])
    x, t = x.astype(dtype), t.astype(dtype)
    context = f"KL edges {dtype} {backend}"
    loss_ref, grad_ref = reference.kl_div_with_grad(x, t, reduction="none")
    loss, grad = fs.kl_div_with_grad(x, t, reduction="none", backend=backend)
    _close_loss(loss, loss_ref, _kl_size(x, t, False), context)
    assert_within_one_ulp_16(grad, grad_ref, context)
    out = np.empty_like(x)
    assert fs.kl_div_with_grad(x, t, reduction="none", out=out, backend=backend)[1] is out
    buffer = x.copy()
    assert fs.kl_div_with_grad(buffer, t, reduction="none", inplace=True,
                               backend=backend)[1] is buffer
    for a in (out, buffer):
        np.testing.assert_array_equal(a.view(np.uint16), grad.view(np.uint16), err_msg=context)


def test_float16_gradient_overflows_to_inf(backend):
    """A float16 gradient beyond 65504 is written as inf, a NaN target's as NaN; the
    float32 loss stays finite."""
    x = np.full(6, -1.0, np.float16)
    t = np.array([0.5, 0.25, 1e-3, 0.0, 1.0, np.nan], np.float16)
    loss, grad = fs.kl_div_with_grad(x, t, reduction="none", grad_output=np.full(6, 3e5),
                                     backend=backend)
    g = grad.astype(np.float64)
    assert list(g[:2]) == [-np.inf, -np.inf] and np.isfinite(g[2]) and g[3] == 0, g
    assert g[4] == -np.inf and np.isnan(g[5]), g
    assert np.isfinite(loss[:5]).all() and np.isnan(loss[5])
    _, grad_ref = reference.kl_div_with_grad(x, t, reduction="none", grad_output=np.full(6, 3e5))
    assert_within_one_ulp_16(grad, grad_ref, f"float16 overflow {backend}")
    _, bce_grad = fs.binary_cross_entropy_with_logits_with_grad(
        np.array([9.0, -9.0], np.float16), np.array([0.0, 1.0], np.float16),
        reduction="sum", grad_output=1e5, backend=backend)
    assert list(bce_grad.astype(np.float64)) == [np.inf, -np.inf]


# ---- mixed dtypes: converted, as documented ----

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_targets_are_cast_to_the_input_dtype_and_weights_to_float32(dtype, backend):
    """A float32/float64 or other 16-bit target is rounded to the input's dtype first;
    weights are used in float32. Both give what converting them yourself gives."""
    x, y, kwargs = _bce_problem((4, 30), dtype, "weights")
    other = F16 if dtype == BF16 else BF16
    y64 = np.random.default_rng(5).random(x.shape)
    weights32 = {name: w.astype(np.float32) for name, w in kwargs.items()}
    for target in (y64, y64.astype(np.float32), y64.astype(other)):
        expected = fs.binary_cross_entropy_with_logits_with_grad(x, target.astype(dtype),
                                                                 **weights32, backend=backend)
        loss, grad = fs.binary_cross_entropy_with_logits_with_grad(x, target, **kwargs,
                                                                   backend=backend)
        assert loss == expected[0] and grad.dtype == dtype, target.dtype
        np.testing.assert_array_equal(grad.view(np.uint16), expected[1].view(np.uint16),
                                      err_msg=str(target.dtype))
    t16 = _probabilities(x.shape, other)
    np.testing.assert_equal(fs.kl_div(x, t16, backend=backend),
                            fs.kl_div(x, t16.astype(dtype), backend=backend))


# ---- torch wrappers ----

torch = pytest.importorskip("torch", reason="the torch wrappers need torch")
import fastsoftmax.torch as fst  # noqa: E402

TORCH_DTYPES = {BF16: torch.bfloat16, F16: torch.float16}


def _tensor(a):
    return torch.from_numpy(_f64(a)).to(TORCH_DTYPES[a.dtype])


def _array(t, dtype):
    return t.detach().double().numpy().astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_tensors_reach_the_kernels_without_a_copy(dtype):
    t = _tensor(_logits((4, 5), dtype))
    assert fst._numpy(t).__array_interface__["data"][0] == t.data_ptr()


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["binary_cross_entropy_with_logits", "kl_div"])
def test_torch_elementwise_losses_and_autograd(name, dtype, reduction, compiled_backend):
    x, y, kwargs = _bce_problem((6, 50), dtype, "weights")
    if name == "kl_div":
        x, y, kwargs = np.log(_f64(_probabilities(x.shape, dtype)) + 1e-3).astype(dtype), \
            _probabilities(x.shape, dtype, seed=2), {}
    leaf = _tensor(x).requires_grad_()
    options = {key: torch.from_numpy(value) for key, value in kwargs.items()}
    loss = getattr(fst, name)(leaf, _tensor(y), reduction=reduction, backend=compiled_backend,
                              **options)
    assert loss.dtype == torch.float32
    grad_output = torch.linspace(0.5, 2.0, x.size).reshape(x.shape) if reduction == "none" \
        else torch.tensor(1.0)
    loss.backward(grad_output)
    assert leaf.grad.dtype == leaf.dtype
    loss_ref, grad_ref = getattr(reference, f"{name}_with_grad")(
        x, y, reduction=reduction, **kwargs)
    context = f"torch {name} {dtype} {reduction} {compiled_backend}"
    np.testing.assert_allclose(loss.detach().numpy(), loss_ref, rtol=1e-5, atol=1e-6,
                               err_msg=context)
    # the kept gradient (rounded once; BCE's with its float32 allowance) times grad_output,
    # rounded again for "none"
    g = grad_output.double().numpy()
    expected = (grad_ref.astype(np.float64) * g).astype(dtype)
    kept = spacing_16(grad_ref, dtype)
    if name != "kl_div":
        kept = kept + 8 * EPS32 * _bce_grad_size(x, y, kwargs["weight"], kwargs["pos_weight"],
                                                 1 / x.size if reduction == "mean" else 1)
    assert_within_one_ulp_16(_array(leaf.grad, dtype), expected, context, kept * np.abs(g))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["sigmoid", "log_sigmoid"])
def test_torch_sigmoid_family_and_autograd(name, dtype, compiled_backend):
    x = _logits((5, 40), dtype)
    leaf = _tensor(x).requires_grad_()
    y = getattr(fst, name)(leaf, backend=compiled_backend)
    assert y.dtype == leaf.dtype
    context = f"torch {name} {dtype} {compiled_backend}"
    assert_within_one_ulp_16(_array(y, dtype), getattr(reference, name)(x), context)
    dy = _logits((5, 40), dtype, seed=1, scale=1.0)
    y.backward(_tensor(dy))
    s, d = _f64(_array(y, dtype)), _f64(dy)
    expected = d * s * (1 - s) if name == "sigmoid" else -d * np.expm1(s)
    # from the rounded output, in float32: a float32 allowance for 1 - s and expm1
    assert_within_one_ulp_16(_array(leaf.grad, dtype), expected.astype(dtype), context,
                             4 * EPS32 * np.abs(d))
