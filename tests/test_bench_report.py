"""bench.report tells apart runs from two CPUs of one brand (issue 16): an AVX-512 EPYC and
an AVX2 EPYC share the brand string, so the label carries the dispatched ISA and flags."""
import json

from bench import report

BRAND = "AMD EPYC 7B13"


def _results(path, cpu_level, flags):
    info = {"cpu": {"brand_raw": BRAND, "count": 2, "family": 25, "model": 1,
                    "l2_cache_size": 1048576, "l3_cache_size": 33554432},
            "fastsoftmax_threads": 2,
            "fastsoftmax_versions": {"fastsoftmax": "0"},
            "fastsoftmax_isa": {"cpu": cpu_level, "numba": cpu_level, "cython": cpu_level,
                                "forced": None, "flags": flags}}
    bench = {"stats": {"median": 1e-3},
             "extra_info": {"op": "softmax", "rows": 100, "classes": 10, "dtype": "float32",
                            "implementation": "fastsoftmax-numba", "elements": 1000}}
    path.write_text(json.dumps({"machine_info": info, "benchmarks": [bench]}))
    return path


def test_two_epycs_get_different_labels(tmp_path, capsys):
    zen4 = _results(tmp_path / "zen4.json", "avx512",
                    {"avx2": True, "fma": True, "avx512f": True})
    zen3 = _results(tmp_path / "zen3.json", "avx2",
                    {"avx2": True, "fma": True, "avx512f": False})
    titles = [report.Run(zen4).title(), report.Run(zen3).title()]
    assert titles == [f"{BRAND} [isa cython=avx512 numba=avx512; avx2 fma avx512f], 2 threads",
                      f"{BRAND} [isa cython=avx2 numba=avx2; avx2 fma -avx512f], 2 threads"]
    report.main([str(zen4), str(zen3), "--label", "zen4"])
    out = capsys.readouterr().out
    assert f"CPU1: zen4: {BRAND} [isa cython=avx512" in out
    assert f"CPU2: {BRAND} [isa cython=avx2" in out
    assert "2 threads (family 25 model 1, L2 1 MiB, L3 32 MiB)" in out


def test_flags_from_py_cpuinfo_when_the_isa_was_not_recorded(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": BRAND, "count": 2,
                                                         "flags": ["avx2", "sse2"]}},
                                "benchmarks": []}))
    assert report.Run(path).title() == f"{BRAND} [avx2 -fma -avx512f], 2 threads"
