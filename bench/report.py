"""Read pytest-benchmark JSON files (one per CPU) and report ns/element and speedups.

    python -m bench.report results.json [more.json ...]            # tables per CPU
    python -m bench.report a.json b.json --plot speedup.png       # + plot, a panel per CPU
    python -m bench.report results.json --readme README.md        # regenerate README table
    python -m bench.report a.json b.json --label zen4 --label zen3  # name the runs

Per group (op, shape, dtype) it prints the median time per logit element of every
implementation, and for the fastest fastsoftmax implementation its speedup over the
NumPy reference and PyTorch eager and its ratio to the memory floor measured in the
same run. With several files, a side-by-side table compares the CPUs.
"""
import argparse
import json
import pathlib
import re
from collections import defaultdict

REFERENCE, TORCH, FLOOR = "numpy-reference", "torch", "memory-floor"
README_START, README_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
README_OPS = ("cross_entropy_with_grad", "softmax")
README_DTYPES = ("float32", "bfloat16", "float16")  # the run's groups of these, in this order


class Run:
    """One results file: the machine it ran on and median ns/element per group and impl."""

    def __init__(self, path, label=None):
        data = json.loads(pathlib.Path(path).read_text())
        info = data["machine_info"]
        cpu = info.get("cpu", {})
        self.path = str(path)
        self.cpu = cpu.get("brand_raw") or info.get("processor") or "unknown CPU"
        self.threads = info.get("fastsoftmax_threads", cpu.get("count"))
        self.versions = info.get("fastsoftmax_versions", {})
        self.isa = _isa_summary(info)
        self.details = _cpu_details(cpu)
        self.label = label
        self.ns = defaultdict(dict)      # (op, rows, classes, dtype) -> {impl: ns/element}
        self.cold = {}                   # cache state -> extra_info
        for bench in data["benchmarks"]:
            extra = bench.get("extra_info", {})
            if extra.get("op") == "cold-start":
                key = (extra.get("backend", "numba"), extra["cache"])
                self.cold[key] = dict(extra, median=bench["stats"]["median"])
            elif "elements" in extra:
                key = (extra["op"], extra["rows"], extra["classes"], extra["dtype"])
                self.ns[key][extra["implementation"]] = \
                    bench["stats"]["median"] / extra["elements"] * 1e9

    def title(self):
        """Short name of the run: --label, else the CPU brand with its ISA summary."""
        name = f"{self.label}: " if self.label else ""
        isa = f" [{self.isa}]" if self.isa else ""
        return f"{name}{self.cpu}{isa}, {self.threads} threads"

    def machine_line(self):
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        details = f" ({self.details})" if self.details else ""
        return f"{self.title()}{details}; {versions}"

    def keys(self, op=None, dtype=None):
        return sorted(k for k in self.ns if (op is None or k[0] == op)
                      and (dtype is None or k[3] == dtype))


def _isa_summary(info):
    """"isa cython=avx2 numba=avx2; avx2 fma -avx512f": the dispatched levels (recorded by
    bench/conftest.py) and the key flags, from that record or else from py-cpuinfo's flag
    list. Empty when the file has neither (results saved before they were recorded)."""
    isa = info.get("fastsoftmax_isa") or {}
    flags = isa.get("flags")
    if flags is None and info.get("cpu", {}).get("flags"):
        have = set(info["cpu"]["flags"])
        flags = {flag: flag in have for flag in ("avx2", "fma", "avx512f")}
    parts = []
    levels = " ".join(f"{key}={isa[key]}" for key in ("cython", "numba") if isa.get(key))
    if levels:
        parts.append("isa " + levels + (f" (forced {isa['forced']})" if isa.get("forced") else ""))
    if flags:
        parts.append(" ".join(flag if present else f"-{flag}" for flag, present in flags.items()))
    return "; ".join(parts)


def _cpu_details(cpu):
    """"family 25 model 1, L2 512 KiB, L3 32 MiB" from py-cpuinfo's record (as it reports
    them: the cache sizes may be per core or per package, depending on the OS)."""
    parts = []
    if cpu.get("family") is not None:
        parts.append(f"family {cpu['family']} model {cpu.get('model')}")
    for level in ("l2", "l3"):
        size = cpu.get(f"{level}_cache_size")
        if isinstance(size, int) and size > 0:
            unit = "MiB" if size >= 2 ** 20 else "KiB"
            parts.append(f"{level.upper()} {size / 2 ** (20 if unit == 'MiB' else 10):g} {unit}")
    return ", ".join(parts)


def fastest_fastsoftmax(timings):
    ours = {k: v for k, v in timings.items() if k.startswith("fastsoftmax-")}
    return min(ours.items(), key=lambda kv: kv[1]) if ours else (None, None)


