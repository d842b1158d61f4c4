"""float16 and bfloat16 (issue 18) in the entropy: fs.entropy and fs.entropy_with_grad on
every backend against the reference computed in float64 from the same 16-bit values, in
place, with NaN and -inf rows, and through fastsoftmax.torch with autograd.

A kernel computes in float32 and rounds the gradient once (``conftest.
assert_within_one_ulp_16``); the gradient ``k e (mean_d - d)`` subtracts two float32
numbers of up to the row's logit range, which the allowance covers (``_allowance``).
"""
import ml_dtypes
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference

from conftest import assert_within_one_ulp_16

DTYPES = [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)]
# (rows, classes): blocks of short rows, whole rows, a long row split over the threads
SHAPES = [(37, 10), (11, 100), (9, 1000), (1, 70000)]
REDUCTIONS = {"none": np.linspace(0.5, 2.0, 37), "mean": 1.0, "sum": 0.5}


def _logits(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 3).astype(dtype)


def _allowance(x, grad_scale):
    """float32 rounding of ``mean_d - d`` (each up to the row's range) times p and the
    gradient's scale, per element."""
    finite = np.where(np.isfinite(x), x.astype(np.float64), np.nan)  # -inf logits: p = 0
    spread = np.nanmax(finite, -1, keepdims=True) - np.nanmin(finite, -1, keepdims=True)
    p = reference.softmax(x.astype(np.float64))
    return 4 * np.finfo(np.float32).eps * (spread + 1) * p * np.abs(grad_scale)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_with_grad_matches_reference(dtype, shape, reduction, backend):
    x = _logits(shape, dtype)
    g = REDUCTIONS[reduction]
    g = g[:shape[0]] if np.ndim(g) else g
    context = f"{dtype} {shape} {reduction} {backend}"
    h_ref, grad_ref = reference.entropy_with_grad(x, reduction=reduction, grad_output=g)
    h, grad = fs.entropy_with_grad(x, reduction=reduction, grad_output=g, backend=backend)
    assert np.asarray(h).dtype == np.float32 and grad.dtype == dtype, context
    np.testing.assert_allclose(h, h_ref, rtol=2e-6, err_msg=context)
    scale = np.asarray(g / shape[0] if reduction == "mean" else g)
    scale = scale[:, None] if scale.ndim else scale
    assert_within_one_ulp_16(grad, grad_ref, context, _allowance(x, scale))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_in_input_dtype(dtype, shape, backend):
    """fs.entropy returns one value per row in the logits' dtype (as logsumexp), rounded
    once from the float64 row sum of float32 terms."""
    x = _logits(shape, dtype)
    h = fs.entropy(x, backend=backend)
    assert h.dtype == dtype
    assert_within_one_ulp_16(h, reference.entropy(x), f"{dtype} {shape} {backend}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_with_grad_in_place(dtype, shape, backend):
    """The gradient written over the 16-bit logits: bit for bit the out-of-place one."""
    x = _logits(shape, dtype)
    h, grad = fs.entropy_with_grad(x, backend=backend)
    buffer = x.copy()
    h_in_place, result = fs.entropy_with_grad(buffer, inplace=True, backend=backend)
    assert result is buffer
    np.testing.assert_array_equal(h_in_place, h)
    np.testing.assert_array_equal(buffer.view(np.uint16), grad.view(np.uint16))


@pytest.mark.parametrize("n_classes", [10, 300])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_nan_and_inf_rows(dtype, n_classes, backend):
    """A NaN row gives NaN (entropy and gradient); -inf logits add 0 and get a 0
    gradient; the largest finite logits keep exp finite."""
    x = _logits((4, n_classes), dtype)
    x[0, 3] = np.nan
    x[1, ::2] = -np.inf
    x[2, 1] = float(np.finfo(dtype).max)
    h, grad = fs.entropy_with_grad(x, backend=backend)
    h_ref, grad_ref = reference.entropy_with_grad(x)
    assert np.isnan(h[0]) and np.isnan(grad[0].astype(np.float32)).all()
    np.testing.assert_allclose(h[1:], h_ref[1:], rtol=2e-6, atol=1e-7)
    assert not grad[1, ::2].astype(np.float32).any()
    assert_within_one_ulp_16(grad[1:], grad_ref[1:], f"{dtype} {backend}",
                             _allowance(x[1:], 1.0))


# ---- torch wrapper ----

torch = pytest.importorskip("torch", reason="the torch wrapper needs torch")
import fastsoftmax.torch as fst  # noqa: E402

TORCH_DTYPES = {DTYPES[0]: torch.bfloat16, DTYPES[1]: torch.float16}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_entropy_autograd(dtype, compiled_backend):
    x = _logits((6, 300), dtype)
    t = torch.from_numpy(x.astype(np.float32)).to(TORCH_DTYPES[dtype]).requires_grad_()
    h = fst.entropy(t, backend=compiled_backend)
    assert h.dtype == t.dtype
    with torch.no_grad():  # the forward without a gradient: the same values
        torch.testing.assert_close(fst.entropy(t, backend=compiled_backend), h, rtol=0, atol=0)
    g = torch.linspace(0.5, 2.0, 6).to(t.dtype)
    h.backward(g)
    assert t.grad.dtype == t.dtype
    g64 = g.float().numpy().astype(np.float64)
    h_ref, grad_ref = reference.entropy_with_grad(x, grad_output=g64)
    assert_within_one_ulp_16(h.detach().float().numpy().astype(dtype), h_ref.astype(dtype),
                             f"torch entropy {dtype}")
    # autograd scales the kernel's rounded gradient by grad_output: one more rounding
    expected = (reference.entropy_with_grad(x)[1].astype(np.float64) * g64[:, None])
    assert_within_one_ulp_16(t.grad.float().numpy().astype(dtype), expected.astype(dtype),
                             f"torch entropy grad {dtype}",
                             _allowance(x, g64[:, None]) + 2 * np.abs(grad_ref.astype(
                                 np.float64)) * 2.0 ** -np.finfo(dtype).nmant)
