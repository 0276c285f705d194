"""Becker-LeCun diagonal back-propagation ("bbprop") of the Gauss-Newton diagonal.

A layer computes `a = A(x; w)` (its pre-activation, affine in `x` and in `w`) and `y = f(a)`
(elementwise). Back-propagating second derivatives with the square-Jacobian (Gauss-Newton)
approximation of Becker & LeCun (1989) and LeCun et al. (1998):

    h_a = f'(a)² ⊙ h_y                 (drops f''(a) ∂E/∂y: the Gauss-Newton part)
    h_x = (∂a/∂x)^⊙2ᵀ h_a              (squared Jacobian; drops cross terms between paths)
    h_w = (∂a/∂w)^⊙2ᵀ h_a              (a shared weight sums over its connections)

starting from the diagonal of the loss Hessian at the outputs `z`, `h_z = c_n diag(H_n)`
(`output_losses`). In Dense, convolution and sum-pooling layers every Jacobian entry is a single
weight (`∂a/∂x`) or a single input (`∂a/∂w`), so the squared Jacobians are the layer's own
vector-Jacobian products with squared weights and squared inputs:

    (∂a/∂x)^⊙2ᵀ h = VJP_x[x -> A(x; w ⊙ w)](h),    (∂a/∂w)^⊙2ᵀ h = VJP_w[w -> A(x ⊙ x; w)](h).

One bbprop costs about one backward pass. It equals the exact Gauss-Newton diagonal when each
weight reaches a single output through a single path (one Dense layer, any matching loss), and
approximates it otherwise (the cross terms it drops; `tests/curvature/test_bbprop.py` measures
the gap).

Supported: a chain of layers (Sequential, or a functional model without branches) made of
`Dense`, convolutions (`Conv1D/2D/3D` and transposed), LeNet's `TrainableSubsampling` and
`ConnectionTableConv2D`, max and average pooling (`padding="valid"` for average), global
pooling, `Flatten`, `Reshape`, `Permute`, padding, cropping, `Dropout` and `Activation`, with
elementwise activations (softmax only as the last activation, where the objective splits at its
logits). `unsupported_reason(model)` tells why a model is not covered.

Each layer class has one `LayerRule` (as BackPACK has one module per layer): `AFFINE` for layers
`f(A(x; w))`, `LINEAR` and its subclasses for weightless linear layers. `register_rule(cls,
rule)` adds one, as `models.lenet` does for `TrainableSubsampling` and a user can for a custom
layer of the same form.
"""

import math
from typing import NamedTuple

import keras
import tensorflow as tf

from keras_secondorder._keras_compat import (
    BaseConv,
    BaseConvTranspose,
    BaseGlobalPooling,
    BasePooling,
    Functional,
    call_has_training_arg,
    inbound_node_count,
    with_linear_activation,
)
from keras_secondorder.curvature.layer_rules import RuleRegistry
from keras_secondorder.curvature.output_losses import rows
from keras_secondorder.curvature.output_space import penalty_diagonal

_ZERO = tf.UnconnectedGradients.ZERO


class LayerRule:
    """How bbprop passes one kind of layer; one instance per layer class, in `register_rule`.

    A linear layer (no activation): `y = c J x`, with every nonzero entry of `J` equal to 1 and
    one constant `c`, so `h_x = (c J)^⊙2ᵀ h_y = c (c J)ᵀ h_y`: the layer's own backward pass
    of `h_y`, times `c` (`constant`). Weights enter as for an affine layer.
    """

    affine = False

    def constant(self, layer, x, training):
        """`c`, the value of the Jacobian's nonzero entries (1 unless overridden)."""
        return 1.0

    def unsupported_reason(self, layer):
        """Why this particular layer is not covered (a setting), or `None`."""
        return None


class AffineRule(LayerRule):
    """`y = f(A(x; w))`: `A` affine in `x` and in `w`, `f` the layer's elementwise `activation`.

    `h_a = f'(a)² ⊙ h_y`, then `h_x = VJP_x[x -> A(x; w ⊙ w)](h_a)` and
    `h_w = VJP_w[w -> A(x ⊙ x; w)](h_a)`: every Jacobian entry of `A` is one weight or one input.
    """

    affine = True


class PoolingRule(LayerRule):
    """Max pooling (`c = 1`) and average pooling over `k` inputs (`c = 1/k`, valid padding)."""

    def constant(self, layer, x, training):
        return 1.0 / math.prod(layer.pool_size) if layer.pool_mode == "average" else 1.0

    def unsupported_reason(self, layer):
        if layer.pool_mode == "average" and layer.padding != "valid":
            return "padding=same (the border windows average fewer inputs)"
        return None


