import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

MODELS = ("mlp", "cnn", "bn_dropout", "multi_input", "subclassed")
# name -> (output units, output activation, compile loss; a factory, so that loss objects take
# the float type in force when the case is made)
LOSSES = {
    "ce": (3, "softmax", lambda: "categorical_crossentropy"),
    "bce": (2, "sigmoid", lambda: "binary_crossentropy"),
    "mse": (2, None, lambda: "mse"),
    "sparse_ce_logits": (
        3, None, lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
}
BATCH = 6


@pytest.fixture
def float64():
    """Builds models and losses in float64 for comparisons with dense references."""
    # Keras caches its global dtype policy at first use, so the policy is set too, not only floatx.
    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous_floatx)
    keras.config.set_dtype_policy(previous_policy)


class Subclassed(keras.Model):
    def __init__(self, units, activation):
        super().__init__()
        self.hidden = keras.layers.Dense(4, activation="tanh")
        self.head = keras.layers.Dense(units, activation=activation)

    def call(self, inputs):
        return self.head(self.hidden(inputs))


def build_model(kind, units, activation, regularizer=None):
    dense = dict(kernel_regularizer=regularizer)
    if kind == "subclassed":
        return Subclassed(units, activation)
    if kind == "multi_input":
        first, second = keras.Input((3,)), keras.Input((2,))
        hidden = keras.layers.Dense(4, activation="tanh", **dense)(
            keras.layers.Concatenate()([first, second]))
        outputs = keras.layers.Dense(units, activation=activation)(hidden)
        return keras.Model([first, second], outputs)
    if kind == "cnn":
        layers = [keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, activation="tanh", **dense),
                  keras.layers.AveragePooling2D(2), keras.layers.Flatten()]
    elif kind == "bn_dropout":
        layers = [keras.Input((4,)), keras.layers.Dense(5, **dense),
                  keras.layers.BatchNormalization(), keras.layers.Activation("tanh"),
                  keras.layers.Dropout(0.25)]
    else:
        layers = [keras.Input((4,)), keras.layers.Dense(5, activation="tanh", **dense)]
    return keras.Sequential(layers + [keras.layers.Dense(units, activation=activation)])


def make_inputs(kind, rng, batch=BATCH):
    if kind == "multi_input":
        return [rng.normal(size=(batch, 3)), rng.normal(size=(batch, 2))]
    if kind == "cnn":
        return rng.normal(size=(batch, 6, 6, 1))
    return rng.normal(size=(batch, 4))


def make_targets(loss_name, units, rng, batch=BATCH):
    if loss_name == "ce":
        return np.eye(units)[rng.integers(0, units, batch)]
    if loss_name == "sparse_ce_logits":
        return rng.integers(0, units, batch)
    if loss_name == "bce":
        return rng.integers(0, 2, (batch, units)).astype("float64")
    return rng.normal(size=(batch, units))


def make_case(kind, loss_name, seed=0, regularizer=None, batch=BATCH):
    """A compiled model (float64 when the fixture is active), its batch and sample weights."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    units, activation, loss = LOSSES[loss_name]
    model = build_model(kind, units, activation, regularizer)
    x = make_inputs(kind, rng, batch)
    model(x)  # Builds subclassed models.
    model.compile(optimizer="sgd", loss=loss())
    y = make_targets(loss_name, units, rng, batch)
    sample_weight = rng.uniform(0.5, 1.5, size=batch)
    return model, x, y, sample_weight


def random_like(model, seed=1):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=v.shape), dtype=v.dtype) for v in model.trainable_variables]


def relative_error(actual, expected):
    actual, expected = tf.convert_to_tensor(actual), tf.convert_to_tensor(expected)
    return float(tf.norm(actual - expected) / tf.norm(expected))
