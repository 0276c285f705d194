"""MNIST as LeNet-5 reads it, on `tf.data`: 32x32 padding, the paper's scaling, distortions."""

import math

import keras
import tensorflow as tf

from keras_secondorder._validation import one_of
from keras_secondorder.datasets.mnist import mnist

# LeCun et al. 1998: white background -0.1, black foreground 1.175, so that the inputs have a
# mean of about 0 and a variance of about 1.
BACKGROUND, FOREGROUND = -0.1, 1.175
DISTORTIONS = (None, "affine", "elastic", "both")


def lenet_preprocess(images):
    """`uint8` images `(n, 28, 28)` -> float32 `(n, 32, 32, 1)` in [-0.1, 1.175], padded by 2."""
    images = tf.cast(images, tf.float32) / 255.0 * (FOREGROUND - BACKGROUND) + BACKGROUND
    padded = tf.pad(images, [[0, 0], [2, 2], [2, 2]], constant_values=BACKGROUND)
    return padded[..., None]


def elastic_distortion(images, seed, alpha=34.0, sigma=4.0):
    """Simard, Steinkraus and Platt (2003): displace every pixel by a smoothed random field.

    The displacement fields `dx, dy` are uniform in [-1, 1] per pixel, convolved with a
    Gaussian of standard deviation `sigma` pixels and scaled by `alpha` pixels; the image is
    resampled bilinearly at the displaced positions, with the background outside. Keras's
    `RandomElasticTransform` ties `alpha` and `sigma` to one factor (alpha / sigma = 2), so it
    cannot express the paper's alpha = 34, sigma = 4.

    Args:
        images: float `(n, h, w, 1)` images.
        seed: a stateless seed, shape `(2,)`; the same seed gives the same distortion.
        alpha: the displacement's scale in pixels. Defaults to `34.0`.
        sigma: the smoothing's standard deviation in pixels. Defaults to `4.0`.

    Returns:
        The distorted images, same shape.
    """
    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    field = tf.random.stateless_uniform(tf.stack([n, h, w, 2]), seed, -1.0, 1.0, alg="philox")
    radius = int(math.ceil(3 * sigma))
    taps = tf.exp(-0.5 * (tf.range(-radius, radius + 1, dtype=tf.float32) / sigma) ** 2)
    taps /= tf.reduce_sum(taps)
    # Separable Gaussian smoothing of both displacement channels (depthwise).
    rows = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, 2, 1])
    columns = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, 2, 1])
    field = tf.nn.depthwise_conv2d(field, rows, [1, 1, 1, 1], "SAME")
    field = alpha * tf.nn.depthwise_conv2d(field, columns, [1, 1, 1, 1], "SAME")
    grid_y, grid_x = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32),
                                 indexing="ij")
    return _bilinear(images, grid_y + field[..., 1], grid_x + field[..., 0])


def _bilinear(images, y, x):
    """Samples `images` (n, h, w, 1) at real positions `y, x` (n, h, w); background outside."""
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=BACKGROUND)
    y = tf.clip_by_value(y + 1.0, 0.0, tf.cast(h + 1, tf.float32))
    x = tf.clip_by_value(x + 1.0, 0.0, tf.cast(w + 1, tf.float32))
    y0, x0 = tf.floor(y), tf.floor(x)
    wy, wx = y - y0, x - x0
    y0 = tf.cast(y0, tf.int32)
    x0 = tf.cast(x0, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, h + 1), tf.minimum(x0 + 1, w + 1)

    def at(yi, xi):
        return tf.gather_nd(padded[..., 0], tf.stack([yi, xi], axis=-1), batch_dims=1)

    top = (1 - wx) * at(y0, x0) + wx * at(y0, x1)
    bottom = (1 - wx) * at(y1, x0) + wx * at(y1, x1)
    return ((1 - wy) * top + wy * bottom)[..., None]


def affine_distortion(seed):
    """Keras layers for LeNet's affine distortions: rotation, scaling, shearing, translation.

    Ranges: rotation ±7.5°, scale ±10%, horizontal shear ±0.15, translation ±2 pixels; the
    background fills what comes in from outside.
    """
    fill = dict(fill_mode="constant", fill_value=BACKGROUND)
    return keras.Sequential([
        keras.layers.RandomRotation(7.5 / 360, seed=seed, **fill),
        keras.layers.RandomZoom(0.1, seed=seed + 1, **fill),
        keras.layers.RandomShear(x_factor=0.15, seed=seed + 2, **fill),
        keras.layers.RandomTranslation(2 / 32, 2 / 32, seed=seed + 3, **fill),
    ], name="affine_distortion")


def mnist_dataset(split="train", batch_size=128, distortions=None, shuffle=None, seed=0,
                  data_dir=None, limit=None):
    """MNIST for LeNet-5 as a `tf.data.Dataset` of `(images, labels)` batches.

    Images are float32 `(batch, 32, 32, 1)`, scaled as in the paper (`lenet_preprocess`);
    labels are int32. Distortions apply to training batches only, drawn anew every epoch and
    reproducible from `seed`.

    Args:
        split: `"train"` or `"test"`. Defaults to `"train"`.
        batch_size: examples per batch. Defaults to `128`.
        distortions: `None`, `"affine"`, `"elastic"` (Simard et al. 2003) or `"both"`.
            Defaults to `None`.
        shuffle: shuffle every epoch. Defaults to `None`: for the training split.
        seed: seed of the shuffling and distortions. Defaults to `0`.
        data_dir: see `keras_secondorder.datasets.mnist`. Defaults to `None`.
        limit: use only the first `limit` examples. Defaults to `None`: all.

    Returns:
        A batched, prefetched `tf.data.Dataset`.
    """
    one_of(split, "split", ("train", "test"))
    one_of(distortions, "distortions", DISTORTIONS)
    train, test = mnist(data_dir)
    images, labels = train if split == "train" else test
    images, labels = images[:limit], labels[:limit].astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle is None:
        shuffle = split == "train"
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(lambda x, y: (lenet_preprocess(x), y),
                                            num_parallel_calls=tf.data.AUTOTUNE)
    if distortions is not None:
        dataset = _distort(dataset, distortions, seed)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _distort(dataset, distortions, seed):
    affine = affine_distortion(seed) if distortions in ("affine", "both") else None
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def distort(batch, batch_seed):
        images, labels = batch
        if affine is not None:
            images = affine(images, training=True)
        if distortions in ("elastic", "both"):
            images = elastic_distortion(images, batch_seed)
        return images, labels

    return tf.data.Dataset.zip((dataset, seeds)).map(distort)
