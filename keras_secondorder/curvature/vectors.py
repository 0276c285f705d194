"""Conversions between lists of tensors shaped like variables and flat parameter vectors."""

import tensorflow as tf


def flatten(tensors):
    """Concatenates a list of tensors into one vector: `[t_1, ..., t_n] -> (t_1.ravel(), ...)`."""
    return tf.concat([tf.reshape(tensor, [-1]) for tensor in tensors], axis=0)


def dot(first, second):
    """`Σ_i <first_i, second_i>`: the inner product of two lists of tensors shaped alike."""
    return tf.add_n([tf.reduce_sum(a * b) for a, b in zip(first, second, strict=True)])


def unflatten(vector, shapes):
    """Splits a flat vector (last axis) into tensors of the given shapes: inverse of `flatten`."""
    shapes = [tf.TensorShape(shape) for shape in shapes]
    sizes = [shape.num_elements() for shape in shapes]
    leading = tf.shape(vector)[:-1]
    pieces = tf.split(vector, sizes, axis=-1)
    return [
        tf.reshape(piece, tf.concat([leading, shape.as_list()], axis=0))
        for piece, shape in zip(pieces, shapes, strict=True)
    ]


@tf.autograph.experimental.do_not_convert
def check_like(vector, variables, name="vector"):
    """Returns `vector` as a list of tensors of the variables' shapes and dtype.

    Raises:
        ValueError: `vector` is not a list of one tensor per variable, each of its shape.
    """
    expected = [tuple(variable.shape) for variable in variables]
    if not isinstance(vector, (list, tuple)):
        raise ValueError(
            f"`{name}` must be a list of {len(expected)} tensors shaped like the variables "
            f"{expected}; received a {type(vector).__name__}. Use "
            "keras_secondorder.curvature.unflatten(flat_vector, shapes) to split a flat vector."
        )
    tensors = [tf.convert_to_tensor(part) for part in vector]
    received = [tuple(tensor.shape) for tensor in tensors]
    if received != expected:
        raise ValueError(
            f"`{name}` must hold one tensor per variable with shapes {expected}; received shapes "
            f"{received}. Pass tensors shaped like the variables the curvature is taken over."
        )
    # Arrays and numbers take the variables' dtype; a tensor must already have it.
    wrong = [(index, tensor.dtype.name) for index, (part, tensor, variable) in enumerate(
        zip(vector, tensors, variables, strict=True))
        if not tensor.dtype.is_floating or (tf.is_tensor(part) and tensor.dtype != variable.dtype)]
    if wrong:
        raise ValueError(
            f"`{name}` must hold real floating-point tensors of the variables' dtype "
            f"{tf.as_dtype(variables[0].dtype).name}; parts {wrong} (index, dtype) are not. "
            "Cast them first (tf.cast(v, variable.dtype)); a complex or integer vector has no "
            "curvature product here."
        )
    return [tf.cast(tensor, variable.dtype) for tensor, variable in zip(tensors, variables,
                                                                        strict=True)]


def dense_gradient(tape, target, sources, output_gradients=None):
    """`tape.gradient` with zeros for unconnected sources and dense tensors for all of them.

    The gradient of a gather (an `Embedding` lookup) is a `tf.IndexedSlices`; curvature
    products, diagonals and the optimizers' slots are shaped like the variables, so its rows
    are summed into a dense tensor here (`unsorted_segment_sum`, exact, no dense-conversion
    warning).
    """
    grads = tape.gradient(target, sources, output_gradients=output_gradients,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [densify(grad, source) for grad, source in zip(grads, sources, strict=True)]


def densify(value, like):
    """`value` as a dense tensor shaped like `like` (`tf.IndexedSlices` rows summed)."""
    if isinstance(value, tf.IndexedSlices):
        rows = tf.shape(like, out_type=value.indices.dtype)[0]
        return tf.math.unsorted_segment_sum(value.values, value.indices, rows)
    return value


def scalar(value, dtype):
    """`value` (a Python number or a tensor) as a scalar tensor of `dtype`.

    Not `tf.cast`: it rounds a Python float to float32 before casting it to float64.
    """
    return tf.cast(value, dtype) if tf.is_tensor(value) else tf.constant(value, dtype)
