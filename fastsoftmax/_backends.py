"""The backend registry: names -> kernel modules, the "auto" choice, and thread control.

A compiled backend is a module with the kernels of ``fastsoftmax._numba`` (same
names, same arguments, C-contiguous (rows, classes) arrays) plus
``set_num_threads(n)`` and ``max_threads``. "numpy" is the reference itself and
has no kernel module. Tests and benchmarks iterate ``available_backends()``.
"""
import contextlib
import contextvars
import importlib
import operator
import os

# name -> module path; the order is the "auto" preference (fastest first, measured
# by the benchmark suite). None marks the reference, which is always available.
BACKENDS = {
    "cython": "fastsoftmax._cython",
    "numba": "fastsoftmax._numba",
    "numpy": None,
}
# What to tell a user who asks for a backend that is not there.
HOW_TO_ENABLE = {
    "cython": "the Cython extension was not built; install a C compiler and Cython>=3 and "
              "reinstall (pip install -e .), with FASTSOFTMAX_REQUIRE_CYTHON=1 to see why a "
              "build fails",
}
AUTO = "auto"
ENV_VAR = "FASTSOFTMAX_BACKEND"

_modules = {}
_import_errors = {}
_default = None  # set by set_backend(); None means: $FASTSOFTMAX_BACKEND, else "auto"
_override = contextvars.ContextVar("fastsoftmax_backend", default=None)
_num_threads = None
_forked_child = False
_cython_slower = None  # _cython_below_numba(), computed once


def _after_fork_in_child():
    global _forked_child
    _forked_child = True


# A child forked from this process cannot use the parent's OpenMP thread pool (libgomp
# hangs or aborts it): there every backend runs on one thread.
os.register_at_fork(after_in_child=_after_fork_in_child)


def in_forked_child():
    """True in a process forked from one that imported fastsoftmax (it runs serially)."""
    return _forked_child


def _load(name):
    """Import a backend's module once; remember why it failed if it did."""
    if name not in _modules and name not in _import_errors:
        try:
            _modules[name] = importlib.import_module(BACKENDS[name])
        except ImportError as exc:
            _import_errors[name] = exc
    return _modules.get(name)


def _cython_below_numba():
    """Whether the Cython level in use is below the level Numba compiles for (for example
    the baseline module forced, or the only one built, on an AVX2 CPU): its kernels are
    then several times slower than Numba's (C = 1000 CE + grad, AVX2 EPYC: 6.5 vs 0.74
    ns/elem), so "auto" prefers Numba. Decided by the levels, not by timing."""
    global _cython_slower
    if _cython_slower is None:
        from . import _isa
        features = _isa.cpu_features()
        _cython_slower = (_isa.rank(_modules["cython"].ISA, features)
                          < _isa.rank(_isa.numba_level(features), features))
    return _cython_slower


def available_backends():
    """Names of the backends that work in this process, fastest first.

    "cython" comes first unless its instruction-set level (``show_config()["isa"]``) is
    below Numba's: then "numba" does.

    Returns
    -------
    list of str
        A subset of ``"cython"``, ``"numba"``, ``"numpy"``; ``"numpy"`` (the reference) is
        always there.
    """
    names = [name for name, path in BACKENDS.items() if path is None or _load(name) is not None]
    if "cython" in names and "numba" in names and _cython_below_numba():
        names.remove("cython")
        names.insert(names.index("numba") + 1, "cython")
    return names


def _check_name(name, source):
    if name == AUTO:
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} from {source}; choose one of "
                         f"{[AUTO, *BACKENDS]}")
    if BACKENDS[name] is not None and _load(name) is None:
        hint = HOW_TO_ENABLE.get(name, "")
        raise RuntimeError(f"backend {name!r} is not available ({_import_errors[name]}); {hint}")
    return name


def set_backend(name):
    """Set the process-wide default backend.

    Parameters
    ----------
    name : str
        ``"auto"`` (the fastest available), ``"numba"`` or ``"numpy"`` (the reference).
    """
    global _default
    _default = _check_name(name, "set_backend()")


def get_backend():
    """Return the name of the backend a call without ``backend=`` would use now.

    Returns
    -------
    str
        A concrete backend name ("auto" is resolved).
    """
    return resolve(None)


