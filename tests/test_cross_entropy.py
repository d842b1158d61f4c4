"""cross_entropy and cross_entropy_with_grad on every backend against the reference."""
import itertools

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import assert_close, describe, raises_like

REDUCTIONS = ["mean", "sum", "none"]


def problem(shape, dtype, *, probabilities=False, ignore_every=0, seed=0, scale=3.0):
    """Random logits and targets; every ``ignore_every``-th index target is -100."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    n_classes = shape[-1]
    if probabilities:
        t = rng.random(shape)
        t = (t / t.sum(-1, keepdims=True)).astype(dtype)
    else:
        t = rng.integers(0, n_classes, size=shape[:-1])
        if ignore_every:
            t.reshape(-1)[::ignore_every] = -100
    return x, t


OPTIONS = [dict(weight=w, reduction=r, label_smoothing=ls)
           for w, r, ls in itertools.product([None, "random"], REDUCTIONS, [0.0, 0.15])]


def materialise(options, n_classes, dtype):
    opts = dict(options)
    if opts["weight"] == "random":
        opts["weight"] = np.random.default_rng(5).uniform(0.2, 2.0, n_classes).astype(dtype)
    return opts


@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (6, 1), (9, 10), (37, 10), (2, 3, 37),
                                   (4, 1000), (2, 100_000)])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_matches_reference(backend, shape, dtype, probabilities, options):
    x, t = problem(shape, dtype, probabilities=probabilities, ignore_every=4)
    opts = materialise(options, shape[-1], dtype)
    before = (x.copy(), t.copy())
    context = describe(backend=backend, x=x, probabilities=probabilities, **opts)
    loss, grad = fs.cross_entropy_with_grad(x, t, backend=backend, **opts)
    ref_loss, ref_grad = reference.cross_entropy_with_grad(x, t, **opts)
    assert_close(loss, ref_loss, context)
    assert_close(grad, ref_grad, context)
    assert_close(fs.cross_entropy(x, t, backend=backend, **opts), ref_loss, context)
    assert type(loss) is type(ref_loss)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(t, before[1])


@pytest.mark.parametrize("n_classes", [7, 20])  # 7: the short rows' transposed path too
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
def test_grad_output(backend, reduction, probabilities, n_classes):
    x, t = problem((5, 7, n_classes), np.float64, probabilities=probabilities, ignore_every=3)
    grad_outputs = [2.5]
    if reduction == "none":
        grad_outputs.append(np.random.default_rng(1).standard_normal((5, 7)))
    for g in grad_outputs:
        loss, grad = fs.cross_entropy_with_grad(x, t, reduction=reduction, grad_output=g,
                                                label_smoothing=0.1, backend=backend)
        _, base = reference.cross_entropy_with_grad(x, t, reduction=reduction,
                                                    label_smoothing=0.1)
        scale = np.asarray(g)[..., None] if np.ndim(g) else g
        assert_close(grad, base * scale, describe(backend=backend, grad_output=g))


def test_ignore_index_in_range_and_all_ignored(backend):
    x, t = problem((6, 5), np.float32)
    t[:] = [1, 2, 1, 0, 1, 4]
    for reduction in REDUCTIONS:
        got = fs.cross_entropy_with_grad(x, t, ignore_index=1, reduction=reduction, backend=backend)
        want = reference.cross_entropy_with_grad(x, t, ignore_index=1, reduction=reduction)
        assert_close(got[0], want[0])
        assert_close(got[1], want[1])
        assert np.all(got[1][t == 1] == 0)
    loss, grad = fs.cross_entropy_with_grad(x, np.full(6, -100), backend=backend)
    assert np.isnan(loss), "mean over an all-ignored batch is NaN, as in torch"
    assert np.all(grad == 0)


def test_weighted_mean_with_ignored_rows(backend):
    """The mean's denominator counts the weights of the non-ignored rows only."""
    x, t = problem((7, 5), np.float64)
    t[:] = [3, -100, 0, 4, -100, 2, 3]
    weight = np.array([0.5, 1.0, 2.0, 3.0, 0.25])
    got = fs.cross_entropy_with_grad(x, t, weight=weight, backend=backend)
    want = reference.cross_entropy_with_grad(x, t, weight=weight)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_empty_batch_mean_is_nan(backend):
    x = np.empty((0, 7), np.float32)
    assert np.isnan(fs.cross_entropy(x, np.empty(0, np.int64), backend=backend))
    assert fs.cross_entropy(x, np.empty(0, np.int64), reduction="sum", backend=backend) == 0


