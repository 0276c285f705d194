"""The base of optimizers that use the curvature of the current batch inside `model.fit`."""

import contextlib

import keras
import tensorflow as tf
from keras.src import backend

_MISSING_CURVATURE = (
    "{name} needs the curvature of each batch, which keras.Model's train step does not give "
    "optimizers. Build the model as keras_secondorder.Model (functional or subclassed), or wrap "
    "an existing one: `model = keras_secondorder.wrap(model)`, then compile it with this "
    "optimizer. In a custom training loop, bind the batch: `with optimizer.bind("
    "keras_secondorder.curvature.BatchCurvature(model, (x, y))): optimizer.apply(grads)`."
)


class CurvatureOptimizer(keras.optimizers.Optimizer):
    """A Keras optimizer whose step also uses curvature of the current batch.

    Subclasses implement `curvature_statistics` (per-variable quantities computed from the
    bound `BatchCurvature`, the same on every replica) and `curvature_update_step` (the update of
    one variable given its gradient and statistic), and may report `diagnostics`.

    Everything else is Keras's: gradient clipping, weight decay, gradient accumulation, EMA, loss
    scaling, `tf.distribute`. A step whose gradient or curvature statistic is not finite changes
    no weight and no slot; it is counted in `skipped_steps` (logged by `keras_secondorder.Model`).
    """

    def __init__(self, learning_rate, name, **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._curvature = None

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.skipped_steps = self.add_variable(
            (), initializer="zeros", dtype="float32", aggregation="only_first_replica",
            name="skipped_steps")

    @contextlib.contextmanager
    def bind(self, curvature):
        """Makes `curvature` (a `BatchCurvature`) the batch the next steps take curvature on."""
        previous, self._curvature = self._curvature, curvature
        try:
            yield self
        finally:
            self._curvature = previous

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

    def curvature_counters(self, statistics):
        """`(counter variable, increment)` pairs, incremented with every step that is applied."""
        return []

    def diagnostics(self):
        """Scalars describing the current state (e.g. the per-weight rates), for `logs`."""
        return {"skipped_steps": self.skipped_steps}

    def update_step(self, gradient, variable, learning_rate):
        raise ValueError(_MISSING_CURVATURE.format(name=type(self).__name__))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self._curvature is None:
            raise ValueError(_MISSING_CURVATURE.format(name=type(self).__name__))
        variables = [v.value if isinstance(v, backend.Variable) else v
                     for v in trainable_variables]
        pairs = self._all_reduce_sum_gradients(list(zip(grads, variables, strict=True)))
        grads = [g for g, _ in pairs]
        statistics = self.curvature_statistics(self._curvature, grads, trainable_variables)
        values = grads + [t for t in tf.nest.flatten(statistics) if t.dtype.is_floating]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in values])
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_curvature_update, self._distribution_strategy, grads, statistics,
            variables, finite, learning_rate)

    def _distributed_curvature_update(self, distribution, grads, statistics, variables, finite,
                                      learning_rate):
        def update(variable, gradient, statistic, finite, learning_rate):
            tf.cond(finite,
                    lambda: self.curvature_update_step(gradient, variable, learning_rate,
                                                       statistic),
                    lambda: None)

        for gradient, statistic, variable in zip(grads, statistics, variables, strict=True):
            distribution.extended.update(variable, update,
                                         args=(gradient, statistic, finite, learning_rate),
                                         group=False)
        skipped = 1.0 - tf.cast(finite, self.skipped_steps.dtype)
        counters = [(self.skipped_steps, skipped)] + [
            (counter, tf.where(finite, tf.cast(increment, counter.dtype), 0.0))
            for counter, increment in self.curvature_counters(statistics)]
        for counter, increment in counters:
            distribution.extended.update(counter.value, lambda c, i: c.assign_add(i),
                                         args=(increment,), group=False)


def bound_optimizer(optimizer):
    """The `CurvatureOptimizer` inside `optimizer` (unwrapping loss scaling), or `None`."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner if isinstance(inner, CurvatureOptimizer) else None
