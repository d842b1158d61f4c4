"""Build script: metadata lives in pyproject.toml; this file adds the optional
Cython + OpenMP extension: ``fastsoftmax/_cython/_kernels.pyx`` compiled once per
x86-64 level, as ``fastsoftmax._cython._kernels_<level>``; ``fastsoftmax._cython``
imports the best level the CPU supports (see fastsoftmax/_isa.py).

Environment:
  FASTSOFTMAX_REQUIRE_CYTHON=1  a failed or skipped build is an error (CI sets it)
  FASTSOFTMAX_NO_CYTHON=1       do not build the extension (Numba backend only)
  FASTSOFTMAX_NO_OPENMP=1       build without OpenMP: the Cython kernels run serially
  FASTSOFTMAX_NATIVE=1          build one module, ``_kernels_native``, with -march=native
                                (tuned for this CPU; it may not run on another one)
                                instead of the portable levels
Without a compiler or Cython the install still succeeds, without the extension, and
says so in one warning.
"""
import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Why one module per level rather than one module with a table of function pointers:
# the OpenMP loops and the block drivers in _kernels.pyx are vector code too, not just the
# row helpers of rows.h, so every translation unit must be compiled per level; one module
# per level does that with no change to the kernel sources (no pointer table to keep in
# step with every new kernel), and the dispatch is one import. The cost is build time: one
# C compile per level (about 18 s each here), run in parallel (build_ext --parallel).
#
# level -> flags. GCC 11+ knows the x86-64-v3/v4 names. v3 is AVX2 + FMA + BMI2 (Haswell,
# Zen 1); v4 adds AVX-512 F/BW/CD/DQ/VL (Skylake-X, Zen 4). GCC, like LLVM, defaults to
# 256-bit vectors for AVX-512 targets; the exp loops gain from 512-bit ones (see
# fastsoftmax/_numba/_target.py).
X86_LEVELS = {
    "baseline": [],  # x86-64: SSE2
    "avx2": ["-march=x86-64-v3"],
    "avx512": ["-march=x86-64-v4", "-mprefer-vector-width=512"],
}
NATIVE = ["-march=native", "-mprefer-vector-width=512"]


def _flag(name):
    return os.environ.get(name, "") == "1"


def _levels():
    """level -> its -m flags: the modules this build makes."""
    if _flag("FASTSOFTMAX_NATIVE"):
        return {"native": NATIVE}
    if platform.machine().lower() in ("x86_64", "amd64"):
        return X86_LEVELS
    return {"baseline": []}  # another architecture: its compiler's default target


def _compile_args(level_flags):
    # -funroll-loops: GCC then keeps several exp vectors in flight per iteration, as
    # LLVM does for the Numba backend (exp-sum row loop 0.66 -> 0.53 ns/elem, one core).
    args = ["-O3", "-funroll-loops", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
            *level_flags]
    if not _flag("FASTSOFTMAX_NO_OPENMP"):
        args.append("-fopenmp")
    return args


def _warn_or_fail(reason):
    if _flag("FASTSOFTMAX_REQUIRE_CYTHON"):
        raise SystemExit(f"fastsoftmax: the Cython extension is required but {reason}")
    message = (f"WARNING: fastsoftmax is installed without its Cython backend ({reason}); "
               "the Numba backend is used. To build it, install a C compiler and Cython>=3 "
               "and reinstall.")
    print(message, file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Build the extension if possible; otherwise warn (or fail when it is required).
    The levels compile in parallel, one per core, unless --parallel says otherwise."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler/setup failure
            _warn_or_fail(f"the build failed: {exc}")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _warn_or_fail(f"compiling {ext.name} failed: {exc}")


def _c_string(text):
    """A -D value that the C preprocessor reads as a string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _extensions():
    if _flag("FASTSOFTMAX_NO_CYTHON"):
        _warn_or_fail("FASTSOFTMAX_NO_CYTHON=1 is set")
        return []
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError:
        _warn_or_fail("Cython is not installed")
        return []
    openmp = [] if _flag("FASTSOFTMAX_NO_OPENMP") else ["-fopenmp"]
    # Cython sees rows.h (the pyx's cdef extern) but not the typed headers, which rows.h
    # includes: listed here, an edit of any rebuilds the extension.
    headers = ["fastsoftmax/_cython/rows.h", "fastsoftmax/_cython/rows_typed.h",
               "fastsoftmax/_cython/row_functions_typed.h",
               "fastsoftmax/_cython/narrow_typed.h", "fastsoftmax/_cython/elementwise.h",
               "fastsoftmax/_cython/elementwise_typed.h"]
    modules = []
    for level, level_flags in _levels().items():
        args = _compile_args(level_flags)
        # what the module reports in fs.show_config()
        macros = [("FS_ISA_LEVEL", _c_string(level)), ("FS_BUILD_FLAGS", _c_string(" ".join(args))),
                  ("FS_CYTHON_VERSION", _c_string(Cython.__version__))]
        extension = Extension(f"fastsoftmax._cython._kernels_{level}",
                              ["fastsoftmax/_cython/_kernels.pyx"],
                              include_dirs=["fastsoftmax/_cython"], extra_link_args=openmp)
        # one C file per level (the module name is in it), each in its own directory
        [module] = cythonize([extension], compiler_directives={"language_level": 3}, quiet=True,
                             build_dir=os.path.join("build", "cython", level))
        # Options set after cythonize, which merges those of every Extension made from one
        # .pyx (it caches them per file), and would copy the headers beside the C file.
        module.define_macros, module.extra_compile_args = macros, args
        module.depends = headers
        modules.append(module)
    return modules


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
