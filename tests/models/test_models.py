import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_secondorder as ks
from keras_secondorder import models


def test_lenet5_layout_and_parameter_count():
    model = models.lenet5()
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 10)
    shapes = [layer.output.shape[1:] for layer in model.layers]
    assert shapes[:5] == [(28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16), (1, 1, 120)]
    assert model.count_params() == 61750
    # Live weights: the paper's 60,000 (C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164)
    # plus the softmax head's 850.
    c3 = model.get_layer("c3")
    live = model.count_params() - int(np.sum(1 - c3.mask.numpy())) * 25
    assert live == 156 + 12 + 1516 + 32 + 48120 + 10164 + 850


def test_lenet5_takes_the_hidden_units_and_the_kernel_initializer():
    model = models.lenet5(activation="relu",
                          kernel_initializer=keras.initializers.Constant(0.01))
    hidden = [model.get_layer(name) for name in ("c1", "s2", "c3", "s4", "c5", "f6")]
    assert all(layer.activation is keras.activations.relu for layer in hidden)
    assert model.get_layer("output").activation is keras.activations.softmax
    kernels = [model.get_layer(name).kernel for name in ("c1", "c3", "c5", "f6", "output")]
    assert all(np.all(kernel.numpy() == np.float32(0.01)) for kernel in kernels)
    # Relu units on a negative image: C1 is -0.01 * 25 < 0 everywhere, so all of C1 is zero.
    c1_output = model.get_layer("c1")(-np.ones((1, 32, 32, 1), "float32"))
    assert np.all(c1_output.numpy() == 0)


def test_lenet5_draws_each_layer_anew_from_one_initializer_object():
    # One unseeded Keras initializer object draws the same stream in every layer it builds.
    keras.utils.set_random_seed(0)
    model = models.lenet5(kernel_initializer=keras.initializers.VarianceScaling(
        2.0, "fan_in", "normal"))
    kernels = {name: model.get_layer(name).kernel.numpy()
               for name in ("c1", "c3", "c5", "f6", "output")}
    prefixes = np.stack([kernel.ravel()[:150] for kernel in kernels.values()])
    correlations = np.corrcoef(prefixes)[np.triu_indices(len(kernels), 1)]
    # Independent draws: |r| ~ 1/sqrt(150) = 0.08; the same stream gave r = 1.
    assert np.max(np.abs(correlations)) < 0.35
    for name in ("c5", "f6"):  # The closed form: variance 2 / fan_in, to sampling error.
        kernel = kernels[name]
        fan_in = np.prod(kernel.shape[:-1])
        np.testing.assert_allclose(kernel.var(), 2.0 / fan_in, rtol=0.06)


def test_c3_table_masks_unconnected_kernel_entries():
    model = models.lenet5()
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype("float32")
    with tf.GradientTape() as tape:
        # Not the plain sum: softmax outputs sum to 1, whose gradient is zero (up to rounding).
        loss = tf.reduce_sum(model(x) * tf.range(10, dtype=tf.float32))
    c3 = model.get_layer("c3")
    kernel_gradient = tape.gradient(loss, c3.kernel)
    mask = c3.mask.numpy()  # (6 input maps, 16 output maps)
    assert mask.sum() == 60 and mask[:, 15].sum() == 6 and mask[:, 0].tolist() == [1, 1, 1, 0, 0, 0]
    unconnected = np.broadcast_to(mask == 0, kernel_gradient.shape)
    assert np.all(kernel_gradient.numpy()[unconnected] == 0)
    assert np.any(kernel_gradient.numpy()[~unconnected] != 0)


def test_c3_masked_entries_never_change_under_kfac():
    # K-FAC gives C3 a diagonal block (its convolution is not the kernel's): the masked
    # entries' zero gradient leaves them as they were, the live ones move.
    model = ks.wrap(models.lenet5())
    model.compile(ks.optimizers.KFAC(), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32, 32, 1)).astype("float32")
    y = rng.integers(0, 10, 16)
    c3 = model.get_layer("c3")
    before = c3.kernel.numpy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    unconnected = np.broadcast_to(c3.mask.numpy() == 0, before.shape)
    assert np.array_equal(c3.kernel.numpy()[unconnected], before[unconnected])
    assert np.all(c3.kernel.numpy()[~unconnected] != before[~unconnected])


def test_trainable_subsampling_is_scaled_window_sum(float64):
    layer = models.TrainableSubsampling(activation=None)
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    layer.build(x.shape)
    layer.coefficient.assign([0.5])
    layer.bias.assign([1.0])
    expected = 0.5 * np.array([[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13,
                                                                10 + 11 + 14 + 15]]) + 1.0
    np.testing.assert_allclose(layer(x).numpy()[0, :, :, 0], expected)


def test_scaled_tanh_maps_one_to_one():
    np.testing.assert_allclose(float(models.scaled_tanh(1.0)), 1.0, atol=1e-4)


def test_lenet5_save_and_load(tmp_path):
    model = models.lenet5()
    x = np.random.default_rng(1).normal(size=(3, 32, 32, 1)).astype("float32")
    model.save(tmp_path / "lenet5.keras")
    loaded = keras.saving.load_model(tmp_path / "lenet5.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_deep_autoencoder_layout():
    model = models.deep_autoencoder("mnist")
    units = [layer.units for layer in model.layers]
    assert units == [1000, 500, 250, 30, 250, 500, 1000, 784]
    activations = [layer.activation.__name__ for layer in model.layers]
    assert activations[3] == "linear" and set(activations[:3] + activations[4:]) == {"sigmoid"}


def test_sparse_initialization_as_martens():
    model = models.deep_autoencoder("mnist", kernel_initializer=models.SparseInitializer(seed=3),
                                     kernel_regularizer=keras.regularizers.L2(1e-5))
    kernels = [layer.kernel.numpy() for layer in model.layers]
    for kernel in kernels:  # Exactly 15 incoming weights per unit (every layer has >= 30 inputs).
        np.testing.assert_array_equal((kernel != 0).sum(axis=0), 15)
    nonzero = np.concatenate([k[k != 0] for k in kernels])  # 15 * 4348 draws of N(0, 1).
    assert abs(nonzero.mean()) < 0.03 and abs(nonzero.std() - 1) < 0.02
    assert all(not np.any(layer.bias.numpy()) for layer in model.layers)
    first, second = kernels[1], kernels[5]  # Same shape 1000x500 / 500x1000: different draws.
    assert not np.array_equal(first != 0, second.T != 0)
    assert all(isinstance(layer.kernel_regularizer, keras.regularizers.L2) for layer in
               model.layers)
    config = models.SparseInitializer(connections=4, scale=0.5, seed=2).get_config()
    assert models.SparseInitializer(**config).get_config() == config
    with pytest.raises(ValueError, match="`connections` must be a positive integer"):
        models.SparseInitializer(connections=0)


def test_lenet6_layout_and_parameter_count():
    model = models.lenet6()
    assert model.output_shape == (None, 10)
    assert [layer.output.shape[1:] for layer in model.layers[:4]] == [
        (28, 28, 50), (14, 14, 50), (10, 10, 50), (5, 5, 50)]
    # 1-50-50-200-10: conv 5x5x1x50 + 50, conv 5x5x50x50 + 50, dense 1250x200 + 200, 200x10 + 10.
    assert model.count_params() == 1300 + 62550 + 250200 + 2010
