"""Seed 003's softmax classification, trained with fastsoftmax kernels and NumPy only.

8 samples with 4 features, 3 classes, a linear layer, plain SGD (lr 0.1) for 1000
epochs: the same problem as the PyTorch example in the project's seed notes. The
fused kernel returns the mean cross-entropy and its gradient w.r.t. the logits in
one call; the rest is the chain rule through ``logits = x @ W + b``.

Run: python examples/softmax_regression.py [--backend numba|numpy]
"""
import argparse

import numpy as np

import fastsoftmax as fs

X_TRAIN = np.array([[1, 2, 1, 1], [2, 1, 3, 2], [3, 1, 3, 4], [4, 1, 5, 5],
                    [1, 7, 5, 5], [1, 2, 5, 6], [1, 6, 6, 6], [1, 7, 7, 7]], dtype=np.float32)
Y_TRAIN = np.array([2, 2, 2, 1, 1, 1, 0, 0])


def train(epochs=1000, lr=0.1, seed=0, backend=None, report_every=100):
    """Train; return the list of (epoch, loss) reported and the final accuracy."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(X_TRAIN.shape[1])  # nn.Linear's default init range
    weight = rng.uniform(-bound, bound, (4, 3)).astype(np.float32)
    bias = rng.uniform(-bound, bound, 3).astype(np.float32)
    history = []
    for epoch in range(epochs + 1):
        logits = X_TRAIN @ weight + bias
        loss, grad_logits = fs.cross_entropy_with_grad(logits, Y_TRAIN, inplace=True,
                                                       backend=backend)
        weight -= lr * (X_TRAIN.T @ grad_logits)
        bias -= lr * grad_logits.sum(axis=0)
        if epoch % report_every == 0:
            history.append((epoch, float(loss)))
    accuracy = float(np.mean(np.argmax(X_TRAIN @ weight + bias, axis=1) == Y_TRAIN))
    return history, accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="fastsoftmax backend (default: auto)")
    parser.add_argument("--epochs", type=int, default=1000)
    args = parser.parse_args()
    history, accuracy = train(epochs=args.epochs, backend=args.backend)
    print(f"backend: {args.backend or fs.get_backend()}")
    for epoch, loss in history:
        print(f"Epoch {epoch:4d}/{args.epochs} Cost: {loss:.6f}")
    print(f"training accuracy: {accuracy:.3f}")


if __name__ == "__main__":
    main()
