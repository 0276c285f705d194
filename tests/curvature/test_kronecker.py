"""K-FAC's Kronecker factors against per-example dense computations (float64)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import MODELS, make_case, random_like

from keras_secondorder import curvature, spectrum
from keras_secondorder.curvature import dense, kronecker
from keras_secondorder.curvature.objective import Objective, as_batch
from keras_secondorder.models import ConnectionTableConv2D


def factors(model, x, y, weights, fisher="exact", seed=(0, 0)):
    return kronecker.kronecker_factors(Objective(model), as_batch((x, y, weights)), fisher,
                                       seed)


def forward_pieces(model, x, kind):
    """Per layer with a block: its input vectors ā_nt (N, T, d) and the map s -> z (TF)."""
    if kind == "mlp":
        (w1, b1), (w2, b2) = [layer.get_weights() for layer in model.layers]
        hidden = np.tanh(x @ w1 + b1)
        first = np.c_[x, np.ones(len(x))][:, None]
        second = np.c_[hidden, np.ones(len(x))][:, None]
        to_z = [lambda s: tf.tanh(s) @ w2 + b2, lambda s: s]
        return [first, second], [x @ w1 + b1, hidden @ w2 + b2], to_z
    conv, _, _, last = model.layers
    kernel, bias = conv.get_weights()
    w, b = last.get_weights()
    patches = np.stack([x[:, i:i + 3, j:j + 3, :].reshape(len(x), -1)
                        for i in range(4) for j in range(4)], axis=1)  # (N, 16, 9): (i, j, c)
    conv_out = (patches @ kernel.reshape(9, 2) + bias).reshape(-1, 4, 4, 2)
    pooled = np.tanh(conv_out).reshape(-1, 2, 2, 2, 2, 2).mean(axis=(2, 4)).reshape(len(x), -1)

    def conv_to_z(s):
        pooled = tf.reshape(tf.reduce_mean(tf.reshape(tf.tanh(s), [-1, 2, 2, 2, 2, 2]),
                                           axis=[2, 4]), [-1, 8])
        return pooled @ w + b

    inputs = [np.concatenate([patches, np.ones((len(x), 16, 1))], axis=-1),
              np.c_[pooled, np.ones(len(x))][:, None]]
    return inputs, [conv_out, pooled @ w + b], [conv_to_z, lambda s: s]


def output_factors(loss_name, z, y, fisher):
    """Per example, the output-space factors r_nf (columns) with sum_f r rᵀ = C_n."""
    if loss_name == "ce":
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        if fisher == "empirical":
            return (p - y)[:, :, None]
        hessians = np.stack([np.diag(q) - np.outer(q, q) for q in p])
    else:
        k = z.shape[1]
        if fisher == "empirical":
            return (2.0 / k * (z - y))[:, :, None]
        hessians = np.stack([2.0 / k * np.eye(k)] * len(z))
    values, vectors = np.linalg.eigh(hessians)
    return vectors * np.sqrt(np.clip(values, 0, None))[:, None, :]


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("loss_name", ["ce", "mse"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_factors_equal_per_example_dense_computations(float64, kind, loss_name, fisher):
    # A = sum_n w_n sum_t ā_nt ā_ntᵀ;  G = sum_n c_n (1/T) sum_t J_ntᵀ C_n J_nt, with J_nt the
    # per-example Jacobian of the outputs z_n in the layer's pre-activation at position t.
    model, x, y, weights = make_case(kind, loss_name)
    result = factors(model, x, y, weights, fisher)
    inputs, pre_activations, to_z = forward_pieces(model, x, kind)
    z = pre_activations[-1]
    r = output_factors(loss_name, z, y, fisher)
    c = weights / len(x)  # Keras's mean over the batch of the weighted losses.
    w = weights / weights.sum()
    assert len(result.blocks) == 2 and result.diagonal_indices == ()
    for block, a_bar, s, s_to_z in zip(result.blocks, inputs, pre_activations, to_z,
                                       strict=True):
        s = tf.constant(s)
        with tf.GradientTape() as tape:
            tape.watch(s)
            outputs = s_to_z(s)
        jacobian = tape.batch_jacobian(outputs, s).numpy().reshape(len(x), z.shape[1], -1,
                                                                  s.shape[-1])  # (N, k, T, o)
        positions = jacobian.shape[2]
        g = np.einsum("nkto,nkf->nfto", jacobian, r)  # J_ntᵀ r_nf
        expected_g = np.einsum("n,nfto,nftp->op", c, g, g) / positions
        expected_a = np.einsum("n,nti,ntj->ij", w, a_bar, a_bar)
        np.testing.assert_allclose(block.a, expected_a, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(block.g, expected_g, rtol=1e-10, atol=1e-14)


def test_single_dense_layer_with_one_output_is_the_exact_gauss_newton_block(float64):
    # One output unit and mean squared error: J_nᵀ H_n J_n = 2 for every example, so the
    # expectation of the Kronecker product is the product of the expectations.
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    x, y, weights = rng.normal(size=(9, 4)), rng.normal(size=(9, 1)), rng.uniform(0.5, 2, 9)
    result = factors(model, x, y, weights)
    block = result.blocks[0]
    np.testing.assert_allclose(np.kron(block.a, block.g), dense.ggn(model, x, y, weights),
                               rtol=1e-10, atol=1e-14)
    # apply() is that matrix times a vector, in the variables' layout.
    vector = random_like(model)
    np.testing.assert_allclose(
        curvature.flatten(kronecker.apply(result, vector)),
        dense.ggn(model, x, y, weights).numpy() @ curvature.flatten(vector).numpy(),
        rtol=1e-10)


def embedding_case():
    """Tokens -> Embedding(7, 3) -> Flatten -> Dense(2, tanh) -> Dense(2), MSE; token 6 unused."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    tail = [keras.layers.Flatten(), keras.layers.Dense(2, activation="tanh"),
            keras.layers.Dense(2)]
    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(7, 3),
                              *tail])
    model.compile(loss="mse")
    tokens = rng.integers(0, 6, size=(9, 4))
    return model, tail, tokens, rng.normal(size=(9, 2)), rng.uniform(0.5, 2, 9)


