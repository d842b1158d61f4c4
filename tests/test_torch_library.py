"""The torch.library ops behind fastsoftmax.torch: opcheck, gradcheck, torch.compile,
in-place semantics."""
import copy

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
F = torch.nn.functional
import fastsoftmax as fs  # noqa: E402
import fastsoftmax.torch as fst  # noqa: E402
from fastsoftmax._torch_tensors import gradient_is_consumed  # noqa: E402

OPS = torch.ops.fastsoftmax
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _logits(shape, dtype=F64, seed=0, layout="contiguous", requires_grad=False):
    """Random logits; layout "strided" (every other element of a wider tensor) or
    "classes_last" (dense, but the class dim 1 has stride 1)."""
    g = _gen(seed)
    if layout == "strided":
        x = torch.randn(*shape[:-1], 2 * shape[-1], generator=g, dtype=dtype)[..., ::2]
    elif layout == "classes_last":
        x = torch.randn(shape, generator=g, dtype=dtype).movedim(1, -1).contiguous().movedim(-1, 1)
    else:
        x = torch.randn(shape, generator=g, dtype=dtype)
    return x.detach().requires_grad_(requires_grad)


def _index_target(shape, ignore_index=-100, seed=1):
    class_dim = 1 if len(shape) > 1 else 0
    index_shape = shape[:class_dim] + shape[class_dim + 1:]
    t = torch.randint(0, shape[class_dim], index_shape, generator=_gen(seed))
    if t.dim():
        t.view(-1)[0] = ignore_index
    return t


def _prob_target(shape, dtype=F64, seed=2, requires_grad=False):
    class_dim = 1 if len(shape) > 1 else 0
    t = torch.softmax(torch.randn(shape, generator=_gen(seed), dtype=dtype), class_dim)
    return t.requires_grad_(requires_grad)


def _ce_sample(shape, prob=False, weight=False, ignore_index=-100, reduction="mean",
               smoothing=0.0, dtype=F64, layout="contiguous", x_grad=True, t_grad=False,
               z_loss=0.0, softcap=None):
    x = _logits(shape, dtype, layout=layout, requires_grad=x_grad)
    if prob:
        t = _prob_target(shape, dtype, requires_grad=t_grad)
    else:
        t = _index_target(shape, ignore_index)
    class_dim = 1 if len(shape) > 1 else 0
    w = torch.linspace(0.5, 2.0, shape[class_dim], dtype=dtype) if weight else None
    return (x, t, w, ignore_index, reduction, smoothing, z_loss, softcap, x_grad)


CE_SAMPLES = {
    "2d-mean": _ce_sample((6, 5)),
    "2d-sum-weight": _ce_sample((6, 5), weight=True, reduction="sum"),
    "2d-none-smoothing": _ce_sample((6, 5), reduction="none", smoothing=0.1),
    "2d-ignore-in-range": _ce_sample((6, 5), ignore_index=2, weight=True, smoothing=0.2),
    "kdim-weight-smoothing": _ce_sample((4, 5, 3), weight=True, smoothing=0.1),
    "kdim2-none": _ce_sample((3, 5, 2, 2), reduction="none"),
    "1d": _ce_sample((7,)),
    "1d-prob": _ce_sample((7,), prob=True, reduction="none"),
    "prob-weight-smoothing": _ce_sample((6, 5), prob=True, weight=True, smoothing=0.1),
    "prob-kdim-none": _ce_sample((4, 5, 3), prob=True, reduction="none"),
    "prob-target-grad": _ce_sample((4, 5, 3), prob=True, weight=True, smoothing=0.2,
                                   t_grad=True),
    "prob-target-grad-only": _ce_sample((6, 5), prob=True, x_grad=False, t_grad=True),
    "non-contiguous": _ce_sample((6, 5), layout="strided", weight=True),
    "classes-last-layout": _ce_sample((4, 5, 3), layout="classes_last", reduction="none"),
    "float32": _ce_sample((6, 5), dtype=torch.float32, smoothing=0.1),
    "no-grad": _ce_sample((6, 5), x_grad=False),
    "z-loss-weight-ignore": _ce_sample((6, 5), weight=True, ignore_index=2, z_loss=0.1),
    "z-loss-prob-none": _ce_sample((4, 5, 3), prob=True, reduction="none", z_loss=0.1),
    "softcap-weight-ignore": _ce_sample((6, 5), weight=True, ignore_index=2, softcap=1.5),
    "softcap-prob-target-grad": _ce_sample((4, 5, 3), prob=True, smoothing=0.1, softcap=2.0,
                                           t_grad=True),
}

