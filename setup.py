"""Build script: metadata lives in pyproject.toml; this file adds the optional
Cython + OpenMP extension ``fastsoftmax._cython._kernels``.

Environment:
  FASTSOFTMAX_REQUIRE_CYTHON=1  a failed or skipped build is an error (CI sets it)
  FASTSOFTMAX_NO_CYTHON=1       do not build the extension (Numba backend only)
  FASTSOFTMAX_NO_OPENMP=1       build without OpenMP: the Cython kernels run serially
  FASTSOFTMAX_PORTABLE=1        no -march=native: a binary for any x86-64 (for wheels
                                shipped to other machines); default: tuned for this CPU
Without a compiler or Cython the install still succeeds, without the extension, and
says so in one warning.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "") == "1"


def _compile_args():
    # -funroll-loops: GCC then keeps several exp vectors in flight per iteration, as
    # LLVM does for the Numba backend (exp-sum row loop 0.66 -> 0.53 ns/elem, one core).
    args = ["-O3", "-funroll-loops", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
    if not _flag("FASTSOFTMAX_PORTABLE"):
        # GCC, like LLVM, defaults to 256-bit vectors on AVX-512 server CPUs; the exp
        # loops gain from 512-bit ones (see fastsoftmax/_numba/_target.py).
        args += ["-march=native", "-mprefer-vector-width=512"]
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
    """Build the extension if possible; otherwise warn (or fail when it is required)."""

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


def _extensions():
    if _flag("FASTSOFTMAX_NO_CYTHON"):
        _warn_or_fail("FASTSOFTMAX_NO_CYTHON=1 is set")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn_or_fail("Cython is not installed")
        return []
    openmp = [] if _flag("FASTSOFTMAX_NO_OPENMP") else ["-fopenmp"]
    # Cython sees rows.h (the pyx's cdef extern) but not the typed headers, which rows.h
    # includes: listed here, an edit of any rebuilds the extension.
    headers = ["fastsoftmax/_cython/rows.h", "fastsoftmax/_cython/rows_typed.h",
               "fastsoftmax/_cython/row_functions_typed.h", "fastsoftmax/_cython/elementwise.h",
               "fastsoftmax/_cython/elementwise_typed.h"]
    extension = Extension("fastsoftmax._cython._kernels", ["fastsoftmax/_cython/_kernels.pyx"],
                          include_dirs=["fastsoftmax/_cython"], depends=headers,
                          extra_compile_args=_compile_args(), extra_link_args=openmp)
    return cythonize([extension], compiler_directives={"language_level": 3}, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
