"""NumPy reference: the definition of the right answer.

Same signatures as the public API (without ``backend``), same validation, and the
plain textbook formulas evaluated in float64; results are returned in the input's
dtype (rounded once from float64), losses of float16/bfloat16 inputs as float32.
Cross-entropy follows ``torch.nn.functional.cross_entropy`` with the class axis last.
Slow on purpose: clarity over speed.
"""
import numpy as np

from . import _dtypes, _validate


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
    return _finish(_logsumexp64(x, axis), x, out, {"x": x})


def _logsumexp64(x, axis):
    x64 = x.astype(np.float64)
    m = np.max(x64, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # torch.logsumexp: -inf rows give -inf, not NaN
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = np.log(np.sum(np.exp(x64 - m), axis=axis, keepdims=True)) + m
    return np.squeeze(lse, axis)


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
    """(loss, gradient, z-loss term) in float64, from torch's definitions; the loss
    includes the z-loss, z_loss * lse**2 per row (PaLM), whose "mean" divides by the
    number of non-ignored rows whatever the class weights (Liger's semantics). With a
    softcap c, every logit x is replaced by c tanh(x / c) first (Gemma 2)."""
    x = args.logits
    slope = 1.0
    if args.softcap is not None:  # z = c tanh(x / c), dz/dx = 1 - tanh(x / c)**2
        tanh = np.tanh(x.astype(np.float64) / args.softcap)
        x, slope = args.softcap * tanh, 1.0 - tanh ** 2
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
        valid_rows = np.ones(x.shape[:-1], bool) if args.probabilities else valid
        lse = _logsumexp64(x, -1) if args.z_loss else np.zeros(x.shape[:-1])
        row_z = np.where(valid_rows, args.z_loss * lse ** 2, 0.0)
        loss, scale = _reduced(row_loss, args.reduction, denominator, grad_output)
        z_term, z_scale = _reduced(row_z, args.reduction, np.sum(valid_rows), grad_output)
        grad = unscaled_grad * np.asarray(scale)[..., None]
        if args.z_loss:  # d(lse**2)/dx = 2 lse p
            grad = grad + 2.0 * args.z_loss * lse[..., None] * p * np.asarray(z_scale)[..., None]
        grad = grad * slope
    if not args.probabilities:  # ignored rows get exactly 0, even when the scale is inf
        grad = np.where((args.target != args.ignore_index)[..., None], grad, 0.0)
    return loss + z_term, grad, z_term


def _reduced(row_values, reduction, denominator, grad_output):
    """(the reduced values, the gradient scale of each row) for a reduction."""
    if reduction == "none":
        return row_values, grad_output
    if reduction == "sum":
        return np.sum(row_values), grad_output
    return np.sum(row_values) / np.float64(denominator), grad_output / np.float64(denominator)


def _loss_in_dtype(loss, dtype):
    """A float64 loss in the logits' compute dtype (float32 for 16-bit logits)."""
    dtype = _dtypes.compute_dtype(dtype)
    with np.errstate(over="ignore"):  # a float64 loss beyond float32's range becomes inf
        return np.asarray(loss, dtype=dtype) if np.ndim(loss) else dtype.type(loss)


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, return_z_loss=False, softcap=None):
    """Reference :func:`fastsoftmax.cross_entropy`: torch's definitions, float64 math."""
    args = _validate.cross_entropy_args(logits, target, weight, ignore_index, reduction,
                                        label_smoothing, z_loss, softcap)
    loss, _, z_term = _cross_entropy64(args, np.float64(1.0))
    dtype = args.logits.dtype
    if return_z_loss:
        return _loss_in_dtype(loss, dtype), _loss_in_dtype(z_term, dtype)
    return _loss_in_dtype(loss, dtype)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, z_loss=0.0, return_z_loss=False,
                            softcap=None, grad_output=1.0, inplace=False, out=None):
    """Reference :func:`fastsoftmax.cross_entropy_with_grad`: the analytic gradient of
    torch's loss (checked against torch autograd and finite differences), float64 math."""
    args = _validate.cross_entropy_args(logits, target, weight, ignore_index, reduction,
                                        label_smoothing, z_loss, softcap)
    g = _validate.grad_output_array(grad_output, reduction, args.loss_shape)
    _validate.separate_out(out, {"target": args.target})  # as the kernels need
    if inplace:
        _validate.inplace_buffer(args, out, logits)
        out = args.logits
    loss, grad, z_term = _cross_entropy64(args, g)
    inputs = {} if inplace else {"logits": args.logits}
    dtype = args.logits.dtype
    result = _loss_in_dtype(loss, dtype), _finish(grad, args.logits, out, inputs)
    return (*result, _loss_in_dtype(z_term, dtype)) if return_z_loss else result


