"""Martens (2010): Hessian-free trains the MNIST deep autoencoder from random (sparse) weights.

784-1000-500-250-30-250-500-1000-784, logistic units (linear code), cross-entropy summed over
the pixels, weight cost 2e-5, sparse initialization, no pre-training; one HF iteration per batch
of `--batch` images. Prints the HF diagnostics of every iteration and the per-image squared
reconstruction error on the test set. The defaults (a few minutes on 2 CPUs) show the method
at work; the wall-clock comparison with Adam and SGD is `benchmarks/deep_autoencoder.py`.

Usage: python examples/deep_autoencoder_hf.py [--images 12000] [--batch 6000] [--epochs 3]
"""

import argparse

import keras
import numpy as np

import keras_secondorder as ks
from keras_secondorder.datasets import mnist


class PrintIteration(keras.callbacks.Callback):
    """Prints the loss and the HF diagnostics after every iteration."""

    def on_train_batch_end(self, batch, logs=None):
        print(f"  loss {logs['loss']:8.3f}  CG {logs['cg_iterations']:4.0f}  rho "
              f"{logs['rho']:6.3f}  lambda {logs['damping']:8.4g}  step {logs['step_size']:.3f}"
              f"  rejected {logs['rejected_steps']:.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    (x_train, _), (x_test, _) = mnist(args.data)
    x_train = (x_train[:args.images].reshape(-1, 784) / 255.0).astype("float32")
    x_test = (x_test.reshape(-1, 784) / 255.0).astype("float32")
    keras.utils.set_random_seed(0)
    model = ks.wrap(ks.models.deep_autoencoder(
        kernel_initializer=ks.models.SparseInitializer(),
        kernel_regularizer=keras.regularizers.L2(1e-5)))
    model.compile(ks.optimizers.HessianFree(), "binary_crossentropy", loss_weights=[784.0])

    def test_error():
        reconstruction = model.predict(x_test, batch_size=2000, verbose=0)
        return float(np.mean(np.sum((reconstruction - x_test) ** 2, axis=1)))

    print(f"test squared error before training: {test_error():.2f}")
    model.fit(x_train, x_train, batch_size=args.batch, epochs=args.epochs, verbose=0,
              callbacks=[PrintIteration()])
    print(f"test squared error after {args.epochs} epochs of HF: {test_error():.2f} "
          "(Martens 2010, full training: 2.78)")


if __name__ == "__main__":
    main()
