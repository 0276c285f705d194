"""The MNIST loader: IDX files (gzipped or raw, either naming, either directory) and the errors."""

import gzip
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_secondorder.datasets import DATA_ENV_VAR, downscale, mnist

SIZES = {"train": 5, "t10k": 3}


def write_idx(directory, gzipped=True, dotted=False):
    """Writes small IDX files whose pixels and labels encode their positions; returns them."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, count in SIZES.items():
        images = (np.arange(count * 28 * 28) % 251).astype(np.uint8).reshape(count, 28, 28)
        labels = (np.arange(count) % 10).astype(np.uint8)
        arrays[prefix] = (images, labels)
        for kind, array, magic in (("images-idx3", images, 0x803), ("labels-idx1", labels, 0x801)):
            header = magic.to_bytes(4, "big") + b"".join(
                d.to_bytes(4, "big") for d in array.shape)
            name = f"{prefix}-{kind}-ubyte"
            if dotted:
                name = name.replace("-idx", ".idx")
            data = header + array.tobytes()
            if gzipped:
                (directory / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
    return arrays


def check(loaded, arrays):
    (x_train, y_train), (x_test, y_test) = loaded
    for (images, labels), (expected_images, expected_labels) in (
            ((x_train, y_train), arrays["train"]), ((x_test, y_test), arrays["t10k"])):
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


@pytest.mark.parametrize("gzipped", [True, False])
@pytest.mark.parametrize("dotted", [True, False])
def test_reads_idx_files(tmp_path, gzipped, dotted):
    arrays = write_idx(tmp_path, gzipped=gzipped, dotted=dotted)
    check(mnist(tmp_path), arrays)


def test_parent_directory_and_environment_variable(tmp_path, monkeypatch):
    arrays = write_idx(tmp_path / "mnist")
    check(mnist(tmp_path), arrays)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    check(mnist(), arrays)


def test_missing_files_name_the_parameter(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="data_dir=.* does not hold the MNIST IDX files"):
        mnist(tmp_path)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{DATA_ENV_VAR}=.*Point {DATA_ENV_VAR}"):
        mnist()


def test_corrupt_file(tmp_path):
    write_idx(tmp_path, gzipped=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        mnist(tmp_path)


def test_tfds_failure_says_how_to_provide_files(monkeypatch):
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)

    class Failing:
        @staticmethod
        def load(*args, **kwargs):
            raise ConnectionError("no network")

        @staticmethod
        def as_numpy(data):
            return data

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", Failing)
    with pytest.raises(RuntimeError, match=r"tfds.load\('mnist'\) failed \(ConnectionError: no "
                                           rf"network\).*data_dir=.*{DATA_ENV_VAR}"):
        mnist()


def test_tfds_fallback_has_what_tfds_load_imports(tmp_path):
    # tfds.load reaches a builder's code path before downloading; it imports importlib_resources,
    # which tfds does not declare (tensorflow/datasets#11212). No network needed.
    import tensorflow_datasets as tfds

    code_path = tfds.builder("mnist", data_dir=str(tmp_path)).code_path
    assert str(code_path).endswith("mnist.py")


@pytest.mark.skipif(not os.environ.get(DATA_ENV_VAR), reason=f"{DATA_ENV_VAR} is not set")
def test_real_mnist_files():
    (x_train, y_train), (x_test, y_test) = mnist()
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    # The md5 of the uncompressed original train-images file, header included.
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in x_train.shape)
    assert hashlib.md5(header + x_train.tobytes()).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    assert np.bincount(y_train).tolist()[:3] == [5923, 6742, 5958]


def test_import_without_tensorflow_names_the_extra():
    code = "import sys; sys.modules['tensorflow'] = None; import keras_secondorder"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "keras-secondorder[cpu]" in result.stderr and "keras-secondorder[gpu]" in result.stderr


@pytest.mark.parametrize("size", [14, 7, 4])
def test_downscale_is_the_block_mean_at_an_integer_ratio(size):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    block = 28 // size
    expected = images.reshape(3, size, block, size, block).mean(axis=(2, 4)) / 255.0
    # The area resize computes in float32: equal to float32's rounding of the mean.
    np.testing.assert_allclose(downscale(images, size), expected.reshape(3, -1), rtol=3e-7)


def test_downscale_refuses_flat_images():
    with pytest.raises(ValueError, match=r"`images` must have shape \(n, height, width\)"):
        downscale(np.zeros((3, 784), np.uint8))
