"""Products `v -> Jᵀ C J v + ∇²R v` through the network's output space.

`J` is the Jacobian of the outputs `z` (where the objective splits) with respect to the weights,
`C` a positive semi-definite curvature in output space (the loss Hessian for the Gauss-Newton
matrix, gradient outer products for the empirical Fisher), and `R = sum(model.losses)` the
regularization terms, whose exact Hessian is added (for an L2 weight cost `0.5 λ |w|²` this is
`λ I`, as in Martens 2010).
"""

from collections.abc import Callable
from typing import NamedTuple

import keras
import tensorflow as tf

from keras_secondorder._keras_compat import has_recurrent_layer, scale_loss_for_distribution
from keras_secondorder.curvature.output_losses import rows
from keras_secondorder.curvature.vectors import dense_gradient, densify, dot

_ZERO = tf.UnconnectedGradients.ZERO
_ELEMENTWISE_PENALTIES = (keras.regularizers.L1, keras.regularizers.L2, keras.regularizers.L1L2)


def output_space_product(objective, batch, vector, output_product):
    """`v -> Jᵀ C J v + ∇²R v` on one batch.

    `J v` comes from forward mode (`tf.autodiff.ForwardAccumulator`), except for models with a
    recurrent layer: TensorFlow's forward mode cannot go through the `tf.while_loop` over time
    steps inside `tf.function`, so there `J v` is the double-backward product
    `∂/∂u (Jᵀ u)ᵀ v` (one more backward pass, exact all the same).

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
    if has_recurrent_layer(objective.model):
        return _double_backward_product(objective, batch, params, vector, output_product)
    output_loss, z, jz, hessian_reg, tape = _forward_mode_pass(objective, batch, params, vector)
    cjz = output_product(output_loss, batch, z, jz)  # C J v
    result = dense_gradient(tape, z, params, output_gradients=cjz)  # Jᵀ C J v
    del tape
    if hessian_reg is not None:
        result = [a + b for a, b in zip(result, hessian_reg, strict=True)]
    return result


def _forward_mode_pass(objective, batch, params, vector):
    """One forward pass carrying `vector` as its tangent.

    Returns:
        `(output_loss, z, J v, ∇²R v or None, tape)`; the persistent tape holds the pass, for a
        reverse product through `z`.
    """
    with tf.autodiff.ForwardAccumulator(params, vector) as accumulator:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(params)
            y_pred, losses = objective.forward(params, batch.x)
            regularization = objective.regularization(losses)
        # Reverse mode inside the accumulator: its JVP is the regularizer's Hessian product.
        regularization_grads = (
            None if regularization is None else dense_gradient(tape, regularization, params))
    output_loss = objective.output_loss(batch, y_pred)
    z = output_loss.split(y_pred)
    hessian_reg = (None if regularization_grads is None
                   else accumulator.jvp(regularization_grads, unconnected_gradients=_ZERO))
    return output_loss, z, accumulator.jvp(z, unconnected_gradients=_ZERO), hessian_reg, tape


def output_space_quadratic_forms(objective, batch, vectors, output_product):
    """The matrix `[v_iᵀ (Jᵀ C J + ∇²R) v_j]` of a few vectors, without any reverse pass over `J`.

    `v_iᵀ Jᵀ C J v_j = (J v_i)ᵀ (C J v_j)` is computed in output space from one forward-mode
    pass per vector: about half the cost of the products, when only the quadratic forms are
    needed (K-FAC's step coefficients). Models with a recurrent layer take the products (see
    `output_space_product`).

    Args:
        objective, batch, output_product: as for `output_space_product`.
        vectors: a list of vectors, each a list of tensors shaped like the variables.

    Returns:
        A `(len(vectors), len(vectors))` symmetric tensor.
    """
    vectors = [objective.check_vector(vector) for vector in vectors]
    if has_recurrent_layer(objective.model):
        products = [output_space_product(objective, batch, v, output_product) for v in vectors]
        return tf.stack([tf.stack([dot(v, product) for product in products])
                         for v in vectors])
    params = objective.params()
    outputs, penalties = [], []
    for vector in vectors:
        output_loss, z, jv, hessian_reg, tape = _forward_mode_pass(objective, batch, params,
                                                                   vector)
        del tape  # No reverse pass.
        outputs.append(jv)
        penalties.append(hessian_reg)
    rows_of_forms = []
    for vector, jv in zip(vectors, outputs, strict=True):
        row = []
        for jw, penalty in zip(outputs, penalties, strict=True):
            form = tf.reduce_sum(jv * output_product(output_loss, batch, z, jw))
            row.append(form if penalty is None else form + dot(vector, penalty))
        rows_of_forms.append(tf.stack(row))
    return tf.stack(rows_of_forms)


def _double_backward_product(objective, batch, params, vector, output_product):
    # J v = ∂/∂u (vᵀ Jᵀ u) for any u (linear in u), ∇²R v = ∂/∂w (∇Rᵀ v): reverse mode only.
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        y_pred, losses = objective.forward(params, batch.x)
        regularization = objective.regularization(losses)
        output_loss = objective.output_loss(batch, y_pred)
        z = output_loss.split(y_pred)
        dummy = tf.zeros_like(z)
        tape.watch(dummy)
        pulled_back = dense_gradient(tape, z, params, output_gradients=dummy)  # Jᵀ u
        directional = dot(pulled_back, vector)
        regularization_directional = (
            None if regularization is None
            else dot(dense_gradient(tape, regularization, params), vector))
    jz = tape.gradient(directional, dummy, unconnected_gradients=_ZERO)  # J v
    cjz = output_product(output_loss, batch, z, jz)  # C J v
    result = dense_gradient(tape, z, params, output_gradients=cjz)  # Jᵀ C J v
    if regularization_directional is not None:
        hessian_reg = dense_gradient(tape, regularization_directional, params)
        result = [a + b for a, b in zip(result, hessian_reg, strict=True)]
    del tape
    return result


class FactorGradients(NamedTuple):
    """Per-example gradients of output-space factors by chunks (`per_example_factor_gradients`).

    Attributes:
        chunks: the projections `sqrt(c_n) r_nfᵀ z_n` of a chunk of rows each.
        of_chunk: `chunk -> sqrt(c_n) J_nᵀ r_nf` for its rows: a list shaped like the
            variables with a leading axis of rows (one vectorized jacobian).
        num_losses: the number of `model.losses` of the forward pass.
    """

    chunks: list
    of_chunk: Callable
    num_losses: int


def per_example_factor_gradients(objective, batch, factors, chunk_size):
    """`sqrt(c_n) J_nᵀ r_nf` for every example `n` and output-space factor `r_nf`, by chunks.

    With factors of an output-space curvature, `C_n = sum_f r_nf r_nfᵀ`, these rows `s_nf`
    give `sum_n c_n J_nᵀ C_n J_n = sum_nf s_nf s_nfᵀ` (the matrix) and `sum_nf s_nf²` (its
    diagonal). `s_nf` is the per-example gradient of `sqrt(c_n) r_nfᵀ z_n`; `of_chunk`
    computes it for `chunk_size` examples at a time with a vectorized jacobian, so memory stays
    bounded by a chunk when the chunks are reduced one at a time.

    Args:
        objective, batch: as for `output_space_product`.
        factors: `(output_loss, z) -> [r_f]`, each shaped like the rows of `z`, `(N, C)`.
        chunk_size: examples per jacobian.

    Returns:
        `FactorGradients`.
    """
    params = objective.params()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        y_pred, losses = objective.forward(params, batch.x)
        output_loss = objective.output_loss(batch, y_pred)
        z_rows = rows(output_loss.split(y_pred))
        fixed = tf.stop_gradient(z_rows)
        scale = tf.sqrt(output_loss.row_weights(batch.y, fixed, batch.sample_weight))[:, None]
        chunks = []
        for block in factors(output_loss, fixed):
            weighted = tf.stop_gradient(scale * block)
            projections = tf.reduce_sum(weighted * z_rows, axis=-1)
            size = projections.shape[0]
            if size is None:  # Batch size unknown when traced: one chunk.
                chunks.append(projections)
            else:
                chunks += [projections[start:start + chunk_size]
                           for start in range(0, size, chunk_size)]

    def of_chunk(projections):
        per_example = tape.jacobian(projections, params, unconnected_gradients=_ZERO)
        return [densify(g, p) for g, p in zip(per_example, params, strict=True)]

    return FactorGradients(chunks, of_chunk, len(losses))


def penalty_diagonal(objective, params, num_losses):
    """diag(∇²R) for elementwise weight penalties (L1, L2, L1L2), whose Hessian is diagonal.

    Raises:
        ValueError: the model's losses hold other terms, whose Hessian is not diagonal.
    """
    model = objective.model
    regularized = [v for v in model.trainable_weights if v.regularizer is not None]
    if num_losses == 0:
        return None
    if num_losses != len(regularized) or not all(
        isinstance(v.regularizer, _ELEMENTWISE_PENALTIES) for v in regularized
    ):
        raise ValueError(
            "The model's losses include terms other than elementwise weight penalties (L1, L2, "
            "L1L2): activity regularizers, add_loss or other regularizers, whose Hessian is not "
            "diagonal, so the GGN and Fisher diagonals cannot add it exactly. Use "
            "method='hutchinson', which estimates the whole Hessian's diagonal."
        )
    return elementwise_penalty_diagonal(objective, params)


def elementwise_penalty_diagonal(objective, params):
    """diag(∇²R) of the model's elementwise weight penalties (L1, L2, L1L2) alone, or `None`.

    The model's other loss terms (activity regularizers, `add_loss`, other regularizers) are not
    in it.
    """
    regularized = [v for v in objective.model.trainable_weights
                   if isinstance(v.regularizer, _ELEMENTWISE_PENALTIES)]
    if not regularized:
        return None
    regularizers = {id(v): v.regularizer for v in regularized}
    ones = [tf.ones_like(p) for p in params]
    # A diagonal Hessian applied to the ones vector is its diagonal.
    with tf.autodiff.ForwardAccumulator(params, ones) as accumulator:
        with tf.GradientTape() as tape:
            tape.watch(params)
            penalty = tf.add_n([tf.zeros((), params[0].dtype)] + [
                tf.cast(regularizers[id(v)](p), p.dtype)
                for v, p in zip(objective.variables, params, strict=True) if id(v) in regularizers
            ])
        grads = dense_gradient(tape, penalty, params)
    # Keras divides model.losses by the number of replicas under tf.distribute, as the loss.
    return [scale_loss_for_distribution(d)
            for d in accumulator.jvp(grads, unconnected_gradients=_ZERO)]
