"""Parity: the Numba and the Cython backend give the same results on the same inputs, at
every switch point of their row drivers, more tightly than each agrees with the reference.

Switch points crossed:
* class counts 1-17 (Cython's narrow path: a row of at most one AVX-512 vector, 16
  float32 or 8 float64 classes, or two AVX2 ones, rows transposed 16 or 8 at a time),
  63/64/65 (Numba's SMALL_C = 64; Cython's without AVX-512) and 127/128/129 (Cython's
  SMALL_C = 128 with AVX-512), each in calls of 3 rows (the last call 2) and of
  2 * (4096 // C) + 37 rows: an odd row count, so groups of 16 and 8 rows are cut at the
  end, and blocks of 4096 // C rows with the last one cut;
* the long-row split of both backends (fewer than 4 rows of at least 4 * 16384 =
  65536 classes): calls of 3 rows and of 1 row at 65535, 65536 and 65537 classes, and
  of 4 rows at 65536 (not split; the last call 1 row);
* every op of the table: the rows ops of ``_ops.ROW_OPS`` with inputs from their
  ``from_logits``, and every loss op through a caller of ``LOSS_CALLERS`` (a loss op of
  the table without a caller fails, named);
* float32 and float64; NaN, +inf, -inf and 1e4 in the first, a middle and the last class
  of a row, a row of only -inf, a NaN in the other inputs of an op (``dy``), targets on
  the special classes and ignored rows.
"""
import functools
import itertools

import numpy as np
import pytest

pytest.importorskip("fastsoftmax._cython._kernels",
                    reason="the Cython extension is not built: no second backend to compare "
                           "the Numba backend with")

import fastsoftmax as fs  # noqa: E402
from fastsoftmax import _ops, reference  # noqa: E402
from conftest import RTOL, describe, op_id, op_inputs  # noqa: E402

BACKENDS = ("numba", "cython")

# Bound on |numba - cython|, relative to the row's scale: the largest finite magnitude
# in the row of either result for (rows, classes) outputs, or the magnitude of the terms
# the row's results are formed from where they cancel (TERM_SCALES, the loss callers);
# max(1, |value|) for one value per row (logsumexp, entropy, a row's loss: a log of a
# sum, whose error is absolute, an ulp of 1 or so, however small the value).
# Both backends run the same algorithms (a max pass, exp(x - m) summed in blocks in the
# row's type into a float64 total, one rescale or shift pass); they differ in their exp
# polynomials (~1 ulp each), the order of the additions and where a float64 row total
# is rounded to the row's type, so they should agree to a few ulps of the row scale.
# The bound is the same ulp budget for both dtypes, ~5x the worst measured, and 5x
# (float32) and 100x (float64) tighter than what each backend is allowed against the
# reference (tests/conftest.py RTOL: 2e-5 and 1e-12 of the array's largest magnitude):
#   float32 4e-6 = 34 ulps (eps 1.19e-7), float64 1e-14 = 45 ulps (eps 2.2e-16).
# Worst measured (all of this file's cases, AMD EPYC with AVX-512, 2 threads), per row
# scale: float32 8.3e-7 = 7.0 ulps (entropy_with_grad gradient, C = 129; the other ops
# 1.0-4.5 ulps), float64 2.0e-15 = 9.0 ulps (entropy_with_grad gradient, C = 63; the
# other ops 1.2-5.7 ulps). Without the term scales the cancelling rows measured up to
# 1e-2 of their results (softmax_backward and cross-entropy gradients at C = 1-17).
PARITY_RTOL = {np.dtype(np.float32): 4e-6, np.dtype(np.float64): 1e-14}

SPLIT_C = 4 * 16384  # both backends split fewer than 4 rows of at least this many classes
SMALL_CLASS_COUNTS = [*range(1, 18), 63, 64, 65, 127, 128, 129]
LONG_CASES = [(SPLIT_C - 1, 3), (SPLIT_C, 3), (SPLIT_C + 1, 3),
              (SPLIT_C - 1, 1), (SPLIT_C, 1), (SPLIT_C + 1, 1), (SPLIT_C, 4)]