ROWS_SAMPLES = {
    "2d-last": (_logits((4, 6), requires_grad=True), -1),
    "2d-first": (_logits((4, 6), requires_grad=True), 0),
    "3d-middle": (_logits((3, 5, 4), requires_grad=True), 1),
    "1d": (_logits((7,), requires_grad=True), 0),
    "0d": (_logits((), requires_grad=True), 0),
    "empty-classes": (_logits((5, 0, 0), requires_grad=True), 2),
    "empty-rows": (_logits((0, 4), requires_grad=True), 1),
    "non-contiguous": (_logits((4, 6), layout="strided", requires_grad=True), 1),
    "classes-last-layout": (_logits((3, 5, 4), layout="classes_last", requires_grad=True), 1),
    "float32": (_logits((4, 6), torch.float32, requires_grad=True), 1),
    "no-grad": (_logits((4, 6)), 1),
}

ENTROPY_SAMPLES = {
    "2d": (_logits((4, 6), requires_grad=True), True),
    "3d": (_logits((2, 3, 7), requires_grad=True), True),
    "1d": (_logits((7,), requires_grad=True), True),
    "non-contiguous": (_logits((4, 6), layout="strided", requires_grad=True), True),
    "transposed": (_logits((6, 4)).t().requires_grad_(), True),
    "one-class": (_logits((5, 1), requires_grad=True), True),
    "float32": (_logits((4, 6), torch.float32, requires_grad=True), True),
    "large-logits": ((_logits((4, 6)) * 1e3).requires_grad_(), True),
    "no-grad": (_logits((4, 6)), False),
    "no-grad-3d": (_logits((2, 3, 7)), False),
    "bfloat16": (_logits((4, 6), torch.bfloat16, requires_grad=True), True),  # bf16 entropy
    "float16-no-grad": (_logits((4, 6), torch.float16), False),
}


def _opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("name", CE_SAMPLES)
def test_opcheck_cross_entropy(name):
    _opcheck(OPS.cross_entropy.default, (*CE_SAMPLES[name], ""))


@pytest.mark.parametrize("name", [n for n in CE_SAMPLES if not n.startswith("prob-target-grad")])
def test_opcheck_cross_entropy_inplace(name):
    x, t, w, ignore_index, reduction, smoothing, z_loss, softcap, _ = CE_SAMPLES[name]
    _opcheck(OPS.cross_entropy_.default, (x.detach().clone(), t.detach(), w, ignore_index,
                                          reduction, smoothing, z_loss, softcap, ""))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("name", ROWS_SAMPLES)
def test_opcheck_softmax(op, name):
    x, dim = ROWS_SAMPLES[name]
    _opcheck(getattr(OPS, op).default, (x, dim, ""))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("name", ROWS_SAMPLES)
def test_opcheck_softmax_backward(op, name):
    x, dim = ROWS_SAMPLES[name]
    y = getattr(torch, op)(x.detach(), dim)
    dy = torch.randn(x.shape, generator=_gen(3), dtype=x.dtype)
    _opcheck(getattr(OPS, f"{op}_backward").default, (y, dy, dim, ""))


@pytest.mark.parametrize("name", ENTROPY_SAMPLES)
def test_opcheck_entropy(name):
    _opcheck(OPS.entropy.default, (*ENTROPY_SAMPLES[name], ""))


def test_every_op_has_opcheck_samples():
    """A registered op without an opcheck test above fails here."""
    tested = {"cross_entropy", "cross_entropy_", "softmax", "log_softmax", "softmax_backward",
              "log_softmax_backward", "entropy", "kl_div", "binary_cross_entropy_with_logits",
              "sigmoid", "log_sigmoid", "jsd_logits"}
    registered = {name for name in dir(OPS) if not name.startswith("_")
                  and isinstance(getattr(OPS, name), torch._ops.OpOverloadPacket)}
    assert registered == tested
    assert min(len(CE_SAMPLES), len(ROWS_SAMPLES), len(ENTROPY_SAMPLES)) >= 10


# ------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("name", [n for n in CE_SAMPLES
                                  if CE_SAMPLES[n][0].dtype == F64 and CE_SAMPLES[n][-1]])
