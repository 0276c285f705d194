"""Exact matrix-free curvature of the objective `model.fit` minimizes.

Products (lists of tensors shaped like the trainable variables, traceable in `tf.function` and
compilable with `jit_compile=True`): `hessian_vector_product`,
`finite_difference_hessian_vector_product`, `gauss_newton_vector_product`,
`fisher_vector_product`, `kronecker_vector_product` (K-FAC's matrix). Operators
(`tf.linalg.LinearOperator` over the flat parameters): `HessianOperator`, `GGNOperator`,
`FisherOperator`, `KroneckerFactoredOperator`. Diagonals: `diagonal`. Kronecker-factored blocks
(K-FAC): `kronecker`. Dense references of small models:
`keras_secondorder.curvature.dense`.
"""

from keras_secondorder.curvature import bbprop, dense, gradient_squares, kinds, kronecker
from keras_secondorder.curvature.batch import BatchCurvature
from keras_secondorder.curvature.diagonal import batch_diagonal, diagonal
from keras_secondorder.curvature.fisher import FisherOperator, fisher_vector_product
from keras_secondorder.curvature.ggn import GGNOperator, gauss_newton_vector_product
from keras_secondorder.curvature.hessian import (
    HessianOperator,
    finite_difference_hessian_vector_product,
    gradient,
    hessian_vector_product,
)
from keras_secondorder.curvature.kronecker import (
    KroneckerFactoredOperator,
    kronecker_vector_product,
)
from keras_secondorder.curvature.objective import Batch, Objective
from keras_secondorder.curvature.operator import CurvatureOperator
from keras_secondorder.curvature.output_losses import SUPPORTED as SUPPORTED_LOSSES
from keras_secondorder.curvature.vectors import flatten, unflatten

__all__ = [
    "Batch",
    "BatchCurvature",
    "CurvatureOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "KroneckerFactoredOperator",
    "Objective",
    "SUPPORTED_LOSSES",
    "batch_diagonal",
    "bbprop",
    "dense",
    "diagonal",
    "finite_difference_hessian_vector_product",
    "fisher_vector_product",
    "flatten",
    "gauss_newton_vector_product",
    "gradient",
    "gradient_squares",
    "hessian_vector_product",
    "kinds",
    "kronecker",
    "kronecker_vector_product",
    "unflatten",
]
