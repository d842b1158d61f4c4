"""jsd_logits / jsd_logits_with_grad (generalised JSD and its KL limits between a student's
and a teacher's logits) against the reference on every backend, a plain torch
implementation (TRL's formula), Liger's formula, finite differences; edge cases, errors."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import assert_close, describe

inf, nan = np.inf, np.nan
DTYPES = [np.float32, np.float64]
BETAS = [0.0, 0.3, 0.5, 1.0]
REDUCTIONS = ["none", "sum", "mean"]
# a few long rows: the kernels split each row over the threads (tests/test_long_rows.py)
LONG_SHAPES = [(3, 5 * 16384 + 77), (1, 4 * 16384 + 1)]


def pair(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return tuple((rng.standard_normal(shape) * scale).astype(dtype) for _ in range(2))


def special_pair(dtype, n_classes=6):
    """Student and teacher rows with -inf, NaN, +inf, identical rows and large logits."""
    s, t = pair((11, n_classes), np.float64, seed=1)
    s[1, [0, 3]] = -inf                        # Q = 0 in two classes
    t[2, [1, 4]] = -inf                        # P = 0 in two classes
    s[3, 2] = t[3, 2] = -inf                   # both 0 in one class
    s[4, 0], t[4, 1] = -inf, -inf              # Q = 0 < P and P = 0 < Q: both KLs +inf
    t[5, 3] = nan
    s[6, 1] = inf
    t[7, :] = -inf
    t[8] = s[8]                                # identical: every divergence 0
    s[9] += 1e4                                # large logits
    t[9] -= 1e4
    s[10, 2] = 1e4                             # one certain class
    return s.astype(dtype), t.astype(dtype)


# ---- against the reference, every backend ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_special_values_match_reference(backend, dtype, beta, temperature, reduction):
    s, t = special_pair(dtype)
    before = s.copy(), t.copy()
    g = np.linspace(-1, 2, s.shape[0]) if reduction == "none" else 1.7
    opts = dict(beta=beta, temperature=temperature, reduction=reduction)
    loss, grad = fs.jsd_logits_with_grad(s, t, grad_output=g, backend=backend, **opts)
    want_loss, want_grad = reference.jsd_logits_with_grad(s, t, grad_output=g, **opts)
    context = describe(backend=backend, beta=beta, temperature=temperature, reduction=reduction,
                       s=s)
    assert_close(loss, want_loss, context)
    assert_close(grad, want_grad, context)
    assert_close(fs.jsd_logits(s, t, backend=backend, **opts), reference.jsd_logits(s, t, **opts),
                 context)
    np.testing.assert_array_equal(s, before[0])
    np.testing.assert_array_equal(t, before[1])


def test_special_rows_are_what_the_docs_say(backend):
    s, t = special_pair(np.float64)
    for beta in BETAS:
        loss, grad = fs.jsd_logits_with_grad(s, t, beta=beta, reduction="none", backend=backend)
        # the forward KL is +inf where Q = 0 < P (rows 1, 4), the reverse where P = 0 < Q
        infinite_rows = {0.0: [1, 4], 1.0: [2, 4]}.get(beta, [])
        finite_rows = [r for r in (0, 1, 2, 3, 4, 8, 9, 10) if r not in infinite_rows]
        assert np.isfinite(loss[finite_rows]).all() and np.isfinite(grad[finite_rows]).all()
        assert (loss[infinite_rows] == inf).all()
        assert np.isnan(loss[[5, 6, 7]]).all() and np.isnan(grad[[5, 6, 7]]).all()
        assert loss[8] == pytest.approx(0.0, abs=1e-15)
        np.testing.assert_allclose(grad[8], 0.0, atol=1e-15)
        if beta == 0.0:  # with a finite gradient Q - P
            assert np.isfinite(grad[infinite_rows]).all()
        if beta == 1.0:  # without a gradient
            assert np.isnan(grad[infinite_rows]).all()


@pytest.mark.parametrize("shape", [(0, 5), (3, 1), (1, 1), (7, 10), (2, 3, 17), (4, 200),
                                   (5, 1000), (2, 70_000)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_and_out(backend, shape, dtype):
    s, t = pair(shape, dtype, seed=2)
    for beta in (0.0, 0.5, 1.0):
        want_loss, want_grad = reference.jsd_logits_with_grad(s, t, beta=beta, temperature=0.7,
                                                              reduction="none")
        out = np.full_like(s, nan)
        loss, grad = fs.jsd_logits_with_grad(s, t, beta=beta, temperature=0.7, reduction="none",
                                             out=out, backend=backend)
        assert grad is out and loss.shape == shape[:-1] and loss.dtype == dtype
        context = describe(backend=backend, beta=beta, s=s)
        assert_close(loss, want_loss, context)
        assert_close(grad, want_grad, context)


@pytest.mark.parametrize("shape", LONG_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", BETAS)
def test_long_rows_split_over_threads(compiled_backend, shape, dtype, beta):
    s, t = pair(shape, dtype, seed=3)
    s[0, 40_000] = -inf   # in a middle chunk
    t[0, 50_000] = -inf
    s[-1, -1] = 1e4       # the max alone in the last chunk
    opts = dict(beta=beta, temperature=1.3, reduction="none")
    loss, grad = fs.jsd_logits_with_grad(s, t, backend=compiled_backend, **opts)
    want_loss, want_grad = reference.jsd_logits_with_grad(s, t, **opts)
    context = describe(backend=compiled_backend, beta=beta, s=s)
    assert_close(loss, want_loss, context)
    assert_close(grad, want_grad, context)
    assert_close(fs.jsd_logits(s, t, backend=compiled_backend, **opts), want_loss, context)


def test_long_rows_do_not_depend_on_thread_count(compiled_backend):
    s, t = pair(LONG_SHAPES[0], np.float32, seed=4)
    n = fs.get_num_threads()
    results = []
    try:
        for threads in sorted({1, n}):
            fs.set_num_threads(threads)
            results.append(fs.jsd_logits_with_grad(s, t, reduction="none",
                                                   backend=compiled_backend))
    finally:
        fs.set_num_threads(n)
    for loss, grad in results[1:]:
        np.testing.assert_array_equal(loss, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])


def test_layouts(backend):
    s, t = pair((6, 5, 33), np.float32, seed=5)
    s_strided = np.zeros((6, 5, 66), np.float32)[..., ::2]
    s_strided[...] = s
    t_fortran = np.asfortranarray(t)
    out = np.zeros((6, 5, 66), np.float32)[..., ::2]
    loss, grad = fs.jsd_logits_with_grad(s_strided, t_fortran, reduction="none", out=out,
                                         backend=backend)
    want_loss, want_grad = reference.jsd_logits_with_grad(s, t, reduction="none")
    assert grad is out
    assert_close(loss, want_loss)
    assert_close(grad, want_grad)


def test_mean_over_no_rows_is_nan(backend):
    loss, grad = fs.jsd_logits_with_grad(np.zeros((0, 3)), np.zeros((0, 3)), backend=backend)
    assert np.isnan(loss) and grad.shape == (0, 3)


def test_one_class_is_zero(backend):
    s, t = pair((4, 1), np.float64, seed=6)
    for beta in BETAS:
        loss, grad = fs.jsd_logits_with_grad(s, t, beta=beta, reduction="none", backend=backend)
        np.testing.assert_array_equal(loss, 0.0)
        np.testing.assert_array_equal(grad, 0.0)


# ---- the named limits and known values ----

def test_limits_are_the_named_kl_divergences(backend):
    s, t = pair((5, 9), np.float64, seed=7)
    temperature = 2.0
    log_q = reference.log_softmax(s / temperature)
    log_p = reference.log_softmax(t / temperature)
    forward = np.sum(np.exp(log_p) * (log_p - log_q), -1)
    reverse = np.sum(np.exp(log_q) * (log_q - log_p), -1)
    for beta, want in ((0.0, forward), (1.0, reverse)):
        loss = fs.jsd_logits(s, t, beta=beta, temperature=temperature, reduction="none",
                             backend=backend)
        np.testing.assert_allclose(loss, want, rtol=1e-12)
    # the forward KL is torch-style kl_div of the log-probabilities
    np.testing.assert_allclose(
        fs.jsd_logits(s, t, beta=0.0, temperature=temperature, reduction="sum", backend=backend),
        fs.kl_div(log_q, np.exp(log_p), reduction="sum"), rtol=1e-12)
    # the generalised JSD itself is 0 at both ends: the limits are not its values
    near = [fs.jsd_logits(s, t, beta=b, backend=backend) for b in (1e-9, 1 - 1e-9)]
    np.testing.assert_allclose(near, 0.0, atol=1e-8)


def test_symmetric_jsd_is_bounded_by_log2(backend):
    s = np.array([[0.0, -inf], [3.0, 1.0]])
    t = np.array([[-inf, 0.0], [3.0, 1.0]])
    loss = fs.jsd_logits(s, t, reduction="none", backend=backend)
    np.testing.assert_allclose(loss, [np.log(2), 0.0], rtol=1e-14, atol=1e-15)


# ---- against torch (TRL's formula) and Liger's formula ----

def trl_generalized_jsd(torch, student, teacher, beta, temperature, reduction):
    """TRL's generalized_jsd_loss (no labels), "none" per row, "mean" over rows."""
    F = torch.nn.functional
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    if beta == 0:
        jsd = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(log_p, log_q, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=student.dtype)
        log_m = torch.logsumexp(torch.stack([log_q + torch.log(1 - b), log_p + torch.log(b)]),
                                dim=0)
        jsd = b * F.kl_div(log_m, log_p, reduction="none", log_target=True) \
            + (1 - b) * F.kl_div(log_m, log_q, reduction="none", log_target=True)
    rows = jsd.sum(-1)
    return {"none": rows, "sum": rows.sum(), "mean": rows.sum() / rows.numel()}[reduction]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch_trl_formula(backend, dtype, beta, reduction):
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    s, t = pair((6, 2, 50), dtype, seed=8)
    g = np.linspace(-1, 2, 12).reshape(6, 2).astype(dtype) if reduction == "none" else 1.3
    st = torch.from_numpy(s.copy()).requires_grad_()
    want = trl_generalized_jsd(torch, st, torch.from_numpy(t), beta, 1.5, reduction)
    (want * torch.as_tensor(g, dtype=st.dtype)).sum().backward()
    loss, grad = fs.jsd_logits_with_grad(s, t, beta=beta, temperature=1.5, reduction=reduction,
                                         grad_output=g, backend=backend)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss, want.detach().numpy(), **tol)
    np.testing.assert_allclose(grad, st.grad.numpy(), **tol)


