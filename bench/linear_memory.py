"""Peak memory of one fused linear + cross-entropy step per implementation, each in a fresh
process (Linux only), next to what the step must hold: its gradients and the chunk budget.

    python -m bench.linear_memory [--shapes 4096x512x32768,16384x512x32768] [--only NAMES]

As ``bench.memory``: inputs built, one warm-up call, the chunk buffers it kept freed
(``fs.release_linear_cross_entropy_buffers``: else they would count as resident before the
measured call), the peak resident set reset, one more call; reported is the peak above
the resident set before it. The bound of the issue is
``1.1 x (gradients + chunk budget)``, gradients = grad_h (N x D) + grad_weight (V x D).
"""
import argparse
import gc
import json
import subprocess
import sys

from bench.memory import MB, _status_kb


def _measure(name, shape, dtype):
    import fastsoftmax as fs
    from bench.linear_implementations import implementations, problem
    call = implementations()[name](*problem(*shape, dtype=dtype))
    call()
    fs.release_linear_cross_entropy_buffers()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    before = _status_kb("VmRSS")
    result = call()
    peak = (_status_kb("VmHWM") - before) * 1024
    del result
    return peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x512x32768,16384x512x32768,65536x512x32768",
                        help="comma-separated NxDxV")
    parser.add_argument("--dtype", default="float32", help="float32, float64, bfloat16, float16")
    parser.add_argument("--only", help="comma-separated implementation names")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.child:
        print(json.dumps(_measure(args.child, shapes[0], args.dtype)))
        return

    import fastsoftmax as fs
    from bench.cases import numpy_dtype
    from bench.linear_implementations import GEMM_FLOOR, implementations
    names = [n for n in implementations() if n != GEMM_FLOOR]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    itemsize = numpy_dtype(args.dtype).itemsize
    budget = fs.get_linear_cross_entropy_chunk_bytes()
    print(f"**peak memory above the inputs, one forward + backward**, {args.dtype}, "
          f"chunk budget {budget / MB:.0f} MB\n")
    print("| N x D x V | implementation | peak (MB) | gradients (MB) | "
          "peak / (gradients + budget) |")
    print("|---|---|---|---|---|")
    for n, d, v in shapes:
        gradients = (n * d + v * d) * itemsize
        for name in names:
            run = subprocess.run([sys.executable, "-m", "bench.linear_memory", "--shapes",
                                  f"{n}x{d}x{v}", "--dtype", args.dtype, "--child", name],
                                 capture_output=True, text=True, check=False)
            if run.returncode != 0:
                print(f"| {n}x{d}x{v} | {name} | failed: "
                      f"{(run.stderr.strip().splitlines() or ['?'])[-1]} | | |")
                continue
            peak = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"| {n}x{d}x{v} | {name} | {peak / MB:.0f} | {gradients / MB:.0f} | "
                  f"{peak / (gradients + budget):.2f} |", flush=True)


if __name__ == "__main__":
    main()
