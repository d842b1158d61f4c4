"""Few classes: the block kernels load each row as whole vectors with a masked tail
(Cython, below 128 classes; the backward kernels too; rows of at most one AVX-512
vector or two AVX2 ones 16 or 8 at a time, transposed in registers) or transpose
blocks of rows (Numba, below 64).
Every class count from 1 to 130 is checked, so that every tail length of a 16-lane
(float32) and 8-lane (float64) vector and both switches to the row kernels are
crossed, with special values placed in the last, partial vector of a row."""
import ctypes
import mmap

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import FORWARD_OPS, ROW_OPS, assert_close, describe, op_id, op_inputs

CLASS_COUNTS = range(1, 131)
ROWS = 7


def rows_with_specials(n_classes, dtype, seed=0):
    """Row 0 normal; rows 1-4 hold NaN, +inf, -inf and 1e4 in their last class; row 5
    all -inf; row 6 normal. The last class is the last lane of the masked tail."""
    rng = np.random.default_rng(seed + n_classes)
    x = (rng.standard_normal((ROWS, n_classes)) * 3).astype(dtype)
    x[1, -1] = np.nan
    x[2, -1] = np.inf
    x[3, -1] = -np.inf
    x[4, -1] = 1e4
    x[5, :] = -np.inf
    return x


def assert_cross_entropy_matches(x, t, backend, context, **opts):
    """Loss and gradient of the backend against the reference; returns them."""
    want_loss, want_grad = reference.cross_entropy_with_grad(x, t, **opts)
    loss, grad = fs.cross_entropy_with_grad(x, t, backend=backend, **opts)
    assert_close(loss, want_loss, context)
    assert_close(grad, want_grad, context)
    return loss, grad


