"""float16 and bfloat16 (issue 18): every op that takes them, on every backend, against the
reference computed in float64 from the same 16-bit values; round-to-nearest-even and NaN on
write, float16 overflow, in place, out=, errors for the ops that do not take them, and the
torch wrappers with autograd and in place.

A kernel computes in float32 and rounds once; the reference computes in float64 and rounds
once. So an element may differ by one unit in the last place of the 16-bit type (when the
float32 value falls on the other side of a rounding boundary), plus float32 rounding where
the formula cancels (``_assert_within_one_ulp``).
"""
import ml_dtypes
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import _isa, _ops, reference

from conftest import assert_float16_conversions_match_numpy, loss_options, op_inputs

BF16, F16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)
DTYPES = [BF16, F16]
MANTISSA_BITS = {BF16: 7, F16: 10}
MIN_EXPONENT = {BF16: -126, F16: -14}  # of the smallest normal number
# (rows, classes): blocks of short rows, whole rows of each size class, a long row split
# over the threads
SHAPES = [(37, 10), (11, 100), (9, 1000), (3, 5000), (1, 70000)]


def _ulp(values, dtype):
    """The spacing of ``dtype`` at each value (its smallest spacing for subnormals and 0)."""
    v = np.abs(values.astype(np.float64))
    exponent = np.floor(np.log2(np.where(v > 0, v, 1.0)))
    return 2.0 ** (np.maximum(exponent, MIN_EXPONENT[dtype]) - MANTISSA_BITS[dtype])


def _assert_within_one_ulp(actual, expected, context, cancels=0.0):
    """16-bit ``actual`` within one unit in the last place of 16-bit ``expected``, plus
    ``cancels``, an absolute float32-level allowance for formulas that subtract (NaN and inf
    in the same places)."""
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{context}: NaN places")
    finite = np.isfinite(e)
    np.testing.assert_array_equal(a[~finite & ~np.isnan(e)], e[~finite & ~np.isnan(e)],
                                  err_msg=f"{context}: infinities")
    excess = np.abs(a[finite] - e[finite]) - _ulp(e[finite], expected.dtype) - cancels
    assert excess.max(initial=0.0) <= 0, (
        f"{context}: {np.count_nonzero(excess > 0)} elements off by more than one ulp "
        f"(worst by {excess.max():.3g} beyond)")


def _logits(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 3).astype(dtype)


def _cancellation(op, inputs):
    """Absolute float32 rounding allowed where the op subtracts: the backward passes
    compute ``dy - sum`` with sums of the row's size."""
    if op.vjp_of is None:
        return 0.0
    scale = max(np.max(np.abs(a.astype(np.float64))) for a in inputs)
    return 8 * np.finfo(np.float32).eps * scale * np.sqrt(inputs[0].shape[-1])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", _ops.ROW_OPS, ids=lambda op: op.name)
def test_rows_op_matches_reference(op, dtype, shape, backend):
    inputs = [np.asarray(a).astype(dtype) for a in op_inputs(op, _logits(shape, dtype))]
    expected = getattr(reference, op.name)(*inputs)
    actual = getattr(fs, op.name)(*inputs, backend=backend)
    _assert_within_one_ulp(actual, expected, f"{op.name} {dtype} {shape} {backend}",
                           _cancellation(op, inputs))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", _ops.ROW_OPS, ids=lambda op: op.name)
