"""The empirical Fisher `F = sum_n c_n ∇l_n ∇l_nᵀ + ∇²R` of the objective."""

import tensorflow as tf

from keras_secondorder.curvature import dense, kinds
from keras_secondorder.curvature.objective import as_batch, as_objective
from keras_secondorder.curvature.operator import CurvatureOperator
from keras_secondorder.curvature.output_losses import rows
from keras_secondorder.curvature.output_space import output_space_product


def _gradient_outer_product(output_loss, batch, z, jz):
    # Jv -> c_n g_n (g_nᵀ (Jv)_n), g_n = ∂l_n/∂z_n: so Jᵀ(...) = sum_n c_n ∇l_n (∇l_nᵀ v).
    weights = output_loss.row_weights(batch.y, z, batch.sample_weight)
    grads = output_loss.row_gradients(batch.y, z)
    projection = tf.reduce_sum(grads * rows(jz), axis=-1, keepdims=True)
    return tf.reshape(weights[:, None] * grads * projection, tf.shape(z))


def _fisher_product(objective, batch, vector):
    return output_space_product(objective, batch, vector, _gradient_outer_product)


def fisher_vector_product(model, x, y, vector, sample_weight=None, *, loss=None, variables=None,
                          training=None):
    """`v -> sum_n c_n ∇l_n (∇l_nᵀ v) + ∇²R v`: the empirical Fisher-vector product.

    `l_n` is example `n`'s unreduced loss, `c_n` its weight in the objective
    (`sample_weight_n / batch_size` by default), so for a mean loss without weights
    `F = (1/N) sum_n ∇l_n ∇l_nᵀ`. Computed without per-example gradients: one JVP and one VJP
    through the network with the outer products taken in output space.

    Args:
        model: a built Keras model, or an `Objective`.
        x, y: the batch.
        vector: list of tensors shaped like the variables.
        sample_weight: optional per-example weights.
        loss, variables, training: see `Objective`.

    Returns:
        `F v` as a list shaped like the variables.
    """
    objective = as_objective(model, loss, variables, training)
    return _fisher_product(objective, as_batch((x, y, sample_weight)), vector)


class FisherOperator(CurvatureOperator):
    """The empirical Fisher as a `tf.linalg.LinearOperator` (symmetric, PSD).

    See `CurvatureOperator` for the arguments.
    """

    positive_semidefinite = True
    splits_at_outputs = True
    batch_product = staticmethod(_fisher_product)


kinds.register("fisher", FisherOperator, dense.empirical_fisher)
