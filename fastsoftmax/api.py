"""Public functions: validate -> pick backend -> allocate output -> run one kernel.

The kernels see C-contiguous (rows, classes) arrays only; this module moves the
class axis last, copies non-contiguous inputs, and puts results back in shape.
With ``backend="numpy"`` the call goes to :mod:`fastsoftmax.reference` unchanged.
"""
import functools
import inspect

import numpy as np

from . import _backends, _dtypes, _ops, _validate, reference


def _dispatch(func):
    """Run the reference for backend "numpy", else ``func`` with the kernel module."""
    ref = getattr(reference, func.__name__)

    @functools.wraps(func)
    def wrapper(*args, backend=None, **kwargs):
        name = _backends.resolve(backend)
        if _backends.BACKENDS[name] is None:
            return ref(*args, **kwargs)
        return func(*args, kernels=_backends.kernels(name), **kwargs)

    # the public signature: ``backend=`` in place of the private ``kernels``
    signature = inspect.signature(func)
    parameters = [p for p in signature.parameters.values() if p.name != "kernels"]
    wrapper.__signature__ = signature.replace(parameters=[
        *parameters, inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None)])
    return wrapper


def _as_rows(x, axis):
    """``x`` with the class axis last, as a C-contiguous (rows, classes) array."""
    moved = np.moveaxis(x, axis, -1)
    return np.ascontiguousarray(moved).reshape(-1, moved.shape[-1])


def _same_shape_output(kernel, inputs, axis, out):
    """Run a kernel whose output has the inputs' shape (softmax, log_softmax, backward)."""
    first = next(iter(inputs.values()))
    if out is not None:
        _validate.out_array(out, first.shape, first.dtype, inputs)
    rows = [_as_rows(a, axis) for a in inputs.values()]
    direct = out is not None and axis == first.ndim - 1 and out.flags.c_contiguous
    result = out.reshape(rows[0].shape) if direct else np.empty_like(rows[0])
    kernel(*map(_dtypes.kernel_view, rows), _dtypes.kernel_view(result))
    if direct:
        return out
    shaped = np.moveaxis(result.reshape(np.moveaxis(first, axis, -1).shape), -1, axis)
    if out is None:
        return shaped
    out[...] = shaped
    return out


def _reduced_output(kernel, inputs, axis, out):
    """Run a kernel with one value per row: the result has the class axis removed."""
    first = next(iter(inputs.values()))
    shape = first.shape[:axis] + first.shape[axis + 1:]
    if out is not None:
        _validate.out_array(out, shape, first.dtype, inputs)
    result = np.empty(int(np.prod(shape)), dtype=first.dtype)
    kernel(*(_dtypes.kernel_view(_as_rows(a, axis)) for a in inputs.values()),
           _dtypes.kernel_view(result))
    if out is None:
        return result.reshape(shape)
    out[...] = result.reshape(shape)
    return out


_RUN_ROWS = {"same": _same_shape_output, "reduce": _reduced_output}

_AXIS_DOC = """axis : int, optional
        The class axis (default: last). Other axes are batch axes."""
_OUT_DOC = {
    "same": """out : ndarray, optional
        Where to write the result: exactly the result's shape and dtype. It may be
        the input array itself (in-place) but may not partly overlap it.""",
    "reduce": """out : ndarray, optional
        Where to write the result: the input's shape without ``axis``, its dtype."""}
_BACKEND_DOC = """backend : str, optional
        ``"cython"``, ``"numba"``, ``"numpy"`` (the reference) or ``"auto"``;
        default: the current backend (see :func:`fastsoftmax.set_backend`)."""


# backend= of the functions that run the cross-entropy kernel on arrays they build
# (linear_ce, sampled_softmax)
CROSS_ENTROPY_BACKEND_DOC = """backend : str, optional
        Backend of the cross-entropy kernel (``"cython"``, ``"numba"``, ``"numpy"``,
        ``"auto"``); default: the current backend."""


def filled_doc(**parts):
    """Decorator: each ``{name}`` of the function's docstring replaced by ``parts[name]``
    (str.replace, so the docstring's other braces need no escaping)."""
    def decorate(func):
        for name, text in parts.items():
            func.__doc__ = func.__doc__.replace("{" + name + "}", text)
        return func
    return decorate


def _doc(text):
    """Fill the shared parameter descriptions into a docstring."""
    def decorate(func):
        func.__doc__ = text.format(axis=_AXIS_DOC, out=_OUT_DOC["same"], backend=_BACKEND_DOC)
        return func
    return decorate


def _rows_docstring(op):
    parts = [op.summary, "", "    Parameters", "    ----------",
             *(f"    {doc}" for doc in op.input_docs),
             f"    {_AXIS_DOC}", f"    {_OUT_DOC[op.output]}", f"    {_BACKEND_DOC}", "",
             "    Returns", "    -------", f"    {op.returns}"]
    if op.example:
        parts += ["", "    Examples", "    --------", f"    {op.example}"]
    return "\n".join(parts) + "\n    "


