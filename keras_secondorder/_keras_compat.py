"""Where the package reads Keras's internals: each access in one named function.

Keras 3 keeps some of what a curvature library needs private: the layers nested inside a model
(`_flatten_layers`) and the optimizer that a wrapper such as `LossScaleOptimizer` hides. The
functions here are the only places outside Keras that know those names.
"""

import keras


def all_layers(model):
    """Every layer inside `model`, nested ones included (the model itself excluded)."""
    return list(model._flatten_layers(include_self=False))


def has_recurrent_layer(model):
    """Whether `model` runs a recurrent layer (a `tf.while_loop` over time steps)."""
    return any(isinstance(layer, keras.layers.RNN) for layer in all_layers(model))


def unwrap_optimizer(optimizer):
    """The optimizer that takes the steps inside Keras's wrappers (`LossScaleOptimizer`).

    `model.compile` wraps the optimizer in a `LossScaleOptimizer` under a `mixed_float16`
    policy; it scales the loss and the gradients back and calls the inner optimizer's step, so
    the inner one's learning rate and preconditioner are the ones that shape the step.
    """
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer
