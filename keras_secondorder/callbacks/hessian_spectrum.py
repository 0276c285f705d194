"""HessianSpectrum: the curvature's eigenvalues, trace and density while `model.fit` runs."""

import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_secondorder import spectrum
from keras_secondorder._progress import VERBOSE, Progress
from keras_secondorder._validation import integer, one_of, positive_int
from keras_secondorder.callbacks._measure import (
    OperatorCache,
    check_inputs_batched,
    disjoint_samples,
    measurement_batches,
    resolved_verbose,
)
from keras_secondorder.curvature import kinds
from keras_secondorder.spectrum._krylov import NonFiniteCurvatureError
from keras_secondorder.spectrum.summary import planned_products


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

    With `repeats=R > 1` every measurement is made on `R` disjoint sets of `num_samples`
    examples (`R * num_samples` of `data`): each value logged is their mean, and `<key>_std`
    their standard deviation, so a plot of `mean ± std` shows how much of a value is the
    sampling noise of the examples (PyHessian's users saw the top eigenvalue of one model vary
    tenfold over batches of 128).

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
        repeats: disjoint sets of `num_samples` examples measured. Defaults to `1`.
        png_dir: directory for the density plots. Defaults to `None`: no plots.
        tensorboard_log_dir: directory for the TensorBoard histogram. Defaults to `None`.
        verbose: `1` shows progress (a bar once a measurement takes more than two seconds)
            and the result, `0` nothing, `"auto"` as `1` in interactive use unless `fit` runs
            with `verbose=0`. Defaults to `"auto"`.
        seed: seed of the random vectors. Defaults to `0`.
    """

    def __init__(self, data, every_n_epochs=1, k=5, curvature="hessian", num_samples=1000,
                 batch_size=250, lanczos_iterations=None, trace_probes=30,
                 density_iterations=60, density_probes=4, per_layer=False, repeats=1,
                 png_dir=None, tensorboard_log_dir=None, verbose="auto", seed=0):
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
        self.verbose = one_of(verbose, "verbose", VERBOSE)
        self.seed = integer(seed, "seed")
        self.repeats = positive_int(repeats, "repeats")
        self.batches = measurement_batches(data, num_samples * self.repeats, batch_size)
        self.repeat_batches = ([self.batches] if self.repeats == 1 else
                               disjoint_samples(self.batches, self.repeats, num_samples,
                                                batch_size))
        self.operators = [OperatorCache(curvature, batches) for batches in self.repeat_batches]
        self.png_dir, self.tensorboard_log_dir = png_dir, tensorboard_log_dir
        self.densities = {}  # epoch -> SpectralDensity, for plotting afterwards.
        self._writer = None

    def on_train_begin(self, logs=None):
        # Refused here, not after an epoch: data that does not fit the model, and (for the
        # Gauss-Newton and Fisher matrices) a model or loss without a Gauss-Newton split.
        check_inputs_batched(self.model, self.batches)
        self.operators[0].get(self.model)

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
        names = [f"{name}_top_{i + 1}" for i in range(self.k)] + [
            f"{name}_{key}" for key in ("min", "trace", "negative_fraction",
                                        "negative_fraction_error", "condition")]
        return names + [f"{key}_std" for key in names] if self.repeats > 1 else names

    def measure(self, epoch=None):
        """Measures the spectrum now; returns the values it logs (a dict of floats)."""
        name = self.curvature
        layers = ([layer for layer in self.model.layers if layer.trainable_variables]
                  if self.per_layer else [])
        most = self.repeats * planned_products(
            self.k, self.lanczos_iterations, self.trace_probes, self.density_probes,
            self.density_iterations, len(layers))
        progress = Progress(most, f"{name} products", resolved_verbose(self, self.verbose))
        per_repeat, densities = [], []
        for operators in self.operators:
            blocks = {layer.name: operators.get(self.model, layer.trainable_variables)
                      for layer in layers}
            summary, density = spectrum.spectrum_summary(
                operators.get(self.model), k=self.k, num_iterations=self.lanczos_iterations,
                trace_probes=self.trace_probes, density_probes=self.density_probes,
                density_iterations=self.density_iterations, seed=self.seed, blocks=blocks,
                progress=progress)
            per_repeat.append(self._logged(summary))
            densities.append(density)
        values = {key: float(np.mean([v[key] for v in per_repeat])) for key in per_repeat[0]}
        if self.repeats > 1:
            values.update({f"{key}_std": float(np.std([v[key] for v in per_repeat], ddof=1))
                           for key in per_repeat[0]})
        progress.finish()  # Lanczos may have stopped early.
        if progress.show:
            print(f"HessianSpectrum: top {values[f'{name}_top_1']:.4g}, min "
                  f"{values[f'{name}_min']:.4g}, trace {values[f'{name}_trace']:.4g}, "
                  f"negative fraction {values[f'{name}_negative_fraction']:.3f}"
                  + (f" (means over {self.repeats} repeats)" if self.repeats > 1 else ""))
        self.densities[epoch] = densities[0]
        if self.png_dir is not None:
            self._plot(densities[0], epoch)
        if self.tensorboard_log_dir is not None:
            self._histogram(densities[0], epoch)
        return values

    def _logged(self, summary):
        """`spectrum_summary` values under this callback's log names."""
        name = self.curvature
        values = {f"{name}_top_{i + 1}": value for i, value in enumerate(summary["largest"])}
        values.update({f"{name}_min": summary["smallest"][0],
                       **{f"{name}_{key}": summary[key]
                          for key in ("trace", "negative_fraction", "negative_fraction_error",
                                      "condition")}})
        for layer, block in summary["blocks"].items():
            values[f"{name}_top_1/{layer}"] = block["largest"]
            values[f"{name}_mean_diagonal/{layer}"] = block["mean_diagonal"]
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
