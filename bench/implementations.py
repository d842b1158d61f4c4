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

MEMORY_FLOOR = "memory-floor"
REFERENCE = "numpy-reference"


def _fastsoftmax_ops(backend):
    def ce_inplace(arrays):
        # The kernel overwrites the logits with the gradient; the next call computes on
        # those values instead, which is the same work (finite values, same shape).
        buffer = np.array(arrays[0])
        return lambda: fs.cross_entropy_with_grad(buffer, arrays[1], inplace=True,
                                                  backend=backend)

    ops = {
        "softmax": lambda a: lambda: fs.softmax(a[0], backend=backend),
        "log_softmax": lambda a: lambda: fs.log_softmax(a[0], backend=backend),
        "logsumexp": lambda a: lambda: fs.logsumexp(a[0], backend=backend),
        "softmax_backward": lambda a: lambda: fs.softmax_backward(a[0], a[1], backend=backend),
        "cross_entropy": lambda a: lambda: fs.cross_entropy(a[0], a[1], backend=backend),
        "cross_entropy_with_grad": lambda a: lambda: fs.cross_entropy_with_grad(
            a[0], a[1], backend=backend),
        "cross_entropy_with_grad_prob": lambda a: lambda: fs.cross_entropy_with_grad(
            a[0], a[1], backend=backend),
    }
    def into_buffer(func):
        # The output allocated once and passed as out=, as a training loop that keeps its
        # buffers does: a fresh N x C result costs its page faults on every call.
        def factory(arrays):
            out = np.empty_like(arrays[0])
            return lambda: func(*arrays, out=out, backend=backend)
        return factory

    variants = {REFERENCE if backend == "numpy" else f"fastsoftmax-{backend}": ops}
    if backend != "numpy":
        variants[f"fastsoftmax-{backend}-inplace"] = {"cross_entropy_with_grad": ce_inplace,
                                                      "cross_entropy_with_grad_prob": ce_inplace}
        variants[f"fastsoftmax-{backend}-out"] = {
            "softmax": into_buffer(fs.softmax), "log_softmax": into_buffer(fs.log_softmax),
            "softmax_backward": into_buffer(fs.softmax_backward)}
    return variants


def _torch_ops(compiled):
    import torch
    import torch.nn.functional as F

    if compiled:  # one compiled graph per shape and dtype: no dynamic-shape kernels, and
        # room in dynamo's cache for every group of the full set (default limit: 8)
        torch._dynamo.config.cache_size_limit = 256
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 256

    def wrap(func):
        return torch.compile(func, dynamic=False) if compiled else func

    def ce_grad(x, t):
        x = x.detach().requires_grad_()
        loss = F.cross_entropy(x, t)
        loss.backward()
        return loss, x.grad

    softmax = wrap(lambda x: torch.softmax(x, -1))
    log_softmax = wrap(lambda x: torch.log_softmax(x, -1))
    logsumexp = wrap(lambda x: torch.logsumexp(x, -1))
    softmax_backward = wrap(lambda y, dy: torch._softmax_backward_data(dy, y, -1, y.dtype))
    cross_entropy = wrap(F.cross_entropy)
    ce_grad = wrap(ce_grad)
    t = torch.from_numpy

    def no_grad(func):
        def run():
            with torch.no_grad():
                return func()
        return run

    return {
        "softmax": lambda a: no_grad(lambda: softmax(t(a[0]))),
        "log_softmax": lambda a: no_grad(lambda: log_softmax(t(a[0]))),
        "logsumexp": lambda a: no_grad(lambda: logsumexp(t(a[0]))),
        "softmax_backward": lambda a: no_grad(lambda: softmax_backward(t(a[0]), t(a[1]))),
        "cross_entropy": lambda a: no_grad(lambda: cross_entropy(t(a[0]), t(a[1]))),
        "cross_entropy_with_grad": lambda a: lambda: ce_grad(t(a[0]), t(a[1])),
        "cross_entropy_with_grad_prob": lambda a: lambda: ce_grad(t(a[0]), t(a[1])),
    }


def _jax_ops():
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # float64 groups stay float64

    def ce_index(x, t):
        logp = jax.nn.log_softmax(x, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, t[:, None], axis=-1))

    def ce_prob(x, p):
        return -jnp.mean(jnp.sum(p * jax.nn.log_softmax(x, axis=-1), axis=-1))

    jitted = {
        "softmax": jax.jit(lambda x: jax.nn.softmax(x, axis=-1)),
        "log_softmax": jax.jit(lambda x: jax.nn.log_softmax(x, axis=-1)),
        "logsumexp": jax.jit(lambda x: jax.nn.logsumexp(x, axis=-1)),
        "softmax_backward": jax.jit(lambda y, dy: y * (dy - jnp.sum(y * dy, -1, keepdims=True))),
        "cross_entropy": jax.jit(ce_index),
        "cross_entropy_with_grad": jax.jit(jax.value_and_grad(ce_index)),
        "cross_entropy_with_grad_prob": jax.jit(jax.value_and_grad(ce_prob)),
    }

    def make(func):
        def factory(arrays):
            device_arrays = [jax.device_put(a) for a in arrays]  # transfer outside the timing
            return lambda: jax.block_until_ready(func(*device_arrays))
        return factory

    return {op: make(func) for op, func in jitted.items()}


@njit(parallel=True, cache=True)
def _stream_copy(src, dst):
    for i in prange(src.size):
        dst[i] = src[i]


def _memory_floor(arrays):
    src = arrays[0].reshape(-1)
    dst = np.empty_like(src)
    return lambda: _stream_copy(src, dst)


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
    if importlib.util.find_spec("jax"):
        impls["jax.jit"] = _jax_ops()
    impls[MEMORY_FLOOR] = {op: _memory_floor for op in _fastsoftmax_ops("numpy")[REFERENCE]}
    return impls


def default_threads():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
