"""The Numba backend: kernels on C-contiguous (rows, classes) arrays.

Importing this package compiles nothing; each kernel compiles on first call per
dtype and is cached on disk (``cache=True``).
"""
import numba

from . import _target  # noqa: F401  (must run before the first compile)
from ._cross_entropy import cross_entropy_index, cross_entropy_prob
from ._softmax import log_softmax, log_softmax_backward, logsumexp, softmax, softmax_backward

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
           "cross_entropy_index", "cross_entropy_prob", "set_num_threads", "max_threads"]

max_threads = numba.config.NUMBA_NUM_THREADS


def set_num_threads(n):
    """Numba's thread count is per calling thread, so it is set before every launch."""
    numba.set_num_threads(n)
