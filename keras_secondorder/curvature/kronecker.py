"""Kronecker-factored blocks of the Gauss-Newton / Fisher matrix (K-FAC).

A layer whose pre-activation is `s = Wᵀ ā` (`ā = [a; 1]`: its input, with a 1 appended for the
bias, so kernel and bias are one matrix `W`) has the Gauss-Newton block

    G_W = sum_n c_n (ā_n ā_nᵀ) ⊗ (J_nᵀ H_n J_n),      J_n = ∂z_n/∂s_n

(`c_n` the objective's weight of example `n`, `H_n` the loss Hessian at the outputs `z_n`).
K-FAC (Martens & Grosse 2015) replaces the expectation of the Kronecker product by the
Kronecker product of the expectations:

    G_W ≈ A ⊗ G,    A = sum_n w_n ā_n ā_nᵀ,    G = sum_n c_n J_nᵀ H_n J_n

with `w_n` the sample weights normalized to sum to 1 (so that `A ⊗ G` has `G_W`'s scale). As a
matrix acting on `W` (shape `(inputs + 1, units)`): `V -> A V G`. A convolution uses its
weights at every position `t` (Grosse & Martens 2016, KFC): `ā_nt` are the input patches, and
with spatially uncorrelated derivatives

    A = sum_n w_n sum_t ā_nt ā_ntᵀ,    G = sum_n c_n (1/T) sum_t g_nt g_ntᵀ,

which is also how a Dense layer on rank-3 inputs (a sequence) and a layer called several times
are treated. `G` comes from output-space factors `r_nf` with `sum_f r_nf r_nfᵀ = H_n`: each
factor's per-example pre-activation gradients `g_nf = J_nᵀ r_nf` are one backward pass of
`sum_n sqrt(c_n) r_nfᵀ z_n` (`fisher=`):

- `"exact"`: the columns of a square root of `H_n`, closed form (`output_losses`): one backward
  pass per output unit.
- `"sampled"` (Martens & Grosse's true Fisher): one draw with `E[r rᵀ] = H_n`, the loss
  gradient at a label drawn from the model's predictive distribution: one backward pass per
  sample.
- `"empirical"`: the loss gradient at the true label (the empirical Fisher).

The elementwise weight penalties (`model.losses`: L2, L1L2) have a diagonal Hessian `P`. A
Kronecker block keeps its isotropic part, `A ⊗ G + η I` with `η` the mean of `P`'s diagonal
over the block's weights (Martens & Grosse's `η`, kfac-jax's `l2_reg`), so that its damped
inverse is damped by at least the penalty's curvature: without it, a K-FAC step on a
regularized model is damped only by the adaptive `λ`, which falls towards zero where the
quadratic model fits. (The model's other loss terms, activity regularizers and `add_loss`, are
not in the blocks.) Every other trainable variable (BatchNormalization's scale and shift,
custom layers, a layer whose weights are only partly in the objective) gets a diagonal block of
the same curvature, with `P`'s diagonal added. With `"exact"` and
`"empirical"` it is the diagonal from `diagonal` (`"ggn"`, `"empirical_fisher"`: per-example
backward passes). With `"sampled"` it comes from the backward pass that gives `G`: the square of
`∇_w sum_n sqrt(c_n) r_nᵀ z_n = sum_n sqrt(c_n) J_nᵀ r_n`, whose cross terms between examples
vanish in expectation (the sampled `r_n` are independent with zero mean), so that
`E[(sum_n sqrt(c_n) J_nᵀ r_n)²] = sum_n c_n E[(J_nᵀ r_n)²]`, the Fisher diagonal. It costs
nothing more; its variance is larger than the per-example estimate's (`"ggn_mc"`, whose
per-example passes took 12.8 s of a LeNet-5 batch of 1000 on this machine for 24 weights), and
the optimizer's moving average over batches takes it down.

An `Embedding` is a Dense layer on one-hot inputs: `A` is diagonal, the weighted token counts,
and is kept as a vector.

Each supported layer class has one `KroneckerRule` (`register_rule`, as bbprop's rules):
`Dense`, `Conv2D` and `Conv1D` (channels last, no groups) and `Embedding` (no LoRA, not
quantized) here.

As a curvature kind (`"kfac"`, with the exact output Hessians): `kronecker_vector_product`,
`KroneckerFactoredOperator` (whose `solve` is the exact inverse of `K + λ I`, by
eigendecompositions of the factors) and the dense reference `dense_matrix`.
"""

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keras_secondorder._keras_compat import all_layers, intercepted_calls, with_linear_activation
from keras_secondorder._validation import one_of
from keras_secondorder.curvature import dense, kinds
from keras_secondorder.curvature.diagonal import batch_diagonal, with_penalty
from keras_secondorder.curvature.layer_rules import RuleRegistry
from keras_secondorder.curvature.objective import as_batch, as_objective
from keras_secondorder.curvature.operator import CurvatureOperator
from keras_secondorder.curvature.output_losses import rows
from keras_secondorder.curvature.output_space import elementwise_penalty_diagonal
from keras_secondorder.curvature.vectors import densify, flatten, scalar, unflatten

