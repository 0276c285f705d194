"""Saddle-free Newton (Dauphin et al. 2014): the gradient rescaled by |H|⁻¹ in a Krylov subspace."""

from typing import NamedTuple

import keras
import tensorflow as tf

from keras_secondorder._validation import number, positive_int
from keras_secondorder.curvature.vectors import flatten, unflatten
from keras_secondorder.optimizers.curvature_optimizer import (
    CurvatureOptimizer,
    with_base_keyword_docs,
    without_learning_rate,
)
from keras_secondorder.optimizers.hessian_free import (
    LINE_SEARCH_SIZES_STEPS,
    armijo_line_search,
    set_step_settings,
)
from keras_secondorder.optimizers.quadratic_model import adjust_damping
from keras_secondorder.spectrum.lanczos import krylov_basis


class SaddleFreeStep(NamedTuple):
    """What `saddle_free_step` returns (flat vectors and scalar tensors).

    Attributes:
        step: the change of the weights, `a δ` (zero when the step is rejected).
        rho: `(f(w + δ) - f(w)) / M(δ)`, `M` the model with `|H|` in the Krylov subspace.
        damping: the next step's `λ`.
        step_size: `a`, 0 for a rejected step.
        smallest_ritz_value: the most negative curvature found in the subspace.
        negative_fraction: the fraction of the subspace's Ritz values below zero.
        finite: whether `f(w)`, `g` and the subspace were finite (if not, nothing was tried).
    """

    step: tf.Tensor
    rho: tf.Tensor
    damping: tf.Tensor
    step_size: tf.Tensor
    smallest_ritz_value: tf.Tensor
    negative_fraction: tf.Tensor
    finite: tf.Tensor


def saddle_free_direction(basis, tridiagonal, gradient, damping):
    """`δ = -V U (|Θ| + λ)⁻¹ Uᵀ V g` and `δᵀ|H_k|δ`, `T = U Θ Uᵀ` (`V`'s rows the basis).

    In the Krylov subspace, `|H|` is `Vᵀ U |Θ| Uᵀ V`: every Ritz value replaced by its absolute
    value, so a direction of negative curvature is followed downhill instead of uphill (where
    Newton's `-H⁻¹ g` goes: towards the saddle). Directions outside the subspace (and those
    of a zero basis vector, after a breakdown) are left out.

    Returns:
        `(δ, δᵀ |H_k| δ, Ritz values)`.
    """
    ritz_values, rotation = tf.linalg.eigh(tridiagonal)
    coordinates = tf.linalg.matvec(rotation, tf.linalg.matvec(basis, gradient), True)
    scaled = -coordinates / (tf.abs(ritz_values) + damping)
    direction = tf.linalg.matvec(basis, tf.linalg.matvec(rotation, scaled), True)
    return direction, tf.reduce_sum(tf.abs(ritz_values) * scaled * scaled), ritz_values


