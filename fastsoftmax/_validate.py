"""Input checking and normalisation shared by every backend and by the reference.

Every check runs before any kernel; a message names the offending value and how
to fix it. Functions return normalised NumPy objects and never modify inputs.
"""
import operator
from dataclasses import dataclass

import numpy as np

from . import _dtypes

REDUCTIONS = ("none", "mean", "sum")


def float_array(x, name):
    """``x`` as a float32, float64, float16 or bfloat16 ndarray in native byte order (no
    copy when it already is)."""
    arr = np.asarray(x)
    if _dtypes.is_float(arr.dtype):
        return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    hint = (" (convert with .astype(np.float32))" if arr.dtype.kind in "biuf"
            else "")
    raise TypeError(f"{name} must be a float32, float64, float16 or bfloat16 array, got dtype "
                    f"{arr.dtype}{hint}")


def class_axis(x, axis, name="x"):
    """Normalise ``axis`` for ``x`` and check that the class axis is not empty."""
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis), "
                         "got a 0-d array")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {axis!r}") from None
    if not -x.ndim <= axis < x.ndim:
        raise np.exceptions.AxisError(axis, x.ndim)
    axis %= x.ndim
    if x.shape[axis] == 0:
        raise ValueError(f"{name} has shape {x.shape}: the class axis {axis} is empty; "
                         "softmax needs at least one class")
    return axis


def rows_inputs(arrays, axis):
    """Check the arrays of a rows op (name -> array): float (16-bit too), one shape and
    dtype, a class axis that is not empty. Returns (name -> normalised array, axis as a
    positive int)."""
    checked = {name: float_array(a, name) for name, a in arrays.items()}
    (first_name, first), *others = checked.items()
    for name, a in others:
        same_shape_and_dtype(first, a, first_name, name)
    return checked, class_axis(first, axis, first_name)


def same_shape_and_dtype(a, b, name_a, name_b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; "
                         "they must be equal")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} has dtype {a.dtype} but {name_b} has dtype {b.dtype}; "
                        f"convert {name_b} with .astype({name_a}.dtype)")


def _same_view(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides)


def out_array(out, shape, dtype, inputs):
    """Check a caller-supplied ``out``; it may be an input itself but not partly overlap one."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; "
                         f"expected shape {tuple(shape)} and dtype {dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only; pass a writeable array")
    for name, arr in inputs.items():
        if np.shares_memory(out, arr) and not _same_view(out, arr):
            raise ValueError(f"out partially overlaps {name}; pass a separate array "
                             f"or {name} itself")
    return out


@dataclass(frozen=True)
class CrossEntropyArgs:
    """Normalised cross-entropy arguments."""
    logits: np.ndarray       # float32/float64/float16/bfloat16, shape (..., C)
    target: np.ndarray       # int64 of shape logits.shape[:-1], or probabilities like logits
    probabilities: bool      # True for probability targets
    weight: object           # None, or floats of shape (C,) in the logits' compute dtype
    ignore_index: int
    may_ignore: bool         # False: no target equals ignore_index
    reduction: str
    label_smoothing: float
    z_loss: float = 0.0      # weight of the z-loss, z_loss * logsumexp(row)**2 per row
    softcap: object = None   # None, or c > 0: logits x become c * tanh(x / c) first

    @property
    def loss_shape(self):
        return self.logits.shape[:-1]


def loss_options(reduction, label_smoothing, ignore_index, z_loss=0.0):
    """Check the scalar options of a cross-entropy; return (label_smoothing, ignore_index,
    z_loss) as float, int, float."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    try:
        label_smoothing = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a float, got {label_smoothing!r}") from None
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    try:
        z_loss = float(z_loss)
    except (TypeError, ValueError):
        raise TypeError(f"z_loss must be a float, got {z_loss!r}") from None
    if not 0.0 <= z_loss < np.inf:
        raise ValueError(f"z_loss must be a finite number >= 0 (PaLM uses 1e-4), got {z_loss}")
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}") from None
    return label_smoothing, ignore_index, z_loss