class GlobalPoolingRule(LayerRule):
    """Global max pooling (`c = 1`) and global average pooling (`c = 1/positions`)."""

    averages = (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
                keras.layers.GlobalAveragePooling3D)

    def constant(self, layer, x, training):
        if not isinstance(layer, self.averages):
            return 1.0
        spatial = (tf.shape(x)[2:] if layer.data_format == "channels_first"
                   else tf.shape(x)[1:-1])
        return 1.0 / tf.cast(tf.reduce_prod(spatial), x.dtype)


class DropoutRule(LayerRule):
    """Dropout: entries 0 or `c = 1/(1 - rate)` in training, the identity otherwise."""

    def constant(self, layer, x, training):
        return 1.0 / (1.0 - layer.rate) if training else 1.0


AFFINE = AffineRule()
LINEAR = LayerRule()
_RULES = RuleRegistry(LayerRule, "a bbprop.LayerRule (AFFINE, LINEAR or a subclass's instance)")


def register_rule(layer_class, rule):
    """Makes bbprop pass layers of `layer_class` by `rule` (e.g. `AFFINE` or `LINEAR`).

    It covers subclasses that keep `layer_class.call`; a subclass with a `call` of its own may
    compute anything and needs a registration of its own. A custom layer with weights is
    covered when it computes `activation(A(x; w))` with `A` affine in its input and in its
    weights, each Jacobian entry a single weight or input (as Dense and convolutions do), and
    `activation` an elementwise function stored as `layer.activation`: register it with
    `AFFINE`.
    """
    _RULES.register(layer_class, rule)


def rule_for(layer):
    """The `LayerRule` of `layer`, or `None` when no registered class computes its `call`."""
    return _RULES.lookup(layer)


for _class in (keras.layers.Dense, BaseConv, BaseConvTranspose, keras.layers.Activation):
    register_rule(_class, AFFINE)
for _class in (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute,
               keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D,
               keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D):
    register_rule(_class, LINEAR)
register_rule(BasePooling, PoolingRule())
register_rule(BaseGlobalPooling, GlobalPoolingRule())
register_rule(keras.layers.Dropout, DropoutRule())
_NOT_ELEMENTWISE = (keras.activations.softmax, keras.activations.log_softmax)


def unsupported_reason(model):
    """Why bbprop does not cover `model`, or `None` when it does."""
    try:
        layer_chain(model)
    except ValueError as error:
        return str(error)
    return None


def bbprop_diagonal(objective, batch):
    """The bbprop Gauss-Newton diagonal on one `Batch`, shaped like `objective.variables`.

    Raises:
        ValueError: the model is not covered (see `unsupported_reason`).
    """
    layers = layer_chain(objective.model)
    params = objective.params()
    records, x, num_losses = forward(objective, batch, layers, params)
    output_loss = objective.output_loss(batch, x)
    z = output_loss.split(x)
    at_logits = z is not x  # The split is before the last activation (softmax, sigmoid).
    if at_logits and z is not records[-1][4]:
        raise ValueError(
            f"bbprop could not find the logits of the last layer {layers[-1].name!r}: make the "
            "softmax/sigmoid that layer's activation, or output logits (from_logits=True)."
        )
    # h_z = c_n diag(H_n) = c_n sum_k S_nk²: the loss Hessian's diagonal in output space.
    z_rows = tf.stop_gradient(rows(z))
    row_weights = output_loss.row_weights(batch.y, z_rows, batch.sample_weight)
    diagonal_h = tf.add_n([tf.square(output_loss.hessian_sqrt_column(z_rows, k))
                           for k in range(z_rows.shape[-1])])
    h = tf.reshape(row_weights[:, None] * diagonal_h, tf.shape(z))
    # Backward, layer by layer.
    diagonals = {}
    for index in reversed(range(len(records))):
        layer, call, weights, x, pre_activation = records[index]
        rule = rule_for(layer)
        if rule.affine and not (at_logits and index == len(records) - 1):
            h = tf.square(_derivative(layer, pre_activation)) * h  # h_a = f'(a)² h_y
        if weights:
            diagonals.update(zip((id(v) for v in layer.trainable_variables),
                                 call.weight_curvature(weights, x, h), strict=True))
        if index > 0:
            h = call.input_curvature(weights, x, h) * rule.constant(layer, x,
                                                                    objective.training)
    return by_variable(objective, params, diagonals, num_losses)


def by_variable(objective, params, diagonals, num_losses):
    """`diagonals` (by variable id; zero where missing) + the weight penalties' diagonal."""
    result = [diagonals.get(id(v), tf.zeros_like(p))
              for v, p in zip(objective.variables, params, strict=True)]
    penalty = penalty_diagonal(objective, params, num_losses)
    return result if penalty is None else [r + p for r, p in zip(result, penalty, strict=True)]


