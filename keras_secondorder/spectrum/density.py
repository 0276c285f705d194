"""The spectral density by stochastic Lanczos quadrature, and Hutchinson's trace."""

import collections
import math

import tensorflow as tf

from keras_secondorder._progress import counted
from keras_secondorder._validation import positive_int
from keras_secondorder.spectrum._krylov import (
    apply,
    check_operator,
    rademacher,
    random_unit_vector,
)
from keras_secondorder.spectrum.lanczos import tridiagonal_eigh, tridiagonalize

SpectralDensity = collections.namedtuple(
    "SpectralDensity", ["grid", "density", "negative_fraction", "nodes", "weights", "sigma",
                        "num_products", "negative_fraction_error"])
SpectralDensity.__doc__ = """Result of `spectral_density`.

Attributes:
    grid: `(grid_size,)` points spanning the spectrum, float64.
    density: the smoothed density on `grid` (integrates to 1 over the real line).
    negative_fraction: the estimated fraction of eigenvalues below `-zero_tolerance * max|λ|`,
        the quadrature's mass there.
    nodes, weights: `(probes, m)` quadrature nodes (Ritz values) and weights of each probe.
    sigma: the Gaussian broadening.
    num_products: operator products used.
    negative_fraction_error: the standard error of `negative_fraction` over the probes (NaN
        for one probe; 0 when the spectrum was computed exactly). It measures the probes'
        sampling noise, not the quadrature's resolution (see `spectral_density`).
"""


def spectral_density(operator, num_probes=1, num_iterations=80, grid_size=1000, sigma=None,
                     zero_tolerance=1e-3, seed=0, verbose="auto"):
    """The eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019, PyHessian).

    For a random unit vector `v`, `vᵀ f(A) v = sum_i (v·u_i)² f(λ_i)` is approximated by the
    Gauss quadrature of `m` Lanczos steps, `sum_j τ_j f(θ_j)`: nodes `θ_j` (Ritz values) and
    weights `τ_j` (squared first components of `T`'s eigenvectors). With `E[(v·u_i)²] = 1/P`,
    averaging over probes estimates the spectral measure `(1/P) sum_i δ(t - λ_i)`, which
    Gaussian broadening `σ` turns into a density.

    Args:
        operator: a self-adjoint `tf.linalg.LinearOperator`.
        num_probes: random start vectors averaged. Defaults to `1` (for large P one probe is
            already close: the weights concentrate).
        num_iterations: Lanczos steps per probe (quadrature nodes). Defaults to `80`.
        grid_size: points of the returned grid. Defaults to `1000`.
        sigma: the broadening. Defaults to `None`: 1% of the spectrum's width.
        zero_tolerance: eigenvalues within `zero_tolerance * max|λ|` of zero count as zero,
            not negative, in `negative_fraction`. An over-parameterized network has a large
            bulk of (numerically) zero curvature, its flat directions; without the band, half
            of that bulk would count as negative and drown the signal of Dauphin et al. (2014).
            Defaults to `1e-3`.
        seed: seed of the probes. Defaults to `0`.
        verbose: a progress bar (`_progress.Progress`) once the work takes more than two
            seconds: `"auto"` in interactive use, `1` always, `0` never. Defaults to `"auto"`.

    How accurate `negative_fraction` is: `m` Lanczos nodes resolve the spectrum to about
    `(λ_max - λ_min) / m` in its interior, so eigenvalues closer than that to the zero band
    can be counted on the wrong side of it; and one probe of a `P`-dimensional operator has a
    sampling error of about `sqrt(2 f (1 - f) / P)` for a fraction `f` (0.06 at `P = 50`),
    which more probes reduce (`negative_fraction_error`). When the budget of
    `num_probes * num_iterations` products covers the dimension `P`, the operator is
    materialized with `P` products instead and the spectrum computed exactly (`eigvalsh`), with
    weight `1/P` per eigenvalue: for small models the result is then exact.

    Returns:
        A `SpectralDensity`.
    """
    dimension = check_operator(operator)
    for value, name in ((num_probes, "num_probes"), (num_iterations, "num_iterations"),
                        (grid_size, "grid_size")):
        positive_int(value, name)
    if sigma is not None and not sigma > 0:
        raise ValueError(f"`sigma` must be positive; received {sigma!r}.")
    if not 0 <= zero_tolerance < 1:
        raise ValueError(f"`zero_tolerance` must be in [0, 1); received {zero_tolerance!r}.")
    steps = min(num_iterations, dimension)
    exact = dimension <= num_probes * steps
    operator, progress = counted(operator, dimension if exact else num_probes * steps, verbose,
                                 "products")
    if exact:
        nodes, weights = _exact_quadrature(operator, dimension)
        num_products = dimension
    else:
        nodes, weights, num_products = _lanczos_quadrature(operator, dimension, num_probes,
                                                           steps, seed)
    progress.finish()
    low, high = float(tf.reduce_min(nodes)), float(tf.reduce_max(nodes))
    if sigma is None:
        sigma = 0.01 * max(high - low, 1e-12)
    grid = tf.linspace(tf.constant(low - 5 * sigma, tf.float64), high + 5 * sigma, grid_size)
    gaussians = tf.exp(-0.5 * tf.square((grid[:, None] - tf.reshape(nodes, [-1])) / sigma))
    density = tf.linalg.matvec(gaussians, tf.reshape(weights, [-1])) / (sigma * math.sqrt(
        2 * math.pi))
    # Quadrature mass below -ε: sum_j τ_j [θ_j < -ε].
    threshold = -zero_tolerance * tf.reduce_max(tf.abs(nodes))
    # Each probe's estimate (its weights sum to 1 / probes), their mean and standard error.
    per_probe = tf.reduce_sum(tf.where(nodes < threshold, weights, 0.0), axis=1) * len(nodes)
    negative_fraction = tf.reduce_mean(per_probe)
    if exact or len(nodes) == 1:
        error = tf.constant(0.0 if exact else float("nan"), tf.float64)
    else:
        error = tf.math.reduce_std(per_probe) / math.sqrt(len(nodes) - 1)
    return SpectralDensity(grid, density, negative_fraction, nodes, weights, sigma, num_products,
                           error)


