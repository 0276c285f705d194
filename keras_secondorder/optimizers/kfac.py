"""K-FAC (Martens & Grosse 2015): a Kronecker-factored natural-gradient optimizer for `fit`."""

import keras
import tensorflow as tf

from keras_secondorder._validation import integer, number, one_of, positive_int
from keras_secondorder.curvature import kronecker
from keras_secondorder.curvature.vectors import dot, scalar
from keras_secondorder.optimizers.curvature_optimizer import (
    CurvatureOptimizer,
    with_base_keyword_docs,
)
from keras_secondorder.optimizers.quadratic_model import adjust_damping, step_coefficients

_NO_MODEL = (
    "KFAC sizes its Kronecker factors from the model's layers, and knows no model. Compile a "
    "keras_secondorder.Model (or keras_secondorder.wrap(model)) with it; in a custom training "
    "loop call optimizer.set_model(model) before the first step."
)


@keras.saving.register_keras_serializable(package="keras_secondorder")
@with_base_keyword_docs
class KFAC(CurvatureOptimizer):
    """K-FAC: the gradient preconditioned by a Kronecker-factored Fisher, in `model.fit`.

    Each Dense, Conv1D, Conv2D and Embedding layer gets a block `A ⊗ G + η I` of the Fisher
    (Gauss-Newton) matrix (`η` the weight penalty's curvature, e.g. `2 l2` for
    `keras.regularizers.L2(l2)`), the other variables a diagonal block (`curvature.kronecker`);
    the step inverts the damped blocks (`γ = sqrt(λ + η)`):

    ```
    A, G, d <- exponential moving averages (factor_decay) of each batch's factors
    every inverse_update_period steps: (A + π γ I)⁻¹, (G + γ/π I)⁻¹, 1/(d + λ)
    Δ = -(A + π γ I)⁻¹ ∇_W (G + γ/π I)⁻¹ per block, -∇/(d + λ) elsewhere
    δ = α Δ + μ δ_prev,  (α, μ) = argmin of ½ δᵀ(C + λ I)δ + gᵀδ   (learning_rate=None)
                         or the given learning_rate and momentum, α then clipped to
                         α min(1, sqrt(kl_clip / (α² |gᵀΔ|)))       (kl_clip)
    w <- w + δ
    every damping_period steps: rho = (f(w + δ) - f(w)) / M(δ);
        λ <- λ ω if rho > 3/4, λ / ω if rho < 1/4     (ω = damping_decay)
    ```

    `C` is the exact Gauss-Newton matrix of the batch (the core's products), so that the
    quadratic model `M` is an honest prediction of the change of the objective; its quadratic
    forms take two forward-mode passes a step (about two gradients). A step whose gradient,
    factors or update is not finite changes no weight and no state and is counted in
    `skipped_steps`.

    Logged per step: `damping`, `rho` (of the last damping adaptation), `step_learning_rate`
    (`α`), `step_momentum` (`μ`), `inverse_refreshes` (cumulative) and `skipped_steps`.

    Use it with `keras_secondorder.Model` (or `keras_secondorder.wrap(model)`); the loss must
    have a Gauss-Newton split (`keras_secondorder.curvature.SUPPORTED_LOSSES`).

    Args:
        learning_rate: `None`, so that each step's `α` and `μ` minimize the quadratic model
            (Martens & Grosse section 7: no rate to tune, the step adapts to the curvature);
            or a float or schedule, a fixed `α` used with `momentum`. Defaults to `None`.
        momentum: `μ` with a fixed `learning_rate` (must be `None` with the adaptive one).
            Defaults to `None` (0 with a fixed rate).
        kl_clip: with a fixed `learning_rate`, a bound `κ` on the step's size in the metric
            of the damped K-FAC matrix `F`: `α` shrinks by `min(1, sqrt(κ / (α² gᵀF⁻¹g)))`,
            so that the natural-gradient step's estimated KL divergence `½ α² gᵀF⁻¹g`
            stays below `κ / 2` (Ba, Grosse & Martens 2017). Where the curvature is small
            the preconditioned step is long, and a fixed rate that suits the rest of
            training overshoots there; the adaptive rate (`learning_rate=None`) bounds the
            step by the quadratic model instead. Defaults to `None` (no clipping).
        damping: the initial `λ`. It plays two parts: Tikhonov damping of the factors (a
            trust region that also absorbs the Kronecker approximation's error) and the
            damping of the quadratic model. It adapts, so a poor start costs a few dozen
            steps. Defaults to `1.0`.
        min_damping: `λ` never decreases below this. Defaults to `1e-8`.
        damping_period: steps between two adaptations of `λ`; each measures rho with one
            more forward pass at `w + δ`. Defaults to `5`.
        damping_decay: `ω`, the factor of one adaptation (Martens & Grosse: `(19/20)^5`
            for a period of 5). Defaults to `0.95 ** 5`.
        factor_decay: the decay of the factors' moving averages: the curvature of a
            mini-batch is noisy, and the average over the last `1 / (1 - decay)` batches
            is what the preconditioner should invert. Defaults to `0.95`.
        inverse_update_period: steps between two refreshes of the damped inverses, the
            expensive part (a Cholesky factorization per factor, cubic in its size); in
            between, the last inverses are used. Defaults to `5`.
        curvature_fraction: the leading fraction of each batch that the factors and the
            quadratic model's curvature are taken on (the gradient and rho's change of the
            objective are always the whole batch's). Curvature needs fewer examples than the
            gradient: the factors are averaged over the last `1 / (1 - factor_decay)` batches
            anyway, and the quadratic model's curvature on part of the batch is an unbiased
            estimate (Martens 2010 takes a quarter for Hessian-free). Below 1 a step costs
            less (`benchmarks/deep_autoencoder.py` measures it). Defaults to `1.0`.
        fisher: how `G` is estimated: `"sampled"` (labels drawn from the model's predictive
            distribution: the true Fisher, one backward pass), `"exact"` (closed-form output
            Hessian: one backward pass per output unit) or `"empirical"` (the true labels;
            biased, cheap). Defaults to `"sampled"`.
        seed: integer seed of the sampled labels; with the step number it fixes each draw, so
            a resumed run draws what an uninterrupted one would. Defaults to `0`.
        {{base_optimizer_keyword_args}}

    References:
        - Martens, Grosse, 2015: Optimizing neural networks with Kronecker-factored
          approximate curvature (ICML).
        - Grosse, Martens, 2016: A Kronecker-factored approximate Fisher matrix for
          convolution layers (ICML).
        - Ba, Grosse, Martens, 2017: Distributed second-order optimization using
          Kronecker-factored approximations (ICLR).
    """

    def __init__(self, learning_rate=None, momentum=None, kl_clip=None, damping=1.0,
                 min_damping=1e-8, damping_period=5, damping_decay=0.95**5, factor_decay=0.95,
                 inverse_update_period=5, curvature_fraction=1.0, fisher="sampled", seed=0,
                 name="kfac", **kwargs):
        adaptive = learning_rate is None
        for setting, value in (("momentum", momentum), ("kl_clip", kl_clip)):
            if adaptive and value is not None:
                raise ValueError(
                    f"KFAC takes `{setting}` (received {value!r}) only with a fixed "
                    "`learning_rate`: with learning_rate=None the quadratic model chooses the "
                    f"step's rate and momentum. Pass a learning_rate, or remove {setting}."
                )
        super().__init__(learning_rate=1.0 if adaptive else learning_rate, name=name, **kwargs)
        self.adaptive = adaptive
        self.momentum = (None if momentum is None else
                         number(momentum, "momentum", lambda v: 0 <= v < 1, "in [0, 1)"))
        self.kl_clip = (None if kl_clip is None else
                        number(kl_clip, "kl_clip", lambda v: v > 0, "> 0"))
        self.initial_damping = number(damping, "damping", lambda v: v > 0, "> 0")
        self.min_damping = number(min_damping, "min_damping", lambda v: 0 <= v <= damping,
                                  f"in [0, damping={damping!r}]")
        self.damping_period = positive_int(damping_period, "damping_period")
        self.damping_decay = number(damping_decay, "damping_decay", lambda v: 0 < v < 1,
                                    "in (0, 1)")
        self.factor_decay = number(factor_decay, "factor_decay", lambda v: 0 <= v < 1,
                                   "in [0, 1)")
        self.inverse_update_period = positive_int(inverse_update_period,
                                                  "inverse_update_period")
        self.curvature_fraction = number(curvature_fraction, "curvature_fraction",
                                         lambda v: 0 < v <= 1, "in (0, 1]")
        self.fisher = one_of(fisher, "fisher", kronecker.FISHERS)
        self.seed = integer(seed, "seed")

    def build(self, variables):
        if self.built:
            return
        model = self.trained_model()
        if model is None:
            raise ValueError(_NO_MODEL)
        super().build(variables)
        self._blocks, self._diagonal_indices = kronecker.layout(model, variables)
        # The factors' structure; their tensors come from the slots or the batch.
        self._structure = kronecker.structure(model, variables)
        dtype = variables[0].dtype
        # Per block: the running sums of A and G and their damped inverses; per other variable
        # its diagonal's running sum and damped inverse. The sums are divided by
        # `factor_weight` (sum of decay^k): an average unbiased from the first step.
        self._sums = self._factor_slots(variables, dtype, "sum")
        self._inverses = self._factor_slots(variables, dtype, "inverse")
        self._previous_updates = self.add_optimizer_variables(variables, "previous_update")
        self.factor_weight = self.add_variable((), dtype=dtype, initializer="zeros",
                                               aggregation="only_first_replica",
                                               name="factor_weight")
        self.damping = self.add_damping(variables, self.initial_damping)
        self.rho = self.add_scalar("rho")
        self.step_learning_rate = self.add_scalar("step_learning_rate")
        self.step_momentum = self.add_scalar("step_momentum")
        self.inverse_refreshes = self.add_scalar("inverse_refreshes")

    def _factor_slots(self, variables, dtype, role):
        """Variables shaped like the factors' tensors (`kronecker.factor_tensors` order)."""
        slots = []
        for index, (_, _, shape_a, size_g) in enumerate(self._blocks):
            slots.append(self.add_variable(shape_a, dtype=dtype, name=f"kfac_{role}_a_{index}"))
            slots.append(self.add_variable((size_g, size_g), dtype=dtype,
                                           name=f"kfac_{role}_g_{index}"))
            slots.append(self.add_variable((), dtype=dtype, name=f"kfac_{role}_penalty_{index}"))
        for index in self._diagonal_indices:
            slots.append(self.add_variable(tuple(variables[index].shape), dtype=dtype,
                                           name=f"kfac_{role}_diagonal_{index}"))
        return slots

    def _factors(self, tensors):
        """`KroneckerFactors` of this model's structure holding `tensors`."""
        return kronecker.with_factor_tensors(self._structure, tensors)

    def diagnostics(self):
        """The damping, rho, the step's `α` and `μ`, the inverse refreshes, skipped steps."""
        return {**super().diagnostics(), "damping": self.damping, "rho": self.rho,
                "step_learning_rate": self.step_learning_rate,
                "step_momentum": self.step_momentum,
                "inverse_refreshes": self.inverse_refreshes}

    def curvature_step(self, curvature, gradients, variables, learning_rate):
        dtype = gradients[0].dtype
        step = tf.cast(self.iterations, tf.int64)
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        # The factors and the quadratic model's curvature on the head of the batch.
        head = curvature.head(self.curvature_fraction)
        batch = kronecker.factor_tensors(head.kronecker_factors(self.fisher, seed))
        decay = scalar(self.factor_decay, dtype)
        weight = decay * tf.cast(self.factor_weight, dtype) + 1.0
        sums = [decay * tf.convert_to_tensor(s) + b for s, b in zip(self._sums, batch,
                                                                    strict=True)]
        damping = tf.cast(self.damping, dtype)
        refresh = step % self.inverse_update_period == 0
        inverses = tf.cond(
            refresh,
            lambda: kronecker.factor_tensors(kronecker.invert(
                self._factors([s / weight for s in sums]), damping)),
            lambda: [tf.convert_to_tensor(s) for s in self._inverses])
        proposal = [-p for p in kronecker.apply(self._factors(inverses), gradients)]
        previous = [tf.convert_to_tensor(p) for p in self._previous_updates]
        if self.adaptive:
            coefficients = step_coefficients(gradients, proposal, previous,
                                             head.gauss_newton_quadratic_forms, damping)
            rate, momentum = coefficients.learning_rate, coefficients.momentum
        else:
            rate = tf.cast(learning_rate, dtype)
            momentum = scalar(self.momentum or 0.0, dtype)
            if self.kl_clip is not None:
                rate = clipped_rate(rate, -dot(gradients, proposal), scalar(self.kl_clip, dtype))
        update = [rate * p + momentum * q for p, q in zip(proposal, previous, strict=True)]
        adapt = (step + 1) % self.damping_period == 0
        rho, new_damping = self._adapted_damping(curvature, head, adapt, update, gradients,
                                                 damping, None if not self.adaptive
                                                 else coefficients.predicted_change)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t))
                                for t in [*gradients, *update, *sums]])
        tf.distribute.get_replica_context().merge_call(
            self._apply, args=(variables, update, sums, weight, inverses, refresh, rho,
                               new_damping, rate, momentum, finite))

    def _adapted_damping(self, curvature, head, adapt, update, gradients, damping, predicted):
        """`(rho, λ)` after this step: Levenberg-Marquardt on the damping steps, else as is.

        rho compares the objective's change over the step on the batch (`curvature`) with the
        quadratic model's `M(δ)` (its curvature on `head`); it takes one more forward pass
        (and, with a fixed rate, one product), only then: the objective at the current
        weights is the train step's own loss.
        """
        dtype = gradients[0].dtype

        def measure():
            change = (curvature.loss(update, sum_over_replicas=False)
                      - curvature.loss(sum_over_replicas=False))
            values = [tf.cast(change, dtype)]
            if predicted is None:  # ½ δᵀ C δ, summed over the replicas with the change.
                values.append(0.5 * head.gauss_newton_quadratic_forms(
                    [update], sum_over_replicas=False)[0, 0])
            return values

        zeros = [tf.zeros((), dtype)] * (1 if predicted is not None else 2)
        measured = curvature.sum_over_replicas_if(adapt, measure, zeros)
        if predicted is None:
            predicted = (measured[1] + dot(gradients, update)
                         + 0.5 * damping * dot(update, update))
        rho = measured[0] / predicted
        adjusted = adjust_damping(damping, rho, 1.0 / self.damping_decay, self.damping_decay,
                                  self.min_damping)
        return (tf.where(adapt, rho, tf.cast(self.rho, rho.dtype)),
                tf.where(adapt, adjusted, damping))

    def _apply(self, distribution, variables, update, sums, weight, inverses, refresh, rho,
               damping, rate, momentum, finite):
        # rho and the damping hold their previous values on the steps that do not adapt them.

        def first(value):
            # The replicas' values are identical (factors and products are summed).
            return distribution.experimental_local_results(value)[0]

        def assign(variable, value):
            variable.assign(tf.cast(value, variable.dtype))

        def add(variable, value):
            variable.assign_add(tf.cast(value, variable.dtype))

        update_variable = distribution.extended.update

        def assign_all(slots, values):
            for slot, value in zip(slots, values, strict=True):
                update_variable(slot.value, assign, args=(value,), group=False)

        def apply():
            for variable, delta in zip(variables, update, strict=True):
                update_variable(variable, add, args=(delta,), group=False)
            assign_all(self._previous_updates, update)
            assign_all(self._sums, sums)
            # The inverses change only when refreshed (a copy of every factor's size otherwise).
            tf.cond(first(refresh), lambda: assign_all(self._inverses, inverses), lambda: None)
            for scalar_slot, value in ((self.factor_weight, weight), (self.damping, damping),
                                       (self.rho, rho), (self.step_learning_rate, rate),
                                       (self.step_momentum, momentum)):
                update_variable(scalar_slot.value, assign, args=(value,), group=False)
            update_variable(self.inverse_refreshes.value, add, args=(refresh,), group=False)

        tf.cond(first(finite), apply, lambda: None)
        self.count_skipped_step(distribution, finite)

    def get_config(self):
        config = super().get_config()
        if self.adaptive:
            config["learning_rate"] = None
        config.update({
            "momentum": self.momentum,
            "kl_clip": self.kl_clip,
            "damping": self.initial_damping,
            "min_damping": self.min_damping,
            "damping_period": self.damping_period,
            "damping_decay": self.damping_decay,
            "factor_decay": self.factor_decay,
            "inverse_update_period": self.inverse_update_period,
            "curvature_fraction": self.curvature_fraction,
            "fisher": self.fisher,
            "seed": self.seed,
        })
        return config


def clipped_rate(rate, squared_norm, kl_clip):
    """`α min(1, sqrt(κ / (α² gᵀF⁻¹g)))`: the rate whose step keeps `α² gᵀF⁻¹g <= κ`.

    `squared_norm` is `gᵀF⁻¹g = -gᵀΔ` (non-negative: `F` is positive definite).
    """
    size = rate * rate * squared_norm
    return tf.where(size > kl_clip, rate * tf.sqrt(kl_clip / size), rate)
