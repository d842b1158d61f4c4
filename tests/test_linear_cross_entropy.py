"""fastsoftmax.linear_cross_entropy(_with_grad): against torch autograd on the unfused float64
computation, on every backend, every option, every chunking; finite differences; errors."""
import itertools

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import linear_ce

torch = pytest.importorskip("torch")
F = torch.nn.functional

# fp32 tolerance relative to the largest magnitude of each result (the GEMMs sum D or N
# products in float32); float64 is exact up to rounding.
RTOL = {np.float32: 2e-5, np.float64: 1e-11}


def make_problem(n=29, d=6, v=13, dtype=np.float64, ignored=0.0, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, d)).astype(dtype)
    weight = (rng.standard_normal((v, d)) / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(v).astype(dtype) if bias else None
    target = rng.integers(0, v, n)
    target[rng.random(n) < ignored] = -100
    return h, weight, b, target


def torch_reference(h, weight, target, bias=None, class_weight=None, ignore_index=-100,
                    reduction="mean", label_smoothing=0.0, grad_output=1.0, softcap=None):
    """Autograd of F.cross_entropy(F.linear(h, weight, bias)) in float64, the logits capped
    by softcap * tanh(logits / softcap) when softcap is given: (loss, grads)."""
    th = torch.tensor(h, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    tb = None if bias is None else torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    cw = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float64)
    logits = F.linear(th, tw, tb)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    loss = F.cross_entropy(logits.reshape(-1, weight.shape[0]),
                           torch.tensor(target).reshape(-1), weight=cw,
                           ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if reduction == "none":
        loss = loss.reshape(np.shape(target))
    (loss * torch.as_tensor(grad_output, dtype=torch.float64)).sum().backward()
    grads = (th.grad.numpy(), tw.grad.numpy(), None if tb is None else tb.grad.numpy())
    return loss.detach().numpy(), grads


def assert_close(actual, expected, dtype, what):
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(np.max(np.abs(expected), initial=0.0), 1e-300)
    error = np.max(np.abs(actual - expected), initial=0.0) / scale
    assert error <= RTOL[dtype], f"{what}: relative error {error:.3g} (dtype {dtype.__name__})"


def check_against_torch(result, expected, dtype, context):
    loss, grads = expected
    assert_close(result[0], loss, dtype, f"loss {context}")
    for name, actual, reference in zip(("grad_h", "grad_weight", "grad_bias"), result[1:], grads):
        if reference is None:
            assert actual is None, f"{name} {context}: expected None"
        else:
            assert_close(actual, reference, dtype, f"{name} {context}")


OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(class_weight=True),
    dict(label_smoothing=0.2),
    dict(class_weight=True, label_smoothing=0.3, reduction="sum"),
    dict(class_weight=True, label_smoothing=0.1, reduction="none"),
    dict(ignore_index=3),
    dict(softcap=1.5),
    dict(softcap=2.0, class_weight=True, label_smoothing=0.1, reduction="none"),
]


def _resolved(options, v, seed=5):
    options = dict(options)
    if options.get("class_weight") is True:
        options["class_weight"] = np.random.default_rng(seed).uniform(0.2, 2.0, v)
    return options


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_against_torch_autograd(backend, dtype, options):
    h, weight, bias, target = make_problem(dtype=dtype, ignored=0.25)
    options = _resolved(options, weight.shape[0])
    if "ignore_index" in options:  # a class index as ignore_index: it must not be learnt
        target[target == -100] = options["ignore_index"]
    if "class_weight" in options:
        options["class_weight"] = options["class_weight"].astype(dtype)
    result = fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias, backend=backend,
                                               chunk_bytes=5 * weight.shape[0] * 8, **options)
    expected = torch_reference(h, weight, target, bias, **options)
    check_against_torch(result, expected, dtype, f"{backend} {options}")
    loss_only = fs.linear_cross_entropy(h, weight, target, bias=bias, backend=backend, **options)
    assert_close(loss_only, expected[0], dtype, f"forward-only loss {backend} {options}")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_chunk_size_does_not_matter(backend, reduction):
    """1 row per chunk, a ragged last chunk (7 rows into 29), one chunk for everything;
    with ignored rows inside and across chunk boundaries and a per-row grad_output."""
    h, weight, bias, target = make_problem(ignored=0.3, seed=2)
    grad_output = np.random.default_rng(3).uniform(-2, 2, target.shape) \
        if reduction == "none" else 0.7
    expected = torch_reference(h, weight, target, bias, reduction=reduction,
                               grad_output=grad_output)
    v, d, itemsize = weight.shape[0], weight.shape[1], h.dtype.itemsize
    row_bytes = itemsize * (v + 2 * d)  # targets are ignored: the gathered rows count
    for chunk_bytes in (1, 7 * row_bytes, 10 ** 9):
        result = fs.linear_cross_entropy_with_grad(
            h, weight, target, bias=bias, reduction=reduction, grad_output=grad_output,
            chunk_bytes=chunk_bytes, backend=backend)
        check_against_torch(result, expected, np.float64, f"chunk_bytes={chunk_bytes}")


