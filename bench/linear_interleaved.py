"""Interleaved timing rounds of the linear_cross_entropy implementations (one process):
gemm-floor, fastsoftmax, fastsoftmax-torch, torch 2.13 chunked, 50%-ignored; median ratios.

    python -m bench.linear_interleaved 4096x1024x32768 3 [--dtype bfloat16]
"""
import argparse
import time

import numpy as np

from bench.implementations import configure_threads
from bench.linear_implementations import implementations, problem


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", help="N x D x V, e.g. 4096x1024x32768")
    parser.add_argument("rounds", type=int, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", help="float32, float64, bfloat16, float16")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    shape = tuple(map(int, args.shape.split("x")))
    impls = implementations()
    calls = {n: impls[n](*problem(*shape, dtype=args.dtype))
             for n in ("gemm-floor", "fastsoftmax", "fastsoftmax-torch", "torch-chunked")}
    calls["fastsoftmax-50%-ignored"] = impls["fastsoftmax"](*problem(*shape, dtype=args.dtype,
                                                                     ignored=0.5))
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for r in range(args.rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
        print("round", r, {k: round(v[-1], 2) for k, v in times.items()}, flush=True)
    floor, chunked, ours = (np.array(times[k])
                            for k in ("gemm-floor", "torch-chunked", "fastsoftmax"))
    for name, values in times.items():
        values = np.array(values)
        print(f"{name}: min {values.min():.2f} s; median ratio to gemm-floor "
              f"{np.median(values / floor):.2f}; torch-chunked / it "
              f"{np.median(chunked / values):.2f}; it / fastsoftmax {np.median(values / ours):.2f}")


if __name__ == "__main__":
    main()
