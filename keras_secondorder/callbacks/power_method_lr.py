"""PowerMethodLR: the learning rate the curvature implies, `scale / λ_max`."""

import warnings

import keras
import tensorflow as tf

from keras_secondorder import spectrum
from keras_secondorder._keras_compat import learning_rate_setting, unwrap_optimizer
from keras_secondorder._progress import VERBOSE, Progress, ProgressOperator
from keras_secondorder._validation import integer, number, one_of, positive_int
from keras_secondorder.callbacks._measure import (
    OperatorCache,
    check_inputs_batched,
    is_finite,
    measurement_batches,
    resolved_verbose,
)
from keras_secondorder.curvature import flatten, kinds
from keras_secondorder.spectrum._krylov import NonFiniteCurvatureError, random_unit_vector


@keras.saving.register_keras_serializable(package="keras_secondorder")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`factor * schedule(step)`: a schedule whose scale `PowerMethodLR` sets from the curvature.

    Args:
        schedule: the `keras.optimizers.schedules.LearningRateSchedule` that gives the shape.
        factor: the initial factor. Defaults to `1.0`.
    """

    def __init__(self, schedule, factor=1.0):
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        self.schedule = schedule
        # A variable, so that a compiled train step sees every new factor without retracing.
        self.factor = keras.Variable(factor, dtype="float32", trainable=False,
                                     name="learning_rate_factor")

    def __call__(self, step):
        rate = keras.ops.convert_to_tensor(self.schedule(step))
        return keras.ops.cast(self.factor, rate.dtype) * rate

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "factor": float(keras.ops.convert_to_numpy(self.factor))}


def check_optimizer(optimizer):
    """Raises a ValueError unless `optimizer`'s step is `learning_rate` times a fixed direction.

    Those are plain gradient descent (`keras.optimizers.SGD` without momentum) and optimizers
    with a diagonal preconditioner they expose (`diagonal_preconditioner`, as SDLM).
    """
    if hasattr(optimizer, "diagonal_preconditioner"):
        return
    if isinstance(optimizer, keras.optimizers.SGD):
        if float(optimizer.momentum) == 0.0:
            return
        reason = (f"with momentum={optimizer.momentum} its edge of stability is "
                  f"2(1 + momentum)/λ_max, not 2/λ_max")
    else:
        reason = ("its step is not learning_rate times the gradient (Adam, RMSprop and the like "
                  "normalize it by running gradient statistics), so 1/λ_max is not its rate")
    raise ValueError(
        f"PowerMethodLR sets learning_rate = scale / λ_max, the optimal rate of gradient "
        f"descent; the model's optimizer is {type(optimizer).__name__}, and {reason}. Compile "
        "with keras.optimizers.SGD (momentum=0) or keras_secondorder.optimizers.SDLM, or "
        "measure λ_max without setting a rate: keras_secondorder.callbacks.HessianSpectrum."
    )


class PowerMethodLR(keras.callbacks.Callback):
    """Sets the learning rate to `scale / λ_max` of the Hessian (or GGN), by power iteration.

    For a quadratic with largest curvature `λ_max`, gradient descent converges fastest along that
    direction at `η = 1/λ_max` and diverges above `2/λ_max` (LeCun, Simard and Pearlmutter 1993;
    "Efficient BackProp" 1998). Before training, and optionally every `every_n_epochs` epochs
    or every `every_n_steps` steps, this callback estimates `λ_max` on a few hundred samples and
    sets the optimizer's learning rate to `scale / |λ_max|`. Each estimate after the first starts
    from the previous eigenvector plus a fresh random vector of the same length, so it takes a
    few products. The random half matters: after an epoch of training (and, with SDLM, a new
    preconditioner) the old top eigenvector can be close to an eigenvector of a lower
    eigenvalue, a fixed point of the power iteration whose Rayleigh quotient stops changing at
    once; started there alone, the estimate stops at that lower eigenvalue and the rate it sets
    is too high. It changes nothing else: weights and the other optimizer state are left exactly
    as they were.

    Why re-estimate, and why not too eagerly: `λ_max` at initialization is often several times
    its value a few hundred steps later, so one estimate before training can give a conservative
    rate for the rest of it, most of all on unnormalized inputs, whose mean is a direction of
    large curvature that the first steps remove (standardize them, as LeCun advises). Following
    `λ_max` step by step with small batches can overshoot instead: a larger rate drives the
    weights to flatter regions, `λ_max` falls further and the rate keeps rising until gradient
    noise dominates. benchmarks/spectrum.py measures both: on a standardized MNIST MLP at batch
    32, one estimate is within 1.2-1.4x of the best one-epoch SGD rate and following `λ_max`
    3.6-4.4x above it. A schedule (below) or re-estimates every epoch or so are the safe middle;
    `max_increase` bounds the feedback: each estimate may raise the rate by at most that factor,
    so a run has to stay stable at a rate before it is offered a higher one.

    Which optimizers: 1/λ_max is a rate only where the step is `learning_rate * (direction)`
    with a fixed direction per gradient: plain gradient descent (`keras.optimizers.SGD` without
    momentum, where it is LeCun's optimum) and SDLM below. For Adam, RMSprop, momentum, ...
    the rate multiplies a step the Hessian alone does not describe (Adam's is normalized by
    its running gradient scale; heavy-ball momentum moves the edge of stability to
    `2(1 + momentum)/λ_max`), so setting `1/λ_max` there would silently set a meaningless
    rate: `fit` stops at its start with an error naming the optimizers that fit. Keras's
    `LossScaleOptimizer` (mixed precision) is seen through: the rate is the inner optimizer's.

    Optimizers that scale each weight's step by a diagonal preconditioner `P`
    (`w <- w - learning_rate * P g`) and expose it as
    `optimizer.diagonal_preconditioner(model, data)`, like `keras_secondorder.optimizers.SDLM`
    (`P = 1/(h + mu)`), are measured on the scaled curvature `P^1/2 H P^1/2` instead: the same
    theory then holds for their learning rate (the step is gradient descent in the coordinates
    `P^-1/2 w`), so `1/λ_max` is SDLM's best `epsilon` and `2/λ_max` its edge of stability.

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
        every_n_epochs: re-estimate at the start of every n-th epoch. Defaults to `None`.
        every_n_steps: re-estimate before every n-th training step (counted across epochs).
            Defaults to `None`. With neither, `λ_max` is estimated only before training.
        max_increase: each re-estimate sets at most this factor times the previous estimate's
            rate (a fall in `λ_max` is followed at once; a rise in the rate only step by step).
            Defaults to `None`, no bound.
        tol: relative tolerance of the power iteration. Defaults to `1e-3`.
        max_iterations: products at most per estimate. Defaults to `50`.
        batch_size: examples per curvature product batch. Defaults to `250`.
        verbose: `1` shows progress (a bar once an estimate takes more than two seconds) and
            the result, `0` nothing, `"auto"` as `1` in interactive use unless `fit` runs with
            `verbose=0`. Defaults to `"auto"`.
        seed: seed of the start vector. Defaults to `0`.

    A learning-rate schedule keeps its shape and gets its scale from the curvature: the rate at
    step `t` becomes `(scale / |λ_max|) * schedule(t) / schedule(0)` (LeCun's decreasing
    epsilon for LeNet-5, say, on top of the measured optimum). The callback wraps the schedule in
    a `ScaledSchedule` at the start of training and sets its factor at each estimate.
    """

    def __init__(self, data, num_samples=500, curvature="hessian", scale=1.0,
                 every_n_epochs=None, every_n_steps=None, max_increase=None, tol=1e-3,
                 max_iterations=50, batch_size=250, verbose="auto", seed=0):
        super().__init__()
        kinds.get(curvature, allowed=("hessian", "ggn"))
        self.scale = number(scale, "scale", lambda v: v > 0,
                            "> 0 (1 is LeCun's optimum, 2 the edge of stability)")
        self.every_n_epochs, self.every_n_steps = (
            None if value is None else positive_int(value, name)
            for name, value in (("every_n_epochs", every_n_epochs),
                                ("every_n_steps", every_n_steps)))
        self.max_increase = None if max_increase is None else number(
            max_increase, "max_increase", lambda value: value >= 1,
            ">= 1 (the factor by which one estimate may raise the rate), or None")
        self.tol = number(tol, "tol", lambda v: v > 0, "> 0")
        self.max_iterations = positive_int(max_iterations, "max_iterations")
        self.verbose = one_of(verbose, "verbose", VERBOSE)
        self.seed = integer(seed, "seed")
        self.batches = measurement_batches(data, num_samples, batch_size)
        self.operators = OperatorCache(curvature, self.batches)
        self.curvature = curvature
        self.rate = None  # The last estimate's `scale / |λ_max|`, after `max_increase`.
        self.lambda_max = None
        self.eigenvector = None  # The last estimate's, half of the next one's start.
        self._estimates = 0
        # Steps counted from the callbacks' step indices, so that nothing waits on the device.
        self._step = self._epoch_start = self._estimated_at = 0

    @property
    def optimizer(self):
        """The optimizer whose rate is set: the model's, inside Keras's loss-scaling wrapper."""
        return unwrap_optimizer(self.model.optimizer)

    def on_train_begin(self, logs=None):
        optimizer = self.optimizer
        check_optimizer(optimizer)
        check_inputs_batched(self.model, self.batches)
        self.operators.get(self.model)  # A loss without a Gauss-Newton split fails here.
        schedule = getattr(optimizer, "_learning_rate", None)
        if (isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)
                and not isinstance(schedule, ScaledSchedule)):
            optimizer.learning_rate = ScaledSchedule(schedule)
            # A train function traced in an earlier `fit` still calls the old schedule.
            self.model.make_train_function(force=True)
        self.estimate()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._step
        if self.every_n_epochs and epoch > 0 and epoch % self.every_n_epochs == 0:
            self.estimate()

    def on_train_batch_begin(self, batch, logs=None):
        # `batch` is the first step of the call: with `steps_per_execution > 1` (one call per
        # execution) the estimate comes after at least, not exactly, `every_n_steps` steps.
        self._step = self._epoch_start + batch
        if self.every_n_steps and self._step - self._estimated_at >= self.every_n_steps:
            self.estimate()

    def on_train_batch_end(self, batch, logs=None):
        self._step = self._epoch_start + batch + 1  # `batch` is the call's last step.

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lambda_max"] = float(self.lambda_max)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.optimizer.learning_rate))

    def estimate(self):
        """Measures `λ_max` now and sets the learning rate; returns `λ_max`."""
        progress = Progress(self.max_iterations, f"{self.curvature} products",
                            resolved_verbose(self, self.verbose))
        operator = ProgressOperator(self.operators.get(self.model), progress)
        preconditioner = getattr(self.optimizer, "diagonal_preconditioner", None)
        if preconditioner is not None:
            # P^1/2 H P^1/2: the curvature the preconditioned step sees.
            root = tf.linalg.LinearOperatorDiag(
                tf.cast(tf.sqrt(flatten(preconditioner(self.model, self.batches))),
                        operator.dtype), is_self_adjoint=True, is_positive_definite=True)
            operator = tf.linalg.LinearOperatorComposition(
                [root, operator, root], is_self_adjoint=True, is_square=True)
        start = None
        if self.eigenvector is not None:
            fresh = random_unit_vector(operator.shape[-1], self.seed, self._estimates)
            start = self.eigenvector + fresh[None]  # Both of length 1.
        self._estimates += 1
        try:
            result = spectrum.power_iteration(operator, k=1, tol=self.tol,
                                              max_iterations=self.max_iterations,
                                              seed=self.seed, initial_vectors=start,
                                              verbose=0)
            self.lambda_max = float(result.eigenvalues[0])
        except NonFiniteCurvatureError:
            self.lambda_max = float("nan")
        progress.finish()
        self._estimated_at = self._step
        if not is_finite(self.lambda_max) or self.lambda_max == 0.0:
            self.eigenvector = None  # The next estimate starts afresh.
            warnings.warn(f"PowerMethodLR measured λ_max = {self.lambda_max}; the learning rate "
                          "is left unchanged.", stacklevel=2)
            return self.lambda_max
        if not bool(result.converged[0]):
            # The Rayleigh quotient approaches |λ_max| from below: the rate may be too high.
            warnings.warn(f"PowerMethodLR: the power iteration did not reach tol={self.tol} in "
                          f"max_iterations={self.max_iterations} products; λ_max = "
                          f"{self.lambda_max:.6g} may be an underestimate. Raise max_iterations.",
                          stacklevel=2)
        self.eigenvector = result.eigenvectors
        learning_rate = self.scale / abs(self.lambda_max)
        if self.max_increase is not None and self.rate is not None:
            learning_rate = min(learning_rate, self.max_increase * self.rate)
        self.rate = learning_rate
        schedule = learning_rate_setting(self.optimizer)
        if isinstance(schedule, ScaledSchedule):
            schedule.factor.assign(learning_rate / float(schedule.schedule(0)))
        else:
            self.optimizer.learning_rate = learning_rate
        if progress.show:
            print(f"PowerMethodLR: λ_max = {self.lambda_max:.6g} ({result.num_products} "
                  f"{self.curvature} products), learning rate set to {learning_rate:.6g}")
        return self.lambda_max
