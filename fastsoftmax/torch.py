"""PyTorch drop-ins backed by the fastsoftmax kernels (CPU; float32, float64, and bfloat16 /
float16 computed in float32, with float32 losses).

``torch`` is imported when this module is imported, never by ``import fastsoftmax``.
Importing it registers the ops ``torch.ops.fastsoftmax.*`` with ``torch.library``:
``softmax``, ``log_softmax``, their ``*_backward``, ``cross_entropy``,
``cross_entropy_`` (in place), ``entropy``, ``kl_div``, ``binary_cross_entropy_with_logits``,
``jsd_logits``, ``sigmoid`` and ``log_sigmoid``. Each has a CPU kernel that hands the
tensors' memory to the NumPy kernels (no copy when the class dim is contiguous), a
fake kernel for ``torch.compile`` and, for the functional ones, an autograd formula, so
``torch.compile(..., fullgraph=True)`` sees each op as one opaque graph node.

The forward pass of :func:`cross_entropy` runs the fused kernel once and keeps the
gradient; the backward pass only scales it by ``grad_output`` (in eager mode it
returns it untouched when ``grad_output`` is 1), so the logits are never swept twice.

The backend is an argument of every op: the empty string means the current choice
(:func:`fastsoftmax.set_backend`, :func:`fastsoftmax.use_backend`), read when the
kernel runs, outside any traced region.
"""
from typing import Optional

import numpy as np
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _backends, _validate, api
# the tensor checks and views shared with the torch_* submodules
from ._torch_tensors import HALF_DTYPES as _HALF_DTYPES
from ._torch_tensors import check_tensor as _check_tensor
from ._torch_tensors import gradient_is_consumed as _gradient_is_consumed
from ._torch_tensors import to_numpy as _numpy
from ._torch_tensors import to_tensor as _tensor

__all__ = ["cross_entropy", "CrossEntropyLoss", "softmax", "log_softmax", "entropy"]

_CURRENT_BACKEND = ""  # the op argument for "the backend fastsoftmax would pick now"


def _backend_argument(backend):
    """The op's backend string: a checked name, or "" for the current choice (not read
    here: a ContextVar read inside a traced region breaks the graph)."""
    if backend is None:
        return _CURRENT_BACKEND
    return _backends._check_name(backend, "backend=")


def _kernel_backend(backend):
    return backend or None


def _loss_dtype(input):
    """The dtype of a loss of ``input``: float32 for 16-bit inputs (_dtypes.compute_dtype)."""
    return torch.float32 if input.dtype in _HALF_DTYPES else input.dtype


def _class_dim(x):
    """PyTorch's class dim: 1, or 0 for an input without a batch dim."""
    return 1 if x.dim() > 1 else 0


def _classes_last(x):
    """``x`` (or a view) with PyTorch's class dim moved last."""
    return x if x.dim() <= 2 else x.movedim(1, -1)


def _classes_back(x, like):
    """Undo :func:`_classes_last` on a result of ``like``'s shape with classes last."""
    return x if like.dim() <= 2 else x.movedim(-1, 1)


def _loss_tensor(loss):
    return torch.from_numpy(np.array(loss))


def _is_plain_eager(t):
    """True when ``t`` is a real tensor outside any tracer (dynamo, AOT, make_fx, fake
    tensors), where reading its value is allowed."""
    return (not torch.compiler.is_compiling() and type(t) is torch.Tensor
            and _get_current_dispatch_mode() is None)


def _scaled(grad, scale, may_return_grad):
    """``grad * scale``; in eager mode ``grad`` itself when the scale is the number 1 (a
    sweep over the (rows, classes) gradient saved, e.g. 0.1 s at 4096 x 32768) and
    ``may_return_grad`` (the input's gradient_is_consumed)."""
    if may_return_grad and scale.dim() == 0 and _is_plain_eager(scale) and scale.item() == 1.0:
        return grad
    return (grad * scale).to(grad.dtype)  # a float32 scale of a 16-bit gradient


def _first_order_only(name, grad_output):
    """The vjps below are first-order: the saved gradient is a constant to them, so a
    backward through their result (create_graph=True: a gradient penalty, a Hessian-vector
    product) would silently miss the second-derivative term. Raise instead, in eager mode
    (AOT autograd traces the backward with create_graph=True, on tensors that are not
    plain, and never differentiates it again)."""
    if torch.is_grad_enabled() and grad_output is not None and _is_plain_eager(grad_output):
        raise RuntimeError(f"fastsoftmax.torch.{name} has no second derivative, so its "
                           "backward cannot run with create_graph=True; use "
                           f"torch.nn.functional's {name} where you need one")


