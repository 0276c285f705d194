"""HessianFree and its parts: CG, Martens' stopping rule, backtracking, damping, line search."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_secondorder as ks
from keras_secondorder.optimizers import HessianFree
from keras_secondorder.optimizers.conjugate_gradient import (
    ConjugateGradientResult,
    conjugate_gradient,
    martens_should_stop,
    save_schedule,
)
from keras_secondorder.optimizers.hessian_free import (
    adjust_damping,
    armijo_line_search,
    backtrack,
    hessian_free_step,
)

RNG = np.random.default_rng(0)


def spd_system(size=30, condition=100.0):
    basis, _ = np.linalg.qr(RNG.normal(size=(size, size)))
    matrix = basis @ np.diag(np.geomspace(1.0, condition, size)) @ basis.T
    return matrix, RNG.normal(size=size)


def solve(matrix, b, **kwargs):
    matrix, b = tf.constant(matrix), tf.constant(b)
    return conjugate_gradient(lambda v: tf.linalg.matvec(matrix, v), b, tf.zeros_like(b),
                              **kwargs)


def test_cg_solves_a_dense_spd_system():
    matrix, b = spd_system()
    exact = np.linalg.solve(matrix, b)
    tight = solve(matrix, b, tolerance=1e-12)
    np.testing.assert_allclose(tight.solution, exact, rtol=1e-8, atol=1e-10)
    preconditioned = solve(matrix, b, tolerance=1e-12, preconditioner=tf.constant(
        np.diag(matrix)))
    np.testing.assert_allclose(preconditioned.solution, exact, rtol=1e-8, atol=1e-10)
    # The documented meaning of the default tolerance: the model's value is within the
    # progress the last k iterations were still making, k * 5e-4 relative (k = 10 here).
    default = solve(matrix, b)
    optimum = -0.5 * b @ exact
    value = 0.5 * default.solution.numpy() @ matrix @ default.solution.numpy() - b @ (
        default.solution.numpy())
    assert (value - optimum) / abs(optimum) < 10 * 5e-4
    assert default.iterations < tight.iterations


def test_cg_values_are_the_quadratic_model():
    matrix, b = spd_system(size=8)
    result = solve(matrix, b, tolerance=1e-12)
    x = result.solution.numpy()
    value = 0.5 * x @ matrix @ x - b @ x
    np.testing.assert_allclose(result.values[result.iterations], value, rtol=1e-10)


def reference_rule(i, values, min_gap=10, gap_ratio=0.1, tolerance=5e-4):
    k = max(min_gap, math.ceil(gap_ratio * i))
    return i > k and values[i] < 0 and (values[i] - values[i - k]) / values[i] < k * tolerance


def test_stopping_rule_fires_exactly_as_specified():
    # q falls by 1 per iteration up to i = 20, then by 0.001: at i = 30 the last 10 iterations
    # gained 0.01 / 20.01 = 5e-4 < 10 * 5e-4, the first i where the rule holds (i = 29 still
    # sees the fast iteration 19 -> 20 in its window).
    values = [0.0] + [-float(i) for i in range(1, 21)] + [
        -20.0 - 0.001 * (i - 20) for i in range(21, 120)]
    fired = [int(i) for i in range(1, len(values))
             if martens_should_stop(i, tf.constant(values, tf.float64))]
    assert fired[0] == 30
    assert fired == [i for i in range(1, len(values)) if reference_rule(i, values)]
    # k grows as ceil(0.1 i) past 100, and a positive q never stops.
    slow = [0.0] + [-1.0 - 0.1 * math.log(i) for i in range(1, 300)]
    assert [bool(martens_should_stop(i, tf.constant(slow, tf.float64)))
            for i in range(1, 300)] == [reference_rule(i, slow) for i in range(1, 300)]
    assert not martens_should_stop(50, tf.constant([1.0] * 60, tf.float64))


def test_cg_stops_at_the_first_iteration_the_rule_fires():
    matrix, b = spd_system(size=200, condition=1e4)
    result = solve(matrix, b, tolerance=1e-3)
    values = result.values.numpy()
    first = next(i for i in range(1, 251) if reference_rule(i, values, tolerance=1e-3))
    assert result.iterations == first < 200


def test_save_schedule_is_ceil_5_times_1_3_to_the_j():
    assert save_schedule(250) == [5, 7, 9, 11, 15, 19, 25, 32, 41, 54, 69, 90, 117, 152, 197]
    matrix, b = spd_system(size=40, condition=1e3)
    result = solve(matrix, b, tolerance=1e-12, max_iterations=12)
    assert int(result.num_saved) == 4  # 5, 7, 9, 11.
    every = [solve(matrix, b, tolerance=1e-12, max_iterations=i).solution for i in (5, 7, 9, 11)]
    np.testing.assert_allclose(result.saved.numpy(), np.stack(every), rtol=1e-12)


def cg_result(saved, final):
    return ConjugateGradientResult(
        solution=tf.constant([final], tf.float64), iterations=tf.constant(20),
        values=tf.zeros(21, tf.float64),
        saved=tf.constant([[s] for s in saved], tf.float64),
        saved_iterations=tf.constant([5, 7, 9, 11][:len(saved)]),
        num_saved=tf.constant(len(saved)))


def distance_to_three(step):
    return tf.reduce_sum(tf.square(step - 3.0))


def test_backtracking_returns_the_best_stored_iterate():
    step, value, iteration = backtrack(distance_to_three, cg_result([1.0, 2.0, 3.0, 4.0], 5.0))
    assert (float(step[0]), float(value), int(iteration)) == (3.0, 0.0, 9)
    # Martens' walk stops at the first worse iterate, even if an earlier one is better.
    step, value, iteration = backtrack(distance_to_three, cg_result([2.5, 6.0], 5.0))
    assert (float(step[0]), float(value), int(iteration)) == (5.0, 4.0, 20)
    # A non-finite last iterate is never chosen over a finite one.
    step, _, _ = backtrack(distance_to_three, cg_result([1.0, 2.0], float("nan")))
    assert float(step[0]) == 2.0


def test_damping_moves_with_the_reduction_ratio():
    def adjusted(rho):
        return float(adjust_damping(tf.constant(1.0), tf.constant(rho)))

    assert adjusted(0.1) == 1.5 and adjusted(-3.0) == 1.5 and adjusted(float("nan")) == 1.5
    assert adjusted(0.9) == pytest.approx(2 / 3)
    assert adjusted(0.5) == 1.0 and adjusted(0.25) == 1.0 and adjusted(0.75) == 1.0


def test_damping_decreases_down_to_its_floor_and_still_increases_from_it():
    def adjusted(damping, rho):
        return float(adjust_damping(tf.constant(damping), tf.constant(rho), minimum=0.8))

    assert adjusted(1.0, 0.9) == pytest.approx(0.8)  # 2/3 would go below the floor.
    assert adjusted(0.8, 0.9) == pytest.approx(0.8)
    assert adjusted(3.0, 0.9) == pytest.approx(2.0)  # Above the floor: the plain factor.
    assert adjusted(0.8, 0.1) == pytest.approx(1.2)


def test_line_search_rejects_an_ascent_step_and_shrinks_an_overshoot():
    def objective(step):  # f(w + step) with w = 1, f = w²; the gradient is 2.
        return tf.reduce_sum(tf.square(1.0 + step))

    value = tf.constant(1.0)
    ascent = tf.constant([1.0])
    rate, new_value, accepted = armijo_line_search(objective, ascent, value, tf.constant(2.0),
                                                   objective(ascent))
    assert (float(rate), float(new_value), bool(accepted)) == (0.0, 1.0, False)
    overshoot = tf.constant([-4.0])
    rate, new_value, accepted = armijo_line_search(objective, overshoot, value,
                                                   tf.constant(-8.0), objective(overshoot))
    assert bool(accepted) and float(rate) == pytest.approx(0.8 ** 4)  # The first that passes.
    assert float(new_value) == pytest.approx((1 - 4 * 0.8 ** 4) ** 2)


def quadratic_step(matrix, gradient, damping, scale=1.0, warm_start=None, **settings):
    """`hessian_free_step` on `f(w + p) = 3 + gᵀp + ½ scale pᵀA p` with curvature products `A p`."""
    matrix, gradient = tf.constant(matrix, tf.float64), tf.constant(gradient, tf.float64)

    def objective(step):
        return 3.0 + tf.reduce_sum(gradient * step) + 0.5 * scale * tf.reduce_sum(
            step * tf.linalg.matvec(matrix, step))

    return hessian_free_step(
        objective, gradient, lambda v: tf.linalg.matvec(matrix, v),
        tf.constant(damping, tf.float64),
        tf.zeros_like(gradient) if warm_start is None else tf.constant(warm_start), **settings)


def test_step_on_an_exact_quadratic_model_is_the_damped_newton_step():
    # The curvature is the objective's Hessian: the step solves (A + lambda I) p = -g, the
    # model predicts f exactly (rho = 1), lambda shrinks by 2/3 and the full step is taken.
    matrix, gradient = spd_system(size=12)
    result = quadratic_step(matrix, gradient, damping=0.5, cg_tolerance=1e-14)
    expected = -np.linalg.solve(matrix + 0.5 * np.eye(12), gradient)
    np.testing.assert_allclose(result.step, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.solution, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.rho, 1.0, rtol=1e-10)
    np.testing.assert_allclose(result.damping, 0.5 * 2 / 3, rtol=1e-15)
    np.testing.assert_allclose(result.model_reduction,
                               -(gradient @ expected + 0.5 * expected @ matrix @ expected),
                               rtol=1e-10)
    assert float(result.step_size) == 1.0 and bool(result.finite)
    # The damping floor holds through the step (in float64: it was a float32 rounding once).
    floored = quadratic_step(matrix, gradient, damping=1.0, min_damping=0.9)
    np.testing.assert_allclose(floored.damping, 0.9, rtol=1e-15)


def test_step_on_an_underestimating_model_is_shortened_and_raises_damping():
    # f's curvature is 4 A, the model's A = I: p = -g / (1 + lambda) overshoots. With
    # t = |g|² / (1 + lambda): f(p) - f(0) = -t + 2 t / (1 + lambda), the model predicts
    # -t + t / (2 (1 + lambda)); Armijo passes for a <= 0.99 (1 + lambda) / 2 = 0.4955: 0.8^4.
    gradient = RNG.normal(size=6)
    damping = 1e-3
    result = quadratic_step(np.eye(6), gradient, damping, scale=4.0)
    t = gradient @ gradient / (1 + damping)
    rho = (-t + 2 * t / (1 + damping)) / (-t + t / (2 * (1 + damping)))
    np.testing.assert_allclose(result.rho, rho, rtol=1e-12)
    np.testing.assert_allclose(result.step_size, 0.8**4, rtol=1e-15)
    np.testing.assert_allclose(result.step, -0.8**4 * gradient / (1 + damping), rtol=1e-12)
    np.testing.assert_allclose(result.damping, 1.5 * damping, rtol=1e-15)


def test_step_uses_martens_preconditioner_and_the_warm_start():
    # A diagonal A and M = (squares + lambda)^1 = A + lambda I: one preconditioned CG iteration
    # is the exact solve, where one plain iteration is a steepest-descent step.
    diagonal, gradient, damping = np.geomspace(1.0, 100.0, 8), RNG.normal(size=8), 0.1
    expected = -gradient / (diagonal + damping)
    preconditioned = quadratic_step(np.diag(diagonal), gradient, damping, max_cg_iterations=1,
                                    preconditioner_exponent=1.0,
                                    per_example_squares=lambda: tf.constant(diagonal))
    np.testing.assert_allclose(preconditioned.step, expected, rtol=1e-12)
    plain = quadratic_step(np.diag(diagonal), gradient, damping, max_cg_iterations=1)
    assert np.max(np.abs(plain.step - expected)) > 0.1 * np.max(np.abs(expected))
    # CG starts from 0.95 times the warm start: from the solution it stays there.
    matrix, gradient = spd_system(size=12)
    expected = -np.linalg.solve(matrix + damping * np.eye(12), gradient)
    warm = quadratic_step(matrix, gradient, damping, warm_start=expected / 0.95,
                          max_cg_iterations=1)
    np.testing.assert_allclose(warm.solution, expected, rtol=1e-10, atol=1e-12)


def test_a_non_finite_gradient_rejects_the_step_before_any_curvature_work():
    calls = []

    def squares():
        calls.append(1)
        return tf.ones(3, tf.float64)

    result = quadratic_step(np.eye(3), [1.0, float("nan"), 0.0], damping=2.0,
                            per_example_squares=squares)
    assert not bool(result.finite) and calls == []
    assert np.all(result.step.numpy() == 0.0) and np.all(result.solution.numpy() == 0.0)
    assert float(result.damping) == 3.0 and float(result.step_size) == 0.0
    assert int(result.cg_iterations) == 0 and np.isnan(result.rho)


LSQ_X = RNG.normal(size=(200, 5))
LSQ_Y = LSQ_X @ RNG.normal(size=(5, 2)) + 0.1 * RNG.normal(size=(200, 2))


def linear_model(regularizer=None):
    keras.utils.set_random_seed(0)
    return ks.wrap(keras.Sequential([keras.Input((5,)),
                                     keras.layers.Dense(2, kernel_regularizer=regularizer)]))


def test_one_iteration_reaches_the_least_squares_minimum(float64):
    model = linear_model()
    model.compile(HessianFree(damping=1e-12, curvature_fraction=1.0), "mse")
    history = model.fit(LSQ_X, LSQ_Y, batch_size=200, epochs=1, verbose=0).history
    design = np.c_[LSQ_X, np.ones(200)]
    solution = np.linalg.lstsq(design, LSQ_Y, rcond=None)[0]
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(kernel, solution[:5], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(bias, solution[5], rtol=1e-6, atol=1e-9)
    optimum = np.mean((design @ solution - LSQ_Y) ** 2)
    np.testing.assert_allclose(model.evaluate(LSQ_X, LSQ_Y, verbose=0), optimum, rtol=1e-6)
    assert history["step_size"] == [1.0] and history["rejected_steps"] == [0.0]
    assert history["rho"][0] == pytest.approx(1.0, abs=1e-6)  # The model is exact: rho = 1.


def test_weight_cost_enters_the_curvature(float64):
    # Ridge: L2(0.5) adds 0.5 |W|² to the loss and I to its Hessian (not to the bias's rows):
    # one iteration solves the ridge system.
    model = linear_model(regularizer=keras.regularizers.L2(0.5))
    model.compile(HessianFree(damping=1e-12, curvature_fraction=1.0), "mse")
    model.fit(LSQ_X, LSQ_Y, batch_size=200, epochs=1, verbose=0)
    design = np.c_[LSQ_X, np.ones(200)]
    hessian = 2 * design.T @ design / 400 + np.diag([1.0] * 5 + [0.0])
    solution = np.linalg.solve(hessian, 2 * design.T @ LSQ_Y / 400)
    np.testing.assert_allclose(np.r_[model.get_weights()[0], model.get_weights()[1][None]],
                               solution, rtol=1e-6, atol=1e-9)


CLS_X = RNG.normal(size=(96, 6)).astype("float32")
CLS_Y = RNG.integers(0, 3, 96)


def classifier():
    keras.utils.set_random_seed(1)
    return ks.wrap(keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                                     keras.layers.Dense(3, activation="softmax")]))


def trained(model, epochs=2, **compile_kwargs):
    compile_kwargs.setdefault("optimizer", HessianFree(damping=1.0, curvature_fraction=0.5))
    model.compile(loss="sparse_categorical_crossentropy", **compile_kwargs)
    history = model.fit(CLS_X, CLS_Y, batch_size=48, epochs=epochs, shuffle=False, verbose=0)
    return model.get_weights(), history.history


def test_trains_with_logged_diagnostics():
    _, history = trained(classifier(), epochs=4)
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    for key in ("cg_iterations", "rho", "damping", "step_size", "model_reduction",
                "rejected_steps"):
        assert len(history[key]) == 4, key
    assert all(0 < i <= 250 for i in history["cg_iterations"])


def test_xla_gives_the_same_training(float64):
    # In float64, so that a difference would be a difference of the computation, not of float32
    # rounding amplified through CG.
    reference, _ = trained(classifier())
    compiled, _ = trained(classifier(), jit_compile=True)
    for a, b in zip(compiled, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_save_and_resume_gives_the_uninterrupted_run(tmp_path):
    uninterrupted, history = trained(classifier(), epochs=4)
    model = classifier()
    trained(model, epochs=2)
    model.save(tmp_path / "hf.keras")
    restored = keras.models.load_model(tmp_path / "hf.keras")
    assert float(restored.optimizer.damping) == float(model.optimizer.damping)
    resumed = restored.fit(CLS_X, CLS_Y, batch_size=48, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(restored.get_weights(), uninterrupted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(resumed.history["damping"], history["damping"][2:], rtol=1e-6)


def test_tf_train_checkpoint_keeps_damping_and_warm_start(tmp_path):
    model = classifier()
    _, history = trained(model, epochs=1)
    optimizer = model.optimizer
    # The state is not its initial value: the damping the run logged, a nonzero warm start.
    assert float(optimizer.damping) == np.float32(history["damping"][-1]) != 1.0
    assert all(np.any(w.numpy()) for w in optimizer._warm_starts)
    saved = [v.numpy() for v in optimizer.variables]
    path = tf.train.Checkpoint(optimizer=optimizer, model=model).write(str(tmp_path / "ckpt"))
    for variable in optimizer.variables:
        variable.assign(tf.zeros_like(variable))
    tf.train.Checkpoint(optimizer=optimizer, model=model).read(path).assert_consumed()
    for variable, value in zip(optimizer.variables, saved, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_nan_in_the_loss_leaves_weights_finite_and_raises_damping():
    model = classifier()
    model.compile(HessianFree(damping=1.0, curvature_fraction=0.5),
                  "sparse_categorical_crossentropy")
    weights = np.ones(96, "float32")
    weights[60] = np.nan  # Second batch.
    history = model.fit(CLS_X, CLS_Y, sample_weight=weights, batch_size=48, epochs=1,
                        shuffle=False, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    optimizer = model.optimizer
    assert float(optimizer.skipped_steps) == 1 and float(optimizer.rejected_steps) >= 1
    assert history.history["step_size"] == [0.0]
    first = HessianFree(damping=1.0, curvature_fraction=0.5)
    one_batch = classifier()
    one_batch.compile(first, "sparse_categorical_crossentropy")
    one_batch.fit(CLS_X[:48], CLS_Y[:48], batch_size=48, epochs=1, shuffle=False, verbose=0)
    assert float(optimizer.damping) == pytest.approx(float(first.damping) * 1.5)


def test_hessian_products_train_any_loss_and_ggn_names_the_fix():
    model = classifier()
    with pytest.raises(ValueError, match="curvature='hessian' and preconditioner=None"):
        model.compile(HessianFree(), "poisson")
        model.fit(CLS_X, keras.ops.one_hot(CLS_Y, 3), batch_size=48, epochs=1, verbose=0)
    model = classifier()
    model.compile(HessianFree(damping=1.0, curvature="hessian", preconditioner=None,
                              curvature_fraction=0.5), "poisson")
    history = model.fit(CLS_X, keras.ops.one_hot(CLS_Y, 3), batch_size=48, epochs=3,
                        shuffle=False, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


def test_config_round_trip_and_bad_settings():
    optimizer = HessianFree(damping=3.0, curvature_fraction=0.5, max_cg_iterations=40,
                            preconditioner=None, min_damping=0.5)
    config = optimizer.get_config()
    assert HessianFree.from_config(config).get_config() == config
    assert config["damping"] == 3.0 and config["max_cg_iterations"] == 40
    assert config["min_damping"] == 0.5
    with pytest.raises(ValueError, match="`min_damping` must be a number in \\[0, damping=3.0\\]; "
                                         "received 4.0"):
        HessianFree(damping=3.0, min_damping=4.0)
    with pytest.raises(ValueError, match="`curvature_fraction` must be a number in \\(0, 1\\]"):
        HessianFree(curvature_fraction=0.0)
    with pytest.raises(ValueError, match="`damping` must be a number > 0; received -1"):
        HessianFree(damping=-1)
    with pytest.raises(ValueError, match="`curvature` must be one of"):
        HessianFree(curvature="fisher")
    with pytest.raises(ValueError, match="`preconditioner_examples` must be a positive integer"):
        HessianFree(preconditioner_examples=0)
    with pytest.raises(ValueError, match="`clipnorm`.*L2 kernel_regularizer"):
        HessianFree(clipnorm=1.0)
