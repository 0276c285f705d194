"""LeNet-5's MNIST pipeline: scaling, padding, distortions keep labels and follow the seed."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_secondorder.datasets import (
    BACKGROUND,
    DATA_ENV_VAR,
    FOREGROUND,
    affine_coordinates,
    distort,
    elastic_distortion,
    lenet_preprocess,
    mnist,
    mnist_dataset,
    random_affine,
)

needs_mnist = pytest.mark.skipif(not os.environ.get(DATA_ENV_VAR),
                                 reason=f"{DATA_ENV_VAR} is not set")


def test_preprocess_pads_and_scales():
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 0, 0], images[1, 27, 27] = 255, 128
    out = lenet_preprocess(images).numpy()
    assert out.shape == (2, 32, 32, 1)
    assert out[0, 2, 2, 0] == pytest.approx(FOREGROUND)
    assert out[1, 29, 29, 0] == pytest.approx(BACKGROUND + 128 / 255 * (FOREGROUND - BACKGROUND))
    assert np.all(out[:, :2] == np.float32(BACKGROUND)) and np.all(out[..., :2, :] == np.float32(
        BACKGROUND))


def test_elastic_distortion_without_displacement_is_the_identity():
    images = tf.random.stateless_uniform([3, 32, 32, 1], [1, 2])
    same = elastic_distortion(images, [5, 6], alpha=0.0)
    np.testing.assert_allclose(same.numpy(), images.numpy(), atol=1e-6)


def test_bilinear_resampling_shifts_exactly():
    # The elastic distortion's resampling: a shift by 1 pixel moves the image, by 0.5 averages.
    from keras_secondorder.datasets.lenet import _bilinear

    images = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])
    grid_y, grid_x = tf.meshgrid(tf.range(4.0), tf.range(4.0), indexing="ij")
    shifted = _bilinear(images, grid_y[None], grid_x[None] + 1.0)[0, :, :3, 0]
    np.testing.assert_allclose(shifted.numpy(), images[0, :, 1:, 0].numpy())
    half = _bilinear(images, grid_y[None], grid_x[None] + 0.5)[0, :, :3, 0]
    np.testing.assert_allclose(half.numpy(), (images[0, :, :3, 0] + images[0, :, 1:, 0]) / 2)


def test_affine_map_rotates_about_the_centre_exactly():
    images = tf.random.stateless_uniform([2, 6, 6, 1], [1, 2])
    quarter_turn = tf.constant([[[0.0, 1.0], [-1.0, 0.0]]] * 2)  # Source (c_y + dx, c_x - dy).
    from keras_secondorder.datasets.lenet import _bilinear

    y, x = affine_coordinates(tf.shape(images), quarter_turn, tf.zeros([2, 2]))
    rotated = _bilinear(images, y, x)
    np.testing.assert_allclose(rotated.numpy(), np.rot90(images.numpy(), k=1, axes=(1, 2)),
                               atol=1e-6)
    y, x = affine_coordinates(tf.shape(images), tf.eye(2, batch_shape=[2]),
                              tf.constant([[0.0, 1.0], [0.0, 1.0]]))
    np.testing.assert_allclose(_bilinear(images, y, x)[:, :, :5].numpy(),
                               images[:, :, 1:].numpy(), atol=1e-6)


def test_random_affine_stays_in_its_ranges_and_zero_ranges_are_the_identity():
    matrices, offsets = random_affine(1000, [3, 4])
    assert np.all(np.abs(offsets.numpy()) <= 2.0)
    determinants = np.linalg.det(matrices.numpy())  # Rotation and shear keep area.
    assert determinants.min() >= 0.9**2 - 1e-6 and determinants.max() <= 1.1**2 + 1e-6
    matrices, offsets = random_affine(4, [3, 4], rotation=0.0, scale=0.0, shear=0.0,
                                      translation=0.0)
    np.testing.assert_array_equal(matrices.numpy(), np.tile(np.eye(2), (4, 1, 1)))
    images = lenet_preprocess(np.random.default_rng(0).integers(0, 256, (4, 28, 28)))
    same = distort(images, [1, 2], affine=False, elastic=False)
    np.testing.assert_allclose(same.numpy(), images.numpy(), atol=1e-6)


def test_elastic_distortion_is_deterministic_and_stays_in_range():
    images = lenet_preprocess(np.random.default_rng(0).integers(0, 256, (4, 28, 28)))
    first, second = (elastic_distortion(images, [3, 4]).numpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, elastic_distortion(images, [3, 5]).numpy())
    assert first.min() >= BACKGROUND - 1e-6 and first.max() <= FOREGROUND + 1e-6


@needs_mnist
@pytest.mark.parametrize("distortions", ["affine", "elastic", "both"])
def test_distortions_keep_labels_and_shapes_and_follow_the_seed(distortions):
    def batches(distortions, seed=0):
        dataset = mnist_dataset("train", 64, distortions=distortions, seed=seed, limit=256)
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(2)]

    plain, distorted, again = batches(None), batches(distortions), batches(distortions)
    for (x, y), (xd, yd), (xa, _) in zip(plain, distorted, again, strict=True):
        np.testing.assert_array_equal(y, yd)  # Same examples, same order, same labels.
        assert xd.shape == x.shape == (64, 32, 32, 1) and xd.dtype == np.float32
        assert not np.allclose(xd, x)
        np.testing.assert_array_equal(xd, xa)  # Same seed, same distortions.
    other = batches(distortions, seed=1)
    assert not np.array_equal(other[0][0], distorted[0][0])


@needs_mnist
def test_training_split_reshuffles_every_epoch():
    # `fit(shuffle=False)` in the demo relies on it: each epoch is a new permutation of the images.
    dataset = mnist_dataset("train", 64, limit=256)
    (_, file_labels), _ = mnist()
    epochs = [np.concatenate([y.numpy() for _, y in dataset]) for _ in range(2)]
    for labels in epochs:
        np.testing.assert_array_equal(np.sort(labels), np.sort(file_labels[:256]))
    assert not np.array_equal(epochs[0], file_labels[:256])
    assert not np.array_equal(epochs[0], epochs[1])
    # The order is tf.data's, not its autotuner's, which the pipeline turns off (it stalled fit).
    assert dataset.options().autotune.enabled is False
    tuned_options = tf.data.Options()
    tuned_options.autotune.enabled = True
    tuned = mnist_dataset("train", 64, limit=256).with_options(tuned_options)
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in tuned]), epochs[0])


@needs_mnist
def test_test_split_is_neither_shuffled_nor_distorted():
    dataset = mnist_dataset("test", 1000)
    labels = np.concatenate([y.numpy() for _, y in dataset])
    assert len(labels) == 10000 and labels[:5].tolist() == [7, 2, 1, 0, 4]


@pytest.mark.parametrize("kwargs,match", [(dict(split="validation"), "`split` must be"),
                                          (dict(distortions="rotate"), "`distortions` must be")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mnist_dataset(**kwargs)
