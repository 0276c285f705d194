"""Martens' (2010) MNIST deep autoencoder: Hessian-free vs Adam vs SGD with Nesterov momentum.

784-1000-500-250-30 encoder, mirrored decoder, logistic units except the linear code layer;
cross-entropy on the logistic outputs summed over the 784 pixels and averaged over images
(`binary_crossentropy` with `loss_weights=784`), weight cost `0.5 * 2e-5 |w|²` (`L2(1e-5)`),
sparse initialization (15 incoming N(0, 1) weights per unit, zero biases), no pre-training. All
methods start from the same weights and train on the full 60000-image training set for the same
wall-clock budget (`--minutes`) in this one run, one after the other. The clock counts training
only: every `--eval-every` seconds it stops while the per-image squared reconstruction error
(summed over pixels, averaged over images) is measured on the whole training and test sets.

Settings: HessianFree with Martens' defaults (lambda 45, 5e-4 stopping rule, curvature and
preconditioner on a quarter of each batch) except CG capped at `--hf-cg` iterations (Martens: 250),
on batches of `--hf-batch` images, and lambda floored at `--hf-min-damping` (Martens: 0). The batch
and cap are the best of 4-minute pilots on 2 CPUs (training error on 10000 images after 4 minutes:
batch 2000 / CG 50: 4.63, 2000 / 100: 6.79, 1000 / 50: 5.28): with per-iteration costs this high,
more, shorter iterations win. Adam and SGD+Nesterov train on batches of 200 (Sutskever et al.
2013); their learning rate (and Adam's, and the momentum 0.99 of SGD) is the best of a grid, each
grid point trained for `--pilot-seconds` from the same start, judged by the training error at the
end.

Then a LeNet-5 classification run: HessianFree against SDLM on the subset of
`benchmarks/optimizers_mnist.py`, for `--lenet-minutes` each.

Usage: python benchmarks/deep_autoencoder.py [--minutes 30] [--data DIR] [...]
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf
from _common import RESULTS, environment, write

import keras_secondorder as ks
from keras_secondorder.datasets import lenet_preprocess, mnist
from keras_secondorder.models import SparseInitializer, deep_autoencoder, lenet5

ADAM_RATES = (1e-4, 3e-4, 1e-3)
NESTEROV_RATES = (1e-4, 3e-4, 1e-3, 3e-3)
SMALL_BATCH = 200
HF_KEYS = ("cg_iterations", "rho", "damping", "step_size", "model_reduction", "rejected_steps")
MARTENS_ERRORS = {"train": 1.64, "test": 2.78}  # Random-init HF, Martens 2010, table 1.


class WallClock(keras.callbacks.Callback):
    """Stops training after `budget` seconds of training, measuring every `every` seconds.

    Time spent measuring is not counted. `measurements` holds `(seconds, measure(model))`.
    """

    def __init__(self, budget, every, measure):
        super().__init__()
        self.budget, self.every, self.measure = budget, every, measure
        self.measurements, self.step_logs = [], []

    def on_train_begin(self, logs=None):
        self.measurements.append((0.0, self.measure(self.model)))
        self.start, self.paused, self.next = time.perf_counter(), 0.0, self.every

    def elapsed(self):
        return time.perf_counter() - self.start - self.paused

    def on_train_batch_end(self, batch, logs=None):
        elapsed = self.elapsed()
        if logs and "cg_iterations" in logs:  # HessianFree's diagnostics, step by step.
            self.step_logs.append({key: float(logs[key]) for key in HF_KEYS})
        if elapsed >= self.next or elapsed >= self.budget:
            pause = time.perf_counter()
            values = self.measure(self.model)
            self.measurements.append((elapsed, values))
            print(f"  {elapsed:7.1f} s  {values}", flush=True)
            self.paused += time.perf_counter() - pause
            self.next += self.every
        if elapsed >= self.budget:
            self.model.stop_training = True


def squared_error_of(images):
    """Model -> per-image squared reconstruction error on `images` (summed over pixels)."""
    data = tf.data.Dataset.from_tensor_slices(images).batch(5000).cache()

    compiled = {}  # One tf.function per model, traced once.

    def measure(model):
        if model not in compiled:
            compiled.clear()
            compiled[model] = tf.function(
                lambda x: tf.reduce_sum(tf.square(model(x, training=False) - x)))
        total = sum(float(compiled[model](x)) for x in data)
        return total / len(images)

    return measure


def autoencoder(seed=0):
    keras.utils.set_random_seed(seed)
    return ks.wrap(deep_autoencoder(kernel_initializer=SparseInitializer(seed=seed),
                                    kernel_regularizer=keras.regularizers.L2(1e-5)))


def train(build, optimizer, data, batch_size, seconds, every, measure, loss, loss_weights=None):
    model = build()
    model.compile(optimizer, loss, loss_weights=loss_weights)
    clock = WallClock(seconds, every, measure)
    model.fit(*data, batch_size=batch_size, epochs=100000, shuffle=True, verbose=0,
              callbacks=[clock])
    return clock.measurements, clock.step_logs


def at(measurements, seconds):
    """The first measurement at or after `seconds` of training (after the step crossing it)."""
    after = [values for elapsed, values in measurements if elapsed >= seconds - 1e-6]
    return after[0] if after else None


def pilot(make, rates, data, args, measure):
    """The grid point with the lowest training error after `--pilot-seconds`."""
    errors = {}
    for rate in rates:
        measurements, _ = train(autoencoder, make(rate), data, SMALL_BATCH, args.pilot_seconds,
                                args.pilot_seconds, measure, "binary_crossentropy", [784.0])
        error = measurements[-1][1]
        errors[rate] = error if np.isfinite(error) else float("inf")
        print(f"  pilot lr={rate}: {errors[rate]:.3f}", flush=True)
    return min(errors, key=errors.get), errors


def autoencoder_part(args):
    (x_train, _), (x_test, _) = mnist(args.data)
    train_images = (x_train.reshape(-1, 784) / 255.0).astype("float32")
    test_images = (x_test.reshape(-1, 784) / 255.0).astype("float32")
    train_error, test_error = squared_error_of(train_images), squared_error_of(test_images)
    pilot_error = squared_error_of(train_images[:10000])

    def both(model):
        return {"train": train_error(model), "test": test_error(model)}

    data = (train_images, train_images)
    adam_rate, adam_pilot = pilot(keras.optimizers.Adam, ADAM_RATES, data, args, pilot_error)
    nesterov_rate, nesterov_pilot = pilot(
        lambda rate: keras.optimizers.SGD(rate, momentum=0.99, nesterov=True), NESTEROV_RATES,
        data, args, pilot_error)
    runs = {
        "hessian_free": (ks.optimizers.HessianFree(max_cg_iterations=args.hf_cg,
                                                   min_damping=args.hf_min_damping),
                         args.hf_batch),
        f"adam lr={adam_rate}": (keras.optimizers.Adam(adam_rate), SMALL_BATCH),
        f"sgd nesterov 0.99 lr={nesterov_rate}": (
            keras.optimizers.SGD(nesterov_rate, momentum=0.99, nesterov=True), SMALL_BATCH),
    }
    results = {}
    for name, (optimizer, batch_size) in runs.items():
        print(name, flush=True)
        measurements, step_logs = train(autoencoder, optimizer, data, batch_size,
                                        args.minutes * 60, args.eval_every, both,
                                        "binary_crossentropy", [784.0])
        results[name] = {"batch_size": batch_size, "curve": measurements}
        for minutes in args.checkpoints:
            results[name][f"at_{minutes}_min"] = at(measurements, minutes * 60)
        if step_logs:
            results[name]["hf_steps"] = step_logs
    return results, {"adam": adam_pilot, "nesterov": nesterov_pilot}


def lenet_part(args):
    (x_train, y_train), (x_test, y_test) = mnist(args.data)
    train_data = (lenet_preprocess(x_train[:6000]), y_train[:6000].astype("int32"))
    test_data = (lenet_preprocess(x_test[:2000]), y_test[:2000].astype("int32"))

    def measure(model):
        loss = model.evaluate(*train_data, batch_size=1000, verbose=0)
        predictions = np.argmax(model.predict(test_data[0], batch_size=1000, verbose=0), -1)
        return {"train_loss": float(loss), "test_error": float(np.mean(predictions
                                                                        != test_data[1]))}

    def build():
        keras.utils.set_random_seed(0)
        return ks.wrap(lenet5())

    runs = {"hessian_free batch 2000": (ks.optimizers.HessianFree(damping=1.0), 2000),
            "sdlm eps=0.005 batch 32": (ks.optimizers.SDLM(0.005, reestimate_every=187), 32)}
    results = {}
    for name, (optimizer, batch_size) in runs.items():
        print(name, flush=True)
        measurements, _ = train(build, optimizer, train_data, batch_size, args.lenet_minutes * 60,
                                args.lenet_minutes * 15, measure,
                                "sparse_categorical_crossentropy")
        results[name] = {"curve": measurements, "final": measurements[-1][1]}
    return results


def plot(results, path):
    """Training (solid) and test (dashed) error against training minutes, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, result in results.items():
        minutes = [elapsed / 60 for elapsed, _ in result["curve"]]
        line, = axis.plot(minutes, [v["train"] for _, v in result["curve"]], label=name)
        axis.plot(minutes, [v["test"] for _, v in result["curve"]], "--", color=line.get_color())
    axis.axhline(MARTENS_ERRORS["train"], color="gray", lw=0.8, label="Martens 2010 HF (train)")
    axis.set(xlabel="training time (minutes)", ylabel="squared reconstruction error per image",
             yscale="log", title="MNIST deep autoencoder (solid: train, dashed: test)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(results, pilots, lenet, args):
    names = list(results)
    lines = [
        "# Deep autoencoder (MNIST): Hessian-free vs Adam vs SGD + Nesterov",
        "",
        f"Per-image squared reconstruction error (train / test), full sets, {args.minutes} min "
        f"of training per method on this machine ({environment()['cpus']} CPUs), same run. "
        "Generated by `benchmarks/deep_autoencoder.py`.",
        "",
        "| method | batch | " + " | ".join(f"{m} min" for m in args.checkpoints) + " |",
        "| --- | --- | " + " | ".join("---" for _ in args.checkpoints) + " |",
    ]
    for name in names:
        cells = []
        for minutes in args.checkpoints:
            value = results[name][f"at_{minutes}_min"]
            cells.append("-" if value is None else f"{value['train']:.2f} / {value['test']:.2f}")
        lines.append(f"| {name} | {results[name]['batch_size']} | " + " | ".join(cells) + " |")
    best = {}
    for minutes in args.checkpoints:
        values = {n: results[n][f"at_{minutes}_min"] for n in names}
        finite = {n: v["train"] for n, v in values.items() if v and np.isfinite(v["train"])}
        best[minutes] = min(finite, key=finite.get) if finite else None
    hf_final = results["hessian_free"][f"at_{args.checkpoints[-1]}_min"] or (
        results["hessian_free"]["curve"][-1][1])
    steps = results["hessian_free"]["hf_steps"]
    lines += [
        "",
        "Lowest training error: " + ", ".join(f"{m} min: {best[m]}" for m in args.checkpoints)
        + ".",
        f"Martens (2010) reports {MARTENS_ERRORS['train']} train / {MARTENS_ERRORS['test']} test "
        f"for random-init HF (hours on a GPU); here HF reached {hf_final['train']:.2f} train, "
        f"{hf_final['train'] - MARTENS_ERRORS['train']:.2f} above it.",
        f"HF: {len(steps)} iterations, CG iterations per step median "
        f"{np.median([step['cg_iterations'] for step in steps]):.0f} (max "
        f"{max(step['cg_iterations'] for step in steps):.0f}), "
        f"{steps[-1]['rejected_steps']:.0f} rejected steps, final lambda "
        f"{steps[-1]['damping']:.3g}.",
        "",
        f"![error against time]({args.name}.png)",
        "",
        f"Learning-rate pilots ({args.pilot_seconds:.0f} s each, training error on 10000 "
        f"images): Adam {pilots['adam']}, Nesterov {pilots['nesterov']}.",
        "",
        f"## LeNet-5 (6000-image subset, {args.lenet_minutes} min each)",
        "",
        "| method | training loss | test error (2000 images) |",
        "| --- | --- | --- |",
    ]
    for name, result in lenet.items():
        lines.append(f"| {name} | {result['final']['train_loss']:.4f} | "
                     f"{100 * result['final']['test_error']:.2f}% |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--checkpoints", type=float, nargs="+", default=[5, 15, 30])
    parser.add_argument("--eval-every", type=float, default=150.0)
    parser.add_argument("--pilot-seconds", type=float, default=45.0)
    parser.add_argument("--hf-batch", type=int, default=2000)
    parser.add_argument("--hf-cg", type=int, default=50)
    parser.add_argument("--hf-min-damping", type=float, default=0.0)
    parser.add_argument("--lenet-minutes", type=float, default=3.0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--name", default="deep_autoencoder")
    args = parser.parse_args()
    args.checkpoints = [c if c != int(c) else int(c) for c in args.checkpoints]
    results, pilots = autoencoder_part(args)
    lenet = lenet_part(args)
    payload = {"environment": environment(), "settings": vars(args), "autoencoder": results,
               "pilots": {k: {str(r): e for r, e in v.items()} for k, v in pilots.items()},
               "lenet5": lenet, "martens_2010": MARTENS_ERRORS}
    plot(results, RESULTS / f"{args.name}.png")
    write(args.name, payload, markdown(results, pilots, lenet, args))


if __name__ == "__main__":
    main()
