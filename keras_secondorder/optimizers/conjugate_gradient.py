"""Martens' truncated preconditioned conjugate gradient, with his stopping rule and saved iterates.

The solver of `HessianFree`: it minimizes the quadratic model `q(x) = ½ xᵀA x - bᵀx` (so solves
`A x = b`) for a symmetric `A` given only as a product, with a diagonal preconditioner, entirely
in tensor ops (`tf.while_loop`) so it runs inside a compiled train step.
"""

import collections
import math

import tensorflow as tf

ConjugateGradientResult = collections.namedtuple(
    "ConjugateGradientResult",
    ["solution", "iterations", "values", "saved", "saved_iterations", "num_saved"])
ConjugateGradientResult.__doc__ = """What `conjugate_gradient` returns.

Attributes:
    solution: the last iterate `x_i` (flat vector).
    iterations: `i`, the number of iterations run (int32 scalar).
    values: `q(x_j)` for `j = 0 .. max_iterations` (`values[j]` is after iteration `j`; entries
        after `iterations` are zero).
    saved: the iterates saved for backtracking, shape `(len(save_schedule), n)`; row `s` holds
        `x_{save_schedule[s]}` when `s < num_saved`.
    saved_iterations: the iteration number of each saved row (`save_schedule`).
    num_saved: how many rows of `saved` were filled (int32 scalar).
"""


def save_schedule(max_iterations, first=5, ratio=1.3):
    """The iterations whose iterates are kept for backtracking: `ceil(first * ratio^j) <= max`.

    Martens (2010, section 4.6) keeps `x_i` at `i = ceil(5 * 1.3^j)`: 5, 7, 9, 11, 15, 19, 25,
    ...; a geometric grid, so that backtracking can undo the late iterations, which fit the
    curvature mini-batch more than the objective, at the cost of a few stored vectors.
    """
    schedule, scale = [], float(first)
    while math.ceil(scale) <= max_iterations:
        if not schedule or math.ceil(scale) > schedule[-1]:
            schedule.append(math.ceil(scale))
        scale *= ratio
    return schedule


def martens_should_stop(iteration, values, min_gap=10, gap_ratio=0.1, tolerance=5e-4):
    """Martens' relative-progress test: stop at iteration `i` if the model stopped improving.

    With `k = max(min_gap, ceil(gap_ratio * i))`: stop when `i > k`, `q_i < 0` and
    `(q_i - q_{i-k}) / q_i < k * tolerance`, i.e. the last `k` iterations reduced `q` by less
    than `tolerance` per iteration, relative to `q`. Residual norms are the wrong test here:
    CG reduces `q` fast at first and the residual can stay large while `q` barely moves, and a
    solution to full precision overfits the mini-batch's curvature.

    Args:
        iteration: `i` (a scalar tensor, 1-based).
        values: `q_j` indexed by `j` (a vector; `values[0]` is `q(x_0)`).
        min_gap, gap_ratio, tolerance: `min_gap` (Martens: 10), `gap_ratio` (0.1) and
            `tolerance` (`epsilon`, 5e-4).

    Returns:
        A boolean scalar tensor.
    """
    iteration = tf.cast(iteration, tf.int32)
    gap = tf.maximum(tf.cast(min_gap, tf.int32),
                     tf.cast(tf.math.ceil(gap_ratio * tf.cast(iteration, tf.float64)), tf.int32))
    earlier = tf.gather(values, tf.maximum(iteration - gap, 0))
    value = tf.gather(values, iteration)
    progress = (value - earlier) / value
    return ((iteration > gap) & (value < 0)
            & (progress < tf.cast(gap, values.dtype) * tolerance))


