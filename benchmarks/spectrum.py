"""Cost and accuracy of the spectrum tools, and the learning rate PowerMethodLR predicts.

1. LeNet-5 with 1000 MNIST images: time of top-1 (power iteration), top-10 (Lanczos), trace
   (Hutchinson) and density (stochastic Lanczos quadrature) as multiples of one gradient over
   the same data, same run. The top-10 is checked against scipy's ARPACK `eigsh` run over the
   same Hessian products (whose count and time are reported too).
2. The 784-30-10 tanh MLP: the learning rate PowerMethodLR predicts (1/λ_max on 500 images)
   against the best of a grid of 8 learning rates for one epoch of SGD. The target holds in
   two settings, over three seeds: Keras's defaults (cross-entropy, batch 32) and LeCun's
   on-line learning (squared error, batch 1), both on standardized inputs. The other rows show
   where it does not: the best SGD rate moves with the gradient noise (about in proportion to
   the batch size), 1/λ_max does not; and on raw [0, 1] pixels the mean image adds curvature
   that the first steps remove.

Writes benchmarks/results/spectrum.{json,md}.
Run: python benchmarks/spectrum.py [--runs 3]
"""

import argparse
import statistics
import time

import keras
import numpy as np
import scipy.sparse.linalg
import tensorflow as tf
from _common import environment, mnist_batch, write

from keras_secondorder import curvature, spectrum
from keras_secondorder.callbacks import PowerMethodLR
from keras_secondorder.datasets import mnist

TARGETS = {"top_1": 24, "top_10": 150, "density": 128, "top_10_relative_error": 1e-3,
           "learning_rate_factor": 2.0}
TRACK_IMAGES = 2000  # PowerMethodLR(every_n_steps=...) re-estimates after this many images.
GRID = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Learning-rate settings: (name, loss, batch size, training images, inputs standardized, seeds).
# The first two carry the target: Keras's defaults, and LeCun's on-line squared-error setting.
SETTINGS = (
    ("keras_default", "cross-entropy", 32, 20000, True, (0, 1, 2)),
    ("lecun_online", "squared error", 1, 5000, True, (0, 1, 2)),
    ("batch_1", "cross-entropy", 1, 5000, True, (0,)),
    ("batch_8", "cross-entropy", 8, 20000, True, (0,)),
    ("batch_128", "cross-entropy", 128, 20000, True, (0,)),
    ("raw_inputs", "cross-entropy", 32, 20000, False, (0,)),
)
TARGET_SETTINGS = ("keras_default", "lecun_online")


def timed(function, runs):
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def lenet_costs(runs):
    from keras_secondorder import models

    keras.utils.set_random_seed(0)
    model = models.lenet5()
    model.compile(loss="sparse_categorical_crossentropy")
    x, y = mnist_batch(1000, padded=True)
    operator = curvature.HessianOperator(model, (x, y))
    gradient = tf.function(lambda: tf.add_n([tf.reduce_sum(g) for g in
                                              curvature.gradient(model, x, y)[1]]))
    gradient()
    operator.matvec(tf.zeros(operator.shape[0]))  # Traces the product.
    gradient_times = []

    def timed_with_gradients(task):
        # Gradients are timed between the task's runs, so both see the same machine state.
        times, result = [], None
        for _ in range(runs):
            gradient_times.append(timed(lambda: gradient().numpy(), 5)[0])
            seconds, result = timed(task, 1)
            times.append(seconds)
        return statistics.median(times), result

    tasks = {
        "top_1": lambda: spectrum.power_iteration(operator, k=1, tol=1e-3, max_iterations=100),
        "top_1_lanczos": lambda: spectrum.lanczos(operator, k=1, tol=1e-2, which="largest"),
        # Stops at Ritz residuals <= 1e-2 |θ|; the eigenvalue error is at most residual² / gap,
        # and eigsh checks it independently below.
        "top_10": lambda: spectrum.lanczos(operator, k=10, tol=1e-2, which="largest",
                                           num_iterations=150),
        "trace": lambda: spectrum.hutchinson_trace(operator, num_probes=20),
        "density": lambda: spectrum.spectral_density(operator, num_iterations=40),
    }
    measured = {name: timed_with_gradients(task) for name, task in tasks.items()}
    gradient_time = statistics.median(gradient_times)
    results = {name: {"seconds": seconds, "gradients": seconds / gradient_time,
                      "products": int(result.num_products)}
               for name, (seconds, result) in measured.items()}
    top_1 = tasks["top_1"]()
    top_10 = tasks["top_10"]()
    results["top_1"]["eigenvalue"] = float(top_1.eigenvalues[0])
    results["top_1_lanczos"]["eigenvalue"] = float(tasks["top_1_lanczos"]().largest[0])
    results["trace"]["value"] = float(tasks["trace"]().trace)
    results["density"]["negative_fraction"] = float(tasks["density"]().negative_fraction)

    products = {"count": 0}

    def matvec(vector):
        products["count"] += 1
        return operator.matvec(tf.constant(vector, operator.dtype)).numpy().astype(np.float64)

    linear = scipy.sparse.linalg.LinearOperator(operator.shape, matvec=matvec, dtype=np.float64)
    start = time.perf_counter()
    reference = np.sort(scipy.sparse.linalg.eigsh(linear, k=10, which="LA", tol=1e-8,
                                                  return_eigenvectors=False))[::-1]
    arpack_seconds = time.perf_counter() - start
    errors = np.abs(top_10.largest.numpy() - reference) / np.abs(reference)
    results["top_10"].update({
        "eigenvalues": top_10.largest.numpy().tolist(),
        "eigsh_eigenvalues": reference.tolist(),
        "max_relative_error": float(errors.max()),
        "eigsh_products": products["count"],
        "eigsh_gradients": arpack_seconds / gradient_time,
    })
    return {"gradient_seconds": gradient_time, "parameters": operator.shape[0], **results}