# ---- elementwise losses (issue 17) ----

def _elementwise_result(terms, d_terms, args, grad_output, out, inplace, original_input):
    """(loss, grad) from the float64 element losses and their derivatives."""
    denominator = args.denominator
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        loss = terms if args.reduction == "none" else np.sum(terms) / denominator
        grad = d_terms * (grad_output / denominator)
    inputs = {"input": args.input, "target": args.target}
    if inplace:
        _validate.elementwise_inplace(args, out, original_input)
        out, inputs = args.input, {}
    return _loss_in_dtype(loss, args.input.dtype), _finish(grad, args.input, out, inputs)


def _kl_div64(args, log_target):
    """torch.nn.functional.kl_div's element losses and d/d input, float64."""
    x, t = args.input.astype(np.float64), args.target.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if log_target:
            p = np.exp(t)
            return p * (t - x), -p
        xlogy = np.where(t == 0, 0.0, t * np.log(t))  # 0 log 0 = 0
        return xlogy - t * x, -t


def kl_div(input, target, *, reduction="mean", log_target=False):
    """Reference :func:`fastsoftmax.kl_div`: torch's definition, float64 math."""
    args = _validate.kl_div_args(input, target, reduction, log_target)
    terms, _ = _kl_div64(args, log_target)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = terms if reduction == "none" else np.sum(terms) / args.denominator
    return _loss_in_dtype(loss, args.input.dtype)


def kl_div_with_grad(input, target, *, reduction="mean", log_target=False, grad_output=1.0,
                     out=None, inplace=False):
    """Reference :func:`fastsoftmax.kl_div_with_grad`: d loss / d input is -target
    (-exp(target) for log targets), scaled by the reduction and grad_output."""
    args = _validate.kl_div_args(input, target, reduction, log_target)
    g = _validate.grad_output_array(grad_output, reduction, args.loss_shape)
    terms, d_terms = _kl_div64(args, log_target)
    return _elementwise_result(terms, d_terms, args, g, out, inplace, input)


def _bce64(args):
    """Element losses and d/d input of binary cross-entropy with logits, float64:
    w ((1 - y) softplus(x) + pw y softplus(-x)), a term with a zero factor being 0."""
    x, y = args.input.astype(np.float64), args.target.astype(np.float64)
    w = 1.0 if args.weight is None else args.weight.astype(np.float64)
    pw = 1.0 if args.pos_weight is None else args.pos_weight.astype(np.float64)
    neg, pos = 1.0 - y, pw * y
    with np.errstate(invalid="ignore", over="ignore"):
        terms = w * (np.where(neg == 0, 0.0, neg * np.logaddexp(0.0, x))
                     + np.where(pos == 0, 0.0, pos * np.logaddexp(0.0, -x)))
        d_terms = w * (neg / (1.0 + np.exp(-x)) - pos / (1.0 + np.exp(x)))
    return terms, d_terms


def binary_cross_entropy_with_logits(input, target, *, weight=None, pos_weight=None,
                                     reduction="mean"):
    """Reference :func:`fastsoftmax.binary_cross_entropy_with_logits`, float64 math."""
    args = _validate.bce_args(input, target, weight, pos_weight, reduction)
    terms, _ = _bce64(args)
    with np.errstate(invalid="ignore"):
        loss = terms if reduction == "none" else np.sum(terms) / args.denominator
    return _loss_in_dtype(loss, args.input.dtype)


def binary_cross_entropy_with_logits_with_grad(input, target, *, weight=None, pos_weight=None,
                                               reduction="mean", grad_output=1.0, out=None,
                                               inplace=False):
    """Reference :func:`fastsoftmax.binary_cross_entropy_with_logits_with_grad`:
    d loss / d input = w ((1 - y) sigmoid(x) - pw y sigmoid(-x)), float64 math."""
    args = _validate.bce_args(input, target, weight, pos_weight, reduction)
    g = _validate.grad_output_array(grad_output, reduction, args.loss_shape)
    terms, d_terms = _bce64(args)
    return _elementwise_result(terms, d_terms, args, g, out, inplace, input)


