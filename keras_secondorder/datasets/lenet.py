"""MNIST as LeNet-5 reads it, on `tf.data`: 32x32 padding, the paper's scaling, distortions."""

import math

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
    return distort(images, seed, affine=False, elastic=True, alpha=alpha, sigma=sigma)


def random_affine(count, seed, rotation=7.5, scale=0.1, shear=0.15, translation=2.0):
    """LeNet's affine distortions as `count` random maps: rotation, scaling, shear, translation.

    An output pixel `p` (row, column) samples the input at `c + A (p - c) + t`, `c` the image's
    centre, with `A = rotation(θ) · shear(k) · diag(s_y, s_x)`: θ uniform in ±`rotation`
    degrees, `s_y`, `s_x` in 1 ± `scale` (scaling and squeezing), the horizontal shear `k` in
    ±`shear`, and `t` in ±`translation` pixels per axis.

    Returns:
        `(matrices, offsets)`: `(count, 2, 2)` and `(count, 2)` float32, in (row, column) order.
    """
    draws = tf.random.stateless_uniform([count, 6], seed, -1.0, 1.0, alg="philox")
    angle = draws[:, 0] * rotation * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    scale_y, scale_x = 1.0 + scale * draws[:, 1], 1.0 + scale * draws[:, 2]
    shear = shear * draws[:, 3]
    # [[cos, -sin], [sin, cos]] @ [[1, 0], [shear, 1]] @ diag(scale_y, scale_x)
    matrices = tf.stack([
        tf.stack([(cos - sin * shear) * scale_y, -sin * scale_x], axis=-1),
        tf.stack([(sin + cos * shear) * scale_y, cos * scale_x], axis=-1),
    ], axis=1)
    return matrices, translation * draws[:, 4:6]


def affine_coordinates(shape, matrices, offsets):
    """The source rows and columns `c + A (p - c) + t` of every output pixel `p`.

    Args:
        shape: `(n, h, w)`.
        matrices, offsets: `(n, 2, 2)` and `(n, 2)`, as `random_affine` returns them.

    Returns:
        Two `(n, h, w)` tensors: rows and columns to sample at.
    """
    h, w = shape[1], shape[2]
    rows, columns = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32),
                                indexing="ij")
    centre_y, centre_x = (tf.cast(h, tf.float32) - 1) / 2, (tf.cast(w, tf.float32) - 1) / 2
    dy, dx = (rows - centre_y)[None], (columns - centre_x)[None]

    def entry(i, j):
        return matrices[:, i, j, None, None]

    y = centre_y + entry(0, 0) * dy + entry(0, 1) * dx + offsets[:, 0, None, None]
    x = centre_x + entry(1, 0) * dy + entry(1, 1) * dx + offsets[:, 1, None, None]
    return y, x


def distort(images, seed, affine=True, elastic=True, alpha=34.0, sigma=4.0):
    """Affine and/or elastic distortions composed into one map, resampled once.

    Keras's `RandomRotation`, `RandomZoom`, `RandomShear` and `RandomTranslation` would each
    resample the image, and so would the elastic field after them: five bilinear resamplings
    blur the digits and make training images unlike the sharp test images. Here the affine map
    (`random_affine`) and the elastic displacement (`elastic_distortion`) are added into one
    field of source positions, sampled once.

    Args:
        images: float `(n, h, w, 1)` images.
        seed: a stateless seed, shape `(2,)`.
        affine: apply `random_affine`'s distortions. Defaults to `True`.
        elastic: apply the elastic field. Defaults to `True`.
        alpha, sigma: the elastic field's, see `elastic_distortion`.

    Returns:
        The distorted images, same shape.
    """
    shape = tf.shape(images)
    n = shape[0]
    affine_seed, elastic_seed = tf.unstack(tf.random.split(seed, 2, alg="philox"))
    if affine:
        maps = random_affine(n, affine_seed)
    else:
        maps = tf.eye(2, batch_shape=[n]), tf.zeros([n, 2])
    y, x = affine_coordinates(shape, *maps)
    if elastic:
        field = _elastic_field(shape, elastic_seed, alpha, sigma)
        y, x = y + field[..., 1], x + field[..., 0]
    return _bilinear(images, y, x)


def _elastic_field(shape, seed, alpha, sigma):
    """Simard's displacement `(n, h, w, 2)` (x, y): uniform noise, Gaussian-smoothed, scaled."""
    field = tf.random.stateless_uniform(tf.stack([shape[0], shape[1], shape[2], 2]), seed,
                                        -1.0, 1.0, alg="philox")
    radius = int(math.ceil(3 * sigma))
    taps = tf.exp(-0.5 * (tf.range(-radius, radius + 1, dtype=tf.float32) / sigma) ** 2)
    taps /= tf.reduce_sum(taps)
    # Separable Gaussian smoothing of both displacement channels (depthwise).
    rows = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, 2, 1])
    columns = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, 2, 1])
    field = tf.nn.depthwise_conv2d(field, rows, [1, 1, 1, 1], "SAME")
    return alpha * tf.nn.depthwise_conv2d(field, columns, [1, 1, 1, 1], "SAME")


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


# tf.data's autotuner stalled `fit` at the start of epochs: LeNet-5's SDLM epochs on this
# pipeline began 0.5-5 s late, their steps taking 5.4 s (TF 2.21, two CPU cores; with autotune
# off, 0.01 s; Keras's own models wait too: benchmarks/tfdata_autotune.py). The batches and
# their order do not depend on it; `AUTOTUNE` then keeps fixed defaults.
_FIXED_PARALLELISM = tf.data.Options()
_FIXED_PARALLELISM.autotune.enabled = False


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
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_FIXED_PARALLELISM)


def _distort(dataset, distortions, seed):
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    affine, elastic = distortions in ("affine", "both"), distortions in ("elastic", "both")

    def apply(batch, batch_seed):
        images, labels = batch
        return distort(images, batch_seed, affine=affine, elastic=elastic), labels

    return tf.data.Dataset.zip((dataset, seeds)).map(apply)