FISHERS = ("exact", "sampled", "empirical")
_DIAGONAL_METHODS = {"exact": "ggn", "empirical": "empirical_fisher"}
_ZERO = tf.UnconnectedGradients.ZERO


class KroneckerRule:
    """How one kind of layer maps to a Kronecker block: its weight matrix, `A` and `s`.

    The layer computes `activation(s)` with `s` linear in its kernel (and bias), every position
    `t` of `s` being `Wᵀ ā_t` for the input vector `ā_t` that `inputs` returns.
    """

    def supports(self, layer):
        """Whether this layer's settings are covered (else its weights get diagonal blocks)."""
        return True

    def variables(self, layer):
        """The block's variables: the kernel (its last axis the units), then the bias."""
        return [layer.kernel, layer.bias] if layer.use_bias else [layer.kernel]

    def a_shape(self, layer):
        """The shape of `A`: `(inputs + 1, inputs + 1)` with a bias, `(inputs, inputs)` without."""
        size = math.prod(layer.kernel.shape[:-1]) + int(layer.use_bias)
        return (size, size)

    def pre_activation(self, layer, inputs, *args, **kwargs):
        """`(s, output)` of one call: the layer without its activation, then the activation."""
        s = type(layer).call(with_linear_activation(layer), inputs, *args, **kwargs)
        return s, layer.activation(s)

    def inputs(self, layer, x):
        """The input vectors `a_nt` (without the bias's 1), shape `(N, T, inputs)`."""
        raise NotImplementedError

    def input_factor(self, layer, calls_inputs, example_weights):
        """`(A, T)`: `sum_n w_n sum_t ā_nt ā_ntᵀ` over the calls' inputs, positions per example."""
        inputs = tf.concat([self.inputs(layer, x) for x in calls_inputs], axis=1)
        if layer.use_bias:
            inputs = tf.concat([inputs, tf.ones_like(inputs[..., :1])], axis=-1)
        # One matrix product over the (example, position) rows; a three-operand einsum
        # materialized an (N, d, d) tensor (2.8 s at batch 2000 on the autoencoder).
        rows_of_inputs = tf.reshape(inputs, [-1, inputs.shape[-1]])
        weighted = tf.reshape(example_weights[:, None, None] * inputs, [-1, inputs.shape[-1]])
        return tf.matmul(weighted, rows_of_inputs, transpose_a=True), tf.shape(inputs)[1]


class DenseRule(KroneckerRule):
    """`s = x W + b` on the last axis; leading axes after the first are positions."""

    def inputs(self, layer, x):
        return tf.reshape(x, [tf.shape(x)[0], -1, x.shape[-1]])


