"""fastsoftmax.torch against torch on torch's own OpInfo samples (the ``sample_inputs``
shipped in the torch wheel): forward values and the gradient of every input that
requires grad, the target included."""
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
pytest.importorskip("expecttest", reason="torch's OpInfo samples need expecttest "
                                         "(pip install expecttest)")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

import fastsoftmax as fs  # noqa: E402
import fastsoftmax.torch as fst  # noqa: E402

# OpInfo name -> the fastsoftmax.torch function with the same call signature
FUNCTIONS = {
    "nn.functional.cross_entropy": fst.cross_entropy,
    "softmax": fst.softmax,
    "log_softmax": fst.log_softmax,
}
DTYPES = [torch.float32, torch.float64]
TOLERANCE = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10,
                                                                            atol=1e-12)}
OPINFOS = {f"{op.name}.{op.variant_test_name}".rstrip("."): op for op in op_db
           if op.name in FUNCTIONS}


def _samples(name, dtype):
    return list(OPINFOS[name].sample_inputs("cpu", dtype, requires_grad=True))


CASES = [(name, dtype, i) for name in OPINFOS for dtype in DTYPES
         for i in range(len(_samples(name, dtype)))]


def test_every_function_has_opinfo_samples():
    assert {op.name for op in OPINFOS.values()} == set(FUNCTIONS)
    assert len(CASES) >= 70


def _tensors_requiring_grad(sample):
    candidates = [sample.input, *sample.args, *sample.kwargs.values()]
    return [t for t in candidates if isinstance(t, torch.Tensor) and t.requires_grad]


@pytest.mark.parametrize("name,dtype,index", CASES,
                         ids=[f"{n}-{str(d)[6:]}-{i}" for n, d, i in CASES])
def test_matches_torch_on_opinfo_sample(backend, name, dtype, index):
    sample = _samples(name, dtype)[index]
    op = OPINFOS[name]
    context = (f"{name} input {tuple(sample.input.shape)} args "
               f"{[getattr(a, 'shape', a) for a in sample.args]} kwargs {sample.kwargs}")
    want = op(sample.input, *sample.args, **sample.kwargs)
    with fs.use_backend(backend):
        got = FUNCTIONS[op.name](sample.input, *sample.args, **sample.kwargs)
    torch.testing.assert_close(got, want, equal_nan=True, msg=lambda m: f"{context}: {m}",
                               **TOLERANCE[dtype])

    inputs = _tensors_requiring_grad(sample)
    assert inputs, context
    grad_output = torch.randn(want.shape, dtype=want.dtype,
                              generator=torch.Generator().manual_seed(index))
    want_grads = torch.autograd.grad(want, inputs, grad_output)
    with fs.use_backend(backend):
        got_grads = torch.autograd.grad(got, inputs, grad_output)
    for position, (g, w) in enumerate(zip(got_grads, want_grads)):
        torch.testing.assert_close(g, w, equal_nan=True, **TOLERANCE[dtype],
                                   msg=lambda m, p=position: f"{context}, gradient {p}: {m}")
