"""Spectra of the curvature operators: extreme eigenvalues, density, trace.

Every function takes a self-adjoint `tf.linalg.LinearOperator`: `curvature.HessianOperator`,
`GGNOperator`, `FisherOperator` or `KroneckerFactoredOperator` on one batch or averaged over
batches, over all variables or one block (`variables=`, e.g. one layer's). Krylov vectors are
kept in float64. `spectrum_summary` makes all the measurements of one operator in one call,
`spread` their mean and standard deviation over repeats; `python -m keras_secondorder.spectrum`
(or `keras-secondorder spectrum`) runs them on a saved model from the command line.
"""

from keras_secondorder.spectrum.density import (
    HutchinsonTrace,
    SpectralDensity,
    hutchinson_trace,
    spectral_density,
)
from keras_secondorder.spectrum.exact import exact_eigenvalues
from keras_secondorder.spectrum.lanczos import LanczosResult, lanczos
from keras_secondorder.spectrum.power import (
    OnlinePowerResult,
    PowerIterationResult,
    online_power_method,
    power_iteration,
)
from keras_secondorder.spectrum.summary import spectrum_summary, spread

__all__ = [
    "HutchinsonTrace",
    "LanczosResult",
    "OnlinePowerResult",
    "PowerIterationResult",
    "SpectralDensity",
    "exact_eigenvalues",
    "hutchinson_trace",
    "lanczos",
    "online_power_method",
    "power_iteration",
    "spectral_density",
    "spectrum_summary",
    "spread",
]