class LayerRecord(NamedTuple):
    """One layer of a forward pass: its `PreActivation`, weights, input and pre-activation."""

    layer: keras.layers.Layer
    call: "PreActivation"
    weights: list
    x: tf.Tensor
    pre_activation: tf.Tensor


def forward(objective, batch, layers, params):
    """Runs the chain `layers` on `batch.x` with the values `params` of the variables.

    Returns:
        `(records, outputs, num_losses)`: one `LayerRecord` per layer, the model's outputs and
        the number of weight-penalty losses the layers added.
    """
    values = dict(zip((id(v) for v in objective.model.trainable_variables),
                      objective._trainable_values(params), strict=True))
    x = tf.nest.flatten(batch.x)[0]
    records, num_losses = [], 0
    for layer in layers:
        call = PreActivation(layer, objective.training)
        weights = [values[id(v)] for v in layer.trainable_variables]
        pre_activation, losses = call(weights, x)
        num_losses += len(losses)
        records.append(LayerRecord(layer, call, weights, x, pre_activation))
        x = layer.activation(pre_activation) if rule_for(layer).affine else pre_activation
    return records, x, num_losses


class PreActivation:
    """`(weights, x) -> (A(x; weights), losses)`: the layer without its activation."""

    def __init__(self, layer, training):
        self.layer = _without_activation(layer)
        self.state = [v.value for v in layer.non_trainable_variables]
        self.kwargs = {"training": training} if call_has_training_arg(layer) else {}

    def __call__(self, weights, x):
        y, _, losses = self.layer.stateless_call(weights, self.state, x, return_losses=True,
                                                 **self.kwargs)
        return y, losses

    def weight_curvature(self, weights, x, h):
        """`h_w = VJP_w[w -> A(x ⊙ x; w)](h_a)`."""
        squared_inputs = tf.square(x)
        return _vjp(lambda w: self(w, squared_inputs)[0], weights, h)

    def input_curvature(self, weights, x, h):
        """`h_x = VJP_x[x -> A(x; w ⊙ w)](h_a)`."""
        squared_weights = [tf.square(w) for w in weights]
        return _vjp(lambda inputs: self(squared_weights, inputs[0])[0], [x], h)[0]


def _without_activation(layer):
    """`layer`, or for an affine one a copy (same variables) with a linear activation."""
    return with_linear_activation(layer) if rule_for(layer).affine else layer


def _vjp(function, primals, cotangent):
    with tf.GradientTape() as tape:
        tape.watch(primals)
        output = function(primals)
    return tape.gradient(output, primals, output_gradients=cotangent, unconnected_gradients=_ZERO)


def _derivative(layer, pre_activation):
    """`f'(a)` of an elementwise activation: the gradient of `sum(f(a))`."""
    if layer.activation in _NOT_ELEMENTWISE:
        raise ValueError(
            f"bbprop needs elementwise activations; layer {layer.name!r} applies "
            f"{layer.activation.__name__} other than as the last activation before a matching "
            "cross-entropy loss."
        )
    return _vjp(lambda a: layer.activation(a[0]), [pre_activation],
                tf.ones_like(pre_activation))[0]


def layer_chain(model):
    """The model's layers in order, checked to form a supported chain (ValueError otherwise)."""
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            f"bbprop needs a Sequential or functional model; {type(model).__name__} is "
            "subclassed, so its layer graph is not known."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("bbprop needs a model with one input and one output.")
    layers, previous = [], model.inputs[0]
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        _check_layer(layer)
        if inbound_node_count(layer) != 1 or layer.input is not previous:
            raise ValueError(
                f"bbprop needs the layers to form a chain; layer {layer.name!r} is shared or "
                "reads something other than the previous layer's output."
            )
        layers.append(layer)
        previous = layer.output
    if not layers or previous is not model.outputs[0]:
        raise ValueError("bbprop needs the last layer's output to be the model's output.")
    for layer in layers[:-1]:
        if rule_for(layer).affine and layer.activation in _NOT_ELEMENTWISE:
            raise ValueError(
                f"bbprop needs elementwise activations; layer {layer.name!r} applies "
                f"{layer.activation.__name__} before the last layer."
            )
    return layers


def _check_layer(layer):
    rule = rule_for(layer)
    reason = None if rule is None else rule.unsupported_reason(layer)
    if rule is None or reason is not None:
        raise ValueError(
            f"bbprop does not support layer {layer.name!r} ({type(layer).__name__}"
            f"{', ' + reason if reason else ''}); it supports Dense, convolutions, max and "
            "(valid) average pooling, global pooling, Flatten, Reshape, Permute, padding, "
            "cropping, Dropout and Activation layers, and the layers registered with "
            "bbprop.register_rule."
        )
