"""Kernel timings of two builds side by side (Cython or Numba backend).

This checkout's compiled kernels against another checkout's (for example a
``git worktree`` of an older commit, built with ``python setup.py build_ext --inplace``),
called alternately on the same arrays so that a noisy machine slows both alike. Prints
the median ns per logit element of each build and their ratio, per op::

    python -m bench.ab ../old-checkout 1677721x10 167772x100 --threads 2
    python -m bench.ab ../old-checkout 1677721x10 --backend numba
    python -m bench.ab ../old-checkout 1677721x10 --other-weight ones
    python -m bench.ab . 1677721x10 --isa avx2 --other-isa avx512

The cross-entropy kernels get ``weight=None`` (every class weighs 1), as the API passes
for ``weight=None``; ``--other-weight ones`` gives the other build a cached ones(C)
instead, for a checkout older than 2026-12-02, whose kernels needed that array.

With ``--backend numba`` the other checkout's package is imported under another name
and both compile into a fresh, empty cache directory (so neither loads a stale kernel);
the first call of each kernel compiles it, outside the timing.

The kernels are called directly with preallocated outputs (no validation, no
allocation): this measures the kernels, the benchmark suite measures the API.
"""
import argparse
import inspect
import functools
import importlib
import importlib.util
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

from bench.cases import numpy_dtype
from fastsoftmax import _dtypes, _isa, _ops

HERE = pathlib.Path(__file__).resolve().parent.parent


