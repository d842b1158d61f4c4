"""Vocab-parallel cross-entropy (fastsoftmax.vocab_parallel) on simulated ranks.

Every result is compared with the single-process reference on the gathered logits
(fastsoftmax.reference, float64 math) and, where torch is installed, with
F.cross_entropy and its autograd gradient.
"""
import numpy as np
import pytest

from fastsoftmax import reference
from fastsoftmax import vocab_parallel as vp

from conftest import assert_close


def random_sizes(rng, n_classes, n_ranks):
    """Uneven shard sizes adding up to n_classes; some may be 0."""
    cuts = np.sort(rng.integers(0, n_classes + 1, n_ranks - 1))
    return np.diff(np.concatenate([[0], cuts, [n_classes]])).tolist()


def random_case(seed):
    """Logits, target and options of one fuzz case."""
    rng = np.random.default_rng(seed)
    n_ranks = [1, 2, 3, 5][seed % 4]
    n_rows, n_classes = int(rng.integers(0, 9)), int(rng.integers(1, 40))
    dtype = np.float32 if seed % 3 else np.float64
    logits = (rng.standard_normal((n_rows, n_classes)) * rng.choice([1.0, 10.0, 100.0])
              + rng.choice([0.0, 1000.0])).astype(dtype)
    probabilities = seed % 5 == 0
    if probabilities:
        target = rng.random((n_rows, n_classes)).astype(dtype)
        target /= np.maximum(target.sum(-1, keepdims=True), 1e-6)
    else:
        target = rng.integers(0, n_classes, n_rows)
        target[rng.random(n_rows) < 0.25] = -100
    reduction = ["mean", "sum", "none"][seed % 3]
    options = dict(weight=rng.random(n_classes).astype(dtype) + 0.1 if seed % 2 else None,
                   reduction=reduction, label_smoothing=[0.0, 0.1, 1.0][(seed // 3) % 3],
                   grad_output=(rng.random(n_rows) if reduction == "none" and seed % 4 == 1
                                else 1.5))
    sizes = random_sizes(rng, n_classes, n_ranks)
    return logits, target, sizes, options


def check_against_reference(logits, target, sizes, inplace=False, **options):
    losses, grads, group = vp.simulate(logits, target, sizes, inplace=inplace, **options)
    expected_loss, expected_grad = reference.cross_entropy_with_grad(logits, target, **options)
    context = f"sizes={sizes} options={options}"
    for loss in losses:  # every rank: the same bits
        assert np.asarray(loss).tobytes() == np.asarray(losses[0]).tobytes(), context
    assert_close(losses[0], expected_loss, context)
    assert_close(np.concatenate(grads, axis=-1), expected_grad, context)
    assert [op for op, _ in group.calls] == ["max", "sum"], context
    n_rows = int(np.prod(logits.shape[:-1]))
    assert sum(size for _, size in group.calls) <= 6 * n_rows + 4, (group.calls, context)
    return losses, grads


@pytest.mark.parametrize("seed", range(48))
def test_simulated_ranks_match_the_gathered_reference(seed):
    logits, target, sizes, options = random_case(seed)
    check_against_reference(logits, target, sizes, inplace=seed % 7 == 0, **options)


@pytest.mark.parametrize("seed", range(0, 48, 5))
def test_simulated_ranks_match_torch(seed):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    F = torch.nn.functional
    logits, target, sizes, options = random_case(seed)
    losses, grads, _ = vp.simulate(logits, target, sizes, **options)
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    weight = options["weight"]
    loss = F.cross_entropy(x, torch.from_numpy(target).to(x.dtype if target.dtype.kind == "f"
                                                          else torch.int64),
                           weight=None if weight is None else torch.tensor(weight, dtype=x.dtype),
                           reduction=options["reduction"],
                           label_smoothing=options["label_smoothing"])
    loss.backward(torch.as_tensor(options["grad_output"], dtype=x.dtype).expand(loss.shape))
    tol = 2e-5 if logits.dtype == np.float32 else 1e-10
    expected = loss.detach().numpy()
    scale = max(1.0, float(np.max(np.abs(expected[np.isfinite(expected)]), initial=0)))
    np.testing.assert_allclose(np.asarray(losses[0], np.float64), expected,
                               rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(np.concatenate(grads, axis=-1), x.grad.numpy(), rtol=tol,
                               atol=tol)


def test_uneven_split_1001_classes_into_500_and_501():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((64, 1001)).astype(np.float32)
    target = rng.integers(0, 1001, 64)
    target[[0, 1]] = [499, 500]  # the last class of rank 0, the first of rank 1
    target[5] = -100
    for options in (dict(), dict(label_smoothing=0.2, weight=rng.random(1001) + 0.5),
                    dict(reduction="none")):
        check_against_reference(logits, target, [500, 501], **options)


def test_smoothing_uses_the_global_class_count():
    """Megatron #737: smoothing over each rank's own classes gives rank-dependent,
    wrong losses; here the loss at P = 2 and 3 is the one of P = 1."""
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((6, 30))
    target = rng.integers(0, 30, 6)
    single, _ = check_against_reference(logits, target, [30], label_smoothing=0.3)
    for sizes in ([10, 20], [5, 0, 25]):
        losses, _ = check_against_reference(logits, target, sizes, label_smoothing=0.3)
        assert losses[0] == pytest.approx(single[0], rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_rows_split_over_threads(dtype):
    """Few rows of >= 65536 classes on a rank take the kernels' split-row path."""
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((2, 140000)).astype(dtype)
    target = np.array([3, 139999])
    check_against_reference(logits, target, [70001, 69999], label_smoothing=0.1)
    check_against_reference(logits, target, [140000, 0])


def test_infinite_and_nan_logits_propagate_as_in_the_reference():
    logits = np.zeros((4, 6))
    logits[0, :3] = -np.inf      # rank 0's whole row is -inf: it adds nothing
    logits[1, 4] = np.nan        # NaN on rank 1 only: the whole row is NaN
    logits[2, 1] = np.inf        # +inf: NaN, as torch
    logits[3, :] = -np.inf       # every class -inf: NaN
    target = np.array([4, 0, 2, 5])
    losses, grads, _ = vp.simulate(logits, target, [3, 3], reduction="none")
    expected_loss, expected_grad = reference.cross_entropy_with_grad(logits, target,
                                                                     reduction="none")
    np.testing.assert_array_equal(np.isnan(losses[0]), np.isnan(expected_loss))
    np.testing.assert_allclose(losses[0][0], expected_loss[0])
    np.testing.assert_allclose(np.concatenate(grads, -1)[0], expected_grad[0])
    assert np.isnan(np.concatenate(grads, -1)[1:]).all()


def test_every_target_ignored_gives_nan_mean_and_zero_gradient():
    logits = np.random.default_rng(0).standard_normal((3, 8))
    target = np.full(3, -100)
    losses, grads, _ = vp.simulate(logits, target, [5, 3])
    assert np.isnan(losses[0]) and np.isnan(losses[1])
    assert not np.concatenate(grads, -1).any()
    losses, grads, _ = vp.simulate(logits, target, [5, 3], reduction="sum")
    assert losses[0] == 0.0


def test_ignore_index_inside_the_class_range():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((10, 12))
    target = rng.integers(0, 12, 10)
    target[:3] = 7
    check_against_reference(logits, target, [7, 5], ignore_index=7, label_smoothing=0.1,
                            weight=rng.random(12))


def test_no_rows():
    losses, grads, _ = vp.simulate(np.zeros((0, 5)), np.zeros(0, np.int64), [2, 3])
    assert np.isnan(losses[0]) and [g.shape for g in grads] == [(0, 2), (0, 3)]


def test_inputs_are_not_modified_unless_inplace():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((5, 9))
    target = rng.integers(0, 9, 5)
    kept = logits.copy()
    group = vp.SimulatedGroup(1)
    loss, grad = vp.cross_entropy_with_grad(logits, target, vocab_start=0, comm=group.ranks[0])
    np.testing.assert_array_equal(logits, kept)
    loss_inplace, grad_inplace = vp.cross_entropy_with_grad(logits, target, vocab_start=0,
                                                            comm=group.ranks[0], inplace=True)
    assert grad_inplace is logits
    np.testing.assert_array_equal(grad_inplace, grad)
    assert loss_inplace == loss
    out = np.empty_like(kept)
    _, grad_out = vp.cross_entropy_with_grad(kept, target, vocab_start=0, comm=group.ranks[0],
                                             out=out)
    assert grad_out is out


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((4, 11))
    target = rng.integers(0, 11, 4)
    target[1] = -100
    weight = rng.random(11) + 0.5
    sizes = [4, 0, 7]
    options = dict(weight=weight, label_smoothing=0.15, reduction="mean")
    _, grads, _ = vp.simulate(logits, target, sizes, **options)
    grad = np.concatenate(grads, axis=-1)
    h = 1e-6
    for i, j in [(0, 0), (0, 3), (0, 4), (2, 10), (3, int(target[3])), (1, 5)]:
        up, down = logits.copy(), logits.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (vp.simulate(up, target, sizes, **options)[0][0]
                   - vp.simulate(down, target, sizes, **options)[0][0]) / (2 * h)
        assert grad[i, j] == pytest.approx(numeric, abs=1e-7), (i, j)


def stats_of(logits, target, vocab_start, **options):
    return vp.local_stats(logits, target, vocab_start=vocab_start, **options)


def test_errors_before_any_kernel():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="vocab_start must be >= 0.*-1"):
        stats_of(x, np.zeros(3, np.int64), -1)
    with pytest.raises(TypeError, match="vocab_start must be an integer"):
        stats_of(x, np.zeros(3, np.int64), 1.5)
    with pytest.raises(ValueError, match=r"shape \(4,\).*shape \(3, 4\)"):
        stats_of(x, np.zeros(4, np.int64), 0)
    with pytest.raises(ValueError, match=r"weight has shape \(5,\).*shape \(3, 4\)"):
        stats_of(x, np.zeros(3, np.int64), 0, weight=np.ones(5))
    with pytest.raises(ValueError, match=r"probability target has shape \(3, 5\).*\(3, 4\)"):
        stats_of(x, np.zeros((3, 5)), 0)
    with pytest.raises(IndexError, match="target value -3"):
        stats_of(x, np.array([0, -3, 1]), 0)
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        stats_of(x.astype(np.int32), np.zeros(3, np.int64), 0)
    with pytest.raises(ValueError, match="reduction"):
        stats_of(x, np.zeros(3, np.int64), 0, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        stats_of(x, np.zeros(3, np.int64), 0, label_smoothing=2.0)
    with pytest.raises(ValueError, match="read-only"):
        x.flags.writeable = False
        stats_of(x, np.zeros(3, np.int64), 0, inplace=True)


def test_target_beyond_the_global_class_count_raises_on_every_rank():
    logits = np.zeros((2, 7))
    with pytest.raises(IndexError, match="target value 7 is out of range for 7 classes"):
        vp.simulate(logits, np.array([1, 7]), [3, 4])


def test_out_sharing_a_probability_target_is_refused():
    """As cross_entropy_with_grad: the kernel reads a target row after it starts writing
    the gradient row, so out=target would give a wrong gradient."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((3, 70))
    target = reference.softmax(rng.standard_normal((3, 70)))
    kept = target.copy()
    with pytest.raises(ValueError, match="out shares memory with target"):
        vp.local_stats(logits, target, vocab_start=0, out=target)
    np.testing.assert_array_equal(target, kept)


def test_an_overlap_balanced_by_a_gap_raises():
    """Shards [0, 20), [10, 30), [40, 50): sizes adding up to 50 and the last ending at 50,
    but classes 10-19 twice and 30-39 never (before, every rank returned a wrong loss)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 50))
    target = np.array([35, 1, 15, 45])
    shards = [(0, 20), (10, 30), (40, 50)]
    group = vp.SimulatedGroup(3)
    errors = [None] * 3

    def run(rank):
        lo, hi = shards[rank]
        try:
            vp.cross_entropy_with_grad(x[:, lo:hi].copy(), target, vocab_start=lo,
                                       comm=group.ranks[rank])
        except ValueError as exc:
            errors[rank] = str(exc)

    import threading
    threads = [threading.Thread(target=run, args=(r,)) for r in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rank, (lo, hi) in enumerate(shards):
        assert errors[rank] is not None and "some overlap and leave a gap" in errors[rank]
        assert f"vocab_start is {lo} with {hi - lo} classes" in errors[rank]


def test_shards_that_do_not_tile_the_classes_raise():
    """Both ranks claim classes [0, 4): the sizes add up to 8 but the last ends at 4."""
    x = np.zeros((2, 4))
    target = np.array([0, 1])
    group = vp.SimulatedGroup(2)
    stats = [stats_of(x.copy(), target, 0), stats_of(x.copy(), target, 0)]
    errors = []

    def run(rank):
        try:
            vp.combine(stats[rank], group.ranks[rank])
        except ValueError as exc:
            errors.append(str(exc))

    import threading
    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 2 and "add up to 8 but the last ends at 4" in errors[0]
