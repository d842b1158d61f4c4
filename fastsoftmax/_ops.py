"""The op table: one entry per public op; the API, the tests and the benchmarks read it.

An entry says what an op is called, which arrays it takes, how its output's shape
follows from them, which kernels a compiled backend must provide for it, how to build
its inputs from a logits array (for the tests and the benchmarks alike) and what the
same computation is in PyTorch and JAX (the peers of the benchmark suite and the
oracles of some tests). The reference is ``fastsoftmax.reference.<name>``.

* ``kind="rows"``: a function of arrays along a class axis, ``f(*inputs, axis=-1, *,
  out=None, backend=None)``. Its public function is generated from the entry
  (``fastsoftmax.api``); its kernel has the op's name and takes the inputs as
  C-contiguous (rows, classes) arrays plus ``out``.
* ``kind="loss"``: a loss with its own options; its public function is written out in
  ``fastsoftmax.api`` and its kernels are listed in ``LOSS_KERNELS``.

A compiled backend exports every kernel of ``KERNELS`` with exactly those argument
names (``tests/test_backends.py::test_backend_contract``). How to add an op:
CONTRIBUTING.md.
"""
import functools
from dataclasses import dataclass, field
from typing import Callable, Optional



@dataclass(frozen=True)
class Op:
    name: str
    kind: str                       # "rows" or "loss"
    inputs: tuple                   # names of the positional array arguments
    # (logits, axis, rng) -> the op's positional arrays, built from random logits
    from_logits: Callable
    output: str = "same"            # rows ops: "same" (the inputs' shape) or "reduce"
    summary: str = ""               # rows ops: first docstring line
    input_docs: tuple = ()          # rows ops: a numpydoc description per input
    returns: str = ""               # rows ops: the Returns description
    example: str = ""               # rows ops: an Examples section (doctest)
    # the same result in PyTorch: (torch, *tensors) -> tensor, or a tuple for with-grad ops
    torch: Optional[Callable] = None
    jax: Optional[Callable] = None  # the same in JAX: (jax, jnp, *arrays) -> array
    # the same through fastsoftmax.torch: (fastsoftmax.torch, *tensors), as ``torch``
    torch_layer: Optional[Callable] = None
    vjp_of: Optional[str] = None    # rows ops: the op whose vector-Jacobian product it is
    grad_of: Optional[str] = None   # loss ops returning (loss, grad): the loss op
    # benchmark cases beyond the default one: case suffix -> from_logits
    bench_cases: dict = field(default_factory=dict)
    out: bool = False               # takes out= (benchmarked with a kept output buffer)
    inplace: bool = False           # takes inplace=True (benchmarked in place)
    # (reads, writes): how many arrays of the logits' size the op must read and write at
    # the least; the benchmark's memory floor moves that many
    floor: tuple = (1, 1)

    @property
    def kernel_args(self):
        return (*self.inputs, "out")

# The loss kernels: name -> argument names. row_loss gets each row's loss (float64);
# grad, when not None, d(sum_rows(scale_r * loss_r)) / d x with
# scale_r = scale * row_scale[r] (row_scale empty: scale alone); grad may be x itself.
# Cross-entropy also has a z-loss, z_loss * logsumexp(row)**2 per row: into row_z_loss
# (when not empty), and into the gradient with its own scale z_scale * row_scale[r];
# and a softcap: None, or c > 0 to replace every logit x by c * tanh(x / c) first.
LOSS_KERNELS = {
    "cross_entropy_index": ("x", "target", "weight", "weight_sum", "ignore_index",
                            "smoothing", "z_loss", "softcap", "scale", "z_scale", "row_scale",
                            "row_loss", "row_z_loss", "grad"),
    "cross_entropy_prob": ("x", "target", "weight", "smoothing", "z_loss", "softcap", "scale",
                           "z_scale", "row_scale", "row_loss", "row_z_loss", "grad"),
    "entropy_with_grad": ("logits", "scale", "row_scale", "row_loss", "grad"),
}


