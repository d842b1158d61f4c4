"""The Numba backend: the kernels of ``fastsoftmax._ops.KERNELS`` on C-contiguous
(rows, classes) arrays.

Importing this package compiles nothing; each kernel compiles on first call per
dtype and is cached on disk (``cache=True``).
"""
import functools

import numba

from .. import _ops
from . import _target  # noqa: F401  (must run before the first compile)
from . import _cross_entropy, _entropy, _small, _softmax

# Where the kernels live: a row kernel ``<name>``, and for some a block kernel for few
# classes, ``<name>_blocks``.
_KERNEL_MODULES = (_softmax, _cross_entropy, _small, _entropy)

max_threads = numba.config.NUMBA_NUM_THREADS


def _find(name):
    for module in _KERNEL_MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    return None  # the backend contract test names a missing kernel


def _by_class_count(row_kernel):
    """The block kernel below SMALL_C classes when there is one, else the row kernel
    (chosen per call)."""
    block_kernel = _find(row_kernel.__name__ + "_blocks")
    if block_kernel is None:
        return row_kernel

    @functools.wraps(row_kernel.py_func)
    def kernel(x, *args):
        (block_kernel if x.shape[1] < _small.SMALL_C else row_kernel)(x, *args)

    return kernel


globals().update({name: _by_class_count(_find(name)) for name in _ops.KERNELS
                  if _find(name) is not None})


def set_num_threads(n):
    """Numba's thread count is per calling thread, so it is set before every launch."""
    numba.set_num_threads(n)
