"""The per-variable template of diagonal curvature optimizers (SDLM, EquilibratedSGD)."""

import tensorflow as tf

from keras_secondorder._keras_compat import distribution_strategy, merge_call
from keras_secondorder.optimizers.curvature_optimizer import CurvatureOptimizer


class DiagonalCurvatureOptimizer(CurvatureOptimizer):
    """A curvature optimizer whose step is `w <- w - epsilon P g` with a diagonal `P` in a slot.

    The step is a per-variable template. Subclasses implement `curvature_statistics`
    (per-variable quantities computed from the bound `BatchCurvature`, the same on every
    replica), `curvature_refresh_condition` (whether `P` is recomputed this step),
    `refreshed_preconditioner` (the new `P` of one variable from its statistic) and
    `curvature_update_step` (the update of one variable from its gradient). `P` changes only on
    refresh steps, where the logged rate moments are computed too: a plain step costs what an
    SGD step costs. A step whose gradient or curvature statistic is not finite changes no
    weight and no slot.
    """

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # P (0 before its first refresh), and the mean and standard deviation of all its entries.
        self._preconditioners = self.add_optimizer_variables(variables, "preconditioner")
        self._preconditioner_moments = self.add_variable(
            (2,), dtype="float32", aggregation="only_first_replica", name="preconditioner_moments")

    def curvature_statistics(self, curvature, gradients, variables):
        """Per-variable statistics of the batch's curvature, one tensor (or tuple) per variable.

        Called in the step (replica context under `tf.distribute`) with the gradients already
        summed over replicas; results must be identical on all replicas (`BatchCurvature` sums
        its products across replicas).
        """
        raise NotImplementedError

    def curvature_refresh_condition(self, statistics):
        """A scalar bool tensor: whether `P` is recomputed (`refreshed_preconditioner`)."""
        raise NotImplementedError

    def refreshed_preconditioner(self, variable, statistic):
        """The new `P` of `variable`; may also update the subclass's own slots."""
        raise NotImplementedError

    def after_curvature_refresh(self, distribution, statistics):
        """Runs (cross-replica context) after every variable's `P` was refreshed."""
        preconditioners = tf.concat([tf.reshape(tf.cast(p, tf.float32), [-1])
                                     for p in self._preconditioners], axis=0)
        mean, variance = tf.nn.moments(preconditioners, axes=[0])
        distribution.extended.update(self._preconditioner_moments.value,
                                     lambda moments, value: moments.assign(value),
                                     args=(tf.stack([mean, tf.sqrt(variance)]),), group=False)

    def curvature_update_step(self, gradient, variable, learning_rate, statistic):
        """Updates `variable` and its slots from its gradient and curvature statistic."""
        raise NotImplementedError

    def curvature_counters(self, statistics):
        """`(counter variable, increment)` pairs, incremented with every step that is applied."""
        return []

    def preconditioned_gradient(self, gradient, variable, learning_rate):
        """`epsilon P g` for `variable`."""
        preconditioner = self._preconditioners[self._get_variable_index(variable)]
        return (tf.cast(learning_rate, variable.dtype) * tf.cast(gradient, variable.dtype)
                * preconditioner)

    def per_weight_rates(self):
        """`epsilon P` for every variable: the learning rate each weight gets now."""
        return [tf.cast(self.learning_rate, p.dtype) * p for p in self._preconditioners]

    def diagnostics(self):
        """`skipped_steps` and the mean and spread of the per-weight rates, for `logs`."""
        learning_rate = tf.cast(self.learning_rate, tf.float32)
        return {**super().diagnostics(),
                "rate_mean": learning_rate * self._preconditioner_moments[0],
                "rate_std": learning_rate * self._preconditioner_moments[1]}

    def curvature_step(self, curvature, gradients, variables, learning_rate):
        statistics = self.curvature_statistics(curvature, gradients, variables)
        values = gradients + [t for t in tf.nest.flatten(statistics) if t.dtype.is_floating]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in values])
        merge_call(self._distributed_update, distribution_strategy(self), gradients,
                   statistics, variables, finite, learning_rate)

    def _distributed_update(self, distribution, gradients, statistics, variables, finite,
                            learning_rate):
        def update_all(step, *args):
            for variable, arguments in zip(variables, zip(*args, strict=True), strict=True):
                distribution.extended.update(variable, step, args=arguments, group=False)

        def first_replica(value):
            # The replicas' values are identical (gradients and statistics are summed).
            return distribution.experimental_local_results(value)[0]

        def refresh_step(variable, statistic):
            self.assign(self._preconditioners[self._get_variable_index(variable)],
                        self.refreshed_preconditioner(variable, statistic))

        def refresh_all():
            update_all(refresh_step, statistics)
            self.after_curvature_refresh(distribution, statistics)

        def apply():
            tf.cond(first_replica(self.curvature_refresh_condition(statistics)), refresh_all,
                    lambda: None)
            update_all(lambda variable, gradient, statistic, rate: self.curvature_update_step(
                gradient, variable, rate, statistic), gradients, statistics,
                [learning_rate] * len(variables))

        # One condition for all variables: a tf.cond per variable costs 5% of a LeNet-5 step.
        tf.cond(first_replica(finite), apply, lambda: None)

        # Per-replica values (finite, increments) are only read inside the update functions.
        def count(counter, increment, finite):
            counter.assign_add(tf.where(finite, tf.cast(increment, counter.dtype), 0.0))

        self.count_skipped_step(distribution, finite)
        for counter, increment in self.curvature_counters(statistics):
            distribution.extended.update(counter.value, count, args=(increment, finite),
                                         group=False)
