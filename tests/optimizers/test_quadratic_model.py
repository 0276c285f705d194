"""The step chosen by the damped quadratic model, against dense solves (float64)."""

import numpy as np
import tensorflow as tf

from keras_secondorder.optimizers.quadratic_model import step_coefficients

RNG = np.random.default_rng(0)


def problem(size=10):
    basis, _ = np.linalg.qr(RNG.normal(size=(size, size)))
    curvature = basis @ np.diag(np.geomspace(0.01, 10.0, size)) @ basis.T
    return curvature, RNG.normal(size=size), RNG.normal(size=size), RNG.normal(size=size)


def coefficients(curvature, gradient, update, previous, damping):
    matrix = tf.constant(curvature)

    def quadratic_forms(vectors):  # Each vector a one-tensor list.
        stacked = tf.stack([vector for vector, in vectors], axis=1)
        return tf.transpose(stacked) @ matrix @ stacked

    return step_coefficients([tf.constant(gradient)], [tf.constant(update)],
                             [tf.constant(previous)], quadratic_forms, damping)


def model(curvature, gradient, damping, step):
    return 0.5 * step @ (curvature + damping * np.eye(len(step))) @ step + gradient @ step


def test_coefficients_minimize_the_damped_model_on_the_two_directions():
    curvature, gradient, update, previous = problem()
    damping = 0.3
    result = coefficients(curvature, gradient, update, previous, damping)
    basis = np.stack([update, previous], axis=1)
    damped = curvature + damping * np.eye(10)
    expected = np.linalg.solve(basis.T @ damped @ basis, -basis.T @ gradient)
    np.testing.assert_allclose([result.learning_rate, result.momentum], expected, rtol=1e-10)
    np.testing.assert_allclose(result.predicted_change,
                               model(curvature, gradient, damping, basis @ expected), rtol=1e-10)
    assert float(result.predicted_change) < 0


def test_without_a_previous_update_the_step_is_along_the_proposal_alone():
    curvature, gradient, update, _ = problem()
    result = coefficients(curvature, gradient, update, np.zeros(10), 0.3)
    alpha = -(gradient @ update) / (update @ (curvature + 0.3 * np.eye(10)) @ update)
    np.testing.assert_allclose(result.learning_rate, alpha, rtol=1e-12)
    assert float(result.momentum) == 0.0
    np.testing.assert_allclose(result.predicted_change,
                               model(curvature, gradient, 0.3, alpha * update), rtol=1e-12)
    # A previous update parallel to the proposal spans the same line: the same step.
    parallel = coefficients(curvature, gradient, update, 2.0 * update, 0.3)
    np.testing.assert_allclose(
        parallel.learning_rate * update + parallel.momentum * 2.0 * update, alpha * update,
        rtol=1e-10)
