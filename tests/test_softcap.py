"""Logit soft-capping (Gemma 2's softcap * tanh(x / softcap)) as an option of cross_entropy:
the reference against torch autograd on the composed loss, every backend against the
reference (short, normal and split rows, both target kinds, every option), in place,
finite differences, infinite and NaN logits, errors, and the torch wrapper."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference

torch = pytest.importorskip("torch", reason="the torch oracle needs torch")
F = torch.nn.functional

# (rows, classes): blocks of short rows, whole rows, and a long row split over the threads
SHAPES = [(33, 10), (9, 1000), (1, 70000)]
CAP = 5.0


def _problem(shape, probabilities, dtype, seed=0):
    rng = np.random.default_rng(seed)
    n_rows, n_classes = shape
    # spread wide enough that many logits sit on the flat part of tanh, and some near 0
    x = (rng.standard_normal(shape) * 8).astype(dtype)
    x.flat[::7] *= 1e-3
    if probabilities:
        target = reference.softmax(rng.standard_normal(shape)).astype(dtype)
    else:
        target = rng.integers(0, n_classes, n_rows)
        target[0] = -100 if n_rows > 1 else target[0]  # an ignored row, not the only one
    weight = rng.uniform(0.5, 2.0, n_classes).astype(dtype)
    return x, target, weight


def _torch_loss(x, target, weight, reduction, smoothing, z_loss, softcap):
    """F.cross_entropy on softcap * tanh(x / softcap), plus the z-loss of the capped logits
    (Liger's semantics), in float64 autograd."""
    logits = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    capped = softcap * torch.tanh(logits / softcap)
    t = torch.tensor(target, dtype=torch.float64 if target.dtype.kind == "f" else torch.int64)
    w = torch.tensor(weight, dtype=torch.float64)
    ce = F.cross_entropy(capped, t, weight=w, reduction=reduction, label_smoothing=smoothing)
    valid = torch.ones(x.shape[0], dtype=torch.bool) if target.dtype.kind == "f" else t != -100
    z_rows = torch.where(valid, z_loss * torch.logsumexp(capped, -1) ** 2, 0.0)
    z_term = {"none": z_rows, "sum": z_rows.sum(), "mean": z_rows.sum() / valid.sum()}[reduction]
    return logits, ce + z_term


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probabilities", [False, True])
def test_reference_matches_torch_autograd(reduction, probabilities):
    x, target, weight = _problem((7, 11), probabilities, np.float64)
    logits, loss = _torch_loss(x, target, weight, reduction, 0.1, 0.05, CAP)
    g = np.linspace(0.5, 1.5, 7) if reduction == "none" else 1.3
    loss.backward(torch.tensor(g, dtype=torch.float64))
    got_loss, got_grad = reference.cross_entropy_with_grad(
        x, target, weight=weight, reduction=reduction, label_smoothing=0.1, z_loss=0.05,
        softcap=CAP, grad_output=g)
    np.testing.assert_allclose(got_loss, loss.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(got_grad, logits.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("options", [
    dict(),
    dict(reduction="none", label_smoothing=0.1),
    dict(weight=True, reduction="sum", label_smoothing=0.2, z_loss=1e-2),
], ids=["plain", "none-smoothing", "weight-smoothing-zloss"])
@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_match_reference(backend, shape, options, probabilities, dtype):
    x, target, weight = _problem(shape, probabilities, dtype)
    options = dict(options, softcap=CAP)
    if options.pop("weight", False):
        options["weight"] = weight
    want = reference.cross_entropy_with_grad(x, target, **options)
    got = fs.cross_entropy_with_grad(x, target, backend=backend, **options)
    forward = fs.cross_entropy(x, target, backend=backend, **options)
    # float64: the kernels' tanh is within 3 ulp of numpy's (float32: 5)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got[0], want[0], rtol=rtol)
    np.testing.assert_allclose(forward, want[0], rtol=rtol)
    np.testing.assert_allclose(got[1], want[1], rtol=rtol * 10, atol=rtol * 1e-2)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("probabilities", [False, True])
def test_inplace_and_out_equal_a_new_gradient(compiled_backend, shape, probabilities):
    x, target, weight = _problem(shape, probabilities, np.float32)
    options = dict(weight=weight, label_smoothing=0.1, softcap=CAP, backend=compiled_backend)
    loss, grad = fs.cross_entropy_with_grad(x, target, **options)
    buffer = x.copy()
    loss_inplace, grad_inplace = fs.cross_entropy_with_grad(buffer, target, inplace=True,
                                                            **options)
    assert grad_inplace is buffer
    np.testing.assert_array_equal(grad_inplace, grad)
    assert loss_inplace == loss
    out = np.full_like(x, np.nan)
    _, grad_out = fs.cross_entropy_with_grad(x, target, out=out, **options)
    assert grad_out is out
    np.testing.assert_array_equal(grad_out, grad)


@pytest.mark.parametrize("probabilities", [False, True])
def test_gradient_matches_finite_differences(backend, probabilities):
    x, target, weight = _problem((3, 6), probabilities, np.float64, seed=3)
    options = dict(weight=weight, z_loss=0.2, label_smoothing=0.05, reduction="sum",
                   softcap=2.0, backend=backend)
    _, grad = fs.cross_entropy_with_grad(x, target, **options)
    step = 1e-6
    numeric = np.empty_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (fs.cross_entropy(up, target, **options)
                          - fs.cross_entropy(down, target, **options)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n_classes", [1, 10, 1000])
def test_infinite_logits_are_capped_and_nan_stays_nan(backend, n_classes):
    x = np.zeros((3, n_classes))
    x[0, 0] = np.inf                 # capped to +softcap: a finite loss
    x[1, :] = -np.inf                # every logit capped to -softcap: uniform
    x[2, n_classes // 2] = np.nan
    target = np.zeros(3, np.int64)
    loss, grad = fs.cross_entropy_with_grad(x, target, reduction="none", softcap=CAP,
                                            backend=backend)
    want_loss, want_grad = reference.cross_entropy_with_grad(x, target, reduction="none",
                                                             softcap=CAP)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)
    assert np.isfinite(loss[:2]).all() and np.isnan(loss[2]) and np.isnan(grad[2]).all()
    np.testing.assert_allclose(loss[1], np.log(n_classes), atol=1e-12)


def test_a_large_cap_is_almost_no_cap(backend):
    x, target, _ = _problem((9, 1000), False, np.float64)
    plain = fs.cross_entropy_with_grad(x, target, backend=backend)
    capped = fs.cross_entropy_with_grad(x, target, softcap=1e6, backend=backend)
    np.testing.assert_allclose(capped[0], plain[0], rtol=1e-9)
    np.testing.assert_allclose(capped[1], plain[1], rtol=1e-7, atol=1e-12)


def test_empty_rows(backend):
    loss, grad = fs.cross_entropy_with_grad(np.zeros((0, 5)), np.zeros(0, np.int64),
                                            reduction="sum", softcap=CAP, backend=backend)
    assert loss == 0 and grad.shape == (0, 5)


@pytest.mark.parametrize("value, error, message", [
    (0.0, ValueError, "softcap must be a finite number > 0"),
    (-30.0, ValueError, "got -30.0"),
    (float("nan"), ValueError, "got nan"),
    (float("inf"), ValueError, "got inf"),
    ("big", TypeError, "softcap must be a float or None, got 'big'"),
])
def test_bad_softcap_is_refused(backend, value, error, message):
    with pytest.raises(error, match=message):
        fs.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), softcap=value, backend=backend)


@pytest.mark.parametrize("probabilities", [False, True])
def test_torch_wrapper_matches_the_composed_loss(backend, probabilities):
    import fastsoftmax.torch as fst
    x, target, weight = _problem((6, 20), probabilities, np.float64)
    logits, want = _torch_loss(x, target, weight, "mean", 0.1, 1e-2, CAP)
    want.backward()
    ours = torch.tensor(x, requires_grad=True)
    # a learnt probability target gets its gradient, from the capped logits
    our_target = torch.tensor(target, requires_grad=probabilities)
    loss = fst.cross_entropy(ours, our_target, torch.tensor(weight), label_smoothing=0.1,
                             z_loss=1e-2, softcap=CAP, backend=backend)
    loss.backward()
    torch.testing.assert_close(loss, want.detach())
    torch.testing.assert_close(ours.grad, logits.grad)
    if probabilities:
        t = torch.tensor(target, requires_grad=True)
        capped = CAP * torch.tanh(torch.tensor(x) / CAP)
        F.cross_entropy(capped, t, weight=torch.tensor(weight), label_smoothing=0.1).backward()
        torch.testing.assert_close(our_target.grad, t.grad)
    module = fst.CrossEntropyLoss(torch.tensor(weight), label_smoothing=0.1, z_loss=1e-2,
                                  softcap=CAP)
    torch.testing.assert_close(module(torch.tensor(x), torch.tensor(target)), want.detach())


def test_torch_wrapper_in_place(backend):
    import fastsoftmax.torch as fst
    x, target, _ = _problem((6, 20), False, np.float64)
    logits, want = _torch_loss(x, target, np.ones(20), "mean", 0.0, 0.0, CAP)
    want.backward()
    leaf = torch.tensor(x, requires_grad=True)
    hidden = leaf * 1.0  # not a leaf: inplace=True may overwrite it
    loss = fst.cross_entropy(hidden, torch.tensor(target), inplace=True, softcap=CAP,
                             backend=backend)
    loss.backward()
    torch.testing.assert_close(loss, want.detach())
    torch.testing.assert_close(leaf.grad, logits.grad)
