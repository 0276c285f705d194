"""KFAC: golden steps against a float64 numpy re-implementation, resume, settings, the zoo."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_secondorder as ks
from keras_secondorder.curvature import dense
from keras_secondorder.optimizers import KFAC

RNG = np.random.default_rng(0)
X = RNG.normal(size=(12, 4))
Y = RNG.normal(size=(12, 2))
WEIGHTS = RNG.uniform(0.5, 1.5, 12)


def tiny_model(l2=0.0):
    """4-3-2 tanh; `l2`: an L2 penalty `l2 |W1|²` on the first kernel (none on its bias)."""
    keras.utils.set_random_seed(0)
    penalty = keras.regularizers.L2(l2) if l2 else None
    return ks.wrap(keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(3, activation="tanh", kernel_regularizer=penalty),
        keras.layers.Dense(2)]))


def damped_inverses(a, g, damping):
    pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
    return (np.linalg.inv(a + pi * np.sqrt(damping) * np.eye(len(a))),
            np.linalg.inv(g + np.sqrt(damping) / pi * np.eye(len(g))))


def reference_training(model, steps, damping, omega, learning_rate=None, momentum=0.0,
                       kl_clip=None, decay=0.95, head=None, l2=0.0):
    """KFAC's update written out in numpy (float64), exact Fisher, every period 1.

    The factors and the quadratic model's curvature are those of the first `head` examples
    (default: all), the gradient and rho's change of the loss those of all. Returns the
    weights, the damping, the last rho and the rates of the steps.

    Mean squared error over k = 2 outputs: c_n = s_n / N, H_n = (2 / k) I. Layer 2's
    pre-activation is z (J = I); layer 1's is s1 with J_n = W2ᵀ diag(1 - h_n²). The penalty
    `l2 |W1|²` adds `2 l2 W1` to the gradient and its Hessian `2 l2` to the curvature: to the
    quadratic model entry by entry (`dense.ggn` includes it) and to layer 1's block as its mean
    over the block's 12 kernel and 3 bias entries, `η = 2 l2 · 12 / 15`, which damps the block
    as `λ + η`.
    """
    w1, b1, w2, b2 = model.get_weights()
    n, k = len(X), 2
    l2 = float(np.float32(l2))  # Keras keeps L2's coefficient in float32.
    head = n if head is None else head
    c = WEIGHTS / n
    c_head, w_head = WEIGHTS[:head] / head, WEIGHTS[:head] / WEIGHTS[:head].sum()
    sums, weight, previous = None, 0.0, np.zeros(w1.size + b1.size + w2.size + b2.size)
    rates = []

    def loss(w1, b1, w2, b2):
        z = np.tanh(X @ w1 + b1) @ w2 + b2
        return np.sum(c * np.mean((z - Y) ** 2, axis=1)) + l2 * np.sum(w1**2)

    for _ in range(steps):
        h = np.tanh(X @ w1 + b1)
        z = h @ w2 + b2
        a1, a2 = np.c_[X, np.ones(n)][:head], np.c_[h, np.ones(n)][:head]
        jacobians = np.einsum("ok,no->nko", w2, 1 - h[:head]**2)  # ∂z_n/∂s1_n: (N, k, 3).
        batch = [np.einsum("n,ni,nj->ij", w_head, a1, a1),
                 np.einsum("n,nki,nkj->ij", c_head, jacobians, jacobians) * 2 / k,
                 np.einsum("n,ni,nj->ij", w_head, a2, a2), np.sum(c_head) * 2 / k * np.eye(k)]
        sums = batch if sums is None else [decay * s + b for s, b in zip(sums, batch, strict=True)]
        weight = decay * weight + 1.0
        factors = [s / weight for s in sums]
        dz = (c * 2 / k)[:, None] * (z - Y)
        ds1 = dz @ w2.T * (1 - h**2)
        gradients = [np.r_[X.T @ ds1 + 2 * l2 * w1, ds1.sum(0)[None]],
                     np.r_[h.T @ dz, dz.sum(0)[None]]]
        etas = [2 * l2 * w1.size / (w1.size + b1.size), 0.0]
        proposal = []
        for (a, g), grad, eta in zip([factors[:2], factors[2:]], gradients, etas, strict=True):
            a_inverse, g_inverse = damped_inverses(a, g, damping + eta)
            step = -a_inverse @ grad @ g_inverse
            proposal += [step[:-1].ravel(), step[-1]]
        proposal = np.concatenate(proposal)
        gradient = np.concatenate([g[:-1].ravel().tolist() + g[-1].tolist() for g in gradients])
        model.set_weights([w1, b1, w2, b2])
        curvature = (dense.ggn(model, X[:head], Y[:head], WEIGHTS[:head]).numpy()
                     + damping * np.eye(len(gradient)))
        if learning_rate is None:
            basis = np.stack([proposal, previous], axis=1)
            if np.any(previous):
                alpha, mu = np.linalg.solve(basis.T @ curvature @ basis, -basis.T @ gradient)
            else:
                alpha, mu = -(gradient @ proposal) / (proposal @ curvature @ proposal), 0.0
        else:
            alpha, mu = learning_rate, momentum
            # KL clipping: alpha² gᵀF⁻¹g <= kl_clip, F the damped K-FAC matrix.
            size = alpha**2 * -(gradient @ proposal)
            if kl_clip is not None and size > kl_clip:
                alpha *= np.sqrt(kl_clip / size)
        rates.append(alpha)
        update = alpha * proposal + mu * previous
        predicted = 0.5 * update @ curvature @ update + gradient @ update
        sizes = np.cumsum([w1.size, b1.size, w2.size])
        d1, e1, d2, e2 = np.split(update, sizes)
        new = (w1 + d1.reshape(w1.shape), b1 + e1, w2 + d2.reshape(w2.shape), b2 + e2)
        rho = (loss(*new) - loss(w1, b1, w2, b2)) / predicted
        if rho < 0.25:
            damping /= omega
        elif rho > 0.75:
            damping *= omega
        (w1, b1, w2, b2), previous = new, update
    return [w1, b1, w2, b2], damping, rho, rates


@pytest.mark.parametrize("learning_rate, kl_clip, curvature_fraction, l2",
                         [(None, None, 1.0, 0.0), (0.3, None, 1.0, 0.0), (0.3, 0.025, 1.0, 0.0),
                          (None, None, 0.4, 0.0), (0.3, None, 0.4, 0.0), (None, None, 1.0, 0.05),
                          (0.3, None, 1.0, 0.05)])
def test_steps_equal_the_numpy_reimplementation(float64, learning_rate, kl_clip,
                                                curvature_fraction, l2):
    # A fraction of 0.4 of 12 examples: the factors and curvature of the first 5.
    reference_model = tiny_model(l2)
    reference_model.compile(loss="mse")
    expected, damping, rho, rates = reference_training(
        reference_model, 3, 0.5, 0.9, learning_rate,
        momentum=0.5 if learning_rate is not None else 0.0, kl_clip=kl_clip,
        head=int(np.ceil(curvature_fraction * len(X))), l2=l2)
    if kl_clip is not None:  # The bound binds on some steps and not on others.
        assert min(rates) < learning_rate and max(rates) == learning_rate
    model = tiny_model(l2)
    model.compile(KFAC(learning_rate, momentum=None if learning_rate is None else 0.5,
                       kl_clip=kl_clip, damping=0.5, damping_decay=0.9, damping_period=1,
                       inverse_update_period=1, curvature_fraction=curvature_fraction,
                       fisher="exact"), "mse")
    history = model.fit(X, Y, sample_weight=WEIGHTS, batch_size=12, epochs=3, shuffle=False,
                        verbose=0).history
    for actual, wanted in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(actual, wanted, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(float(model.optimizer.damping), damping, rtol=1e-12)
    np.testing.assert_allclose(history["rho"][-1], rho, rtol=1e-5)  # Logged in float32.
    np.testing.assert_allclose(history["step_learning_rate"], rates, rtol=1e-6)  # float32.
    assert history["inverse_refreshes"] == [1.0, 2.0, 3.0]
    assert history["skipped_steps"] == [0.0, 0.0, 0.0]


CLS_X = RNG.normal(size=(96, 6)).astype("float32")
CLS_Y = np.argmax(CLS_X[:, :3] @ RNG.normal(size=(3, 3)), axis=1)  # Learnable labels.


def classifier():
    keras.utils.set_random_seed(1)
    return ks.wrap(keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
        keras.layers.BatchNormalization(), keras.layers.Dense(3, activation="softmax")]))


def trained(model, epochs, optimizer=None, **compile_kwargs):
    model.compile(optimizer or KFAC(inverse_update_period=3, damping_period=2),
                  "sparse_categorical_crossentropy", **compile_kwargs)
    return model.fit(CLS_X, CLS_Y, batch_size=32, epochs=epochs, shuffle=False, verbose=0)


def test_trains_a_classifier_with_batchnorm_and_logs_its_state():
    history = trained(classifier(), 4).history
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history["inverse_refreshes"] == [1.0, 2.0, 3.0, 4.0]  # Steps 0, 3, 6, 9.
    assert history["skipped_steps"] == [0.0] * 4
    assert all(np.isfinite(history[key]).all() for key in ("damping", "rho",
                                                              "step_learning_rate"))


def test_xla_gives_the_same_training(float64):
    # With the curvature on half of each batch: a slice XLA compiles at the batch's shape.
    def optimizer():
        return KFAC(inverse_update_period=3, damping_period=2, curvature_fraction=0.5)

    reference = trained(classifier(), 2, optimizer()).model.get_weights()
    model = classifier()
    trained(model, 2, optimizer(), jit_compile=True)
    for a, b in zip(model.get_weights(), reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_save_and_resume_gives_the_uninterrupted_run(tmp_path):
    uninterrupted = trained(classifier(), 4).model.get_weights()
    model = classifier()
    trained(model, 2)
    model.save(tmp_path / "kfac.keras")
    restored = keras.models.load_model(tmp_path / "kfac.keras")
    restored.fit(CLS_X, CLS_Y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(restored.get_weights(), uninterrupted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_non_finite_batch_changes_nothing_and_is_counted():
    model = classifier()
    trained(model, 1)
    state = [v.numpy().copy() for v in model.optimizer.variables if v.name != "iteration"]
    weights = [v.numpy() for v in model.trainable_variables]
    bad = CLS_X.copy()
    bad[0, 0] = np.nan
    history = model.fit(bad[:32], CLS_Y[:32], batch_size=32, verbose=0).history
    assert history["skipped_steps"] == [1.0]
    # The trainable weights (BatchNorm's moving statistics are Keras's forward pass's).
    for a, b in zip([v.numpy() for v in model.trainable_variables], weights, strict=True):
        np.testing.assert_array_equal(a, b)
    after = [v.numpy() for v in model.optimizer.variables if v.name not in ("iteration",
                                                                              "skipped_steps")]
    before = [s for v, s in zip([v for v in model.optimizer.variables if v.name != "iteration"],
                                state, strict=True) if v.name != "skipped_steps"]
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip_and_bad_settings():
    optimizer = KFAC(0.1, momentum=0.8, kl_clip=1e-3, damping=2.0, curvature_fraction=0.25,
                     fisher="exact", seed=3)
    config = optimizer.get_config()
    again = KFAC.from_config(config)
    assert again.get_config() == config
    assert KFAC().get_config()["learning_rate"] is None
    with pytest.raises(ValueError, match="`momentum`.*only with a fixed `learning_rate`"):
        KFAC(momentum=0.9)
    with pytest.raises(ValueError, match="`kl_clip`.*only with a fixed `learning_rate`"):
        KFAC(kl_clip=1e-3)
    with pytest.raises(ValueError, match="kl_clip"):
        KFAC(0.1, kl_clip=0.0)
    with pytest.raises(ValueError, match="fisher"):
        KFAC(fisher="true")
    with pytest.raises(ValueError, match="damping_decay"):
        KFAC(damping_decay=1.5)
    with pytest.raises(ValueError, match=r"curvature_fraction.*in \(0, 1\]; received 0"):
        KFAC(curvature_fraction=0)
    model = classifier()
    optimizer = KFAC()
    with pytest.raises(ValueError, match="set_model"):
        optimizer.build(model.trainable_variables)


def test_a_custom_loop_binds_the_batch_and_the_model(float64):
    model = classifier()
    optimizer = KFAC(fisher="exact")
    optimizer.set_model(model)
    x, y = CLS_X[:32].astype("float64"), CLS_Y[:32]
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
            loss = tf.reduce_mean(loss)
        grads = tape.gradient(loss, model.trainable_variables)
        model.compile(loss="sparse_categorical_crossentropy")
        with optimizer.bind(ks.curvature.BatchCurvature(model, (x, y))):
            optimizer.apply(grads, model.trainable_variables)
    assert float(optimizer.skipped_steps) == 0.0 and int(optimizer.iterations) == 2


def test_mixed_float16_takes_the_factors_in_float32():
    # The mixed model's factors equal the float32 model's (the curvature is taken with the
    # layers in their variables' dtype); the optimizer's state is float32; it trains.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = classifier()
    finally:
        keras.config.set_dtype_policy("float32")
    plain = classifier()
    plain.set_weights(mixed.get_weights())
    for model in (mixed, plain):
        model.compile(loss="sparse_categorical_crossentropy")
    batch = ks.curvature.Batch(CLS_X[:32], CLS_Y[:32])
    factors = [ks.curvature.kronecker.kronecker_factors(
        ks.curvature.Objective(model, training=True), batch, "exact") for model in (mixed, plain)]
    for mixed_block, plain_block in zip(*(f.blocks for f in factors), strict=True):
        assert mixed_block.a.dtype == tf.float32
        np.testing.assert_allclose(mixed_block.a, plain_block.a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mixed_block.g, plain_block.g, rtol=1e-5, atol=1e-7)
    history = trained(mixed, 3).history
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert all(v.dtype == "float32" for v in mixed.optimizer.inner_optimizer.variables
               if v.name.startswith("kfac_"))
    assert history["loss"][-1] < history["loss"][0] and history["skipped_steps"][-1] == 0


def test_steps_per_execution_gives_the_same_training():
    reference = trained(classifier(), 2).model.get_weights()
    model = classifier()
    trained(model, 2, steps_per_execution=3)
    for a, b in zip(model.get_weights(), reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
