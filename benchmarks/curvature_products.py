"""Time of the curvature products as multiples of one gradient, same run, same data.

LeNet-5 on batches of 256 and 1000 MNIST images (the latter as in benchmarks/spectrum.py) and the
784-1000-500-250-30 deep autoencoder on a batch of 1000. Every function is a `tf.function`
returning one scalar (the sum of its result, so all of it is computed); medians of `--runs`
interleaved runs after `--warmup` calls. Writes benchmarks/results/curvature_products.{json,md}.

Run: python benchmarks/curvature_products.py [--runs 20] [--warmup 3]
"""

import argparse

import keras
import tensorflow as tf
from _common import environment, interleaved_medians, mnist_batch, write

from keras_secondorder import curvature, models

TARGETS = {"hessian": 2.5, "ggn": 2.0}


def cases():
    keras.utils.set_random_seed(0)
    lenet = models.lenet5()
    lenet.compile(loss="sparse_categorical_crossentropy")
    autoencoder = models.deep_autoencoder("mnist")
    autoencoder.compile(loss="binary_crossentropy")
    x, y = mnist_batch(1000, padded=True)
    images, _ = mnist_batch(1000)
    return {"LeNet-5, batch 256": (lenet, x[:256], y[:256]), "LeNet-5, batch 1000": (lenet, x, y),
            "deep autoencoder, batch 1000": (autoencoder, images, images)}


def functions(model, x, y, jit_compile):
    vector = [tf.random.normal(v.shape, seed=1) for v in model.trainable_variables]

    def total(tensors):
        return tf.add_n([tf.reduce_sum(t) for t in tensors])

    def keras_gradient():
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, y, model(x, training=False), training=False)
        return total(tape.gradient(loss, model.trainable_variables))

    bodies = {
        "gradient": lambda: total(curvature.gradient(model, x, y)[1]),
        "keras_gradient": keras_gradient,
        "hessian": lambda: total(curvature.hessian_vector_product(model, x, y, vector)),
        "ggn": lambda: total(curvature.gauss_newton_vector_product(model, x, y, vector)),
        "fisher": lambda: total(curvature.fisher_vector_product(model, x, y, vector)),
    }
    compiled = {name: tf.function(body, jit_compile=jit_compile) for name, body in bodies.items()}
    return {name: (lambda f=f: f().numpy()) for name, f in compiled.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for case, (model, x, y) in cases().items():
        for jit_compile in (True, False):
            medians = interleaved_medians(functions(model, x, y, jit_compile), args.runs,
                                          args.warmup)
            results[f"{case}, {'XLA' if jit_compile else 'graph'}"] = {
                "median_seconds": medians,
                "ratio_to_gradient": {name: value / medians["gradient"]
                                      for name, value in medians.items()},
            }
    rows = ["| case | gradient (ms) | Keras gradient | Hv | GGN-v | Fisher-v |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for case, result in results.items():
        ratio = result["ratio_to_gradient"]
        rows.append(f"| {case} | {1000 * result['median_seconds']['gradient']:.1f} | "
                    f"{ratio['keras_gradient']:.2f}x | {ratio['hessian']:.2f}x | "
                    f"{ratio['ggn']:.2f}x | {ratio['fisher']:.2f}x |")
    markdown = (
        "# Curvature products, as multiples of one gradient\n\n"
        f"Median of {args.runs} interleaved runs after {args.warmup} warm-up calls, one process, "
        f"{environment()['cpus']} CPU cores, TensorFlow {tf.__version__}. 'Keras gradient' is a "
        "plain GradientTape over model(x) and compute_loss (the stateless path's overhead). "
        f"Targets: Hv <= {TARGETS['hessian']}x, GGN-v <= {TARGETS['ggn']}x.\n\n"
        + "\n".join(rows) + "\n")
    write("curvature_products", {"environment": environment(), "runs": args.runs,
                                 "warmup": args.warmup, "targets": TARGETS, "results": results},
          markdown)


if __name__ == "__main__":
    main()