def sigmoid(x, *, out=None):
    """Reference :func:`fastsoftmax.sigmoid`: ``1 / (1 + exp(-x))``, float64 math."""
    x = _validate.float_array(x, "x")
    with np.errstate(over="ignore"):
        return _finish(1.0 / (1.0 + np.exp(-x.astype(np.float64))), x, out, {"x": x})


def log_sigmoid(x, *, out=None):
    """Reference :func:`fastsoftmax.log_sigmoid`: ``-log(1 + exp(-x))``, float64 math."""
    x = _validate.float_array(x, "x")
    with np.errstate(invalid="ignore"):  # NaN is data
        return _finish(-np.logaddexp(0.0, -x.astype(np.float64)), x, out, {"x": x})


# ---- sampled softmax (issue 17) ----

def _sampled_softmax64(weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                       sampled_values, remove_accidental_hits, seed, grad_output):
    """TensorFlow's _compute_sampled_logits + softmax cross-entropy, on the dense (N, C)
    logits in float64: (args, loss, grad_inputs, (ids, grad_weight_rows), (ids, grad_bias))."""
    from . import candidate_sampling  # (it imports nothing of the API)

    args = _validate.sampled_softmax_args(weights, biases, labels, inputs, num_sampled,
                                          num_classes, num_true, sampled_values,
                                          remove_accidental_hits)
    if args.sampled_values is None:
        sampled_values = candidate_sampling.log_uniform_candidate_sampler(
            args.labels, args.num_true, args.num_sampled, True, args.num_classes, seed=seed)
    else:
        sampled_values = args.sampled_values
    sampled, true_count, sampled_count = sampled_values
    x, w, b = (a.astype(np.float64) for a in (args.inputs, args.weights, args.biases))
    labels = args.labels
    n = labels.shape[0]
    all_logits = x @ w.T + b
    with np.errstate(divide="ignore", invalid="ignore"):
        true_logits = np.take_along_axis(all_logits, labels, axis=1) - np.log(true_count)
        sampled_logits = all_logits[:, sampled] - np.log(sampled_count)
        if args.remove_accidental_hits:  # TensorFlow adds -FLT_MAX to every hit
            hit = (labels[:, :, None] == sampled[None, None, :]).any(axis=1)
            sampled_logits = sampled_logits + np.where(hit, -np.finfo(np.float32).max, 0.0)
        logits = np.concatenate([true_logits, sampled_logits], axis=1)
        target = np.concatenate([np.full(labels.shape, 1.0 / args.num_true),
                                 np.zeros(sampled_logits.shape)], axis=1)
        logp = _log_softmax64(logits, -1)
        loss = -np.sum(target * logp, axis=1)
        g = np.ones(n) if grad_output is None else \
            np.broadcast_to(_validate.grad_output_array(grad_output, "none", (n,)), (n,))
        grad_logits = (np.exp(logp) - target) * g[:, None]
    # back through the gathers onto the dense (N, C) logits
    grad_all = np.zeros_like(all_logits)
    np.add.at(grad_all, (np.arange(n)[:, None], labels), grad_logits[:, :args.num_true])
    np.add.at(grad_all.T, sampled, grad_logits[:, args.num_true:].T)
    ids = np.unique(np.concatenate([labels.reshape(-1), sampled]))
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf inputs are data
        grad_weight = grad_all.T @ x
    dtype = args.inputs.dtype  # 16-bit: gradients rounded to it, the loss float32
    return (args, loss.astype(_dtypes.compute_dtype(dtype)), (grad_all @ w).astype(dtype),
            (ids, grad_weight[ids].astype(dtype)),
            (ids.copy(), grad_all.sum(axis=0)[ids].astype(dtype)))


def sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, num_classes, *,
                         num_true=1, sampled_values=None, remove_accidental_hits=True,
                         seed=None):
    """Reference :func:`fastsoftmax.sampled_softmax_loss`: TensorFlow's graph on the dense
    logits, float64 math (accidental hits get TensorFlow's -FLT_MAX added)."""
    return _sampled_softmax64(weights, biases, labels, inputs, num_sampled, num_classes,
                              num_true, sampled_values, remove_accidental_hits, seed, None)[1]


