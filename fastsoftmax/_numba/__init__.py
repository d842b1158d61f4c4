"""The Numba backend: kernels on C-contiguous (rows, classes) arrays.

Importing this package compiles nothing; each kernel compiles on first call per
dtype and is cached on disk (``cache=True``).
"""
import numba

from . import _target  # noqa: F401  (must run before the first compile)
from . import _cross_entropy, _small, _softmax
from ._softmax import log_softmax_backward, softmax_backward

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
           "cross_entropy_index", "cross_entropy_prob", "set_num_threads", "max_threads"]

max_threads = numba.config.NUMBA_NUM_THREADS


def _by_class_count(name):
    """The block kernel below SMALL_C classes, else the row kernel (chosen per call)."""
    row_kernel = getattr(_softmax, name, None) or getattr(_cross_entropy, name)
    block_kernel = getattr(_small, name)

    def kernel(x, *args):
        (block_kernel if x.shape[1] < _small.SMALL_C else row_kernel)(x, *args)

    kernel.__name__ = name
    return kernel


softmax = _by_class_count("softmax")
log_softmax = _by_class_count("log_softmax")
logsumexp = _by_class_count("logsumexp")
cross_entropy_index = _by_class_count("cross_entropy_index")
cross_entropy_prob = _by_class_count("cross_entropy_prob")


def set_num_threads(n):
    """Numba's thread count is per calling thread, so it is set before every launch."""
    numba.set_num_threads(n)
