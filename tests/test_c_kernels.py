"""The Cython backend's C kernels (fastsoftmax/_cython/rows.h, elementwise.h) built without
Python and checked against a double-precision reference by tests/c_kernels/run.sh (issue
16): the host's baseline build always, the aarch64 build under qemu-user when the cross
tools are installed. run.sh with no argument also checks the AVX2 and AVX-512 levels and
the armv8.2-a+fp16 build."""
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

RUN = Path(__file__).parent / "c_kernels" / "run.sh"
# the tools run.sh uses, by the variables that override them
AARCH64_TOOLS = {"AARCH64_CC": "aarch64-linux-gnu-gcc", "QEMU_AARCH64": "qemu-aarch64"}


def _check(build):
    result = subprocess.run(["bash", str(RUN), build], capture_output=True, text=True,
                            timeout=600)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert f"PASS {build}:" in result.stdout, report


def test_native_build_passes_the_row_kernel_check():
    _check("x86-64-baseline" if platform.machine() in ("x86_64", "AMD64") else "native")


def test_aarch64_build_passes_the_row_kernel_check_under_qemu():
    tools = [os.environ.get(variable, default) for variable, default in AARCH64_TOOLS.items()]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH: install the cross compiler and "
                    "qemu-user with `apt-get install gcc-aarch64-linux-gnu qemu-user` (Debian)")
    _check("aarch64-armv8-a")
