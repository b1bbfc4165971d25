"""Hyper-parameter selection on the validation split only.

Each grid point is fitted on train and scored on val; the point with the lowest validation
log-loss wins (with `temperature`, its log-loss after the temperature fitted to its val
probabilities, `classify.calibration`: the rule a calibrated fine-tune's runs and epochs follow).
Log-loss rather than accuracy: on a few hundred validation images accuracy is a coarse step
function with many ties, while log-loss is smooth and also rewards the calibrated
probabilities that `avg` and `stack` combine. The estimator is re-used across the sweep, so heads
with `warm_start` start each fit from the previous solution.
"""
import copy
import inspect
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, log_loss

from classify.calibration import Tempered, temper_columns, val_temperature
from classify.metrics import proba


@dataclass
class Selection:
    """The sweep's winner, fitted on train, and the curve that chose it."""
    model: object
    params: dict  # chosen hyper-parameters, short names (plus `epochs` when early-stopped; `temperature`, `early_stop`)
    fixed: dict  # full parameter names that rebuild the winner without a validation set
    sweep: list  # one row per grid point: its params, val_log_loss, val_accuracy (early-stopped: val_epochs)
    val_log_loss: float
    val_accuracy: float
    seconds: float
    temperature: float | None = None  # fitted on val (`model` is `Tempered`); None: probabilities as the head gives
    val_log_loss_raw: float | None = None  # at T = 1, when `temperature` is set

    @property
    def scores(self) -> tuple[float, float]:
        """(val log-loss, val log-loss at T = 1): what `first_best` chooses by."""
        return self.val_log_loss, self.val_log_loss if self.val_log_loss_raw is None else self.val_log_loss_raw


