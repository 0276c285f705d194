"""The Hessian's spectrum while a net trains on MNIST, with PowerMethodLR and HessianSpectrum.

A 784-64-32-10 tanh network trained with SGD at the learning rate PowerMethodLR measures
(1/λ_max of the Hessian, re-estimated every 3 epochs), while HessianSpectrum logs the Hessian's
spectrum after every epoch on 1000 training images. The figures show what the literature
reports:

- a few large outlier eigenvalues over a bulk near zero (LeCun et al. 1998; Sagun et al. 2017);
- smaller second derivatives in lower layers (LeCun, "Efficient BackProp");
- the fraction of negative eigenvalues against the training error (Dauphin et al. 2014).

Run: python examples/hessian_spectrum_mnist.py [--epochs 8] [--figures docs/figures]
"""

import argparse
import os

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from keras_secondorder.callbacks import HessianSpectrum, PowerMethodLR  # noqa: E402
from keras_secondorder.datasets import mnist  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--figures", default="docs/figures")
    args = parser.parse_args()

    (x_train, y_train), (x_test, y_test) = mnist(args.data_dir)
    x_train = x_train[: args.train_samples].reshape(-1, 784).astype("float32") / 255.0
    y_train = y_train[: args.train_samples]
    x_test = x_test.reshape(-1, 784).astype("float32") / 255.0

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(64, activation="tanh", name="dense_1"),
        keras.layers.Dense(32, activation="tanh", name="dense_2"),
        keras.layers.Dense(10, activation="softmax", name="dense_3"),
    ], name="mlp")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    measured = (x_train[:1000], y_train[:1000])
    learning_rate = PowerMethodLR(measured, num_samples=500, every_n_epochs=3)
    spectrum = HessianSpectrum(measured, k=10, num_samples=1000, per_layer=True,
                               png_dir=os.path.join(args.figures, "density"))
    history = model.fit(x_train, y_train, batch_size=32, epochs=args.epochs,
                        validation_data=(x_test, y_test), callbacks=[learning_rate, spectrum],
                        verbose=2).history
    os.makedirs(args.figures, exist_ok=True)
    epochs = range(1, args.epochs + 1)

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    last = spectrum.densities[args.epochs - 1]
    axes[0].semilogy(last.grid.numpy(), last.density.numpy() + 1e-12)
    for i in range(10):
        axes[0].axvline(history[f"hessian_top_{i + 1}"][-1], color="tab:red", alpha=0.3, lw=1)
    axes[0].set(title=f"Hessian spectral density after {args.epochs} epochs\n(red: top 10 "
                "eigenvalues, Lanczos)", xlabel="eigenvalue", ylabel="density")
    for layer in ("dense_1", "dense_2", "dense_3"):
        axes[1].semilogy(epochs, history[f"hessian_mean_diagonal/{layer}"], marker="o",
                         label=layer)
    axes[1].set(title="mean second derivative per layer\n(trace / parameters)", xlabel="epoch")
    axes[1].legend()
    error = [1 - accuracy for accuracy in history["accuracy"]]
    axes[2].plot(error, history["hessian_negative_fraction"], marker="o")
    for epoch, (e, fraction) in enumerate(zip(error, history["hessian_negative_fraction"],
                                              strict=True)):
        axes[2].annotate(str(epoch + 1), (e, fraction), fontsize=8)
    axes[2].set(title="negative-eigenvalue fraction vs training error\n(labels: epoch)",
                xlabel="training error", ylabel="fraction of negative eigenvalues")
    figure.tight_layout()
    path = os.path.join(args.figures, "hessian_spectrum_mnist.png")
    figure.savefig(path, dpi=90)
    print(f"\nFigure: {path}")
    print("epoch  train error  λ_max (top-1)  learning rate  negative fraction  "
          "mean diag dense_1 / dense_2 / dense_3")
    for epoch in range(args.epochs):
        print(f"{epoch + 1:5d}  {error[epoch]:11.4f}  {history['hessian_top_1'][epoch]:13.4f}  "
              f"{history['learning_rate'][epoch]:13.4f}  "
              f"{history['hessian_negative_fraction'][epoch]:17.3f}  "
              + " / ".join(f"{history[f'hessian_mean_diagonal/dense_{i}'][epoch]:.2e}"
                           for i in (1, 2, 3)))


if __name__ == "__main__":
    main()
