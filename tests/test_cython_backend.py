"""The optional Cython backend: build fallback, registry behaviour without it, and
running it next to Numba in one process."""
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastsoftmax as fs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(args, **env):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False,
                          env=dict(os.environ, **env))


def test_registry_without_the_extension_falls_back_to_numba():
    code = ("import sys\n"
            "for level in ('baseline', 'avx2', 'avx512', 'native'):\n"
            "    sys.modules[f'fastsoftmax._cython._kernels_{level}'] = None\n"
            "import fastsoftmax as fs, numpy as np\n"
            "print(fs.available_backends(), fs.get_backend())\n"
            "fs.softmax(np.zeros((2, 3)))\n"
            "try:\n"
            "    fs.softmax(np.zeros((2, 3)), backend='cython')\n"
            "except RuntimeError as exc:\n"
            "    print('error:', exc)\n")
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    first, error = result.stdout.strip().splitlines()
    assert first == "['numba', 'numpy'] numba"
    assert "not available" in error and "reinstall" in error


@pytest.mark.parametrize("require", ["0", "1"])
def test_build_without_compiler(tmp_path, require):
    """A missing compiler warns and succeeds; with FASTSOFTMAX_REQUIRE_CYTHON=1 it fails."""
    result = _run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path),
                   "--build-temp", str(tmp_path / "tmp")],
                  CC=str(tmp_path / "no-such-compiler"), FASTSOFTMAX_REQUIRE_CYTHON=require)
    output = result.stdout + result.stderr
    if require == "1":
        assert result.returncode != 0 and "required" in output
    else:
        assert result.returncode == 0, output
        assert "WARNING: fastsoftmax is installed without its Cython backend" in output
        assert not list(tmp_path.rglob("*.so"))


def test_build_disabled_by_environment(tmp_path):
    result = _run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path)],
                  FASTSOFTMAX_NO_CYTHON="1", FASTSOFTMAX_REQUIRE_CYTHON="0")
    assert result.returncode == 0
    assert "FASTSOFTMAX_NO_CYTHON" in result.stderr


@pytest.mark.skipif("cython" not in fs.available_backends(),
                    reason="the Cython extension is not built in this install")
def test_numba_and_openmp_backends_share_a_process():
    """Both thread pools in one process, called alternately from several Python threads:
    every call finishes (no deadlock) with the serial result."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 2000)).astype(np.float32)
    t = rng.integers(0, 2000, 128)
    want = fs.cross_entropy_with_grad(x, t, backend="numpy")
    failures = []

    def work(seed):
        for i in range(20):
            backend = ("numba", "cython")[(i + seed) % 2]
            loss, grad = fs.cross_entropy_with_grad(x, t, backend=backend)
            if not (np.isclose(loss, want[0], rtol=1e-5)
                    and np.allclose(grad, want[1], rtol=1e-4, atol=1e-9)):
                failures.append(backend)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a call did not finish"
    assert not failures