def _random_like(x, rng):
    return rng.standard_normal(x.shape).astype(x.dtype)


def _softmax_probs(x, axis):
    from . import reference
    return reference.softmax(x, axis)


def _log_probs(x, axis):
    from . import reference
    return reference.log_softmax(x, axis)


def _index_target(x, axis, rng):
    return rng.integers(0, x.shape[-1], x.shape[:-1])


def _prob_target(x, axis, rng):
    return _softmax_probs(_random_like(x, rng), -1)


def _torch_with_grad(loss):
    """(torch, x, *rest) -> (loss, d loss / d x) by autograd, from a torch loss function."""
    def run(torch, x, *rest):
        x = x.detach().requires_grad_()
        value = loss(torch, x, *rest)
        value.backward()
        return value, x.grad
    return run


def _jax_with_grad(loss):
    """(jax, jnp, x, *rest) -> (loss, d loss / d x), from a JAX loss function."""
    def run(jax, jnp, x, *rest):
        return jax.value_and_grad(functools.partial(loss, jax, jnp))(x, *rest)
    return run


def _jax_cross_entropy(jax, jnp, x, target):
    logp = jax.nn.log_softmax(x, axis=-1)
    if target.dtype.kind == "f":
        return -jnp.mean(jnp.sum(target * logp, axis=-1))
    return -jnp.mean(jnp.take_along_axis(logp, target[:, None], axis=-1))


def _torch_entropy(torch, x):
    return torch.distributions.Categorical(logits=x, validate_args=False).entropy()


def _jax_entropy(jax, jnp, x):
    p, logp = jax.nn.softmax(x, axis=-1), jax.nn.log_softmax(x, axis=-1)
    return -jnp.sum(jnp.where(p == 0, 0.0, p * logp), axis=-1)


def _torch_cross_entropy(torch, x, target):
    return torch.nn.functional.cross_entropy(x, target)


# the 16-bit note of an input (every op takes float16/bfloat16: fastsoftmax/_dtypes.py)
_HALF = ("float32, float64, float16 or bfloat16 (16-bit: computed in float32, the result "
         "rounded once to\n        the input dtype)")
_AXIS_INPUT = f"x : array_like\n        {_HALF} logits."

