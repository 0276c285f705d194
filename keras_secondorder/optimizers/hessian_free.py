"""Hessian-free optimization (Martens 2010): truncated Newton with Gauss-Newton products."""

import collections
import functools
import math

import keras
import tensorflow as tf

from keras_secondorder._validation import number, one_of, positive_int
from keras_secondorder.curvature import gradient_squares, kinds
from keras_secondorder.curvature.batch import synchronized_layers
from keras_secondorder.curvature.vectors import flatten, unflatten
from keras_secondorder.optimizers.conjugate_gradient import conjugate_gradient
from keras_secondorder.optimizers.curvature_optimizer import (
    CurvatureOptimizer,
    without_learning_rate,
)
from keras_secondorder.optimizers.quadratic_model import adjust_damping

# The curvature kinds whose products HessianFree's CG and damping were designed for (Martens
# 2010): the Gauss-Newton matrix and the exact Hessian.
CURVATURES = ("ggn", "hessian")
PRECONDITIONERS = ("martens", None)
# The default cap on the preconditioner's examples where they take per-example backward passes.
PER_EXAMPLE_PASS_EXAMPLES = 256
LINE_SEARCH_SIZES_STEPS = ("each step's size comes from its line search. Remove it; `damping` "
                           "sets how cautious the first steps are.")
_SETTINGS_OF_FIRST_ORDER_METHODS = ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay")


def backtrack(objective, result):
    """The iterate with the best objective, walking back from CG's last one (Martens 4.6).

    Starting from the last iterate, each earlier saved iterate is taken while its objective is
    no larger than the best so far; the walk stops at the first one that is worse.

    Args:
        objective: flat step `p -> f(w + p)` (a scalar tensor).
        result: a `ConjugateGradientResult`.

    Returns:
        `(p, f(w + p), iteration of p)`.
    """
    final_is_saved = (result.num_saved > 0) & tf.equal(
        tf.gather(result.saved_iterations, tf.maximum(result.num_saved - 1, 0)),
        result.iterations)
    index = result.num_saved - 1 - tf.cast(final_is_saved, tf.int32)
    value = objective(result.solution)
    value = tf.where(tf.math.is_finite(value), value, tf.constant(float("inf"), value.dtype))
    state = (index, result.solution, value, result.iterations, tf.constant(True))

    def walking(index, best, value, iteration, improving):
        return improving & (index >= 0)

    def step_back(index, best, value, iteration, improving):
        candidate = tf.gather(result.saved, index)
        candidate_value = objective(candidate)
        better = candidate_value <= value
        return (index - 1, tf.where(better, candidate, best),
                tf.where(better, candidate_value, value),
                tf.where(better, tf.gather(result.saved_iterations, index), iteration), better)

    _, best, value, iteration, _ = tf.while_loop(walking, step_back, state)
    return best, value, iteration


def set_step_settings(optimizer, damping, damping_increase, damping_decrease, min_damping,
                      line_search_sufficient, line_search_shrink, line_search_tries,
                      min_damping_may_be_zero):
    """Validates the damping adaptation and line search settings onto `optimizer`.

    HessianFree and SaddleFreeNewton share them (`hessian_free_step`, `saddle_free_step`);
    SaddleFreeNewton's `min_damping` must be positive, since `|T| + λ` can be singular.
    """
    bracket = "[" if min_damping_may_be_zero else "("
    optimizer.damping_increase = number(damping_increase, "damping_increase", lambda v: v > 1,
                                        "> 1")
    optimizer.damping_decrease = number(damping_decrease, "damping_decrease",
                                        lambda v: 0 < v < 1, "in (0, 1)")
    optimizer.min_damping = number(
        min_damping, "min_damping",
        lambda v: (v >= 0 if min_damping_may_be_zero else v > 0) and v <= damping,
        f"in {bracket}0, damping={damping!r}]")
    optimizer.line_search_sufficient = number(line_search_sufficient, "line_search_sufficient",
                                              lambda v: 0 < v < 1, "in (0, 1)")
    optimizer.line_search_shrink = number(line_search_shrink, "line_search_shrink",
                                          lambda v: 0 < v < 1, "in (0, 1)")
    optimizer.line_search_tries = positive_int(line_search_tries, "line_search_tries")


