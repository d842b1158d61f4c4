"""fastsoftmax.torch.sampled_softmax_loss / SampledSoftmaxLoss: autograd against a plain-torch
implementation of TensorFlow's graph on the same sampled values, gradcheck in float64,
touched rows only, sparse gradients, the module's sampler."""
import itertools

import numpy as np
import pytest

import fastsoftmax as fs

torch = pytest.importorskip("torch")
fst = pytest.importorskip("fastsoftmax.torch")
F = torch.nn.functional

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-11, atol=1e-12)}


def plain_torch(weights, biases, labels, inputs, values, remove_hits):
    """TensorFlow's _compute_sampled_logits + softmax cross-entropy in plain torch ops."""
    sampled, true_count, sampled_count = (torch.as_tensor(v) for v in values)
    num_true = labels.shape[1]
    true_logits = (inputs[:, None, :] * weights[labels]).sum(-1) + biases[labels] \
        - torch.log(true_count).to(inputs.dtype)
    sampled_logits = inputs @ weights[sampled].T + biases[sampled] \
        - torch.log(sampled_count).to(inputs.dtype)
    if remove_hits:
        hit = (labels[:, :, None] == sampled[None, None, :]).any(1)
        sampled_logits = sampled_logits + hit * -torch.finfo(torch.float32).max
    logits = torch.cat([true_logits, sampled_logits], 1)
    target = torch.cat([torch.full_like(true_logits, 1 / num_true),
                        torch.zeros_like(sampled_logits)], 1)
    return F.cross_entropy(logits, target, reduction="none")


def problem(dtype=torch.float64, num_true=1, n=11, d=4, classes=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(classes, d, generator=g, dtype=dtype)
    biases = torch.randn(classes, generator=g, dtype=dtype)
    inputs = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(0, 6, (n, num_true), generator=g)
    return weights, biases, labels, inputs


def leaves(*tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("dtype, num_true, remove_hits, unique, sparse", list(itertools.product(
    [torch.float32, torch.float64], [1, 2], [True, False], [True, False], [False, True])))
def test_autograd_matches_plain_torch(dtype, num_true, remove_hits, unique, sparse):
    weights, biases, labels, inputs = problem(dtype, num_true)
    values = fs.log_uniform_candidate_sampler(labels.numpy(), num_true, 10, unique, 30, seed=2)
    grad_output = torch.linspace(-1, 2, labels.shape[0], dtype=dtype)
    ours = leaves(weights, biases, inputs)
    loss = fst.sampled_softmax_loss(ours[0], ours[1], labels, ours[2], 10, 30,
                                    num_true=num_true, sampled_values=values,
                                    remove_accidental_hits=remove_hits, sparse=sparse)
    (loss * grad_output).sum().backward()
    theirs = leaves(weights, biases, inputs)
    expected = plain_torch(theirs[0], theirs[1], labels, theirs[2], values, remove_hits)
    (expected * grad_output).sum().backward()
    context = f"{dtype} num_true={num_true} hits={remove_hits} unique={unique} sparse={sparse}"
    torch.testing.assert_close(loss, expected.detach(), **TOL[dtype], msg=context)
    for name, a, b in zip(("weights", "biases", "inputs"), ours, theirs):
        grad = a.grad
        if sparse and name != "inputs":
            assert grad.is_sparse, f"{name} {context}: a sparse gradient"
            grad = grad.to_dense()
        torch.testing.assert_close(grad, b.grad, **TOL[dtype], msg=f"{name} {context}")


@pytest.mark.parametrize("num_true", [1, 2])
def test_gradcheck(num_true):
    weights, biases, labels, inputs = problem(torch.float64, num_true, n=5, d=3, classes=9)
    values = (np.array([0, 2, 2, 5, 8]), np.full((5, num_true), 0.4), np.linspace(0.3, 1, 5))

    def loss(w, b, x):
        return fst.sampled_softmax_loss(w, b, labels, x, 5, 9, num_true=num_true,
                                        sampled_values=values)

    assert torch.autograd.gradcheck(loss, tuple(leaves(weights, biases, inputs)))


def test_gradient_touches_only_true_and_sampled_rows():
    head = fst.SampledSoftmaxLoss(500, 8, 20, seed=0, reduction="sum", dtype=torch.float64)
    labels = torch.randint(0, 500, (6,), generator=torch.Generator().manual_seed(1))
    values = head.sample(labels)
    head(torch.randn(6, 8, dtype=torch.float64), labels, sampled_values=values).backward()
    touched = np.union1d(labels.numpy(), values[0])
    nonzero = torch.nonzero(head.weight.grad.abs().sum(1)).reshape(-1).numpy()
    assert set(nonzero) <= set(touched) and nonzero.size
    assert set(torch.nonzero(head.bias.grad).reshape(-1).numpy()) <= set(touched)


def test_module_sampler_and_reductions():
    torch.manual_seed(0)
    first = fst.SampledSoftmaxLoss(100, 5, 7, seed=3)
    second = fst.SampledSoftmaxLoss(100, 5, 7, seed=3)
    labels = torch.tensor([[1], [50], [99]])
    a, b = first.sample(labels), second.sample(labels)
    np.testing.assert_array_equal(a[0], b[0])  # same seed, same draws
    assert not np.array_equal(a[0], first.sample(labels)[0])  # the stream advances
    assert first.weight.shape == (100, 5) and first.bias.shape == (100,)
    inputs = torch.randn(3, 5)
    values = first.sample(labels)
    per_row = first(inputs, labels, sampled_values=values)
    assert per_row.shape == (3,)
    expected = fs.sampled_softmax_loss(first.weight.detach().numpy(),
                                       first.bias.detach().numpy(), labels.numpy(),
                                       inputs.numpy(), 7, 100, sampled_values=values)
    np.testing.assert_allclose(per_row.detach().numpy(), expected, rtol=1e-6)
    first.reduction = "mean"
    torch.testing.assert_close(first(inputs, labels[:, 0], sampled_values=values),
                               per_row.mean())
    with torch.no_grad():
        assert first(inputs, labels, sampled_values=values).grad_fn is None
    with pytest.raises(ValueError, match="reduction must be one of"):
        fst.SampledSoftmaxLoss(10, 2, 3, reduction="batchmean")


def test_retain_graph_backward_twice():
    weights, biases, inputs = leaves(*problem()[:2], problem()[3])
    labels = problem()[2]
    values = fs.log_uniform_candidate_sampler(labels.numpy(), 1, 8, True, 30, seed=0)
    loss = fst.sampled_softmax_loss(weights, biases, labels, inputs, 8, 30,
                                    sampled_values=values).sum()
    loss.backward(retain_graph=True)
    once = inputs.grad.clone()
    loss.backward()
    torch.testing.assert_close(inputs.grad, 2 * once)


def test_errors():
    weights, biases, labels, inputs = problem()
    with pytest.raises(ValueError, match=r"labels has shape \(11, 1\) and inputs has shape "
                                         r"\(10, 4\)"):
        fst.sampled_softmax_loss(weights, biases, labels, inputs[:10], 5, 30)
    with pytest.raises(TypeError, match="weights must be a torch.Tensor"):
        fst.sampled_softmax_loss(weights.numpy(), biases, labels, inputs, 5, 30)
    with pytest.raises(TypeError, match="weights has dtype torch.int64"):
        fst.sampled_softmax_loss(weights.long(), biases, labels, inputs, 5, 30)
    with pytest.raises(ValueError, match="num_sampled=31 is more than num_classes=30"):
        fst.sampled_softmax_loss(weights, biases, labels, inputs, 31, 30)
