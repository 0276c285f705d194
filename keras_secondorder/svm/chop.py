"""Chopping a trained model at a layer: a feature extractor that shares its weights."""

import keras


def chop(model, layer=None):
    """The model up to (and including) `layer`, as a `keras.Model` sharing the same weights.

    Args:
        model: a built functional or Sequential Keras model.
        layer: the name of the layer whose output are the features. Defaults to `None`: the
            layer before the last one (the classifier), e.g. F6 of LeNet-5.

    Returns:
        A `keras.Model` from the model's inputs to that layer's output.

    Raises:
        ValueError: the layer does not exist, or the model has no graph of layers to cut
            (a subclassed model).
    """
    if not hasattr(model, "inputs") or not model.inputs:
        raise ValueError(
            f"`model` {model.name!r} has no graph of layers to chop (a subclassed model, or not "
            "built). Build it from keras.Input (functional or Sequential)."
        )
    names = [candidate.name for candidate in model.layers]
    if layer is None:
        if len(names) < 2:
            raise ValueError(f"`model` {model.name!r} has a single layer; there is nothing to "
                             "chop off. Pass `layer=` explicitly.")
        layer = names[-2]
    if layer not in names:
        raise ValueError(f"`layer`={layer!r} is not a layer of {model.name!r}; its layers are "
                         f"{names}.")
    return keras.Model(model.inputs, model.get_layer(layer).output, name=f"{model.name}_{layer}")