@contextmanager
def quiet():
    """Silence what is expected and not actionable: unconverged weak-regularisation fits, classes too small
    for every cross-validation fold (long-tailed datasets) inside calibration and stacking, and as many
    classes as images (a label-efficiency curve's smallest subsets)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", "The least populated class")
        warnings.filterwarnings("ignore", "Number of classes in training fold")
        warnings.filterwarnings("ignore", "The number of unique classes is greater than 50%")  # a few images a class
        yield


def short(params: dict) -> dict:
    """`logreg__C` → `C`: the names a report shows (a solver's tolerance is not one: `fixed` keeps it)."""
    return {k.rsplit("__", 1)[-1]: v for k, v in params.items() if not k.endswith("tol")}


def score(model, X, y, n_classes: int) -> tuple[float, float]:
    """(log-loss, accuracy) of a fitted model."""
    return scores(proba(model, X, n_classes), y, n_classes)


def scores(p: np.ndarray, y, n_classes: int) -> tuple[float, float]:
    """(log-loss, accuracy) of probabilities `p` (a row per image) against labels `y`."""
    return float(log_loss(y, p, labels=range(n_classes))), float(accuracy_score(y, p.argmax(axis=1)))


def sweep(estimator, grid: list[dict], X, y, X_val, y_val, n_classes: int, temperature: bool = False) -> Selection:
    """Fit every grid point on (X, y), score on (X_val, y_val), keep the lowest log-loss (`temperature`: each point's
    at the temperature fitted to its val probabilities, a row's `temperature`).

    The grid runs through joblib: cut into as many contiguous, warm-started runs as the active
    joblib configuration has workers (`joblib.parallel_config`: one run, in process, by default;
    `--n-jobs`/`--backend` spread the runs over cores or a dask/ray cluster).
    """
    started = time.perf_counter()
    runs = [list(r) for r in np.array_split(np.arange(len(grid)), min(len(grid), effective_n_jobs(None))) if len(r)]
    parts = Parallel()(delayed(_sweep_run)(estimator, [grid[i] for i in r], X, y, X_val, y_val, n_classes,
                                           temperature) for r in runs)
    candidates = [c for kept, _ in parts for c in kept]
    best = candidates[first_best([c.scores for c in candidates])]
    return replace(best, sweep=[row for _, rows in parts for row in rows], seconds=time.perf_counter() - started)


TIE = 1e-5  # val log-losses closer than this are equal: a fitted temperature's tolerance, not a better model


def first_best(scores: list[tuple[float, float]]) -> int:
    """The index of the best (val log-loss, val log-loss at T = 1) of `scores`: of those within TIE of the lowest
    log-loss (`near_best`; a tie: heads all right on val sit at one Laplace-limited confidence at their
    temperatures), the lowest raw one; the earliest of equals. Without temperatures (raw = log-loss) that is the
    lowest log-loss, the earliest on an exact tie."""
    return min(near_best(scores), key=lambda i: (scores[i][1], i))


def near_best(scores: list[tuple[float, float]]) -> list[int]:
    """The indices of the (val log-loss, raw) `scores` within TIE of the lowest log-loss (NaN, a diverged model's,
    the worst): those `first_best` may choose."""
    ranks = [loss if np.isfinite(loss) else np.inf for loss, _ in scores]
    return [i for i, rank in enumerate(ranks) if rank <= min(ranks) + TIE]


def val_scores(model, p: np.ndarray, y, n_classes: int, temperature: bool) -> tuple:
    """(t, log-loss, accuracy, raw) of `model`'s val probabilities `p` on labels `y`: with `temperature`, t fitted to
    them (`val_temperature`) and the scores at it, raw the log-loss at T = 1; else t and raw None."""
    t = val_temperature(p, y, model.classes_) if temperature else None
    loss, acc = scores(p if t is None else temper_columns(p, model.classes_, t), y, n_classes)
    return t, loss, acc, None if t is None else scores(p, y, n_classes)[0]


def score_fields(t: float | None, loss: float, raw: float | None, acc: float) -> dict:
    """A sweep row's val scores (`val_scores`), rounded, the temperature and raw log-loss only when fitted."""
    return {**({"temperature": round(t, 4)} if t is not None else {}), "val_log_loss": round(loss, 6),
            **({"val_log_loss_raw": round(raw, 6)} if raw is not None else {}), "val_accuracy": round(acc, 6)}


def _sweep_run(estimator, grid: list[dict], X, y, X_val, y_val, n_classes: int,
               temperature: bool) -> tuple[list[Selection], list[dict]]:
    """One warm-started run through consecutive grid points: (its points within TIE of its lowest val log-loss, which
    `first_best` chooses from, in grid order; its curve rows)."""
    est = clone(estimator)
    early_stops = "eval_set" in inspect.signature(est.fit).parameters
    if early_stops and temperature:  # each epoch scored at its own val temperature, as each grid point is
        est.set_params(tempered_stopping=True)
    kept, curve = [], []
    for point in grid:
        est.set_params(**point)
        with quiet():
            est.fit(X, y, **({"eval_set": (X_val, y_val)} if early_stops else {}))
        p = proba(est, X_val, n_classes)
        t, loss, acc, raw = val_scores(est, p, y_val, n_classes, temperature)
        row = {**short(point), **score_fields(t, loss, raw, acc)}
        fixed = dict(point)
        if early_stops:
            row["epochs"] = int(est.best_epoch_)
            if temperature:
                row["early_stop"] = "tempered"
            row["val_epochs"] = len(est.val_losses_)  # the epoch checkpoints it scored on val to keep the best
            fixed["max_epochs"] = int(est.best_epoch_)
        curve.append(row)
        near = near_best([sel.scores for sel in kept] + [(loss, loss if raw is None else raw)])
        if len(kept) in near:  # it may be chosen: keep a copy
            params = {k: v for k, v in row.items() if not k.startswith("val_")}
            model = copy.deepcopy(est) if t is None else Tempered.around(copy.deepcopy(est), t)
            kept.append(Selection(model, params, fixed, [], loss, acc, 0.0, t, raw))
            kept = [kept[i] for i in near]
    return kept, curve


def configurations(sel: Selection) -> int:
    """The configurations scored on val to choose `sel`: a grid point each, an early-stopped one each epoch it scored
    (as an out-of-core head's sweep has a row per point and epoch, and a fine-tune counts each run and epoch)."""
    return sum(row.get("val_epochs", 1) for row in sel.sweep)


def fit_fixed(estimator, fixed: dict, X, y, temperature: float | None = None):
    """A fresh copy of `estimator` with `fixed` parameters, fitted on (X, y) without validation (at `temperature`,
    one chosen on val, when given)."""
    with quiet():
        model = clone(estimator).set_params(**fixed).fit(X, y)
    return model if temperature is None else Tempered.around(model, temperature)

