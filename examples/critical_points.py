"""Dauphin et al.'s critical points: the index (fraction of negative eigenvalues) against error.

A one-hidden-layer tanh network on MNIST downscaled to 10x10 (`--hidden` units: 2230 weights at
20), cross-entropy on `--examples` training images, small enough for the exact Hessian. Critical
points are searched from many starting points (weights along an SGD trajectory, and random
initializations at several scales) by minimizing `½ |∇f(w)|²` with L-BFGS (its gradient `H ∇f`
is one Hessian-vector product), then Newton's method on the gradient, as Dauphin et al. did,
damped as Levenberg-Marquardt on `∇f(w) = 0` (the dense Hessian is its Jacobian). L-BFGS on
`|∇f|²` alone stalls near `1e-3`: its curvature is `H²`, the square of an ill-conditioned
matrix. Newton is attracted to critical points of any index, which is what a search for saddles
wants. A point counts as critical when `|∇f| < --gradient-threshold`, and as near-critical
when `|∇f| < --near-threshold` (the search's linear convergence leaves many starts there within
its budget); both are reported, apart.

At every end point: the training error, the loss and the exact index (`eigvalsh` of the dense
Hessian; eigenvalues below `-1e-3 max|λ|` are negative, as `spectral_density` counts). Writes
`--output` (JSON) and two figures: error against index (does the error rise with the
index?), and the eigenvalue histograms at the highest- and the lowest-error (near-)critical
point beside a fitted semicircle (Wigner).

Run: python examples/critical_points.py [--data-dir DIR]
"""

import argparse
import json
import pathlib
import time

import keras
import numpy as np
import scipy.optimize
import scipy.stats
import tensorflow as tf

from keras_secondorder import curvature
from keras_secondorder.datasets import downscale, mnist


