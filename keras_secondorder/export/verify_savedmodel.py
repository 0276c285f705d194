"""Checks SavedModels with TensorFlow alone, as a server would: keras_secondorder is blocked.

Loads a SavedModel, describes its signatures, runs each on the given inputs and saves the
outputs next to them, for the exporter to compare with the in-memory model. keras_secondorder
is made unimportable first, so a SavedModel that needed any of its code (custom layers,
functions) fails here. (TensorFlow 2.21 itself imports parts of the `keras` package on import;
the SavedModel's functions are plain TensorFlow graphs and need none of it.)

It checks one SavedModel per line of standard input, a JSON list `[directory, inputs.npy,
outputs.npz]`, and answers each with one JSON line, `{"printout": ...}` or `{"error": ...}`,
until standard input closes: one process, and one import of TensorFlow (a few seconds), for
several SavedModels (`savedmodel.Verifier` runs it).

Run: python keras_secondorder/export/verify_savedmodel.py < REQUESTS
"""

import sys

sys.modules["keras_secondorder"] = None  # Any import of it now raises ImportError.

import json  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def check(directory, inputs_path, outputs_path):
    """Runs every signature of the SavedModel in `directory`; returns their description."""
    loaded = tf.saved_model.load(directory)
    images = tf.constant(np.load(inputs_path))
    outputs, lines = {}, []
    for name, signature in loaded.signatures.items():
        (argument,) = signature.structured_input_signature[1]
        spec = signature.structured_input_signature[1][argument]
        produced = signature(**{argument: images})
        # The declared outputs, whose batch dimension is None like the input's.
        described = ", ".join(f"{key}: {value.dtype.name}{value.shape}"
                              for key, value in signature.structured_outputs.items())
        lines.append(f"signature {name!r}: {argument}: {spec.dtype.name}{spec.shape} -> "
                     f"{described}\n")
        outputs.update({f"{name}/{key}": value.numpy() for key, value in produced.items()})
    np.savez(outputs_path, **outputs)
    return "".join(lines)


def serve(requests, answers):
    """Answers each JSON line `[directory, inputs, outputs]` of `requests` on `answers`."""
    for line in requests:
        try:
            answer = {"printout": check(*json.loads(line))}
        except Exception:  # Any failure is the SavedModel's: the exporter raises it.
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    answers, sys.stdout = sys.stdout, sys.stderr  # Stray prints cannot garble the answers.
    serve(sys.stdin, answers)
