"""fastsoftmax.torch.linear_cross_entropy and LinearCrossEntropyLoss: gradcheck, and equality with
autograd through F.linear + F.cross_entropy for every option, on every backend."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import linear_ce

torch = pytest.importorskip("torch")
fst = pytest.importorskip("fastsoftmax.torch")
from fastsoftmax import torch_linear  # noqa: E402  (needs torch)
F = torch.nn.functional

OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(weight=True),
    dict(label_smoothing=0.2),
    dict(weight=True, label_smoothing=0.3, reduction="none"),
    dict(ignore_index=2, reduction="sum"),
    dict(softcap=1.5, weight=True, reduction="none"),
]


def make(n=12, d=5, v=9, dtype=torch.float64, bias=True, seed=0, ignore_index=-100):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, dtype=dtype, generator=generator).requires_grad_()
    w = (torch.randn(v, d, dtype=dtype, generator=generator) / d ** 0.5).requires_grad_()
    b = torch.randn(v, dtype=dtype, generator=generator).requires_grad_() if bias else None
    target = torch.randint(0, v, (n,), generator=generator)
    target[::4] = ignore_index
    return h, w, b, target


def resolved(options, v, dtype):
    options = dict(options)
    if options.get("weight") is True:
        options["weight"] = torch.linspace(0.3, 1.7, v, dtype=dtype)
    return options


def unfused_grads(h, w, b, target, grad_output, softcap=None, **options):
    logits = F.linear(h, w, b)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    loss = F.cross_entropy(logits, target, **options)
    return (loss, *torch.autograd.grad((loss * grad_output).sum(),
                                       [t for t in (h, w, b) if t is not None and t.requires_grad]))


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_gradcheck(options, bias):
    h, w, b, target = make(bias=bias, ignore_index=options.get("ignore_index", -100))
    options = resolved(options, w.shape[0], torch.float64)
    inputs = tuple(t for t in (h, w, b) if t is not None)

    def f(*tensors):
        return fst.linear_cross_entropy(tensors[0], tensors[1], target,
                                        linear_bias=tensors[2] if bias else None,
                                        chunk_bytes=1, **options)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_unfused_autograd(backend, options, dtype):
    h, w, b, target = make(n=40, v=33, dtype=dtype, ignore_index=options.get("ignore_index", -100))
    options = resolved(options, w.shape[0], dtype)
    grad_output = torch.linspace(-1, 2, h.shape[0], dtype=dtype) \
        if options.get("reduction") == "none" else torch.tensor(0.7, dtype=dtype)
    expected = unfused_grads(h, w, b, target, grad_output, **options)
    with fs.use_backend(backend):
        loss = fst.linear_cross_entropy(h, w, target, linear_bias=b, chunk_bytes=7 * 33 * 8,
                                        **options)
        actual = (loss, *torch.autograd.grad((loss * grad_output).sum(), [h, w, b]))
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict()
    for name, a, e in zip(("loss", "grad_h", "grad_weight", "grad_bias"), actual, expected):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a, e, **tolerance, msg=lambda m, n=name: f"{n}: {m}")


def test_same_call_as_torch_2_13():
    """A call written for torch's F.linear_cross_entropy (keywords, options, ignore_index=None)
    gives torch's values."""
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("this torch has no F.linear_cross_entropy")
    h, w, b, target = make(n=30, v=17)
    kwargs = dict(linear_bias=b, weight=torch.rand(17, dtype=torch.float64) + 0.5,
                  reduction="sum", ignore_index=None,
                  options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=8))
    expected = F.linear_cross_entropy(h, w, target, **kwargs)
    expected_grads = torch.autograd.grad(expected, [h, w, b])
    actual = fst.linear_cross_entropy(h, w, target, **kwargs)
    torch.testing.assert_close(actual, expected)
    for a, e in zip(torch.autograd.grad(actual, [h, w, b]), expected_grads):
        torch.testing.assert_close(a, e)


