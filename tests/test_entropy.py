"""entropy_with_grad against the reference, torch and finite differences (fs.entropy, a
rows op, is also covered by every table-driven test of tests/test_row_ops.py)."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import assert_close, describe

inf, nan = np.inf, np.nan
DTYPES = [np.float32, np.float64]


def special_rows(dtype, n_classes=5):
    """Normal rows, -inf entries, an all -inf row, NaN, +inf, one huge logit."""
    x = np.random.default_rng(0).standard_normal((8, n_classes)) * 3
    x[1, [0, 3]] = -inf
    x[2, :] = -inf
    x[3, 1] = nan
    x[4, 2] = inf
    x[5, :] = 7.0            # uniform: H = log(C), gradient 0
    x[6, 0] = 1e4            # one certain class: H = 0
    x[7, :] += 1e4           # large logits: no cancellation in H
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_matches_reference(backend, dtype, reduction):
    x = special_rows(dtype)
    before = x.copy()
    g = np.linspace(-1, 2, 8) if reduction == "none" else 1.7
    h, grad = fs.entropy_with_grad(x, reduction=reduction, grad_output=g, backend=backend)
    want_h, want_grad = reference.entropy_with_grad(x, reduction=reduction, grad_output=g)
    context = describe(backend=backend, reduction=reduction, x=x)
    assert_close(h, want_h, context)
    assert_close(grad, want_grad, context)
    np.testing.assert_array_equal(x, before)
    assert_close(fs.entropy(x, backend=backend), reference.entropy(x), context)


@pytest.mark.parametrize("shape", [(0, 5), (3, 1), (37, 10), (2, 3, 17), (4, 200),
                                   (2, 70_000)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_inplace_and_out(backend, shape, dtype):
    x = (np.random.default_rng(1).standard_normal(shape) * 4).astype(dtype)
    want_h, want_grad = reference.entropy_with_grad(x)
    out = np.full_like(x, nan)
    h, grad = fs.entropy_with_grad(x, out=out, backend=backend)
    assert grad is out and h.shape == shape[:-1] and h.dtype == dtype
    assert_close(h, want_h)
    assert_close(grad, want_grad)
    buffer = x.copy()
    h_inplace, grad_inplace = fs.entropy_with_grad(buffer, inplace=True, backend=backend)
    assert grad_inplace is buffer
    np.testing.assert_array_equal(h_inplace, h)
    np.testing.assert_array_equal(grad_inplace, grad)


def test_values_known_in_closed_form(backend):
    x = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, -inf, 0.0, -inf], [3.0, -inf, -inf, -inf]])
    h, grad = fs.entropy_with_grad(x, backend=backend)
    np.testing.assert_allclose(h, [np.log(4), np.log(2), 0.0], rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(grad, np.zeros_like(x))  # each is a maximum of H


def test_mean_over_no_rows_is_nan(backend):
    h, grad = fs.entropy_with_grad(np.zeros((0, 3), np.float32), reduction="mean",
                                   backend=backend)
    assert np.isnan(h) and grad.shape == (0, 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_values_and_gradients(backend, dtype):
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    x = special_rows(dtype)
    g = np.linspace(-1, 2, 8).astype(dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    want = torch.distributions.Categorical(logits=xt, validate_args=False).entropy()
    (want * torch.from_numpy(g)).sum().backward()
    h, grad = fs.entropy_with_grad(x, grad_output=g, backend=backend)
    # torch normalises the logits first (x - logsumexp(x)), which at x ~ 1e4 loses 4
    # digits (8e-13 absolute in float64 here): a looser float64 bound than for the reference
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(h, want.detach().numpy(), equal_nan=True, **tol)
    np.testing.assert_allclose(grad, xt.grad.numpy(), equal_nan=True, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_wrapper(backend, dtype):
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    import fastsoftmax.torch as fst
    x = special_rows(dtype, n_classes=300)
    mine = torch.from_numpy(x.copy()).requires_grad_()
    theirs = torch.from_numpy(x.copy()).requires_grad_()
    g = torch.linspace(-1, 2, 8, dtype=mine.dtype)
    with fs.use_backend(backend):
        h = fst.entropy(mine)
        (h * g).sum().backward()
        with torch.no_grad():  # fs.entropy, no gradient written: may round differently
            assert_close(fst.entropy(theirs).numpy(), h.detach().numpy())
    want = torch.distributions.Categorical(logits=theirs, validate_args=False).entropy()
    (want * g).sum().backward()
    # row 7 (logits ~ 1e4) only against the reference: torch's float32 entropy loses 9e-5
    # of its value there (x - logsumexp(x) cancels), ours does not
    want_h, want_grad = reference.entropy_with_grad(x, grad_output=g.numpy())
    assert_close(h.detach().numpy(), want_h)
    assert_close(mine.grad.numpy(), want_grad)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(h.detach().numpy()[:7], want.detach().numpy()[:7],
                               equal_nan=True, **tol)
    np.testing.assert_allclose(mine.grad.numpy()[:7], theirs.grad.numpy()[:7], equal_nan=True,
                               **tol)


def test_torch_gradcheck():
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    import fastsoftmax.torch as fst
    x = torch.randn(3, 2, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fst.entropy, (x,))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradient_matches_finite_differences(backend, reduction):
    from test_gradients import numeric_grad
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6)) * 2
    x[1, 2] = -inf  # no gradient through a class of probability 0
    g = rng.standard_normal(4) if reduction == "none" else 0.7

    def objective(z):
        return float(np.sum(fs.entropy_with_grad(z, reduction=reduction, backend=backend)[0] * g))

    _, grad = fs.entropy_with_grad(x, reduction=reduction, grad_output=g, backend=backend)
    finite = np.isfinite(x)
    numeric = numeric_grad(objective, np.where(finite, x, -1e3))  # -1e3: exp underflows to 0
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


BAD = [
    ("int logits", dict(logits=np.ones((2, 3), np.int64)), TypeError, "float32"),
    ("0-d", dict(logits=np.float32(1.0)), ValueError, "dimension"),
    ("no classes", dict(logits=np.ones((2, 0), np.float32)), ValueError, "empty"),
    ("reduction", dict(logits=np.ones((2, 3)), reduction="avg"), ValueError, "avg"),
    ("grad_output shape", dict(logits=np.ones((2, 3)), grad_output=np.ones(3)), ValueError,
     r"\(3,\)"),
    ("out shape", dict(logits=np.ones((2, 3)), out=np.ones((3, 2))), ValueError, r"\(3, 2\)"),
    ("inplace and out", dict(logits=np.ones((2, 3)), inplace=True, out=np.ones((2, 3))),
     ValueError, "out"),
    ("inplace strided", dict(logits=np.ones((2, 6))[:, ::2], inplace=True), ValueError,
     "contiguous"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_names_the_value(backend, case):
    _, kwargs, error, match = case
    with pytest.raises(error, match=match):
        fs.entropy_with_grad(backend=backend, **kwargs)
    with pytest.raises(error, match=match):
        reference.entropy_with_grad(**kwargs)


def test_inplace_read_only_is_refused(backend):
    x = np.ones((2, 3))
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fs.entropy_with_grad(x, inplace=True, backend=backend)
