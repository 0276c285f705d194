"""HessianSpectrum: the curvature's eigenvalues, trace and density while `model.fit` runs."""

import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_secondorder import spectrum
from keras_secondorder._validation import integer, one_of, positive_int
from keras_secondorder.callbacks._measure import (
    OperatorCache,
    ProgressOperator,
    check_inputs_batched,
    measurement_batches,
    progress_bar,
)
from keras_secondorder.curvature import kinds
from keras_secondorder.spectrum._krylov import NonFiniteCurvatureError


class HessianSpectrum(keras.callbacks.Callback):
    """Logs the top-k and smallest eigenvalues, trace and density of the curvature every n epochs.

    Every `every_n_epochs` epochs it measures, on at most `num_samples` examples of `data`:

    - `<c>_top_1` ... `<c>_top_k`: the k largest eigenvalues (Lanczos),
    - `<c>_min`: the smallest (most negative) eigenvalue,
    - `<c>_trace`: Hutchinson's trace estimate,
    - `<c>_negative_fraction`: the fraction of negative eigenvalues, from the spectral
      density (stochastic Lanczos quadrature), which Dauphin et al. (2014) relate to the
      training error at saddle points, and `<c>_negative_fraction_error`, its standard error
      over the density's probes,
    - `<c>_condition`: `λ_max / |λ_min|`, the ratio of the extreme eigenvalues' magnitudes,

    where `<c>` is `hessian`, `ggn` or `fisher`. With `per_layer=True`, also
    `<c>_top_1/<layer>` and `<c>_mean_diagonal/<layer>` (trace over parameters) for each layer
    with weights: LeCun's observation that second derivatives are smaller in lower layers.

    The values go into `logs`, so History, CSVLogger and TensorBoard record them when they come
    after this callback in the list. Optionally it writes a PNG of the density per measurement
    to `png_dir`, and the density as a TensorBoard histogram to `tensorboard_log_dir`. Weights
    and optimizer state are left exactly as they were. A measurement whose products are not
    finite (NaN in the data, a diverged model) is logged as NaN with a warning; `fit` goes on.

    Args:
        data: a tuple of arrays `(x, y[, sample_weight])` or a `tf.data.Dataset` of batches.
        every_n_epochs: measure after every n-th epoch. Defaults to `1`.
        k: how many of the largest eigenvalues. Defaults to `5`.
        curvature: `"hessian"`, `"ggn"` or `"fisher"`. Defaults to `"hessian"`.
        num_samples: examples of `data` used. Defaults to `1000`.
        batch_size: examples per product batch. Defaults to `250`.
        lanczos_iterations: Lanczos steps at most for the extreme eigenvalues. Defaults to
            `None`: `max(10 k, 60)`.
        trace_probes: Hutchinson probes. Defaults to `30`.
        density_iterations: Lanczos steps of the density's quadrature. Defaults to `60`.
        density_probes: random start vectors of the density, averaged; their spread gives
            `<c>_negative_fraction_error`. For small models (`P <= density_probes *
            density_iterations`) the density is exact (see `spectrum.spectral_density`).
            Defaults to `4`.
        per_layer: also measure each layer's diagonal block. Defaults to `False`.
        png_dir: directory for the density plots. Defaults to `None`: no plots.
        tensorboard_log_dir: directory for the TensorBoard histogram. Defaults to `None`.
        verbose: 1 shows progress. Defaults to `1`.
        seed: seed of the random vectors. Defaults to `0`.
    """

    def __init__(self, data, every_n_epochs=1, k=5, curvature="hessian", num_samples=1000,
                 batch_size=250, lanczos_iterations=None, trace_probes=30,
                 density_iterations=60, density_probes=4, per_layer=False, png_dir=None,
                 tensorboard_log_dir=None,
                 verbose=1, seed=0):
        super().__init__()
        self.curvature = kinds.get(curvature).name
        self.every_n_epochs = positive_int(every_n_epochs, "every_n_epochs")
        self.k = positive_int(k, "k")
        self.trace_probes = positive_int(trace_probes, "trace_probes")
        self.density_iterations = positive_int(density_iterations, "density_iterations")
        self.density_probes = positive_int(density_probes, "density_probes")
        self.lanczos_iterations = (None if lanczos_iterations is None
                                   else positive_int(lanczos_iterations, "lanczos_iterations"))
        self.per_layer = one_of(per_layer, "per_layer", (False, True))
        self.verbose = one_of(verbose, "verbose", (0, 1, 2, False, True))
        self.seed = integer(seed, "seed")
        self.batches = measurement_batches(data, num_samples, batch_size)
        self.operators = OperatorCache(curvature, self.batches)
        self.png_dir, self.tensorboard_log_dir = png_dir, tensorboard_log_dir
        self.densities = {}  # epoch -> SpectralDensity, for plotting afterwards.
        self._writer = None

    def on_train_begin(self, logs=None):
        # Refused here, not after an epoch: data that does not fit the model, and (for the
        # Gauss-Newton and Fisher matrices) a model or loss without a Gauss-Newton split.
        check_inputs_batched(self.model, self.batches)
        self.operators.get(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        try:
            values = self.measure(epoch)
        except NonFiniteCurvatureError as error:
            warnings.warn(f"HessianSpectrum after epoch {epoch + 1}: {error} Logging NaN for "
                          "this measurement; training goes on.", stacklevel=2)
            values = dict.fromkeys(self._names(), float("nan"))
        if logs is not None:
            logs.update(values)

    def _names(self):
        name = self.curvature
        return [f"{name}_top_{i + 1}" for i in range(self.k)] + [
            f"{name}_{key}" for key in ("min", "trace", "negative_fraction",
                                        "negative_fraction_error", "condition")]

    def measure(self, epoch=None):
        """Measures the spectrum now; returns the values it logs (a dict of floats)."""
        name = self.curvature
        iterations = self.lanczos_iterations or max(10 * self.k, 60)
        per_layer = len([layer for layer in self.model.layers if layer.trainable_variables])
        most = (iterations + self.trace_probes) * (1 + self.per_layer * per_layer)
        progbar = progress_bar(most + self.density_iterations * self.density_probes,
                               self.verbose, f"{name} products")
        operator = ProgressOperator(self.operators.get(self.model), progbar)
        extremes = spectrum.lanczos(operator, k=self.k, num_iterations=iterations,
                                    seed=self.seed)
        trace = spectrum.hutchinson_trace(operator, self.trace_probes, seed=self.seed)
        density = spectrum.spectral_density(operator, num_probes=self.density_probes,
                                            num_iterations=self.density_iterations,
                                            seed=self.seed + 1)
        values = {f"{name}_top_{i + 1}": float(value)
                  for i, value in enumerate(extremes.largest)}
        smallest = float(extremes.smallest[0])
        values.update({
            f"{name}_min": smallest,
            f"{name}_trace": float(trace.trace),
            f"{name}_negative_fraction": float(density.negative_fraction),
            f"{name}_negative_fraction_error": float(density.negative_fraction_error),
            f"{name}_condition": float(extremes.largest[0]) / max(abs(smallest), 1e-30),
        })
        if self.per_layer:
            values.update(self._per_layer(name, iterations, progbar))
        if progbar is not None:
            progbar.update(progbar.target, finalize=True)  # Lanczos may have stopped early.
        if self.verbose:
            print(f"HessianSpectrum: {operator.num_products} {name} products; "
                  f"top {values[f'{name}_top_1']:.4g}, min {smallest:.4g}, "
                  f"trace {values[f'{name}_trace']:.4g}, negative fraction "
                  f"{values[f'{name}_negative_fraction']:.3f}")
        self.densities[epoch] = density
        if self.png_dir is not None:
            self._plot(density, epoch)
        if self.tensorboard_log_dir is not None:
            self._histogram(density, epoch)
        return values

    def _per_layer(self, name, iterations, progbar):
        values = {}
        for layer in self.model.layers:
            if not layer.trainable_variables:
                continue
            block = ProgressOperator(
                self.operators.get(self.model, layer.trainable_variables), progbar)
            top = spectrum.lanczos(block, k=1, num_iterations=min(iterations, block.shape[0]),
                                   seed=self.seed)
            trace = spectrum.hutchinson_trace(block, self.trace_probes, seed=self.seed)
            values[f"{name}_top_1/{layer.name}"] = float(top.largest[0])
            values[f"{name}_mean_diagonal/{layer.name}"] = float(trace.trace) / block.shape[0]
        return values

    def _plot(self, density, epoch):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(self.png_dir, exist_ok=True)
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.semilogy(density.grid.numpy(), density.density.numpy() + 1e-12)
        axis.set_xlabel("eigenvalue")
        axis.set_ylabel("density")
        label = "" if epoch is None else f" after epoch {epoch + 1}"
        axis.set_title(f"{self.curvature} spectral density{label}")
        suffix = "" if epoch is None else f"_epoch_{epoch + 1:03d}"
        figure.savefig(os.path.join(self.png_dir, f"{self.curvature}_density{suffix}.png"),
                       dpi=100, bbox_inches="tight")
        plt.close(figure)

    def _histogram(self, density, epoch):
        # The density as a histogram: grid points repeated in proportion to their mass.
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.tensorboard_log_dir)
        grid, mass = density.grid.numpy(), density.density.numpy()
        counts = np.round(10_000 * mass * np.gradient(grid)).astype(int)
        with self._writer.as_default():
            tf.summary.histogram(f"{self.curvature}_density", np.repeat(grid, counts),
                                 step=0 if epoch is None else epoch, buckets=100)
        self._writer.flush()
