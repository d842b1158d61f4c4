"""PyTorch fused linear + cross-entropy: a drop-in for ``torch.nn.functional.linear_cross_entropy``.

The chunk loop is :mod:`fastsoftmax.linear_ce`'s; here its GEMMs run as torch ops (torch's
BLAS, on tensors sharing the NumPy buffers) and the cross-entropy kernel is
fastsoftmax's. Re-exported by :mod:`fastsoftmax.torch`.

Autograd: for "mean" and "sum" the forward pass computes every gradient (three GEMMs per
chunk) and the backward pass scales them by ``grad_output``. For "none" the per-row
``grad_output`` is unknown in the forward pass, so the forward pass computes the loss
alone (one GEMM per chunk) and the backward pass runs the loop again with each row's
``grad_output`` folded into its gradient before the GEMMs (Liger #968 scaled after them).
"""
import contextlib

import numpy as np
import torch

from . import linear_ce
from ._torch_tensors import check_tensor, gradient_is_consumed, to_numpy, to_tensor

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]


def _torch_dtype(dtype):
    """The torch dtype of a NumPy one (ml_dtypes' bfloat16: torch.bfloat16)."""
    return to_tensor(np.empty(0, dtype)).dtype


class _TorchBlas(linear_ce._Blas):
    """The chunk's GEMMs as torch ops on tensors that share the NumPy buffers.

    float16 and bfloat16 GEMMs run in their dtype, as in torch's unfused version: bfloat16
    ones took 0.2-0.33x the float32 time here (Xeon with AMX, 4096 x 1024 x 8192, 2
    threads), and no float32 copy of h or weight is made. CPU torch has no GEMM from
    16-bit operands into a float32 output, so a 16-bit grad_weight product goes through a
    16-bit V x D scratch that is added into the float32 accumulator (that add was 0.15x
    the GEMM's time)."""

    runs_half = True

    def __init__(self):
        self._partial = None  # the 16-bit scratch of grad_weight, made on first use

    def empty(self, shape, dtype):
        """Allocated by torch: its allocator puts large buffers on 2 MiB boundaries with
        huge pages, where NumPy's are 16-byte aligned. A bfloat16 G^T h with G in a NumPy
        buffer took 1.5x the time (0.37 against 0.24 s at 4096 x 1024 x 32768, Xeon with
        AMX, 2 threads; h W^T with a NumPy h 2.0x), float32 GEMMs the same time."""
        return to_numpy(torch.empty(shape, dtype=_torch_dtype(dtype)))

    def cast(self, a, dtype):  # 0.021 s where ml_dtypes' astype took 0.089 (32M floats)
        return a if a.dtype == dtype else to_numpy(to_tensor(a).to(_torch_dtype(dtype)))

    def logits(self, h, w, out):
        torch.mm(to_tensor(h), to_tensor(w).T, out=to_tensor(out))

    def linear(self, h, w, bias, out):
        if bias is None:
            self.logits(h, w, out)
        else:  # the bias added in the GEMM: a 16-bit logit is rounded once
            torch.addmm(to_tensor(bias), to_tensor(h), to_tensor(w).T, out=to_tensor(out))

    def grad_h(self, g, w, out):
        torch.mm(to_tensor(g), to_tensor(w), out=to_tensor(out))

    def grad_weight(self, g, h, out, accumulate):
        g_t, h_t, out_t = to_tensor(g).T, to_tensor(h), to_tensor(out)
        if out_t.dtype != g_t.dtype:  # 16-bit operands, float32 accumulator
            if self._partial is None:
                self._partial = torch.empty(out_t.shape, dtype=g_t.dtype)
            torch.mm(g_t, h_t, out=self._partial)
            if accumulate:
                out_t.add_(self._partial)
            else:
                out_t.copy_(self._partial)
        elif accumulate:
            out_t.addmm_(g_t, h_t)  # beta = 1: no V x D temporary
        else:
            torch.mm(g_t, h_t, out=out_t)

    def add_column_sums(self, g, out):
        to_tensor(out).add_(to_tensor(g).sum(dim=0, dtype=to_tensor(out).dtype))

    @contextlib.contextmanager
    def threads(self, n):
        previous = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def _run(saved, grad_output, need):
    """linear_ce's loop on the tensors' NumPy views with torch GEMMs."""
    h, linear_weight, linear_bias, target, weight, options = saved
    return linear_ce._compute(to_numpy(h), to_numpy(linear_weight), to_numpy(target),
                              to_numpy(linear_bias), to_numpy(weight), grad_output=grad_output,
                              need=need, backend=None, blas=_TorchBlas(), **options)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, linear_weight, linear_bias, target, weight, options):
        ctx.need = tuple(name for name, flag in zip(linear_ce.NEEDS, ctx.needs_input_grad[:3])
                         if flag)
        ctx.recompute = options["reduction"] == "none"
        saved = (h, linear_weight, linear_bias, target, weight, options)
        if ctx.recompute:  # saved through autograd: an in-place change later is detected
            ctx.save_for_backward(h, linear_weight, linear_bias, target, weight)
            ctx.options = options
            return to_tensor(_run(saved, 1.0, None)[0])
        loss, *grads = _run(saved, 1.0, ctx.need)
        ctx.grads = [to_tensor(g) for g in grads]
        # Which kept gradients backward may return as they are (grad_output 1): a leaf's
        # (AccumulateGrad copies a gradient that ctx still holds) and a product's
        # (gradient_is_consumed); through a view of a leaf, the leaf's .grad would be a
        # view of the kept gradient, and a backward with retain_graph=True after it wrong.
        ctx.hand_on = [t is None or t.grad_fn is None or gradient_is_consumed(t)
                       for t in (h, linear_weight, linear_bias)]
        return to_tensor(loss)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        if ctx.recompute:
            saved = (*ctx.saved_tensors, ctx.options)
            grads = [to_tensor(g) for g in _run(saved, grad_output.numpy(), ctx.need)[1:]]
        elif float(grad_output) == 1.0:
            grads = [g if g is None or hand_on else g.clone()
                     for g, hand_on in zip(ctx.grads, ctx.hand_on)]
        else:  # new tensors: the saved ones stay valid for another backward (retain_graph)
            grads = [None if g is None else g * grad_output for g in ctx.grads]
        return (*grads, None, None, None)


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=-100, label_smoothing=0.0, options=None,
                         chunk_bytes=None, softcap=None):
    """``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)`` without the
    logits: a drop-in for ``torch.nn.functional.linear_cross_entropy`` (torch 2.13) on CPU.

    Rows run in chunks (see :func:`fastsoftmax.linear_cross_entropy_with_grad`); gradients
    are those of autograd on the unfused computation.

    Parameters
    ----------
    input : Tensor
        float32, float64, bfloat16 or float16 hidden states ``(..., D)`` on the CPU
        (16-bit: the GEMMs run in that dtype, as the unfused version's; the loss math,
        the sums of grad_weight and grad_bias over chunks and the returned loss are
        float32).
    linear_weight : Tensor
        ``(V, D)``, input's dtype.
    target : Tensor
        Integer class indices of shape ``input.shape[:-1]``.
    linear_bias : Tensor, optional
        ``(V,)``, input's dtype.
    weight : Tensor, optional
        Per-class weights of the loss, ``(V,)``.
    reduction : {"mean", "sum", "none"}, optional
    ignore_index : int or None, optional
        Targets equal to it are ignored (None: -100, as torch). Default -100.
    label_smoothing : float, optional
        In [0, 1].
    options : torch.nn.LinearCrossEntropyOptions, optional
        Accepted for torch compatibility; its ``batch_chunk_size`` (rows per chunk) is
        honoured, the other fields do not apply (the chunked path always runs).
    chunk_bytes : int, optional
        Chunk budget in bytes (default :func:`fastsoftmax.get_linear_cross_entropy_chunk_bytes`).
    softcap : float, optional
        Logit soft-capping, ``softcap * tanh(logit / softcap)`` (Gemma 2: 30.0); not in
        torch's signature. Default None.

    Returns
    -------
    Tensor
        0-d for "mean"/"sum", ``input.shape[:-1]`` for "none"; input's dtype (float32
        for 16-bit input).

    Examples
    --------
    >>> import torch, fastsoftmax.torch as fst
    >>> h, w = torch.zeros(2, 3, requires_grad=True), torch.zeros(4, 3, requires_grad=True)
    >>> loss = fst.linear_cross_entropy(h, w, torch.tensor([1, 3]))
    >>> round(loss.item(), 4)  # log(4)
    1.3863
    >>> loss.backward()
    """
    check_tensor(input, "input")
    check_tensor(linear_weight, "linear_weight")
    check_tensor(target, "target", floating=False)
    for tensor, name in ((linear_bias, "linear_bias"), (weight, "weight")):
        if tensor is not None:
            check_tensor(tensor, name)
    if options is not None and getattr(options, "batch_chunk_size", None) is not None:
        chunk_bytes = options.batch_chunk_size * linear_weight.shape[0] * input.element_size()
    loss_options = dict(ignore_index=-100 if ignore_index is None else ignore_index,
                        reduction=reduction, label_smoothing=label_smoothing,
                        softcap=softcap, chunk_bytes=chunk_bytes)
    tensors = (input, linear_weight, linear_bias)
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad
                                              for t in tensors):
        return to_tensor(_run((*tensors, target, weight, loss_options), 1.0, None)[0])
    return _LinearCrossEntropy.apply(*tensors, target, weight, loss_options)


