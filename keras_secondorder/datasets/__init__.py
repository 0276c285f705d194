"""Datasets: MNIST from its IDX files or TensorFlow Datasets, and as LeNet-5 reads it."""

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
from keras_secondorder.datasets.mnist import DATA_ENV_VAR, mnist

__all__ = [
    "BACKGROUND",
    "DATA_ENV_VAR",
    "FOREGROUND",
    "affine_coordinates",
    "distort",
    "elastic_distortion",
    "lenet_preprocess",
    "mnist",
    "mnist_dataset",
    "random_affine",
]
