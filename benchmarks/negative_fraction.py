"""The negative fraction of stochastic Lanczos quadrature against the exact one, beyond the zoo.

The zoo's models are small enough for `spectral_density` to compute the spectrum exactly at
`HessianSpectrum`'s defaults. Here the models are larger than those defaults' budget of 4 x 60
products, so the quadrature runs: MLPs 196-32-10 (tanh, ReLU; 6634 parameters) on 14x14 MNIST
and a Conv1D model (3450 parameters) on the rows of 28x28 MNIST images, each at its
initialization and after one epoch of SGD (lr 0.1, batch 32) on 6000 images. The Hessian is on
1000 images; the exact fraction is that of `eigvalsh` of the operator's dense matrix, below
`-1e-3 max|λ|` as `spectral_density` counts. Writes benchmarks/results/negative_fraction.{json,md}.

Run: python benchmarks/negative_fraction.py
"""

import keras
import numpy as np
import tensorflow as tf
from _common import environment, mnist_batch, write

from keras_secondorder import curvature, spectrum

# (probes, Lanczos steps): HessianSpectrum's defaults, spectral_density's, and a longer run.
BUDGETS = {"HessianSpectrum defaults (4 x 60)": (4, 60),
           "spectral_density defaults (1 x 80)": (1, 80), "1 x 240": (1, 240)}


def mlp(activation):
    return keras.Sequential([keras.Input((196,)), keras.layers.Dense(32, activation=activation),
                             keras.layers.Dense(10, activation="softmax")])


def conv1d():
    return keras.Sequential([
        keras.Input((28, 28)), keras.layers.Conv1D(16, 3, activation="tanh"),
        keras.layers.MaxPooling1D(2), keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax")])


def main():
    images, labels = mnist_batch(6000)
    rows = images.numpy().reshape(-1, 28, 28)
    small = tf.reshape(tf.image.resize(rows[..., None], (14, 14)), [-1, 196]).numpy()
    cases = {"MLP tanh": (lambda: mlp("tanh"), small), "MLP ReLU": (lambda: mlp("relu"), small),
             "Conv1D": (conv1d, rows)}
    results = []
    for name, (build, x) in cases.items():
        for epochs in (0, 1):
            keras.utils.set_random_seed(0)
            model = build()
            model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
            if epochs:
                model.fit(x, labels, batch_size=32, epochs=epochs, verbose=0)
            operator = curvature.HessianOperator(model, (x[:1000], labels[:1000]))
            eigenvalues = np.linalg.eigvalsh(operator.to_dense().numpy())
            band = 1e-3 * np.abs(eigenvalues).max()
            row = {"model": name, "epochs": epochs, "parameters": int(operator.shape[0]),
                   "exact": float(np.mean(eigenvalues < -band)),
                   "within_10_bands_below": float(np.mean((eigenvalues < -band)
                                                          & (eigenvalues > -10 * band))),
                   "estimates": {}}
            for budget, (probes, steps) in BUDGETS.items():
                density = spectrum.spectral_density(operator, num_probes=probes,
                                                    num_iterations=steps, seed=1)
                row["estimates"][budget] = [float(density.negative_fraction),
                                            float(density.negative_fraction_error)]
            results.append(row)
            print(row, flush=True)
    lines = [
        "# Negative fraction: stochastic Lanczos quadrature against eigvalsh",
        "",
        "Estimate ± reported error (the probes' standard error; NaN for one probe), and the "
        "exact fraction. 'Just below the band': eigenvalues between -10 and -1 times the band "
        "`1e-3 max|λ|`, which the quadrature cannot place on the right side of it.",
        "",
        "| model | parameters | epochs | exact | just below the band | "
        + " | ".join(BUDGETS) + " |",
        "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(BUDGETS),
    ]
    for row in results:
        estimates = " | ".join(
            f"{value:.3f} ± {error:.3f} (off {abs(value - row['exact']):.3f})"
            for value, error in row["estimates"].values())
        lines.append(f"| {row['model']} | {row['parameters']} | {row['epochs']} | "
                     f"{row['exact']:.3f} | {row['within_10_bands_below']:.3f} | {estimates} |")
    write("negative_fraction", {"environment": environment(), "results": results},
          "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
