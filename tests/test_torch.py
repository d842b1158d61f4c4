"""fastsoftmax.torch against torch.nn.functional, values and gradients."""
import functools
import itertools

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
F = torch.nn.functional
import fastsoftmax as fs  # noqa: E402
import fastsoftmax.torch as fst  # noqa: E402

SHAPES = [(7,), (6, 5), (4, 5, 3), (3, 5, 2, 2)]
CASES = [c for c in itertools.product(SHAPES, [False, True], [False, True], ["mean", "sum", "none"],
                                      [0.0, 0.2], [torch.float32, torch.float64])
         if not (len(c[0]) == 1 and c[1])]  # no probability target for a single sample


def make(shape, probabilities, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    if probabilities:
        t = torch.rand(shape, generator=g, dtype=dtype)
        t = t / t.sum(dim=0 if len(shape) == 1 else 1, keepdim=True)
    else:
        index_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
        t = torch.randint(0, n_classes, index_shape, generator=g)
        if t.dim():
            t.view(-1)[0] = -100
    return x, t, n_classes


@pytest.mark.parametrize("shape,probabilities,weighted,reduction,smoothing,dtype", CASES)
def test_matches_torch(shape, probabilities, weighted, reduction, smoothing, dtype):
    x, t, n_classes = make(shape, probabilities, dtype)
    weight = torch.linspace(0.5, 2.0, n_classes, dtype=dtype) if weighted else None
    opts = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ours, theirs = fst.cross_entropy(a, t, **opts), F.cross_entropy(b, t, **opts)
    g = torch.randn(theirs.shape, dtype=dtype)
    (ours * g).sum().backward()
    (theirs * g).sum().backward()
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tol)
    torch.testing.assert_close(a.grad, b.grad, **tol)


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(probabilities, reduction):
    x, t, _ = make((4, 5, 2), probabilities, torch.float64, seed=1)
    weight = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda z: fst.cross_entropy(z, t, weight=weight, reduction=reduction,
                                    label_smoothing=0.1), (x.requires_grad_(),))


def test_module_matches_nn_module():
    x, t, n = make((6, 5), False, torch.float32)
    weight = torch.rand(n) + 0.5
    ours = fst.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(x, t)
    theirs = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(x, t)
    torch.testing.assert_close(ours, theirs)


def test_no_grad_and_plain_tensors():
    x, t, _ = make((6, 5), False, torch.float32)
    with torch.no_grad():
        loss = fst.cross_entropy(x.requires_grad_(), t)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(x.detach(), t))


def test_inplace_writes_gradient_into_logits():
    lin = torch.nn.Linear(4, 5).double()
    h = torch.randn(8, 4, dtype=torch.float64)
    t = torch.randint(0, 5, (8,))
    lin(h).sum()  # warm-up, nothing saved
    expected = torch.autograd.grad(F.cross_entropy(lin(h), t), lin.weight)[0]
    logits = lin(h)
    loss = fst.cross_entropy(logits, t, inplace=True)
    (got,) = torch.autograd.grad(loss, lin.weight)
    torch.testing.assert_close(got, expected)


def test_inplace_reuse_of_logits_raises_autograd_error():
    lin = torch.nn.Linear(4, 5)
    logits = lin(torch.randn(8, 4))
    other = (logits ** 2).sum()  # pow saves logits for its backward
    loss = fst.cross_entropy(logits, torch.randint(0, 5, (8,)), inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


def test_inplace_on_leaf_raises():
    with pytest.raises(ValueError, match="leaf"):
        fst.cross_entropy(torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 2]),
                          inplace=True)


def test_bad_tensors():
    with pytest.raises(TypeError, match="float32"):
        fst.cross_entropy(torch.zeros(2, 3, dtype=torch.int32), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="float32, float64, bfloat16 and float16"):
        fst.entropy(torch.zeros(2, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="CPU"):
        fst.cross_entropy(torch.zeros(2, 3, device="meta"), torch.tensor([0, 1]))
    with pytest.raises(IndexError, match="3 classes"):
        fst.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_functions(dim, log):
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    ours = (fst.log_softmax if log else fst.softmax)(x, dim)
    theirs = (torch.log_softmax if log else torch.softmax)(x, dim)
    torch.testing.assert_close(ours, theirs)
    assert torch.autograd.gradcheck(lambda z: (fst.log_softmax if log else fst.softmax)(z, dim),
                                    (x,))


@pytest.mark.parametrize("shape", [(4, 7), (3, 5, 2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("logits_grad", [True, False])
def test_probability_target_that_requires_grad_gets_torchs_gradient(
        backend, shape, reduction, label_smoothing, weighted, logits_grad):
    """Soft targets that are learnt (mutual learning, co-distillation) used to get no
    gradient at all, silently."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(*shape, dtype=torch.float64, generator=gen)
    t0 = torch.softmax(torch.randn(*shape, dtype=torch.float64, generator=gen), 1)
    w = torch.rand(shape[1], dtype=torch.float64, generator=gen) + 0.5 if weighted else None
    g = (torch.randn(shape[0], *shape[2:], dtype=torch.float64, generator=gen)
         if reduction == "none" else torch.tensor(1.3, dtype=torch.float64))
    grads = []
    for loss_fn in (F.cross_entropy, fst.cross_entropy):
        x, t = x0.clone().requires_grad_(logits_grad), t0.clone().requires_grad_()
        with fs.use_backend(backend):
            loss = loss_fn(x, t, weight=w, reduction=reduction, label_smoothing=label_smoothing)
        (loss * g).sum().backward()
        grads.append((loss.detach(), t.grad, x.grad))
    (want_loss, want_t, want_x), (loss, got_t, got_x) = grads
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(got_t, want_t)
    if logits_grad:
        torch.testing.assert_close(got_x, want_x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("inplace", [False, True])
def test_empty_batch_with_a_learnt_probability_target(backend, reduction, inplace):
    """No rows: torch's loss (NaN for "mean") and empty gradients for both inputs (the
    target's gradient raised ZeroDivisionError for "mean")."""
    results = []
    for loss_fn in (F.cross_entropy, functools.partial(fst.cross_entropy, inplace=inplace)):
        x = torch.randn(0, 5).requires_grad_()
        t = torch.softmax(torch.randn(0, 5), 1).requires_grad_()
        with fs.use_backend(backend):
            loss = loss_fn(x * 1 if inplace else x, t, reduction=reduction)
        loss.sum().backward()
        results.append((loss.detach(), x.grad, t.grad))
    (want_loss, want_x, want_t), (loss, got_x, got_t) = results
    torch.testing.assert_close(loss, want_loss, equal_nan=True)
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_t, want_t)


def test_probability_target_gradcheck():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(3, 4, dtype=torch.float64), 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fst.cross_entropy(a, b, label_smoothing=0.1),
                                    (x, t))
