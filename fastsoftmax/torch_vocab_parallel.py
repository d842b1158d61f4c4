"""PyTorch vocab-parallel cross-entropy over ``torch.distributed`` (CPU, gloo).

Each rank of a process group holds the logits of a contiguous slice of the classes;
:func:`vocab_parallel_cross_entropy` gives every rank the loss of
``F.cross_entropy`` on the gathered logits, and autograd gives each rank the gradient
of its own slice. The three phases are :mod:`fastsoftmax.vocab_parallel`'s; the two
all-reduces between them (MAX, then one SUM of O(rows) float64 values) go through
``torch.distributed.all_reduce`` on the group. The forward pass computes the gradient
shard, so the backward pass has no collective: it only scales the shard by
``grad_output``. Re-exported by :mod:`fastsoftmax.torch`.
"""
import numpy as np
import torch
import torch.distributed as dist

from . import vocab_parallel
from ._torch_tensors import check_tensor, to_numpy, to_tensor

__all__ = ["vocab_parallel_cross_entropy", "TorchCommunicator"]


class TorchCommunicator:
    """The communicator of :mod:`fastsoftmax.vocab_parallel` over ``torch.distributed``:
    each reduction is one ``all_reduce`` of the NumPy array's memory (no copy).

    Parameters
    ----------
    group : ProcessGroup, optional
        The group of ranks that share the classes (default: the world group).
    """

    def __init__(self, group=None):
        self.group = group

    def allreduce_max(self, array):
        """Reduce a 1-D float64 array in place: the elementwise max over the ranks."""
        dist.all_reduce(torch.from_numpy(array), op=dist.ReduceOp.MAX, group=self.group)

    def allreduce_sum(self, array):
        """Reduce a 1-D float64 array in place: the elementwise sum over the ranks."""
        dist.all_reduce(torch.from_numpy(array), op=dist.ReduceOp.SUM, group=self.group)


def _run(input, target, weight, options, inplace):
    """(loss tensor, gradient shard tensor) of this rank, gradient for grad_output 1."""
    loss, grad = vocab_parallel.cross_entropy_with_grad(
        to_numpy(input), to_numpy(target), weight=to_numpy(weight), inplace=inplace, **options)
    return torch.from_numpy(np.array(loss)), input.detach() if inplace else to_tensor(grad)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, options, inplace):
        ctx.reduction = options["reduction"]
        loss, grad = _run(input, target, weight, options, inplace)
        if inplace:  # a saved copy of the old logits now fails autograd's version check
            torch.autograd.graph.increment_version(input)
            ctx.grad_version = input._version
        ctx.inplace, ctx.grad = inplace, grad
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("vocab_parallel_cross_entropy(inplace=True): backward ran a "
                               "second time, but the first one scaled the stored gradient "
                               "(the logits' buffer) in place; use inplace=False to "
                               "backpropagate through the loss more than once")
        scale = grad_loss.unsqueeze(-1) if ctx.reduction == "none" else grad_loss
        if ctx.inplace:
            if grad._version != ctx.grad_version:
                raise RuntimeError("vocab_parallel_cross_entropy(inplace=True): the logits, "
                                   "which hold the gradient, were modified after the loss "
                                   "was computed; use inplace=False, or leave them untouched "
                                   "until backward")
            ctx.grad = None
            return grad.mul_(scale), None, None, None, None
        # a new tensor: the saved one stays valid for another backward (retain_graph); a
        # float32 scale of a 16-bit gradient keeps its dtype
        return (grad * scale).to(grad.dtype), None, None, None, None


def vocab_parallel_cross_entropy(input, target, *, vocab_start, group=None, weight=None,
                                 ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                 inplace=False):
    """``F.cross_entropy`` of logits whose classes are split across the ranks of ``group``.

    Every rank of ``group`` calls it with its own slice of the classes; each gets the
    loss of ``F.cross_entropy`` on the logits gathered along the class dim (the same bits
    on every rank), and its backward pass gives the gradient of its own slice. Two
    ``all_reduce`` calls per forward pass (at most 5 float64 values per row in all, plus
    4), none in the backward pass.

    Parameters
    ----------
    input : torch.Tensor
        This rank's logits, CPU float32, float64, bfloat16 or float16 (16-bit: computed
        in float32, the gradient rounded once, a float32 loss), shape (N, V_local): the
        classes ``[vocab_start, vocab_start + V_local)`` (V_local may be 0; shards of any
        sizes, in rank order).
    target : torch.Tensor
        Global class indices (int64, shape (N,), the same on every rank), or this rank's
        columns of the class probabilities (``input``'s shape and dtype).
    vocab_start : int
        Global id of this rank's first class.
    group : ProcessGroup, optional
        The ranks that share the classes (default: the world group).
    weight : torch.Tensor, optional
        This rank's slice of the class weights, shape (V_local,) (no gradient).
    ignore_index : int, optional
        Default -100.
    reduction : {"mean", "sum", "none"}, optional
        "mean" divides by the summed weight of the non-ignored targets (N for
        probability targets), as torch.
    label_smoothing : float, optional
        In [0, 1], over the global class count (not the shard's).
    inplace : bool, optional
        Store the gradient in ``input``'s buffer (no extra N x V_local memory); its
        autograd version is bumped, so a backward that needs the old logits raises. The
        backward then scales the buffer in place, so it runs once. Not for leaf tensors.

    Returns
    -------
    torch.Tensor
        0-d for "mean"/"sum", (N,) for "none"; input's dtype (float32 for 16-bit).

    Raises
    ------
    ValueError, TypeError, IndexError
        For bad arguments of this rank, before any collective. A target id >= the global
        class count, or shards that do not tile the classes, are found after the
        collectives: then every rank raises.

    Examples
    --------
    Run on every rank (e.g. under ``torchrun --nproc-per-node 2``)::

        logits = hidden @ w_shard.T           # (N, V_local): classes lo..lo+V_local-1
        loss = vocab_parallel_cross_entropy(logits, target, vocab_start=lo)
        loss.backward()                       # w_shard.grad: this rank's rows only
    """
    check_tensor(input, "input")
    check_tensor(target, "target", floating=False)
    if input.dim() != 2:
        raise ValueError(f"input has shape {tuple(input.shape)}; expected (N, V_local): rows, "
                         f"then this rank's classes")
    if target.is_floating_point() and target.requires_grad:
        raise NotImplementedError("vocab_parallel_cross_entropy has no gradient for "
                                  "probability targets; pass target.detach()")
    if weight is not None:
        check_tensor(weight, "weight")
        if weight.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError("vocab_parallel_cross_entropy has no gradient for weight "
                                      "(neither has torch's); pass weight.detach()")
    if inplace and input.requires_grad and input.is_leaf:
        raise ValueError("inplace=True would overwrite a leaf tensor that requires grad; use "
                         "it on the output of a layer (e.g. nn.Linear), or inplace=False")
    options = dict(vocab_start=vocab_start, comm=TorchCommunicator(group),
                   ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing)
    if not (torch.is_grad_enabled() and input.requires_grad):
        return _run(input, target, weight, options, inplace=False)[0]
    return _VocabParallelCrossEntropy.apply(input, target, weight, options, inplace)
