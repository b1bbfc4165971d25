"""The head registry: name → a fresh scikit-learn estimator and the grid swept on validation.

Grids are ordered for warm starts (strong → weak regularisation) and span generic ranges for
standardised features of any backbone; nothing here is tuned to one dataset.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.mlp import TorchMLP
from classify.scaling import ModeratedScaler

C_GRID = [float(c) for c in np.logspace(-4, 2, 13)]  # half-decade steps
# the svm sweeps RBF kernels from this many train images on: below it, the RBF margins of held-out images
# (a handful, far apart in a high-dimensional space) come out on another scale than the refit model's, and the
# temperature fitted to them overshoots; the linear kernel's margins are sound from one image per class
RBF_MIN_TRAIN = 50


def logreg_tol(c: float) -> float:
    """lbfgs's stopping tolerance at `C`: scikit-learn's 1e-4, scaled down by C above C = 1. The penalty's
    gradient shrinks as 1/C, so at a weak penalty a fixed tolerance stops a fit from zero (refit, ensemble
    members) far from the warm-started model the sweep scored, and lets the warm sweep itself skip large C."""
    return 1e-4 * min(1.0, 1.0 / c)


@dataclass(frozen=True)
class Head:
    """A classifier head: `make()` builds it unfitted; `grid(n_train)` lists the points to sweep."""
    name: str
    make: Callable[[], BaseEstimator]
    grid: Callable[[int], list[dict]]
    about: str


def logreg(scaler=None) -> Pipeline:
    """Standardise (moderated variances: sound from a few images), then L2 logistic regression (lbfgs,
    warm-started across the C sweep, each C to its `logreg_tol`)."""
    return Pipeline([("scale", scaler or ModeratedScaler()),
                     ("logreg", LogisticRegression(max_iter=1000, warm_start=True))])


class CoveringFolds:
    """Stratified k-fold whose training side always holds every class (a scikit-learn CV splitter).

    Classes with fewer than k images stay on the training side of every fold and are never held
    out, so each fold's model knows every class even on long-tailed datasets; when no class has k
    images there is nothing to hold out and it yields no fold. Not a partition of the images.
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
        if not len(big):
            return
        folds = StratifiedKFold(self.k, shuffle=True, random_state=self.random_state)
        for train, held in folds.split(big, y[big]):
            yield np.concatenate([big[train], np.flatnonzero(small)]), big[held]


def inverse_temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """The β > 0 whose softmax(β·scores) best fits Platt's smoothed targets: of N images, each gets (N + 1) / (N + 2)
    on its class and the rest spread evenly over the others, so a few images cannot make β infinite."""
    n, k = len(labels), scores.shape[1]
    targets = np.full(scores.shape, 1 / (n + 2) / (k - 1))
    targets[np.arange(n), labels] = (n + 1) / (n + 2)

    def loss(log_beta):
        return -(targets * log_softmax(np.exp(log_beta) * scores, axis=1)).sum(axis=1).mean()
    return float(np.exp(minimize_scalar(loss, bounds=(-10.0, 10.0), method="bounded").x))


class PlattSVM(ClassifierMixin, BaseEstimator):
    """Moderated standardisation → SVC, with temperature-scaled probabilities: softmax(β·scores), one β for
    all classes (Platt's sigmoid, shared), so calibration needs no several images of each class.

    A class's score is its mean one-vs-one SVC margin against the others; predictions are their argmax.
    β is fitted (`inverse_temperature`) to all classes' out-of-fold scores pooled, from CoveringFolds with
    k = min(`folds`, max(2, smallest class count)): stratified k-fold over every image when each class has
    two or more, else the classes with one image stay on every fold's training side and the others are
    held out. When every class has a single image nothing can be held out and β is fitted to the training
    images' own scores. The SVC is then refit on all of train.

    The default kernel is linear: defaults serve fits without validation, i.e. on the fewest images, where an
    RBF kernel (gamma="scale") sees every pair of images in a high-dimensional space at nearly the same
    distance and its out-of-fold margins come out on another scale than the refit model's.
    """

    def __init__(self, kernel="linear", C=0.01, folds=3, random_state=0):
        self.kernel = kernel
        self.C = C
        self.folds = folds
        self.random_state = random_state

    def _svc(self) -> Pipeline:
        return Pipeline([("scale", ModeratedScaler()),
                         ("svc", SVC(kernel=self.kernel, C=self.C, decision_function_shape="ovo"))])

    def _scores(self, svc: Pipeline, X) -> np.ndarray:
        """Each class's mean margin over its one-vs-one SVMs (libsvm's pair order (0,1), (0,2), …)."""
        k = len(svc.classes_)
        dec = svc.decision_function(X)
        dec = -dec[:, None] if k == 2 else dec  # binary: positive favours the second class
        first, second = np.triu_indices(k, 1)
        pairs = np.zeros((len(first), k))
        pairs[np.arange(len(first)), first], pairs[np.arange(len(first)), second] = 1.0, -1.0
        return dec @ pairs / (k - 1)

    def fit(self, X, y):
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.svc_ = self._svc().fit(X, y)
        self.classes_ = self.svc_.classes_
        k = min(self.folds, max(2, np.unique(y, return_counts=True)[1].min()))
        scores, labels = [], []
        for train, held in CoveringFolds(k, self.random_state).split(X, y):
            scores.append(self._scores(self._svc().fit(X[train], y[train]), X[held]))
            labels.append(np.searchsorted(self.classes_, y[held]))
        if not scores:
            scores, labels = [self._scores(self.svc_, X)], [np.searchsorted(self.classes_, y)]
        self.beta_ = inverse_temperature(np.vstack(scores), np.concatenate(labels))
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        return softmax(self.beta_ * self._scores(self.svc_, validate_data(self, X, reset=False)), axis=1)

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[np.argmax(self._scores(self.svc_, validate_data(self, X, reset=False)), axis=1)]


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
    Head("logreg", logreg, lambda n: [{"logreg__C": c, "logreg__tol": logreg_tol(c)} for c in C_GRID],
         "logistic regression on standardised features, C swept on val"),
    Head("mlp", TorchMLP, lambda n: [{"lr": lr} for lr in (1e-3, 3e-4, 1e-4)],
         "Linear→512→ReLU→Dropout→Linear (torch, CPU), learning rate swept, early-stopped on val"),
    Head("svm", PlattSVM, lambda n: [{"kernel": "linear", "C": c} for c in (1e-3, 1e-2, 1e-1)]
         + [{"kernel": "rbf", "C": c} for c in (0.3, 1.0, 3.0, 10.0) if n >= RBF_MIN_TRAIN],
         f"SVM, linear and (from {RBF_MIN_TRAIN} train images) RBF kernels, C swept on val, temperature-scaled "
         "probabilities"),
    Head("knn", SmoothedKNN, lambda n: [{"n_neighbors": k} for k in (1, 3, 5, 9, 15, 25, 45, 75) if k <= n],
         "k-nearest neighbours, cosine distance, k swept on val, vote shares smoothed by one pseudo-vote"),
]}
ENSEMBLES = ("avg", "stack", "concat")
