"""Cython kernel timings of two builds side by side.

This checkout's compiled kernels against another checkout's (for example a
``git worktree`` of an older commit, built with ``python setup.py build_ext --inplace``),
called alternately on the same arrays so that a noisy machine slows both alike. Prints
the median ns per logit element of each build and their ratio, per op::

    python -m bench.ab ../old-checkout 1677721x10 167772x100 --threads 2

The kernels are called directly with preallocated outputs (no validation, no
allocation): this measures the kernels, the benchmark suite measures the API.
"""
import argparse
import glob
import importlib.util
import pathlib
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent.parent


def load_kernels(checkout, name):
    """The built Cython kernel module of a checkout, under its own module name."""
    paths = glob.glob(str(pathlib.Path(checkout) / "fastsoftmax/_cython/_kernels*.so"))
    if not paths:
        raise SystemExit(f"no built Cython extension under {checkout}; run "
                         "`python setup.py build_ext --inplace` there")
    spec = importlib.util.spec_from_file_location(name, paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel_calls(n_rows, n_classes, dtype):
    """op -> f(kernels): one call of each kernel on shared inputs and outputs."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n_rows, n_classes)) * 3).astype(dtype)
    probs = np.full_like(x, 1.0 / n_classes)
    target = rng.integers(0, n_classes, n_rows)
    weight = np.ones(n_classes, dtype)
    out, rows_out = np.empty_like(x), np.empty(n_rows, dtype)
    # inplace=True: the gradient overwrites this copy, which the next call reads (the same
    # work on other finite values, as in the benchmark suite)
    x_inplace = x.copy()
    row_loss, no_row_scale = np.empty(n_rows), np.empty(0)
    scale = 1.0 / n_rows

    def index(smoothing, grad, logits=x):
        return lambda k: k.cross_entropy_index(logits, target, weight, float(n_classes), -100,
                                               smoothing, scale, no_row_scale, row_loss, grad)

    return {
        "logsumexp": lambda k: k.logsumexp(x, rows_out),
        "softmax": lambda k: k.softmax(x, out),
        "log_softmax": lambda k: k.log_softmax(x, out),
        "softmax_backward": lambda k: k.softmax_backward(probs, x, out),
        "log_softmax_backward": lambda k: k.log_softmax_backward(x, probs, out),
        "cross_entropy": index(0.0, None),
        "cross_entropy_with_grad": index(0.0, out),
        "cross_entropy_with_grad smoothing=0.1": index(0.1, out),
        "cross_entropy_with_grad inplace": index(0.0, x_inplace, x_inplace),
        "cross_entropy_with_grad_prob": lambda k: k.cross_entropy_prob(
            x, probs, weight, 0.0, scale, no_row_scale, row_loss, out),
    }


def compare(this, other, n_rows, n_classes, dtype, repeats):
    size = n_rows * n_classes
    for op, call in kernel_calls(n_rows, n_classes, dtype).items():
        times = {"this": [], "other": []}
        call(this), call(other)
        for _ in range(repeats):
            for label, kernels in (("this", this), ("other", other)):
                start = time.perf_counter()
                call(kernels)
                times[label].append(time.perf_counter() - start)
        a, b = (np.median(times[label]) / size * 1e9 for label in ("this", "other"))
        print(f"{n_rows}x{n_classes} {dtype} {op:40s} this {a:6.2f}  other {b:6.2f}  "
              f"this/other {a / b:5.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", help="checkout with a built Cython extension")
    parser.add_argument("shapes", nargs="+", help="rows x classes, e.g. 1677721x10")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args(argv)
    this = load_kernels(HERE, "fastsoftmax._cython._kernels")
    other = load_kernels(args.other, "fastsoftmax._cython._kernels")
    for kernels in (this, other):
        kernels.set_num_threads(args.threads or kernels.max_threads)
    for shape in args.shapes:
        n_rows, n_classes = map(int, shape.lower().split("x"))
        compare(this, other, n_rows, n_classes, np.dtype(args.dtype), args.repeats)


if __name__ == "__main__":
    main()
