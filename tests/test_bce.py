"""binary_cross_entropy_with_logits (+ _with_grad), sigmoid, log_sigmoid: every backend
against the reference, torch and finite differences; weights, special values, errors."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import assert_close
from test_kl_div import _assert_within_ulps

REDUCTIONS = ["none", "mean", "sum"]
SHAPES = [(), (7,), (4, 9), (3, 5, 6), (0, 4), (3, 40000)]
# weight / pos_weight shapes for an input of shape (3, 5, 6): scalar, per class of the last
# axis, broadcasting along the middle axis, and full size
WEIGHT_SHAPES = [None, (), (6,), (5, 1), (3, 1, 6), (3, 5, 6)]


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    return x, rng.random(shape).astype(dtype)


def _as_tensor(a):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    return None if a is None else torch.from_numpy(np.asarray(a))


def _weight(shape, seed):
    return None if shape is None else np.random.default_rng(seed).uniform(0.2, 3.0, shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(backend, dtype, shape, reduction):
    x, y = _inputs(shape, dtype)
    context = f"{backend} {np.dtype(dtype)} {shape} {reduction}"
    assert_close(fs.binary_cross_entropy_with_logits(x, y, reduction=reduction, backend=backend),
                 reference.binary_cross_entropy_with_logits(x, y, reduction=reduction), context)
    g = 0.5 if reduction != "none" else np.linspace(-1, 2, x.size).reshape(x.shape)
    got = fs.binary_cross_entropy_with_logits_with_grad(x, y, reduction=reduction,
                                                        grad_output=g, backend=backend)
    want = reference.binary_cross_entropy_with_logits_with_grad(x, y, reduction=reduction,
                                                                grad_output=g)
    for a, b in zip(got, want):
        assert_close(a, b, context)
    assert type(got[0]) is type(want[0])


@pytest.mark.parametrize("weight_shape", WEIGHT_SHAPES, ids=str)
@pytest.mark.parametrize("pos_weight_shape", WEIGHT_SHAPES, ids=str)
def test_weights_broadcast_like_torch(backend, weight_shape, pos_weight_shape):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x, y = _inputs((3, 5, 6), np.float64, seed=2)
    w, pw = _weight(weight_shape, 3), _weight(pos_weight_shape, 4)
    for reduction in REDUCTIONS:
        loss, grad = fs.binary_cross_entropy_with_logits_with_grad(
            x, y, weight=w, pos_weight=pw, reduction=reduction, backend=backend)
        xt = torch.from_numpy(x).requires_grad_()
        want = torch.nn.functional.binary_cross_entropy_with_logits(
            xt, torch.from_numpy(y), weight=_as_tensor(w), pos_weight=_as_tensor(pw),
            reduction=reduction)
        want.sum().backward()
        np.testing.assert_allclose(loss, want.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_long_weight_streams(backend):
    """A (C,) pos_weight with C above the stream period, and one that does not divide it."""
    for n_classes in (5000, 4095, 3):
        x, y = _inputs((4, n_classes), np.float64, seed=n_classes)
        pw = _weight((n_classes,), 1)
        got = fs.binary_cross_entropy_with_logits_with_grad(x, y, pos_weight=pw,
                                                            reduction="none", backend=backend)
        want = reference.binary_cross_entropy_with_logits_with_grad(x, y, pos_weight=pw,
                                                                    reduction="none")
        for a, b in zip(got, want):
            assert_close(a, b, f"C={n_classes}")


def test_gradient_matches_finite_differences(backend):
    x, y = _inputs((2, 3), np.float64, seed=5)
    w, pw = _weight((3,), 6), _weight((2, 1), 7)
    options = dict(weight=w, pos_weight=pw, reduction="mean", backend=backend)
    _, grad = fs.binary_cross_entropy_with_logits_with_grad(x, y, **options)
    h = 1e-6
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        numeric = (fs.binary_cross_entropy_with_logits(plus, y, **options)
                   - fs.binary_cross_entropy_with_logits(minus, y, **options)) / (2 * h)
        assert abs(grad[index] - numeric) < 1e-8, (index, grad[index], numeric)


def test_infinite_logits_give_the_finite_limit_where_torch_gives_nan(backend):
    """The documented difference: torch's (1 - y) x - (1 + (pw - 1) y) log_sigmoid(x) is
    inf - inf at x = +inf, y = 1 and x = -inf, y < 1 (pytorch#49844, #102894)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    inf = np.inf
    x = np.array([inf, -inf, -inf, inf, inf, np.nan])
    y = np.array([1.0, 0.0, 0.5, 0.0, 0.5, 1.0])
    theirs = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(x), torch.from_numpy(y), reduction="none").numpy()
    assert np.isnan(theirs[:3]).all()  # torch today
    loss, grad = fs.binary_cross_entropy_with_logits_with_grad(x, y, reduction="none",
                                                               backend=backend)
    np.testing.assert_array_equal(loss, [0.0, 0.0, inf, inf, inf, np.nan])
    np.testing.assert_array_equal(grad, [0.0, 0.0, -0.5, 1.0, 0.5, np.nan])
    # finite logits: torch's values; far out, the exact softplus(-|x|) where torch's form
    # cancels to 0 (x = -40, y = 0: log1p(exp(-40)) = 4.2e-18, torch 0)
    x = np.array([-800.0, -40.0, -1.0, 0.0, 1.0, 40.0, 800.0])
    for label in (0.0, 0.3, 1.0):
        y = np.full_like(x, label)
        want = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(x), torch.from_numpy(y), reduction="none").numpy()
        got = fs.binary_cross_entropy_with_logits(x, y, reduction="none", backend=backend)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
        exact = (1 - label) * np.logaddexp(0, x) + label * np.logaddexp(0, -x)
        np.testing.assert_allclose(got, exact, rtol=1e-14, atol=0)