def test_chunk_rows_from_the_budget():
    assert linear_ce._chunk_rows(1, 100, 10, 4, 8, gathers=False) == 1
    assert linear_ce._chunk_rows(7 * 80 + 79, 100, 10, 4, 8, gathers=False) == 7
    assert linear_ce._chunk_rows(7 * 144, 100, 10, 4, 8, gathers=True) == 7
    assert linear_ce._chunk_rows(10 ** 9, 100, 10, 4, 8, gathers=True) == 100


def test_global_chunk_budget(monkeypatch):
    """set_linear_cross_entropy_chunk_bytes changes the rows per chunk of later calls."""
    seen = []
    real = linear_ce._chunk_rows
    monkeypatch.setattr(linear_ce, "_chunk_rows", lambda *a: seen.append(real(*a)) or seen[-1])
    h, weight, bias, target = make_problem()
    try:
        fs.set_linear_cross_entropy_chunk_bytes(3 * weight.shape[0] * 8)
        assert fs.get_linear_cross_entropy_chunk_bytes() == 3 * weight.shape[0] * 8
        fs.linear_cross_entropy_with_grad(h, weight, target)
        fs.linear_cross_entropy_with_grad(h, weight, target, chunk_bytes=10 ** 9)
    finally:
        fs.set_linear_cross_entropy_chunk_bytes(None)
    assert fs.get_linear_cross_entropy_chunk_bytes() == linear_ce.DEFAULT_CHUNK_BYTES
    assert seen == [3, h.shape[0]]


def test_chunk_buffers_are_kept_and_released():
    """A call's chunk buffers are kept for the next (within the default budget), reused
    by a call of another shape and dtype without its stale contents leaking into the
    results, never kept beyond the budget, and freed by
    release_linear_cross_entropy_buffers."""
    def call(problem, **options):
        h, weight, bias, target = problem
        return fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias, **options)

    fs.release_linear_cross_entropy_buffers()
    wide = make_problem(n=29, d=6, v=13, ignored=0.3, seed=7)
    narrow = make_problem(n=11, d=3, v=5, dtype=np.float32, ignored=0.3, seed=8)
    call(wide)
    kept = [buffer.size for _, buffer in linear_ce._kept_buffers]
    # logits, gathered h rows and grad_h rows, the chunk being every valid row
    n_valid = int(np.sum(wide[3] != -100))
    assert sorted(kept) == sorted([n_valid * 13 * 8, n_valid * 6 * 8, n_valid * 6 * 8])
    for problem in (narrow, wide):
        h, weight, bias, target = problem
        check_against_torch(call(problem), torch_reference(h, weight, target, bias), h.dtype.type,
                            "a call on kept buffers")
    try:  # a budget below one call's logits: those are not kept
        fs.set_linear_cross_entropy_chunk_bytes(n_valid * 13 * 8 - 1)
        assert linear_ce._kept_buffers == []
        call(wide, chunk_bytes=10 ** 9)
        assert [buffer.size for _, buffer in linear_ce._kept_buffers] == [n_valid * 6 * 8] * 2
    finally:
        fs.set_linear_cross_entropy_chunk_bytes(None)
    call(wide)
    assert linear_ce._kept_buffers
    fs.release_linear_cross_entropy_buffers()
    assert linear_ce._kept_buffers == []


