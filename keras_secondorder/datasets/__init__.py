"""Datasets: MNIST from its IDX files, or from TensorFlow Datasets."""

from keras_secondorder.datasets.mnist import DATA_ENV_VAR, mnist

__all__ = ["DATA_ENV_VAR", "mnist"]
