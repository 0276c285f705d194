"""The deep autoencoder of Hinton and Salakhutdinov (2006), as trained by Martens (2010)."""

import keras

from keras_secondorder._validation import one_of

_LAYOUTS = {"mnist": (784, (1000, 500, 250), 30)}


def deep_autoencoder(dataset="mnist", name=None):
    """The deep autoencoder: logistic units, a linear code layer, a mirrored decoder.

    For MNIST: 784-1000-500-250-30 and back to 784, with logistic outputs (pixel intensities
    in [0, 1], to be compiled with a cross-entropy on probabilities).

    Args:
        dataset: which layout; `"mnist"`. Defaults to `"mnist"`.
        name: the model's name. Defaults to `"deep_autoencoder_<dataset>"`.

    Returns:
        An uncompiled `keras.Sequential`.
    """
    one_of(dataset, "dataset", _LAYOUTS)
    inputs, hidden, code = _LAYOUTS[dataset]
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(units, activation="sigmoid", name=f"encoder_{units}")
               for units in hidden]
    layers.append(keras.layers.Dense(code, name=f"code_{code}"))
    layers += [keras.layers.Dense(units, activation="sigmoid", name=f"decoder_{units}")
               for units in reversed(hidden)]
    layers.append(keras.layers.Dense(inputs, activation="sigmoid", name="reconstruction"))
    return keras.Sequential(layers, name=name or f"deep_autoencoder_{dataset}")