def test_concurrent_calls_use_their_own_buffers():
    """Threads calling at once each compute their own problem right (no shared buffer)."""
    from concurrent.futures import ThreadPoolExecutor
    problems = [make_problem(n=200, d=8, v=300, ignored=0.2, seed=s) for s in range(8)]
    expected = [torch_reference(h, weight, target, bias) for h, weight, bias, target in problems]

    def call(problem):
        h, weight, bias, target = problem
        return fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias,
                                                 chunk_bytes=30 * 300 * 8)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, problems * 3))
    for result, reference in zip(results, expected * 3):
        check_against_torch(result, reference, np.float64, "concurrent calls")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_every_target_ignored(backend, reduction):
    h, weight, bias, target = make_problem(n=5)
    target[:] = -100
    loss, grad_h, grad_weight, grad_bias = fs.linear_cross_entropy_with_grad(
        h, weight, target, bias=bias, reduction=reduction, backend=backend)
    expected_loss, _ = torch_reference(h, weight, target, bias, reduction=reduction)
    np.testing.assert_array_equal(loss, expected_loss)  # NaN for "mean", as torch
    for grad in (grad_h, grad_weight, grad_bias):
        assert not grad.any()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_no_rows(backend, reduction):
    h, weight, bias, _ = make_problem()
    loss, grad_h, grad_weight, grad_bias = fs.linear_cross_entropy_with_grad(
        h[:0], weight, np.zeros(0, np.int64), bias=bias, reduction=reduction, backend=backend)
    expected_loss, _ = torch_reference(h[:0], weight, np.zeros(0, np.int64), bias,
                                       reduction=reduction)
    np.testing.assert_array_equal(loss, expected_loss)
    assert grad_h.shape == (0, h.shape[1])
    assert not grad_weight.any() and not grad_bias.any()


def test_leading_batch_axes(backend):
    h, weight, bias, target = make_problem(n=24, ignored=0.2)
    h3, target3 = h.reshape(2, 3, 4, -1), target.reshape(2, 3, 4)
    grad_output = np.random.default_rng(1).standard_normal(target3.shape)
    result = fs.linear_cross_entropy_with_grad(h3, weight, target3, bias=bias, reduction="none",
                                               grad_output=grad_output, backend=backend)
    assert result[0].shape == target3.shape and result[1].shape == h3.shape
    check_against_torch(result, torch_reference(h3, weight, target3, bias, reduction="none",
                                                grad_output=grad_output),
                        np.float64, "batch axes")


@pytest.mark.parametrize("need", [("h",), ("weight",), ("bias",), ("h", "bias"), (), "weight"])
def test_need_selects_gradients(backend, need, monkeypatch):
    """Gradients not asked for are None; without "weight" the grad_weight GEMM never runs."""
    calls = []

    class Counting(linear_ce._ScipyBlas):
        def grad_weight(self, *args, **kwargs):
            calls.append("grad_weight")
            return super().grad_weight(*args, **kwargs)

        def grad_h(self, *args, **kwargs):
            calls.append("grad_h")
            return super().grad_h(*args, **kwargs)

    monkeypatch.setattr(linear_ce, "numpy_blas", Counting)
    h, weight, bias, target = make_problem(ignored=0.2)
    full = fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias, backend=backend)
    calls.clear()
    result = fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias, need=need,
                                               backend=backend)
    need = (need,) if isinstance(need, str) else need
    assert_close(result[0], full[0], np.float64, "loss")
    for name, grad, reference in zip(("h", "weight", "bias"), result[1:], full[1:]):
        if name in need:
            assert_close(grad, reference, np.float64, f"grad_{name}")
        else:
            assert grad is None, f"grad_{name} computed without being needed"
    assert ("grad_weight" in calls) == ("weight" in need)
    assert ("grad_h" in calls) == ("h" in need)


