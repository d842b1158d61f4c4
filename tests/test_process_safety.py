"""What trainers do to a process: fork after a parallel call, threads under Numba's
workqueue layer, failed scratch allocations. Each scenario runs in a fresh interpreter
with a timeout, so a hang or an abort fails the test instead of the test run."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastsoftmax as fs
from bench.cases import numpy_dtype
from conftest import COMPILED_BACKENDS

TIMEOUT = 240  # seconds; a fresh interpreter may compile the serial kernels first


def run_script(code, tmp_path, **env):
    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(code))
    full_env = {k: v for k, v in os.environ.items() if k != "FASTSOFTMAX_BACKEND"}
    full_env.update(env)
    try:
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=TIMEOUT, env=full_env, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the scenario hung (no exit within {TIMEOUT} s)")
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return run.stdout


CHILD_CALLS = """
import multiprocessing as mp, sys
import numpy as np
import fastsoftmax as fs

def work(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 700)).astype(np.float32)  # row kernels
    small = rng.standard_normal((3000, 10)).astype(np.float32)  # block kernels
    long = rng.standard_normal((2, 70000)).astype(np.float32)  # rows split in chunks
    results = []
    for logits in (x, small, long):
        t = np.arange(len(logits)) % 10
        loss, grad = fs.cross_entropy_with_grad(logits, t, backend=backend)
        want_loss, want_grad = fs.cross_entropy_with_grad(logits, t, backend="numpy")
        results.append(bool(np.allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
                            and np.isclose(loss, want_loss, rtol=1e-5)))
        h = fs.entropy(logits, backend=backend)
        results.append(bool(np.allclose(h, fs.entropy(logits, backend="numpy"), rtol=1e-5)))
    # the split rows' results, bit for bit: the same chunks on one thread or on all
    return all(results), fs.get_num_threads(), (loss, grad.tobytes(), h.tobytes())

if __name__ == "__main__":
    backend, method = sys.argv[1:] if len(sys.argv) > 1 else (BACKEND, METHOD)
    ok, threads, split_results = work(backend)  # the parent's thread pool is running now
    assert ok and threads == fs.get_num_threads()
    with mp.get_context(method).Pool(2) as pool:
        children = pool.map(work, [backend, backend])
    print([child[:2] for child in children])
    assert all(ok for ok, _, _ in children), children
    assert all(child_split == split_results for _, _, child_split in children)
    if method == "fork":  # a forked child cannot use the parent's OpenMP pool: one thread
        assert all(threads == 1 for _, threads, _ in children), children
    x = np.random.default_rng(1).standard_normal((64, 100))
    np.testing.assert_allclose(fs.softmax(x, backend=backend), fs.softmax(x, backend="numpy"))
    assert fs.get_num_threads() == threads  # the parent keeps its threads
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_child_process_after_a_parallel_call(backend, method, tmp_path):
    """Before: a forked child hung (Cython, libgomp's pool) or was killed (Numba,
    "fork() called from a process already using GNU OpenMP")."""
    code = CHILD_CALLS.replace("(BACKEND, METHOD)", repr((backend, method)))
    out = run_script(code, tmp_path)
    assert "True" in out


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork does not exist on Windows")
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_os_fork_child_marks_itself(backend, tmp_path):
    code = f"""
    import os
    import numpy as np
    import fastsoftmax as fs
    x = np.random.default_rng(0).standard_normal((2048, 300))
    want = fs.softmax(x, backend={backend!r})
    pid = os.fork()
    if pid == 0:
        ok = fs.show_config()["forked_child"] and fs.get_num_threads() == 1
        # to rounding, not bit for bit: a Numba child runs a separate (serial) compilation
        # of the kernel, whose inlined row functions LLVM may vectorise differently
        ok = ok and np.allclose(fs.softmax(x, backend={backend!r}), want, rtol=1e-12, atol=0)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert not fs.show_config()["forked_child"]
    """
    run_script(code, tmp_path)


def test_fork_while_another_thread_holds_the_chunk_buffers_lock(tmp_path):
    """A child forked while a thread of the parent holds linear_cross_entropy's kept-buffer
    lock gets a free lock of its own (else its first call would hang)."""
    code = """
    import os, threading
    import numpy as np
    import fastsoftmax as fs
    from fastsoftmax import linear_ce
    rng = np.random.default_rng(0)
    h, weight = rng.standard_normal((40, 8)), rng.standard_normal((30, 8))
    target = rng.integers(0, 30, 40)
    want = fs.linear_cross_entropy(h, weight, target, backend="numpy")
    held, release = threading.Event(), threading.Event()

    def hold():
        with linear_ce._kept_lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        loss = fs.linear_cross_entropy(h, weight, target, backend="numpy")
        os._exit(0 if np.isclose(loss, want, rtol=1e-12) else 3)
    _, status = os.waitpid(pid, 0)
    release.set()
    holder.join()
    assert os.waitstatus_to_exitcode(status) == 0, status
    """
    run_script(code, tmp_path)


