"""The base of optimizers that use the curvature of the current batch inside `model.fit`."""

import contextlib
import threading

import keras
import tensorflow as tf

from keras_secondorder._keras_compat import (
    all_reduce_sum_gradients,
    backend_variables,
    base_optimizer_keyword_args,
    distribution_strategy,
    merge_call,
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


def with_base_keyword_docs(cls):
    """Fills `{{base_optimizer_keyword_args}}` in `cls`'s docstring with Keras's own text."""
    cls.__doc__ = cls.__doc__.replace("{{base_optimizer_keyword_args}}",
                                      base_optimizer_keyword_args)
    return cls


class CurvatureOptimizer(keras.optimizers.Optimizer):
    """A Keras optimizer whose step also uses curvature of the current batch.

    Subclasses implement `curvature_statistics` (per-variable quantities computed from the
    bound `BatchCurvature`, the same on every replica), `curvature_update_step` (the update of
    one variable given its gradient and statistic) and `per_weight_rates` (logged as
    `rate_mean` and `rate_std`). Optimizers whose curvature slots change only on some steps
    implement `curvature_refresh_condition` and `curvature_refresh_step`, so that the other
    steps skip that work.

    Everything else is Keras's: gradient clipping, weight decay, gradient accumulation, EMA, loss
    scaling, `tf.distribute`. A step whose gradient or curvature statistic is not finite changes
    no weight and no slot; it is counted in `skipped_steps` (logged by `keras_secondorder.Model`).
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

    def curvature_statistics(self, curvature, gradients, variables):
        """Per-variable statistics of the batch's curvature, one tensor per variable.

        Called in the step (replica context under `tf.distribute`) with the gradients already
        summed over replicas; results must be identical on all replicas (`BatchCurvature` sums
        its products across replicas).
        """
        raise NotImplementedError

    def curvature_update_step(self, gradient, variable, learning_rate, statistic):
        """Updates `variable` and its slots from its gradient and curvature statistic."""
        raise NotImplementedError

    def curvature_refresh_condition(self, statistics):
        """A scalar bool tensor: whether `curvature_refresh_step` runs this step; or `None`."""
        return None

    def curvature_refresh_step(self, variable, statistic):
        """Updates `variable`'s curvature slots, before its `curvature_update_step`."""
        raise NotImplementedError

    def after_curvature_refresh(self, distribution, statistics):
        """Runs (cross-replica context) after every variable's `curvature_refresh_step`."""

    def curvature_counters(self, statistics):
        """`(counter variable, increment)` pairs, incremented with every step that is applied."""
        return []

    def per_weight_rates(self):
        """The learning rate each weight gets now, one tensor per variable."""
        raise NotImplementedError

    def diagnostics(self):
        """`skipped_steps` and the mean and spread of the per-weight rates, for `logs`."""
        mean, std = self.rate_moments()
        return {"skipped_steps": self.skipped_steps, "rate_mean": mean, "rate_std": std}

    def rate_moments(self):
        """Mean and standard deviation of `per_weight_rates()` over all weights."""
        rates = tf.concat([tf.reshape(rate, [-1]) for rate in self.per_weight_rates()], axis=0)
        mean, variance = tf.nn.moments(rates, axes=[0])
        return mean, tf.sqrt(variance)

    def update_step(self, gradient, variable, learning_rate):
        raise ValueError(_MISSING_CURVATURE.format(name=type(self).__name__))

    def _require_curvature(self):
        """The bound `BatchCurvature`; a ValueError naming the fix when there is none."""
        curvature = self._bound_curvature()
        if curvature is None:
            raise ValueError(_MISSING_CURVATURE.format(name=type(self).__name__))
        return curvature

    def summed_dense_gradients(self, grads, trainable_variables):
        """`(gradients, variables)`: dense gradients summed over replicas, backend variables.

        An Embedding's gradient arrives as `tf.IndexedSlices`; a curvature step updates every
        entry of its variable anyway (the preconditioner is dense), so it is made dense here.
        """
        variables = backend_variables(trainable_variables)
        dense = [densify(g, v) for g, v in zip(grads, variables, strict=True)]
        pairs = all_reduce_sum_gradients(self, list(zip(dense, variables, strict=True)))
        return [g for g, _ in pairs], variables

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        curvature = self._require_curvature()
        grads, variables = self.summed_dense_gradients(grads, trainable_variables)
        statistics = self.curvature_statistics(curvature, grads, trainable_variables)
        values = grads + [t for t in tf.nest.flatten(statistics) if t.dtype.is_floating]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in values])
        merge_call(self._distributed_curvature_update, distribution_strategy(self), grads,
                   statistics, variables, finite, learning_rate)

    def _distributed_curvature_update(self, distribution, grads, statistics, variables, finite,
                                      learning_rate):
        def update_all(step, *args):
            for variable, arguments in zip(variables, zip(*args, strict=True), strict=True):
                distribution.extended.update(variable, step, args=arguments, group=False)

        def first_replica(value):
            # The replicas' values are identical (gradients and statistics are summed).
            return distribution.experimental_local_results(value)[0]

        def apply():
            refresh = self.curvature_refresh_condition(statistics)
            if refresh is not None:
                def refresh_all():
                    update_all(self.curvature_refresh_step, statistics)
                    self.after_curvature_refresh(distribution, statistics)

                tf.cond(first_replica(refresh), refresh_all, lambda: None)
            update_all(lambda variable, gradient, statistic, rate: self.curvature_update_step(
                gradient, variable, rate, statistic), grads, statistics,
                [learning_rate] * len(variables))

        # One condition for all variables: a tf.cond per variable costs 5% of a LeNet-5 step.
        tf.cond(first_replica(finite), apply, lambda: None)

        # Per-replica values (finite, increments) are only read inside the update functions.
        def count(counter, increment, finite):
            counter.assign_add(tf.where(finite, tf.cast(increment, counter.dtype), 0.0))

        def count_skipped(counter, finite):
            counter.assign_add(1.0 - tf.cast(finite, counter.dtype))

        distribution.extended.update(self.skipped_steps.value, count_skipped, args=(finite,),
                                     group=False)
        for counter, increment in self.curvature_counters(statistics):
            distribution.extended.update(counter.value, count, args=(increment, finite),
                                         group=False)


