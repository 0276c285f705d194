"""`keras_secondorder.Model`: a `keras.Model` whose train step gives the optimizer curvature."""

import warnings

import keras

from keras_secondorder._keras_compat import (
    Functional,
    functional_init_arguments,
    functional_structure,
    has_recurrent_layer,
    register_under_same_name,
)
from keras_secondorder.curvature.batch import BatchCurvature
from keras_secondorder.optimizers.curvature_optimizer import bound_optimizer

_FUNCTIONAL_CLASSES = {}


@keras.saving.register_keras_serializable(package="keras_secondorder")
class Model(keras.Model):
    """A `keras.Model` whose train step hands curvature optimizers the current batch.

    Build it like a `keras.Model`: functionally, `Model(inputs, outputs)`, or by subclassing
    (`class Net(keras_secondorder.Model)` with `call`). For an existing Sequential or functional
    model use `keras_secondorder.wrap(model)`.

    With a `CurvatureOptimizer` (`SDLM`, `EquilibratedSGD`, ...), each train step binds a
    `BatchCurvature` (the model, the loss as `compute_loss` defines it, and the batch's `x`, `y`
    and `sample_weight`) to the optimizer while it applies the gradients, and adds the
    optimizer's diagnostics (`skipped_steps`, `rate_mean`, ...) to the logs, where History,
    CSVLogger and TensorBoard record them. With any other optimizer the step is exactly
    `keras.Model`'s. Everything else is `keras.Model`'s: metrics, `validation_data`, callbacks,
    `steps_per_execution`, `jit_compile`, `.keras` saving, `export`, `tf.distribute`.

    One exception, made the way Keras treats layers that XLA cannot compile: XLA does not compile
    the second derivatives of Keras's recurrent layers (the `tf.while_loop` over time steps), so
    a curvature optimizer on a model with an `RNN` layer (LSTM, GRU, ...) trains with
    `jit_compile=False`, with a warning, whether `jit_compile` was `True` or `"auto"` (which is
    `True` on a GPU).

    On CPU, keep Keras's default `jit_compile="auto"` (no XLA there): XLA runs the work inside
    `tf.cond` and `tf.while_loop`, where the curvature optimizers' estimation steps and
    conjugate gradient run, many times slower than graph mode (22x for per-example gradients
    on a small ResNet; `benchmarks/xla_modes.py`).
    """

    def __new__(cls, *args, **kwargs):
        # Keras turns a Model subclass built from (inputs, outputs) into a Functional one by
        # rewriting the class's bases for good, which would break the subclassing use of this
        # class afterwards; a per-class (cls, Functional) subclass does the same job locally.
        if functional_init_arguments(args, kwargs) and not issubclass(cls, Functional):
            cls = _functional_class(cls)
        return super().__new__(cls)

    @property
    def jit_compile(self):
        return keras.Model.jit_compile.fget(self)

    @jit_compile.setter
    def jit_compile(self, value):
        # `compile` sets the optimizer before `jit_compile`, so the optimizer is known here.
        optimizer = bound_optimizer(getattr(self, "optimizer", None))
        if value and optimizer is not None and has_recurrent_layer(self):
            warnings.warn(
                f"XLA cannot compile the second derivatives of the recurrent layers of model "
                f"{self.name!r}, which {type(optimizer).__name__} needs: proceeding with "
                "`jit_compile=False`. Pass `jit_compile=False` to `compile` to silence this.",
                stacklevel=2,
            )
            value = False
        keras.Model.jit_compile.fset(self, value)

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        optimizer = bound_optimizer(self.optimizer)
        if optimizer is not None:  # K-FAC sizes its state from the model's layers.
            optimizer.set_model(self)

    def compile_from_config(self, config):
        # Keras's own, which skips (with a warning) a class that overrides `compile`.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        optimizer = bound_optimizer(self.optimizer)
        if optimizer is None:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        curvature = BatchCurvature(self, (x, y, sample_weight), self.trainable_variables,
                                   train_step=True)
        with optimizer.bind(curvature):
            logs = super().train_step(data)
        return {**logs, **optimizer.diagnostics()}


def _functional_class(cls):
    if cls not in _FUNCTIONAL_CLASSES:
        functional = type(cls.__name__, (cls, Functional),
                          {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
        # Saved under the name of the class the user wrote, which reloads through __new__.
        register_under_same_name(functional, cls)
        _FUNCTIONAL_CLASSES[cls] = functional
    return _FUNCTIONAL_CLASSES[cls]


def wrap(model):
    """A `keras_secondorder.Model` on the layers (and weights) of a Sequential or functional model.

    The result shares every layer and variable with `model`: training one trains the other.
    Compile the result (it starts uncompiled).

    Raises:
        ValueError: `model` is subclassed (its graph of layers is unknown); subclass
            `keras_secondorder.Model` instead of `keras.Model`.
    """
    if isinstance(model, Model):
        return model
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            f"wrap() takes a Sequential or functional model; {type(model).__name__} is "
            "subclassed. Make it subclass keras_secondorder.Model instead of keras.Model."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"Model {model.name!r} has no inputs yet. Start it with keras.Input(...) or call it "
            "on a batch before wrapping it."
        )
    if isinstance(model, keras.Sequential):  # One input, one output: keep them unlisted.
        return Model(model.inputs[0], model.outputs[0], name=model.name)
    # The functional model's own structure (a tensor, list or dict), so signatures match.
    return Model(*functional_structure(model), name=model.name)
