"""Spectrum tools against the eigenvalues of dense matrices (float64)."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_case

from keras_secondorder import curvature, spectrum
from keras_secondorder.curvature import dense


@pytest.fixture
def hessian_case(float64):
    model, x, y, sample_weight = make_case("cnn", "ce", batch=12)
    operator = curvature.HessianOperator(model, (x, y, sample_weight))
    eigenvalues = spectrum.exact_eigenvalues(model, x, y, sample_weight)
    return operator, eigenvalues.numpy()


def test_lanczos_extreme_eigenvalues(hessian_case):
    operator, eigenvalues = hessian_case
    result = spectrum.lanczos(operator, k=5)
    np.testing.assert_allclose(result.largest.numpy(), eigenvalues[::-1][:5], rtol=1e-4)
    np.testing.assert_allclose(result.smallest.numpy()[0], eigenvalues[0], rtol=1e-4)
    assert eigenvalues[0] < 0  # The Hessian is indefinite: the bottom eigenvalue is negative.
    assert result.converged and result.num_products <= operator.shape[0]
    top = spectrum.lanczos(operator, k=5, which="largest", tol=1e-8)
    np.testing.assert_allclose(top.largest.numpy(), eigenvalues[::-1][:5], rtol=1e-4)
    assert top.converged and top.num_products <= result.num_products


def test_lanczos_residuals_bound_the_errors_and_the_ritz_vectors_hold_them(hessian_case):
    # Stopped early (20 steps): each Ritz value lies within its residual of an eigenvalue, and
    # the residual is ||A y - θ y|| of its unit Ritz vector y.
    operator, eigenvalues = hessian_case
    result = spectrum.lanczos(operator, k=3, num_iterations=20, tol=1e-14, return_vectors=True)
    assert not result.converged
    for values, residuals, vectors in (
            (result.largest, result.largest_residuals, result.largest_vectors),
            (result.smallest, result.smallest_residuals, result.smallest_vectors)):
        for value, residual, vector in zip(values.numpy(), residuals.numpy(), vectors,
                                           strict=True):
            assert np.min(np.abs(eigenvalues - value)) <= residual * (1 + 1e-8) + 1e-12
            np.testing.assert_allclose(tf.norm(vector), 1.0, rtol=1e-10)
            np.testing.assert_allclose(tf.norm(operator.matvec(vector) - value * vector),
                                       residual, rtol=1e-6, atol=1e-12)
    assert spectrum.lanczos(operator, k=3).largest_vectors is None


def test_power_iteration_residuals_bound_the_errors(hessian_case):
    # The relative change can stop short of the eigenvalue; the residual bounds its error.
    operator, eigenvalues = hessian_case
    result = spectrum.power_iteration(operator, k=1, tol=1e-3, max_iterations=2000)
    top = eigenvalues[np.argmax(np.abs(eigenvalues))]
    error = abs(float(result.eigenvalues[0]) - top)
    assert 0 < error <= float(result.residuals[0])


def test_power_iteration_with_deflation(hessian_case):
    operator, eigenvalues = hessian_case
    by_magnitude = eigenvalues[np.argsort(-np.abs(eigenvalues))]
    result = spectrum.power_iteration(operator, k=3, tol=1e-10, max_iterations=2000)
    np.testing.assert_allclose(result.eigenvalues.numpy(), by_magnitude[:3], rtol=1e-4)
    assert len(set(np.round(result.eigenvalues.numpy(), 6))) == 3  # Distinct.
    gram = result.eigenvectors @ tf.transpose(result.eigenvectors)
    np.testing.assert_allclose(gram.numpy(), np.eye(3), atol=1e-3)
    assert bool(tf.reduce_all(result.converged)) and result.num_products <= 3 * 2000


def test_power_iteration_warm_start(hessian_case):
    operator, eigenvalues = hessian_case
    top = eigenvalues[np.argmax(np.abs(eigenvalues))]
    cold = spectrum.power_iteration(operator, tol=1e-10, max_iterations=2000)
    # From the eigenvector itself: two products (two equal Rayleigh quotients) and the eigenvalue.
    warm = spectrum.power_iteration(operator, tol=1e-10, initial_vectors=7.0 * cold.eigenvectors)
    assert warm.num_products == 2 and cold.num_products > 10
    np.testing.assert_allclose(warm.eigenvalues.numpy(), [top], rtol=1e-8)


def test_density_integrates_to_one_and_matches_histogram(hessian_case):
    operator, eigenvalues = hessian_case
    result = spectrum.spectral_density(operator, num_probes=20, num_iterations=40)
    grid, density = result.grid.numpy(), result.density.numpy()
    assert abs(np.trapezoid(density, grid) - 1.0) <= 1e-3
    # The estimated distribution function against the dense eigenvalues' empirical one.
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    for quantile in (0.1, 0.25, 0.5, 0.75, 0.9):
        point = np.quantile(eigenvalues, quantile)
        assert abs(np.interp(point, grid, cdf) - np.mean(eigenvalues <= point)) <= 0.1
    # negative_fraction counts eigenvalues below the zero band, -1e-3 max|λ| (its definition).
    exact_negative = np.mean(eigenvalues < -1e-3 * np.abs(eigenvalues).max())
    assert abs(float(result.negative_fraction) - exact_negative) <= 0.1


def test_hutchinson_trace_converges(hessian_case):
    # The error averaged over seeds falls like 1/sqrt(probes): 64 times the probes, ~8x smaller.
    operator, eigenvalues = hessian_case
    exact = eigenvalues.sum()

    def mean_error(num_probes):
        return np.mean([abs(float(spectrum.hutchinson_trace(operator, num_probes, seed).trace)
                            - exact) for seed in range(5)])

    assert mean_error(512) < mean_error(8) / 3
    result = spectrum.hutchinson_trace(operator, 512, seed=9)
    assert abs(float(result.trace) - exact) <= 4 * float(result.standard_error)


def test_per_layer_spectrum_is_the_dense_diagonal_block(float64):
    model, x, y, _ = make_case("mlp", "ce", batch=12)
    full = dense.hessian(model, x, y)
    head = model.layers[-1].trainable_variables
    start = sum(v.numpy().size for v in model.layers[0].trainable_variables)
    block = np.linalg.eigvalsh(full[start:, start:].numpy())
    result = spectrum.lanczos(curvature.HessianOperator(model, (x, y), variables=head), k=3)
    np.testing.assert_allclose(result.largest.numpy(), block[::-1][:3], rtol=1e-4)
    # The softmax head's curvature vanishes along its 6 logit-shift directions: a 6-fold zero,
    # which a Krylov method sees once.
    assert np.sum(np.abs(block) < 1e-10) == 6
    assert abs(float(result.smallest[0])) <= 1e-8


def test_exact_eigenvalues_of_the_ggn_are_nonnegative(float64):
    model, x, y, _ = make_case("mlp", "ce")
    assert float(spectrum.exact_eigenvalues(model, x, y, curvature="ggn")[0]) >= -1e-10


@pytest.mark.parametrize("call,match", [
    (lambda op: spectrum.lanczos(op, k=0), "`k` must be a positive integer"),
    (lambda op: spectrum.lanczos(op, which="top"), "`which` must be"),
    (lambda op: spectrum.power_iteration(op, tol=0), "`tol` must be positive"),
    (lambda op: spectrum.power_iteration(op, k=2, initial_vectors=tf.ones((1, op.shape[0]))),
     r"`initial_vectors` must be 2 nonzero rows"),
    (lambda op: spectrum.power_iteration(op, initial_vectors=tf.zeros((1, op.shape[0]))),
     r"`initial_vectors` must be 1 nonzero rows"),
    (lambda op: spectrum.spectral_density(op, num_probes=2.0), "`num_probes` must be a positive"),
    (lambda op: spectrum.lanczos(tf.eye(3)), "`operator` must be a tf.linalg.LinearOperator"),
    (lambda op: spectrum.hutchinson_trace(tf.linalg.LinearOperatorFullMatrix(
        tf.constant([[1.0, 2.0], [0.0, 1.0]]))), "must be a square self-adjoint operator"),
])
def test_bad_arguments(hessian_case, call, match):
    operator, _ = hessian_case
    with pytest.raises(ValueError, match=match):
        call(operator)