class LinearCrossEntropyLoss(torch.nn.Module):
    """An output layer and its cross-entropy loss, fused: ``nn.LinearCrossEntropyLoss``'s
    constructor (torch 2.13, without ``out_features``) backed by :func:`linear_cross_entropy`.

    Parameters
    ----------
    in_features, num_classes : int
        D and V: the layer is ``self.linear = nn.Linear(in_features, num_classes, bias)``.
    bias : bool, optional
        Whether the layer has a bias. Default False (as torch's).
    device, dtype : optional
        Of the layer's parameters.
    reduction, weight, ignore_index, label_smoothing, options, chunk_bytes, softcap
        As :func:`linear_cross_entropy`.

    Examples
    --------
    >>> import torch, fastsoftmax.torch as fst
    >>> head = fst.LinearCrossEntropyLoss(8, 100)
    >>> loss = head(torch.randn(4, 8), torch.tensor([1, 2, 3, 4]))
    >>> loss.backward()
    >>> head.linear.weight.grad.shape
    torch.Size([100, 8])
    """

    def __init__(self, in_features, num_classes, *, bias=False, device=None, dtype=None,
                 reduction="mean", weight=None, ignore_index=-100, label_smoothing=0.0,
                 options=None, chunk_bytes=None, softcap=None):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, num_classes, bias=bias, device=device,
                                      dtype=dtype)
        self.register_buffer("weight", weight)
        self.reduction, self.ignore_index = reduction, ignore_index
        self.label_smoothing, self.options, self.chunk_bytes = label_smoothing, options, chunk_bytes
        self.softcap = softcap

    def forward(self, input, target):
        return linear_cross_entropy(input, self.linear.weight, target,
                                    linear_bias=self.linear.bias, weight=self.weight,
                                    reduction=self.reduction, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, options=self.options,
                                    chunk_bytes=self.chunk_bytes, softcap=self.softcap)
