"""Threads, the GIL, JIT caching in read-only installs, and float64 reductions."""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import COMPILED_BACKENDS

PACKAGE_DIR = os.path.dirname(fs.__file__)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_eight_python_threads_match_serial(backend):
    rng = np.random.default_rng(0)
    inputs = [(rng.standard_normal((64, 3000)).astype(np.float32),
               rng.integers(0, 3000, 64)) for _ in range(8)]
    serial = [fs.cross_entropy_with_grad(x, t, label_smoothing=0.1, backend=backend)
              for x, t in inputs]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            concurrent = list(pool.map(
                lambda a: fs.cross_entropy_with_grad(a[0], a[1], label_smoothing=0.1,
                                                     backend=backend), inputs))
            for (loss, grad), (want_loss, want_grad) in zip(concurrent, serial):
                assert loss == want_loss
                np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_thread_count_changes_between_calls(backend):
    x = np.random.default_rng(1).standard_normal((256, 500))
    n = fs.get_num_threads()
    try:
        results = []
        for threads in sorted({1, n}):
            fs.set_num_threads(threads)
            results.append(fs.softmax(x, backend=backend))
            assert fs.get_num_threads() == threads
        for result in results[1:]:
            np.testing.assert_array_equal(result, results[0])
    finally:
        fs.set_num_threads(n)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_kernels_release_the_gil(backend):
    """While a worker thread is inside a long kernel, the main thread keeps running
    Python code; a kernel holding the GIL would stop it for the whole call."""
    x = np.random.default_rng(2).standard_normal((2048, 8192)).astype(np.float32)
    fs.softmax(x[:2], backend=backend)  # compile outside the measured call
    ticks = [0]
    during = []

    def worker():
        before = ticks[0]
        for _ in range(3):
            fs.softmax(x, backend=backend)
        during.append(ticks[0] - before)

    thread = threading.Thread(target=worker)
    thread.start()
    while thread.is_alive():
        ticks[0] += 1
    thread.join()
    assert during[0] > 1000, f"main thread advanced only {during[0]} ticks during the kernel"


def _run_in_read_only_dir(root, code, env):
    """Run ``code`` with ``root`` read-only: by permissions for a normal user; for root
    (which ignores permissions) by a read-only bind mount in a private mount namespace."""
    if os.geteuid() != 0:
        for directory, _, _files in os.walk(root):
            os.chmod(directory, 0o555)
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                              capture_output=True, text=True, check=False)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: cannot make a read-only directory")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$1" -c "$2"'
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, root, sys.executable, code],
                            env=env, cwd=root, capture_output=True, text=True, check=False)
    if "mount:" in result.stderr or "unshare:" in result.stderr:
        pytest.skip(f"cannot make a read-only bind mount here: {result.stderr.strip()}")
    return result


def test_read_only_install_still_works():
    """A copy of the package in a read-only directory, with no writable home or cache
    directory: kernels must still compile and run (caching off, one warning)."""
    root = tempfile.mkdtemp(prefix="fastsoftmax-ro-")
    try:
        shutil.copytree(PACKAGE_DIR, os.path.join(root, "fastsoftmax"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
        env.update(HOME=root, PYTHONPATH=root, XDG_CACHE_HOME=os.path.join(root, "cache"))
        code = ("import warnings, numpy as np, fastsoftmax as fs\n"
                "assert fs.__file__.startswith(%r)\n"
                "with warnings.catch_warnings(record=True) as w:\n"
                "    warnings.simplefilter('always')\n"
                "    p = fs.softmax(np.zeros((2, 4)), backend='numba')\n"
                "print(float(p.sum()), [str(x.message) for x in w])\n" % root)
        result = _run_in_read_only_dir(root, code, env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.startswith("2.0"), result.stdout
        assert "NUMBA_CACHE_DIR" in result.stdout, "the fallback must say how to keep a cache"
    finally:
        for directory, _, _ in os.walk(root):
            os.chmod(directory, 0o755)
        shutil.rmtree(root)


def test_mean_over_millions_of_rows_accumulates_in_float64():
    """float32 logits, 4M rows: the mean loss must match the float64 reference closely
    (a float32 running sum would drift by ~1e-3 relative; pytorch#55657)."""
    rng = np.random.default_rng(3)
    n_rows = 4_000_000
    x = rng.standard_normal((n_rows, 4)).astype(np.float32)
    t = rng.integers(0, 4, n_rows)
    want = reference.cross_entropy(x.astype(np.float64), t)
    for backend in fs.available_backends():
        got = fs.cross_entropy(x, t, backend=backend)
        assert abs(float(got) - float(want)) <= 2e-7 * abs(float(want)), backend