def test_gradcheck_cross_entropy(backend, name):
    x, t, w, ignore_index, reduction, smoothing, z_loss, softcap, _ = CE_SAMPLES[name]
    inputs = (x, t) if t.requires_grad else (x,)

    def loss(x, t=t):
        return fst.cross_entropy(x, t, w, ignore_index, reduction, smoothing, z_loss=z_loss,
                                 softcap=softcap, backend=backend)
    assert torch.autograd.gradcheck(loss, inputs)


@pytest.mark.parametrize("function", ["softmax", "log_softmax"])
@pytest.mark.parametrize("name", [n for n in ROWS_SAMPLES if ROWS_SAMPLES[n][0].dtype == F64
                                  and ROWS_SAMPLES[n][0].requires_grad])
def test_gradcheck_softmax(backend, function, name):
    x, dim = ROWS_SAMPLES[name]
    assert torch.autograd.gradcheck(
        lambda z: getattr(fst, function)(z, dim, backend=backend), (x,))


def test_gradcheck_entropy(backend):
    x = _logits((4, 3, 6), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: fst.entropy(z, backend=backend), (x,))


# -------------------------------------------------------------------- torch.compile

class _Model(torch.nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        gen = _gen(7)
        self.hidden = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(16, n_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


LOSSES = {
    "cross_entropy": lambda z, t: fst.cross_entropy(z, t, label_smoothing=0.1),
    "cross_entropy-weighted-none": lambda z, t: fst.cross_entropy(
        z, t, torch.linspace(0.5, 2, z.shape[1]), reduction="none").sum() * 0.5,
    "cross_entropy-learnt-prob": lambda z, t: fst.cross_entropy(z, torch.softmax(z.flip(1), 1)),
    "softmax": lambda z, t: fst.softmax(z, 1)[:, 0].sum(),
    "log_softmax": lambda z, t: -fst.log_softmax(z, -1).gather(1, t[:, None]).mean(),
    "entropy": lambda z, t: fst.entropy(z).mean(),
}


def _batch():
    return torch.randn(12, 8, generator=_gen(8)), torch.randint(0, 10, (12,), generator=_gen(9))


@pytest.mark.parametrize("name", LOSSES)
def test_dynamo_explain_one_graph(name):
    model = _Model()
    loss_fn = LOSSES[name]
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda x, t: loss_fn(model(x), t))(*_batch())
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), \
        explanation.break_reasons


def _eager_and_compiled(loss_fn, backend, reference=None):
    """(loss, grads) of a model's step in eager mode (with ``reference`` as the loss
    if given) and under torch.compile(fullgraph=True, backend=backend)."""
    results = []
    for compiled in (False, True):
        model = _Model()
        loss_of = reference if reference and not compiled else loss_fn

        def step(x, t, model=model, loss_of=loss_of):
            return loss_of(model(x), t)
        if compiled:
            torch._dynamo.reset()
            step = torch.compile(step, fullgraph=True, backend=backend)
        loss = step(*_batch())
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    return results


FP32 = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", LOSSES)
def test_compiled_training_step_matches_eager(compiler, name):
    (want_loss, want_grads), (loss, grads) = _eager_and_compiled(LOSSES[name], compiler)
    torch.testing.assert_close(loss, want_loss, **FP32)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, **FP32)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_step_matches_torch_cross_entropy(compiler):
    ours = lambda z, t: fst.cross_entropy(z, t, label_smoothing=0.1)  # noqa: E731
    theirs = lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1)  # noqa: E731
    (want_loss, want_grads), (loss, grads) = _eager_and_compiled(ours, compiler, theirs)
    torch.testing.assert_close(loss, want_loss, **FP32)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, **FP32)


def test_compiled_backend_follows_use_backend():
    """The backend is read when the kernel runs: use_backend around a compiled call applies."""
    x = _logits((4, 6))
    compiled = torch.compile(lambda z: fst.log_softmax(z, 1), fullgraph=True, backend="aot_eager")
    for backend in fs.available_backends():
        with fs.use_backend(backend):
            torch.testing.assert_close(compiled(x), torch.log_softmax(x, 1))
    with pytest.raises(ValueError, match="unknown backend"):
        fst.softmax(x, 1, backend="fortran")


# ------------------------------------------------------------------------- in place

def _linear_logits(seed=0):
    lin = torch.nn.Linear(4, 5).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(5, 4, generator=_gen(seed), dtype=F64))
    h = torch.randn(8, 4, generator=_gen(seed + 1), dtype=F64)
    return lin, h, torch.randint(0, 5, (8,), generator=_gen(seed + 2))


