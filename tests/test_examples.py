"""The examples run and learn."""
import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_softmax_regression_learns_and_backends_agree(backend):
    demo = load("softmax_regression")
    history, accuracy = demo.train(backend=backend)
    reference_history, _ = demo.train(backend="numpy")
    losses = np.array([loss for _, loss in history])
    assert losses[-1] < 0.35 * losses[0]
    assert accuracy >= 0.75
    np.testing.assert_allclose(losses, [loss for _, loss in reference_history], rtol=1e-4)


def test_seed003_torch_curves_agree_every_epoch():
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    import torch.nn.functional as F
    import fastsoftmax.torch as fst
    demo = load("seed003_torch")
    theirs, ours = demo.train(F.cross_entropy), demo.train(fst.cross_entropy)
    assert len(ours) == 1001
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert ours[-1] < 0.3 * ours[0]


def test_digits_numpy_trainer_generalises():
    pytest.importorskip("sklearn",
                        reason="scikit-learn is not installed (pip install scikit-learn)")
    demo = load("digits_numpy")
    loss, accuracy = demo.train(epochs=60)
    assert accuracy > 0.9
    assert loss < 0.5


def test_large_vocab_step_runs_and_variants_agree():
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    demo = load("large_vocab_step")
    results = demo.step_times(hidden=16, vocab=2048, batch=8, repeat=1, threads=1)
    losses = [loss for _, loss, _ in results.values()]
    norms = [norm for _, _, norm in results.values()]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
    np.testing.assert_allclose(norms, norms[0], rtol=1e-4)


def test_causal_lm_curves_agree_and_loss_falls():
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    demo = load("causal_lm")
    sizes = dict(steps=30, batch=8, seq=32, vocab=1024, hidden=32, phrases=16)
    theirs, _ = demo.train("torch", **sizes)
    ours, seconds = demo.train("fastsoftmax", **sizes)
    assert len(ours) == len(seconds) == 30
    # fp32, same weights and data: only the summation order differs (chunked GEMMs, the
    # kernel's logsumexp), so a step's loss moves by a few ulps of ~7 (4.8e-7 each); measured
    # gap <= 1e-6 over 40 steps at seeds 0-2. 1e-4 leaves room for AdamW to amplify it over
    # more steps; a missing bias gradient moves the loss by 5e-2 here. (AdamW hides a uniform
    # gradient scale: exact gradients are tested in test_torch_linear_cross_entropy.py.)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert ours[-1] < 0.5 * ours[0]


def test_causal_lm_main_reports_curves_time_and_memory(capsys):
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    if not pathlib.Path("/proc/self/clear_refs").exists():
        pytest.skip("the peak memory is read from /proc (Linux only)")
    demo = load("causal_lm")
    demo.main(["--steps", "4", "--every", "2", "--batch", "2", "--seq", "16", "--vocab", "256",
               "--hidden", "16", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[0] == "step")
    assert [line.split()[0] for line in lines[header + 1:header + 4]] == ["1", "3", "4"]
    assert lines[header + 4].startswith("largest loss difference over 4 steps")
    for name in ("F.linear+F.cross_entropy", "fst.linear_cross_entropy"):
        (line,) = [line for line in lines if line.startswith(name)]
        assert "median step" in line and "MiB above the resident set" in line


def vocab_parallel_rank(rank, store, result_dir):
    """One rank of examples/vocab_parallel_torchrun.py, as torchrun would run it."""
    import json
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        curves = load("vocab_parallel_torchrun").train(rank, 2, steps=8)
    finally:
        dist.destroy_process_group()
    with open(f"{result_dir}/rank{rank}.json", "w") as f:
        json.dump(curves, f)


def test_vocab_parallel_torchrun_example_matches_the_unsplit_model(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch",
                                reason="torch is not installed (pip install torch==2.13.0)")
    import json
    import time
    for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    context = torch.multiprocessing.start_processes(
        vocab_parallel_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2,
        join=False, start_method="spawn")
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the example's 2 ranks did not finish within 300 s")
    curves = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert curves[0] == curves[1]  # both ranks: the same loss bits
    ours, theirs = np.array(curves[0]).T
    assert len(ours) == 8 and ours[-1] < 0.8 * ours[0]
    # fp32, same weights: only the summation order differs (measured gap 4.8e-7 over 20 steps)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
