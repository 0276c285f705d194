"""SaddleFreeNewton: the step at a saddle (closed form), the dense |H|⁻¹g, training, settings."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_case

import keras_secondorder as ks
from keras_secondorder.curvature import BatchCurvature, dense, flatten, unflatten
from keras_secondorder.optimizers import SaddleFreeNewton
from keras_secondorder.optimizers.saddle_free_newton import (
    saddle_free_direction,
    saddle_free_step,
)
from keras_secondorder.spectrum.lanczos import krylov_basis

HESSIAN = tf.constant([[2.0, 0.0], [0.0, -1.0]], tf.float64)  # f(w) = ½ wᵀHw: a saddle at 0.
POINT = tf.constant([1.0, 0.1], tf.float64)


def quadratic(w):
    return 0.5 * tf.reduce_sum(w * tf.linalg.matvec(HESSIAN, w))


def test_at_a_saddle_the_step_descends_where_newtons_climbs_to_it():
    # g = Hw = (2, -0.1). Newton: -H⁻¹g = (-1, -0.1), straight to the saddle (f = 0).
    # Saddle-free: -|H|⁻¹g = (-1, 0.1): away from it along the negative curvature, f < 0.
    gradient = tf.linalg.matvec(HESSIAN, POINT)
    newton = -tf.linalg.solve(HESSIAN, gradient[:, None])[:, 0]
    np.testing.assert_allclose(POINT + newton, [0.0, 0.0], atol=1e-15)
    basis, tridiagonal = krylov_basis(lambda v: tf.linalg.matvec(HESSIAN, v), gradient, 2)
    direction, curvature, ritz = saddle_free_direction(basis, tridiagonal, gradient, 1e-12)
    np.testing.assert_allclose(direction, [-1.0, 0.1], rtol=1e-10)
    np.testing.assert_allclose(np.sort(ritz), [-1.0, 2.0], rtol=1e-12)
    np.testing.assert_allclose(curvature, 2 * 1.0 + 1 * 0.01, rtol=1e-10)  # δᵀ|H|δ
    assert float(quadratic(POINT + direction)) == pytest.approx(-0.02, rel=1e-10)
    assert float(quadratic(POINT + newton)) == 0.0
    # The whole iteration: rho = (-0.02 - 0.995) / (gᵀδ + ½δᵀ|H|δ = -1.005) > 3/4, so the
    # full step is taken and the damping decreases.
    result = saddle_free_step(lambda step: quadratic(POINT + step), gradient,
                              lambda v: tf.linalg.matvec(HESSIAN, v),
                              tf.constant(1e-12, tf.float64), krylov_steps=2, min_damping=1e-13)
    np.testing.assert_allclose(result.step, [-1.0, 0.1], rtol=1e-10)
    np.testing.assert_allclose(result.rho, 1.015 / 1.005, rtol=1e-9)
    np.testing.assert_allclose(result.damping, 1e-12 * 2 / 3, rtol=1e-12)
    assert float(result.smallest_ritz_value) == pytest.approx(-1.0)
    assert float(result.negative_fraction) == 0.5


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_with_a_full_krylov_space_the_direction_is_the_dense_one(float64, kind):
    # k = P Lanczos steps from g: δ = -(|H| + λ)⁻¹ g with |H| = Q |Λ| Qᵀ of the dense Hessian
    # (a breakdown leaves an invariant subspace that holds g: the same vector).
    model, x, y, weights = make_case(kind, "ce")
    curvature = BatchCurvature(model, (x, y, weights))
    shapes = curvature.objective.shapes
    gradient = flatten(curvature.objective.gradient(curvature.objective.params(),
                                                    curvature.batch)[1])
    size = int(gradient.shape[0])
    basis, tridiagonal = krylov_basis(
        lambda v: flatten(curvature.hessian_vector_product(unflatten(v, shapes))), gradient,
        size)
    direction, _, _ = saddle_free_direction(basis, tridiagonal, gradient, 0.1)
    values, vectors = np.linalg.eigh(dense.hessian(model, x, y, weights, training=True).numpy())
    expected = -vectors @ ((vectors.T @ gradient.numpy()) / (np.abs(values) + 0.1))
    np.testing.assert_allclose(direction, expected, rtol=1e-8, atol=1e-12)


def classifier():
    keras.utils.set_random_seed(1)
    return ks.wrap(keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(3, activation="softmax")]))


RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 6)).astype("float32")
Y = np.argmax(X[:, :3] @ RNG.normal(size=(3, 3)), axis=1)


def test_trains_logs_and_resumes_exactly(tmp_path):
    model = classifier()
    model.compile(SaddleFreeNewton(krylov_steps=8), "sparse_categorical_crossentropy")
    history = model.fit(X, Y, batch_size=48, epochs=3, shuffle=False, verbose=0).history
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert history["skipped_steps"][-1] == 0
    for key in ("damping", "rho", "step_size", "smallest_ritz_value",
                "negative_ritz_fraction", "rejected_steps"):
        assert np.all(np.isfinite(history[key])), key
    path = str(tmp_path / "model.keras")
    model.save(path)
    resumed = keras.saving.load_model(path)
    for trained in (model, resumed):
        trained.fit(X, Y, batch_size=48, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip_and_bad_settings():
    optimizer = SaddleFreeNewton(krylov_steps=5, damping=2.0, damping_increase=2.0,
                                 damping_decrease=0.5, min_damping=1e-3, line_search_tries=4)
    config = optimizer.get_config()
    assert SaddleFreeNewton.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="takes no `learning_rate`"):
        SaddleFreeNewton(learning_rate=0.1)
    with pytest.raises(ValueError, match=r"`damping` must be a number > 0; received 0"):
        SaddleFreeNewton(damping=0)
    with pytest.raises(ValueError, match="krylov_steps"):
        SaddleFreeNewton(krylov_steps=0)
