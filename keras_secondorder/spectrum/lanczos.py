"""Lanczos with full reorthogonalization: extreme eigenvalues and the tridiagonal quadrature."""

import collections

import tensorflow as tf

from keras_secondorder._progress import counted
from keras_secondorder._validation import one_of, positive_int
from keras_secondorder.spectrum._krylov import (
    apply,
    check_operator,
    random_unit_vector,
)

LanczosResult = collections.namedtuple(
    "LanczosResult", ["largest", "smallest", "num_products", "converged", "ritz_values",
                      "largest_residuals", "smallest_residuals", "largest_vectors",
                      "smallest_vectors"])
LanczosResult.__doc__ = """Result of `lanczos`.

Attributes:
    largest: the `k` largest eigenvalues, in decreasing order (float64).
    smallest: the `k` smallest (most negative) eigenvalues, in increasing order (float64).
    num_products: operator products used.
    converged: whether the wanted Ritz residuals met the tolerance.
    ritz_values: all Ritz values of the last tridiagonal matrix, increasing.
    largest_residuals, smallest_residuals: `||A y - θ y||` of each returned Ritz pair
        (`|β_m s_mj|`, zero when the Krylov space is invariant): within it of `θ` lies an
        eigenvalue of `A`, so it bounds the error of the estimate (float64).
    largest_vectors, smallest_vectors: the Ritz vectors `y` (unit, float64, one per row in the
        order of the values), with `return_vectors=True`; else `None`.
"""


def tridiagonalize(operator, num_iterations, start, tol=None, k=None, which="both"):
    """Runs Lanczos from `start` with full reorthogonalization; the Krylov state is float64.

    Args:
        operator: a self-adjoint `tf.linalg.LinearOperator`.
        num_iterations: the most steps (operator products).
        start: the unit start vector, float64.
        tol: stop when the `k` wanted Ritz values at each wanted end have residuals
            `|β_m s_mj| <= tol * |θ_j|` (an upper bound of their eigenvalue error). Defaults to
            `None`: run all `num_iterations`.
        k: how many Ritz values at each end `tol` applies to.
        which: the ends `tol` applies to: `"both"`, `"largest"` or `"smallest"`.

    Returns:
        `(alphas, betas, converged, basis, residual_norm)`: the diagonal and off-diagonal of
        the tridiagonal `T`, whether `tol` was met, the Lanczos vectors (a list, one per
        alpha) and `β_m`, the norm of the last residual (zero for an invariant subspace).
    """
    basis = [start]
    alphas, betas = [], []
    converged = False
    for step in range(num_iterations):
        alpha, product = _lanczos_step(lambda v: apply(operator, v), basis, betas)
        alphas.append(alpha)
        beta = tf.norm(product)
        if tol is not None and step + 1 >= 2 * k:
            converged = _ritz_converged(alphas, betas, beta, tol, k, which)
        scale = tf.reduce_max(tf.abs(tf.stack(alphas + betas)))
        if beta <= 1e-12 * scale:
            beta = tf.zeros_like(beta)  # An invariant subspace: the Ritz pairs are exact.
            break
        if converged or step + 1 == num_iterations:
            break
        betas.append(beta)
        basis.append(product / beta)
    return _vector(alphas), _vector(betas), converged, basis, beta


def _lanczos_step(product, basis, betas):
    """`(α, r)`: `α = vᵀAv` of the last basis vector and the residual `r`, orthogonal to all.

    Full reorthogonalization, twice ("twice is enough"): keeps the basis orthogonal to working
    precision, so no ghost copies of converged eigenvalues appear.
    """
    residual = product(basis[-1])
    alpha = tf.tensordot(basis[-1], residual, 1)
    residual -= alpha * basis[-1] + (betas[-1] * basis[-2] if betas else 0.0)
    stacked = tf.stack(basis)
    for _ in range(2):
        residual -= tf.linalg.matvec(stacked, tf.linalg.matvec(stacked, residual), True)
    return alpha, residual


def krylov_basis(product, start, num_steps):
    """`num_steps` Lanczos steps from `start`, inside a traced step: `(V, T)` for optimizers.

    Unlike `tridiagonalize` (eager, stopping early), every step is taken, as tensor operations
    only, so that it traces into a compiled train step (and XLA). After a breakdown (`β ≈ 0`:
    the Krylov space is invariant, its Ritz pairs exact) the later vectors are zero, and so are
    their rows of `T`.

    Args:
        product: `v -> A v` on flat vectors, `A` symmetric.
        start: the first direction (not necessarily unit; a zero vector gives zero `V`).
        num_steps: `k`, the number of products.

    Returns:
        `(V, T)`: the orthonormal Lanczos vectors as the rows of a `(k, n)` tensor and the
        `(k, k)` tridiagonal `T = V A Vᵀ`, in `start`'s dtype.
    """
    def unit(vector, norm, alive):
        return tf.where(alive, vector / tf.where(alive, norm, 1.0), 0.0)

    start_norm = tf.norm(start)
    basis = [unit(start, start_norm, start_norm > 0)]
    alphas, betas = [], []
    for step in range(num_steps):
        alpha, residual = _lanczos_step(product, basis, betas)
        alphas.append(alpha)
        if step + 1 == num_steps:
            break
        beta = tf.norm(residual)
        alive = beta > 1e-10 * tf.reduce_max(tf.abs(tf.stack(alphas + betas)))
        betas.append(tf.where(alive, beta, 0.0))
        basis.append(unit(residual, beta, alive))
    tridiagonal = tf.linalg.diag(tf.stack(alphas))
    if betas:
        tridiagonal += tf.linalg.diag(tf.stack(betas), k=1) + tf.linalg.diag(tf.stack(betas), k=-1)
    return tf.stack(basis), tridiagonal


