"""keras-secondorder: curvature (second-order information) for Keras 3 and `model.fit`."""

try:
    import tensorflow as _tf  # noqa: F401
except ImportError as _error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "keras-secondorder needs TensorFlow, which is not installed. Install the package with the "
        "extra that fits your machine: `pip install 'keras-secondorder[cpu]'` (tensorflow-cpu) or "
        "`pip install 'keras-secondorder[gpu]'` (tensorflow with CUDA)."
    ) from _error

import keras as _keras

if _keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"keras-secondorder runs on Keras's TensorFlow backend, but Keras is set to "
        f"{_keras.backend.backend()!r}. Set the environment variable KERAS_BACKEND=tensorflow "
        "before importing Keras."
    )

from keras_secondorder import (  # noqa: E402
    callbacks,
    curvature,
    datasets,
    models,
    optimizers,
    spectrum,
    svm,
)
from keras_secondorder.training import Model, wrap  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Model", "callbacks", "curvature", "datasets", "models", "optimizers", "spectrum",
           "svm", "wrap", "__version__"]
