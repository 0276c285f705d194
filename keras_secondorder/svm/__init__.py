"""A Gaussian-kernel SVM on the features of a chopped Keras model, and the SVM as a Keras layer."""

from keras_secondorder.svm.chop import chop
from keras_secondorder.svm.features import KerasFeatures, svm_pipeline
from keras_secondorder.svm.layer import SVCLayer, svm_model

__all__ = ["KerasFeatures", "SVCLayer", "chop", "svm_model", "svm_pipeline"]
