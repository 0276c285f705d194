"""Exports a trained model (or conv net + SVM) as a SavedModel for TF Serving, and checks it.

Writes `<base_dir>/<name>/<version>/` (TensorFlow Serving's layout) with two signatures, both
with a variable batch size:

- `serve`: `images` -> `scores` (the model's outputs: class probabilities, or the SVM's votes)
  and `labels` (the predicted class index, the first of equal scores);
- `features`: `images` -> `features` (the model chopped at `--features-layer`, by default the
  layer before the classifier);

and `serving_default`, which `keras.export.ExportArchive` adds as a copy of `serve` (what TF
Serving runs when a request names no signature).

Then it verifies the export in a fresh process that imports TensorFlow only
(`verify_savedmodel.py` beside this file; `Verifier` keeps one for several exports): every
signature's outputs on test images must equal the in-memory model's (max abs difference
<= 1e-5), and it prints the signatures.

Run: keras-secondorder-export MODEL.keras --name lenet5 [--base-dir artifacts/serving]
     [--version 1] [--features-layer f6] [--overwrite]
(or `python export/savedmodel.py ...` from a checkout).
"""

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import keras
import numpy as np
import tensorflow as tf

from keras_secondorder import svm
from keras_secondorder.datasets import lenet_preprocess, mnist

VERIFIER = pathlib.Path(__file__).resolve().with_name("verify_savedmodel.py")
TOLERANCE = 1e-5


def first_max(scores):
    """The index of the largest score, the first on ties (as `SVC.predict` and numpy)."""
    classes = tf.shape(scores)[-1]
    is_max = scores >= tf.reduce_max(scores, axis=-1, keepdims=True)
    return tf.reduce_min(tf.where(is_max, tf.range(classes), classes), axis=-1)


def serving_functions(model, features_layer=None):
    """`{signature name: function of images}` for `model` (features from `features_layer`)."""
    extractor = svm.chop(model, features_layer)

    def serve(images):
        scores = model(images)
        return {"scores": scores, "labels": first_max(scores)}

    return {"serve": serve, "features": lambda images: {"features": extractor(images)}}


def export(model, directory, features_layer=None, overwrite=False):
    """Writes `model` as a SavedModel to `directory` with the `serve` and `features` signatures.

    Keras's SavedModel writer unsets the model's `train_function`, `test_function` and
    `predict_function` while it runs: a `fit`, `evaluate` or `predict` of `model` in another
    thread at the same time fails (`'NoneType' object is not callable`). Export after them.

    Raises:
        FileExistsError: `directory` exists and `overwrite` is false.
    """
    directory = pathlib.Path(directory)
    if directory.exists():
        if not overwrite:
            raise FileExistsError(
                f"{directory} exists; refusing to overwrite it. Pass --overwrite (overwrite=True)"
                " or choose another --version.")
        shutil.rmtree(directory)
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="images")
    for name, function in serving_functions(model, features_layer).items():
        archive.add_endpoint(name=name, fn=function, input_signature=[spec])
    archive.write_out(str(directory), verbose=False)
    return directory


class Verifier:
    """A fresh process with TensorFlow only that checks SavedModels against in-memory models.

    Starting it imports TensorFlow, a few seconds of one core: a `Verifier` pays that once for
    several SavedModels, and started before the first is written, beside other work. `verify`
    may be called from several threads; the checks run one at a time. Use it in a `with`
    block, or call `close`.
    """

    def __init__(self):
        self._log = tempfile.TemporaryFile(mode="w+")  # The process's stderr, shown on failure.
        self._process = subprocess.Popen([sys.executable, str(VERIFIER)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Ends the process once it has answered every check asked of it."""
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        self._process.wait()
        self._process.stdout.close()
        self._log.close()

    def verify(self, model, directory, images, features_layer=None):
        """Checks the SavedModel in `directory` against `model` on `images`.

        Returns:
            `(printout, error)`: the signatures the process found, and the largest absolute
            difference between their outputs and the model's.

        Raises:
            RuntimeError: the SavedModel fails to load or run, its outputs are not the model's,
                or they differ by more than `TOLERANCE`.
        """
        expected = {f"{name}/{key}": value.numpy() for name, function in
                    serving_functions(model, features_layer).items()
                    for key, value in function(tf.constant(images)).items()}
        expected.update({key.replace("serve/", "serving_default/"): value
                         for key, value in expected.items() if key.startswith("serve/")})
        with tempfile.TemporaryDirectory() as scratch:
            inputs, outputs = os.path.join(scratch, "in.npy"), os.path.join(scratch, "out.npz")
            np.save(inputs, images)
            answer = self._ask([str(directory), inputs, outputs])
            if "error" in answer:
                raise RuntimeError(f"The verification of {directory} failed:\n{answer['error']}")
            produced = dict(np.load(outputs))
        if set(produced) != set(expected):
            raise RuntimeError(f"The SavedModel's outputs {sorted(produced)} differ from the "
                               f"model's {sorted(expected)}.")
        error = max(float(np.max(np.abs(produced[key].astype("float64") - expected[key])))
                    for key in expected)
        if error > TOLERANCE:
            raise RuntimeError(f"The SavedModel's outputs differ from the model's by {error:.3g} "
                               f"(tolerance {TOLERANCE}).")
        return answer["printout"], error

    def _ask(self, request):
        with self._lock:
            try:
                self._process.stdin.write(json.dumps(request) + "\n")
                self._process.stdin.flush()
                line = self._process.stdout.readline()
            except BrokenPipeError:
                line = ""
        if not line:
            self._process.wait()
            self._log.seek(0)
            raise RuntimeError(f"The verifying process ended (exit code "
                               f"{self._process.returncode}):\n{self._log.read()}")
        return json.loads(line)


def verify(model, directory, images, features_layer=None):
    """Checks one SavedModel in a fresh process: `Verifier.verify`, returns its result."""
    with Verifier() as verifier:
        return verifier.verify(model, directory, images, features_layer)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .keras file (LeNet-5, or conv net + SVM)")
    parser.add_argument("--name", required=True, help="the served model's name")
    parser.add_argument("--base-dir", default="artifacts/serving")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--features-layer", default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX files for the verification")
    parser.add_argument("--verify-images", type=int, default=256)
    args = parser.parse_args(argv)
    model = keras.saving.load_model(args.model)
    directory = export(model, pathlib.Path(args.base_dir) / args.name / str(args.version),
                       args.features_layer, args.overwrite)
    _, (x_test, _) = mnist(args.data_dir)
    images = lenet_preprocess(x_test[: args.verify_images]).numpy()
    printout, error = verify(model, directory, images, args.features_layer)
    print(printout, end="")
    print(f"Verified with TensorFlow only on {len(images)} test images: max abs difference "
          f"{error:.2e} (<= {TOLERANCE}). SavedModel: {directory}")


if __name__ == "__main__":
    main()