def test_eager_inplace_writes_gradient_and_bumps_version():
    lin, h, t = _linear_logits()
    lin_ref = copy.deepcopy(lin)
    logits = lin(h)
    want = torch.autograd.grad(F.cross_entropy(logits, t, reduction="sum"), logits)[0]
    version = logits._version
    loss = fst.cross_entropy(logits, t, reduction="sum", inplace=True)
    assert logits._version > version
    torch.testing.assert_close(logits.detach(), want)  # the buffer now holds the gradient
    loss.backward()
    F.cross_entropy(lin_ref(h), t, reduction="sum").backward()
    torch.testing.assert_close(lin.weight.grad, lin_ref.weight.grad)
    torch.testing.assert_close(lin.bias.grad, lin_ref.bias.grad)


def test_inplace_logits_changed_after_the_loss_raise():
    """The logits hold the gradient: a change before backward would make it wrong
    (before: all-zero gradients after logits.mul_(0), no error)."""
    lin, h, t = _linear_logits()
    logits = lin(h)
    loss = fst.cross_entropy(logits, t, inplace=True)
    logits.mul_(0)
    with pytest.raises(RuntimeError, match="modified after the loss"):
        loss.backward()


@pytest.mark.parametrize("inplace", [False, True])
def test_weight_that_requires_grad_raises(inplace):
    """No gradient for the class weight (torch has none either): an error, not a silent
    None (before: inplace=True gave weight.grad None without a word)."""
    lin, h, t = _linear_logits()
    weight = torch.rand(lin.out_features, dtype=lin.weight.dtype, requires_grad=True)
    with pytest.raises(NotImplementedError, match="weight.detach"):
        fst.cross_entropy(lin(h), t, weight=weight, inplace=inplace)


def test_leaf_input_backward_three_times_with_retain_graph():
    """grad_output 1 on a leaf: x.grad must not be the saved gradient itself (before: the
    third backward failed the saved tensor's version check)."""
    x = _logits((4, 7), requires_grad=True)
    t = _index_target((4, 7), seed=3)
    loss = fst.cross_entropy(x, t)
    for _ in range(3):
        loss.backward(retain_graph=True)
    x_ref = x.detach().clone().requires_grad_()
    F.cross_entropy(x_ref, t).backward()
    torch.testing.assert_close(x.grad, 3 * x_ref.grad)


_LOSSES_OF_A_TABLE = {  # a loss of (4, 6) logits per op that returns a saved gradient
    "cross_entropy": lambda x: fst.cross_entropy(x, torch.tensor([0, 1, 2, 3])),
    "kl_div": lambda x: fst.kl_div(x, _prob_target((4, 6)), reduction="batchmean"),
    "bce": lambda x: fst.binary_cross_entropy_with_logits(x, _prob_target((4, 6))),
    "jsd_logits": lambda x: fst.jsd_logits(x, _logits((4, 6), seed=5)),
}


@pytest.mark.parametrize("loss_name", _LOSSES_OF_A_TABLE)
@pytest.mark.parametrize("source", ["view", "add"])
def test_learnt_table_backward_three_times_with_retain_graph(loss_name, source):
    """Logits that are a view of a leaf (a learnt logit table) or a sum with it: their
    backward hands the gradient on to the leaf's .grad, which must not be the saved
    gradient (before: the third backward failed the saved tensor's version check)."""
    loss_of = _LOSSES_OF_A_TABLE[loss_name]
    table = torch.randn(24, generator=_gen(4), dtype=F64, requires_grad=True)
    loss = loss_of(table.view(4, 6) if source == "view" else table.view(4, 6) + 0)
    for _ in range(3):
        loss.backward(retain_graph=True)
    once = table.detach().clone().requires_grad_()
    loss_of(once.view(4, 6)).backward()
    torch.testing.assert_close(table.grad, 3 * once.grad)


def test_gradient_is_handed_on_without_a_copy_only_to_products():
    """The saved gradient is returned as is (no sweep to copy it) when the logits come
    from a linear layer, through views; a leaf or a pass-through node gets a copy."""
    lin, h, _ = _linear_logits()
    consumed = gradient_is_consumed
    assert consumed(lin(h))
    assert consumed(lin(h.view(2, 4, 4)).view(-1, 5))
    assert consumed(torch.nn.Linear(4, 5, bias=False).double()(h))
    leaf = torch.randn(8, 5, dtype=F64, requires_grad=True)
    assert not consumed(leaf)
    assert not consumed(leaf.view(5, 8))
    assert not consumed(leaf + 0)
    assert not consumed(leaf.detach())
    assert not consumed(torch.addmm(leaf, h, lin.weight.T))  # hands its gradient to leaf


