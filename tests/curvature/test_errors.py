"""Bad input gets an error that names the parameter, the value and the fix."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_case

from keras_secondorder import curvature
from keras_secondorder.curvature import dense


@pytest.fixture
def case(float64):
    return make_case("mlp", "ce")


def test_vector_not_a_list(case):
    model, x, y, _ = case
    with pytest.raises(ValueError, match=r"`vector` must be a list of 4 tensors.*unflatten"):
        curvature.hessian_vector_product(model, x, y, tf.zeros([38]))


def test_vector_wrong_shapes(case):
    model, x, y, _ = case
    vector = [tf.zeros_like(v) for v in model.trainable_variables]
    vector[1] = tf.zeros([7])
    with pytest.raises(ValueError, match=r"shapes \[\(4, 5\), \(5,\), \(5, 3\), \(3,\)\].*\(7,\)"):
        curvature.gauss_newton_vector_product(model, x, y, vector)


def test_operator_matvec_wrong_rank(case):
    model, x, y, _ = case
    operator = curvature.HessianOperator(model, (x, y))
    with pytest.raises(ValueError, match="one flat vector of length 43"):
        operator.matvec(tf.zeros([2, 43], tf.float64))


@pytest.mark.parametrize("loss", ["huber", keras.losses.CategoricalFocalCrossentropy()])
def test_unsupported_loss_lists_supported_ones(case, loss):
    model, x, y, _ = case
    model.compile(loss=loss)
    vector = [tf.zeros_like(v) for v in model.trainable_variables]
    with pytest.raises(ValueError, match="categorical_crossentropy, sparse_categorical_"
                                         "crossentropy, binary_crossentropy, mean_squared_error"):
        curvature.gauss_newton_vector_product(model, x, y, vector)
    curvature.hessian_vector_product(model, x, y, vector)  # The Hessian works for any loss.


def test_softmax_hidden_from_the_split(float64):
    # Probabilities that do not come straight from the softmax cannot be split at the logits.
    inputs = keras.Input((4,))
    probabilities = keras.layers.Dense(3, activation="softmax")(inputs)
    model = keras.Model(inputs, keras.layers.Lambda(lambda p: p * 1.0)(probabilities))
    model.compile(loss="categorical_crossentropy")
    x, y = np.ones((2, 4)), np.eye(3)[[0, 1]]
    with pytest.raises(ValueError, match="from_logits=False needs .* softmax activation"):
        curvature.gauss_newton_vector_product(model, x, y,
                                              [tf.zeros_like(v) for v in model.trainable_variables])


def test_dense_refuses_large_models(case):
    model, x, y, _ = case
    with pytest.raises(ValueError, match="43 parameters .* over max_parameters=40"):
        dense.hessian(model, x, y, max_parameters=40)


def test_model_without_loss(float64):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"not compiled with a loss.*compile\(loss=...\)"):
        curvature.HessianOperator(model, (np.ones((1, 2)), np.ones((1, 1))))


def test_unbuilt_model():
    with pytest.raises(ValueError, match="no trainable variables yet. Build it first"):
        curvature.Objective(keras.Sequential([keras.layers.Dense(1)]), loss="mse")


def test_foreign_variables(case):
    model, _, _, _ = case
    other = keras.Variable(np.zeros(3))
    with pytest.raises(ValueError, match="`variables` must be a non-empty list of the model's"):
        curvature.Objective(model, variables=[other])


@pytest.mark.parametrize("data", [{"x": 1}, 3, ()])
def test_bad_data(case, data):
    model, _, _, _ = case
    with pytest.raises(ValueError, match="`data`"):
        curvature.GGNOperator(model, data)


def test_objective_with_settings(case):
    model, x, y, _ = case
    objective = curvature.Objective(model)
    with pytest.raises(ValueError, match="training cannot be given with an Objective"):
        curvature.gradient(objective, x, y, training=True)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="exact"), "`method` must be one of"),
    (dict(samples=0), "`samples` must be a positive integer"),
    (dict(chunk_size=2.5), "`chunk_size` must be a positive integer"),
])
def test_bad_diagonal_settings(case, kwargs, match):
    model, x, y, _ = case
    with pytest.raises(ValueError, match=match):
        curvature.diagonal(model, (x, y), **kwargs)


@pytest.mark.parametrize("damping", [-1.0, float("nan"), float("inf")])
def test_bad_damping(case, damping):
    model, x, y, _ = case
    with pytest.raises(ValueError, match="`damping` must be a finite number >= 0"):
        curvature.GGNOperator(model, (x, y), damping=damping)


def test_damping_cannot_change_after_the_operator_is_made(case):
    model, x, y, _ = case
    operator = curvature.GGNOperator(model, (x, y), damping=1.0)
    with pytest.raises(AttributeError, match=r"Make a new operator with damping=2.0"):
        operator.damping = 2.0
    assert operator.damping == 1.0


def test_bad_finite_difference_step(case):
    model, x, y, _ = case
    vector = [tf.zeros_like(v) for v in model.trainable_variables]
    with pytest.raises(ValueError, match="`step` must be a positive number; received -0.1"):
        curvature.finite_difference_hessian_vector_product(model, x, y, vector, step=-0.1)
