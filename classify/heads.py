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
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from classify.mlp import TorchMLP

C_GRID = [float(c) for c in np.logspace(-4, 2, 13)]  # half-decade steps
MIN_PER_CLASS = 3  # the SVM's Platt calibration uses 3-fold cross-validation


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


def _svm() -> CalibratedClassifierCV:
    svc = Pipeline([("scale", StandardScaler()), ("svc", SVC())])
    return CalibratedClassifierCV(svc, method="sigmoid", cv=MIN_PER_CLASS, ensemble=False)


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