def _rows_function(op):
    """The public function of a rows op of the table: validate, pick the backend, run."""
    P = inspect.Parameter
    signature = inspect.Signature(
        [P(name, P.POSITIONAL_OR_KEYWORD) for name in op.inputs]
        + [P("axis", P.POSITIONAL_OR_KEYWORD, default=-1), P("out", P.KEYWORD_ONLY, default=None),
           P("backend", P.KEYWORD_ONLY, default=None)])
    ref = getattr(reference, op.name)
    run = _RUN_ROWS[op.output]

    def function(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        arrays = [arguments[name] for name in op.inputs]
        name = _backends.resolve(arguments["backend"])
        kernels = _backends.kernels(name)
        if kernels is None:
            return ref(*arrays, arguments["axis"], out=arguments["out"])
        inputs, axis = _validate.rows_inputs(dict(zip(op.inputs, arrays)), arguments["axis"])
        return run(getattr(kernels, op.name), inputs, axis, arguments["out"])

    function.__name__ = function.__qualname__ = op.name
    function.__module__ = __name__
    function.__signature__ = signature
    function.__doc__ = _rows_docstring(op)
    return function


for _op in _ops.ROW_OPS:
    globals()[_op.name] = _rows_function(_op)
ROW_FUNCTIONS = [_op.name for _op in _ops.ROW_OPS]


_CE_DOC = """logits : array_like
        float32, float64, float16 or bfloat16 scores of shape ``(..., C)``: classes on
        the last axis. 16-bit logits are computed in float32; the gradient is rounded
        once to their dtype and the loss is float32.
    target : array_like
        Integer class indices of shape ``logits.shape[:-1]``, or float class
        probabilities of shape ``logits.shape`` (cast to the logits' dtype).
    weight : array_like, optional
        Per-class weights, shape ``(C,)``.
    ignore_index : int, optional
        Index targets equal to it contribute neither loss nor gradient and are
        left out of the mean's denominator (index targets only). Default -100.
    reduction : {{"none", "mean", "sum"}}, optional
        "mean" divides by the summed weight of the non-ignored targets (by the
        number of rows for probability targets); a mean over no target is NaN.
    label_smoothing : float, optional
        In [0, 1]: the target is mixed with the uniform distribution.
    z_loss : float, optional
        Weight s >= 0 of the z-loss (PaLM): ``s * logsumexp(row)**2`` is added to each
        non-ignored row's loss, which keeps the softmax normaliser near 1 (PaLM used
        1e-4). As Liger's ``lse_square_scale``: not multiplied by class weights, and its
        "mean" divides by the number of non-ignored rows. Default 0 (none).
    return_z_loss : bool, optional
        Also return the z-loss term (reduced as the loss), which the returned loss
        already includes: for logging.
    softcap : float, optional
        Logit soft-capping (Gemma 2 uses 30.0): every logit x is replaced by
        ``softcap * tanh(x / softcap)`` before everything else (the z-loss included),
        and the gradient is taken through it. An infinite logit is capped to
        ``+-softcap``, so it gives a finite loss. Default None (no capping)."""


def _reduction_scale(args):
    """Denominator of the "mean" reduction (1 for "none" and "sum")."""
    if args.reduction != "mean":
        return np.float64(1.0)
    if args.probabilities or args.weight is None:
        return _counted_rows(args)
    target = args.target[args.target != args.ignore_index] if args.may_ignore else args.target
    return np.sum(args.weight[target], dtype=np.float64)


def _counted_rows(args):
    """The rows with a target (not ignored), as float64."""
    if args.probabilities or not args.may_ignore:
        return np.float64(np.prod(args.loss_shape))
    return np.float64(np.count_nonzero(args.target != args.ignore_index))


def _grad_scales(grad_output, denominator):
    """(scale, row_scale) of a loss kernel: row r's gradient is scaled by
    scale * row_scale[r] (row_scale empty: by scale alone)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.float64(1.0) / denominator
    if grad_output.ndim:
        return float(scale), np.ascontiguousarray(grad_output, dtype=np.float64).reshape(-1)
    return float(scale * grad_output), np.empty(0)


def _reduce(row_loss, reduction, denominator, loss_shape, dtype):
    """The loss from the float64 row losses: as an array of the logits' dtype ("none"),
    or their sum (divided by ``denominator`` for "mean") as a scalar of that dtype."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf/NaN are data
        if reduction == "none":
            return row_loss.astype(dtype).reshape(loss_shape)
        total = np.sum(row_loss)
        return dtype.type(total / denominator if reduction == "mean" else total)


def _gradient_buffer(args, logits, out, inplace, inputs):
    """(result, rows): the array returned as the gradient (the logits themselves for
    inplace=True, ``out``, or a new array) and a C-contiguous (rows, classes) array the
    kernel writes (``result`` itself unless it is not C-contiguous)."""
    x = args.logits
    if inplace:
        _validate.inplace_buffer(args, out, logits)
        result = x
    elif out is not None:
        result = _validate.out_array(out, x.shape, x.dtype, inputs)
    else:
        result = np.empty(x.shape, dtype=x.dtype)
    n_classes = x.shape[-1]
    if result.flags.c_contiguous:
        return result, result.reshape(-1, n_classes)
    return result, np.empty((x.size // n_classes, n_classes), x.dtype)


def _copy_back(result, rows):
    """Write the kernel's rows into a result that is not C-contiguous (a copy then)."""
    if not result.flags.c_contiguous:
        result[...] = rows.reshape(result.shape)


def _run_cross_entropy(kernels, args, grad, grad_output):
    """Run the backend's cross-entropy kernel; return (loss, z-loss term) in the logits'
    compute dtype (float32 for 16-bit logits), the loss including the z-loss term."""
    x = args.logits
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    n_rows, n_classes = rows.shape
    denominator = _reduction_scale(args)
    weight, weight_sum = _class_weight(args.weight, n_classes)
    scale, row_scale = _grad_scales(grad_output, denominator)
    row_loss = np.empty(n_rows, dtype=np.float64)
    # the z-loss's mean counts rows, whatever the class weights (Liger's semantics)
    z_denominator = _counted_rows(args) if args.z_loss and args.reduction == "mean" else \
        np.float64(1.0)
    z_scale, _ = _grad_scales(grad_output, z_denominator)
    row_z_loss = np.empty(n_rows if args.z_loss else 0, dtype=np.float64)
    view, grad = _dtypes.kernel_view(rows), None if grad is None else _dtypes.kernel_view(grad)
    if args.probabilities:
        target = _dtypes.kernel_view(np.ascontiguousarray(args.target).reshape(rows.shape))
        kernels.cross_entropy_prob(view, target, weight, args.label_smoothing, args.z_loss,
                                   args.softcap, scale, z_scale, row_scale, row_loss,
                                   row_z_loss, grad)
    else:
        kernels.cross_entropy_index(view, np.ascontiguousarray(args.target).reshape(-1),
                                    weight, weight_sum, args.ignore_index,
                                    args.label_smoothing, args.z_loss, args.softcap, scale,
                                    z_scale, row_scale, row_loss, row_z_loss, grad)
    loss_dtype = _dtypes.compute_dtype(x.dtype)
    if not args.z_loss:
        loss = _reduce(row_loss, args.reduction, denominator, args.loss_shape, loss_dtype)
        return loss, np.zeros(np.shape(loss), loss_dtype)[()]
    float64 = np.dtype(np.float64)
    loss = _reduce(row_loss, args.reduction, denominator, args.loss_shape, float64)
    z_term = _reduce(row_z_loss, args.reduction, z_denominator, args.loss_shape, float64)
    with np.errstate(over="ignore"):  # beyond float32's range: inf
        return (np.asarray(loss + z_term).astype(loss_dtype)[()],
                np.asarray(z_term).astype(loss_dtype)[()])


def _class_weight(weight, n_classes):
    """(weight, weight_sum) as a kernel takes them. weight=None stays None (every class
    weighs 1): no ones(C) array, which was 4 GiB at C = 2**30."""
    if weight is None:
        return None, float(n_classes)
    return weight, float(np.sum(weight, dtype=np.float64))


def _cross_entropy_chunk(kernels, rows, target, weight, weight_sum, ignore_index,
                         label_smoothing, softcap, scale, row_scale, row_loss, inplace):
    """Cross-entropy of one chunk of a validated problem, without validating again.

    For callers that run many chunks of one problem (``fastsoftmax.linear_cross_entropy``):
    ``rows`` is a C-contiguous (rows, C) array of a float dtype, ``target`` int64 indices
    checked by ``_validate.cross_entropy_args``, ``weight``/``weight_sum`` from
    ``_class_weight``, ``scale``/``row_scale`` as from ``_grad_scales``. Row losses go to
    ``row_loss`` (float64); with ``inplace`` the gradient overwrites ``rows``. ``kernels``
    None runs the reference.
    """
    if kernels is not None:
        view = _dtypes.kernel_view(rows)
        kernels.cross_entropy_index(view, target, weight, weight_sum, ignore_index,
                                    label_smoothing, 0.0, softcap, scale, 0.0, row_scale,
                                    row_loss, np.empty(0), view if inplace else None)
        return
    options = dict(weight=weight, ignore_index=ignore_index, reduction="none",
                   label_smoothing=label_smoothing, softcap=softcap)
    if inplace:
        grad_output = scale * row_scale if row_scale.size else scale
        row_loss[:], _ = reference.cross_entropy_with_grad(rows, target, grad_output=grad_output,
                                                           inplace=True, **options)
    else:
        row_loss[:] = reference.cross_entropy(rows, target, **options)


@_dispatch
@_doc("""Cross-entropy loss, as ``torch.nn.functional.cross_entropy`` with classes last.

    Reads the logits once and writes no (rows, classes) array.

    Parameters
    ----------
    """ + _CE_DOC + """
    {backend}

    Returns
    -------
    loss : numpy scalar or ndarray
        A scalar of the logits' dtype (float32 for 16-bit logits) for "mean"/"sum"
        (accumulated in float64), an array of shape ``logits.shape[:-1]`` for "none".
        It includes the z-loss.
    z_loss_term : numpy scalar or ndarray
        Only with ``return_z_loss=True``: the z-loss part of ``loss``, alike.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> float(fs.cross_entropy(np.zeros((2, 4)), np.array([1, 3])))  # log(4)
    1.3862943611198906
    >>> loss, z = fs.cross_entropy(np.zeros((2, 4)), np.array([1, 3]), z_loss=0.5,
    ...                            return_z_loss=True)
    >>> float(z)  # 0.5 * log(4)**2
    0.9609060278364028
    """)
def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, return_z_loss=False, softcap=None,
                  kernels):
    args = _validate.cross_entropy_args(logits, target, weight, ignore_index, reduction,
                                        label_smoothing, z_loss, softcap)
    loss, z_term = _run_cross_entropy(kernels, args, None, np.float64(1.0))
    return (loss, z_term) if return_z_loss else loss


@_dispatch
@_doc("""Cross-entropy loss and its gradient with respect to the logits, in one sweep.

    Each row of logits is read from memory once; the loss and
    ``d(loss * grad_output) / d(logits)`` come out of the same passes.

    Parameters
    ----------
    """ + _CE_DOC + """
    grad_output : float or array_like, optional
        Gradient flowing into the loss: a scalar, or for ``reduction="none"`` an
        array of the loss's shape. Default 1.
    inplace : bool, optional
        Write the gradient into ``logits`` (which must be a writeable
        C-contiguous NumPy array in native byte order) and return it: no extra
        (rows, classes) memory. The logits are lost.
    out : ndarray, optional
        Where to write the gradient: the logits' shape and dtype. It may be ``logits``
        itself but not share memory with a probability ``target`` (the kernel reads a
        target row after it starts writing the gradient row): ValueError.
    {backend}

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`cross_entropy`.
    grad : ndarray
        Gradient, shape and dtype of ``logits`` (``logits`` itself when
        ``inplace=True``, ``out`` when given).
    z_loss_term : numpy scalar or ndarray
        Only with ``return_z_loss=True``: as :func:`cross_entropy`.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> loss, grad = fs.cross_entropy_with_grad(np.zeros((1, 4)), np.array([1]))
    >>> grad
    array([[ 0.25, -0.75,  0.25,  0.25]])
    """)
def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, z_loss=0.0, return_z_loss=False,
                            softcap=None, grad_output=1.0, inplace=False, out=None, kernels):
    args = _validate.cross_entropy_args(logits, target, weight, ignore_index, reduction,
                                        label_smoothing, z_loss, softcap)
    g = _validate.grad_output_array(grad_output, reduction, args.loss_shape)
    _validate.separate_out(out, {"target": args.target})
    result, grad = _gradient_buffer(args, logits, out, inplace, {"logits": args.logits})
    loss, z_term = _run_cross_entropy(kernels, args, grad, g)
    _copy_back(result, grad)
    return (loss, result, z_term) if return_z_loss else (loss, result)


@_dispatch
@_doc("""Entropy of ``softmax(logits)`` per row and its gradient, in one sweep.

    ``H = -sum(p log p)`` in nats over the last axis (as
    ``torch.distributions.Categorical(logits=logits).entropy()``: a -inf logit adds 0, a
    row holding NaN or +inf, or only -inf, gives NaN), and
    ``d(H * grad_output) / d(logits) = -p (log p + H) * grad_output``. Each row is read
    once; H is computed as ``log(sum(e)) + sum(e (m - x)) / sum(e)`` with
    ``e = exp(x - m)``, a sum of two non-negative terms, so it does not cancel at large
    logits.

    Parameters
    ----------
    logits : array_like
        float32, float64, float16 or bfloat16 scores of shape ``(..., C)``: classes on
        the last axis. 16-bit logits are computed in float32; the gradient is rounded
        once to their dtype and the entropy is float32.
    reduction : {{"none", "mean", "sum"}}, optional
        "none" (default): one entropy per row; "mean" and "sum" over the rows (a mean
        over no rows is NaN).
    grad_output : float or array_like, optional
        Gradient flowing into the result: a scalar, or for ``reduction="none"`` an
        array of the result's shape. Default 1.
    out : ndarray, optional
        Where to write the gradient: the logits' shape and dtype.
    inplace : bool, optional
        Write the gradient into ``logits`` (a writeable C-contiguous float array) and
        return it: no extra (rows, classes) memory. The logits are lost.
    {backend}

    Returns
    -------
    entropy : numpy scalar or ndarray
        Shape ``logits.shape[:-1]`` for "none", else a scalar; the logits' dtype,
        float32 for 16-bit logits (accumulated in float64).
    grad : ndarray
        The gradient, shape and dtype of ``logits`` (``logits`` itself when
        ``inplace=True``, ``out`` when given).

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> h, grad = fs.entropy_with_grad(np.zeros((1, 4)))
    >>> h  # log(4): the uniform distribution
    array([1.38629436])
    >>> grad
    array([[0., 0., 0., 0.]])
    """)
def entropy_with_grad(logits, *, reduction="none", grad_output=1.0, out=None, inplace=False,
                      kernels):
    args = _validate.entropy_args(logits, reduction)
    g = _validate.grad_output_array(grad_output, reduction, args.loss_shape)
    result, grad = _gradient_buffer(args, logits, out, inplace, {"logits": args.logits})
    x = args.logits
    rows = np.ascontiguousarray(x).reshape(grad.shape)
    denominator = np.float64(grad.shape[0]) if reduction == "mean" else np.float64(1.0)
    scale, row_scale = _grad_scales(g, denominator)
    row_loss = np.empty(grad.shape[0], dtype=np.float64)
    kernels.entropy_with_grad(_dtypes.kernel_view(rows), scale, row_scale, row_loss,
                              _dtypes.kernel_view(grad))
    _copy_back(result, grad)
    loss_dtype = _dtypes.compute_dtype(x.dtype)
    return _reduce(row_loss, reduction, denominator, args.loss_shape, loss_dtype), result


# ---- elementwise ops (issue 17): KL divergence, binary cross-entropy with logits,
# sigmoid, log-sigmoid. The kernels see flat C-contiguous arrays (any shape); weights and
# grad_output reach them as periodic "streams" (fastsoftmax._ops).

# A stream shorter than this is tiled up to it, so that the kernels' segments of
# constant stream offset stay long (a pos_weight of 3 classes would make them 3 long).
_STREAM_PERIOD = 4096


@functools.lru_cache(maxsize=4)
def _ones_stream(dtype):
    ones = np.ones(_STREAM_PERIOD, dtype)
    ones.flags.writeable = False
    return ones


def _stream(a, shape, dtype):
    """``a`` (None: ones), broadcast to ``shape``, as a periodic stream: the trailing block
    of the broadcast that ``a`` varies over (a (C,) weight: C values, tiled), or the whole
    broadcast when ``a`` varies along the first axis."""
    if a is None or not np.prod(shape):
        return _ones_stream(np.dtype(dtype))
    padded = (1,) * (len(shape) - a.ndim) + a.shape
    first = next((i for i, size in enumerate(padded) if size != 1), len(shape))
    block = np.broadcast_to(a.reshape(padded[first:]), shape[first:])
    block = np.ascontiguousarray(block, dtype=dtype).reshape(-1)
    if block.size < _STREAM_PERIOD:
        block = np.tile(block, -(-_STREAM_PERIOD // block.size))
    return block


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def _elementwise_grad_buffer(args, input, out, inplace):
    """(result, flat): the array returned as the gradient (``input`` itself for
    inplace=True, ``out``, or a new array) and the flat C-contiguous array the kernel
    writes (``result``'s memory unless it is not C-contiguous)."""
    x = args.input
    if inplace:
        _validate.elementwise_inplace(args, out, input)
        result = x
    elif out is not None:
        result = _validate.out_array(out, x.shape, x.dtype, {"input": x, "target": args.target})
    else:
        result = np.empty(x.shape, x.dtype)
    if result.flags.c_contiguous:
        return result, result.reshape(-1)
    return result, np.empty(x.size, x.dtype)


def _run_elementwise_loss(kernel, args, operands, grad_output, grad):
    """Run a loss kernel (``operands``: its arguments between target and grad_output);
    return the loss in the input's compute dtype (float32 for 16-bit input)."""
    x = args.input
    denominator = args.denominator
    scale, per_element = _grad_scales(grad_output, denominator)
    stream = per_element if per_element.size else _ones_stream(np.dtype(np.float64))
    loss_dtype = _dtypes.compute_dtype(x.dtype)
    loss = np.empty(x.size, loss_dtype) if args.reduction == "none" else None
    total = kernel(_dtypes.kernel_view(_flat(x)), _dtypes.kernel_view(_flat(args.target)),
                   *operands, stream, scale, loss,
                   None if grad is None else _dtypes.kernel_view(grad))
    if loss is not None:  # a 0-d input's loss is a scalar, as the reference's
        return loss.reshape(x.shape) if x.ndim else loss[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf/NaN are data
        return loss_dtype.type(total / denominator)


def _elementwise_loss_with_grad(kernel, args, operands, grad_output, input, out, inplace):
    g = _validate.grad_output_array(grad_output, args.reduction, args.loss_shape)
    result, grad = _elementwise_grad_buffer(args, input, out, inplace)
    loss = _run_elementwise_loss(kernel, args, operands, g, grad)
    if not result.flags.c_contiguous:
        result[...] = grad.reshape(result.shape)
    return loss, result


_KL_DOC = """input : array_like
        float32, float64, float16 or bfloat16 log-probabilities, any shape (16-bit:
        computed in float32, the loss float32, the gradient rounded once to input's dtype).
    target : array_like
        Probabilities (log-probabilities with ``log_target=True``) of input's shape, or
        broadcasting to it; cast to input's dtype (16-bit too). Values out of [0, 1] are
        data: as in torch, a negative probability gives NaN.
    reduction : {{"none", "mean", "sum", "batchmean"}}, optional
        "mean" (default, as torch) divides the sum by the number of elements;
        "batchmean" by ``input.shape[0]`` (the KL divergence per sample when the
        distributions lie along the other axes); "none" gives every element's term.
    log_target : bool, optional
        The target holds log-probabilities."""


@_dispatch
@_doc("""KL divergence, as ``torch.nn.functional.kl_div``: the pointwise terms
    ``target * (log(target) - input)`` of log-probabilities ``input``, reduced.

    A term is ``xlogy(t, t) - t * x`` (a target of 0 adds 0 while ``input`` is finite;
    as in torch, 0 times an infinite input is NaN), or ``exp(t) * (t - x)`` with
    ``log_target=True``. Elementwise: any shape, no class axis. The sum runs in float64.

    Parameters
    ----------
    """ + _KL_DOC + """
    {backend}

    Returns
    -------
    numpy scalar or ndarray
        A scalar of input's dtype (float32 for 16-bit input), or for "none" an array of
        input's shape.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> p = np.array([[0.25, 0.75]])
    >>> float(fs.kl_div(np.log(p), p, reduction="batchmean"))  # KL(p || p)
    0.0
    """)
def kl_div(input, target, *, reduction="mean", log_target=False, kernels):
    args = _validate.kl_div_args(input, target, reduction, log_target)
    return _run_elementwise_loss(kernels.kl_div, args, (bool(log_target),), np.float64(1.0),
                                 None)


@_dispatch
@_doc("""KL divergence (as :func:`kl_div`) and its gradient with respect to ``input``,
    from one sweep.

    ``d(loss * grad_output) / d input`` is ``-target`` (``-exp(target)`` with
    ``log_target=True``), divided as the reduction divides, times ``grad_output``.

    Parameters
    ----------
    """ + _KL_DOC + """
    grad_output : float or array_like, optional
        Gradient flowing into the loss: a scalar, or for ``reduction="none"`` an array
        of input's shape. Default 1.
    out : ndarray, optional
        Where to write the gradient: input's shape and dtype.
    inplace : bool, optional
        Write the gradient into ``input`` (a writeable C-contiguous float array) and
        return it: no extra memory. The input is lost.
    {backend}

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`kl_div`.
    grad : ndarray
        The gradient, input's shape and dtype (``input`` itself when ``inplace=True``,
        ``out`` when given).

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> loss, grad = fs.kl_div_with_grad(np.log([[0.5, 0.5]]), np.array([[0.25, 0.75]]),
    ...                                  reduction="sum")
    >>> grad
    array([[-0.25, -0.75]])
    """)
def kl_div_with_grad(input, target, *, reduction="mean", log_target=False, grad_output=1.0,
                     out=None, inplace=False, kernels):
    args = _validate.kl_div_args(input, target, reduction, log_target)
    return _elementwise_loss_with_grad(kernels.kl_div, args, (bool(log_target),), grad_output,
                                       input, out, inplace)


_BCE_DOC = """input : array_like
        float32, float64, float16 or bfloat16 logits, any shape (16-bit: computed in
        float32, the loss float32, the gradient rounded once to input's dtype).
    target : array_like
        Labels of input's shape, cast to input's dtype (16-bit too): 0 or 1, or soft
        labels in [0, 1] (not checked: values outside are data, as in torch).
    weight : array_like, optional
        Weights of the element losses, broadcasting to input's shape (used in float32
        for 16-bit input).
    pos_weight : array_like, optional
        Weights of the positive term, broadcasting to input's shape: a (C,) array
        weighs the classes of the last axis (``num_negatives / num_positives`` per class
        balances them). Used in float32 for 16-bit input.
    reduction : {{"none", "mean", "sum"}}, optional
        "mean" (default) divides the sum by the number of elements, whatever the
        weights (as torch)."""

_BCE_FORMULA = """The element loss is ``w * ((1 - y) * softplus(x) + pw * y * softplus(-x))``,
    which is torch's ``w * ((1 - y) * x - (1 + (pw - 1) * y) * log_sigmoid(x))``
    rearranged so that it does not overflow or cancel. **One difference from torch:** a
    term whose factor is 0 is 0 at an infinite logit, so ``x = +inf, y = 1`` and
    ``x = -inf, y = 0`` give 0 (and ``x = -inf, y = 0.5`` gives inf) where torch gives
    NaN (pytorch#49844, pytorch#102894): the limits of the loss. The gradient is finite
    for every logit. NaN stays NaN."""


@_dispatch
@_doc("""Binary cross-entropy with logits, as
    ``torch.nn.functional.binary_cross_entropy_with_logits`` (multi-label
    classification, logistic regression).

    """ + _BCE_FORMULA + """ The sum runs in float64.

    Parameters
    ----------
    """ + _BCE_DOC + """
    {backend}

    Returns
    -------
    numpy scalar or ndarray
        A scalar of input's dtype (float32 for 16-bit input), or for "none" an array of
        input's shape.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> float(fs.binary_cross_entropy_with_logits(np.zeros(4), np.ones(4)))  # log(2)
    0.6931471805599453
    """)
def binary_cross_entropy_with_logits(input, target, *, weight=None, pos_weight=None,
                                     reduction="mean", kernels):
    args = _validate.bce_args(input, target, weight, pos_weight, reduction)
    return _run_elementwise_loss(kernels.binary_cross_entropy_with_logits, args,
                                 _bce_streams(args), np.float64(1.0), None)


def _bce_streams(args):
    shape, dtype = args.input.shape, _dtypes.compute_dtype(args.input.dtype)
    return _stream(args.weight, shape, dtype), _stream(args.pos_weight, shape, dtype)


@_dispatch
@_doc("""Binary cross-entropy with logits (as :func:`binary_cross_entropy_with_logits`)
    and its gradient with respect to ``input``, from one sweep.

    ``d loss / d x = w * ((1 - y) * sigmoid(x) - pw * y * sigmoid(-x))``, divided by the
    element count for "mean", times ``grad_output``.

    """ + _BCE_FORMULA + """

    Parameters
    ----------
    """ + _BCE_DOC + """
    grad_output : float or array_like, optional
        Gradient flowing into the loss: a scalar, or for ``reduction="none"`` an array
        of input's shape. Default 1.
    inplace : bool, optional
        Write the gradient into ``input`` (a writeable C-contiguous float array) and
        return it: no extra memory. The logits are lost.
    out : ndarray, optional
        Where to write the gradient: input's shape and dtype.
    {backend}

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`binary_cross_entropy_with_logits`.
    grad : ndarray
        The gradient, input's shape and dtype (``input`` itself when ``inplace=True``,
        ``out`` when given).

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> loss, grad = fs.binary_cross_entropy_with_logits_with_grad(
    ...     np.zeros(2), np.array([0.0, 1.0]), reduction="sum")
    >>> grad
    array([ 0.5, -0.5])
    """)
def binary_cross_entropy_with_logits_with_grad(input, target, *, weight=None, pos_weight=None,
                                               reduction="mean", grad_output=1.0,
                                               inplace=False, out=None, kernels):
    args = _validate.bce_args(input, target, weight, pos_weight, reduction)
    return _elementwise_loss_with_grad(kernels.binary_cross_entropy_with_logits, args,
                                       _bce_streams(args), grad_output, input, out, inplace)


def _elementwise_output(kernel, x, out):
    """Run an elementwise kernel into a result of x's shape (``out`` when given)."""
    x = _validate.float_array(x, "x")
    if out is not None:
        _validate.out_array(out, x.shape, x.dtype, {"x": x})
    direct = out is not None and out.flags.c_contiguous
    result = out.reshape(-1) if direct else np.empty(x.size, x.dtype)
    kernel(_dtypes.kernel_view(_flat(x)), _dtypes.kernel_view(result))
    if direct:
        return out
    if out is None:
        return result.reshape(x.shape)
    out[...] = result.reshape(x.shape)
    return out


_SIGMOID_PARAMETERS = """Parameters
    ----------
    x : array_like
        float32, float64, float16 or bfloat16 values, any shape (16-bit: computed in
        float32, the result rounded once to x's dtype).
    out : ndarray, optional
        Where to write the result: x's shape and dtype; may be ``x`` itself.
    {backend}

    Returns
    -------
    ndarray
        x's shape and dtype."""


@_dispatch
@_doc("""Logistic sigmoid ``1 / (1 + exp(-x))``, elementwise, without overflow.

    Computed as ``1 / (1 + exp(-|x|))`` or ``exp(-|x|) / (1 + exp(-|x|))`` by the sign
    of x: 0 at -inf, 1 at +inf, NaN for NaN (as ``torch.sigmoid``). float32 input is
    computed in float32, within 3 ulp of the float64 result, except below float32's
    smallest normal number: 0 for x < -87.3, where torch gives subnormals down to -88.7
    (so does bfloat16 input, computed in float32 too).

    """ + _SIGMOID_PARAMETERS + """

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> fs.sigmoid(np.array([0.0, np.inf]))
    array([0.5, 1. ])
    """)
def sigmoid(x, *, out=None, kernels):
    return _elementwise_output(kernels.sigmoid, x, out)


@_dispatch
@_doc("""Log of the logistic sigmoid, ``-log(1 + exp(-x))``, elementwise and accurate for
    every x.

    Computed as ``min(x, 0) - log1p(exp(-|x|))``: -inf at -inf, 0 at +inf, NaN for NaN
    (as ``torch.nn.functional.logsigmoid``).

    """ + _SIGMOID_PARAMETERS + """

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> fs.log_sigmoid(np.array([0.0]))  # -log(2)
    array([-0.69314718])
    """)
def log_sigmoid(x, *, out=None, kernels):
    return _elementwise_output(kernels.log_sigmoid, x, out)


# ---- JSD / KL between two sets of logits (issue 17): distillation ----

_JSD_DOC = """student_logits : array_like
        float32, float64, float16 or bfloat16 logits of shape ``(..., C)``: classes on
        the last axis. 16-bit logits are computed in float32; the gradient is rounded
        once to their dtype and the loss is float32.
    teacher_logits : array_like
        The teacher's logits: the student's shape and dtype. No gradient is taken for it.
    beta : float, optional
        In [0, 1]: the teacher's weight in the mixture ``M``. 0 is the forward
        ``KL(P || Q)``, 1 the reverse ``KL(Q || P)``, 0.5 (default) the symmetric JSD.
    temperature : float, optional
        T > 0: both logit arrays are divided by it. No T**2 factor is applied.
    reduction : {{"none", "mean", "sum"}}, optional
        "none": one loss per row; "mean" (default): their mean over the rows (TRL's and
        Liger's "batchmean" per token; over no rows it is NaN); "sum"."""

_JSD_FORMULA = """With ``P = softmax(teacher_logits / T)``, ``Q = softmax(student_logits / T)`` and
    ``M = beta P + (1 - beta) Q`` per row, the loss is TRL's and Liger's generalised JSD
    ``beta KL(P || M) + (1 - beta) KL(Q || M)`` for 0 < beta < 1, and its limits as the
    named divergences: ``KL(P || Q)`` at beta = 0, ``KL(Q || P)`` at beta = 1 (the
    formula itself is 0 at both ends). A term weighted by a probability of 0 adds 0, also
    for -inf logits (no NaN from ``0 * log 0``); a class with ``Q = 0 < P`` makes the
    forward KL +inf, one with ``P = 0 < Q`` the reverse KL +inf (its gradient is then NaN).
    A row holding NaN or +inf, or of only -inf, in either array gives NaN. Each row's
    loss is accumulated in float64."""


def _run_jsd(kernels, args, grad, grad_output):
    """Run the backend's JSD kernel; return the loss in the logits' compute dtype
    (float32 for 16-bit logits)."""
    x = args.logits
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    teacher = np.ascontiguousarray(args.teacher).reshape(rows.shape)
    denominator = np.float64(rows.shape[0]) if args.reduction == "mean" else np.float64(1.0)
    scale, row_scale = _grad_scales(grad_output, denominator)
    row_loss = np.empty(rows.shape[0], dtype=np.float64)
    kernels.jsd_logits(_dtypes.kernel_view(rows), _dtypes.kernel_view(teacher), args.beta,
                       1.0 / args.temperature, scale, row_scale, row_loss,
                       None if grad is None else _dtypes.kernel_view(grad))
    return _reduce(row_loss, args.reduction, denominator, args.loss_shape,
                   _dtypes.compute_dtype(x.dtype))


@_dispatch
@_doc("""Generalised Jensen-Shannon divergence between the softmaxes of a student's and a
    teacher's logits (knowledge distillation), per row.

    """ + _JSD_FORMULA + """

    Parameters
    ----------
    """ + _JSD_DOC + """
    {backend}

    Returns
    -------
    numpy scalar or ndarray
        A scalar of the logits' dtype (float32 for 16-bit logits) for "mean"/"sum", an
        array of shape ``student_logits.shape[:-1]`` for "none".

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> s, t = np.log([[0.5, 0.5]]), np.log([[0.25, 0.75]])
    >>> round(float(fs.jsd_logits(s, t, beta=0.0)), 12)  # KL(P || Q) = sum P log(P / Q)
    0.130812035941
    """)
def jsd_logits(student_logits, teacher_logits, *, beta=0.5, temperature=1.0, reduction="mean",
               kernels):
    args = _validate.jsd_args(student_logits, teacher_logits, beta, temperature, reduction)
    return _run_jsd(kernels, args, None, np.float64(1.0))


@_dispatch
@_doc("""Generalised JSD between a student's and a teacher's logits (as :func:`jsd_logits`)
    and its gradient with respect to the student's logits, in one sweep.

    Each pair of rows is read from memory once; the loss and
    ``d(loss * grad_output) / d student_logits`` come out of the same passes. The
    teacher is a constant. """ + _JSD_FORMULA + """

    Gradient, in closed form (``z = student_logits / T``, ``r = log Q - log M``):
    ``d JSD / d z = (1 - beta) Q (r - sum(Q r))``; at beta = 0 ``Q - P``; at beta = 1
    ``Q (log Q - log P - KL(Q || P))``; ``d / d student_logits`` is that divided by T.

    Parameters
    ----------
    """ + _JSD_DOC + """
    grad_output : float or array_like, optional
        Gradient flowing into the loss: a scalar, or for ``reduction="none"`` an array
        of the loss's shape. Default 1.
    out : ndarray, optional
        Where to write the gradient: the student's shape and dtype, sharing no memory
        with either logit array (the kernel reads them after it starts writing).
    {backend}

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`jsd_logits`.
    grad : ndarray
        The gradient, shape and dtype of ``student_logits`` (``out`` when given).

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> s, t = np.log([[0.5, 0.5]]), np.log([[0.25, 0.75]])
    >>> loss, grad = fs.jsd_logits_with_grad(s, t, beta=0.0)
    >>> grad  # Q - P
    array([[ 0.25, -0.25]])
    """)
def jsd_logits_with_grad(student_logits, teacher_logits, *, beta=0.5, temperature=1.0,
                         reduction="mean", grad_output=1.0, out=None, kernels):
    args = _validate.jsd_args(student_logits, teacher_logits, beta, temperature, reduction)
    g = _validate.grad_output_array(grad_output, reduction, args.loss_shape)
    inputs = {"student_logits": args.logits, "teacher_logits": args.teacher}
    _validate.separate_out(out, inputs)
    result, grad = _gradient_buffer(args, student_logits, out, False, inputs)
    loss = _run_jsd(kernels, args, grad, g)
    _copy_back(result, grad)
    return loss, result
