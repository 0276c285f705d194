"""LeCun's stochastic diagonal Levenberg-Marquardt method (SDLM)."""

import warnings

import keras
import tensorflow as tf

from keras_secondorder import curvature as curvature_core
from keras_secondorder._validation import integer, number, one_of, positive_int
from keras_secondorder.curvature import bbprop
from keras_secondorder.curvature.vectors import scalar
from keras_secondorder.optimizers.curvature_optimizer import with_base_keyword_docs
from keras_secondorder.optimizers.diagonal_curvature_optimizer import DiagonalCurvatureOptimizer

DIAGONALS = ("bbprop", "ggn", "ggn_mc")


@keras.saving.register_keras_serializable(package="keras_secondorder")
@with_base_keyword_docs
class SDLM(DiagonalCurvatureOptimizer):
    """Stochastic diagonal Levenberg-Marquardt: a per-weight learning rate from the curvature.

    Each weight `w_k` gets its own rate from a running estimate `h_kk` of the diagonal of the
    Gauss-Newton matrix (the positive part of the Hessian, what Levenberg-Marquardt uses):

    ```
    h_k <- (1 - gamma_b) h_k + gamma_b h_k(batch)      on estimation steps
    w_k <- w_k - epsilon / (h_k + mu) * g_k            on every step once h is estimated
    ```

    `gamma` is LeCun's per-pattern memory constant; a batch of `b` examples counts as `b`
    patterns, `gamma_b = 1 - (1 - gamma)^b`. The first estimate is the plain mean over its
    examples, whatever `gamma` (a batch of `b` after `n` examples has weight `b / (n + b)`), so
    all `curvature_samples` examples count equally; `gamma` shapes the re-estimates. As for
    LeNet-5 (LeCun et al. 1998), `h` is estimated on `curvature_samples` examples (the
    consecutive batches that hold them) before the first weight update, then
    re-estimated on as many examples every `reestimate_every` steps; in between, steps cost what
    an SGD step costs. `mu` keeps the rate bounded where the curvature is tiny and plays the role
    of Levenberg-Marquardt damping: the step interpolates between Newton's (`h >> mu`) and
    gradient descent at rate `epsilon / mu` (`h << mu`).

    Use it with `keras_secondorder.Model` (or `keras_secondorder.wrap(model)`), whose train step
    gives the optimizer the batch's curvature.

    Args:
        learning_rate: `epsilon`, a float or a `keras.optimizers.schedules.LearningRateSchedule`.
            Defaults to `0.01`.
        mu: the damping added to every `h_kk` (`>= 0`). With `mu = 0`, weights whose `h_kk` is
            exactly 0 (no curvature: an input that is always 0, a dead unit) are not updated.
            Defaults to `0.02` (LeNet-5's value).
        gamma: the per-pattern memory of the running average, in `(0, 1]`; `1` keeps only the
            latest batch's estimate. Defaults to `0.01`.
        curvature_samples: examples each estimate of `h` covers. Defaults to `500`.
        reestimate_every: steps between the starts of two estimates (e.g. the steps of an epoch
            for LeCun's once-per-pass); `None` estimates once, before the first step. Defaults to
            `1000`.
        diagonal: how `h(batch)` is computed: `"bbprop"` (Becker-LeCun diagonal back-propagation,
            about one backward pass; models it does not cover fall back to `"ggn"` with a
            warning, see `keras_secondorder.curvature.bbprop`), `"ggn"` (the exact diagonal,
            one backward pass per example and output) or `"ggn_mc"` (Monte-Carlo, one per example
            and sample). Defaults to `"bbprop"`.
        diagonal_samples: the Monte-Carlo samples of `"ggn_mc"`. Defaults to `1`.
        seed: integer seed of `"ggn_mc"`'s draws. Defaults to `0`.
        {{base_optimizer_keyword_args}}

    References:
        - LeCun, Bottou, Bengio, Haffner, 1998: Gradient-based learning applied to document
          recognition (appendix C).
        - LeCun, Bottou, Orr, Müller, 1998: Efficient BackProp (section 9.1).
        - Becker, LeCun, 1989: Improving the convergence of back-propagation learning with
          second order methods.
    """

    def __init__(self, learning_rate=0.01, mu=0.02, gamma=0.01, curvature_samples=500,
                 reestimate_every=1000, diagonal="bbprop", diagonal_samples=1, seed=0,
                 name="sdlm", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.mu = number(mu, "mu", lambda v: v >= 0, ">= 0")
        self.gamma = number(gamma, "gamma", lambda v: 0 < v <= 1, "in (0, 1]")
        self.curvature_samples = positive_int(curvature_samples, "curvature_samples")
        self.reestimate_every = (None if reestimate_every is None
                                 else positive_int(reestimate_every, "reestimate_every"))
        self.diagonal = one_of(diagonal, "diagonal", DIAGONALS)
        self.diagonal_samples = positive_int(diagonal_samples, "diagonal_samples")
        self.seed = integer(seed, "seed")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._curvatures = self.add_optimizer_variables(variables, "curvature")
        # The estimation window in samples, whatever the batch sizes (a short last batch of an
        # epoch counts for what it holds): the period the current estimate belongs to, the
        # samples it has covered, and the samples of all estimates (at most curvature_samples,
        # all the first estimate needs).
        self._estimate_period = self.add_variable((), dtype="int64", initializer="zeros",
                                                  aggregation="only_first_replica",
                                                  name="estimate_period")
        self._period_samples = self.add_scalar("period_samples")
        self._estimated_samples = self.add_scalar("estimated_samples")

    def curvature_statistics(self, curvature, gradients, variables):
        # Estimation steps: those of each period (of reestimate_every steps) until its batches
        # hold curvature_samples examples.
        step = tf.cast(self.iterations, tf.int64)
        period = (tf.zeros((), tf.int64) if self.reestimate_every is None
                  else step // self.reestimate_every)
        samples = tf.cast(curvature.batch_size(), tf.float32)
        period_samples = tf.where(tf.equal(period, self._estimate_period),
                                  self._period_samples, 0.0)
        estimating = period_samples < self.curvature_samples
        estimated = tf.convert_to_tensor(self._estimated_samples)
        dtype = variables[0].dtype
        method = self.diagonal_method(curvature.model)

        def estimate():
            diagonal = curvature.diagonal(method, samples=self.diagonal_samples,
                                          seed=tf.stack([tf.constant(self.seed, tf.int64), step]),
                                          sum_over_replicas=False)
            return [tf.cast(d, dtype) for d in diagonal]

        batch_diagonal = curvature.sum_over_replicas_if(estimating, estimate)
        patterns = tf.cast(samples, dtype)
        blend = 1.0 - tf.pow(1.0 - scalar(self.gamma, dtype), patterns)
        # The first estimate is the plain mean over its examples, whatever gamma: weight
        # b / (n + b) for a batch of b after n examples.
        first = estimated < self.curvature_samples
        first_mean = patterns / (tf.cast(estimated, dtype) + patterns)
        blend = tf.where(first, first_mean, blend)
        blend = tf.where(estimating, blend, tf.zeros_like(blend))
        ready = estimated + samples >= self.curvature_samples
        counts = (period, period_samples + samples,
                  tf.minimum(estimated + samples, float(self.curvature_samples)))
        return [(d, blend, ready, estimating, counts) for d in batch_diagonal]

    def curvature_refresh_condition(self, statistics):
        return statistics[0][3]  # Estimating.

    def refreshed_preconditioner(self, variable, statistic):
        # h <- (1 - blend) h + blend h(batch);  P = 1/(h + mu) once ready, else 0.
        batch_diagonal, blend, ready, _, _ = statistic
        h = self._curvatures[self._get_variable_index(variable)]
        updated = (1.0 - blend) * h + blend * batch_diagonal
        self.assign(h, updated)
        return tf.where(ready, self._inverse_damped(updated), tf.zeros_like(updated))

    def after_curvature_refresh(self, distribution, statistics):
        super().after_curvature_refresh(distribution, statistics)
        for counter, value in zip((self._estimate_period, self._period_samples,
                                   self._estimated_samples), statistics[0][4], strict=True):
            distribution.extended.update(counter.value, lambda c, v: c.assign(v), args=(value,),
                                         group=False)

    def _inverse_damped(self, h):
        """`1 / (h + mu)`; 0 where `h + mu` is 0 (mu = 0, no curvature: no Newton step)."""
        damped = h + self.mu
        return tf.where(damped > 0, 1.0 / tf.where(damped > 0, damped, 1.0), tf.zeros_like(h))

    def curvature_update_step(self, gradient, variable, learning_rate, statistic):
        # w <- w - epsilon P g.
        self.assign_sub(variable, self.preconditioned_gradient(gradient, variable, learning_rate))

    def diagonal_preconditioner(self, model, data):
        """`P = 1 / (h + mu)` for every variable: SDLM's step is `w <- w - epsilon P g`.

        `PowerMethodLR` uses it to measure `λ_max` of `P^1/2 H P^1/2`, whose `1/λ_max` is the
        best `epsilon` for this scaling. The optimizer's own `P` is used once training has
        estimated it; before that, `h` is estimated on `data` (batches, as for
        `curvature.diagonal`) with this optimizer's `diagonal` method.
        """
        if self.built and any(bool(tf.reduce_any(p > 0)) for p in self._preconditioners):
            return [tf.convert_to_tensor(p) for p in self._preconditioners]
        curvatures = curvature_core.diagonal(model, data, self.diagonal_method(model),
                                             samples=self.diagonal_samples, seed=self.seed)
        return [self._inverse_damped(h) for h in curvatures]

    def diagonal_method(self, model):
        """The `curvature.diagonal` method SDLM uses for `model` (`bbprop` falls back to `ggn`)."""
        if self.diagonal != "bbprop":
            return self.diagonal
        reason = bbprop.unsupported_reason(model)
        if reason is None:
            return "bbprop"
        warnings.warn(f"SDLM falls back to the exact Gauss-Newton diagonal (diagonal='ggn'): "
                      f"{reason}", stacklevel=2)
        return "ggn"

    def get_config(self):
        config = super().get_config()
        config.update({
            "mu": self.mu,
            "gamma": self.gamma,
            "curvature_samples": self.curvature_samples,
            "reestimate_every": self.reestimate_every,
            "diagonal": self.diagonal,
            "diagonal_samples": self.diagonal_samples,
            "seed": self.seed,
        })
        return config
