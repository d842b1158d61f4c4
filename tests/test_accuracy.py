"""Accuracy against the float64 reference: within 2x of PyTorch's (bench/accuracy.py)."""
import importlib.util

import pytest

from bench import accuracy


@pytest.mark.parametrize("n_classes", [10, 1000, 4096])
def test_float32_error_within_twice_torch(n_classes):
    table = accuracy.measure(classes=[n_classes], elements=2 ** 16)
    for key, errors in table.items():
        ours = {name: err for name, err in errors.items() if name.startswith("fastsoftmax")}
        assert ours, "no compiled backend measured"
        for name, err in ours.items():
            assert err < 5e-7, f"{name} {key}: normwise error {err:.2e}"
            if importlib.util.find_spec("torch"):
                assert err <= max(2 * errors["torch"], 1e-7), \
                    f"{name} {key}: {err:.2e} vs torch {errors['torch']:.2e}"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("n_classes", [10, 1000, 4096])
def test_16_bit_error_within_twice_torch(n_classes, dtype):
    """Computed in float32 and rounded once: within twice the error of rounding the exact
    result (half a unit in the last place), and of torch's on the same 16-bit inputs."""
    table = accuracy.measure(classes=[n_classes], elements=2 ** 16, dtype=dtype)
    for key, errors in table.items():
        ours = {name: err for name, err in errors.items() if name.startswith("fastsoftmax")}
        assert ours, "no compiled backend measured"
        for name, err in ours.items():
            assert err <= 2 * errors[accuracy.ROUNDING] + 1e-6, \
                f"{name} {key}: {err:.2e} vs rounding alone {errors[accuracy.ROUNDING]:.2e}"
            if importlib.util.find_spec("torch"):
                assert err <= 2 * errors["torch"] + 1e-6, \
                    f"{name} {key}: {err:.2e} vs torch {errors['torch']:.2e}"