def test_inputs_are_not_modified_and_buffers(backend):
    x, y = _inputs((4, 6), np.float32)
    w = _weight((6,), 1)
    x0, y0, w0 = x.copy(), y.copy(), w.copy()
    _, grad = fs.binary_cross_entropy_with_logits_with_grad(x, y, weight=w, backend=backend)
    for a, b in ((x, x0), (y, y0), (w, w0)):
        np.testing.assert_array_equal(a, b)
    out = np.empty_like(x)
    _, got = fs.binary_cross_entropy_with_logits_with_grad(x, y, weight=w, out=out,
                                                           backend=backend)
    assert got is out and np.array_equal(out, grad)
    _, got = fs.binary_cross_entropy_with_logits_with_grad(x, y, weight=w, inplace=True,
                                                           backend=backend)
    assert got is x and np.array_equal(x, grad)


def test_errors_name_the_value_and_the_fix(backend):
    x, y = _inputs((3, 4), np.float64)
    bce = fs.binary_cross_entropy_with_logits
    with pytest.raises(ValueError, match=r"target has shape \(4,\) but input has shape "
                                         r"\(3, 4\); they must be equal"):
        bce(x, y[0], backend=backend)
    with pytest.raises(ValueError, match=r"weight has shape \(2, 4\) but input has shape "
                                         r"\(3, 4\); weight must broadcast"):
        bce(x, y, weight=np.ones((2, 4)), backend=backend)
    with pytest.raises(ValueError, match=r"pos_weight has shape \(3,\) but input has shape"):
        bce(x, y, pos_weight=np.ones(3), backend=backend)
    with pytest.raises(ValueError, match="reduction must be one of"):
        bce(x, y, reduction="batchmean", backend=backend)
    with pytest.raises(TypeError, match="weight must be real numbers"):
        bce(x, y, weight=np.array(["a"] * 4), backend=backend)
    with pytest.raises(ValueError, match="target shares memory with input"):
        fs.binary_cross_entropy_with_logits_with_grad(x, x, inplace=True, backend=backend)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["sigmoid", "log_sigmoid"])
def test_sigmoid_family(backend, name, dtype):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = np.concatenate([np.random.default_rng(0).standard_normal(50000) * 30,
                        [np.inf, -np.inf, np.nan, 0.0, -800.0, 800.0]]).astype(dtype)
    got = getattr(fs, name)(x, backend=backend)
    assert_close(got, getattr(reference, name)(x), f"{name} {backend}")
    torch_op = torch.sigmoid if name == "sigmoid" else torch.nn.functional.logsigmoid
    want = torch_op(torch.from_numpy(x.astype(np.float64))).numpy().astype(dtype)
    assert_close(got, want, f"{name} {backend} vs torch")
    x2 = x.reshape(2, -1).T  # not contiguous
    assert_close(getattr(fs, name)(x2, backend=backend), getattr(reference, name)(x2))
    out = np.empty_like(x)
    assert getattr(fs, name)(x, out=out, backend=backend) is out
    np.testing.assert_array_equal(out, got)
    copy = x.copy()
    assert getattr(fs, name)(copy, out=copy, backend=backend) is copy  # in place
    np.testing.assert_array_equal(copy, got)
    with pytest.raises(ValueError, match=r"out has shape \(3,\)"):
        getattr(fs, name)(x, out=np.empty(3, dtype), backend=backend)


