"""The examples run and learn."""
import importlib.util
import pathlib

import numpy as np

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
