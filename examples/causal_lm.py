"""A small causal LM trained on CPU, its output layer's loss computed two ways from the same
initial weights and data: F.cross_entropy(F.linear(h, W, b), t) and
fastsoftmax.torch.linear_cross_entropy(h, W, t, linear_bias=b), which never holds the
tokens x vocab logits. Prints both loss curves, the median step time and the peak memory of
each (Linux: /proc/self/status); each variant trains in a fresh process, so its peak is its
own.

Model: token and position embeddings, pre-norm transformer layers (4 heads, no dropout), a
final LayerNorm and the output projection with a bias; AdamW. Data: a seeded stream of fixed
random phrases (16 tokens each) in random order, cut into rows at random offsets. Inside a
phrase the context determines the next token; at a phrase boundary it is one of `phrases`,
so the loss falls from log(vocab) towards log(phrases) / 16 nats per token. The curves agree
to fp32 rounding at first; AdamW amplifies those ulps, so the gap grows slowly with steps.

The two runs are timed one after the other. On a machine shared with other work, set
OMP_WAIT_POLICY=passive (both runs inherit it): spinning OpenMP threads otherwise slow both
(measured here with 3 jobs on 2 cores: 1.07 s -> 0.47 s per torch step).

Run: python examples/causal_lm.py [--steps 100 --batch 16 --seq 128 --vocab 16384 --hidden 64]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastsoftmax
import fastsoftmax.torch as fst

PHRASE_LENGTH = 16
HEADS = 4

LOSSES = {
    "torch": lambda h, w, b, t: F.cross_entropy(F.linear(h, w, b).flatten(0, -2), t.flatten()),
    "fastsoftmax": lambda h, w, b, t: fst.linear_cross_entropy(h, w, t, linear_bias=b),
}


class TinyLM(torch.nn.Module):
    """Embeddings and causal transformer layers; the output layer is ``self.head``, applied
    by the loss."""

    def __init__(self, vocab, hidden, seq, layers):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, hidden)
        self.positions = torch.nn.Embedding(seq, hidden)
        layer = torch.nn.TransformerEncoderLayer(hidden, HEADS, 4 * hidden, dropout=0.0,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, vocab)
        self.register_buffer("causal", torch.nn.Transformer.generate_square_subsequent_mask(seq),
                             persistent=False)

    def features(self, tokens):
        """Hidden states (batch, seq, hidden) that predict the token after each position."""
        x = self.tokens(tokens) + self.positions.weight[:tokens.shape[1]]
        return self.norm(self.blocks(x, mask=self.causal, is_causal=True))


def batches(vocab, phrases, batch, seq, seed):
    """Endless (input, target) token batches of shape (batch, seq) from one seeded stream."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, vocab, (phrases, PHRASE_LENGTH))
    per_row = (seq + 1) // PHRASE_LENGTH + 2
    while True:
        rows = table[rng.integers(0, phrases, (batch, per_row))].reshape(batch, -1)
        offsets = rng.integers(0, PHRASE_LENGTH, (batch, 1))
        window = torch.from_numpy(np.take_along_axis(rows, offsets + np.arange(seq + 1), 1))
        yield window[:, :-1], window[:, 1:]


def train(loss_kind, steps=100, batch=16, seq=128, vocab=16384, hidden=64, layers=1,
          phrases=256, lr=1e-2, seed=0, after_first_step=None):
    """Train from a fixed seed with the output layer's loss `loss_kind` (a key of LOSSES).

    Returns the loss of every step and the seconds of every step (forward, loss, backward
    and optimiser update). The result depends only on the arguments and the thread count.
    `after_first_step`, if given, is called once the first step (one-time allocations:
    gradients, optimiser state, thread pools, lazily loaded libraries) is done.
    """
    loss_fn = LOSSES[loss_kind]
    torch.manual_seed(seed)
    model = TinyLM(vocab, hidden, seq, layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    data = batches(vocab, phrases, batch, seq, seed)
    losses, seconds = [], []
    for step in range(steps):
        if step == 1 and after_first_step is not None:
            after_first_step()
        tokens, targets = next(data)
        start = time.perf_counter()
        loss = loss_fn(model.features(tokens), model.head.weight, model.head.bias, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    return losses, seconds


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} is not in /proc/self/status")


def _reset_peak_rss():
    """Reset the peak resident set (VmHWM) to the current one; return the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _train_in_fresh_process(kind, sizes, threads):
    """train(kind, **sizes) in a new interpreter: its curve, step times and peak memory."""
    command = [sys.executable, os.path.abspath(__file__), "--child", kind,
               "--threads", str(threads), *(f"--{k}={v}" for k, v in sizes.items())]
    # the child imports the fastsoftmax this process runs (a worktree or an install)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastsoftmax.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    run = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"training with {kind} failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _child(kind, sizes):
    """Train; print the curve, the step times and the peak resident set of steps 2.. above
    the resident set after step 1 (Linux: /proc/self/status)."""
    baseline = []
    losses, seconds = train(kind, **sizes, after_first_step=lambda: baseline.append(
        _reset_peak_rss()))
    peak = _status_bytes("VmHWM")
    print(json.dumps(dict(losses=losses, seconds=seconds, peak=peak,
                          growth=peak - baseline[0])))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--every", type=int, help="print the curves every k steps")
    parser.add_argument("--child", choices=LOSSES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps must be at least 2 (step 1 is the warm-up), got {args.steps}")
    sizes = dict(steps=args.steps, batch=args.batch, seq=args.seq, vocab=args.vocab,
                 hidden=args.hidden, layers=args.layers)
    torch.set_num_threads(args.threads)
    fastsoftmax.set_num_threads(args.threads)
    if args.child:
        _child(args.child, sizes)
        return

    runs = {kind: _train_in_fresh_process(kind, sizes, args.threads) for kind in LOSSES}
    ours, theirs = runs["fastsoftmax"], runs["torch"]
    tokens = args.batch * args.seq
    logits_mib = tokens * args.vocab * 4 / 2 ** 20
    print(f"{tokens} tokens/step ({args.batch} x {args.seq}), vocab {args.vocab}, hidden "
          f"{args.hidden}, {args.layers} layer(s), {args.threads} threads; fp32 logits would be "
          f"{logits_mib:.0f} MiB")
    print(f"{'step':>5}  {'F.linear+F.cross_entropy':>24}  {'fst.linear_cross_entropy':>24}  "
          f"{'difference':>10}")
    every = args.every or max(1, args.steps // 10)
    for step in sorted({*range(0, args.steps, every), args.steps - 1}):
        a, b = theirs["losses"][step], ours["losses"][step]
        print(f"{step + 1:5d}  {a:24.6f}  {b:24.6f}  {b - a:10.2e}")
    gap = max(abs(a - b) for a, b in zip(theirs["losses"], ours["losses"]))
    print(f"largest loss difference over {args.steps} steps: {gap:.2e}")
    for name, run in (("F.linear+F.cross_entropy", theirs), ("fst.linear_cross_entropy", ours)):
        median = statistics.median(run["seconds"][1:])  # step 1 pays one-time setup
        print(f"{name:24s}  median step {median * 1e3:7.1f} ms  "
              f"(x{median / statistics.median(theirs['seconds'][1:]):.2f})  peak RSS "
              f"{run['peak'] / 2 ** 20:6.0f} MiB, {run['growth'] / 2 ** 20:5.0f} MiB above the "
              f"resident set after step 1")


if __name__ == "__main__":
    main()