def test_no_bias_gives_no_bias_gradient(backend):
    h, weight, _, target = make_problem(bias=False)
    result = fs.linear_cross_entropy_with_grad(h, weight, target, backend=backend)
    check_against_torch(result, torch_reference(h, weight, target), np.float64, "no bias")


def test_numpy_matmul_fallback(monkeypatch):
    """Without SciPy: NumPy's matmul, grad_weight accumulated through a scratch buffer."""
    monkeypatch.setattr(linear_ce, "numpy_blas", linear_ce._NumpyBlas)
    h, weight, bias, target = make_problem(ignored=0.2)
    result = fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias, chunk_bytes=1)
    check_against_torch(result, torch_reference(h, weight, target, bias), np.float64,
                        "numpy fallback")


def test_scipy_gemm_writes_in_place():
    """The transposed views passed to SciPy's Fortran gemm are written, not copied."""
    blas = linear_ce._ScipyBlas()
    rng = np.random.default_rng(0)
    h, w, g = (rng.standard_normal(s).astype(np.float32) for s in ((5, 3), (7, 3), (5, 7)))
    logits, grad_h, grad_w = np.empty((5, 7), np.float32), np.empty((5, 3), np.float32), \
        np.ones((7, 3), np.float32)
    blas.logits(h, w, logits)
    blas.grad_h(g, w, grad_h)
    blas.grad_weight(g, h, grad_w, accumulate=True)
    np.testing.assert_allclose(logits, h @ w.T, rtol=1e-5)
    np.testing.assert_allclose(grad_h, g @ w, rtol=1e-5)
    np.testing.assert_allclose(grad_w, 1 + g.T @ h, rtol=1e-5)


def test_layouts_and_inputs_unchanged(backend):
    """Read-only, non-contiguous h and an F-ordered weight: right answer, nothing written."""
    h, weight, bias, target = make_problem(n=20, ignored=0.2)
    h_strided = np.repeat(h, 2, axis=0)[::2]
    weight_f = np.asfortranarray(weight)
    arrays = (h_strided, weight_f, bias, target)
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    result = fs.linear_cross_entropy_with_grad(h_strided, weight_f, target, bias=bias,
                                               class_weight=np.linspace(0.5, 1.5, 13),
                                               label_smoothing=0.1, backend=backend)
    check_against_torch(result, torch_reference(h, weight, target, bias,
                                                 class_weight=np.linspace(0.5, 1.5, 13),
                                                 label_smoothing=0.1), np.float64, "layouts")
    for a, copy in zip(arrays, copies):
        np.testing.assert_array_equal(a, copy)


@pytest.mark.parametrize("options", [dict(), dict(reduction="none"),
                                     dict(class_weight=True, label_smoothing=0.2)], ids=str)
