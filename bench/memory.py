"""Peak memory of one call per implementation, next to PyTorch's and JAX's (Linux only).

    python -m bench.memory [--op cross_entropy_with_grad] [--shape 512x32768] [--dtype float32]

Each implementation runs in a fresh process: inputs are built and the op is called
once (imports, JIT, torch.compile), then the kernel's peak resident set is reset
(``/proc/self/clear_refs``) and the op runs again. Reported: the peak above the
resident set just before that call, in MB and in units of the logits' size (the
returned gradient itself is one unit). Use logits above 32 MB: glibc serves smaller
blocks from memory freed by the first call, which is already resident and not counted.
"""
import argparse
import gc
import json
import subprocess
import sys

from bench import cases

MB = 2 ** 20


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(name, op, shape, dtype):
    """Child process: peak bytes above the current resident set during one call."""
    from bench.implementations import implementations
    call = implementations()[name][op](cases.inputs(op, shape, dtype))
    call()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak resident set) to the current VmRSS
    before = _status_kb("VmRSS")
    call()
    return (_status_kb("VmHWM") - before) * 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", default="cross_entropy_with_grad")
    parser.add_argument("--shape", default="512x32768", help="ROWSxCLASSES")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--only", help="comma-separated implementation names")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    if args.child:
        print(json.dumps(_measure(args.child, args.op, shape, args.dtype)))
        return

    from bench.implementations import MEMORY_FLOOR, REFERENCE, implementations
    names = [n for n, ops in implementations().items()
             if args.op in ops and n not in (MEMORY_FLOOR, REFERENCE)]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    logits_bytes = shape[0] * shape[1] * cases.numpy_dtype(args.dtype).itemsize
    print(f"**peak memory of one {args.op} call**, {args.shape} {args.dtype} "
          f"(logits: {logits_bytes / MB:.0f} MB)\n")
    print("| implementation | peak above inputs (MB) | x logits |")
    print("|---|---|---|")
    for name in names:
        run = subprocess.run([sys.executable, "-m", "bench.memory", "--op", args.op,
                              "--shape", args.shape, "--dtype", args.dtype, "--child", name],
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            print(f"| {name} | failed: {run.stderr.strip().splitlines()[-1]} | |")
            continue
        peak = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"| {name} | {peak / MB:.0f} | {peak / logits_bytes:.2f} |")


if __name__ == "__main__":
    main()
