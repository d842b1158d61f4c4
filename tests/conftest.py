"""Shared fixtures: every test that takes ``backend`` runs on every available backend."""
import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import _ops

BACKENDS = fastsoftmax.available_backends()
COMPILED_BACKENDS = [name for name in BACKENDS if name != "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=COMPILED_BACKENDS)
def compiled_backend(request):
    return request.param


ROW_OPS = _ops.ROW_OPS
FORWARD_OPS = [op for op in ROW_OPS if op.vjp_of is None]  # functions of logits alone


def op_id(op):
    return op.name


def loss_options(options, weight, n_rows):
    """A test's loss options with their placeholders filled in: ``weight=True`` becomes
    the given class weights, ``grad_output="rows"`` one value per row in [0.5, 2]."""
    kwargs = dict(options)
    if kwargs.pop("weight", False):
        kwargs["weight"] = weight
    if kwargs.get("grad_output") == "rows":
        kwargs["grad_output"] = np.linspace(0.5, 2.0, n_rows)
    return kwargs


def op_inputs(op, x, axis=-1, seed=1):
    """The positional arrays of ``op`` built from logits ``x`` (the table's recipe)."""
    return op.from_logits(x, axis, np.random.default_rng(seed))


# Tolerances of a float32/float64 kernel against the reference (float64 math,
# rounded to the input dtype), relative to the largest magnitude in the result.
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def assert_close(actual, expected, context=""):
    """Elementwise closeness with NaN/inf in the same places; names the input on failure."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    rtol = RTOL[expected.dtype]
    finite = np.isfinite(expected)
    scale = np.max(np.abs(expected[finite]), initial=1.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True,
                               err_msg=context)


def with_layout(a, layout):
    """A copy of ``a`` with the same values in memory layout ``layout``."""
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":  # every other element of a twice-as-long last axis
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "reversed":  # negative strides on every axis
        flipped = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
        return flipped[(slice(None, None, -1),) * a.ndim]
    raise ValueError(layout)


LAYOUTS = ["C", "F", "strided", "reversed"]


def describe(**kwargs):
    """Text naming a test input, for assertion messages."""
    parts = []
    for key, value in kwargs.items():
        if isinstance(value, np.ndarray):
            value = f"{value.dtype}{value.shape} C={value.flags.c_contiguous}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def raises_like(func_a, func_b):
    """Run both; return (result_a, result_b), or assert both raised the same exception type."""
    results, errors = [], []
    for func in (func_a, func_b):
        try:
            results.append(func())
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - the type is compared below
            results.append(None)
            errors.append(exc)
    kinds = [type(e) if e is not None else None for e in errors]
    assert kinds[0] == kinds[1], f"one raised and the other did not, or differently: {errors}"
    return results, errors


def spacing_16(values, dtype):
    """The distance from each value to the next ``dtype`` (float16 or bfloat16) number away
    from 0 (the smallest spacing of the type below its smallest normal number)."""
    info = np.finfo(dtype)
    v = np.abs(np.asarray(values, np.float64))
    exponent = np.floor(np.log2(np.maximum(v, float(info.smallest_normal))))
    return 2.0 ** (exponent - info.nmant)


def assert_within_one_ulp_16(actual, expected, context, allowance=0.0):
    """16-bit ``actual`` within one unit in the last place of 16-bit ``expected``, plus an
    absolute ``allowance`` (a number or an array of expected's shape) for float32 rounding
    where a formula subtracts; NaN and infinities in the same places.

    A kernel computes a 16-bit output in float32 and rounds once; the reference computes
    in float64 and rounds once, so the two may land on either side of a rounding boundary.
    """
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{context}: NaN places")
    infinite = np.isinf(e)
    np.testing.assert_array_equal(a[infinite], e[infinite], err_msg=f"{context}: infinities")
    finite = np.isfinite(e)
    with np.errstate(invalid="ignore"):  # inf - inf outside ``finite``
        excess = (np.abs(a - e) - spacing_16(e, expected.dtype)
                  - np.broadcast_to(allowance, e.shape))[finite]
    assert excess.max(initial=0.0) <= 0, (
        f"{context}: {np.count_nonzero(excess > 0)} elements off by more than one ulp "
        f"(worst by {excess.max():.3g} beyond)")


def assert_float16_conversions_match_numpy(to_float32, to_float16):
    """A float16 conversion pair, each taking and returning a 1-D array (float16 bits as
    int16 -> float32; float32 -> int16 bits), against NumPy: every float16 (and 7 more
    elements, so that a vector loop reaches its tail) decodes exactly and encodes back to
    itself; float32 bit patterns (random, and the overflow/subnormal edges) encode as
    NumPy's round to nearest even; NaN stays NaN."""
    every = np.arange(65536 + 7, dtype=np.uint32).astype(np.uint16).view(np.int16)
    wide = to_float32(every)
    nan = np.isnan(every.view(np.float16))
    np.testing.assert_array_equal(wide[~nan], every.view(np.float16)[~nan].astype(np.float32))
    assert np.isnan(wide[nan]).all()
    back = to_float16(wide)
    assert np.isnan(back.view(np.float16)[nan]).all()
    np.testing.assert_array_equal(back[~nan], every[~nan])
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.integers(0, 2 ** 32, 200_003, dtype=np.uint64).astype(np.uint32)
                        .view(np.float32),
                        np.float32([65504, 65519.99, 65520, 1e-8, 2.98e-8, 5.96e-8, -0.0])])
    encoded = to_float16(f)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = f.astype(np.float16)
    nan = np.isnan(expected)
    assert np.isnan(encoded.view(np.float16)[nan]).all()
    np.testing.assert_array_equal(encoded[~nan], expected.view(np.int16)[~nan])
