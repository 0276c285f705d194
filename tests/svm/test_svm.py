"""The SVM on chopped features: weights shared, the Keras layer equal to sklearn, the errors."""

import os

import keras
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

from keras_secondorder import models, svm
from keras_secondorder.datasets import DATA_ENV_VAR, mnist


def blobs(seed, n, classes=4, features=6):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(scale=2.0, size=(classes, features))
    labels = rng.integers(0, classes, n)
    return (centers[labels] + rng.normal(size=(n, features))).astype("float32"), labels


def small_net(classes=4):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="tanh",
                                                                   name="hidden"),
                             keras.layers.Dense(8, activation="tanh", name="features"),
                             keras.layers.Dense(classes, activation="softmax", name="output")])


def test_chop_shares_weights_and_defaults_to_the_layer_before_the_classifier():
    model = small_net()
    extractor = svm.chop(model)
    assert extractor.output.shape[-1] == 8
    assert all(a is b for a, b in zip(extractor.weights, model.weights[:4], strict=True))
    x, _ = blobs(0, 5)
    before = extractor.predict(x, verbose=0)
    model.get_layer("hidden").kernel.assign(model.get_layer("hidden").kernel * 2.0)
    assert not np.allclose(extractor.predict(x, verbose=0), before)


def test_chop_errors():
    with pytest.raises(ValueError, match=r"`layer`='f7' is not a layer of .*\['hidden', "):
        svm.chop(small_net(), "f7")

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="no graph of layers to chop"):
        svm.chop(Subclassed())


@pytest.mark.parametrize("classes", [4, 2])
def test_keras_svm_equals_sklearn_on_held_out_data(classes):
    model = small_net(classes)
    x_train, y_train = blobs(1, 400, classes)
    x_test, _ = blobs(2, 300, classes)
    pipeline = svm.svm_pipeline(model, C=3.0).fit(x_train, y_train)
    combined = svm.svm_model(pipeline)
    votes = combined.predict(x_test, verbose=0)
    labels = pipeline.classes_[np.argmax(votes, axis=1)]
    np.testing.assert_array_equal(labels, pipeline.predict(x_test))
    expected = pipeline.decision_function(x_test)
    if classes == 2:  # sklearn reports the binary decision with the opposite sign.
        expected = -expected[:, None]
    layer = combined.get_layer("svm")
    actual = layer.decision_values(svm.chop(model).predict(x_test, verbose=0)).numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_grid_search_and_save_load(tmp_path):
    model = small_net()
    x_train, y_train = blobs(3, 200)
    search = GridSearchCV(svm.svm_pipeline(model), {"svc__C": [0.5, 5.0],
                                                    "svc__gamma": ["scale", 0.05]}, cv=2)
    search.fit(x_train, y_train)
    best = search.best_estimator_
    combined = svm.svm_model(best)
    path = tmp_path / "svm.keras"
    combined.save(path)
    reloaded = keras.saving.load_model(path)
    x_test, _ = blobs(4, 100)
    np.testing.assert_array_equal(reloaded.predict(x_test, verbose=0),
                                  combined.predict(x_test, verbose=0))
    np.testing.assert_array_equal(best.classes_[np.argmax(reloaded.predict(x_test, verbose=0),
                                                          axis=1)], best.predict(x_test))


def test_used_before_fit():
    pipeline = svm.svm_pipeline(small_net())
    with pytest.raises(ValueError, match="not fitted yet: call fit"):
        svm.svm_model(pipeline)
    with pytest.raises(Exception, match="not fitted yet"):
        pipeline.named_steps["features"].transform(np.zeros((1, 6), "float32"))


def test_only_the_gaussian_kernel():
    x, y = blobs(5, 50)
    with pytest.raises(ValueError, match="Only the Gaussian kernel"):
        svm.SVCLayer.from_sklearn(SVC(kernel="linear").fit(x, y))


@pytest.mark.skipif(not os.environ.get(DATA_ENV_VAR), reason=f"{DATA_ENV_VAR} is not set")
def test_lenet5_features_on_mnist_agree_exactly():
    (x_train, y_train), (x_test, _) = mnist()

    def images(x):
        return np.pad(x.astype("float32") / 255.0, ((0, 0), (2, 2), (2, 2)))[..., None]

    model = models.lenet5()
    pipeline = svm.svm_pipeline(model).fit(images(x_train[:1000]), y_train[:1000])
    test = images(x_test[:1000])
    votes = svm.svm_model(pipeline).predict(test, verbose=0)
    np.testing.assert_array_equal(pipeline.classes_[np.argmax(votes, axis=1)],
                                  pipeline.predict(test))
