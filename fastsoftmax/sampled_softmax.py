"""Sampled softmax loss (candidate sampling) with TensorFlow's semantics.

``tf.nn.sampled_softmax_loss``: the softmax cross-entropy of each example over its
``num_true`` true classes and ``num_sampled`` classes drawn for the whole batch, instead of
all ``num_classes``. Per example b (S = num_sampled, T = num_true)::

    z[b, t]     = inputs[b] . W[labels[b, t]] + bias[labels[b, t]] - log(true_expected_count[b, t])
    z[b, T + s] = inputs[b] . W[sampled[s]]   + bias[sampled[s]]   - log(sampled_expected_count[s])
    loss[b]     = cross-entropy of z[b] against the target (1/T, ..., 1/T, 0, ..., 0)

and a sampled class equal to one of the row's true classes (an "accidental hit") is
removed from that row.

How it runs: two gathers (the T rows of W per example and the S sampled rows), one GEMM
``inputs @ W[sampled].T`` into the (N, T + S) logits buffer, and the fused cross-entropy
kernel (:func:`fastsoftmax.cross_entropy_with_grad`, probability targets, in place), which
turns the buffer into ``G = d loss / d z`` in the sweep that computes the loss. The
backward GEMMs ``G[:, T:] @ W[sampled]`` and ``G[:, T:].T @ inputs`` use NumPy's BLAS on
``fastsoftmax.get_num_threads()`` threads. Only the touched rows of W and bias get a
gradient; repeated ids are summed.

float16 and bfloat16 arrays are stored types only (fastsoftmax/_dtypes.py): the gathered
rows and the inputs are converted to float32, the logits and every gradient are float32,
and the returned gradients are rounded once to the inputs' dtype (the loss stays float32).

Accidental hits: TensorFlow adds -FLT_MAX to those logits. Here they are set to the
logits' most negative finite value, ``np.finfo(dtype).min``, after the log-count shift:
its exponential is exactly 0 after the max-shift, so the class gets probability 0 and
gradient 0 as in TensorFlow, and since it is finite, the target's 0 times its log-softmax
is 0 (an -inf logit would make ``0 * -inf`` = NaN in the loss; adding -FLT_MAX to a very
negative float32 logit could round to -inf). The true classes are never removed, so every
row keeps a finite maximum.
"""
import numpy as np

from . import _backends, _dtypes, _validate, api, candidate_sampling, linear_ce

__all__ = ["sampled_softmax_loss", "sampled_softmax_loss_with_grad"]


def _sampled_values(args, seed):
    """The caller's sampled values, else TensorFlow's default draw (log-uniform, unique)."""
    if args.sampled_values is not None:
        return args.sampled_values
    return candidate_sampling.log_uniform_candidate_sampler(
        args.labels, args.num_true, args.num_sampled, True, args.num_classes, seed=seed)


def accidental_hits(labels, sampled):
    """(rows, positions) of every sampled position whose class is one of its row's labels.

    Parameters
    ----------
    labels : ndarray
        int64 true classes, shape (N, num_true).
    sampled : ndarray
        int64 sampled classes, shape (S,); they may repeat.

    Returns
    -------
    rows, positions : ndarray
        int64 index arrays into the (N, S) sampled logits (each hit once).
    """
    order = np.argsort(sampled, kind="stable")
    ordered = sampled[order]
    flat = labels.reshape(-1)
    first = np.searchsorted(ordered, flat, side="left")
    count = np.searchsorted(ordered, flat, side="right") - first
    # a label may match several sampled positions (unique=False), each found once
    label_index = np.repeat(np.arange(flat.size), count)
    offset = np.arange(label_index.size) - np.repeat(np.cumsum(count) - count, count)
    rows = label_index // labels.shape[1]
    positions = order[first[label_index] + offset]
    if labels.shape[1] > 1:  # two equal labels in a row hit the same positions twice
        rows, positions = np.unique(np.stack([rows, positions]), axis=1)
    return rows, positions


