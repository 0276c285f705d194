"""Pins every Keras, TensorFlow and scikit-learn internal that `_keras_compat` relies on.

A release that renames or changes one fails here, with the internal's name in the test's name
and message, instead of somewhere deep in a curvature product. Also: the trace-time patches are
safe when threads trace at the same time (as MirroredStrategy's replicas do).
"""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_case, random_like, relative_error
from sklearn.svm import SVC

from keras_secondorder import _keras_compat as compat
from keras_secondorder import curvature
from keras_secondorder.curvature import dense
from keras_secondorder.optimizers import SDLM, EquilibratedSGD


def test_keras_nn_compute_moments_is_what_batch_normalization_calls():
    from keras.src.backend.tensorflow import nn as backend_nn

    calls = []
    original = backend_nn._compute_moments

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    backend_nn._compute_moments = spy
    try:
        layer = keras.layers.BatchNormalization()
        layer(tf.random.normal((4, 3)), training=True)
    finally:
        backend_nn._compute_moments = original
    assert calls, "keras.src.backend.tensorflow.nn._compute_moments is no longer called by " \
                  "BatchNormalization: twice_differentiable_moments patches nothing"


def test_keras_losses_override_replaces_model_losses():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(
        1, kernel_regularizer=keras.regularizers.L2(0.1))(inputs))
    override = [tf.constant(3.0)]
    with compat.losses_override(model, override):
        assert model.losses == override, "Layer._losses_override no longer feeds Layer.losses"
    assert len(model.losses) == 1 and model.losses[0] is not override[0]


def test_keras_attaches_logits_to_softmax_and_sigmoid_outputs():
    logits = tf.constant([[1.0, 2.0, 0.5]])
    for activation in (keras.activations.softmax, keras.activations.sigmoid):
        attached = compat.keras_logits(activation(logits))
        assert attached is not None, f"{activation.__name__} no longer sets _keras_logits"
        np.testing.assert_array_equal(attached, logits)


def test_keras_dtype_policy_is_settable_and_lifts_mixed_precision_layers():
    layer = keras.layers.Dense(2, dtype="mixed_float16")
    model = keras.Sequential([keras.Input((3,)), layer])
    assert layer.compute_dtype == "float16"
    with compat.layers_in_variable_dtype(model):
        assert layer.compute_dtype == "float32", "Layer._dtype_policy no longer sets the dtype"
        assert model(tf.ones((1, 3))).dtype == tf.float32
    assert layer.compute_dtype == "float16"


def test_keras_model_internals():
    inputs = [keras.Input((2,)), keras.Input((3,))]
    outputs = keras.layers.Dense(1)(keras.layers.Concatenate()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(loss="mse", optimizer="sgd")
    assert isinstance(model, compat.Functional)
    assert compat.functional_init_arguments((inputs, outputs), {})
    assert compat.functional_structure(model) == (inputs, outputs)
    assert [layer.name for layer in compat.all_layers(model)] == [layer.name for layer in
                                                                 model.layers]
    assert compat.call_has_training_arg(keras.layers.Dropout(0.5))

    class Plain(keras.layers.Layer):
        def call(self, x):
            return x

    assert not compat.call_has_training_arg(Plain())
    assert isinstance(compat.compile_loss(model), compat.CompileLoss)
    assert [compat.inbound_node_count(layer) for layer in model.layers[2:]] == [1, 1]
    compat.compile_loss(model).build(outputs, outputs)
    (entry,) = compat.compiled_losses(compat.compile_loss(model))
    assert entry.loss.fn is keras.losses.mean_squared_error and entry.loss_weights is None
    crossentropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, axis=-1)
    assert compat.loss_function_kwargs(crossentropy) == {"from_logits": True,
                                                         "ignore_class": None, "axis": -1}
    assert float(compat.aggregate_additional_loss(model, tf.constant(2.0))) == 2.0


def test_keras_custom_object_names_register_a_second_class():
    @keras.saving.register_keras_serializable(package="compat_test")
    class Original(keras.layers.Layer):
        pass

    class Twin(Original):
        pass

    compat.register_under_same_name(Twin, Original)
    assert keras.saving.get_registered_name(Twin) == "compat_test>Original"


def test_keras_losses_reduce_and_scale():
    values = tf.constant([1.0, 2.0, 3.0])
    reduced = compat.reduce_weighted_values(values, tf.constant([1.0, 0.0, 1.0]),
                                            reduction="sum_over_batch_size")
    assert float(reduced) == pytest.approx(4.0 / 3.0)
    assert float(compat.scale_loss_for_distribution(tf.constant(6.0))) == 6.0


