"""Interleaved timing rounds of the linear_cross_entropy implementations (one process):
gemm-floor, fastsoftmax, fastsoftmax-torch, torch 2.13 chunked, 50%-ignored; median ratios.

    python -m bench.linear_interleaved 4096x1024x32768 3
"""
import sys
import time

import numpy as np

from bench.implementations import configure_threads
from bench.linear_implementations import implementations, problem
configure_threads(2)
shape = tuple(map(int, sys.argv[1].split("x")))
rounds = int(sys.argv[2])
impls = implementations()
calls = {n: impls[n](*problem(*shape))
         for n in ("gemm-floor", "fastsoftmax", "fastsoftmax-torch", "torch-chunked")}
calls["fastsoftmax-50%-ignored"] = impls["fastsoftmax"](*problem(*shape, ignored=0.5))
for c in calls.values():
    c()
res = {k: [] for k in calls}
for r in range(rounds):
    for k, c in calls.items():
        t0 = time.perf_counter()
        c()
        res[k].append(time.perf_counter() - t0)
    print("round", r, {k: round(v[-1], 2) for k, v in res.items()}, flush=True)
f, tc, fa = (np.array(res[k]) for k in ("gemm-floor", "torch-chunked", "fastsoftmax"))
for k, v in res.items():
    v = np.array(v)
    print(f"{k}: min {v.min():.2f} s; median ratio to gemm-floor {np.median(v/f):.2f}; "
          f"torch-chunked / it {np.median(tc/v):.2f}; it / fastsoftmax {np.median(v/fa):.2f}")