OPS = {op.name: op for op in [
    Op("softmax", "rows", ("x",), lambda x, axis, rng: (x,),
       summary="Softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))``.",
       input_docs=(_AXIS_INPUT,),
       returns="ndarray\n        Probabilities, same shape and dtype as ``x``. A row holding NaN "
               "or +inf,\n        or a row of only -inf, gives NaN (as ``torch.softmax``).",
       example=">>> import numpy as np, fastsoftmax as fs\n"
               "    >>> fs.softmax(np.array([0.0, np.log(3.0)]))\n"
               "    array([0.25, 0.75])",
       torch=lambda torch, x: torch.softmax(x, -1),
       torch_layer=lambda fst, x: fst.softmax(x, -1),
       jax=lambda jax, jnp, x: jax.nn.softmax(x, axis=-1), out=True),
    Op("log_softmax", "rows", ("x",), lambda x, axis, rng: (x,),
       summary="Log-softmax along ``axis``: ``x - max - log(sum(exp(x - max)))``.",
       input_docs=(_AXIS_INPUT,),
       returns="ndarray\n        Log-probabilities, same shape and dtype as ``x``.",
       torch=lambda torch, x: torch.log_softmax(x, -1),
       torch_layer=lambda fst, x: fst.log_softmax(x, -1),
       jax=lambda jax, jnp, x: jax.nn.log_softmax(x, axis=-1), out=True),
    Op("logsumexp", "rows", ("x",), lambda x, axis, rng: (x,), output="reduce",
       summary="Log of the sum of exponentials along ``axis``, computed without overflow.",
       input_docs=(f"x : array_like\n        {_HALF} values.",),
       returns="ndarray\n        ``x``'s shape with ``axis`` removed. As ``torch.logsumexp``, a "
               "row of only\n        -inf gives -inf and a row holding +inf gives +inf.",
       torch=lambda torch, x: torch.logsumexp(x, -1),
       jax=lambda jax, jnp, x: jax.nn.logsumexp(x, axis=-1)),
    Op("softmax_backward", "rows", ("y", "dy"),
       lambda x, axis, rng: (_softmax_probs(x, axis), _random_like(x, rng)),
       summary="Gradient of softmax: ``dx = y * (dy - sum(y * dy))`` along ``axis``.",
       input_docs=(f"y : array_like\n        The softmax output ``softmax(x, axis)``, {_HALF}.",
                   "dy : array_like\n        Gradient of the loss with respect to ``y``; same "
                   "shape and dtype as ``y``."),
       returns="ndarray\n        Gradient with respect to ``x``, same shape and dtype as ``y``.",
       torch=lambda torch, y, dy: torch._softmax_backward_data(dy, y, -1, y.dtype),
       jax=lambda jax, jnp, y, dy: y * (dy - jnp.sum(y * dy, -1, keepdims=True)),
       vjp_of="softmax", out=True),
    Op("log_softmax_backward", "rows", ("logp", "dy"),
       lambda x, axis, rng: (_log_probs(x, axis), _random_like(x, rng)),
       summary="Gradient of log-softmax: ``dx = dy - exp(logp) * sum(dy)`` along ``axis``.",
       input_docs=("logp : array_like\n        The log-softmax output ``log_softmax(x, axis)``, "
                   f"{_HALF}.",
                   "dy : array_like\n        Gradient of the loss with respect to ``logp``; "
                   "same shape and dtype."),
       returns="ndarray\n        Gradient with respect to ``x``, same shape and dtype as "
               "``logp``.",
       torch=lambda torch, logp, dy: torch._log_softmax_backward_data(dy, logp, -1, logp.dtype),
       jax=lambda jax, jnp, logp, dy: dy - jnp.exp(logp) * jnp.sum(dy, -1, keepdims=True),
       vjp_of="log_softmax", out=True),
    Op("cross_entropy", "loss", ("logits", "target"),
       lambda x, axis, rng: (x, _index_target(x, axis, rng)),
       torch=_torch_cross_entropy, jax=_jax_cross_entropy,
       torch_layer=lambda fst, x, target: fst.cross_entropy(x, target)),
    Op("cross_entropy_with_grad", "loss", ("logits", "target"),
       lambda x, axis, rng: (x, _index_target(x, axis, rng)),
       torch=_torch_with_grad(_torch_cross_entropy),
       torch_layer=_torch_with_grad(lambda fst, x, target: fst.cross_entropy(x, target)),
       jax=_jax_with_grad(_jax_cross_entropy),
       grad_of="cross_entropy", bench_cases={"_prob": lambda x, axis, rng: (
           x, _prob_target(x, axis, rng))}, inplace=True),
    Op("entropy", "rows", ("logits",), lambda x, axis, rng: (x,), output="reduce",
       summary="Entropy of ``softmax(logits)`` along ``axis``: ``-sum(p log p)``, in nats.",
       input_docs=(f"logits : array_like\n        {_HALF} logits.",),
       returns="ndarray\n        ``logits``' shape with ``axis`` removed. As\n        "
               "``torch.distributions.Categorical(logits=...).entropy()``: a -inf logit adds "
               "0;\n        a row holding NaN or +inf, or of only -inf, gives NaN.",
       torch=_torch_entropy, jax=_jax_entropy,
       torch_layer=lambda fst, x: fst.entropy(x)),
    Op("entropy_with_grad", "loss", ("logits",), lambda x, axis, rng: (x,),
       torch=_torch_with_grad(lambda torch, x: _torch_entropy(torch, x).sum()),
       torch_layer=_torch_with_grad(lambda fst, x: fst.entropy(x).sum()),
       jax=_jax_with_grad(lambda jax, jnp, x: jnp.sum(_jax_entropy(jax, jnp, x))),
       grad_of="entropy", inplace=True),
]}

