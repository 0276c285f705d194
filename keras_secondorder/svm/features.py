"""A scikit-learn transformer from a Keras model's chopped features, and the SVM pipeline."""

from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from keras_secondorder.svm.chop import chop


class KerasFeatures(TransformerMixin, BaseEstimator):
    """Transforms inputs into the features of a Keras model chopped at `layer`.

    Usable as the first step of an sklearn `Pipeline`, so that `GridSearchCV` can choose the
    SVM's `C` and `gamma` on top of fixed conv-net features.

    Args:
        model: a trained functional or Sequential Keras model.
        layer: the layer whose outputs are the features. Defaults to `None`: the one before
            the classifier.
        batch_size: batch size of the forward passes. Defaults to `256`.

    Attributes:
        extractor_: the chopped `keras.Model`, sharing the model's weights (set by `fit`).
        n_features_out_: the number of features.
    """

    def __init__(self, model, layer=None, batch_size=256):
        self.model = model
        self.layer = layer
        self.batch_size = batch_size

    def fit(self, x, y=None):
        """Chops the model; returns self."""
        del x, y  # The features are the model's: nothing is learned from the data.
        self.extractor_ = chop(self.model, self.layer)
        self.n_features_out_ = int(self.extractor_.output.shape[-1])
        return self

    def transform(self, x):
        """The features of `x`, a float32 array of shape `(n, n_features_out_)`."""
        check_is_fitted(self, "extractor_")
        features = self.extractor_.predict(x, batch_size=self.batch_size, verbose=0)
        return features.reshape(len(features), -1)


def svm_pipeline(model, layer=None, C=10.0, gamma="scale", batch_size=256):
    """`Pipeline([features, standardize, Gaussian-kernel SVC])` on a chopped Keras model.

    Tune it with `GridSearchCV(pipeline, {"svc__C": [...], "svc__gamma": [...]})`; turn the
    fitted pipeline into one Keras model with `svm_model(pipeline)`.

    Args:
        model: a trained functional or Sequential Keras model.
        layer: where to chop. Defaults to `None`: before the classifier.
        C: the SVM's margin penalty. Defaults to `10.0`.
        gamma: the Gaussian kernel's `exp(-gamma |x - x'|²)` width, or `"scale"`
            (`1 / (n_features * X.var())`, sklearn's default). Defaults to `"scale"`.
        batch_size: batch size of the forward passes. Defaults to `256`.

    Returns:
        An unfitted sklearn `Pipeline` with steps `features`, `scale` and `svc`.
    """
    return Pipeline([
        ("features", KerasFeatures(model, layer=layer, batch_size=batch_size)),
        ("scale", StandardScaler()),
        ("svc", SVC(kernel="rbf", C=C, gamma=gamma, decision_function_shape="ovo")),
    ])
