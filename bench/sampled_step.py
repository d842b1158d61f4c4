"""One training step of the output layer: sampled softmax against the full softmax, timed
in interleaved rounds in one process (median ms per step and ratios).

    python -m bench.sampled_step                      # V=131072 D=512 N=1024 S=1024, float32
    python -m bench.sampled_step --rounds 5 --threads 2
    python -m bench.sampled_step --threads 1 --no-full   # the sampled steps alone

A step is the loss and the gradients of inputs, weights and biases (a bias everywhere):

* ``fs-sampled``: fs.sampled_softmax_loss_with_grad, the default sampler's draw included;
* ``fs-sampled-torch`` / ``-sparse``: fastsoftmax.torch.SampledSoftmaxLoss forward +
  backward, dense gradients (index_add_ into zeros of V x D) or sparse COO;
* ``torch-sampled``: the same graph in plain torch ops (gathers, matmul, cross_entropy
  with probability targets) + backward, on the module's draw;
* ``fs-full``: fs.linear_cross_entropy_with_grad (chunked, never the N x V logits);
* ``torch-full``: F.linear + F.cross_entropy + backward;
* ``tf-sampled``: tf.nn.sampled_softmax_loss + its gradient (tf.function, TF's own sampler;
  sparse IndexedSlices gradients), when tensorflow is importable. TensorFlow pins its own
  NumPy, so it lives in another venv; run this script there as well (rows that cannot
  import are left out) and compare through the ``fs-sampled`` row present in both runs.

With TensorFlow, the script also prints the loss difference between
fs.sampled_softmax_loss and tf.nn.sampled_softmax_loss on the same sampled values.
"""
import argparse
import importlib.util
import os
import time

import numpy as np

import fastsoftmax as fs


def problem(v, d, n, dtype, seed=0):
    """weights (v, d), biases (v,), labels (n, 1), inputs (n, d): read-only."""
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((v, d)) / np.sqrt(d)).astype(dtype)
    biases = (0.1 * rng.standard_normal(v)).astype(dtype)
    inputs = rng.standard_normal((n, d)).astype(dtype)
    # Zipf-like labels, as the log-uniform sampler presumes (class 0 the most frequent)
    labels = np.minimum(rng.zipf(1.2, (n, 1)) - 1, v - 1).astype(np.int64)
    for array in (weights, biases, inputs, labels):
        array.flags.writeable = False
    return weights, biases, labels, inputs


def numpy_steps(weights, biases, labels, inputs, num_sampled):
    v = weights.shape[0]
    rng = np.random.default_rng(1)
    return {
        "fs-sampled": lambda: fs.sampled_softmax_loss_with_grad(
            weights, biases, labels, inputs, num_sampled, v, seed=rng),
        "fs-full": lambda: fs.linear_cross_entropy_with_grad(
            inputs, weights, labels[:, 0], bias=biases, reduction="sum"),
    }


def torch_steps(weights, biases, labels, inputs, num_sampled):
    import torch
    import torch.nn.functional as F

    import fastsoftmax.torch as fst
    v, d = weights.shape
    heads = {}
    for sparse in (False, True):
        head = fst.SampledSoftmaxLoss(v, d, num_sampled, seed=1, sparse=sparse,
                                      reduction="sum")
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weights))
            head.bias.copy_(torch.from_numpy(biases))
        heads[sparse] = head
    x = torch.from_numpy(inputs.copy()).requires_grad_(True)
    t_labels = torch.from_numpy(labels.copy())
    w = torch.from_numpy(weights.copy()).requires_grad_(True)
    b = torch.from_numpy(biases.copy()).requires_grad_(True)

    def module_step(head):
        def step():
            head.zero_grad(set_to_none=True)
            x.grad = None
            head(x, t_labels).backward()
        return step

    def plain_sampled():
        sampled, true_count, sampled_count = (torch.from_numpy(a)
                                              for a in heads[False].sample(t_labels))
        w.grad = b.grad = x.grad = None
        true_logits = (x[:, None, :] * w[t_labels]).sum(-1) + b[t_labels] - true_count.log()
        sampled_logits = x @ w[sampled].T + b[sampled] - sampled_count.log()
        hit = (t_labels[:, :, None] == sampled).any(1)
        sampled_logits = sampled_logits.masked_fill(hit, torch.finfo(x.dtype).min)
        logits = torch.cat([true_logits, sampled_logits], 1)
        target = torch.cat([torch.ones_like(true_logits), torch.zeros_like(sampled_logits)], 1)
        F.cross_entropy(logits, target, reduction="sum").backward()

    def full():
        w.grad = b.grad = x.grad = None
        F.cross_entropy(F.linear(x, w, b), t_labels[:, 0], reduction="sum").backward()

    return {"fs-sampled-torch": module_step(heads[False]),
            "fs-sampled-torch-sparse": module_step(heads[True]),
            "torch-sampled": plain_sampled, "torch-full": full}


