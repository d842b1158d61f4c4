"""kl_div and kl_div_with_grad: every backend against the reference, torch and finite
differences; options, shapes, special values, errors, buffers."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import assert_close

REDUCTIONS = ["none", "mean", "sum", "batchmean"]
SHAPES = [(), (7,), (4, 9), (3, 5, 6), (0, 4), (4, 0), (3, 40000)]


def _inputs(shape, dtype, log_target=False, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape + (5,) if shape else (5,))
    logp = (logits - np.log(np.exp(logits).sum(-1, keepdims=True)))[..., 0]
    p = rng.dirichlet(np.ones(5), size=shape or None)[..., 0]
    target = np.log(p) if log_target else p
    return np.asarray(logp, dtype), np.asarray(target, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_matches_reference(backend, dtype, shape, reduction, log_target):
    x, t = _inputs(shape, dtype, log_target)
    context = f"{backend} {np.dtype(dtype)} {shape} {reduction} log_target={log_target}"
    loss = fs.kl_div(x, t, reduction=reduction, log_target=log_target, backend=backend)
    want = reference.kl_div(x, t, reduction=reduction, log_target=log_target)
    assert_close(loss, want, context)
    g = 0.5 if reduction != "none" else np.linspace(-1, 2, x.size).reshape(x.shape)
    loss, grad = fs.kl_div_with_grad(x, t, reduction=reduction, log_target=log_target,
                                     grad_output=g, backend=backend)
    want_loss, want_grad = reference.kl_div_with_grad(x, t, reduction=reduction,
                                                      log_target=log_target, grad_output=g)
    assert_close(loss, want_loss, context)
    assert_close(grad, want_grad, context)
    assert type(loss) is type(want_loss) and grad.shape == x.shape


def test_matches_torch_values_and_gradients(backend):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    for log_target in (False, True):
        for reduction in REDUCTIONS:
            x, t = _inputs((3, 4, 5), np.float64, log_target, seed=3)
            xt = torch.from_numpy(x).requires_grad_()
            want = torch.nn.functional.kl_div(xt, torch.from_numpy(t), reduction=reduction,
                                              log_target=log_target)
            weights = torch.linspace(-1, 1, want.numel(), dtype=torch.float64).reshape(want.shape)
            (want * weights).sum().backward()
            loss, grad = fs.kl_div_with_grad(x, t, reduction=reduction, log_target=log_target,
                                             grad_output=weights.numpy(), backend=backend)
            np.testing.assert_allclose(loss, want.detach().numpy(), rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_target_broadcasts_like_torch(backend):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x, _ = _inputs((3, 4), np.float64)
    t = np.array([0.1, 0.2, 0.3, 0.4])
    loss = fs.kl_div(x, t, reduction="sum", backend=backend)
    want = torch.nn.functional.kl_div(torch.from_numpy(x), torch.from_numpy(t), reduction="sum")
    np.testing.assert_allclose(loss, want.numpy(), rtol=1e-12)


@pytest.mark.parametrize("log_target", [False, True])
def test_gradient_matches_finite_differences(backend, log_target):
    x, t = _inputs((2, 3), np.float64, log_target, seed=5)
    _, grad = fs.kl_div_with_grad(x, t, reduction="batchmean", log_target=log_target,
                                  backend=backend)
    h = 1e-6
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        numeric = (fs.kl_div(plus, t, reduction="batchmean", log_target=log_target,
                             backend=backend)
                   - fs.kl_div(minus, t, reduction="batchmean", log_target=log_target,
                               backend=backend)) / (2 * h)
        assert abs(grad[index] - numeric) < 1e-7, (index, grad[index], numeric)


def test_special_values_follow_torch(backend):
    """Zero targets add 0 next to finite inputs; 0 * -inf is NaN, as torch's xlogy - t x."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    inf, nan = np.inf, np.nan
    x = np.array([-1.0, -inf, -inf, 0.0, nan, -2.0, -1.0, -1.0])
    t = np.array([0.0, 0.0, 0.5, nan, 0.5, -0.5, inf, 1e-310])
    for log_target in (False, True):
        got = fs.kl_div(x, t, reduction="none", log_target=log_target, backend=backend)
        want = torch.nn.functional.kl_div(torch.from_numpy(x), torch.from_numpy(t),
                                          reduction="none", log_target=log_target).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
        _, grad = fs.kl_div_with_grad(x, t, reduction="sum", log_target=log_target,
                                      backend=backend)
        xt = torch.from_numpy(x).requires_grad_()
        torch.nn.functional.kl_div(xt, torch.from_numpy(t), reduction="sum",
                                   log_target=log_target).backward()
        np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, equal_nan=True)


