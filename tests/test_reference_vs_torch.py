"""The oracle is not self-certified: the reference against torch.nn.functional.cross_entropy.

torch puts classes on dim 1; the reference puts them last, so logits (N, d, C) here
are (N, C, d) for torch.
"""
import itertools

import numpy as np
import pytest

from fastsoftmax import reference
from conftest import ROW_OPS, op_id, op_inputs

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
F = torch.nn.functional


def torch_cross_entropy(x, t, probabilities, grad_output, **opts):
    """Loss and d(loss * grad_output)/dx from torch, in the reference's layout."""
    xt = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
    tt = torch.tensor(np.moveaxis(t, -1, 1) if probabilities else t)
    if opts.get("weight") is not None:
        opts = dict(opts, weight=torch.tensor(opts["weight"]))
    loss = F.cross_entropy(xt, tt, **opts)
    (loss * torch.tensor(grad_output)).sum().backward()
    return loss.detach().numpy(), np.moveaxis(xt.grad.numpy(), 1, -1)


# ignore_index applies to index targets only, so probability targets take the default.
CASES = [case for case in itertools.product([False, True], [None, "weight"], [-100, 2],
                                            ["mean", "sum", "none"], [0.0, 0.1, 1.0],
                                            [np.float32, np.float64])
         if not (case[0] and case[2] != -100)]


@pytest.mark.parametrize("probabilities,weight,ignore_index,reduction,label_smoothing,dtype", CASES)
def test_reference_matches_torch(probabilities, weight, ignore_index, reduction, label_smoothing,
                                 dtype):
    rng = np.random.default_rng(0)
    shape = (6, 3, 5)
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    if probabilities:
        t = rng.random(shape).astype(dtype)
        t /= t.sum(-1, keepdims=True)
    else:
        t = rng.integers(0, shape[-1], shape[:-1])
        t[0, 0] = t[1, 2] = ignore_index
    opts = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                weight=rng.uniform(0.5, 2.0, shape[-1]).astype(dtype) if weight else None)
    g = rng.standard_normal(shape[:-1]) if reduction == "none" else np.float64(1.3)
    want_loss, want_grad = torch_cross_entropy(x, t, probabilities, g.astype(dtype), **opts)
    loss, grad = reference.cross_entropy_with_grad(x, t, grad_output=g, **opts)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(loss, want_loss, **tol)
    np.testing.assert_allclose(grad, want_grad, **tol)
    assert np.asarray(loss).dtype == want_loss.dtype


@pytest.mark.parametrize("op", ROW_OPS, ids=op_id)
def test_rows_ops_match_torch(op):
    x = np.random.default_rng(1).standard_normal((4, 3, 9)) * 5
    args = op_inputs(op, x)
    want = op.torch(torch, *(torch.tensor(a) for a in args)).numpy()
    np.testing.assert_allclose(getattr(reference, op.name)(*args), want, rtol=1e-12, atol=1e-13)
