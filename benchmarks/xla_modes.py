"""Graph mode against XLA (`jit_compile=True`) for the curvature optimizers on a small ResNet.

A ResNet-style model (Conv2D stem, two residual blocks of Conv2D + BatchNormalization + Add,
GlobalAveragePooling2D, Dense softmax; 28x28 MNIST images) trained for `--epochs` epochs of
`--images` images at batch 32 by SGD, SDLM and HessianFree, each in graph mode and under XLA.
Each epoch's wall time is recorded: the first holds the tracing and compilation, the later ones
are the steady state. Then the reason: the same work (a gradient, per-example gradients) timed
at the top level of a compiled function and inside a `tf.cond` branch or a `tf.while_loop`
body, where SDLM's estimation steps and HessianFree's conjugate gradient run. Writes
benchmarks/results/xla_modes.{json,md}.

Run alone on the machine: python benchmarks/xla_modes.py [--images 2048] [--epochs 3]
"""

import argparse

import keras
import tensorflow as tf
from _common import EpochTimer, environment, interleaved_medians, mnist_batch, write

import keras_secondorder as ks
from keras_secondorder import curvature

OPTIMIZERS = {
    "SGD": lambda: keras.optimizers.SGD(0.05),
    "SDLM (diagonal ggn)": lambda: ks.optimizers.SDLM(0.01, diagonal="ggn"),
    "HessianFree (batch 32)": lambda: ks.optimizers.HessianFree(max_cg_iterations=50),
}


def resnet():
    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    for _ in range(2):
        branch = keras.layers.Conv2D(8, 3, padding="same")(hidden)
        branch = keras.layers.BatchNormalization()(branch)
        hidden = keras.layers.Activation("relu")(keras.layers.Add()([hidden, branch]))
    pooled = keras.layers.GlobalAveragePooling2D()(hidden)
    return ks.Model(inputs, keras.layers.Dense(10, activation="softmax")(pooled))


def run(make_optimizer, jit_compile, x, y, epochs):
    keras.utils.set_random_seed(0)
    model = resnet()
    model.compile(make_optimizer(), "sparse_categorical_crossentropy", jit_compile=jit_compile)
    timer = EpochTimer()
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=False,
                        callbacks=[timer])
    return {"epoch_seconds": timer.times, "loss": history.history["loss"]}


def control_flow_costs(x, y, runs=5):
    """Milliseconds of a gradient and of per-example gradients: top level, tf.cond, while."""
    keras.utils.set_random_seed(0)
    model = resnet()
    model.compile(loss="sparse_categorical_crossentropy")
    objective = curvature.Objective(model, training=True)
    batch = curvature.Batch(x, y, None)
    run_once = tf.Variable(True)

    def total(tensors):
        return tf.add_n([tf.reduce_sum(t) for t in tensors])

    work = {
        "gradient": lambda: total(curvature.gradient(model, x, y, training=True)[1]),
        "per-example gradients": lambda: total(
            curvature.batch_diagonal(objective, batch, "empirical_fisher")),
    }
    wrappers = {
        "top level": lambda body: body(),
        "tf.cond": lambda body: tf.cond(run_once, body, lambda: tf.constant(0.0)),
        "tf.while_loop (1 trip)": lambda body: tf.while_loop(
            lambda i, _: i < tf.cast(run_once, tf.int32), lambda i, s: (i + 1, s + body()),
            (0, 0.0))[1],
    }
    functions = {}
    for name, body in work.items():
        for place, wrap in wrappers.items():
            for mode in ("graph", "XLA"):
                compiled = tf.function(lambda wrap=wrap, body=body: wrap(body),
                                       jit_compile=mode == "XLA")
                functions[(name, place, mode)] = lambda f=compiled: f().numpy()
    medians = interleaved_medians(functions, runs, warmup=1)
    return [{"work": name, "place": place, "mode": mode, "ms": 1000 * seconds}
            for (name, place, mode), seconds in medians.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    images, labels = mnist_batch(args.images)
    x = images.numpy().reshape(-1, 28, 28, 1)
    results = {}
    for name, make_optimizer in OPTIMIZERS.items():
        results[name] = {mode: run(make_optimizer, mode == "XLA", x, labels.numpy(), args.epochs)
                         for mode in ("graph", "XLA")}
        print(name, results[name], flush=True)
    costs = control_flow_costs(tf.constant(x[:32]), labels[:32])
    lines = [
        f"# Graph mode against XLA: ResNet-style model, {args.images} MNIST images, batch 32",
        "",
        "| optimizer | mode | seconds per epoch (the first holds tracing and compilation) | "
        "final loss |",
        "| --- | --- | --- | ---: |",
    ]
    for name, modes in results.items():
        for mode, measured in modes.items():
            seconds = ", ".join(f"{value:.2f}" for value in measured["epoch_seconds"])
            lines.append(f"| {name} | {mode} | {seconds} | {measured['loss'][-1]:.4f} |")
    lines += ["", "Milliseconds per call (median of 5), batch of 32:", "",
              "| work | place | graph | XLA | XLA / graph |", "| --- | --- | ---: | ---: | ---: |"]
    by_key = {(c["work"], c["place"], c["mode"]): c["ms"] for c in costs}
    for work, place, mode in by_key:
        if mode == "graph":
            graph, xla = by_key[(work, place, "graph")], by_key[(work, place, "XLA")]
            lines.append(f"| {work} | {place} | {graph:.1f} | {xla:.1f} | {xla / graph:.1f} |")
    write("xla_modes", {"environment": environment(), "images": args.images,
                        "epochs": args.epochs, "results": results, "control_flow": costs},
          "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