def test_mean_of_nothing_is_nan_and_0d_batchmean_is_the_sum(backend):
    empty = np.zeros((0, 3))
    assert np.isnan(fs.kl_div(empty, empty, backend=backend))
    assert np.isnan(fs.kl_div(empty, empty, reduction="batchmean", backend=backend))
    assert fs.kl_div(np.zeros((3, 0)), np.zeros((3, 0)), reduction="batchmean",
                     backend=backend) == 0
    x, t = np.array(-1.0), np.array(0.25)
    assert np.isclose(fs.kl_div(x, t, reduction="batchmean", backend=backend),
                      0.25 * (np.log(0.25) + 1.0))


def test_inputs_are_not_modified_and_buffers(backend):
    x, t = _inputs((4, 6), np.float32)
    x0, t0 = x.copy(), t.copy()
    loss, grad = fs.kl_div_with_grad(x, t, backend=backend)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(t, t0)
    out = np.empty_like(x)
    _, got = fs.kl_div_with_grad(x, t, out=out, backend=backend)
    assert got is out and np.array_equal(out, grad)
    _, got = fs.kl_div_with_grad(x, t, inplace=True, backend=backend)
    assert got is x and np.array_equal(x, grad)
    strided = np.zeros((4, 12), np.float32)[:, ::2]
    _, got = fs.kl_div_with_grad(x0, t, out=strided, backend=backend)
    assert got is strided and np.array_equal(strided, grad)
    transposed = fs.kl_div_with_grad(x0.T, t.T, reduction="none", backend=backend)
    assert_close(transposed[0], reference.kl_div(x0.T, t.T, reduction="none"))


def test_errors_name_the_value_and_the_fix(backend):
    x, t = _inputs((3, 4), np.float64)
    with pytest.raises(ValueError, match=r"target has shape \(2, 4\) but input has shape "
                                         r"\(3, 4\)"):
        fs.kl_div(x, np.ones((2, 4)), backend=backend)
    with pytest.raises(ValueError, match="must broadcast"):
        fs.kl_div(x[0], t, backend=backend)
    with pytest.raises(ValueError, match="reduction must be one of .*'batchmean'.*got 'avg'"):
        fs.kl_div(x, t, reduction="avg", backend=backend)
    with pytest.raises(TypeError, match=r"input must be a float32, float64, float16 or "
                                        r"bfloat16 array, got dtype int64 \(convert with"):
        fs.kl_div(np.ones((3, 4), np.int64), t, backend=backend)
    with pytest.raises(TypeError, match="target must hold float probabilities"):
        fs.kl_div(x, np.ones((3, 4), np.int64), backend=backend)
    with pytest.raises(TypeError, match="log_target must be True or False"):
        fs.kl_div(x, t, log_target="yes", backend=backend)
    with pytest.raises(ValueError, match=r"grad_output has shape \(3,\)"):
        fs.kl_div_with_grad(x, t, reduction="none", grad_output=np.ones(3), backend=backend)
    with pytest.raises(ValueError, match="inplace=True needs a writeable input"):
        readonly = x.copy()
        readonly.flags.writeable = False
        fs.kl_div_with_grad(readonly, t, inplace=True, backend=backend)
    with pytest.raises(ValueError, match="inplace=True needs a C-contiguous input"):
        fs.kl_div_with_grad(np.asfortranarray(x), t, inplace=True, backend=backend)
    with pytest.raises(ValueError, match=r"out has shape \(4, 3\)"):
        fs.kl_div_with_grad(x, t, out=np.empty((4, 3)), backend=backend)