def _patches(x, kernel_size, strides, dilation_rate, padding):
    """`(N, T, inputs)`: the window of a 2-D convolution at each output position, channels last.

    Each window is flattened in the kernel's `(rows, columns, channels)` order.
    """
    patches = tf.image.extract_patches(
        x, sizes=[1, *kernel_size, 1], strides=[1, *strides, 1], rates=[1, *dilation_rate, 1],
        padding=padding.upper())
    return tf.reshape(patches, [tf.shape(x)[0], -1, patches.shape[-1]])


class Conv2DRule(KroneckerRule):
    """KFC: `ā_nt` is the patch the kernel sees at output position `t` (channels last).

    A subclass with a `convolution_op` of its own (a masked kernel, as LeNet-5's connection
    table) convolves with something else than its kernel, so it is not covered.
    """

    def supports(self, layer):
        return (layer.data_format == "channels_last" and layer.groups == 1
                and type(layer).convolution_op is keras.layers.Conv2D.convolution_op)

    def inputs(self, layer, x):
        return _patches(x, layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding)


class Conv1DRule(Conv2DRule):
    """A Conv1D is a Conv2D on an image one row high; `"causal"` pads the start, then is valid."""

    def inputs(self, layer, x):
        padding = layer.padding
        if padding == "causal":
            x = tf.pad(x, [[0, 0], [layer.dilation_rate[0] * (layer.kernel_size[0] - 1), 0],
                           [0, 0]])
            padding = "valid"
        return _patches(x[:, None], (1, *layer.kernel_size), (1, *layer.strides),
                        (1, *layer.dilation_rate), padding)


class EmbeddingRule(KroneckerRule):
    """`s_t = E[k_t] = Eᵀ e_(k_t)`: `ā_t` is the one-hot vector of token `k_t`, so `A` is diagonal.

    `A = diag(sum_n w_n sum_t e_(k_nt))`, the weighted token counts, kept as that vector
    (`V -> diag(A) V G`): a vocabulary's `A` as a matrix would be its size squared.
    """

    def supports(self, layer):
        return not layer.lora_enabled and layer.quantization_mode is None

    def variables(self, layer):
        return [layer.embeddings]

    def a_shape(self, layer):
        return (layer.input_dim,)

    def pre_activation(self, layer, inputs, *args, **kwargs):
        s = type(layer).call(layer, inputs, *args, **kwargs)
        return s, s

    def input_factor(self, layer, calls_inputs, example_weights):
        tokens = tf.concat([tf.reshape(tf.cast(x, tf.int32), [tf.shape(x)[0], -1])
                            for x in calls_inputs], axis=1)
        weights = tf.broadcast_to(example_weights[:, None], tf.shape(tokens))
        counts = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]),
                                              tf.reshape(tokens, [-1]), layer.input_dim)
        return counts, tf.shape(tokens)[1]


_RULES = RuleRegistry(KroneckerRule, "a kronecker.KroneckerRule instance")


def register_rule(layer_class, rule):
    """Makes K-FAC give layers of `layer_class` (whose `call` it keeps) a Kronecker block."""
    _RULES.register(layer_class, rule)


def rule_for(layer):
    """The `KroneckerRule` of `layer`, or `None` (its weights then get diagonal blocks)."""
    rule = _RULES.lookup(layer)
    return rule if rule is not None and rule.supports(layer) else None


register_rule(keras.layers.Dense, DenseRule())
register_rule(keras.layers.Conv2D, Conv2DRule())
register_rule(keras.layers.Conv1D, Conv1DRule())
register_rule(keras.layers.Embedding, EmbeddingRule())


