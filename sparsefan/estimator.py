"""A scikit-learn classifier over the builders and the trainer.

Built on scikit-learn's own base classes and validation (``BaseEstimator``,
``ClassifierMixin``, ``validate_data``), so it passes ``check_estimator`` and works with
``clone``, ``Pipeline`` and ``GridSearchCV``. This is the one module of the package that
imports scikit-learn: ``import sparsefan`` does not import it, and scikit-learn stays optional.
"""
from __future__ import annotations

import dataclasses

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("sparsefan.estimator needs scikit-learn >= 1.6 "
                      "(pip install scikit-learn)") from exc

from sparsefan import builders
from sparsefan.train import TrainConfig, as_float_inputs, train

# The training options' defaults are the trainer's (one default learning rate for the
# trainer, the CLI and the estimator).
_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


class FanInClassifier(ClassifierMixin, BaseEstimator):
    """Fixed fan-in network classifier.

    ``X`` is (n_samples, n_features), or (n_samples, *input_shape) images (flattened). uint8
    inputs are images and are scaled to [0, 1] (as everywhere in sparsefan); other inputs are
    converted to float32 as they are. Sparse input is not supported.

    Parameters
    ----------
    architecture : "direct", "hierarchy", "partition_ensemble" or "dense_mlp"
    input_shape : tuple, optional
        Shape of one example, e.g. (28, 28). Default: the shape of X's examples when X has
        more than two dimensions, else (s, s) when n_features is a perfect square s*s, else
        (n_features,) (then gaussian wiring falls back to random wiring).
    fan_in, n_units, levels, hidden, wiring, aggregate, activation : builder options (None =
        the builder's default; ``sparsefan.builders.build``)
    epochs, batch_size, lr, optimizer, weight_decay, validation, patience : training options
        (defaults: :class:`sparsefan.train.TrainConfig`'s)
    l2_epsilon, l0_radius : certified training (``TrainConfig``; mean_logits networks)
    seed : int
    n_threads : int or None
    verbose : bool — progress bar and per-epoch lines
    """

    def __init__(self, architecture="direct", input_shape=None, fan_in=None, n_units=None,
                 levels=2, hidden=None, wiring="gaussian", aggregate=None,
                 epochs=_TRAIN_DEFAULTS["epochs"], batch_size=_TRAIN_DEFAULTS["batch_size"],
                 lr=_TRAIN_DEFAULTS["lr"], optimizer=_TRAIN_DEFAULTS["optimizer"],
                 weight_decay=_TRAIN_DEFAULTS["weight_decay"],
                 validation=_TRAIN_DEFAULTS["validation"], patience=_TRAIN_DEFAULTS["patience"],
                 seed=_TRAIN_DEFAULTS["seed"], n_threads=None, verbose=False, activation="relu",
                 l2_epsilon=_TRAIN_DEFAULTS["l2_epsilon"],
                 l0_radius=_TRAIN_DEFAULTS["l0_radius"]):
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

    # -- validation ----------------------------------------------------------------------------

    # uint8 passes through (images, rescaled by as_float_inputs); other dtypes become float32
    _DTYPES = [np.float32, np.float64, np.uint8]

    def _validate(self, X, y=None, reset=True):
        """scikit-learn's checks (2-D, dense, real, finite, ``n_features_in_``), then the
        package's inputs: uint8 images scaled to [0, 1], everything else float32. Returns x, or
        (x, y) when fitting."""
        if getattr(X, "ndim", 0) > 2:  # images: one flattened row per example
            X = np.asarray(X).reshape(len(X), -1)
        if not reset:
            return as_float_inputs(validate_data(self, X, reset=False, dtype=self._DTYPES))
        X, y = validate_data(self, X, y, dtype=self._DTYPES)
        return as_float_inputs(X), y

    # -- fitting -------------------------------------------------------------------------------

    def _shape(self, X):
        if self.input_shape is not None:
            return tuple(self.input_shape)
        if getattr(X, "ndim", 0) > 2:
            return tuple(np.shape(X)[1:])
        n_features = self.n_features_in_
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
        """Build the network for X's shape and y's classes, and train it; returns self."""
        x, y = self._validate(X, y)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y must hold at least two classes, got {len(self.classes_)} "
                             f"class ({self.classes_[0]!r})")
        shape = self._shape(X)
        if int(np.prod(shape)) != self.n_features_in_:
            raise ValueError(f"input_shape {shape} does not hold the {self.n_features_in_} "
                             f"features of X")
        self.network_ = self._build(shape, len(self.classes_))
        config = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                             optimizer=self.optimizer, weight_decay=self.weight_decay,
                             validation=self.validation, patience=self.patience, seed=self.seed,
                             n_threads=self.n_threads, l2_epsilon=self.l2_epsilon,
                             l0_radius=self.l0_radius)
        self.history_ = train(self.network_, x, y_idx.astype(np.int64), config,
                              progress=self.verbose,
                              log=print if self.verbose else (lambda s: None)).history
        return self

    # -- prediction ----------------------------------------------------------------------------

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes) in the order of ``classes_``."""
        check_is_fitted(self)
        return self.network_.predict_proba(self._validate(X, reset=False), self.n_threads)

    def predict(self, X):
        """Predicted labels (values of ``classes_``)."""
        check_is_fitted(self)
        x = self._validate(X, reset=False)
        return self.classes_[self.network_.predict(x, self.n_threads)]
