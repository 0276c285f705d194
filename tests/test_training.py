"""The fit integration: keras_secondorder.Model and wrap with plain and curvature optimizers."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_secondorder as ks
from keras_secondorder.optimizers import SDLM, EquilibratedSGD

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 6)).astype("float32")
Y = RNG.integers(0, 3, 64)


def sequential(seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(3, activation="softmax")])


def curvature_optimizers():
    # ESGD's first steps divide by |Hv| from one or two Gaussian probes, which can be near zero:
    # with the default damping 1e-4 one weight here moves by 10 in 8 steps and amplifies float
    # rounding 40-fold (perturbing the initial weights by 1e-6 moved the result by 4e-5), so
    # XLA-versus-graph equality depended on the CPU's kernels. Damping 1e-2 bounds the steps
    # (amplification 6-fold, like SDLM's 3-fold), so the comparison tests the integration.
    return [SDLM(0.05, curvature_samples=32, reestimate_every=3),
            EquilibratedSGD(0.05, update_every=2, momentum=0.5, damping=1e-2)]


def weights_after(model, optimizer, epochs=2, **fit_kwargs):
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=fit_kwargs.pop("jit_compile", "auto"),
                  steps_per_execution=fit_kwargs.pop("steps_per_execution", 1))
    history = model.fit(X, Y, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
                        **fit_kwargs)
    return model.get_weights(), history.history


def assert_weights_close(actual, expected, rtol=1e-5):
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=1e-6)


def test_with_a_plain_optimizer_it_is_keras_model():
    ours, _ = weights_after(ks.wrap(sequential()), keras.optimizers.SGD(0.1, momentum=0.9))
    theirs, _ = weights_after(sequential(), keras.optimizers.SGD(0.1, momentum=0.9))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_functional_subclassed_and_wrapped_models_train():
    inputs = keras.Input((6,))
    functional = ks.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))

    class Net(ks.Model):
        def __init__(self):
            super().__init__()
            self.head = keras.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.head(x)

    subclassed = Net()
    subclassed(X[:1])
    base = sequential()
    wrapped = ks.wrap(base)
    assert wrapped.trainable_variables[0] is base.trainable_variables[0]  # Shared weights.
    for model in (functional, subclassed, wrapped):
        assert isinstance(model, ks.Model)
        diagonal = "ggn" if model is subclassed else "bbprop"  # bbprop needs a known graph.
        _, history = weights_after(model, SDLM(0.05, curvature_samples=16, diagonal=diagonal),
                                   epochs=3)
        assert history["loss"][-1] < history["loss"][0]
    np.testing.assert_array_equal(base.get_weights()[0], wrapped.get_weights()[0])


def test_wrap_refuses_subclassed_models():
    class Plain(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclass keras_secondorder.Model"):
        ks.wrap(Plain())


@pytest.mark.parametrize("optimizer", curvature_optimizers(), ids=["sdlm", "esgd"])
def test_plain_keras_model_fails_at_the_first_step_naming_the_fix(optimizer):
    model = sequential()
    model.compile(optimizer, "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"keras_secondorder.wrap\(model\)"):
        model.fit(X, Y, epochs=1, verbose=0)


def test_metrics_validation_and_standard_callbacks(tmp_path):
    model = ks.wrap(sequential())
    log = tmp_path / "log.csv"
    callbacks = [keras.callbacks.CSVLogger(str(log)),
                 keras.callbacks.TensorBoard(str(tmp_path / "tb")),
                 keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"),
                                                 save_best_only=True),
                 keras.callbacks.EarlyStopping(patience=5)]
    _, history = weights_after(model, SDLM(0.05, curvature_samples=16), epochs=2,
                               validation_data=(X[:16], Y[:16]), callbacks=callbacks)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "skipped_steps", "rate_mean",
                "rate_std"):
        assert len(history[key]) == 2, key
    with open(log) as file:
        assert "rate_mean" in next(csv.reader(file))
    assert (tmp_path / "best.keras").exists() and any((tmp_path / "tb").rglob("*.v2"))


@pytest.mark.parametrize("index", [0, 1], ids=["sdlm", "esgd"])
def test_steps_per_execution_and_xla_give_the_same_training(index):
    reference, _ = weights_after(ks.wrap(sequential()), curvature_optimizers()[index])
    compiled, _ = weights_after(ks.wrap(sequential()), curvature_optimizers()[index],
                                jit_compile=True, steps_per_execution=3)
    assert_weights_close(compiled, reference)


@pytest.mark.parametrize("index", [0, 1], ids=["sdlm", "esgd"])
def test_save_and_load_mid_training_resumes_exactly(tmp_path, index):
    uninterrupted, _ = weights_after(ks.wrap(sequential()), curvature_optimizers()[index],
                                     epochs=4)
    model = ks.wrap(sequential())
    weights_after(model, curvature_optimizers()[index], epochs=2)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, ks.Model)
    assert type(restored.optimizer) is type(curvature_optimizers()[index])
    restored.fit(X, Y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert_weights_close(restored.get_weights(), uninterrupted, rtol=1e-6)


def test_savedmodel_export_serves_the_trained_model(tmp_path):
    model = ks.wrap(sequential())
    weights_after(model, SDLM(0.05, curvature_samples=16))
    model.export(str(tmp_path / "saved"))
    served = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(served.serve(X[:5]), model.predict(X[:5], verbose=0), rtol=1e-6)


def test_a_non_finite_batch_is_skipped_and_counted():
    model = ks.wrap(sequential())
    model.compile(SDLM(0.05, curvature_samples=16), "sparse_categorical_crossentropy")
    model.train_on_batch(X[:16], Y[:16])
    before = model.get_weights()
    bad = X[16:32].copy()
    bad[3, 2] = np.nan
    logs = model.train_on_batch(bad, Y[16:32], return_dict=True)
    assert logs["skipped_steps"] == 1.0
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    logs = model.train_on_batch(X[32:48], Y[32:48], return_dict=True)
    assert logs["skipped_steps"] == 1.0 and np.isfinite(logs["loss"])


def mixed_and_plain(policy):
    """`sequential()` built under the mixed-precision `policy`, and its float32 twin."""
    keras.config.set_dtype_policy(policy)
    try:
        mixed = ks.wrap(sequential())
    finally:
        keras.config.set_dtype_policy("float32")
    plain = ks.wrap(sequential())
    plain.set_weights(mixed.get_weights())
    return mixed, plain


def test_mixed_float16_takes_curvature_in_float32():
    mixed, plain = mixed_and_plain("mixed_float16")
    for model in (mixed, plain):
        model.compile("sgd", "sparse_categorical_crossentropy")
    batch = (tf.constant(X[:16]), tf.constant(Y[:16]))
    mixed_diagonal = ks.curvature.diagonal(mixed, batch, "bbprop", training=True)
    plain_diagonal = ks.curvature.diagonal(plain, batch, "bbprop", training=True)
    for a, b in zip(mixed_diagonal, plain_diagonal, strict=True):
        assert a.dtype == tf.float32
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    optimizer = SDLM(0.05, curvature_samples=16)
    _, history = weights_after(mixed, optimizer, epochs=3)
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert all(h.dtype == "float32" for h in optimizer._curvatures)
    assert history["loss"][-1] < history["loss"][0] and history["skipped_steps"][-1] == 0


class _ObjectiveProbe(ks.optimizers.CurvatureOptimizer):
    """Keeps, each step, the step's loss and gradient beside the bound curvature's own."""

    def __init__(self):
        super().__init__(learning_rate=0.0, name="objective_probe")

    def build(self, variables):
        super().build(variables)
        self.gap = {name: self.add_scalar(name) for name in ("loss", "gradient", "recomputed")}

    def curvature_step(self, curvature, gradients, variables, learning_rate):
        objective = curvature.objective
        value, gradient = objective.gradient(objective.params(), curvature.batch)
        gaps = {"loss": tf.abs(curvature.loss() - value),
                "gradient": tf.reduce_max([tf.reduce_max(tf.abs(g - h))
                                           for g, h in zip(gradients, gradient, strict=True)]),
                "recomputed": tf.abs(curvature.loss() - objective.value(objective.params(),
                                                                        curvature.batch))}
        for name, gap in gaps.items():
            self.gap[name].assign(tf.cast(gap, "float32"))


def _check_step_objective(dtype, tolerance):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh",
                                kernel_regularizer=keras.regularizers.L2(1e-2))(inputs)
    hidden = keras.layers.Dropout(0.5)(keras.layers.BatchNormalization()(hidden))
    model = ks.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    probe = _ObjectiveProbe()
    model.compile(probe, "sparse_categorical_crossentropy")
    for start in (0, 16, 32):
        model.train_on_batch(X[start:start + 16].astype(dtype), Y[start:start + 16])
        for name, gap in probe.gap.items():
            assert float(gap) <= tolerance, (name, float(gap))


# Dropout draws its masks from a seed state the train step's forward pass advances: the
# curvature pins the state from before that pass, so that its objective (masks, batch statistics,
# regularizers) is the one the step's gradient and loss were taken of, and `loss()` returns the
# step's own loss, not a second forward pass's.
def test_the_step_curvature_is_the_objective_of_its_gradient_dropout_masks_included():
    _check_step_objective("float32", 1e-6)


def test_the_step_curvature_is_the_objective_of_its_gradient_in_float64(float64):
    _check_step_objective("float64", 1e-13)


def test_a_custom_loop_curvature_evaluates_its_own_loss():
    # A custom loop may hand `scale_loss` another objective (extra terms, another batch): only
    # keras_secondorder.Model's train step, whose loss is the curvature's objective, is reused.
    model = ks.wrap(sequential())
    model.compile("sgd", "sparse_categorical_crossentropy")
    curvature = ks.curvature.BatchCurvature(model, (X[:16], Y[:16]))
    curvature.record_training_loss(tf.constant(123.0))
    expected = keras.losses.sparse_categorical_crossentropy(Y[:16], model(X[:16]))
    np.testing.assert_allclose(curvature.loss(), np.mean(expected), rtol=1e-6)


def test_a_mixed_precision_step_loss_is_not_reused():
    # mixed_bfloat16 needs no loss scaling, so Keras hands the optimizer's own scale_loss the
    # step's bfloat16 loss; the curvature's objective runs in float32 and must evaluate itself.
    model, plain = mixed_and_plain("mixed_bfloat16")
    model.compile("sgd", "sparse_categorical_crossentropy")
    curvature = ks.curvature.BatchCurvature(model, (X[:16], Y[:16]), train_step=True)
    curvature.record_training_loss(tf.constant(123.0))
    expected = keras.losses.sparse_categorical_crossentropy(Y[:16], plain(X[:16]))
    np.testing.assert_allclose(curvature.loss(), np.mean(expected), rtol=1e-6)