def armijo_line_search(objective, direction, value, slope, value_at_one, sufficient=0.01,
                       shrink=0.8, max_tries=60):
    """The largest `a = shrink^j` with `f(w + a p) <= f(w) + sufficient * a * gᵀp`, or 0.

    Args:
        objective: flat step `p -> f(w + p)`.
        direction: `p`.
        value: `f(w)`.
        slope: `gᵀp` (an ascent direction, `gᵀp >= 0`, can only pass where `f` truly fell).
        value_at_one: `f(w + p)`, already known from backtracking.
        sufficient, shrink, max_tries: Martens' 0.01, 0.8 and 60.

    Returns:
        `(a, f(w + a p), accepted)`; `a = 0` and `f(w)` when no trial passed (step rejected).
    """
    def accepts(rate, trial):
        return trial <= value + sufficient * rate * slope  # False for NaN.

    def searching(tries, rate, trial):
        return (tries < max_tries) & ~accepts(rate, trial)

    def shrink_step(tries, rate, trial):
        rate = rate * shrink
        return tries + 1, rate, objective(rate * direction)

    one = tf.ones((), value.dtype)
    _, rate, trial = tf.while_loop(searching, shrink_step, (tf.constant(1), one, value_at_one))
    accepted = accepts(rate, trial)
    return tf.where(accepted, rate, 0.0), tf.where(accepted, trial, value), accepted


HessianFreeStep = collections.namedtuple(
    "HessianFreeStep",
    ["step", "solution", "cg_iterations", "rho", "damping", "step_size", "model_reduction",
     "finite"])
HessianFreeStep.__doc__ = """What `hessian_free_step` returns (flat vectors and scalar tensors).

Attributes:
    step: the change of the weights, `a p` (zero when the step is rejected).
    solution: CG's last iterate, the next step's warm start (zero if it is not finite).
    cg_iterations: the CG iterations run.
    rho: the reduction ratio `(f(w + p) - f(w)) / q(p)` of the undamped model `q`.
    damping: the next step's lambda.
    step_size: `a`, 0 for a rejected step.
    model_reduction: `-q(p)`, the reduction the quadratic model predicts.
    finite: whether the objective and gradient at `w` were finite (if not, nothing was tried).
"""

# The settings of `hessian_free_step`, attributes of `HessianFree` under the same names.
STEP_SETTINGS = ("preconditioner_exponent", "max_cg_iterations", "cg_tolerance", "cg_min_gap",
                 "cg_gap_ratio", "warm_start_decay", "backtrack_first", "backtrack_ratio",
                 "damping_increase", "damping_decrease", "min_damping",
                 "line_search_sufficient", "line_search_shrink", "line_search_tries")


