"""MNIST from the four IDX files of the original distribution, or from TensorFlow Datasets."""

import gzip
import os
import pathlib

import numpy as np
import tensorflow as tf

from keras_secondorder._validation import positive_int

DATA_ENV_VAR = "KERAS_SECONDORDER_DATA"

_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# IDX magic numbers: 0x0000 0x08 (unsigned byte) then the number of dimensions.
_MAGIC = {3: 0x00000803, 1: 0x00000801}


def mnist(data_dir=None):
    """Loads MNIST as numpy arrays, like `keras.datasets.mnist.load_data()`.

    The IDX files are looked up in `data_dir`, else in the directory named by the environment
    variable `KERAS_SECONDORDER_DATA`; either may be the directory holding the files or a parent
    holding them in `mnist/`. Each file may be gzipped (`.gz`) or raw, and named
    `train-images-idx3-ubyte` or `train-images.idx3-ubyte`. When no directory is given,
    `tfds.load("mnist")` is used (it downloads the data on first use).

    Args:
        data_dir: directory with the four MNIST IDX files, or a parent of `mnist/`.
            Defaults to `None`: the environment variable, then TensorFlow Datasets.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: images as `uint8` arrays of shape
        `(n, 28, 28)` with values 0-255 (unscaled), labels as `uint8` arrays of shape `(n,)`;
        60,000 training and 10,000 test examples.

    Raises:
        FileNotFoundError: a directory was given but does not hold the four files.
        RuntimeError: no directory was given and TensorFlow Datasets could not load MNIST.
    """
    directory = data_dir if data_dir is not None else os.environ.get(DATA_ENV_VAR) or None
    if directory is not None:
        parameter = "data_dir" if data_dir is not None else DATA_ENV_VAR
        return _load_idx_directory(_find_idx_directory(directory, parameter))
    return _load_tfds()


def downscale(images, size=10):
    """MNIST images averaged down to `size` x `size` pixels in [0, 1], flat.

    Dauphin et al.'s small networks read MNIST at 10x10: each output pixel is the area-weighted
    mean of the input pixels it covers (`tf.image.resize(method="area")`), so an integer
    ratio (28 -> 14, 28 -> 7) gives the plain block means. The resize computes in float32;
    the result is returned as float64 for float64 models (float32's precision, 1e-7).

    Args:
        images: `uint8` images of shape `(n, height, width)`, values 0-255 (as `mnist` returns).
        size: the side of the downscaled images. Defaults to `10`.

    Returns:
        A float64 array of shape `(n, size * size)`, exact to float32's rounding.
    """
    size = positive_int(size, "size")
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"`images` must have shape (n, height, width); received shape "
                         f"{images.shape}. Pass MNIST's images as `mnist()` returns them.")
    resized = tf.image.resize(images[..., None].astype("float64") / 255.0, (size, size),
                              method="area")
    return tf.reshape(resized, [len(images), size * size]).numpy()


def _find_idx_directory(directory, parameter):
    directory = pathlib.Path(directory).expanduser()
    for candidate in (directory, directory / "mnist"):
        if all(_idx_path(candidate, stem) is not None for stem in _FILES.values()):
            return candidate
    raise FileNotFoundError(
        f"{parameter}={str(directory)!r} does not hold the MNIST IDX files "
        f"({', '.join(_FILES.values())}, gzipped or raw), neither directly nor in 'mnist/'. "
        f"Point {parameter} at the directory that holds them."
    )


def _idx_path(directory, stem):
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_idx(path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if ndim not in _MAGIC or magic != _MAGIC[ndim]:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic number {magic:#010x}).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} bytes.")
    return array.reshape(shape)


def _load_idx_directory(directory):
    arrays = {key: _read_idx(_idx_path(directory, stem)) for key, stem in _FILES.items()}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _load_tfds():
    try:
        import tensorflow_datasets as tfds

        splits = tfds.as_numpy(tfds.load("mnist", split=["train", "test"], batch_size=-1,
                                         as_supervised=True))
    except Exception as error:  # any failure: no network, no tfds data dir, ...
        raise RuntimeError(
            "Could not load MNIST: no IDX directory was given and tfds.load('mnist') failed "
            f"({type(error).__name__}: {error}). Put the four MNIST IDX files "
            f"({', '.join(_FILES.values())}, gzipped or raw) in a directory and pass it as "
            f"`data_dir=...` or set the environment variable {DATA_ENV_VAR}."
        ) from error
    (x_train, y_train), (x_test, y_test) = splits
    return (
        (x_train[..., 0].astype(np.uint8), y_train.astype(np.uint8)),
        (x_test[..., 0].astype(np.uint8), y_test.astype(np.uint8)),
    )
