"""fastsoftmax.torch.vocab_parallel_cross_entropy over torch.distributed (gloo).

One spawn of 2 gloo ranks for the module (file rendezvous in tmp_path: no port; spawn,
not fork; 1 kernel thread per rank; a timeout): each rank loops over every option
combination, compares its loss and gradient shard with F.cross_entropy on the full
logits (built from the same seed on both ranks), checks that both ranks hold the same
loss bits, and counts the all-reduces of the forward and backward passes.
"""
import itertools
import json
import os
import time
from datetime import timedelta

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
dist = pytest.importorskip("torch.distributed", reason="this torch has no torch.distributed")
F = torch.nn.functional

WORLD_SIZE = 2
SPLITS = {"500+501": (500, 501), "3+5": (3, 5), "0+7": (0, 7)}


def cases():
    """Every option combination on the 1001-class split, and the main ones on the
    small and empty-shard splits."""
    grid = itertools.product(["index", "probabilities"], [False, True], [0.0, 0.1],
                             ["mean", "sum", "none"], [False, True], ["float32"])
    for kind, weighted, smoothing, reduction, inplace, dtype in grid:
        yield dict(split="500+501", kind=kind, weighted=weighted, smoothing=smoothing,
                   reduction=reduction, inplace=inplace, dtype=dtype)
    for split, kind in itertools.product(["3+5", "0+7"], ["index", "probabilities"]):
        yield dict(split=split, kind=kind, weighted=True, smoothing=0.2, reduction="mean",
                   inplace=False, dtype="float64")
    for kind, inplace in itertools.product(["index", "probabilities"], [False, True]):
        yield dict(split="500+501", kind=kind, weighted=True, smoothing=0.1, reduction="none",
                   inplace=inplace, dtype="bfloat16")


def full_problem(case, seed):
    """The gathered logits, target, class weights and grad_output of a case (float64)."""
    rng = np.random.default_rng(seed)
    n_rows, n_classes = 16, sum(SPLITS[case["split"]])
    logits = rng.standard_normal((n_rows, n_classes)) * 3
    if case["kind"] == "probabilities":
        target = rng.random((n_rows, n_classes))
        target /= target.sum(-1, keepdims=True)
    else:
        target = rng.integers(0, n_classes, n_rows)
        target[[1, 6]] = -100
        target[0] = min(499, n_classes - 1)  # on a shard boundary
    weight = rng.random(n_classes) + 0.5 if case["weighted"] else None
    grad_output = rng.random(n_rows) if case["reduction"] == "none" else 0.7
    return logits, target, weight, grad_output


class AllReduceCounter:
    """Wraps dist.all_reduce: counts the calls and the values they reduce."""

    def __init__(self, all_reduce):
        self.all_reduce, self.calls, self.values = all_reduce, 0, 0

    def __call__(self, tensor, *args, **kwargs):
        self.calls += 1
        self.values += tensor.numel()
        return self.all_reduce(tensor, *args, **kwargs)


def run_case(case, seed, rank, counter):
    """Check one case on this rank; return a list of failure messages."""
    from fastsoftmax.torch import vocab_parallel_cross_entropy
    dtype = getattr(torch, case["dtype"])
    logits, target, weight, grad_output = full_problem(case, seed)
    if dtype == torch.bfloat16:  # the reference on the values the ranks hold
        logits, weight = (torch.tensor(a).to(dtype).double().numpy() for a in (logits, weight))
        if case["kind"] == "probabilities":
            target = torch.tensor(target).to(dtype).double().numpy()
    sizes = SPLITS[case["split"]]
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])

    full = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    full_target = torch.tensor(target) if case["kind"] == "index" else \
        torch.tensor(target, dtype=torch.float64)
    expected = F.cross_entropy(full, full_target,
                               weight=None if weight is None else torch.tensor(weight),
                               reduction=case["reduction"], label_smoothing=case["smoothing"])
    expected.backward(torch.as_tensor(grad_output, dtype=torch.float64).expand(expected.shape))

    leaf = torch.tensor(logits[:, lo:hi], dtype=dtype, requires_grad=True)
    shard = leaf * 1.0 if case["inplace"] else leaf  # inplace=True refuses leaf tensors
    local_target = torch.tensor(target) if case["kind"] == "index" else \
        torch.tensor(target[:, lo:hi], dtype=dtype)
    calls_before, values_before = counter.calls, counter.values
    loss = vocab_parallel_cross_entropy(
        shard, local_target, vocab_start=lo,
        weight=None if weight is None else torch.tensor(weight[lo:hi], dtype=dtype),
        reduction=case["reduction"], label_smoothing=case["smoothing"],
        inplace=case["inplace"])
    forward_calls = counter.calls - calls_before
    forward_values = counter.values - values_before
    loss.backward(torch.as_tensor(grad_output, dtype=loss.dtype).expand(loss.shape))
    backward_calls = counter.calls - calls_before - forward_calls

    failures = []
    n_rows = logits.shape[0]
    if forward_calls > 2 or backward_calls or forward_values > 6 * n_rows + 3:
        failures.append(f"{case}: {forward_calls} all-reduces of {forward_values} values in "
                        f"forward, {backward_calls} in backward")
    tol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-5}[dtype]
    # bfloat16 gradients: rounded once by the kernel and once more by the grad_output
    # scaling, each at most an ulp (2**-8 relative)
    grad_tol = 2.0 ** -7 if dtype == torch.bfloat16 else tol
    scale = float(expected.detach().abs().max())
    try:
        np.testing.assert_allclose(loss.detach().double().numpy(), expected.detach().numpy(),
                                   rtol=tol, atol=tol * scale)
        np.testing.assert_allclose(leaf.grad.double().numpy(), full.grad[:, lo:hi].numpy(),
                                   rtol=grad_tol, atol=tol)
    except AssertionError as exc:
        failures.append(f"{case}: {exc}")
    # the loss of both ranks, bit for bit (outside the counted region)
    both = [torch.empty_like(loss.detach()) for _ in range(WORLD_SIZE)]
    dist.all_gather(both, loss.detach().contiguous())
    if any(b.numpy().tobytes() != both[0].numpy().tobytes() for b in both):
        failures.append(f"{case}: the ranks' losses differ: {both}")
    return failures


