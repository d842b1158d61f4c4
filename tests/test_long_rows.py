"""A few long rows: the kernels split each row over the threads (fewer than 4 rows of at
least 65536 classes); the chunks' partial maxima and sums must give the row's answer."""
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from conftest import ROW_OPS, assert_close, describe, op_id, op_inputs

# 3 rows of 5 chunks of 16384 classes and a partial sixth; a last chunk of one class
SHAPES = [(3, 5 * 16384 + 77), (1, 4 * 16384 + 1)]


def special_rows(n_classes, dtype):
    """Rows whose NaN/inf sit in a middle chunk, so that a chunk's result decides the row."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, n_classes)) * 3).astype(dtype)
    x[0, 40_000] = np.nan
    x[1, 40_000] = np.inf
    x[2, :] = -np.inf
    x[3, :] = -np.inf
    x[3, 50_000] = 1.0
    x[4, 40_000] = 1e4  # the max alone in one chunk: the others' exp underflow to 0
    x[5, -1] = -np.inf
    return x


@pytest.mark.parametrize("op", ROW_OPS, ids=op_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values_in_one_chunk(compiled_backend, op, dtype):
    x = special_rows(SHAPES[0][1], dtype)
    for rows in (slice(0, 3), slice(3, 6)):  # fewer than 4 rows: split
        args = op_inputs(op, x[rows])
        got = getattr(fs, op.name)(*args, backend=compiled_backend)
        assert_close(got, getattr(reference, op.name)(*args),
                     describe(op=op.name, backend=compiled_backend, rows=rows))


@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_special_values_and_inplace(compiled_backend, probabilities, smoothing):
    x = special_rows(SHAPES[0][1], np.float32)[:3]
    rng = np.random.default_rng(4)
    if probabilities:
        t = rng.random(x.shape).astype(np.float32)
        t /= t.sum(-1, keepdims=True)
    else:
        t = np.array([40_000, -100, 7])  # the NaN row's target is its NaN
    weight = rng.uniform(0.5, 2.0, x.shape[1]).astype(np.float32)
    opts = dict(weight=weight, reduction="none", label_smoothing=smoothing)
    want_loss, want_grad = reference.cross_entropy_with_grad(x, t, **opts)
    loss, grad = fs.cross_entropy_with_grad(x, t, backend=compiled_backend, **opts)
    context = describe(backend=compiled_backend, probabilities=probabilities,
                       smoothing=smoothing)
    assert_close(loss, want_loss, context)
    assert_close(grad, want_grad, context)
    buffer = x.copy()
    loss_inplace, grad_inplace = fs.cross_entropy_with_grad(buffer, t, inplace=True,
                                                            backend=compiled_backend, **opts)
    assert grad_inplace is buffer
    np.testing.assert_array_equal(loss_inplace, loss)
    np.testing.assert_array_equal(grad_inplace, grad)


@pytest.mark.parametrize("shape", SHAPES)
def test_result_does_not_depend_on_thread_count(compiled_backend, shape):
    """The split into chunks depends on the shape only, and chunks merge in order."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, shape[1], shape[0])
    dy = rng.standard_normal(shape).astype(np.float32)
    n = fs.get_num_threads()
    results = []
    try:
        for threads in sorted({1, n}):
            fs.set_num_threads(threads)
            y = fs.softmax(x, backend=compiled_backend)
            results.append([y, fs.logsumexp(x, backend=compiled_backend),
                            fs.softmax_backward(y, dy, backend=compiled_backend),
                            *fs.cross_entropy_with_grad(x, t, label_smoothing=0.1,
                                                        backend=compiled_backend)])
    finally:
        fs.set_num_threads(n)
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            np.testing.assert_array_equal(a, b)


def test_split_rule_is_the_same_in_both_backends():
    """Numba's row driver splits exactly where the Cython kernels do (fewer than 4 rows of
    at least 65536 classes), into chunks of a multiple of 16384 classes."""
    from fastsoftmax._numba._split import _chunk_length, row_chunks
    if "cython" in fs.available_backends():
        from fastsoftmax._cython._kernels import _row_chunks
        shapes = [(rows, n) for rows in (1, 3, 4, 100)
                  for n in (1, 4 * 16384 - 1, 4 * 16384, 4 * 16384 + 1, 10 ** 6, 2 ** 30)]
        assert [row_chunks(*shape) for shape in shapes] == [_row_chunks(*shape)
                                                           for shape in shapes]
    assert row_chunks(3, 4 * 16384) == 4
    assert row_chunks(1, 4 * 16384 + 1) == 5
    assert row_chunks(4, 4 * 16384) == 1      # enough rows for the threads
    assert row_chunks(3, 4 * 16384 - 1) == 1  # too short to split
    assert row_chunks(1, 2 ** 30) == 64       # at most 64 chunks ...
    assert _chunk_length(2 ** 30) % 16384 == 0  # ... of a multiple of 16384 classes


def test_numba_split_kernel_runs_its_chunks_in_parallel():
    """The chunk loops of a split row are parallel regions (over_chunks' runners, linked
    into the kernel), not loops run by one thread; whole rows (chunks = WHOLE_ROW)
    compile the prange over rows alone."""
    import numba
    from fastsoftmax._numba import _math, _softmax, _split
    options = {k: v for k, v in _math.JIT_PARALLEL.items() if k != "cache"}
    kernel = numba.njit(**options)(_softmax.logsumexp.py_func)  # compiled here: not cached
    x = np.zeros((1, 4 * 16384), np.float32)
    launches = {}
    for chunks in (_split.kernel_chunks(*x.shape), _split.WHOLE_ROW):
        kernel(x, np.empty(1, np.float32), chunks)
        llvm = kernel.inspect_llvm(kernel.signatures[-1])
        launches[chunks] = sum(" call " in line and "@do_scheduling" in line
                               for line in llvm.splitlines())
    # split: one parallel launch per chunk loop (max, sum), none for the rows
    assert launches[4] == 2, launches
    # whole rows: the prange over rows, and no chunk loop
    assert launches[_split.WHOLE_ROW] == 1, launches
