"""Benchmark options and the generated parametrisation (op x shape x dtype x implementation)."""
import pytest

from bench import cases
from bench.implementations import configure_threads, default_threads, implementations


def pytest_addoption(parser):
    group = parser.getgroup("fastsoftmax benchmarks")
    group.addoption("--bench-full", action="store_true",
                    help="all ops, class counts 10..262144 plus 8x131072 and 1x1048576, "
                         "float32 and float64 (default: the quick set)")
    group.addoption("--bench-ops", default=None,
                    help="comma-separated ops to run (default: those of the chosen set)")
    group.addoption("--bench-dtypes", default=None,
                    help="comma-separated dtypes to run, of float32, float64, bfloat16, float16 "
                         "(default: those of the chosen set)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="threads for fastsoftmax and torch (default: all cores)")
    group.addoption("--bench-elements", type=int, default=cases.ELEMENTS,
                    help="logits per benchmark (default 2**24); smaller for smoke runs")
    group.addoption("--bench-seconds", type=float, default=0.6,
                    help="approximate measuring time per benchmark (default 0.6 s)")


def pytest_configure(config):
    configure_threads(config.getoption("--bench-threads") or default_threads())
    # Inputs are made read-only to catch an implementation that writes to them; torch
    # warns about wrapping such arrays, which is harmless here (it only reads them).
    config.addinivalue_line("filterwarnings", "ignore:The given NumPy array is not writable")


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    full = metafunc.config.getoption("--bench-full")
    ops = _choice(metafunc.config.getoption("--bench-ops"), cases.ops(full), cases.OPS)
    dtypes = _choice(metafunc.config.getoption("--bench-dtypes"), cases.dtypes(full),
                     cases.DTYPES)
    impls = implementations()
    params, ids = [], []
    # Implementation varies fastest, so one group's inputs are built once.
    for dtype in dtypes:
        for shape in cases.shapes(full, metafunc.config.getoption("--bench-elements")):
            for op in ops:
                for name, factories in impls.items():
                    if op in factories:
                        params.append((op, shape, dtype, name, factories[op]))
                        ids.append(f"{cases.group_name(op, shape, dtype)}|{name}")
    metafunc.parametrize("case", params, ids=ids)


def _choice(option, default, known):
    if option is None:
        return default
    chosen = [item.strip() for item in option.split(",") if item.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise pytest.UsageError(f"unknown {unknown}; choose from {known}")
    return chosen


@pytest.fixture
def bench_seconds(request):
    return request.config.getoption("--bench-seconds")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what was compared, so saved results from different CPUs stay comparable."""
    import importlib.metadata as metadata
    versions = {}
    for package in ("fastsoftmax", "numpy", "numba", "torch", "jax", "jaxlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    machine_info["fastsoftmax_versions"] = versions
    machine_info["fastsoftmax_threads"] = (config.getoption("--bench-threads")
                                           or default_threads())
    machine_info["fastsoftmax_isa"] = isa_info()


def isa_info():
    """The dispatched ISA levels and the key CPU flags: two CPUs of one brand (an AVX-512
    EPYC and an AVX2 EPYC) differ here, not in their brand string."""
    import contextlib
    import io

    import fastsoftmax as fs
    with contextlib.redirect_stdout(io.StringIO()):  # show_config prints; keep the log clean
        config = fs.show_config()
    isa, cython = config["isa"], config["cython"]
    return {"cpu": isa["cpu"], "numba": isa["numba"], "forced": isa["forced"],
            "cython": cython["isa"] if cython else None,
            "flags": {flag: flag in isa["cpu_features"] for flag in ("avx2", "fma", "avx512f")}}