def network(hidden, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((100,)), keras.layers.Dense(hidden, activation="tanh"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    return model


class FlatObjective:
    """`f`, `∇f` and `½|∇f|²` with its gradient `H ∇f`, on flat float64 weight vectors."""

    def __init__(self, model, x, y):
        self.model, self.batch = model, (x, y)
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        self.objective = curvature.Objective(model)
        batch = curvature.objective.as_batch((x, y))

        @tf.function
        def value_and_gradient(theta):
            value, gradient = self.objective.gradient(curvature.unflatten(theta, self.shapes),
                                                      batch)
            return value, curvature.flatten(gradient)

        @tf.function
        def squared_norm_and_gradient(theta):
            with tf.GradientTape() as tape:
                tape.watch(theta)
                _, gradient = value_and_gradient(theta)
                half_squared = 0.5 * tf.reduce_sum(gradient * gradient)
            return half_squared, tape.gradient(half_squared, theta)  # H ∇f

        self.value_and_gradient = value_and_gradient
        self.squared_norm_and_gradient = squared_norm_and_gradient

    def newton(self, theta, iterations, threshold):
        """Newton's method on the gradient from `theta`: the point and its dense Hessian.

        Levenberg-Marquardt on the system `∇f(w) = 0`, whose Jacobian is `H`: each step is
        `-(H² + μI)⁻¹ H ∇f` (one eigendecomposition of `H` per step), `μ` divided by 10 after
        a step that lowered `|∇f|` and multiplied by 10 (up to 30 times) until one does. As
        `μ -> 0` this is Newton's `-H⁻¹ ∇f`, attracted to critical points of any index; a
        plain Newton step is no descent direction for `|∇f|` along `H`'s near-null directions
        far from one. Stops at `|∇f| < threshold` or after `iterations` steps.
        """
        mu = None
        for step in range(iterations + 1):
            self.set_flat_weights(theta)
            hessian = curvature.dense.hessian(self.model, *self.batch).numpy()
            gradient = self.value_and_gradient(tf.constant(theta))[1].numpy()
            norm = np.linalg.norm(gradient)
            if norm < threshold or step == iterations:  # The Hessian is the returned point's.
                break
            eigenvalues, vectors = np.linalg.eigh(hessian)
            mu = 1e-4 * np.max(eigenvalues**2) if mu is None else mu
            coordinates = vectors.T @ gradient
            for _ in range(30):
                trial = theta - vectors @ (eigenvalues * coordinates / (eigenvalues**2 + mu))
                if np.linalg.norm(self.value_and_gradient(tf.constant(trial))[1]) < norm:
                    theta, mu = trial, mu / 10
                    break
                mu *= 10
            else:
                break  # No step lowers |∇f|: a minimum of |∇f|², not a critical point.
        self.set_flat_weights(theta)
        return theta, hessian

    def flat_weights(self):
        return np.concatenate([v.numpy().ravel() for v in self.model.trainable_variables])

    def set_flat_weights(self, theta):
        for variable, value in zip(self.model.trainable_variables,
                                   curvature.unflatten(tf.constant(theta), self.shapes),
                                   strict=True):
            variable.assign(value)


def starting_points(model, x, y, args):
    """`(label, flat weights)`: along an SGD trajectory, then random initializations."""
    flat = FlatObjective(model, x, y)
    points = [("SGD epoch 0", flat.flat_weights())]
    for epoch in range(1, max(args.sgd_epochs) + 1):
        model.fit(x, y, batch_size=100, epochs=1, verbose=0)
        if epoch in args.sgd_epochs:
            points.append((f"SGD epoch {epoch}", flat.flat_weights()))
    rng = np.random.default_rng(args.seed)
    for scale in args.random_scales:
        for draw in range(args.random_draws):
            points.append((f"random N(0, {scale:g}²) #{draw}",
                           rng.normal(scale=scale, size=points[0][1].shape)))
    return points


def correlation(points, key="index"):
    """Pearson's correlation of training error and `key` over `points` (`None` below 3)."""
    if len(points) < 3:
        return None
    return float(np.corrcoef([r["training_error"] for r in points],
                             [r[key] for r in points])[0, 1])


def bulk(eigenvalues):
    """The central 96% of the eigenvalues (the outliers, a few large ones, out)."""
    values = np.asarray(eigenvalues)
    low, high = np.percentile(values, [2, 98])
    return values[(values >= low) & (values <= high)]


def semicircle(values):
    """Wigner's semicircle with the eigenvalues' mean and variance (radius 2σ), a scipy law."""
    return scipy.stats.semicircular(loc=np.mean(values), scale=2 * np.std(values))


def summarize(results):
    """Counts and correlations of the error with the index and with the median eigenvalue.

    The second asks whether the spectrum shifts right as the error falls; each (near-)critical
    point also gets its Kolmogorov-Smirnov distance to its fitted semicircle.
    """
    critical = [r for r in results if r["critical"]]
    near = [r for r in results if r["near_critical"]]
    for row in near:
        row["median_eigenvalue"] = float(np.median(row["eigenvalues"]))
        # How strong the negative curvature is: the most negative eigenvalue over the largest.
        row["smallest_over_largest"] = float(np.min(row["eigenvalues"])
                                             / np.max(row["eigenvalues"]))
        # The spike at zero: eigenvalues below 1e-8 max|λ| in magnitude.
        magnitudes = np.abs(row["eigenvalues"])
        row["zero_fraction"] = float(np.mean(magnitudes < 1e-8 * magnitudes.max()))
        values = bulk(row["eigenvalues"])
        row["semicircle_ks"] = float(scipy.stats.kstest(values, semicircle(values).cdf).statistic)
    return {"critical_points": len(critical), "near_critical_points": len(near),
            "searched": len(results),
            "correlation_error_index": correlation(critical),
            "correlation_error_index_near_critical": correlation(near),
            "correlation_error_median_eigenvalue_near_critical": correlation(
                near, "median_eigenvalue")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--hidden", type=int, default=20)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--sgd-epochs", type=int, nargs="+",
                        default=[1, 2, 3, 5, 7, 10, 15, 20, 30, 50])
    parser.add_argument("--random-scales", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--random-draws", type=int, default=2)
    parser.add_argument("--max-iterations", type=int, default=1000,
                        help="L-BFGS iterations on |∇f|² before Newton's method")
    parser.add_argument("--newton-iterations", type=int, default=60)
    parser.add_argument("--gradient-threshold", type=float, default=1e-4)
    parser.add_argument("--near-threshold", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="docs/figures/critical_points/critical_points.json")
    parser.add_argument("--replot", action="store_true",
                        help="summarize and plot the stored --output again, without searching")
    args = parser.parse_args()
    output = pathlib.Path(args.output)
    if args.replot:
        stored = json.loads(output.read_text())
        report(stored["settings"], stored["results"], output)
        return
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    (x_train, y_train), _ = mnist(args.data_dir)
    x, y = downscale(x_train[:args.examples]), y_train[:args.examples].astype("int64")
    model = network(args.hidden, args.seed)
    print(f"10x10 MNIST, {args.examples} images, 100-{args.hidden}-10 tanh: "
          f"{model.count_params()} weights")
    points = starting_points(model, x, y, args)
    flat = FlatObjective(model, x, y)
    results = []
    for label, start in points:
        begin = time.perf_counter()
        found = scipy.optimize.minimize(
            lambda theta: [t.numpy() for t in flat.squared_norm_and_gradient(tf.constant(theta))],
            start, jac=True, method="L-BFGS-B",
            options={"maxiter": args.max_iterations, "gtol": 1e-14, "ftol": 1e-30})
        theta, hessian = flat.newton(found.x, args.newton_iterations, args.gradient_threshold)
        value, gradient = flat.value_and_gradient(tf.constant(theta))
        gradient_norm = float(tf.norm(gradient))
        error = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) != y))
        row = {"start": label, "loss": float(value), "gradient_norm": gradient_norm,
               "training_error": error, "iterations": int(found.nit),
               "critical": gradient_norm < args.gradient_threshold,
               "near_critical": gradient_norm < args.near_threshold}
        eigenvalues = np.linalg.eigvalsh(hessian)
        band = 1e-3 * np.abs(eigenvalues).max()
        row.update(index=float(np.mean(eigenvalues < -band)), eigenvalues=eigenvalues.tolist())
        results.append(row)
        print(f"{label:28s} |∇f| {gradient_norm:.1e}  loss {row['loss']:.4f}  error "
              f"{error:.3f}  index {row['index']:.4f}  "
              f"({found.nit} iterations, {time.perf_counter() - begin:.0f} s)", flush=True)
    report(vars(args), results, output)