def test_one_dimensional_logits(backend):
    x = np.array([0.5, -1.0, 2.0], np.float64)
    loss, grad = fs.cross_entropy_with_grad(x, np.array(2), backend=backend)
    want_loss, want_grad = reference.cross_entropy_with_grad(x, np.array(2))
    assert_close(loss, want_loss)
    assert_close(grad, want_grad)


@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inplace_writes_into_logits(backend, probabilities, dtype):
    x, t = problem((7, 300), dtype, probabilities=probabilities)
    want_loss, want_grad = reference.cross_entropy_with_grad(x, t, label_smoothing=0.05)
    buffer = x.copy()
    loss, grad = fs.cross_entropy_with_grad(buffer, t, label_smoothing=0.05, inplace=True,
                                            backend=backend)
    assert grad is buffer
    assert_close(loss, want_loss)
    assert_close(buffer, want_grad)


def test_out_receives_gradient(backend):
    x, t = problem((5, 40), np.float32)
    out = np.full_like(x, np.nan)
    loss, grad = fs.cross_entropy_with_grad(x, t, out=out, backend=backend)
    assert grad is out
    assert_close(out, reference.cross_entropy_with_grad(x, t)[1])
    strided = np.zeros((5, 80), np.float32)[:, ::2]
    _, grad = fs.cross_entropy_with_grad(x, t, out=strided, backend=backend)
    assert grad is strided
    assert_close(strided, reference.cross_entropy_with_grad(x, t)[1])


@pytest.mark.parametrize("n_classes", [10, 64, 128, 300])  # narrow, block and row kernels
def test_out_sharing_a_probability_target_is_refused(backend, n_classes):
    """A probability target has the logits' shape and dtype, so ``out=target`` passed the
    shape check and gave a wrong gradient (from C = 64 on Numba, 128 on Cython: the
    kernels read a target row after they start writing the gradient row). out=logits
    stays allowed."""
    x, t = problem((4, n_classes), np.float64, probabilities=True)
    kept_x, kept_t = x.copy(), t.copy()
    for out in (t, t[::-1]):  # the target, and a view of it in another order
        with pytest.raises(ValueError, match="out shares memory with target"):
            fs.cross_entropy_with_grad(x, t, out=out, backend=backend)
    np.testing.assert_array_equal(t, kept_t)
    np.testing.assert_array_equal(x, kept_x)
    want_loss, want_grad = reference.cross_entropy_with_grad(x, t)
    loss, grad = fs.cross_entropy_with_grad(x, t, out=x, backend=backend)
    assert grad is x
    assert_close(loss, want_loss)
    assert_close(grad, want_grad)


@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("n_classes", [10, 300])  # block and row kernels
def test_strided_class_weights(backend, probabilities, n_classes):
    """A weight that is a strided view (every other element of an array) is accepted
    (before: the Cython kernels raised "ndarray is not C-contiguous")."""
    x, t = problem((7, n_classes), np.float32, probabilities=probabilities)
    weight = np.random.default_rng(3).uniform(0.5, 2.0, 2 * n_classes).astype(np.float32)
    options = dict(weight=weight[::2], label_smoothing=0.1, reduction="none")
    got = fs.cross_entropy_with_grad(x, t, **options, backend=backend)
    want = reference.cross_entropy_with_grad(x, t, **options)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


