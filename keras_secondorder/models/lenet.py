"""LeNet-5 (LeCun, Bottou, Bengio and Haffner 1998), with a softmax head."""

import keras
import numpy as np
from keras import ops

from keras_secondorder.curvature import bbprop

_PACKAGE = "keras_secondorder"

# Table I of the paper: which of S2's 6 feature maps each of C3's 16 maps reads.
C3_CONNECTIONS = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


@keras.saving.register_keras_serializable(package=_PACKAGE)
def scaled_tanh(x):
    """LeCun's squashing function `1.7159 tanh(2x/3)`: f(±1) = ±1, steepest gain near 1."""
    return 1.7159 * ops.tanh(x * (2.0 / 3.0))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TrainableSubsampling(keras.layers.Layer):
    """LeNet's subsampling (S2, S4): `f(w_k * sum(2x2 window) + b_k)` with one `w_k, b_k` per map.

    Args:
        activation: the squashing function `f`. Defaults to `scaled_tanh`.
    """

    def __init__(self, activation=scaled_tanh, **kwargs):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        maps = input_shape[-1]
        self.coefficient = self.add_weight(shape=(maps,), initializer="ones", name="coefficient")
        self.bias = self.add_weight(shape=(maps,), initializer="zeros", name="bias")

    def call(self, inputs):
        window_sums = 4.0 * ops.average_pool(inputs, pool_size=2, strides=2, padding="valid")
        return self.activation(window_sums * self.coefficient + self.bias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] // 2, input_shape[2] // 2, input_shape[3])

    def get_config(self):
        return {**super().get_config(),
                "activation": keras.activations.serialize(self.activation)}


# bbprop: f(w_k * sum(window) + b_k) is affine in the inputs and in (w_k, b_k).
bbprop.register_rule(TrainableSubsampling, bbprop.AFFINE)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConnectionTableConv2D(keras.layers.Conv2D):
    """A convolution whose output map `j` reads only the input maps `connections[j]` (C3).

    The kernel keeps its full shape; entries outside the table are multiplied by zero in the
    forward pass, so they get zero gradient and zero curvature, and never change.

    Args:
        connections: for each output map, the input maps it reads.
        **kwargs: `keras.layers.Conv2D` arguments (`filters` is `len(connections)`).
    """

    def __init__(self, connections, **kwargs):
        kwargs.setdefault("filters", len(connections))
        super().__init__(**kwargs)
        self.connections = tuple(tuple(int(i) for i in maps) for maps in connections)

    def build(self, input_shape):
        super().build(input_shape)
        mask = np.zeros((input_shape[-1], self.filters), dtype="float32")
        for output_map, input_maps in enumerate(self.connections):
            mask[list(input_maps), output_map] = 1.0
        self.mask = ops.convert_to_tensor(mask)

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, kernel * ops.cast(self.mask, kernel.dtype))

    def get_config(self):
        return {**super().get_config(), "connections": self.connections}


def lenet5(num_classes=10, activation=scaled_tanh, kernel_initializer="glorot_uniform",
           name="lenet5"):
    """LeNet-5 on 32x32 images: C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84, softmax output.

    As in the paper: `scaled_tanh` units, trainable subsampling (`TrainableSubsampling`) and C3's
    connection table (`ConnectionTableConv2D`). The output is a softmax layer in place of the
    paper's Euclidean RBF units. 61,750 weights are stored and 60,850 of them are live (the
    paper's 60,000 plus the softmax head's 850): C3's 900 kernel entries outside the table are
    masked out of the forward pass, so they get zero gradient and never change.

    Args:
        num_classes: output classes. Defaults to `10`.
        activation: the squashing function of every hidden unit (C1 to F6; the conditioning
            study swaps it). Defaults to `scaled_tanh`.
        kernel_initializer: of the convolution and dense kernels; each layer gets its own copy
            (one unseeded Keras initializer object draws the same values in every layer it
            builds). Defaults to `"glorot_uniform"` (Keras's).
        name: the model's name. Defaults to `"lenet5"`.

    Returns:
        An uncompiled `keras.Sequential` taking `(32, 32, 1)` images.
    """
    def fresh():  # An unseeded clone draws a seed of its own (from Keras's global seed).
        if isinstance(kernel_initializer, keras.initializers.Initializer):
            return kernel_initializer.clone()
        return kernel_initializer  # A name or config: Keras makes one object per layer.

    return keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Conv2D(6, 5, activation=activation, kernel_initializer=fresh(),
                                name="c1"),
            TrainableSubsampling(activation, name="s2"),
            ConnectionTableConv2D(C3_CONNECTIONS, kernel_size=5, activation=activation,
                                  kernel_initializer=fresh(), name="c3"),
            TrainableSubsampling(activation, name="s4"),
            keras.layers.Conv2D(120, 5, activation=activation, kernel_initializer=fresh(),
                                name="c5"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(84, activation=activation, kernel_initializer=fresh(), name="f6"),
            keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=fresh(),
                               name="output"),
        ],
        name=name,
    )


def lenet6(num_classes=10, name="lenet6"):
    """The larger conv net of the MNIST benchmarks, layout 1-50-50-200-10.

    Two 5x5 convolutions with 50 maps, each followed by 2x2 max pooling, a 200-unit fully
    connected layer and a softmax output; `scaled_tanh` units as in LeNet-5. On 32x32 inputs:
    32 -> 28 -> 14 -> 10 -> 5, so the 200 units see 5x5x50 features.

    Args:
        num_classes: output classes. Defaults to `10`.
        name: the model's name. Defaults to `"lenet6"`.

    Returns:
        An uncompiled `keras.Sequential` taking `(32, 32, 1)` images.
    """
    return keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Conv2D(50, 5, activation=scaled_tanh, name="c1"),
            keras.layers.MaxPooling2D(2, name="s2"),
            keras.layers.Conv2D(50, 5, activation=scaled_tanh, name="c3"),
            keras.layers.MaxPooling2D(2, name="s4"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(200, activation=scaled_tanh, name="f5"),
            keras.layers.Dense(num_classes, activation="softmax", name="output"),
        ],
        name=name,
    )