def test_rows_op_class_axis_not_last_and_out(op, dtype, backend):
    """A class axis in the middle (the API copies to rows and back) and a kept out=."""
    x = np.moveaxis(_logits((4, 6, 50), dtype), 2, 1)  # classes on axis 1, not contiguous
    inputs = [np.asarray(a).astype(dtype) for a in op_inputs(op, x, axis=1)]
    expected = getattr(reference, op.name)(*inputs, axis=1)
    out = np.empty_like(expected)
    result = getattr(fs, op.name)(*inputs, axis=1, out=out, backend=backend)
    assert result is out
    _assert_within_one_ulp(out, expected, f"{op.name} {dtype} axis=1 {backend}",
                           _cancellation(op, inputs))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_in_place(dtype, backend):
    x = _logits((9, 1000), dtype)
    expected = reference.softmax(x)
    result = fs.softmax(x, out=x, backend=backend)
    assert result is x
    _assert_within_one_ulp(x, expected, f"in place {dtype} {backend}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_nan_and_inf_rows(op, dtype, backend):
    """A NaN row, rows with +inf and -inf, and an all -inf row: torch's results."""
    x = _logits((5, 300), dtype)
    x[0, 7] = np.nan
    x[1, 3] = np.inf
    x[2, ::2] = -np.inf
    x[3] = -np.inf
    expected = getattr(reference, op)(x)
    actual = getattr(fs, op)(x, backend=backend)
    _assert_within_one_ulp(actual, expected, f"{op} {dtype} {backend}")
    assert np.isnan(actual[0].astype(np.float32)).all(), "a NaN row must give NaN"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_values_at_the_edge_of_the_range(dtype, backend):
    """Logits near the type's largest value: the max subtraction keeps exp finite; the
    log-softmax of a row spanning the whole range, -2 max, overflows to -inf on write."""
    top = float(np.finfo(dtype).max)
    x = np.array([[top, top / 2, -top / 2, 0.0], [top, -top, 0.0, 1.0]]).astype(dtype)
    for op in ("softmax", "log_softmax", "logsumexp"):
        expected = getattr(reference, op)(x)
        actual = getattr(fs, op)(x, backend=backend)
        _assert_within_one_ulp(actual, expected, f"{op} {dtype} {backend}")
    log_p = fs.log_softmax(x, backend=backend).astype(np.float64)
    assert log_p[1, 1] == -np.inf


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_rounds_to_nearest_even(dtype, backend):
    """Two equal logits give a gradient of exactly -+grad_output / 2 in float32; grad_output
    chosen so that it lies halfway between two 16-bit numbers must round to the one with
    the even last bit: 1 + u/2 -> 1, 1 + 3u/2 -> 1 + 2u (u: the spacing at 1)."""
    u = 2.0 ** -MANTISSA_BITS[dtype]
    x = np.zeros((2, 2), dtype)
    for halfway, rounded in ((1 + u / 2, 1.0), (1 + 3 * u / 2, 1 + 2 * u)):
        g = np.array([2 * halfway, 2 * halfway])
        _, grad = fs.cross_entropy_with_grad(x, np.array([0, 1]), reduction="none",
                                             grad_output=g, backend=backend)
        np.testing.assert_array_equal(grad.astype(np.float64),
                                      [[-rounded, rounded], [rounded, -rounded]],
                                      err_msg=f"{dtype} {backend} halfway {halfway}")


def _ce_problem(shape, dtype, probabilities, seed=0):
    rng = np.random.default_rng(seed)
    x = _logits(shape, dtype, seed)
    if probabilities:
        target = reference.softmax(rng.standard_normal(shape)).astype(dtype)
    else:
        target = rng.integers(0, shape[1], shape[0])
        target[0] = -100 if shape[0] > 1 else target[0]  # an ignored row, not the only one
    return x, target, rng.uniform(0.5, 2.0, shape[1])


CE_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-3},
    "softcap": {"softcap": 5.0},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none", "grad_output": "rows"},
}


