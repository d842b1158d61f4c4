"""The 16-bit dtypes' time against float32's at one shape, side by side (issue 18).

The same logits in float32, bfloat16 and float16 go through each op of the public API,
the three dtypes called in turn, so that a noisy machine slows all three alike. Prints
the median ns per logit element of each and the 16-bit / float32 ratios::

    python -m bench.dtypes 1677721x10 16777x1000 --threads 2
    FASTSOFTMAX_ISA=avx2 python -m bench.dtypes 1677721x10 --backend cython

Outputs go to kept ``out=`` buffers, or in place (``inplace=True``) where the row says
so: there the logits are overwritten by each call's gradient, which changes the values
but not the work. The benchmark suite (``pytest bench --benchmark-only --bench-dtypes
float32,bfloat16``) times the same ops against the other libraries.
"""
import argparse
import time

import numpy as np

import fastsoftmax as fs
from bench.cases import numpy_dtype

DTYPES = ("float32", "bfloat16", "float16")


def _ops(arrays, outs, work, target):
    """name -> call(dtype name): the timed ops on the arrays of one shape"""
    return {
        "softmax": lambda d: fs.softmax(arrays[d], out=outs[d]),
        "log_softmax": lambda d: fs.log_softmax(arrays[d], out=outs[d]),
        "cross_entropy_with_grad": lambda d: fs.cross_entropy_with_grad(
            arrays[d], target, out=outs[d]),
        "cross_entropy_with_grad inplace": lambda d: fs.cross_entropy_with_grad(
            work[d], target, inplace=True),
        "softmax_backward": lambda d: fs.softmax_backward(arrays[d], arrays[d], out=outs[d]),
        "entropy_with_grad": lambda d: fs.entropy_with_grad(arrays[d], out=outs[d]),
    }


def compare(n_rows, n_classes, repeats, backend):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n_rows, n_classes)).astype(np.float32)
    target = rng.integers(0, n_classes, n_rows)
    arrays = {d: logits.astype(numpy_dtype(d)) for d in DTYPES}
    outs = {d: np.empty_like(a) for d, a in arrays.items()}
    work = {d: a.copy() for d, a in arrays.items()}
    for name, call in _ops(arrays, outs, work, target).items():
        times = {d: [] for d in DTYPES}
        with fs.use_backend(backend):
            for d in DTYPES:  # the first call of each outside the timing
                call(d)
            for _ in range(repeats):
                for d in DTYPES:
                    start = time.perf_counter()
                    call(d)
                    times[d].append(time.perf_counter() - start)
        ns = {d: np.median(t) / (n_rows * n_classes) * 1e9 for d, t in times.items()}
        ratios = "  ".join(f"{d} {ns[d]:.3f} ({ns[d] / ns['float32']:.2f}x)" for d in DTYPES[1:])
        print(f"{n_rows}x{n_classes} {name:32s} float32 {ns['float32']:.3f}  {ratios}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shapes", nargs="+", help="rows x classes, e.g. 1677721x10")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--backend", default="cython", choices=("cython", "numba"))
    args = parser.parse_args(argv)
    if args.threads:
        fs.set_num_threads(args.threads)
    for shape in args.shapes:
        n_rows, n_classes = (int(v) for v in shape.split("x"))
        compare(n_rows, n_classes, args.repeats, args.backend)


if __name__ == "__main__":
    main()