def target_array(target, logits):
    """(target, probabilities): class indices as int64 of shape ``logits.shape[:-1]``, or
    probabilities of ``logits``' shape cast to its dtype (values not checked here)."""
    target = np.asarray(target)
    if target.dtype.kind == "f" or _dtypes.is_half(target.dtype):
        if target.shape != logits.shape:
            raise ValueError(f"probability target has shape {target.shape} but logits have shape "
                             f"{logits.shape}; they must be equal")
        return target.astype(logits.dtype, copy=False), True
    if target.dtype.kind in "iu":
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"class-index target has shape {target.shape} but logits have shape "
                             f"{logits.shape}; the target must have shape {logits.shape[:-1]}")
        return int64_ids(target, "target"), False
    raise TypeError(f"target must hold integer class indices or float probabilities, "
                    f"got dtype {target.dtype}")


def int64_ids(ids, name):
    """Integer class ids as int64. A uint64 id above the int64 range is an IndexError
    naming it: the cast would wrap it to a negative number, even to ignore_index."""
    if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
        raise IndexError(f"{name} value {ids.max()} is out of range: class ids must fit in "
                         f"int64 (pass ids below the class count)")
    return ids.astype(np.int64, copy=False)


def class_weights(weight, logits):
    """``weight`` (None or C numbers) as a contiguous array of the logits' compute dtype
    (float32 for 16-bit logits)."""
    if weight is None:
        return None
    n_classes = logits.shape[-1]
    weight = np.asarray(weight)
    if weight.dtype.kind not in "biuf" and not _dtypes.is_half(weight.dtype):
        raise TypeError(f"weight must be real numbers, got dtype {weight.dtype}")
    if weight.shape != (n_classes,):
        raise ValueError(f"weight has shape {weight.shape} but logits have shape "
                         f"{logits.shape}; weight must have shape ({n_classes},)")
    return np.ascontiguousarray(weight, dtype=_dtypes.compute_dtype(logits.dtype))


