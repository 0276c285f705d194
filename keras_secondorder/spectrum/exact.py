"""Exact eigenvalues of small models' curvature, from the dense references."""

import tensorflow as tf

from keras_secondorder.curvature import kinds


def exact_eigenvalues(model, x, y, sample_weight=None, *, curvature="hessian", **kwargs):
    """All eigenvalues (increasing) of the dense Hessian, GGN or empirical Fisher of one batch.

    Args:
        model: a built Keras model, or an `Objective`.
        x, y, sample_weight: the batch.
        curvature: a registered curvature kind (`curvature.kinds.names()`: `"hessian"`,
            `"ggn"`, `"fisher"`). Defaults to `"hessian"`.
        **kwargs: `loss`, `variables`, `training`, `max_parameters`, as for the dense matrices.

    Returns:
        A `(P,)` tensor of eigenvalues in increasing order.
    """
    dense = kinds.get(curvature).dense
    return tf.linalg.eigvalsh(dense(model, x, y, sample_weight, **kwargs))
