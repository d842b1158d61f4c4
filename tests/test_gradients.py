"""Analytic gradients against central finite differences in float64, one column at a time."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import ROW_OPS, op_id

VJP_OPS = [op for op in ROW_OPS if op.vjp_of is not None]

STEP = 1e-6


def numeric_grad(f, x):
    """d f / d x by central differences; f returns a scalar."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += STEP
        down[index] -= STEP
        grad[index] = (f(up) - f(down)) / (2 * STEP)
    return grad


def problem(probabilities, seed=0, shape=(4, 6)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2
    if probabilities:
        t = rng.random(shape)
        return x, t / t.sum(-1, keepdims=True)
    t = rng.integers(0, shape[-1], shape[:-1])
    t.reshape(-1)[1] = -100
    return x, t


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
def test_cross_entropy_grad_matches_finite_differences(backend, probabilities, weighted,
                                                       label_smoothing, reduction):
    x, t = problem(probabilities)
    weight = np.linspace(0.5, 2.0, x.shape[-1]) if weighted else None
    g = np.random.default_rng(3).standard_normal(x.shape[:-1]) if reduction == "none" else 1.7
    opts = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)

    def objective(z):  # sum(loss * grad_output): its gradient is what the kernel returns
        return float(np.sum(fs.cross_entropy(z, t, backend=backend, **opts) * g))

    _, grad = fs.cross_entropy_with_grad(x, t, grad_output=g, backend=backend, **opts)
    np.testing.assert_allclose(grad, numeric_grad(objective, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("op", VJP_OPS, ids=op_id)
def test_vector_jacobian_products_match_finite_differences(backend, op, axis):
    """A backward op of the table, given its forward op's output and dy, is d(sum(forward *
    dy)) / dx."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5))
    dy = rng.standard_normal((3, 5))
    forward = getattr(reference, op.vjp_of)
    numeric = numeric_grad(lambda z: float(np.sum(forward(z, axis) * dy)), x)
    y = getattr(fs, op.vjp_of)(x, axis, backend=backend)
    np.testing.assert_allclose(getattr(fs, op.name)(y, dy, axis, backend=backend), numeric,
                               rtol=1e-6, atol=1e-9)


def test_logsumexp_gradient_is_softmax(backend):
    x = np.random.default_rng(4).standard_normal((2, 7))
    numeric = numeric_grad(lambda z: float(np.sum(fs.logsumexp(z, backend=backend))), x)
    np.testing.assert_allclose(fs.softmax(x, backend=backend), numeric, rtol=1e-6, atol=1e-9)
