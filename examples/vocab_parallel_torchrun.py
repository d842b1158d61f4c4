"""A softmax classifier whose output layer is split by class across processes.

Each rank owns a contiguous slice of the classes: the rows ``[lo, hi)`` of the weight
matrix (uneven slices: 1001 classes are 500 + 501 on 2 ranks). Each step a rank computes
its slice of the logits, ``fastsoftmax.torch.vocab_parallel_cross_entropy`` combines
the ranks' row statistics with two all-reduces (never the logits), and the backward
pass gives each rank the gradient of its own rows. Every rank also trains the same
model unsplit with ``F.cross_entropy`` from the same seed, and rank 0 prints both loss
curves::

    torchrun --standalone --nproc-per-node 2 examples/vocab_parallel_torchrun.py
"""
import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fastsoftmax.torch import vocab_parallel_cross_entropy


def shard_bounds(n_classes, rank, world_size):
    """[lo, hi) of this rank's classes: the first ranks get the smaller shares."""
    base, extra = divmod(n_classes, world_size)
    sizes = [base + (r >= world_size - extra) for r in range(world_size)]
    return sum(sizes[:rank]), sum(sizes[:rank + 1])


def problem(n_classes, features, samples, seed):
    """Inputs, labels from a random linear teacher, and the initial weights."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    teacher = torch.randn(n_classes, features, generator=generator)
    y = (x @ teacher.T + 0.5 * torch.randn(samples, n_classes, generator=generator)).argmax(1)
    w = 0.01 * torch.randn(n_classes, features, generator=generator)
    return x, y, w


def train(rank, world_size, *, n_classes=1001, features=32, samples=256, steps=20, lr=2.0,
          label_smoothing=0.1, seed=0):
    """Train both models on this rank of an initialised process group.

    Returns
    -------
    list of (float, float)
        Per step, the vocab-parallel loss and the unsplit model's loss.
    """
    x, y, w = problem(n_classes, features, samples, seed)
    lo, hi = shard_bounds(n_classes, rank, world_size)
    w_shard = w[lo:hi].clone().requires_grad_()
    w_full = w.clone().requires_grad_()
    curves = []
    for _ in range(steps):
        logits = x @ w_shard.T   # (samples, hi - lo): this rank's classes only
        loss = vocab_parallel_cross_entropy(logits, y, vocab_start=lo, inplace=True,
                                            label_smoothing=label_smoothing)
        loss.backward()
        reference = F.cross_entropy(x @ w_full.T, y, label_smoothing=label_smoothing)
        reference.backward()
        with torch.no_grad():
            for weight in (w_shard, w_full):
                weight -= lr * weight.grad
                weight.grad = None
        curves.append((loss.item(), reference.item()))
    return curves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1001)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    dist.init_process_group("gloo")  # rank, world size and rendezvous from torchrun
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        curves = train(rank, world_size, n_classes=args.classes, steps=args.steps)
        if rank == 0:
            lo, hi = shard_bounds(args.classes, rank, world_size)
            print(f"{world_size} ranks, {args.classes} classes, rank 0 holds [{lo}, {hi})")
            print("step  vocab-parallel  F.cross_entropy")
            for step, (ours, theirs) in enumerate(curves, 1):
                print(f"{step:4d}  {ours:14.6f}  {theirs:15.6f}")
            gap = max(abs(a - b) for a, b in curves)
            print(f"largest loss difference over {len(curves)} steps: {gap:.2e}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
