"""SavedModel export: signatures, any batch size, TensorFlow-only verification, no overwrite."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_secondorder import models, svm
from keras_secondorder.datasets import DATA_ENV_VAR
from keras_secondorder.export import savedmodel


def images(count, seed=0):
    return np.random.default_rng(seed).uniform(-0.1, 1.175, (count, 32, 32, 1)).astype("float32")


@pytest.fixture(scope="module")
def lenet():
    keras.utils.set_random_seed(0)
    return models.lenet5()


def test_export_round_trip_with_tensorflow_only(lenet, tmp_path):
    directory = savedmodel.export(lenet, tmp_path / "lenet5" / "1")
    printout, error = savedmodel.verify(lenet, directory, images(16))
    assert error <= savedmodel.TOLERANCE
    assert "signature 'serve': images: float32(None, 32, 32, 1)" in printout
    assert "signature 'features'" in printout and "features: float32(None, 84)" in printout


def test_signatures_take_any_batch_size(lenet, tmp_path):
    loaded = tf.saved_model.load(str(savedmodel.export(lenet, tmp_path / "m" / "1")))
    for count in (1, 3, 5):
        batch = images(count, seed=count)
        served = loaded.signatures["serve"](images=tf.constant(batch))
        np.testing.assert_allclose(served["scores"].numpy(), lenet(batch).numpy(), atol=1e-6)
        np.testing.assert_array_equal(served["labels"].numpy(),
                                      np.argmax(lenet(batch).numpy(), axis=1))
        features = loaded.signatures["features"](images=tf.constant(batch))["features"]
        np.testing.assert_allclose(features.numpy(), svm.chop(lenet)(batch).numpy(), atol=1e-6)


def test_conv_net_with_svm_exports(lenet, tmp_path):
    rng = np.random.default_rng(1)
    x, y = images(120, seed=2), rng.integers(0, 3, 120)
    pipeline = svm.svm_pipeline(lenet).fit(x, y)
    combined = svm.svm_model(pipeline)
    directory = savedmodel.export(combined, tmp_path / "svm" / "1", features_layer="f6")
    test = images(40, seed=3)
    _, error = savedmodel.verify(combined, directory, test, features_layer="f6")
    assert error <= savedmodel.TOLERANCE
    served = tf.saved_model.load(str(directory)).signatures["serve"](images=tf.constant(test))
    np.testing.assert_array_equal(pipeline.classes_[served["labels"].numpy()],
                                  pipeline.predict(test))


def test_one_verifier_checks_several_savedmodels_and_catches_a_mismatch(lenet, tmp_path):
    keras.utils.set_random_seed(1)
    other = models.lenet5()  # Other weights: its outputs are not lenet's.
    first = savedmodel.export(lenet, tmp_path / "first" / "1")
    second = savedmodel.export(other, tmp_path / "second" / "1")
    with savedmodel.Verifier() as verifier:
        with pytest.raises(RuntimeError,
                           match=re.escape(f"The verification of {tmp_path / 'missing'}")):
            verifier.verify(lenet, tmp_path / "missing", images(8))
        assert verifier.verify(lenet, first, images(8))[1] <= savedmodel.TOLERANCE
        with pytest.raises(RuntimeError, match="differ from the model's by"):
            verifier.verify(lenet, second, images(8))
        assert verifier.verify(other, second, images(8))[1] <= savedmodel.TOLERANCE


def test_first_max_breaks_ties_toward_the_first_class():
    scores = tf.constant([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, 0.0, 5.0]])
    assert savedmodel.first_max(scores).numpy().tolist() == [1, 0, 2]


def test_refuses_to_overwrite(lenet, tmp_path):
    directory = savedmodel.export(lenet, tmp_path / "lenet5" / "1")
    with pytest.raises(FileExistsError, match="refusing to overwrite it. Pass --overwrite"):
        savedmodel.export(lenet, directory)
    savedmodel.export(lenet, directory, overwrite=True)


@pytest.mark.skipif(not os.environ.get(DATA_ENV_VAR), reason=f"{DATA_ENV_VAR} is not set")
def test_command_line(lenet, tmp_path, capsys):
    lenet.save(tmp_path / "lenet5.keras")
    savedmodel.main([str(tmp_path / "lenet5.keras"), "--name", "lenet5", "--base-dir",
                     str(tmp_path / "serving"), "--verify-images", "64"])
    assert "Verified with TensorFlow only on 64 test images" in capsys.readouterr().out
    assert (tmp_path / "serving" / "lenet5" / "1" / "saved_model.pb").is_file()
    with pytest.raises(FileExistsError):
        savedmodel.main([str(tmp_path / "lenet5.keras"), "--name", "lenet5", "--base-dir",
                         str(tmp_path / "serving")])
