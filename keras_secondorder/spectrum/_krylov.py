"""Shared pieces of the Krylov methods: operator products in float64, random start vectors."""

import tensorflow as tf


def check_operator(operator):
    """The dimension of `operator`; ValueError unless it is a self-adjoint LinearOperator."""
    if not isinstance(operator, tf.linalg.LinearOperator):
        raise ValueError(
            f"`operator` must be a tf.linalg.LinearOperator (e.g. keras_secondorder.curvature."
            f"HessianOperator); received {type(operator).__name__}."
        )
    if not operator.is_self_adjoint or operator.shape.rank != 2:
        raise ValueError(
            f"`operator` must be a square self-adjoint operator; {operator.name} is not "
            f"(is_self_adjoint={operator.is_self_adjoint}, shape={operator.shape})."
        )
    return int(operator.shape[-1])


class NonFiniteCurvatureError(ValueError):
    """An operator product held NaN or infinity: the curvature is not defined there."""


def apply(operator, vector):
    """`A v` for a float64 vector `v`, computed in the operator's dtype, returned in float64.

    Raises:
        NonFiniteCurvatureError: the product is not finite (NaN or inf in the data, targets
            or weights, or a loss that overflows), so no eigenvalue estimate is meaningful.
    """
    product = tf.cast(operator.matvec(tf.cast(vector, operator.dtype)), tf.float64)
    if not bool(tf.reduce_all(tf.math.is_finite(product))):
        raise NonFiniteCurvatureError(
            f"{operator.name} returned a non-finite product (NaN or inf): the loss or its "
            "curvature is not finite at these weights on this data. Check the data for NaN or "
            "inf (np.isfinite(x).all()), the targets and sample weights, and the weights "
            "themselves (a diverged model)."
        )
    return product


def random_unit_vector(dimension, seed, index=0):
    """A Gaussian vector normalized to length 1 (float64), from a stateless seed."""
    vector = tf.random.stateless_normal([dimension], [seed, index], dtype=tf.float64, alg="philox")
    return vector / tf.norm(vector)


def rademacher(dimension, seed, index=0):
    """A vector of independent ±1 entries (float64), from a stateless seed."""
    draws = tf.random.stateless_uniform([dimension], [seed, index], maxval=2, dtype=tf.int32,
                                        alg="philox")
    return tf.cast(2 * draws - 1, tf.float64)

