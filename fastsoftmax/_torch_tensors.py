"""Tensors <-> NumPy arrays for the torch modules (``fastsoftmax.torch`` and its
``torch_*`` submodules): the checks of a tensor argument and the no-copy views.

Kept apart from ``fastsoftmax.torch`` so that the submodules it imports can use them
too without a circular import.
"""
import numpy as np
import torch

from . import _dtypes

FLOAT_DTYPES = (torch.float32, torch.float64)
HALF_DTYPES = (torch.bfloat16, torch.float16)


def check_tensor(x, name, floating=True):
    """A CPU tensor; with ``floating`` a float32, float64, bfloat16 or float16 one."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} is on {x.device}; fastsoftmax runs on the CPU: move it with "
                         f".cpu(), or use torch.nn.functional on {x.device.type}")
    if floating and x.dtype not in FLOAT_DTYPES + HALF_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; this function takes float32, float64, "
                        "bfloat16 and float16 (convert with .float())")


def to_numpy(x):
    """A NumPy view of a CPU tensor (no copy); a bfloat16 one as ml_dtypes.bfloat16;
    None stays None."""
    if x is None:
        return None
    x = x.detach()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(_dtypes.bfloat16())
    return x.numpy()


def to_tensor(a):
    """A tensor sharing a NumPy array's memory (the inverse of :func:`to_numpy`); None
    stays None."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
