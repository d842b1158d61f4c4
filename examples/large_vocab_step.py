"""One training step of a large-vocabulary output layer: fastsoftmax vs F.cross_entropy.

hidden -> vocab linear layer (no bias), batch rows, mean cross-entropy, backward to
the layer's weight and the hidden states. The matmuls are PyTorch's in every
variant; only the loss differs. Timed in one run, median of --repeat steps.

Run: python examples/large_vocab_step.py [--hidden 512 --vocab 131072 --batch 256]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fastsoftmax.torch as fst

VARIANTS = {
    "F.cross_entropy": F.cross_entropy,
    "fastsoftmax": fst.cross_entropy,
    "fastsoftmax inplace": lambda x, t: fst.cross_entropy(x, t, inplace=True),
}


def step_times(hidden, vocab, batch, repeat, threads):
    """Median seconds of one forward+backward step per variant, and the losses."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    weight = (torch.randn(vocab, hidden) / hidden ** 0.5).requires_grad_()
    h = torch.randn(batch, hidden, requires_grad=True)
    target = torch.randint(0, vocab, (batch,))
    results = {}
    for name, loss_fn in VARIANTS.items():
        times = []
        for _ in range(repeat + 1):  # the first step compiles / warms up
            weight.grad = h.grad = None
            start = time.perf_counter()
            loss = loss_fn(h @ weight.T, target)
            loss.backward()
            times.append(time.perf_counter() - start)
        results[name] = (statistics.median(times[1:]), loss.item(), weight.grad.norm().item())
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    import fastsoftmax
    fastsoftmax.set_num_threads(args.threads)
    results = step_times(args.hidden, args.vocab, args.batch, args.repeat, args.threads)
    base = results["F.cross_entropy"][0]
    print(f"hidden {args.hidden}, vocab {args.vocab}, batch {args.batch}, {args.threads} threads")
    for name, (seconds, loss, grad_norm) in results.items():
        print(f"{name:22s} {seconds * 1e3:8.1f} ms/step  ({base / seconds:4.2f}x)  "
              f"loss {loss:.6f}  |dW| {grad_norm:.6f}")


if __name__ == "__main__":
    main()
