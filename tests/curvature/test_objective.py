"""The objective is what model.fit minimizes; curvature obeys the closed forms; no state changes."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import MODELS, make_case, relative_error

from keras_secondorder import curvature
from keras_secondorder.curvature import dense


@pytest.mark.parametrize("loss_name", ["ce", "bce", "mse", "sparse_ce_logits"])
@pytest.mark.parametrize("kind", MODELS)
def test_gradient_equals_keras_train_step(float64, kind, loss_name):
    # One step of plain SGD with learning rate 1 moves the weights by exactly -gradient.
    model, x, y, sample_weight = make_case(kind, loss_name,
                                           regularizer=None if kind == "subclassed"
                                           else keras.regularizers.L2(0.05))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=model.loss)
    value, grads = curvature.gradient(model, x, y, sample_weight, training=True)
    before = [v.numpy() for v in model.trainable_variables]
    keras_loss = model.train_on_batch(x, y, sample_weight=sample_weight)
    keras_grads = [b - v.numpy() for b, v in zip(before, model.trainable_variables, strict=True)]
    assert relative_error(curvature.flatten(grads), curvature.flatten(keras_grads)) <= 1e-10
    assert abs(float(value) - float(keras_loss)) <= 1e-10 * abs(float(keras_loss))


def test_split_objective_equals_compute_loss(float64):
    # sum_n c_n l_n(z_n) + R, the split the GGN uses, equals Keras's compute_loss, for each
    # reduction, with sample weights and a loss weight.
    for reduction in ("sum_over_batch_size", "sum", "mean_with_sample_weight"):
        model, x, y, sample_weight = make_case("mlp", "ce",
                                               regularizer=keras.regularizers.L2(0.1))
        model.compile(loss=keras.losses.CategoricalCrossentropy(reduction=reduction),
                      loss_weights=0.7)
        objective = curvature.Objective(model)
        batch = curvature.Batch(tf.constant(x), tf.constant(y), tf.constant(sample_weight))
        y_pred, losses = objective.forward(objective.params(), batch.x)
        output_loss = objective.output_loss(batch, y_pred)
        z = output_loss.split(y_pred)
        split = tf.reduce_sum(output_loss.row_weights(batch.y, z, batch.sample_weight)
                              * output_loss.row_losses(batch.y, z))
        split += objective.regularization(losses)
        expected = model.compute_loss(x, y, model(x), sample_weight)
        assert abs(float(split) - float(expected)) <= 1e-12, reduction


def linear_case(units=1, regularizer=None, loss_weights=None, reduction="sum_over_batch_size"):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, units))
    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(units, use_bias=False,
                                                 kernel_regularizer=regularizer)])
    model.compile(loss=keras.losses.MeanSquaredError(reduction=reduction),
                  loss_weights=loss_weights)
    return model, x, y, rng.uniform(0.5, 2.0, size=7)


def curvature_matrices(model, x, y, sample_weight=None):
    data = (x, y) if sample_weight is None else (x, y, sample_weight)
    return [curvature.HessianOperator(model, data).to_dense(),
            curvature.GGNOperator(model, data).to_dense()]


def test_linear_least_squares_closed_form(float64):
    # GGN = Hessian = 2 XᵀX / N for z = X w and the mean squared error.
    model, x, y, _ = linear_case()
    for matrix in curvature_matrices(model, x, y):
        assert relative_error(matrix, 2 * x.T @ x / len(x)) <= 1e-12


def test_sample_weights_regularizer_and_loss_weight_closed_form(float64):
    # 0.5 * (1/N) sum_n s_n (x_nᵀw - y_n)² + 0.25 |w|²  ->  Xᵀ S X / N + 0.5 I. (Keras casts the
    # penalty coefficient through float32, so it is chosen exact in float32.)
    model, x, y, weights = linear_case(regularizer=keras.regularizers.L2(0.25), loss_weights=0.5)
    expected = x.T @ np.diag(weights) @ x / len(x) + 0.5 * np.eye(3)
    for matrix in curvature_matrices(model, x, y, weights):
        assert relative_error(matrix, expected) <= 1e-12


def test_sum_reduction_and_several_outputs_closed_form(float64):
    # reduction="sum" and C = 2 outputs: H = (2 / C) XᵀX ⊗ I_C over the (3, 2) kernel.
    model, x, y, _ = linear_case(units=2, reduction="sum")
    expected = np.kron(2 * x.T @ x / 2, np.eye(2))
    for matrix in curvature_matrices(model, x, y):
        assert relative_error(matrix, expected) <= 1e-12


def test_curvature_leaves_model_state_untouched(float64):
    model, x, y, sample_weight = make_case("bn_dropout", "ce")
    before = [v.numpy().copy() for v in model.variables]
    vector = [tf.ones_like(v) for v in model.trainable_variables]
    for product in (curvature.hessian_vector_product, curvature.gauss_newton_vector_product,
                    curvature.fisher_vector_product,
                    curvature.finite_difference_hessian_vector_product):
        product(model, x, y, vector, sample_weight, training=True)
    curvature.diagonal(model, (x, y, sample_weight), "ggn_mc", training=True)
    dense.hessian(model, x, y, sample_weight, training=True)
    # Weights, BatchNorm moving statistics and the dropout seed state are bit-identical.
    for old, variable in zip(before, model.variables, strict=True):
        np.testing.assert_array_equal(old, variable.numpy(), err_msg=variable.path)


def test_explicit_loss_on_uncompiled_model(float64):
    compiled, x, y, sample_weight = make_case("mlp", "ce")
    uncompiled = keras.models.clone_model(compiled)
    uncompiled.set_weights(compiled.get_weights())
    vector = [tf.ones_like(v) for v in compiled.trainable_variables]
    for product in (curvature.hessian_vector_product, curvature.gauss_newton_vector_product):
        expected = product(compiled, x, y, vector, sample_weight)
        actual = product(uncompiled, x, y, vector, sample_weight,
                         loss=keras.losses.CategoricalCrossentropy())
        assert relative_error(curvature.flatten(actual), curvature.flatten(expected)) <= 1e-12


def test_custom_compute_loss_is_used_by_the_hessian(float64):
    class Doubled(keras.Model):
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return 2.0 * super().compute_loss(x, y, y_pred, sample_weight, training)

    plain, x, y, _ = make_case("mlp", "mse")
    doubled = Doubled(plain.inputs, plain.outputs)
    doubled.compile(loss="mse")
    vector = [tf.ones_like(v) for v in plain.trainable_variables]
    expected = curvature.flatten(curvature.hessian_vector_product(plain, x, y, vector))
    actual = curvature.flatten(curvature.hessian_vector_product(doubled, x, y, vector))
    assert relative_error(actual, 2 * expected) <= 1e-12
    with pytest.raises(ValueError, match="overrides compute_loss"):
        curvature.gauss_newton_vector_product(doubled, x, y, vector)
