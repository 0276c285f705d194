"""Products agree between eager execution, tf.function and XLA (jit_compile=True)."""

import pytest
import tensorflow as tf
from conftest import make_case, random_like, relative_error

from keras_secondorder import curvature

PRODUCTS = [curvature.hessian_vector_product, curvature.gauss_newton_vector_product,
            curvature.fisher_vector_product, curvature.finite_difference_hessian_vector_product]


# Exact products agree to rounding; a finite difference amplifies rounding by 1/step, about
# 1/sqrt(eps), so reordered floating-point operations move it by up to ~1e-8 relative.
TOLERANCE = {product: 1e-10 for product in PRODUCTS}
TOLERANCE[curvature.finite_difference_hessian_vector_product] = 1e-6


# No dropout mask in these cases: TF's stateless random ops choose a device-dependent algorithm,
# so masks drawn under XLA differ from eager ones.
@pytest.mark.parametrize("kind,training", [("cnn", True), ("bn_dropout", False)])
@pytest.mark.parametrize("product", PRODUCTS, ids=lambda f: f.__name__)
def test_eager_function_and_xla_agree(float64, kind, training, product):
    model, x, y, sample_weight = make_case(kind, "ce")
    vector = random_like(model)

    def run(vector):
        return product(model, x, y, vector, sample_weight, training=training)

    eager = curvature.flatten(run(vector))
    for jit_compile in (False, True):
        compiled = curvature.flatten(tf.function(run, jit_compile=jit_compile)(vector))
        assert relative_error(compiled, eager) <= TOLERANCE[product], jit_compile


def test_dropout_masks_are_shared_within_an_xla_computation(float64):
    # Training mode with BatchNorm and Dropout under XLA: the finite difference (two gradients)
    # and the exact product see the same masks.
    model, x, y, sample_weight = make_case("bn_dropout", "ce")

    @tf.function(jit_compile=True)
    def run(vector):
        return [curvature.flatten(product(model, x, y, vector, sample_weight, training=True))
                for product in (curvature.hessian_vector_product,
                                curvature.finite_difference_hessian_vector_product)]

    exact, approximate = run(random_like(model))
    assert relative_error(approximate, exact) <= 1e-3


@pytest.mark.parametrize("method", ["ggn", "ggn_mc", "hutchinson", "empirical_fisher"])
def test_batch_diagonal_compiles_with_xla(float64, method):
    model, x, y, sample_weight = make_case("mlp", "ce")
    objective = curvature.Objective(model, training=True)
    batch = curvature.Batch(tf.constant(x), tf.constant(y), tf.constant(sample_weight))

    def run():
        return curvature.batch_diagonal(objective, batch, method, samples=4, seed=[1, 2])

    eager = curvature.flatten(run())
    compiled = curvature.flatten(tf.function(run, jit_compile=True)())
    assert relative_error(compiled, eager) <= 1e-10


def test_operator_products_compile_with_xla(float64):
    model, x, y, _ = make_case("cnn", "ce")
    plain = curvature.GGNOperator(model, (x, y)).to_dense()
    compiled = curvature.GGNOperator(model, (x, y), jit_compile=True).to_dense()
    assert relative_error(compiled, plain) <= 1e-10
