"""float16 and bfloat16 (issue 18) in the fused linear cross-entropy, NumPy and torch.

The documented contract (fastsoftmax/linear_ce.py): 16-bit h, weight and bias are widened
to float32, the chunk loop runs in float32, the gradients are rounded once to the inputs'
dtype and the loss is float32. So the 16-bit call must give bit for bit the float32
call's loss on the widened values and its gradients rounded once; the float32 path itself
is checked against torch and finite differences in tests/test_linear_cross_entropy.py.
A check against the float64 reference on the same 16-bit values bounds the whole error.
"""
import ml_dtypes
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference

DTYPES = [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)]
OPTIONS = {
    "plain": {},
    "ignored rows, smoothing, class weights": {"ignore": True, "label_smoothing": 0.1,
                                               "class_weight": True},
    "none, per-row grad_output": {"reduction": "none", "grad_output": "rows"},
}


def _problem(dtype, n_rows=37, dim=24, n_classes=300, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n_rows, dim)).astype(dtype)
    weight = (rng.standard_normal((n_classes, dim)) * 0.3).astype(dtype)
    bias = rng.standard_normal(n_classes).astype(dtype)
    target = rng.integers(0, n_classes, n_rows)
    return h, weight, bias, target, rng


def _options(name, target, rng, n_classes):
    options = dict(OPTIONS[name])
    if options.pop("ignore", False):
        target = target.copy()
        target[::5] = -100
    if options.pop("class_weight", False):
        options["class_weight"] = rng.uniform(0.5, 2.0, n_classes)
    if options.get("grad_output") == "rows":
        options["grad_output"] = np.linspace(0.5, 2.0, target.size)
    return options, target


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_16_bit_is_the_float32_computation_rounded_once(dtype, option, backend):
    h, weight, bias, target, rng = _problem(dtype)
    options, target = _options(option, target, rng, weight.shape[0])
    widened = [a.astype(np.float32) for a in (h, weight, bias)]
    # chunks of 8 rows: grad_weight accumulates over several chunks
    loss, *grads = fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias, **options,
                                                     chunk_bytes=8 * 300 * 4, backend=backend)
    loss32, *grads32 = fs.linear_cross_entropy_with_grad(
        widened[0], widened[1], target, bias=widened[2], **options, chunk_bytes=8 * 300 * 4,
        backend=backend)
    assert np.asarray(loss).dtype == np.float32
    np.testing.assert_array_equal(loss, loss32)
    for name, grad, grad32 in zip(("h", "weight", "bias"), grads, grads32):
        assert grad.dtype == dtype, name
        np.testing.assert_array_equal(grad.view(np.uint16), grad32.astype(dtype).view(np.uint16),
                                      err_msg=f"grad_{name} {dtype} {option}")
    # the loss alone (another kernel: its float32 sums may round differently from the
    # with-gradient kernel's) against the float32 loss alone
    options.pop("grad_output", None)
    np.testing.assert_array_equal(
        fs.linear_cross_entropy(h, weight, target, bias=bias, **options, backend=backend),
        fs.linear_cross_entropy(widened[0], widened[1], target, bias=widened[2], **options,
                                backend=backend))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_against_the_float64_reference_on_the_same_values(dtype, backend):
    h, weight, bias, target, _ = _problem(dtype)
    h64, w64, b64 = (a.astype(np.float64) for a in (h, weight, bias))
    loss_ref, grad_logits = reference.cross_entropy_with_grad(h64 @ w64.T + b64, target)
    loss, grad_h, grad_weight, grad_bias = fs.linear_cross_entropy_with_grad(
        h, weight, target, bias=bias, backend=backend)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    eps = float(np.finfo(dtype).eps)  # the 16-bit rounding of each gradient
    for grad, expected in ((grad_h, grad_logits @ w64), (grad_weight, grad_logits.T @ h64),
                           (grad_bias, grad_logits.sum(0))):
        np.testing.assert_allclose(grad.astype(np.float64), expected, rtol=eps,
                                   atol=1e-5 * np.abs(expected).max())


def test_mixed_dtypes_name_the_16_bit_one():
    h, weight, _, target, _ = _problem(DTYPES[0])
    with pytest.raises(TypeError, match=r"h has dtype bfloat16 but weight has dtype float32.*"
                                        r"ml_dtypes\.bfloat16"):
        fs.linear_cross_entropy(h, weight.astype(np.float32), target)


# ---- torch wrapper ----

torch = pytest.importorskip("torch", reason="the torch wrapper needs torch")
import fastsoftmax.torch as fst  # noqa: E402

TORCH_DTYPES = {DTYPES[0]: torch.bfloat16, DTYPES[1]: torch.float16}


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_autograd_gives_the_numpy_results(dtype, reduction):
    """Through autograd ("none": the loop runs again in backward with grad_output) the
    same loss and gradients as the NumPy API, in the tensors' dtype."""
    h, weight, bias, target, _ = _problem(dtype)
    tensors = [torch.from_numpy(a.astype(np.float32)).to(TORCH_DTYPES[dtype]).requires_grad_()
               for a in (h, weight, bias)]
    loss = fst.linear_cross_entropy(tensors[0], tensors[1], torch.from_numpy(target),
                                    linear_bias=tensors[2], reduction=reduction)
    assert loss.dtype == torch.float32
    # float32 values: the same grad_output reaches autograd and the NumPy call
    g = np.linspace(0.5, 2.0, h.shape[0], dtype=np.float32) if reduction == "none" else 1.0
    loss.backward(torch.as_tensor(g, dtype=torch.float32))
    expected = fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias,
                                                 reduction=reduction, grad_output=g)
    np.testing.assert_allclose(loss.detach().numpy(), expected[0], rtol=1e-6)
    for tensor, grad in zip(tensors, expected[1:]):
        assert tensor.grad.dtype == tensor.dtype
        np.testing.assert_array_equal(tensor.grad.float().numpy(), grad.astype(np.float32))