class KroneckerBlock(NamedTuple):
    """One layer's block `A ⊗ G + η I`.

    Attributes:
        layer: the layer.
        indices: the positions of its kernel (and bias) among the objective's variables.
        a: `A`, shape `(inputs + 1, inputs + 1)` with a bias (`(inputs, inputs)` without).
        g: `G`, shape `(units, units)`.
        penalty: `η`, the mean of the weight penalties' Hessian diagonal over the block's
            weights (a scalar; 0 without penalties, and in a block of inverses).
    """

    layer: keras.layers.Layer
    indices: tuple
    a: tf.Tensor
    g: tf.Tensor
    penalty: tf.Tensor


class KroneckerFactors(NamedTuple):
    """The block-diagonal K-FAC approximation of a curvature matrix on one batch.

    Attributes:
        blocks: the `KroneckerBlock`s.
        diagonal_indices: the positions of the other variables among the objective's.
        diagonals: their diagonal blocks, shaped like those variables.
    """

    blocks: tuple
    diagonal_indices: tuple
    diagonals: tuple


def factor_tensors(factors):
    """The tensors of `factors` as one list: each block's `A`, `G` and `η`, then the diagonals."""
    return ([t for block in factors.blocks for t in (block.a, block.g, block.penalty)]
            + list(factors.diagonals))


def with_factor_tensors(factors, tensors):
    """`factors` with its tensors replaced by `tensors` (in `factor_tensors`' order)."""
    blocks = tuple(block._replace(a=tensors[3 * i], g=tensors[3 * i + 1],
                                  penalty=tensors[3 * i + 2])
                   for i, block in enumerate(factors.blocks))
    return factors._replace(blocks=blocks, diagonals=tuple(tensors[3 * len(blocks):]))


def kronecker_factors(objective, batch, fisher="exact", seed=(0, 0)):
    """The K-FAC factors of the Gauss-Newton / Fisher matrix of `objective` on one `Batch`.

    Args:
        objective: an `Objective` (its variables are the ones the factors cover).
        batch: a `Batch`.
        fisher: `"exact"`, `"sampled"` or `"empirical"` (see the module's docstring).
        seed: the stateless seed pair of the `"sampled"` draw.

    Returns:
        `KroneckerFactors`.

    Raises:
        ValueError: the loss has no Gauss-Newton split (lists the supported losses).
    """
    one_of(fisher, "fisher", FISHERS)
    blocks_layout, diagonal_indices = layout(objective.model, objective.variables)
    layers = [layer for layer, _, _, _ in blocks_layout]
    params = objective.params()
    # "sampled": the diagonal blocks from the backward pass of G (see the module's docstring).
    sampled_diagonal = [params[i] for i in diagonal_indices] if fisher == "sampled" else []
    recorded = {id(layer): [] for layer in layers}

    def intercept(layer, call, inputs, *args, **kwargs):
        # s = the layer without its activation; the activation applied as the layer would.
        pre_activation, output = rule_for(layer).pre_activation(layer, inputs, *args, **kwargs)
        recorded[id(layer)].append((inputs, pre_activation))
        return output

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        with intercepted_calls(layers, intercept):
            y_pred, losses = objective.forward(params, batch.x)
        output_loss = objective.output_loss(batch, y_pred)
        z_rows = rows(output_loss.split(y_pred))
        fixed = tf.stop_gradient(z_rows)
        scale = tf.sqrt(output_loss.row_weights(batch.y, fixed, batch.sample_weight))[:, None]
        projections = [tf.reduce_sum(tf.stop_gradient(scale * factor) * z_rows)
                       for factor in _output_factors(fisher, output_loss, batch, fixed, seed)]
    pre_activations = [[s for _, s in recorded[id(layer)]] for layer in layers]
    sums = [None] * len(layers)
    for projection in projections:  # sum_n c_n sum_f sum_t g_ntf g_ntfᵀ per layer.
        gradients, diagonal_gradients = tape.gradient(
            projection, [pre_activations, sampled_diagonal], unconnected_gradients=_ZERO)
        for index, calls in enumerate(gradients):
            g = tf.concat([tf.reshape(g, [tf.shape(g)[0], -1, g.shape[-1]]) for g in calls],
                          axis=1)
            g = tf.reshape(g, [-1, g.shape[-1]])
            outer = tf.matmul(g, g, transpose_a=True)
            sums[index] = outer if sums[index] is None else sums[index] + outer
    del tape
    example_weights = _example_weights(batch, params[0].dtype)
    penalty = elementwise_penalty_diagonal(objective, params) if blocks_layout else None
    blocks = []
    for (layer, indices, _, _), total in zip(blocks_layout, sums, strict=True):
        a, count = rule_for(layer).input_factor(layer, [x for x, _ in recorded[id(layer)]],
                                                example_weights)
        eta = (tf.zeros((), a.dtype) if penalty is None else
               tf.reduce_mean(tf.concat([tf.reshape(penalty[i], [-1]) for i in indices], 0)))
        blocks.append(KroneckerBlock(layer, indices, a, total / tf.cast(count, total.dtype),
                                     eta))
    diagonals = ()
    if diagonal_indices:
        rest = objective.restricted([objective.variables[i] for i in diagonal_indices])
        if fisher == "sampled":
            diagonals = tuple(with_penalty(rest, [tf.square(densify(g, p)) for g, p in zip(
                diagonal_gradients, sampled_diagonal, strict=True)], len(losses)))
        else:
            diagonals = tuple(batch_diagonal(rest, batch, _DIAGONAL_METHODS[fisher]))
    return KroneckerFactors(tuple(blocks), diagonal_indices, diagonals)