def _register_autograd(name, op, vjp, setup_context):
    """Register ``vjp`` as ``op``'s autograd formula, and return a function calling ``op``
    with it: in eager mode through a plain autograd.Function with the same formula (the
    custom op's generated autograd wrapper cost 25 us more per call at 8 x 10), under
    ``torch.compile`` and without gradients the op itself."""
    op.register_autograd(vjp, setup_context=setup_context)
    overload = getattr(torch.ops.fastsoftmax, name).default

    class EagerAutograd(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with torch._C._AutoDispatchBelowAutograd():  # the autograd is this Function
                output = overload(*args)
            setup_context(ctx, args, output)
            return output

        backward = staticmethod(vjp)

    def call(*args):
        if torch.compiler.is_compiling() or not (
                torch.is_grad_enabled()
                and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
            return overload(*args)
        return EagerAutograd.apply(*args)
    return call


# --------------------------------------------------------------------------- softmax

def _rows_kernel(function, inputs, dim, backend):
    """Run a same-shape rows op of :mod:`fastsoftmax.api` into a new tensor laid out like
    ``inputs[0]``. A 0-d input is one row of one class; an empty input needs no kernel."""
    out = torch.empty_like(inputs[0])
    if out.numel():
        as_rows = [t.reshape(1) if t.dim() == 0 else t for t in inputs]
        view = out.reshape(1) if out.dim() == 0 else out
        function(*map(_numpy, as_rows), dim, out=_numpy(view), backend=_kernel_backend(backend))
    return out


def _same_shape_fake(x, *rest):
    return torch.empty_like(x)


@torch.library.custom_op("fastsoftmax::softmax", mutates_args=(), device_types="cpu")
def _softmax_op(x: torch.Tensor, dim: int, backend: str) -> torch.Tensor:
    return _rows_kernel(api.softmax, (x,), dim, backend)


@torch.library.custom_op("fastsoftmax::log_softmax", mutates_args=(), device_types="cpu")
def _log_softmax_op(x: torch.Tensor, dim: int, backend: str) -> torch.Tensor:
    return _rows_kernel(api.log_softmax, (x,), dim, backend)


@torch.library.custom_op("fastsoftmax::softmax_backward", mutates_args=(), device_types="cpu")
def _softmax_backward_op(y: torch.Tensor, dy: torch.Tensor, dim: int,
                         backend: str) -> torch.Tensor:
    return _rows_kernel(api.softmax_backward, (y, dy), dim, backend)


@torch.library.custom_op("fastsoftmax::log_softmax_backward", mutates_args=(),
                         device_types="cpu")
def _log_softmax_backward_op(logp: torch.Tensor, dy: torch.Tensor, dim: int,
                             backend: str) -> torch.Tensor:
    return _rows_kernel(api.log_softmax_backward, (logp, dy), dim, backend)


for _op in (_softmax_op, _log_softmax_op, _softmax_backward_op, _log_softmax_backward_op):
    _op.register_fake(_same_shape_fake)


def _save_output(ctx, inputs, output):
    _, ctx.dim, ctx.backend = inputs
    ctx.save_for_backward(output)


def _softmax_vjp(ctx, dy):
    (y,) = ctx.saved_tensors
    return torch.ops.fastsoftmax.softmax_backward(y, dy.to(y.dtype), ctx.dim, ctx.backend), \
        None, None


def _log_softmax_vjp(ctx, dy):
    (logp,) = ctx.saved_tensors
    return torch.ops.fastsoftmax.log_softmax_backward(logp, dy.to(logp.dtype), ctx.dim,
                                                      ctx.backend), None, None


_softmax = _register_autograd("softmax", _softmax_op, _softmax_vjp, _save_output)
_log_softmax = _register_autograd("log_softmax", _log_softmax_op, _log_softmax_vjp, _save_output)


def _softmax_doc(name, formula):
    return f"""{name} along ``dim`` ({formula}), autograd-aware.

    Backed by ``torch.ops.fastsoftmax.{name.lower().replace("-", "_")}``. As torch's,
    a 0-d ``x`` is one class (``dim`` 0 or -1) and an empty ``x`` gives an empty result.

    Parameters
    ----------
    x : torch.Tensor
        CPU float32/float64/bfloat16/float16 tensor (16-bit: computed in float32, the
        result rounded once to its dtype).
    dim : int
        The class dimension.
    dtype : torch.dtype, optional
        float32 or float64: ``x`` is cast to it first (as torch's ``dtype=``).
    backend : str, optional
        A fastsoftmax backend name; default: the current one (read when the kernel runs).

    Returns
    -------
    torch.Tensor
        Same shape, dtype and layout as ``x``.
    """


def _dim_argument(x, dim):
    if not isinstance(dim, int):
        raise TypeError(f"dim must be an integer, got {dim!r}")
    ndim = max(x.dim(), 1)
    if not -ndim <= dim < ndim:
        raise IndexError(f"dim {dim} is out of range for a tensor of shape {tuple(x.shape)} "
                         f"(valid: {-ndim}..{ndim - 1})")
    return dim % ndim


def _rows_input(x, dim, dtype):
    if dtype is not None:
        x = x.to(dtype)
    _check_tensor(x, "x")
    return x, _dim_argument(x, dim)


def softmax(x, dim, *, dtype=None, backend=None):
    x, dim = _rows_input(x, dim, dtype)
    return _softmax(x, dim, _backend_argument(backend))


def log_softmax(x, dim, *, dtype=None, backend=None):
    x, dim = _rows_input(x, dim, dtype)
    return _log_softmax(x, dim, _backend_argument(backend))


softmax.__doc__ = _softmax_doc("Softmax", "exp(x - max) / sum(exp(x - max))")
log_softmax.__doc__ = _softmax_doc("Log-softmax", "x - logsumexp(x)")


# --------------------------------------------------------------------- cross-entropy

def _loss_shape(input, reduction):
    if reduction not in _validate.REDUCTIONS:
        raise ValueError(f"reduction must be one of {_validate.REDUCTIONS}, got {reduction!r}")
    if reduction != "none":
        return ()
    return _classes_last(input).shape[:-1]


def _cross_entropy_arrays(input, target, weight, ignore_index, reduction, label_smoothing,
                          z_loss, softcap):
    """(classes-last logits view, keyword arguments of api.cross_entropy*)."""
    if target.is_floating_point():
        target = _classes_last(target)
    options = dict(target=_numpy(target), weight=None if weight is None else _numpy(weight),
                   ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    return _classes_last(input), options


@torch.library.custom_op("fastsoftmax::cross_entropy", mutates_args=(), device_types="cpu")
def _cross_entropy_op(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                      ignore_index: int, reduction: str, label_smoothing: float,
                      z_loss: float, softcap: Optional[float], compute_grad: bool,
                      backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, d loss / d input, the z-loss term of the loss); the gradient is an empty
    (0,) tensor unless compute_grad."""
    logits, options = _cross_entropy_arrays(input, target, weight, ignore_index, reduction,
                                            label_smoothing, z_loss, softcap)
    backend = _kernel_backend(backend)
    if not compute_grad:
        loss, z_term = api.cross_entropy(_numpy(logits), **options, return_z_loss=True,
                                         backend=backend)
        return _loss_tensor(loss), input.new_empty(0), _loss_tensor(z_term)
    loss, grad, z_term = api.cross_entropy_with_grad(_numpy(logits), **options,
                                                     return_z_loss=True, backend=backend)
    return (_loss_tensor(loss), _classes_back(_tensor(grad), input),
            _loss_tensor(z_term))


@_cross_entropy_op.register_fake
def _cross_entropy_fake(input, target, weight, ignore_index, reduction, label_smoothing,
                        z_loss, softcap, compute_grad, backend):
    loss = input.new_empty(_loss_shape(input, reduction), dtype=_loss_dtype(input))
    # the kernel's layout: C-contiguous with classes last
    grad = _classes_back(_classes_last(input).new_empty(_classes_last(input).shape), input)
    return loss, grad if compute_grad else input.new_empty(0), torch.empty_like(loss)


@torch.library.custom_op("fastsoftmax::cross_entropy_", mutates_args={"input"},
                         device_types="cpu")
def _cross_entropy_inplace_op(input: torch.Tensor, target: torch.Tensor,
                              weight: Optional[torch.Tensor], ignore_index: int, reduction: str,
                              label_smoothing: float, z_loss: float,
                              softcap: Optional[float],
                              backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss, its z-loss term); ``input`` is overwritten with d loss / d input."""
    logits, options = _cross_entropy_arrays(input, target, weight, ignore_index, reduction,
                                            label_smoothing, z_loss, softcap)
    # out= the logits themselves: the kernel writes the gradient over the row it has read
    # (a copy and a copy back when the class dim is not contiguous)
    loss, _, z_term = api.cross_entropy_with_grad(_numpy(logits), **options, out=_numpy(logits),
                                                  return_z_loss=True,
                                                  backend=_kernel_backend(backend))
    return _loss_tensor(loss), _loss_tensor(z_term)


@_cross_entropy_inplace_op.register_fake
def _cross_entropy_inplace_fake(input, target, weight, ignore_index, reduction, label_smoothing,
                                z_loss, softcap, backend):
    loss = input.new_empty(_loss_shape(input, reduction), dtype=_loss_dtype(input))
    return loss, torch.empty_like(loss)


def _grad_output_scale(grad_loss, reduction, class_dim):
    """grad_output shaped to broadcast over the (input-shaped) gradient."""
    return grad_loss.unsqueeze(class_dim) if reduction == "none" else grad_loss


def _target_log_probs(input, class_dim, softcap, backend):
    """log_softmax of the logits as the loss sees them (capped by softcap, if not None):
    a learnt probability target's gradient is made of it."""
    if softcap is not None:
        input = softcap * torch.tanh(input / softcap)
    return torch.ops.fastsoftmax.log_softmax(input, class_dim, backend)


def _probability_target_grad(log_probs, weight, label_smoothing, reduction, scale):
    """d loss / d target = -(1 - eps) w log_softmax(input), divided by the row count for
    "mean", times grad_output."""
    class_dim = _class_dim(log_probs)
    factor = -(1.0 - label_smoothing)
    if reduction == "mean":  # (no rows: an empty gradient, whatever the factor)
        factor = factor / max(log_probs.numel() // log_probs.shape[class_dim], 1)
    grad = log_probs * factor
    if weight is not None:
        grad = grad * weight.to(grad.dtype).reshape(-1, *[1] * (grad.dim() - class_dim - 1))
    return grad * scale


def _cross_entropy_setup(ctx, inputs, output):
    input, target, weight, _, reduction, label_smoothing, _, softcap, compute_grad, backend = \
        inputs
    if ctx.needs_input_grad[0] and not compute_grad:
        raise RuntimeError("fastsoftmax::cross_entropy was called with compute_grad=False on an "
                           "input that requires grad; pass compute_grad=True")
    if ctx.needs_input_grad[2]:
        raise NotImplementedError("fastsoftmax.torch.cross_entropy has no gradient for weight "
                                  "(neither has torch's); pass weight.detach()")
    ctx.set_materialize_grads(False)
    ctx.reduction, ctx.label_smoothing, ctx.backend = reduction, label_smoothing, backend
    ctx.softcap = softcap
    ctx.class_dim = _class_dim(input)
    ctx.gradient_is_consumed = _gradient_is_consumed(input)
    # the target's gradient needs the input (a learnt probability target)
    learnt_target = ctx.needs_input_grad[1]
    ctx.save_for_backward(output[1], input if learnt_target else None,
                          weight if learnt_target else None)


def _cross_entropy_vjp(ctx, grad_loss, _grad_of_grad, _grad_of_z_term):
    _first_order_only("cross_entropy", grad_loss)
    grad, input, weight = ctx.saved_tensors
    grads = [None] * 10
    if grad_loss is None:
        return tuple(grads)
    scale = _grad_output_scale(grad_loss, ctx.reduction, ctx.class_dim)
    if ctx.needs_input_grad[0]:
        grads[0] = _scaled(grad, scale, may_return_grad=ctx.gradient_is_consumed)
    if ctx.needs_input_grad[1]:
        log_probs = _target_log_probs(input, ctx.class_dim, ctx.softcap, ctx.backend)
        grads[1] = _probability_target_grad(log_probs, weight, ctx.label_smoothing,
                                            ctx.reduction, scale)
    return tuple(grads)


_cross_entropy = _register_autograd("cross_entropy", _cross_entropy_op, _cross_entropy_vjp,
                                    _cross_entropy_setup)


class _CrossEntropyInPlace(torch.autograd.Function):
    """Eager ``inplace=True``: the gradient is written into the logits by the mutating op
    (which bumps their version) and scaled in place by the backward pass, once."""

    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                softcap, backend):
        ctx.class_dim = _class_dim(input)
        ctx.reduction, ctx.label_smoothing, ctx.weight = reduction, label_smoothing, weight
        ctx.log_probs = None
        if ctx.needs_input_grad[1]:  # read the logits before they are overwritten
            ctx.log_probs = _target_log_probs(input, ctx.class_dim, softcap, backend)
        loss, z_term = torch.ops.fastsoftmax.cross_entropy_.default(
            input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
            backend)
        ctx.grad = input.detach()  # shares the logits' version counter
        ctx.grad_version = ctx.grad._version
        ctx.mark_non_differentiable(z_term)
        return loss, z_term

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_z_term):
        _first_order_only("cross_entropy", grad_loss)
        if ctx.grad is None:
            raise RuntimeError(
                "fastsoftmax.torch.cross_entropy(inplace=True): backward ran a second time, but "
                "the first one scaled the stored gradient (the logits' buffer) in place; use "
                "inplace=False to backpropagate through the loss more than once")
        if ctx.grad._version != ctx.grad_version:
            raise RuntimeError(
                "fastsoftmax.torch.cross_entropy(inplace=True): the logits, which hold the "
                "gradient, were modified after the loss was computed; use inplace=False, or "
                "leave the logits untouched until backward")
        grad, ctx.grad = ctx.grad, None
        scale = _grad_output_scale(grad_loss, ctx.reduction, ctx.class_dim)
        target_grad = None
        if ctx.log_probs is not None:
            target_grad = _probability_target_grad(ctx.log_probs, ctx.weight,
                                                   ctx.label_smoothing, ctx.reduction, scale)
        if not (scale.dim() == 0 and scale.item() == 1.0):
            grad.mul_(scale)
        return grad, target_grad, None, None, None, None, None, None, None


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, inplace=False, *, z_loss=0.0, return_z_loss=False,
                  softcap=None, backend=None):
    """Cross-entropy with ``torch.nn.functional.cross_entropy``'s signature and semantics.

    Backed by ``torch.ops.fastsoftmax.cross_entropy``, which returns the loss and the
    gradient from one sweep over the logits; ``torch.compile`` traces it without a graph
    break.

    Parameters
    ----------
    input : torch.Tensor
        Logits, CPU float32/float64/bfloat16/float16, shape (C,), (N, C) or
        (N, C, d1, ...) (16-bit: computed in float32, a float32 loss, the gradient in
        the logits' dtype).
    target : torch.Tensor
        Class indices (int64, shape without the C dim) or class probabilities
        (same shape as ``input``; they get a gradient when they require one).
    weight : torch.Tensor, optional
        Per-class weights, shape (C,).
    ignore_index : int, optional
        Index target that contributes nothing (default -100).
    reduction : {"mean", "sum", "none"}, optional
    label_smoothing : float, optional
        In [0, 1].
    z_loss : float, optional
        Weight of the z-loss added to the loss, ``z_loss * logsumexp(row)**2`` per row
        (see :func:`fastsoftmax.cross_entropy`); keyword only. Default 0.
    return_z_loss : bool, optional
        Also return the z-loss term of the loss (reduced as the loss, already included
        in it), detached, for logging: Liger's ``return_z_loss``. Keyword only.
    softcap : float, optional
        Logit soft-capping: every logit x is replaced by ``softcap * tanh(x / softcap)``
        first (Gemma 2 uses 30.0; see :func:`fastsoftmax.cross_entropy`), in the same
        sweep; keyword only. Default None (no capping).
    inplace : bool, optional
        Store the gradient in ``input``'s buffer instead of a new tensor (no extra
        N x C memory; ``torch.ops.fastsoftmax.cross_entropy_``). ``input`` then holds the
        gradient and its autograd version is bumped, so a backward pass that still needs
        the old logits raises PyTorch's "modified by an inplace operation" error instead
        of silently using wrong values. The backward pass scales that buffer in place,
        so it can run only once (a second one raises). Safe when ``input`` is the output
        of a layer whose backward does not need it (``nn.Linear``, matmul) and nothing
        reads the logits after the loss (compute accuracy before). Not allowed for leaf
        tensors. An eager-mode memory optimisation: ignored (the out-of-place op runs)
        under ``torch.compile``, when no gradient is required, and for layouts whose
        class dim is not contiguous ((N, C, d1, ...) or non-contiguous input).
    backend : str, optional
        A fastsoftmax backend name; default: the current one (read when the kernel runs).

    Returns
    -------
    torch.Tensor
        The loss: 0-d for "mean"/"sum", the target's index shape for "none".
    torch.Tensor
        Only with ``return_z_loss=True``: the z-loss term, shaped as the loss, detached.
    """
    _check_tensor(input, "input")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device.type != "cpu":
        raise ValueError(f"target is on {target.device}; move it with .cpu()")
    if weight is not None:
        _check_tensor(weight, "weight")
        if weight.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError("fastsoftmax.torch.cross_entropy has no gradient for "
                                      "weight (neither has torch's); pass weight.detach()")
    if inplace and input.requires_grad and input.is_leaf:
        raise ValueError("inplace=True would overwrite a leaf tensor that requires grad; "
                         "use it on the output of a layer (e.g. nn.Linear), or inplace=False")
    _loss_shape(input, reduction)
    backend = _backend_argument(backend)
    label_smoothing, z_loss = float(label_smoothing), float(z_loss)
    softcap = _validate.softcap_value(softcap)
    compute_grad = torch.is_grad_enabled() and input.requires_grad
    if (inplace and compute_grad and not torch.compiler.is_compiling()
            and _classes_last(input).is_contiguous()):
        loss, z_term = _CrossEntropyInPlace.apply(input, target, weight, ignore_index,
                                                  reduction, label_smoothing, z_loss, softcap,
                                                  backend)
    else:
        loss, _, z_term = _cross_entropy(input, target, weight, ignore_index, reduction,
                                         label_smoothing, z_loss, softcap, compute_grad, backend)
    return (loss, z_term.detach()) if return_z_loss else loss


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` backed by :func:`cross_entropy`.

    Parameters
    ----------
    weight : torch.Tensor, optional
    ignore_index : int, optional
    reduction : {"mean", "sum", "none"}, optional
    label_smoothing : float, optional
    inplace : bool, optional
    z_loss : float, optional
        See :func:`cross_entropy`.
    return_z_loss : bool, optional
        ``forward`` returns (loss, z-loss term); see :func:`cross_entropy`.
    softcap : float, optional
        See :func:`cross_entropy`.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                 inplace=False, *, z_loss=0.0, return_z_loss=False, softcap=None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.inplace = inplace
        self.z_loss = z_loss
        self.return_z_loss = return_z_loss
        self.softcap = softcap

    def forward(self, input, target):
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                             self.label_smoothing, self.inplace, z_loss=self.z_loss,
                             return_z_loss=self.return_z_loss, softcap=self.softcap)


# --------------------------------------------------------------------------- entropy

@torch.library.custom_op("fastsoftmax::entropy", mutates_args=(), device_types="cpu")
def _entropy_op(logits: torch.Tensor, compute_grad: bool,
                backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy over the last dim, its gradient or an empty (0,) tensor)."""
    x, backend = _numpy(logits), _kernel_backend(backend)
    if not compute_grad:
        return _tensor(api.entropy(x, backend=backend)), logits.new_empty(0)
    h, grad = api.entropy_with_grad(x, backend=backend)
    # in the logits' dtype, as without a gradient (16-bit: rounded from float32)
    return _tensor(h).to(logits.dtype), _tensor(grad)


@_entropy_op.register_fake
def _entropy_fake(logits, compute_grad, backend):
    return (logits.new_empty(logits.shape[:-1]),
            logits.new_empty(logits.shape) if compute_grad else logits.new_empty(0))


def _entropy_setup(ctx, inputs, output):
    if ctx.needs_input_grad[0] and not inputs[1]:
        raise RuntimeError("fastsoftmax::entropy was called with compute_grad=False on logits "
                           "that require grad; pass compute_grad=True")
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1])


def _entropy_vjp(ctx, grad_h, _grad_of_grad):
    _first_order_only("entropy", grad_h)
    (grad,) = ctx.saved_tensors
    if grad_h is None:
        return None, None, None
    return grad * grad_h.unsqueeze(-1), None, None


_entropy = _register_autograd("entropy", _entropy_op, _entropy_vjp, _entropy_setup)


def entropy(logits, *, backend=None):
    """Entropy of ``softmax(logits)`` over the last dim, autograd-aware.

    The values are ``torch.distributions.Categorical(logits=logits).entropy()``: a -inf
    logit adds 0, a row holding NaN or +inf, or only -inf, gives NaN. With a gradient
    required, the forward pass computes the gradient too (one sweep over the logits,
    no probabilities kept) and the backward pass only scales it. Backed by
    ``torch.ops.fastsoftmax.entropy``.

    Parameters
    ----------
    logits : torch.Tensor
        CPU float32, float64, bfloat16 or float16 tensor, classes on the last dim
        (16-bit: computed in float32, the entropy and the gradient rounded once to it).
    backend : str, optional
        A fastsoftmax backend name; default: the current one (read when the kernel runs).

    Returns
    -------
    torch.Tensor
        ``logits.shape[:-1]``, same dtype (as torch's ``Categorical.entropy()``).
    """
    _check_tensor(logits, "logits")
    if logits.dim() == 0:
        raise ValueError("logits must have at least one dimension (classes last), got a 0-d "
                         "tensor")
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    h, _ = _entropy(logits, compute_grad, _backend_argument(backend))
    return h


from .torch_linear import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402

__all__ += ["linear_cross_entropy", "LinearCrossEntropyLoss"]


# ------------------------------------------------- elementwise losses (issue 17)
# kl_div and binary_cross_entropy_with_logits: one op each returning (loss, d loss / d input)
# from one sweep; the backward pass only scales the kept gradient. Gradients for target,
# weight and pos_weight are not provided (an error says so).

def _elementwise_loss_shape(input, reduction, allowed):
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")
    return input.shape if reduction == "none" else ()


def _no_grad_for(tensor, name, function):
    if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(f"fastsoftmax.torch.{function} has no gradient for {name}; "
                                  f"pass {name}.detach(), or use torch.nn.functional's "
                                  f"{function} where {name} is learnt")


@torch.library.custom_op("fastsoftmax::kl_div", mutates_args=(), device_types="cpu")
def _kl_div_op(input: torch.Tensor, target: torch.Tensor, reduction: str, log_target: bool,
               compute_grad: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d input); the gradient is an empty (0,) tensor unless compute_grad."""
    options = dict(reduction=reduction, log_target=log_target, backend=_kernel_backend(backend))
    if not compute_grad:
        return _loss_tensor(api.kl_div(_numpy(input), _numpy(target), **options)), \
            input.new_empty(0)
    loss, grad = api.kl_div_with_grad(_numpy(input), _numpy(target), **options)
    return _loss_tensor(loss), _tensor(grad)


@_kl_div_op.register_fake
def _kl_div_fake(input, target, reduction, log_target, compute_grad, backend):
    loss = input.new_empty(_elementwise_loss_shape(input, reduction, _validate.KL_REDUCTIONS),
                           dtype=_loss_dtype(input))
    return loss, torch.empty(input.shape, dtype=input.dtype) if compute_grad else \
        input.new_empty(0)


@torch.library.custom_op("fastsoftmax::binary_cross_entropy_with_logits", mutates_args=(),
                         device_types="cpu")
def _bce_op(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
            pos_weight: Optional[torch.Tensor], reduction: str, compute_grad: bool,
            backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d input); the gradient is an empty (0,) tensor unless compute_grad."""
    options = dict(weight=None if weight is None else _numpy(weight),
                   pos_weight=None if pos_weight is None else _numpy(pos_weight),
                   reduction=reduction, backend=_kernel_backend(backend))
    if not compute_grad:
        return _loss_tensor(api.binary_cross_entropy_with_logits(
            _numpy(input), _numpy(target), **options)), input.new_empty(0)
    loss, grad = api.binary_cross_entropy_with_logits_with_grad(_numpy(input), _numpy(target),
                                                                **options)
    return _loss_tensor(loss), _tensor(grad)


@_bce_op.register_fake
def _bce_fake(input, target, weight, pos_weight, reduction, compute_grad, backend):
    loss = input.new_empty(_elementwise_loss_shape(input, reduction, _validate.REDUCTIONS),
                           dtype=_loss_dtype(input))
    return loss, torch.empty(input.shape, dtype=input.dtype) if compute_grad else \
        input.new_empty(0)


def _elementwise_setup(name, n_inputs):
    def setup_context(ctx, inputs, output):
        input, compute_grad = inputs[0], inputs[n_inputs - 2]
        if ctx.needs_input_grad[0] and not compute_grad:
            raise RuntimeError(f"fastsoftmax::{name} was called with compute_grad=False on an "
                               "input that requires grad; pass compute_grad=True")
        if any(ctx.needs_input_grad[1:]):
            raise NotImplementedError(f"fastsoftmax.torch.{name} has no gradient for its "
                                      "target or weights; pass them detached")
        ctx.set_materialize_grads(False)
        ctx.n_inputs = n_inputs
        ctx.gradient_is_consumed = _gradient_is_consumed(input)
        ctx.save_for_backward(output[1])
    return setup_context


def _elementwise_vjp(name):
    def vjp(ctx, grad_loss, _grad_of_grad):
        _first_order_only(name, grad_loss)
        (grad,) = ctx.saved_tensors
        grads = [None] * ctx.n_inputs
        if grad_loss is not None and ctx.needs_input_grad[0]:
            grads[0] = _scaled(grad, grad_loss, may_return_grad=ctx.gradient_is_consumed)
        return tuple(grads)
    return vjp


_kl_div = _register_autograd("kl_div", _kl_div_op, _elementwise_vjp("kl_div"),
                             _elementwise_setup("kl_div", 6))
_bce = _register_autograd("binary_cross_entropy_with_logits", _bce_op,
                          _elementwise_vjp("binary_cross_entropy_with_logits"),
                          _elementwise_setup("binary_cross_entropy_with_logits", 7))


def _check_target(target):
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device.type != "cpu":
        raise ValueError(f"target is on {target.device}; move it with .cpu()")


def kl_div(input, target, reduction="mean", log_target=False, *, backend=None):
    """KL divergence with ``torch.nn.functional.kl_div``'s semantics (without the
    deprecated ``size_average`` / ``reduce``), autograd-aware.

    With a gradient required, the forward pass computes it too (one sweep) and the
    backward pass only scales it. Backed by ``torch.ops.fastsoftmax.kl_div``; see
    :func:`fastsoftmax.kl_div` for the formula. ``target`` gets no gradient.

    Parameters
    ----------
    input : torch.Tensor
        Log-probabilities, CPU float32/float64/bfloat16/float16, any shape (16-bit:
        computed in float32, the gradient rounded once to its dtype, the loss float32).
    target : torch.Tensor
        Probabilities (log-probabilities with ``log_target=True``), input's shape or
        broadcasting to it; cast to input's dtype.
    reduction : {"mean", "batchmean", "sum", "none"}, optional
    log_target : bool, optional
    backend : str, optional
        A fastsoftmax backend name; default: the current one (read when the kernel runs).

    Returns
    -------
    torch.Tensor
        0-d, or input's shape for "none"; input's dtype, float32 for 16-bit input.
    """
    _check_tensor(input, "input")
    _check_target(target)
    _no_grad_for(target, "target", "kl_div")
    _elementwise_loss_shape(input, reduction, _validate.KL_REDUCTIONS)
    compute_grad = torch.is_grad_enabled() and input.requires_grad
    loss, _ = _kl_div(input, target, reduction, bool(log_target), compute_grad,
                      _backend_argument(backend))
    return loss


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",
                                     pos_weight=None, *, backend=None):
    """Binary cross-entropy with logits, ``torch.nn.functional.
    binary_cross_entropy_with_logits``' signature (without ``size_average`` /
    ``reduce``), autograd-aware.

    Finite where torch gives NaN at an infinite logit (see
    :func:`fastsoftmax.binary_cross_entropy_with_logits`). Backed by
    ``torch.ops.fastsoftmax.binary_cross_entropy_with_logits``; the forward pass computes
    the gradient too. ``target``, ``weight`` and ``pos_weight`` get no gradient.

    Parameters
    ----------
    input : torch.Tensor
        Logits, CPU float32/float64/bfloat16/float16, any shape (16-bit: computed in
        float32, the gradient rounded once to its dtype, the loss float32).
    target : torch.Tensor
        Labels in [0, 1], input's shape; cast to input's dtype.
    weight : torch.Tensor, optional
        Broadcasts to input's shape (used in float32 for 16-bit input).
    reduction : {"mean", "sum", "none"}, optional
    pos_weight : torch.Tensor, optional
        Broadcasts to input's shape (a (C,) tensor: per class of the last dim).
    backend : str, optional
        A fastsoftmax backend name; default: the current one (read when the kernel runs).

    Returns
    -------
    torch.Tensor
        0-d, or input's shape for "none"; input's dtype, float32 for 16-bit input.
    """
    name = "binary_cross_entropy_with_logits"
    _check_tensor(input, "input")
    _check_target(target)
    for tensor, label in ((target, "target"), (weight, "weight"), (pos_weight, "pos_weight")):
        if tensor is not None and label != "target":
            _check_tensor(tensor, label)
        _no_grad_for(tensor, label, name)
    _elementwise_loss_shape(input, reduction, _validate.REDUCTIONS)
    compute_grad = torch.is_grad_enabled() and input.requires_grad
    loss, _ = _bce(input, target, weight, pos_weight, reduction, compute_grad,
                   _backend_argument(backend))
    return loss


class KLDivLoss(torch.nn.Module):
    """``torch.nn.KLDivLoss`` backed by :func:`kl_div`.

    Parameters
    ----------
    reduction : {"mean", "batchmean", "sum", "none"}, optional
    log_target : bool, optional
    """

    def __init__(self, reduction="mean", log_target=False):
        super().__init__()
        self.reduction = reduction
        self.log_target = log_target

    def forward(self, input, target):
        return kl_div(input, target, self.reduction, self.log_target)


class BCEWithLogitsLoss(torch.nn.Module):
    """``torch.nn.BCEWithLogitsLoss`` backed by :func:`binary_cross_entropy_with_logits`.

    Parameters
    ----------
    weight : torch.Tensor, optional
    reduction : {"mean", "sum", "none"}, optional
    pos_weight : torch.Tensor, optional
    """

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, self.weight, self.reduction,
                                                self.pos_weight)


__all__ += ["kl_div", "KLDivLoss", "binary_cross_entropy_with_logits", "BCEWithLogitsLoss"]


# ------------------------------------------------------------- sigmoid, log-sigmoid

def _elementwise_kernel(function, x, backend):
    """``function`` (api.sigmoid, api.log_sigmoid) of ``x`` into a new contiguous tensor."""
    out = torch.empty(x.shape, dtype=x.dtype)
    if out.numel():
        function(_numpy(x), out=_numpy(out), backend=_kernel_backend(backend))
    return out


def _contiguous_fake(x, backend):
    return torch.empty(x.shape, dtype=x.dtype)


@torch.library.custom_op("fastsoftmax::sigmoid", mutates_args=(), device_types="cpu")
def _sigmoid_op(x: torch.Tensor, backend: str) -> torch.Tensor:
    return _elementwise_kernel(api.sigmoid, x, backend)


@torch.library.custom_op("fastsoftmax::log_sigmoid", mutates_args=(), device_types="cpu")
def _log_sigmoid_op(x: torch.Tensor, backend: str) -> torch.Tensor:
    return _elementwise_kernel(api.log_sigmoid, x, backend)


for _op in (_sigmoid_op, _log_sigmoid_op):
    _op.register_fake(_contiguous_fake)


def _save_elementwise_output(ctx, inputs, output):
    ctx.save_for_backward(output)


def _sigmoid_vjp(ctx, dy):
    (s,) = ctx.saved_tensors
    s_c = s.to(_loss_dtype(s))  # 16-bit: computed in float32, rounded once
    return (dy * s_c * (1 - s_c)).to(s.dtype), None


def _log_sigmoid_vjp(ctx, dy):
    # d log(sigmoid(x)) / dx = sigmoid(-x) = 1 - exp(log_sigmoid(x)), as -expm1: exact
    # where sigmoid(-x) is tiny (large x), where 1 - sigmoid(x) would cancel
    (log_s,) = ctx.saved_tensors
    return (-dy * torch.expm1(log_s.to(_loss_dtype(log_s)))).to(log_s.dtype), None


_sigmoid = _register_autograd("sigmoid", _sigmoid_op, _sigmoid_vjp, _save_elementwise_output)
_log_sigmoid = _register_autograd("log_sigmoid", _log_sigmoid_op, _log_sigmoid_vjp,
                                  _save_elementwise_output)


def _sigmoid_doc(name, formula, torch_name):
    return f"""{name}, ``{formula}`` elementwise, autograd-aware: ``{torch_name}``.

    Backed by ``torch.ops.fastsoftmax.{name.lower().replace("-", "_")}`` (see
    :func:`fastsoftmax.{name.lower().replace("-", "_")}` for the kernel's accuracy).

    Parameters
    ----------
    x : torch.Tensor
        CPU float32/float64/bfloat16/float16 tensor of any shape (16-bit: computed in
        float32, rounded once to its dtype; so is the gradient).
    backend : str, optional
        A fastsoftmax backend name; default: the current one (read when the kernel runs).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``, contiguous.
    """


def sigmoid(x, *, backend=None):
    _check_tensor(x, "x")
    return _sigmoid(x, _backend_argument(backend))


def log_sigmoid(x, *, backend=None):
    _check_tensor(x, "x")
    return _log_sigmoid(x, _backend_argument(backend))


sigmoid.__doc__ = _sigmoid_doc("Sigmoid", "1 / (1 + exp(-x))", "torch.sigmoid")
log_sigmoid.__doc__ = _sigmoid_doc("Log-sigmoid", "log(1 / (1 + exp(-x)))",
                                   "torch.nn.functional.logsigmoid")


class Sigmoid(torch.nn.Module):
    """``torch.nn.Sigmoid`` backed by :func:`sigmoid`."""

    def forward(self, x):
        return sigmoid(x)


class LogSigmoid(torch.nn.Module):
    """``torch.nn.LogSigmoid`` backed by :func:`log_sigmoid`."""

    def forward(self, x):
        return log_sigmoid(x)


__all__ += ["sigmoid", "log_sigmoid", "Sigmoid", "LogSigmoid"]


# sampled softmax (issue 17)
from .torch_sampled import SampledSoftmaxLoss, sampled_softmax_loss  # noqa: E402

__all__ += ["sampled_softmax_loss", "SampledSoftmaxLoss"]

# vocab-parallel cross-entropy (issue 21)
from .torch_vocab_parallel import vocab_parallel_cross_entropy  # noqa: E402

__all__ += ["vocab_parallel_cross_entropy"]


# ------------------------------------ KL and JSD between two sets of logits (issue 17)
# One op returning (loss, d loss / d student_logits) from one sweep; the backward pass
# only scales the kept gradient. The teacher is a constant: a teacher that requires grad
# is refused (torch has no built-in JSD; TRL and Liger likewise give the teacher none).

@torch.library.custom_op("fastsoftmax::jsd_logits", mutates_args=(), device_types="cpu")
def _jsd_op(student: torch.Tensor, teacher: torch.Tensor, beta: float, temperature: float,
            reduction: str, compute_grad: bool,
            backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d student); the gradient is an empty (0,) tensor unless compute_grad."""
    options = dict(beta=beta, temperature=temperature, reduction=reduction,
                   backend=_kernel_backend(backend))
    if not compute_grad:
        return _loss_tensor(api.jsd_logits(_numpy(student), _numpy(teacher), **options)), \
            student.new_empty(0)
    loss, grad = api.jsd_logits_with_grad(_numpy(student), _numpy(teacher), **options)
    return _loss_tensor(loss), _tensor(grad)


@_jsd_op.register_fake
def _jsd_fake(student, teacher, beta, temperature, reduction, compute_grad, backend):
    loss = student.new_empty(student.shape[:-1] if reduction == "none" else (),
                             dtype=_loss_dtype(student))
    return loss, torch.empty(student.shape, dtype=student.dtype) if compute_grad else \
        student.new_empty(0)


def _jsd_setup(ctx, inputs, output):
    student, _, _, _, reduction, compute_grad, _ = inputs
    if ctx.needs_input_grad[0] and not compute_grad:
        raise RuntimeError("fastsoftmax::jsd_logits was called with compute_grad=False on "
                           "student logits that require grad; pass compute_grad=True")
    if ctx.needs_input_grad[1]:
        raise NotImplementedError(_TEACHER_GRAD_MESSAGE)
    ctx.set_materialize_grads(False)
    ctx.reduction = reduction
    ctx.gradient_is_consumed = _gradient_is_consumed(student)
    ctx.save_for_backward(output[1])


def _jsd_vjp(ctx, grad_loss, _grad_of_grad):
    _first_order_only("jsd_logits", grad_loss)
    (grad,) = ctx.saved_tensors
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return (None,) * 7
    scale = grad_loss.unsqueeze(-1) if ctx.reduction == "none" else grad_loss
    return (_scaled(grad, scale, may_return_grad=ctx.gradient_is_consumed), *(None,) * 6)


_jsd = _register_autograd("jsd_logits", _jsd_op, _jsd_vjp, _jsd_setup)

_TEACHER_GRAD_MESSAGE = (
    "fastsoftmax.torch.jsd_logits treats the teacher as a constant and has no gradient for "
    "teacher_logits, which requires grad; pass teacher_logits.detach() (or compute the "
    "teacher under torch.no_grad()), or write the loss in torch where the teacher is learnt")


def jsd_logits(student_logits, teacher_logits, beta=0.5, temperature=1.0, reduction="mean", *,
               backend=None):
    """Generalised Jensen-Shannon divergence between the softmaxes of a student's and a
    teacher's logits (distillation), autograd-aware; torch has no built-in.

    TRL's ``generalized_jsd_loss`` and Liger's ``LigerJSD`` convention, no T**2 factor:
    ``beta KL(P || M) + (1 - beta) KL(Q || M)`` with ``P = softmax(teacher / T)``,
    ``Q = softmax(student / T)``, ``M = beta P + (1 - beta) Q``; beta = 0 is the forward
    ``KL(P || Q)``, beta = 1 the reverse ``KL(Q || P)`` (see
    :func:`fastsoftmax.jsd_logits_with_grad` for the edge cases and the gradient). With a
    gradient required, the forward pass computes it too (one sweep over both logit
    tensors) and the backward pass only scales it. Backed by
    ``torch.ops.fastsoftmax.jsd_logits``.

    The gradient is for ``student_logits`` only: a ``teacher_logits`` that requires grad
    raises NotImplementedError (pass it detached) instead of silently getting none.

    Parameters
    ----------
    student_logits : torch.Tensor
        CPU float32, float64, bfloat16 or float16 logits, classes on the last dim (16-bit:
        computed in float32, the gradient rounded once to their dtype, a float32 loss).
    teacher_logits : torch.Tensor
        The teacher's logits: the student's shape and dtype.
    beta : float, optional
        In [0, 1]. Default 0.5.
    temperature : float, optional
        T > 0. Default 1.
    reduction : {"mean", "sum", "none"}, optional
        "mean" (default) over the rows (all dims but the last), "none": per row.
    backend : str, optional
        A fastsoftmax backend name; default: the current one (read when the kernel runs).

    Returns
    -------
    torch.Tensor
        0-d, or ``student_logits.shape[:-1]`` for "none"; the logits' dtype, float32 for
        16-bit logits.
    """
    _check_tensor(student_logits, "student_logits")
    _check_tensor(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits has shape {tuple(student_logits.shape)} but "
                         f"teacher_logits has shape {tuple(teacher_logits.shape)}; they must "
                         "be equal")
    if student_logits.dtype != teacher_logits.dtype:
        raise TypeError(f"student_logits has dtype {student_logits.dtype} but teacher_logits "
                        f"has dtype {teacher_logits.dtype}; convert one with .to()")
    if student_logits.dim() == 0:
        raise ValueError("student_logits must have at least one dimension (classes last), "
                         "got a 0-d tensor")
    if teacher_logits.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(_TEACHER_GRAD_MESSAGE)
    _elementwise_loss_shape(student_logits, reduction, _validate.REDUCTIONS)
    compute_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, _ = _jsd(student_logits, teacher_logits, float(beta), float(temperature), reduction,
                   compute_grad, _backend_argument(backend))
    return loss


class JSDLoss(torch.nn.Module):
    """Generalised JSD distillation loss backed by :func:`jsd_logits` (torch has no
    built-in; the convention is TRL's and Liger's).

    Parameters
    ----------
    beta : float, optional
        In [0, 1]: 0 is KL(teacher || student), 1 is KL(student || teacher). Default 0.5.
    temperature : float, optional
        T > 0 (no T**2 factor). Default 1.
    reduction : {"mean", "sum", "none"}, optional
    """

    def __init__(self, beta=0.5, temperature=1.0, reduction="mean"):
        super().__init__()
        self.beta = beta
        self.temperature = temperature
        self.reduction = reduction

    def forward(self, student_logits, teacher_logits):
        return jsd_logits(student_logits, teacher_logits, self.beta, self.temperature,
                          self.reduction)


__all__ += ["jsd_logits", "JSDLoss"]
