"""Models of the classic experiments: LeNet-5, LeNet-6 and the MNIST deep autoencoder."""

from keras_secondorder.models.autoencoder import SparseInitializer, deep_autoencoder
from keras_secondorder.models.lenet import (
    C3_CONNECTIONS,
    ConnectionTableConv2D,
    TrainableSubsampling,
    lenet5,
    lenet6,
    scaled_tanh,
)

__all__ = [
    "C3_CONNECTIONS",
    "ConnectionTableConv2D",
    "SparseInitializer",
    "TrainableSubsampling",
    "deep_autoencoder",
    "lenet5",
    "lenet6",
    "scaled_tanh",
]
