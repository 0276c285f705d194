"""Estimators of the diagonal of the curvature matrices.

| method               | estimates          | cost per batch                          |
| -------------------- | ------------------ | --------------------------------------- |
| `"ggn"`              | diag(GGN), exact   | C per-example backward passes (C outputs) |
| `"ggn_mc"`           | diag(GGN), unbiased| `samples` per-example backward passes    |
| `"hutchinson"`       | diag(Hessian), unbiased | `samples` Hessian-vector products   |
| `"empirical_fisher"` | diag(emp. Fisher), exact | one per-example backward pass; one  |
|                      |                    | backward pass for chains of Dense layers |
| `"bbprop"`           | diag(GGN), Becker-LeCun approximation | one backward pass (`bbprop`) |

Per-example backward passes are `GradientTape.jacobian` over chunks of `chunk_size` examples,
so memory stays bounded by the chunk, not the batch.
"""

import functools
import weakref

import tensorflow as tf

from keras_secondorder import _random as random
from keras_secondorder._progress import Progress
from keras_secondorder._validation import integer, one_of, positive_int
from keras_secondorder.curvature import gradient_squares
from keras_secondorder.curvature.bbprop import bbprop_diagonal
from keras_secondorder.curvature.hessian import _hessian_product
from keras_secondorder.curvature.objective import Objective, as_batches, batch_weights
from keras_secondorder.curvature.output_space import (
    penalty_diagonal,
    per_example_factor_gradients,
)

_ZERO = tf.UnconnectedGradients.ZERO
METHODS = ("ggn", "ggn_mc", "hutchinson", "empirical_fisher", "bbprop")


def diagonal(model, data, method="ggn", *, loss=None, variables=None, training=False, samples=1,
             seed=0, chunk_size=64, verbose="auto"):
    """Estimates the diagonal of the Gauss-Newton, Hessian or empirical Fisher matrix.

    The computation is traced once per model, settings and batch shape, and reused by later
    calls (training between calls is seen: the weights are read when it runs).

    Cost per batch of `N` examples with `C` outputs: `"ggn"` `C` vectorized per-example
    backward passes over the batch, `"ggn_mc"` `samples` of them (one draw at a time, so time
    is linear in `samples` and memory bounded by one draw's `chunk_size` rows),
    `"hutchinson"` `samples` Hessian-vector products, `"empirical_fisher"` one (one plain
    backward pass for Dense chains), `"bbprop"` about one backward pass.

    Args:
        model: a built Keras model, compiled with a loss unless `loss` is given.
        data: one batch tuple, or a `tf.data.Dataset` / iterable of batches (averaged, weighted
            by batch size), as for `CurvatureOperator`.
        method: one of `"ggn"` (exact), `"ggn_mc"` (Monte-Carlo: labels drawn from the model's
            predictive distribution), `"hutchinson"` (`E[v * Hv]`, Rademacher `v`; any loss),
            `"empirical_fisher"`, `"bbprop"` (LeCun's diagonal back-propagation, the cost of one
            backward pass; chains of the layers `bbprop` lists). Defaults to `"ggn"`.
        loss, variables, training: see `Objective`.
        samples: Monte-Carlo draws (`"ggn_mc"`) or probes (`"hutchinson"`) per batch; the
            error falls as `1/sqrt(samples)`. Defaults to `1`.
        seed: integer seed of the random draws; the same seed gives the same estimate.
            Defaults to `0`.
        chunk_size: examples per per-example backward pass, bounding memory. Defaults to `64`.
        verbose: a progress bar over the batches (`_progress.Progress`) once the work takes
            more than two seconds: `"auto"` in interactive use, `1` always, `0` never.
            Defaults to `"auto"`.

    Returns:
        The diagonal, a list of tensors shaped like the variables.
    """
    _check_settings(method, samples, chunk_size)
    integer(seed, "seed")
    objective, compiled = _compiled_diagonal(model, loss, variables, training)
    batches = as_batches(data)
    if method != "hutchinson":  # Every other method splits the objective at the outputs.
        objective.check_split(batches[0])
    total = [tf.zeros_like(p) for p in objective.params()]
    progress = Progress(len(batches), "batches", verbose)
    for index, (weight, batch) in enumerate(zip(batch_weights(batches, objective.dtype), batches,
                                                strict=True)):
        part = compiled(batch, method, samples=samples,
                        seed=tf.constant([seed, index], tf.int64), chunk_size=chunk_size)
        total = [t + weight * p for t, p in zip(total, part, strict=True)]
        progress.add()
    progress.finish()
    return total


