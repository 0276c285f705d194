"""SDLM: the Newton step on a diagonal quadratic, golden steps, settings, schedule, fallback."""

import keras
import numpy as np
import pytest

import keras_secondorder as ks
from keras_secondorder.optimizers import SDLM

# A linear least-squares model whose design has orthogonal columns: the MSE objective is a
# quadratic with diagonal Hessian = Gauss-Newton = 2 XᵀX / N = diag(5, 1, 0.25) / 2.
X = np.array([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 0.5], [1.0, 0, 0]])
W_STAR = np.array([[1.5], [-2.0], [3.0]])
Y = X @ W_STAR


def linear_model(w0=(0.0, 0.0, 0.0)):
    inputs = keras.Input((len(w0),))
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(
        np.reshape(w0, (len(w0), 1))))(inputs)
    return ks.Model(inputs, outputs)


def by_hand(w, h_old, blend, learning_rate, mu):
    """One SDLM step computed with numpy: gradient, diagonal, running average, update."""
    gradient = 2.0 / len(X) * X.T @ (X @ w - Y)
    h = (1 - blend) * h_old + blend * (2.0 / len(X) * (X**2).sum(axis=0))[:, None]
    return w - learning_rate * gradient / (h + mu), h


@pytest.mark.parametrize("diagonal", ["ggn", "bbprop"])
def test_newton_step_reaches_the_minimum_of_a_diagonal_quadratic(float64, diagonal):
    model = linear_model()
    model.compile(SDLM(learning_rate=1.0, mu=0.0, gamma=1.0, curvature_samples=4,
                       diagonal=diagonal), loss="mse")
    model.fit(X, Y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.get_weights()[0], W_STAR, rtol=1e-12)


def test_zero_curvature_without_damping_leaves_the_weight_unchanged(float64):
    # A fourth input that is always 0: its weight has h = 0 and gradient 0; with mu = 0 its
    # rate would be 1/0 and its step 0 * inf = NaN.
    model = linear_model((0.25,) * 4)
    model.compile(SDLM(learning_rate=1.0, mu=0.0, gamma=1.0, curvature_samples=4,
                       diagonal="ggn"), loss="mse")
    model.fit(np.pad(X, ((0, 0), (0, 1))), Y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.get_weights()[0], np.vstack([W_STAR, [[0.25]]]),
                               rtol=1e-12)


def test_golden_steps_running_average_and_damping(float64):
    rate, mu, gamma = 0.1, 0.02, 0.5
    model = linear_model((0.5, 0.5, 0.5))
    model.compile(SDLM(learning_rate=rate, mu=mu, gamma=gamma, curvature_samples=4,
                       reestimate_every=1, diagonal="ggn"), loss="mse")
    w, h = np.full((3, 1), 0.5), np.zeros((3, 1))
    w, h = by_hand(w, h, 1.0, rate, mu)  # First estimate: the batch's diagonal itself.
    model.train_on_batch(X, Y)
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-12)
    w, h = by_hand(w, h, 1 - (1 - gamma) ** 4, rate, mu)  # A batch of 4 counts as 4 patterns.
    model.train_on_batch(X, Y)
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-12)


def test_first_estimate_covers_curvature_samples_before_any_update(float64):
    # 8 samples at batch 4: the first step only estimates; the second averages both batches
    # equally (the plain mean, whatever gamma) and takes the first update.
    model = linear_model((0.5, 0.5, 0.5))
    model.compile(SDLM(learning_rate=0.1, gamma=0.01, curvature_samples=8, diagonal="ggn"),
                  loss="mse")
    model.train_on_batch(X, Y)
    np.testing.assert_allclose(model.get_weights()[0], 0.5)
    second_x = X * 2.0
    model.train_on_batch(second_x, Y)
    w = np.full((3, 1), 0.5)
    h = 0.5 * (2.0 / 4 * (X**2).sum(axis=0) + 2.0 / 4 * (second_x**2).sum(axis=0))[:, None]
    gradient = 2.0 / 4 * second_x.T @ (second_x @ w - Y)
    np.testing.assert_allclose(model.get_weights()[0], w - 0.1 * gradient / (h + 0.02),
                               rtol=1e-12)


def test_first_estimate_is_the_plain_mean_of_many_batches_whatever_gamma(float64):
    # Eight batches of 4 with different scales and gamma = 0.5 (gamma_b = 0.94 per batch): a
    # running average would hold mostly the last batch; the first estimate weighs all equally.
    model = linear_model((0.5, 0.5, 0.5))
    optimizer = SDLM(learning_rate=0.0, gamma=0.5, curvature_samples=32, diagonal="ggn")
    model.compile(optimizer, loss="mse")
    scales = np.arange(1.0, 9.0)
    for scale in scales:
        model.train_on_batch(scale * X, Y)
    diagonals = [2.0 / len(X) * ((scale * X) ** 2).sum(axis=0) for scale in scales]
    np.testing.assert_allclose(np.array(optimizer._curvatures[0])[:, 0],
                               np.mean(diagonals, axis=0), rtol=1e-12)


