"""LevenbergMarquardt: exact least squares, scipy's MINPACK LM, Marquardt's rule, settings."""

import keras
import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

import keras_secondorder as ks
from keras_secondorder.optimizers import LevenbergMarquardt
from keras_secondorder.optimizers.levenberg_marquardt import marquardt_step


def line_fit(damping):
    keras.utils.set_random_seed(0)
    model = ks.wrap(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    model.compile(LevenbergMarquardt(damping=damping), "mse")
    return model


def test_one_gauss_newton_step_solves_linear_least_squares(float64):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    model = line_fit(0.0)
    model.fit(x, y, batch_size=20, epochs=1, verbose=0)
    expected = np.linalg.lstsq(np.c_[x, np.ones(20)], y, rcond=None)[0]
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(np.r_[kernel, bias[None]], expected, rtol=1e-10, atol=1e-12)


X_CURVE = np.linspace(-2, 2, 40)[:, None]
Y_CURVE = (1.5 * np.tanh(2.0 * X_CURVE - 0.5) - 0.8 * np.tanh(1.0 - X_CURVE)
           + 0.05 * np.random.default_rng(0).normal(size=X_CURVE.shape))


def curve_fit_model():
    keras.utils.set_random_seed(3)
    return ks.wrap(keras.Sequential([keras.Input((1,)), keras.layers.Dense(2, activation="tanh"),
                                     keras.layers.Dense(1)]))


def test_reaches_the_cost_of_scipys_minpack_lm(float64):
    # A 1-2-1 tanh network fitted to 40 noisy points of a 1-2-1 teacher, from the same start:
    # MINPACK's LM (a scaled trust-region variant) and Marquardt's rule reach the same minimum.
    # Measured: scipy 34 Jacobians (59 residual evaluations), this optimizer 25 steps (one
    # Gauss-Newton matrix and about two trials each).
    model = curve_fit_model()
    start = model.get_weights()

    def residuals(theta):
        w1, b1, w2, b2 = [tf.reshape(part, w.shape) for part, w in zip(
            tf.split(theta, [w.size for w in start]), start, strict=True)]
        return tf.reshape(tf.tanh(X_CURVE @ w1 + b1) @ w2 + b2 - Y_CURVE, [-1])

    def jacobian(theta):
        theta = tf.constant(theta)
        with tf.GradientTape() as tape:
            tape.watch(theta)
            values = residuals(theta)
        return tape.jacobian(values, theta).numpy()

    reference = scipy.optimize.least_squares(
        lambda theta: residuals(tf.constant(theta)).numpy(),
        np.concatenate([w.ravel() for w in start]), jac=jacobian, method="lm", xtol=1e-15,
        ftol=1e-15, gtol=1e-15)
    expected = 2 * reference.cost / len(X_CURVE)  # scipy's cost is ½|r|².
    model.compile(LevenbergMarquardt(damping=1e-3), "mse")
    history = model.fit(X_CURVE, Y_CURVE, batch_size=40, epochs=60, verbose=0,
                        shuffle=False).history
    np.testing.assert_allclose(model.evaluate(X_CURVE, Y_CURVE, verbose=0), expected,
                               rtol=1e-8)
    # The loss logged at epoch i is the one before step i + 1.
    steps = next(i for i, loss in enumerate(history["loss"]) if loss <= expected * (1 + 1e-8))
    assert steps <= reference.njev, (steps, reference.njev)
    # At the minimum every trial fails (rounding): μ rises to max_damping, not to overflow.
    assert history["damping"][-1] == pytest.approx(1e10, rel=1e-6)


def test_marquardts_rule_raises_damping_until_the_objective_falls(float64):
    # G = I, g = (3, 4): δ(μ) = -g / (1 + μ), |δ| = 5 / (1 + μ). The objective falls only for
    # |δ| < 0.6, i.e. μ > 7.33: from μ = 0.01, raised x10 to 0.1, 1, 10 (accepted, 4 trials),
    # then lowered to 1.
    gradient = tf.constant([3.0, 4.0], tf.float64)

    def objective(step):
        return tf.where(tf.norm(step) < 0.6, 0.0, 2.0)

    def step(damping, max_trials=10):
        return marquardt_step(objective, tf.constant(1.0, tf.float64), gradient,
                              tf.eye(2, dtype=tf.float64), tf.constant(damping, tf.float64), 10.0,
                              0.1, 1e-12, 1e10, max_trials, 1e-12)

    result = step(0.01)
    assert bool(result.accepted) and int(result.trials) == 4
    np.testing.assert_allclose(result.step, -gradient / 11.0, rtol=1e-14)
    np.testing.assert_allclose(result.damping, 1.0, rtol=1e-14)
    rejected = step(0.01, max_trials=3)
    assert not bool(rejected.accepted) and int(rejected.trials) == 3
    np.testing.assert_array_equal(rejected.step, [0.0, 0.0])
    np.testing.assert_allclose(rejected.damping, 10.0, rtol=1e-14)


def test_logs_trials_and_rejected_steps_and_resumes_exactly(tmp_path, float64):
    model = curve_fit_model()
    model.compile(LevenbergMarquardt(), "mse")
    history = model.fit(X_CURVE, Y_CURVE, batch_size=20, epochs=2, verbose=0,
                        shuffle=False).history
    assert history["skipped_steps"][-1] == 0 and history["trials"][-1] >= 1
    assert history["loss"][-1] < history["loss"][0]
    path = str(tmp_path / "model.keras")
    model.save(path)
    resumed = keras.saving.load_model(path)
    np.testing.assert_equal(float(resumed.optimizer.damping), float(model.optimizer.damping))
    for trained in (model, resumed):
        trained.fit(X_CURVE, Y_CURVE, batch_size=20, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip_and_bad_settings():
    optimizer = LevenbergMarquardt(damping=0.5, damping_increase=3.0, damping_decrease=0.5,
                                   min_damping=1e-6, max_damping=1e6, max_trials=4,
                                   max_parameters=100, rcond=1e-9)
    config = optimizer.get_config()
    assert LevenbergMarquardt.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="takes no `learning_rate`"):
        LevenbergMarquardt(learning_rate=0.1)
    with pytest.raises(ValueError, match="damping_increase"):
        LevenbergMarquardt(damping_increase=0.5)
    model = ks.wrap(keras.Sequential([keras.Input((30,)), keras.layers.Dense(200),
                                      keras.layers.Dense(1)]))
    model.compile(LevenbergMarquardt(), "mse")
    with pytest.raises(ValueError, match=r"6401 weights, over max_parameters=4096.*HessianFree"):
        model.fit(np.zeros((4, 30)), np.zeros((4, 1)), verbose=0)
