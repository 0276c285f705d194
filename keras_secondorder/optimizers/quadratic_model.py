"""The damped quadratic model of the objective: the step it chooses and the damping it earns.

K-FAC proposes an update `Δ` (the preconditioned gradient) and has its previous update `δ₀`;
instead of a learning rate and a momentum fixed by hand, it takes the combination `δ = α Δ +
μ δ₀` that minimizes the quadratic model of the objective with the *exact* curvature `C` (the
Gauss-Newton or Fisher products of the core, not the Kronecker approximation used to make
`Δ`) plus the damping:

    M(δ) = ½ δᵀ (C + λ I) δ + gᵀ δ

On the two-dimensional subspace this is a 2x2 linear system. Exact products matter here:
they make `M` an honest prediction of the change of the objective, which the damping's
Levenberg-Marquardt rule then compares with the actual change (`rho`).
"""

from typing import NamedTuple

import tensorflow as tf

from keras_secondorder.curvature.vectors import dot, scalar


class StepCoefficients(NamedTuple):
    """The minimizer of the quadratic model on `span(Δ, δ₀)`.

    Attributes:
        learning_rate: `α`, the coefficient of the proposed update.
        momentum: `μ`, the coefficient of the previous update (0 when there is none).
        predicted_change: `M(α Δ + μ δ₀)`, the change of the objective the model predicts
            (negative: a decrease).
    """

    learning_rate: tf.Tensor
    momentum: tf.Tensor
    predicted_change: tf.Tensor


def step_coefficients(gradient, update, previous, quadratic_forms, damping):
    """`α, μ = argmin M(α Δ + μ δ₀)` and the model's value there.

    ```
    [Δᵀ(C + λ)Δ    Δᵀ(C + λ)δ₀ ] [α]     [gᵀΔ ]
    [δ₀ᵀ(C + λ)Δ   δ₀ᵀ(C + λ)δ₀] [μ] = - [gᵀδ₀],      M = ½ (α gᵀΔ + μ gᵀδ₀)
    ```

    With no previous update (`δ₀ = 0`: the first step, or after a rejected one) the system is
    the 1x1 one, `μ = 0`, `α = -gᵀΔ / Δᵀ(C + λ)Δ`.

    Vectors are lists of tensors shaped like the variables.

    Args:
        gradient: `g`.
        update: `Δ`, the proposed update (a descent direction, e.g. `-F⁻¹ g`).
        previous: `δ₀`, the previous update (zeros if none).
        quadratic_forms: `[u, v] -> [[uᵀCu, uᵀCv], [vᵀCu, vᵀCv]]` of the undamped curvature
            (only the quadratic forms are needed, which forward mode gives without products).
            It is called on every step, `δ₀ = 0` included: under tf.distribute the curvature
            all-reduces across replicas, which a `tf.cond` cannot contain.
        damping: `λ` (a scalar).

    Returns:
        `StepCoefficients`.
    """
    damping = scalar(damping, gradient[0].dtype)
    forms = quadratic_forms([update, previous])
    squared_previous = dot(previous, previous)
    m11 = forms[0, 0] + damping * dot(update, update)
    m12 = forms[0, 1] + damping * dot(update, previous)
    m22 = forms[1, 1] + damping * squared_previous
    has_previous = squared_previous > 0
    b1, b2 = dot(gradient, update), dot(gradient, previous)
    determinant = m11 * m22 - m12 * m12
    # A (numerically) singular system: Δ and δ₀ parallel, or δ₀ = 0; then along Δ alone.
    pair = has_previous & (determinant > 1e-12 * tf.abs(m11 * m22))
    safe_determinant = tf.where(pair, determinant, 1.0)
    learning_rate = tf.where(pair, (-b1 * m22 + b2 * m12) / safe_determinant,
                             -b1 / tf.where(m11 > 0, m11, 1.0))
    momentum = tf.where(pair, (-b2 * m11 + b1 * m12) / safe_determinant, 0.0)
    return StepCoefficients(learning_rate, momentum,
                            0.5 * (learning_rate * b1 + momentum * b2))


def adjust_damping(damping, rho, increase=1.5, decrease=2.0 / 3.0, minimum=0.0):
    """Levenberg-Marquardt: `lambda * increase` if `rho < 1/4`, `* decrease` if `rho > 3/4`.

    `rho` is the reduction ratio (actual over predicted reduction). A `rho` that is not a finite
    number (a non-finite objective or model) counts as a failure: the damping increases. A
    decrease stops at `minimum`.
    """
    failed = (rho < 0.25) | ~tf.math.is_finite(rho)
    decreased = tf.maximum(damping * decrease, scalar(minimum, damping.dtype))
    return tf.where(failed, damping * increase, tf.where(rho > 0.75, decreased, damping))