def blocked_layers(model, variables):
    """The layers of `model` that get a Kronecker block for the curvature over `variables`.

    Those with a rule whose trainable variables are all, and only, their kernel (and bias), all
    among `variables`.
    """
    wanted = {id(v) for v in variables}
    layers = []
    for layer in all_layers(model):
        if rule_for(layer) is None or not layer.trainable:
            continue
        own = rule_for(layer).variables(layer)
        if ({id(v) for v in layer.trainable_variables} == {id(v) for v in own}
                and all(id(v) in wanted for v in own)):
            layers.append(layer)
    return layers


def layout(model, variables):
    """The structure of the factors, without computing them: `(blocks, diagonal_indices)`.

    `blocks` holds one `(layer, indices, shape of A, dim G)` per Kronecker block (`A` a vector
    where it is diagonal), as the blocks of `kronecker_factors` come; optimizers size their
    state from it.
    """
    positions = {id(v): index for index, v in enumerate(variables)}
    blocks = []
    for layer in blocked_layers(model, variables):
        rule = rule_for(layer)
        own = rule.variables(layer)
        blocks.append((layer, tuple(positions[id(v)] for v in own), rule.a_shape(layer),
                       own[0].shape[-1]))
    covered = {index for block in blocks for index in block[1]}
    return blocks, tuple(i for i in range(len(variables)) if i not in covered)


def structure(model, variables):
    """`KroneckerFactors` of `layout`'s structure holding no tensors (`with_factor_tensors`)."""
    blocks, diagonal_indices = layout(model, variables)
    return KroneckerFactors(tuple(KroneckerBlock(layer, indices, None, None, None)
                                  for layer, indices, _, _ in blocks), diagonal_indices, ())


def _output_factors(fisher, output_loss, batch, z, seed):
    if fisher == "exact":
        return output_loss.hessian_sqrt_columns(z)
    if fisher == "sampled":
        return [output_loss.sample_hessian_sqrt(z, tf.cast(seed, tf.int64))]
    return [output_loss.row_gradients(batch.y, z)]


def _example_weights(batch, dtype):
    """`w_n`: the sample weights (1 if none) normalized to sum to 1."""
    size = tf.shape(tf.nest.flatten(batch.x)[0])[0]
    if batch.sample_weight is None:
        return tf.fill([size], 1.0 / tf.cast(size, dtype))
    weights = tf.cast(tf.reshape(batch.sample_weight, [size, -1]), dtype)
    weights = tf.reduce_mean(weights, axis=1)
    return weights / tf.reduce_sum(weights)


