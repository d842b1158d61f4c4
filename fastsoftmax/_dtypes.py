"""The float types fastsoftmax takes, and how the 16-bit ones reach the kernels.

float32 and float64 are computed in their own type. float16 and bfloat16 are storage
types: the kernels read them, compute in float32 (row sums at least float32, losses in
float64, as for float32 inputs), and round every output element once, to nearest even.
Losses of 16-bit inputs are returned as float32 (torch returns them in the input type).

bfloat16 is ``ml_dtypes.bfloat16``, the NumPy type of JAX's bfloat16 arrays. ml_dtypes is
a dependency (NumPy-only, a few MB) because ``fastsoftmax.torch`` needs it to view a
torch.bfloat16 tensor as a NumPy array without a copy; it is imported only then, since a
NumPy caller's bfloat16 array is recognised by its dtype's name.

Numba has no 16-bit float type on the CPU, so a kernel gets a 16-bit array's bits: a
bfloat16 array as a uint16 view, a float16 array as an int16 view. The integer type of the
view names the format (``kernel_view``); both compiled backends read it that way.
"""
import numpy as np

# name of a 16-bit float dtype -> the integer dtype of the view a kernel receives
_KERNEL_BITS = {"bfloat16": np.dtype(np.uint16), "float16": np.dtype(np.int16)}
FLOAT32 = np.dtype(np.float32)


def is_half(dtype):
    """True for float16 and bfloat16."""
    return dtype.name in _KERNEL_BITS


def is_float(dtype):
    """True for the float types the ops take: float32, float64, float16 and bfloat16."""
    return (dtype.kind == "f" and dtype.itemsize in (4, 8)) or is_half(dtype)


def kernel_view(a):
    """``a`` as a kernel takes it: a 16-bit float array as its bits' integer view (no copy),
    anything else unchanged."""
    return a.view(_KERNEL_BITS[a.dtype.name]) if is_half(a.dtype) else a


def compute_dtype(dtype):
    """The type the kernels compute in and return losses in: float32 for 16-bit types."""
    return FLOAT32 if is_half(dtype) else dtype


def bfloat16():
    """NumPy's bfloat16 dtype (imports ml_dtypes)."""
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
