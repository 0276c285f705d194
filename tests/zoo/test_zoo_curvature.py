"""Curvature on the model zoo: every product, diagonal and eigenvalue against a dense reference."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import random_like, relative_error

from keras_secondorder import curvature, spectrum
from keras_secondorder.curvature import dense, kronecker
from zoo import models as zoo

PRODUCTS = {
    "hessian": (curvature.hessian_vector_product, dense.hessian, curvature.HessianOperator),
    "ggn": (curvature.gauss_newton_vector_product, dense.ggn, curvature.GGNOperator),
    "fisher": (curvature.fisher_vector_product, dense.empirical_fisher, curvature.FisherOperator),
    "kfac": (curvature.kronecker_vector_product, kronecker.dense_matrix,
             curvature.KroneckerFactoredOperator),
}
GRID = [(name, product) for name in zoo.ZOO for product in PRODUCTS
        if product == "hessian" or name in zoo.SPLIT]
# Models without ReLU or max pooling kinks, where a finite difference of gradients is smooth.
SMOOTH = tuple(name for name in zoo.ZOO if name not in ("resnet", "sample_weight", "conv1d"))


@pytest.mark.parametrize("name,product", GRID)
def test_product_in_tf_function_equals_dense_matrix(float64, name, product):
    case = zoo.make(name)
    vector_product, reference, _ = PRODUCTS[product]
    vector = random_like(case.model)
    compiled = tf.function(lambda v: vector_product(case.model, case.x, case.y, v,
                                                    case.sample_weight))
    actual = compiled(vector)
    for part, variable in zip(actual, case.model.trainable_variables, strict=True):
        assert isinstance(part, tf.Tensor) and tuple(part.shape) == tuple(variable.shape)
    matrix = reference(case.model, case.x, case.y, case.sample_weight)
    expected = tf.linalg.matvec(matrix, curvature.flatten(vector))
    assert relative_error(curvature.flatten(actual), expected) <= 1e-10


@pytest.mark.parametrize("name", zoo.ZOO)
def test_operator_to_dense_equals_dense_hessian(float64, name):
    case = zoo.make(name)
    data = (case.x, case.y) if case.sample_weight is None else (case.x, case.y,
                                                                case.sample_weight)
    operator = curvature.HessianOperator(case.model, data)
    expected = dense.hessian(case.model, case.x, case.y, case.sample_weight)
    assert relative_error(operator.to_dense(), expected) <= 1e-10


@pytest.mark.parametrize("name", SMOOTH)
def test_finite_difference_agrees_with_the_exact_product(float64, name):
    case = zoo.make(name)
    vector = random_like(case.model)
    exact = curvature.hessian_vector_product(case.model, case.x, case.y, vector,
                                             case.sample_weight)
    approximate = curvature.finite_difference_hessian_vector_product(
        case.model, case.x, case.y, vector, case.sample_weight, central=True)
    assert relative_error(curvature.flatten(approximate), curvature.flatten(exact)) <= 1e-6


def test_gauss_newton_of_a_multi_output_model_is_refused_when_the_operator_is_made(float64):
    case = zoo.make("multi_output")
    for operator in (curvature.GGNOperator, curvature.FisherOperator):
        with pytest.raises(ValueError, match="one output and one loss; this one has 2"):
            operator(case.model, (case.x, case.y))


EXACT_DIAGONALS = {"ggn": dense.ggn, "empirical_fisher": dense.empirical_fisher}


@pytest.mark.parametrize("name", zoo.SPLIT)
@pytest.mark.parametrize("method", sorted(EXACT_DIAGONALS))
def test_exact_diagonals_equal_the_dense_diagonal(float64, name, method):
    case = zoo.make(name)
    data = (case.x, case.y, case.sample_weight)
    actual = curvature.flatten(curvature.diagonal(case.model, data, method))
    expected = tf.linalg.diag_part(EXACT_DIAGONALS[method](case.model, *data))
    assert relative_error(actual, expected) <= 1e-10


@pytest.mark.parametrize("name,method,reference", [
    *[(name, "ggn_mc", dense.ggn) for name in zoo.SPLIT],
    *[(name, "hutchinson", dense.hessian) for name in zoo.ZOO]])
def test_stochastic_diagonals_converge_to_the_dense_diagonal(float64, name, method, reference):
    case = zoo.make(name)
    data = (case.x, case.y, case.sample_weight)
    expected = tf.linalg.diag_part(reference(case.model, *data))
    errors = [relative_error(curvature.flatten(curvature.diagonal(
        case.model, data, method, samples=samples, seed=3)), expected) for samples in (4, 100)]
    # The error falls as 1/sqrt(samples): 5x from 4 to 100 samples; at least 2.5x here.
    assert errors[1] <= errors[0] / 2.5


@pytest.mark.parametrize("name", zoo.ZOO)
def test_lanczos_top_three_equal_the_dense_eigenvalues(float64, name):
    case = zoo.make(name)
    data = (case.x, case.y, case.sample_weight)
    exact = np.linalg.eigvalsh(dense.hessian(case.model, *data))
    result = spectrum.lanczos(curvature.HessianOperator(case.model, data), k=3, tol=1e-10)
    np.testing.assert_allclose(result.largest, exact[::-1][:3], rtol=1e-8)
    np.testing.assert_allclose(result.smallest[0], exact[0], rtol=1e-8)