def test_embedding_block_has_the_token_counts_as_a_diagonal_a(float64):
    # ā_nt is one-hot: A = diag(sum_n w_n sum_t e_(k_nt)); G = sum_n c_n (1/T) sum_t
    # J_ntᵀ H_n J_nt with J_nt = ∂z_n/∂e_nt, e_nt the embedded token, H_n = (2/k) I (MSE).
    model, tail, tokens, y, weights = embedding_case()
    result = factors(model, tokens, y, weights)
    block = result.blocks[0]
    assert block.layer is model.layers[0] and tuple(block.a.shape) == (7,)
    assert block.indices == (0,) and len(result.blocks) == 3
    expected_a = np.zeros(7)
    np.add.at(expected_a, tokens, np.broadcast_to((weights / weights.sum())[:, None],
                                                  tokens.shape))
    np.testing.assert_allclose(block.a, expected_a, rtol=1e-12, atol=0)
    embedded = tf.constant(model.layers[0](tokens))
    with tf.GradientTape() as tape:
        tape.watch(embedded)
        z = embedded
        for layer in tail:
            z = layer(z)
    jacobian = tape.batch_jacobian(z, embedded).numpy()  # (N, k, T, 3)
    expected_g = np.einsum("n,nkto,nktp->op", weights / 9, jacobian, jacobian) * (2 / 2) / 4
    np.testing.assert_allclose(block.g, expected_g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("padding,strides,dilation", [("valid", 1, 1), ("same", 2, 1),
                                                      ("causal", 1, 2)])
def test_conv1d_blocks_equal_those_of_the_conv2d_on_one_row(float64, padding, strides,
                                                           dilation):
    # Conv1D(k) on (N, L, C) is Conv2D((1, k)) on (N, 1, L, C) with the same weights (causal:
    # the input padded at the start by dilation (k - 1), then valid); the Conv2D blocks are
    # checked against numpy patches above.
    rng = np.random.default_rng(0)
    x, y, weights = rng.normal(size=(6, 9, 2)), rng.normal(size=(6, 2)), rng.uniform(0.5, 2, 6)
    conv1d = keras.layers.Conv1D(3, 3, strides=strides, dilation_rate=dilation,
                                 padding=padding, activation="tanh")
    one_d = keras.Sequential([keras.Input((9, 2)), conv1d, keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    if padding == "causal":
        x_2d, padding_2d = np.pad(x, [(0, 0), (2 * dilation, 0), (0, 0)])[:, None], "valid"
    else:
        x_2d, padding_2d = x[:, None], padding
    two_d = keras.Sequential([keras.Input(x_2d.shape[1:]), keras.layers.Conv2D(
        3, (1, 3), strides=(1, strides), dilation_rate=(1, dilation), padding=padding_2d,
        activation="tanh"), keras.layers.Flatten(), keras.layers.Dense(2)])
    kernel, bias, dense_kernel, dense_bias = one_d.get_weights()
    two_d.set_weights([kernel[None], bias, dense_kernel, dense_bias])
    for model in (one_d, two_d):
        model.compile(loss="mse")
    blocks_1d = factors(one_d, x, y, weights).blocks
    blocks_2d = factors(two_d, x_2d, y, weights).blocks
    assert blocks_1d[0].layer is conv1d and len(blocks_1d) == len(blocks_2d) == 2
    for block_1d, block_2d in zip(blocks_1d, blocks_2d, strict=True):
        np.testing.assert_allclose(block_1d.a, block_2d.a, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(block_1d.g, block_2d.g, rtol=1e-12, atol=1e-15)


def test_sampled_g_converges_to_the_exact_g(float64):
    # The true Fisher's G with one sampled label per example: unbiased; its mean over draws
    # approaches the exact G at the Monte-Carlo rate.
    model, x, y, weights = make_case("mlp", "ce")
    exact = factors(model, x, y, weights).blocks[0].g.numpy()
    draws = [factors(model, x, y, weights, "sampled", seed=(3, s)).blocks[0].g.numpy()
             for s in range(400)]

    def error(count):
        return np.linalg.norm(np.mean(draws[:count], axis=0) - exact) / np.linalg.norm(exact)

    assert error(400) < 0.1 and error(400) < 0.5 * error(25)


def test_sampled_diagonal_blocks_converge_to_the_gauss_newton_diagonal(float64):
    # "sampled" takes the diagonal blocks from G's backward pass: the square of the batch's
    # sampled gradient, unbiased (cross terms between examples have zero mean), plus the L2
    # penalty's diagonal. The first layer's kernel without its bias is only partly in the
    # objective, so it gets a diagonal block, as BatchNormalization's scale and shift do.
    model, x, y, weights = make_case("bn_dropout", "ce", regularizer=keras.regularizers.L2(0.1))
    variables = [v for v in model.trainable_variables if v is not model.layers[0].bias]
    objective, batch = Objective(model, variables=variables), as_batch((x, y, weights))
    assert kronecker.layout(model, variables)[1] == (0, 1, 2)
    exact = np.concatenate([d.numpy().ravel() for d in curvature.diagonal(
        model, (x, y, weights), "ggn", variables=variables)[:3]])
    draw = tf.function(lambda seed: kronecker.kronecker_factors(objective, batch, "sampled",
                                                                seed).diagonals)
    draws = [np.concatenate([d.numpy().ravel() for d in draw(tf.constant([5, s]))])
             for s in range(400)]

    def error(count):
        return np.linalg.norm(np.mean(draws[:count], axis=0) - exact) / np.linalg.norm(exact)

    assert error(400) < 0.1 and error(400) < 0.5 * error(25)


def test_a_convolution_with_its_own_convolution_op_gets_diagonal_blocks(float64):
    # LeNet-5's C3 multiplies its kernel by the connection table in `convolution_op`: its
    # patches' A would let K-FAC move the masked entries, so it is not a KFC block.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 3)),
                              ConnectionTableConv2D([(0, 1), (1, 2)], kernel_size=3),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    blocks, diagonal_indices = kronecker.layout(model, model.trainable_variables)
    assert [block[0] for block in blocks] == [model.layers[-1]]
    assert diagonal_indices == (0, 1)


def test_other_variables_get_the_curvature_diagonal(float64):
    # BatchNormalization's scale and shift: diagonal blocks, the exact Gauss-Newton diagonal.
    model, x, y, weights = make_case("bn_dropout", "ce")
    result = factors(model, x, y, weights)
    assert [b.layer.name for b in result.blocks] == [model.layers[0].name, model.layers[-1].name]
    assert result.diagonal_indices == (2, 3)
    exact = curvature.diagonal(model, (x, y, weights), "ggn", training=False)
    for index, diagonal in zip(result.diagonal_indices, result.diagonals, strict=True):
        np.testing.assert_allclose(diagonal, exact[index], rtol=1e-10, atol=1e-15)


def case(kind):
    """`(model, x, y, weights)` of a conftest kind, of `embedding_case`, or `"mlp_l2"`."""
    if kind == "embedding":
        model, _, x, y, weights = embedding_case()
        return model, x, y, weights
    if kind == "mlp_l2":  # An L2 penalty on the first kernel (not on its bias).
        return make_case("mlp", "ce", regularizer=keras.regularizers.L2(0.1))
    return make_case(kind, "ce")


def block_positions(model, block):
    """The flat positions of a block's variables."""
    offsets = np.cumsum([0] + [int(np.prod(v.shape)) for v in model.trainable_variables])
    return np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in block.indices])


def test_blocks_hold_the_isotropic_part_of_the_weight_penalty(float64):
    # η = the mean of the penalty Hessian's diagonal over the block, that diagonal taken from
    # the dense GGN with and without the penalty (same weights): 0.2 on the first kernel's 20
    # entries, 0 on its 5 biases, so η = 0.16 there and 0 on the unregularized output layer.
    # A and G do not change; the K-FAC matrix gains η I on the block.
    regularized, x, y, weights = case("mlp_l2")
    plain, _, _, _ = make_case("mlp", "ce")
    for a, b in zip(regularized.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    penalty = np.diag(dense.ggn(regularized, x, y, weights).numpy()
                      - dense.ggn(plain, x, y, weights).numpy())
    with_penalty, without = (factors(m, x, y, weights) for m in (regularized, plain))
    difference = (kronecker.dense_matrix(regularized, x, y, weights).numpy()
                  - kronecker.dense_matrix(plain, x, y, weights).numpy())
    etas = []
    for block, reference in zip(with_penalty.blocks, without.blocks, strict=True):
        positions = block_positions(regularized, block)
        etas.append(float(block.penalty))
        np.testing.assert_allclose(etas[-1], penalty[positions].mean(), rtol=1e-12, atol=0)
        np.testing.assert_allclose(block.a, reference.a, rtol=1e-12)
        np.testing.assert_allclose(block.g, reference.g, rtol=1e-12)
        np.testing.assert_allclose(difference[np.ix_(positions, positions)],
                                   etas[-1] * np.eye(len(positions)), atol=1e-12)
    # Keras keeps L2's coefficient in float32: 2 float32(0.1) · 20 / 25.
    np.testing.assert_allclose(etas, [2 * float(np.float32(0.1)) * 20 / 25, 0.0], rtol=1e-12)


def test_an_activity_regularizer_leaves_the_blocks_with_the_weight_penalty_alone(float64):
    # The activity penalty's Hessian is not diagonal: the blocks keep the loss's factors and
    # the kernel's L2 (η = 2 float32(0.1) · 12 / 15 on the 4x3 kernel and 3 biases), and the
    # factors are those of the same model without the activity penalty.
    def model(activity):
        keras.utils.set_random_seed(0)
        built = keras.Sequential([
            keras.Input((4,)),
            keras.layers.Dense(3, activation="tanh",
                               kernel_regularizer=keras.regularizers.L2(0.1),
                               activity_regularizer=keras.regularizers.L2(0.1) if activity
                               else None),
            keras.layers.Dense(2, activation="softmax")])
        built.compile(loss="sparse_categorical_crossentropy")
        return built

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.integers(0, 2, 6)
    with_activity, without = (factors(model(a), x, y, None) for a in (True, False))
    etas = [float(block.penalty) for block in with_activity.blocks]
    np.testing.assert_allclose(etas, [2 * float(np.float32(0.1)) * 12 / 15, 0.0], rtol=1e-12)
    for block, reference in zip(with_activity.blocks, without.blocks, strict=True):
        np.testing.assert_allclose(block.a, reference.a, rtol=1e-12)
        np.testing.assert_allclose(block.g, reference.g, rtol=1e-12)


@pytest.mark.parametrize("kind", ["cnn", "bn_dropout", "embedding", "mlp_l2"])
def test_damped_inverse_equals_the_dense_factored_tikhonov_inverse(float64, kind):
    # (A + π γ I)⁻¹ ⊗ (G + γ/π I)⁻¹ per block, γ = sqrt(λ + η) (η the penalty's part, 0.16 on
    # mlp_l2's first block), π² = (tr A / dim A) / (tr G / dim G); 1 / (d + λ) on diagonal
    # blocks. An embedding's A is diagonal.
    model, x, y, weights = case(kind)
    result = factors(model, x, y, weights)
    vector = random_like(model)
    damping = 0.3
    actual = kronecker.solve(result, vector, damping)
    for block in result.blocks:
        a, g = block.a.numpy(), block.g.numpy()
        a = np.diag(a) if a.ndim == 1 else a
        pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
        gamma = np.sqrt(damping + float(block.penalty))
        inverse = np.kron(np.linalg.inv(a + pi * gamma * np.eye(len(a))),
                          np.linalg.inv(g + gamma / pi * np.eye(len(g))))
        expected = inverse @ np.concatenate([vector[i].numpy().ravel() for i in block.indices])
        np.testing.assert_allclose(
            np.concatenate([actual[i].numpy().ravel() for i in block.indices]), expected,
            rtol=1e-10)
    for index, diagonal in zip(result.diagonal_indices, result.diagonals, strict=True):
        np.testing.assert_allclose(actual[index], vector[index] / (diagonal + damping),
                                   rtol=1e-12)


@pytest.mark.parametrize("kind", MODELS)
def test_every_zoo_model_gets_blocks_for_its_dense_and_conv_layers(float64, kind):
    model, x, y, weights = make_case(kind, "ce")
    result = factors(model, x, y, weights)
    blocked = sorted(i for block in result.blocks for i in block.indices)
    assert sorted(blocked + list(result.diagonal_indices)) == list(
        range(len(model.trainable_variables)))
    assert len(result.blocks) == 2  # Each zoo model has two Dense / Conv2D layers.


@pytest.mark.parametrize("kind", ["cnn", "bn_dropout"])
def test_factors_trace_and_compile_with_xla(float64, kind):
    # Inside tf.function and with jit_compile=True: the eager values, the same sampled draw.
    model, x, y, weights = make_case(kind, "ce")
    objective, batch = Objective(model), as_batch((x, y, weights))

    def tensors(seed):
        result = kronecker.kronecker_factors(objective, batch, "sampled", seed)
        return [t for block in result.blocks for t in (block.a, block.g)] + list(
            result.diagonals)

    eager = tensors((1, 2))
    for jit_compile in (False, True):
        traced = tf.function(lambda: tensors(tf.constant([1, 2])), jit_compile=jit_compile)()
        for actual, expected in zip(traced, eager, strict=True):
            np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["cnn", "bn_dropout", "embedding", "mlp_l2"])
def test_operator_solve_is_the_exact_inverse_of_the_damped_matrix(float64, kind):
    # (K + λI)⁻¹ by eigendecompositions of the factors (a diagonal A is its own), against a
    # dense solve. K itself is singular (the softmax's G has the logit shift in its null space,
    # the embedding's unused token a zero row): λ = 1e-3 solves it nearly undamped.
    model, x, y, weights = case(kind)
    matrix = kronecker.dense_matrix(model, x, y, weights).numpy()
    rhs = np.stack([curvature.flatten(random_like(model, seed)).numpy() for seed in (1, 2)],
                   axis=1)
    for damping in (1e-3, 0.3):
        operator = curvature.KroneckerFactoredOperator(model, (x, y, weights), damping=damping)
        expected = np.linalg.solve(matrix + damping * np.eye(len(matrix)), rhs)
        np.testing.assert_allclose(operator.solve(rhs), expected, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(operator.matmul(operator.solve(rhs)), rhs, rtol=1e-9,
                                   atol=1e-12)


def test_operator_over_batches_averages_the_factors(float64):
    # Two batches of 6 and 3 examples: factors averaged by size are the factors of all 9, so
    # the operator equals the one on the whole batch (a mean of the batches' Kronecker
    # products would not).
    model, x, y, _ = make_case("mlp", "ce", batch=9)
    whole = curvature.KroneckerFactoredOperator(model, (x, y)).to_dense()
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    averaged = curvature.KroneckerFactoredOperator(model, batches).to_dense()
    np.testing.assert_allclose(averaged, whole, rtol=1e-10, atol=1e-14)
    mean_of_products = sum(n / 9 * kronecker.dense_matrix(model, *batch).numpy()
                           for n, batch in zip((6, 3), batches, strict=True))
    assert np.max(np.abs(mean_of_products - whole)) > 1e-3 * np.max(np.abs(whole))


def test_operator_follows_the_weights_and_feeds_the_spectrum_tools(float64):
    # Its eigenvalues are the products of the factors' (and the diagonal entries); Lanczos on
    # the operator finds the largest.
    model, x, y, weights = make_case("mlp", "ce")
    operator = curvature.KroneckerFactoredOperator(model, (x, y, weights))
    result = factors(model, x, y, weights)
    expected = np.sort(np.concatenate(
        [np.outer(np.linalg.eigvalsh(b.a), np.linalg.eigvalsh(b.g)).ravel()
         for b in result.blocks] + [d.numpy().ravel() for d in result.diagonals]))
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(operator.to_dense())), expected,
                               rtol=1e-9, atol=1e-12)
    top = spectrum.lanczos(operator, k=2, tol=1e-10, which="largest").largest
    np.testing.assert_allclose(top, expected[::-1][:2], rtol=1e-8)
    for variable in model.trainable_variables:
        variable.assign(variable * 1.5)
    np.testing.assert_allclose(operator.to_dense(), kronecker.dense_matrix(model, x, y, weights),
                               rtol=1e-10, atol=1e-14)
