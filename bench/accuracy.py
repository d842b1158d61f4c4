"""Accuracy of the kernels against the float64 reference, next to PyTorch's.

    python -m bench.accuracy [--out docs/ACCURACY.md] [--classes 10 1000 ...]
                             [--dtypes float32 bfloat16 float16]

For each dtype, class count C and logit scale s, logits ~ s * N(0, 1) rounded to the
dtype (about 2^21 elements, at least 2 rows) go through softmax, log_softmax,
cross_entropy_with_grad (reduction "none"; loss and gradient), entropy_with_grad (per
row; entropy and gradient) and jsd_logits_with_grad (beta 0.5, per row, the teacher
other logits of the same scale; loss and gradient) of every fastsoftmax backend and of
PyTorch on the same dtype (the entropy: torch's Categorical; the JSD: TRL's formula in
torch ops, autograd); the error is normwise: max |result - exact| /
max |exact|, with "exact" the float64 reference applied to the same rounded inputs and
not rounded again. For 16-bit inputs, rounding the exact result to the dtype already
costs up to half a unit in the last place: about 2e-3 (bfloat16) and 2.4e-4 (float16)
relative to the largest value (the rows "rounding alone"). An error of inf, for every
implementation and for rounding alone, is a result outside the dtype's range: float16
log_softmax at scale 1e4 reaches -8e4, below float16's -65504, so it is stored as -inf.
"""
import argparse
import importlib.util
import platform

import numpy as np

import fastsoftmax as fs
from bench.cases import numpy_dtype
from fastsoftmax import reference

ELEMENTS = 2 ** 21
CLASSES = [10, 1000, 131072, 1048576]
SCALES = [1.0, 100.0, 1e4]
QUANTITIES = ["softmax", "log_softmax", "loss", "grad", "entropy", "entropy grad", "jsd",
              "jsd grad"]
DTYPES = ["float32", "bfloat16", "float16"]
ROUNDING = "rounding alone"  # the exact result rounded to the dtype: the best possible


def normwise_error(result, exact):
    exact = np.asarray(exact, np.float64)
    result = np.asarray(result, np.float64)
    return float(np.max(np.abs(result - exact)) / max(np.max(np.abs(exact)), 1e-300))


def _results(softmax, log_softmax, with_grad, entropy, jsd):
    """quantity -> result, from (result, gradient) pairs where there are two."""
    return {"softmax": softmax, "log_softmax": log_softmax, "loss": with_grad[0],
            "grad": with_grad[1], "entropy": entropy[0], "entropy grad": entropy[1],
            "jsd": jsd[0], "jsd grad": jsd[1]}


def _ours(backend):
    def run(x, t, teacher):
        return _results(
            fs.softmax(x, backend=backend), fs.log_softmax(x, backend=backend),
            fs.cross_entropy_with_grad(x, t, reduction="none", backend=backend),
            fs.entropy_with_grad(x, backend=backend),
            fs.jsd_logits_with_grad(x, teacher, reduction="none", backend=backend))
    return run


def _torch(x, t, teacher):
    import torch

    from bench.implementations import _torch_tensor
    from fastsoftmax._ops import _torch_entropy, _torch_jsd

    def value_and_grad(loss):
        xt = _torch_tensor(torch, x).requires_grad_()
        value = loss(xt)
        value.sum().backward()
        return value.detach().float().numpy(), xt.grad.float().numpy()

    with torch.no_grad():
        xt = _torch_tensor(torch, x)
        softmax, log_softmax = torch.softmax(xt, -1), torch.log_softmax(xt, -1)
    return _results(
        softmax.float().numpy(), log_softmax.float().numpy(),
        value_and_grad(lambda xt: torch.nn.functional.cross_entropy(
            xt, torch.from_numpy(t), reduction="none")),
        value_and_grad(lambda xt: _torch_entropy(torch, xt)),
        value_and_grad(lambda xt: _torch_jsd(torch, xt, _torch_tensor(torch, teacher),
                                             per_row=True)))


def implementations():
    impls = {f"fastsoftmax-{b}": _ours(b) for b in fs.available_backends() if b != "numpy"}
    if importlib.util.find_spec("torch"):
        impls["torch"] = _torch
    return impls


def measure(classes=CLASSES, scales=SCALES, elements=ELEMENTS, seed=0, dtype="float32"):
    """{(C, scale, quantity): {implementation: error}}; for 16-bit dtypes also the error of
    the exact result rounded to the dtype (ROUNDING)."""
    rng = np.random.default_rng(seed)
    impls = implementations()
    dtype = numpy_dtype(dtype)
    table = {}
    for n_classes in classes:
        rows = max(2, elements // n_classes)
        for scale in scales:
            x = (rng.standard_normal((rows, n_classes)) * scale).astype(dtype)
            t = rng.integers(0, n_classes, rows)
            teacher = (rng.standard_normal((rows, n_classes)) * scale).astype(dtype)
            x64 = x.astype(np.float64)
            exact = _results(
                reference.softmax(x64), reference.log_softmax(x64),
                reference.cross_entropy_with_grad(x64, t, reduction="none"),
                reference.entropy_with_grad(x64),
                reference.jsd_logits_with_grad(x64, teacher.astype(np.float64),
                                               reduction="none"))
            results = {name: run(x, t, teacher) for name, run in impls.items()}
            if dtype.itemsize == 2:  # the losses come back as float32
                results[ROUNDING] = {
                    q: v.astype(np.float32 if q in ("loss", "entropy", "jsd") else dtype)
                    for q, v in exact.items()}
            for quantity in QUANTITIES:
                table[(n_classes, scale, quantity)] = {
                    name: normwise_error(result[quantity], exact[quantity])
                    for name, result in results.items()}
    return table


def markdown(table):
    names = list(next(iter(table.values())))
    head = ["C", "scale", "quantity", *names]
    if "torch" in names:
        head.append("worst fastsoftmax / torch")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (n_classes, scale, quantity), errors in table.items():
        cells = [str(n_classes), f"{scale:g}", quantity, *(f"{errors[n]:.1e}" for n in names)]
        if "torch" in errors:
            ours = max(v for k, v in errors.items() if k.startswith("fastsoftmax"))
            cells.append(f"{ours / errors['torch']:.2f}" if errors["torch"] else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=CLASSES)
    parser.add_argument("--dtypes", nargs="+", default=DTYPES, choices=DTYPES)
    parser.add_argument("--out", help="write the tables (with how they were made) to this file")
    args = parser.parse_args(argv)
    tables = "\n\n".join(f"## {dtype}\n\n" + markdown(measure(args.classes, dtype=dtype))
                          for dtype in args.dtypes)
    print(tables)
    if args.out:
        import numba
        versions = f"numpy {np.__version__}, numba {numba.__version__}"
        if importlib.util.find_spec("torch"):
            import torch
            versions += f", torch {torch.__version__}"
        with open(args.out, "w") as f:
            f.write("# Accuracy of the kernels\n\n"
                    f"Generated by `python -m bench.accuracy --out {args.out}` on "
                    f"{platform.processor() or platform.machine()}, {versions}.\n\n"
                    + __doc__.split("\n\n", 1)[1].strip() + "\n\n" + tables + "\n")


if __name__ == "__main__":
    main()
