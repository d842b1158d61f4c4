"""The Cython kernels at every ISA level this CPU runs, the Numba kernels and a copy of
the logits (the memory floor), called alternately on the same arrays in one process.
Prints the median ns per logit element and each one's ratio to the floor::

    python -m bench.isa 1677721x10 167772x100 --threads 2
    python -m bench.isa 1677721x10 --ops softmax cross_entropy_with_grad

The kernels get the arguments of ``bench.ab`` (preallocated outputs, no validation).
"""
import argparse
import importlib
import time

import numpy as np
from numba import njit, prange

from bench.ab import kernel_calls
from fastsoftmax import _isa


@njit(parallel=True, cache=True)
def _copy(src, dst):
    for i in prange(src.size):
        dst[i] = src[i]


def builds():
    """label -> kernel module: each runnable Cython level, then Numba."""
    import fastsoftmax._cython as package
    features = _isa.cpu_features()
    found = {f"cython-{level}": importlib.import_module(f"fastsoftmax._cython._kernels_{level}")
             for level in package.BUILT
             if level == _isa.NATIVE or not _isa.missing_features(level, features)}
    found["numba"] = importlib.import_module("fastsoftmax._numba")
    return found


def compare(kernels, n_rows, n_classes, dtype, repeats, ops):
    size = n_rows * n_classes
    src = np.random.default_rng(0).standard_normal(size).astype(dtype)
    dst = np.empty_like(src)
    _copy(src, dst)  # compile outside the timing
    for op, call in kernel_calls(n_rows, n_classes, dtype).items():
        if ops and op not in ops:
            continue
        times = {label: [] for label in (*kernels, "floor")}
        for module in kernels.values():
            call(module)  # Numba compiles here
        for _ in range(repeats):
            for label, module in kernels.items():
                start = time.perf_counter()
                call(module)
                times[label].append(time.perf_counter() - start)
            start = time.perf_counter()
            _copy(src, dst)
            times["floor"].append(time.perf_counter() - start)
        ns = {label: np.median(t) / size * 1e9 for label, t in times.items()}
        cells = "  ".join(f"{label} {value:5.2f} ({value / ns['floor']:4.1f}x)"
                          for label, value in ns.items() if label != "floor")
        print(f"{n_rows}x{n_classes} {dtype} {op:28s} floor {ns['floor']:5.2f}  {cells}",
              flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="+", help="rows x classes, e.g. 1677721x10")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--ops", nargs="*", default=None, help="labels of bench.ab's calls")
    args = parser.parse_args(argv)
    kernels = builds()
    for module in kernels.values():
        module.set_num_threads(args.threads or module.max_threads)
    for shape in args.shapes:
        n_rows, n_classes = map(int, shape.lower().split("x"))
        compare(kernels, n_rows, n_classes, np.dtype(args.dtype), args.repeats, args.ops)


if __name__ == "__main__":
    main()
