"""Levenberg-Marquardt (and Gauss-Newton) for small networks, in `model.fit`."""

from typing import NamedTuple

import keras
import tensorflow as tf

from keras_secondorder._validation import number, positive_int
from keras_secondorder.curvature.dense import MAX_DENSE_PARAMETERS
from keras_secondorder.curvature.vectors import flatten, scalar, unflatten
from keras_secondorder.optimizers.curvature_optimizer import (
    CurvatureOptimizer,
    with_base_keyword_docs,
    without_learning_rate,
)


class MarquardtStep(NamedTuple):
    """The outcome of one Levenberg-Marquardt step (`marquardt_step`).

    Attributes:
        step: `δ`, the flat update (zeros when no trial lowered the objective).
        damping: `μ` for the next step.
        trials: the systems solved (1 when the first was accepted).
        accepted: whether a trial lowered the objective.
    """

    step: tf.Tensor
    damping: tf.Tensor
    trials: tf.Tensor
    accepted: tf.Tensor


def marquardt_step(objective, value, gradient, matrix, damping, increase, decrease,
                   min_damping, max_damping, max_trials, rcond):
    """Marquardt's rule: solve `(G + μ I) δ = -g`; accept if `f` fell, else raise `μ` and retry.

    `G` is decomposed once, `G = Q Λ Qᵀ`, so that each trial is `δ = -Q (Λ + μ)⁻¹ Qᵀ g`, a
    matrix-vector product, not a new factorization. With `μ = 0` (Gauss-Newton) the step is
    `-G⁺ g`, eigenvalues below `rcond λ_max` treated as zero: the least-squares solution of
    least norm where `G` is singular (more weights than residuals, dead units), and it is
    taken without the test (Gauss-Newton has no damping to raise).

    Args:
        objective: flat step `δ -> f(w + δ)`.
        value: `f(w)`.
        gradient: `g`.
        matrix: `G`, symmetric positive semi-definite.
        damping: `μ` (a scalar tensor), or `None` for Gauss-Newton.
        increase, decrease: the factors of `μ` on a failed and an accepted trial.
        min_damping, max_damping: `μ` stays between them.
        max_trials: the systems solved at most (the step is rejected after as many failures).
        rcond: the relative cut-off of the pseudo-inverse (Gauss-Newton).

    Returns:
        `MarquardtStep`.
    """
    values, vectors = tf.linalg.eigh(matrix)
    rotated = tf.linalg.matvec(vectors, gradient, transpose_a=True)  # Qᵀg

    def solution(mu):
        cut = rcond * tf.reduce_max(tf.abs(values))
        shifted = values + mu
        inverse = tf.where(shifted > cut, 1.0 / tf.where(shifted > cut, shifted, 1.0), 0.0)
        return -tf.linalg.matvec(vectors, inverse * rotated)

    dtype = gradient.dtype
    if damping is None:
        return MarquardtStep(solution(tf.zeros((), dtype)), tf.zeros((), dtype),
                             tf.constant(1), tf.constant(True))

    def trying(trials, mu, step, accepted):
        return ~accepted & (trials < max_trials)

    def trial(trials, mu, step, accepted):
        candidate = solution(mu)
        lower = tf.cast(objective(candidate), dtype) < value  # False for NaN.
        return (trials + 1, tf.where(lower, tf.maximum(mu * decrease, min_damping),
                                     tf.minimum(mu * increase, max_damping)),
                tf.where(lower, candidate, step), lower)

    trials, mu, step, accepted = tf.while_loop(
        trying, trial, (tf.constant(0), damping, tf.zeros_like(gradient), tf.constant(False)))
    return MarquardtStep(step, mu, trials, accepted)


