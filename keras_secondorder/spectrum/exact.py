"""Exact eigenvalues of small models' curvature, from the dense references."""

import tensorflow as tf

from keras_secondorder._validation import one_of
from keras_secondorder.curvature import dense

_DENSE = {"hessian": dense.hessian, "ggn": dense.ggn, "fisher": dense.empirical_fisher}


def exact_eigenvalues(model, x, y, sample_weight=None, *, curvature="hessian", **kwargs):
    """All eigenvalues (increasing) of the dense Hessian, GGN or empirical Fisher of one batch.

    Args:
        model: a built Keras model, or an `Objective`.
        x, y, sample_weight: the batch.
        curvature: `"hessian"`, `"ggn"` or `"fisher"`. Defaults to `"hessian"`.
        **kwargs: `loss`, `variables`, `training`, `max_parameters`, as for the dense matrices.

    Returns:
        A `(P,)` tensor of eigenvalues in increasing order.
    """
    one_of(curvature, "curvature", _DENSE)
    return tf.linalg.eigvalsh(_DENSE[curvature](model, x, y, sample_weight, **kwargs))
