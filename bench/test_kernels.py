"""One benchmark per (op, shape, dtype, implementation); the group holds the comparison.

These are measurements, not tests: nothing here asserts a speed.
"""
import time

from bench import cases
from bench.implementations import default_threads


def test_kernel(benchmark, case, bench_seconds, request):
    op, shape, dtype, name, factory = case
    arrays = cases.inputs(op, shape, dtype)
    run = factory(arrays)
    start = time.perf_counter()
    run()  # warm-up: JIT / torch.compile / jax.jit compile, first-touch allocation
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    benchmark.group = cases.group_name(op, shape, dtype)
    benchmark.name = name
    benchmark.extra_info.update(
        op=op, rows=shape[0], classes=shape[1], dtype=dtype, implementation=name,
        elements=shape[0] * shape[1], first_call_seconds=compile_seconds,
        threads=request.config.getoption("--bench-threads") or default_threads())
    rounds = max(3, min(50, int(bench_seconds / max(once, 1e-9))))
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
