"""Implementations compared in the ``linear_cross_entropy|NxDxV|dtype`` benchmark group and by
``bench.linear_memory``: each is a factory ``(h, weight, target) -> call`` whose call computes
the loss and the gradients with respect to h and weight (forward + backward: a forward-only
timing would flatter the methods that compute gradients in their forward pass).
"""
import importlib.util

import numpy as np

import fastsoftmax as fs
from fastsoftmax import _dtypes

GEMM_FLOOR = "gemm-floor"


def problem(n, d, v, dtype="float32", ignored=0.0, seed=0):
    """h (n, d), weight (v, d) and n targets (a fraction ``ignored`` set to -100), read-only;
    ``dtype`` a bench dtype name (bfloat16: ml_dtypes')."""
    rng = np.random.default_rng(seed)
    dtype = _dtypes.bfloat16() if dtype == "bfloat16" else np.dtype(dtype)
    h = rng.standard_normal((n, d)).astype(dtype)
    weight = (rng.standard_normal((v, d)) / np.sqrt(d)).astype(dtype)
    target = rng.integers(0, v, n)
    target[rng.permutation(n)[:int(n * ignored)]] = -100
    for array in (h, weight, target):
        array.flags.writeable = False
    return h, weight, target


def _fastsoftmax(h, weight, target):
    return lambda: fs.linear_cross_entropy_with_grad(h, weight, target, need=("h", "weight"))


def _gemm_floor(h, weight, target):
    """The three GEMMs of the op on the whole arrays: h W^T into a kept logits buffer,
    then G W and G^T h with G the logits themselves, each into a new array as the op
    returns its gradients (a kept output was not paid for at its first write, which every
    implementation here pays: 0.3 s of 4.5 at 16384 x 512 x 32768 on the Xeon VM). No
    loss, no chunking. NumPy's BLAS; torch's for 16-bit arrays, which NumPy's has no GEMM
    for (the floor of the torch path then)."""
    if _dtypes.is_half(h.dtype):
        import torch

        from fastsoftmax._torch_tensors import to_tensor
        h, weight = to_tensor(h).clone(), to_tensor(weight).clone()
        matmul = torch.mm
        logits = torch.empty((h.shape[0], weight.shape[0]), dtype=h.dtype)
    else:
        matmul = np.matmul
        logits = np.empty((h.shape[0], weight.shape[0]), h.dtype)

    def call():
        matmul(h, weight.T, out=logits)
        return matmul(logits, weight), matmul(logits.T, h)
    return call


def _torch_factory(kind):
    def factory(h, weight, target):
        import torch
        import torch.nn.functional as F

        import fastsoftmax.torch as fst
        from fastsoftmax._torch_tensors import to_tensor
        # torch-allocated (64-byte aligned), as a torch caller's tensors are
        th = to_tensor(h).clone().requires_grad_()
        tw = to_tensor(weight).clone().requires_grad_()
        tt = torch.from_numpy(target.copy())

        def loss():
            if kind == "unfused":
                return F.cross_entropy(F.linear(th, tw), tt)
            if kind == "chunked":
                return F.linear_cross_entropy(th, tw, tt,
                                              options=torch.nn.LinearCrossEntropyOptions())
            return fst.linear_cross_entropy(th, tw, tt)
        return lambda: torch.autograd.grad(loss(), [th, tw])
    return factory


def implementations():
    """name -> factory, for what is installed, in report order."""
    impls = {"fastsoftmax": _fastsoftmax, GEMM_FLOOR: _gemm_floor}
    if importlib.util.find_spec("torch"):
        import torch.nn.functional as F
        impls["fastsoftmax-torch"] = _torch_factory("fastsoftmax")
        impls["torch"] = _torch_factory("unfused")
        if hasattr(F, "linear_cross_entropy"):
            impls["torch-chunked"] = _torch_factory("chunked")
    return impls