@keras.saving.register_keras_serializable(package="keras_secondorder")
@with_base_keyword_docs
class LevenbergMarquardt(CurvatureOptimizer):
    """Levenberg-Marquardt for networks of up to a few thousand weights: exact damped steps.

    Each step builds the batch's Gauss-Newton matrix `G` densely
    (`BatchCurvature.gauss_newton_matrix`) and solves the damped system exactly, retrying with
    more damping until the objective falls (Marquardt 1963):

    ```
    G = Q Λ Qᵀ                                       (once per step)
    up to max_trials times:
        δ = -(G + μ I)⁻¹ g = -Q (Λ + μ)⁻¹ Qᵀ g
        if f(w + δ) < f(w): w <- w + δ;  μ <- max(μ · damping_decrease, min_damping); stop
        else:               μ <- min(μ · damping_increase, max_damping)
    ```

    With mean squared error `G = (2 / (N C)) JᵀJ` (`J` the Jacobian of the `N C` residuals
    `r`) and `g = (2 / (N C)) Jᵀr`, so the system is the textbook `(JᵀJ + μ' I) δ = -Jᵀr`
    with `μ' = μ N C / 2`. With the other losses of `curvature.SUPPORTED_LOSSES` (the
    cross-entropies with their softmax or sigmoid) `G` is the generalized Gauss-Newton matrix.
    `damping=0` is Gauss-Newton: `δ = -G⁺ g`, always taken. Elementwise weight penalties add
    their diagonal Hessian to `G`.

    Train on whole batches of a small problem (LeCun's slides: Gauss-Newton and
    Levenberg-Marquardt for small networks); a step costs one backward pass per output unit
    and example (vectorized), an eigendecomposition of `G` (`P³`) and one forward pass per
    trial. Logged per step: `damping` (`μ`), `trials`, `rejected_steps` (cumulative: no trial
    lowered the objective) and `skipped_steps` (non-finite gradient, matrix or step). One
    device only: the trials' forward passes run in a loop.

    Args:
        damping: the initial `μ`, in the objective's scale (see the rule above); `0` for
            Gauss-Newton. Defaults to `1e-3`.
        damping_increase: the factor of `μ` after a trial that did not lower the objective.
            Defaults to `10.0` (Marquardt's `ν`).
        damping_decrease: the factor of `μ` after an accepted trial. Defaults to `0.1`.
        min_damping: `μ` never decreases below this. Defaults to `1e-12`.
        max_damping: `μ` never increases above this. At a minimum no step lowers the
            objective (rounding), so every trial fails and raises `μ`: without a bound it
            would overflow within a few dozen such steps and freeze the weights for good
            (the next batch's steps would be zero). Defaults to `1e10`.
        max_trials: systems solved at most per step; after as many failures the step changes
            no weight (and `μ` stays raised). Defaults to `10`.
        max_parameters: the largest model accepted: `G` has `P²` entries and its
            decomposition costs `P³`. Defaults to `4096`.
        rcond: Gauss-Newton's pseudo-inverse cut-off, relative to `G`'s largest eigenvalue.
            Defaults to `1e-12`.
        {{base_optimizer_keyword_args}}

    References:
        - Levenberg, 1944: A method for the solution of certain non-linear problems in least
          squares (Quarterly of Applied Mathematics).
        - Marquardt, 1963: An algorithm for least-squares estimation of nonlinear parameters
          (SIAM Journal on Applied Mathematics).
        - LeCun, Bottou, Orr, Müller, 1998: Efficient BackProp (section 7).
    """

    def __init__(self, damping=1e-3, damping_increase=10.0, damping_decrease=0.1,
                 min_damping=1e-12, max_damping=1e10, max_trials=10,
                 max_parameters=MAX_DENSE_PARAMETERS,
                 rcond=1e-12, name="levenberg_marquardt", **kwargs):
        kwargs = without_learning_rate(
            kwargs, "LevenbergMarquardt",
            "each step solves the damped system exactly and `damping` sets its length. Remove it.")
        super().__init__(learning_rate=1.0, name=name, **kwargs)
        self.initial_damping = number(damping, "damping", lambda v: v >= 0, ">= 0")
        self.damping_increase = number(damping_increase, "damping_increase", lambda v: v > 1,
                                       "> 1")
        self.damping_decrease = number(damping_decrease, "damping_decrease",
                                       lambda v: 0 < v < 1, "in (0, 1)")
        # Gauss-Newton (damping=0) never adapts: min_damping does not apply.
        self.min_damping = number(min_damping, "min_damping",
                                  lambda v: 0 <= v and (damping == 0 or v <= damping),
                                  f"in [0, damping={damping!r}]")
        self.max_damping = number(max_damping, "max_damping", lambda v: v >= damping,
                                  f">= damping={damping!r}")
        self.max_trials = positive_int(max_trials, "max_trials")
        self.max_parameters = positive_int(max_parameters, "max_parameters")
        self.rcond = number(rcond, "rcond", lambda v: 0 <= v < 1, "in [0, 1)")

    def build(self, variables):
        if self.built:
            return
        size = sum(tf.TensorShape(v.shape).num_elements() for v in variables)
        if size > self.max_parameters:
            raise ValueError(
                f"LevenbergMarquardt solves with the dense {size} x {size} Gauss-Newton matrix "
                f"of this model's {size} weights, over max_parameters={self.max_parameters}. "
                "For larger models use HessianFree (Gauss-Newton products and conjugate "
                "gradient) or SDLM (its diagonal); raise max_parameters if memory and time "
                f"allow ({size}² entries, a {size}³ decomposition per step)."
            )
        super().build(variables)
        self.damping = self.add_damping(variables, self.initial_damping)
        self.trials = self.add_scalar("trials")
        self.rejected_steps = self.add_scalar("rejected_steps")

    def diagnostics(self):
        """`damping`, the last step's `trials`, `rejected_steps` and `skipped_steps`."""
        return {**super().diagnostics(), "damping": self.damping, "trials": self.trials,
                "rejected_steps": self.rejected_steps}

    def curvature_step(self, curvature, gradients, variables, learning_rate):
        self.require_one_device("HessianFree or KFAC (its models are small anyway)")
        shapes = [tuple(v.shape) for v in variables]
        gradient = flatten(gradients)
        dtype = gradient.dtype
        matrix = tf.cast(curvature.gauss_newton_matrix(), dtype)
        value = tf.cast(curvature.loss(), dtype)
        damping = None if self.initial_damping == 0 else tf.cast(self.damping, dtype)
        result = marquardt_step(
            lambda step: curvature.loss(unflatten(step, shapes)), value, gradient, matrix,
            damping, scalar(self.damping_increase, dtype), scalar(self.damping_decrease, dtype),
            scalar(self.min_damping, dtype), scalar(self.max_damping, dtype), self.max_trials,
            scalar(self.rcond, dtype))
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t))
                                for t in (gradient, matrix, result.step)])

        def apply():
            for variable, delta in zip(variables, unflatten(result.step, shapes), strict=True):
                variable.assign_add(tf.cast(delta, variable.dtype))
            self.damping.assign(tf.cast(result.damping, self.damping.dtype))
            self.trials.assign(tf.cast(result.trials, tf.float32))
            self.rejected_steps.assign_add(1.0 - tf.cast(result.accepted, tf.float32))

        tf.cond(finite, apply, lambda: None)
        self.skipped_steps.assign_add(1.0 - tf.cast(finite, tf.float32))

    def get_config(self):
        config = super().get_config()
        config.pop("learning_rate", None)
        config.update({
            "damping": self.initial_damping,
            "damping_increase": self.damping_increase,
            "damping_decrease": self.damping_decrease,
            "min_damping": self.min_damping,
            "max_damping": self.max_damping,
            "max_trials": self.max_trials,
            "max_parameters": self.max_parameters,
            "rcond": self.rcond,
        })
        return config
