"""Vocab-parallel cross-entropy: local compute per rank against the single-process kernel,
and the gloo collectives on 2 ranks, timed separately.

    python -m bench.vocab_parallel 4096x32768 16384x1000 --repeats 7 --threads 1

Local compute: :func:`fastsoftmax.vocab_parallel.cross_entropy_with_grad` (phases 1 + 3
and the O(rows) combine arithmetic) with a communicator that reduces nothing (one rank
holding the whole shard), against ``fs.cross_entropy_with_grad`` at the same shape, in
place and not, in interleaved repeats (the median of the per-repeat ratios is printed).
In-place calls get a fresh copy of the logits before each timed call (not timed).
Collectives: 2 gloo ranks (spawned, loopback, file rendezvous) time the MAX of N + 1 and
the SUM of 3N + 2 float64 values (the payload of index targets without weights or
smoothing) and of 5N + 2 (the largest payload).
"""
import argparse
import os
import tempfile
import time
from datetime import timedelta

import numpy as np

import fastsoftmax as fs
from fastsoftmax import vocab_parallel as vp


class _OneRank:
    """A group of one rank: reductions leave the array as it is."""

    def allreduce_max(self, array):
        pass

    def allreduce_sum(self, array):
        pass


def _local_calls(n_rows, n_classes, inplace):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n_rows, n_classes), dtype=np.float32)
    target = rng.integers(0, n_classes, n_rows)
    scratch = np.empty_like(logits)

    def single():
        x = scratch if inplace else logits
        return fs.cross_entropy_with_grad(x, target, inplace=inplace)

    def vocab_parallel():
        x = scratch if inplace else logits
        return vp.cross_entropy_with_grad(x, target, vocab_start=0, comm=_OneRank(),
                                          inplace=inplace)

    def refresh():
        if inplace:
            np.copyto(scratch, logits)

    return {"cross_entropy_with_grad": single, "vocab_parallel": vocab_parallel}, refresh


def local_ratios(shapes, repeats):
    rows = []
    for n_rows, n_classes in shapes:
        for inplace in (False, True):
            calls, refresh = _local_calls(n_rows, n_classes, inplace)
            for call in calls.values():  # compile and warm up
                refresh()
                call()
            times = {name: [] for name in calls}
            for _ in range(repeats):
                for name, call in calls.items():
                    refresh()
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
            single, ours = (np.array(times[k]) for k in ("cross_entropy_with_grad",
                                                         "vocab_parallel"))
            elements = n_rows * n_classes
            rows.append((f"{n_rows}x{n_classes}", inplace, np.median(single) / elements * 1e9,
                         np.median(ours) / elements * 1e9, np.median(ours / single)))
    return rows


def _collective_rank(rank, store, sizes, repeats, out):
    import torch
    import torch.distributed as dist

    from fastsoftmax.torch_vocab_parallel import TorchCommunicator
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        comm = TorchCommunicator()
        results = []
        for n_rows in sizes:
            for per_row in (3, 5):
                a, b = np.zeros(n_rows + 1), np.zeros(per_row * n_rows + 2)
                samples = []
                for _ in range(repeats + 1):  # the first one warms up
                    dist.barrier()
                    start = time.perf_counter()
                    comm.allreduce_max(a)
                    comm.allreduce_sum(b)
                    samples.append(time.perf_counter() - start)
                results.append((n_rows, per_row, float(np.median(samples[1:]))))
        if rank == 0:
            np.save(out, np.array(results))
    finally:
        dist.destroy_process_group()


def collective_times(sizes, repeats):
    import torch.multiprocessing
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "collectives.npy")
        torch.multiprocessing.start_processes(
            _collective_rank, args=(os.path.join(tmp, "store"), sizes, repeats, out),
            nprocs=2, start_method="spawn")
        return np.load(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="+", help="rows x local classes, e.g. 4096x32768")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="kernel threads (a rank of 2 on 2 cores has 1)")
    args = parser.parse_args(argv)
    fs.set_num_threads(args.threads)
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes]
    print(f"local compute, float32, {args.threads} thread(s), median of {args.repeats} "
          "interleaved repeats")
    print(f"{'shape':>12} {'inplace':>7} {'single ns/elem':>15} {'vocab-par ns/elem':>18} "
          f"{'ratio':>6}")
    for shape, inplace, single, ours, ratio in local_ratios(shapes, args.repeats):
        print(f"{shape:>12} {str(inplace):>7} {single:15.3f} {ours:18.3f} {ratio:6.3f}")
    print("gloo, 2 ranks on this machine: MAX (N + 1) then SUM (k N + 2) float64, "
          "median per forward")
    for n_rows, per_row, seconds in collective_times(sorted({n for n, _ in shapes}),
                                                     args.repeats):
        print(f"  N = {int(n_rows):6d}, k = {int(per_row)}: {seconds * 1e6:9.1f} us")


if __name__ == "__main__":
    main()