def test_frozen_weight_and_no_grad(monkeypatch):
    """Only the gradients autograd asks for are computed; no_grad runs the loss alone."""
    asked = []
    real = linear_ce._compute
    monkeypatch.setattr(linear_ce, "_compute",
                        lambda *a, need, **k: asked.append(need) or real(*a, need=need, **k))
    h, w, b, target = make()
    w.requires_grad_(False)
    loss = fst.linear_cross_entropy(h, w, target, linear_bias=b)
    loss.backward()
    assert asked == [("h", "bias")] and w.grad is None
    expected = unfused_grads(h, w, b, target, 1.0)  # (loss, grad_h, grad_bias): w is frozen
    torch.testing.assert_close(h.grad, expected[1])
    torch.testing.assert_close(b.grad, expected[2])
    asked.clear()
    with torch.no_grad():
        fst.linear_cross_entropy(h, w, target, linear_bias=b)
    assert asked == [None]


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_retained_graph_backward_twice(reduction):
    h, w, b, target = make()
    loss = fst.linear_cross_entropy(h, w, target, linear_bias=b, reduction=reduction).sum()
    loss.backward(retain_graph=True)
    first = h.grad.clone()
    loss.backward(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(h.grad, 3 * first)


@pytest.mark.parametrize("source", ["view", "reshape", "leaf+0"])
def test_retained_graph_through_views_of_leaves(source):
    """h and W as views of leaves: their backward hands the gradient on as a view, which a
    leaf's .grad took over, so the next backward added into the kept gradient (before:
    the third backward gave 4x the gradient, silently; and .grad.zero_() zeroed it)."""
    h, w, b, target = make()
    shaped = {"view": lambda t: t.view(t.shape), "reshape": lambda t: t.reshape(t.shape),
              "leaf+0": lambda t: t + 0}[source]
    loss = fst.linear_cross_entropy(shaped(h), shaped(w), target, linear_bias=shaped(b))
    for _ in range(3):
        loss.backward(retain_graph=True)
    grads = [t.grad.clone() for t in (h, w, b)]
    for t in (h, w, b):
        t.grad.zero_()
    loss.backward()
    once = [t.detach().clone().requires_grad_() for t in (h, w, b)]
    F.cross_entropy(F.linear(once[0], once[1], once[2]), target).backward()
    for got, after_zero, want in zip(grads, (h.grad, w.grad, b.grad), once):
        torch.testing.assert_close(got, 3 * want.grad)
        torch.testing.assert_close(after_zero, want.grad)


def test_module_matches_linear_plus_cross_entropy():
    torch.manual_seed(0)
    head = fst.LinearCrossEntropyLoss(6, 20, bias=True, dtype=torch.float64,
                                      label_smoothing=0.1, ignore_index=-1)
    reference = torch.nn.Linear(6, 20, dtype=torch.float64)
    reference.load_state_dict(head.linear.state_dict())
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    target = torch.randint(0, 20, (3, 5))
    target[0, :2] = -1
    head(x, target).backward()
    F.cross_entropy(reference(x).reshape(-1, 20), target.reshape(-1), label_smoothing=0.1,
                    ignore_index=-1).backward()
    torch.testing.assert_close(head.linear.weight.grad, reference.weight.grad)
    torch.testing.assert_close(head.linear.bias.grad, reference.bias.grad)


def test_torch_gemms_run_on_the_kernel_thread_count(monkeypatch):
    seen = []

    class Recording(torch_linear._TorchBlas):
        def logits(self, *args):
            seen.append(torch.get_num_threads())
            return super().logits(*args)

    monkeypatch.setattr(torch_linear, "_TorchBlas", Recording)
    before = torch.get_num_threads()
    h, w, b, target = make()
    fst.linear_cross_entropy(h, w, target).backward()
    assert seen == [fs.get_num_threads()]
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("change, error, words", [
    (dict(input=torch.zeros(4, 3, dtype=torch.int64)), TypeError, ["input", "int64"]),
    (dict(linear_weight=torch.zeros(9, 3, dtype=torch.float32)), TypeError,
     ["float32", "float64"]),
    (dict(linear_weight=torch.zeros(9, 4, dtype=torch.float64)), ValueError, ["(4, 3)", "(9, 4)"]),
    (dict(target=[0, 1, 2, 3]), TypeError, ["target"]),
    (dict(target=torch.tensor([0, 1, 2, 9])), IndexError, ["9"]),
])
def test_bad_input(change, error, words):
    arguments = dict(input=torch.zeros(4, 3, dtype=torch.float64),
                     linear_weight=torch.zeros(9, 3, dtype=torch.float64),
                     target=torch.tensor([0, 1, 2, 3]))
    arguments.update(change)
    with pytest.raises(error) as raised:
        fst.linear_cross_entropy(**arguments)
    for word in words:
        assert word in str(raised.value), f"{word!r} not in {raised.value}"


def test_numpy_and_torch_gemms_agree():
    """The NumPy front end (SciPy BLAS) and the torch one (torch BLAS) give the same values."""
    h, w, b, target = make(n=50, v=40, ignore_index=-100)
    loss = fst.linear_cross_entropy(h, w, target, linear_bias=b)
    grads = torch.autograd.grad(loss, [h, w, b])
    numpy_result = fs.linear_cross_entropy_with_grad(*(t.detach().numpy() for t in (h, w)),
                                                     target.numpy(), bias=b.detach().numpy())
    np.testing.assert_allclose(loss.item(), numpy_result[0], rtol=1e-12)
    for g, n in zip(grads, numpy_result[1:]):
        np.testing.assert_allclose(g.numpy(), n, rtol=1e-10, atol=1e-14)


def test_in_place_change_before_a_recomputing_backward_is_caught():
    """reduction="none" recomputes in backward from the saved inputs: changing one in
    between raises instead of giving silently wrong gradients (Liger #343)."""
    h, w, b, target = make()
    loss = fst.linear_cross_entropy(h * 1.0, w, target, reduction="none")
    with torch.no_grad():
        w.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()
