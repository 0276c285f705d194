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
(`verify_savedmodel.py` beside this file): every signature's outputs on test images must equal
the in-memory model's (max abs difference <= 1e-5), and it prints the signatures.

Run: keras-secondorder-export MODEL.keras --name lenet5 [--base-dir artifacts/serving]
     [--version 1] [--features-layer f6] [--overwrite]
(or `python export/savedmodel.py ...` from a checkout).
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

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


def verify(model, directory, images, features_layer=None):
    """Runs the TensorFlow-only verifier on `images`; returns its printout and the max error."""
    expected = {f"{name}/{key}": value.numpy() for name, function in
                serving_functions(model, features_layer).items()
                for key, value in function(tf.constant(images)).items()}
    expected.update({key.replace("serve/", "serving_default/"): value
                     for key, value in expected.items() if key.startswith("serve/")})
    with tempfile.TemporaryDirectory() as scratch:
        inputs, outputs = os.path.join(scratch, "in.npy"), os.path.join(scratch, "out.npz")
        np.save(inputs, images)
        result = subprocess.run([sys.executable, str(VERIFIER), str(directory), inputs, outputs],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"The verification failed:\n{result.stdout}{result.stderr}")
        produced = dict(np.load(outputs))
    if set(produced) != set(expected):
        raise RuntimeError(f"The SavedModel's outputs {sorted(produced)} differ from the "
                           f"model's {sorted(expected)}.")
    error = max(float(np.max(np.abs(produced[key].astype("float64") - expected[key])))
                for key in expected)
    if error > TOLERANCE:
        raise RuntimeError(f"The SavedModel's outputs differ from the model's by {error:.3g} "
                           f"(tolerance {TOLERANCE}).")
    return result.stdout, error


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
