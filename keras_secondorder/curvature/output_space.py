"""Products `v -> Jᵀ C J v + ∇²R v` through the network's output space.

`J` is the Jacobian of the outputs `z` (where the objective splits) with respect to the weights,
`C` a positive semi-definite curvature in output space (the loss Hessian for the Gauss-Newton
matrix, gradient outer products for the empirical Fisher), and `R = sum(model.losses)` the
regularization terms, whose exact Hessian is added (for an L2 weight cost `0.5 λ |w|²` this is
`λ I`, as in Martens 2010).
"""

import tensorflow as tf

_ZERO = tf.UnconnectedGradients.ZERO


def output_space_product(objective, batch, vector, output_product):
    """`v -> Jᵀ C J v + ∇²R v` on one batch.

    Args:
        objective: the `Objective`.
        batch: a `Batch`.
        vector: list of tensors shaped like the objective's variables.
        output_product: `(output_loss, z, Jv) -> C Jv`, all shaped like `z`.

    Returns:
        The product, a list shaped like the variables.
    """
    params = objective.params()
    vector = objective.check_vector(vector)
    with tf.autodiff.ForwardAccumulator(params, vector) as accumulator:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(params)
            y_pred, losses = objective.forward(params, batch.x)
            regularization = objective.regularization(losses)
        # Reverse mode inside the accumulator: its JVP is the regularizer's Hessian product.
        regularization_grads = (
            None if regularization is None
            else tape.gradient(regularization, params, unconnected_gradients=_ZERO)
        )
    output_loss = objective.output_loss(batch, y_pred)
    z = output_loss.split(y_pred)
    jz = accumulator.jvp(z, unconnected_gradients=_ZERO)  # J v
    cjz = output_product(output_loss, batch, z, jz)  # C J v
    result = tape.gradient(z, params, output_gradients=cjz, unconnected_gradients=_ZERO)  # Jᵀ C J v
    del tape
    if regularization_grads is not None:
        hessian_reg = accumulator.jvp(regularization_grads, unconnected_gradients=_ZERO)
        result = [a + b for a, b in zip(result, hessian_reg, strict=True)]
    return result
