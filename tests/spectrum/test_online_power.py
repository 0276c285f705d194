"""LeCun's on-line power method on MNIST: the right eigenvalue within 100 presentations."""

import os

import keras
import numpy as np
import pytest

from keras_secondorder import curvature, spectrum
from keras_secondorder.datasets import DATA_ENV_VAR, mnist


@pytest.mark.skipif(not os.environ.get(DATA_ENV_VAR), reason=f"{DATA_ENV_VAR} is not set")
@pytest.mark.parametrize("product", ["finite_difference", "exact"])
def test_within_20_percent_after_100_presentations(product):
    (x, y), _ = mnist()
    x, y = x[:300].reshape(300, -1).astype("float32") / 255.0, y[:300]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(30, activation="tanh"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    # λ_max of the average Hessian over the 300 digits, from Lanczos.
    largest = float(spectrum.lanczos(curvature.HessianOperator(model, (x, y))).largest[0])
    result = spectrum.online_power_method(model, (x, y), product=product, presentations=100)
    assert abs(float(result.eigenvalue) / largest - 1.0) <= 0.2
    assert result.presentations == 100 and result.history.shape == (100,)
    np.testing.assert_allclose(float(result.learning_rate), 1.0 / float(result.eigenvalue))


def test_bad_settings(float64):
    from conftest import make_case

    model, x, y, _ = make_case("mlp", "ce")
    for kwargs, match in ((dict(gamma=0.0), "`gamma` must be in"), (dict(alpha=-1.0), "`alpha`"),
                          (dict(product="fd"), "`product` must be"),
                          (dict(presentations=0), "`presentations`")):
        with pytest.raises(ValueError, match=match):
            spectrum.online_power_method(model, (x, y), **kwargs)
