"""A fitted scikit-learn Gaussian-kernel SVC as a Keras layer, and conv net + SVM as one model."""

import itertools

import keras
import numpy as np
from keras import ops
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from keras_secondorder._keras_compat import svc_dual_coefficients


@keras.saving.register_keras_serializable(package="keras_secondorder")
class SVCLayer(keras.layers.Layer):
    """A standardizer and a Gaussian-kernel one-vs-one SVC, computing what libsvm computes.

    For features `x`, standardized as `u = (x - mean) / scale`, with support vectors `s_k`:

        K_k = exp(-gamma |u - s_k|²)
        d_ij = sum_{k in SV_i} α_k^(j) K_k + sum_{k in SV_j} α_k^(i) K_k + b_ij   (i < j)
        votes_c = #{pairs won by c}: d_ij > 0 votes for i, otherwise for j

    and the prediction is the class with most votes (the first on ties), as `SVC.predict`.
    The output is the vote count per class (`(batch, n_classes)`); `argmax` gives the index into
    `classes`. Computed in float64, as libsvm does.

    Cost: the kernel row against all `S` support vectors, `O(S * F)` per example for `F`
    features, so the number of support vectors (often thousands on MNIST) sets the layer's
    cost and size, not the number of classes.

    Build it with `SVCLayer.from_sklearn(svc, scaler)`; the constructor takes only the sizes
    (what a saved model's config holds; the values are its weights).

    Args:
        num_support_vectors: `S`.
        num_features: `F`.
        num_classes: `C`.
        gamma: the kernel width.
    """

    def __init__(self, num_support_vectors, num_features, num_classes, gamma, **kwargs):
        kwargs.setdefault("dtype", "float64")
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        self.num_support_vectors, self.num_features = int(num_support_vectors), int(num_features)
        self.num_classes, self.gamma = int(num_classes), float(gamma)
        pairs = list(itertools.combinations(range(self.num_classes), 2))
        # The vote goes to i where d_ij > 0, to j otherwise: (P, C) one-hot matrices.
        self._winners = np.eye(self.num_classes)[[i for i, _ in pairs]]
        self._losers = np.eye(self.num_classes)[[j for _, j in pairs]]
        shapes = {
            "support_vectors": (self.num_support_vectors, self.num_features),  # standardized
            "pair_coefficients": (self.num_support_vectors, len(pairs)),  # 0 where not in pair
            "intercepts": (len(pairs),),  # b_ij = -rho_ij
            "mean": (self.num_features,),
            "scale": (self.num_features,),
        }
        for name, shape in shapes.items():
            setattr(self, name, self.add_weight(shape=shape, name=name, trainable=False,
                                                initializer="ones" if name == "scale"
                                                else "zeros"))

    def decision_values(self, features):
        """The pairwise decision values `d_ij`, `(batch, P)`, in sklearn's "ovo" order."""
        u = (ops.cast(features, "float64") - self.mean) / self.scale
        squared = (ops.sum(u * u, axis=-1, keepdims=True) - 2.0 * u @ ops.transpose(
            self.support_vectors) + ops.sum(self.support_vectors ** 2, axis=-1))
        kernel = ops.exp(-self.gamma * ops.maximum(squared, 0.0))
        return kernel @ self.pair_coefficients + self.intercepts

    def call(self, features):
        wins = ops.cast(self.decision_values(features) > 0, "float64")
        return wins @ self._winners + (1.0 - wins) @ self._losers

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    @classmethod
    def from_sklearn(cls, svc, scaler=None, **kwargs):
        """The layer of a fitted `sklearn.svm.SVC` (RBF kernel) and optional `StandardScaler`.

        Raises:
            ValueError: the SVC is not fitted, or its kernel is not "rbf".
        """
        try:
            check_is_fitted(svc, "support_vectors_")
        except NotFittedError as error:
            raise ValueError("The SVC is not fitted yet: call fit (or the pipeline's fit) "
                             "before turning it into a Keras layer.") from error
        if svc.kernel != "rbf":
            raise ValueError(f"Only the Gaussian kernel ('rbf') is supported; the SVC has "
                             f"kernel={svc.kernel!r}.")
        # libsvm's own coefficients and intercepts (sklearn flips the public ones' signs in
        # the binary case): row j-1 of dual_coef holds class i's vectors' coefficients in
        # pair (i, j), row i holds class j's.
        dual, intercepts, gamma = svc_dual_coefficients(svc)
        starts = np.concatenate([[0], np.cumsum(svc.n_support_)])
        num_classes = len(svc.classes_)
        pairs = list(itertools.combinations(range(num_classes), 2))
        coefficients = np.zeros((len(svc.support_vectors_), len(pairs)))
        for p, (i, j) in enumerate(pairs):
            coefficients[starts[i]:starts[i + 1], p] = dual[j - 1, starts[i]:starts[i + 1]]
            coefficients[starts[j]:starts[j + 1], p] = dual[i, starts[j]:starts[j + 1]]
        layer = cls(*svc.support_vectors_.shape, num_classes, gamma, **kwargs)
        layer.support_vectors.assign(svc.support_vectors_)
        layer.pair_coefficients.assign(coefficients)
        layer.intercepts.assign(intercepts)
        if scaler is not None:
            layer.mean.assign(scaler.mean_)
            layer.scale.assign(scaler.scale_)
        return layer

    def get_config(self):
        return {**super().get_config(), "num_support_vectors": self.num_support_vectors,
                "num_features": self.num_features, "num_classes": self.num_classes,
                "gamma": self.gamma}


def svm_model(pipeline, name="conv_net_svm"):
    """One Keras model, features then SVM, from a fitted `svm_pipeline`.

    Its output is the vote count per class; `pipeline.classes_[argmax]` is sklearn's prediction.

    Raises:
        ValueError: the pipeline is not fitted.
    """
    features, scaler, svc = (pipeline.named_steps[step] for step in ("features", "scale", "svc"))
    layer = SVCLayer.from_sklearn(svc, scaler, name="svm")
    extractor = features.extractor_
    return keras.Model(extractor.inputs, layer(extractor.outputs[0]), name=name)