def test_finite_where_the_torch_formula_gives_nan(backend):
    """-inf logits (a masked vocabulary): TRL's formula gives NaN (0 * -inf, Liger#769);
    here a probability-0 term adds 0."""
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    s, t = pair((2, 8), np.float64, seed=9)
    s[:, 5:] = t[:, 5:] = -inf
    theirs = trl_generalized_jsd(torch, torch.from_numpy(s), torch.from_numpy(t), 0.5, 1.0,
                                 "none")
    assert torch.isnan(theirs).all()
    loss, grad = fs.jsd_logits_with_grad(s, t, reduction="none", backend=backend)
    want = trl_generalized_jsd(torch, torch.from_numpy(s[:, :5]), torch.from_numpy(t[:, :5]),
                               0.5, 1.0, "none")  # the same distributions without the classes
    np.testing.assert_allclose(loss, want.numpy(), rtol=1e-12)
    assert np.isfinite(grad).all() and (grad[:, 5:] == 0).all()


def liger_jsd(s, t, beta, temperature):
    """Liger's JSD kernel (loss and gradient w.r.t. the student log-probabilities X, summed
    over rows), chained through log_softmax(s / T) as LigerFusedLinearJSD does."""
    x = reference.log_softmax(s / temperature).astype(np.float64)   # log Q
    y = reference.log_softmax(t / temperature).astype(np.float64)   # log P
    q, p = np.exp(x), np.exp(y)
    if beta == 0:
        loss, dx = p * (y - x), -p
    elif beta == 1:
        loss, dx = q * (x - y), q * (x - y) + q
    else:
        m = beta * p + (1 - beta) * q
        loss = beta * p * y + (1 - beta) * q * x - m * np.log(m)
        dx = (1 - beta) * q * (x - np.log(m))
    return loss.sum(), (dx - q * dx.sum(-1, keepdims=True)) / temperature