def test_reestimation_only_in_its_window(float64):
    # reestimate_every=3 and one-batch windows: steps 0 and 3 estimate, steps 1, 2 do not.
    model = linear_model((0.5, 0.5, 0.5))
    optimizer = SDLM(learning_rate=0.1, gamma=1.0, curvature_samples=4, reestimate_every=3,
                     diagonal="ggn")
    model.compile(optimizer, loss="mse")
    model.train_on_batch(X, Y)
    first = [np.array(v) for v in optimizer._curvatures]
    model.train_on_batch(2 * X, Y)
    model.train_on_batch(2 * X, Y)
    np.testing.assert_array_equal(np.array(optimizer._curvatures[0]), first[0])
    model.train_on_batch(2 * X, Y)
    np.testing.assert_allclose(np.array(optimizer._curvatures[0]), 4 * first[0], rtol=1e-12)


def test_clipnorm_and_weight_decay_enter_as_in_keras(float64):
    rate, mu, decay, clip = 0.1, 0.02, 0.1, 0.5
    model = linear_model((0.5, 0.5, 0.5))
    model.compile(SDLM(learning_rate=rate, mu=mu, curvature_samples=4, diagonal="ggn",
                       weight_decay=decay, clipnorm=clip), loss="mse")
    model.train_on_batch(X, Y)
    w = np.full((3, 1), 0.5)
    gradient = 2.0 / 4 * X.T @ (X @ w - Y)
    gradient = gradient * min(1.0, clip / np.linalg.norm(gradient))
    h = (2.0 / 4 * (X**2).sum(axis=0))[:, None]
    # Keras's weight decay casts the Python float through float32 (tf.cast(0.1, float64)).
    expected = w * (1 - rate * float(np.float32(decay))) - rate * gradient / (h + mu)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=1e-12)


def test_learning_rate_schedule_and_logged_rates(float64):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    model = linear_model((0.5, 0.5, 0.5))
    model.compile(SDLM(learning_rate=schedule, mu=0.02, gamma=1.0, curvature_samples=4,
                       diagonal="ggn"), loss="mse")
    history = model.fit(X, Y, batch_size=4, epochs=2, shuffle=False, verbose=0).history
    h = 2.0 / 4 * (X**2).sum(axis=0)
    # Logged after step 2 (iterations = 2): rate 0.1 * 0.5² / (h + mu).
    rates = 0.1 * 0.25 / (h + 0.02)
    np.testing.assert_allclose(history["rate_mean"][-1], rates.mean(), rtol=1e-6)
    np.testing.assert_allclose(history["rate_std"][-1], rates.std(), rtol=1e-6)
    assert history["skipped_steps"] == [0.0, 0.0]


def test_unsupported_model_falls_back_to_the_exact_diagonal_with_a_warning(float64):
    inputs = keras.Input((3,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(2)(inputs))
    model = ks.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(SDLM(curvature_samples=4), loss="mse")
    with pytest.warns(UserWarning, match="falls back to the exact Gauss-Newton"):
        model.train_on_batch(X, Y)


@pytest.mark.parametrize("settings, message", [
    ({"mu": -0.1}, "`mu` must be a number >= 0"),
    ({"gamma": 0.0}, r"`gamma` must be a number in \(0, 1\]"),
    ({"gamma": 1.5}, r"`gamma` must be a number in \(0, 1\]"),
    ({"curvature_samples": 0}, "`curvature_samples` must be a positive integer"),
    ({"reestimate_every": 2.5}, "`reestimate_every` must be a positive integer"),
    ({"diagonal": "hessian"}, "`diagonal` must be one of"),
    ({"seed": "a"}, "`seed` must be an integer"),
])
def test_bad_settings_name_the_parameter(settings, message):
    with pytest.raises(ValueError, match=message):
        SDLM(**settings)


def test_config_round_trip():
    optimizer = SDLM(learning_rate=0.03, mu=0.1, gamma=0.2, curvature_samples=100,
                     reestimate_every=None, diagonal="ggn_mc", diagonal_samples=3, seed=7,
                     clipnorm=1.0)
    config = optimizer.get_config()
    restored = SDLM.from_config(config)
    assert restored.get_config() == config
    assert keras.optimizers.deserialize(keras.optimizers.serialize(optimizer)).get_config() == (
        config)
