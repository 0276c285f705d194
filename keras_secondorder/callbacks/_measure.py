"""What both curvature callbacks share: the data they measure on, operators, progress."""

import keras
import numpy as np
import tensorflow as tf

from keras_secondorder import curvature
from keras_secondorder._validation import positive_int
from keras_secondorder.curvature.operator import matmul_by_columns

OPERATORS = {"hessian": curvature.HessianOperator, "ggn": curvature.GGNOperator,
             "fisher": curvature.FisherOperator}


def measurement_batches(data, num_samples, batch_size):
    """At most `num_samples` examples of `data`, as a list of `(x, y[, sample_weight])` batches.

    `data` is a tuple of arrays `(x, y[, sample_weight])`, split into batches of `batch_size`,
    or a `tf.data.Dataset` (or iterable) of batches, read until `num_samples` examples.
    """
    positive_int(num_samples, "num_samples")
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise ValueError(f"`data` as a tuple must be (x, y) or (x, y, sample_weight); "
                             f"received a tuple of length {len(data)}.")
        data = tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    batches, count = [], 0
    for batch in data:
        batch = tuple(batch)
        size = int(tf.shape(tf.nest.flatten(batch[0])[0])[0])
        keep = min(size, num_samples - count)
        batches.append(tuple(tf.nest.map_structure(lambda t, keep=keep: t[:keep], part)
                             for part in batch))
        count += keep
        if count >= num_samples:
            break
    if not batches:
        raise ValueError("`data` holds no examples to measure the curvature on.")
    return batches


class ProgressOperator(tf.linalg.LinearOperator):
    """Wraps an operator and advances a Keras progress bar at each product (counted)."""

    def __init__(self, operator, progbar=None):
        self.operator, self.progbar, self.num_products = operator, progbar, 0
        super().__init__(dtype=operator.dtype, is_self_adjoint=True, is_square=True,
                         name=operator.name)

    def _shape(self):
        return self.operator.shape

    def _shape_tensor(self):
        return self.operator.shape_tensor()

    def _matvec(self, x, adjoint=False):
        self.num_products += 1
        if self.progbar is not None:
            self.progbar.add(1)
        return self.operator.matvec(x)

    def _matmul(self, x, adjoint=False, adjoint_arg=False):
        del adjoint  # Self-adjoint.
        return matmul_by_columns(self, x, adjoint_arg)


class OperatorCache:
    """Curvature operators of one model and data, built once per block of variables.

    An operator reads the variables inside its compiled product, so it stays valid as training
    changes the weights; reusing it avoids tracing the product again at every measurement.
    """

    def __init__(self, curvature, batches):
        self.curvature, self.batches, self._operators = curvature, batches, {}

    def get(self, model, variables=None):
        key = (id(model), None if variables is None else tuple(id(v) for v in variables))
        if key not in self._operators:
            self._operators[key] = OPERATORS[self.curvature](model, self.batches,
                                                             variables=variables)
        return self._operators[key]


def progress_bar(total, verbose, unit):
    """A Keras progress bar over `total` products, or `None` when `verbose` is 0."""
    return keras.utils.Progbar(total, unit_name=unit) if verbose else None


def is_finite(value):
    return bool(np.isfinite(float(value)))
