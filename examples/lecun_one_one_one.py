"""LeCun's "Deep learning is hard?" net: a 1-1-1 tanh network that maps 0.5 -> 0.5, -0.5 -> -0.5.

`y = w1 tanh(w0 x)`, no biases, mean squared error on the two examples: its loss over
`(w0, w1)` has a saddle point at the origin between two valleys of solutions (`w0 w1 > 0`) and
plateaus where `tanh` saturates. From a grid of starting points, Levenberg-Marquardt, SGD and
SDLM (each rate the best of a small grid: the one that solves the most starts) train on the
whole batch; a start is solved when the loss falls below `--target` within the method's step
budget (checked every `steps // 100` steps). Prints how many starts each method solves and
writes the loss surface with every trajectory to `--figure`.

Run: python examples/lecun_one_one_one.py [--figure docs/figures/lecun_one_one_one.png]
"""

import argparse
import time

import keras
import numpy as np

import keras_secondorder as ks

X = np.array([[0.5], [-0.5]])
Y = X.copy()
METHODS = {  # name: (make optimizer from a rate, rates tried, steps)
    "Levenberg-Marquardt": (lambda rate: ks.optimizers.LevenbergMarquardt(damping=rate),
                            (1e-3,), 50),
    "SGD": (lambda rate: keras.optimizers.SGD(rate), (0.1, 0.3, 1.0, 3.0), 1000),
    "SDLM": (lambda rate: ks.optimizers.SDLM(rate, curvature_samples=2, reestimate_every=1,
                                            diagonal="ggn"), (0.01, 0.03, 0.1, 0.3), 1000),
}


def network():
    keras.utils.set_random_seed(0)
    return ks.wrap(keras.Sequential([keras.Input((1,)),
                                     keras.layers.Dense(1, use_bias=False, activation="tanh"),
                                     keras.layers.Dense(1, use_bias=False)]))


def loss_surface(w0, w1):
    return np.mean((w1[..., None] * np.tanh(w0[..., None] * X[:, 0]) - Y[:, 0]) ** 2, axis=-1)


class Trajectory(keras.callbacks.Callback):
    """The weights `(w0, w1)` before the first step and after every execution of steps."""

    def on_train_begin(self, logs=None):
        self.points = [self._weights()]

    def _weights(self):
        return [float(np.ravel(w)[0]) for w in self.model.get_weights()]

    def on_train_batch_end(self, batch, logs=None):
        self.points.append(self._weights())


def run(make, rate, steps, starts, target):
    """Per start: the trajectory and the steps it took to solve (None: not within `steps`)."""
    model = network()
    # The weights are recorded after every `every` steps (Keras calls back once per execution).
    every = max(1, steps // 100)
    model.compile(make(rate), "mse", steps_per_execution=every)
    model.optimizer.build(model.trainable_variables)
    # Each start gets the optimizer as new, without retracing the step.
    initial_state = [v.numpy() for v in model.optimizer.variables]
    trajectory = Trajectory()
    repeated = (np.tile(X, (steps, 1)), np.tile(Y, (steps, 1)))
    results = []
    for start in starts:
        model.set_weights([np.array([[start[0]]]), np.array([[start[1]]])])
        for variable, value in zip(model.optimizer.variables, initial_state, strict=True):
            variable.assign(value)
        model.fit(*repeated, batch_size=2, epochs=1, shuffle=False, verbose=0,
                  callbacks=[trajectory])
        points = np.array(trajectory.points)
        below = np.flatnonzero(loss_surface(points[:, 0], points[:, 1]) < target)
        results.append((points, int(below[0]) * every if below.size else None))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=9, help="starts per axis")
    parser.add_argument("--extent", type=float, default=8.0,
                        help="starts in [-extent, extent]²: tanh(0.5 w0) saturates at |w0| ~ 8")
    parser.add_argument("--target", type=float, default=1e-4)
    parser.add_argument("--figure", default="docs/figures/lecun_one_one_one.png")
    args = parser.parse_args()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    axis_points = np.linspace(-args.extent, args.extent, args.grid)
    starts = [(a, b) for a in axis_points for b in axis_points]
    print(f"y = w1 tanh(w0 x) on 0.5 -> 0.5, -0.5 -> -0.5; {len(starts)} starts on a "
          f"{args.grid}x{args.grid} grid of [-{args.extent:g}, {args.extent:g}]²; solved: loss < "
          f"{args.target:g}")
    best = {}
    for name, (make, rates, steps) in METHODS.items():
        begin = time.perf_counter()
        tried = []
        for rate in rates:
            results = run(make, rate, steps, starts, args.target)
            steps_to_solve = [at for _, at in results if at is not None]
            # The most starts solved; among equals, the fewest steps (median) to solve them.
            tried.append(((len(steps_to_solve), -np.median(steps_to_solve or [np.inf])),
                          rate, results))
        (solved, minus_median), rate, results = max(tried, key=lambda item: item[0])
        best[name] = (rate, solved, results)
        median = f"{-minus_median:.0f}" if solved else "-"
        print(f"{name:20s} rate {rate:<6g} solves {solved:2d}/{len(starts)} starts within "
              f"{steps} steps (median {median} steps; {time.perf_counter() - begin:.0f} s)")
    plot(best, starts, args.extent + 1, args.figure)
    print(f"Figure: {args.figure}")


def plot(best, starts, extent, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w0, w1 = np.meshgrid(np.linspace(-extent, extent, 201), np.linspace(-extent, extent, 201))
    surface = loss_surface(w0, w1)
    figure, axes = plt.subplots(1, len(best), figsize=(5 * len(best), 4.6), sharey=True)
    for axis, (name, (rate, solved, results)) in zip(axes, best.items(), strict=True):
        axis.contourf(w0, w1, np.log10(surface), levels=30, cmap="viridis")
        for start, (points, at) in zip(starts, results, strict=True):
            color = "white" if at is not None else "red"
            axis.plot(points[:, 0], points[:, 1], color=color, lw=0.7, alpha=0.8)
            axis.plot(*start, "o", color=color, ms=3)
        axis.set(title=f"{name} (rate {rate:g}): {solved}/{len(starts)} solved",
                 xlabel="w0", xlim=(-extent, extent), ylim=(-extent, extent))
    axes[0].set_ylabel("w1")
    figure.suptitle("log10 loss of y = w1 tanh(w0 x); white: solved, red: not")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    main()
