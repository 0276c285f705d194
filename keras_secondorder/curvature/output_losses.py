"""Output-space Hessians of the matching losses, in closed form.

The Gauss-Newton matrix splits the objective `L(w) = sum_n c_n l_n(z_n(w)) + R(w)` at the network
outputs `z` (rows `z_n`, one per example) into the network `z(w)` and the loss `l_n(z_n)`:
`G = sum_n c_n J_nᵀ H_n J_n + ∇²R`, with `H_n = ∇²_z l_n` the output-space Hessian below and
`c_n` the weight Keras's reduction gives row `n` (`sample_weight_n / batch_size` by default).

Where the model ends in a softmax (sigmoid) and the loss takes probabilities
(`from_logits=False`), the split is at the logits: the output of the last softmax/sigmoid carries
its input as `_keras_logits` (Keras's own trick for stable cross-entropy), and `z` is that input.
Cross-entropy is then the matching loss of the softmax (Schraudolph 2002): `H_n` is positive
semi-definite and the Gauss-Newton matrix is the Fisher of the model's predictive distribution.
Mean squared error splits at the model's outputs, whatever their activation.
"""

import keras
import tensorflow as tf

from keras_secondorder import _random as random

# reduce_weighted_values: Keras's reduction of per-example losses (sample weights, masks,
# reduction modes).
from keras_secondorder._keras_compat import (
    compiled_losses,
    keras_logits,
    loss_function_kwargs,
    reduce_weighted_values,
)


class OutputLoss:
    """A matching loss as a function of the outputs `z` at which the objective splits.

    Rows: `z` of shape `(..., C)` is seen as `N = prod(...)` rows of `C` outputs; a row is one
    example (one time step of one example for sequence outputs).

    Args:
        loss: the resolved Keras `Loss` object (what `compile` made of the loss argument).
        loss_weight: the compile-time loss weight. Defaults to `1`.
    """

    activation = None  # The activation between the split `z` and the loss's input.
    name = None

    def __init__(self, loss, loss_weight=None):
        self.loss = loss
        self.loss_weight = 1.0 if loss_weight is None else loss_weight
        self.from_logits = bool(loss_function_kwargs(loss).get("from_logits", False))

    def split(self, y_pred):
        """The outputs `z` at which the objective splits, from the model's predictions."""
        if getattr(y_pred, "_keras_mask", None) is not None:
            raise ValueError(
                "The model's output carries a Keras mask, which the Gauss-Newton and Fisher "
                "products do not support. Use the Hessian, which supports any objective."
            )
        if self.activation is None or self.from_logits:
            return y_pred
        logits = keras_logits(y_pred)
        if logits is None:
            raise ValueError(
                f"loss {self.name!r} with from_logits=False needs the model's output to come "
                f"straight from a {self.activation.__name__} activation (e.g. Dense(..., "
                f"activation='{self.activation.__name__}') or Activation('"
                f"{self.activation.__name__}') as the last layer), so that the Gauss-Newton "
                "matrix can split at the logits. Make it the last operation, or output logits "
                "and compile with from_logits=True."
            )
        return logits

    def prediction(self, z):
        """The loss's input (what the model outputs) as a function of `z`."""
        if self.activation is None or self.from_logits:
            return z
        return self.activation(z)  # Keras's activation attaches the logits, as the model does.

    def weighted_loss(self, y, z, sample_weight=None):
        """`loss_weight * loss(y, prediction(z), sample_weight)`: Keras's own computation."""
        return self.loss_weight * self.loss(y, self.prediction(z), sample_weight)

    def row_losses(self, y, z):
        """The per-row losses `l_n` before reduction, shape `(N,)`."""
        return tf.reshape(self.loss.call(y, self.prediction(z)), [-1])

    def row_weights(self, y, z, sample_weight=None):
        """`c_n`, the weight of row `n` in the objective, shape `(N,)`.

        The reduction is linear in the per-row losses, so its gradient with respect to them is
        the weight each row gets (`loss_weight * sample_weight_n / N` for the default
        `sum_over_batch_size`); computing it so leaves every reduction mode to Keras's code.
        """
        losses = tf.stop_gradient(self.loss.call(y, self.prediction(z)))
        with tf.GradientTape() as tape:
            tape.watch(losses)
            total = reduce_weighted_values(
                losses, sample_weight=sample_weight, reduction=self.loss.reduction,
                dtype=self.loss.dtype,
            )
        weights = tape.gradient(total, losses)
        return tf.cast(self.loss_weight * tf.reshape(weights, [-1]), z.dtype)

    def row_gradients(self, y, z):
        """`g_n = ∂l_n/∂z_n` for every row, shape `(N, C)` (the empirical Fisher's factor)."""
        z = tf.stop_gradient(z)
        with tf.GradientTape() as tape:
            tape.watch(z)
            total = tf.reduce_sum(self.row_losses(y, z))
        return rows(tape.gradient(total, z))

    def hessian_product(self, z, u):
        """`H_n u_n` for every row (unweighted): `z`, `u` and the result have shape `(N, C)`."""
        raise NotImplementedError

    def hessian_sqrt_column(self, z, k):
        """Column `k` of a square root `S_n` of every row's Hessian, `H_n = S_n S_nᵀ`: `(N, C)`.

        Summing `(J_nᵀ s_nk)²` over the `C` columns gives the exact Gauss-Newton diagonal.
        """
        raise NotImplementedError

    def hessian_sqrt_columns(self, z):
        """All `C` columns of `S_n` (`hessian_sqrt_column`): the exact output-space factors."""
        return [self.hessian_sqrt_column(z, k) for k in range(z.shape[-1])]

    def sample_hessian_sqrt(self, z, seed):
        """A random `r_n` per row with `E[r_n r_nᵀ] = H_n` (Monte-Carlo factor): `(N, C)`.

        It is the gradient of the loss at a label drawn from the model's predictive
        distribution, so `E[(J_nᵀ r_n)²]` is the Gauss-Newton (Fisher) diagonal.
        """
        raise NotImplementedError


