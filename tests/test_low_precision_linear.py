"""float16 and bfloat16 (issue 18) in the fused linear cross-entropy, NumPy and torch.

The documented contract (fastsoftmax/linear_ce.py). NumPy: 16-bit h, weight and bias are
widened to float32, the chunk loop runs in float32, the gradients are rounded once to the
inputs' dtype and the loss is float32. So the 16-bit call must give bit for bit the
float32 call's loss on the widened values and its gradients rounded once; the float32
path itself is checked against torch and finite differences in
tests/test_linear_cross_entropy.py. A check against the float64 reference on the same
16-bit values bounds the whole error. torch: the GEMMs run in the 16-bit dtype, as in
torch's unfused version, so its error against the float64 reference is held to at most
twice that of torch's unfused autograd on the same tensors.
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
    "sum": {"reduction": "sum"},
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


def _torch_problem(dtype, option):
    h, weight, bias, target, rng = _problem(dtype)
    options, target = _options(option, target, rng, weight.shape[0])
    torch_dtype = TORCH_DTYPES[dtype]
    tensors = [torch.from_numpy(a.astype(np.float32)).to(torch_dtype) for a in (h, weight, bias)]
    if "class_weight" in options:
        options["weight"] = torch.from_numpy(options.pop("class_weight")).to(torch_dtype)
    grad_output = torch.as_tensor(options.pop("grad_output", 1.0), dtype=torch.float32)
    return tensors, torch.from_numpy(target), options, grad_output


def _float64_reference(tensors, target, options, grad_output):
    """Autograd of the unfused computation in float64 on the same 16-bit values."""
    wide = [t.double().requires_grad_() for t in tensors]
    options = dict(options)
    if "weight" in options:
        options["weight"] = options["weight"].double()
    loss = torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(wide[0], wide[1], wide[2]), target, **options)
    (loss * grad_output.double()).sum().backward()
    return loss.detach(), [t.grad for t in wide]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_16_bit_error_is_at_most_twice_torchs(dtype, option):
    """Loss and gradients through autograd, one row per chunk ("none": the loop runs
    again in backward with grad_output), against the float64 reference on the same
    values; torch's unfused 16-bit autograd on the same tensors sets the bound."""
    tensors, target, options, grad_output = _torch_problem(dtype, option)
    exact_loss, exact_grads = _float64_reference(tensors, target, options, grad_output)

    def run(compute):
        leaves = [t.clone().requires_grad_() for t in tensors]
        loss = compute(leaves)
        (loss * grad_output.to(loss.dtype)).sum().backward()
        return loss.detach(), [t.grad for t in leaves]

    ours = run(lambda t: fst.linear_cross_entropy(t[0], t[1], target, linear_bias=t[2],
                                                  chunk_bytes=300 * 2, **options))
    torchs = run(lambda t: torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(t[0], t[1], t[2]), target, **options))
    assert ours[0].dtype == torch.float32
    for name, mine, theirs, exact in zip(("loss", "grad_h", "grad_weight", "grad_bias"),
                                         [ours[0], *ours[1]], [torchs[0], *torchs[1]],
                                         [exact_loss, *exact_grads]):
        if name != "loss":
            assert mine.dtype == tensors[0].dtype, name
        error = (mine.double() - exact).abs().max().item()
        torch_error = (theirs.double() - exact).abs().max().item()
        # a floor of a quarter 16-bit ulp of the largest value: torch may be exact by chance
        floor = 0.25 * float(np.finfo(dtype).eps) * exact.abs().max().item()
        assert error <= 2 * max(torch_error, floor), \
            f"{name} {dtype} {option}: error {error:.3g}, torch's {torch_error:.3g}"


@pytest.mark.parametrize("chunks", ["several chunks", "one chunk"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_16_bit_gemms_run_in_16_bit(dtype, chunks, monkeypatch):
    """No float32 copy of input or linear_weight: every GEMM operand is 16-bit, and the
    only float32 arrays are the grad_weight accumulator (over several chunks; one chunk's
    grad_weight is its GEMM's 16-bit output) and grad_bias's."""
    from fastsoftmax import torch_linear
    seen = []
    for method in ("linear", "grad_h", "grad_weight"):
        original = getattr(torch_linear._TorchBlas, method)

        def spy(self, *args, _original=original, _method=method, **kwargs):
            seen.append((_method, [a.dtype for a in args if isinstance(a, np.ndarray)]))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch_linear._TorchBlas, method, spy)
    tensors, target, options, _ = _torch_problem(dtype, "plain")
    leaves = [t.requires_grad_() for t in tensors]
    chunk_bytes = 8 * 300 * 2 if chunks == "several chunks" else None
    fst.linear_cross_entropy(leaves[0], leaves[1], target, linear_bias=leaves[2],
                             chunk_bytes=chunk_bytes).backward()
    assert {method for method, _ in seen} == {"linear", "grad_h", "grad_weight"}
    accumulator = np.float32 if chunks == "several chunks" else dtype
    for method, dtypes in seen:
        operands = dtypes[:-1] if method == "grad_weight" else dtypes
        assert all(d == dtype for d in operands), (method, dtypes)
        if method == "grad_weight":
            assert dtypes[-1] == accumulator, "the grad_weight accumulator"
    assert leaves[1].grad.dtype == leaves[1].dtype
