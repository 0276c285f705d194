"""Saddle-free Newton against SGD and damped Newton (Dauphin et al. 2014), on the same clock.

Dauphin et al. compare minibatch SGD with momentum, damped Newton and saddle-free Newton on a
one-hidden-layer network on MNIST downscaled to 10x10 and on a deep autoencoder: SGD and damped
Newton slow down on plateaus (saddles) that saddle-free Newton leaves along their negative
curvature. On each problem:

1. SGD's learning rate: the best of a grid (lowest training loss after `--pilot-seconds`).
2. From the same start, the same wall-clock budget each: SGD with momentum (tuned), damped
   Newton (`HessianFree(curvature="hessian")`: CG on `H + λI`, stopped at negative curvature,
   Levenberg-Marquardt damping) and `SaddleFreeNewton` (`|H|⁻¹` in a Krylov subspace). Both
   Newton methods start from the same damping with the same floor, take at most
   `--krylov-steps` Hessian-vector products per step (HF's CG cap, SFN's subspace), and take
   their Hessian on the whole batch (HF with no preconditioner).
3. From SGD's end point (where its curve has flattened), each method again for half the budget
   (SGD with its momentum restarted): does a Newton method leave the plateau SGD slowed on?

Problems:

- `mnist10x10`: 100-50-10 tanh (5560 weights; the largest of Dauphin's), cross-entropy, the
  first `--images` training images downscaled to 10x10; SGD (momentum 0.9) on batches of 100,
  the Newton methods on the whole set. Measured: training loss and classification error.
- `autoencoder`: Martens' deep autoencoder as in `deep_autoencoder.py` (sparse start, L2
  weight cost, cross-entropy summed over pixels); SGD with Nesterov momentum 0.99 on batches of
  200 (that benchmark's baseline), the Newton methods on batches of `--newton-batch`. Measured:
  the squared reconstruction error per image on the training and test sets.

The clock starts after each run's first step (tracing: up to a minute and a half for
saddle-free Newton's 20 unrolled Lanczos steps through the autoencoder, more than a short
budget); every `--eval-every` seconds it stops while the whole training set is measured; the
number of steps is recorded beside it (error against iterations and time). Writes
benchmarks/results/saddle_free.{json,md,png}.

Run: python benchmarks/saddle_free.py [--mnist-minutes 3] [--autoencoder-minutes 5] [--data DIR]
"""

import argparse
import time
from types import SimpleNamespace

import keras
import numpy as np
import tensorflow as tf
from _common import RESULTS, environment, per_model, write
from deep_autoencoder import HF_KEYS, NESTEROV_RATES, SMALL_BATCH, autoencoder, squared_error_of
from deep_autoencoder import train as train_for

import keras_secondorder as ks
from keras_secondorder.datasets import downscale, mnist

SFN_KEYS = ("damping", "rho", "step_size", "smallest_ritz_value", "negative_ritz_fraction",
            "rejected_steps")
MNIST10_RATES = (0.01, 0.03, 0.1, 0.3, 1.0)


def classification_of(x, y):
    """Model -> training loss (mean cross-entropy) and error (%) on `(x, y)`."""
    def evaluate(model):
        probabilities = model(x, training=False)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))
        wrong = tf.not_equal(tf.argmax(probabilities, axis=1, output_type=tf.int32), y)
        return loss, 100.0 * tf.reduce_mean(tf.cast(wrong, tf.float32))

    compiled = per_model(lambda model: tf.function(lambda: evaluate(model)))

    def measure(model):
        loss, error = compiled(model)()
        return {"train": float(loss), "error": float(error)}

    return measure


def mnist10_problem(args, images, labels):
    x = tf.constant(downscale(images[:args.images]).astype("float32"))
    y = tf.constant(labels[:args.images].astype("int32"))

    def build():
        keras.utils.set_random_seed(0)
        return ks.wrap(keras.Sequential([
            keras.Input((100,)), keras.layers.Dense(50, activation="tanh"),
            keras.layers.Dense(10, activation="softmax")]))

    return SimpleNamespace(
        build=build, data=(x, y), loss="sparse_categorical_crossentropy", loss_weights=None,
        measure=classification_of(x, y), metric="training loss (cross-entropy)",
        sgd=lambda rate: keras.optimizers.SGD(rate, momentum=0.9), sgd_name="SGD momentum 0.9",
        sgd_rates=MNIST10_RATES, sgd_batch=100, newton_batch=args.images, damping=1.0,
        min_damping=1e-4, seconds=60 * args.mnist_minutes)


