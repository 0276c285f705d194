"""Power iteration (with deflation) and LeCun's on-line power method."""

import collections

import tensorflow as tf

from keras_secondorder import curvature
from keras_secondorder._progress import counted
from keras_secondorder._validation import one_of, positive_int
from keras_secondorder.curvature.objective import Batch, as_batches, as_objective
from keras_secondorder.spectrum._krylov import (
    apply,
    check_operator,
    random_unit_vector,
)

PowerIterationResult = collections.namedtuple(
    "PowerIterationResult",
    ["eigenvalues", "eigenvectors", "num_products", "converged", "residuals"])
PowerIterationResult.__doc__ = """Result of `power_iteration`.

Attributes:
    eigenvalues: `(k,)` float64, in the order found (decreasing magnitude).
    eigenvectors: `(k, P)` float64 unit vectors.
    num_products: operator products used.
    converged: `(k,)` bool, whether each met the tolerance before `max_iterations`.
    residuals: `(k,)` float64, `||A v - θ v||` of each estimate `θ` and the vector `v` it is the
        Rayleigh quotient of (on the deflated operator): an eigenvalue lies within it of `θ`,
        a guaranteed error bound, unlike the relative change `tol` watches.
"""


def power_iteration(operator, k=1, tol=1e-4, max_iterations=100, seed=0, initial_vectors=None,
                    verbose="auto"):
    """The `k` eigenvalues of largest magnitude, by power iteration with deflation.

    Each eigenpair is iterated on `A - sum_j λ_j u_j u_jᵀ` (the pairs found before it), until
    the Rayleigh quotient changes by at most `tol` relative. Convergence is geometric with ratio
    `r = |λ_next / λ|`, so close eigenvalues need many products: use `lanczos` for more than a
    few. The change between two steps is not the error: the Rayleigh quotient's error falls by
    `r²` a step, so when it stops at a change `δ` the error left is about `δ r² / (1 - r²)`,
    several times `δ` when `r` is near 1 (on a test model `tol=1e-8` left a 4.3e-8 relative
    error). The result's `residuals` bound each error for certain.

    Args:
        operator: a self-adjoint `tf.linalg.LinearOperator`, e.g. `curvature.HessianOperator`.
        k: how many eigenpairs. Defaults to `1`.
        tol: relative change of the eigenvalue estimate at which to stop. Defaults to `1e-4`.
        max_iterations: products per eigenpair at most. Defaults to `100`.
        seed: seed of the random start vectors. Defaults to `0`.
        initial_vectors: `(k, P)` start vectors in place of random ones, e.g. the
            `eigenvectors` of an earlier call on a nearby operator (the same model a few steps
            of training later): a warm start converges in a few products. An old eigenvector
            alone can be close to an eigenvector of a lower eigenvalue of the new operator, a
            fixed point where the iteration stops at once; `PowerMethodLR` adds a random vector
            to it. Defaults to `None`.
        verbose: a progress bar (`_progress.Progress`) once the work takes more than two
            seconds: `"auto"` in interactive use, `1` always, `0` never. Defaults to `"auto"`.

    Returns:
        A `PowerIterationResult`.
    """
    dimension = check_operator(operator)
    positive_int(k, "k")
    if initial_vectors is not None:
        initial_vectors = tf.cast(initial_vectors, tf.float64)
        if initial_vectors.shape != (k, dimension) or not bool(
                tf.reduce_all(tf.norm(initial_vectors, axis=1) > 0)):
            raise ValueError(f"`initial_vectors` must be {k} nonzero rows of length {dimension} "
                             f"(shape (k, P)); received shape {tuple(initial_vectors.shape)}. "
                             "Pass the `eigenvectors` of an earlier result for this operator, "
                             "or None for random start vectors.")
    positive_int(max_iterations, "max_iterations")
    if not tol > 0:
        raise ValueError(f"`tol` must be positive; received {tol!r}.")
    operator, progress = counted(operator, k * max_iterations, verbose, "products")
    eigenvalues, eigenvectors, converged, residuals, num_products = [], [], [], [], 0
    for index in range(k):
        if initial_vectors is None:
            vector = random_unit_vector(dimension, seed, index)
        else:
            vector = initial_vectors[index] / tf.norm(initial_vectors[index])
        estimate, done = None, False
        for _ in range(max_iterations):
            product = apply(operator, vector)
            num_products += 1
            for value, found in zip(eigenvalues, eigenvectors, strict=True):
                product -= value * tf.tensordot(found, vector, 1) * found
            new_estimate = tf.tensordot(vector, product, 1)
            residual = tf.norm(product - new_estimate * vector)
            done = estimate is not None and bool(
                tf.abs(new_estimate - estimate) <= tol * tf.abs(new_estimate))
            estimate = new_estimate
            vector = product / tf.norm(product)
            if done:
                break
        eigenvalues.append(estimate)
        eigenvectors.append(vector)
        converged.append(done)
        residuals.append(residual)
    progress.finish()
    return PowerIterationResult(tf.stack(eigenvalues), tf.stack(eigenvectors), num_products,
                                tf.constant(converged), tf.stack(residuals))


