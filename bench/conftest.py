"""Benchmark options and the generated parametrisation (op x shape x dtype x implementation)."""
import pytest

from bench import cases
from bench.implementations import configure_threads, default_threads, implementations


def pytest_addoption(parser):
    group = parser.getgroup("fastsoftmax benchmarks")
    group.addoption("--bench-full", action="store_true",
                    help="all ops, class counts 10..262144 plus 8x131072 and 1x1048576, "
                         "float32 and float64 (default: the quick set)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="threads for fastsoftmax and torch (default: all cores)")
    group.addoption("--bench-seconds", type=float, default=0.6,
                    help="approximate measuring time per benchmark (default 0.6 s)")


def pytest_configure(config):
    configure_threads(config.getoption("--bench-threads") or default_threads())


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    full = metafunc.config.getoption("--bench-full")
    impls = implementations()
    params, ids = [], []
    # Implementation varies fastest, so one group's inputs are built once.
    for dtype in cases.dtypes(full):
        for shape in cases.shapes(full):
            for op in cases.ops(full):
                for name, ops in impls.items():
                    if op in ops:
                        params.append((op, shape, dtype, name, ops[op]))
                        ids.append(f"{cases.group_name(op, shape, dtype)}|{name}")
    metafunc.parametrize("case", params, ids=ids)


@pytest.fixture
def bench_seconds(request):
    return request.config.getoption("--bench-seconds")
