"""Datasets: MNIST from its IDX files or TensorFlow Datasets, downscaled, or as LeNet-5 reads."""

from keras_secondorder.datasets.lenet import (
    BACKGROUND,
    FOREGROUND,
    affine_coordinates,
    distort,
    elastic_distortion,
    lenet_preprocess,
    mnist_dataset,
    random_affine,
)
from keras_secondorder.datasets.mnist import DATA_ENV_VAR, downscale, mnist

__all__ = [
    "BACKGROUND",
    "DATA_ENV_VAR",
    "FOREGROUND",
    "affine_coordinates",
    "distort",
    "downscale",
    "elastic_distortion",
    "lenet_preprocess",
    "mnist",
    "mnist_dataset",
    "random_affine",
]
