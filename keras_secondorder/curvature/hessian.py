"""The Hessian of the objective: exact (R-operator) and finite-difference products."""

import tensorflow as tf

from keras_secondorder.curvature import dense, kinds
from keras_secondorder.curvature.objective import as_batch, as_objective
from keras_secondorder.curvature.operator import CurvatureOperator
from keras_secondorder.curvature.vectors import dense_gradient


def gradient(model, x, y, sample_weight=None, *, loss=None, variables=None, training=None):
    """The objective and its gradient on one batch, as Keras's train step computes them.

    Args:
        model: a built Keras model, or an `Objective`.
        x, y, sample_weight: the batch.
        loss, variables, training: see `Objective`.

    Returns:
        `(value, gradient)`, the gradient as a list shaped like the variables.
    """
    objective = as_objective(model, loss, variables, training)
    return objective.gradient(objective.params(), as_batch((x, y, sample_weight)))


def hessian_vector_product(model, x, y, vector, sample_weight=None, *, loss=None, variables=None,
                           training=None):
    """`v -> H v`, exact: reverse mode over reverse mode (Pearlmutter's trick).

    Works for any differentiable objective, including indefinite ones.

    Args:
        model: a built Keras model, or an `Objective`.
        x, y: the batch.
        vector: list of tensors shaped like the variables.
        sample_weight: optional per-example weights.
        loss, variables, training: see `Objective`.

    Returns:
        `H v` as a list shaped like the variables.
    """
    objective = as_objective(model, loss, variables, training)
    return _hessian_product(objective, as_batch((x, y, sample_weight)), vector)


def _hessian_product(objective, batch, vector):
    # v -> ∇_w (∇L(w)ᵀ v): reverse mode over reverse mode. Measured 2.2x a gradient against
    # forward over reverse's 2.6-2.8x (LeNet-5, 1000 images; benchmarks/curvature_products.py):
    # TensorFlow's forward mode computes most ops' JVPs by differentiating their VJPs again.
    params = objective.params()
    vector = objective.check_vector(vector)
    with tf.GradientTape() as outer:
        outer.watch(params)
        _, grads = objective.gradient(params, batch)
        directional = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector, strict=True)])
    return dense_gradient(outer, directional, params)


def finite_difference_hessian_vector_product(model, x, y, vector, sample_weight=None, *,
                                             step=None, central=False, loss=None,
                                             variables=None, training=None):
    """`v -> (g(w + a v) - g(w)) / a` (LeCun's recipe), or the central `(g(w+av) - g(w-av)) / 2a`.

    Both gradients see the same dropout masks (the objective is evaluated statelessly from the
    current seed state), so in training mode the result agrees with the exact product.

    Args:
        model: a built Keras model, or an `Objective`.
        x, y: the batch.
        vector: list of tensors shaped like the variables.
        sample_weight: optional per-example weights.
        step: the difference step `a`. Defaults to `None`: `eps^(1/2)` (forward) or `eps^(1/3)`
            (central) times `(1 + |w|) / |v|`, `eps` the float type's resolution, which balances
            truncation against rounding error.
        central: use the central difference (error O(a²) instead of O(a), one more gradient).
            Defaults to `False`.
        loss, variables, training: see `Objective`.

    Returns:
        The approximation of `H v`, a list shaped like the variables.
    """
    objective = as_objective(model, loss, variables, training)
    batch = as_batch((x, y, sample_weight))
    params = objective.params()
    vector = objective.check_vector(vector)
    if step is not None and not tf.is_tensor(step) and not step > 0:
        raise ValueError(f"`step` must be a positive number; received {step!r}.")
    if step is None:
        resolution = float(tf.experimental.numpy.finfo(objective.dtype.as_numpy_dtype).eps)
        scale = (1.0 + tf.linalg.global_norm(params)) / tf.linalg.global_norm(vector)
        step = resolution ** (1 / 3 if central else 1 / 2) * scale
    step = tf.cast(step, objective.dtype)

    def gradient_at(sign):
        shifted = [p + sign * step * v for p, v in zip(params, vector, strict=True)]
        return objective.gradient(shifted, batch)[1]

    upper = gradient_at(1.0)
    lower = gradient_at(-1.0) if central else objective.gradient(params, batch)[1]
    width = 2.0 * step if central else step
    return [(a - b) / width for a, b in zip(upper, lower, strict=True)]


class HessianOperator(CurvatureOperator):
    """The Hessian `∇²L` of the objective as a `tf.linalg.LinearOperator` (symmetric, indefinite).

    See `CurvatureOperator` for the arguments.
    """

    batch_product = staticmethod(_hessian_product)


kinds.register("hessian", HessianOperator, dense.hessian)