class _Gathered:
    """The rows of the problem that one step touches, in the compute type (float32 for
    16-bit arrays: the GEMMs, the logits and the gradients are float32, and only the
    returned gradients are rounded to the inputs' dtype)."""

    def __init__(self, args, sampled):
        dtype = _dtypes.compute_dtype(args.inputs.dtype)
        true_weights = np.take(args.weights, args.labels, axis=0)  # (N, T, D)
        sampled_weights = np.take(args.weights, sampled, axis=0)   # (S, D)
        self.inputs = args.inputs.astype(dtype, copy=False)        # (N, D)
        self.true_weights = true_weights.astype(dtype, copy=False)
        self.sampled_weights = sampled_weights.astype(dtype, copy=False)
        self.true_biases = args.biases[args.labels].astype(dtype, copy=False)  # (N, T)
        self.sampled_biases = args.biases[sampled].astype(dtype, copy=False)   # (S,)
        self.ids = np.concatenate([args.labels.reshape(-1), sampled])


def _logits(args, values, gathered):
    """The (N, T + S) sampled logits in the compute type, C-contiguous."""
    sampled, true_count, sampled_count = values
    x = gathered.inputs
    n, t = args.labels.shape
    dtype = x.dtype
    logits = np.empty((n, t + sampled.size), dtype)
    np.matmul(x, gathered.sampled_weights.T, out=logits[:, t:])
    logits[:, :t] = np.einsum("nd,ntd->nt", x, gathered.true_weights)
    logits[:, :t] += gathered.true_biases - np.log(true_count).astype(dtype)
    logits[:, t:] += gathered.sampled_biases - np.log(sampled_count).astype(dtype)
    if args.remove_accidental_hits:
        rows, positions = accidental_hits(args.labels, sampled)
        logits[rows, t + positions] = np.finfo(dtype).min
    return logits


def _targets(n, num_true, num_sampled, dtype):
    target = np.zeros((n, num_true + num_sampled), dtype)
    target[:, :num_true] = 1.0 / num_true
    return target


def segment_sum(ids, *values):
    """(sorted distinct ids, and per array of ``values`` the sum of its rows of each id).

    Sort-based: one stable argsort of the ids, then per array one gather of the rows and
    ``np.add.reduceat``. Measured 2026-12-02 on the AMD EPYC (shared, noisy), float32,
    2048 rows of 512 (1024 uniform labels and 1024 distinct log-uniform samples of
    V = 131072), 20 calls x 3 rounds: 5.9-6.0 ms against 10.5-11.2 ms for
    ``np.unique(return_inverse=True)`` + ``np.zeros`` + ``np.add.at``.

    Parameters
    ----------
    ids : ndarray
        int64 ids, shape (M,).
    *values : ndarray
        Arrays of shape (M, ...): the rows to sum per id.

    Returns
    -------
    ids : ndarray
        The distinct ids, ascending.
    *sums : ndarray
        Per array of ``values``, the summed rows (its dtype).
    """
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    if not ordered.size:
        return (ordered, *(np.zeros((0,) + v.shape[1:], v.dtype) for v in values))
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    return (ordered[starts], *(np.add.reduceat(v[order], starts, axis=0) for v in values))


def _backward(args, gathered, grad):
    """Gradients from ``grad`` = d loss / d logits (N, T + S): (grad_inputs, (ids,
    grad_weight_rows), (ids, grad_bias)), in the compute type."""
    x = gathered.inputs
    n, t = args.labels.shape
    grad_true, grad_sampled = grad[:, :t], grad[:, t:]
    grad_inputs = grad_sampled @ gathered.sampled_weights
    grad_inputs += np.einsum("nt,ntd->nd", grad_true, gathered.true_weights)
    # the rows of W's gradient, one per gathered id: labels first, then the samples
    rows = np.empty((gathered.ids.size, x.shape[1]), x.dtype)
    np.multiply(grad_true[:, :, None], x[:, None, :], out=rows[:n * t].reshape(n, t, x.shape[1]))
    np.matmul(grad_sampled.T, x, out=rows[n * t:])
    bias_rows = np.concatenate([grad_true.reshape(-1), grad_sampled.sum(axis=0)])
    ids, grad_weight, grad_bias = segment_sum(gathered.ids, rows, bias_rows)
    return grad_inputs, (ids, grad_weight), (ids, grad_bias)


