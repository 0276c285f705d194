"""PowerMethodLR: the learning rate the curvature implies, `scale / λ_max`."""

import warnings

import keras

from keras_secondorder import spectrum
from keras_secondorder._validation import one_of, positive_int
from keras_secondorder.callbacks._measure import (
    OperatorCache,
    ProgressOperator,
    is_finite,
    measurement_batches,
    progress_bar,
)


class PowerMethodLR(keras.callbacks.Callback):
    """Sets the learning rate to `scale / λ_max` of the Hessian (or GGN), by power iteration.

    For a quadratic with largest curvature `λ_max`, gradient descent converges fastest along that
    direction at `η = 1/λ_max` and diverges above `2/λ_max` (LeCun, Simard and Pearlmutter 1993;
    "Efficient BackProp" 1998). Before training, and optionally every `every_n_epochs` epochs,
    this callback estimates `λ_max` on a few hundred samples and sets the optimizer's learning
    rate to `scale / |λ_max|`. It changes nothing else: weights and the other optimizer state are
    left exactly as they were.

    It logs `lambda_max` and `learning_rate` at the end of every epoch; put it before History's
    consumers (CSVLogger, TensorBoard) in the callback list so that they record them.

    Args:
        data: what to measure on: a tuple of arrays `(x, y[, sample_weight])` or a
            `tf.data.Dataset` of batches.
        num_samples: examples of `data` used. Defaults to `500`.
        curvature: `"hessian"` or `"ggn"` (the Gauss-Newton matrix, PSD). Defaults to
            `"hessian"`.
        scale: the learning rate is `scale / |λ_max|`; 1 is LeCun's optimum, 2 the edge of
            stability. Defaults to `1.0`.
        every_n_epochs: re-estimate at the start of every n-th epoch. Defaults to `None`:
            only before training.
        tol: relative tolerance of the power iteration. Defaults to `1e-3`.
        max_iterations: products at most per estimate. Defaults to `50`.
        batch_size: examples per curvature product batch. Defaults to `250`.
        verbose: 1 shows progress and the result. Defaults to `1`.
        seed: seed of the start vector. Defaults to `0`.

    Raises:
        ValueError: at the start of training, when the optimizer's learning rate is a schedule.
    """

    def __init__(self, data, num_samples=500, curvature="hessian", scale=1.0,
                 every_n_epochs=None, tol=1e-3, max_iterations=50, batch_size=250, verbose=1,
                 seed=0):
        super().__init__()
        one_of(curvature, "curvature", ("hessian", "ggn"))
        if not scale > 0:
            raise ValueError(f"`scale` must be positive; received {scale!r}.")
        if every_n_epochs is not None:
            positive_int(every_n_epochs, "every_n_epochs")
        self.batches = measurement_batches(data, num_samples, batch_size)
        self.operators = OperatorCache(curvature, self.batches)
        self.curvature, self.scale, self.every_n_epochs = curvature, scale, every_n_epochs
        self.tol, self.max_iterations, self.verbose, self.seed = tol, max_iterations, verbose, seed
        self.lambda_max = None

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if isinstance(getattr(optimizer, "_learning_rate", None),
                      keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                f"PowerMethodLR sets the learning rate, but {type(optimizer).__name__}'s "
                "learning rate is a schedule. Compile with a float learning rate, or scale your "
                "schedule by the λ_max that keras_secondorder.spectrum.power_iteration gives."
            )
        self.estimate()

    def on_epoch_begin(self, epoch, logs=None):
        if self.every_n_epochs and epoch > 0 and epoch % self.every_n_epochs == 0:
            self.estimate()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lambda_max"] = float(self.lambda_max)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))

    def estimate(self):
        """Measures `λ_max` now and sets the learning rate; returns `λ_max`."""
        operator = ProgressOperator(
            self.operators.get(self.model),
            progress_bar(self.max_iterations, self.verbose, f"{self.curvature} products"))
        result = spectrum.power_iteration(operator, k=1, tol=self.tol,
                                          max_iterations=self.max_iterations, seed=self.seed)
        self.lambda_max = float(result.eigenvalues[0])
        if not is_finite(self.lambda_max) or self.lambda_max == 0.0:
            warnings.warn(f"PowerMethodLR measured λ_max = {self.lambda_max}; the learning rate "
                          "is left unchanged.", stacklevel=2)
            return self.lambda_max
        learning_rate = self.scale / abs(self.lambda_max)
        self.model.optimizer.learning_rate = learning_rate
        if self.verbose:
            print(f"PowerMethodLR: λ_max = {self.lambda_max:.6g} ({result.num_products} "
                  f"{self.curvature} products), learning rate set to {learning_rate:.6g}")
        return self.lambda_max