OnlinePowerResult = collections.namedtuple(
    "OnlinePowerResult", ["eigenvalue", "learning_rate", "history", "presentations"])
OnlinePowerResult.__doc__ = """Result of `online_power_method`.

Attributes:
    eigenvalue: the estimate of the largest eigenvalue, `|Psi|`.
    learning_rate: LeCun's optimal learning rate `1 / |Psi|`.
    history: `|Psi|` after each presentation, a `(presentations,)` tensor.
    presentations: how many patterns (or small batches) were presented.
"""


def online_power_method(model, data, *, gamma=0.05, alpha=0.01, product="finite_difference",
                        presentations=100, loss=None, variables=None, training=False, seed=0):
    """LeCun's on-line estimate of the Hessian's largest eigenvalue and the learning rate 1/λ_max.

    One pattern (or small batch) `p` at a time, a running average of Hessian products along its
    own direction (LeCun, Bottou, Orr and Müller, "Efficient BackProp", 1998, section 9):

        Psi <- (1 - gamma) Psi + gamma (1 / alpha) (g_p(w + alpha Psi/|Psi|) - g_p(w))

    where `g_p` is the gradient on pattern `p`. Its norm `|Psi|` tends to the largest eigenvalue
    of the average Hessian, and `1 / |Psi|` is the optimal learning rate; the right order of
    magnitude comes within about 100 presentations.

    Args:
        model: a built Keras model (compiled with a loss unless `loss` is given), or an
            `Objective`.
        data: the patterns: a `tf.data.Dataset` or iterable of batches, or one batch tuple
            `(x, y)` whose examples are presented one at a time. Cycled if shorter than
            `presentations`.
        gamma: the running average's rate; its memory is about `1 / gamma` patterns, which
            trades noise against speed. Defaults to `0.05`.
        alpha: the finite-difference step, along the unit vector `Psi / |Psi|`.
            Defaults to `0.01`.
        product: `"finite_difference"` (LeCun's recipe) or `"exact"` (the R-operator in its
            place). Defaults to `"finite_difference"`.
        presentations: how many patterns to present. Defaults to `100`.
        loss, variables, training: see `curvature.Objective`.
        seed: seed of the random start `Psi`. Defaults to `0`.

    Returns:
        An `OnlinePowerResult`.
    """
    one_of(product, "product", ("finite_difference", "exact"))
    if not 0 < gamma <= 1:
        raise ValueError(f"`gamma` must be in (0, 1]; received {gamma!r}.")
    if not alpha > 0:
        raise ValueError(f"`alpha` must be positive; received {alpha!r}.")
    positive_int(presentations, "presentations")
    objective = as_objective(model, loss, variables, training)
    patterns = _patterns(data)
    psi = curvature.unflatten(
        tf.cast(random_unit_vector(objective.num_parameters, seed), objective.dtype),
        objective.shapes)

    @tf.function
    def step(psi, batch):
        direction = [p / tf.linalg.global_norm(psi) for p in psi]
        if product == "exact":
            hv = curvature.hessian_vector_product(objective, batch.x, batch.y, direction,
                                                  batch.sample_weight)
        else:
            hv = curvature.finite_difference_hessian_vector_product(
                objective, batch.x, batch.y, direction, batch.sample_weight, step=alpha)
        psi = [(1.0 - gamma) * p + gamma * h for p, h in zip(psi, hv, strict=True)]
        return psi, tf.linalg.global_norm(psi)

    history = []
    for index in range(presentations):
        psi, norm = step(psi, patterns[index % len(patterns)])
        history.append(norm)
    eigenvalue = history[-1]
    return OnlinePowerResult(eigenvalue, 1.0 / eigenvalue, tf.stack(history), presentations)


def _patterns(data):
    """A list of `Batch`es: the examples of one batch tuple one by one, or the given batches."""
    batches = as_batches(data)
    if not isinstance(data, tuple):
        return batches
    (batch,) = batches
    size = int(tf.shape(tf.nest.flatten(batch.x)[0])[0])
    return [Batch(*(None if part is None else tf.nest.map_structure(lambda a, i=i: a[i:i + 1],
                                                                    part) for part in batch))
            for i in range(size)]