def rows(tensor):
    """Reshapes `(..., C)` into `(N, C)` rows."""
    return tf.reshape(tensor, [-1, tf.shape(tensor)[-1]])


class CrossEntropy(OutputLoss):
    """Softmax cross-entropy (categorical or sparse): `H_n = diag(p_n) - p_n p_nᵀ`.

    Written so that float32 keeps its relative accuracy where the model is confident (`p_c`
    near 1, the end of training): `1 - p_c` is never formed as a difference, which would
    cancel to rounding noise and make the curvature indefinite there.
    """

    activation = staticmethod(keras.activations.softmax)
    name = "categorical_crossentropy"

    def hessian_product(self, z, u):
        """`u -> diag(p) u - p pᵀ u = p ⊙ (w - pᵀw)`, `p = softmax(z)`, `w = u - u_c`.

        The shift by `u_c` (`c` the most probable class) changes nothing (`Σ p = 1`), and
        leaves only the small probabilities in `pᵀw`.
        """
        p = tf.nn.softmax(z)
        w = u - tf.gather(u, tf.argmax(p, axis=-1), axis=-1, batch_dims=1)[:, None]
        return p * (w - tf.reduce_sum(p * w, axis=-1, keepdims=True))

    def hessian_sqrt_column(self, z, k):
        """`√p_k (e_k - p)`: column k of `S = diag(√p) - p √pᵀ`; `S Sᵀ = diag(p) - p pᵀ`."""
        p = tf.nn.softmax(z)
        return -tf.sqrt(p[:, k : k + 1]) * minus_one_hot(p, tf.fill(tf.shape(p)[:1], k))

    def sample_hessian_sqrt(self, z, seed):
        """`p - e_y`, `y ~ Cat(p)`: `E[(p - e_y)(p - e_y)ᵀ] = diag(p) - p pᵀ`."""
        # y is drawn by inverting the CDF: XLA has no kernel for tf.random.stateless_categorical.
        p = tf.nn.softmax(z)
        uniform = random.uniform(tf.shape(p)[:1], seed, dtype=p.dtype)
        below = tf.cast(tf.cumsum(p, axis=-1)[:, :-1] < uniform[:, None], tf.int32)
        return minus_one_hot(p, tf.reduce_sum(below, axis=-1))


def minus_one_hot(p, labels):
    """`p - e_y` for every row, its `y` entry as `-Σ_{i≠y} p_i` (exact when `p_y` is near 1)."""
    mask = tf.one_hot(labels, tf.shape(p)[-1], dtype=p.dtype)
    others = p * (1.0 - mask)
    return others - mask * tf.reduce_sum(others, axis=-1, keepdims=True)