@pytest.mark.parametrize("op", ROW_OPS, ids=op_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_ops_every_class_count(compiled_backend, op, dtype):
    for n in CLASS_COUNTS:
        args = op_inputs(op, rows_with_specials(n, dtype))
        if len(args) > 1:
            args[1][6, -1] = np.nan  # a NaN upstream gradient in the tail lane
        assert_close(getattr(fs, op.name)(*args, backend=compiled_backend),
                     getattr(reference, op.name)(*args),
                     describe(op=op.name, backend=compiled_backend, classes=n, dtype=dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_index_every_class_count(compiled_backend, dtype, smoothing):
    rng = np.random.default_rng(1)
    for n in CLASS_COUNTS:
        x = rows_with_specials(n, dtype)
        # targets in the tail lanes, one ignored row, one target on the row's NaN
        t = np.array([n - 1, n - 1, 0, n // 2, -100, 0, rng.integers(n)])
        weight = rng.uniform(0.5, 2.0, n).astype(dtype)
        opts = dict(weight=weight, reduction="none", label_smoothing=smoothing)
        context = describe(backend=compiled_backend, classes=n, dtype=dtype,
                           smoothing=smoothing)
        loss, grad = assert_cross_entropy_matches(x, t, compiled_backend, context, **opts)
        buffer = x.copy()
        loss_inplace, grad_inplace = fs.cross_entropy_with_grad(
            buffer, t, inplace=True, backend=compiled_backend, **opts)
        np.testing.assert_array_equal(loss_inplace, loss, err_msg=context)
        np.testing.assert_array_equal(grad_inplace, grad, err_msg=context)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_prob_every_class_count(compiled_backend, dtype):
    rng = np.random.default_rng(2)
    for n in CLASS_COUNTS:
        x = rows_with_specials(n, dtype)
        t = rng.random(x.shape).astype(dtype)
        t /= t.sum(-1, keepdims=True)
        opts = dict(weight=rng.uniform(0.5, 2.0, n).astype(dtype), reduction="none",
                    label_smoothing=0.1)
        assert_cross_entropy_matches(x, t, compiled_backend,
                                     describe(backend=compiled_backend, classes=n, dtype=dtype),
                                     **opts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_of_rows_every_lane(compiled_backend, dtype):
    """Rows of at most one vector run 16 (float32) or 8 (float64) at a time, transposed:
    special rows in the first and last lane of a group, groups cut short at the end of
    every block of rows and of the array (1000 rows: blocks of 4096 // C rows)."""
    rng = np.random.default_rng(4)
    for n in (1, 2, 3, 7, 8, 9, 10, 15, 16, 17):
        x = (rng.standard_normal((1000, n)) * 3).astype(dtype)
        block = 4096 // n
        specials = [(15, np.nan), (16, np.inf), (31, -np.inf), (7, 1e4),
                    (block - 1, np.nan), (block, np.inf), (999, -np.inf)]
        for row, value in specials:
            x[min(row, 999), rng.integers(n)] = value
        x[40, :] = -np.inf
        context = describe(backend=compiled_backend, classes=n, dtype=dtype)
        for op in FORWARD_OPS:
            assert_close(getattr(fs, op.name)(x, backend=compiled_backend),
                         getattr(reference, op.name)(x), f"{op.name} {context}")
        t = rng.integers(0, n, 1000)
        t[::13] = -100
        for smoothing in (0.0, 0.3):
            assert_cross_entropy_matches(x, t, compiled_backend, context,
                                         weight=rng.uniform(0.5, 2.0, n).astype(dtype),
                                         reduction="none", label_smoothing=smoothing)
        probabilities = rng.random(x.shape).astype(dtype)
        assert_cross_entropy_matches(x, probabilities / probabilities.sum(-1, keepdims=True),
                                     compiled_backend, context, reduction="none")


def test_masked_tail_does_not_read_or_write_past_the_array(compiled_backend):
    """Arrays that end where other data begins: a load past the last row would pick up
    the huge values after it, a store past it would overwrite the 7s. (A neighbouring
    row read by mistake shows up in the comparisons above.)"""
    for n in (1, 10, 17, 33, 100):
        x_buffer = np.full(ROWS * n + 40, 1e4, np.float32)
        x = x_buffer[:ROWS * n].reshape(ROWS, n)
        x[...] = np.random.default_rng(n).standard_normal((ROWS, n))
        out_buffer = np.full(ROWS * n + 40, 7.0, np.float32)
        out = out_buffer[:ROWS * n].reshape(ROWS, n)
        for op in ROW_OPS:
            if op.output != "same":
                continue
            args = op_inputs(op, x)
            getattr(fs, op.name)(*args, out=out, backend=compiled_backend)
            assert_close(out, getattr(reference, op.name)(*args), describe(op=op.name, classes=n))
            np.testing.assert_array_equal(out_buffer[ROWS * n:], 7.0)


def array_before_unreadable_page(values, keep):
    """A copy of ``values`` whose last byte is the last of a page, the next page
    unreadable (PROT_NONE): a load or store past the array faults. ``keep`` holds the
    mapping (the array does not own it)."""
    page = mmap.PAGESIZE
    end = -(-values.nbytes // page) * page  # the readable pages, then the guard page
    mapping = mmap.mmap(-1, end + page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mprotect(ctypes.c_void_p(start + end), ctypes.c_size_t(page), 0) != 0:
        pytest.skip(f"mprotect failed (errno {ctypes.get_errno()}): no guard page here")
    keep.append(mapping)
    a = np.frombuffer(mapping, values.dtype, values.size, end - values.nbytes)
    a = a.reshape(values.shape)
    a[...] = values
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_ending_at_an_unreadable_page(compiled_backend, dtype):
    """The AVX2 kernels load a row's tail as a whole vector when that vector ends in the
    row's page (rows_typed.h, fs_vload): at the end of a page they must not, nor store
    there. Inputs and outputs end where an unreadable page begins; a read or write past
    them crashes the test."""
    keep = []
    for n in (1, 3, 10, 17, 33, 100):
        context = describe(classes=n, dtype=dtype)
        values = np.random.default_rng(n).standard_normal((ROWS, n)).astype(dtype)
        x = array_before_unreadable_page(values, keep)
        out = array_before_unreadable_page(np.zeros_like(values), keep)
        for op in ROW_OPS:
            if op.output != "same":
                continue
            args = [array_before_unreadable_page(a, keep) for a in op_inputs(op, x)]
            getattr(fs, op.name)(*args, out=out, backend=compiled_backend)
            assert_close(out, getattr(reference, op.name)(*args), f"{context} {op.name}")
        target = np.arange(ROWS) % n
        want_loss, want_grad = reference.cross_entropy_with_grad(values, target)
        loss, grad = fs.cross_entropy_with_grad(x, target, out=out, backend=compiled_backend)
        assert_close(loss, want_loss, context)
        assert_close(grad, want_grad, context)
        loss, grad = fs.cross_entropy_with_grad(x, target, inplace=True,
                                                backend=compiled_backend)
        assert_close(grad, want_grad, f"{context} inplace")
