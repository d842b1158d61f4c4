"""Soak test: mixed ops, shapes, dtypes, backends and thread counts for a long time, with
results checked against the reference on a sample and resident memory checked flat.

Not part of the default run (it takes minutes):

    FASTSOFTMAX_SOAK_SECONDS=600 python -m pytest -q tests/test_soak.py
"""
import os
import sys
import time

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import _ops, reference
from conftest import BACKENDS, assert_close

SECONDS = float(os.environ.get("FASTSOFTMAX_SOAK_SECONDS", "0"))
SHAPES = [(4096, 10), (1000, 100), (300, 1000), (8, 70_000), (1, 200_000), (0, 5)]
WITH_GRAD = {"cross_entropy_with_grad": lambda x, rng: (x, rng.integers(0, x.shape[-1],
                                                                        x.shape[:-1])),
             "entropy_with_grad": lambda x, rng: (x,)}


def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.skipif(SECONDS <= 0, reason="a soak run: set FASTSOFTMAX_SOAK_SECONDS=600 to run it")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_soak():
    rng = np.random.default_rng(0)
    calls = [(op.name, op.from_logits) for op in _ops.ROW_OPS] + list(WITH_GRAD.items())
    compiled = [b for b in BACKENDS if b != "numpy"]
    threads = fs.get_num_threads()

    def one_call(check):
        name, make = calls[rng.integers(len(calls))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        dtype = (np.float32, np.float64)[rng.integers(2)]
        backend = compiled[rng.integers(len(compiled))]
        fs.set_num_threads(int(rng.integers(1, threads + 1)))
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        args = make(x, -1, rng) if name not in WITH_GRAD else make(x, rng)
        got = getattr(fs, name)(*args, backend=backend)
        if check:
            want = getattr(reference, name)(*args)
            for a, b in zip(np.atleast_1d(got) if not isinstance(got, tuple) else got,
                            np.atleast_1d(want) if not isinstance(want, tuple) else want):
                assert_close(a, b, f"{name} {backend} {dtype.__name__}{shape}")

    try:
        for i in range(200):  # compile everything and let the allocator settle
            one_call(check=i % 10 == 0)
        start_mib, start, count = resident_mib(), time.monotonic(), 0
        while time.monotonic() - start < SECONDS:
            one_call(check=count % 10 == 0)
            count += 1
        growth = resident_mib() - start_mib
    finally:
        fs.set_num_threads(threads)
    print(f"soak: {count} calls in {SECONDS:.0f} s, resident memory {growth:+.1f} MiB")
    assert growth < 64, f"resident memory grew by {growth:.1f} MiB over {count} calls"
