"""Standardisation whose per-feature scales stay sound when fitted on a handful of images.

A per-feature standard deviation from two or three images is noise: many features get a tiny one
by chance, and a new image then lands tens of standard deviations out on exactly those features,
which swamp every score (one image per class: logistic regression at chance). `ModeratedScaler`
shrinks each feature's sample variance toward a prior fitted across all features, with the
empirical-Bayes moderated variance of Smyth (2004, limma): the prior's degrees of freedom d0 are
estimated from how much more the log-variances spread than sampling alone explains. On n images
the posterior is (d0·s0² + (n−1)·s²) / (d0 + n − 1): close to the prior at n = 2, close to
StandardScaler's per-feature variance once n − 1 ≫ d0. No constant is tuned.
"""
from functools import partial

import numpy as np
from scipy.optimize import brentq
from scipy.special import digamma, polygamma
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

trigamma = partial(polygamma, 1)


def variance_prior(s2: np.ndarray, df: int) -> tuple[float, float]:
    """(d0, s0²) of the scaled inverse-χ² prior that fits positive sample variances `s2` of `df` degrees of
    freedom, by moments of log s² (limma's fitFDist); d0 = inf when sampling explains all the spread."""
    e = np.log(s2) - digamma(df / 2) + np.log(df / 2)
    excess = e.var(ddof=1) - trigamma(df / 2) if len(e) > 1 else 0.0
    if excess <= 0:
        return np.inf, float(np.exp(e.mean()))
    d0 = 2 * brentq(lambda x: trigamma(x) - excess, 1e-8, 1e8)
    return d0, float(np.exp(e.mean() + digamma(d0 / 2) - np.log(d0 / 2)))


class ModeratedScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Centre each feature and divide it by its moderated standard deviation (see the module docstring).

    Constant features take the prior's scale; one image, or no varying feature, leaves the scale at 1.
    """

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        df = len(X) - 1
        s2 = X.var(axis=0, ddof=1) if df else np.zeros(X.shape[1])
        varying = s2 > 0
        self.prior_df_, self.prior_var_ = variance_prior(s2[varying], df) if varying.any() else (np.inf, 1.0)
        if np.isinf(self.prior_df_):
            self.var_ = np.full(X.shape[1], self.prior_var_)
        else:
            self.var_ = (self.prior_df_ * self.prior_var_ + df * s2) / (self.prior_df_ + df)
        self.scale_ = np.sqrt(self.var_)
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return (X - self.mean_) / self.scale_
