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


def test_readme_table_shows_the_16_bit_groups_after_float32(tmp_path):
    path = _results(tmp_path / "run.json", "avx512", {"avx2": True})
    run = json.loads(path.read_text())
    template = run["benchmarks"][0]
    run["benchmarks"] = [
        {"stats": {"median": median},
         "extra_info": dict(template["extra_info"], op="cross_entropy_with_grad", dtype=dtype)}
        for dtype, median in (("bfloat16", 5e-4), ("float32", 1e-3), ("float64", 2e-3))]
    path.write_text(json.dumps(run))
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{report.README_START}\nold\n{report.README_END}\nafter\n")
    report.update_readme(readme, report.Run(path))
    text = readme.read_text()
    float32 = text.index("**cross_entropy_with_grad, float32**")
    bfloat16 = text.index("**cross_entropy_with_grad, bfloat16**")
    assert float32 < bfloat16 and "float64" not in text and "old" not in text
    assert "| 100 x 10 | 500.00 |" in text[bfloat16:]  # 5e-4 s over 1000 elements