def load_kernels(checkout, level):
    """The built Cython kernel module of a checkout at an ISA level (None: the level the
    checkout's dispatch would pick here), under its own module name. A checkout from before
    the per-level modules (2026-12-02) has one ``_kernels`` module, which any level takes."""
    folder = pathlib.Path(checkout) / "fastsoftmax/_cython"
    modules = {path.name.split(".")[0]: path for path in folder.glob("_kernels*.so")}
    if not modules:
        raise SystemExit(f"no built Cython extension under {checkout}; run "
                         "`python setup.py build_ext --inplace` there")
    if "_kernels" in modules and len(modules) == 1:
        name = "_kernels"
    else:
        built = [name.removeprefix("_kernels_") for name in modules]
        name = "_kernels_" + _isa.choose(level, built, _isa.cpu_features())
    spec = importlib.util.spec_from_file_location(f"fastsoftmax._cython.{name}", modules[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_numba_kernels(checkout, package):
    """The Numba backend of a checkout, its package imported as ``package``."""
    root = pathlib.Path(checkout) / "fastsoftmax"
    spec = importlib.util.spec_from_file_location(package, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{package}._numba")


def kernel_calls(n_rows, n_classes, dtype):
    """label -> f(kernels): one call of each kernel on shared inputs and outputs.

    Every rows op of the op table (inputs from its recipe), and the loss kernels in the
    variants below; ``LOSS_CALLS`` must name every loss kernel of the table. 16-bit
    arrays are passed as the kernels take them (``_dtypes.kernel_view``)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n_rows, n_classes)) * 3).astype(dtype)
    calls = {}
    for op in _ops.ROW_OPS:
        arrays = [_dtypes.kernel_view(a) for a in op.from_logits(x, -1, rng)]
        out = np.empty_like(x) if op.output == "same" else np.empty(n_rows, dtype)
        calls[op.name] = _rows_call(op.name, arrays, _dtypes.kernel_view(out))
    missing = set(_ops.LOSS_KERNELS) - set(LOSS_CALLS)
    if missing:
        raise SystemExit(f"bench.ab: no call for the loss kernels {sorted(missing)}; add them "
                         "to LOSS_CALLS")
    for make in LOSS_CALLS.values():
        calls.update(make(x, rng))
    return calls


def _rows_call(name, arrays, out):
    return lambda kernels: getattr(kernels, name)(*arrays, out)


def _cross_entropy_index_calls(x, rng):
    n_rows, n_classes = x.shape
    target = rng.integers(0, n_classes, n_rows)
    out, row_loss, no_row_scale = np.empty_like(x), np.empty(n_rows), np.empty(0)
    # inplace=True: the gradient overwrites this copy, which the next call reads (the same
    # work on other finite values, as in the benchmark suite)
    x_inplace = x.copy()

    def index(smoothing, grad, logits=x):
        return _by_name("cross_entropy_index", x=logits, target=target, weight=None,
                        weight_sum=float(n_classes), ignore_index=-100, smoothing=smoothing,
                        z_loss=0.0, softcap=None, scale=1.0 / n_rows, z_scale=0.0,
                        row_scale=no_row_scale, row_loss=row_loss, row_z_loss=no_row_scale,
                        grad=grad)

    return {"cross_entropy": index(0.0, None),
            "cross_entropy_with_grad": index(0.0, out),
            "cross_entropy_with_grad smoothing=0.1": index(0.1, out),
            "cross_entropy_with_grad inplace": index(0.0, x_inplace, x_inplace)}


def _cross_entropy_prob_calls(x, rng):
    n_rows, n_classes = x.shape
    probs = np.full_like(x, 1.0 / n_classes)
    out, row_loss, no_row_scale = np.empty_like(x), np.empty(n_rows), np.empty(0)
    return {"cross_entropy_with_grad_prob": _by_name(
        "cross_entropy_prob", x=x, target=probs, weight=None, smoothing=0.0, z_loss=0.0,
        softcap=None, scale=1.0 / n_rows, z_scale=0.0, row_scale=no_row_scale,
        row_loss=row_loss, row_z_loss=no_row_scale, grad=out)}


def _by_name(kernel, **arguments):
    """f(kernels): a call of a loss kernel with its arguments given by name (the kernels
    take them by position, in the order of _ops.LOSS_KERNELS, or of an older build's)."""
    def call(kernels):
        if isinstance(kernels, OlderBuild):
            return kernels.call(kernel, arguments)
        return getattr(kernels, kernel)(*(arguments[name]
                                          for name in _ops.LOSS_KERNELS[kernel]))
    arguments = {name: _dtypes.kernel_view(a) if isinstance(a, np.ndarray) else a
                 for name, a in arguments.items()}
    return call


def _entropy_calls(x, rng):
    out, row_loss, no_row_scale = np.empty_like(x), np.empty(x.shape[0]), np.empty(0)
    x_inplace = x.copy()

    def call(logits, grad):
        return _by_name("entropy_with_grad", logits=logits, scale=1.0, row_scale=no_row_scale,
                        row_loss=row_loss, grad=grad)
    return {"entropy_with_grad": call(x, out), "entropy_with_grad inplace": call(x_inplace,
                                                                                x_inplace)}


# loss kernel -> (logits, rng) -> {label: f(kernels)}
LOSS_CALLS = {"cross_entropy_index": _cross_entropy_index_calls,
              "cross_entropy_prob": _cross_entropy_prob_calls,
              "entropy_with_grad": _entropy_calls}


def _elementwise_operands(x, rng):
    """Flat input, a target in [0, 1), ones (weights), grad_output 1, a gradient buffer."""
    flat = x.reshape(-1)
    view = _dtypes.kernel_view
    return (view(flat), view(rng.random(flat.size).astype(x.dtype)),
            np.ones(4096, _dtypes.compute_dtype(x.dtype)), np.ones(4096), view(np.empty_like(flat)))


def _kl_div_calls(x, rng):
    flat, target, _, g, grad = _elementwise_operands(x, rng)
    return {"kl_div_with_grad": lambda k: k.kl_div(flat, target, False, g, 1.0 / flat.size,
                                                   None, grad)}


def _bce_calls(x, rng):
    """reduction "mean" with the gradient; the label shortened to fit the report's column."""
    flat, target, ones, g, grad = _elementwise_operands(x, rng)
    return {"bce_with_logits_with_grad": lambda k: k.binary_cross_entropy_with_logits(
        flat, target, ones, ones, g, 1.0 / flat.size, None, grad)}


LOSS_CALLS.update({"kl_div": _kl_div_calls, "binary_cross_entropy_with_logits": _bce_calls})


def _jsd_calls(x, rng):
    """The teacher: other logits of x's shape; beta 0.5 (the mixture), reduction "mean"."""
    n_rows = x.shape[0]
    teacher = (rng.standard_normal(x.shape) * 3).astype(x.dtype)
    out, row_loss, no_row_scale = np.empty_like(x), np.empty(n_rows), np.empty(0)

    def call(grad, beta=0.5):
        return _by_name("jsd_logits", student=x, teacher=teacher, beta=beta, inv_temperature=1.0,
                        scale=1.0 / n_rows, row_scale=no_row_scale, row_loss=row_loss,
                        grad=grad)
    return {"jsd_logits": call(None), "jsd_logits_with_grad": call(out),
            "jsd_logits_with_grad beta=0": call(out, 0.0)}


LOSS_CALLS["jsd_logits"] = _jsd_calls


class OlderBuild:
    """The kernels of an older build. A loss kernel is called with this build's arguments
    by name (``call``): those its kernel does not take (z_loss, z_scale and row_z_loss
    before the z-loss, softcap before soft-capping) are dropped, and with
    ``ones_for_no_weight``, weight=None becomes a cached ones(C), as the API of builds
    before weight=None reached the kernels passed."""

    def __init__(self, kernels, ones_for_no_weight):
        self.kernels = kernels
        self.ones_for_no_weight = ones_for_no_weight
        # kernel name -> its parameter names, found once: inspect.signature inside the
        # timed call cost ~17 us, which made the older build look slower at small shapes
        self._parameters = {}

    def __getattr__(self, name):
        return getattr(self.kernels, name)

    def call(self, kernel, arguments):
        function = getattr(self.kernels, kernel)
        if self.ones_for_no_weight and arguments.get("weight", 0) is None:
            x = arguments["x"]
            arguments = dict(arguments, weight=_ones(x.shape[1], x.dtype))
        if kernel not in self._parameters:
            self._parameters[kernel] = tuple(inspect.signature(function).parameters)
        return function(*(arguments[name] for name in self._parameters[kernel]))


@functools.lru_cache(maxsize=4)
def _ones(n_classes, dtype):
    return np.ones(n_classes, dtype)


def compare(this, other, n_rows, n_classes, dtype, repeats):
    size = n_rows * n_classes
    for op, call in kernel_calls(n_rows, n_classes, dtype).items():
        times = {"this": [], "other": []}
        try:
            call(this), call(other)
        # an op one of the builds does not have yet, or not for this dtype
        except (AttributeError, TypeError) as missing:
            print(f"{n_rows}x{n_classes} {dtype} {op:40s} skipped: {missing}", flush=True)
            continue
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
    parser.add_argument("other", help="the other checkout (for Cython: with a built extension)")
    parser.add_argument("shapes", nargs="+", help="rows x classes, e.g. 1677721x10")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--backend", choices=["cython", "numba"], default="cython")
    parser.add_argument("--other-weight", choices=["none", "ones"], default="none",
                        help="what the other build's cross-entropy kernels get for weight=None")
    parser.add_argument("--isa", default=None,
                        help="Cython: the ISA level of this checkout's kernels (baseline, avx2, "
                             "avx512, native; default: what the dispatch picks)")
    parser.add_argument("--other-isa", default=None, help="the same for the other checkout")
    args = parser.parse_args(argv)
    if args.backend == "numba":
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastsoftmax-ab-")
        this = importlib.import_module("fastsoftmax._numba")
        other = load_numba_kernels(args.other, "fastsoftmax_other")
    else:
        this = load_kernels(HERE, args.isa)
        other = load_kernels(args.other, args.other_isa)
    for kernels in (this, other):
        kernels.set_num_threads(args.threads or kernels.max_threads)
    other = OlderBuild(other, ones_for_no_weight=args.other_weight == "ones")
    for shape in args.shapes:
        n_rows, n_classes = map(int, shape.lower().split("x"))
        compare(this, other, n_rows, n_classes, numpy_dtype(args.dtype), args.repeats)


if __name__ == "__main__":
    main()