def test_float32_results_are_within_a_few_ulp_of_the_float64_reference(backend):
    """float32 input is computed in float32: each loss term, gradient, sigmoid and
    log-sigmoid within 3 ulp of the float64 reference on the same values (the loss terms
    are >= 0; a gradient relative to the size of its two terms); exp(-|x|) below float32's
    smallest normal may be 0."""
    rng = np.random.default_rng(6)
    n = 60000
    x = np.concatenate([rng.standard_normal(n // 2) * 5, rng.standard_normal(n // 2) * 40,
                        [-104.0, -88.0, 88.0, 104.0, 0.0]]).astype(np.float32)
    y, w, pw = (rng.uniform(lo, hi, x.size).astype(np.float32)
                for lo, hi in ((0, 1), (0.5, 2), (0, 3)))
    y[:100] = 0.0  # softplus(x) alone, down to the subnormal range
    loss, grad = fs.binary_cross_entropy_with_logits_with_grad(
        x, y, weight=w, pos_weight=pw, reduction="none", grad_output=np.ones(x.size),
        backend=backend)
    x64, y64, w64, pw64 = (a.astype(np.float64) for a in (x, y, w, pw))
    want_loss, want_grad = reference.binary_cross_entropy_with_logits_with_grad(
        x64, y64, weight=w64, pos_weight=pw64, reduction="none", grad_output=np.ones(x.size))
    tiny = np.finfo(np.float32).tiny
    sigmoid, sigmoid_neg = reference.sigmoid(x64), reference.sigmoid(-x64)
    grad_parts = w64 * ((1 - y64) * sigmoid + pw64 * y64 * sigmoid_neg)
    _assert_within_ulps(loss, want_loss, want_loss, 3, tiny * w64, f"{backend} loss")
    _assert_within_ulps(grad, want_grad, grad_parts, 3, tiny * w64 * (1 + pw64),
                        f"{backend} grad")
    for name in ("sigmoid", "log_sigmoid"):
        want = getattr(reference, name)(x64)
        _assert_within_ulps(getattr(fs, name)(x, backend=backend), want, np.abs(want), 3,
                            tiny, f"{backend} {name}")


def test_torch_wrapper_and_module():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import fastsoftmax.torch as fst
    x, y = _inputs((4, 5), np.float64)
    w, pw = torch.from_numpy(_weight((5,), 1)), torch.from_numpy(_weight((4, 1), 2))
    for reduction in REDUCTIONS:
        xt = torch.from_numpy(x).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, reduction=reduction: fst.binary_cross_entropy_with_logits(
                a, torch.from_numpy(y), w, reduction, pw), (xt,))
        a, b = xt.detach().clone().requires_grad_(), xt.detach().clone().requires_grad_()
        ours = fst.BCEWithLogitsLoss(w, reduction, pw)(a, torch.from_numpy(y))
        theirs = torch.nn.BCEWithLogitsLoss(w, reduction=reduction, pos_weight=pw)(
            b, torch.from_numpy(y))
        torch.testing.assert_close(ours, theirs)
        ours.sum().backward()
        theirs.sum().backward()
        torch.testing.assert_close(a.grad, b.grad)
    with pytest.raises(NotImplementedError, match="no gradient for weight"):
        fst.binary_cross_entropy_with_logits(xt, torch.from_numpy(y), w.clone().requires_grad_())
    compiled = torch.compile(lambda a, b: fst.binary_cross_entropy_with_logits(a, b),
                             fullgraph=True)
    torch.testing.assert_close(compiled(xt, torch.from_numpy(y)),
                               torch.nn.functional.binary_cross_entropy_with_logits(
                                   xt, torch.from_numpy(y)))


@pytest.mark.parametrize("name", ["sigmoid", "log_sigmoid"])
@pytest.mark.parametrize("shape", [(4, 6), (7,), (), (0, 3)])
def test_torch_sigmoid_family_matches_torch_with_autograd(backend, name, shape):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import fastsoftmax.torch as fst
    x = torch.linspace(-40, 40, max(1, int(np.prod(shape))), dtype=torch.float64)
    x = x[:int(np.prod(shape))].reshape(shape)
    torch_op = torch.sigmoid if name == "sigmoid" else torch.nn.functional.logsigmoid
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = getattr(fst, name)(ours, backend=backend), torch_op(theirs)
    torch.testing.assert_close(got, want)
    dy = torch.linspace(0.5, 1.5, got.numel(), dtype=torch.float64).reshape(shape)
    got.backward(dy)
    want.backward(dy)
    torch.testing.assert_close(ours.grad, theirs.grad)
    module = fst.Sigmoid() if name == "sigmoid" else fst.LogSigmoid()
    torch.testing.assert_close(module(x), want.detach())


@pytest.mark.parametrize("name", ["sigmoid", "log_sigmoid"])
def test_torch_sigmoid_family_gradcheck_and_layouts(backend, name):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import fastsoftmax.torch as fst
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    function = getattr(fst, name)
    assert torch.autograd.gradcheck(lambda t: function(t, backend=backend),
                                    (x.clone().requires_grad_(),))
    torch_op = torch.sigmoid if name == "sigmoid" else torch.nn.functional.logsigmoid
    strided = x.t()  # not contiguous
    torch.testing.assert_close(function(strided, backend=backend), torch_op(strided))
    torch.testing.assert_close(function(x.float(), backend=backend), torch_op(x.float()))
