"""NumPy reference: the definition of the right answer.

Same signatures as the public API (without ``backend``), same validation, and the
plain textbook formulas evaluated in float64; results are returned in the input's
dtype. Cross-entropy follows ``torch.nn.functional.cross_entropy`` with the class
axis last. Slow on purpose: clarity over speed.
"""
import numpy as np

from . import _validate


def _finish(result, like, out, inputs):
    """Cast a float64 result to ``like``'s dtype, into ``out`` when given."""
    if out is None:
        with np.errstate(over="ignore"):
            return result.astype(like.dtype)
    _validate.out_array(out, result.shape, like.dtype, inputs)
    out[...] = result
    return out


def _rows_inputs(axis, **arrays):
    """The validated arrays (in order) and axis of a rows op."""
    checked, axis = _validate.rows_inputs(arrays, axis)
    return tuple(checked.values()), axis


def _log_softmax64(x, axis):
    x = x.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        shifted = x - np.max(x, axis=axis, keepdims=True)
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(x, axis=-1, *, out=None):
    """Reference :func:`fastsoftmax.softmax`: same parameters and result, float64 math."""
    (x,), axis = _rows_inputs(axis, x=x)
    with np.errstate(invalid="ignore"):
        return _finish(np.exp(_log_softmax64(x, axis)), x, out, {"x": x})


def log_softmax(x, axis=-1, *, out=None):
    """Reference :func:`fastsoftmax.log_softmax`: same parameters and result, float64 math."""
    (x,), axis = _rows_inputs(axis, x=x)
    return _finish(_log_softmax64(x, axis), x, out, {"x": x})


def logsumexp(x, axis=-1, *, out=None):
    """Reference :func:`fastsoftmax.logsumexp`: same parameters and result, float64 math."""
    (x,), axis = _rows_inputs(axis, x=x)
    x64 = x.astype(np.float64)
    m = np.max(x64, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # torch.logsumexp: -inf rows give -inf, not NaN
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = np.log(np.sum(np.exp(x64 - m), axis=axis, keepdims=True)) + m
    return _finish(np.squeeze(lse, axis), x, out, {"x": x})


def softmax_backward(y, dy, axis=-1, *, out=None):
    """Reference :func:`fastsoftmax.softmax_backward`: same parameters and result, float64 math."""
    (y, dy), axis = _rows_inputs(axis, y=y, dy=dy)
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    dx = y64 * (dy64 - np.sum(y64 * dy64, axis=axis, keepdims=True))
    return _finish(dx, y, out, {"y": y, "dy": dy})


def log_softmax_backward(logp, dy, axis=-1, *, out=None):
    """Reference :func:`fastsoftmax.log_softmax_backward`: same parameters and result,
    float64 math."""
    (logp, dy), axis = _rows_inputs(axis, logp=logp, dy=dy)
    dy64 = dy.astype(np.float64)
    dx = dy64 - np.exp(logp.astype(np.float64)) * np.sum(dy64, axis=axis, keepdims=True)
    return _finish(dx, logp, out, {"logp": logp, "dy": dy})


def _entropy64(x, axis):
    """Row entropies (axis removed) and -p log p's parts, float64: (H, p, logp)."""
    logp = _log_softmax64(x, axis)
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):
        # a class of probability 0 (a -inf logit) contributes 0, as in torch's Categorical;
        # NaN (a NaN, +inf or all -inf row) stays NaN
        p_logp = np.where(p == 0, 0.0, p * logp)
    return -np.sum(p_logp, axis=axis), p, logp


def entropy(logits, axis=-1, *, out=None):
    """Reference :func:`fastsoftmax.entropy`: ``-sum(p log p)``, p = softmax, float64 math."""
    (logits,), axis = _rows_inputs(axis, logits=logits)
    h, _, _ = _entropy64(logits, axis)
    return _finish(h, logits, out, {"logits": logits})


