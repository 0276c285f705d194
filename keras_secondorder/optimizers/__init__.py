"""Curvature-aware optimizers for `model.fit` (with `keras_secondorder.Model`).

`SDLM` (LeCun's stochastic diagonal Levenberg-Marquardt), `EquilibratedSGD` (Dauphin et al.
2015), `HessianFree` (Martens 2010), `KFAC` (Martens & Grosse 2015), `LevenbergMarquardt`
(exact damped Gauss-Newton steps for small networks) and `SaddleFreeNewton` (Dauphin et al.
2014) are Keras optimizers whose step also uses the curvature of the current batch; the train
step of `keras_secondorder.Model` binds it (see `CurvatureOptimizer`).
`DiagonalCurvatureOptimizer` is the template of the diagonal ones.
"""

from keras_secondorder.optimizers.curvature_optimizer import CurvatureOptimizer
from keras_secondorder.optimizers.diagonal_curvature_optimizer import DiagonalCurvatureOptimizer
from keras_secondorder.optimizers.equilibrated_sgd import EquilibratedSGD
from keras_secondorder.optimizers.hessian_free import HessianFree
from keras_secondorder.optimizers.kfac import KFAC
from keras_secondorder.optimizers.levenberg_marquardt import LevenbergMarquardt
from keras_secondorder.optimizers.saddle_free_newton import SaddleFreeNewton
from keras_secondorder.optimizers.sdlm import SDLM

__all__ = ["CurvatureOptimizer", "DiagonalCurvatureOptimizer", "EquilibratedSGD", "HessianFree",
           "KFAC", "LevenbergMarquardt", "SDLM", "SaddleFreeNewton"]
