"""Softmax regression on scikit-learn's digits (8x8 images, 10 classes), NumPy only.

The model is logits = X @ W + b; each step calls fastsoftmax.cross_entropy_with_grad
once for the mean loss and the gradient w.r.t. the logits, then backpropagates
through the linear layer by hand. Reports held-out accuracy.

Run: python examples/digits_numpy.py [--epochs 300] [--backend numba]
"""
import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastsoftmax as fs


def train(epochs=300, lr=0.5, weight_decay=1e-4, batch=128, seed=0, backend=None):
    """Train with minibatch SGD; return (final training loss, held-out accuracy)."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25,
                                                        random_state=seed, stratify=digits.target)
    rng = np.random.default_rng(seed)
    weight = np.zeros((x.shape[1], 10), np.float32)
    bias = np.zeros(10, np.float32)
    loss = np.nan
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            logits = x_train[idx] @ weight + bias
            loss, grad = fs.cross_entropy_with_grad(logits, y_train[idx], inplace=True,
                                                    backend=backend)
            weight -= lr * (x_train[idx].T @ grad + weight_decay * weight)
            bias -= lr * grad.sum(axis=0)
    predictions = np.argmax(x_test @ weight + bias, axis=1)
    return float(loss), float(np.mean(predictions == y_test))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--backend", default=None)
    args = parser.parse_args()
    loss, accuracy = train(epochs=args.epochs, backend=args.backend)
    print(f"digits: last minibatch loss {loss:.4f}, held-out accuracy {accuracy:.3f} "
          f"(450 test images, backend {args.backend or fs.get_backend()})")


if __name__ == "__main__":
    main()