def hessian_free_step(objective, gradient, curvature_product, damping, warm_start,
                      per_example_squares=None, *, preconditioner_exponent=0.75,
                      max_cg_iterations=250, cg_tolerance=5e-4, cg_min_gap=10, cg_gap_ratio=0.1,
                      warm_start_decay=0.95, backtrack_first=5, backtrack_ratio=1.3,
                      damping_increase=1.5, damping_decrease=2.0 / 3.0, min_damping=0.0,
                      line_search_sufficient=0.01, line_search_shrink=0.8,
                      line_search_tries=60):
    """One Hessian-free iteration (Martens 2010) on flat vectors: `HessianFree`'s numerics.

    CG on the damped model `(B + lambda I) p = -g` from `warm_start_decay * warm_start`, with
    Martens' preconditioner when `per_example_squares` is given; backtracking over the saved CG
    iterates; the reduction ratio `rho` of the *undamped* model (it judges how well `B`, not
    `B + lambda I`, predicts `f`: damping is the trust region, not part of the model); lambda
    adjusted by `rho` (`adjust_damping`); an Armijo line search along the chosen iterate. A
    rejected step (no trial passes, or a non-finite direction) raises lambda by
    `damping_increase` at least; a non-finite `f(w)` or `g` rejects the step before any product.

    Args:
        objective: the flat step `p -> f(w + p)` (a scalar tensor).
        gradient: `g`, the gradient of `f` at `w` (flat).
        curvature_product: `v -> B v`, the undamped curvature (flat).
        damping: lambda (a scalar tensor of `gradient`'s dtype).
        warm_start: the previous step's `solution` (flat; zeros at the first step).
        per_example_squares: `None` (no preconditioner) or a callable returning the sum of the
            squared per-example gradients (flat): the preconditioner is
            `M = (squares + lambda)^preconditioner_exponent`. A callable, so that a rejected
            step does not pay for it.
        preconditioner_exponent, max_cg_iterations, cg_tolerance, cg_min_gap, cg_gap_ratio,
        warm_start_decay, backtrack_first, backtrack_ratio, damping_increase,
        damping_decrease, min_damping, line_search_sufficient, line_search_shrink,
        line_search_tries: as documented in `HessianFree`, with its defaults.

    Returns:
        A `HessianFreeStep`.
    """
    value = objective(tf.zeros_like(gradient))
    finite = tf.math.is_finite(value) & tf.reduce_all(tf.math.is_finite(gradient))

    def solve():
        preconditioner = (None if per_example_squares is None
                          else (per_example_squares() + damping) ** preconditioner_exponent)
        result = conjugate_gradient(
            lambda v: curvature_product(v) + damping * v, -gradient,
            warm_start_decay * warm_start, preconditioner, max_iterations=max_cg_iterations,
            min_gap=cg_min_gap, gap_ratio=cg_gap_ratio, tolerance=cg_tolerance,
            save_first=backtrack_first, save_ratio=backtrack_ratio)
        direction, value_at_direction, _ = backtrack(objective, result)
        slope = tf.reduce_sum(gradient * direction)
        predicted = slope + 0.5 * tf.reduce_sum(direction * curvature_product(direction))
        rho = (value_at_direction - value) / predicted
        new_damping = adjust_damping(damping, rho, damping_increase, damping_decrease,
                                     min_damping)
        rate, _, accepted = armijo_line_search(
            objective, direction, value, slope, value_at_direction, line_search_sufficient,
            line_search_shrink, line_search_tries)
        accepted &= tf.reduce_all(tf.math.is_finite(direction))
        new_damping = tf.where(accepted, new_damping,
                               tf.maximum(new_damping, damping * damping_increase))
        solution = tf.where(tf.reduce_all(tf.math.is_finite(result.solution)), result.solution,
                            0.0)
        return HessianFreeStep(tf.where(accepted, rate * direction, 0.0), solution,
                               result.iterations, rho, new_damping,
                               tf.where(accepted, rate, 0.0), -predicted, finite)

    def reject():
        zeros = tf.zeros_like(gradient)
        nan = tf.constant(float("nan"), gradient.dtype)
        return HessianFreeStep(zeros, zeros, tf.constant(0), nan, damping * damping_increase,
                               tf.zeros((), gradient.dtype), nan, finite)

    return tf.cond(finite, solve, reject)