def _fmt(value, spec=".2f", suffix=""):
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def op_table(run, op, dtype):
    """Markdown table: one row per shape, ns/element per implementation, then ratios."""
    keys = run.keys(op, dtype)
    impls = []
    for key in keys:
        impls += [name for name in run.ns[key] if name not in impls]
    impls.sort(key=lambda n: (not n.startswith("fastsoftmax-"), n == REFERENCE, n == FLOOR, n))
    head = ["rows x classes", *impls, "fastest fastsoftmax", "vs NumPy", "vs torch", "x floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        timings = run.ns[key]
        best_name, best = fastest_fastsoftmax(timings)
        cells = [f"{key[1]} x {key[2]}", *(_fmt(timings.get(i)) for i in impls),
                 best_name or "–",
                 _fmt(_ratio(timings.get(REFERENCE), best), ".0f", "x"),
                 _fmt(_ratio(timings.get(TORCH), best), ".1f", "x"),
                 _fmt(_ratio(best, timings.get(FLOOR)), ".1f", "x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_run(run, ops=None, dtypes=None):
    out = [f"### {run.path}: {run.machine_line()}", ""]
    if run.ns:
        out += ["Median ns per logit element (lower is better); ratios for the fastest "
                "fastsoftmax implementation, all from this one run.", ""]
    for op, dtype in sorted({(k[0], k[3]) for k in run.ns}):
        if (ops and op not in ops) or (dtypes and dtype not in dtypes):
            continue
        out += [f"**{op}, {dtype}**", "", op_table(run, op, dtype), ""]
    if run.cold:
        out += ["**cold start** (fresh process, float32 64 x 1000 cross_entropy_with_grad)", "",
                "| backend | Numba cache | import | first call | whole process |",
                "|---|---|---|---|---|"]
        for (backend, cache), info in sorted(run.cold.items()):
            out.append(f"| {backend} | {cache} | {info['import_seconds']:.3f} s | "
                       f"{info['first_call_seconds']:.2f} s | {info['median']:.2f} s |")
        out.append("")
    return "\n".join(out)


def compare_runs(runs):
    """Side by side: fastest fastsoftmax ns/element and its speedups, one column set per CPU."""
    keys = sorted(set().union(*(set(r.ns) for r in runs)))
    head = ["op", "dtype", "rows x classes"]
    for i in range(1, len(runs) + 1):
        head += [f"CPU{i} ns", f"CPU{i} vs NumPy", f"CPU{i} vs torch", f"CPU{i} x floor"]
    lines = [f"CPU{i}: {run.machine_line()} ({run.path})" for i, run in enumerate(runs, 1)]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        cells = [key[0], key[3], f"{key[1]} x {key[2]}"]
        for run in runs:
            timings = run.ns.get(key, {})
            _, best = fastest_fastsoftmax(timings)
            cells += [_fmt(best), _fmt(_ratio(timings.get(REFERENCE), best), ".0f", "x"),
                      _fmt(_ratio(timings.get(TORCH), best), ".1f", "x"),
                      _fmt(_ratio(best, timings.get(FLOOR)), ".1f", "x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs, path, op, dtype):
    """Speedup over the NumPy reference vs class count, one line per implementation,
    one panel per CPU; only the fixed-budget shapes (2^24 elements) are plotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False,
                             sharey=True)
    for ax, run in zip(axes[0], runs):
        keys = [k for k in run.keys(op, dtype) if k[1] * k[2] >= 2 ** 23]
        impls = sorted({name for k in keys for name in run.ns[k]} - {REFERENCE})
        for name in impls:
            points = [(k[2], run.ns[k][REFERENCE] / run.ns[k][name]) for k in keys
                      if name in run.ns[k] and REFERENCE in run.ns[k]]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=name,
                        linestyle="--" if name == FLOOR else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("classes C (N = 2^24 / C rows)")
        ax.set_title(run.title().replace(" [", "\n["), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"speedup over NumPy reference\n({op}, {dtype})")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def update_readme(readme, run):
    text = pathlib.Path(readme).read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} section")
    body = [f"Generated by `python -m bench.report {run.path} --readme {readme}`.", "",
            f"Machine: {run.machine_line()}.", ""]
    for dtype in README_DTYPES:
        for op in README_OPS:
            if run.keys(op, dtype):
                body += [f"**{op}, {dtype}** — median ns per logit element", "",
                         op_table(run, op, dtype), ""]
    new = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END),
                 lambda _: README_START + "\n" + "\n".join(body) + README_END, text,
                 flags=re.S)
    pathlib.Path(readme).write_text(new)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("--op", action="append", help="only these ops (repeatable)")
    parser.add_argument("--dtype", action="append", help="only these dtypes (repeatable)")
    parser.add_argument("--plot", help="write a PNG plot here")
    parser.add_argument("--plot-op", default="cross_entropy_with_grad")
    parser.add_argument("--plot-dtype", default="float32")
    parser.add_argument("--label", action="append", default=[],
                        help="name of a run, one per file in order (repeatable)")
    parser.add_argument("--readme", help="regenerate the benchmark table of this README "
                                         "from the first file")
    args = parser.parse_args(argv)
    if len(args.label) > len(args.files):
        parser.error(f"{len(args.label)} --label for {len(args.files)} files: give at most "
                     "one per file, in the files' order")
    labels = args.label + [None] * (len(args.files) - len(args.label))
    runs = [Run(path, label) for path, label in zip(args.files, labels)]
    for run in runs:
        print(report_run(run, args.op, args.dtype))
    if len(runs) > 1:
        print(compare_runs(runs))
    if args.plot:
        plot(runs, args.plot, args.plot_op, args.plot_dtype)
        print(f"plot written to {args.plot}")
    if args.readme:
        update_readme(args.readme, runs[0])
        print(f"benchmark table in {args.readme} regenerated")


if __name__ == "__main__":
    main()
