"""SavedModel export for TensorFlow Serving, checked by a process that has TensorFlow only.

`export(model, directory)` writes the `serve`, `features` and `serving_default` signatures;
`verify(model, directory, images)` runs them in a fresh process where keras_secondorder cannot
be imported and compares them with the model (`Verifier`: one such process for several). The
command line is `keras-secondorder-export` (or `python -m keras_secondorder.export.savedmodel`).
"""

from keras_secondorder.export.savedmodel import (
    TOLERANCE,
    Verifier,
    export,
    first_max,
    main,
    verify,
)

__all__ = ["TOLERANCE", "Verifier", "export", "first_max", "main", "verify"]