def entropy_with_grad(logits, *, reduction="none", grad_output=1.0, out=None, inplace=False):
    """Reference :func:`fastsoftmax.entropy_with_grad`: the analytic gradient
    ``-p (log p + H)`` (checked against torch autograd and finite differences)."""
    args = _validate.entropy_args(logits, reduction)
    g = _validate.grad_output_array(grad_output, reduction, args.loss_shape)
    if inplace:
        _validate.inplace_buffer(args, out, logits)
        out = args.logits
    h, p, logp = _entropy64(args.logits, -1)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero rows: a NaN mean
        scale = np.asarray(g / h.size if reduction == "mean" else g)
    with np.errstate(invalid="ignore"):
        grad = np.where(p == 0, 0.0, -p * (logp + h[..., None])) * scale[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = {"none": h, "sum": np.sum(h), "mean": np.sum(h) / np.float64(h.size)}[reduction]
    inputs = {} if inplace else {"logits": args.logits}
    return _loss_in_dtype(loss, args.logits.dtype), _finish(grad, args.logits, out, inputs)


def _cross_entropy64(args, grad_output):
    """Row losses, the reduced loss and the gradient in float64, from torch's definitions."""
    x = args.logits
    n_classes = x.shape[-1]
    eps = args.label_smoothing
    logp = _log_softmax64(x, -1)
    p = np.exp(logp)
    w = np.ones(n_classes) if args.weight is None else args.weight.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if args.probabilities:
            t = (1.0 - eps) * args.target.astype(np.float64) + eps / n_classes
            row_loss = -np.sum(w * t * logp, axis=-1)
            total_wt = np.sum(w * t, axis=-1, keepdims=True)
            unscaled_grad = total_wt * p - w * t
            denominator = float(np.prod(x.shape[:-1]))
        else:
            valid = args.target != args.ignore_index
            safe = np.where(valid, args.target, 0)
            w_y = w[safe]
            nll = -w_y * np.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
            row_loss = (1.0 - eps) * nll
            if eps > 0:
                row_loss = row_loss + eps / n_classes * -np.sum(w * logp, axis=-1)
            row_loss = np.where(valid, row_loss, 0.0)
            onehot = np.arange(n_classes) == safe[..., None]
            coef = ((1.0 - eps) * w_y)[..., None]
            unscaled_grad = (coef + eps / n_classes * w.sum()) * p - coef * onehot \
                - eps / n_classes * w
            denominator = np.sum(np.where(valid, w_y, 0.0))
        if args.reduction == "none":
            loss, scale = row_loss, grad_output
        elif args.reduction == "sum":
            loss, scale = np.sum(row_loss), grad_output
        else:
            loss = np.sum(row_loss) / np.float64(denominator)
            scale = grad_output / np.float64(denominator)
        grad = unscaled_grad * np.asarray(scale)[..., None]
    if not args.probabilities:  # ignored rows get exactly 0, even when the scale is inf
        grad = np.where((args.target != args.ignore_index)[..., None], grad, 0.0)
    return loss, grad


def _loss_in_dtype(loss, dtype):
    with np.errstate(over="ignore"):  # a float64 loss beyond float32's range becomes inf
        return np.asarray(loss, dtype=dtype) if np.ndim(loss) else dtype.type(loss)


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Reference :func:`fastsoftmax.cross_entropy`: torch's definitions, float64 math."""
    args = _validate.cross_entropy_args(logits, target, weight, ignore_index, reduction,
                                        label_smoothing)
    loss, _ = _cross_entropy64(args, np.float64(1.0))
    return _loss_in_dtype(loss, args.logits.dtype)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, grad_output=1.0, inplace=False, out=None):
    """Reference :func:`fastsoftmax.cross_entropy_with_grad`: the analytic gradient of
    torch's loss (checked against torch autograd and finite differences), float64 math."""
    args = _validate.cross_entropy_args(logits, target, weight, ignore_index, reduction,
                                        label_smoothing)
    g = _validate.grad_output_array(grad_output, reduction, args.loss_shape)
    if inplace:
        _validate.inplace_buffer(args, out, logits)
        out = args.logits
    loss, grad = _cross_entropy64(args, g)
    inputs = {} if inplace else {"logits": args.logits, "target": args.target}
    return _loss_in_dtype(loss, args.logits.dtype), _finish(grad, args.logits, out, inputs)