@keras.saving.register_keras_serializable(package="keras_secondorder")
class HessianFree(CurvatureOptimizer):
    """Hessian-free optimization: each step approximately minimizes a damped quadratic model by CG.

    One `fit` step is one HF iteration on the batch it receives (pass large batches, thousands of
    examples). With `g` and `f` the gradient and objective on the whole batch and `B` the
    curvature (Gauss-Newton by default) on its first `curvature_fraction`:

    ```
    M = (diag(sum_i g_i²) + lambda)^0.75                  per-example gradients g_i
    p = CG on (B + lambda I) p = -g,  from x0 = 0.95 p_prev,  Martens' stopping rule
    p <- the saved CG iterate (i = ceil(5 * 1.3^j), and the last) with the best f, walking back
    rho = (f(w + p) - f(w)) / (gᵀp + ½ pᵀB p)             reduction ratio
    lambda <- 3/2 lambda if rho < 1/4;  2/3 lambda if rho > 3/4
    a = 0.8^j, the first with f(w + a p) <= f(w) + 0.01 a gᵀp (at most 60 tries; else a = 0,
        the step is rejected and lambda raised)
    w <- w + a p
    ```

    Everything, CG and backtracking included, runs in the compiled train step
    (`tf.while_loop`s, `jit_compile=True` works). Weight penalties in the model (`L2` regularizers,
    Martens' weight cost) enter the objective, the gradient and the curvature. A non-finite
    objective, gradient or curvature rejects the step (weights unchanged) and raises lambda.
    Under `MirroredStrategy` the iteration runs once over all replicas' batches (products and
    objectives summed across devices); multi-worker strategies are not supported.

    Logged per step (`logs`, progress bar): `cg_iterations`, `rho`, `damping` (lambda),
    `step_size` (`a`), `model_reduction` (`-q(p)`, the reduction the quadratic model predicts) and
    `rejected_steps` (cumulative).

    Use it with `keras_secondorder.Model` (or `keras_secondorder.wrap(model)`).

    Args:
        damping: the initial lambda. It adapts at every step; too small a start costs a few
            rejected steps, too large a start makes the first steps short gradient steps.
            Defaults to `45.0` (Martens' code).
        curvature: `"ggn"` (the Gauss-Newton matrix, positive semi-definite; the loss must be
            one with a Gauss-Newton split, see `keras_secondorder.curvature.SUPPORTED_LOSSES`)
            or `"hessian"` (exact Hessian products, any loss; CG stops early on negative
            curvature). Defaults to `"ggn"`.
        curvature_fraction: the leading fraction of each batch the curvature (and the
            preconditioner) is computed on. Curvature is the expensive part of every CG
            iteration and needs less data than the gradient. Defaults to `0.25`.
        preconditioner: `"martens"` (the diagonal `M` above, from per-example gradients) or
            `None`. Needs the same loss split as `"ggn"`. Defaults to `"martens"`.
        preconditioner_examples: the per-example gradients are those of the first examples of
            the curvature part, at most this many (split over replicas). For chains of Dense
            layers their squares cost one backward pass (`curvature.gradient_squares`); other
            models take vectorized per-example backward passes of `chunk_size` examples, far
            slower per example than a batched product (MNIST autoencoder on 2 CPUs: 2 s for 256
            examples, 50 s for 1500, against 0.1 s for one Gauss-Newton product on 1500), and
            a diagonal preconditioner needs only a rough estimate. Defaults to `None`: all of
            the curvature part for Dense chains, else `PER_EXAMPLE_PASS_EXAMPLES` (256).
        preconditioner_exponent: the power of `M`; Martens found 0.75 better than the full
            diagonal (1), which overtrusts the empirical Fisher. Defaults to `0.75`.
        max_cg_iterations: the CG cap. Defaults to `250`.
        cg_tolerance: `epsilon` of the stopping rule: stop when the last `k` iterations reduced
            the quadratic model by less than `k * epsilon` relative to its value, with
            `k = max(cg_min_gap, ceil(cg_gap_ratio * i))`. A tight rule overfits the curvature
            mini-batch; a loose one wastes the step. Defaults to `5e-4`.
        cg_min_gap: see `cg_tolerance`. Defaults to `10`.
        cg_gap_ratio: see `cg_tolerance`. Defaults to `0.1`.
        warm_start_decay: CG starts from this times the previous step's last CG iterate:
            successive problems are similar, and the decay keeps stale directions from
            dominating. Defaults to `0.95`.
        backtrack_first, backtrack_ratio: CG iterates `i = ceil(first * ratio^j)` are kept for
            backtracking. Default to `5` and `1.3`.
        damping_increase, damping_decrease: the factors applied to lambda for `rho < 1/4` and
            `rho > 3/4`. Default to `1.5` and `2/3`.
        min_damping: lambda never decreases below this. rho is measured on the batch the step
            was fitted to, so with mini-batches it can stay in `[1/4, 3/4]` while each step
            fits its own batch at the others' expense; a floor keeps the step a trust-region
            step (Martens' full-batch code needs none). Defaults to `0.0` (no floor).
        line_search_sufficient: the Armijo constant `c`. Defaults to `0.01`.
        line_search_shrink: the factor each rejected trial multiplies the step size by.
            Defaults to `0.8`.
        line_search_tries: trials before the step is rejected. Defaults to `60`.
        chunk_size: examples per vectorized per-example backward pass of the preconditioner
            (bounds its memory; unused for Dense chains). Defaults to `64`.
        name: the optimizer's name. Defaults to `"hessian_free"`.
        **kwargs: the base optimizer's bookkeeping arguments. Gradient clipping and decoupled
            weight decay change the gradient the quadratic model is built on and are refused
            (use an `L2` kernel regularizer for a weight cost).

    References:
        - Martens, 2010: Deep learning via Hessian-free optimization (ICML).
        - Martens, Sutskever, 2012: Training deep and recurrent networks with Hessian-free
          optimization (Neural Networks: Tricks of the Trade).
    """

    def __init__(self, damping=45.0, curvature="ggn", curvature_fraction=0.25,
                 preconditioner="martens", preconditioner_examples=None,
                 preconditioner_exponent=0.75, max_cg_iterations=250,
                 cg_tolerance=5e-4, cg_min_gap=10, cg_gap_ratio=0.1, warm_start_decay=0.95,
                 backtrack_first=5, backtrack_ratio=1.3, damping_increase=1.5,
                 damping_decrease=2.0 / 3.0, min_damping=0.0, line_search_sufficient=0.01,
                 line_search_shrink=0.8, line_search_tries=60, chunk_size=64,
                 name="hessian_free", **kwargs):
        refused = [key for key in _SETTINGS_OF_FIRST_ORDER_METHODS
                   if kwargs.get(key) is not None]
        if refused:
            raise ValueError(
                f"HessianFree does not take {', '.join(f'`{k}`' for k in refused)} (received "
                f"{', '.join(repr(kwargs[k]) for k in refused)}): clipping or decaying the "
                "gradient outside the objective breaks the quadratic model and the line search. "
                "Remove it; for a weight cost add an L2 kernel_regularizer to the layers."
            )
        kwargs = without_learning_rate(kwargs, "HessianFree", LINE_SEARCH_SIZES_STEPS)
        super().__init__(learning_rate=1.0, name=name, **kwargs)
        self.initial_damping = number(damping, "damping", lambda v: v > 0, "> 0")
        self.curvature = kinds.get(curvature, allowed=CURVATURES).name
        self.curvature_fraction = number(curvature_fraction, "curvature_fraction",
                                         lambda v: 0 < v <= 1, "in (0, 1]")
        self.preconditioner = one_of(preconditioner, "preconditioner", PRECONDITIONERS)
        self.preconditioner_examples = (
            None if preconditioner_examples is None
            else positive_int(preconditioner_examples, "preconditioner_examples"))
        self.preconditioner_exponent = number(preconditioner_exponent,
                                              "preconditioner_exponent", lambda v: 0 <= v <= 1,
                                              "in [0, 1]")
        self.max_cg_iterations = positive_int(max_cg_iterations, "max_cg_iterations")
        self.cg_tolerance = number(cg_tolerance, "cg_tolerance", lambda v: v > 0, "> 0")
        self.cg_min_gap = positive_int(cg_min_gap, "cg_min_gap")
        self.cg_gap_ratio = number(cg_gap_ratio, "cg_gap_ratio", lambda v: 0 <= v < 1,
                                   "in [0, 1)")
        self.warm_start_decay = number(warm_start_decay, "warm_start_decay",
                                       lambda v: 0 <= v <= 1, "in [0, 1]")
        self.backtrack_first = positive_int(backtrack_first, "backtrack_first")
        self.backtrack_ratio = number(backtrack_ratio, "backtrack_ratio", lambda v: v > 1,
                                      "> 1")
        set_step_settings(self, damping, damping_increase, damping_decrease, min_damping,
                          line_search_sufficient, line_search_shrink, line_search_tries,
                          min_damping_may_be_zero=True)
        self.chunk_size = positive_int(chunk_size, "chunk_size")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._warm_starts = self.add_optimizer_variables(variables, "warm_start")
        self.damping = self.add_scalar("damping", self.initial_damping)
        self.cg_iterations = self.add_scalar("cg_iterations")
        self.rho = self.add_scalar("rho")
        self.step_size = self.add_scalar("step_size")
        self.model_reduction = self.add_scalar("model_reduction")
        self.rejected_steps = self.add_scalar("rejected_steps")

    def diagnostics(self):
        """The last step's CG iterations, rho, lambda, step size and model reduction."""
        return {"skipped_steps": self.skipped_steps, "cg_iterations": self.cg_iterations,
                "rho": self.rho, "damping": self.damping,
                "step_size": self.step_size, "model_reduction": self.model_reduction,
                "rejected_steps": self.rejected_steps}

    def curvature_step(self, curvature, gradients, variables, learning_rate):
        # One iteration over all replicas' batches: CG cannot synchronize replicas inside its
        # tf.while_loop, so it runs in cross-replica context, summing over the local batches.
        tf.distribute.get_replica_context().merge_call(
            self._iteration, args=(gradients, curvature, variables))

    def _iteration(self, distribution, grads, curvature, variables):
        if getattr(distribution.extended, "_num_workers", 1) > 1:
            raise ValueError(
                "HessianFree runs its CG loop on one machine's replicas; "
                f"{type(distribution).__name__} spans several workers. Use MirroredStrategy "
                "(one machine, several devices) or no strategy."
            )
        replicas = list(distribution.experimental_local_results(curvature))
        synchronized = synchronized_layers(replicas[0].model)
        if len(replicas) > 1 and synchronized:
            raise ValueError(
                f"HessianFree runs its CG loop over the {len(replicas)} replicas' batches "
                "outside the replicas (cross-replica context), where the synchronized "
                f"BatchNormalization layers {synchronized} cannot all-reduce their moments: "
                "its objective would not be the one the gradient was taken of. Use "
                "BatchNormalization(synchronized=False) (each replica normalizes its own share, "
                "Keras's default) or one device."
            )
        devices = (distribution.extended.worker_devices if tf.distribute.has_strategy()
                   else [None])
        gradient = flatten([distribution.experimental_local_results(g)[0] for g in grads])
        shapes = [tuple(v.shape) for v in variables]
        heads = [replica.head(self.curvature_fraction) for replica in replicas]

        def summed(compute, parts):
            # Every replica's loss is scaled by 1/replicas (as Keras does): the sum is the mean.
            total = None
            for part, device in zip(parts, devices, strict=True):
                with tf.device(device):
                    value = compute(part)
                total = value if total is None else total + value
            return total

        def objective(step):
            # Keras computes losses in floatx: the value is cast to the variables' dtype.
            return tf.cast(summed(lambda part: part.loss(unflatten(step, shapes),
                                                         sum_over_replicas=False), replicas),
                           gradient.dtype)

        def curvature_product(vector):
            vector = unflatten(vector, shapes)
            return summed(lambda head: flatten(self._product(head, vector)), heads)

        per_example_squares = None
        if self.preconditioner == "martens":
            limit = self._preconditioner_examples_per_replica(replicas)
            parts = [replica.head(self.curvature_fraction, limit) for replica in replicas]

            def per_example_squares():
                return summed(lambda part: flatten(self._with_split_hint(
                    lambda: part.diagonal("empirical_fisher", chunk_size=self.chunk_size,
                                          sum_over_replicas=False))), parts)

        result = hessian_free_step(
            objective, gradient, curvature_product, tf.cast(self.damping, gradient.dtype),
            flatten([tf.convert_to_tensor(w) for w in self._warm_starts]), per_example_squares,
            **{name: getattr(self, name) for name in STEP_SETTINGS})
        self._apply(distribution, variables, shapes, result)

    def _product(self, head, vector):
        product = functools.partial(head.product, self.curvature, vector, sum_over_replicas=False)
        if kinds.get(self.curvature).operator.splits_at_outputs:
            return self._with_split_hint(product)
        return product()

    def _with_split_hint(self, compute):
        try:
            return compute()
        except ValueError as error:
            raise ValueError(
                f"{error} HessianFree(curvature={self.curvature!r}, preconditioner="
                f"{self.preconditioner!r}) needs the loss's Gauss-Newton split for the "
                "Gauss-Newton products and the preconditioner's per-example gradients; for "
                "other losses pass curvature='hessian' and preconditioner=None."
            ) from error

    def _preconditioner_examples_per_replica(self, replicas):
        """The cap on each replica's preconditioner examples; `None`: its whole curvature part."""
        examples = self.preconditioner_examples
        if examples is None:
            if gradient_squares.supports(replicas[0].objective.model):
                return None  # One backward pass covers them all.
            examples = PER_EXAMPLE_PASS_EXAMPLES
        return math.ceil(examples / len(replicas))

    def _apply(self, distribution, variables, shapes, result):
        def assign(variable, value):
            variable.assign(tf.cast(value, variable.dtype))

        def add(variable, value):
            variable.assign_add(tf.cast(value, variable.dtype))

        update = distribution.extended.update
        for variable, delta in zip(variables, unflatten(result.step, shapes), strict=True):
            update(variable, add, args=(delta,), group=False)
        for slot, value in zip(self._warm_starts, unflatten(result.solution, shapes),
                               strict=True):
            update(slot.value, assign, args=(value,), group=False)
        for counter, value in ((self.damping, result.damping),
                               (self.cg_iterations, result.cg_iterations), (self.rho, result.rho),
                               (self.step_size, result.step_size),
                               (self.model_reduction, result.model_reduction)):
            update(counter.value, assign, args=(value,), group=False)
        update(self.rejected_steps.value, add,
               args=(tf.cast(tf.equal(result.step_size, 0.0), tf.float32),), group=False)
        self.count_skipped_step(distribution, result.finite)

    def get_config(self):
        config = super().get_config()
        config.pop("learning_rate", None)
        config.update({
            "damping": self.initial_damping,
            "curvature": self.curvature,
            "curvature_fraction": self.curvature_fraction,
            "preconditioner": self.preconditioner,
            "preconditioner_examples": self.preconditioner_examples,
            "chunk_size": self.chunk_size,
            **{name: getattr(self, name) for name in STEP_SETTINGS},
        })
        return config