def test_finite_differences(backend, options):
    """Every gradient entry against a central difference of the loss (float64, tiny case)."""
    h, weight, bias, target = make_problem(n=4, d=3, v=5, ignored=0.2, seed=4)
    target[1] = -100
    options = _resolved(options, 5)
    grad_output = np.array([0.5, -1.0, 2.0, 1.5]) if options.get("reduction") == "none" else 1.3

    def objective(h_, w_, b_):
        loss = fs.linear_cross_entropy(h_, w_, target, bias=b_, backend=backend, **options)
        return float(np.sum(loss * grad_output))

    _, *grads = fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias,
                                                  grad_output=grad_output, backend=backend,
                                                  chunk_bytes=1, **options)
    arrays = [h, weight, bias]
    step = 1e-6
    for k, (array, grad) in enumerate(zip(arrays, grads)):
        for index in itertools.product(*map(range, array.shape)):
            plus, minus = [a.copy() for a in arrays], [a.copy() for a in arrays]
            plus[k][index] += step
            minus[k][index] -= step
            numeric = (objective(*plus) - objective(*minus)) / (2 * step)
            assert abs(grad[index] - numeric) <= 1e-7 * max(1.0, abs(numeric)), \
                f"gradient {k} at {index}: analytic {grad[index]}, numeric {numeric}"


class RefusingBlas(linear_ce._Blas):
    """Fails the test if any GEMM runs."""

    def logits(self, *args):
        raise AssertionError("a GEMM ran before the input was rejected")

    grad_h = grad_weight = logits


@pytest.mark.parametrize("change, error, words", [
    (dict(weight=np.zeros((13, 5))), ValueError, ["(29, 6)", "(13, 5)"]),
    (dict(weight=np.zeros(13)), ValueError, ["(V, D)"]),
    (dict(bias=np.zeros(12)), ValueError, ["(12,)", "(13,)"]),
    (dict(bias=np.zeros(13, np.float32)), TypeError, ["float32", "float64"]),
    (dict(weight=np.zeros((13, 6), np.float32)), TypeError, ["float32", "float64"]),
    (dict(h=np.zeros((29, 6), np.int64)), TypeError, ["int64"]),
    (dict(target=np.full(29, 13)), IndexError, ["13", "0..12"]),
    (dict(target=np.full(29, -1)), IndexError, ["-1"]),
    (dict(target=np.zeros(28, np.int64)), ValueError, ["(28,)", "(29,)"]),
    (dict(target=np.zeros(29)), TypeError, ["integer"]),
    (dict(class_weight=np.ones(12)), ValueError, ["(12,)", "(13,)"]),
    (dict(reduction="avg"), ValueError, ["avg"]),
    (dict(label_smoothing=1.5), ValueError, ["1.5"]),
    (dict(need=("h", "grad")), ValueError, ["grad"]),
    (dict(chunk_bytes=0), ValueError, ["chunk_bytes"]),
    (dict(grad_output=np.ones(29)), ValueError, ["grad_output"]),
])
def test_bad_input_is_rejected_before_any_gemm(monkeypatch, change, error, words):
    monkeypatch.setattr(linear_ce, "numpy_blas", RefusingBlas)
    h, weight, bias, target = make_problem()
    arguments = dict(h=h, weight=weight, target=target, bias=bias)
    arguments.update(change)
    with pytest.raises(error) as raised:
        fs.linear_cross_entropy_with_grad(**arguments)
    for word in words:
        assert word in str(raised.value), f"{word!r} not in {raised.value}"


def test_blas_runs_on_the_kernel_thread_count(monkeypatch):
    """During the GEMMs every BLAS library is limited to fastsoftmax's thread count."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="the BLAS limit needs it")
    seen = []

    class Recording(linear_ce._ScipyBlas):
        def logits(self, *args):
            seen.extend(info["num_threads"] for info in
                        threadpoolctl.threadpool_info() if info["user_api"] == "blas")
            return super().logits(*args)

    monkeypatch.setattr(linear_ce, "numpy_blas", Recording)
    h, weight, bias, target = make_problem()
    fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias)
    assert seen and set(seen) == {fs.get_num_threads()}
    if fs.get_num_threads() > 1:
        old = fs.get_num_threads()
        fs.set_num_threads(1)
        try:
            seen.clear()
            fs.linear_cross_entropy_with_grad(h, weight, target, bias=bias)
        finally:
            fs.set_num_threads(old)
        assert seen and set(seen) == {1}