def _forward(args, values, grad_output, backend):
    """(loss, the logits buffer turned into d(loss * grad_output)/d logits or None,
    the gathered rows). ``grad_output`` None: the loss alone."""
    gathered = _Gathered(args, values[0])
    with linear_ce._blas_threads(_backends.get_num_threads()):
        logits = _logits(args, values, gathered)
    target = _targets(logits.shape[0], args.num_true, args.num_sampled, logits.dtype)
    if grad_output is None:
        return api.cross_entropy(logits, target, reduction="none", backend=backend), None, \
            gathered
    loss, grad = api.cross_entropy_with_grad(logits, target, reduction="none",
                                             grad_output=grad_output, inplace=True,
                                             backend=backend)
    return loss, grad, gathered


def sampled_gradients(args, gathered, grad):
    """The backward GEMMs and segment sums of :func:`sampled_softmax_loss_with_grad` from a
    logits gradient (also used by :mod:`fastsoftmax.torch_sampled`)."""
    with linear_ce._blas_threads(_backends.get_num_threads()):
        grad_inputs, (ids, grad_weight), (_, grad_bias) = _backward(args, gathered, grad)
    dtype = args.inputs.dtype  # the one rounding of 16-bit gradients (no copy otherwise)
    return (grad_inputs.astype(dtype, copy=False), (ids, grad_weight.astype(dtype, copy=False)),
            (ids.copy(), grad_bias.astype(dtype, copy=False)))


_PARAMETERS_DOC = """weights : array_like
        float32, float64, float16 or bfloat16 class embeddings, shape
        ``(num_classes, D)`` (TensorFlow's layout: the transpose of a Dense kernel; the
        ``nn.Linear`` weight layout). 16-bit: computed in float32, the gradients rounded
        to the inputs' dtype, the loss float32.
    biases : array_like
        Class biases, shape ``(num_classes,)``, weights' dtype.
    labels : array_like
        Integer true classes, shape ``(N, num_true)``, in ``0..num_classes-1``.
    inputs : array_like
        The examples' activations, shape ``(N, D)``, weights' dtype.
    num_sampled : int
        Classes sampled for the whole batch, at most ``num_classes``.
    num_classes : int
        The number of classes (``weights.shape[0]``).
    num_true : int, optional
        True classes per example; each gets target ``1 / num_true``. Default 1.
    sampled_values : tuple, optional
        ``(sampled_candidates, true_expected_count, sampled_expected_count)`` as a
        candidate sampler returns them (shapes ``(num_sampled,)``, ``(N, num_true)``,
        ``(num_sampled,)``). Default: TensorFlow's,
        ``log_uniform_candidate_sampler(labels, num_true, num_sampled, unique=True,
        range_max=num_classes, seed=seed)``. The counts are data: one <= 0 gives an
        infinite logit and a NaN or infinite loss, as in TensorFlow.
    remove_accidental_hits : bool, optional
        Remove a sampled class from the rows where it is a true class (its logit is
        set to ``np.finfo(dtype).min``: probability and gradient 0). Default True.
    seed : None, int or numpy.random.Generator, optional
        Seed of the default sampler (None: fresh entropy on every call)."""
_documented = api.filled_doc(parameters=_PARAMETERS_DOC, backend=api.CROSS_ENTROPY_BACKEND_DOC)