class SparseCrossEntropy(CrossEntropy):
    """Sparse softmax cross-entropy: integer labels, the same output Hessian."""

    name = "sparse_categorical_crossentropy"


class BinaryCrossEntropy(OutputLoss):
    """Sigmoid cross-entropy averaged over the last axis: `H_n = diag(p (1 - p)) / C`."""

    activation = staticmethod(keras.activations.sigmoid)
    name = "binary_crossentropy"

    def _curvature(self, z):
        # p (1 - p) as sigmoid(z) sigmoid(-z): `1 - p` would cancel where p is near 1.
        p = tf.sigmoid(z)
        return p, p * tf.sigmoid(-z) / tf.cast(tf.shape(z)[-1], z.dtype)

    def hessian_product(self, z, u):
        """`u -> diag(p (1 - p)) u / C`, `p = sigmoid(z)`."""
        return self._curvature(z)[1] * u

    def hessian_sqrt_column(self, z, k):
        """`√(p_k (1 - p_k) / C) e_k`."""
        h = self._curvature(z)[1]
        return tf.one_hot(tf.fill(tf.shape(z)[:1], k), tf.shape(z)[-1], dtype=z.dtype) * tf.sqrt(h)

    def sample_hessian_sqrt(self, z, seed):
        """`(p - y) / √C`, `y ~ Bernoulli(p)`: `E[(p - y)²] / C = p (1 - p) / C`."""
        p, _ = self._curvature(z)
        uniform = random.uniform(tf.shape(p), seed, dtype=p.dtype)
        residual = tf.where(uniform < p, -tf.sigmoid(-z), p)  # p - 1 = -sigmoid(-z)
        return residual / tf.sqrt(tf.cast(tf.shape(z)[-1], z.dtype))


class MeanSquaredError(OutputLoss):
    """Mean squared error over the last axis: `H_n = (2 / C) I`."""

    name = "mean_squared_error"

    def _scale(self, z):
        return 2.0 / tf.cast(tf.shape(z)[-1], z.dtype)

    def hessian_product(self, z, u):
        """`u -> (2 / C) u`."""
        return self._scale(z) * u

    def hessian_sqrt_column(self, z, k):
        """`√(2 / C) e_k`."""
        e_k = tf.one_hot(tf.fill(tf.shape(z)[:1], k), tf.shape(z)[-1], dtype=z.dtype)
        return tf.sqrt(self._scale(z)) * e_k

    def sample_hessian_sqrt(self, z, seed):
        """`√(2 / C) ε`, `ε ~ N(0, I)`: `E[r rᵀ] = (2 / C) I`."""
        noise = random.normal(tf.shape(z), seed, dtype=z.dtype)
        return tf.sqrt(self._scale(z)) * noise


_BY_FUNCTION = {
    keras.losses.categorical_crossentropy: CrossEntropy,
    keras.losses.sparse_categorical_crossentropy: SparseCrossEntropy,
    keras.losses.binary_crossentropy: BinaryCrossEntropy,
    keras.losses.mean_squared_error: MeanSquaredError,
}
SUPPORTED = tuple(cls.name for cls in _BY_FUNCTION.values())


def resolve(compile_loss, y, y_pred):
    """The `OutputLoss` of a (Keras `CompileLoss`) single-output loss.

    Raises:
        ValueError: several outputs, or a loss without a closed-form output Hessian here.
    """
    if not compile_loss.built:
        compile_loss.build(y, y_pred)
    entries = [entry for entry in compiled_losses(compile_loss) if entry.loss is not None]
    if len(entries) != 1:
        raise ValueError(
            f"The Gauss-Newton and Fisher products support models with one output and one loss; "
            f"this one has {len(entries)}. Use the Hessian, or build a single-output model."
        )
    loss, loss_weight = entries[0].loss, entries[0].loss_weights
    cls = _BY_FUNCTION.get(getattr(loss, "fn", None))
    if cls is None:
        raise ValueError(
            f"Loss {getattr(loss, 'name', loss)!r} has no Gauss-Newton split here; supported: "
            f"{', '.join(SUPPORTED)} (as strings or keras.losses objects). The Hessian product "
            "works for any differentiable loss."
        )
    axis = loss_function_kwargs(loss).get("axis", -1)
    if axis != -1:
        raise ValueError(f"Loss {loss.name!r} has axis={axis}; the curvature core needs axis=-1.")
    return cls(loss, loss_weight)
