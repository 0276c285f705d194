"""The curvature of the current training batch: what the train step hands a curvature optimizer."""

import copy
import math

import keras
import tensorflow as tf

from keras_secondorder._keras_compat import all_layers, mixed_precision_layers
from keras_secondorder.curvature import kinds, kronecker
from keras_secondorder.curvature.diagonal import batch_diagonal
from keras_secondorder.curvature.ggn import gauss_newton_matrix, gauss_newton_quadratic_forms
from keras_secondorder.curvature.objective import Batch, Objective, as_batch, batch_size


def synchronized_layers(model):
    """The names of `model`'s layers whose forward pass all-reduces across replicas.

    A `BatchNormalization(synchronized=True)` in training mode takes its moments over the global
    batch: an all-reduce inside the forward pass, which `tf.distribute` cannot run inside
    `tf.cond` or `tf.while_loop`, nor in cross-replica context.
    """
    return [layer.name for layer in all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized]


class BatchCurvature:
    """Products and diagonals of the training objective on one batch, at the current weights.

    `keras_secondorder.Model`'s train step binds one to the optimizer for the duration of the
    step (`CurvatureOptimizer.bind`); the optimizer asks it for what it needs, when it needs it,
    inside the same traced step. The objective is exactly the one the step's gradient is taken
    of (`compute_loss`, sample weights, regularizers) in training mode, with the dropout masks
    of the step's forward pass (the state is read when the curvature is made, before that pass).

    Under `tf.distribute`, each replica holds its share of the batch, and Keras scales each
    replica's loss by `1 / num_replicas`; every result is summed across replicas (as Keras sums
    gradients), so it is the curvature of the whole global batch, identical on every replica.
    Random probes must then be drawn from a seed shared by the replicas. `tf.distribute` cannot
    synchronize replicas inside `tf.cond` or `tf.while_loop`: there, pass
    `sum_over_replicas=False` and sum after the control flow (`sum_over_replicas_if` does this
    for a `tf.cond`).

    Args:
        model: the Keras model being trained.
        data: the batch, `(x, y)`, `(x, y, sample_weight)` or a `Batch`.
        variables: the variables the optimizer updates, in its order. Defaults to `None`: all of
            `model.trainable_variables`.
        loss: a loss to use instead of the compiled one (see `Objective`). Defaults to `None`.
        train_step: whether `keras_secondorder.Model`'s train step made it. That step's loss,
            which Keras hands the optimizer's `scale_loss`, is then this objective at the
            current weights, and `loss()` reuses it (`record_training_loss`). A custom loop's
            loss may be another objective, so it is not taken. Defaults to `False`.
    """

    def __init__(self, model, data, variables=None, loss=None, train_step=False):
        self.objective = Objective(model, loss=loss, variables=variables, training=True)
        # Read before the train step's forward pass advances the dropout seeds: the curvature
        # is that of the objective the step's gradient is taken of, dropout masks included.
        self.objective.pin_state()
        self.batch = as_batch(tuple(data))
        # Not for mixed precision, where the curvature's objective runs in float32 and the
        # step's loss in float16 or bfloat16.
        self._keeps_training_loss = train_step and not mixed_precision_layers(model)
        self._training_loss = None

    def record_training_loss(self, value):
        """Keeps the train step's own loss on this batch, which `loss()` then returns.

        The train step's forward pass already evaluated the objective at the current weights
        (a forward pass over the batch saved on each damping adaptation). Kept only from
        `keras_secondorder.Model`'s train step (`train_step=True`) without mixed precision.
        """
        if self._keeps_training_loss:
            self._training_loss = value

    @property
    def model(self):
        """The model being trained."""
        return self.objective.model

    @property
    def variables(self):
        """The variables the results are shaped like."""
        return self.objective.variables

    def batch_size(self):
        """The number of examples in the global batch (summed over replicas)."""
        size = tf.shape(tf.nest.flatten(self.batch.x)[0])[0]
        return self.sum_over_replicas([size])[0]

    def head(self, fraction, limit=None):
        """A `BatchCurvature` on the first `ceil(fraction * n)` (at most `limit`) examples.

        Curvature can be estimated on less data than the gradient (Martens 2010 uses a quarter
        of the batch): the objective's mean over the head is an unbiased estimate of the mean.
        """
        if fraction >= 1 and limit is None:
            return self
        size = tf.nest.flatten(self.batch.x)[0].shape[0]
        if size is not None:  # Static under jit_compile: a static slice.
            count = max(1, math.ceil(fraction * size))
            count = count if limit is None else min(count, limit)
        else:
            count = tf.maximum(1, tf.cast(tf.math.ceil(
                fraction * tf.cast(batch_size(self.batch), tf.float64)), tf.int32))
            count = count if limit is None else tf.minimum(count, limit)
        head = copy.copy(self)  # The same objective on part of the batch.
        head._training_loss = None
        head.batch = Batch(*(None if part is None else tf.nest.map_structure(
            lambda t: t[:count], part) for part in self.batch))
        return head

    def loss(self, offset=None, sum_over_replicas=True):
        """The objective on this batch at the weights plus `offset` (shaped like the variables)."""
        if offset is None and self._training_loss is not None:
            return self._result([self._training_loss], sum_over_replicas)[0]
        params = self.objective.params()
        if offset is not None:
            params = [p + o for p, o in zip(params, self.objective.check_vector(offset),
                                            strict=True)]
        value = self.objective.value(params, self.batch)
        return self._result([value], sum_over_replicas)[0]

    def product(self, curvature, vector, sum_over_replicas=True):
        """`v -> A v` for the registered curvature kind named `curvature` (`curvature.kinds`)."""
        batch_product = kinds.get(curvature).operator.batch_product
        return self._result(batch_product(self.objective, self.batch, vector), sum_over_replicas)

    def hessian_vector_product(self, vector, sum_over_replicas=True):
        """`v -> H v`, the exact Hessian product (indefinite)."""
        return self.product("hessian", vector, sum_over_replicas)

    def gauss_newton_vector_product(self, vector, sum_over_replicas=True):
        """`v -> G v`, the generalized Gauss-Newton product (positive semi-definite)."""
        return self.product("ggn", vector, sum_over_replicas)

    def gauss_newton_quadratic_forms(self, vectors, sum_over_replicas=True):
        """`[v_iᵀ G v_j]` for a few vectors: forward-mode passes only, no products."""
        forms = gauss_newton_quadratic_forms(self.objective, self.batch, vectors)
        return self._result([forms], sum_over_replicas)[0]

    def gauss_newton_matrix(self, sum_over_replicas=True):
        """The dense `(P, P)` Gauss-Newton matrix (`ggn.gauss_newton_matrix`), for small models."""
        return self._result([gauss_newton_matrix(self.objective, self.batch)],
                            sum_over_replicas)[0]

    def fisher_vector_product(self, vector, sum_over_replicas=True):
        """`v -> F v`, the empirical Fisher product."""
        return self.product("fisher", vector, sum_over_replicas)

    def diagonal(self, method="ggn", samples=1, seed=(0, 0), chunk_size=64,
                 sum_over_replicas=True):
        """A diagonal estimate (see `keras_secondorder.curvature.diagonal` for the methods)."""
        context = tf.distribute.get_replica_context()
        synchronized = synchronized_layers(self.model)
        if context is not None and context.num_replicas_in_sync > 1 and synchronized:
            raise ValueError(
                f"The {method!r} curvature diagonal cannot be taken across "
                f"{context.num_replicas_in_sync} replicas through the synchronized "
                f"BatchNormalization layers {synchronized}: its per-example backward passes "
                "(vectorized Jacobians, loops over draws) cannot all-reduce their moments. "
                "Use BatchNormalization(synchronized=False) (each replica normalizes its own "
                "share, Keras's default), EquilibratedSGD (Hessian products, which work with "
                "synchronized layers), or one device."
            )
        return self._result(batch_diagonal(self.objective, self.batch, method, samples=samples,
                                           seed=seed, chunk_size=chunk_size), sum_over_replicas)

    @staticmethod
    def sum_over_replicas(values):
        """`values` (a list of tensors) summed over the replicas in sync (as they are alone)."""
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return list(values)
        return context.all_reduce(tf.distribute.ReduceOp.SUM, list(values))

    def kronecker_factors(self, fisher="sampled", seed=(0, 0), sum_over_replicas=True):
        """K-FAC's `KroneckerFactors` of the batch (see `curvature.kronecker`).

        Across replicas `G`, the penalty's `η` and the diagonal blocks are summed (each
        replica's objective carries its `1 / replicas` share, as for products) and `A`, a mean
        over examples, is averaged.
        """
        factors = kronecker.kronecker_factors(self.objective, self.batch, fisher, seed)
        if not sum_over_replicas:
            return factors
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        summed = kronecker.with_factor_tensors(
            factors, self.sum_over_replicas(kronecker.factor_tensors(factors)))
        return summed._replace(blocks=tuple(block._replace(a=block.a / replicas)
                                            for block in summed.blocks))

    def sum_over_replicas_if(self, condition, compute, zeros=None):
        """`compute()` if `condition`, else `zeros`; summed after the `tf.cond`.

        `compute` returns a list of tensors and must ask for its products with
        `sum_over_replicas=False`. `zeros` defaults to zeros like the variables.
        """
        if zeros is None:
            zeros = [tf.zeros(v.shape, v.dtype) for v in self.variables]
        context = tf.distribute.get_replica_context()
        if (context is not None and context.num_replicas_in_sync > 1
                and synchronized_layers(self.model)):
            # A synchronized BatchNormalization all-reduces inside the forward pass, which
            # tf.distribute cannot do inside a tf.cond: compute on every step, keep if condition.
            local = [tf.where(condition, value, zero) for value, zero in zip(compute(), zeros,
                                                                             strict=True)]
        else:
            local = tf.cond(condition, compute, lambda: list(zeros))
        return self.sum_over_replicas(local)

    def _result(self, values, sum_over_replicas):
        return self.sum_over_replicas(values) if sum_over_replicas else list(values)
