"""Every implementation a benchmark group compares, generated from what is installed.

Each entry maps an op to a factory ``make(arrays) -> zero-argument callable`` that
computes the same thing as fastsoftmax (same loss, gradient w.r.t. the logits).
fastsoftmax backends come from ``fastsoftmax.available_backends()``; peers are added
only when their package imports. Threads: fastsoftmax and torch are set to the same
count (``configure_threads``); jax.jit uses XLA's CPU pool, which has one thread per
core, so with the default (all cores) every implementation uses the same number.
"""
import importlib.util
import os

import numpy as np
from numba import njit, prange

import fastsoftmax as fs
from bench import cases as cases_module
from fastsoftmax import _dtypes

MEMORY_FLOOR = "memory-floor"
REFERENCE = "numpy-reference"


def _fastsoftmax_ops(backend):
    def call(op):
        return lambda a: lambda: getattr(fs, op.name)(*a, backend=backend)

    def in_place(op):
        def factory(arrays):
            # The kernel overwrites the logits with the gradient; the next call computes on
            # those values instead, which is the same work (finite values, same shape).
            buffer = np.array(arrays[0])
            return lambda: getattr(fs, op.name)(buffer, *arrays[1:], inplace=True,
                                                backend=backend)
        return factory

    def into_buffer(op):
        # The output allocated once and passed as out=, as a training loop that keeps its
        # buffers does: a fresh N x C result costs its page faults on every call.
        def factory(arrays):
            out = np.empty_like(arrays[0])
            return lambda: getattr(fs, op.name)(*arrays, out=out, backend=backend)
        return factory

    cases = cases_module.CASES.items()
    name = REFERENCE if backend == "numpy" else f"fastsoftmax-{backend}"
    variants = {name: {case: call(op) for case, (op, _) in cases}}
    if backend != "numpy":
        variants[f"{name}-inplace"] = {case: in_place(op) for case, (op, _) in cases
                                       if op.inplace}
        variants[f"{name}-out"] = {case: into_buffer(op) for case, (op, _) in cases if op.out}
    return variants


def _torch_ops(compiled, through_fastsoftmax=False):
    """torch (eager or compiled) on each op of the table; through_fastsoftmax: the ops'
    fastsoftmax.torch equivalents (``Op.torch_layer``) instead of torch's own."""
    import torch

    if through_fastsoftmax:
        import fastsoftmax.torch as module
        pick = "torch_layer"
    else:
        module, pick = torch, "torch"

    if compiled:  # one compiled graph per shape and dtype: no dynamic-shape kernels, and
        # room in dynamo's cache for every group of the full set (default limit: 8)
        torch._dynamo.config.cache_size_limit = 256
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 256

    def make(op):
        def run(*tensors):
            return getattr(op, pick)(module, *tensors)
        func = torch.compile(run, dynamic=False) if compiled else run

        def factory(arrays):
            tensors = [_torch_tensor(torch, a) for a in arrays]
            if op.grad_of is not None:  # autograd inside
                return lambda: func(*tensors)

            def no_grad():
                with torch.no_grad():
                    return func(*tensors)
            return no_grad
        return factory

    return {case: make(op) for case, (op, _) in cases_module.CASES.items()
            if getattr(op, pick) is not None}


def _torch_tensor(torch, a):
    """A tensor sharing a NumPy array's memory; ml_dtypes' bfloat16 as torch.bfloat16."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _jax_ops():
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # float64 groups stay float64

    def make(op):
        func = jax.jit(lambda *arrays: op.jax(jax, jnp, *arrays))

        def factory(arrays):
            device_arrays = [jax.device_put(a) for a in arrays]  # transfer outside the timing
            return lambda: jax.block_until_ready(func(*device_arrays))
        return factory

    return {case: make(op) for case, (op, _) in cases_module.CASES.items()
            if op.jax is not None}


@njit(parallel=True, cache=True)
def _stream_copy(src, dst):
    for i in prange(src.size):
        dst[i] = src[i]


@njit(parallel=True, cache=True)
def _stream_add(a, b, dst):
    for i in prange(a.size):
        dst[i] = a[i] + b[i]


@njit(parallel=True, cache=True)
def _stream_read_two(a, b):
    total = 0.0
    for i in prange(a.size):
        total += a[i] + b[i]
    return total


def _memory_floor(reads, writes):
    """A factory: the time to stream the bytes an op must move at the least, ``reads``
    and ``writes`` arrays of the logits' size (the op's ``floor``); the first inputs."""
    kernels = {(1, 1): lambda a, dst: _stream_copy(a[0], dst),
               (2, 1): lambda a, dst: _stream_add(a[0], a[1], dst),
               (2, 0): lambda a, dst: _stream_read_two(a[0], a[1])}
    kernel = kernels[(reads, writes)]

    def factory(arrays):
        # 16-bit floats as their bits (Numba has no 16-bit float): the same bytes to move
        inputs = [_dtypes.kernel_view(a.reshape(-1)) for a in arrays[:reads]]
        dst = np.empty_like(inputs[0])
        return lambda: kernel(inputs, dst)
    return factory


def configure_threads(n):
    """Give fastsoftmax and torch ``n`` threads."""
    fs.set_num_threads(n)
    if importlib.util.find_spec("torch"):
        import torch
        torch.set_num_threads(n)


def implementations():
    """name -> {op: factory}, for everything installed, in report order."""
    impls = {}
    for backend in fs.available_backends():
        impls.update(_fastsoftmax_ops(backend))
    if importlib.util.find_spec("torch"):
        impls["torch"] = _torch_ops(compiled=False)
        impls["torch.compile"] = _torch_ops(compiled=True)
        impls["fastsoftmax.torch.compile"] = _torch_ops(compiled=True, through_fastsoftmax=True)
    if importlib.util.find_spec("jax"):
        impls["jax.jit"] = _jax_ops()
    impls[MEMORY_FLOOR] = {case: _memory_floor(*op.floor)
                           for case, (op, _) in cases_module.CASES.items()}
    return impls


def default_threads():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
