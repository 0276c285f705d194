"""Diagonal estimators against the diagonals of the dense matrices (float64)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LOSSES, MODELS, make_case, make_targets, relative_error

from keras_secondorder import curvature
from keras_secondorder.curvature import dense, gradient_squares

EXACT = {"ggn": dense.ggn, "empirical_fisher": dense.empirical_fisher}


def dense_diagonal(reference, model, x, y, sample_weight=None, **kwargs):
    return tf.linalg.diag_part(reference(model, x, y, sample_weight, **kwargs))


@pytest.mark.parametrize("loss_name", ["ce", "bce", "mse"])
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("method", sorted(EXACT))
def test_exact_diagonals_equal_dense(float64, kind, loss_name, method):
    model, x, y, sample_weight = make_case(kind, loss_name)
    # chunk_size=4 splits the 6 examples into chunks of 4 and 2.
    estimate = curvature.diagonal(model, (x, y, sample_weight), method, chunk_size=4)
    expected = dense_diagonal(EXACT[method], model, x, y, sample_weight)
    assert relative_error(curvature.flatten(estimate), expected) <= 1e-10


@pytest.mark.parametrize("method", sorted(EXACT))
def test_exact_diagonal_in_training_mode_and_with_weight_penalty(float64, method):
    model, x, y, sample_weight = make_case("bn_dropout", "ce",
                                           regularizer=keras.regularizers.L1L2(0.01, 0.1))
    estimate = curvature.diagonal(model, (x, y, sample_weight), method, training=True)
    expected = dense_diagonal(EXACT[method], model, x, y, sample_weight, training=True)
    assert relative_error(curvature.flatten(estimate), expected) <= 1e-10


@pytest.mark.parametrize("loss_name", ["ce", "bce", "mse"])
def test_dense_chain_empirical_fisher_in_one_backward_pass_equals_dense(float64, loss_name):
    # Three Dense layers, dropout in training mode, a weight penalty: the one-backward-pass
    # path (`gradient_squares`) against the dense empirical Fisher.
    units, activation, loss = LOSSES[loss_name]
    rng = np.random.default_rng(2)
    keras.utils.set_random_seed(2)
    penalty = keras.regularizers.L2(0.05)
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(5, "sigmoid", kernel_regularizer=penalty),
        keras.layers.Dropout(0.3), keras.layers.Dense(3), keras.layers.Activation("tanh"),
        keras.layers.Dense(units, activation)])
    model.compile(loss=loss())
    x, y = rng.normal(size=(7, 4)), make_targets(loss_name, units, rng, batch=7)
    sample_weight = rng.uniform(0.5, 1.5, size=7)
    assert gradient_squares.supports(model)
    keras.utils.set_random_seed(3)  # The same dropout masks for both.
    estimate = curvature.diagonal(model, (x, y, sample_weight), "empirical_fisher",
                                  training=True)
    keras.utils.set_random_seed(3)
    expected = dense_diagonal(dense.empirical_fisher, model, x, y, sample_weight, training=True)
    assert relative_error(curvature.flatten(estimate), expected) <= 1e-10


@pytest.mark.parametrize("kind", ["cnn", "bn_dropout", "multi_input", "subclassed"])
def test_per_example_passes_where_weights_are_not_in_rank_2_dense_chains(float64, kind):
    model, x, y, sample_weight = make_case(kind, "ce")
    assert not gradient_squares.supports(model)
    estimate = curvature.diagonal(model, (x, y, sample_weight), "empirical_fisher")
    expected = dense_diagonal(dense.empirical_fisher, model, x, y, sample_weight)
    assert relative_error(curvature.flatten(estimate), expected) <= 1e-10


def test_diagonal_averages_batches(float64):
    model, x, y, _ = make_case("mlp", "ce", batch=9)
    whole = curvature.diagonal(model, (x, y))
    parts = curvature.diagonal(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4))
    assert relative_error(curvature.flatten(parts), curvature.flatten(whole)) <= 1e-10


@pytest.mark.parametrize("loss_name", ["ce", "bce", "mse"])
def test_monte_carlo_ggn_diagonal_converges(float64, loss_name):
    model, x, y, _ = make_case("mlp", loss_name)
    expected = dense_diagonal(dense.ggn, model, x, y)
    errors = [relative_error(curvature.flatten(
        curvature.diagonal(model, (x, y), "ggn_mc", samples=samples, seed=3,
                           chunk_size=2048)), expected)
        for samples in (4, 64, 1024)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] <= 0.1


def test_hutchinson_hessian_diagonal_converges(float64):
    model, x, y, sample_weight = make_case("cnn", "ce")
    expected = dense_diagonal(dense.hessian, model, x, y, sample_weight)
    errors = [relative_error(curvature.flatten(
        curvature.diagonal(model, (x, y, sample_weight), "hutchinson", samples=samples, seed=5)),
        expected) for samples in (4, 64, 1024)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] <= 0.25


def test_same_seed_same_estimate(float64):
    model, x, y, _ = make_case("mlp", "ce")
    first, second, other = (curvature.flatten(curvature.diagonal(model, (x, y), "ggn_mc",
                                                                 samples=3, seed=seed))
                            for seed in (7, 7, 8))
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    assert relative_error(other, first) > 1e-3


def test_activity_regularizer_needs_hutchinson(float64):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="tanh",
                                activity_regularizer=keras.regularizers.L2(0.1))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    model.compile(loss="mse")
    x, y = np.random.default_rng(0).normal(size=(5, 4)), np.zeros((5, 2))
    with pytest.raises(ValueError, match="method='hutchinson'"):
        curvature.diagonal(model, (x, y), "ggn")
    # Hutchinson's estimate includes the activity term: it converges to the dense Hessian's.
    estimate = curvature.diagonal(model, (x, y), "hutchinson", samples=2000)
    expected = dense_diagonal(dense.hessian, model, x, y)
    assert relative_error(curvature.flatten(estimate), expected) <= 0.1