def test_keras_layer_base_classes():
    assert isinstance(keras.layers.Conv2D(1, 3), compat.BaseConv)
    assert isinstance(keras.layers.Conv2DTranspose(1, 3), compat.BaseConvTranspose)
    assert isinstance(keras.layers.MaxPooling2D(), compat.BasePooling)
    assert isinstance(keras.layers.GlobalAveragePooling1D(), compat.BaseGlobalPooling)


def test_keras_optimizer_internals():
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5))
    optimizer.build([variable])
    assert isinstance(compat.learning_rate_setting(optimizer),
                      keras.optimizers.schedules.ExponentialDecay)
    assert compat.backend_variables([variable])[0] is variable.value
    assert compat.distribution_strategy(optimizer) is tf.distribute.get_strategy()
    gradient = tf.constant([1.0, 2.0])
    ((summed, _),) = compat.all_reduce_sum_gradients(optimizer, [(gradient, variable.value)])
    np.testing.assert_array_equal(summed, gradient)
    assert compat.merge_call(lambda strategy, a: a + 1, tf.distribute.get_strategy(), 1) == 2
    # The hook the curvature optimizers override: Keras's TensorFlow optimizer defines it.
    from keras.src.backend.tensorflow.optimizer import TFOptimizer

    assert isinstance(optimizer, TFOptimizer) and "_backend_update_step" in vars(TFOptimizer)
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
    assert isinstance(compat.unwrap_optimizer(scaled), keras.optimizers.SGD)
    # Keras's shared docs of the base keywords, which the diagonal optimizers' docstrings use.
    assert "gradient_accumulation_steps:" in compat.base_optimizer_keyword_args
    for documented in (SDLM, EquilibratedSGD):
        assert "{{" not in documented.__doc__ and "        clipnorm: Float." in documented.__doc__


def test_sklearn_svc_private_dual_coefficients():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2)), np.repeat([0, 1, 2], 10)
    svc = SVC(gamma="scale").fit(x, y)
    dual, intercepts, gamma = compat.svc_dual_coefficients(svc)
    np.testing.assert_array_equal(dual, svc.dual_coef_)  # Three classes: no sign flip.
    np.testing.assert_array_equal(intercepts, svc.intercept_)
    assert gamma == pytest.approx(1.0 / (2 * x.var()))


def test_patches_are_undone_by_the_last_of_overlapping_threads():
    from keras.src.backend.tensorflow import nn as backend_nn

    original = backend_nn._compute_moments
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with compat.twice_differentiable_moments():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with compat.twice_differentiable_moments():
            second_in.set()
            first_out.wait(10)
            # The first thread left while this one is inside: the patch must still be there.
            seen["inside"] = backend_nn._compute_moments

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen["inside"] is not original
    assert backend_nn._compute_moments is original


def test_concurrent_traces_of_training_mode_batchnorm_curvature_are_exact(float64):
    # Two threads trace and run Hessian products through training-mode BatchNorm at once; both
    # equal the dense reference, and afterwards every patch is gone.
    from keras.src.backend.tensorflow import nn as backend_nn

    original = backend_nn._compute_moments
    model, x, y, sample_weight = make_case("bn_dropout", "ce")
    vector = random_like(model)
    expected = tf.linalg.matvec(dense.hessian(model, x, y, sample_weight, training=True),
                                curvature.flatten(vector))
    results, start = [None, None], threading.Barrier(2)

    def worker(index):
        product = tf.function(lambda: curvature.hessian_vector_product(
            model, x, y, vector, sample_weight, training=True))
        start.wait(10)
        results[index] = curvature.flatten(product())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for result in results:
        assert relative_error(result, expected) <= 1e-10
    assert backend_nn._compute_moments is original
    assert not model._losses_override


def test_keras_layer_call_goes_through_an_instance_call_attribute():
    # intercepted_calls installs `call` in the layer's __dict__, which Layer.__call__ must use;
    # in this thread only, and it is gone afterwards.
    layer = keras.layers.Dense(2, activation="tanh")
    x = np.ones((1, 3), "float32")
    layer(x)
    seen = []

    def intercept(layer, call, inputs):
        seen.append(threading.current_thread().name)
        return call(inputs) * 0.0

    other = {}
    with compat.intercepted_calls([layer], intercept):
        intercepted = layer(x)
        thread = threading.Thread(target=lambda: other.update(result=layer(x)), name="other")
        thread.start()
        thread.join(20)
    assert np.all(intercepted.numpy() == 0.0) and seen == [threading.current_thread().name]
    assert np.any(other["result"].numpy() != 0.0)  # The other thread called the layer itself.
    assert "call" not in layer.__dict__
    linear = compat.with_linear_activation(layer)
    np.testing.assert_allclose(layer(x), np.tanh(linear(x)), rtol=1e-6)
    assert linear.kernel is layer.kernel and layer.activation is keras.activations.tanh
