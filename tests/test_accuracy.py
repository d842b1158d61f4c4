"""Accuracy against the float64 reference, next to PyTorch's (bench/accuracy.py).

softmax, log_softmax and cross-entropy: within 2x of torch's error (float32 also below
5e-7), and in 16-bit within twice the error of rounding the exact result. The entropy and
the JSD, whose gradients subtract nearly equal float32 numbers: in 16-bit within 2x of
torch's error, in float32 within 5x of it (a few float32 ulps: torch's formulas round
differently) or 1e-6.
"""
import functools
import importlib.util

import numpy as np
import pytest

from bench import accuracy

SOFTMAX_AND_CE = ("softmax", "log_softmax", "loss", "grad")
DIVERGENCES = ("entropy", "entropy grad", "jsd", "jsd grad")
HAVE_TORCH = importlib.util.find_spec("torch") is not None


@functools.lru_cache(maxsize=None)
def _table(n_classes, dtype):
    return accuracy.measure(classes=[n_classes], elements=2 ** 16, dtype=dtype)


def _ours(errors):
    ours = {name: err for name, err in errors.items() if name.startswith("fastsoftmax")}
    assert ours, "no compiled backend measured"
    return ours


def _rows(n_classes, dtype, quantities):
    return [(key, errors) for key, errors in _table(n_classes, dtype).items()
            if key[2] in quantities]


@pytest.mark.parametrize("n_classes", [10, 1000, 4096])
def test_float32_error_within_twice_torch(n_classes):
    for key, errors in _rows(n_classes, "float32", SOFTMAX_AND_CE):
        for name, err in _ours(errors).items():
            assert err < 5e-7, f"{name} {key}: normwise error {err:.2e}"
            if HAVE_TORCH:
                assert err <= max(2 * errors["torch"], 1e-7), \
                    f"{name} {key}: {err:.2e} vs torch {errors['torch']:.2e}"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("n_classes", [10, 1000, 4096])
def test_16_bit_error_within_twice_torch(n_classes, dtype):
    """Computed in float32 and rounded once: within twice the error of rounding the exact
    result (half a unit in the last place), and of torch's on the same 16-bit inputs."""
    for key, errors in _rows(n_classes, dtype, SOFTMAX_AND_CE):
        for name, err in _ours(errors).items():
            assert err <= 2 * errors[accuracy.ROUNDING] + 1e-6, \
                f"{name} {key}: {err:.2e} vs rounding alone {errors[accuracy.ROUNDING]:.2e}"
            if HAVE_TORCH:
                assert err <= 2 * errors["torch"] + 1e-6, \
                    f"{name} {key}: {err:.2e} vs torch {errors['torch']:.2e}"


@pytest.mark.skipif(not HAVE_TORCH, reason="the bound is relative to torch's error")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("n_classes", [10, 1000, 4096])
def test_entropy_and_jsd_error_against_torch(n_classes, dtype):
    """Where torch gives NaN (its bfloat16 JSD at scale 1e4), ours is finite."""
    factor, floor = (5.0, 1e-6) if dtype == "float32" else (2.0, 1e-6)
    for key, errors in _rows(n_classes, dtype, DIVERGENCES):
        for name, err in _ours(errors).items():
            assert np.isfinite(err), f"{name} {key}: error {err}"
            if np.isfinite(errors["torch"]):
                assert err <= max(factor * errors["torch"], floor), \
                    f"{name} {key}: {err:.2e} vs torch {errors['torch']:.2e}"
