"""Per-call overhead of fastsoftmax.torch against another commit's fastsoftmax.torch.

    python -m bench.torch_overhead main --shape 8x10 --repeats 21

The other commit's ``fastsoftmax/torch.py`` (read with ``git show``) is imported as a
second module of this checkout's package, so both run the same kernels and only the
torch layer differs; its torch.library ops are registered under the namespace
``fastsoftmax_other`` (under ``fastsoftmax`` they would replace this checkout's). Calls
of the two are interleaved in one process; the report is the median time per call of
each and their ratio (this checkout / the other).
"""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fastsoftmax
import fastsoftmax.torch as current


def load_torch_layer(ref):
    """``fastsoftmax/torch.py`` of git ``ref`` as module ``fastsoftmax._torch_at_ref``."""
    source = subprocess.run(["git", "show", f"{ref}:fastsoftmax/torch.py"], check=True,
                            capture_output=True, text=True).stdout
    source = source.replace('"fastsoftmax::', '"fastsoftmax_other::').replace(
        "torch.ops.fastsoftmax.", "torch.ops.fastsoftmax_other.")
    path = Path(tempfile.mkdtemp()) / "torch_at_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fastsoftmax._torch_at_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def calls(module, n_rows, n_classes):
    """name -> a zero-argument call of ``module``'s functions at (n_rows, n_classes)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_rows, n_classes, generator=gen)
    t = torch.randint(0, n_classes, (n_rows,), generator=gen)
    leaf = x.clone().requires_grad_()

    def ce_forward_backward():
        module.cross_entropy(leaf, t).backward()

    def softmax_forward_backward():
        module.softmax(leaf, -1).sum().backward()

    def entropy_forward_backward():
        module.entropy(leaf).sum().backward()

    return {"cross_entropy fwd+bwd": ce_forward_backward,
            "cross_entropy no grad": lambda: module.cross_entropy(x, t),
            "softmax fwd+bwd": softmax_forward_backward,
            "entropy fwd+bwd": entropy_forward_backward}


def mean_per_call(call, number):
    start = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - start) / number


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="git commit or branch of the other torch layer")
    parser.add_argument("--shape", default="8x10", help="rows x classes (default 8x10)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--number", type=int, default=200, help="calls per timing")
    parser.add_argument("--threads", type=int, default=1,
                        help="fastsoftmax and torch threads (default 1: a tiny call on a "
                             "thread pool measures the pool's wake-up, not the torch layer)")
    args = parser.parse_args(argv)
    fastsoftmax.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    n_rows, n_classes = map(int, args.shape.split("x"))
    other = load_torch_layer(args.ref)
    ours, theirs = calls(current, n_rows, n_classes), calls(other, n_rows, n_classes)
    print(f"shape {args.shape}, torch {torch.__version__}, backend {fastsoftmax.get_backend()}, "
          f"{args.threads} threads; "
          f"us per call: median over {args.repeats} interleaved timings of the mean of "
          f"{args.number} calls")
    print(f"{'call':24} {'this checkout':>14} {args.ref:>14} {'ratio':>7}")
    for name in ours:
        for call in (ours[name], theirs[name]):
            mean_per_call(call, args.number)  # warm-up (first-call JIT, caches)
        times = {"ours": [], "theirs": []}
        for _ in range(args.repeats):
            times["ours"].append(mean_per_call(ours[name], args.number))
            times["theirs"].append(mean_per_call(theirs[name], args.number))
        a, b = (statistics.median(times[k]) * 1e6 for k in ("ours", "theirs"))
        print(f"{name:24} {a:14.1f} {b:14.1f} {a / b:7.2f}")


if __name__ == "__main__":
    main()