@pytest.mark.parametrize("beta", BETAS)
def test_matches_liger_formula(backend, beta):
    s, t = pair((5, 40), np.float64, seed=10)
    want_loss, want_grad = liger_jsd(s, t, beta, 0.8)
    loss, grad = fs.jsd_logits_with_grad(s, t, beta=beta, temperature=0.8, reduction="sum",
                                         backend=backend)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-11)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)


# ---- finite differences ----

@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_matches_finite_differences(backend, beta, reduction):
    from test_gradients import numeric_grad
    rng = np.random.default_rng(11)
    s, t = pair((3, 6), np.float64, seed=12, scale=1.5)
    s[1, 2] = t[1, 2] = -inf  # P = Q = 0 in one class: no gradient through it
    if beta < 1:  # P = 0 < Q (the reverse KL would be +inf)
        t[2, 4] = -inf
    if beta > 0:  # Q = 0 < P (the forward KL would be +inf)
        s[0, 1] = -inf
    g = rng.standard_normal(3) if reduction == "none" else 0.7
    opts = dict(beta=beta, temperature=1.7, reduction=reduction)

    def objective(z):
        return float(np.sum(fs.jsd_logits(z, t, backend=backend, **opts) * g))

    _, grad = fs.jsd_logits_with_grad(s, t, grad_output=g, backend=backend, **opts)
    np.testing.assert_allclose(grad, numeric_grad(objective, s), rtol=1e-6, atol=1e-8)