# model -> {(loss, variables, training): (objective, its compiled batch_diagonal)}.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled_diagonal(model, loss, variables, training):
    objective = Objective(model, loss=loss, variables=variables, training=training)
    key = (loss if loss is None or isinstance(loss, str) else id(loss),
           tuple(id(v) for v in objective.variables),
           tuple(id(v) for v in model.trainable_variables), objective.training)
    cache = _COMPILED.setdefault(model, {})
    if key not in cache:
        cache[key] = (objective, tf.function(functools.partial(batch_diagonal, objective)))
    return cache[key]


def batch_diagonal(objective, batch, method, samples=1, seed=(0, 0), chunk_size=64):
    """The diagonal estimate on one `Batch`; traceable in `tf.function` (see `diagonal`).

    `seed` is a stateless-random seed pair (a shape `(2,)` integer tensor).
    """
    _check_settings(method, samples, chunk_size)
    seed = tf.cast(seed, tf.int64)
    if method == "hutchinson":
        return _hutchinson(objective, batch, samples, seed)
    if method == "bbprop":
        return bbprop_diagonal(objective, batch)
    if method == "ggn_mc":
        return _monte_carlo_ggn(objective, batch, samples, seed, chunk_size)
    if method == "empirical_fisher" and gradient_squares.supports(objective.model):
        return gradient_squares.dense_chain_gradient_squares(objective, batch)  # Dense chains.
    if method == "ggn":  # Output-space factors r_nf with C_n = sum_f r_nf r_nfᵀ:
        def factors(output_loss, z):  # the columns of H_n^1/2,
            return output_loss.hessian_sqrt_columns(z)
    else:  # "empirical_fisher": the per-example loss gradient.
        def factors(output_loss, z):
            return [output_loss.row_gradients(batch.y, z)]
    squares, num_losses = _output_space_squares(objective, batch, factors, chunk_size)
    return with_penalty(objective, squares, num_losses)


def _check_settings(method, samples, chunk_size):
    one_of(method, "method", METHODS)
    positive_int(samples, "samples")
    positive_int(chunk_size, "chunk_size")


def _monte_carlo_ggn(objective, batch, samples, seed, chunk_size):
    # One draw r_n per example at a time (a tf.while_loop): the per-example backward passes of
    # a draw go through a forward pass of N rows, not of samples * N, so time is linear in
    # samples and memory that of one draw.
    def draw(index, total):
        draw_seed = tf.stack([seed[0], seed[1] * samples + tf.cast(index, tf.int64)])

        def factors(output_loss, z):
            return [output_loss.sample_hessian_sqrt(z, draw_seed)]

        squares, _ = _output_space_squares(objective, batch, factors, chunk_size)
        return index + 1, [t + s for t, s in zip(total, squares, strict=True)]

    zeros = [tf.zeros_like(p) for p in objective.params()]
    _, total = tf.while_loop(lambda index, _: index < samples, draw, (tf.constant(0), zeros))
    _, losses = objective.forward(objective.params(), batch.x)
    return with_penalty(objective, [t / samples for t in total], len(losses))


def with_penalty(objective, squares, num_losses):
    """`squares` plus the diagonal of the elementwise weight penalties (`penalty_diagonal`)."""
    penalty = penalty_diagonal(objective, objective.params(), num_losses)
    return squares if penalty is None else [s + p for s, p in zip(squares, penalty, strict=True)]


def _output_space_squares(objective, batch, factors, chunk_size):
    # diag(sum_n c_n sum_f J_nᵀ r_nf r_nfᵀ J_n) = sum_n c_n sum_f (J_nᵀ r_nf)². Returns the
    # squares and the number of model.losses (for the penalty's diagonal).
    rows_of_gradients = per_example_factor_gradients(objective, batch, factors, chunk_size)
    total = [tf.zeros_like(p) for p in objective.params()]
    for chunk in rows_of_gradients.chunks:
        total = [t + tf.reduce_sum(tf.square(g), axis=0)
                 for t, g in zip(total, rows_of_gradients.of_chunk(chunk), strict=True)]
    return total, rows_of_gradients.num_losses


def _hutchinson(objective, batch, samples, seed):
    # diag(H) = E[v ⊙ H v] for Rademacher v (entries ±1).
    params = objective.params()

    def body(index, total):
        probe_seed = tf.stack([seed[0], seed[1] * samples + tf.cast(index, tf.int64)])
        probes = []
        for position, p in enumerate(params):
            probes.append(random.rademacher(tf.shape(p), probe_seed + [0, 7919 * (position + 1)],
                                            p.dtype))
        products = _hessian_product(objective, batch, probes)
        return index + 1, [t + v * hv for t, v, hv in zip(total, probes, products, strict=True)]

    _, total = tf.while_loop(lambda index, _: index < samples, body,
                             (tf.constant(0), [tf.zeros_like(p) for p in params]))
    return [t / samples for t in total]