def _exact_quadrature(operator, dimension):
    """All eigenvalues, weight `1/P` each, from the operator materialized by `P` products."""
    columns = [apply(operator, column) for column in tf.unstack(tf.eye(dimension,
                                                                       dtype=tf.float64))]
    matrix = tf.stack(columns, axis=1)
    values = tf.linalg.eigvalsh(0.5 * (matrix + tf.transpose(matrix)))
    return values[None], tf.fill([1, dimension], tf.constant(1 / dimension, tf.float64))


def _lanczos_quadrature(operator, dimension, num_probes, steps, seed):
    """Per probe the Gauss quadrature of `steps` Lanczos steps: nodes, weights, products."""
    nodes, weights, num_products = [], [], 0
    for probe in range(num_probes):
        alphas, betas, *_ = tridiagonalize(operator, steps, random_unit_vector(dimension, seed,
                                                                              probe))
        values, vectors = tridiagonal_eigh(alphas, betas)
        num_products += int(alphas.shape[0])
        pad = steps - int(values.shape[0])  # An early invariant subspace: pad with zero weight.
        nodes.append(tf.pad(values, [[0, pad]], constant_values=float(values[-1])))
        weights.append(tf.pad(tf.square(vectors[0]), [[0, pad]]))
    return tf.stack(nodes), tf.stack(weights) / num_probes, num_products


HutchinsonTrace = collections.namedtuple("HutchinsonTrace", ["trace", "standard_error",
                                                             "num_products"])
HutchinsonTrace.__doc__ = """Result of `hutchinson_trace`: the estimate, its standard error, and
the operator products used."""


def hutchinson_trace(operator, num_probes=100, seed=0, verbose="auto"):
    """Hutchinson's unbiased trace estimate `tr(A) = E[vᵀ A v]` with Rademacher `v`.

    Args:
        operator: a self-adjoint `tf.linalg.LinearOperator`.
        num_probes: random probes averaged; the standard error falls as `1/sqrt(num_probes)`.
            Defaults to `100`.
        seed: seed of the probes. Defaults to `0`.
        verbose: a progress bar (`_progress.Progress`) once the work takes more than two
            seconds: `"auto"` in interactive use, `1` always, `0` never. Defaults to `"auto"`.

    Returns:
        A `HutchinsonTrace`.
    """
    dimension = check_operator(operator)
    positive_int(num_probes, "num_probes")
    operator, progress = counted(operator, num_probes, verbose, "products")
    samples = []
    for probe in range(num_probes):
        vector = rademacher(dimension, seed, probe)
        samples.append(tf.tensordot(vector, apply(operator, vector), 1))
    progress.finish()
    samples = tf.stack(samples)
    error = (tf.math.reduce_std(samples) * math.sqrt(num_probes / max(num_probes - 1, 1))
             / math.sqrt(num_probes))
    return HutchinsonTrace(tf.reduce_mean(samples), error, num_probes)
