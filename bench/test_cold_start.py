"""Cold start: ``import fastsoftmax`` and the first call, in a fresh process,
with an empty Numba cache (compiles) and with a warm one (loads from disk)."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

import fastsoftmax

PROBE = """
import time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import fastsoftmax as fs
t2 = time.perf_counter()
x = np.random.default_rng(0).standard_normal((64, 1000)).astype(np.float32)
t = np.zeros(64, dtype=np.int64)
t3 = time.perf_counter()
fs.cross_entropy_with_grad(x, t, backend={backend!r})
t4 = time.perf_counter()
print(__import__("json").dumps({{"import_seconds": t2 - t1, "first_call_seconds": t4 - t3}}))
"""


def _run(backend, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", PROBE.format(backend=backend)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", [b for b in fastsoftmax.available_backends()
                                     if b != "numpy"])
@pytest.mark.parametrize("cache", ["empty", "warm"])
def test_cold_start(benchmark, cache, backend):
    """Whole-process time of import + first cross_entropy_with_grad (float32, 64 x 1000).
    The Numba cache state matters only to the Numba backend (Cython is compiled ahead)."""
    with tempfile.TemporaryDirectory() as cache_dir:
        if cache == "warm":
            _run(backend, cache_dir)  # fills the cache
        samples = []

        def setup():
            if cache == "empty":  # a fresh, empty cache directory for every round
                return (tempfile.mkdtemp(dir=cache_dir),), {}
            return (cache_dir,), {}

        def run(directory):
            samples.append(_run(backend, directory))

        benchmark.group = f"cold-start|{backend}"
        benchmark.name = f"{cache}-cache"
        benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
        benchmark.extra_info.update(
            op="cold-start", backend=backend, implementation=f"fastsoftmax-{backend}", cache=cache,
            import_seconds=min(s["import_seconds"] for s in samples),
            first_call_seconds=min(s["first_call_seconds"] for s in samples))