def autoencoder_problem(args, images):
    flat = (images.reshape(-1, 784) / 255.0).astype("float32")
    train_error, test_error = squared_error_of(flat), squared_error_of(args.test_images)
    return SimpleNamespace(
        build=autoencoder, data=(flat, flat), loss="binary_crossentropy", loss_weights=[784.0],
        measure=lambda model: {"train": train_error(model), "test": test_error(model)},
        metric="squared reconstruction error per image",
        sgd=lambda rate: keras.optimizers.SGD(rate, momentum=0.99, nesterov=True),
        sgd_name="SGD Nesterov 0.99", sgd_rates=NESTEROV_RATES, sgd_batch=SMALL_BATCH,
        newton_batch=args.newton_batch, damping=45.0, min_damping=0.01,
        seconds=60 * args.autoencoder_minutes)


def newton_methods(problem, krylov_steps):
    """`{name: (optimizer factory, logged keys)}` of the two Newton methods, alike set."""
    common = {"damping": problem.damping, "min_damping": problem.min_damping}
    return {
        "damped Newton": (lambda: ks.optimizers.HessianFree(
            curvature="hessian", preconditioner=None, curvature_fraction=1.0,
            max_cg_iterations=krylov_steps, **common), HF_KEYS),
        "saddle-free Newton": (lambda: ks.optimizers.SaddleFreeNewton(
            krylov_steps=krylov_steps, **common), SFN_KEYS),
    }


def run(problem, build, optimizer, batch_size, seconds, every, keys=()):
    """One training run: `(clock, result)`; each measurement with the step count."""
    def measure(model):
        return {**problem.measure(model), "iterations": int(model.optimizer.iterations)}

    clock = train_for(build, optimizer, problem.data, batch_size, seconds, every, measure,
                      problem.loss, problem.loss_weights, keys, count_first_step=False)
    result = {"batch_size": batch_size, "curve": clock.measurements, "steps": clock.steps,
              "first_step_seconds": clock.first_step,
              "step_seconds": clock.measurements[-1][0] / max(clock.steps - 1, 1)}
    if clock.step_logs:
        result["step_logs"] = clock.step_logs
    print(f"  {clock.steps} steps, {result['step_seconds']:.3f} s a step, "
          f"end {clock.measurements[-1][1]}", flush=True)
    return clock, result


def compare(problem, args):
    """SGD's pilots, the three methods from the start, then from SGD's end point."""
    pilots = {}
    for rate in problem.sgd_rates:
        clock, _ = run(problem, problem.build, problem.sgd(rate), problem.sgd_batch,
                       args.pilot_seconds, args.pilot_seconds)
        error = clock.measurements[-1][1]["train"]
        pilots[rate] = error if np.isfinite(error) else float("inf")
    rate = min(pilots, key=pilots.get)
    every = min(args.eval_every, problem.seconds / 10)
    sgd_name = f"{problem.sgd_name} lr={rate:g}"
    print(sgd_name, flush=True)
    sgd_clock, sgd_result = run(problem, problem.build, problem.sgd(rate), problem.sgd_batch,
                                problem.seconds, every)
    from_start, from_sgd = {sgd_name: sgd_result}, {}
    plateau = sgd_clock.model.get_weights()

    def from_plateau():
        model = problem.build()
        model.set_weights(plateau)
        return model

    methods = newton_methods(problem, args.krylov_steps)
    for name, (make, keys) in methods.items():
        print(name, flush=True)
        from_start[name] = run(problem, problem.build, make(), problem.newton_batch,
                               problem.seconds, every, keys)[1]
    for name, (make, keys) in {sgd_name: (lambda: problem.sgd(rate), ()), **methods}.items():
        print(f"{name}, from SGD's end point", flush=True)
        batch_size = problem.sgd_batch if name == sgd_name else problem.newton_batch
        from_sgd[name] = run(problem, from_plateau, make(), batch_size, problem.seconds / 2,
                             every / 2, keys)[1]
    return {"sgd_pilots": {str(r): e for r, e in pilots.items()}, "metric": problem.metric,
            "seconds": problem.seconds, "from_start": from_start, "from_sgd_end": from_sgd}


def at_fraction(curve, fraction, seconds):
    """The first measurement at or after `fraction` of the budget."""
    return next(values for elapsed, values in curve if elapsed >= fraction * seconds - 1e-6)


def sfn_summary(step_logs):
    """Median smallest Ritz value, share of steps with negative curvature found, rejections."""
    ritz = np.array([log["smallest_ritz_value"] for log in step_logs])
    return (f"median smallest Ritz value {np.nanmedian(ritz):.3g}, negative curvature in "
            f"{np.mean(ritz < 0):.0%} of the steps, {step_logs[-1]['rejected_steps']:.0f} "
            f"rejected")


