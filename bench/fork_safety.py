"""Does a library's parallel call still work in a child forked after the parent made it?

    python -m bench.fork_safety [--timeout 60]

For each implementation: one call in this process, then the same call in a child from
``multiprocessing.get_context(method)`` for "fork", "forkserver" and "spawn". Prints
"ok", "wrong result", "hang" (no answer within the timeout) or "died (exit code)" per
start method. Each probe runs in a fresh interpreter so that one library's threads do not
affect another's. fastsoftmax: cross_entropy_with_grad on each backend; PyTorch:
F.cross_entropy + backward; scikit-learn: its multinomial logistic loss gradient.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile

PROBE = r'''
import multiprocessing as mp, sys
import numpy as np

def call(name):
    x = np.random.default_rng(0).standard_normal((8192, 1000)).astype(np.float32)
    t = np.arange(8192) % 1000
    if name.startswith("fastsoftmax-"):
        import fastsoftmax as fs
        return float(fs.cross_entropy_with_grad(x, t, backend=name.split("-", 1)[1])[0])
    if name == "torch":
        import torch
        xt = torch.from_numpy(x).requires_grad_()
        loss = torch.nn.functional.cross_entropy(xt, torch.from_numpy(t))
        loss.backward()
        return float(loss)
    if name == "scikit-learn":
        from sklearn._loss.loss import HalfMultinomialLoss
        loss, _ = HalfMultinomialLoss(n_classes=1000).loss_gradient(
            t.astype(np.float64), x.astype(np.float64), n_threads=2)
        return float(loss.mean())
    raise ValueError(name)

if __name__ == "__main__":
    name, method = sys.argv[1], sys.argv[2]
    want = call(name)
    with mp.get_context(method).Pool(1) as pool:
        got = pool.apply(call, (name,))
    print("ok" if abs(got - want) <= 1e-6 * abs(want) else "wrong result")
'''


def implementations():
    names = []
    import fastsoftmax as fs
    names += [f"fastsoftmax-{b}" for b in fs.available_backends() if b != "numpy"]
    import importlib.util
    names += [n for n, module in (("torch", "torch"), ("scikit-learn", "sklearn"))
              if importlib.util.find_spec(module)]
    return names


def probe(name, method, timeout):
    # a file, not -c: "spawn" and "forkserver" children import the main module by path
    with tempfile.TemporaryDirectory() as directory:
        script = os.path.join(directory, "probe.py")
        with open(script, "w") as f:
            f.write(PROBE)
        # its own session, so that a hung probe and its pool children are killed together
        process = subprocess.Popen([sys.executable, script, name, method], text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return "hang"
    if process.returncode != 0:
        return f"died ({process.returncode}: {stderr.strip().splitlines()[-1][:80]})"
    return stdout.strip().splitlines()[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    methods = ["fork", "forkserver", "spawn"]
    print("| implementation | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for name in implementations():
        cells = [probe(name, method, args.timeout) for method in methods]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
