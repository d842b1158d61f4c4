"""Seed 003's softmax classification in PyTorch, once with F.cross_entropy and once with
fastsoftmax.torch.cross_entropy, from the same initial weights; prints both loss curves.

8 samples x 4 features, 3 classes, nn.Linear(4, 3), SGD lr 0.1, 1000 epochs.

Run: python examples/seed003_torch.py
"""
import torch
import torch.nn.functional as F

import fastsoftmax.torch as fst

X_TRAIN = torch.FloatTensor([[1, 2, 1, 1], [2, 1, 3, 2], [3, 1, 3, 4], [4, 1, 5, 5],
                             [1, 7, 5, 5], [1, 2, 5, 6], [1, 6, 6, 6], [1, 7, 7, 7]])
Y_TRAIN = torch.LongTensor([2, 2, 2, 1, 1, 1, 0, 0])


def train(loss_fn, epochs=1000, lr=0.1, seed=1):
    """Train from a fixed seed; return the loss of every epoch."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs + 1):
        cost = loss_fn(model(X_TRAIN), Y_TRAIN)
        optimizer.zero_grad()
        cost.backward()
        optimizer.step()
        losses.append(cost.item())
    return losses


def main():
    torch_losses = train(F.cross_entropy)
    fast_losses = train(fst.cross_entropy)
    print("epoch   F.cross_entropy   fastsoftmax.torch.cross_entropy")
    for epoch in range(0, len(torch_losses), 100):
        print(f"{epoch:5d}   {torch_losses[epoch]:15.6f}   {fast_losses[epoch]:15.6f}")
    gap = max(abs(a - b) for a, b in zip(torch_losses, fast_losses))
    print(f"largest difference over all epochs: {gap:.2e}")


if __name__ == "__main__":
    main()
