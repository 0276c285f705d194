"""Checks a SavedModel with TensorFlow alone, as a server would: keras_secondorder is blocked.

Loads the SavedModel, prints its signatures, runs each on the given inputs and saves the outputs
next to them, for the exporter to compare with the in-memory model. keras_secondorder is made
unimportable first, so a SavedModel that needed any of its code (custom layers, functions) fails
here. (TensorFlow 2.21 itself imports parts of the `keras` package on import; the SavedModel's
functions are plain TensorFlow graphs and need none of it.)

Run: python keras_secondorder/export/verify_savedmodel.py SAVEDMODEL_DIR INPUTS.npy OUTPUTS.npz
"""

import sys

sys.modules["keras_secondorder"] = None  # Any import of it now raises ImportError.

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(directory, inputs_path, outputs_path):
    loaded = tf.saved_model.load(directory)
    images = tf.constant(np.load(inputs_path))
    outputs = {}
    for name, signature in loaded.signatures.items():
        (argument,) = signature.structured_input_signature[1]
        spec = signature.structured_input_signature[1][argument]
        produced = signature(**{argument: images})
        # The declared outputs, whose batch dimension is None like the input's.
        described = ", ".join(f"{key}: {value.dtype.name}{value.shape}"
                              for key, value in signature.structured_outputs.items())
        print(f"signature {name!r}: {argument}: {spec.dtype.name}{spec.shape} -> {described}")
        outputs.update({f"{name}/{key}": value.numpy() for key, value in produced.items()})
    np.savez(outputs_path, **outputs)


if __name__ == "__main__":
    main(*sys.argv[1:4])