def _as_matrix(block, vector):
    """The block's variables' parts of `vector` as one `(inputs [+ 1], units)` matrix."""
    kernel = vector[block.indices[0]]
    matrix = tf.reshape(kernel, [-1, kernel.shape[-1]])
    if len(block.indices) == 2:
        matrix = tf.concat([matrix, vector[block.indices[1]][None]], axis=0)
    return matrix


def _from_matrix(block, matrix, vector):
    """`matrix` split back into the block's variables' shapes (the result's entries)."""
    kernel = vector[block.indices[0]]
    parts = {block.indices[0]: tf.reshape(matrix[:math.prod(kernel.shape[:-1])], kernel.shape)}
    if len(block.indices) == 2:
        parts[block.indices[1]] = matrix[-1]
    return parts


def _left_multiply(a, matrix):
    """`A M`, `A` a matrix or (a diagonal `A`) a vector."""
    return a[:, None] * matrix if a.shape.rank == 1 else a @ matrix


def apply(factors, vector):
    """`v -> (block-diagonal K-FAC matrix) v`, `vector` a list shaped like the variables.

    Kronecker blocks: `V -> A V G + η V`; diagonal blocks: `v -> d ⊙ v`.
    """
    result = {}
    for block in factors.blocks:
        matrix = _as_matrix(block, vector)
        product = _left_multiply(block.a, matrix) @ block.g + block.penalty * matrix
        result.update(_from_matrix(block, product, vector))
    for index, diagonal in zip(factors.diagonal_indices, factors.diagonals, strict=True):
        result[index] = diagonal * vector[index]
    return [result[index] for index in range(len(vector))]


def factored_damping(a, g, damping):
    """Martens & Grosse's factored Tikhonov damping: `(π sqrt(λ), sqrt(λ) / π)`.

    `(A + π sqrt(λ) I) ⊗ (G + sqrt(λ)/π I)` approximates `A ⊗ G + λ I` (the cross term
    `λ I ⊗ I` is exact, the others are the price of keeping the inverse Kronecker-factored), and
    `π = sqrt((tr A / dim A) / (tr G / dim G))` balances the two factors' scales, which
    minimizes the norm of those other terms. A zero trace gives `π = 1`.
    """
    mean_a = tf.reduce_mean(a if a.shape.rank == 1 else tf.linalg.diag_part(a))
    mean_g = tf.reduce_mean(tf.linalg.diag_part(g))
    pi = tf.where((mean_a > 0) & (mean_g > 0),
                  tf.sqrt(mean_a / tf.where(mean_g > 0, mean_g, 1.0)), 1.0)
    root = tf.sqrt(scalar(damping, a.dtype))
    return pi * root, root / pi


def invert(factors, damping):
    """The damped inverse of every block, as `KroneckerFactors` for `apply`.

    Kronecker blocks: `(A + π sqrt(λ + η) I)⁻¹` and `(G + sqrt(λ + η)/π I)⁻¹`
    (`factored_damping` of `λ + η`: the penalty's isotropic part is damping the factors cannot
    hold), by Cholesky factorizations, `η` 0 in the result; diagonal blocks: `1 / (d + λ)`.
    """
    def inverse(matrix, shift):
        if matrix.shape.rank == 1:  # A diagonal A.
            return 1.0 / (matrix + shift)
        eye = tf.eye(tf.shape(matrix)[0], dtype=matrix.dtype)
        return tf.linalg.cholesky_solve(tf.linalg.cholesky(matrix + shift * eye), eye)

    blocks = []
    for block in factors.blocks:
        damping_a, damping_g = factored_damping(
            block.a, block.g, scalar(damping, block.penalty.dtype) + block.penalty)
        blocks.append(block._replace(a=inverse(block.a, damping_a),
                                     g=inverse(block.g, damping_g),
                                     penalty=tf.zeros_like(block.penalty)))
    diagonals = tuple(1.0 / (d + scalar(damping, d.dtype)) for d in factors.diagonals)
    return factors._replace(blocks=tuple(blocks), diagonals=diagonals)


