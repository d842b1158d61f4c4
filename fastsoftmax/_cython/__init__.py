"""The Cython + OpenMP backend (built by setup.py when a compiler is available).

Importing it fails with ImportError when the extension was not built; the backend
registry then leaves "cython" out of ``available_backends()``.
"""
from ._kernels import (cross_entropy_index, cross_entropy_prob, log_softmax, log_softmax_backward,
                       logsumexp, max_threads, set_num_threads, softmax, softmax_backward)

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
           "cross_entropy_index", "cross_entropy_prob", "set_num_threads", "max_threads"]
