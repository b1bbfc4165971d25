"""Ensembles across backbones, built from scikit-learn parts.

An ensemble sees the backbones' features side by side (one matrix, a column block per backbone,
in `dims` order); each member reads its own block.

- `avg`: soft voting (mean of probabilities) of each backbone's best head
- `stack`: those heads' out-of-fold probabilities (5-fold) → a meta logistic regression (C=1)
- `concat`: one logistic regression on the concatenated, per-backbone standardised features
"""
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import StackingClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.heads import logreg

STACK_FOLDS = 5


def blocks(dims) -> list[slice]:
    """The column slice of each backbone in the side-by-side matrix."""
    ends = np.cumsum(dims).tolist()
    return [slice(end - d, end) for d, end in zip(dims, ends)]


def on_block(head, cols: slice) -> Pipeline:
    """`head` fitted on one backbone's columns only."""
    return Pipeline([("take", ColumnTransformer([("cols", "passthrough", cols)])), ("head", head)])


def average(members: dict, dims) -> VotingClassifier:
    """Mean of the members' probabilities; `members` maps backbone name → unfitted head, in `dims` order."""
    return VotingClassifier([(name, on_block(h, s)) for (name, h), s in zip(members.items(), blocks(dims))],
                            voting="soft")


def stack(members: dict, dims) -> StackingClassifier:
    """Out-of-fold member probabilities fed to a meta logistic regression."""
    return StackingClassifier([(name, on_block(h, s)) for (name, h), s in zip(members.items(), blocks(dims))],
                              final_estimator=LogisticRegression(max_iter=1000),
                              cv=StratifiedKFold(STACK_FOLDS, shuffle=True, random_state=0),
                              stack_method="predict_proba")


class BlockScaler(TransformerMixin, BaseEstimator):
    """Standardise every column, then weight each block so every backbone carries equal total variance.

    Block b (width d_b of D columns in k blocks) is multiplied by sqrt(D / (k·d_b)): a 2048-d backbone
    does not drown a 512-d one under a shared L2 penalty. Equal widths (or `dims=None`, one block):
    plain standardisation.
    """

    def __init__(self, dims=None):
        self.dims = dims

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        dims = self.dims or (X.shape[1],)
        if sum(dims) != X.shape[1]:
            raise ValueError(f"block widths {list(dims)} do not add up to {X.shape[1]} columns")
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        std[std == 0] = 1.0
        total, k = X.shape[1], len(dims)
        weight = np.concatenate([np.full(d, np.sqrt(total / (k * d))) for d in dims])
        self.scale_ = std / weight
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return (X - self.mean_) / self.scale_


def concat(dims) -> Pipeline:
    """Logistic regression on block-scaled concatenated features (C swept like `logreg`)."""
    return logreg(BlockScaler(tuple(dims)))
