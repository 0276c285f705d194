"""The deep autoencoder of Hinton and Salakhutdinov (2006), as trained by Martens (2010)."""

import keras
import tensorflow as tf

from keras_secondorder._validation import integer, one_of, positive_int

_LAYOUTS = {"mnist": (784, (1000, 500, 250), 30)}


@keras.saving.register_keras_serializable(package="keras_secondorder")
class SparseInitializer(keras.initializers.Initializer):
    """Martens' sparse initialization: `connections` nonzero N(0, scale²) weights per unit.

    Each unit (column of a Dense kernel) gets exactly `connections` incoming weights drawn from
    N(0, scale²) at random rows; the others are zero. Unlike dense scaled initializations, the
    nonzero weights stay large, so units start diverse without saturating, which is what lets
    Hessian-free train deep autoencoders from random weights (Martens 2010, section 5).

    Args:
        connections: nonzero incoming weights per unit (all of them if the layer has fewer
            inputs). Defaults to `15`.
        scale: the standard deviation of the nonzero weights. Defaults to `1.0`.
        seed: integer seed. Defaults to `0`.
    """

    def __init__(self, connections=15, scale=1.0, seed=0):
        self.connections = positive_int(connections, "connections")
        self.scale = float(scale)
        self.seed = integer(seed, "seed")

    def __call__(self, shape, dtype=None):
        if len(shape) != 2:
            raise ValueError(f"SparseInitializer initializes Dense kernels (2-D); received shape "
                             f"{tuple(shape)}. Use it as a Dense layer's kernel_initializer.")
        inputs, units = shape
        seed = tf.constant([self.seed, inputs * 100003 + units], tf.int64)
        # Each column's `connections` rows: the smallest of a random key per (row, column).
        keys = tf.random.stateless_uniform((inputs, units), seed)
        count = min(self.connections, inputs)
        threshold = -tf.math.top_k(-tf.transpose(keys), k=count).values[:, -1]
        mask = tf.cast(keys <= threshold[None, :], dtype or "float32")
        values = tf.random.stateless_normal((inputs, units), seed + [0, 1], stddev=self.scale,
                                            dtype=dtype or "float32")
        return mask * values

    def get_config(self):
        return {"connections": self.connections, "scale": self.scale, "seed": self.seed}


def deep_autoencoder(dataset="mnist", name=None, kernel_initializer="glorot_uniform",
                     kernel_regularizer=None):
    """The deep autoencoder: logistic units, a linear code layer, a mirrored decoder.

    For MNIST: 784-1000-500-250-30 and back to 784, with logistic outputs (pixel intensities
    in [0, 1], to be compiled with a cross-entropy on probabilities).

    Martens' (2010) setup: `kernel_initializer=SparseInitializer()` (biases are zero),
    `kernel_regularizer=keras.regularizers.L2(1e-5)` (his weight cost 2e-5 as `0.5 * 2e-5 |w|²`),
    and the cross-entropy summed over the 784 pixels (`loss_weights=784` with Keras's
    pixel-averaging `binary_crossentropy`).

    Args:
        dataset: which layout; `"mnist"`. Defaults to `"mnist"`.
        name: the model's name. Defaults to `"deep_autoencoder_<dataset>"`.
        kernel_initializer: every layer's kernel initializer. Defaults to `"glorot_uniform"`.
        kernel_regularizer: every layer's kernel regularizer. Defaults to `None`.

    Returns:
        An uncompiled `keras.Sequential`.
    """
    one_of(dataset, "dataset", _LAYOUTS)
    inputs, hidden, code = _LAYOUTS[dataset]

    def dense(units, activation, layer_name, index):
        initializer = kernel_initializer
        if isinstance(initializer, SparseInitializer):  # A different draw for every layer.
            initializer = SparseInitializer(initializer.connections, initializer.scale,
                                            initializer.seed * 1000 + index)
        return keras.layers.Dense(units, activation=activation, name=layer_name,
                                  kernel_initializer=initializer,
                                  kernel_regularizer=kernel_regularizer)

    sizes = [(units, "sigmoid", f"encoder_{units}") for units in hidden]
    sizes.append((code, None, f"code_{code}"))
    sizes += [(units, "sigmoid", f"decoder_{units}") for units in reversed(hidden)]
    sizes.append((inputs, "sigmoid", "reconstruction"))
    layers = [keras.Input((inputs,))] + [dense(*size, index) for index, size in enumerate(sizes)]
    return keras.Sequential(layers, name=name or f"deep_autoencoder_{dataset}")