def saddle_free_step(objective, gradient, hessian_product, damping, *, krylov_steps=20,
                     damping_increase=1.5, damping_decrease=2.0 / 3.0, min_damping=1e-6,
                     line_search_sufficient=0.01, line_search_shrink=0.8, line_search_tries=30):
    """One saddle-free Newton iteration on flat vectors: `SaddleFreeNewton`'s numerics.

    `krylov_steps` Lanczos steps on the Hessian from `g` (so the subspace holds `g`);
    `δ = saddle_free_direction(...)`; rho of the undamped model `M(δ) = gᵀδ + ½ δᵀ|H_k|δ`
    (the damping is the trust region, as Hessian-free's); `λ` adjusted by rho; an Armijo line
    search along `δ`. A rejected step raises `λ` by `damping_increase` at least.

    Args:
        objective: the flat step `δ -> f(w + δ)` (a scalar tensor).
        gradient: `g` (flat).
        hessian_product: `v -> H v` (flat).
        damping: `λ > 0` (a scalar tensor of `gradient`'s dtype).
        krylov_steps, damping_increase, damping_decrease, min_damping, line_search_sufficient,
        line_search_shrink, line_search_tries: as documented in `SaddleFreeNewton`.

    Returns:
        A `SaddleFreeStep`.
    """
    value = tf.cast(objective(tf.zeros_like(gradient)), gradient.dtype)
    basis, tridiagonal = krylov_basis(hessian_product, gradient, krylov_steps)
    finite = (tf.math.is_finite(value) & tf.reduce_all(tf.math.is_finite(gradient))
              & tf.reduce_all(tf.math.is_finite(tridiagonal)))
    # After a breakdown the later rows of V and T are zero: their Ritz values, set above all
    # others (the rows are decoupled), are no curvature found, and their directions are empty.
    live = tf.reduce_any(tf.not_equal(basis, 0.0), axis=1)
    tridiagonal += tf.linalg.diag(tf.where(
        live, 0.0, 1.0 + 2.0 * tf.reduce_max(tf.abs(tridiagonal))))

    def step():
        direction, curvature, ritz_values = saddle_free_direction(basis, tridiagonal, gradient,
                                                                  damping)
        slope = tf.reduce_sum(gradient * direction)
        predicted = slope + 0.5 * curvature
        value_at_one = tf.cast(objective(direction), value.dtype)
        rho = (value_at_one - value) / predicted
        new_damping = adjust_damping(damping, rho, damping_increase, damping_decrease,
                                     min_damping)
        rate, _, accepted = armijo_line_search(
            objective, direction, value, slope, value_at_one, line_search_sufficient,
            line_search_shrink, line_search_tries)
        new_damping = tf.where(accepted, new_damping,
                               tf.maximum(new_damping, damping * damping_increase))
        negative = tf.reduce_sum(tf.cast(ritz_values < 0, gradient.dtype))
        return SaddleFreeStep(tf.where(accepted, rate * direction, 0.0), rho, new_damping,
                              tf.where(accepted, rate, 0.0), tf.reduce_min(ritz_values),
                              negative / tf.reduce_sum(tf.cast(live, gradient.dtype)), finite)

    def reject():
        nan = tf.constant(float("nan"), gradient.dtype)
        return SaddleFreeStep(tf.zeros_like(gradient), nan, damping * damping_increase,
                              tf.zeros((), gradient.dtype), nan, nan, finite)

    return tf.cond(finite, step, reject)


# The settings of `saddle_free_step`, attributes of `SaddleFreeNewton` under the same names.
STEP_SETTINGS = ("krylov_steps", "damping_increase", "damping_decrease", "min_damping",
                 "line_search_sufficient", "line_search_shrink", "line_search_tries")


