"""Fused linear + cross-entropy against the unfused torch version, torch's chunked
``F.linear_cross_entropy`` and the "gemm-floor" (the op's three GEMMs alone), one group per
shape: ``linear_cross_entropy|NxDxV|dtype``. ``fastsoftmax-50%-ignored`` is fastsoftmax on
the same shape with half the targets ignored.

Small shapes by default; the issue's shapes (4096 x 1024 x 32768, 16384 x 512 x 32768) with
``--bench-full``. float32 unless ``--bench-dtypes`` names others (float64, bfloat16,
float16: in 16-bit the NumPy API widens to float32, the torch ones run 16-bit GEMMs).
These are measurements, not tests: nothing here asserts a speed.
"""
import time

import pytest

from bench.implementations import default_threads
from bench.linear_implementations import implementations, problem

QUICK_SHAPES = [(256, 128, 4096), (1024, 256, 16384)]
FULL_SHAPES = [(4096, 1024, 32768), (16384, 512, 32768)]
IGNORED = "fastsoftmax-50%-ignored"


def pytest_generate_tests(metafunc):
    if "linear_case" not in metafunc.fixturenames:
        return
    shapes = FULL_SHAPES if metafunc.config.getoption("--bench-full") else QUICK_SHAPES
    dtypes = (metafunc.config.getoption("--bench-dtypes") or "float32").split(",")
    names = [*implementations(), IGNORED]
    cases = [(shape, dtype.strip(), name) for dtype in dtypes for shape in shapes
             for name in names]
    metafunc.parametrize("linear_case", cases,
                         ids=[f"{'x'.join(map(str, s))}|{d}|{n}" for s, d, n in cases])


def test_linear_cross_entropy(benchmark, linear_case, bench_seconds, request):
    shape, dtype, name = linear_case
    if name == IGNORED:
        factory, ignored = implementations()["fastsoftmax"], 0.5
    else:
        factory, ignored = implementations()[name], 0.0
    run = factory(*problem(*shape, dtype=dtype, ignored=ignored))
    start = time.perf_counter()
    run()  # warm-up: JIT, first-touch allocation
    once = time.perf_counter() - start
    benchmark.group = f"linear_cross_entropy|{'x'.join(map(str, shape))}|{dtype}"
    benchmark.name = name
    benchmark.extra_info.update(
        op="linear_cross_entropy", rows=shape[0], features=shape[1], classes=shape[2],
        dtype=dtype, implementation=name, ignored=ignored,
        threads=request.config.getoption("--bench-threads") or default_threads())
    rounds = max(3, min(20, int(bench_seconds / max(once, 1e-9))))
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)


@pytest.fixture
def bench_seconds(request):
    return request.config.getoption("--bench-seconds")
