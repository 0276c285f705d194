"""The empirical Fisher diagonal of a chain of Dense layers in one backward pass.

For a Dense layer `a_n = W x_n + b` on example `n` (rank-2 inputs: one row per example), the
per-example gradients are `∇_W l_n = x_n δ_nᵀ` and `∇_b l_n = δ_n` with `δ_n = ∂l_n/∂a_n`, so the
sum of their squares needs no per-example backward pass (Goodfellow 2015; BackPACK's
`SumGradSquared`):

    sum_n c_n (∇_W l_n)^⊙2 = (x^⊙2)ᵀ (c δ^⊙2) = VJP_W[W -> A(x ⊙ x; W)](c δ^⊙2)
    sum_n c_n (∇_b l_n)^⊙2 = sum_n c_n δ_n^⊙2

This is bbprop's squared-input VJP applied to `c δ²` in place of `h_a`. All the `sqrt(c_n) δ_n`
come from one backward pass of `sum_n sqrt(c_n) r_nᵀ z_n`, with `r_n = ∂l_n/∂z_n` held fixed.
The result is exact when every layer with weights is a Dense layer on rank-2 inputs (no weight is
used twice within one example). Convolutions use a weight at every position, so for them
`diagonal` keeps the per-example backward passes.
"""

import keras
import tensorflow as tf

from keras_secondorder.curvature.bbprop import by_variable, forward, layer_chain
from keras_secondorder.curvature.output_losses import rows

_ZERO = tf.UnconnectedGradients.ZERO


def supports(model):
    """Whether `model` is a chain (see `bbprop`) whose weights are all in rank-2 Dense layers."""
    try:
        layers = layer_chain(model)
    except ValueError:
        return False
    return all(isinstance(layer, keras.layers.Dense) and len(layer.input.shape) == 2
               for layer in layers if layer.trainable_variables)


def dense_chain_gradient_squares(objective, batch):
    """`sum_n c_n (∇l_n)^⊙2` on one `Batch`, shaped like `objective.variables`.

    The model must satisfy `supports`.
    """
    layers = layer_chain(objective.model)
    params = objective.params()
    with tf.GradientTape() as tape:
        tape.watch(params)
        records, y_pred, num_losses = forward(objective, batch, layers, params)
        output_loss = objective.output_loss(batch, y_pred)
        z_rows = rows(output_loss.split(y_pred))
        fixed = tf.stop_gradient(z_rows)
        weights = output_loss.row_weights(batch.y, fixed, batch.sample_weight)
        factors = tf.stop_gradient(tf.sqrt(weights)[:, None]
                                   * output_loss.row_gradients(batch.y, fixed))
        projection = tf.reduce_sum(factors * z_rows)  # sum_n sqrt(c_n) r_nᵀ z_n
    weighted = [record for record in records if record.weights]
    deltas = tape.gradient(projection, [record.pre_activation for record in weighted],
                           unconnected_gradients=_ZERO)  # rows sqrt(c_n) δ_n
    diagonals = {}
    for record, delta in zip(weighted, deltas, strict=True):
        diagonals.update(zip((id(v) for v in record.layer.trainable_variables),
                             record.call.weight_curvature(record.weights, record.x,
                                                          tf.square(delta)),
                             strict=True))
    return by_variable(objective, params, diagonals, num_losses)