@contextlib.contextmanager
def use_backend(name):
    """Context manager: use backend ``name`` inside the ``with`` block.

    The choice is local to the current thread (and asyncio task), so concurrent
    callers do not see each other's choice.

    Parameters
    ----------
    name : str
        A backend name as for :func:`set_backend`.
    """
    token = _override.set(_check_name(name, "use_backend()"))
    try:
        yield
    finally:
        _override.reset(token)


def resolve(name):
    """Concrete backend name for a call's ``backend=`` argument."""
    if name is None:
        name = _override.get()
    if name is None:
        name = _default
    if name is None:
        name = _check_name(os.environ.get(ENV_VAR, AUTO), f"${ENV_VAR}")
    else:
        name = _check_name(name, "backend=")
    return available_backends()[0] if name == AUTO else name


def kernels(name):
    """The kernel module of a compiled backend (None for the reference), threads applied."""
    module = _modules.get(name) if BACKENDS[name] is not None else None
    if module is not None:
        module.set_num_threads(get_num_threads())
    return module


def _max_threads():
    module = _load("numba")
    return module.max_threads if module is not None else os.cpu_count() or 1


def set_num_threads(n):
    """Set the number of threads every backend uses.

    Parameters
    ----------
    n : int
        Between 1 and the number of threads the process was started with
        (``NUMBA_NUM_THREADS``, by default the number of cores).
    """
    global _num_threads
    limit = _max_threads()
    try:
        count = operator.index(n)
    except TypeError:
        raise TypeError(f"number of threads must be an integer, got {n!r}") from None
    if not 1 <= count <= limit:
        raise ValueError(f"number of threads must be in [1, {limit}], got {count}")
    _num_threads = count


def get_num_threads():
    """Return the number of threads the kernels use.

    In a child process forked from one that imported fastsoftmax it is 1: the parent's
    OpenMP thread pool does not survive ``fork`` (use the "spawn" or "forkserver" start
    method for parallel workers).

    Returns
    -------
    int
    """
    if _forked_child:
        return 1
    return _num_threads if _num_threads is not None else _max_threads()


def show_config():
    """Print and return how fastsoftmax runs in this process (paste it into bug reports).

    Returns
    -------
    dict
        ``version``; ``versions`` (Python, NumPy, Numba, llvmlite); ``backends``
        (available, fastest first); ``auto`` (what "auto" picks); ``backend`` (what a call
        uses now); ``threads``; ``forked_child``; ``numba_threading_layer`` (None until the
        first parallel Numba kernel has run, which is when Numba picks it; calls are
        serialised under "workqueue", the one layer that is not thread-safe); ``isa``: the
        CPU's level (``cpu``), its features that the levels need (``cpu_features``) and
        those it lacks (``missing``), ``FASTSOFTMAX_ISA`` (``forced``), the level Numba
        compiles for (``numba``); ``cython``: the level in use (``isa``), the levels this
        install built (``built``), the compiler flags, compiler and Cython versions, the
        vector width in bytes and whether it has OpenMP; None when it is not built.
    """
    import platform

    import llvmlite
    import numba
    import numpy

    from . import __version__, _isa
    features = _isa.cpu_features()
    relevant = _isa.REQUIRED_FEATURES[_isa.LEVELS[-1]]
    config = {"version": __version__,
              "versions": {"python": platform.python_version(), "numpy": numpy.__version__,
                           "numba": numba.__version__, "llvmlite": llvmlite.__version__},
              "backends": available_backends(), "auto": resolve(AUTO), "backend": get_backend(),
              "threads": get_num_threads(), "forked_child": _forked_child,
              "numba_threading_layer": None,
              "isa": {"cpu": _isa.cpu_level(features),
                      "cpu_features": sorted(set(relevant) & features),
                      "missing": _isa.missing_features(_isa.LEVELS[-1], features),
                      "forced": _isa.forced_level(), "numba": _isa.numba_level(features)},
              "cython": None}
    if _load("numba") is not None:
        config["numba_threading_layer"] = _modules["numba"].threading_layer()
    if _load("cython") is not None:
        package = _modules["cython"]
        kernels = package._kernels
        config["cython"] = {"isa": package.ISA, "built": package.BUILT,
                            "flags": kernels.BUILD["flags"],
                            "compiler": kernels.BUILD["compiler"],
                            "cython_version": kernels.BUILD["cython"],
                            "vector_bytes": kernels.VECTOR_BYTES, "openmp": kernels.openmp}
    for key, value in config.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, item in value.items():
                print(f"    {name}: {item}")
        else:
            print(f"{key}: {value}")
    return config