IGNORE = -100
# Row kinds besides normal rows: a special value in one class, a row of only -inf, a NaN
# in the op's other inputs (dy) with normal logits, an ignored target (loss ops).
SPECIAL_VALUES = [("NaN", np.nan), ("+inf", np.inf), ("-inf", -np.inf), ("1e4", 1e4)]
LANES = ("first", "middle", "last")
ALL_NEG_INF, OTHER_INPUTS_NAN, IGNORED = "all -inf", "NaN in dy", "ignored target"


def _lane(lane, n_classes):
    return {"first": 0, "middle": n_classes // 2, "last": n_classes - 1}[lane]


def _marks():
    """The special rows: (kind, value, lane name)."""
    marks = [(name, value, lane) for name, value in SPECIAL_VALUES for lane in LANES]
    return marks + [(ALL_NEG_INF, -np.inf, None), (OTHER_INPUTS_NAN, np.nan, "middle"),
                    (IGNORED, None, None)]


def _special_array(n_classes, n_rows, positions, dtype, seed):
    """(rows, classes) logits ~ 3 N(0, 1) with the special rows of _marks at ``positions``;
    returns (x, [(row, kind, lane index or None)])."""
    rng = np.random.default_rng([seed, n_classes, n_rows])
    x = (rng.standard_normal((n_rows, n_classes)) * 3).astype(dtype)
    marks = []
    for row, (kind, value, lane) in zip(positions, _marks()):
        j = None if lane is None else _lane(lane, n_classes)
        if kind == ALL_NEG_INF:
            x[row, :] = value
        elif kind not in (OTHER_INPUTS_NAN, IGNORED):
            x[row, j] = value
        marks.append((row, kind, j))
    return x, marks


def _distinct(candidates, n_rows):
    """The candidate rows, each moved to the next free row if already taken."""
    taken = []
    for row in candidates:
        row %= n_rows
        while row in taken:
            row = (row + 1) % n_rows
        taken.append(row)
    return taken


def few_rows_arrays(n_classes, n_rows, dtype, seed=0):
    """Arrays of ``n_rows`` rows (the last one gets the rest) that hold, between them,
    every special row: a pool of 17 rows (a normal row, the 15 special rows, a normal
    row), cut."""
    n_marks = len(_marks())
    pool_rows = n_marks + 2
    x, marks = _special_array(n_classes, pool_rows, range(1, n_marks + 1), dtype, seed)
    for lo in range(0, pool_rows, n_rows):
        hi = min(lo + n_rows, pool_rows)
        yield x[lo:hi], [(row - lo, kind, j) for row, kind, j in marks if lo <= row < hi]


def many_rows_arrays(n_classes, dtype, seed=0):
    """One array of 2 * block + 37 rows (block = 4096 // C, the rows of a block task), the
    special rows at the ends of groups of 8 and 16 rows, of the blocks and of the array."""
    block = 4096 // n_classes
    n_rows = 2 * block + 37
    candidates = [0, 7, 8, 15, 16, 31, block - 1, block, block + 15, 2 * block - 1,
                  2 * block, n_rows - 17, n_rows - 16, n_rows - 9, n_rows - 2, n_rows - 1]
    positions = _distinct(candidates, n_rows)
    assert len(positions) >= len(_marks())
    yield _special_array(n_classes, n_rows, positions, dtype, seed)


class Case:
    """A class count and a row count per call, with the arrays to run."""

    def __init__(self, n_classes, n_rows=None):
        self.n_classes, self.n_rows = n_classes, n_rows  # n_rows None: many rows

    def arrays(self, dtype):
        if self.n_rows is None:
            return many_rows_arrays(self.n_classes, dtype)
        return few_rows_arrays(self.n_classes, self.n_rows, dtype)

    def __repr__(self):
        rows = (f"{2 * (4096 // self.n_classes) + 37}rows" if self.n_rows is None
                else f"{self.n_rows}rows")
        return f"C{self.n_classes}-{rows}"


CASES = ([Case(n, rows) for n in SMALL_CLASS_COUNTS for rows in (3, None)]
         + [Case(n, rows) for n, rows in LONG_CASES])


def _row_max(a):
    """The largest finite magnitude of each row of a (rows, classes) array, as (rows, 1)."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    return np.where(np.isfinite(a), a, 0).max(-1, initial=0, keepdims=True)


def assert_parity(got, want, context, terms=None):
    """|got - want| within PARITY_RTOL of the row scale, NaN/+inf/-inf in exactly the same
    places, same shape and dtype. ``terms`` (rows, 1): the magnitude of the terms a row's
    results are formed from, when it exceeds theirs. Returns the worst difference
    relative to the scale."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{context}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{context}: dtype {got.dtype} != {want.dtype}"
    for where in (np.isnan, np.isposinf, np.isneginf):
        differ = where(got) != where(want)
        if differ.any():
            at = np.argwhere(differ)[:5]
            pytest.fail(f"{context}: {where.__name__} differs at {at.tolist()}: numba "
                        f"{got[differ][:5]}, cython {want[differ][:5]}")
    finite = np.isfinite(got)
    a = np.where(finite, got, 0).astype(np.float64)
    b = np.where(finite, want, 0).astype(np.float64)
    if got.ndim >= 2:  # (rows, classes): the row's largest magnitude
        rows = max(1, got.size // got.shape[-1])
        a, b = a.reshape(rows, -1), b.reshape(rows, -1)
        scale = np.maximum(np.abs(a).max(-1, initial=0), np.abs(b).max(-1, initial=0))[:, None]
        if terms is not None:
            scale = np.maximum(scale, terms)
    else:  # one value per row
        a, b = a.reshape(-1), b.reshape(-1)
        scale = np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
    diff = np.abs(a - b)
    rtol = PARITY_RTOL[got.dtype]
    bad = diff > rtol * scale
    if bad.any():
        at = np.argwhere(bad)[:5]
        worst = np.unravel_index(np.argmax(diff / np.where(scale > 0, scale, 1)), diff.shape)
        pytest.fail(f"{context}: {np.count_nonzero(bad)} values differ by more than "
                    f"{rtol} of the row scale, first at {at.tolist()}; worst at "
                    f"{[int(i) for i in worst]}: numba {a[worst]!r}, cython {b[worst]!r} "
                    f"(scale {np.broadcast_to(scale, diff.shape)[worst]!r})")
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(diff > 0, diff / scale, 0.0)
    return float(relative.max(initial=0.0))


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


def compare(call, context, terms=None):
    """Run call(backend) on both backends; every output must agree. Returns the worst
    relative difference."""
    results = {backend: _outputs(call(backend)) for backend in BACKENDS}
    assert len(results["numba"]) == len(results["cython"]), context
    return max(assert_parity(got, want, f"{context}, output {k}", terms)
               for k, (got, want) in enumerate(zip(results["numba"], results["cython"])))


# ---- rows ops: every op of the table ----

# The scale of the terms a row's results are formed from, for the ops whose results
# cancel; other ops (and a new op of the table) get their results' own row scale.
# softmax_backward: dx_j = y_j * dy_j - y_j * sum(y * dy) is ~ 1e-6 of y * dy when y is
# almost one-hot, and the two backends, one rounding of the float64 sum(y * dy) to the
# row's type apart, then differ by 1e-2 of it (C = 2, float32: 4.947e-6 vs 4.888e-6, an
# ulp of y * dy = 0.5). log_softmax_backward: dx_j = dy_j - p_j * sum(dy), where the two
# terms can nearly cancel in every class of a short row (C = 3, float32: -0.02503953 vs
# -0.02503961 from dy_0 = -0.9196 and p_0 sum(dy) = -0.8946, an ulp of 0.9).
def _log_softmax_backward_terms(logp, dy):
    total = np.abs(np.sum(dy, -1, dtype=np.float64, keepdims=True))
    total = np.where(np.isfinite(total), total, 0)
    return np.maximum(_row_max(dy), _row_max(np.exp(logp.astype(np.float64))) * total)


TERM_SCALES = {
    "softmax_backward": lambda y, dy: _row_max(y) * _row_max(dy),
    "log_softmax_backward": _log_softmax_backward_terms,
}


def rows_op_inputs(op, x, marks):
    """The op's inputs from the table's recipe, with NaN in the other inputs' marked rows."""
    args = op_inputs(op, x)
    for row, kind, j in marks:
        if kind == OTHER_INPUTS_NAN:
            for a in args[1:]:
                if (isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.shape == x.shape
                        and not np.shares_memory(a, x)):
                    a[row, j] = np.nan
    return args


def _call_rows_op(name, args, backend):
    return getattr(fs, name)(*args, backend=backend)


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", _ops.ROW_OPS, ids=op_id)
def test_rows_op(op, dtype, case):
    for x, marks in case.arrays(dtype):
        args = rows_op_inputs(op, x, marks)
        terms = TERM_SCALES[op.name](*args) if op.name in TERM_SCALES else None
        compare(functools.partial(_call_rows_op, op.name, args),
                describe(op=op.name, x=x, marks=marks), terms)


# ---- loss ops: one caller per op of the table ----

def loss_inputs(x, marks, seed=1):
    """Targets (index and probabilities), class weights and a per-row grad_output: a
    target on the special class of every other special row, the marked row and every
    13th row ignored."""
    n_rows, n_classes = x.shape
    rng = np.random.default_rng([seed, n_classes, n_rows])
    index = rng.integers(0, n_classes, n_rows)
    index[5::13] = IGNORE
    for k, (row, kind, j) in enumerate(marks):
        if kind == IGNORED:
            index[row] = IGNORE
        elif j is not None and k % 2 == 0:
            index[row] = j
    prob = rng.random(x.shape).astype(x.dtype)
    prob /= prob.sum(-1, keepdims=True)
    return dict(index=index, prob=prob,
                weight=rng.uniform(0.5, 2.0, n_classes).astype(x.dtype),
                grad_output=rng.uniform(0.5, 2.0, n_rows))


def _one_hot_terms(inputs, smoothing, grad_output):
    """(rows, 1): the one-hot term s (1 - eps) w_y of an index target's gradient. It cancels
    s ((1 - eps) w_y + eps W / C) p_y when p_y is near 1 (C = 1: exactly), and the two
    backends round that difference differently (Numba subtracts it in a second step):
    C = 1, float32, weight ~1.6: 2.4e-7 vs 0, one ulp of the term."""
    index = inputs["index"]
    valid = index != IGNORE
    w_y = np.where(valid, inputs["weight"][np.where(valid, index, 0)], 0).astype(np.float64)
    return (np.abs(grad_output) * (1.0 - smoothing) * w_y)[:, None]


def _prob_terms(x, inputs, smoothing, grad_output):
    """(rows, 1): the two terms s T p_j and s w_j t'_j of a probability target's gradient,
    which cancel where p_j is near w_j t'_j / T (C = 2, float32: -1.6439e-4 vs -1.6451e-4,
    one ulp of terms near 1)."""
    n_classes = x.shape[1]
    wt = inputs["weight"].astype(np.float64) * ((1.0 - smoothing) * inputs["prob"]
                                                + smoothing / n_classes)
    total = wt.sum(-1, keepdims=True)
    p = reference.softmax(x.astype(np.float64))
    return np.abs(grad_output)[:, None] * np.maximum(_row_max(total * p), _row_max(wt))


def _cross_entropy_calls(func, with_grad):
    """Index and probability targets, label smoothing 0 and 0.1, class weights and
    weight=None (the kernels' own uniform-weight path), reduction "none"; with the
    gradient, smoothing 0.1 runs with a per-row grad_output."""
    def calls(x, inputs):
        for target, smoothing, weighted in itertools.product(("index", "prob"), (0.0, 0.1),
                                                             (True, False)):
            weight = inputs["weight"] if weighted else None
            opts = dict(weight=weight, reduction="none", label_smoothing=smoothing)
            grad_output = np.ones(x.shape[0])
            if with_grad and smoothing:
                opts["grad_output"] = grad_output = inputs["grad_output"]
            terms = None
            if with_grad:
                term_inputs = dict(inputs, weight=inputs["weight"] if weighted
                                   else np.ones(x.shape[1], x.dtype))
                terms = (_one_hot_terms(term_inputs, smoothing, grad_output)
                         if target == "index"
                         else _prob_terms(x, term_inputs, smoothing, grad_output))
            yield (f"{target} target, smoothing {smoothing}, weight {weighted}",
                   functools.partial(lambda backend, t, opts: getattr(fs, func)(
                       x, t, backend=backend, **opts), t=inputs[target], opts=opts), terms)
    return calls


def _entropy_with_grad_calls(x, inputs):
    """reduction "none", grad_output 1 and per row. The gradient -g p_j (log p_j + H) has
    log p_j + H carry the absolute error of log(sum(exp(x - m))), an ulp of 1 or so (the
    sums run in the row's type in blocks), however small log p_j + H is: its terms are
    scaled as g p_j (C = 127, float32, a row with p_j = 0.9946 and H = 0.049: -0.04365320
    vs -0.04365317, 3.4e-8 apart)."""
    p = reference.softmax(x.astype(np.float64))
    for label, grad_output in [("grad_output 1", None),
                               ("per-row grad_output", inputs["grad_output"])]:
        opts = {} if grad_output is None else dict(grad_output=grad_output)
        g = np.ones(x.shape[0]) if grad_output is None else grad_output
        yield label, functools.partial(lambda backend, opts: fs.entropy_with_grad(
            x, reduction="none", backend=backend, **opts), opts=opts), \
            np.abs(g)[:, None] * _row_max(p)


# loss op name -> (x, inputs) -> [(label, call(backend) -> output(s), terms)], terms as
# for TERM_SCALES (None: the results' own row scale); a caller whose op is not in the
# table (yet) is not run
LOSS_CALLERS = {
    "cross_entropy": _cross_entropy_calls("cross_entropy", with_grad=False),
    "cross_entropy_with_grad": _cross_entropy_calls("cross_entropy_with_grad", with_grad=True),
    "entropy_with_grad": _entropy_with_grad_calls,
}


def _elementwise_calls(func, options):
    """The elementwise losses (issue 17), reduction "none": the logits as input and the
    probability target; ``options(inputs)``: label -> keyword arguments."""
    def calls(x, inputs):
        for label, opts in options(inputs).items():
            yield label, functools.partial(lambda backend, opts: getattr(fs, func)(
                x, inputs["prob"], reduction="none", backend=backend, **opts), opts=opts), None
    return calls


def _kl_options(inputs):
    return {"probability target": {}, "log-probability target": dict(log_target=True)}


def _bce_options(inputs):
    return {"no weights": {}, "weight and pos_weight": dict(
        weight=inputs["weight"], pos_weight=inputs["weight"][::-1].copy())}


LOSS_CALLERS.update({
    "kl_div": _elementwise_calls("kl_div", _kl_options),
    "kl_div_with_grad": _elementwise_calls("kl_div_with_grad", _kl_options),
    "binary_cross_entropy_with_logits": _elementwise_calls("binary_cross_entropy_with_logits",
                                                           _bce_options),
    "binary_cross_entropy_with_logits_with_grad": _elementwise_calls(
        "binary_cross_entropy_with_logits_with_grad", _bce_options),
})


def _jsd_terms(x, teacher, opts, grad_output):
    """(rows, 1): the terms the JSD gradient is formed from, which cancel. k (Q - P) at
    beta = 0 (C = 2, float32: -8.8923e-4 vs -8.8924e-4 where Q ~ P ~ 0.5); else
    k Q (r - KL(Q || M)) with r = log Q - log M, where r and KL carry the absolute error
    of the float32 log-probabilities, an ulp of |log Q| + |log M| (C = 10, float32:
    7.2613e-5 vs 7.2553e-5): scaled as k Q (1 + |log Q| + |log M|)."""
    beta, inv_t = opts["beta"], 1.0 / opts.get("temperature", 1.0)
    log_q = reference.log_softmax(x.astype(np.float64) * inv_t)
    log_p = reference.log_softmax(teacher.astype(np.float64) * inv_t)
    q, p = np.exp(log_q), np.exp(log_p)
    k = np.abs(grad_output)[:, None] * inv_t
    if beta == 0.0:
        return k * np.maximum(_row_max(q), _row_max(p))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_m = log_p if beta == 1.0 else np.logaddexp(np.log1p(-beta) + log_q,
                                                       np.log(beta) + log_p)
        size = np.where(q == 0, 0.0, q * (1.0 + np.abs(log_q) + np.abs(log_m)))
    return k * _row_max(size)


def _jsd_calls(func, with_grad):
    """The teacher is the student's row with its classes reversed (so the special values
    sit in both arrays); the mixture at temperature 1, the forward KL with a per-row
    grad_output at temperature 2, the reverse KL; reduction "none"."""
    def calls(x, inputs):
        teacher = np.ascontiguousarray(x[:, ::-1])
        for label, opts in [("beta 0.5", dict(beta=0.5)),
                            ("beta 0, T 2", dict(beta=0.0, temperature=2.0)),
                            ("beta 1", dict(beta=1.0))]:
            grad_output = np.ones(x.shape[0])
            if with_grad and opts["beta"] == 0.0:
                opts = dict(opts, grad_output=inputs["grad_output"])
                grad_output = inputs["grad_output"]
            terms = _jsd_terms(x, teacher, opts, grad_output) if with_grad else None
            yield label, functools.partial(lambda backend, opts: getattr(fs, func)(
                x, teacher, reduction="none", backend=backend, **opts), opts=opts), terms
    return calls


LOSS_CALLERS.update({"jsd_logits": _jsd_calls("jsd_logits", with_grad=False),
                     "jsd_logits_with_grad": _jsd_calls("jsd_logits_with_grad",
                                                        with_grad=True)})
LOSS_OPS = [op for op in _ops.OPS.values() if op.kind == "loss"]


def test_every_loss_op_has_a_caller():
    missing = [op.name for op in LOSS_OPS if op.name not in LOSS_CALLERS]
    assert not missing, (f"loss ops of the table without a caller in LOSS_CALLERS (so "
                         f"without a parity test): {missing}")


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", LOSS_OPS, ids=op_id)
def test_loss_op(op, dtype, case):
    assert op.name in LOSS_CALLERS, f"loss op {op.name!r} has no caller in LOSS_CALLERS"
    for x, marks in case.arrays(dtype):
        for label, call, terms in LOSS_CALLERS[op.name](x, loss_inputs(x, marks)):
            compare(call, describe(op=op.name, config=label, x=x, marks=marks), terms)


def test_parity_bound_is_tighter_than_the_reference_bound():
    for dtype, rtol in PARITY_RTOL.items():
        assert rtol < RTOL[dtype] / 4, dtype