# ---- errors ----

BAD = [
    ("shape mismatch", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((3, 2))),
     ValueError, r"\(2, 3\).*\(3, 2\)"),
    ("dtype mismatch", dict(student_logits=np.ones((2, 3)),
                            teacher_logits=np.ones((2, 3), np.float32)), TypeError, "float32"),
    ("int student", dict(student_logits=np.ones((2, 3), np.int64),
                         teacher_logits=np.ones((2, 3))), TypeError, "student_logits.*float32"),
    ("complex teacher", dict(student_logits=np.ones((2, 3)),
                             teacher_logits=np.ones((2, 3), complex)), TypeError,
     "teacher_logits"),
    ("0-d", dict(student_logits=np.float64(1), teacher_logits=np.float64(1)), ValueError,
     "dimension"),
    ("no classes", dict(student_logits=np.ones((2, 0)), teacher_logits=np.ones((2, 0))),
     ValueError, "no classes"),
    ("beta < 0", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((2, 3)),
                      beta=-0.1), ValueError, "beta.*-0.1"),
    ("beta > 1", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((2, 3)),
                      beta=1.5), ValueError, r"beta must be in \[0, 1\]"),
    ("beta NaN", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((2, 3)),
                      beta=nan), ValueError, "beta"),
    ("beta string", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((2, 3)),
                         beta="half"), TypeError, "beta"),
    ("temperature 0", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((2, 3)),
                           temperature=0.0), ValueError, "temperature.*> 0"),
    ("temperature inf", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((2, 3)),
                             temperature=inf), ValueError, "temperature"),
    ("reduction", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((2, 3)),
                       reduction="batchmean"), ValueError, "batchmean"),
]
BAD_WITH_GRAD = BAD + [
    ("grad_output shape", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((2, 3)),
                               reduction="none", grad_output=np.ones(3)), ValueError, r"\(3,\)"),
    ("out shape", dict(student_logits=np.ones((2, 3)), teacher_logits=np.ones((2, 3)),
                       out=np.ones((3, 2))), ValueError, r"\(3, 2\)"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_names_the_value(backend, case):
    _, kwargs, error, match = case
    with pytest.raises(error, match=match):
        fs.jsd_logits(backend=backend, **kwargs)
    with pytest.raises(error, match=match):
        reference.jsd_logits(**kwargs)


@pytest.mark.parametrize("case", BAD_WITH_GRAD, ids=[c[0] for c in BAD_WITH_GRAD])
def test_bad_input_names_the_value_with_grad(backend, case):
    _, kwargs, error, match = case
    with pytest.raises(error, match=match):
        fs.jsd_logits_with_grad(backend=backend, **kwargs)
    with pytest.raises(error, match=match):
        reference.jsd_logits_with_grad(**kwargs)


@pytest.mark.parametrize("which", ["student_logits", "teacher_logits"])
def test_out_sharing_an_input_is_refused(backend, which):
    s, t = pair((2, 3), np.float64)
    arrays = {"student_logits": s, "teacher_logits": t}
    with pytest.raises(ValueError, match=f"out shares memory with {which}"):
        fs.jsd_logits_with_grad(s, t, out=arrays[which], backend=backend)
    np.testing.assert_array_equal((s, t), pair((2, 3), np.float64))


# ---- torch wrapper ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", BETAS)
def test_torch_wrapper_and_module(backend, dtype, beta):
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    import fastsoftmax.torch as fst
    s, t = pair((3, 4, 70), dtype, seed=13)
    mine = torch.from_numpy(s.copy()).requires_grad_()
    theirs = torch.from_numpy(s.copy()).requires_grad_()
    teacher = torch.from_numpy(t)
    with fs.use_backend(backend):
        loss = fst.JSDLoss(beta=beta, temperature=2.0)(mine, teacher)
        (loss * 1.5).backward()
        rows = fst.jsd_logits(mine.detach(), teacher, beta, 2.0, "none")
    assert rows.shape == (3, 4)
    want = trl_generalized_jsd(torch, theirs, teacher, beta, 2.0, "mean")
    (want * 1.5).backward()
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss.detach().numpy(), want.detach().numpy(), **tol)
    np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), **tol)
    np.testing.assert_allclose(rows.numpy().mean(), want.detach().numpy(), **tol)