def cross_entropy_args(logits, target, weight, ignore_index, reduction, label_smoothing,
                       z_loss=0.0, softcap=None):
    """Check every cross-entropy option the way torch.nn.functional.cross_entropy does
    (and z_loss: a finite number >= 0; softcap: None or a finite number > 0)."""
    logits = float_array(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (classes last), got a 0-d array")
    n_classes = logits.shape[-1]
    if n_classes == 0:
        raise ValueError(f"logits has shape {logits.shape}: no classes on the last axis")
    label_smoothing, ignore_index, z_loss = loss_options(reduction, label_smoothing,
                                                         ignore_index, z_loss)
    softcap = softcap_value(softcap)
    target, probabilities = target_array(target, logits)
    may_ignore = False
    if not probabilities:
        # One unsigned compare finds every index outside 0..C-1 (negatives wrap around);
        # ignore_index is only looked for when there are any (three compares on every
        # call took 6 ms of a 50 ms call at 1677721 x 10).
        outside = target.view(np.uint64) >= n_classes
        if outside.any():
            bad = outside & (target != ignore_index)
            if bad.any():
                value = target[bad].flat[0]
                raise IndexError(f"target value {value} is out of range for {n_classes} "
                                 f"classes (valid: 0..{n_classes - 1}, or "
                                 f"ignore_index={ignore_index})")
        may_ignore = bool(outside.any()) or 0 <= ignore_index < n_classes
    return CrossEntropyArgs(logits, target, probabilities, class_weights(weight, logits),
                            ignore_index, may_ignore, reduction, label_smoothing, z_loss, softcap)


def softcap_value(softcap):
    """softcap as a float, or None (no capping); anything but a finite number > 0 is an
    error naming the value."""
    if softcap is None:
        return None
    try:
        softcap = float(softcap)
    except (TypeError, ValueError):
        raise TypeError(f"softcap must be a float or None, got {softcap!r}") from None
    if not 0.0 < softcap < np.inf:
        raise ValueError(f"softcap must be a finite number > 0 (Gemma 2 caps its final "
                         f"logits at 30.0) or None for no capping, got {softcap}")
    return softcap


@dataclass(frozen=True)
class EntropyArgs:
    """Normalised entropy_with_grad arguments."""
    logits: np.ndarray       # float32/float64/float16/bfloat16, shape (..., C)
    reduction: str
    target = None            # (no target: inplace_buffer's overlap check has nothing to do)

    @property
    def loss_shape(self):
        return self.logits.shape[:-1]


def entropy_args(logits, reduction):
    """Check entropy_with_grad's logits (classes last) and reduction."""
    checked, _ = rows_inputs({"logits": logits}, -1)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return EntropyArgs(checked["logits"], reduction)


def grad_output_array(grad_output, reduction, loss_shape):
    """grad_output as float64: a scalar for mean/sum; a scalar or the loss's shape for none."""
    g = np.asarray(grad_output)
    if g.dtype.kind not in "biuf":
        raise TypeError(f"grad_output must be real numbers, got dtype {g.dtype}")
    g = g.astype(np.float64)
    if g.ndim == 0:
        return g
    if reduction != "none" or g.shape != tuple(loss_shape):
        expected = "a scalar" if reduction != "none" else f"a scalar or shape {tuple(loss_shape)}"
        raise ValueError(f"grad_output has shape {g.shape}; with reduction={reduction!r} "
                         f"it must be {expected}")
    return g


def inplace_buffer(args, out, original_logits):
    """Check that the caller's logits buffer can take the gradient (inplace=True)."""
    logits = args.logits
    if logits is not original_logits:
        raise ValueError("inplace=True needs logits as a NumPy float array in native byte "
                         "order (the gradient is written into that buffer)")
    if out is not None:
        raise ValueError("inplace=True writes the gradient into logits; do not also pass out")
    if not logits.flags.writeable:
        raise ValueError("inplace=True needs writeable logits, but logits is read-only")
    if not logits.flags.c_contiguous:
        raise ValueError("inplace=True needs C-contiguous logits; pass "
                         "np.ascontiguousarray(logits) "
                         "or use inplace=False")
    if args.target is not None and np.shares_memory(logits, args.target):
        raise ValueError("inplace=True but target shares memory with logits; pass a copy of target")


# ---- elementwise losses (kl_div, binary_cross_entropy_with_logits) ----

KL_REDUCTIONS = ("none", "mean", "sum", "batchmean")


@dataclass(frozen=True)
class ElementwiseLossArgs:
    """Normalised arguments of an elementwise loss: the target has ``input``'s dtype, the
    weights its compute dtype (float32 for 16-bit input, as cross-entropy's class weights)."""
    input: np.ndarray        # float32/float64/float16/bfloat16, any shape
    target: np.ndarray       # input's shape (broadcast, read-only view when it was smaller)
    reduction: str
    weight: object = None    # None, or an array that broadcasts to input's shape
    pos_weight: object = None

    @property
    def loss_shape(self):
        return self.input.shape

    @property
    def denominator(self):
        """What the sum is divided by: the element count ("mean"), input.shape[0]
        ("batchmean", 1 for a 0-d input, as torch), else 1."""
        if self.reduction == "mean":
            return np.float64(self.input.size)
        if self.reduction == "batchmean" and self.input.ndim:
            return np.float64(self.input.shape[0])
        return np.float64(1.0)


def _reduction(reduction, allowed):
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")
    return reduction


def _broadcast_to_input(a, name, input, dtype):
    """``a`` as a float array of ``dtype`` that broadcasts to input's shape (not a bigger one)."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf" and not _dtypes.is_half(a.dtype):
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    try:
        shape = np.broadcast_shapes(a.shape, input.shape)
    except ValueError:
        shape = None
    if shape != input.shape:
        raise ValueError(f"{name} has shape {a.shape} but input has shape {input.shape}; "
                         f"{name} must broadcast to the input's shape")
    return a.astype(dtype, copy=False)


def kl_div_args(input, target, reduction, log_target):
    """Check kl_div's arguments the way torch.nn.functional.kl_div does (target may
    broadcast to input's shape; it is cast to input's dtype, 16-bit too)."""
    input = float_array(input, "input")
    target = np.asarray(target)
    if target.dtype.kind != "f" and not _dtypes.is_half(target.dtype):
        raise TypeError(f"target must hold float probabilities (log-probabilities with "
                        f"log_target=True), got dtype {target.dtype}")
    target = _broadcast_to_input(target, "target", input, input.dtype)
    if not isinstance(log_target, (bool, np.bool_)):
        raise TypeError(f"log_target must be True or False, got {log_target!r}")
    return ElementwiseLossArgs(input, np.broadcast_to(target, input.shape),
                               _reduction(reduction, KL_REDUCTIONS))


def bce_args(input, target, weight, pos_weight, reduction):
    """Check binary_cross_entropy_with_logits' arguments as torch does: target of
    input's shape (cast to input's dtype, 16-bit too), weight and pos_weight broadcasting
    to it (cast to input's compute dtype: float32 for 16-bit input)."""
    input = float_array(input, "input")
    target = np.asarray(target)
    if target.dtype.kind not in "biuf" and not _dtypes.is_half(target.dtype):
        raise TypeError(f"target must hold numbers in [0, 1], got dtype {target.dtype}")
    if target.shape != input.shape:
        raise ValueError(f"target has shape {target.shape} but input has shape {input.shape}; "
                         "they must be equal")
    target = target.astype(input.dtype, copy=False)
    compute = _dtypes.compute_dtype(input.dtype)
    if weight is not None:
        weight = _broadcast_to_input(weight, "weight", input, compute)
    if pos_weight is not None:
        pos_weight = _broadcast_to_input(pos_weight, "pos_weight", input, compute)
    return ElementwiseLossArgs(input, target, _reduction(reduction, REDUCTIONS), weight,
                               pos_weight)


def elementwise_inplace(args, out, original_input):
    """Check that the caller's input buffer can take the gradient (inplace=True)."""
    if args.input is not original_input:
        raise ValueError("inplace=True needs input as a float numpy array in native byte "
                         "order (the gradient is written into that buffer)")
    if out is not None:
        raise ValueError("inplace=True writes the gradient into input; do not also pass out")
    if not args.input.flags.writeable:
        raise ValueError("inplace=True needs a writeable input, but input is read-only")
    if not args.input.flags.c_contiguous:
        raise ValueError("inplace=True needs a C-contiguous input; pass "
                         "np.ascontiguousarray(input) or use inplace=False")
    for name in ("target", "weight", "pos_weight"):
        other = getattr(args, name)
        if other is not None and np.shares_memory(args.input, other):
            raise ValueError(f"inplace=True but {name} shares memory with input; pass a copy "
                             f"of {name}")


# ---- candidate sampling and sampled softmax (issue 17) ----

def _count(value, name, minimum=1):
    """``value`` as an int >= ``minimum`` (a bool is not a count)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def class_ids(ids, name, num_classes, shape=None, hint=""):
    """Integer class ids as int64, checked to lie in ``0..num_classes-1`` (and to have
    ``shape`` when given)."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class ids, got dtype {ids.dtype}")
    if shape is not None and ids.shape != tuple(shape):
        raise ValueError(f"{name} has shape {ids.shape} but must have shape {tuple(shape)}"
                         f"{hint}")
    ids = int64_ids(ids, name)
    outside = ids.view(np.uint64) >= num_classes  # one compare: negatives wrap around
    if outside.any():
        raise IndexError(f"{name} holds class id {ids[outside].flat[0]}, out of range for "
                         f"{num_classes} classes (valid: 0..{num_classes - 1})")
    return ids


