"""What both curvature callbacks share: the data they measure on, operators, verbosity."""

import numpy as np
import tensorflow as tf

from keras_secondorder import curvature
from keras_secondorder._validation import positive_int


def measurement_batches(data, num_samples, batch_size):
    """At most `num_samples` examples of `data`, as a list of `(x, y[, sample_weight])` batches.

    `data` is a tuple of arrays `(x, y[, sample_weight])`, split into batches of `batch_size`,
    or a `tf.data.Dataset` (or iterable) of batches, read until `num_samples` examples.
    """
    positive_int(num_samples, "num_samples")
    positive_int(batch_size, "batch_size")
    if isinstance(data, list) and len(data) in (2, 3):
        raise ValueError(
            f"`data` is a list of {len(data)}; like `validation_data` in model.fit it must be a "
            "tuple (x, y) or (x, y, sample_weight) (a list is read as the inputs of a "
            "multi-input model). Pass tuple(data).")
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise ValueError(f"`data` as a tuple must be (x, y) or (x, y, sample_weight); "
                             f"received a tuple of length {len(data)}.")
        data = tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    elif not isinstance(data, tf.data.Dataset) and not _is_batch_iterable(data):
        raise ValueError(
            f"`data` must be a tuple (x, y[, sample_weight]) or a batched tf.data.Dataset of "
            f"such tuples, as model.fit's validation_data; received {type(data).__name__}. "
            "The curvature needs targets: pass (x, y).")
    batches, count = [], 0
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError(
                "Each element of `data` must be a batch (x, y) or (x, y, sample_weight); "
                f"received {type(batch).__name__}. Map the dataset to such tuples.")
        batch = tuple(batch)
        leading = {tuple(t.shape[:1]) for t in tf.nest.flatten(batch) if t is not None}
        if () in leading or len(leading) != 1:
            raise ValueError(
                "The elements of `data` look unbatched: their parts have leading dimensions "
                f"{sorted(leading)} (one batch dimension shared by x, y and sample_weight is "
                "expected). Batch the dataset: dataset.batch(batch_size).")
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


def disjoint_samples(batches, repeats, num_samples, batch_size):
    """`repeats` lists of batches, each over its own `num_samples` examples of `batches`.

    The examples are taken in order: repeat `r` gets examples `r n` to `(r + 1) n - 1`.

    Raises:
        ValueError: `batches` hold fewer than `repeats * num_samples` examples.
    """
    positive_int(repeats, "repeats")
    whole = tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *batches)
    available = int(tf.shape(tf.nest.flatten(whole[0])[0])[0])
    if available < repeats * num_samples:
        raise ValueError(
            f"{repeats} repeats of {num_samples} samples need {repeats * num_samples} "
            f"examples; the data hold {available}. Lower the samples or the repeats, or pass "
            "more data.")
    repeats_batches = []
    for end in range(num_samples, (repeats + 1) * num_samples, num_samples):
        starts = range(end - num_samples, end, batch_size)
        repeats_batches.append([tf.nest.map_structure(
            lambda t, start=start, end=end: t[start:min(start + batch_size, end)], whole)
            for start in starts])
    return repeats_batches


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
            operator = curvature.kinds.get(self.curvature).operator
            self._operators[key] = operator(model, self.batches, variables=variables)
        return self._operators[key]


def _is_batch_iterable(data):
    return hasattr(data, "__iter__") and not isinstance(data, (str, dict, np.ndarray)) \
        and not tf.is_tensor(data)


def check_inputs_batched(model, batches):
    """ValueError unless the batches' inputs have the rank of the model's inputs."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return
    x = tf.nest.flatten(batches[0][0])
    expected = [len(i.shape) for i in inputs]
    received = [len(t.shape) for t in x]
    if len(x) == len(expected) and received != expected:
        raise ValueError(
            f"`data`'s inputs have rank {received}, the model's inputs rank {expected} "
            "(a batch dimension first). If the dataset is unbatched, batch it: "
            "dataset.batch(batch_size); else pass inputs shaped like model.inputs.")


def resolved_verbose(callback, verbose):
    """A callback's `verbose`, with `"auto"` silent inside a `fit(verbose=0)`."""
    if verbose == "auto" and (callback.params or {}).get("verbose") == 0:
        return 0
    return verbose


def is_finite(value):
    return bool(np.isfinite(float(value)))
