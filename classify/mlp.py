"""A small torch MLP head as a scikit-learn estimator, early-stopped on a validation set.

Linear(dim → hidden) → ReLU → Dropout → Linear(hidden → classes), AdamW, on standardised
features (`classify.scaling.ModeratedScaler`: sound from a few images). `fit(X, y,
eval_set=(X_val, y_val))` keeps the weights of the epoch with the lowest validation log-loss
(`tempered_stopping`: at the temperature fitted to that epoch's val logits, `classify.calibration`,
as the lp-ft fine-tune chooses its epoch) and records it in `best_epoch_`; without `eval_set` it
trains exactly `max_epochs` epochs, which is how a selected model is refit on train+val.

A fitted model pickles, copies and saves (`classify.models`) its module as numpy weights, without
the optimiser: no torch object is in its state.

Torch runs on `n_threads` threads (default 1) while fitting and predicting: with batches this
small, a second thread costs more than it gives, several times more on a busy machine. Torch is
imported only when a model is fitted, loaded or used: building or cloning the head does not load it.
"""
import inspect
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.calibration import fit_temperature, log_loss_at
from classify.scaling import ModeratedScaler

if TYPE_CHECKING:
    import torch
    from torch import nn


class TorchMLP(ClassifierMixin, BaseEstimator):
    """One-hidden-layer MLP classifier trained on CPU with mini-batch AdamW."""

    def __init__(self, hidden=512, dropout=0.5, lr=1e-3, weight_decay=1e-2, batch_size=64, max_epochs=60,
                 patience=8, random_state=0, n_threads=1, tempered_stopping=False):
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.random_state = random_state
        self.n_threads = n_threads
        self.tempered_stopping = tempered_stopping

    def _module(self, dim: int, n_classes: int) -> "nn.Module":
        from torch import nn
        return nn.Sequential(nn.Linear(dim, self.hidden), nn.ReLU(), nn.Dropout(self.dropout),
                             nn.Linear(self.hidden, n_classes))

    def _tensor(self, X) -> "torch.Tensor":
        import torch
        return torch.from_numpy(((X - self.mean_) / self.scale_).astype(np.float32))

    @contextmanager
    def _threads(self):
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(self.n_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def fit(self, X, y, eval_set=None):
        with self._threads():
            return self._fit(X, y, eval_set)

    def _start(self, X, classes) -> None:
        """Classes, standardisation (moderated variances, from X) and a fresh module; `_epoch` makes the optimiser."""
        import torch
        self.classes_ = np.unique(classes)
        scaler = ModeratedScaler().fit(X)
        self.mean_, self.scale_ = scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)
        torch.manual_seed(self.random_state)
        self.module_ = self._module(X.shape[1], len(self.classes_))
        self.optimizer_ = self.generator_ = None

    def _targets(self, y) -> "torch.Tensor":
        import torch
        yi = np.searchsorted(self.classes_, np.asarray(y))
        if (yi >= len(self.classes_)).any() or (self.classes_[np.minimum(yi, len(self.classes_) - 1)] != y).any():
            raise ValueError(f"labels {sorted(set(np.asarray(y).tolist()) - set(self.classes_.tolist()))} "
                             "are not among the classes seen in training")
        return torch.from_numpy(yi.astype(np.int64))

    def _epoch(self, xt: "torch.Tensor", yt: "torch.Tensor") -> None:
        """One pass over (xt, yt); the optimiser state lives until `fit` ends (kept by `partial_fit`)."""
        import torch
        if self.optimizer_ is None:
            self.generator_ = torch.Generator().manual_seed(self.random_state)
            self.optimizer_ = torch.optim.AdamW(self.module_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.module_.train()
        loss_fn = torch.nn.CrossEntropyLoss()
        for idx in torch.randperm(len(xt), generator=self.generator_).split(self.batch_size):
            self.optimizer_.zero_grad()
            loss_fn(self.module_(xt[idx]), yt[idx]).backward()
            self.optimizer_.step()
        self.module_.eval()

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), e.g. a chunk streamed from disk. The first call fixes the classes
        (`classes`, else those in y) and the standardisation (from this first chunk)."""
        with self._threads():
            first = not hasattr(self, "module_")
            X, y = validate_data(self, X, y, dtype=np.float32, reset=first)
            check_classification_targets(y)
            if first:
                self._start(X, np.unique(y) if classes is None else classes)
            self._epoch(self._tensor(X), self._targets(y))
        return self

    def _fit(self, X, y, eval_set):
        import torch
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self._start(X, np.unique(y))
        module = self.module_
        xt, yt = self._tensor(X), self._targets(y)
        if eval_set is not None:
            xv = self._tensor(validate_data(self, eval_set[0], dtype=np.float32, reset=False))
            yv = self._targets(eval_set[1])
        best, best_state, waited = np.inf, None, 0
        self.val_losses_ = []
        for epoch in range(1, self.max_epochs + 1):
            self._epoch(xt, yt)
            if eval_set is None:
                continue
            with torch.no_grad():
                val = self._val_loss(module(xv), yv)
            self.val_losses_.append(val)
            if val < best - 1e-4:
                best, waited, self.best_epoch_ = val, 0, epoch
                best_state = {k: v.clone() for k, v in module.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        else:
            self.best_epoch_ = self.max_epochs
        self.optimizer_ = self.generator_ = None  # the saved model needs neither; partial_fit starts afresh
        return self

    def _val_loss(self, logits: "torch.Tensor", yv: "torch.Tensor") -> float:
        """Val log-loss of `logits`: at T = 1, or at the temperature fitted to them (`tempered_stopping`)."""
        import torch
        if not self.tempered_stopping:
            return float(torch.nn.functional.cross_entropy(logits, yv))
        z, y = logits.double().numpy(), yv.numpy()
        return log_loss_at(z, y, fit_temperature(z, y))

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("optimizer_", None)
        state.pop("generator_", None)
        if "module_" in state:
            state["module_"] = {k: v.detach().numpy().copy() for k, v in self.module_.state_dict().items()}
        return state

    def __setstate__(self, state):
        state = {**_DEFAULTS, **state}  # a file of an older featbench lacks the newer hyper-parameters
        weights = state.pop("module_", None)
        super().__setstate__(state)
        if weights is None:
            return
        import torch
        if isinstance(weights, torch.nn.Module):  # pickled by an older featbench, optimiser included
            self.module_ = weights
        else:
            with torch.device("meta"):  # no random initialisation: the weights are assigned next
                module = self._module(self.n_features_in_, len(self.classes_))
            module.load_state_dict({k: torch.tensor(v) for k, v in weights.items()}, assign=True)
            self.module_ = module.eval()
            self.optimizer_ = self.generator_ = None

    def predict_proba(self, X):
        import torch
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        with torch.no_grad(), self._threads():
            return torch.softmax(self.module_(self._tensor(X)).double(), dim=1).numpy()

    def predict(self, X):
        p = self.predict_proba(X)
        return self.classes_[np.argmax(p, axis=1)]


_DEFAULTS = {name: p.default for name, p in inspect.signature(TorchMLP.__init__).parameters.items() if name != "self"}
