"""z-loss (PaLM's z_loss * logsumexp(row)**2) as an option of cross_entropy: the reference
against torch autograd on the composed loss, every backend against the reference (short,
normal and split rows), finite differences, the returned term, errors, the torch wrapper."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference

torch = pytest.importorskip("torch", reason="the torch oracle needs torch")
F = torch.nn.functional

# (rows, classes): blocks of short rows, whole rows, and a long row split over the threads
SHAPES = [(33, 10), (9, 1000), (1, 70000)]


def _problem(shape, probabilities, dtype, seed=0):
    rng = np.random.default_rng(seed)
    n_rows, n_classes = shape
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    if probabilities:
        target = reference.softmax(rng.standard_normal(shape)).astype(dtype)
    else:
        target = rng.integers(0, n_classes, n_rows)
        target[0] = -100  # an ignored row
    weight = rng.uniform(0.5, 2.0, n_classes).astype(dtype)
    return x, target, weight


def _torch_loss(x, target, weight, reduction, smoothing, z_loss):
    """F.cross_entropy plus z_loss * lse**2 over the non-ignored rows, reduced per Liger
    (the mean counts rows, not weights), in float64 autograd."""
    logits = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(target, dtype=torch.float64 if target.dtype.kind == "f" else torch.int64)
    w = torch.tensor(weight, dtype=torch.float64)
    ce = F.cross_entropy(logits, t, weight=w, reduction=reduction, label_smoothing=smoothing)
    valid = torch.ones(x.shape[0], dtype=torch.bool) if target.dtype.kind == "f" else t != -100
    z_rows = torch.where(valid, z_loss * torch.logsumexp(logits, -1) ** 2, 0.0)
    z_term = {"none": z_rows, "sum": z_rows.sum(), "mean": z_rows.sum() / valid.sum()}[reduction]
    return logits, ce + z_term, z_term


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probabilities", [False, True])
def test_reference_matches_torch_autograd(reduction, probabilities):
    x, target, weight = _problem((7, 11), probabilities, np.float64)
    logits, loss, z_term = _torch_loss(x, target, weight, reduction, 0.1, 0.05)
    g = np.linspace(0.5, 1.5, 7) if reduction == "none" else 1.3
    loss.backward(torch.tensor(g, dtype=torch.float64))
    got_loss, got_grad, got_z = reference.cross_entropy_with_grad(
        x, target, weight=weight, reduction=reduction, label_smoothing=0.1, z_loss=0.05,
        grad_output=g, return_z_loss=True)
    np.testing.assert_allclose(got_loss, loss.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(got_z, z_term.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(got_grad, logits.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_match_reference(backend, shape, reduction, probabilities, dtype):
    x, target, weight = _problem(shape, probabilities, dtype)
    options = dict(weight=weight, reduction=reduction, label_smoothing=0.1, z_loss=1e-2,
                   return_z_loss=True)
    want = reference.cross_entropy_with_grad(x, target, **options)
    got = fs.cross_entropy_with_grad(x, target, backend=backend, **options)
    forward = fs.cross_entropy(x, target, backend=backend, **options)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for actual, expected in [(got[0], want[0]), (got[2], want[2]), (forward[0], want[0]),
                             (forward[1], want[2])]:
        np.testing.assert_allclose(actual, expected, rtol=rtol)
    np.testing.assert_allclose(got[1], want[1], rtol=rtol * 10, atol=rtol * 1e-3)


def test_inplace_gradient_equals_out_of_place(compiled_backend):
    x, target, weight = _problem((9, 1000), False, np.float32)
    options = dict(weight=weight, z_loss=1e-2, backend=compiled_backend)
    loss, grad = fs.cross_entropy_with_grad(x, target, **options)
    buffer = x.copy()
    loss_inplace, grad_inplace = fs.cross_entropy_with_grad(buffer, target, inplace=True,
                                                            **options)
    assert grad_inplace is buffer
    np.testing.assert_array_equal(grad_inplace, grad)
    assert loss_inplace == loss


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6)) * 3
    target = np.array([1, 5, 0])
    options = dict(z_loss=0.2, label_smoothing=0.05, reduction="sum")
    _, grad = fs.cross_entropy_with_grad(x, target, backend="numba", **options)
    step = 1e-6
    numeric = np.empty_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (fs.cross_entropy(up, target, backend="numba", **options)
                          - fs.cross_entropy(down, target, backend="numba", **options)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_zero_z_loss_changes_nothing(backend):
    x, target, weight = _problem((9, 1000), False, np.float32)
    plain = fs.cross_entropy_with_grad(x, target, weight=weight, backend=backend)
    loss, grad, z_term = fs.cross_entropy_with_grad(x, target, weight=weight, z_loss=0.0,
                                                    return_z_loss=True, backend=backend)
    assert loss == plain[0] and z_term == 0 and z_term.dtype == np.float32
    np.testing.assert_array_equal(grad, plain[1])
    none = fs.cross_entropy(x, target, reduction="none", return_z_loss=True, backend=backend)
    np.testing.assert_array_equal(none[1], np.zeros(9, np.float32))


def test_ignored_rows_have_no_z_loss(backend):
    x, target, _ = _problem((33, 10), False, np.float64)
    target[:] = -100
    target[3] = 4
    loss, grad, z_term = fs.cross_entropy_with_grad(x, target, reduction="none", z_loss=0.5,
                                                    return_z_loss=True, backend=backend)
    assert np.count_nonzero(z_term) == 1 and np.count_nonzero(loss) == 1
    assert np.count_nonzero(grad.any(axis=1)) == 1


@pytest.mark.parametrize("value, error, message", [
    (-1e-4, ValueError, "z_loss must be a finite number >= 0"),
    (float("nan"), ValueError, "got nan"),
    (float("inf"), ValueError, "got inf"),
    ("big", TypeError, "z_loss must be a float, got 'big'"),
])
def test_bad_z_loss_is_refused(backend, value, error, message):
    with pytest.raises(error, match=message):
        fs.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), z_loss=value, backend=backend)


def test_torch_wrapper_matches_the_composed_loss(backend):
    import fastsoftmax.torch as fst
    x, target, weight = _problem((6, 20), False, np.float64)
    logits, want, _ = _torch_loss(x, target, weight, "mean", 0.0, 1e-2)
    want.backward()
    ours = torch.tensor(x, requires_grad=True)
    loss = fst.cross_entropy(ours, torch.tensor(target), torch.tensor(weight), z_loss=1e-2,
                             backend=backend)
    loss.backward()
    torch.testing.assert_close(loss, want.detach())
    torch.testing.assert_close(ours.grad, logits.grad)
    module = fst.CrossEntropyLoss(torch.tensor(weight), z_loss=1e-2)
    torch.testing.assert_close(module(torch.tensor(x), torch.tensor(target)), want.detach())


@pytest.mark.parametrize("inplace", [False, True])
def test_torch_wrapper_returns_the_z_loss_term(backend, inplace):
    import fastsoftmax.torch as fst
    x, target, weight = _problem((6, 20), False, np.float64)
    logits, want, want_z = _torch_loss(x, target, weight, "mean", 0.0, 1e-2)
    want.backward()
    leaf = torch.tensor(x, requires_grad=True)
    hidden = leaf * 1.0  # not a leaf: inplace=True may overwrite it
    loss, z_term = fst.cross_entropy(hidden, torch.tensor(target), torch.tensor(weight),
                                     inplace=inplace, z_loss=1e-2, return_z_loss=True,
                                     backend=backend)
    assert not z_term.requires_grad  # for logging: the loss already includes it
    torch.testing.assert_close(z_term, want_z.detach())
    loss.backward()
    torch.testing.assert_close(loss, want.detach())
    torch.testing.assert_close(leaf.grad, logits.grad)
    module = fst.CrossEntropyLoss(torch.tensor(weight), reduction="none", z_loss=1e-2,
                                  return_z_loss=True)
    _, want_rows = _torch_loss(x, target, weight, "none", 0.0, 1e-2)[1:]
    torch.testing.assert_close(module(torch.tensor(x), torch.tensor(target))[1],
                               want_rows.detach())
