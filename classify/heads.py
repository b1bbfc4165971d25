"""The head registry: name → a fresh scikit-learn estimator and the grid swept on validation.

Grids are ordered for warm starts (strong → weak regularisation) and span generic ranges for
standardised features of any backbone; nothing here is tuned to one dataset.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

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
        if len(big) < self.k:  # every class is tiny: plain folds
            yield from KFold(self.k, shuffle=True, random_state=self.random_state).split(y)
            return
        folds = StratifiedKFold(self.k, shuffle=True, random_state=self.random_state)
        for train, held in folds.split(big, y[big]):
            yield np.concatenate([big[train], np.flatnonzero(small)]), big[held]


def _svm() -> CalibratedClassifierCV:
    """Standardise, SVC; Platt-scaled on held-out folds, one (SVC, calibrator) pair per fold."""
    svc = Pipeline([("scale", StandardScaler()), ("svc", SVC())])
    return CalibratedClassifierCV(svc, method="sigmoid", cv=CoveringFolds())


HEADS = {h.name: h for h in [
    Head("logreg", logreg, lambda n: [{"logreg__C": c} for c in C_GRID],
         "logistic regression on standardised features, C swept on val"),
    Head("mlp", TorchMLP, lambda n: [{"lr": lr} for lr in (1e-3, 3e-4, 1e-4)],
         "Linear→512→ReLU→Dropout→Linear (torch, CPU), learning rate swept, early-stopped on val"),
    Head("svm", _svm, lambda n: [{"estimator__svc__kernel": "linear", "estimator__svc__C": c} for c in (1e-3, 1e-2, 1e-1)]
         + [{"estimator__svc__kernel": "rbf", "estimator__svc__C": c} for c in (0.3, 1.0, 3.0, 10.0)],
         "SVM, linear and RBF kernels, C swept on val, Platt-calibrated probabilities"),
    Head("knn", lambda: KNeighborsClassifier(metric="cosine", algorithm="brute"),
         lambda n: [{"n_neighbors": k} for k in (1, 3, 5, 9, 15, 25, 45, 75) if k <= n],
         "k-nearest neighbours, cosine distance, k swept on val"),
]}
ENSEMBLES = ("avg", "stack", "concat")