def conjugate_gradient(matvec, b, x0, preconditioner=None, max_iterations=250, min_gap=10,
                       gap_ratio=0.1, tolerance=5e-4, save_first=5, save_ratio=1.3):
    """Preconditioned CG on `A x = b`, stopped by `martens_should_stop`.

    ```
    r = A x - b,  y = r / M,  d = -y
    repeat:  a = rᵀy / dᵀA d,  x <- x + a d,  r <- r + a A d,  y = r / M,
             d <- -y + (r_newᵀ y_new / r_oldᵀ y_old) d,   q(x) = ½ xᵀ(r - b)
    ```

    It also stops when the curvature along `d` is not positive or not finite (`A` indefinite,
    e.g. an undamped Hessian, or a non-finite product; the iterate stays where it was) or when
    the residual vanishes.

    Args:
        matvec: `v -> A v` on flat vectors (symmetric `A`).
        b: the right-hand side (flat vector).
        x0: the starting point (flat vector; `HessianFree` warm-starts it).
        preconditioner: the diagonal of `M` (flat, positive), or `None` for `M = I`.
        max_iterations: the iteration cap. Defaults to `250`.
        min_gap, gap_ratio, tolerance: the stopping rule's settings (see
            `martens_should_stop`). Default to `10`, `0.1` and `5e-4`.
        save_first, save_ratio: the backtracking grid (see `save_schedule`). Default to `5`
            and `1.3`.

    Returns:
        A `ConjugateGradientResult`.
    """
    schedule = save_schedule(max_iterations, save_first, save_ratio)
    saved_iterations = tf.constant(schedule or [0], tf.int32)
    dtype = b.dtype
    inverse = tf.ones_like(b) if preconditioner is None else 1.0 / preconditioner

    def quadratic(x, residual):
        return 0.5 * tf.reduce_sum(x * (residual - b))

    residual = matvec(x0) - b
    preconditioned = residual * inverse
    values = tf.tensor_scatter_nd_update(tf.zeros([max_iterations + 1], dtype), [[0]],
                                         [quadratic(x0, residual)])
    state = dict(
        iteration=tf.constant(0, tf.int32), x=x0, residual=residual, direction=-preconditioned,
        delta=tf.reduce_sum(residual * preconditioned), values=values,
        saved=tf.zeros([len(schedule) or 1, tf.shape(b)[0]], dtype), num_saved=tf.constant(0),
        done=tf.constant(False))

    def proceed(state):
        return (~state["done"]) & (state["iteration"] < max_iterations)

    def iterate(state):
        direction = state["direction"]
        product = matvec(direction)
        curvature = tf.reduce_sum(direction * product)
        usable = (curvature > 0) & tf.math.is_finite(curvature) & (state["delta"] > 0)
        step = tf.where(usable, state["delta"] / tf.where(usable, curvature, 1.0), 0.0)
        x = state["x"] + step * direction
        residual = state["residual"] + step * product
        preconditioned = residual * inverse
        delta = tf.reduce_sum(residual * preconditioned)
        beta = tf.where(usable, delta / tf.where(usable, state["delta"], 1.0), 0.0)
        iteration = state["iteration"] + tf.cast(usable, tf.int32)
        values = tf.tensor_scatter_nd_update(state["values"], [[iteration]],
                                             [quadratic(x, residual)])
        save = usable & tf.reduce_any(tf.equal(saved_iterations, iteration))
        saved = tf.cond(
            save,
            lambda: tf.tensor_scatter_nd_update(state["saved"], [[state["num_saved"]]], [x]),
            lambda: state["saved"])
        stop = (~usable | martens_should_stop(iteration, values, min_gap, gap_ratio, tolerance)
                | tf.equal(delta, 0.0))
        return [dict(iteration=iteration, x=x, residual=residual,
                     direction=-preconditioned + beta * direction, delta=delta, values=values,
                     saved=saved, num_saved=state["num_saved"] + tf.cast(save, tf.int32),
                     done=stop)]

    (state,) = tf.while_loop(proceed, iterate, [state])
    return ConjugateGradientResult(state["x"], state["iteration"], state["values"],
                                   state["saved"], saved_iterations, state["num_saved"])