def report(settings, results, output):
    """Writes the summary and the results to `output` (JSON) and the figures beside it."""
    summary = summarize(results)
    print(json.dumps(summary))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"settings": settings, "summary": summary,
                                  "results": results}) + "\n")
    near = [r for r in results if r["near_critical"]]
    if near:
        plot(near, output.parent)


def plot(points, directory):
    """Error against index (critical and near-critical marked apart) and two histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4))
    for critical, marker, label in ((True, "o", "critical"), (False, "x", "near-critical")):
        chosen = [r for r in points if r["critical"] == critical]
        axis.plot([r["index"] for r in chosen], [100 * r["training_error"] for r in chosen],
                  marker, label=label)
    axis.set(xlabel="index (fraction of negative eigenvalues)", ylabel="training error (%)",
             title="critical points of a 100-h-10 tanh net")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(directory / "error_against_index.png", dpi=100)
    plt.close(figure)
    ends = [max(points, key=lambda r: r["training_error"]),
            min(points, key=lambda r: r["training_error"])]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, row in zip(axes, ends, strict=True):
        values = bulk(row["eigenvalues"])
        grid = np.linspace(values.min(), values.max(), 400)
        axis.hist(values, bins=80, density=True, alpha=0.6, label="eigenvalues")
        axis.plot(grid, semicircle(values).pdf(grid), label="semicircle (same mean, variance)")
        axis.set(title=f"error {100 * row['training_error']:.1f}%, index {row['index']:.3f}, "
                       f"KS {row['semicircle_ks']:.2f}", xlabel="eigenvalue")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(directory / "eigenvalue_histograms.png", dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
