"""The output losses' curvature keeps float32's relative accuracy where the model is confident.

Near the end of training a softmax's top probability rounds to 1 in float32; a curvature
written with `1 - p` then cancels to rounding noise (indefinite, asymmetric quadratic forms:
the cause of a K-FAC blow-up measured on LeNet-5). Each float32 result is held to float32's
accuracy against float64 closed forms on the same (float32) inputs.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_case, random_like, relative_error

from keras_secondorder import curvature
from keras_secondorder.curvature import dense, output_losses

# Top-class margins from 0 to 20: 1 - p_top from 0.7 down to 4e-9, below float32's eps
# (1.2e-7) yet far above float64's, so that the float64 reference formed with `1 - p` is exact
# to 1e-7.
LOGITS = np.array([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, -3.0, 1.0], [20.0, 0.0, 0.0, -1.0],
                   [18.0, 1.0, -2.0, 0.5], [-18.0, 19.0, 0.0, 2.0], [20.0, -20.0, 0.0, 0.0]],
                  dtype=np.float32)
# Componentwise: |computed - exact| <= TOLERANCE * (|H| |u|), a few float32 roundings.
TOLERANCE = 1e-5


def softmax64(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy():
    return output_losses.CrossEntropy(keras.losses.CategoricalCrossentropy(), 1.0)


def test_softmax_hessian_product_is_accurate_where_p_is_near_one():
    u = np.random.default_rng(0).normal(size=LOGITS.shape).astype(np.float32)
    computed = cross_entropy().hessian_product(tf.constant(LOGITS), tf.constant(u)).numpy()
    p = softmax64(LOGITS)
    hessians = np.stack([np.diag(row) - np.outer(row, row) for row in p])
    exact = np.einsum("nij,nj->ni", hessians, u)
    bound = np.einsum("nij,nj->ni", np.abs(hessians), np.abs(u))
    assert np.all(np.abs(computed - exact) <= TOLERANCE * bound)


def test_softmax_hessian_square_root_is_accurate_where_p_is_near_one():
    p = softmax64(LOGITS)
    for k in range(LOGITS.shape[1]):
        computed = cross_entropy().hessian_sqrt_column(tf.constant(LOGITS), k).numpy()
        exact = np.sqrt(p[:, k : k + 1]) * (np.eye(LOGITS.shape[1])[k] - p)
        assert np.all(np.abs(computed - exact) <= TOLERANCE * np.abs(exact))


def test_sampled_softmax_residual_is_accurate_where_p_is_near_one():
    p = softmax64(LOGITS)
    for step in range(20):
        computed = cross_entropy().sample_hessian_sqrt(
            tf.constant(LOGITS), tf.constant([0, step], tf.int64)).numpy()
        labels = np.argmin(computed, axis=-1)  # p - e_y is negative at y only.
        exact = p - np.eye(LOGITS.shape[1])[labels]
        assert np.all(np.abs(computed - exact) <= TOLERANCE * np.abs(exact))


def test_sigmoid_curvature_and_residual_are_accurate_where_p_is_near_zero_or_one():
    z = LOGITS.reshape(-1, 2)
    loss = output_losses.BinaryCrossEntropy(keras.losses.BinaryCrossentropy(), 1.0)
    p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    exact = p * (1.0 - p) / 2.0
    computed = loss.hessian_product(tf.constant(z), tf.ones_like(z)).numpy()
    assert np.all(np.abs(computed - exact) <= TOLERANCE * exact)
    for step in range(20):
        residual = loss.sample_hessian_sqrt(tf.constant(z), tf.constant([0, step], tf.int64))
        residual = residual.numpy() * np.sqrt(2.0)
        draws = residual < 0  # p - y is negative where y = 1 was drawn.
        exact = p - draws
        assert np.all(np.abs(residual - exact) <= TOLERANCE * np.abs(exact))


@pytest.mark.parametrize("loss_name", ["ce", "bce"])
def test_float32_gauss_newton_quadratic_forms_on_a_confident_model(loss_name):
    # The quadratic forms K-FAC's step and damping rest on, on a model made confident by its
    # output bias (margins 18 to 22 on every row: 1 - p_top below float32's eps), against
    # float64's dense GGN at the same weights.
    model, x, y, sample_weight = make_case("mlp", loss_name)
    head = model.layers[-1]
    head.kernel.assign(0.3 * head.kernel)
    head.bias.assign([20.0, 0.0, 0.0] if loss_name == "ce" else [20.0, -20.0])
    x = x.astype(np.float32)
    vectors = random_like(model)
    forms = curvature.batch.gauss_newton_quadratic_forms(
        curvature.Objective(model), curvature.Batch(x, y, sample_weight), [vectors])
    weights = [w.astype(np.float64) for w in model.get_weights()]
    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        reference, _, _, _ = make_case("mlp", loss_name)
        reference.set_weights(weights)
        matrix = dense.ggn(reference, x.astype(np.float64), y, sample_weight)
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)
    column = tf.cast(curvature.flatten(vectors), tf.float64)[:, None]
    expected = tf.transpose(column) @ matrix @ column
    assert relative_error(tf.cast(forms, tf.float64), expected) <= TOLERANCE
