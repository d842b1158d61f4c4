"""fs.sampled_softmax_loss(_with_grad) and the candidate samplers (TensorFlow's semantics):
against the dense float64 reference on every backend and option, finite differences,
the samplers' distribution and expected counts, errors; TensorFlow itself when installed."""
import itertools

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference
from fastsoftmax.sampled_softmax import accidental_hits, segment_sum

RTOL = {np.float32: 3e-5, np.float64: 1e-11}
SAMPLERS = {"log_uniform": fs.log_uniform_candidate_sampler,
            "uniform": fs.uniform_candidate_sampler}


def make_problem(n=17, d=5, classes=40, num_true=1, dtype=np.float64, seed=0):
    """A small problem whose labels are frequent classes, so that the log-uniform sampler
    hits them (accidental hits)."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((classes, d)).astype(dtype)
    biases = rng.standard_normal(classes).astype(dtype)
    inputs = rng.standard_normal((n, d)).astype(dtype)
    labels = rng.integers(0, 8, (n, num_true))
    return weights, biases, labels, inputs


def assert_close(actual, expected, dtype, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    scale = max(np.max(np.abs(expected.astype(np.float64)), initial=0.0), 1.0)
    error = np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0) / scale
    assert error <= RTOL[dtype], f"{what}: relative error {error:.3g}"


def assert_same_result(actual, expected, dtype, context):
    (loss, grad_inputs, (w_ids, w_rows), (b_ids, b_rows)) = actual
    (ref_loss, ref_inputs, (ref_w_ids, ref_w_rows), (ref_b_ids, ref_b_rows)) = expected
    assert_close(loss, ref_loss, dtype, f"loss {context}")
    assert_close(grad_inputs, ref_inputs, dtype, f"grad_inputs {context}")
    np.testing.assert_array_equal(w_ids, ref_w_ids, err_msg=f"weight ids {context}")
    np.testing.assert_array_equal(b_ids, ref_b_ids, err_msg=f"bias ids {context}")
    assert_close(w_rows, ref_w_rows, dtype, f"weight rows {context}")
    assert_close(b_rows, ref_b_rows, dtype, f"bias {context}")


CASES = list(itertools.product([np.float32, np.float64], [1, 2], [True, False], [True, False],
                               [False, True]))


@pytest.mark.parametrize("dtype, num_true, unique, remove_hits, per_row", CASES)
def test_matches_reference(backend, dtype, num_true, unique, remove_hits, per_row):
    weights, biases, labels, inputs = make_problem(num_true=num_true, dtype=dtype)
    num_sampled = 12
    values = fs.log_uniform_candidate_sampler(labels, num_true, num_sampled, unique, 40, seed=3)
    sampled = values[0]
    assert accidental_hits(labels, sampled)[0].size, "the case must have accidental hits"
    if not unique:
        assert np.unique(sampled).size < sampled.size, "the case must repeat sampled ids"
    grad_output = np.linspace(-1.0, 2.0, labels.shape[0]) if per_row else None
    options = dict(num_true=num_true, sampled_values=values,
                   remove_accidental_hits=remove_hits, grad_output=grad_output)
    args = (weights, biases, labels, inputs, num_sampled, 40)
    context = f"{dtype.__name__} num_true={num_true} unique={unique} hits={remove_hits} " \
              f"grad_output={per_row} backend={backend}"
    result = fs.sampled_softmax_loss_with_grad(*args, backend=backend, **options)
    expected = reference.sampled_softmax_loss_with_grad(*args, **options)
    assert_same_result(result, expected, dtype, context)
    del options["grad_output"]
    assert_close(fs.sampled_softmax_loss(*args, backend=backend, **options), expected[0],
                 dtype, f"loss alone {context}")


def test_accidental_hits(backend):
    """Repeated sampled ids that are all true classes of row 0: removed everywhere they hit,
    so row 0's loss is the cross-entropy over its true classes alone, finite, and the hit
    columns pass no gradient to the sampled rows of W."""
    weights, biases, labels, inputs = make_problem(num_true=2)
    sampled = np.concatenate([labels[0], labels[0]])
    values = (sampled, np.full(labels.shape, 0.5), np.full(sampled.size, 0.25))
    rows, positions = accidental_hits(labels, sampled)
    hit = np.zeros((labels.shape[0], sampled.size), bool)
    hit[rows, positions] = True
    np.testing.assert_array_equal(hit, (labels[:, :, None] == sampled).any(axis=1))
    assert rows.size == np.count_nonzero(hit), "each hit found once"
    with np.errstate(invalid="raise", divide="raise"):  # no NaN, no log(0)
        loss, grad_inputs, _, _ = fs.sampled_softmax_loss_with_grad(
            weights, biases, labels, inputs, sampled.size, 40, num_true=2,
            sampled_values=values, backend=backend)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad_inputs))
    z = inputs[0] @ weights[labels[0]].T + biases[labels[0]] - np.log(0.5)
    np.testing.assert_allclose(loss[0], -np.mean(z - np.log(np.sum(np.exp(z)))), rtol=1e-12)
    only_row_0 = dict(sampled_values=(sampled, values[1][:1], values[2]), num_true=2)
    _, grad_row_0, (ids, w_rows), _ = fs.sampled_softmax_loss_with_grad(
        weights, biases, labels[:1], inputs[:1], sampled.size, 40, backend=backend,
        **only_row_0)
    p = np.exp(z - np.log(np.sum(np.exp(z))))
    np.testing.assert_allclose(grad_row_0[0], (p - 0.5) @ weights[labels[0]], atol=1e-12)
    assert set(ids) == set(labels[0])


def test_scalar_grad_output_scales_every_gradient(backend):
    problem = make_problem(num_true=2)
    values = fs.log_uniform_candidate_sampler(problem[2], 2, 9, False, 40, seed=1)
    plain = fs.sampled_softmax_loss_with_grad(*problem, 9, 40, num_true=2, sampled_values=values,
                                              backend=backend)
    scaled = fs.sampled_softmax_loss_with_grad(*problem, 9, 40, num_true=2,
                                               sampled_values=values, grad_output=-2.5,
                                               backend=backend)
    np.testing.assert_array_equal(scaled[0], plain[0])
    np.testing.assert_allclose(scaled[1], -2.5 * plain[1], rtol=1e-12)
    for (ids, rows), (plain_ids, plain_rows) in zip(scaled[2:], plain[2:]):
        np.testing.assert_array_equal(ids, plain_ids)
        np.testing.assert_allclose(rows, -2.5 * plain_rows, rtol=1e-12)


@pytest.mark.parametrize("layout", ["F", "strided"])
def test_any_layout(backend, layout):
    weights, biases, labels, inputs = make_problem(num_true=2, dtype=np.float32)
    values = fs.log_uniform_candidate_sampler(labels, 2, 9, True, 40, seed=1)
    expected = reference.sampled_softmax_loss_with_grad(weights, biases, labels, inputs, 9, 40,
                                                        num_true=2, sampled_values=values)

    def laid_out(a):
        if layout == "F":
            return np.asfortranarray(a)
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]

    result = fs.sampled_softmax_loss_with_grad(
        *(laid_out(a) for a in (weights, biases, labels, inputs)), 9, 40, num_true=2,
        sampled_values=values, backend=backend)
    assert_same_result(result, expected, np.float32, f"layout {layout} backend={backend}")


def test_nan_and_inf_inputs_are_data(backend):
    """A NaN or inf input row gives that row a NaN loss, as the reference (and TensorFlow)."""
    weights, biases, labels, inputs = make_problem()
    inputs[3, 1], inputs[5, 0] = np.nan, np.inf
    values = fs.log_uniform_candidate_sampler(labels, 1, 9, True, 40, seed=1)
    loss = fs.sampled_softmax_loss(weights, biases, labels, inputs, 9, 40, sampled_values=values,
                                   backend=backend)
    expected = reference.sampled_softmax_loss(weights, biases, labels, inputs, 9, 40,
                                              sampled_values=values)
    np.testing.assert_allclose(loss, expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(loss[3]) and np.isnan(loss[5])
    assert np.all(np.isfinite(np.delete(loss, [3, 5])))


def test_zero_rows(backend):
    weights, biases, _, _ = make_problem()
    labels, inputs = np.zeros((0, 2), np.int64), np.zeros((0, 5))
    values = (np.array([1, 2, 3]), np.zeros((0, 2)), np.ones(3))
    result = fs.sampled_softmax_loss_with_grad(weights, biases, labels, inputs, 3, 40, num_true=2,
                                               sampled_values=values, backend=backend)
    expected = reference.sampled_softmax_loss_with_grad(weights, biases, labels, inputs, 3, 40,
                                                        num_true=2, sampled_values=values)
    assert_same_result(result, expected, np.float64, f"N=0 backend={backend}")
    assert result[0].shape == (0,) and result[1].shape == (0, 5)
    np.testing.assert_array_equal(result[2][0], [1, 2, 3])
    assert not np.any(result[2][1])


def test_default_sampler_is_seeded_log_uniform(backend):
    weights, biases, labels, inputs = make_problem()
    args = (weights, biases, labels, inputs, 10, 40)
    first = fs.sampled_softmax_loss(*args, seed=7, backend=backend)
    np.testing.assert_array_equal(first, fs.sampled_softmax_loss(*args, seed=7, backend=backend))
    values = fs.log_uniform_candidate_sampler(labels, 1, 10, True, 40, seed=7)
    assert_close(first, reference.sampled_softmax_loss(*args, sampled_values=values),
                 np.float64, "default sampler")
    assert_close(first, reference.sampled_softmax_loss(*args, seed=7), np.float64,
                 "reference default sampler")


def test_inputs_not_modified(backend):
    problem = make_problem(num_true=2, dtype=np.float32)
    values = fs.log_uniform_candidate_sampler(problem[2], 2, 9, True, 40, seed=1)
    copies = [a.copy() for a in problem] + [v.copy() for v in values]
    fs.sampled_softmax_loss_with_grad(*problem, 9, 40, num_true=2, sampled_values=values,
                                      grad_output=np.ones(17), backend=backend)
    for before, after in zip(copies, [*problem, *values]):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("num_true", [1, 2])
def test_finite_differences(backend, num_true):
    weights, biases, labels, inputs = make_problem(n=6, d=3, classes=12, num_true=num_true)
    labels = labels % 12
    sampled = np.array([0, 3, 3, 7, labels[0, 0], 11])  # a repeated id and a hit
    values = (sampled, np.full(labels.shape, 0.7), np.linspace(0.2, 1.5, sampled.size))
    grad_output = np.linspace(0.5, -1.5, labels.shape[0])

    def objective(w, b, x):
        return float(np.sum(reference.sampled_softmax_loss(
            w, b, labels, x, sampled.size, 12, num_true=num_true, sampled_values=values)
            * grad_output))

    _, grad_inputs, (w_ids, w_rows), (b_ids, b_rows) = fs.sampled_softmax_loss_with_grad(
        weights, biases, labels, inputs, sampled.size, 12, num_true=num_true,
        sampled_values=values, grad_output=grad_output, backend=backend)
    dense_w = np.zeros_like(weights)
    dense_w[w_ids] = w_rows
    dense_b = np.zeros_like(biases)
    dense_b[b_ids] = b_rows
    step = 1e-6
    for name, array, analytic in (("weights", weights, dense_w), ("biases", biases, dense_b),
                                  ("inputs", inputs, grad_inputs)):
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            plus, minus = array.copy(), array.copy()
            plus[index] += step
            minus[index] -= step
            arrays = {"weights": weights, "biases": biases, "inputs": inputs}
            f = []
            for shifted in (plus, minus):
                arrays[name] = shifted
                f.append(objective(arrays["weights"], arrays["biases"], arrays["inputs"]))
            numeric[index] = (f[0] - f[1]) / (2 * step)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{name} num_true={num_true} backend={backend}")
    untouched = np.setdiff1d(np.arange(12), w_ids)
    assert untouched.size, "some class must be untouched"


def test_segment_sum_sums_repeated_ids():
    ids = np.array([5, 2, 5, 9, 2, 2])
    rows = np.arange(12.0).reshape(6, 2)
    unique, sums, column = segment_sum(ids, rows, rows[:, 0])
    np.testing.assert_array_equal(unique, [2, 5, 9])
    np.testing.assert_array_equal(sums, [[2 + 8 + 10, 3 + 9 + 11], [0 + 4, 1 + 5], [6, 7]])
    np.testing.assert_array_equal(column, sums[:, 0])
    unique, sums = segment_sum(np.zeros(0, np.int64), np.zeros((0, 2)))
    assert unique.shape == (0,) and sums.shape == (0, 2)


# ---- samplers ----

@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_distribution(name):
    """unique=False draws follow P(k): a chi-square bound with a fixed seed (200000 draws,
    29 degrees of freedom: mean 29, the bound 80 is exceeded with probability < 1e-6)."""
    range_max, draws = 30, 200_000
    sampled, _, sampled_count = SAMPLERS[name](np.zeros((1, 1), np.int64), 1, draws, False,
                                               range_max, seed=12345)
    k = np.arange(range_max)
    if name == "log_uniform":
        p = (np.log(k + 2) - np.log(k + 1)) / np.log(range_max + 1)
    else:
        p = np.full(range_max, 1 / range_max)
    observed = np.bincount(sampled, minlength=range_max)
    assert observed.size == range_max
    chi2 = np.sum((observed - draws * p) ** 2 / (draws * p))
    assert chi2 < 80, f"{name}: chi-square {chi2:.1f} over {range_max - 1} degrees of freedom"
    np.testing.assert_allclose(sampled_count, draws * p[sampled], rtol=1e-12)


@pytest.mark.parametrize("name", SAMPLERS)
def test_expected_counts_without_uniqueness(name):
    range_max, num_sampled = 50, 7
    classes = np.arange(range_max).reshape(-1, 1)
    _, true_count, _ = SAMPLERS[name](classes, 1, num_sampled, False, range_max, seed=0)
    k = classes[:, 0]
    p = (np.log(k + 2) - np.log(k + 1)) / np.log(range_max + 1) if name == "log_uniform" \
        else np.full(range_max, 1 / range_max)
    np.testing.assert_allclose(true_count[:, 0], num_sampled * p, rtol=1e-12)
    np.testing.assert_allclose(true_count.sum(), num_sampled, rtol=1e-12)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unique_expected_counts(name, seed):
    """unique=True: distinct classes, and every count is -expm1(n log1p(-p)) for one integer
    number of tries n >= num_sampled (p * num_sampled when n == num_sampled)."""
    range_max, num_sampled = 20, 12
    true_classes = np.array([[0, 5], [19, 3]])
    sampled, true_count, sampled_count = SAMPLERS[name](true_classes, 2, num_sampled, True,
                                                        range_max, seed=seed)
    assert np.unique(sampled).size == num_sampled
    assert sampled.min() >= 0 and sampled.max() < range_max
    classes = np.concatenate([true_classes.reshape(-1), sampled])
    counts = np.concatenate([true_count.reshape(-1), sampled_count])
    p = (np.log1p(1 / (classes + 1.0)) / np.log1p(range_max)) if name == "log_uniform" \
        else np.full(classes.size, 1 / range_max)
    if np.allclose(counts, p * num_sampled, rtol=1e-12):
        return  # no draw was rejected (uniform, seed 1): TensorFlow's p * num_sampled
    tries = np.log1p(-counts) / np.log1p(-p)
    n = round(float(tries[0]))
    assert n > num_sampled
    np.testing.assert_allclose(tries, n, rtol=1e-9)
    np.testing.assert_allclose(counts, -np.expm1(n * np.log1p(-p)), rtol=1e-12)


def test_unique_without_rejection_uses_p_times_num_sampled():
    range_max = 10 ** 9  # three uniform draws of a billion classes: no repeat
    sampled, true_count, sampled_count = fs.uniform_candidate_sampler(
        np.array([[4]]), 1, 3, True, range_max, seed=0)
    np.testing.assert_allclose(sampled_count, np.full(3, 3 / range_max), rtol=1e-15)
    np.testing.assert_allclose(true_count, [[3 / range_max]], rtol=1e-15)


def test_unique_draws_every_class_when_asked_for_all():
    sampled, _, sampled_count = fs.log_uniform_candidate_sampler(np.array([[0]]), 1, 25, True,
                                                                 25, seed=4)
    np.testing.assert_array_equal(np.sort(sampled), np.arange(25))
    assert np.all(sampled_count > 0.5)


def test_sampler_seeds():
    true_classes = np.array([[1]])
    first = fs.log_uniform_candidate_sampler(true_classes, 1, 50, True, 1000, seed=9)
    again = fs.log_uniform_candidate_sampler(true_classes, 1, 50, True, 1000, seed=9)
    other = fs.log_uniform_candidate_sampler(true_classes, 1, 50, True, 1000, seed=10)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    fresh = [fs.log_uniform_candidate_sampler(true_classes, 1, 50, True, 1000)[0]
             for _ in range(2)]
    assert not np.array_equal(*fresh)


# ---- errors ----

def test_sampler_errors():
    ok = np.array([[1]])
    with pytest.raises(ValueError, match="num_sampled=6 distinct classes from range_max=5"):
        fs.log_uniform_candidate_sampler(ok, 1, 6, True, 5)
    fs.log_uniform_candidate_sampler(ok, 1, 6, False, 5, seed=0)  # with replacement: fine
    with pytest.raises(IndexError, match="class id 5, out of range for 5 classes"):
        fs.uniform_candidate_sampler(np.array([[5]]), 1, 2, True, 5)
    with pytest.raises(IndexError, match="class id -1"):
        fs.uniform_candidate_sampler(np.array([[-1]]), 1, 2, True, 5)
    with pytest.raises(ValueError, match=r"shape \(3,\) but must have shape"):
        fs.uniform_candidate_sampler(np.array([1, 2, 3]), 1, 2, True, 5)
    with pytest.raises(ValueError, match="num_sampled must be at least 1"):
        fs.uniform_candidate_sampler(ok, 1, 0, True, 5)
    with pytest.raises(TypeError, match="unique must be True or False"):
        fs.uniform_candidate_sampler(ok, 1, 2, 1, 5)
    with pytest.raises(TypeError, match="true_classes must hold integer class ids"):
        fs.uniform_candidate_sampler(np.array([[1.0]]), 1, 2, True, 5)


@pytest.mark.parametrize("change, error, message", [
    (dict(num_sampled=41), ValueError, "num_sampled=41 is more than num_classes=40"),
    (dict(labels=np.array([[40]] * 17)), IndexError, "class id 40, out of range for 40"),
    (dict(labels=np.zeros((16, 1), np.int64)), ValueError,
     r"labels has shape \(16, 1\) and inputs has shape \(17, 5\)"),
    (dict(labels=np.zeros(17, np.int64)), ValueError, r"labels has shape \(17,\)"),
    (dict(weights=np.zeros((40, 4))), ValueError,
     r"weights has shape \(40, 4\) and inputs has shape \(17, 5\)"),
    (dict(biases=np.zeros(39)), ValueError,
     r"biases has shape \(39,\) and weights has shape \(40, 5\)"),
    (dict(weights=np.zeros((40, 5), np.float32)), TypeError, "weights has dtype float32"),
    (dict(inputs=np.zeros((17, 5), np.int64)), TypeError, "inputs must be a float32"),
    (dict(sampled_values=(np.array([1, 2]), np.ones((17, 1)), np.ones(2))), ValueError,
     r"sampled_candidates has shape \(2,\) but must have shape \(3,\)"),
    (dict(sampled_values=(np.array([1, 2, 40]), np.ones((17, 1)), np.ones(3))), IndexError,
     "sampled_candidates holds class id 40"),
    (dict(sampled_values=(np.array([1, 2, 3]), np.ones((17, 2)), np.ones(3))), ValueError,
     r"true_expected_count has shape \(17, 2\) but labels has shape \(17, 1\)"),
    (dict(sampled_values=(np.array([1, 2, 3]), np.ones((17, 1)), np.ones(4))), ValueError,
     r"sampled_expected_count has shape \(4,\) but sampled_candidates has shape \(3,\)"),
    (dict(sampled_values=(1, 2)), TypeError, "sampled_values must be a tuple"),
    (dict(grad_output=np.ones(16)), ValueError, r"grad_output has shape \(16,\)"),
])
def test_sampled_softmax_errors(backend, change, error, message):
    weights, biases, labels, inputs = make_problem()
    arguments = dict(weights=weights, biases=biases, labels=labels, inputs=inputs,
                     num_sampled=3, num_classes=40,
                     sampled_values=(np.array([1, 2, 3]), np.ones((17, 1)), np.ones(3)))
    arguments.update(change)
    with pytest.raises(error, match=message):
        fs.sampled_softmax_loss_with_grad(**arguments, backend=backend)
    arguments.pop("grad_output", None)
    if "grad_output" not in change:
        with pytest.raises(error, match=message):
            reference.sampled_softmax_loss(**arguments)


# ---- TensorFlow, the spec ----

def test_matches_tensorflow():
    tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed here (it pins "
                             "its own numpy; the comparison runs in a separate venv)")
    for dtype, num_true, remove_hits in itertools.product([np.float32, np.float64], [1, 2],
                                                          [True, False]):
        weights, biases, labels, inputs = make_problem(num_true=num_true, dtype=dtype)
        values = fs.log_uniform_candidate_sampler(labels, num_true, 12, True, 40, seed=3)
        ours = fs.sampled_softmax_loss(weights, biases, labels, inputs, 12, 40,
                                       num_true=num_true, sampled_values=values,
                                       remove_accidental_hits=remove_hits)
        # TensorFlow subtracts the log-counts in the logits' dtype
        tf_values = tuple(tf.constant(v) for v in (values[0], values[1].astype(dtype),
                                                   values[2].astype(dtype)))
        theirs = tf.nn.sampled_softmax_loss(weights, biases, labels, inputs, 12, 40,
                                            num_true=num_true, sampled_values=tf_values,
                                            remove_accidental_hits=remove_hits).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{dtype.__name__} num_true={num_true} "
                                           f"hits={remove_hits}")
