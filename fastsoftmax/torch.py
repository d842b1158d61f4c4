"""PyTorch drop-ins backed by the fastsoftmax kernels (CPU, float32/float64).

``torch`` is imported when this module is imported, never by ``import fastsoftmax``.
Tensors are handed to the kernels without copies when they are contiguous with
classes last; PyTorch's (N, C, d1, ...) layout has classes on dim 1, so such
inputs are copied once with the class dim moved last.

The forward pass of :func:`cross_entropy` runs the fused kernel once and keeps the
gradient; the backward pass only scales it by ``grad_output`` (and returns it
untouched when ``grad_output`` is 1), so the logits are never swept twice.
"""
import torch

from . import api

__all__ = ["cross_entropy", "CrossEntropyLoss", "softmax", "log_softmax", "entropy"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


def _check_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} is on {x.device}; fastsoftmax runs on the CPU: move it with "
                         f".cpu(), or use torch.nn.functional on {x.device.type}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; fastsoftmax supports float32 and float64 "
                        f"(convert with .float())")


def _numpy(x):
    """A NumPy view of a CPU tensor (no copy)."""
    return x.detach().numpy()


def _classes_last(x):
    """PyTorch's class dim (1, or 0 for a 1-D input) moved last, as NumPy."""
    return _numpy(x if x.dim() <= 2 else x.movedim(1, -1))


