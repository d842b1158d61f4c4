"""PyTorch sampled softmax (TensorFlow's semantics): a function and an ``nn.Module`` with its
own class embeddings, backed by :func:`fastsoftmax.sampled_softmax_loss_with_grad`.

Autograd: the forward pass runs the gathers, the logits GEMM and the fused cross-entropy
kernel, which leaves ``d loss / d logits`` for a gradient of 1 per example in the small
(N, num_true + num_sampled) buffer; the backward pass scales its rows by ``grad_output``
and runs the two backward GEMMs. Only the true and sampled rows of the weight and bias
get a gradient: dense gradients are zeros with those rows filled in (``index_add_``; the
zero fill of a V x D gradient is the cost of a dense parameter), sparse COO gradients
with ``sparse=True`` (as ``nn.Embedding(sparse=True)``: for optimizers that take them,
e.g. ``torch.optim.SGD``, ``SparseAdam``). Re-exported by :mod:`fastsoftmax.torch`.
"""
import dataclasses

import numpy as np
import torch

from . import _validate, candidate_sampling, sampled_softmax
from ._torch_tensors import check_tensor, to_numpy, to_tensor

__all__ = ["sampled_softmax_loss", "SampledSoftmaxLoss"]


def _rows_gradient(ids, rows, shape, sparse):
    """A gradient of ``shape`` that is ``rows`` at ``ids`` (distinct) and 0 elsewhere."""
    ids, rows = torch.from_numpy(ids), to_tensor(rows)
    if sparse:
        # ids are sorted, distinct and in range (validated): no invariant check needed
        return torch.sparse_coo_tensor(ids[None], rows, shape, is_coalesced=True,
                                       check_invariants=False)
    return torch.zeros(shape, dtype=rows.dtype).index_add_(0, ids, rows)


class _SampledSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weight, bias, args, sparse):
        loss, grad, gathered = sampled_softmax._forward(args, args.sampled_values,
                                                        np.float64(1.0), None)
        ctx.state = args, gathered, grad
        ctx.sparse = sparse
        return torch.from_numpy(loss)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        args, gathered, grad = ctx.state
        # a new array: the saved gradient stays valid for another backward (retain_graph)
        scaled = grad * grad_output.numpy().astype(grad.dtype)[:, None]
        grad_inputs, (ids, weight_rows), (_, bias_rows) = sampled_softmax.sampled_gradients(
            args, gathered, scaled)
        return (to_tensor(grad_inputs) if ctx.needs_input_grad[0] else None,
                _rows_gradient(ids, weight_rows, args.weights.shape, ctx.sparse)
                if ctx.needs_input_grad[1] else None,
                _rows_gradient(ids, bias_rows, args.biases.shape, ctx.sparse)
                if ctx.needs_input_grad[2] else None,
                None, None)


def _labels_2d(labels, num_true):
    """Labels as (N, num_true); a 1-D tensor is taken as (N, 1) when num_true is 1."""
    check_tensor(labels, "labels", floating=False)
    return labels.reshape(-1, 1) if labels.ndim == 1 and num_true == 1 else labels


def sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, num_classes, *,
                         num_true=1, sampled_values=None, remove_accidental_hits=True, seed=None,
                         sparse=False):
    """Sampled softmax loss per example with autograd: ``tf.nn.sampled_softmax_loss``'s
    arguments on torch tensors (CPU, float32 or float64; bfloat16 and float16 are computed
    in float32, with a float32 loss and gradients rounded once to the inputs' dtype).

    Parameters
    ----------
    weights : Tensor
        Class embeddings ``(num_classes, D)``.
    biases : Tensor
        ``(num_classes,)``, weights' dtype.
    labels : Tensor
        Integer true classes ``(N, num_true)``, or ``(N,)`` when ``num_true`` is 1.
    inputs : Tensor
        ``(N, D)``, weights' dtype.
    num_sampled, num_classes, num_true, remove_accidental_hits, seed
        As :func:`fastsoftmax.sampled_softmax_loss`.
    sampled_values : tuple, optional
        ``(sampled_candidates, true_expected_count, sampled_expected_count)`` as NumPy
        arrays or tensors; default: TensorFlow's log-uniform unique draw.
    sparse : bool, optional
        Sparse COO gradients for ``weights`` and ``biases`` (their touched rows only).

    Returns
    -------
    Tensor
        ``(N,)``, inputs' dtype (float32 for 16-bit inputs).

    Examples
    --------
    >>> import torch, fastsoftmax.torch as fst
    >>> weights = torch.zeros(10, 3, requires_grad=True)
    >>> values = (torch.tensor([1, 2, 3]), torch.ones(1, 1), torch.ones(3))
    >>> loss = fst.sampled_softmax_loss(weights, torch.zeros(10), torch.tensor([[0]]),
    ...                                 torch.ones(1, 3), 3, 10, sampled_values=values)
    >>> round(loss.item(), 4)  # log(4)
    1.3863
    >>> loss.sum().backward()
    """
    for tensor, name in ((weights, "weights"), (biases, "biases"), (inputs, "inputs")):
        check_tensor(tensor, name)
    labels = _labels_2d(labels, num_true)
    if sampled_values is not None:
        sampled_values = tuple(v.detach().numpy() if isinstance(v, torch.Tensor) else v
                               for v in sampled_values)
    numpy = [to_numpy(t) for t in (weights, biases, labels, inputs)]
    args = _validate.sampled_softmax_args(*numpy, num_sampled, num_classes, num_true,
                                          sampled_values, remove_accidental_hits)
    if args.sampled_values is None:
        args = dataclasses.replace(args, sampled_values=sampled_softmax._sampled_values(args,
                                                                                         seed))
    tensors = (inputs, weights, biases)
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return torch.from_numpy(sampled_softmax._forward(args, args.sampled_values, None,
                                                         None)[0])
    return _SampledSoftmax.apply(*tensors, args, bool(sparse))