def test_threads_under_the_workqueue_layer(tmp_path):
    """Before: four threads calling the Numba backend at once aborted the process (exit
    134, "Concurrent access has been detected")."""
    code = """
    import threading
    import numpy as np
    import fastsoftmax as fs

    x = np.random.default_rng(0).standard_normal((4000, 500)).astype(np.float32)
    t = np.arange(4000) % 500
    want = fs.cross_entropy_with_grad(x, t, backend="numpy")[1]
    errors = []

    def work():
        for _ in range(10):
            grad = fs.cross_entropy_with_grad(x, t, backend="numba")[1]
            if not np.allclose(grad, want, rtol=1e-4, atol=1e-7):
                errors.append("wrong gradient")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert fs.show_config()["numba_threading_layer"] == "workqueue"
    """
    run_script(code, tmp_path, NUMBA_THREADING_LAYER="workqueue")


# Rows of 40: wider than narrow ones at every level (at most 24 floats run in columns,
# without scratch: rows.h FS_NARROW_BYTES, narrow_typed.h): float32 rows take the block
# kernels' scratch, 16-bit rows the block's float copy, float32 JSD rows the JSD's padded
# rows; 16-bit rows of 2000: the float32
# row that keeps a 16-bit row's exponentials (fs_kept_row; rows up to 1024 keep them on
# the stack); float32 JSD rows of 2000: the row of the teacher's exponentials
@pytest.mark.parametrize("op, dtype, shape", [
    ("softmax", "float32", (5000, 40)), ("cross_entropy_with_grad", "float32", (5000, 40)),
    ("entropy", "float32", (5000, 40)), ("cross_entropy_with_grad", "bfloat16", (5000, 40)),
    ("jsd_logits_with_grad", "float32", (5000, 40)),
    ("softmax", "bfloat16", (40, 2000)), ("cross_entropy_with_grad", "float16", (40, 2000)),
    ("jsd_logits_with_grad", "float32", (40, 2000))])
def test_failed_scratch_allocation_raises_memory_error(op, dtype, shape):
    kernels = pytest.importorskip("fastsoftmax._cython._kernels",
                                  reason="the Cython extension is not built")
    x = np.random.default_rng(0).standard_normal(shape).astype(numpy_dtype(dtype))
    args = ((x, np.arange(shape[0]) % shape[1]) if op.startswith("cross")
            else (x, x[::-1].copy()) if op.startswith("jsd") else (x,))
    kernels._test_fail_scratch_allocations(True)
    try:
        with pytest.raises(MemoryError, match="scratch"):
            getattr(fs, op)(*args, backend="cython")
    finally:
        kernels._test_fail_scratch_allocations(False)
    result = getattr(fs, op)(*args, backend="cython")  # the next call is unaffected
    want = getattr(fs, op)(*args, backend="numpy")
    # a 16-bit softmax: within one unit in the last place of the reference's rounding
    rtol = {"float32": 1e-5, "bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}[dtype]
    np.testing.assert_allclose(
        np.asarray(result[0] if isinstance(result, tuple) else result, np.float64),
        np.asarray(want[0] if isinstance(want, tuple) else want, np.float64), rtol=rtol)


PEAK_ABOVE_INPUTS = """
import sys
import numpy as np
import fastsoftmax as fs

def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

backend, smoothing, n_classes = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
fs.cross_entropy_with_grad(np.zeros((1, 70000), np.float32), np.zeros(1, np.int64),
                           label_smoothing=smoothing, backend=backend)  # compile, thread pool
x = np.random.default_rng(0).standard_normal((1, n_classes)).astype(np.float32)
target = np.array([n_classes // 3])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident set (VmHWM) := the current one
before = status_kb("VmRSS")
fs.cross_entropy_with_grad(x, target, label_smoothing=smoothing, inplace=True, backend=backend)
print((status_kb("VmHWM") - before) * 1024 / x.nbytes)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                    reason="peak resident set reset needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_in_place_call_with_uniform_weights_needs_no_class_sized_memory(backend, smoothing,
                                                                        tmp_path):
    """weight=None reaches the kernels as None, not as ones(C): before, a 1 x 2**26 float32
    call in place peaked at +1.0x the logits (a cached ones array); now under 5%
    (the README's reliability section; 1 x 2**28 measured the same way: see there)."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK_ABOVE_INPUTS)
    run = subprocess.run([sys.executable, str(script), backend, str(smoothing), str(2 ** 26)],
                         capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    peak = float(run.stdout.split()[-1])
    assert peak <= 0.05, f"peak resident set grew by {peak:.3f}x the logits during the call"
