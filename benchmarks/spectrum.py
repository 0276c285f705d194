"""Cost and accuracy of the spectrum tools, and the learning rate PowerMethodLR predicts.

1. LeNet-5 with 1000 MNIST images: time of top-1 (power iteration), top-10 (Lanczos), trace
   (Hutchinson) and density (stochastic Lanczos quadrature) as multiples of one gradient over
   the same data, same run. The top-10 is checked against scipy's ARPACK `eigsh` run over the
   same Hessian products (whose count and time are reported too).
2. The 784-30-10 tanh MLP: the learning rate PowerMethodLR predicts (1/λ_max on 500 images)
   against the best of a grid of 8 learning rates for one epoch of SGD, for batch sizes 1
   (on-line, as in LeCun's experiments), 8, 32 and 128: the best SGD rate moves with the
   gradient noise, 1/λ_max does not.

Writes benchmarks/results/spectrum.{json,md}.
Run: python benchmarks/spectrum.py [--runs 3] [--train-samples 20000]
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


def learning_rate_sweep(train_samples):
    """Per batch size: the grid's losses after one epoch, the best rate, the prediction's."""
    (x_all, y_all), _ = mnist()
    x_all = x_all.reshape(-1, 784).astype("float32") / 255.0

    def fresh(learning_rate):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(30, activation="tanh"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                      loss="sparse_categorical_crossentropy")
        return model

    def one_epoch(model, x, y, batch_size, callbacks=()):
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False,
                  callbacks=list(callbacks))
        loss = float(model.evaluate(x, y, batch_size=1000, verbose=0))
        return loss if np.isfinite(loss) else float("inf")

    sweep = []
    # On-line learning (batch 1) on fewer images, for time; the other batch sizes on all.
    for batch_size in (1, 8, 32, 128):
        samples = train_samples // 4 if batch_size == 1 else train_samples
        x, y = x_all[:samples], y_all[:samples]
        grid = {rate: one_epoch(fresh(rate), x, y, batch_size) for rate in GRID}
        best = min(grid, key=grid.get)
        row = {"batch_size": batch_size, "train_samples": samples,
               "grid_losses": {str(k): v for k, v in grid.items()},
               "best_learning_rate": best, "best_loss": grid[best]}
        # Once before training; and re-estimated every TRACK_IMAGES images, warm-started.
        for name, every_n_steps in (("initial", None),
                                    ("tracking", max(1, TRACK_IMAGES // batch_size))):
            callback = PowerMethodLR((x, y), num_samples=500, every_n_steps=every_n_steps,
                                     verbose=0)
            model, rates = fresh(GRID[0]), []
            recorder = keras.callbacks.LambdaCallback(  # The rate of every step.
                on_train_batch_begin=lambda batch, logs, model=model, rates=rates: rates.append(
                    float(model.optimizer.learning_rate)))
            loss = one_epoch(model, x, y, batch_size, [callback, recorder])
            predicted = statistics.median(rates)  # Over the epoch's steps.
            row[name] = {"every_n_steps": every_n_steps, "loss": loss,
                         "lambda_max_first": 1.0 / rates[0], "lambda_max_last": 1.0 / rates[-1],
                         "median_learning_rate": predicted, "first_learning_rate": rates[0],
                         "last_learning_rate": rates[-1],
                         "factor": max(predicted / best, best / predicted)}
        sweep.append(row)
    return sweep


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=20000)
    args = parser.parse_args()
    lenet = lenet_costs(args.runs)
    rates = learning_rate_sweep(args.train_samples)
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
    sweep = ["| SGD batch size | images | best rate of the grid | its loss | 1/λ_max before "
             "training: loss | factor | re-estimated every: rate first → last (median) | loss "
             "| factor |", "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    sweep += [f"| {r['batch_size']} | {r['train_samples']} | {r['best_learning_rate']} | "
              f"{r['best_loss']:.3f} | {r['initial']['loss']:.3f} | {r['initial']['factor']:.1f} "
              f"| {r['tracking']['every_n_steps']} steps: "
              f"{r['tracking']['first_learning_rate']:.3f} → "
              f"{r['tracking']['last_learning_rate']:.3f} "
              f"({r['tracking']['median_learning_rate']:.3f}) | {r['tracking']['loss']:.3f} | "
              f"{r['tracking']['factor']:.1f} |" for r in rates]
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
        f"λ_max = {rates[0]['initial']['lambda_max_first']:.3f} on 500 images at "
        f"initialization: predicted learning rate {rates[0]['initial']['first_learning_rate']:.3f}."
        f" Against the best of the grid {list(GRID)} for one epoch of SGD (training loss after "
        "the epoch), per batch size: PowerMethodLR estimating once before training, and "
        f"re-estimating every {TRACK_IMAGES} images (`every_n_steps`, warm-started) as λ_max "
        "falls; factor = the median rate over the epoch's steps against the best grid rate "
        f"(target: within {TARGETS['learning_rate_factor']}).\n\n"
        + "\n".join(sweep) + "\n")
    write("spectrum", {"environment": environment(), "targets": TARGETS, "lenet5": lenet,
                       "learning_rate_sweep": rates}, markdown)


if __name__ == "__main__":
    main()
