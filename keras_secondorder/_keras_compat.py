"""Where the package touches Keras's, TensorFlow's and scikit-learn's internals.

Keras 3 keeps private some of what a curvature library needs: the functional-model machinery,
the loss resolution and reduction of `compile`, the moments of BatchNormalization, the
per-layer dtype policy, the optimizer's cross-replica hooks. Every such access is one named
function or context manager here, and no other module of the package imports `keras.src` or
`tf.__internal__` or reads a private attribute of a Keras or scikit-learn object.
`tests/test_keras_compat.py` pins each of them, so that a release that changes one fails there,
with a message naming it.

The trace-time patches (`twice_differentiable_moments`, `layers_in_variable_dtype`,
`losses_override`) are safe under concurrent tracing: `MirroredStrategy` traces each replica's
step in its own thread, so a patch is installed by the first thread that enters and restored
by the last that leaves (a lock and a count), never by one thread under another's feet.
"""

import contextlib
import threading

import keras
import tensorflow as tf
from keras.src import backend as _backend
from keras.src.backend.tensorflow import nn as _backend_nn
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.pooling.base_global_pooling import BaseGlobalPooling
from keras.src.layers.pooling.base_pooling import BasePooling
from keras.src.losses.loss import reduce_weighted_values, scale_loss_for_distribution
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments
from keras.src.optimizers.optimizer import base_optimizer_keyword_args
from keras.src.saving import object_registration
from keras.src.trainers.compile_utils import CompileLoss

__all__ = [
    "BaseConv",
    "BaseConvTranspose",
    "BaseGlobalPooling",
    "BasePooling",
    "CompileLoss",
    "Functional",
    "base_optimizer_keyword_args",
    "functional_init_arguments",
    "reduce_weighted_values",
    "scale_loss_for_distribution",
]


# Models and layers.

def all_layers(model, include_self=False):
    """Every layer inside `model`, nested ones included (and `model` with `include_self`)."""
    return list(model._flatten_layers(include_self=include_self))


def has_recurrent_layer(model):
    """Whether `model` runs a recurrent layer (a `tf.while_loop` over time steps)."""
    return any(isinstance(layer, keras.layers.RNN) for layer in all_layers(model))


def call_has_training_arg(layer):
    """Whether `layer.call` takes a `training` argument."""
    return layer._call_has_training_arg


def inbound_node_count(layer):
    """How many times `layer` is called in the functional graphs it belongs to."""
    return len(layer._inbound_nodes)


def functional_structure(model):
    """The `(inputs, outputs)` structures (tensor, list or dict) a functional model was built on."""
    return model._inputs_struct, model._outputs_struct


def register_under_same_name(new_class, original):
    """Saves `new_class` under the registered name of `original`, if it has one."""
    name = object_registration.GLOBAL_CUSTOM_NAMES.get(original)
    if name is not None:
        object_registration.GLOBAL_CUSTOM_NAMES[new_class] = name


# Losses.

def compile_loss(model):
    """The `CompileLoss` that `model.compile` made (`None` before compile)."""
    return getattr(model, "_compile_loss", None)


def aggregate_additional_loss(model, loss):
    """One `model.losses` term reduced as `compute_loss` reduces it."""
    return model._aggregate_additional_loss(loss)


def compiled_losses(compile_loss):
    """The entries (`.loss`, `.loss_weights`) of a built `CompileLoss`, one per output."""
    return list(compile_loss._flat_losses)


def loss_function_kwargs(loss):
    """The keyword arguments a `LossFunctionWrapper` passes its function (`from_logits`, ...)."""
    return loss._fn_kwargs


def keras_logits(probabilities):
    """The logits Keras attaches to a softmax or sigmoid output, or `None`."""
    return getattr(probabilities, "_keras_logits", None)


_LOCK = threading.RLock()


@contextlib.contextmanager
def losses_override(model, losses):
    """Makes `model.losses` return `losses` while the context is open.

    As Keras's own stateless (JAX) train step does: the losses of a stateless forward pass
    (activity regularizers) reach `compute_loss` this way. The lock is held while the context
    is open, so concurrent traces of the same model take turns; `compute_loss` does not wait
    on other replicas, so holding it cannot deadlock.
    """
    with _LOCK:
        model._losses_override = list(losses)
        try:
            yield
        finally:
            model._losses_override = []


# Trace-time patches, counted so that concurrent traces share one installation.

_patches = {}  # (id(target), attribute) -> [entrants, original value]


@contextlib.contextmanager
def _shared_setattr(target, attribute, value):
    """Sets `target.attribute = value` for the first entrant; restores it after the last."""
    key = (id(target), attribute)
    with _LOCK:
        if key in _patches:
            _patches[key][0] += 1
        else:
            _patches[key] = [1, getattr(target, attribute)]
            setattr(target, attribute, value)
    try:
        yield
    finally:
        with _LOCK:
            entry = _patches[key]
            entry[0] -= 1
            if entry[0] == 0:
                del _patches[key]
                setattr(target, attribute, entry[1])


def _twice_differentiable_compute_moments(x, axes, keepdims=False):
    # As tf.nn.moments, without its stop_gradient on the mean inside the variance.
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes, keepdims=True)
    if not keepdims:
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    return mean, variance


