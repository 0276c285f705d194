"""The base of optimizers that use the curvature of the current batch inside `model.fit`."""

import contextlib
import threading
import weakref

import keras
import tensorflow as tf

from keras_secondorder._keras_compat import (
    all_reduce_sum_gradients,
    backend_variables,
    base_optimizer_keyword_args,
    unwrap_optimizer,
)
from keras_secondorder._validation import learning_rate as validated_learning_rate
from keras_secondorder.curvature.vectors import densify

_MISSING_CURVATURE = (
    "{name} needs the curvature of each batch, which keras.Model's train step does not give "
    "optimizers. Build the model as keras_secondorder.Model (functional or subclassed), or wrap "
    "an existing one: `model = keras_secondorder.wrap(model)`, then compile it with this "
    "optimizer. In a custom training loop, bind the batch: `with optimizer.bind("
    "keras_secondorder.curvature.BatchCurvature(model, (x, y))): optimizer.apply(grads)`."
)


def without_learning_rate(kwargs, name, why):
    """`kwargs` without `learning_rate`, for optimizers whose steps size themselves.

    Raises:
        ValueError: a `learning_rate` was given (naming the optimizer and `why` it takes none).
    """
    if kwargs.get("learning_rate") is not None:
        raise ValueError(f"{name} takes no `learning_rate` (received "
                         f"{kwargs['learning_rate']!r}): {why}")
    return {key: value for key, value in kwargs.items() if key != "learning_rate"}


def with_base_keyword_docs(cls):
    """Fills `{{base_optimizer_keyword_args}}` in `cls`'s docstring with Keras's own text."""
    cls.__doc__ = cls.__doc__.replace("{{base_optimizer_keyword_args}}",
                                      base_optimizer_keyword_args)
    return cls


class CurvatureOptimizer(keras.optimizers.Optimizer):
    """A Keras optimizer whose step also uses curvature of the current batch.

    This base receives the batch and nothing more: `keras_secondorder.Model`'s train step
    `bind`s a `BatchCurvature` of the current batch, and each step hands it, with the gradients
    summed over replicas (dense), to the subclass's `curvature_step`, which updates the weights
    and its state. It also keeps `skipped_steps` and the `diagnostics` the train step logs.
    `DiagonalCurvatureOptimizer` is the per-variable template of the diagonal methods (SDLM,
    EquilibratedSGD); `HessianFree` takes whole-model steps.

    Everything else is Keras's: gradient clipping, weight decay, gradient accumulation, EMA, loss
    scaling, `tf.distribute`. A step whose gradient or curvature is not finite changes no weight;
    it is counted in `skipped_steps` (logged by `keras_secondorder.Model`).
    """

    def __init__(self, learning_rate, name, **kwargs):
        super().__init__(learning_rate=validated_learning_rate(learning_rate), name=name,
                         **kwargs)
        # MirroredStrategy traces each replica's step in its own thread, concurrently: each
        # thread binds its own replica's batch.
        self._bound = threading.local()

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.skipped_steps = self.add_scalar("skipped_steps")

    def add_damping(self, variables, value):
        """A `damping` state variable initialized to `value`, in the variables' dtype.

        Not float32 as `add_scalar`'s: a float64 run's damping is not rounded each step.
        """
        return self.add_variable((), dtype=variables[0].dtype,
                                 initializer=keras.initializers.Constant(value),
                                 aggregation="only_first_replica", name="damping")

    def require_one_device(self, alternatives):
        """Raises, inside a step under a strategy of several replicas: the method runs on one.

        Its loops (line searches, trials) evaluate the objective, which cannot all-reduce
        inside a `tf.while_loop`. `alternatives` completes the error's advice.
        """
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            raise ValueError(
                f"{type(self).__name__} runs on one device; this strategy has "
                f"{context.num_replicas_in_sync} replicas. Train it without a distribution "
                f"strategy, or use {alternatives}."
            )

    def add_scalar(self, name, value=0.0):
        """A float32 scalar state variable (counter, damping, diagnostic), one per model.

        Replicas compute identical values, so the first replica's is kept.
        """
        return self.add_variable((), initializer=keras.initializers.Constant(value),
                                 dtype="float32", aggregation="only_first_replica", name=name)

    @contextlib.contextmanager
    def bind(self, curvature):
        """Makes `curvature` (a `BatchCurvature`) the batch the next steps take curvature on."""
        previous = self._bound_curvature()
        self._bound.curvature = curvature
        try:
            yield self
        finally:
            self._bound.curvature = previous

    def _bound_curvature(self):
        return getattr(self._bound, "curvature", None)

    def set_model(self, model):
        """Tells the optimizer which model it trains (`keras_secondorder.Model.compile` does).

        Optimizers whose state is shaped by the model's layers (K-FAC's factors) size it in
        `build` from this model, or, in a custom loop, from the bound batch's model.
        """
        self._model = weakref.ref(model)

    def trained_model(self):
        """The model given to `set_model` or bound with the current batch; `None` if neither."""
        reference = getattr(self, "_model", None)
        model = None if reference is None else reference()
        if model is None and self._bound_curvature() is not None:
            model = self._bound_curvature().model
        return model

    def curvature_step(self, curvature, gradients, variables, learning_rate):
        """Updates `variables` (and the optimizer's state) from the batch's curvature.

        Called in the step (replica context under `tf.distribute`).

        Args:
            curvature: the bound `BatchCurvature` (this replica's share of the batch).
            gradients: dense gradients, already summed over replicas.
            variables: the backend variables, in the order of `gradients`.
            learning_rate: the step's learning rate (a scalar tensor).
        """
        raise NotImplementedError

    def diagnostics(self):
        """Scalars the train step adds to `logs`: at least `skipped_steps`."""
        return {"skipped_steps": self.skipped_steps}

    def count_skipped_step(self, distribution, finite):
        """Adds 1 to `skipped_steps` when `finite` (a scalar bool) is false."""
        distribution.extended.update(
            self.skipped_steps.value,
            lambda counter, finite: counter.assign_add(1.0 - tf.cast(finite, counter.dtype)),
            args=(finite,), group=False)

    def scale_loss(self, loss):
        # Keras's train step hands its loss here: the bound batch's objective at the current
        # weights, which the step need not evaluate again.
        curvature = self._bound_curvature()
        if curvature is not None:
            curvature.record_training_loss(loss)
        return super().scale_loss(loss)

    def update_step(self, gradient, variable, learning_rate):
        raise ValueError(_MISSING_CURVATURE.format(name=type(self).__name__))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        curvature = self._bound_curvature()
        if curvature is None:
            raise ValueError(_MISSING_CURVATURE.format(name=type(self).__name__))
        # An Embedding's gradient arrives as `tf.IndexedSlices`; a curvature step updates every
        # entry of its variable anyway (the preconditioner is dense), so it is made dense here.
        variables = backend_variables(trainable_variables)
        dense = [densify(g, v) for g, v in zip(grads, variables, strict=True)]
        pairs = all_reduce_sum_gradients(self, list(zip(dense, variables, strict=True)))
        self.curvature_step(curvature, [g for g, _ in pairs], variables, learning_rate)


def bound_optimizer(optimizer):
    """The `CurvatureOptimizer` inside `optimizer` (unwrapping loss scaling), or `None`."""
    inner = unwrap_optimizer(optimizer)
    return inner if isinstance(inner, CurvatureOptimizer) else None
