"""fastsoftmax: fused CPU kernels for softmax, log-softmax and cross-entropy.

Importing the package compiles nothing and imports no backend; the first call
does (Numba kernels are cached on disk after the first compile).
"""
from ._backends import (available_backends, get_backend, get_num_threads, set_backend,
                        set_num_threads, use_backend)
from .api import (cross_entropy, cross_entropy_with_grad, log_softmax, log_softmax_backward,
                  logsumexp, softmax, softmax_backward)

__version__ = "0.1.0"

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
           "cross_entropy", "cross_entropy_with_grad", "set_backend", "get_backend",
           "available_backends", "use_backend", "set_num_threads", "get_num_threads",
           "__version__"]
