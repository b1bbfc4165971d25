"""Out-of-core heads: features streamed from HDF5 in chunks into heads that learn incrementally.

Used when the stores' feature matrices exceed `--max-memory`. Only the row indices, labels and
paths are held in memory; embeddings are read a chunk at a time:

1. one pass over train fits the standardisation (`StandardScaler.partial_fit`);
2. each epoch reads train once, in blocks of rows taken in a seeded random order and shuffled
   within each chunk (stores are sorted by path, often by class), and feeds every chunk to every
   grid point at once: SGD logistic regression (averaged, constant step 1/dim on standardised
   features) over `alpha`, the torch MLP over its learning rate;
3. after each epoch, val is streamed and every grid point scored; the (grid point, epoch) with the
   lowest validation log-loss wins, and training stops once no grid point has improved it by
   MIN_GAIN for `patience` epochs;
4. with refit, the winner's configuration is retrained on train+val for its number of epochs;
5. test is streamed once, at the end.
"""
import copy
import time

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from classify.metrics import proba
from classify.mlp import TorchMLP
from classify.select import quiet
from features.errors import StoreError
from features.reader import FeatureStore

BLOCK_ROWS = 256  # contiguous rows read at once; a chunk mixes chunk_rows // BLOCK_ROWS random blocks
ALPHA_GRID = [float(a) for a in np.logspace(-6, -2, 5)]
MAX_EPOCHS = 20
PATIENCE = 2  # epochs without a gain of MIN_GAIN in validation log-loss before training stops
MIN_GAIN = 1e-4


def sgd_logreg(dim: int, alpha: float = 1e-4) -> SGDClassifier:
    """Averaged SGD logistic regression with a constant step of 1/dim (per-sample gradients of
    standardised features have squared norm ≈ dim): close to lbfgs's validation log-loss in a few epochs."""
    return SGDClassifier(loss="log_loss", alpha=alpha, learning_rate="constant", eta0=1.0 / dim, average=True,
                         random_state=0)


STREAM_HEADS = {
    "logreg": lambda dim: [({"alpha": a}, sgd_logreg(dim, a)) for a in ALPHA_GRID],
    "mlp": lambda dim: [({"lr": lr}, TorchMLP(lr=lr)) for lr in (1e-3, 3e-4, 1e-4)],
}


