"""Tensors <-> NumPy arrays for the torch modules (``fastsoftmax.torch`` and its
``torch_*`` submodules): the checks of a tensor argument, the no-copy views, and
whether a backward may hand on a gradient it keeps (gradient_is_consumed).

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


# Autograd nodes that hand on their incoming gradient as a view of it; nodes whose
# backward only reads it (products: new tensors); and products that also add an input
# (addmm, baddbmm), with the dims of their product: an added input of fewer dims was
# broadcast, so its gradient is a sum (a new tensor), while a full-size one gets the
# incoming gradient itself.
_VIEW_NODES = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0",
                         "AliasBackward0", "TransposeBackward0", "TBackward0",
                         "PermuteBackward0", "SqueezeBackward0", "SqueezeBackward1",
                         "UnsqueezeBackward0"})
_PRODUCT_NODES = frozenset({"MmBackward0", "BmmBackward0", "MulBackward0", "DivBackward0",
                            "TanhBackward0"})
_ADDING_PRODUCT_NODES = {"AddmmBackward0": 2, "BaddbmmBackward0": 3}


def gradient_is_consumed(tensor):
    """True when ``tensor`` comes, through views only, from a product (a linear layer's
    matmul with a bias vector or none, a scaling, a tanh cap): its backward reads the
    gradient it gets and keeps nothing of it, so a backward may hand it a gradient it
    keeps for later (the vjps of fastsoftmax.torch, torch_linear). Anything else may pass
    the gradient, or a view of it, on to a leaf's ``.grad`` (a leaf itself,
    ``w.view(...)``, ``w + 0``, ``addmm(c, a, b)`` with a full-size ``c``, an unknown or
    user-written node), which the next backward then accumulates into in place: the kept
    gradient changed (a backward with retain_graph=True after it was wrong or failed
    PyTorch's version check)."""
    node = tensor.grad_fn
    while node is not None and node.name() in _VIEW_NODES:
        sources = [source for source, _ in node.next_functions if source is not None]
        if len(sources) != 1:
            return False
        node = sources[0]
    if node is None:
        return False
    if node.name() in _ADDING_PRODUCT_NODES:
        added = node.next_functions[0][0]
        return added is None or (added.name() == "torch::autograd::AccumulateGrad"
                                 and added.variable.dim() < _ADDING_PRODUCT_NODES[node.name()])
    return node.name() in _PRODUCT_NODES
