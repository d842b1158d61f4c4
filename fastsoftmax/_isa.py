"""x86-64 instruction-set levels: what the CPU supports, which level of the Cython
extension to import, and the level Numba compiles for.

setup.py compiles the Cython kernels once per level (``_kernels_baseline``,
``_kernels_avx2``, ``_kernels_avx512``; or one ``_kernels_native`` with
FASTSOFTMAX_NATIVE=1). ``FASTSOFTMAX_ISA`` forces a level. The CPU's features come from
LLVM (llvmlite, which Numba needs anyway), which also checks that the OS saves the
AVX/AVX-512 registers: the same view of the CPU as Numba's code generator has.
"""
import os

ENV_VAR = "FASTSOFTMAX_ISA"
NATIVE = "native"  # the FASTSOFTMAX_NATIVE=1 build: this CPU's own level
# The portable levels, lowest first, with the CPU features each needs (LLVM's names):
# x86-64 (SSE2), x86-64-v3 and x86-64-v4, as GCC's -march=x86-64-v3/v4 define them.
_V2_V3 = ("cx16", "popcnt", "sahf", "sse3", "ssse3", "sse4.1", "sse4.2",
          "avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave")
REQUIRED_FEATURES = {
    "baseline": (),
    "avx2": _V2_V3,
    "avx512": _V2_V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}
LEVELS = tuple(REQUIRED_FEATURES)


class IsaError(RuntimeError):
    """FASTSOFTMAX_ISA asks for a level this CPU or this build does not have."""


def cpu_features():
    """The set of features (LLVM names) this CPU has and the OS enables."""
    import llvmlite.binding as llvm
    return {name for name, present in llvm.get_host_cpu_features().items() if present}


def missing_features(level, features):
    """The features of ``level`` that are not in ``features``, sorted."""
    return sorted(set(REQUIRED_FEATURES[level]) - set(features))


def cpu_level(features):
    """The highest portable level whose features are all in ``features``."""
    return [level for level in LEVELS if not missing_features(level, features)][-1]


def rank(level, features):
    """Position of ``level`` in LEVELS ("native" counts as this CPU's level)."""
    return LEVELS.index(cpu_level(features) if level == NATIVE else level)


def choose(forced, built, features):
    """The level of the Cython extension to import.

    Parameters
    ----------
    forced : str or None
        The value of FASTSOFTMAX_ISA ("" or None: choose the best).
    built : collection of str
        The levels whose module this install has.
    features : set of str
        The CPU's features (``cpu_features()``).

    Returns
    -------
    str
        A level in ``built``.

    Raises
    ------
    IsaError
        ``forced`` is not a level, the CPU lacks one of its features, or it was not built.
    ImportError
        Nothing was built that this CPU can run.
    """
    if forced:
        names = (*LEVELS, NATIVE)
        if forced not in names:
            raise IsaError(f"{ENV_VAR}={forced!r} is not a level; choose one of {list(names)} "
                           f"or unset it")
        if forced != NATIVE and missing_features(forced, features):
            raise IsaError(f"{ENV_VAR}={forced}: this CPU lacks "
                           f"{', '.join(missing_features(forced, features))}, which level "
                           f"{forced!r} needs; the CPU supports up to "
                           f"{cpu_level(features)!r}")
        if forced not in built:
            raise IsaError(f"{ENV_VAR}={forced}: this install has no {forced!r} module "
                           f"(built: {sorted(built)}); FASTSOFTMAX_NATIVE=1 builds only "
                           "'native', a default build the portable levels")
        return forced
    if NATIVE in built:
        return NATIVE
    runnable = [level for level in LEVELS
                if level in built and not missing_features(level, features)]
    if not runnable:
        raise ImportError(f"no level of the Cython extension this CPU can run was built "
                          f"(built: {sorted(built)})")
    return runnable[-1]


def numba_features():
    """The features Numba's code generator targets: NUMBA_CPU_FEATURES when set (its
    "+name" entries), else this CPU's."""
    from numba.core import config
    if config.CPU_FEATURES is not None:
        return {entry[1:] for entry in config.CPU_FEATURES.split(",") if entry.startswith("+")}
    return cpu_features()


def numba_level(features):
    """The level Numba compiles for: this CPU's, unless NUMBA_CPU_NAME names another CPU
    (then taken as baseline, for example "generic" for portable caches)."""
    from numba.core import config
    if config.CPU_NAME in (None, "host"):
        return cpu_level(features)
    return LEVELS[0]


def forced_level():
    """The value of FASTSOFTMAX_ISA, or None."""
    return os.environ.get(ENV_VAR) or None
