"""Models of the classic experiments: LeNet-5 and the MNIST deep autoencoder."""

from keras_secondorder.models.autoencoder import deep_autoencoder
from keras_secondorder.models.lenet import (
    C3_CONNECTIONS,
    ConnectionTableConv2D,
    TrainableSubsampling,
    lenet5,
    scaled_tanh,
)

__all__ = [
    "C3_CONNECTIONS",
    "ConnectionTableConv2D",
    "TrainableSubsampling",
    "deep_autoencoder",
    "lenet5",
    "scaled_tanh",
]
