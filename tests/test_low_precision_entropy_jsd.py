"""float16 and bfloat16 (issue 18) in the entropy and the JSD: fs.entropy(_with_grad) and
fs.jsd_logits(_with_grad) on every backend against the reference computed in float64 from
the same 16-bit values, in place (entropy), with NaN and -inf rows, and through
fastsoftmax.torch with autograd.

A kernel computes in float32 and rounds the gradient once (``conftest.
assert_within_one_ulp_16``); both gradients subtract float32 numbers of up to the row's
logit range (``mean_d - d``, ``r - K``), which the allowances cover.
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


# ---- JSD ----

BETAS = [0.0, 0.5, 1.0]  # the forward KL, the mixture, the reverse KL


def _jsd_allowance(student, teacher, temperature, grad_scale):
    """float32 rounding of ``r - K`` (logs of the row's probabilities) times Q and the
    gradient's scale / T, per element."""
    log_q = reference.log_softmax(student.astype(np.float64) / temperature)
    log_p = reference.log_softmax(teacher.astype(np.float64) / temperature)
    with np.errstate(invalid="ignore"):
        size = np.where(np.exp(log_q) > 0, np.abs(log_q) + np.abs(log_p) + 1, 0)
    return 8 * np.finfo(np.float32).eps * np.exp(log_q) * size * np.abs(grad_scale) \
        / temperature


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_jsd_with_grad_matches_reference(dtype, shape, reduction, beta, temperature, backend):
    student, teacher = _logits(shape, dtype), _logits(shape, dtype, seed=1)
    g = REDUCTIONS[reduction]
    g = g[:shape[0]] if np.ndim(g) else g
    options = dict(beta=beta, temperature=temperature, reduction=reduction)
    context = f"{dtype} {shape} {options} {backend}"
    loss_ref, grad_ref = reference.jsd_logits_with_grad(student, teacher, **options,
                                                        grad_output=g)
    loss, grad = fs.jsd_logits_with_grad(student, teacher, **options, grad_output=g,
                                         backend=backend)
    assert np.asarray(loss).dtype == np.float32 and grad.dtype == dtype, context
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5, err_msg=context)
    np.testing.assert_allclose(fs.jsd_logits(student, teacher, **options, backend=backend),
                               loss_ref if reduction != "none" else loss, rtol=1e-5,
                               err_msg=context)
    scale = np.asarray(g / shape[0] if reduction == "mean" else g)
    scale = scale[:, None] if scale.ndim else scale
    assert_within_one_ulp_16(grad, grad_ref, context,
                             _jsd_allowance(student, teacher, temperature, scale))


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_jsd_nan_and_inf_rows(dtype, beta, backend):
    """A NaN in either row gives NaN; -inf logits in both rows (probability 0 in P and Q)
    add 0 and get a 0 gradient."""
    student, teacher = _logits((3, 300), dtype), _logits((3, 300), dtype, seed=1)
    student[0, 3] = np.nan
    student[1, ::2] = teacher[1, ::2] = -np.inf
    loss, grad = fs.jsd_logits_with_grad(student, teacher, beta=beta, reduction="none",
                                         backend=backend)
    loss_ref, grad_ref = reference.jsd_logits_with_grad(student, teacher, beta=beta,
                                                        reduction="none")
    assert np.isnan(loss[0]) and np.isnan(grad[0].astype(np.float32)).all()
    np.testing.assert_allclose(loss[1:], loss_ref[1:], rtol=1e-5)
    assert not grad[1, ::2].astype(np.float32).any()
    assert_within_one_ulp_16(grad[1:], grad_ref[1:], f"{dtype} beta={beta} {backend}",
                             _jsd_allowance(student[1:], teacher[1:], 1.0, 1.0))


# ---- torch wrappers ----

torch = pytest.importorskip("torch", reason="the torch wrappers need torch")
import fastsoftmax.torch as fst  # noqa: E402

TORCH_DTYPES = {DTYPES[0]: torch.bfloat16, DTYPES[1]: torch.float16}


def _tensor(a, dtype):
    return torch.from_numpy(a.astype(np.float32)).to(TORCH_DTYPES[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_entropy_autograd(dtype, compiled_backend):
    x = _logits((6, 300), dtype)
    t = _tensor(x, dtype).requires_grad_()
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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_jsd_autograd(dtype, compiled_backend):
    student, teacher = _logits((6, 300), dtype), _logits((6, 300), dtype, seed=1)
    s = _tensor(student, dtype).requires_grad_()
    loss = fst.jsd_logits(s, _tensor(teacher, dtype), beta=0.5, backend=compiled_backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert s.grad.dtype == s.dtype
    loss_ref, grad_ref = reference.jsd_logits_with_grad(student, teacher, beta=0.5)
    np.testing.assert_allclose(loss.detach().numpy(), loss_ref, rtol=1e-5)
    assert_within_one_ulp_16(s.grad.float().numpy().astype(dtype), grad_ref,
                             f"torch JSD {dtype}",
                             _jsd_allowance(student, teacher, 1.0, 1.0 / 6))