class StreamedSplit:
    """Rows of one or more splits of a store, read from HDF5 `chunk_rows` at a time."""

    def __init__(self, store: FeatureStore, rows: np.ndarray, chunk_rows: int):
        self.store, self.rows, self.chunk_rows = store, np.sort(rows), chunk_rows
        self.y = store.labels[self.rows]

    def __len__(self):
        return len(self.rows)

    def chunks(self, rng: np.random.Generator | None = None):
        """(X, y) chunks: in row order, or with `rng` random blocks and rows shuffled within a chunk."""
        blocks = [self.rows[i:i + BLOCK_ROWS] for i in range(0, len(self.rows), BLOCK_ROWS)]
        order = rng.permutation(len(blocks)) if rng is not None else np.arange(len(blocks))
        per = max(1, self.chunk_rows // BLOCK_ROWS)
        for start in range(0, len(order), per):
            rows = [blocks[b] for b in order[start:start + per]]
            X = np.concatenate([self.store.embeddings(r) for r in rows])
            y = self.store.labels[np.concatenate(rows)]
            if not np.isfinite(X).all():
                bad = np.concatenate(rows)[~np.isfinite(X).all(axis=1)]
                raise StoreError(f"{self.store.path}: {len(bad)} rows have NaN/inf features (first: "
                                 f"{self.store.paths[int(bad[0])]}); re-extract with --overwrite")
            if rng is not None:
                shuffle = rng.permutation(len(y))
                X, y = X[shuffle], y[shuffle]
            yield X, y


def chunk_rows_for(dim: int, max_memory: int) -> int:
    """Rows per chunk: a chunk and the heads' copies of it (float64, standardised) use ≤ max_memory / 4."""
    return int(np.clip(max_memory // (4 * dim * 4 * 3), 16 * BLOCK_ROWS, 256 * BLOCK_ROWS))


def _partial_fit(model, X, y, classes):
    with quiet():
        model.partial_fit(X, y, classes=classes)


def _fit_epochs(models: list, scaler: StandardScaler, data: StreamedSplit, classes, epoch_rng) -> None:
    """One epoch of every model over `data`; SGD models see standardised chunks, the MLP raw ones."""
    for X, y in data.chunks(epoch_rng):
        Xs = scaler.transform(X)
        for m in models:
            _partial_fit(m, X if isinstance(m, TorchMLP) else Xs, y, classes)


def _as_pipeline(model, scaler):
    """The usable estimator: standardise, then SGD (the MLP standardises by itself)."""
    return model if isinstance(model, TorchMLP) else Pipeline([("scale", scaler), ("sgd", model)])


def fit_scaler(data: StreamedSplit) -> StandardScaler:
    """Pass 1: the standardisation of `data`, one chunk at a time."""
    scaler = StandardScaler()
    for X, _ in data.chunks():
        scaler.partial_fit(X)
    return scaler


def select(head: str, store: FeatureStore, train: StreamedSplit, val: StreamedSplit, scaler: StandardScaler,
           log=lambda msg: None, max_epochs: int = MAX_EPOCHS, patience: int = PATIENCE) -> dict:
    """Train every grid point of `head` epoch by epoch on train; keep the best (point, epoch) on val."""
    started = time.perf_counter()
    n_classes = len(store.class_names)
    classes = np.arange(n_classes)
    points = STREAM_HEADS[head](store.dim)
    models = [m for _, m in points]
    rng = np.random.default_rng(0)
    best, curve, waited = None, [], 0
    for epoch in range(1, max_epochs + 1):
        _fit_epochs(models, scaler, train, classes, rng)
        improved = False
        for (point, _), m in zip(points, models):
            p = predict(_as_pipeline(m, scaler), val, n_classes)
            loss = float(log_loss(val.y, p, labels=classes))
            acc = float(accuracy_score(val.y, p.argmax(axis=1)))
            curve.append({**point, "epochs": epoch, "val_log_loss": round(loss, 6), "val_accuracy": round(acc, 6)})
            if best is None or loss < best["val_log_loss"] - MIN_GAIN:
                best = {"point": point, "epochs": epoch, "val_log_loss": loss, "val_accuracy": acc,
                        "model": copy.deepcopy(m)}
                improved = True
        log(f"{store.path.stem}-{head} (out of core): epoch {epoch}, best val log-loss {best['val_log_loss']:.4f} "
            f"({time.perf_counter() - started:.0f}s)")
        waited = 0 if improved else waited + 1
        if waited >= patience:
            break
    best["model"] = _as_pipeline(best["model"], scaler)
    best["sweep"] = curve
    best["seconds"] = time.perf_counter() - started
    return best


def refit(head: str, best: dict, store: FeatureStore, data: StreamedSplit) -> object:
    """The chosen configuration retrained on `data` (train+val) for the chosen number of epochs."""
    scaler = fit_scaler(data)
    point = best["point"]
    model = next(clone(m) for p, m in STREAM_HEADS[head](store.dim) if p == point)
    rng = np.random.default_rng(0)
    for _ in range(best["epochs"]):
        _fit_epochs([model], scaler, data, np.arange(len(store.class_names)), rng)
    return _as_pipeline(model, scaler)


def predict(model, data: StreamedSplit, n_classes: int) -> np.ndarray:
    """Probabilities of a fitted (pipeline) model over a streamed split, in row order."""
    out = [proba(model, X, n_classes) for X, _ in data.chunks()]
    return np.concatenate(out) if out else np.zeros((0, n_classes))