class DiagonalCurvatureOptimizer(CurvatureOptimizer):
    """A curvature optimizer whose step is `w <- w - epsilon P g` with a diagonal `P` in a slot.

    `P` changes only on refresh steps (`curvature_refresh_condition`), where the subclass's
    `refreshed_preconditioner` computes it from the batch's curvature statistic; the logged rate
    moments are computed then too. A plain step costs what an SGD step costs plus one product.
    """

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # P (0 before its first refresh), and the mean and standard deviation of all its entries.
        self._preconditioners = self.add_optimizer_variables(variables, "preconditioner")
        self._preconditioner_moments = self.add_variable(
            (2,), dtype="float32", aggregation="only_first_replica", name="preconditioner_moments")

    def refreshed_preconditioner(self, variable, statistic):
        """The new `P` of `variable`; may also update the subclass's own slots."""
        raise NotImplementedError

    def curvature_refresh_step(self, variable, statistic):
        self.assign(self._preconditioners[self._get_variable_index(variable)],
                    self.refreshed_preconditioner(variable, statistic))

    def after_curvature_refresh(self, distribution, statistics):
        preconditioners = tf.concat([tf.reshape(tf.cast(p, tf.float32), [-1])
                                     for p in self._preconditioners], axis=0)
        mean, variance = tf.nn.moments(preconditioners, axes=[0])
        distribution.extended.update(self._preconditioner_moments.value,
                                     lambda moments, value: moments.assign(value),
                                     args=(tf.stack([mean, tf.sqrt(variance)]),), group=False)

    def preconditioned_gradient(self, gradient, variable, learning_rate):
        """`epsilon P g` for `variable`."""
        preconditioner = self._preconditioners[self._get_variable_index(variable)]
        return (tf.cast(learning_rate, variable.dtype) * tf.cast(gradient, variable.dtype)
                * preconditioner)

    def per_weight_rates(self):
        """`epsilon P` for every variable."""
        return [tf.cast(self.learning_rate, p.dtype) * p for p in self._preconditioners]

    def rate_moments(self):
        learning_rate = tf.cast(self.learning_rate, tf.float32)
        return (learning_rate * self._preconditioner_moments[0],
                learning_rate * self._preconditioner_moments[1])


def bound_optimizer(optimizer):
    """The `CurvatureOptimizer` inside `optimizer` (unwrapping loss scaling), or `None`."""
    inner = unwrap_optimizer(optimizer)
    return inner if isinstance(inner, CurvatureOptimizer) else None