class SampledSoftmaxLoss(torch.nn.Module):
    """An output layer of ``num_classes`` classes trained with the sampled softmax.

    Holds ``weight`` ``(num_classes, embedding_dim)`` and ``bias`` ``(num_classes,)``
    (TensorFlow's layout, also ``nn.Linear``'s) and draws ``num_sampled`` classes per call
    from the log-uniform distribution (classes sorted by decreasing frequency). For
    evaluation use the full softmax, e.g.
    ``fastsoftmax.torch.linear_cross_entropy(h, module.weight, target, linear_bias=module.bias)``:
    the sampled loss underestimates it.

    Parameters
    ----------
    num_classes, embedding_dim, num_sampled : int
        V, D and the classes sampled per call.
    num_true : int, optional
        True classes per example. Default 1.
    remove_accidental_hits : bool, optional
        Default True (TensorFlow's).
    seed : None, int or numpy.random.Generator, optional
        Seed of the module's sampler (None: fresh entropy); each call advances it.
    sparse : bool, optional
        Sparse COO gradients for ``weight`` and ``bias``. Default False.
    reduction : {"none", "mean", "sum"}, optional
        "none" (default): the loss per example, as TensorFlow; "mean" and "sum" over the
        examples.
    device, dtype : optional
        Of the parameters (CPU; float32 or float64).

    Examples
    --------
    >>> import torch, fastsoftmax.torch as fst
    >>> head = fst.SampledSoftmaxLoss(1000, 16, 64, seed=0, reduction="mean")
    >>> loss = head(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
    >>> loss.backward()
    >>> int((head.weight.grad.abs().sum(1) > 0).sum()) <= 64 + 8  # touched rows only
    True
    """

    def __init__(self, num_classes, embedding_dim, num_sampled, *, num_true=1,
                 remove_accidental_hits=True, seed=None, sparse=False, reduction="none",
                 device=None, dtype=None):
        super().__init__()
        if reduction not in _validate.REDUCTIONS:
            raise ValueError(f"reduction must be one of {_validate.REDUCTIONS}, "
                             f"got {reduction!r}")
        factory = dict(device=device, dtype=dtype)
        # N(0, 1/D) embeddings and zero biases: logits of order 1 at the start
        self.weight = torch.nn.Parameter(torch.randn(num_classes, embedding_dim, **factory)
                                         / embedding_dim ** 0.5)
        self.bias = torch.nn.Parameter(torch.zeros(num_classes, **factory))
        self.num_classes, self.num_sampled, self.num_true = num_classes, num_sampled, num_true
        self.remove_accidental_hits, self.sparse, self.reduction = (
            remove_accidental_hits, sparse, reduction)
        self.generator = np.random.default_rng(seed)

    def sample(self, labels):
        """Draw this call's classes (TensorFlow's default sampler on the module's stream).

        Parameters
        ----------
        labels : Tensor
            ``(N, num_true)`` (or ``(N,)``) true classes.

        Returns
        -------
        tuple of ndarray
            ``(sampled_candidates, true_expected_count, sampled_expected_count)``.
        """
        labels = _labels_2d(labels, self.num_true)
        return candidate_sampling.log_uniform_candidate_sampler(
            labels.numpy(), self.num_true, self.num_sampled, True, self.num_classes,
            seed=self.generator)

    def forward(self, inputs, labels, sampled_values=None):
        """Loss of ``inputs`` ``(N, D)`` against ``labels`` ``(N, num_true)`` or ``(N,)``;
        ``sampled_values`` overrides this call's draw."""
        values = self.sample(labels) if sampled_values is None else sampled_values
        loss = sampled_softmax_loss(self.weight, self.bias, labels, inputs, self.num_sampled,
                                    self.num_classes, num_true=self.num_true,
                                    sampled_values=values,
                                    remove_accidental_hits=self.remove_accidental_hits,
                                    sparse=self.sparse)
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[self.reduction]