def markdown(results, args):
    lines = ["# Saddle-free Newton vs SGD vs damped Newton (Dauphin et al. 2014)", "",
             f"Same wall-clock budget per method and problem; the Newton methods take at most "
             f"{args.krylov_steps} Hessian-vector products per step. Generated by "
             f"`benchmarks/saddle_free.py` ({environment()['date']}, one sitting, nothing else "
             f"running).", ""]
    for problem, result in results.items():
        seconds = result["seconds"]
        lines += [f"## {problem}: {result['metric']}", "",
                  f"SGD's pilots ({args.pilot_seconds:g} s each; rate: {result['metric']}): "
                  + ", ".join(f"{r}: {e:.4g}" for r, e in result["sgd_pilots"].items()), ""]
        for phase, title, budget in (("from_start", "from the same start", seconds),
                                     ("from_sgd_end", "from SGD's end point", seconds / 2)):
            lines += [f"{title[0].upper()}{title[1:]}, {budget:g} s each:", "",
                      "| method | steps | s / step | at 1/4 | at 1/2 | end | best |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for name, run_result in result[phase].items():
                curve = run_result["curve"]
                cells = [at_fraction(curve, f, budget) for f in (0.25, 0.5, 1.0)]
                best = min(values["train"] for _, values in curve)
                extra = ""
                if "error" in cells[-1]:
                    extra = f" (error {cells[-1]['error']:.2f}%)"
                lines.append(f"| {name} | {run_result['steps']} | "
                             f"{run_result['step_seconds']:.3f} | "
                             + " | ".join(f"{c['train']:.4g}" for c in cells)
                             + f"{extra} | {best:.4g} |")
            lines.append("")
            for name, run_result in result[phase].items():
                if name == "saddle-free Newton" and "step_logs" in run_result:
                    lines += [f"Saddle-free Newton ({title}): "
                              f"{sfn_summary(run_result['step_logs'])}.", ""]
    lines.append("![training error against iterations and time](saddle_free.png)")
    return "\n".join(lines) + "\n"


def plot(results):
    """Per problem: against steps and seconds from the start, then from SGD's end point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 3, figsize=(15, 4 * len(results)), squeeze=False)
    for row, (problem, result) in zip(axes, results.items(), strict=True):
        for name, run_result in result["from_start"].items():
            curve = run_result["curve"]
            values = [v["train"] for _, v in curve]
            row[0].plot([max(v["iterations"], 1) for _, v in curve], values, label=name)
            row[1].plot([elapsed for elapsed, _ in curve], values, label=name)
        for name, run_result in result["from_sgd_end"].items():
            curve = run_result["curve"]
            row[2].plot([elapsed for elapsed, _ in curve], [v["train"] for _, v in curve],
                        label=name)
        for axis, xlabel, title in ((row[0], "steps", "from the same start"),
                                    (row[1], "training seconds", "from the same start"),
                                    (row[2], "training seconds", "from SGD's end point")):
            axis.set(xlabel=xlabel, ylabel=result["metric"], yscale="log",
                     title=f"{problem}: {title}")
            axis.legend(fontsize=8)
        row[0].set_xscale("log")
    figure.tight_layout()
    figure.savefig(RESULTS / "saddle_free.png", dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["mnist10x10", "autoencoder"],
                        choices=["mnist10x10", "autoencoder"])
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--mnist-minutes", type=float, default=3.0)
    parser.add_argument("--autoencoder-minutes", type=float, default=5.0)
    parser.add_argument("--pilot-seconds", type=float, default=30.0)
    parser.add_argument("--eval-every", type=float, default=30.0)
    parser.add_argument("--krylov-steps", type=int, default=20)
    parser.add_argument("--newton-batch", type=int, default=2000)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    (x_train, y_train), (x_test, _) = mnist(args.data)
    args.test_images = (x_test.reshape(-1, 784) / 255.0).astype("float32")
    makers = {"mnist10x10": lambda: mnist10_problem(args, x_train, y_train),
              "autoencoder": lambda: autoencoder_problem(args, x_train)}
    results = {}
    for name in args.problems:
        print(f"== {name}", flush=True)
        started = time.strftime("%Y-%m-%d %H:%M")
        results[name] = {"sitting": started, **compare(makers[name](), args)}
    settings = {key: value for key, value in vars(args).items() if key != "test_images"}
    write("saddle_free", {"environment": environment(), "settings": settings,
                          "results": results}, markdown(results, args))
    plot(results)


if __name__ == "__main__":
    main()
