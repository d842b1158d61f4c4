"""float16 and bfloat16 (issue 18) in the sampled softmax: 16-bit weights, biases and inputs
are converted to float32 as they are gathered, the logits and gradients are float32, and
the returned gradients are rounded once to the inputs' dtype (the loss stays float32).
Checked on every backend against the reference (float64 math from the same 16-bit values),
and the torch wrapper with 16-bit tensors and autograd.
"""
import ml_dtypes
import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import reference

from conftest import assert_within_one_ulp_16

DTYPES = [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)]
EPS32 = float(np.finfo(np.float32).eps)


def _problem(dtype, n=23, d=16, classes=300, num_true=1, seed=0):
    """Labels among the frequent classes, so the log-uniform sampler hits some of them."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((classes, d)).astype(dtype)
    biases = rng.standard_normal(classes).astype(dtype)
    inputs = rng.standard_normal((n, d)).astype(dtype)
    labels = rng.integers(0, 10, (n, num_true))
    return weights, biases, labels, inputs


def _gradient_allowance(expected, terms):
    """Float32 rounding of a gradient that sums ``terms`` products (it cancels: softmax
    minus target), relative to the largest gradient."""
    scale = np.max(np.abs(expected.astype(np.float64)), initial=1.0)
    return 8 * EPS32 * np.sqrt(terms) * scale


@pytest.mark.parametrize("per_row", [False, True], ids=["grad_output=1", "per-row grad_output"])
@pytest.mark.parametrize("num_true", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype, num_true, per_row, backend):
    weights, biases, labels, inputs = _problem(dtype, num_true=num_true)
    num_sampled = 40
    values = fs.log_uniform_candidate_sampler(labels, num_true, num_sampled, True, 300, seed=3)
    assert fs.sampled_softmax.accidental_hits(labels, values[0])[0].size, "no accidental hit"
    grad_output = np.linspace(-1.0, 2.0, labels.shape[0]) if per_row else None
    args = (weights, biases, labels, inputs, num_sampled, 300)
    options = dict(num_true=num_true, sampled_values=values, grad_output=grad_output)
    context = f"{dtype} num_true={num_true} per_row={per_row} {backend}"
    loss, grad_inputs, (w_ids, w_rows), (b_ids, b_rows) = fs.sampled_softmax_loss_with_grad(
        *args, backend=backend, **options)
    ref_loss, ref_inputs, (ref_w_ids, ref_w_rows), (ref_b_ids, ref_b_rows) = \
        reference.sampled_softmax_loss_with_grad(*args, **options)
    assert loss.dtype == np.float32 and ref_loss.dtype == np.float32, context
    np.testing.assert_allclose(loss, ref_loss, rtol=64 * EPS32, atol=64 * EPS32,
                               err_msg=f"loss {context}")
    np.testing.assert_array_equal(w_ids, ref_w_ids, err_msg=context)
    np.testing.assert_array_equal(b_ids, ref_b_ids, err_msg=context)
    terms = num_true + num_sampled
    for name, actual, expected in (("grad_inputs", grad_inputs, ref_inputs),
                                   ("weight rows", w_rows, ref_w_rows),
                                   ("bias", b_rows, ref_b_rows)):
        assert actual.dtype == dtype, f"{name} {context}: dtype {actual.dtype}"
        assert_within_one_ulp_16(actual, expected, f"{name} {context}",
                                   _gradient_allowance(expected, terms))
    del options["grad_output"]
    alone = fs.sampled_softmax_loss(*args, backend=backend, **options)
    np.testing.assert_array_equal(alone, loss, err_msg=f"loss alone {context}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inputs_are_not_modified_and_mixed_dtypes_are_refused(dtype, backend):
    weights, biases, labels, inputs = _problem(dtype)
    copies = [a.copy() for a in (weights, biases, labels, inputs)]
    fs.sampled_softmax_loss_with_grad(weights, biases, labels, inputs, 20, 300, seed=1,
                                      backend=backend)
    for before, after in zip(copies, (weights, biases, labels, inputs)):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(TypeError, match=f"weights has dtype float32 but inputs has dtype {dtype}"):
        fs.sampled_softmax_loss(weights.astype(np.float32), biases, labels, inputs, 20, 300,
                                backend=backend)



@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_autograd_matches_the_reference(dtype, sparse):
    """16-bit tensors through fastsoftmax.torch: the loss is the NumPy API's, and the
    gradients autograd returns (in the tensors' dtype) are within the NumPy API's bound of
    the reference. Autograd scales the float32 gradient by grad_output after the kernel,
    the NumPy API inside it, so the two may round 1 ulp apart."""
    torch = pytest.importorskip("torch")
    fst = pytest.importorskip("fastsoftmax.torch")
    from fastsoftmax._torch_tensors import to_numpy, to_tensor
    weights, biases, labels, inputs = _problem(dtype, num_true=2)
    num_sampled = 30
    args = (weights, biases, labels, inputs, num_sampled, 300)
    values = fs.log_uniform_candidate_sampler(labels, 2, num_sampled, True, 300, seed=4)
    grad_output = np.linspace(-1.0, 2.0, labels.shape[0]).astype(np.float32)
    loss = fs.sampled_softmax_loss(*args, num_true=2, sampled_values=values)
    _, ref_inputs, (ids, ref_w_rows), (_, ref_b_rows) = \
        reference.sampled_softmax_loss_with_grad(*args, num_true=2, sampled_values=values,
                                                 grad_output=grad_output)
    leaves = [to_tensor(a).clone().requires_grad_(True) for a in (weights, biases, inputs)]
    got = fst.sampled_softmax_loss(leaves[0], leaves[1], torch.from_numpy(labels), leaves[2],
                                   num_sampled, 300, num_true=2, sampled_values=values,
                                   sparse=sparse)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.detach().numpy(), loss)
    (got * torch.from_numpy(grad_output)).sum().backward()
    w_grad, b_grad, in_grad = (t.grad.to_dense() if sparse else t.grad for t in leaves)
    assert {w_grad.dtype, b_grad.dtype, in_grad.dtype} == {leaves[0].dtype}
    terms = 2 + num_sampled
    untouched = np.setdiff1d(np.arange(300), ids)
    for name, grad, expected in (("inputs", to_numpy(in_grad), ref_inputs),
                                 ("weights", to_numpy(w_grad)[ids], ref_w_rows),
                                 ("biases", to_numpy(b_grad)[ids], ref_b_rows)):
        assert_within_one_ulp_16(grad, expected, f"{name} {dtype} sparse={sparse}",
                                   _gradient_allowance(expected, terms))
    for name, grad in (("weights", w_grad), ("biases", b_grad)):
        assert not np.any(to_numpy(grad)[untouched].astype(np.float32)), \
            f"{name}: a row no one sampled got a gradient"
