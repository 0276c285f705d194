"""Dense curvature matrices of small models, from nested `GradientTape.jacobian`.

These are the references the matrix-free products are tested against, and a tool for analysing
small models exactly. They are built independently of the products: the output-space Hessian
comes from differentiating Keras's own loss twice, not from the closed forms.
"""

import tensorflow as tf

from keras_secondorder.curvature.objective import as_batch, as_objective
from keras_secondorder.curvature.vectors import flatten, unflatten

# A P x P matrix of 4096² float64 entries takes 128 MiB, and its jacobian as many backward passes.
MAX_DENSE_PARAMETERS = 4096


def hessian(model, x, y, sample_weight=None, *, loss=None, variables=None, training=None,
            max_parameters=MAX_DENSE_PARAMETERS):
    """The Hessian `∇²L` of the objective on one batch, a `(P, P)` tensor.

    Args:
        model: a built Keras model, or an `Objective`.
        x, y, sample_weight: the batch.
        loss, variables, training: see `Objective`.
        max_parameters: refuse models with more parameters than this. Defaults to `4096`.

    Raises:
        ValueError: the model has more than `max_parameters` parameters.
    """
    objective, batch, theta = _setup(model, x, y, sample_weight, loss, variables, training,
                                     max_parameters)
    return _hessian_of(lambda t: objective.value(unflatten(t, objective.shapes), batch), theta)


def ggn(model, x, y, sample_weight=None, *, loss=None, variables=None, training=None,
        max_parameters=MAX_DENSE_PARAMETERS):
    """The generalized Gauss-Newton matrix `Jᵀ H_z J + ∇²R` on one batch, a `(P, P)` tensor.

    `J` is the Jacobian of the outputs where the objective splits, `H_z` the Hessian of Keras's
    weighted loss with respect to them (computed by autodiff), `R = sum(model.losses)`.

    Args: as `hessian`.
    """
    objective, batch, theta = _setup(model, x, y, sample_weight, loss, variables, training,
                                     max_parameters)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        output_loss, z = _split_outputs(objective, batch, theta)
    jacobian = tf.reshape(tape.jacobian(z, theta, unconnected_gradients="zero"),
                          [-1, theta.shape[0]])
    z_flat = tf.reshape(tf.stop_gradient(z), [-1])
    output_hessian = _hessian_of(
        lambda t: output_loss.weighted_loss(batch.y, tf.reshape(t, tf.shape(z)),
                                            batch.sample_weight),
        z_flat,
    )
    return tf.transpose(jacobian) @ output_hessian @ jacobian + _regularization_hessian(
        objective, batch, theta)


def empirical_fisher(model, x, y, sample_weight=None, *, loss=None, variables=None,
                     training=None, max_parameters=MAX_DENSE_PARAMETERS):
    """The empirical Fisher `sum_n c_n ∇l_n ∇l_nᵀ + ∇²R` on one batch, a `(P, P)` tensor.

    Args: as `hessian`.
    """
    objective, batch, theta = _setup(model, x, y, sample_weight, loss, variables, training,
                                     max_parameters)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        output_loss, z = _split_outputs(objective, batch, theta)
        row_losses = output_loss.row_losses(batch.y, z)
    per_example = tape.jacobian(row_losses, theta, unconnected_gradients="zero")  # (N, P)
    weights = output_loss.row_weights(batch.y, z, batch.sample_weight)
    return tf.transpose(per_example) @ (weights[:, None] * per_example) + _regularization_hessian(
        objective, batch, theta)


def _setup(model, x, y, sample_weight, loss, variables, training, max_parameters):
    objective = as_objective(model, loss, variables, training)
    if objective.num_parameters > max_parameters:
        raise ValueError(
            f"The dense curvature of {objective.num_parameters} parameters is a "
            f"{objective.num_parameters}² matrix, over max_parameters={max_parameters}. Use the "
            "matrix-free operators (HessianOperator, GGNOperator, FisherOperator), restrict "
            "`variables` to a block, or raise `max_parameters` if memory allows."
        )
    return objective, as_batch((x, y, sample_weight)), flatten(objective.params())


def _split_outputs(objective, batch, theta):
    """The output loss and the outputs `z` where it splits the objective, at flat weights θ."""
    y_pred, _ = objective.forward(unflatten(theta, objective.shapes), batch.x)
    output_loss = objective.output_loss(batch, y_pred)
    return output_loss, output_loss.split(y_pred)


def _hessian_of(function, point):
    """The dense Hessian of a scalar function of a vector, by nested tapes."""
    with tf.GradientTape() as outer:
        outer.watch(point)
        with tf.GradientTape() as inner:
            inner.watch(point)
            value = function(point)
        grad = inner.gradient(value, point, unconnected_gradients="zero")
    return outer.jacobian(grad, point, unconnected_gradients="zero")


def _regularization_hessian(objective, batch, theta):
    def regularization(t):
        _, losses = objective.forward(unflatten(t, objective.shapes), batch.x)
        value = objective.regularization(losses)
        return tf.zeros((), theta.dtype) if value is None else value

    return _hessian_of(regularization, theta)