def _true_classes(labels, name, num_true, num_classes):
    """Labels of shape (N, num_true), as int64 ids in range."""
    labels_shape = np.shape(labels)
    if len(labels_shape) != 2 or labels_shape[1] != num_true:
        n = labels_shape[0] if labels_shape else "N"
        raise ValueError(f"{name} has shape {labels_shape} but must have shape "
                         f"({n}, {num_true}), (N, num_true) with num_true={num_true}; "
                         f"reshape it with .reshape(-1, {num_true})")
    return class_ids(labels, name, num_classes)


@dataclass(frozen=True)
class SamplerArgs:
    """Normalised candidate sampler arguments."""
    true_classes: np.ndarray  # int64 (N, num_true), in 0..range_max-1
    num_true: int
    num_sampled: int
    unique: bool
    range_max: int


def sampler_args(true_classes, num_true, num_sampled, unique, range_max):
    """Check a candidate sampler's arguments (TensorFlow's, plus the class range)."""
    num_true = _count(num_true, "num_true")
    num_sampled = _count(num_sampled, "num_sampled")
    range_max = _count(range_max, "range_max")
    if not isinstance(unique, (bool, np.bool_)):
        raise TypeError(f"unique must be True or False, got {unique!r}")
    if unique and num_sampled > range_max:
        raise ValueError(f"unique=True cannot draw num_sampled={num_sampled} distinct classes "
                         f"from range_max={range_max}; lower num_sampled or pass unique=False")
    true_classes = _true_classes(true_classes, "true_classes", num_true, range_max)
    return SamplerArgs(true_classes, num_true, num_sampled, bool(unique), range_max)


