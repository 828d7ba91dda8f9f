"""A scikit-learn-style classifier over the builders and the trainer.

Follows scikit-learn's estimator conventions (constructor stores parameters unchanged;
``get_params``/``set_params``; ``fit`` returns self; fitted attributes end in ``_``) so it
works with ``sklearn.base.clone``, ``Pipeline`` and ``GridSearchCV`` — without importing
scikit-learn, which stays optional.
"""
from __future__ import annotations

import inspect

import numpy as np

from sparsefan import builders
from sparsefan.train import TrainConfig, as_float_inputs, train


class FanInClassifier:
    """Fixed fan-in network classifier.

    Parameters
    ----------
    architecture : "direct", "hierarchy", "partition_ensemble" or "dense_mlp"
    input_shape : tuple, optional
        Shape of one example, e.g. (28, 28). Default: (s, s) when n_features is a perfect
        square s*s, else (n_features,) (then gaussian wiring is unavailable).
    fan_in, n_units, levels, hidden, wiring, aggregate, activation : builder options (None =
        the builder's default; ``sparsefan.builders.build``)
    epochs, batch_size, lr, optimizer, weight_decay, validation, patience : training options
    l2_epsilon, l0_radius : certified training (``TrainConfig``; mean_logits networks)
    seed : int
    n_threads : int or None
    verbose : bool — progress bar and per-epoch lines
    """

    _estimator_type = "classifier"

    def __init__(self, architecture="direct", input_shape=None, fan_in=None, n_units=None,
                 levels=2, hidden=None, wiring="gaussian", aggregate=None, epochs=10,
                 batch_size=128, lr=1e-2, optimizer="adam", weight_decay=0.0, validation=0.0,
                 patience=None, seed=0, n_threads=None, verbose=False, activation="relu",
                 l2_epsilon=0.0, l0_radius=0):
        self.architecture = architecture
        self.input_shape = input_shape
        self.fan_in = fan_in
        self.n_units = n_units
        self.levels = levels
        self.hidden = hidden
        self.wiring = wiring
        self.aggregate = aggregate
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.validation = validation
        self.patience = patience
        self.seed = seed
        self.n_threads = n_threads
        self.verbose = verbose
        self.activation = activation
        self.l2_epsilon = l2_epsilon
        self.l0_radius = l0_radius

    # -- scikit-learn protocol -----------------------------------------------------------------

    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p for p in sig.parameters if p != "self")

    def get_params(self, deep=True):
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        valid = set(self._get_param_names())
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for FanInClassifier; valid: "
                                 f"{sorted(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self):
        changed = {k: v for k, v in self.get_params().items()
                   if v != inspect.signature(self.__init__).parameters[k].default}
        return "FanInClassifier(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags())

    # -- fitting -------------------------------------------------------------------------------

    def _shape(self, n_features):
        if self.input_shape is not None:
            return tuple(self.input_shape)
        s = int(round(np.sqrt(n_features)))
        return (s, s) if s * s == n_features else (n_features,)

    def _build(self, shape, n_classes):
        wiring = self.wiring if len(shape) > 1 else ("random" if self.wiring == "gaussian"
                                                      else self.wiring)
        return builders.build(self.architecture, shape, n_classes, fan_in=self.fan_in,
                              n_units=self.n_units, levels=self.levels, hidden=self.hidden,
                              wiring=wiring, aggregate=self.aggregate,
                              activation=self.activation, seed=self.seed)

    def fit(self, X, y):
        X = as_float_inputs(np.asarray(X))
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"y must be one-dimensional with {len(X)} labels, got {y.shape}")
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("y must hold at least two classes")
        self.n_features_in_ = X.shape[1]
        self.network_ = self._build(self._shape(X.shape[1]), len(self.classes_))
        config = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                             optimizer=self.optimizer, weight_decay=self.weight_decay,
                             validation=self.validation, patience=self.patience, seed=self.seed,
                             n_threads=self.n_threads, l2_epsilon=self.l2_epsilon,
                             l0_radius=self.l0_radius)
        self.history_ = train(self.network_, X, y_idx.astype(np.int64), config,
                              progress=self.verbose,
                              log=print if self.verbose else (lambda s: None)).history
        return self

    def _check_fitted(self, X):
        if not hasattr(self, "network_"):
            raise ValueError("this FanInClassifier is not fitted yet: call fit first")
        X = as_float_inputs(np.asarray(X))
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the classifier was fitted with "
                             f"{self.n_features_in_}")
        return X

    def predict_proba(self, X):
        return self.network_.predict_proba(self._check_fitted(X), self.n_threads)

    def predict(self, X):
        X = self._check_fitted(X)
        return self.classes_[self.network_.predict(X, self.n_threads)]

    def score(self, X, y, sample_weight=None):
        pred = self.predict(X)
        return float(np.average(pred == np.asarray(y), weights=sample_weight))