def solve(factors, vector, damping):
    """`v -> (damped K-FAC matrix)⁻¹ v`: `apply(invert(factors, damping), vector)`."""
    return apply(invert(factors, damping), vector)


def _eigh(matrix):
    # A diagonal A is its own eigendecomposition: (values, None for the identity).
    return (matrix, None) if matrix.shape.rank == 1 else tf.linalg.eigh(matrix)


def eigendecomposition(factors):
    """`factors` with each block's `A` and `G` as `(eigenvalues, eigenvectors)` pairs.

    A diagonal `A`'s eigenvectors are the identity, given as `None`.
    """
    blocks = tuple(block._replace(a=_eigh(block.a), g=_eigh(block.g))
                   for block in factors.blocks)
    return factors._replace(blocks=blocks)


def eigen_solve(decomposition, vector, damping):
    """`v -> (K + λ I)⁻¹ v` exactly, `decomposition` from `eigendecomposition`.

    `(A ⊗ G + (η + λ) I)⁻¹ = (Q_A ⊗ Q_G) (Λ_A ⊗ Λ_G + η + λ)⁻¹ (Q_A ⊗ Q_G)ᵀ`, so a block's
    matrix `V -> Q_A [(Q_Aᵀ V Q_G) ⊘ (λ_A λ_Gᵀ + η + λ)] Q_Gᵀ`; diagonal blocks
    `v -> v ⊘ (d + λ)`. Unlike `solve`'s factored damping (what K-FAC steps with), this inverts
    the damped matrix itself.
    """
    result = {}
    for block in decomposition.blocks:
        (values_a, vectors_a), (values_g, vectors_g) = block.a, block.g
        rotated = _as_matrix(block, vector) @ vectors_g
        if vectors_a is not None:
            rotated = tf.transpose(vectors_a) @ rotated
        scaled = rotated / (values_a[:, None] * values_g[None, :] + block.penalty + damping)
        if vectors_a is not None:
            scaled = vectors_a @ scaled
        result.update(_from_matrix(block, scaled @ tf.transpose(vectors_g), vector))
    for index, diagonal in zip(decomposition.diagonal_indices, decomposition.diagonals,
                               strict=True):
        result[index] = vector[index] / (diagonal + damping)
    return [result[index] for index in range(len(vector))]


def _kronecker_product(objective, batch, vector):
    return apply(kronecker_factors(objective, batch, "exact"), vector)


def kronecker_vector_product(model, x, y, vector, sample_weight=None, *, loss=None,
                             variables=None, training=None):
    """`v -> K v`, `K` the K-FAC matrix of the batch with the exact output Hessians.

    Kronecker blocks `A ⊗ G` for the Dense, Conv1D, Conv2D and Embedding layers, the
    Gauss-Newton diagonal for the other variables (`kronecker_factors(..., fisher="exact")`):
    one forward pass and one backward pass per output unit.

    Args and returns: as `ggn.gauss_newton_vector_product`.
    """
    objective = as_objective(model, loss, variables, training)
    return _kronecker_product(objective, as_batch((x, y, sample_weight)), vector)


