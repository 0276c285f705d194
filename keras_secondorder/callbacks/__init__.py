"""Keras callbacks that measure curvature while `model.fit` runs."""

from keras_secondorder.callbacks.hessian_spectrum import HessianSpectrum
from keras_secondorder.callbacks.power_method_lr import PowerMethodLR, ScaledSchedule

__all__ = ["HessianSpectrum", "PowerMethodLR", "ScaledSchedule"]
