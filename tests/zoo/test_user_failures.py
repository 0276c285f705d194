"""The failures a new user hit on their own models (issue 16), each under a test that failed.

References: closed forms computed by hand (numpy), dense float64 matrices, and Keras's own
behaviour for data formats and settings.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_case

import keras_secondorder as ks
from keras_secondorder import curvature, spectrum
from keras_secondorder.callbacks import HessianSpectrum, PowerMethodLR
from keras_secondorder.curvature import dense
from keras_secondorder.optimizers import SDLM, EquilibratedSGD, HessianFree
from keras_secondorder.spectrum._krylov import NonFiniteCurvatureError
from zoo import models as zoo


# 1. SDLM with a short last batch: the estimation window is counted in samples.
def least_squares(count, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 3))
    return x, x @ np.array([[1.0], [-2.0], [0.5]])


def sdlm_by_hand(x, y, batch, epochs, rate, mu, curvature_samples):
    """SDLM on least squares with numpy: h, the plain mean of whole batches' diagonals until
    they hold curvature_samples examples (the only estimate), whatever gamma."""
    w, h, estimated = np.zeros((3, 1)), np.zeros((3, 1)), 0
    for _ in range(epochs):
        for start in range(0, len(x), batch):
            xb, yb = x[start:start + batch], y[start:start + batch]
            b = len(xb)
            if estimated < curvature_samples:
                blend = b / (estimated + b)
                h = (1 - blend) * h + blend * (2.0 / b * (xb**2).sum(axis=0))[:, None]
                estimated += b
            if estimated >= curvature_samples:
                w = w - rate * (2.0 / b * xb.T @ (xb @ w - yb)) / (h + mu)
    return w


@pytest.mark.parametrize("count", [100, 1000, 600])
def test_sdlm_trains_through_a_short_last_batch(float64, count):
    # batch 32: 100 = 3 x 32 + 4, 1000 = 31 x 32 + 8, 600 = 18 x 32 + 24. The old window,
    # ceil(curvature_samples / current batch), restarted at the short batch and zeroed P.
    x, y = least_squares(count)
    inputs = keras.Input((3,))
    model = ks.Model(inputs, keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(
        inputs))
    model.compile(SDLM(learning_rate=0.02, mu=0.1, curvature_samples=40, reestimate_every=None,
                       diagonal="ggn"), loss="mse")
    history = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
    expected = sdlm_by_hand(x, y, 32, 3, 0.02, 0.1, 40)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=1e-10)
    assert history.history["rate_mean"][-1] > 0
    assert history.history["loss"][2] < history.history["loss"][1] < history.history["loss"][0]


# 2. Mixed precision: PowerMethodLR sees SDLM's preconditioner through LossScaleOptimizer.
def test_power_method_lr_sees_sdlm_inside_the_loss_scale_optimizer():
    _, x, y, _ = make_case("mlp", "ce", batch=40)
    x, y = x.astype("float32"), y.astype("float32")
    keras.utils.set_random_seed(0)
    reference = ks.wrap(keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, "tanh"),
                                          keras.layers.Dense(3, "softmax")]))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = ks.wrap(keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, "tanh"),
                                          keras.layers.Dense(3, "softmax")]))
    finally:
        keras.config.set_dtype_policy(previous)
    mixed.set_weights(reference.get_weights())
    mu = 0.05
    for model in (reference, mixed):
        model.compile(optimizer=SDLM(diagonal="ggn", mu=mu, curvature_samples=40),
                      loss="categorical_crossentropy")
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    hessian = np.asarray(dense.hessian(reference, x, y), np.float64)
    root = np.sqrt(1 / (np.diag(np.asarray(dense.ggn(reference, x, y), np.float64)) + mu))
    expected = np.linalg.eigvalsh(root[:, None] * hessian * root[None, :])[-1]
    callback = PowerMethodLR((x, y), num_samples=40, batch_size=40, tol=1e-7,
                             max_iterations=1000, verbose=0)
    callback.set_model(mixed)
    callback.on_train_begin()
    np.testing.assert_allclose(callback.lambda_max, expected, rtol=1e-3)
    inner = mixed.optimizer.inner_optimizer
    np.testing.assert_allclose(float(inner.learning_rate), 1 / expected, rtol=1e-3)


# 3. PowerMethodLR refuses optimizers whose rate 1/λ_max does not describe.
@pytest.mark.parametrize("optimizer,match", [
    (lambda: keras.optimizers.Adam(), "optimizer is Adam, and its step is not"),
    (lambda: keras.optimizers.SGD(0.1, momentum=0.9), "momentum=0.9 its edge of stability"),
    (lambda: EquilibratedSGD(), "optimizer is EquilibratedSGD"),
])
def test_power_method_lr_refuses_optimizers_it_has_no_rate_for(float64, optimizer, match):
    model, x, y, _ = make_case("mlp", "ce")
    model = ks.wrap(model)
    model.compile(optimizer=optimizer(), loss="categorical_crossentropy")
    before = model.get_weights()
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[PowerMethodLR((x, y), verbose=0)])
    for kept, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(now, kept)  # Refused before the first step.


# 4. The negative fraction: exact for models whose dimension the products budget covers.
@pytest.mark.parametrize("name", zoo.ZOO)
def test_negative_fraction_agrees_with_the_dense_hessian(float64, name):
    case = zoo.make(name)
    data = (case.x, case.y, case.sample_weight)
    eigenvalues = np.linalg.eigvalsh(dense.hessian(case.model, *data))
    exact = np.mean(eigenvalues < -1e-3 * np.abs(eigenvalues).max())
    callback = HessianSpectrum(data if case.sample_weight is not None else data[:2], k=1,
                               num_samples=zoo.BATCH, verbose=0)
    callback.set_model(case.model)
    measured = callback.measure()
    assert abs(measured["hessian_negative_fraction"] - exact) <= 0.05


def test_negative_fraction_by_lanczos_on_a_larger_mlp(float64):
    # 2380 parameters, beyond the defaults' 4 x 60 products: stochastic Lanczos quadrature.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(40, activation="tanh"),
                              keras.layers.Dense(30, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    x, y = rng.normal(size=(200, 20)), rng.integers(0, 10, 200)
    eigenvalues = np.linalg.eigvalsh(dense.hessian(model, x, y))
    exact = np.mean(eigenvalues < -1e-3 * np.abs(eigenvalues).max())
    callback = HessianSpectrum((x, y), k=1, num_samples=200, batch_size=200, verbose=0)
    callback.set_model(model)
    measured = callback.measure()
    assert abs(measured["hessian_negative_fraction"] - exact) <= 0.05
    assert 0 < measured["hessian_negative_fraction_error"] < 0.05


# 8. A model or loss without a Gauss-Newton split is refused when the callback starts.
def test_gauss_newton_spectrum_of_a_multi_output_model_is_refused_before_training(float64):
    case = zoo.make("multi_output")
    before = case.model.get_weights()
    callback = HessianSpectrum((case.x, case.y), curvature="ggn", verbose=0)
    with pytest.raises(ValueError, match="one output and one loss; this one has 2"):
        case.model.fit(case.x, case.y, epochs=1, verbose=0, callbacks=[callback])
    for kept, now in zip(before, case.model.get_weights(), strict=True):
        np.testing.assert_array_equal(now, kept)


# 9. Callback data: what fit's validation_data takes, or an error naming the fix.
@pytest.mark.parametrize("make_data,match", [
    (lambda x, y: [x, y], r"is a list of 2.*Pass tuple\(data\)"),
    (lambda x, y: x, "The curvature needs targets: pass \\(x, y\\)"),
    (lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)), "look unbatched.*dataset.batch"),
])
@pytest.mark.parametrize("callback", [HessianSpectrum, PowerMethodLR])
def test_callback_data_formats_give_errors_naming_the_fix(float64, callback, make_data, match):
    _, x, y, _ = make_case("mlp", "sparse_ce_logits")
    with pytest.raises(ValueError, match=match):
        callback(make_data(x, y), verbose=0)


def test_callback_accepts_a_batched_dataset_with_sample_weights(float64):
    model, x, y, sample_weight = make_case("mlp", "ce")
    dataset = tf.data.Dataset.from_tensor_slices((x, y, sample_weight)).batch(4)
    callback = HessianSpectrum(dataset, k=1, verbose=0)
    callback.set_model(model)
    expected = np.linalg.eigvalsh(dense.hessian(model, x, y, sample_weight))[-1]
    np.testing.assert_allclose(callback.measure()["hessian_top_1"], expected, rtol=1e-8)


# 10. Non-finite and empty data.
def test_nan_data_gives_the_librarys_error_in_lanczos_and_nan_logs_in_fit(float64):
    model, x, y, _ = make_case("mlp", "ce")
    bad = x.copy()
    bad[0, 0] = np.nan
    operator = curvature.HessianOperator(model, (bad, y))
    for estimate in (spectrum.lanczos, spectrum.spectral_density):
        with pytest.raises(NonFiniteCurvatureError, match="non-finite product.*NaN or inf"):
            estimate(operator)
    callback = HessianSpectrum((bad, y), k=1, verbose=0)
    with pytest.warns(UserWarning, match="Logging NaN for this measurement; training goes on"):
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert len(history.history["loss"]) == 2
    assert np.isnan(history.history["hessian_top_1"]).all()


def test_empty_data_is_an_error(float64):
    model, x, y, _ = make_case("mlp", "ce")
    vector = [tf.zeros_like(v) for v in model.trainable_variables]
    with pytest.raises(ValueError, match="holds no examples"):
        curvature.hessian_vector_product(model, x[:0], y[:0], vector)
    with pytest.raises(ValueError, match="holds no examples"):
        curvature.GGNOperator(model, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="holds no examples"):
        HessianSpectrum((x[:0], y[:0]), verbose=0)


# 11. Settings: NumPy scalars accepted, out-of-range values refused with the parameter named.
@pytest.mark.parametrize("make", [
    lambda: SDLM(learning_rate=np.float32(0.01), mu=np.float32(0.1), gamma=np.float64(0.5),
                 curvature_samples=np.int64(100), reestimate_every=np.int32(10)),
    lambda: EquilibratedSGD(np.float32(0.1), update_every=np.int64(5), damping=np.float32(1e-3)),
    lambda: HessianFree(damping=np.float32(2.0), max_cg_iterations=np.int64(20)),
])
def test_numpy_scalars_are_accepted_and_configs_stay_plain(make):
    optimizer = make()
    config = optimizer.get_config()
    import json

    json.dumps({k: v for k, v in config.items() if not isinstance(v, dict)})
    assert type(optimizer).from_config(config).get_config() == config


@pytest.mark.parametrize("make,match", [
    (lambda: EquilibratedSGD(-1.0), "`learning_rate` must be a number >= 0.*received -1.0"),
    (lambda: SDLM(learning_rate=-0.1), "`learning_rate` must be a number >= 0"),
    (lambda: SDLM(mu=float("nan")), "`mu` must be a number >= 0; received nan"),
    (lambda: HessianFree(learning_rate=0.1), "HessianFree takes no `learning_rate`"),
    (lambda: HessianSpectrum(_DATA, batch_size=0), "`batch_size` must be a positive integer"),
    (lambda: HessianSpectrum(_DATA, seed=0.5), "`seed` must be an integer"),
    (lambda: HessianSpectrum(_DATA, density_probes=0), "`density_probes` must be a positive"),
    (lambda: PowerMethodLR(_DATA, tol=-1.0), "`tol` must be a number > 0"),
    (lambda: PowerMethodLR(_DATA, max_iterations=np.float32(3)), "`max_iterations` must be"),
])
def test_out_of_range_settings_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


_DATA = (np.zeros((4, 3)), np.zeros((4, 1)))


# 12. Vectors of the wrong dtype or length.
def test_vectors_of_the_wrong_dtype_or_length_are_refused(float64):
    model, x, y, _ = make_case("mlp", "ce")
    variables = model.trainable_variables
    complex_vector = [tf.complex(tf.zeros_like(v), tf.ones_like(v)) for v in variables]
    with pytest.raises(ValueError, match="real floating-point tensors of the variables' dtype"):
        curvature.hessian_vector_product(model, x, y, complex_vector)
    single = [tf.zeros(v.shape, tf.float32) for v in variables]
    with pytest.raises(ValueError, match=r"parts \[\(0, 'float32'\)"):
        curvature.hessian_vector_product(model, x, y, single)
    # NumPy arrays take the variables' dtype, as Keras converts inputs.
    arrays = [np.ones(v.shape, np.float32) for v in variables]
    expected = tf.linalg.matvec(dense.hessian(model, x, y),
                                tf.ones([sum(np.prod(v.shape) for v in variables)], tf.float64))
    np.testing.assert_allclose(curvature.flatten(curvature.hessian_vector_product(
        model, x, y, arrays)), expected, rtol=1e-10)
    operator = curvature.HessianOperator(model, (x, y))
    with pytest.raises(ValueError, match="flat float64 vector of length 43.*tf.cast"):
        operator.matvec(tf.zeros([43], tf.float32))
    with pytest.raises(ValueError, match="flat float64 vector of length 43"):
        operator.matvec(tf.zeros([42], tf.float64))


# Also: diagonal() compiles once per model and settings.
def test_diagonal_is_traced_once_for_repeated_calls(float64):
    import importlib

    diagonal_module = importlib.import_module("keras_secondorder.curvature.diagonal")

    model, x, y, _ = make_case("cnn", "ce")
    first = curvature.diagonal(model, (x, y), "ggn")
    _, compiled = diagonal_module._compiled_diagonal(model, None, None, False)
    traces = compiled.experimental_get_tracing_count()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # No retracing warning either.
        second = curvature.diagonal(model, (x, y), "ggn")
    assert compiled.experimental_get_tracing_count() == traces
    np.testing.assert_array_equal(curvature.flatten(second), curvature.flatten(first))