def check_target_out_of_range(rank):
    """A target id >= the global class count raises IndexError on every rank (after the
    collectives: both ranks raise at the same point, nobody hangs)."""
    from fastsoftmax.torch import vocab_parallel_cross_entropy
    shard = torch.zeros(2, 500 + rank, requires_grad=True)
    try:
        vocab_parallel_cross_entropy(shard, torch.tensor([3, 1001]), vocab_start=500 * rank)
    except IndexError as exc:
        return [] if "1001 is out of range for 1001 classes" in str(exc) else [str(exc)]
    return ["target 1001 of 1001 classes did not raise"]


def worker(rank, store, result_dir):
    import fastsoftmax
    fastsoftmax.set_num_threads(1)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    counter = AllReduceCounter(dist.all_reduce)
    dist.all_reduce = counter
    failures, n_cases = [], 0
    try:
        for seed, case in enumerate(cases()):
            failures += run_case(case, seed, rank, counter)
            n_cases += 1
        failures += check_target_out_of_range(rank)
    finally:
        dist.all_reduce = counter.all_reduce
        dist.destroy_process_group()
        with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
            json.dump(dict(failures=failures, cases=n_cases), f)


def warm_numba_cache():
    """Compile every kernel the workers use in this process first: the ranks then load
    them from Numba's disk cache instead of compiling them twice at once."""
    from fastsoftmax import vocab_parallel as vp
    rng = np.random.default_rng(0)
    for dtype, weighted, kind in itertools.product(
            [np.float32, np.float64, np.dtype(ml_dtypes.bfloat16)], [False, True],
            ["index", "probabilities"]):
        logits = rng.standard_normal((2, 4)).astype(dtype)
        target = rng.random((2, 4)).astype(dtype) if kind == "probabilities" else \
            np.array([0, 3])
        vp.simulate(logits, target, [2, 2], weight=np.ones(4, dtype) if weighted else None,
                    label_smoothing=0.1)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available")
def test_two_gloo_ranks_match_f_cross_entropy(tmp_path, monkeypatch):
    warm_numba_cache()
    for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    context = torch.multiprocessing.start_processes(
        worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE, join=False,
        start_method="spawn")
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2 gloo ranks did not finish within 300 s")
    n_cases = len(list(cases()))
    for rank in range(WORLD_SIZE):
        with open(tmp_path / f"rank{rank}.json") as f:
            result = json.load(f)
        assert result["cases"] == n_cases, f"rank {rank} stopped early: {result}"
        assert not result["failures"], "\n".join(result["failures"])


def test_errors_before_any_collective():
    """Bad arguments of a rank raise before any collective (no process group here)."""
    from fastsoftmax.torch import vocab_parallel_cross_entropy as vpce
    x = torch.zeros(3, 4)
    target = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"vocab_start must be >= 0.*-2"):
        vpce(x, target, vocab_start=-2)
    with pytest.raises(TypeError, match="vocab_start must be an integer"):
        vpce(x, target, vocab_start="0")
    with pytest.raises(ValueError, match=r"shape \(2,\).*shape \(3, 4\)"):
        vpce(x, target[:2], vocab_start=0)
    with pytest.raises(ValueError, match=r"weight has shape \(5,\).*shape \(3, 4\)"):
        vpce(x, target, vocab_start=0, weight=torch.ones(5))
    with pytest.raises(ValueError, match=r"input has shape \(3, 4, 1\)"):
        vpce(x[..., None], target, vocab_start=0)
    with pytest.raises(TypeError, match="float32, float64, bfloat16 and float16"):
        vpce(x.int(), target, vocab_start=0)
    with pytest.raises(ValueError, match="leaf tensor"):
        vpce(x.requires_grad_(), target, vocab_start=0, inplace=True)
    with pytest.raises(IndexError, match="target value -5"):
        vpce(x, torch.tensor([0, -5, 1]), vocab_start=0)
