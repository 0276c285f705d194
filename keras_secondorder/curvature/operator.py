"""The base of the curvature operators: a `tf.linalg.LinearOperator` over flat parameters."""

import functools

import tensorflow as tf

from keras_secondorder.curvature.objective import Objective, as_batches, batch_weights
from keras_secondorder.curvature.vectors import flatten, unflatten


class CurvatureOperator(tf.linalg.LinearOperator):
    """A curvature matrix of the objective, as a linear operator over the flattened parameters.

    The flat parameter vector is the variables' values raveled and concatenated in order
    (`keras_secondorder.curvature.flatten`). `matvec`, `matmul`, `to_dense()` (small models) and
    the `tf.linalg` algorithms work on it; `matvec` also takes a list of tensors shaped like the
    variables and then returns such a list.

    Args:
        model: a built Keras model, compiled with a loss unless `loss` is given.
        data: one batch, a tuple `(x, y)` or `(x, y, sample_weight)`; or a `tf.data.Dataset`
            or another iterable of such batches. With several batches the products are
            averaged, weighted by batch size: the curvature of the mean objective over all their
            examples. The data are read once, here, so the operator is one fixed matrix even
            if the dataset shuffles.
        loss: see `Objective`. Defaults to `None`: the compiled loss.
        variables: see `Objective`. Defaults to `None`: all trainable variables.
        training: see `Objective`. Defaults to `False`: the model as it predicts.
        damping: `λ >= 0` added to the diagonal: the operator is `A + λ I`. Levenberg-Marquardt
            damping: it bounds the step a solver takes along directions of tiny or (for the
            Hessian) negative curvature, where the quadratic model of the objective is least
            trustworthy. With `λ > 0` the Gauss-Newton and Fisher operators are positive
            definite (and say so), as `tf.linalg.experimental.conjugate_gradient` requires.
            Defaults to `0`.
        jit_compile: compile each batch's product with XLA. Defaults to `False`.
        name: the operator's name. Defaults to the class name.
    """

    # (objective, batch, vector) -> product on one batch, a list shaped like the variables.
    batch_product = None
    # Whether the undamped matrix is positive semi-definite by construction.
    positive_semidefinite = False
    # Whether the matrix splits the objective at the outputs (needs a matching loss).
    splits_at_outputs = False

    def __init__(self, model, data, *, loss=None, variables=None, training=False, damping=0.0,
                 jit_compile=False, name=None):
        if not tf.is_tensor(damping) and not 0.0 <= float(damping) < float("inf"):
            raise ValueError(
                f"`damping` must be a finite number >= 0; received {damping!r}. It is the λ of "
                "A + λI; use 0 for the undamped matrix."
            )
        self._damping = damping
        self.objective = Objective(model, loss=loss, variables=variables, training=training)
        self.batches = as_batches(data)
        if self.splits_at_outputs:
            self.objective.check_split(self.batches[0])
        self._batch_weights = batch_weights(self.batches, self.objective.dtype)
        self._compiled_product = tf.function(
            functools.partial(type(self).batch_product, self.objective), jit_compile=jit_compile
        )
        # The flat product in one graph: unflatten, per-batch products, weighted sum, flatten
        # (run eagerly, their small ops cost 0.15 gradients per product on LeNet-5).
        self._compiled_flat_product = tf.function(
            lambda x: flatten(self._list_product(unflatten(x, self.objective.shapes))))
        self._dimension = self.objective.num_parameters
        super().__init__(
            dtype=self.objective.dtype,
            is_self_adjoint=True,
            is_positive_definite=True if self.positive_semidefinite and damping > 0 else None,
            is_square=True,
            name=name or type(self).__name__,
        )

    @property
    def damping(self):
        """`λ` of `A + λ I`; fixed (the compiled product holds it): make a new operator."""
        return self._damping

    @damping.setter
    def damping(self, value):
        raise AttributeError(
            f"{self.name}.damping is fixed when the operator is made (its compiled product holds "
            f"it); received {value!r}. Make a new operator with damping={value!r}."
        )

    def matvec(self, x, adjoint=False, name="matvec"):
        """`A x` for a flat vector `x`, or for a list of tensors shaped like the variables."""
        if isinstance(x, (list, tuple)):
            return self._list_product(x)
        x = tf.convert_to_tensor(x) if not tf.is_tensor(x) else x
        if x.dtype != self.dtype or x.shape.rank is None or x.shape[-1] != self._dimension:
            raise ValueError(
                f"{self.name}.matvec takes a flat {self.dtype.name} vector of length "
                f"{self._dimension} (the number of parameters), or a list shaped like the "
                f"variables; received {x.dtype.name} of shape {x.shape}. Cast it with "
                f"tf.cast(x, {self.dtype.name!r}) or flatten a list with "
                "keras_secondorder.curvature.flatten."
            )
        return super().matvec(x, adjoint=adjoint, name=name)

    def _list_product(self, vector):
        vector = self.objective.check_vector(vector)
        total = [self._damping * v for v in vector]
        for weight, batch in zip(self._batch_weights, self.batches, strict=True):
            part = self._compiled_product(batch, vector)
            total = [a + weight * b for a, b in zip(total, part, strict=True)]
        return total

    def _shape(self):
        return tf.TensorShape([self._dimension, self._dimension])

    def _shape_tensor(self):
        return tf.constant([self._dimension, self._dimension], dtype=tf.int32)

    def _matvec(self, x, adjoint=False):
        del adjoint  # Self-adjoint.
        if x.shape.rank != 1:
            raise ValueError(
                f"{self.name}.matvec takes one flat vector of length {self._dimension}; received "
                f"shape {x.shape}. Use matmul for several vectors as columns."
            )
        return self._compiled_flat_product(x)

    def _matmul(self, x, adjoint=False, adjoint_arg=False):
        del adjoint  # Self-adjoint.
        return matmul_by_columns(self, x, adjoint_arg)


def matmul_by_columns(operator, x, adjoint_arg=False):
    """`A X` for a self-adjoint operator, one `matvec` per column of the matrix `X`."""
    if adjoint_arg:
        x = tf.linalg.adjoint(x)
    if x.shape.rank != 2:
        raise ValueError(
            f"{operator.name}.matmul takes a matrix of shape ({operator.shape[-1]}, k); "
            f"received shape {x.shape}."
        )
    return tf.transpose(tf.map_fn(operator.matvec, tf.transpose(x)))
