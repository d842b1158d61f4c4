"""The Cython kernels on 16-bit arrays (bfloat16, float16 as their uint16 / int16 bits):
what is particular to the C side (the encoding, NaN and overflow, in place, agreement with
the float32 kernels). The API-level tests against the reference are in
tests/test_low_precision.py."""
import numpy as np
import pytest

from conftest import assert_float16_conversions_match_numpy

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
K = pytest.importorskip("fastsoftmax._cython._kernels",
                        reason="the Cython extension is not built")

BF16 = ml_dtypes.bfloat16
DTYPES = [BF16, np.float16]
# below SMALL_C (the row functions for 16-bit), around it, long rows, and split rows
SHAPES = [(37, 10), (9, 127), (5, 1000), (2, 70000)]


def bits(a):
    """The view a 16-bit array reaches a kernel as (the API's job)."""
    return a.view(np.uint16) if a.dtype == BF16 else a.view(np.int16)


def test_float16_conversions_match_numpy():
    """The float16 conversions of the dispatched ISA level (F16C / AVX-512 vectors with an
    integer-operation tail, or integer operations only; test_isa.py runs this file at each
    level)."""
    def to_float32(bits):
        out = np.empty(bits.size, np.float32)
        K._float16_to_float32(bits, out)
        return out

    def to_float16(values):
        out = np.empty(values.size, np.int16)
        K._float32_to_float16(values, out)
        return out

    assert_float16_conversions_match_numpy(to_float32, to_float16)
    with pytest.raises(ValueError, match="give them one length"):
        K._float16_to_float32(np.zeros(3, np.int16), np.zeros(2, np.float32))


def softmax_f32(x):
    out = np.empty(x.shape, np.float32)
    K.softmax(x.astype(np.float32), out)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_is_the_float32_kernel_rounded_once(dtype, shape):
    """The 16-bit kernel computes in float32 and rounds once (no rounded exponentials
    rescaled): its output is the float32 kernel's on the decoded input, rounded to
    nearest even, but for the few elements where the two float32 computations differ
    by an ulp of float32 across a 16-bit rounding boundary."""
    x = (np.random.default_rng(1).standard_normal(shape) * 4).astype(dtype)
    out = np.empty_like(x)
    K.softmax(bits(x), bits(out))
    want = softmax_f32(x).astype(dtype)
    assert np.mean(out == want) > 0.999
    np.testing.assert_array_max_ulp(out.astype(np.float32), want.astype(np.float32),
                                    maxulp=2 ** 16 if dtype == BF16 else 2 ** 13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_rounds_to_nearest_even_and_overflows_to_inf(dtype):
    """log_softmax is the float64 result rounded to nearest even (these rows are far
    from a rounding boundary), and a value past the largest finite one (-2 max here) is
    -inf."""
    big = float(np.finfo(dtype).max)
    x = np.array([[0.0, -1.0, -3.5, -100.0], [-big, -big, -big, -big]], dtype=dtype)
    out = np.empty_like(x)
    K.log_softmax(bits(x), bits(out))
    x64 = x.astype(np.float64)
    z = x64 - x64.max(1, keepdims=True)
    want = (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(dtype)
    np.testing.assert_array_equal(out, want)
    x[1] = [big, -big, 0, 0]
    K.log_softmax(bits(x), bits(out))
    assert out[1, 1] == -np.inf  # -2 * max rounds past the largest finite value


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_stays_a_nan(dtype):
    x = np.ones((3, 200), dtype=dtype)
    x[1, 5] = np.nan
    x[2, 7] = -np.nan
    out = np.empty_like(x)
    K.softmax(bits(x), bits(out))
    assert np.isnan(out[1:].astype(np.float32)).all()
    assert np.isfinite(out[0].astype(np.float32)).all()
    lse = np.empty(3, dtype=dtype)
    K.logsumexp(bits(x), bits(lse))
    assert np.isnan(lse[1:].astype(np.float32)).all()
    np.testing.assert_allclose(lse[0].astype(np.float64), 1 + np.log(200),
                               rtol=float(np.finfo(dtype).eps))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", [{}, {"smoothing": 0.1, "z_loss": 1e-3},
                                     {"softcap": 5.0}, {"weight": True}])
def test_cross_entropy_grad_in_place_is_the_grad_out_of_place(dtype, shape, options):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    target = rng.integers(0, shape[1], shape[0])
    target[0] = -100  # an ignored row: zero loss and gradient
    weight = (rng.random(shape[1]).astype(np.float32) + 0.5) if options.get("weight") else None
    weight_sum = float(weight.sum()) if weight is not None else float(shape[1])
    results = []
    for source, grad in ((x, np.empty_like(x)), (x.copy(),) * 2):  # out of place, in place
        row_loss, row_z = np.empty(shape[0]), np.empty(shape[0])
        K.cross_entropy_index(bits(source), target, weight, weight_sum, -100,
                              options.get("smoothing", 0.0), options.get("z_loss", 0.0),
                              options.get("softcap"), 0.5, 0.5, np.empty(0), row_loss, row_z,
                              bits(grad))
        results.append((row_loss, row_z, grad))
    (loss_a, z_a, grad_a), (loss_b, z_b, grad_b) = results
    np.testing.assert_array_equal(loss_a, loss_b)
    np.testing.assert_array_equal(z_a, z_b)
    np.testing.assert_array_equal(grad_a, grad_b)
    assert loss_a[0] == 0 and not grad_a[0].astype(np.float32).any()
    # without z-loss and capping, a row's gradient sums to ~0 (the target element is not
    # a rounded value corrected afterwards)
    if not (options.get("z_loss") or options.get("softcap")):
        sums = np.abs(grad_a[1:].astype(np.float64).sum(1))
        assert sums.max() < shape[1] * 0.5 * float(np.finfo(dtype).eps)
