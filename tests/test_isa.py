"""Runtime ISA dispatch of the Cython backend (fastsoftmax/_isa.py): the level chosen
from the CPU's features, FASTSOFTMAX_ISA, the "auto" order by level, show_config(), and
the kernel tests at every level this CPU supports."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import _isa

ROOT = pathlib.Path(__file__).resolve().parent.parent
AVX2_CPU = set(_isa.REQUIRED_FEATURES["avx2"]) | {"sse2", "avx512bw"}  # e.g. Zen 3
AVX512_CPU = set(_isa.REQUIRED_FEATURES["avx512"])
ALL_BUILT = ["baseline", "avx2", "avx512"]
# the Cython kernel tests that run once per forced level (about 25 s each)
KERNEL_TESTS = ["tests/test_short_rows.py", "tests/test_row_ops.py", "tests/test_cross_entropy.py",
                "tests/test_long_rows.py", "tests/test_entropy.py", "tests/test_bce.py",
                "tests/test_kl_div.py", "tests/test_jsd.py", "tests/test_cython_low_precision.py",
                "tests/test_low_precision_entropy_jsd.py"]


def _cython_package():
    if "cython" not in fs.available_backends():
        pytest.skip("the Cython extension is not built in this install")
    import fastsoftmax._cython
    return fastsoftmax._cython


def test_levels_need_ever_more_features():
    for lower, higher in zip(_isa.LEVELS, _isa.LEVELS[1:]):
        assert set(_isa.REQUIRED_FEATURES[lower]) < set(_isa.REQUIRED_FEATURES[higher])


@pytest.mark.parametrize("features, level", [(set(), "baseline"), ({"sse2", "avx2"}, "baseline"),
                                             (AVX2_CPU, "avx2"), (AVX512_CPU, "avx512")])
def test_cpu_level_and_best_built_level(features, level):
    assert _isa.cpu_level(features) == level
    assert _isa.choose(None, ALL_BUILT, features) == level
    assert _isa.choose("", ALL_BUILT, features) == level  # FASTSOFTMAX_ISA= (empty): unset


def test_best_level_among_those_built():
    assert _isa.choose(None, ["baseline", "avx2"], AVX512_CPU) == "avx2"
    assert _isa.choose(None, ["avx512", "baseline"], AVX2_CPU) == "baseline"
    assert _isa.choose(None, ["native"], AVX2_CPU) == "native"
    with pytest.raises(ImportError, match="no level .* built"):
        _isa.choose(None, ["avx512"], AVX2_CPU)


def test_forced_level_the_cpu_lacks_names_the_missing_features():
    with pytest.raises(_isa.IsaError) as error:
        _isa.choose("avx512", ALL_BUILT, AVX2_CPU)
    message = str(error.value)
    assert "FASTSOFTMAX_ISA=avx512" in message and "'avx2'" in message  # what the CPU has
    missing = ["avx512cd", "avx512dq", "avx512f", "avx512vl"]  # AVX2_CPU has avx512bw
    assert ", ".join(missing) in message
    with pytest.raises(_isa.IsaError, match="lacks avx, avx2, bmi"):
        _isa.choose("avx2", ALL_BUILT, {"sse2"})


def test_forced_level_that_is_not_a_level_or_not_built():
    with pytest.raises(_isa.IsaError, match="'avx3' is not a level"):
        _isa.choose("avx3", ALL_BUILT, AVX512_CPU)
    with pytest.raises(_isa.IsaError, match="no 'avx2' module .*'native'"):
        _isa.choose("avx2", ["native"], AVX512_CPU)
    assert _isa.choose("baseline", ALL_BUILT, AVX512_CPU) == "baseline"


def test_native_ranks_as_the_cpus_level():
    assert _isa.rank("native", AVX2_CPU) == _isa.rank("avx2", AVX2_CPU) == 1
    assert _isa.rank("native", AVX512_CPU) == 2


def test_numba_level_follows_numba_cpu_name(monkeypatch):
    from numba.core import config
    monkeypatch.setattr(config, "CPU_NAME", None)
    assert _isa.numba_level(AVX2_CPU) == "avx2"
    monkeypatch.setattr(config, "CPU_NAME", "generic")
    assert _isa.numba_level(AVX2_CPU) == "baseline"


@pytest.mark.skipif(not pathlib.Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_cpu_features_agree_with_the_kernel():
    flags = set()
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not flags:
        pytest.skip("/proc/cpuinfo has no x86 flags line")
    features = _isa.cpu_features()
    for name in ("avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512vl"):
        assert (name in flags) == (name in features), name


def test_show_config_prints_and_returns_the_configuration(capsys):
    config = fs.show_config()
    printed = capsys.readouterr().out
    for key in config:
        assert f"{key}:" in printed
    assert config["backends"] == fs.available_backends()
    assert config["auto"] == fs.available_backends()[0]
    assert config["threads"] == fs.get_num_threads()
    assert config["versions"]["numpy"] == np.__version__
    features = _isa.cpu_features()
    assert config["isa"]["cpu"] == _isa.cpu_level(features)
    assert set(config["isa"]["cpu_features"]) <= features
    assert not set(config["isa"]["missing"]) & features
    if "cython" not in config["backends"]:
        assert config["cython"] is None
        return
    package = _cython_package()
    assert config["cython"]["isa"] == package.ISA and package.ISA in config["cython"]["built"]
    assert config["cython"]["vector_bytes"] == {"baseline": 16, "avx2": 32}.get(package.ISA, 64)
    march = {"avx2": "-march=x86-64-v3", "avx512": "-march=x86-64-v4",
             "native": "-march=native"}.get(package.ISA)
    flags = config["cython"]["flags"]
    assert (march in flags) if march else "-march" not in flags


def _run_at_level(level, code, *args):
    env = {k: v for k, v in os.environ.items() if k != "FASTSOFTMAX_BACKEND"}
    env["FASTSOFTMAX_ISA"] = level
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def _skip_unless_runnable(level):
    package = _cython_package()
    if level not in package.BUILT:
        pytest.skip(f"level {level!r} is not built here (built: {package.BUILT})")
    missing = _isa.missing_features(level, _isa.cpu_features())
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)} for level {level!r}")
    return package


def test_forced_level_in_a_process():
    """FASTSOFTMAX_ISA picks the module; an unknown level is an error when a call runs."""
    _cython_package()
    code = ("import fastsoftmax as fs, numpy as np\n"
            "fs.softmax(np.zeros((2, 3)))\n"
            "import fastsoftmax._cython as c, fastsoftmax._cython._kernels as k\n"
            "print(c.ISA, k.BUILD['isa'], k.__name__)\n")
    level = _isa.LEVELS[0]
    run = _run_at_level(level, code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [level, level, f"fastsoftmax._cython._kernels_{level}"]
    run = _run_at_level("avx3", code)
    assert run.returncode != 0 and "IsaError: FASTSOFTMAX_ISA='avx3' is not a level" in run.stderr


@pytest.mark.parametrize("level", _isa.LEVELS)
def test_kernel_tests_pass_at_forced_level(level):
    """The Cython kernel tests with the level forced, in a fresh process; "auto" there puts
    Cython first only if its level is not below Numba's."""
    package = _skip_unless_runnable(level)
    if level == package.ISA:
        pytest.skip(f"{level!r} is the dispatched level, which this test run covers")
    code = ("import sys, pytest, fastsoftmax as fs, fastsoftmax._cython as c\n"
            "print('level', c.ISA, 'backends', *fs.available_backends(), flush=True)\n"
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', 'cython', "
            "*sys.argv[1:]]))\n")
    run = _run_at_level(level, code, *KERNEL_TESTS)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    first = run.stdout.splitlines()[0].split()
    features = _isa.cpu_features()
    cython_first = _isa.rank(level, features) >= _isa.rank(_isa.numba_level(features), features)
    assert first[:2] == ["level", level]
    assert first[3] == ("cython" if cython_first else "numba")
