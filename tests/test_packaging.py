"""Packaging (issue 16): the sdist carries every source the extension builds from, and an
install in a read-only location imports and runs (Numba's on-disk cache falls back to
compiling in the process, with one warning; the Cython extension loads)."""
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

import fastsoftmax

ROOT = pathlib.Path(__file__).resolve().parent.parent
CYTHON_DIR = ROOT / "fastsoftmax" / "_cython"


def test_package_data_holds_every_extension_source():
    """setuptools puts package-data in the sdist; a source missing there builds from the
    repository but not from the sdist (as elementwise.pxi once did)."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["fastsoftmax._cython"]
    sources = [p for p in CYTHON_DIR.iterdir() if p.suffix in (".pyx", ".pxi", ".h")]
    assert sources
    assert [p.name for p in sources if not any(p.match(g) for g in globs)] == []


_RUN = """
import numpy as np
import fastsoftmax as fs
from fastsoftmax import reference
x = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
want = reference.softmax(x)
for backend in fs.available_backends():
    assert np.allclose(fs.softmax(x, backend=backend), want, rtol=1e-5, atol=1e-7), backend
print("file", fs.__file__)
print("backends", *fs.available_backends())
"""


def _copy_install(site):
    """The imported package (with its built extension modules, if any) copied to ``site``,
    as a wheel install lays it out; caches and build leftovers are not copied."""
    package = pathlib.Path(fastsoftmax.__file__).parent
    shutil.copytree(package, site / "fastsoftmax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html"))
    vendored = package.parent / "fastsoftmax.libs"  # libgomp, after auditwheel repair
    if vendored.is_dir():
        shutil.copytree(vendored, site / vendored.name)


def _read_only_command(site, home):
    """Run _RUN with ``site`` and ``home`` unwritable. File modes do not stop root, so as
    root both are bind-mounted read-only in a private mount namespace."""
    if os.geteuid() != 0:
        for path in (site, home):
            subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)
        return [sys.executable, "-c", _RUN]
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: cannot make a read-only directory")
    mounts = " && ".join(f"mount --bind {p} {p} && mount -o remount,bind,ro {p}"
                         for p in (site, home))
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --make-rprivate / && true"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"running as root and unshare -m fails here ({probe.stderr.decode()[:80]})")
    return ["unshare", "-m", "sh", "-c",
            f'mount --make-rprivate / && {mounts} && exec "$0" -c "$1"', sys.executable, _RUN]


def test_read_only_install_imports_and_runs(tmp_path):
    site, home = tmp_path / "site", tmp_path / "home"
    home.mkdir()
    _copy_install(site)
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "FASTSOFTMAX_BACKEND", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    run = subprocess.run(_read_only_command(site, home), cwd=home, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
    assert lines["file"].startswith(str(site))
    backends = lines["backends"].split()
    assert "numba" in backends
    if "cython" in fastsoftmax.available_backends():
        assert "cython" in backends  # the extension loads from the read-only copy
    # the backend loads at the first call: its one warning goes to stderr
    assert run.stderr.count("fastsoftmax: no writable Numba cache") == 1, run.stderr
    assert not list(site.rglob("*.nbi"))  # nothing was cached beside the sources