def test_addmm_of_a_full_size_leaf_backward_three_times_with_retain_graph():
    """addmm(c, a, b) hands its gradient on to a full-size c as it is (a bias vector gets
    a sum): before, c.grad was the saved gradient and the third backward failed."""
    c = _logits((4, 6), seed=6, requires_grad=True)
    a, b = _logits((4, 3), seed=7), _logits((3, 6), seed=8)
    t = torch.tensor([0, 1, 2, 3])
    loss = fst.cross_entropy(torch.addmm(c, a, b), t)
    for _ in range(3):
        loss.backward(retain_graph=True)
    once = c.detach().clone().requires_grad_()
    F.cross_entropy(torch.addmm(once, a, b), t).backward()
    torch.testing.assert_close(c.grad, 3 * once.grad)


@pytest.mark.parametrize("function", ["cross_entropy", "cross_entropy-inplace", "entropy"])
def test_create_graph_raises(function):
    """The gradient is a first-order result: create_graph=True (a gradient penalty) raises
    instead of silently dropping the second-derivative term (before: the penalty's
    Hessian term was missing from x.grad, no error)."""
    lin, h, t = _linear_logits()
    logits = lin(h)
    if function == "entropy":
        loss = fst.entropy(logits).sum()
    else:
        loss = fst.cross_entropy(logits, t, inplace=function.endswith("inplace"))
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(loss, lin.weight, create_graph=True)


def test_inplace_second_backward_raises():
    lin, h, t = _linear_logits()
    loss = fst.cross_entropy(lin(h), t, inplace=True) * 2.0
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second time.*inplace=False"):
        loss.backward()


def test_out_of_place_second_backward_with_retain_graph_is_right():
    lin, h, t = _linear_logits()
    loss = fst.cross_entropy(lin(h), t) * 2.0
    loss.backward(retain_graph=True)
    first = lin.weight.grad.clone()
    loss.backward()
    torch.testing.assert_close(lin.weight.grad, 2 * first)


def test_inplace_learnt_probability_target():
    lin, h, _ = _linear_logits()
    t0 = _prob_target((8, 5))
    grads = []
    for inplace in (False, True):
        t = t0.clone().requires_grad_()
        lin.zero_grad()
        (fst.cross_entropy(lin(h), t, label_smoothing=0.1, inplace=inplace) * 1.5).backward()
        grads.append((t.grad, lin.weight.grad.clone()))
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_inplace_falls_back_to_out_of_place(compiler):
    results = [_eager_and_compiled(
        lambda z, t, inplace=inplace: fst.cross_entropy(z, t, inplace=inplace) * 1.5,
        compiler)[1]
        for inplace in (False, True)]
    (loss, grads), (loss_inplace, grads_inplace) = results
    torch.testing.assert_close(loss_inplace, loss)
    for got, want in zip(grads_inplace, grads):
        torch.testing.assert_close(got, want)

    model = _Model()
    x, t = _batch()

    def step(x, t):
        logits = model(x)
        return fst.cross_entropy(logits, t, inplace=True), logits
    _, logits = torch.compile(step, fullgraph=True, backend=compiler)(x, t)
    torch.testing.assert_close(logits, model(x))  # not overwritten under compile


# ------------------------------------------------- elementwise losses (issue 17)

def _kl_sample(shape, reduction="mean", log_target=False, dtype=F64, target_shape=None):
    x = torch.log_softmax(_logits(shape, dtype), -1).requires_grad_()
    t = _prob_target(target_shape or shape, dtype)
    return (x, t.log() if log_target else t, reduction, log_target, True)


KL_SAMPLES = {
    "2d-mean": _kl_sample((4, 6)),
    "2d-batchmean": _kl_sample((4, 6), "batchmean"),
    "3d-sum-log-target": _kl_sample((2, 3, 5), "sum", log_target=True),
    "2d-none": _kl_sample((4, 6), "none"),
    "1d": _kl_sample((7,)),
    "broadcast-target": _kl_sample((4, 6), "sum", target_shape=(6,)),
    "float32": _kl_sample((4, 6), dtype=torch.float32),
    "bfloat16": _kl_sample((4, 6), dtype=torch.bfloat16),  # a float32 loss
    "float16-none": _kl_sample((4, 6), "none", dtype=torch.float16),
}


