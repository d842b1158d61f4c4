"""The Cython + OpenMP backend (built by setup.py when a compiler is available): the
kernels of ``fastsoftmax._ops.KERNELS``.

Importing it fails with ImportError when the extension was not built; the backend
registry then leaves "cython" out of ``available_backends()``.
"""
from .. import _ops
from . import _kernels
from ._kernels import max_threads, set_num_threads  # noqa: F401

# a missing kernel is left out here and named by the backend contract test
globals().update({name: getattr(_kernels, name) for name in _ops.KERNELS
                  if hasattr(_kernels, name)})
