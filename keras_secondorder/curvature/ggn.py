"""The generalized Gauss-Newton matrix `G = Jᵀ H_out J + ∇²R` (Schraudolph 2002, Martens 2010)."""

import tensorflow as tf

from keras_secondorder.curvature import dense, kinds
from keras_secondorder.curvature.objective import as_batch, as_objective
from keras_secondorder.curvature.operator import CurvatureOperator
from keras_secondorder.curvature.output_losses import rows
from keras_secondorder.curvature.output_space import (
    output_space_product,
    output_space_quadratic_forms,
    penalty_diagonal,
    per_example_factor_gradients,
)
from keras_secondorder.curvature.vectors import flatten


def _loss_hessian_product(output_loss, batch, z, jz):
    # Jv -> c_n H_n (Jv)_n for every row n (H_out is block-diagonal over rows).
    weights = output_loss.row_weights(batch.y, z, batch.sample_weight)
    product = output_loss.hessian_product(rows(z), rows(jz))
    return tf.reshape(weights[:, None] * product, tf.shape(z))


def _ggn_product(objective, batch, vector):
    return output_space_product(objective, batch, vector, _loss_hessian_product)


def gauss_newton_quadratic_forms(objective, batch, vectors):
    """`[v_iᵀ G v_j]` for a few vectors on one `Batch` (`output_space_quadratic_forms`)."""
    return output_space_quadratic_forms(objective, batch, vectors, _loss_hessian_product)


def gauss_newton_matrix(objective, batch, chunk_size=64):
    """The Gauss-Newton matrix of one `Batch` as a dense `(P, P)` tensor, for small models.

    `G = SᵀS + diag(∇²R)`: the rows of `S` are the per-example gradients `sqrt(c_n) J_nᵀ s_nk`
    of the columns `s_nk` of a square root of each output Hessian (closed form,
    `output_losses`), so `SᵀS = sum_n c_n J_nᵀ H_n J_n` (with mean squared error, `S` is the
    residuals' Jacobian scaled by `sqrt(2 c_n / C)`: `(2/(NC)) JᵀJ`); one vectorized backward
    pass per output unit over `chunk_size` examples at a time. `R` must be elementwise weight
    penalties (L1, L2, L1L2), whose Hessian is diagonal. Traceable in `tf.function`; memory
    `P²` (the caller bounds `P`).

    Args:
        objective: the `Objective`.
        batch: a `Batch`.
        chunk_size: examples per vectorized backward pass. Defaults to `64`.

    Returns:
        `G`, shape `(P, P)`, in the variables' flat order (`vectors.flatten`).
    """
    gradients = per_example_factor_gradients(
        objective, batch, lambda output_loss, z: output_loss.hessian_sqrt_columns(z), chunk_size)
    matrix = tf.zeros([objective.num_parameters] * 2, objective.dtype)
    for chunk in gradients.chunks:  # Rows s_nk, flattened: (rows, P).
        rows_of_s = tf.concat([tf.reshape(g, [tf.shape(g)[0], -1])
                               for g in gradients.of_chunk(chunk)], axis=1)
        matrix += tf.matmul(rows_of_s, rows_of_s, transpose_a=True)
    penalty = penalty_diagonal(objective, objective.params(), gradients.num_losses)
    return matrix if penalty is None else matrix + tf.linalg.diag(flatten(penalty))


def gauss_newton_vector_product(model, x, y, vector, sample_weight=None, *, loss=None,
                                variables=None, training=None):
    """`v -> Jᵀ H_out J v + ∇²R v`: the Gauss-Newton-vector product.

    `J v` comes from forward mode (`tf.autodiff.ForwardAccumulator`), `H_out` is the closed-form
    output-space Hessian of the loss (see `output_losses`), and `Jᵀ u` from reverse mode
    (`tape.gradient(..., output_gradients=u)`): about the cost of two gradients.

    Args:
        model: a built Keras model, or an `Objective`.
        x, y: the batch.
        vector: list of tensors shaped like the variables.
        sample_weight: optional per-example weights.
        loss, variables, training: see `Objective`.

    Returns:
        `G v` as a list shaped like the variables.

    Raises:
        ValueError: the loss has no Gauss-Newton split (lists the supported losses).
    """
    objective = as_objective(model, loss, variables, training)
    return _ggn_product(objective, as_batch((x, y, sample_weight)), vector)


class GGNOperator(CurvatureOperator):
    """The generalized Gauss-Newton matrix as a `tf.linalg.LinearOperator` (symmetric, PSD).

    See `CurvatureOperator` for the arguments.
    """

    positive_semidefinite = True
    splits_at_outputs = True
    batch_product = staticmethod(_ggn_product)


kinds.register("ggn", GGNOperator, dense.ggn)
