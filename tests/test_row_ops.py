"""Every rows op of the op table (softmax, log_softmax, logsumexp, the backward passes,
...) against the reference: shapes, dtypes, layouts, axes, out=, special values, errors."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import (FORWARD_OPS, LAYOUTS, ROW_OPS, assert_close, describe, op_id, op_inputs,
                      raises_like, with_layout)

SHAPES = [(0, 5), (1, 1), (3, 1), (7, 10), (4, 3, 100), (5, 1000), (2, 100_000)]
DTYPES = [np.float32, np.float64]


def logits(shape, dtype, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("op", ROW_OPS, ids=op_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend, op, dtype, shape):
    args = op_inputs(op, logits(shape, dtype))
    before = [a.copy() for a in args]
    got = getattr(fs, op.name)(*args, backend=backend)
    assert_close(got, getattr(reference, op.name)(*args),
                 describe(op=op.name, backend=backend, x=args[0]))
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", ROW_OPS, ids=op_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_layouts_and_axes(backend, op, layout, axis):
    args = [with_layout(a, layout)
            for a in op_inputs(op, logits((6, 5, 33), np.float32, seed=2), axis)]
    got = getattr(fs, op.name)(*args, axis=axis, backend=backend)
    expected = getattr(reference, op.name)(*(np.ascontiguousarray(a) for a in args), axis=axis)
    assert_close(got, expected, describe(op=op.name, layout=layout, axis=axis, backend=backend))


@pytest.mark.parametrize("op", ROW_OPS, ids=op_id)
@pytest.mark.parametrize("axis", [-1, 0])
def test_out_is_filled_and_returned(backend, op, axis):
    args = op_inputs(op, logits((4, 3, 50), np.float64), axis)
    want = getattr(reference, op.name)(*args, axis=axis)
    out = np.full_like(want, np.nan)
    got = getattr(fs, op.name)(*args, axis=axis, out=out, backend=backend)
    assert got is out
    assert_close(out, want)


def test_out_non_contiguous(backend):
    x = logits((4, 50), np.float32)
    out = np.zeros((4, 100), np.float32)[:, ::2]
    got = fs.softmax(x, out=out, backend=backend)
    assert np.shares_memory(got, out)
    assert_close(out, reference.softmax(x))


def test_out_may_be_the_input(backend):
    x = logits((8, 300), np.float32)
    expected = reference.log_softmax(x)
    got = fs.log_softmax(x, out=x, backend=backend)
    assert got is x
    assert_close(x, expected)


@pytest.mark.parametrize("op", FORWARD_OPS, ids=op_id)
def test_special_values_follow_torch(backend, op):
    """NaN and inf propagate as in torch: rows with NaN or +inf (or all -inf) give NaN
    in softmax/log_softmax; logsumexp gives -inf for an all -inf row and +inf with +inf."""
    inf, nan = np.inf, np.nan
    x = np.array([[0.0, 1.0, 2.0], [-inf, 0.0, 1.0], [-inf, -inf, -inf],
                  [inf, 0.0, 1.0], [nan, 0.0, 1.0], [-inf, -inf, 5.0]], np.float32)
    got = getattr(fs, op.name)(x, backend=backend)
    expected = getattr(reference, op.name)(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close(got, expected, describe(op=op.name, backend=backend))
    torch = pytest.importorskip("torch", reason="torch not installed: torch comparison skipped")
    want = op.torch(torch, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_large_logits_do_not_overflow(backend):
    x = np.array([[1e4, 1e4 - 1.0, -1e4], [-3e38, 3e38, 0.0]], np.float32)
    assert_close(fs.softmax(x, backend=backend), reference.softmax(x))
    assert_close(fs.logsumexp(x, backend=backend), reference.logsumexp(x))


BAD_INPUTS = [  # (what, the first input, options)
    ("int logits", lambda: np.arange(6).reshape(2, 3), {}),
    ("complex logits", lambda: np.ones((2, 3), np.complex64), {}),
    # 16-bit integers are refused, never read as the bits of a 16-bit float
    ("int16 logits", lambda: np.ones((2, 3), np.int16), {}),
    ("uint16 logits", lambda: np.ones((2, 3), np.uint16), {}),
    ("0-d", lambda: np.float32(1.0), {}),
    ("empty class axis", lambda: np.ones((2, 0), np.float32), {}),
    ("axis out of range", lambda: np.ones((2, 3), np.float32), {"axis": 2}),
    ("non-integer axis", lambda: np.ones((2, 3), np.float32), {"axis": 1.5}),
    ("out wrong shape", lambda: np.ones((2, 3), np.float32),
     {"out": np.empty((3, 2), np.float32)}),
    ("out wrong dtype", lambda: np.ones((2, 3), np.float32), {"out": np.empty((2, 3))}),
]


@pytest.mark.parametrize("op", ROW_OPS, ids=op_id)
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_like_reference(backend, op, case):
    _, make_first, kwargs = case
    first = make_first()
    # the other inputs of a two-input op: float32 arrays of the first one's shape
    args = (first, *(np.ones(np.shape(first), np.float32) for _ in op.inputs[1:]))
    if op.output == "reduce" and "out" in kwargs:
        kwargs = dict(kwargs, out=kwargs["out"][:, 0])  # still the wrong shape or dtype
    (_, _), errors = raises_like(lambda: getattr(fs, op.name)(*args, backend=backend, **kwargs),
                                 lambda: getattr(reference, op.name)(*args, **kwargs))
    assert errors[0] is not None, "bad input was accepted"


def test_backward_shape_and_dtype_mismatch(backend):
    y = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        fs.softmax_backward(y, np.ones((3, 2), np.float32), backend=backend)
    with pytest.raises(TypeError, match="float64"):
        fs.log_softmax_backward(y, np.ones((2, 3)), backend=backend)


def test_out_partially_overlapping_input_raises(backend):
    buf = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        fs.softmax(buf[:, :5], out=buf[:, 1:], backend=backend)


def test_read_only_input_accepted(backend):
    x = logits((3, 7), np.float64)
    x.flags.writeable = False
    assert_close(fs.softmax(x, backend=backend), reference.softmax(x))


def test_big_endian_input(backend):
    x = logits((3, 7), np.float64).astype(">f8")
    assert_close(fs.log_softmax(x, backend=backend), reference.log_softmax(x))