def _vector(values):
    """A float64 vector from a list of scalars (possibly empty) or a vector."""
    return tf.reshape(tf.convert_to_tensor(values, tf.float64), [-1])


def tridiagonal_eigh(alphas, betas):
    """Eigenvalues (increasing) and eigenvectors (columns) of the tridiagonal `T`.

    `alphas` and `betas` are its diagonal and off-diagonal, as vectors or lists of scalars.
    """
    alphas, betas = _vector(alphas), _vector(betas)
    matrix = tf.linalg.diag(alphas)
    if betas.shape[0]:
        matrix += tf.linalg.diag(betas, k=1) + tf.linalg.diag(betas, k=-1)
    return tf.linalg.eigh(matrix)


def _ritz_converged(alphas, betas, beta, tol, k, which):
    values, vectors = tridiagonal_eigh(alphas, betas)
    ends = tf.concat([tf.range(k) if which != "largest" else tf.zeros([0], tf.int32),
                      tf.range(len(alphas) - k, len(alphas)) if which != "smallest"
                      else tf.zeros([0], tf.int32)], axis=0)
    residuals = tf.abs(beta * tf.gather(vectors[-1], ends))
    return bool(tf.reduce_all(residuals <= tol * tf.abs(tf.gather(values, ends))))


def lanczos(operator, k=1, num_iterations=None, tol=1e-6, which="both", seed=0,
            return_vectors=False, verbose="auto"):
    """The `k` largest and `k` smallest (most negative) eigenvalues, by the Lanczos method.

    Full reorthogonalization against all previous Lanczos vectors, stored in float64; the cost
    is one operator product per step, plus `O(P m)` work for the reorthogonalization. A Krylov
    method sees each distinct eigenvalue once: a repeated eigenvalue (such as the zero
    curvature along a softmax's logit shifts) is returned once, followed by the next distinct
    ones.

    Args:
        operator: a self-adjoint `tf.linalg.LinearOperator`, e.g. `curvature.HessianOperator`.
        k: eigenvalues wanted at each end of the spectrum. Defaults to `1`.
        num_iterations: steps at most. Defaults to `None`: `min(P, max(10 k, 60))`.
        tol: stop once the wanted Ritz values have residuals `<= tol * |θ|`; the residual
            bounds the eigenvalue error (and its square over the gap bounds it tighter).
            Defaults to `1e-6`.
        which: which end(s) `tol` waits for: `"both"`, `"largest"` or `"smallest"`. Both ends
            are returned either way; the other end is then only as converged as it happens to
            be. Defaults to `"both"`.
        seed: seed of the random start vector. Defaults to `0`.
        return_vectors: also return the Ritz vectors (`k` at each end, each of the operator's
            dimension). Defaults to `False`.
        verbose: a progress bar (`_progress.Progress`) once the work takes more than two
            seconds: `"auto"` in interactive use, `1` always, `0` never. Defaults to `"auto"`.

    Returns:
        A `LanczosResult`.
    """
    dimension = check_operator(operator)
    positive_int(k, "k")
    one_of(which, "which", ("both", "largest", "smallest"))
    if num_iterations is None:
        num_iterations = min(dimension, max(10 * k, 60))
    positive_int(num_iterations, "num_iterations")
    operator, progress = counted(operator, num_iterations, verbose, "products")
    alphas, betas, converged, basis, residual_norm = tridiagonalize(
        operator, num_iterations, random_unit_vector(dimension, seed), tol=tol, k=k,
        which=which)
    progress.finish()
    values, vectors = tridiagonal_eigh(alphas, betas)
    if len(alphas) == dimension:  # A full tridiagonalization: the Ritz values are exact.
        converged, residual_norm = True, tf.zeros_like(residual_norm)
    k_found = min(k, int(values.shape[0]))
    residuals = tf.abs(residual_norm * vectors[-1])
    largest, smallest = slice(-1, -k_found - 1, -1), slice(0, k_found)

    def ritz_vectors(part):  # y_j = V s_j, one per row.
        return tf.transpose(tf.stack(basis, axis=1) @ vectors[:, part]) if return_vectors \
            else None

    return LanczosResult(values[largest], values[smallest], int(alphas.shape[0]), converged,
                         values, residuals[largest], residuals[smallest],
                         ritz_vectors(largest), ritz_vectors(smallest))