@pytest.mark.parametrize("layout", ["F", "strided"])
def test_non_contiguous_logits(backend, layout):
    from conftest import with_layout
    x, t = problem((6, 31), np.float32, probabilities=True)
    xs, ts = with_layout(x, layout), with_layout(t, layout)
    got = fs.cross_entropy_with_grad(xs, ts, reduction="none", backend=backend)
    want = reference.cross_entropy_with_grad(x, t, reduction="none")
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_special_values_propagate_like_torch(backend):
    inf, nan = np.inf, np.nan
    x = np.array([[0.0, 1.0, 2.0], [nan, 0.0, 1.0], [-inf, 0.0, 1.0], [inf, 0.0, 1.0]],
                 np.float32)
    t = np.array([2, 1, 1, 1])
    for smoothing in (0.0, 0.1):
        got = fs.cross_entropy_with_grad(x, t, reduction="none", label_smoothing=smoothing,
                                         backend=backend)
        want = reference.cross_entropy_with_grad(x, t, reduction="none",
                                                 label_smoothing=smoothing)
        assert_close(got[0], want[0], f"loss, smoothing={smoothing}")
        assert_close(got[1], want[1], f"grad, smoothing={smoothing}")


def _bad_cases():
    x = np.zeros((3, 4), np.float32)
    t = np.array([0, 1, 2])
    return [
        ("target too large", (x, np.array([0, 4, 1])), {}, IndexError, "4.*4 classes"),
        ("negative target", (x, np.array([0, -1, 1])), {}, IndexError, "-1"),
        ("bad target beside ignored", (x, np.array([-100, 7, 1])), {}, IndexError, "7"),
        ("uint64 target too large", (x, np.array([0, 4, 1], np.uint64)), {}, IndexError, "4"),
        # 2**64 - 100 wrapped to -100 (ignore_index) in the int64 cast: silently ignored
        ("uint64 target past int64", (x, np.array([0, 2 ** 64 - 100, 1], np.uint64)), {},
         IndexError, "18446744073709551516 is out of range"),
        ("target shape", (x, np.array([0, 1])), {}, ValueError, r"\(2,\).*\(3, 4\)"),
        ("prob target shape", (x, np.ones((3, 5), np.float32)), {}, ValueError, r"\(3, 5\)"),
        ("int logits", (np.zeros((3, 4), np.int32), t), {}, TypeError, "int32"),
        ("bool target", (x, np.array([True, False, True])), {}, TypeError, "bool"),
        ("reduction", (x, t), {"reduction": "avg"}, ValueError, "avg"),
        ("smoothing", (x, t), {"label_smoothing": 1.5}, ValueError, "1.5"),
        ("weight shape", (x, t), {"weight": np.ones(3)}, ValueError, r"\(3,\)"),
        ("no classes", (np.zeros((3, 0), np.float32), np.zeros(3, int)), {}, ValueError, "classes"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_raises_clearly(backend, case):
    _, args, kwargs, error, pattern = case
    for func in (fs.cross_entropy_with_grad, fs.cross_entropy):
        with pytest.raises(error, match=pattern):
            func(*args, backend=backend, **kwargs)
    raises_like(lambda: fs.cross_entropy_with_grad(*args, backend=backend, **kwargs),
                lambda: reference.cross_entropy_with_grad(*args, **kwargs))


def test_bad_grad_output_and_inplace(backend):
    x, t = problem((3, 4), np.float32)
    with pytest.raises(ValueError, match="grad_output"):
        fs.cross_entropy_with_grad(x, t, grad_output=np.ones(3), backend=backend)
    with pytest.raises(ValueError, match="grad_output"):
        fs.cross_entropy_with_grad(x, t, reduction="none", grad_output=np.ones(4), backend=backend)
    read_only = x.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fs.cross_entropy_with_grad(read_only, t, inplace=True, backend=backend)
    with pytest.raises(ValueError, match="C-contiguous"):
        fs.cross_entropy_with_grad(np.asfortranarray(x), t, inplace=True, backend=backend)
    with pytest.raises(ValueError, match="out"):
        fs.cross_entropy_with_grad(x.copy(), t, inplace=True, out=np.empty_like(x),
                                   backend=backend)
    with pytest.raises(ValueError, match="NumPy float array"):
        fs.cross_entropy_with_grad(x.tolist(), t, inplace=True, backend=backend)
    probs = np.full((3, 4), 0.25, np.float32)
    with pytest.raises(ValueError, match="shares memory"):
        fs.cross_entropy_with_grad(probs, probs, inplace=True, backend=backend)
