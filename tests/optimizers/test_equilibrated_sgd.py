"""EquilibratedSGD: saddle escape, the estimator's convergence, golden steps, settings."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_secondorder as ks
from keras_secondorder.optimizers import EquilibratedSGD


class Quadratic(ks.Model):
    """`L(w) = ½ wᵀ A w - bᵀ w`, whatever the batch: a known, possibly indefinite Hessian `A`."""

    def __init__(self, matrix, linear, start):
        super().__init__()
        self.matrix = tf.constant(matrix)
        self.linear = tf.constant(linear)
        self.w = self.add_weight(shape=(len(start),), initializer=keras.initializers.Constant(
            start), name="w")

    def call(self, x):
        return x

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return 0.5 * tf.tensordot(self.w, tf.linalg.matvec(self.matrix, self.w), 1) - (
            tf.tensordot(self.linear, self.w, 1))


def quadratic(matrix, start, linear=None):
    matrix = np.asarray(matrix, dtype="float64")
    linear = np.zeros(len(start)) if linear is None else np.asarray(linear, dtype="float64")
    model = Quadratic(matrix, linear, np.asarray(start, dtype="float64"))
    model(np.zeros((1, 1)))
    return model


def run(model, optimizer, steps):
    model.compile(optimizer)
    data = np.zeros((steps, 1))
    history = model.fit(data, data, batch_size=1, epochs=1, shuffle=False, verbose=0)
    return float(model.compute_loss()), history.history


def test_escapes_a_saddle_where_sgd_at_its_largest_stable_rate_stalls(float64):
    # Eigenvalues 100, 0.01 and -0.01 (condition 10⁴, indefinite), the start near the saddle.
    # SGD at 1.9/λ_max kills the stiff direction, then crawls along the other two; equilibration
    # scales each direction by its own curvature magnitude and leaves the saddle.
    matrix = np.diag([100.0, 0.01, -0.01])
    start = [1.0, 1.0, 1e-3]
    sgd_loss, _ = run(quadratic(matrix, start), keras.optimizers.SGD(1.9 / 100), 200)
    esgd_loss, _ = run(quadratic(matrix, start),
                       EquilibratedSGD(0.05, update_every=1, damping=1e-4), 200)
    start_loss = 0.5 * (100 + 0.01 - 0.01 * 1e-6)
    assert sgd_loss > 0.004  # Stalled: the 0.01-direction still holds its 0.005.
    assert esgd_loss < sgd_loss - 0.01  # Past the saddle, down the negative direction.
    assert esgd_loss < start_loss


def test_equilibration_estimate_converges_to_the_row_norms(float64):
    # E[(Av)²] = sum_j A_ij², for a symmetric indefinite A; learning rate 0 keeps w fixed.
    matrix = np.array([[2.0, -1.0, 0.5], [-1.0, -3.0, 0.0], [0.5, 0.0, 0.1]])
    model = quadratic(matrix, [0.3, -0.2, 0.1])
    optimizer = EquilibratedSGD(0.0, update_every=1, seed=3)
    run(model, optimizer, 4000)
    estimate = np.array(optimizer._accumulators[0]) / float(optimizer.estimates)
    np.testing.assert_allclose(estimate, (matrix**2).sum(axis=1), rtol=0.06)
    assert float(optimizer.estimates) == 4000


def test_golden_jacobi_steps_with_momentum(float64):
    # Jacobi with Rademacher probes on a diagonal A: v ⊙ A v = diag(A) exactly, whatever v.
    a, b, start = np.array([4.0, -2.0]), np.array([1.0, 1.0]), np.array([0.5, 0.5])
    rate, damping, momentum = 0.1, 1e-4, 0.9
    model = quadratic(np.diag(a), start, b)
    optimizer = EquilibratedSGD(rate, preconditioner="jacobi", update_every=2, damping=damping,
                                momentum=momentum)
    run(model, optimizer, 3)
    w, m = start.copy(), np.zeros(2)
    for _ in range(3):
        gradient = a * w - b
        m = momentum * m - rate * gradient / (np.abs(a) + damping)
        w = w + m
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-12)
    assert float(optimizer.estimates) == 2  # Steps 0 and 2.


def test_golden_rmsprop_with_exponential_average(float64):
    a, b, start = np.array([4.0, -2.0]), np.array([1.0, 1.0]), np.array([0.5, 0.5])
    rate, damping, beta = 0.1, 1e-4, 0.9
    model = quadratic(np.diag(a), start, b)
    run(model, EquilibratedSGD(rate, preconditioner="rmsprop", update_every=1, damping=damping,
                               beta=beta), 3)
    w, d = start.copy(), np.zeros(2)
    for k in range(1, 4):
        gradient = a * w - b
        d = beta * d + (1 - beta) * gradient**2
        w = w - rate * gradient / (np.sqrt(d / (1 - beta**k)) + damping)
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-12)


def test_a_non_finite_step_is_skipped_and_counted(float64):
    model = quadratic(np.diag([1.0, 2.0]), [np.nan, 1.0])
    _, history = run(model, EquilibratedSGD(0.1, update_every=1), 2)
    assert history["skipped_steps"] == [2.0]
    assert np.isnan(model.get_weights()[0][0]) and model.get_weights()[0][1] == 1.0
    assert float(model.optimizer.estimates) == 0  # Skipped steps do not count.


@pytest.mark.parametrize("settings, message", [
    ({"preconditioner": "adam"}, "`preconditioner` must be one of"),
    ({"update_every": 0}, "`update_every` must be a positive integer"),
    ({"damping": 0.0}, "`damping` must be a number > 0"),
    ({"momentum": 1.0}, r"`momentum` must be a number in \[0, 1\)"),
    ({"beta": -0.1}, r"`beta` must be a number in \[0, 1\)"),
    ({"seed": 1.5}, "`seed` must be an integer"),
])
def test_bad_settings_name_the_parameter(settings, message):
    with pytest.raises(ValueError, match=message):
        EquilibratedSGD(**settings)


def test_config_round_trip():
    optimizer = EquilibratedSGD(0.02, preconditioner="jacobi", update_every=5, damping=1e-3,
                                momentum=0.5, beta=0.99, seed=4, clipvalue=1.0)
    config = optimizer.get_config()
    assert EquilibratedSGD.from_config(config).get_config() == config
