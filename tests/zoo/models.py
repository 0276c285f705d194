"""The model zoo: small models of the kinds users bring, each with a batch that fits it.

Every builder returns a `Case`: a compiled `keras_secondorder.Model` (so that the curvature
optimizers can train it), its inputs, targets and sample weights. Shapes are tiny so that a
dense float64 Hessian of every model takes well under a second.
"""

import collections

import keras
import numpy as np

import keras_secondorder as ks

Case = collections.namedtuple("Case", ["model", "x", "y", "sample_weight", "loss"])
BATCH = 10
CLASSES = 3
VOCABULARY, LENGTH = 7, 5


@keras.saving.register_keras_serializable(package="keras_secondorder_zoo")
class Scale(keras.layers.Layer):
    """A custom layer written with keras.ops: `x * exp(s) + t`, per feature."""

    def build(self, input_shape):
        self.log_scale = self.add_weight(shape=input_shape[-1:], initializer="zeros")
        self.shift = self.add_weight(shape=input_shape[-1:], initializer="zeros")

    def call(self, x):
        return x * keras.ops.exp(self.log_scale) + keras.ops.tanh(self.shift)


@keras.saving.register_keras_serializable(package="keras_secondorder_zoo")
class BatchNormDropoutNet(ks.Model):
    """A subclassed model with BatchNormalization and Dropout."""

    def __init__(self, units=CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(6)
        self.norm = keras.layers.BatchNormalization()
        self.dropout = keras.layers.Dropout(0.2)
        self.head = keras.layers.Dense(units, activation="softmax")

    def call(self, x, training=False):
        hidden = keras.ops.tanh(self.norm(self.hidden(x), training=training))
        return self.head(self.dropout(hidden, training=training))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _features(rng, shape):
    return rng.normal(size=(BATCH, *shape))


def _tokens(rng):
    return rng.integers(0, VOCABULARY, size=(BATCH, LENGTH))


def _labels(rng):
    return rng.integers(0, CLASSES, size=BATCH)


def subclassed_bn_dropout(rng):
    model = BatchNormDropoutNet()
    x = _features(rng, (4,))
    model(x)
    return model, x, _labels(rng), "sparse_categorical_crossentropy"


def resnet(rng):
    inputs = keras.Input((6, 6, 1))
    stem = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    branch = keras.layers.BatchNormalization()(keras.layers.Conv2D(3, 3, padding="same")(stem))
    merged = keras.layers.Activation("relu")(keras.layers.Add()([stem, branch]))
    pooled = keras.layers.GlobalAveragePooling2D()(merged)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(pooled)
    return ks.Model(inputs, outputs), _features(rng, (6, 6, 1)), _labels(rng), \
        "sparse_categorical_crossentropy"


def _recurrent(layer):
    def build(rng):
        inputs = keras.Input((LENGTH,), dtype="int32")
        embedded = keras.layers.Embedding(VOCABULARY, 3)(inputs)
        outputs = keras.layers.Dense(CLASSES, activation="softmax")(layer(4)(embedded))
        return ks.Model(inputs, outputs), _tokens(rng), _labels(rng), \
            "sparse_categorical_crossentropy"
    return build


def transformer(rng):
    inputs = keras.Input((LENGTH, 4))
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=2)(inputs, inputs)
    normed = keras.layers.LayerNormalization()(keras.layers.Add()([inputs, attended]))
    pooled = keras.layers.GlobalAveragePooling1D()(normed)
    outputs = keras.layers.Dense(CLASSES)(pooled)
    return ks.Model(inputs, outputs), _features(rng, (LENGTH, 4)), _labels(rng), \
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def conv1d(rng):
    model = ks.Model(*_chain(keras.Input((8, 2)), [
        keras.layers.Conv1D(3, 3, activation="tanh"), keras.layers.MaxPooling1D(2),
        keras.layers.Flatten(), keras.layers.Dense(CLASSES, activation="softmax")]))
    return model, _features(rng, (8, 2)), np.eye(CLASSES)[_labels(rng)], \
        "categorical_crossentropy"


def layernorm_mlp(rng):
    model = ks.Model(*_chain(keras.Input((4,)), [
        keras.layers.Dense(6), keras.layers.LayerNormalization(), keras.layers.Activation("tanh"),
        keras.layers.Dense(2, activation="sigmoid")]))
    return model, _features(rng, (4,)), rng.integers(0, 2, (BATCH, 2)).astype("float64"), \
        "binary_crossentropy"


def custom_layer(rng):
    model = ks.Model(*_chain(keras.Input((4,)), [
        keras.layers.Dense(5, activation="tanh"), Scale(), keras.layers.Dense(2)]))
    return model, _features(rng, (4,)), _features(rng, (2,)), "mse"


def mlp_sample_weight(rng):
    model = ks.Model(*_chain(keras.Input((4,)), [
        keras.layers.Dense(5, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01)),
        keras.layers.Dense(CLASSES, activation="softmax")]))
    return model, _features(rng, (4,)), _labels(rng), "sparse_categorical_crossentropy"


def multi_output(rng):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, activation="tanh")(inputs)
    outputs = [keras.layers.Dense(CLASSES, activation="softmax", name="label")(hidden),
               keras.layers.Dense(1, name="value")(hidden)]
    model = ks.Model(inputs, outputs)
    y = (_labels(rng), _features(rng, (1,)))
    return model, _features(rng, (4,)), y, ["sparse_categorical_crossentropy", "mse"]


def _chain(inputs, layers):
    outputs = inputs
    for layer in layers:
        outputs = layer(outputs)
    return inputs, outputs


BUILDERS = {
    "subclassed_bn_dropout": subclassed_bn_dropout,
    "resnet": resnet,
    "embedding_lstm": _recurrent(keras.layers.LSTM),
    "embedding_gru": _recurrent(keras.layers.GRU),
    "transformer": transformer,
    "conv1d": conv1d,
    "layernorm_mlp": layernorm_mlp,
    "custom_layer": custom_layer,
    "sample_weight": mlp_sample_weight,
    "multi_output": multi_output,
}
ZOO = tuple(BUILDERS)
# Models whose loss has a Gauss-Newton split (one output, a matching loss).
SPLIT = tuple(name for name in ZOO if name != "multi_output")
RECURRENT = ("embedding_lstm", "embedding_gru")


def make(name, seed=0, optimizer="sgd"):
    """The zoo model `name`, compiled with `optimizer`, and its batch, as a `Case`."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model, x, y, loss = BUILDERS[name](rng)
    model.compile(optimizer=optimizer, loss=loss)
    sample_weight = rng.uniform(0.5, 1.5, BATCH) if name == "sample_weight" else None
    return Case(model, x, y, sample_weight, loss)
