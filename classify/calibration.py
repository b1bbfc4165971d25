"""Temperature scaling (Guo et al. 2017) fitted on the validation split: one rule for fine-tunes' logits
(`benchmarks.recipes`) and frozen heads' probabilities (`python -m classify --temperature`).

A head's log-probabilities are its logits up to a constant per image, which a softmax ignores, so
softmax(log p / T) scales any head's probabilities as a fine-tune's softmax(logits / T); the
predicted class never changes.
"""
import numpy as np
from scipy.optimize import brentq
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
    than it is and worse on val; the plain log-loss at the result is never above the one at T = 1.
    Logits that are not all finite (a diverged model) get 1."""
    z = np.asarray(logits, np.float64)
    n, k = z.shape
    if k < 2 or not np.isfinite(z).all():  # nothing to scale; or a diverged model's logits
        return 1.0
    on_label = z[np.arange(n), y].mean()
    argmin = _minimiser(z)
    plain = argmin(on_label)
    if plain >= 1:  # the smoothed limit, capped at 1, cannot raise it
        return plain
    alpha = 1 / (n + 2)  # smoothed labels: 1 - alpha on the label, alpha / (k - 1) on each other class
    smoothed = argmin((1 - alpha) * on_label + alpha / (k - 1) * (z.sum(1).mean() - on_label))
    return max(plain, min(smoothed, 1.0))


def _minimiser(z: np.ndarray):
    """`argmin(target)`: the T in [e^-5, e^5] minimising mean(logsumexp(z / T)) - target / T, the cross-entropy of
    softmax(z / T) against labels whose mean logit is `target` (the labels' own logits: the log-loss).

    The loss is convex in β = 1/T, its slope mean(E_softmax(βz)[z]) - target increasing in β: its root, found
    by bracketing on log β, is the minimum (a bound when the slope keeps its sign). Each evaluation exponentiates
    in float32 (4 times faster than float64 here), into buffers made once, and sums in float64."""
    top = z.max(axis=1, keepdims=True)
    shifted = (z - top).astype(np.float32)  # ≤ 0, each row's largest 0: exp never overflows, a row sums to ≥ 1
    e, weighted = np.empty_like(shifted), np.empty_like(shifted)

    def mean_logit(log_beta: float) -> float:
        np.exp(np.multiply(shifted, np.float32(np.exp(log_beta)), out=e), out=e)
        np.multiply(e, shifted, out=weighted)
        return float(top.mean() + (weighted.sum(1, dtype=np.float64) / e.sum(1, dtype=np.float64)).mean())

    def argmin(target: float) -> float:
        def slope(log_beta: float) -> float:
            return mean_logit(log_beta) - target
        if slope(-5.0) >= 0:
            return float(np.exp(5.0))
        if slope(5.0) <= 0:
            return float(np.exp(-5.0))
        return float(np.exp(-brentq(slope, -5.0, 5.0, xtol=1e-5)))
    return argmin


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