@dataclass(frozen=True)
class SampledSoftmaxArgs:
    """Normalised sampled softmax arguments; weights, biases and inputs share one dtype."""
    weights: np.ndarray       # (num_classes, D), any layout
    biases: np.ndarray        # (num_classes,)
    labels: np.ndarray        # int64 (N, num_true), in range
    inputs: np.ndarray        # (N, D), C-contiguous
    num_sampled: int
    num_classes: int
    num_true: int
    sampled_values: object    # None, or (int64 (S,), float64 (N, num_true), float64 (S,))
    remove_accidental_hits: bool


def sampled_softmax_args(weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                         sampled_values, remove_accidental_hits):
    """Check tf.nn.sampled_softmax_loss's arguments; every shape mismatch names both shapes."""
    num_classes = _count(num_classes, "num_classes")
    num_true = _count(num_true, "num_true")
    num_sampled = _count(num_sampled, "num_sampled")
    if num_sampled > num_classes:
        raise ValueError(f"num_sampled={num_sampled} is more than num_classes={num_classes}; "
                         f"sample fewer classes")
    if not isinstance(remove_accidental_hits, (bool, np.bool_)):
        raise TypeError(f"remove_accidental_hits must be True or False, "
                        f"got {remove_accidental_hits!r}")
    inputs = float_array(inputs, "inputs")
    weights = float_array(weights, "weights")
    biases = float_array(biases, "biases")
    if inputs.ndim != 2:
        raise ValueError(f"inputs must have shape (N, D), got shape {inputs.shape}")
    if weights.shape != (num_classes, inputs.shape[1]):
        raise ValueError(f"weights has shape {weights.shape} and inputs has shape "
                         f"{inputs.shape}; weights must have shape (num_classes, D) = "
                         f"({num_classes}, {inputs.shape[1]})")
    if biases.shape != (num_classes,):
        raise ValueError(f"biases has shape {biases.shape} and weights has shape "
                         f"{weights.shape}; biases must have shape ({num_classes},)")
    for name, a in (("weights", weights), ("biases", biases)):
        if a.dtype != inputs.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but inputs has dtype {inputs.dtype}; "
                            f"convert it with .astype(np.{inputs.dtype})")
    labels_shape = np.shape(labels)
    if len(labels_shape) != 2 or labels_shape[0] != inputs.shape[0]:
        raise ValueError(f"labels has shape {labels_shape} and inputs has shape "
                         f"{inputs.shape}; labels must have shape (N, num_true) = "
                         f"({inputs.shape[0]}, {num_true})")
    labels = _true_classes(labels, "labels", num_true, num_classes)
    if sampled_values is not None:
        sampled_values = _sampled_values(sampled_values, labels.shape, num_sampled, num_classes)
    # weights stay as they are (only rows are gathered): no copy of a V x D array
    return SampledSoftmaxArgs(weights, biases, labels, np.ascontiguousarray(inputs), num_sampled,
                              num_classes, num_true, sampled_values,
                              bool(remove_accidental_hits))


def _sampled_values(values, labels_shape, num_sampled, num_classes):
    """A sampler's (sampled_candidates, true_expected_count, sampled_expected_count) as
    (int64 ids in range, float64, float64). Counts are data: a count <= 0 makes the loss
    NaN or inf, as in TensorFlow."""
    try:
        sampled, true_count, sampled_count = values
    except (TypeError, ValueError):
        raise TypeError("sampled_values must be a tuple (sampled_candidates, "
                        "true_expected_count, sampled_expected_count), as a candidate "
                        "sampler returns") from None
    sampled = class_ids(sampled, "sampled_candidates", num_classes, (num_sampled,),
                        f" (num_sampled,) with num_sampled={num_sampled}")
    counts = []
    for name, count, shape in (("true_expected_count", true_count, labels_shape),
                               ("sampled_expected_count", sampled_count, (num_sampled,))):
        count = np.asarray(count)
        if count.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be real numbers, got dtype {count.dtype}")
        if count.shape != tuple(shape):
            other = "labels" if name == "true_expected_count" else "sampled_candidates"
            raise ValueError(f"{name} has shape {count.shape} but {other} has shape "
                             f"{tuple(shape)}; they must be equal")
        counts.append(count.astype(np.float64))
    return sampled, *counts


