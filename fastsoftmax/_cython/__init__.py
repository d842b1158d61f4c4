"""The Cython + OpenMP backend (built by setup.py when a compiler is available): the
kernels of ``fastsoftmax._ops.KERNELS``.

setup.py compiles the kernels once per x86-64 level; this imports the best one the CPU
supports, or the one ``FASTSOFTMAX_ISA`` forces (fastsoftmax/_isa.py), and makes it
``fastsoftmax._cython._kernels`` too. ``ISA`` names the level.

Importing it fails with ImportError when the extension was not built; the backend
registry then leaves "cython" out of ``available_backends()``. A forced level that the
CPU or the install lacks raises ``fastsoftmax._isa.IsaError``.

Every kernel also takes bfloat16 and float16 arrays as their bits (uint16, int16 views;
fastsoftmax/_dtypes.py).
"""
import importlib
import importlib.util
import sys

from .. import _isa, _ops

BUILT = [level for level in (*_isa.LEVELS, _isa.NATIVE)
         if importlib.util.find_spec(f"{__name__}._kernels_{level}") is not None]
ISA = _isa.choose(_isa.forced_level(), BUILT, _isa.cpu_features())
_kernels = importlib.import_module(f"{__name__}._kernels_{ISA}")
sys.modules[f"{__name__}._kernels"] = _kernels
max_threads = _kernels.max_threads
set_num_threads = _kernels.set_num_threads

# a missing kernel is left out here and named by the backend contract test
globals().update({name: getattr(_kernels, name) for name in _ops.KERNELS
                  if hasattr(_kernels, name)})
