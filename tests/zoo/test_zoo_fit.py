"""The model zoo in model.fit: curvature callbacks, curvature optimizers, saving and export."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_secondorder.callbacks import HessianSpectrum, PowerMethodLR
from keras_secondorder.curvature import dense
from keras_secondorder.optimizers import (
    KFAC,
    SDLM,
    EquilibratedSGD,
    HessianFree,
    LevenbergMarquardt,
    SaddleFreeNewton,
)
from zoo import models as zoo


def fit_data(case):
    return (case.x, case.y) if case.sample_weight is None else (case.x, case.y,
                                                                case.sample_weight)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("name", zoo.ZOO)
def test_curvature_callbacks_in_fit_log_the_dense_spectrum(float64, name, jit_compile):
    case = zoo.make(name, optimizer=keras.optimizers.SGD(1e-3))
    case.model.compile(optimizer=case.model.optimizer, loss=case.loss, jit_compile=jit_compile)
    data = fit_data(case)
    exact = np.linalg.eigvalsh(dense.hessian(case.model, *data))
    spectrum_callback = HessianSpectrum(data, k=2, num_samples=zoo.BATCH, verbose=0)
    rate = PowerMethodLR(data, num_samples=zoo.BATCH, tol=1e-12, max_iterations=3000, verbose=0)
    history = case.model.fit(*data[:2], sample_weight=case.sample_weight, epochs=1,
                             batch_size=zoo.BATCH, verbose=0,
                             callbacks=[rate, spectrum_callback])
    # PowerMethodLR measured before the step, HessianSpectrum after it.
    np.testing.assert_allclose(rate.lambda_max, exact[np.argmax(np.abs(exact))], rtol=1e-6)
    after = np.linalg.eigvalsh(dense.hessian(case.model, *data))
    np.testing.assert_allclose(history.history["hessian_top_1"][0], after[-1], rtol=1e-6)
    threshold = -1e-3 * np.abs(after).max()
    np.testing.assert_allclose(history.history["hessian_negative_fraction"][0],
                               np.mean(after < threshold), atol=1e-12)


OPTIMIZERS = {
    "sdlm": lambda: SDLM(learning_rate=0.05, curvature_samples=zoo.BATCH, diagonal="ggn"),
    "esgd": lambda: EquilibratedSGD(learning_rate=0.05, update_every=2),
    "hessian_free": lambda: HessianFree(damping=1.0, curvature_fraction=1.0,
                                        max_cg_iterations=10),
    # Kronecker blocks for Dense, Conv1D, Conv2D and Embedding layers, diagonal blocks for the
    # rest (recurrent and attention kernels, normalization, custom layers).
    "kfac": lambda: KFAC(damping_period=2, inverse_update_period=2),
    # The dense Gauss-Newton matrix from per-example backward passes, every layer alike.
    "levenberg_marquardt": lambda: LevenbergMarquardt(damping=0.1),
    "saddle_free_newton": lambda: SaddleFreeNewton(krylov_steps=4),
}
# Hessian products need no Gauss-Newton split: ESGD and SaddleFreeNewton train every model.
TRAINING = [(name, optimizer) for name in zoo.ZOO for optimizer in OPTIMIZERS
            if name in zoo.SPLIT or optimizer in ("esgd", "saddle_free_newton")]


@pytest.mark.parametrize("name,optimizer", TRAINING)
def test_curvature_optimizers_train_save_resume_and_export(name, optimizer, tmp_path):
    case = zoo.make(name, optimizer=OPTIMIZERS[optimizer]())
    data = fit_data(case)
    initial = case.model.evaluate(*data[:2], sample_weight=case.sample_weight, verbose=0)
    history = case.model.fit(*data[:2], sample_weight=case.sample_weight, epochs=4,
                             batch_size=zoo.BATCH, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and history.history["skipped_steps"][-1] == 0
    assert case.model.evaluate(*data[:2], sample_weight=case.sample_weight, verbose=0) < initial
    # Saved mid-training and resumed: the same weights as training on without a break.
    path = os.path.join(tmp_path, "model.keras")
    case.model.save(path)
    resumed = keras.saving.load_model(path)
    # Keras saves no Dropout seed state: the resumed model gets the running one's, so that both
    # draw the same masks and any difference is the optimizer's state.
    for kept, reloaded in zip(case.model.non_trainable_variables,
                              resumed.non_trainable_variables, strict=True):
        if "seed_generator_state" in kept.path:
            reloaded.assign(kept)
    for model in (case.model, resumed):
        model.fit(*data[:2], sample_weight=case.sample_weight, epochs=1, batch_size=zoo.BATCH,
                  verbose=0, shuffle=False)
    for kept, reloaded in zip(case.model.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(reloaded, kept, rtol=1e-5, atol=1e-7)
    # Exported for serving: TensorFlow alone computes the model's predictions.
    case.model.export(os.path.join(tmp_path, "served"), verbose=False)
    served = tf.saved_model.load(os.path.join(tmp_path, "served"))
    integer = np.issubdtype(case.x.dtype, np.integer)
    outputs = served.serve(tf.constant(case.x, "int32" if integer else keras.config.floatx()))
    expected = case.model.predict(case.x, verbose=0)
    for actual, wanted in zip(tf.nest.flatten(outputs), tf.nest.flatten(expected), strict=True):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", zoo.RECURRENT)
def test_curvature_optimizer_on_a_recurrent_model_falls_back_from_xla(name, tmp_path):
    runs = []
    for jit_compile in (True, False):
        case = zoo.make(name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            case.model.compile(optimizer=OPTIMIZERS["sdlm"](), loss=case.loss,
                               jit_compile=jit_compile)
        xla_warnings = [w for w in caught if "jit_compile=False" in str(w.message)]
        assert len(xla_warnings) == jit_compile and case.model.jit_compile is False
        case.model.fit(case.x, case.y, epochs=2, batch_size=zoo.BATCH, verbose=0, shuffle=False)
        runs.append(case.model)
    for xla_asked, graph in zip(runs[0].get_weights(), runs[1].get_weights(), strict=True):
        np.testing.assert_array_equal(xla_asked, graph)
    # The saved compile settings ask for XLA again; the reloaded model falls back the same way.
    path = os.path.join(tmp_path, "model.keras")
    runs[0].save(path)
    with pytest.warns(UserWarning, match="jit_compile=False"):
        reloaded = keras.saving.load_model(path)
    assert reloaded.jit_compile is False and type(reloaded.optimizer) is SDLM