def sampled_softmax_loss_with_grad(weights, biases, labels, inputs, num_sampled, num_classes, *,
                                   num_true=1, sampled_values=None, remove_accidental_hits=True,
                                   seed=None, grad_output=None):
    """Reference :func:`fastsoftmax.sampled_softmax_loss_with_grad`: the gradients of the
    dense (N, C) logits gathered back, float64 math."""
    return _sampled_softmax64(weights, biases, labels, inputs, num_sampled, num_classes,
                              num_true, sampled_values, remove_accidental_hits, seed,
                              grad_output)[1:]


# ---- JSD / KL between two sets of logits (issue 17) ----

def _jsd64(args, grad_output):
    """(row losses, d(sum_rows(loss_r * g_r)) / d student_logits) in float64, g_r the
    gradient scale of row r (grad_output, divided by the row count for "mean").

    log Q and log P are log-softmaxes of the logits / T; log M = logaddexp(log(1 - beta)
    + log Q, log(beta) + log P), which does not underflow. A term weighted by a
    probability of 0 is 0 (not 0 * log 0). The gradient is the closed form of
    fastsoftmax/_numba/_jsd.py."""
    beta, inv_t = args.beta, 1.0 / args.temperature
    log_q = _log_softmax64(args.logits.astype(np.float64) * inv_t, -1)
    log_p = _log_softmax64(args.teacher.astype(np.float64) * inv_t, -1)
    q, p = np.exp(log_q), np.exp(log_p)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if beta == 0.0:  # forward KL(P || Q)
            row_loss = np.sum(np.where(p == 0, 0.0, p * (log_p - log_q)), axis=-1)
            dz = q - p
        else:
            if beta == 1.0:  # reverse KL(Q || P)
                ratio, weight = log_q - log_p, 1.0
            else:
                log_m = np.logaddexp(np.log1p(-beta) + log_q, np.log(beta) + log_p)
                ratio, weight = log_q - log_m, 1.0 - beta
            q_terms = np.where(q == 0, 0.0, q * ratio)
            kl_q = np.sum(q_terms, axis=-1, keepdims=True)   # KL(Q || M)
            if beta == 1.0:
                row_loss = kl_q[..., 0]
            else:
                p_terms = np.where(p == 0, 0.0, p * (log_p - log_m))
                row_loss = beta * np.sum(p_terms, axis=-1) + weight * kl_q[..., 0]
            dz = weight * np.where(q == 0, 0.0, q * (ratio - kl_q))
            # an infinite reverse KL (Q > 0 = P somewhere) has no gradient
            dz = np.where(np.isfinite(kl_q), dz, np.nan)
        n_rows = float(np.prod(args.loss_shape))
        if args.reduction == "none":
            loss, scale = row_loss, grad_output
        else:
            total = np.sum(row_loss)
            loss, scale = ((total / n_rows, grad_output / n_rows) if args.reduction == "mean"
                           else (total, grad_output))
        grad = dz * (np.asarray(scale) * inv_t)[..., None]
    return loss, grad


def jsd_logits(student_logits, teacher_logits, *, beta=0.5, temperature=1.0, reduction="mean"):
    """Reference :func:`fastsoftmax.jsd_logits`: the definition, float64 math."""
    args = _validate.jsd_args(student_logits, teacher_logits, beta, temperature, reduction)
    loss, _ = _jsd64(args, np.float64(1.0))
    return _loss_in_dtype(loss, args.logits.dtype)


def jsd_logits_with_grad(student_logits, teacher_logits, *, beta=0.5, temperature=1.0,
                         reduction="mean", grad_output=1.0, out=None):
    """Reference :func:`fastsoftmax.jsd_logits_with_grad`: the closed-form gradient
    (checked against torch autograd and finite differences), float64 math."""
    args = _validate.jsd_args(student_logits, teacher_logits, beta, temperature, reduction)
    g = _validate.grad_output_array(grad_output, reduction, args.loss_shape)
    inputs = {"student_logits": args.logits, "teacher_logits": args.teacher}
    _validate.separate_out(out, inputs)
    loss, grad = _jsd64(args, g)
    return _loss_in_dtype(loss, args.logits.dtype), _finish(grad, args.logits, out, inputs)
