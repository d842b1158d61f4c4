"""The Numba backend: the kernels of ``fastsoftmax._ops.KERNELS`` on C-contiguous
(rows, classes) arrays.

Importing this package compiles nothing; each kernel compiles on first call per
dtype and is cached on disk (``cache=True``).

Every array a kernel only reads is handed to it read-only (a view: no copy). Numba
compiles one specialization per argument type, and an array's type includes whether it
is writeable; read-only inputs (``np.broadcast_to`` targets, a caller's frozen array)
would otherwise compile every kernel a second time (868 -> 563 compilations in the test
suite's cache, measured 2026-12-03).

Two process hazards are handled here, in the one wrapper every kernel call goes through:
* In a child forked after the parent ran a parallel kernel, GNU OpenMP aborts the child
  at its first parallel region ("fork() called from a process already using GNU
  OpenMP"). A forked child therefore runs serial copies of the kernels (the same
  functions compiled without ``parallel``, cached under their own names).
* Numba's workqueue threading layer (used where neither OpenMP nor TBB is available)
  aborts the process when two threads launch parallel kernels at once. Under it, and
  before the first launch has picked a layer, calls take a lock.
"""
import functools
import inspect
import threading
import types

import numba
import numpy as np

from .. import _backends, _ops
from . import _target  # noqa: F401  (must run before the first compile)
from . import _cross_entropy, _elementwise, _entropy, _jsd, _small, _softmax, _vocab_parallel
from ._math import JIT
from ._split import kernel_chunks

# Where the kernels live: a row kernel ``<name>``, and for some a block kernel for few
# classes, ``<name>_blocks``.
_KERNEL_MODULES = (_softmax, _cross_entropy, _small, _entropy, _elementwise, _jsd,
                   _vocab_parallel)

max_threads = numba.config.NUMBA_NUM_THREADS


def _find(name):
    for module in _KERNEL_MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    return None  # the backend contract test names a missing kernel


_serial_versions = {}
_launch_lock = threading.Lock()


def _serial(kernel):
    """The kernel compiled without ``parallel`` (prange runs as range), for forked children.

    A copy of its Python function under another qualified name, so that Numba's cache
    keeps the two compilations apart (its index key does not include ``parallel``)."""
    if kernel not in _serial_versions:
        f = kernel.py_func
        copy = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__,
                                  f.__closure__)
        copy.__qualname__ = f.__qualname__ + "_serial"
        copy.__module__ = f.__module__
        options = {k: v for k, v in kernel.targetoptions.items()
                   if k not in ("parallel", "nopython")}
        _serial_versions[kernel] = numba.njit(cache=JIT["cache"], **options)(copy)
    return _serial_versions[kernel]


def threading_layer():
    """Numba's threading layer ("omp", "tbb", "workqueue"), or None before the first
    parallel kernel has run (Numba picks the layer then)."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _read_only(a):
    """``a`` as a read-only array (a view when it is writeable); anything else as it is."""
    if isinstance(a, np.ndarray) and a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _exported(name):
    """The kernel ``name``: the block kernel below SMALL_C classes when there is one, else
    the row kernel (given its ``chunks`` argument, _split.kernel_chunks, when it takes
    one); its read arrays read-only; serial in a forked child; under a lock unless the
    layer is thread-safe."""
    row_kernel, block_kernel = _find(name), _find(name + "_blocks")
    arguments = inspect.signature(row_kernel.py_func).parameters
    written = [i for i, argument in enumerate(arguments) if argument in _ops.KERNEL_OUTPUTS]
    takes_chunks = "chunks" in arguments

    @functools.wraps(row_kernel.py_func)
    def kernel(*args):
        args = [a if i in written else _read_only(a) for i, a in enumerate(args)]
        x = args[0]
        forked = _backends.in_forked_child()
        if block_kernel is not None and x.shape[1] < _small.SMALL_C:
            chosen = block_kernel
        else:
            chosen = row_kernel
            if takes_chunks:
                args.append(kernel_chunks(*x.shape, serial=forked))
        if forked:
            return _serial(chosen)(*args)
        if threading_layer() in (None, "workqueue"):
            with _launch_lock:
                return chosen(*args)
        return chosen(*args)

    if takes_chunks:  # supplied here: callers see the op table's arguments
        signature = inspect.signature(row_kernel.py_func)
        kernel.__signature__ = signature.replace(parameters=[
            p for p in signature.parameters.values() if p.name != "chunks"])
    return kernel


globals().update({name: _exported(name) for name in _ops.KERNELS if _find(name) is not None})
# Kernels outside the op table, used by fastsoftmax.vocab_parallel (Numba only).
vocab_parallel = types.SimpleNamespace(**{name: _exported(name)
                                          for name in _vocab_parallel.KERNELS})


def set_num_threads(n):
    """Numba's thread count is per calling thread, so it is set before every launch."""
    numba.set_num_threads(n)
