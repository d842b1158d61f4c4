"""What is benchmarked: operations, shapes, dtypes, and the inputs for each."""
import functools

import numpy as np

from fastsoftmax import _dtypes, _ops

ELEMENTS = 2 ** 24  # default fixed budget: N = elements // C rows
FULL_CLASSES = [10, 100, 1000, 10000, 32768, 131072, 262144]
QUICK_CLASSES = [10, 1000, 32768, 131072]
FEW_ROW_SHAPES = [(8, 131072), (1, 1048576)]

# every op of the op table, plus its extra input kinds (e.g. cross_entropy_with_grad_prob)
CASES = _ops.bench_cases()
OPS = list(CASES)
# the quick set (README's main command): one rows op and the fused loss
QUICK_OPS = ["softmax", "cross_entropy_with_grad"]


def shapes(full, elements=ELEMENTS):
    """(rows, classes) pairs; ``elements`` below the default shrinks every shape (smoke runs)."""
    classes = FULL_CLASSES if full else QUICK_CLASSES
    budget = [(max(1, elements // c), c) for c in classes if c <= elements]
    few_rows = [(r, c) for r, c in FEW_ROW_SHAPES if r * c <= elements]
    return budget + few_rows if full else budget


DTYPES = ["float32", "float64", "bfloat16", "float16"]


def dtypes(full):
    return ["float32", "float64"] if full else ["float32"]


def numpy_dtype(name):
    """The NumPy dtype of a bench dtype name (bfloat16: ml_dtypes')."""
    return _dtypes.bfloat16() if name == "bfloat16" else np.dtype(name)


def ops(full):
    return OPS if full else QUICK_OPS


@functools.lru_cache(maxsize=1)
def inputs(case, shape, dtype):
    """The NumPy inputs of a case, shared by every implementation in a group (read-only)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape, dtype=np.float32) * 3).astype(numpy_dtype(dtype))
    _, from_logits = CASES[case]
    arrays = from_logits(x, -1, rng)
    for a in arrays:
        a.flags.writeable = False
    return arrays


def group_name(op, shape, dtype):
    return f"{op}|{shape[0]}x{shape[1]}|{dtype}"