@_documented
def sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, num_classes, *,
                         num_true=1, sampled_values=None, remove_accidental_hits=True,
                         seed=None, backend=None):
    """Sampled softmax loss per example, as ``tf.nn.sampled_softmax_loss``.

    A cheap estimate of the full softmax cross-entropy for training with very many
    classes (it underestimates it; evaluate with the full softmax, e.g.
    :func:`fastsoftmax.linear_cross_entropy`). See :mod:`fastsoftmax.sampled_softmax`
    for the formula.

    Parameters
    ----------
    {parameters}
    {backend}

    Returns
    -------
    ndarray
        The loss of each example, shape ``(N,)``, the inputs' dtype (float32 for 16-bit
        inputs).

    Raises
    ------
    ValueError
        Shapes that do not fit (both shapes named), ``num_sampled > num_classes``,
        counts below 1.
    IndexError
        A label or sampled class outside ``0..num_classes-1``.
    TypeError
        Integer or mixed float dtypes, non-integer labels or counts.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> weights, biases = np.zeros((10, 3)), np.zeros(10)
    >>> values = (np.array([1, 2, 3]), np.ones((2, 1)), np.ones(3))
    >>> fs.sampled_softmax_loss(weights, biases, np.array([[0], [2]]), np.ones((2, 3)),
    ...                         3, 10, sampled_values=values)  # log(4); log(3): a hit
    array([1.38629436, 1.09861229])
    """
    args = _validate.sampled_softmax_args(weights, biases, labels, inputs, num_sampled,
                                          num_classes, num_true, sampled_values,
                                          remove_accidental_hits)
    return _forward(args, _sampled_values(args, seed), None, backend)[0]


@_documented
def sampled_softmax_loss_with_grad(weights, biases, labels, inputs, num_sampled, num_classes, *,
                                   num_true=1, sampled_values=None, remove_accidental_hits=True,
                                   seed=None, grad_output=None, backend=None):
    """Sampled softmax loss (as :func:`sampled_softmax_loss`) and its gradients.

    The gradients are those of ``sum(loss * grad_output)`` (of ``sum(loss)`` without
    ``grad_output``) with respect to ``inputs`` and to the touched rows of ``weights``
    and ``biases`` (the true and sampled classes); the other rows have gradient 0. The
    loss and the logits' gradient come from one sweep of the fused cross-entropy kernel.

    Parameters
    ----------
    {parameters}
    grad_output : float or array_like, optional
        Gradient flowing into the loss: a scalar or one value per example, shape ``(N,)``.
        Default: 1.
    {backend}

    Returns
    -------
    loss : ndarray
        Shape ``(N,)``, the inputs' dtype (float32 for 16-bit inputs).
    grad_inputs : ndarray
        Shape ``(N, D)``, the inputs' dtype.
    weight_grad : tuple of ndarray
        ``(ids, rows)``: the distinct touched class ids (int64, ascending) and the
        gradient of those rows of ``weights``, shape ``(len(ids), D)``; the contributions
        of a repeated id are summed.
    bias_grad : tuple of ndarray
        ``(ids, values)``: the same ids and the gradient of those ``biases``.

    Raises
    ------
    ValueError, IndexError, TypeError
        As :func:`sampled_softmax_loss`, and for a ``grad_output`` of another shape.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> weights, biases = np.zeros((10, 3)), np.zeros(10)
    >>> values = (np.array([1, 2, 3]), np.ones((1, 1)), np.ones(3))
    >>> loss, grad_inputs, (ids, grad_w), (_, grad_b) = fs.sampled_softmax_loss_with_grad(
    ...     weights, biases, np.array([[0]]), np.ones((1, 3)), 3, 10, sampled_values=values)
    >>> ids, grad_b  # softmax - target over [0 | 1, 2, 3]
    (array([0, 1, 2, 3]), array([-0.75,  0.25,  0.25,  0.25]))
    """
    args = _validate.sampled_softmax_args(weights, biases, labels, inputs, num_sampled,
                                          num_classes, num_true, sampled_values,
                                          remove_accidental_hits)
    g = np.float64(1.0) if grad_output is None else \
        _validate.grad_output_array(grad_output, "none", (args.inputs.shape[0],))
    loss, grad, gathered = _forward(args, _sampled_values(args, seed), g, backend)
    return (loss, *sampled_gradients(args, gathered, grad))