def _assert_within_ulps(got, want, magnitude, ulps, absolute, context):
    """|got - want| <= ulps float32 eps of ``magnitude`` + ``absolute``, elementwise, plus
    ulps of float32's smallest subnormal (the spacing of results below the normal range)."""
    info = np.finfo(np.float32)
    bound = ulps * (info.eps * magnitude + info.smallest_subnormal) + absolute
    excess = np.abs(got.astype(np.float64) - want) - bound
    worst = int(np.argmax(excess))
    assert excess[worst] <= 0, (f"{context}: element {worst}: {got[worst]!r} vs {want[worst]!r} "
                                f"(bound {bound[worst]:.3g})")


@pytest.mark.parametrize("log_target", [False, True])
def test_float32_terms_are_within_a_few_ulp_of_the_float64_reference(backend, log_target):
    """float32 input is computed in float32: each term and gradient within 3 ulp of the
    float64 reference on the same values, relative to the size of its parts (xlogy(t, t)
    and t x cancel); with log targets, exp(t) below float32's smallest normal may be 0."""
    rng = np.random.default_rng(5)
    n = 60000
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    # probabilities down to float32's subnormals (logs of those too), and exact zeros
    p = np.concatenate([rng.random(n // 2), np.exp(rng.uniform(-103, 0, n // 2 - 3)),
                        [0.0, 1.0, 1e-45]]).astype(np.float32)
    t = np.log(p[p > 0]).astype(np.float32) if log_target else p
    x = x[:t.size]
    loss, grad = fs.kl_div_with_grad(x, t, reduction="none", log_target=log_target,
                                     grad_output=np.ones(t.size), backend=backend)
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    want_loss, want_grad = reference.kl_div_with_grad(x64, t64, reduction="none",
                                                      log_target=log_target,
                                                      grad_output=np.ones(t.size))
    tiny = np.finfo(np.float32).tiny
    if log_target:
        e = np.exp(t64)
        parts, size, absolute = e * (np.abs(t64) + np.abs(x64)), e, tiny
    else:
        parts = np.abs(want_loss + t64 * x64) + np.abs(t64 * x64)
        size, absolute = np.abs(t64), 0.0
    context = f"{backend} log_target={log_target}"
    _assert_within_ulps(loss, want_loss, parts, 3, absolute * (np.abs(t64) + np.abs(x64)),
                        context + " loss")
    _assert_within_ulps(grad, want_grad, size, 3, absolute, context + " grad")


def test_loss_does_not_depend_on_the_thread_count(compiled_backend):
    x, t = _inputs((7, 30000), np.float32)
    threads = fs.get_num_threads()
    try:
        fs.set_num_threads(1)
        one = fs.kl_div(x, t, backend=compiled_backend)
        fs.set_num_threads(threads)
        assert fs.kl_div(x, t, backend=compiled_backend) == one
    finally:
        fs.set_num_threads(threads)


def test_torch_wrapper_and_module():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import fastsoftmax.torch as fst
    x, t = _inputs((4, 5), np.float64)
    for reduction in REDUCTIONS:
        xt = torch.from_numpy(x).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, reduction=reduction: fst.kl_div(a, torch.from_numpy(t), reduction), (xt,))
        a, b = xt.detach().clone().requires_grad_(), xt.detach().clone().requires_grad_()
        ours = fst.KLDivLoss(reduction=reduction)(a, torch.from_numpy(t))
        theirs = torch.nn.KLDivLoss(reduction=reduction)(b, torch.from_numpy(t))
        torch.testing.assert_close(ours, theirs)
        ours.sum().backward()
        theirs.sum().backward()
        torch.testing.assert_close(a.grad, b.grad)
    with pytest.raises(NotImplementedError, match=r"no gradient for target; pass "
                                                  r"target.detach\(\)"):
        fst.kl_div(xt, torch.from_numpy(t).requires_grad_())
    compiled = torch.compile(lambda a, b: fst.kl_div(a, b, "batchmean"), fullgraph=True)
    torch.testing.assert_close(compiled(xt, torch.from_numpy(t)),
                               torch.nn.functional.kl_div(xt, torch.from_numpy(t),
                                                          reduction="batchmean"))
