"""Backend registry, selection, thread control and import-time behaviour."""
import importlib
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import _backends, _ops


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter; return its stdout."""
    full_env = {k: v for k, v in os.environ.items() if k != _backends.ENV_VAR}
    full_env.update(env)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=full_env, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_registry_lists_numpy_and_numba():
    names = fs.available_backends()
    assert names[-1] == "numpy"
    assert "numba" in names
    assert set(names) <= set(_backends.BACKENDS)


def test_auto_picks_first_available():
    assert fs.get_backend() == fs.available_backends()[0]


def test_use_backend_is_scoped_and_restored():
    before = fs.get_backend()
    with fs.use_backend("numpy"):
        assert fs.get_backend() == "numpy"
    assert fs.get_backend() == before


def test_set_backend_and_reset():
    try:
        fs.set_backend("numpy")
        assert fs.get_backend() == "numpy"
        with fs.use_backend("numba"):
            assert fs.get_backend() == "numba"
    finally:
        fs.set_backend("auto")
    assert fs.get_backend() == fs.available_backends()[0]


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="'numba'"):
        fs.set_backend("cuda")
    with pytest.raises(ValueError, match="cuda"):
        fs.softmax(np.ones((1, 2)), backend="cuda")


def test_environment_variable_selects_backend():
    out = run_python("import fastsoftmax; print(fastsoftmax.get_backend())",
                     FASTSOFTMAX_BACKEND="numpy")
    assert out == "numpy"
    bad = subprocess.run([sys.executable, "-c", "import fastsoftmax as f; f.get_backend()"],
                         capture_output=True, text=True,
                         env=dict(os.environ, FASTSOFTMAX_BACKEND="nope"))
    assert bad.returncode != 0 and "FASTSOFTMAX_BACKEND" in bad.stderr


def test_import_compiles_and_imports_nothing_heavy():
    out = run_python("import sys, fastsoftmax; print('numba' in sys.modules)")
    assert out == "False"


def test_threads_knob():
    n = fs.get_num_threads()
    assert n >= 1
    try:
        fs.set_num_threads(1)
        assert fs.get_num_threads() == 1
        x = np.random.default_rng(0).standard_normal((64, 100))
        one = fs.softmax(x)
        fs.set_num_threads(n)
        np.testing.assert_array_equal(fs.softmax(x), one)
    finally:
        fs.set_num_threads(n)
    with pytest.raises(ValueError, match="threads"):
        fs.set_num_threads(0)
    with pytest.raises(ValueError, match="threads"):
        fs.set_num_threads(10_000)
    with pytest.raises(TypeError):
        fs.set_num_threads(1.5)


def test_threads_setting_reaches_numba():
    import numba
    n = fs.get_num_threads()
    try:
        fs.set_num_threads(1)
        fs.softmax(np.ones((4, 4)), backend="numba")
        assert numba.get_num_threads() == 1
    finally:
        fs.set_num_threads(n)


def test_public_functions_have_numpydoc_docstrings():
    functions = [name for name in fs.__all__ if callable(getattr(fs, name))]
    assert set(_ops.OPS) <= set(functions)
    for name in functions:
        doc = getattr(fs, name).__doc__
        assert doc and ("Parameters" in doc or "Returns" in doc), name


@pytest.mark.parametrize("op", list(_ops.OPS.values()), ids=lambda op: op.name)
def test_public_signature_shows_backend_not_kernels(op):
    parameters = inspect.signature(getattr(fs, op.name)).parameters
    assert "backend" in parameters and "kernels" not in parameters
    assert list(parameters)[:len(op.inputs)] == list(op.inputs)


@pytest.mark.parametrize("backend", [b for b in fs.available_backends() if b != "numpy"])
def test_backend_contract(backend):
    """Every compiled backend exports every kernel of the op table, with its arguments."""
    module = importlib.import_module(_backends.BACKENDS[backend])
    missing = [name for name in _ops.KERNELS if not hasattr(module, name)]
    assert not missing, f"backend {backend!r} has no kernel for {missing}"
    for name, arguments in _ops.KERNELS.items():
        kernel = getattr(module, name)
        kernel = getattr(kernel, "py_func", kernel)  # a Numba dispatcher: its Python function
        assert tuple(inspect.signature(kernel).parameters) == arguments, (backend, name)