def _classes_back(grad, like):
    g = torch.from_numpy(grad)
    return g if like.dim() <= 2 else g.movedim(-1, 1)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, label_smoothing, inplace):
        x = _classes_last(logits)
        t = target.detach()
        t = _classes_last(t) if t.is_floating_point() else t.numpy()
        w = None if weight is None else _numpy(weight)
        options = dict(weight=w, ignore_index=ignore_index, reduction=reduction,
                       label_smoothing=label_smoothing)
        ctx.reduction = reduction
        ctx.class_dim = 1 if logits.dim() > 1 else 0
        ctx.grad = ctx.target_grad = None
        if ctx.needs_input_grad[1]:
            # a probability target that is learnt: d loss / d t = -(1 - eps) w log_softmax(x)
            # (per row; divided by the row count for "mean"), computed before any in-place
            # write can overwrite the logits
            scale = (1.0 - label_smoothing) / (t.size // t.shape[-1] if reduction == "mean"
                                               else 1.0)
            logp = api.log_softmax(x)
            target_grad = logp * -scale if w is None else logp * (w * -scale)
            ctx.target_grad = _classes_back(target_grad, logits)
        if not ctx.needs_input_grad[0]:
            return torch.as_tensor(api.cross_entropy(x, t, **options))
        write_in_place = inplace and x.flags.c_contiguous
        loss, grad = api.cross_entropy_with_grad(x, t, inplace=write_in_place, **options)
        if write_in_place:
            # The logits now hold the gradient: bump their version so autograd refuses
            # any later backward that needs the old values.
            torch.autograd.graph.increment_version(logits)
        ctx.grad = _classes_back(grad, logits)
        return torch.as_tensor(loss)

    @staticmethod
    def backward(ctx, grad_output):
        grads = []
        for grad in (ctx.grad, ctx.target_grad):
            if grad is not None:
                if ctx.reduction == "none":
                    grad = grad * grad_output.unsqueeze(ctx.class_dim).to(grad.dtype)
                elif grad_output.item() != 1.0:
                    grad = grad * grad_output.to(grad.dtype)
            grads.append(grad)
        return (*grads, None, None, None, None, None)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, inplace=False):
    """Cross-entropy with ``torch.nn.functional.cross_entropy``'s signature and semantics.

    Parameters
    ----------
    input : torch.Tensor
        Logits, CPU float32/float64, shape (C,), (N, C) or (N, C, d1, ...).
    target : torch.Tensor
        Class indices (int64, shape without the C dim) or class probabilities
        (same shape as ``input``).
    weight : torch.Tensor, optional
        Per-class weights, shape (C,).
    ignore_index : int, optional
        Index target that contributes nothing (default -100).
    reduction : {"mean", "sum", "none"}, optional
    label_smoothing : float, optional
        In [0, 1].
    inplace : bool, optional
        Store the gradient in ``input``'s buffer instead of a new tensor (no extra
        N x C memory). ``input`` then holds the gradient and its autograd version
        is bumped, so a backward pass that still needs the old logits raises
        PyTorch's "modified by an inplace operation" error instead of silently
        using wrong values. Safe when ``input`` is the output of a layer whose
        backward does not need it (``nn.Linear``, matmul) and nothing reads the
        logits after the loss (compute accuracy before). Not allowed for leaf
        tensors. Ignored (nothing is written) when no gradient is required, and
        for layouts that need a copy ((N, C, d1, ...) or non-contiguous input).

    Returns
    -------
    torch.Tensor
        The loss: 0-d for "mean"/"sum", the target's index shape for "none".
    """
    _check_tensor(input, "input")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device.type != "cpu":
        raise ValueError(f"target is on {target.device}; move it with .cpu()")
    if weight is not None:
        _check_tensor(weight, "weight")
    if inplace and input.requires_grad and input.is_leaf:
        raise ValueError("inplace=True would overwrite a leaf tensor that requires grad; "
                         "use it on the output of a layer (e.g. nn.Linear), or inplace=False")
    if torch.is_grad_enabled() and (input.requires_grad or target.requires_grad):
        return _CrossEntropy.apply(input, target, weight, ignore_index, reduction,
                                   label_smoothing, inplace)
    with torch.no_grad():
        return _CrossEntropy.apply(input, target, weight, ignore_index, reduction,
                                   label_smoothing, False)


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` backed by :func:`cross_entropy`.

    Parameters
    ----------
    weight : torch.Tensor, optional
    ignore_index : int, optional
    reduction : {"mean", "sum", "none"}, optional
    label_smoothing : float, optional
    inplace : bool, optional
        See :func:`cross_entropy`.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                 inplace=False):
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.inplace = inplace

    def forward(self, input, target):
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                             self.label_smoothing, self.inplace)


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, log):
        out = (api.log_softmax if log else api.softmax)(_numpy(x), dim)
        y = torch.from_numpy(out)
        ctx.save_for_backward(y)
        ctx.dim, ctx.log = dim, log
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        backward = api.log_softmax_backward if ctx.log else api.softmax_backward
        dx = backward(_numpy(y), _numpy(grad_output.to(y.dtype)), ctx.dim)
        return torch.from_numpy(dx), None, None


def _softmax_doc(name, formula):
    return f"""{name} along ``dim`` ({formula}), autograd-aware.

    Parameters
    ----------
    x : torch.Tensor
        CPU float32/float64 tensor.
    dim : int
        The class dimension.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.
    """


def softmax(x, dim):
    _check_tensor(x, "x")
    return _Softmax.apply(x, dim, False)


def log_softmax(x, dim):
    _check_tensor(x, "x")
    return _Softmax.apply(x, dim, True)


softmax.__doc__ = _softmax_doc("Softmax", "exp(x - max) / sum(exp(x - max))")
log_softmax.__doc__ = _softmax_doc("Log-softmax", "x - logsumexp(x)")


class _Entropy(torch.autograd.Function):
    """The forward pass runs entropy_with_grad once and keeps the gradient (classes last);
    the backward pass scales it by grad_output."""

    @staticmethod
    def forward(ctx, logits):
        x = _numpy(logits)
        if not ctx.needs_input_grad[0]:
            return torch.from_numpy(api.entropy(x))
        h, grad = api.entropy_with_grad(x)
        ctx.grad = torch.from_numpy(grad)
        return torch.from_numpy(h)

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.grad * grad_output.unsqueeze(-1).to(ctx.grad.dtype)


def entropy(logits):
    """Entropy of ``softmax(logits)`` over the last dim, autograd-aware.

    The values are ``torch.distributions.Categorical(logits=logits).entropy()``: a -inf
    logit adds 0, a row holding NaN or +inf, or only -inf, gives NaN. With a gradient
    required, the forward pass computes the gradient too (one sweep over the logits,
    no probabilities kept) and the backward pass only scales it.

    Parameters
    ----------
    logits : torch.Tensor
        CPU float32/float64 tensor, classes on the last dim.

    Returns
    -------
    torch.Tensor
        ``logits.shape[:-1]``, same dtype.
    """
    _check_tensor(logits, "logits")
    if logits.dim() == 0:
        raise ValueError("logits must have at least one dimension (classes last), got a 0-d "
                         "tensor")
    return _Entropy.apply(logits)

from .torch_linear import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402
__all__ += ["linear_cross_entropy", "LinearCrossEntropyLoss"]
