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
    # Settle before timing: on this machine the first few calls that allocate a fresh
    # N x C result often ran up to 5x slower (C = 10 CE + grad, both fastsoftmax
    # backends: ~120 vs 24 ms a call for up to 5 calls, then steady; not with out=), so
    # a slow op got all of its ~5 rounds in that phase. Up to 5 more calls, ~1 s at most.
    once = _time_one_call(run)
    for _ in range(min(5, int(1.0 / max(once, 1e-9)))):
        once = _time_one_call(run)
    benchmark.group = cases.group_name(op, shape, dtype)
    benchmark.name = name
    benchmark.extra_info.update(
        op=op, rows=shape[0], classes=shape[1], dtype=dtype, implementation=name,
        elements=shape[0] * shape[1], first_call_seconds=compile_seconds,
        threads=request.config.getoption("--bench-threads") or default_threads())
    rounds = max(3, min(50, int(bench_seconds / max(once, 1e-9))))
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)


def _time_one_call(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start
