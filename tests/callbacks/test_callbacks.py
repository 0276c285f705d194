"""The curvature callbacks in model.fit: theory on least squares, logs, untouched state, files."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_case

import keras_secondorder as ks
from keras_secondorder.callbacks import HessianSpectrum, PowerMethodLR
from keras_secondorder.curvature import dense, kronecker


def least_squares(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1 * rng.normal(size=(64, 1))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse")
    return model, x, y


def test_power_method_lr_sets_one_over_lambda_max(float64):
    model, x, y = least_squares()
    callback = PowerMethodLR((x, y), num_samples=64, tol=1e-10, max_iterations=500, verbose=0)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[callback])
    lambda_max = np.linalg.eigvalsh(2 * x.T @ x / len(x))[-1]  # Hessian of the MSE.
    np.testing.assert_allclose(callback.lambda_max, lambda_max, rtol=1e-8)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1 / lambda_max, rtol=1e-8)


def scaled_lambda_max(hessian, scaling):
    """The largest eigenvalue of `P^1/2 H P^1/2`, dense."""
    root = np.sqrt(scaling)
    return np.linalg.eigvalsh(root[:, None] * np.asarray(hessian) * root[None, :])[-1]


def test_power_method_lr_measures_sdlm_on_its_scaled_curvature(float64):
    model, x, y, _ = make_case("mlp", "ce", batch=40)
    model = ks.wrap(model)
    mu = 0.05
    model.compile(optimizer=ks.optimizers.SDLM(diagonal="ggn", mu=mu, curvature_samples=40),
                  loss="categorical_crossentropy")
    callback = PowerMethodLR((x, y), num_samples=40, batch_size=40, every_n_epochs=1,
                             tol=1e-12, max_iterations=2000, verbose=0)
    # Before training: h is the exact Gauss-Newton diagonal of the measured data.
    hessian = dense.hessian(model, x, y)
    expected = scaled_lambda_max(hessian, 1 / (np.diag(dense.ggn(model, x, y)) + mu))
    callback.set_model(model)
    callback.on_train_begin()
    np.testing.assert_allclose(callback.lambda_max, expected, rtol=1e-6)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1 / expected, rtol=1e-6)
    # During training: the optimizer's running h.
    model.fit(x, y, batch_size=40, epochs=2, verbose=0, callbacks=[callback])
    callback.on_epoch_begin(2)
    running = np.concatenate([np.ravel(h) for h in model.optimizer._curvatures])
    expected = scaled_lambda_max(dense.hessian(model, x, y), 1 / (running + mu))
    np.testing.assert_allclose(callback.lambda_max, expected, rtol=1e-6)


def sdlm_least_squares():
    model, x, y = least_squares()
    model = ks.wrap(model)
    model.compile(optimizer=ks.optimizers.SDLM(diagonal="ggn", mu=0.1, curvature_samples=64),
                  loss="mse")
    return model, x, y


# Plain gradient descent on λ_max of H; SDLM (full batch) on λ_max of its scaled P^1/2 H P^1/2.
@pytest.mark.parametrize("problem", [least_squares, sdlm_least_squares])
@pytest.mark.parametrize("scale,diverges", [(2.1, True), (1.9, False)])
def test_gradient_descent_diverges_above_two_over_lambda_max(float64, problem, scale, diverges):
    model, x, y = problem()
    initial = float(model.evaluate(x, y, verbose=0))
    callback = PowerMethodLR((x, y), num_samples=64, scale=scale, tol=1e-10,
                             max_iterations=500, verbose=0)
    history = model.fit(x, y, batch_size=64, epochs=200, shuffle=False, verbose=0,
                        callbacks=[callback])
    final = history.history["loss"][-1]
    weights = np.linalg.lstsq(x, y, rcond=None)[0]
    minimum = float(np.mean((x @ weights - y) ** 2))
    if diverges:
        assert final > 1e6 * initial
    else:
        assert abs(final - minimum) <= 1e-6 * minimum


def test_power_method_lr_logs_and_reestimates(float64, tmp_path):
    model, x, y, _ = make_case("mlp", "ce", batch=40)
    callback = PowerMethodLR((x, y), num_samples=30, batch_size=16, every_n_epochs=2, verbose=0)
    logger = keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[callback, logger])
    assert len(history.history["lambda_max"]) == 3
    rates = history.history["learning_rate"]
    assert rates[0] == rates[1] != rates[2]  # Re-estimated at the start of epoch 3.
    np.testing.assert_allclose(rates[2], 1 / abs(history.history["lambda_max"][2]))
    with open(tmp_path / "log.csv") as handle:
        assert {"lambda_max", "learning_rate"} <= set(next(csv.reader(handle)))


# With 2 steps per execution the callback sees steps 0, 2, 4, ...: the first >= 3 after 0 is 4.
@pytest.mark.parametrize("steps_per_execution,period", [(1, 3), (2, 4)])
def test_power_method_lr_every_n_steps_follows_the_hessian(float64, steps_per_execution, period):
    model, x, y, _ = make_case("mlp", "ce", batch=40)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy",
                  steps_per_execution=steps_per_execution)
    callback = PowerMethodLR((x, y), num_samples=40, batch_size=40, every_n_steps=3, tol=1e-12,
                             max_iterations=2000, verbose=0)
    seen = []  # (step, learning rate, 1/λ_max of the dense Hessian) before each execution.

    def record(batch, logs):
        top = np.linalg.eigvalsh(dense.hessian(model, x, y))
        seen.append((int(model.optimizer.iterations), float(model.optimizer.learning_rate),
                     1 / np.max(np.abs(top))))

    recorder = keras.callbacks.LambdaCallback(on_train_batch_begin=record)
    # 20 steps of 4 examples, 10 per epoch: the count runs across epochs.
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[callback, recorder])
    estimated_at = range(0, 20, period)
    rates = {step: rate for step, rate, _ in seen}
    for step, rate, expected in seen:
        if step in estimated_at:
            np.testing.assert_allclose(rate, expected, rtol=1e-6)
        else:  # Unchanged since the last estimate.
            assert rate == rates[max(s for s in estimated_at if s < step)]
    assert len({rate for _, rate, _ in seen}) == len(estimated_at)  # The Hessian moved.


def test_power_method_lr_max_increase_bounds_each_rise_of_the_rate(float64):
    # Every estimate sets min(1/λ_max of the dense Hessian, max_increase * the previous rate).
    model, x, y, _ = make_case("mlp", "ce", batch=40)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    callback = PowerMethodLR((x, y), num_samples=40, batch_size=40, every_n_steps=2,
                             max_increase=1.01, tol=1e-12, max_iterations=2000, verbose=0)
    seen = []  # (learning rate, 1/λ_max of the dense Hessian) before each step.

    def record(batch, logs):
        top = np.linalg.eigvalsh(dense.hessian(model, x, y))
        seen.append((float(model.optimizer.learning_rate), 1 / np.max(np.abs(top))))

    recorder = keras.callbacks.LambdaCallback(on_train_batch_begin=record)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[callback, recorder])
    estimates = seen[::2]
    np.testing.assert_allclose(estimates[0][0], estimates[0][1], rtol=1e-6)
    bound = 0
    for (previous, _), (rate, expected) in zip(estimates[:-1], estimates[1:], strict=True):
        np.testing.assert_allclose(rate, min(expected, 1.01 * previous), rtol=1e-6)
        bound += expected > 1.01 * previous * (1 + 1e-6)
    assert 0 < bound < len(estimates) - 1  # The bound held some rises back, not every estimate.


def test_power_method_lr_escapes_a_stale_eigenvector_of_a_lower_eigenvalue(float64):
    # The previous estimate's eigenvector is now the eigenvector of the second eigenvalue: alone
    # it is a fixed point of the power iteration (the Rayleigh quotient stops changing at once).
    model, x, y = least_squares()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    callback = PowerMethodLR((x, y), num_samples=64, tol=1e-10, max_iterations=500, verbose=0)
    callback.set_model(model)
    eigenvalues, eigenvectors = np.linalg.eigh(2 * x.T @ x / len(x))
    callback.eigenvector = tf.constant(eigenvectors[:, -2][None])
    np.testing.assert_allclose(callback.estimate(), eigenvalues[-1], rtol=1e-8)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1 / eigenvalues[-1],
                               rtol=1e-8)


def test_power_method_lr_scales_a_schedule_keeping_its_shape(float64, tmp_path):
    model, x, y = least_squares()
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    model.compile(optimizer=keras.optimizers.SGD(decay), loss="mse")
    callback = PowerMethodLR((x, y), num_samples=64, tol=1e-10, max_iterations=500, verbose=0)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    lambda_max = np.linalg.eigvalsh(2 * x.T @ x / len(x))[-1]
    # 4 steps per epoch: the rate logged after epoch e is (1/λ_max) * 0.5^(4e/10).
    np.testing.assert_allclose(history.history["learning_rate"],
                               [0.5**0.4 / lambda_max, 0.5**0.8 / lambda_max], rtol=1e-6)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(float(restored.optimizer.learning_rate),
                               float(model.optimizer.learning_rate), rtol=1e-6)


def test_power_method_lr_warns_when_the_power_iteration_does_not_converge(float64):
    model, x, y = least_squares()
    callback = PowerMethodLR((x, y), num_samples=64, tol=1e-12, max_iterations=2, verbose=0)
    with pytest.warns(UserWarning, match="did not reach tol=1e-12 in max_iterations=2"):
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[callback])
    lambda_max = np.linalg.eigvalsh(2 * x.T @ x / len(x))[-1]
    assert callback.lambda_max < lambda_max  # The Rayleigh quotient approaches from below.


def test_power_method_lr_keeps_the_rate_when_the_curvature_is_not_finite(float64):
    model, x, y, _ = make_case("mlp", "ce", batch=40)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    callback = PowerMethodLR((x, y), num_samples=40, batch_size=40, tol=1e-12,
                             max_iterations=2000, verbose=0)
    callback.set_model(model)
    kernel = model.layers[0].kernel
    finite = kernel.numpy()
    kernel.assign(np.full(finite.shape, np.nan))
    with pytest.warns(UserWarning, match="λ_max = nan; the learning rate is left unchanged"):
        callback.estimate()
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)
    kernel.assign(finite)  # The next estimate starts afresh, not from a NaN eigenvector.
    expected = np.max(np.abs(np.linalg.eigvalsh(dense.hessian(model, x, y))))
    np.testing.assert_allclose(callback.estimate(), expected, rtol=1e-6)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1 / expected, rtol=1e-6)


def snapshot(model):
    return [v.numpy().copy() for v in model.variables + model.optimizer.variables]


def test_measurements_leave_weights_and_optimizer_state_untouched(float64):
    model, x, y, _ = make_case("bn_dropout", "ce", batch=32)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)  # Optimizer slots and BatchNorm statistics in use.
    before = snapshot(model)
    spectrum_callback = HessianSpectrum((x, y), k=2, per_layer=True, verbose=0)
    spectrum_callback.set_model(model)
    spectrum_callback.measure()
    for old, new in zip(before, snapshot(model), strict=True):
        np.testing.assert_array_equal(old, new)
    lr_callback = PowerMethodLR((x, y), verbose=0)
    lr_callback.set_model(model)
    lr_callback.estimate()
    changed = [i for i, (old, new) in enumerate(zip(before, snapshot(model), strict=True))
               if not np.array_equal(old, new)]
    learning_rate = model.optimizer._learning_rate
    assert [model.variables + model.optimizer.variables][0][changed[0]] is learning_rate
    assert len(changed) == 1


def test_hessian_spectrum_repeats_log_the_mean_and_spread_over_disjoint_samples(float64):
    # repeats=2 of 20 examples: examples 0-19 and 20-39, each measured; the log holds the mean
    # of their top eigenvalues and its standard deviation, against dense Hessians.
    model, x, y, _ = make_case("mlp", "ce", batch=50)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    callback = HessianSpectrum((x, y), k=1, num_samples=20, batch_size=8, repeats=2, verbose=0)
    callback.set_model(model)
    values = callback.measure()
    tops = [np.linalg.eigvalsh(dense.hessian(model, x[part], y[part]))[-1]
            for part in (slice(0, 20), slice(20, 40))]
    np.testing.assert_allclose(values["hessian_top_1"], np.mean(tops), rtol=1e-6)
    np.testing.assert_allclose(values["hessian_top_1_std"], np.std(tops, ddof=1),
                               atol=1e-6 * np.mean(tops))
    assert set(values) == set(callback._names())
    with pytest.raises(ValueError, match="2 repeats of 30 samples need 60 examples; the data "
                                         "hold 50"):
        HessianSpectrum((x, y), num_samples=30, repeats=2)


def test_hessian_spectrum_of_the_kfac_matrix(float64):
    # curvature="kfac": the K-FAC matrix's top eigenvalues, against its dense matrix.
    model, x, y, _ = make_case("mlp", "ce", batch=40)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    callback = HessianSpectrum((x, y), k=2, num_samples=40, batch_size=40, verbose=0,
                               curvature="kfac")
    callback.set_model(model)
    values = callback.measure()
    matrix = kronecker.dense_matrix(model, x, y).numpy()
    eigenvalues = np.linalg.eigvalsh(matrix)
    np.testing.assert_allclose([values["kfac_top_1"], values["kfac_top_2"]],
                               eigenvalues[::-1][:2], rtol=1e-6)


def test_hessian_spectrum_logs_plots_and_histograms(float64, tmp_path):
    model, x, y, _ = make_case("mlp", "ce", batch=40)
    callback = HessianSpectrum((x, y), every_n_epochs=2, k=3, num_samples=32, batch_size=16,
                               per_layer=True, png_dir=str(tmp_path / "png"),
                               tensorboard_log_dir=str(tmp_path / "tb"), verbose=0)
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[callback])
    keys = {"hessian_top_1", "hessian_top_2", "hessian_top_3", "hessian_min", "hessian_trace",
            "hessian_negative_fraction", "hessian_condition"}
    per_layer = {f"hessian_{kind}/{layer.name}" for layer in model.layers
                 for kind in ("top_1", "mean_diagonal")}
    # Measured after epochs 2 and 4 only: History keeps the keys from the epochs that had them.
    assert keys | per_layer <= set(history.history)
    assert len(history.history["hessian_top_1"]) == 2
    top = [history.history[f"hessian_top_{i}"][-1] for i in (1, 2, 3)]
    assert top[0] >= top[1] >= top[2] >= history.history["hessian_min"][-1]
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == ["hessian_density_epoch_002.png",
                                      "hessian_density_epoch_004.png"]
    for path in pngs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        with Image.open(path) as image:
            image.verify()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    histograms = [value.tag for event in tf.compat.v1.train.summary_iterator(str(events[0]))
                  for value in event.summary.value]
    assert histograms.count("hessian_density") == 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(curvature="fisher"), "`curvature` must be one of"),
    (dict(scale=0.0), "`scale` must be a number > 0"),
    (dict(every_n_epochs=0), "`every_n_epochs` must be a positive integer; received 0"),
    (dict(every_n_steps=2.5), "`every_n_steps` must be a positive integer; received 2.5"),
    (dict(max_increase=0.5), r"`max_increase` must be a number >= 1 .*; received 0.5"),
])
def test_power_method_lr_bad_arguments(float64, kwargs, match):
    _, x, y, _ = make_case("mlp", "ce")
    with pytest.raises(ValueError, match=match):
        PowerMethodLR((x, y), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(curvature="newton"), "`curvature` must be one of"),
    (dict(k=0), "`k` must be a positive integer"),
    (dict(num_samples=0), "`num_samples` must be a positive integer"),
])
def test_hessian_spectrum_bad_arguments(float64, kwargs, match):
    _, x, y, _ = make_case("mlp", "ce")
    with pytest.raises(ValueError, match=match):
        HessianSpectrum((x, y), **kwargs)


@pytest.mark.parametrize("kind", ["multi_input", "subclassed", "cnn"])
def test_callbacks_on_functional_subclassed_and_dataset_data(float64, kind):
    # Functional (two inputs), subclassed and convolutional models; data as a tf.data.Dataset,
    # capped at 20 of its 40 examples.
    model, x, y, _ = make_case(kind, "ce", batch=40)
    inputs = tuple(x) if isinstance(x, list) else x
    dataset = tf.data.Dataset.from_tensor_slices((inputs, y)).batch(16)
    spectrum_callback = HessianSpectrum(dataset, k=2, num_samples=20, verbose=0)
    lr_callback = PowerMethodLR(dataset, num_samples=20, verbose=0)
    assert sum(len(batch[1]) for batch in spectrum_callback.batches) == 20
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[lr_callback, spectrum_callback])
    assert {"lambda_max", "learning_rate", "hessian_top_2", "hessian_trace"} <= set(
        history.history)
    # The callbacks measured the first 20 examples: the same eigenvalue as the operator on them.
    from keras_secondorder import curvature, spectrum

    first = (tf.nest.map_structure(lambda a: a[:20], inputs), y[:20])
    expected = spectrum.lanczos(curvature.HessianOperator(model, first), k=2)
    np.testing.assert_allclose(history.history["hessian_top_1"][-1],
                               float(expected.largest[0]), rtol=1e-6)