def _bce_sample(shape, reduction="mean", weight=None, pos_weight=None, dtype=F64):
    x = _logits(shape, dtype, requires_grad=True)
    y = torch.rand(shape, generator=_gen(4), dtype=dtype)
    return (x, y, _random_weight(weight, dtype), _random_weight(pos_weight, dtype), reduction,
            True)


def _random_weight(shape, dtype):
    return None if shape is None else torch.rand(shape, generator=_gen(5), dtype=dtype)


BCE_SAMPLES = {
    "2d-mean": _bce_sample((4, 6)),
    "2d-sum-weights": _bce_sample((4, 6), "sum", weight=(6,), pos_weight=(6,)),
    "3d-none-pos-weight": _bce_sample((2, 3, 5), "none", pos_weight=(3, 1)),
    "1d": _bce_sample((7,)),
    "0d": _bce_sample(()),
    "float32": _bce_sample((4, 6), dtype=torch.float32),
    "bfloat16-weights": _bce_sample((4, 6), "sum", weight=(6,), pos_weight=(6,),
                                    dtype=torch.bfloat16),
    "float16-none": _bce_sample((4, 6), "none", dtype=torch.float16),
}


@pytest.mark.parametrize("name", KL_SAMPLES)
def test_opcheck_kl_div(name):
    _opcheck(OPS.kl_div.default, (*KL_SAMPLES[name], ""))


@pytest.mark.parametrize("name", BCE_SAMPLES)
def test_opcheck_binary_cross_entropy_with_logits(name):
    _opcheck(OPS.binary_cross_entropy_with_logits.default, (*BCE_SAMPLES[name], ""))


SIGMOID_SAMPLES = {
    "2d": _logits((4, 6), requires_grad=True),
    "1d": _logits((7,), requires_grad=True),
    "0d": _logits((), requires_grad=True),
    "empty": _logits((0, 3), requires_grad=True),
    "non-contiguous": _logits((4, 6), layout="strided", requires_grad=True),
    "float32": _logits((4, 6), dtype=torch.float32, requires_grad=True),
    "bfloat16": _logits((4, 6), dtype=torch.bfloat16, requires_grad=True),
    "float16": _logits((4, 6), dtype=torch.float16, requires_grad=True),
}


@pytest.mark.parametrize("op", ["sigmoid", "log_sigmoid"])
@pytest.mark.parametrize("name", SIGMOID_SAMPLES)
def test_opcheck_sigmoid_family(op, name):
    _opcheck(getattr(OPS, op).default, (SIGMOID_SAMPLES[name], ""))


# ---------------------------------- KL and JSD between two sets of logits (issue 17)

def _jsd_sample(shape, beta=0.5, temperature=1.0, reduction="mean", dtype=F64,
                layout="contiguous", grad=True):
    student = _logits(shape, dtype, layout=layout, requires_grad=grad)
    teacher = _logits(shape, dtype, seed=6, layout=layout)
    return (student, teacher, beta, temperature, reduction, grad)


JSD_SAMPLES = {
    "2d-mean": _jsd_sample((4, 6)),
    "2d-forward-kl": _jsd_sample((4, 6), beta=0.0, reduction="sum"),
    "2d-reverse-kl-none": _jsd_sample((4, 6), beta=1.0, reduction="none"),
    "3d-temperature-none": _jsd_sample((2, 3, 5), beta=0.3, temperature=2.0, reduction="none"),
    "1d": _jsd_sample((7,)),
    "one-class": _jsd_sample((5, 1)),
    "empty-rows": _jsd_sample((0, 4), reduction="sum"),
    "non-contiguous": _jsd_sample((4, 6), layout="strided"),
    "float32": _jsd_sample((4, 6), dtype=torch.float32, temperature=0.5),
    "no-grad": _jsd_sample((4, 6), grad=False),
    "bfloat16": _jsd_sample((4, 6), dtype=torch.bfloat16),  # a float32 loss
    "float16-none": _jsd_sample((4, 6), reduction="none", dtype=torch.float16),
}


@pytest.mark.parametrize("name", JSD_SAMPLES)
def test_opcheck_jsd_logits(name):
    _opcheck(OPS.jsd_logits.default, (*JSD_SAMPLES[name], ""))