def learning_rate_sweep():
    """Per setting and seed: the grid's losses after one epoch, the best rate, PowerMethodLR's.

    Inputs are standardized as LeCun prescribes ("Efficient BackProp" 4.3: zero mean per input,
    one variance), except in the `raw_inputs` row ([0, 1] pixels): the mean image is a direction
    of large curvature (λ_max 8.4 against 5.9) that the first steps remove, so the rate one
    estimate before training gives is then conservative for the rest of the epoch.
    """
    (x_raw, labels), _ = mnist()
    x_raw = x_raw.reshape(-1, 784).astype("float32") / 255.0
    x_standard = (x_raw - x_raw.mean(axis=0)) / x_raw.std()

    def fresh(learning_rate, loss, seed):
        keras.utils.set_random_seed(seed)
        squared = loss == "squared error"  # Linear outputs against one-hot targets.
        model = keras.Sequential([
            keras.Input((784,)), keras.layers.Dense(30, activation="tanh"),
            keras.layers.Dense(10, activation=None if squared else "softmax")])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                      loss="mean_squared_error" if squared else "sparse_categorical_crossentropy")
        return model

    def one_epoch(model, x, y, batch_size, callbacks=()):
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False,
                  callbacks=list(callbacks))
        loss = float(model.evaluate(x, y, batch_size=1000, verbose=0))
        return loss if np.isfinite(loss) else float("inf")

    def with_power_method(loss, seed, x, y, batch_size, every_n_steps, best):
        """One epoch at the rates PowerMethodLR sets, against the best grid rate `best`."""
        callback = PowerMethodLR((x, y), num_samples=500, every_n_steps=every_n_steps, verbose=0)
        model, rates = fresh(GRID[0], loss, seed), []
        recorder = keras.callbacks.LambdaCallback(  # The rate of every step.
            on_train_batch_begin=lambda batch, logs: rates.append(
                float(model.optimizer.learning_rate)))
        final_loss = one_epoch(model, x, y, batch_size, [callback, recorder])
        predicted = statistics.median(rates)  # Over the epoch's steps.
        return {"every_n_steps": every_n_steps, "loss": final_loss,
                "lambda_max_first": 1.0 / rates[0], "lambda_max_last": 1.0 / rates[-1],
                "median_learning_rate": predicted, "first_learning_rate": rates[0],
                "last_learning_rate": rates[-1],
                "factor": max(predicted / best, best / predicted)}

    sweep = {}
    for name, loss, batch_size, samples, standardized, seeds in SETTINGS:
        x = (x_standard if standardized else x_raw)[:samples]
        y = labels[:samples]
        if loss == "squared error":
            y = np.eye(10, dtype="float32")[y]
        sweep[name] = {"loss": loss, "batch_size": batch_size, "train_samples": samples,
                       "standardized_inputs": standardized, "seeds": {}}
        for seed in seeds:
            grid = {rate: one_epoch(fresh(rate, loss, seed), x, y, batch_size) for rate in GRID}
            best = min(grid, key=grid.get)
            row = {"grid_losses": {str(k): v for k, v in grid.items()},
                   "best_learning_rate": best, "best_loss": grid[best]}
            # Once before training; and re-estimated every TRACK_IMAGES images, warm-started.
            row["initial"] = with_power_method(loss, seed, x, y, batch_size, None, best)
            row["tracking"] = with_power_method(loss, seed, x, y, batch_size,
                                                max(1, TRACK_IMAGES // batch_size), best)
            sweep[name]["seeds"][str(seed)] = row
            print(name, seed, best, row["initial"]["first_learning_rate"],
                  row["initial"]["factor"], row["tracking"]["factor"], flush=True)
    return sweep


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    lenet = lenet_costs(args.runs)
    rates = learning_rate_sweep()
    rows = ["| task | products | time (s) | gradients | target |",
            "| --- | ---: | ---: | ---: | --- |"]
    for name, label in (("top_1", "top-1 eigenvalue (power iteration, tol 1e-3)"),
                        ("top_1_lanczos", "top-1 eigenvalue (Lanczos, residual 1e-2)"),
                        ("top_10", "top-10 eigenvalues (Lanczos, residual 1e-2)"),
                        ("trace", "trace (Hutchinson, 20 probes)"),
                        ("density", "density (SLQ, 40 nodes)")):
        target = f"<= {TARGETS[name]}" if name in TARGETS else ""
        rows.append(f"| {label} | {lenet[name]['products']} | {lenet[name]['seconds']:.2f} | "
                    f"{lenet[name]['gradients']:.0f} | {target} |")
    top_10 = lenet["top_10"]
    rows.append(f"| top-10 by scipy eigsh (ARPACK), same products | {top_10['eigsh_products']} | "
                f"| {top_10['eigsh_gradients']:.0f} | |")
    sweep = ["| setting | loss | SGD batch size | images | inputs | seed | best rate of the grid "
             "| its loss | 1/λ_max before training: rate | loss | factor | re-estimated every: "
             "rate first → last (median) | loss | factor |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | "
             "---: | ---: |"]
    for name, setting in rates.items():
        for seed, r in setting["seeds"].items():
            once, tracking = r["initial"], r["tracking"]
            sweep.append(
                f"| {name} | {setting['loss']} | {setting['batch_size']} | "
                f"{setting['train_samples']} | "
                f"{'standardized' if setting['standardized_inputs'] else '[0, 1]'} | {seed} | "
                f"{r['best_learning_rate']} | {r['best_loss']:.3f} | "
                f"{once['first_learning_rate']:.3f} | {once['loss']:.3f} | {once['factor']:.2f} | "
                f"{tracking['every_n_steps']} steps: {tracking['first_learning_rate']:.3f} → "
                f"{tracking['last_learning_rate']:.3f} ({tracking['median_learning_rate']:.3f}) | "
                f"{tracking['loss']:.3f} | {tracking['factor']:.2f} |")
    headline = "; ".join(
        f"{name}: factor " + ", ".join(format(r["initial"]["factor"], ".2f")
                                       for r in rates[name]["seeds"].values()) + " (per seed)"
        for name in TARGET_SETTINGS)
    markdown = (
        "# Spectrum tools\n\n"
        f"LeNet-5 ({lenet['parameters']:,} parameters), Hessian on 1000 MNIST images; "
        f"one gradient = {1000 * lenet['gradient_seconds']:.0f} ms; medians of {args.runs} "
        f"runs; {environment()['cpus']} CPU cores, TensorFlow {tf.__version__}.\n\n"
        + "\n".join(rows) + "\n\n"
        f"Top-10 from Lanczos vs eigsh: largest relative error {top_10['max_relative_error']:.1e}"
        f" (target <= {TARGETS['top_10_relative_error']}). top-1: power iteration "
        f"{lenet['top_1']['eigenvalue']:.5g}, Lanczos {lenet['top_1_lanczos']['eigenvalue']:.5g},"
        f" eigsh {top_10['eigsh_eigenvalues'][0]:.5g}.\n\n"
        "## PowerMethodLR on the 784-30-10 MLP\n\n"
        f"One epoch of SGD with each rate of the grid {list(GRID)} (training loss after the "
        "epoch) against PowerMethodLR (λ_max of the Hessian on 500 of the images), estimating "
        f"once before training, and re-estimating every {TRACK_IMAGES} images (`every_n_steps`, "
        "warm-started) as λ_max falls; factor = the median rate over the epoch's steps against "
        f"the best grid rate (target: within {TARGETS['learning_rate_factor']}). Inputs "
        "standardized as LeCun prescribes (zero mean per pixel, one variance) except in the "
        "`raw_inputs` row. The target settings, one estimate before training: "
        f"{headline}.\n\n"
        + "\n".join(sweep) + "\n")
    write("spectrum", {"environment": environment(), "targets": TARGETS, "lenet5": lenet,
                       "learning_rate_sweep": rates}, markdown)


if __name__ == "__main__":
    main()