def test_torch_gradcheck(backend):
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    import fastsoftmax.torch as fst
    s = torch.randn(3, 2, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 2, 9, dtype=torch.float64)
    for beta in BETAS:
        for reduction in REDUCTIONS:
            assert torch.autograd.gradcheck(
                lambda z, b=beta, r=reduction: fst.jsd_logits(z, t, b, 0.5, r, backend=backend),
                (s,))


def test_torch_teacher_that_requires_grad_raises():
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    import fastsoftmax.torch as fst
    s = torch.randn(2, 5, requires_grad=True)
    t = torch.randn(2, 5, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"teacher_logits.detach\(\)"):
        fst.jsd_logits(s, t)
    fst.jsd_logits(s, t.detach()).backward()  # the usual setup
    assert s.grad is not None
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(5, 2\)"):
        fst.jsd_logits(s, torch.randn(5, 2))


def test_torch_compile_one_graph():
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    import fastsoftmax.torch as fst
    s = torch.randn(4, 30, requires_grad=True)
    t = torch.randn(4, 30)

    def step(z, teacher):
        return fst.jsd_logits(z, teacher, 0.3, 2.0)
    explanation = torch._dynamo.explain(step)(s, t)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(s, t)
    loss.backward()
    want = s.detach().clone().requires_grad_()
    trl_generalized_jsd(torch, want, t, 0.3, 2.0, "mean").backward()
    torch.testing.assert_close(s.grad, want.grad, rtol=2e-5, atol=2e-6)