ROW_OPS = [op for op in OPS.values() if op.kind == "rows"]
KERNELS = {**{op.name: op.kernel_args for op in ROW_OPS}, **LOSS_KERNELS}


def bench_cases():
    """Benchmark case name -> (op, from_logits): every op, plus its extra input kinds."""
    cases = {}
    for op in OPS.values():
        cases[op.name] = (op, op.from_logits)
        for suffix, make in op.bench_cases.items():
            cases[op.name + suffix] = (op, make)
    return cases


# ---- elementwise ops (issue 17): KL divergence, binary cross-entropy with logits,
# sigmoid, log-sigmoid. Their kernels take flat C-contiguous arrays (any shape). A
# "stream" (weight, pos_weight, grad_output) is read periodically, element i using
# stream[i % stream.size]; the loss kernels return the float64 sum of the element losses,
# write each one into ``loss`` and d(loss_i * scale * grad_output_i) / d input_i into
# ``grad`` (each None: not written; grad may be input itself).
LOSS_KERNELS.update({
    "kl_div": ("input", "target", "log_target", "grad_output", "scale", "loss", "grad"),
    "binary_cross_entropy_with_logits": ("input", "target", "weight", "pos_weight",
                                         "grad_output", "scale", "loss", "grad"),
})
# kind="elementwise": ``f(x, *, out=None, backend=None)``, result shaped like x; the kernel
# takes the flat x and out.
ELEMENTWISE_KERNELS = {"sigmoid": ("x", "out"), "log_sigmoid": ("x", "out")}
KERNELS.update({**LOSS_KERNELS, **ELEMENTWISE_KERNELS})
# The kernel arguments a kernel writes (every other array argument it only reads; the
# Numba backend hands those over read-only, and a kernel writing one fails to compile).
KERNEL_OUTPUTS = frozenset({"out", "loss", "grad", "row_loss", "row_z_loss", "stats"})


def _uniform_target(x, axis, rng):
    return rng.random(x.shape).astype(x.dtype)


def _torch_kl_div(torch, input, target):
    return torch.nn.functional.kl_div(input, target, reduction="mean")


def _jax_kl_div(jax, jnp, input, target):
    terms = jax.scipy.special.xlogy(target, target) - target * input
    return jnp.mean(terms)


def _torch_bce(torch, input, target):
    return torch.nn.functional.binary_cross_entropy_with_logits(input, target)


def _jax_bce(jax, jnp, input, target):
    return jnp.mean((1 - target) * input - jax.nn.log_sigmoid(input))


# The benchmark inputs: kl_div gets log-probabilities and probabilities (a distillation
# step; every implementation with the default reduction "mean"), binary cross-entropy
# logits and soft labels in [0, 1).
OPS.update({op.name: op for op in [
    Op("kl_div", "loss", ("input", "target"),
       lambda x, axis, rng: (_log_probs(x, axis), _prob_target(x, axis, rng)),
       torch=_torch_kl_div, jax=_jax_kl_div,
       torch_layer=lambda fst, x, t: fst.kl_div(x, t)),
    Op("kl_div_with_grad", "loss", ("input", "target"),
       lambda x, axis, rng: (_log_probs(x, axis), _prob_target(x, axis, rng)),
       torch=_torch_with_grad(_torch_kl_div), jax=_jax_with_grad(_jax_kl_div),
       torch_layer=_torch_with_grad(lambda fst, x, t: fst.kl_div(x, t)),
       grad_of="kl_div", inplace=True),
    Op("binary_cross_entropy_with_logits", "loss", ("input", "target"),
       lambda x, axis, rng: (x, _uniform_target(x, axis, rng)),
       torch=_torch_bce, jax=_jax_bce,
       torch_layer=lambda fst, x, t: fst.binary_cross_entropy_with_logits(x, t)),
    Op("binary_cross_entropy_with_logits_with_grad", "loss", ("input", "target"),
       lambda x, axis, rng: (x, _uniform_target(x, axis, rng)),
       torch=_torch_with_grad(_torch_bce), jax=_jax_with_grad(_jax_bce),
       torch_layer=_torch_with_grad(
           lambda fst, x, t: fst.binary_cross_entropy_with_logits(x, t)),
       grad_of="binary_cross_entropy_with_logits", inplace=True),
    Op("sigmoid", "elementwise", ("x",), lambda x, axis, rng: (x,),
       torch=lambda torch, x: torch.sigmoid(x), jax=lambda jax, jnp, x: jax.nn.sigmoid(x),
       torch_layer=lambda fst, x: fst.sigmoid(x), out=True),
    Op("log_sigmoid", "elementwise", ("x",), lambda x, axis, rng: (x,),
       torch=lambda torch, x: torch.nn.functional.logsigmoid(x),
       jax=lambda jax, jnp, x: jax.nn.log_sigmoid(x),
       torch_layer=lambda fst, x: fst.log_sigmoid(x), out=True),
]})