def twice_differentiable_moments():
    """Makes BatchNorm's batch statistics twice differentiable while the context is open.

    Keras's BatchNormalization (training mode) computes its moments with `tf.nn.moments`,
    which takes the variance around `stop_gradient(mean)`: no value and no first derivative
    changes, but a term of every second derivative is dropped. The replacement gives the same
    values and first derivatives, so another thread's ordinary trace that runs while it is
    installed is unaffected.
    """
    return _shared_setattr(_backend_nn, "_compute_moments", _twice_differentiable_compute_moments)


@contextlib.contextmanager
def layers_in_variable_dtype(model):
    """Runs mixed-precision layers in their variables' dtype (float32) while the context is open.

    Each layer whose compute dtype differs from its variable dtype gets the plain
    variable-dtype policy; layers without mixed precision are left alone.
    """
    with contextlib.ExitStack() as stack:
        for layer in mixed_precision_layers(model):
            stack.enter_context(_shared_setattr(
                layer, "_dtype_policy", keras.DTypePolicy(layer._dtype_policy.variable_dtype)))
        yield


def mixed_precision_layers(model):
    """The layers of `model` (itself included) that compute in another dtype than their variables.

    Only plain `keras.DTypePolicy` ones (`"mixed_float16"`, `"mixed_bfloat16"`): not per-path
    maps, not quantized policies.
    """
    return [layer for layer in all_layers(model, include_self=True)
            if type(layer._dtype_policy) is keras.DTypePolicy
            and layer._dtype_policy.compute_dtype != layer._dtype_policy.variable_dtype]


_interceptions = threading.local()  # .current: (ids of the intercepted layers, intercept)


def _intercepting_call(layer):
    """`layer.call`, or this thread's intercept of it while `intercepted_calls` is open."""
    original = type(layer).call.__get__(layer)

    def call(*args, **kwargs):
        current = getattr(_interceptions, "current", None)
        if current is None or id(layer) not in current[0]:
            return original(*args, **kwargs)
        return current[1](layer, original, *args, **kwargs)

    return call


@contextlib.contextmanager
def intercepted_calls(layers, intercept):
    """Routes this thread's calls of `layers` to `intercept(layer, call, *args, **kwargs)`.

    `call` is the layer's own `call`. Other threads (another replica's trace) keep calling the
    layers as they are: the instance attribute installed here dispatches by thread, and is
    installed by the first entrant and removed by the last.
    """
    previous = getattr(_interceptions, "current", None)
    _interceptions.current = ({id(layer) for layer in layers}, intercept)
    try:
        with contextlib.ExitStack() as stack:
            for layer in layers:
                stack.enter_context(_shared_instance_call(layer))
            yield
    finally:
        _interceptions.current = previous


@contextlib.contextmanager
def _shared_instance_call(layer):
    key = (id(layer), "call")
    with _LOCK:
        if key in _patches:
            _patches[key][0] += 1
        else:
            _patches[key] = [1, None]
            # Bypasses Layer.__setattr__'s tracking: a function, not a layer or a variable.
            layer.__dict__["call"] = _intercepting_call(layer)
    try:
        yield
    finally:
        with _LOCK:
            _patches[key][0] -= 1
            if _patches[key][0] == 0:
                del _patches[key]
                del layer.__dict__["call"]


def with_linear_activation(layer):
    """A shallow copy of `layer` (same variables) whose `activation` is linear.

    A copy, not a temporary change of `layer.activation`: another thread tracing the model at
    the same time (a `MirroredStrategy` replica) must see the layer as it is. The attributes
    are copied by hand: copy.copy would pickle the layer (Keras's `__reduce__` saves its
    weights, which a trace cannot).
    """
    linear = object.__new__(type(layer))
    linear.__dict__.update(layer.__dict__, activation=keras.activations.linear)
    linear.__dict__.pop("call", None)  # Not an intercepted call of the original.
    return linear


# Optimizers.

def unwrap_optimizer(optimizer):
    """The optimizer that takes the steps inside Keras's wrappers (`LossScaleOptimizer`).

    `model.compile` wraps the optimizer in a `LossScaleOptimizer` under a `mixed_float16`
    policy; it scales the loss and the gradients back and calls the inner optimizer's step, so
    the inner one's learning rate and preconditioner are the ones that shape the step.
    """
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


def learning_rate_setting(optimizer):
    """The learning rate as given: a float variable or a `LearningRateSchedule`."""
    return optimizer._learning_rate


def backend_variables(variables):
    """The backend (tf) variables under Keras variables, which `tf.distribute` updates."""
    return [v.value if isinstance(v, _backend.Variable) else v for v in variables]


def all_reduce_sum_gradients(optimizer, pairs):
    """`(gradient, variable)` pairs with the gradients summed over replicas, as Keras does."""
    return optimizer._all_reduce_sum_gradients(pairs)


def distribution_strategy(optimizer):
    """The `tf.distribute` strategy the optimizer was built under."""
    return optimizer._distribution_strategy


def merge_call(function, strategy, *args):
    """Calls `function(strategy, *args)` in cross-replica context (directly when already there)."""
    return tf.__internal__.distribute.interim.maybe_merge_call(function, strategy, *args)


# scikit-learn.

def svc_dual_coefficients(svc):
    """`(dual coefficients, intercepts, gamma)` of a fitted `sklearn.svm.SVC`, as it stores them.

    The public `dual_coef_` and `intercept_` are sign-flipped for two classes; the private
    arrays are the one-vs-one layout of every class count, and `_gamma` the resolved `gamma`.
    """
    return svc._dual_coef_, svc._intercept_, svc._gamma
