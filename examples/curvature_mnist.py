"""The curvature core on MNIST: eigenvalues, trace, diagonal, and LeCun's learning rate 1/λ_max.

A 784-30-10 tanh network at initialization, curvature measured on 500 training images:
the largest eigenvalue of the Hessian and of the Gauss-Newton matrix (power iteration on the
matrix-free operators), the Hessian's trace (Hutchinson), and the exact Gauss-Newton diagonal
per layer (LeCun: second derivatives are smaller in lower layers). Then SGD at the learning rate
the curvature implies, 1/λ_max. About 20 seconds on two CPU cores.

Run: python examples/curvature_mnist.py [--data-dir DIR]
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from keras_secondorder import curvature, spectrum
from keras_secondorder.datasets import mnist


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="directory with the MNIST IDX files")
    parser.add_argument("--curvature-samples", type=int, default=500)
    parser.add_argument("--train-samples", type=int, default=10000)
    args = parser.parse_args()

    (x_train, y_train), (x_test, y_test) = mnist(args.data_dir)
    x_train = x_train.reshape(-1, 784).astype("float32") / 255.0
    x_test = x_test.reshape(-1, 784).astype("float32") / 255.0
    print(f"MNIST: {len(x_train)} training and {len(x_test)} test images")

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)),
                              keras.layers.Dense(30, activation="tanh", name="hidden"),
                              keras.layers.Dense(10, activation="softmax", name="output")],
                             name="mlp")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"Model: 784-30-10 tanh MLP, {model.count_params():,} parameters, at initialization")

    n = args.curvature_samples
    batch = (x_train[:n], y_train[:n])
    hessian = curvature.HessianOperator(model, batch)
    ggn = curvature.GGNOperator(model, batch)
    start = time.perf_counter()
    top_hessian = spectrum.power_iteration(hessian, tol=1e-4)
    top_ggn = spectrum.power_iteration(ggn, tol=1e-4)
    lambda_hessian = float(top_hessian.eigenvalues[0])
    lambda_ggn = float(top_ggn.eigenvalues[0])
    trace = spectrum.hutchinson_trace(hessian, num_probes=50)
    diagonal = curvature.diagonal(model, batch, "ggn")
    elapsed = time.perf_counter() - start

    print(f"\nCurvature on {n} training images ({elapsed:.1f} s):")
    print(f"  largest Hessian eigenvalue      {lambda_hessian:10.4f}  "
          f"({top_hessian.num_products} power iterations)")
    print(f"  largest Gauss-Newton eigenvalue {lambda_ggn:10.4f}  "
          f"({top_ggn.num_products} power iterations)")
    print(f"  Hessian trace (Hutchinson, 50)  {float(trace.trace):10.4f} "
          f"± {float(trace.standard_error):.4f}")
    print("  mean Gauss-Newton diagonal per layer (smaller in the lower layer):")
    for variable, values in zip(model.trainable_variables, diagonal, strict=True):
        print(f"    {variable.path:<20} {float(tf.reduce_mean(values)):.3e}")

    learning_rate = 1.0 / abs(lambda_hessian)
    print(f"\nLeCun's optimal learning rate 1/λ_max = {learning_rate:.4f}")
    model.optimizer.learning_rate.assign(learning_rate)
    m = args.train_samples
    history = model.fit(x_train[:m], y_train[:m], batch_size=n, epochs=3, verbose=0,
                        validation_data=(x_test, y_test))
    losses = ", ".join(f"{value:.3f}" for value in history.history["loss"])
    print(f"SGD at that rate, 3 epochs on {m} images in batches of {n}: training loss by "
          f"epoch {losses}; test accuracy {history.history['val_accuracy'][-1]:.3f}")

    vector = [tf.ones_like(v) for v in model.trainable_variables]
    timings = {}
    for name, function in (("gradient", lambda: curvature.gradient(model, *batch)[1]),
                           ("Hv", lambda: curvature.hessian_vector_product(model, *batch, vector)),
                           ("GGN-v", lambda: curvature.gauss_newton_vector_product(model, *batch,
                                                                                   vector))):
        compiled = tf.function(function)
        compiled()
        runs = []
        for _ in range(10):
            start = time.perf_counter()
            [t.numpy() for t in compiled()]
            runs.append(time.perf_counter() - start)
        timings[name] = float(np.median(runs))
    print(f"Cost of one product on {n} images: Hv {timings['Hv'] / timings['gradient']:.2f}x "
          f"and GGN-v {timings['GGN-v'] / timings['gradient']:.2f}x one gradient "
          f"({1000 * timings['gradient']:.1f} ms)")


if __name__ == "__main__":
    main()