class KroneckerFactoredOperator(CurvatureOperator):
    """K-FAC's block-diagonal matrix `K` (exact output Hessians) as a `tf.linalg.LinearOperator`.

    `matvec` is `K v + λ v`, `solve` the exact `(K + λ I)⁻¹` (`eigen_solve`: an
    eigendecomposition of every factor, cubic in its size, per call). The factors are computed
    when a product or solve runs (they follow the weights); over several batches each factor is
    averaged, weighted by batch size: the factors of all their examples, so that the matrix is
    Kronecker-factored and its inverse cheap (the mean of the batches' Kronecker products is
    not). See `CurvatureOperator` for the arguments; `solve` needs `K + λ I` positive definite
    (`damping > 0` unless every factor is).
    """

    positive_semidefinite = True
    splits_at_outputs = True
    batch_product = staticmethod(_kronecker_product)

    def __init__(self, model, data, **kwargs):
        super().__init__(model, data, **kwargs)
        self._structure = structure(self.objective.model, self.objective.variables)
        self._compiled_factors = tf.function(self._factor_tensors)
        self._compiled_solve = tf.function(self._solve_rows)

    def _factor_tensors(self):
        total = None
        for weight, batch in zip(self._batch_weights, self.batches, strict=True):
            part = [weight * t for t in factor_tensors(kronecker_factors(self.objective, batch,
                                                                         "exact"))]
            total = part if total is None else [a + b for a, b in zip(total, part, strict=True)]
        return total

    def factors(self):
        """The `KroneckerFactors` of the data at the current weights."""
        return with_factor_tensors(self._structure, self._compiled_factors())

    def _list_product(self, vector):
        vector = self.objective.check_vector(vector)
        return [self.damping * v + p
                for v, p in zip(vector, apply(self.factors(), vector), strict=True)]

    def _solve_rows(self, rows_of_rhs):
        decomposition = eigendecomposition(self.factors())
        damping = scalar(self.damping, self.dtype)
        shapes = self.objective.shapes
        return tf.map_fn(lambda row: flatten(eigen_solve(decomposition, unflatten(row, shapes),
                                                         damping)), rows_of_rhs)

    def _solve(self, rhs, adjoint=False, adjoint_arg=False):
        del adjoint  # Self-adjoint.
        columns = tf.linalg.adjoint(rhs) if adjoint_arg else rhs
        return tf.transpose(self._compiled_solve(tf.transpose(columns)))


def dense_matrix(model, x, y, sample_weight=None, *, loss=None, variables=None, training=None,
                 max_parameters=dense.MAX_DENSE_PARAMETERS):
    """The K-FAC matrix (exact output Hessians) on one batch, a dense `(P, P)` tensor.

    The reference of `KroneckerFactoredOperator` and `kronecker_vector_product`: each block's
    factors (the estimator's, themselves tested against per-example dense computations) placed
    entry by entry, `K[(i, j), (k, l)] = A[i, k] G[j, l] + η δ_ik δ_jl` for the kernel entries
    `W[i, j]` (row-major) and the bias `b[j]` as the last row `i` of `[W; b]`; the other
    variables' diagonal entries those of the dense Gauss-Newton matrix (`dense.ggn`); zero
    elsewhere.

    Args: as `dense.ggn`.
    """
    objective = as_objective(model, loss, variables, training)
    gauss_newton = np.diag(dense.ggn(objective, x, y, sample_weight,
                                     max_parameters=max_parameters).numpy())
    factors = kronecker_factors(objective, as_batch((x, y, sample_weight)), "exact")
    sizes = [math.prod(shape) for shape in objective.shapes]
    offsets = np.cumsum([0, *sizes])
    matrix = np.zeros((offsets[-1], offsets[-1]))
    for block in factors.blocks:
        positions = np.concatenate([offsets[i] + np.arange(sizes[i]) for i in block.indices])
        a = block.a.numpy()
        matrix[np.ix_(positions, positions)] = np.kron(
            np.diag(a) if a.ndim == 1 else a, block.g.numpy()) + float(block.penalty) * np.eye(
                len(positions))
    for index in factors.diagonal_indices:
        span = np.arange(offsets[index], offsets[index + 1])
        matrix[span, span] = gauss_newton[span]
    return tf.constant(matrix, dtype=objective.dtype)


kinds.register("kfac", KroneckerFactoredOperator, dense_matrix)