# ---- vocab-parallel cross-entropy (fastsoftmax.vocab_parallel) ----

def vocab_shard_args(logits, target, weight, ignore_index, reduction, label_smoothing,
                     vocab_start):
    """Check one rank's arguments of a vocab-parallel cross-entropy: ``logits`` holds the
    classes ``[vocab_start, vocab_start + V_local)`` on its last axis (V_local may be 0),
    ``target`` global class indices or this shard's probabilities, ``weight`` this shard's
    class weights. Returns (CrossEntropyArgs, vocab_start). Targets are checked against
    the global class count later, once the shards' sizes are combined."""
    logits = float_array(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (this shard's classes "
                         "last), got a 0-d array")
    try:
        vocab_start = operator.index(vocab_start)
    except TypeError:
        raise TypeError(f"vocab_start must be an integer (the global id of this shard's first "
                        f"class), got {vocab_start!r}") from None
    if vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0 (the global id of this shard's first "
                         f"class), got {vocab_start}")
    label_smoothing, ignore_index, _ = loss_options(reduction, label_smoothing, ignore_index)
    target, probabilities = target_array(target, logits)
    may_ignore = False
    if not probabilities:
        negative = (target < 0) & (target != ignore_index)
        if negative.any():
            raise IndexError(f"target value {target[negative].flat[0]} is out of range: "
                             f"global class ids are >= 0 (or ignore_index={ignore_index})")
        may_ignore = bool((target == ignore_index).any())
    return CrossEntropyArgs(logits, target, probabilities, class_weights(weight, logits),
                            ignore_index, may_ignore, reduction, label_smoothing), vocab_start


# ---- JSD / KL between two sets of logits (issue 17) ----

@dataclass(frozen=True)
class JSDArgs:
    """Normalised jsd_logits arguments."""
    logits: np.ndarray       # the student's, float32/float64/float16/bfloat16, (..., C)
    teacher: np.ndarray      # the teacher's, same shape and dtype
    beta: float              # in [0, 1]
    temperature: float       # > 0
    reduction: str

    @property
    def loss_shape(self):
        return self.logits.shape[:-1]


def _real_option(value, name):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None


def jsd_args(student_logits, teacher_logits, beta, temperature, reduction):
    """Check jsd_logits' arguments: two float arrays of one shape and dtype (classes last,
    at least one class), beta in [0, 1], a finite temperature > 0, a known reduction."""
    student = float_array(student_logits, "student_logits")
    teacher = float_array(teacher_logits, "teacher_logits")
    same_shape_and_dtype(student, teacher, "student_logits", "teacher_logits")
    if student.ndim == 0:
        raise ValueError("student_logits and teacher_logits must have at least one dimension "
                         "(classes last), got 0-d arrays")
    if student.shape[-1] == 0:
        raise ValueError(f"student_logits has shape {student.shape}: no classes on the last "
                         "axis")
    beta = _real_option(beta, "beta")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1] (0: KL(teacher || student), 1: "
                         f"KL(student || teacher)), got {beta}")
    temperature = _real_option(temperature, "temperature")
    if not 0.0 < temperature < np.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return JSDArgs(student, teacher, beta, temperature, _reduction(reduction, REDUCTIONS))


def separate_out(out, inputs):
    """``out`` may not share memory with any of ``inputs`` (a kernel that reads its inputs
    after it has started writing ``out``)."""
    if out is None:
        return
    for name, a in inputs.items():
        if np.shares_memory(out, a):
            raise ValueError(f"out shares memory with {name}; the kernel reads {name} after "
                             "it starts writing the gradient: pass a separate array")