@pytest.mark.parametrize("option", CE_OPTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_with_grad_matches_reference(dtype, shape, probabilities, option,
                                                   backend):
    x, target, weight = _ce_problem(shape, dtype, probabilities)
    kwargs = loss_options(CE_OPTIONS[option], weight, shape[0])
    context = f"{dtype} {shape} {option} prob={probabilities} {backend}"
    loss_ref, grad_ref = reference.cross_entropy_with_grad(x, target, **kwargs)
    loss, grad = fs.cross_entropy_with_grad(x, target, **kwargs, backend=backend)
    assert np.asarray(loss).dtype == np.float32, context
    np.testing.assert_allclose(loss, loss_ref, rtol=2e-5, err_msg=context)
    _assert_within_one_ulp(grad, grad_ref, context)
    kwargs.pop("grad_output", None)
    np.testing.assert_allclose(fs.cross_entropy(x, target, **kwargs, backend=backend),
                               loss_ref if option != "none" else loss, rtol=2e-5,
                               err_msg=context)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_with_grad_in_place(dtype, shape, backend):
    """The gradient written over the 16-bit logits, equal to the out-of-place one."""
    x, target, _ = _ce_problem(shape, dtype, False)
    loss, grad = fs.cross_entropy_with_grad(x, target, backend=backend)
    buffer = x.copy()
    loss_in_place, result = fs.cross_entropy_with_grad(buffer, target, inplace=True,
                                                       backend=backend)
    assert result is buffer
    np.testing.assert_equal(loss_in_place, loss)
    np.testing.assert_array_equal(buffer.view(np.uint16), grad.view(np.uint16))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_nan_logit(dtype, backend):
    x, target, _ = _ce_problem((4, 200), dtype, False)
    x[1, 5] = np.nan
    loss, grad = fs.cross_entropy_with_grad(x, target, reduction="none", backend=backend)
    assert np.isnan(loss[1]) and np.isnan(grad[1].astype(np.float32)).all()
    assert np.isfinite(loss[2:]).all() and np.isfinite(grad[2:].astype(np.float32)).all()


def test_mixed_16_bit_types_are_refused(backend):
    y = _logits((3, 8), BF16)
    with pytest.raises(TypeError, match="y has dtype bfloat16 but dy has dtype float16"):
        fs.softmax_backward(y, y.astype(F16), backend=backend)


# ---- torch wrappers ----

torch = pytest.importorskip("torch", reason="the torch wrappers need torch")
import fastsoftmax.torch as fst  # noqa: E402

TORCH_DTYPES = {BF16: torch.bfloat16, F16: torch.float16}


def _tensor(a, dtype):
    return torch.from_numpy(a.astype(np.float32)).to(TORCH_DTYPES[dtype])


def _numpy(t, dtype):
    return t.detach().float().numpy().astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_torch_rows_ops_and_autograd(name, dtype, compiled_backend):
    x = _logits((6, 300), dtype)
    t = _tensor(x, dtype).requires_grad_()
    y = getattr(fst, name)(t, -1, backend=compiled_backend)
    assert y.dtype == t.dtype
    _assert_within_one_ulp(_numpy(y, dtype), getattr(reference, name)(x), f"{name} {dtype}")
    dy = _logits((6, 300), dtype, seed=1)
    y.backward(_tensor(dy, dtype))
    assert t.grad.dtype == t.dtype
    backward = getattr(reference, f"{name}_backward")
    expected = backward(_numpy(y, dtype), dy)
    _assert_within_one_ulp(_numpy(t.grad, dtype), expected, f"{name} backward {dtype}",
                           _cancellation(_ops.OPS[f"{name}_backward"],
                                         [_numpy(y, dtype), dy]))


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_cross_entropy_autograd(dtype, reduction, compiled_backend):
    x, target, _ = _ce_problem((8, 500), dtype, False)
    t = _tensor(x, dtype).requires_grad_()
    loss = fst.cross_entropy(t, torch.from_numpy(target), reduction=reduction,
                             backend=compiled_backend)
    assert loss.dtype == torch.float32
    grad_output = torch.linspace(0.5, 2.0, 8) if reduction == "none" else torch.tensor(1.0)
    loss.backward(grad_output)
    assert t.grad.dtype == t.dtype
    loss_ref, grad_ref = reference.cross_entropy_with_grad(
        x, target, reduction=reduction, grad_output=grad_output.numpy().astype(np.float64))
    np.testing.assert_allclose(loss.detach().numpy(), loss_ref, rtol=2e-5)
    _assert_within_one_ulp(_numpy(t.grad, dtype), grad_ref, f"torch CE {dtype} {reduction}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_cross_entropy_in_place(dtype, compiled_backend):
    """inplace=True on the output of a layer: the 16-bit logits' buffer becomes the gradient."""
    x, target, _ = _ce_problem((8, 500), dtype, False)
    leaf = _tensor(x, dtype).requires_grad_()
    logits = leaf * 1  # not a leaf: its buffer may take the gradient
    loss = fst.cross_entropy(logits, torch.from_numpy(target), inplace=True,
                             backend=compiled_backend)
    loss.backward()
    loss_ref, grad_ref = reference.cross_entropy_with_grad(x, target)
    np.testing.assert_allclose(loss.detach().numpy(), loss_ref, rtol=2e-5)
    _assert_within_one_ulp(_numpy(logits, dtype), grad_ref, f"torch CE in place {dtype}")
    _assert_within_one_ulp(_numpy(leaf.grad, dtype), grad_ref, f"torch CE leaf grad {dtype}")


# ---- the Numba backend's 16-bit conversions, exhaustively where it is cheap ----

def _float16_conversions():
    """Both float16 conversion pairs of the Numba backend: integer operations (every CPU),
    and LLVM's (F16C) where this CPU has them; the kernels use one (_math._F16C)."""
    from fastsoftmax._numba import _math
    pairs = [pytest.param((_math._float16_to_float_integer, _math._float_to_float16_integer),
                          id="integer")]
    f16c = "f16c" in _isa.numba_features()
    pairs.append(pytest.param((_math._float16_to_float_f16c, _math._float_to_float16_f16c),
                              id="f16c", marks=pytest.mark.skipif(
                                  not f16c, reason="this CPU has no F16C")))
    return pairs


@pytest.mark.parametrize("conversions", _float16_conversions())
def test_numba_float16_conversions_match_numpy(conversions):
    from numba import njit
    decode, encode = conversions

    def elementwise(convert, dtype):  # convert applied to each value, in a compiled loop
        @njit
        def apply(values):
            out = np.empty(values.size, dtype)
            for j in range(values.size):
                out[j] = convert(values[j])
            return out
        return apply

    assert_float16_conversions_match_numpy(elementwise(decode, np.float32),
                                           elementwise(encode, np.int16))


def test_numba_bfloat16_conversions_match_ml_dtypes():
    from numba import njit

    from fastsoftmax._numba._math import load, store

    @njit
    def copy(a, b):
        for j in range(a.size):
            store(b, j, load(a, j))

    rng = np.random.default_rng(1)
    f = np.concatenate([rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
                        .view(np.float32), np.float32([3.4e38, -3.4e38, 1e-40, -0.0])])
    encoded = np.empty(f.size, np.uint16)
    copy(f, encoded)
    expected = f.astype(BF16)
    nan = np.isnan(f)
    assert np.isnan(encoded.view(BF16)[nan].astype(np.float32)).all()
    np.testing.assert_array_equal(encoded[~nan], expected.view(np.uint16)[~nan])
    back = np.empty(f.size, np.float32)
    copy(encoded, back)
    np.testing.assert_array_equal(back[~nan], expected[~nan].astype(np.float32))


def test_float16_subnormals_survive_flush_to_zero(backend):
    """A thread that flushes float32 denormals (torch.set_flush_denormal(True), common in
    CPU training) must still read float16 subnormals: with logp = -inf the gradient of
    log_softmax is dy itself. One thread, so the kernel runs on this (flushing) thread."""
    flush = pytest.importorskip("torch", reason="torch sets the flush mode here")
    subnormals = np.array([[2.0 ** -24, 3 * 2.0 ** -24, 1023 * 2.0 ** -24, -2.0 ** -20]],
                          np.float16)
    logp = np.full(subnormals.shape, -np.inf, np.float16)
    threads = fs.get_num_threads()
    fs.set_num_threads(1)
    assert flush.set_flush_denormal(True), "this CPU cannot flush denormals"
    try:
        dx = fs.log_softmax_backward(logp, subnormals, backend=backend)
    finally:
        flush.set_flush_denormal(False)
        fs.set_num_threads(threads)
    np.testing.assert_array_equal(dx, subnormals)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_class_weights_may_be_16_bit(dtype, backend):
    """bfloat16 / float16 class weights (a torch caller's weight tensor in the logits'
    dtype) are used in float32, as float32 weights of the same values."""
    x, target, weight = _ce_problem((9, 1000), dtype, False)
    weight16 = weight.astype(dtype)
    expected = fs.cross_entropy_with_grad(x, target, weight=weight16.astype(np.float32),
                                          backend=backend)
    actual = fs.cross_entropy_with_grad(x, target, weight=weight16, backend=backend)
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_array_equal(actual[1].view(np.uint16), expected[1].view(np.uint16))