@keras.saving.register_keras_serializable(package="keras_secondorder")
@with_base_keyword_docs
class SaddleFreeNewton(CurvatureOptimizer):
    """Saddle-free Newton: the gradient rescaled by `|H|⁻¹` in a Krylov subspace, in `fit`.

    Newton's step `-H⁻¹ g` moves towards any critical point, saddles included: along a
    direction of negative curvature it goes uphill. Dauphin et al. (2014) rescale by `|H|`
    instead (every eigenvalue by its absolute value), which keeps Newton's scaling per
    direction but always descends, and escapes saddles along their negative curvature; damping
    alone would hide that curvature (`H + λI` with a `λ` large enough to be positive definite
    turns the negative directions into small positive ones). In a Krylov subspace of the
    batch's Hessian (exact Hessian-vector products of the core):

    ```
    V, T <- krylov_steps Lanczos steps on H from g;  T = U Θ Uᵀ
    δ = -Vᵀ U (|Θ| + λ)⁻¹ Uᵀ V g
    rho = (f(w + δ) - f(w)) / (gᵀδ + ½ δᵀ|H_k|δ);  λ <- λ · damping_increase if rho < 1/4,
                                                     λ · damping_decrease if rho > 3/4
    w <- w + a δ,  a the largest line_search_shrink^j with Armijo's sufficient decrease
    ```

    A step costs `krylov_steps` Hessian-vector products (about two gradients each) and a few
    forward passes. Logged per step: `damping`, `rho`, `step_size` (`a`; 0 when rejected),
    `smallest_ritz_value` (the most negative curvature found), `negative_ritz_fraction`,
    `rejected_steps` (cumulative) and `skipped_steps`. Pass large batches: the Hessian of a
    small batch is noisy. One device only (the line search's forward passes run in a loop).

    Args:
        krylov_steps: `k`, the subspace's dimension (Hessian products per step). Dauphin et
            al. used a few tens. Defaults to `20`.
        damping: the initial `λ` (> 0: `|Θ| + λ` must be invertible where a Ritz value is 0).
            Defaults to `1.0`.
        damping_increase: `λ`'s factor when rho < 1/4 or the step is rejected. Defaults to
            `1.5`.
        damping_decrease: `λ`'s factor when rho > 3/4. Defaults to `2/3`.
        min_damping: `λ` never decreases below this. Defaults to `1e-6`.
        line_search_sufficient: Armijo's constant. Defaults to `0.01`.
        line_search_shrink: the line search's factor per trial. Defaults to `0.8`.
        line_search_tries: trials before the step is rejected. Defaults to `30`.
        {{base_optimizer_keyword_args}}

    References:
        - Dauphin, Pascanu, Gulcehre, Cho, Ganguli, Bengio, 2014: Identifying and attacking the
          saddle point problem in high-dimensional non-convex optimization (NeurIPS).
    """

    def __init__(self, krylov_steps=20, damping=1.0, damping_increase=1.5,
                 damping_decrease=2.0 / 3.0, min_damping=1e-6, line_search_sufficient=0.01,
                 line_search_shrink=0.8, line_search_tries=30, name="saddle_free_newton",
                 **kwargs):
        kwargs = without_learning_rate(kwargs, "SaddleFreeNewton", LINE_SEARCH_SIZES_STEPS)
        super().__init__(learning_rate=1.0, name=name, **kwargs)
        self.krylov_steps = positive_int(krylov_steps, "krylov_steps")
        self.initial_damping = number(damping, "damping", lambda v: v > 0, "> 0")
        set_step_settings(self, damping, damping_increase, damping_decrease, min_damping,
                          line_search_sufficient, line_search_shrink, line_search_tries,
                          min_damping_may_be_zero=False)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.damping = self.add_damping(variables, self.initial_damping)
        self.rho = self.add_scalar("rho")
        self.step_size = self.add_scalar("step_size")
        self.smallest_ritz_value = self.add_scalar("smallest_ritz_value")
        self.negative_ritz_fraction = self.add_scalar("negative_ritz_fraction")
        self.rejected_steps = self.add_scalar("rejected_steps")

    def diagnostics(self):
        """`damping`, rho, step size, the subspace's curvature, rejected and skipped steps."""
        return {**super().diagnostics(), "damping": self.damping, "rho": self.rho,
                "step_size": self.step_size, "smallest_ritz_value": self.smallest_ritz_value,
                "negative_ritz_fraction": self.negative_ritz_fraction,
                "rejected_steps": self.rejected_steps}

    def curvature_step(self, curvature, gradients, variables, learning_rate):
        self.require_one_device("HessianFree or KFAC")
        shapes = [tuple(v.shape) for v in variables]
        gradient = flatten(gradients)
        result = saddle_free_step(
            lambda step: curvature.loss(unflatten(step, shapes)), gradient,
            lambda v: flatten(curvature.hessian_vector_product(unflatten(v, shapes))),
            tf.cast(self.damping, gradient.dtype),
            **{name: getattr(self, name) for name in STEP_SETTINGS})

        def apply():
            for variable, delta in zip(variables, unflatten(result.step, shapes), strict=True):
                variable.assign_add(tf.cast(delta, variable.dtype))
            self.damping.assign(tf.cast(result.damping, self.damping.dtype))
            for slot, value in ((self.rho, result.rho), (self.step_size, result.step_size),
                                (self.smallest_ritz_value, result.smallest_ritz_value),
                                (self.negative_ritz_fraction, result.negative_fraction)):
                slot.assign(tf.cast(value, slot.dtype))
            self.rejected_steps.assign_add(tf.cast(tf.equal(result.step_size, 0.0), tf.float32))

        tf.cond(result.finite, apply, lambda: None)
        self.skipped_steps.assign_add(1.0 - tf.cast(result.finite, tf.float32))

    def get_config(self):
        config = super().get_config()
        config.pop("learning_rate", None)
        config.update({"damping": self.initial_damping,
                       **{name: getattr(self, name) for name in STEP_SETTINGS}})
        return config
