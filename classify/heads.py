"""The head registry: name → a fresh scikit-learn estimator and the grid swept on validation.

Grids are ordered for warm starts (strong → weak regularisation) and span generic ranges for
standardised features of any backbone; nothing here is tuned to one dataset.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.mlp import TorchMLP

C_GRID = [float(c) for c in np.logspace(-4, 2, 13)]  # half-decade steps


@dataclass(frozen=True)
class Head:
    """A classifier head: `make()` builds it unfitted; `grid(n_train)` lists the points to sweep."""
    name: str
    make: Callable[[], BaseEstimator]
    grid: Callable[[int], list[dict]]
    about: str


def logreg(scaler=None) -> Pipeline:
    """Standardise, then L2 logistic regression (lbfgs, warm-started across the C sweep)."""
    return Pipeline([("scale", scaler or StandardScaler()),
                     ("logreg", LogisticRegression(max_iter=1000, warm_start=True))])


class CoveringFolds:
    """Stratified k-fold whose training side always holds every class (a scikit-learn CV splitter).

    Classes with fewer than k images stay on the training side of every fold and are never held
    out, so each fold's model knows every class even on long-tailed datasets. It has no
    `n_splits` attribute on purpose: CalibratedClassifierCV would then demand k images per class.
    Not a partition, so only for calibration with one model per fold (ensemble=True).
    """

    def __init__(self, k=3, random_state=0):
        self.k = k
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None):
        return self.k

    def split(self, X, y, groups=None):
        y = np.asarray(y)
        values, counts = np.unique(y, return_counts=True)
        small = np.isin(y, values[counts < self.k])
        big = np.flatnonzero(~small)
        if len(big) < self.k:  # every class is that small: nothing to hold out, calibrate in-sample
            yield np.arange(len(y)), np.arange(len(y))
            return
        folds = StratifiedKFold(self.k, shuffle=True, random_state=self.random_state)
        for train, held in folds.split(big, y[big]):
            yield np.concatenate([big[train], np.flatnonzero(small)]), big[held]


class PlattSVM(ClassifierMixin, BaseEstimator):
    """Standardise → SVC, with Platt-scaled probabilities from `folds`-fold cross-validation.

    Normally the calibration is fitted on held-out decision values and the SVC refit on all of
    train (what SVC(probability=True), deprecated in scikit-learn 1.9, did). When a class has fewer
    than `folds` training images, CoveringFolds keeps it in every fold's training side and the
    folds' (SVC, calibrator) pairs are averaged instead. The first is preferred: on dogs-vs-cats its
    validation log-loss was lower, at about the same cost.
    """

    def __init__(self, kernel="rbf", C=1.0, folds=3, random_state=0):
        self.kernel = kernel
        self.C = C
        self.folds = folds
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        svc = Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel=self.kernel, C=self.C))])
        tail = np.unique(y, return_counts=True)[1].min() < self.folds
        cv = (CoveringFolds(self.folds, self.random_state) if tail
              else StratifiedKFold(self.folds, shuffle=True, random_state=self.random_state))
        self.calibrated_ = CalibratedClassifierCV(svc, method="sigmoid", cv=cv, ensemble=tail).fit(X, y)
        self.classes_ = self.calibrated_.classes_
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        return self.calibrated_.predict_proba(validate_data(self, X, reset=False))

    def predict(self, X):
        p = self.predict_proba(X)
        return self.classes_[np.argmax(p, axis=1)]


class SmoothedKNN(ClassifierMixin, BaseEstimator):
    """Cosine k-nearest neighbours whose probabilities are the vote shares plus one pseudo-vote
    spread evenly over the classes: p = (votes + 1/C) / (k + 1). Predictions are the plain kNN's.

    Raw vote shares are exactly 0 or 1 whenever the k neighbours agree: a validation split without
    errors then scores log-loss 0 at k = 1 and wins the sweep, and one test error costs tens of nats
    (its probability, 0, is clipped to machine epsilon).
    """

    def __init__(self, n_neighbors=5):
        self.n_neighbors = n_neighbors

    def fit(self, X, y):
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.knn_ = KNeighborsClassifier(n_neighbors=self.n_neighbors, metric="cosine", algorithm="brute").fit(X, y)
        self.classes_ = self.knn_.classes_
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        votes = self.knn_.predict_proba(validate_data(self, X, reset=False)) * self.n_neighbors
        return (votes + 1 / len(self.classes_)) / (self.n_neighbors + 1)

    def predict(self, X):
        check_is_fitted(self)
        return self.knn_.predict(validate_data(self, X, reset=False))


HEADS = {h.name: h for h in [
    Head("logreg", logreg, lambda n: [{"logreg__C": c} for c in C_GRID],
         "logistic regression on standardised features, C swept on val"),
    Head("mlp", TorchMLP, lambda n: [{"lr": lr} for lr in (1e-3, 3e-4, 1e-4)],
         "Linear→512→ReLU→Dropout→Linear (torch, CPU), learning rate swept, early-stopped on val"),
    Head("svm", PlattSVM, lambda n: [{"kernel": "linear", "C": c} for c in (1e-3, 1e-2, 1e-1)]
         + [{"kernel": "rbf", "C": c} for c in (0.3, 1.0, 3.0, 10.0)],
         "SVM, linear and RBF kernels, C swept on val, Platt-calibrated probabilities"),
    Head("knn", SmoothedKNN, lambda n: [{"n_neighbors": k} for k in (1, 3, 5, 9, 15, 25, 45, 75) if k <= n],
         "k-nearest neighbours, cosine distance, k swept on val, vote shares smoothed by one pseudo-vote"),
]}
ENSEMBLES = ("avg", "stack", "concat")
