"""Equilibrated SGD (Dauphin, de Vries, Bengio 2015), with Jacobi and RMSProp under one roof."""

import keras
import tensorflow as tf

from keras_secondorder import _random as random
from keras_secondorder._validation import integer, number, one_of, positive_int
from keras_secondorder.optimizers.curvature_optimizer import with_base_keyword_docs
from keras_secondorder.optimizers.diagonal_curvature_optimizer import DiagonalCurvatureOptimizer

PRECONDITIONERS = ("equilibration", "jacobi", "rmsprop")


@keras.saving.register_keras_serializable(package="keras_secondorder")
@with_base_keyword_docs
class EquilibratedSGD(DiagonalCurvatureOptimizer):
    """SGD preconditioned by the equilibration matrix `D = sqrt(E[(H v)²])`, `v ~ N(0, I)`.

    Every `update_every` steps (step 0 included) one estimate `d` is drawn and accumulated:

    ```
    d = (H v)²,  v ~ N(0, I)          "equilibration": E[d_i] = ||H_i,:||², the row norms²
    d = v ⊙ H v,  v Rademacher        "jacobi":        E[d_i] = H_ii
    d = g²                            "rmsprop":       the squared gradient
    D <- D + d, k <- k + 1            (beta None: the average D / k, the paper's form), or
    D <- beta D + (1 - beta) d        (exponential, divided by 1 - beta^k as in Adam)
    m <- momentum m - epsilon g / (P + lambda),  w <- w + m
    ```

    with `P = sqrt(D / k)` (equilibration, rmsprop) or `P = |D / k|` (jacobi). `H` is the exact
    Hessian, not the Gauss-Newton matrix: equilibration's point is to handle the negative
    curvature around saddle points, which Jacobi's `|diag H|` can misjudge (its diagonal can be
    near zero where rows are large, giving huge steps). One Hessian-vector product every 20
    steps makes the preconditioner cost about 5% of the gradients'. The other two
    preconditioners exist so the paper's comparison runs under the same code; `"rmsprop"` needs
    no curvature (set `update_every=1` and `beta=0.9` for RMSProp proper).

    Use it with `keras_secondorder.Model` (or `keras_secondorder.wrap(model)`).

    Args:
        learning_rate: `epsilon`, a float or a learning-rate schedule. Defaults to `0.01`.
        preconditioner: `"equilibration"`, `"jacobi"` or `"rmsprop"`. Defaults to
            `"equilibration"`.
        update_every: steps between two estimates of `D`. Defaults to `20`.
        damping: `lambda`, added to the preconditioner; bounds the step where `P` is tiny.
            Defaults to `1e-4`.
        momentum: heavy-ball momentum in `[0, 1)`. Defaults to `0.0`.
        beta: `None` for the plain average of all estimates, or the decay in `[0, 1)` of an
            exponential average that forgets old curvature. Defaults to `None`.
        seed: integer seed of the probes `v`; with the step number it fixes every draw, so a
            resumed run draws what an uninterrupted one would. Defaults to `0`.
        {{base_optimizer_keyword_args}}

    References:
        - Dauphin, de Vries, Bengio, 2015: Equilibrated adaptive learning rates for non-convex
          optimization (NeurIPS).
    """

    def __init__(self, learning_rate=0.01, preconditioner="equilibration", update_every=20,
                 damping=1e-4, momentum=0.0, beta=None, seed=0, name="equilibrated_sgd",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.preconditioner = one_of(preconditioner, "preconditioner", PRECONDITIONERS)
        self.update_every = positive_int(update_every, "update_every")
        self.damping = number(damping, "damping", lambda v: v > 0, "> 0")
        self.momentum = number(momentum, "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
        self.beta = None if beta is None else number(beta, "beta", lambda v: 0 <= v < 1,
                                                      "in [0, 1)")
        self.seed = integer(seed, "seed")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._accumulators = self.add_optimizer_variables(variables, "equilibration")
        if self.momentum:
            self._momentums = self.add_optimizer_variables(variables, "momentum")
        self.estimates = self.add_scalar("estimates")

    def curvature_statistics(self, curvature, gradients, variables):
        # Per variable: what the estimate d is computed from on refresh steps (zeros otherwise).
        step = tf.cast(self.iterations, tf.int64)
        refresh = step % self.update_every == 0
        dtype = variables[0].dtype
        if self.preconditioner == "rmsprop":
            sources = [tf.cast(g, dtype) for g in gradients]
        else:
            def local_products():
                # H v for equilibration, squared only after the sum over replicas (E[(Hv)²] is
                # of the global batch's H); v ⊙ H v for Jacobi, linear in H v.
                probes = self._probes(variables, step)
                products = curvature.hessian_vector_product(probes, sum_over_replicas=False)
                if self.preconditioner == "equilibration":
                    return products
                return [v * p for v, p in zip(probes, products, strict=True)]

            sources = [tf.cast(p, dtype)
                       for p in curvature.sum_over_replicas_if(refresh, local_products)]
        return [(source, refresh) for source in sources]

    def curvature_refresh_condition(self, statistics):
        return statistics[0][1]

    def _probes(self, variables, step):
        probes = []
        for position, variable in enumerate(variables):
            # One seed per step and variable, shared by all replicas.
            seed = tf.stack([tf.constant(self.seed, tf.int64), step * 1009 + position])
            draw = random.normal if self.preconditioner == "equilibration" else random.rademacher
            probes.append(draw(variable.shape, seed, variable.dtype))
        return probes

    def refreshed_preconditioner(self, variable, statistic):
        # D <- D + d (or the exponential average), k <- k + 1;  P = 1/(scale(D/k) + lambda).
        source, _ = statistic
        estimate = source if self.preconditioner == "jacobi" else tf.square(source)
        accumulator = self._accumulators[self._get_variable_index(variable)]
        if self.beta is None:
            accumulated = accumulator + estimate
        else:
            accumulated = self.beta * accumulator + (1.0 - self.beta) * estimate
        self.assign(accumulator, accumulated)
        return 1.0 / (self._scale(accumulated, self.estimates + 1.0) + self.damping)

    def curvature_update_step(self, gradient, variable, learning_rate, statistic):
        step = self.preconditioned_gradient(gradient, variable, learning_rate)
        if self.momentum:
            momentum = self._momentums[self._get_variable_index(variable)]
            self.assign(momentum, self.momentum * momentum - step)
            self.assign_add(variable, momentum)
        else:
            self.assign_sub(variable, step)

    def curvature_counters(self, statistics):
        return [(self.estimates, statistics[0][1])]

    def _scale(self, accumulator, count):
        """`sqrt(D / k)` (`|D / k|` for Jacobi) after `count` estimates: the scale of a step."""
        count = tf.maximum(tf.cast(count, accumulator.dtype), 1.0)
        mean = accumulator / (count if self.beta is None else 1.0 - self.beta ** count)
        return tf.abs(mean) if self.preconditioner == "jacobi" else tf.sqrt(mean)

    def get_config(self):
        config = super().get_config()
        config.update({
            "preconditioner": self.preconditioner,
            "update_every": self.update_every,
            "damping": self.damping,
            "momentum": self.momentum,
            "beta": self.beta,
            "seed": self.seed,
        })
        return config
