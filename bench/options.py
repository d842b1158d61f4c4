"""Cross-entropy options (z-loss, soft-capping) against their torch equivalents, one process.

    python -m bench.options --shape 16777x1000 --shape 128x131072 --repeats 11

For each shape and option, the calls of every implementation are interleaved, and the
report is the median ns per logit element of each and its ratio to the memory floor
(``bench.implementations``' copy of the logits, the floor of the benchmark suite):

* ``fastsoftmax-<backend>``: ``cross_entropy_with_grad(..., inplace=True)`` on a copy
  of the logits refreshed outside the timing, as a trainer calls it;
* ``torch`` and ``torch.compile``: the composed loss, ``F.cross_entropy`` of
  ``softcap * tanh(x / softcap)`` plus ``z_loss * logsumexp**2`` averaged over the rows,
  and its backward pass into a kept ``.grad``.

float32, all threads as ``--threads`` says (default 2).
"""
import argparse
import statistics
import time

import numpy as np

import fastsoftmax as fs
from bench import implementations

OPTIONS = {"plain": {}, "z_loss=1e-4": {"z_loss": 1e-4}, "softcap=30": {"softcap": 30.0},
           "softcap=30 z_loss=1e-4": {"softcap": 30.0, "z_loss": 1e-4}}


def _fastsoftmax_call(backend, x, target, options):
    buffer = np.empty_like(x)

    def call():
        fs.cross_entropy_with_grad(buffer, target, inplace=True, backend=backend, **options)

    def refresh():
        np.copyto(buffer, x)
    return call, refresh


def _torch_loss(torch, softcap=None, z_loss=0.0):
    def loss(x, target):
        logits = softcap * torch.tanh(x / softcap) if softcap else x
        value = torch.nn.functional.cross_entropy(logits, target)
        if z_loss:
            value = value + z_loss * (torch.logsumexp(logits, -1) ** 2).mean()
        return value
    return loss


def _torch_call(torch, x, target, options, compiled):
    leaf = torch.from_numpy(x).requires_grad_()
    t = torch.from_numpy(target)
    loss = _torch_loss(torch, **options)
    if compiled:
        loss = torch.compile(loss, dynamic=False)

    def call():
        loss(leaf, t).backward()

    def refresh():
        leaf.grad = None
    return call, refresh


def calls(x, target, options):
    """name -> (timed call, untimed refresh before it)."""
    import torch
    result = {f"fastsoftmax-{b}": _fastsoftmax_call(b, x, target, options)
              for b in fs.available_backends() if b != "numpy"}
    result["torch"] = _torch_call(torch, x, target, options, compiled=False)
    result["torch.compile"] = _torch_call(torch, x, target, options, compiled=True)
    floor = implementations._memory_floor(1, 1)([x])  # one read, one write: the copy
    result["memory-floor"] = (floor, lambda: None)
    return result


def measure(shape, options, repeats):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    target = rng.integers(0, shape[1], shape[0])
    named = calls(x, target, options)
    times = {name: [] for name in named}
    for call, refresh in named.values():  # warm up: compile, first touch
        refresh()
        call()
    for _ in range(repeats):
        for name, (call, refresh) in named.items():
            refresh()
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) / x.size * 1e9 for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", default=None,
                        help="ROWSxCLASSES (repeatable; default 16777x1000 and 128x131072)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    implementations.configure_threads(args.threads)
    for text in args.shape or ["16777x1000", "128x131072"]:
        shape = tuple(int(v) for v in text.split("x"))
        for label, options in OPTIONS.items():
            ns = measure(shape, options, args.repeats)
            floor = ns["memory-floor"]
            print(f"{text} {label}")
            for name, value in ns.items():
                print(f"  {name:22s} {value:7.3f} ns/elem  {value / floor:5.2f}x floor")


if __name__ == "__main__":
    main()
