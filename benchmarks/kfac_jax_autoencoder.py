"""kfac-jax (DeepMind's K-FAC) on the deep autoencoder of `deep_autoencoder.py`, in its sitting.

The reference K-FAC for `deep_autoencoder.py`'s `kfac_adam` group, measured on the same
machine on the same day: machine speed here varies by up to 2x from day to day (a plain
gradient at batch 2000 took 0.100 s on 2026-12-03 and 0.19 s on 2026-12-04), so wall-clock
targets are only comparable within one sitting.

Same model, objective, start and data as `deep_autoencoder.py` (it writes them:
`python benchmarks/deep_autoencoder.py --write-start START.npz`): 784-1000-500-250-30 and back,
logistic units but the linear code layer, cross-entropy on the logistic outputs summed over
pixels and averaged over images, plus `1e-5 |W|²` on the kernels (kfac-jax's `l2_reg` is the
coefficient of `½ |w|²`, so 2e-5). kfac-jax's own autoencoder example's settings (adaptive
learning rate, momentum and damping; initial damping 150 in [1e-5, 1000]; damping adapted
every 5 steps by 0.95; inverses every 5 steps; curvature EMA 0.95; 5 burn-in steps), on
shuffled batches of `--batch` images. The clock counts training only (first step's compile
included); every `--eval-every` seconds it stops while the per-image squared reconstruction
error is measured on the whole training and test sets, as `deep_autoencoder.py`'s does.
The step's cost is also given in plain gradients of the same loss at the same batch (a jitted
`value_and_grad`, median of 20).

It runs in a Python with `jax` and `kfac-jax` (not the project's dependencies): e.g.
`python3.11 -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install kfac-jax==0.0.8 jax`, then
`/tmp/jaxenv/bin/python benchmarks/kfac_jax_autoencoder.py --start START.npz`. Its result
goes to `results/kfac_jax_autoencoder.json` (keyed by batch size), which `deep_autoencoder.py`
puts in its table and plot.
"""

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
LINEAR_LAYERS = (3,)  # The code layer; the last layer's logistic is in the loss.
L2 = 1e-5


def logits(params, x):
    hidden = x
    for index, (kernel, bias) in enumerate(params):
        hidden = hidden @ kernel + bias
        if index not in LINEAR_LAYERS and index < len(params) - 1:
            hidden = jax.nn.sigmoid(hidden)
    return hidden


def loss(params, x):
    out = logits(params, x)
    kfac_jax.register_sigmoid_cross_entropy_loss(out, x)
    cross_entropy = jnp.sum(jnp.maximum(out, 0) - out * x + jnp.log1p(jnp.exp(-jnp.abs(out))),
                            axis=-1)
    return jnp.mean(cross_entropy) + L2 * sum(jnp.sum(kernel**2) for kernel, _ in params)


@jax.jit
def summed_squared_error(params, images):
    return jnp.sum(jnp.square(jax.nn.sigmoid(logits(params, images)) - images))


def squared_error(params, images):
    """Per-image squared reconstruction error, in chunks of 5000 images (compiled once)."""
    return sum(float(summed_squared_error(params, images[i:i + 5000]))
               for i in range(0, len(images), 5000)) / len(images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", required=True, help="the .npz of deep_autoencoder.py "
                                                        "--write-start")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--eval-every", type=float, default=150.0)
    parser.add_argument("--checkpoints", type=float, nargs="+", default=[5, 10, 15, 30])
    args = parser.parse_args()
    start = np.load(args.start)
    train, test = start["x_train"], start["x_test"]
    layers = sum(name.startswith("kernel_") for name in start.files)
    params = [(jnp.asarray(start[f"kernel_{i}"]), jnp.asarray(start[f"bias_{i}"]))
              for i in range(layers)]
    optimizer = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss), l2_reg=2 * L2,
        use_adaptive_learning_rate=True, use_adaptive_momentum=True, use_adaptive_damping=True,
        initial_damping=150.0, min_damping=1e-5, max_damping=1000.0,
        damping_adaptation_interval=5, damping_adaptation_decay=0.95, inverse_update_period=5,
        curvature_ema=0.95, num_burnin_steps=5, multi_device=False)
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(0)

    def batches():
        while True:
            order = rng.permutation(len(train))
            for i in range(0, len(train) - args.batch + 1, args.batch):
                yield jnp.asarray(train[order[i:i + args.batch]])

    stream = batches()
    budget, curve, steps = args.minutes * 60, [], 0

    def measure(elapsed):
        values = {"train": squared_error(params, train), "test": squared_error(params, test)}
        curve.append((elapsed, values))
        print(f"  {elapsed:7.1f} s  {values}", flush=True)

    sitting = time.strftime("%Y-%m-%d %H:%M")  # When it starts, as deep_autoencoder.py's.
    measure(0.0)
    clock, paused, next_eval = time.perf_counter(), 0.0, args.eval_every
    state = first_step = None
    while True:
        key, step_key = jax.random.split(key)
        if state is None:  # The burn-in steps estimate the curvature from the stream's batches.
            state = optimizer.init(params, step_key, next(stream))
            data = {"data_iterator": stream}
        else:
            data = {"batch": next(stream)}
        params, state, stats = optimizer.step(params, state, step_key, **data,
                                              global_step_int=steps)
        jax.block_until_ready(params)
        steps += 1
        elapsed = time.perf_counter() - clock - paused
        first_step = elapsed if first_step is None else first_step
        if elapsed >= next_eval or elapsed >= budget:
            pause = time.perf_counter()
            measure(elapsed)
            paused += time.perf_counter() - pause
            next_eval += args.eval_every
        if elapsed >= budget:
            break
    step_seconds = (curve[-1][0] - first_step) / max(steps - 1, 1)
    gradient = jax.jit(jax.value_and_grad(loss))
    batch = next(stream)
    jax.block_until_ready(gradient(params, batch))
    times = []
    for _ in range(20):
        begin = time.perf_counter()
        jax.block_until_ready(gradient(params, batch))
        times.append(time.perf_counter() - begin)
    result = {"sitting": sitting, "kfac_jax": kfac_jax.__version__,
              "jax": jax.__version__, "batch_size": args.batch, "steps": steps,
              "step_seconds": step_seconds, "gradient_seconds": statistics.median(times),
              "gradients_per_step": step_seconds / statistics.median(times),
              "final_damping": float(stats.get("damping", float("nan"))), "curve": curve,
              "best_test": min(values["test"] for _, values in curve)}
    for checkpoint in args.checkpoints:
        after = [values for elapsed, values in curve if elapsed >= checkpoint * 60 - 1e-6]
        result[f"at_{checkpoint:g}_min"] = after[0] if after else None
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1), flush=True)
    path = RESULTS / "kfac_jax_autoencoder.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[str(args.batch)] = result
    path.write_text(json.dumps(stored, indent=2) + "\n")


if __name__ == "__main__":
    main()