def tensorflow_steps(weights, biases, labels, inputs, num_sampled):
    import tensorflow as tf
    v = weights.shape[0]
    w, b = tf.Variable(weights), tf.Variable(biases)
    x, t_labels = tf.constant(inputs), tf.constant(labels)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.sampled_softmax_loss(w, b, t_labels, x, num_sampled, v))
        return tape.gradient(loss, [w, b, x])

    # the loss difference on the same sampled values (TF's log-counts in the inputs' dtype)
    values = fs.log_uniform_candidate_sampler(labels, 1, num_sampled, True, v, seed=5)
    ours = fs.sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, v,
                                   sampled_values=values)
    ours64 = fs.sampled_softmax_loss(*(a.astype(np.float64) for a in (weights, biases)),
                                     labels, inputs.astype(np.float64), num_sampled, v,
                                     sampled_values=values)
    tf_values = (tf.constant(values[0]), *(tf.constant(c.astype(inputs.dtype))
                                           for c in values[1:]))
    theirs = tf.nn.sampled_softmax_loss(w, b, t_labels, x, num_sampled, v,
                                        sampled_values=tf_values).numpy()
    for name, a in (("fs float32", ours), ("fs float64", ours64)):
        difference = np.abs(a.astype(np.float64) - theirs)
        print(f"loss difference {name} - tf.nn.sampled_softmax_loss (float32), same sampled "
              f"values: max abs {difference.max():.3g}, max rel "
              f"{np.max(difference / np.abs(theirs)):.3g} (losses {theirs.min():.3g}.."
              f"{theirs.max():.3g})")
    return {"tf-sampled": step}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="131072x512x1024x1024", help="V x D x N x S")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-full", action="store_true",
                        help="leave out the full-softmax steps (seconds each)")
    args = parser.parse_args(argv)
    v, d, n, s = map(int, args.shape.split("x"))
    fs.set_num_threads(args.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data = problem(v, d, n, args.dtype)
    steps = numpy_steps(*data, s)
    if importlib.util.find_spec("torch"):
        import torch
        torch.set_num_threads(args.threads)
        steps.update(torch_steps(*data, s))
    if importlib.util.find_spec("tensorflow"):
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        steps.update(tensorflow_steps(*data, s))
    if args.no_full:
        steps = {name: step for name, step in steps.items() if not name.endswith("-full")}
    print(f"V={v} D={d} N={n} S={s} {args.dtype}, {args.threads} threads, "
          f"backend {fs.get_backend()}; steps: {', '.join(steps)}", flush=True)
    for step in steps.values():  # warm-up: JIT, tf.function tracing, page faults
        step()
    times = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
        print("round", r, {k: round(1e3 * t[-1], 1) for k, t in times.items()}, flush=True)
    anchor = np.array(times["fs-sampled"])
    print(f"{'step':26s} {'median ms':>10s} {'/ fs-sampled':>13s}")
    for name, values in times.items():
        values = np.array(values)
        print(f"{name:26s} {1e3 * np.median(values):10.1f} {np.median(values / anchor):13.2f}")


if __name__ == "__main__":
    main()
