"""Temperature scaling (Guo et al. 2017) fitted on the validation split: one rule for fine-tunes' logits
(`benchmarks.recipes`) and frozen heads' probabilities (`python -m classify --temperature`).

A head's log-probabilities are its logits up to a constant per image, which a softmax ignores, so
softmax(log p / T) scales any head's probabilities as a fine-tune's softmax(logits / T); the
predicted class never changes.
"""
import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

TINY = 1e-15  # probabilities are clipped here before their log, as scikit-learn's log_loss does


def log_loss_at(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of labels `y` under softmax(logits / temperature)."""
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature with the lowest plain log-loss of softmax(logits / T) on the labels `y`, but no
    sharper than Laplace's rule of succession allows, and that limit never above T = 1.

    Plain log-loss has no minimum when every val image is classified correctly: T shrinks to 0 and
    every prediction becomes certain, so one test error costs tens of nats. n images all right
    support a confidence of (n + 1)/(n + 2), no more: T is kept at or above the temperature fitted
    to labels smoothed that way, unless that one is above 1, where it would make the model less sure
    than it is and worse on val; the plain log-loss at the result is never above the one at T = 1."""
    n, k = logits.shape
    alpha = 1 / (n + 2)
    target = np.full((n, k), alpha / max(k - 1, 1))
    target[np.arange(n), y] = 1 - alpha
    smoothed = _argmin_temperature(lambda t: float(-(target * log_softmax(logits / t, axis=1)).sum(1).mean()))
    plain = _argmin_temperature(lambda t: log_loss_at(logits, y, t))
    return max(plain, min(smoothed, 1.0))


def _argmin_temperature(loss) -> float:
    """The temperature in [e^-5, e^5] that minimises `loss(T)` (searched on log T)."""
    return float(np.exp(minimize_scalar(lambda t: loss(np.exp(t)), bounds=(-5.0, 5.0), method="bounded",
                                        options={"xatol": 1e-4}).x))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 probabilities of float logits (rows sum to 1)."""
    return np.exp(log_softmax(np.asarray(logits, np.float64) / temperature, axis=1))


def temper(p: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities `p` (a row per image) at `temperature`: softmax(log p / T)."""
    return softmax(np.log(np.clip(p, TINY, 1)), temperature)


def val_temperature(p: np.ndarray, y: np.ndarray, classes) -> float:
    """`fit_temperature` of a model's val probabilities `p` (a column per class index, `classify.metrics.proba`) on
    the labels `y`, over the columns of the classes the model knows (`classes`, its `classes_`), as `Tempered`
    applies it: a class without train images adds no zero column to distort the fit, and val images of one
    (which no temperature helps) are left out; 1.0 when none is left."""
    classes = np.asarray(classes, dtype=int)
    known = np.isin(y, classes)
    if not known.any():
        return 1.0
    return fit_temperature(np.log(np.clip(p[known][:, classes], TINY, 1)), np.searchsorted(classes, y[known]))


def temper_columns(p: np.ndarray, classes, temperature: float) -> np.ndarray:
    """Probabilities `p` with a column per class index (`classify.metrics.proba`) at `temperature` over the columns
    of `classes`, the model's: what `Tempered` around that model gives (the other columns stay 0)."""
    classes = np.asarray(classes, dtype=int)
    out = np.zeros_like(p)
    out[:, classes] = temper(p[:, classes], temperature)
    return out


class Tempered(ClassifierMixin, BaseEstimator):
    """`estimator` with its probabilities at `temperature` (`temper`), a temperature chosen on val.

    `around` wraps a head already fitted on train; `fit` fits a clone of `estimator` on new data (a refit on
    train + val) and keeps the temperature."""

    def __init__(self, estimator=None, temperature: float = 1.0):
        self.estimator = estimator
        self.temperature = temperature

    @classmethod
    def around(cls, fitted, temperature: float) -> "Tempered":
        return cls(clone(fitted), temperature)._wrap(fitted)

    def fit(self, X, y, **fit_params):
        return self._wrap(clone(self.estimator).fit(X, y, **fit_params))

    def _wrap(self, fitted) -> "Tempered":
        self.estimator_, self.classes_ = fitted, fitted.classes_
        if hasattr(fitted, "n_features_in_"):
            self.n_features_in_ = fitted.n_features_in_
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        return temper(self.estimator_.predict_proba(X), self.temperature)

    def predict(self, X) -> np.ndarray:
        p = self.predict_proba(X)
        return self.classes_[p.argmax(axis=1)]