# ---- KL and JSD between two sets of logits (issue 17, distillation). The kernel takes
# the student's and the teacher's (rows, classes) logits, beta and 1 / temperature; the
# rest as the other loss kernels (row losses in float64; grad None: loss only).
LOSS_KERNELS["jsd_logits"] = ("student", "teacher", "beta", "inv_temperature", "scale",
                              "row_scale", "row_loss", "grad")
KERNELS["jsd_logits"] = LOSS_KERNELS["jsd_logits"]


def _teacher_logits(x, axis, rng):
    return (x, (rng.standard_normal(x.shape) * 3).astype(x.dtype))


def _torch_jsd(torch, student, teacher, beta=0.5, temperature=1.0, per_row=False):
    """TRL's generalized_jsd_loss (no labels, "batchmean" per row) for 0 < beta < 1; with
    ``per_row``, each row's loss."""
    log_q = torch.log_softmax(student / temperature, -1)
    log_p = torch.log_softmax(teacher / temperature, -1)
    log_m = torch.logsumexp(torch.stack([log_q + torch.log(torch.tensor(1 - beta)),
                                         log_p + torch.log(torch.tensor(beta))]), 0)
    kl = torch.nn.functional.kl_div
    jsd = beta * kl(log_m, log_p, reduction="none", log_target=True) \
        + (1 - beta) * kl(log_m, log_q, reduction="none", log_target=True)
    return jsd.sum(-1) if per_row else jsd.sum() / (jsd.numel() // jsd.shape[-1])


def _jax_jsd(jax, jnp, student, teacher, beta=0.5):
    log_q = jax.nn.log_softmax(student, axis=-1)
    log_p = jax.nn.log_softmax(teacher, axis=-1)
    log_m = jnp.logaddexp(log_q + jnp.log(1 - beta), log_p + jnp.log(beta))
    q, p = jnp.exp(log_q), jnp.exp(log_p)
    rows = beta * jnp.sum(p * (log_p - log_m), -1) + (1 - beta) * jnp.sum(q * (log_q - log_m), -1)
    return jnp.mean(rows)


OPS.update({op.name: op for op in [
    Op("jsd_logits", "loss", ("student_logits", "teacher_logits"), _teacher_logits,
       torch=_torch_jsd, jax=_jax_jsd, torch_layer=lambda fst, s, t: fst.jsd_logits(s, t),
       floor=(2, 0)),
    Op("jsd_logits_with_grad", "loss", ("student_logits", "teacher_logits"), _teacher_logits,
       torch=_torch_with_grad(_torch_jsd), jax=_jax_with_grad(_jax_jsd),
       torch_layer=_torch_with_grad(lambda fst, s, t: fst.jsd_logits(s, t)),
       grad_of="jsd_logits", out=True, floor=(2, 1)),
]})
