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
