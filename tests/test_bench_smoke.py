"""The benchmark suite and its report run end to end (tiny shapes, timing disabled).

This keeps ``pytest bench`` from rotting; it measures nothing.
"""
import json
import os
import subprocess
import sys

import pytest

from bench.ab import kernel_calls

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed")


def _run_pytest(*args):
    """``python -m pytest *args`` in a subprocess, as a user would run it: without the
    variables of the pytest-xdist worker this test may run in (pytest-benchmark reads
    PYTEST_XDIST_WORKER and turns timing off, which --benchmark-only refuses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run([sys.executable, "-m", "pytest", *args], env=env,
                          capture_output=True, text=True, check=False)


def test_whole_bench_directory_collects():
    """README's main command runs ``pytest bench``, which (with --doctest-modules)
    imports every module of bench/: a script with top-level code broke it once."""
    run = _run_pytest("bench", "--collect-only", "-q")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_bench_suite_and_report(tmp_path):
    results = tmp_path / "results.json"
    # every op and implementation of the full set, in one dtype: bfloat16, whose inputs
    # take the most plumbing (the float32 and float64 cases made this the slowest test of
    # CI, 242 s with a cold cache)
    run = _run_pytest("bench/test_kernels.py", "-q", "--benchmark-only", "--bench-full",
                      "--bench-dtypes=bfloat16", "--bench-elements=4096",
                      "--bench-seconds=0.001", "-k", "not torch.compile and not jax",
                      f"--benchmark-json={results}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(results.read_text())
    groups = {b["group"] for b in data["benchmarks"]}
    assert "cross_entropy_with_grad|4x1000|bfloat16" in groups
    names = {b["name"] for b in data["benchmarks"]}
    assert {"fastsoftmax-numba", "fastsoftmax-numba-out", "numpy-reference",
            "memory-floor"} <= names

    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- bench-table:start -->\nold\n<!-- bench-table:end -->\nafter\n")
    report = subprocess.run([sys.executable, "-m", "bench.report", str(results), "--readme",
                             str(readme)], capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr
    assert "cross_entropy_with_grad, bfloat16" in report.stdout
    text = readme.read_text()
    assert "old" not in text and "| 4 x 1000 |" in text and text.endswith("after\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bench.memory reads /proc")
def test_memory_report_counts_the_gradient_buffer():
    # 48 MB of logits: above glibc's largest mmap threshold (32 MB), so every call maps
    # fresh pages and the gradient shows in the peak RSS.
    run = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--shape", "1024x12288",
         "--only", "fastsoftmax-numba,fastsoftmax-numba-inplace"],
        capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    ratios = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].startswith("fastsoftmax-"):
            ratios[cells[0]] = float(cells[2])
    # out of place: exactly one N x C buffer (the gradient); inplace: none
    assert 0.9 <= ratios["fastsoftmax-numba"] <= 1.2, run.stdout
    assert ratios["fastsoftmax-numba-inplace"] <= 0.1, run.stdout


def test_side_by_side_comparison_runs():
    """bench.ab against this same checkout: every op is timed for both builds."""
    pytest.importorskip("fastsoftmax._cython._kernels", reason="the Cython extension is not built")
    run = subprocess.run([sys.executable, "-m", "bench.ab", ".", "64x10", "--repeats", "1"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    ops = kernel_calls(2, 10, "float32")
    lines = [line for line in run.stdout.splitlines() if line.startswith("64x10 float32")]
    assert len(lines) == len(ops) and all("this/other" in line for line in lines), run.stdout
    assert {line.split("float32 ")[1].split("  this ")[0].strip() for line in lines} == set(ops)


def test_dtype_comparison_runs():
    """bench.dtypes: every op timed in float32 and both 16-bit dtypes, with the ratios."""
    from bench import dtypes
    run = subprocess.run([sys.executable, "-m", "bench.dtypes", "64x10", "--repeats", "1",
                          "--backend", "numba"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    names = dtypes._ops({}, {}, {}, None)
    assert len(lines) == len(names), run.stdout
    for line, name in zip(lines, names):
        assert line.startswith(f"64x10 {name} "), run.stdout
        assert "bfloat16" in line and "float16" in line and line.count("x)") == 2, run.stdout
