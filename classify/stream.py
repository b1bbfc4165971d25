"""Out-of-core heads: features streamed from HDF5 in chunks into heads that learn incrementally.

Used when the stores' feature matrices exceed `--max-memory`. Only the row indices, labels and
paths are held in memory; embeddings are read a chunk at a time:

1. one pass over train fits the standardisation (`StandardScaler.partial_fit`);
2. each epoch reads train once, in blocks of rows taken in a seeded random order and shuffled
   within each chunk (stores are sorted by path, often by class), and feeds every chunk to every
   grid point of every head at once: SGD logistic regression (averaged, constant step 1/dim on
   standardised features) over `alpha`, the torch MLP over its learning rate;
3. after each epoch, val is read once and every grid point scored (with `--temperature`, at the
   temperature fitted to its val probabilities); per head, the (grid point, epoch) with the lowest
   validation log-loss wins, and a head stops training once none of its
   grid points has improved that by MIN_GAIN for PATIENCE epochs, or at MAX_EPOCHS (with a warning on stderr
   when it was still improving: its model is under-trained);
4. with refit, the winner's configuration is retrained on train+val for its number of epochs;
5. test is read once, at the end, for every chosen model at once.
"""
import copy
import sys
import time

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from classify.metrics import proba
from classify.mlp import TorchMLP
from classify.select import quiet, score_fields, val_scores
from features.reader import FeatureStore

BLOCK_ROWS = 256  # contiguous rows read at once when shuffling; a chunk mixes chunk_rows // BLOCK_ROWS blocks
ALPHA_GRID = [float(a) for a in np.logspace(-6, -2, 5)]
MAX_EPOCHS = 20
PATIENCE = 2  # epochs without a gain of MIN_GAIN in validation log-loss before a head stops
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

    def __init__(self, store: FeatureStore, rows: np.ndarray, chunk_rows: int, what: str):
        self.store, self.rows, self.chunk_rows, self.what = store, np.sort(rows), chunk_rows, what
        self.y = store.labels[self.rows]

    def __len__(self):
        return len(self.rows)

    def chunks(self, rng: np.random.Generator | None = None):
        """(X, y) chunks: in row order, or with `rng` random blocks and rows shuffled within a chunk.

        Rows are read a block at a time: a split's rows are interleaved with the others', and one
        read of a whole chunk's span would hold several times the chunk."""
        blocks = [self.rows[i:i + BLOCK_ROWS] for i in range(0, len(self.rows), BLOCK_ROWS)]
        order = rng.permutation(len(blocks)) if rng is not None else np.arange(len(blocks))
        per = max(1, self.chunk_rows // BLOCK_ROWS)
        for start in range(0, len(order), per):
            rows = [blocks[b] for b in order[start:start + per]]
            X, y = self._read(rows), self.store.labels[np.concatenate(rows)]
            if rng is not None:
                shuffle = rng.permutation(len(y))
                X, y = X[shuffle], y[shuffle]
            yield X, y

    def _read(self, blocks: list) -> np.ndarray:
        X = np.concatenate([self.store.embeddings(r) for r in blocks])
        self.store.check_finite(X, np.concatenate(blocks), self.what)
        return X


def chunk_rows_for(dim: int, max_memory: int) -> int:
    """Rows per chunk: a chunk and the heads' copies of it (float64, standardised) use ≤ max_memory / 4."""
    return int(np.clip(max_memory // (4 * dim * 4 * 3), 16 * BLOCK_ROWS, 256 * BLOCK_ROWS))


def fit_scaler(data: StreamedSplit) -> StandardScaler:
    """Pass 1: the standardisation of `data`, one chunk at a time."""
    scaler = StandardScaler()
    for X, _ in data.chunks():
        scaler.partial_fit(X)
    return scaler


def usable(model, scaler: StandardScaler):
    """The estimator to save and predict with: standardise, then SGD (the MLP standardises by itself)."""
    return model if isinstance(model, TorchMLP) else Pipeline([("scale", scaler), ("sgd", model)])


def _epoch(models: list, scaler: StandardScaler, data: StreamedSplit, classes, rng) -> None:
    """One pass of every model over `data`; SGD models see standardised chunks, the MLP raw ones."""
    for X, y in data.chunks(rng):
        Xs = scaler.transform(X) if not all(isinstance(m, TorchMLP) for m in models) else None
        for m in models:
            with quiet():
                m.partial_fit(X if isinstance(m, TorchMLP) else Xs, y, classes=classes)


def predict(models: list, data: StreamedSplit, n_classes: int) -> tuple[list[np.ndarray], list[float]]:
    """Probabilities of each fitted model over `data` (in row order), reading `data` once; and each
    model's seconds spent predicting (reading excluded)."""
    out, seconds = [[] for _ in models], [0.0] * len(models)
    for X, _ in data.chunks():
        for i, m in enumerate(models):
            started = time.perf_counter()
            out[i].append(proba(m, X, n_classes))
            seconds[i] += time.perf_counter() - started
    return [np.concatenate(o) if o else np.zeros((0, n_classes)) for o in out], seconds


def select(heads: list[str], store: FeatureStore, train: StreamedSplit, val: StreamedSplit,
           scaler: StandardScaler, log=lambda msg: None, temperature: bool = False) -> dict[str, dict]:
    """Train every grid point of every head epoch by epoch; per head, the best (point, epoch) on val (`temperature`:
    each scored at the temperature fitted to its val probabilities, as `classify.select.sweep` scores a point)."""
    started = time.perf_counter()
    classes = np.arange(len(store.class_names))
    grids = {h: STREAM_HEADS[h](store.dim) for h in heads}
    best = {h: {"val_log_loss": np.inf, "sweep": [], "waited": 0} for h in heads}
    rng = np.random.default_rng(0)
    for epoch in range(1, MAX_EPOCHS + 1):
        active = [h for h in heads if best[h]["waited"] < PATIENCE]
        if not active:
            break
        _epoch([m for h in active for _, m in grids[h]], scaler, train, classes, rng)
        points = [(h, point, m) for h in active for point, m in grids[h]]
        probs, _ = predict([usable(m, scaler) for _, _, m in points], val, len(classes))
        gained = set()
        for (h, point, m), p in zip(points, probs):
            t, loss, acc, raw = val_scores(m, p, val.y, len(classes), temperature)
            b = best[h]
            b["sweep"].append({**point, "epochs": epoch, **score_fields(t, loss, raw, acc)})
            if loss < b["val_log_loss"] - MIN_GAIN:
                b.update(point=point, epochs=epoch, val_log_loss=loss, val_accuracy=acc, model=copy.deepcopy(m),
                         temperature=t, val_log_loss_raw=raw)
                gained.add(h)
        for h in active:
            best[h]["waited"] = 0 if h in gained else best[h]["waited"] + 1
            best[h]["seconds"] = time.perf_counter() - started
            log(f"{store.path.stem}-{h} (out of core): epoch {epoch}, best val log-loss "
                f"{best[h]['val_log_loss']:.4f} ({best[h]['seconds']:.0f}s)")
    for h in still_improving(best):
        print(f"warning: {store.path.stem}-{h} (out of core): still improving on val when training stopped at "
              f"{MAX_EPOCHS} epochs, so its model is under-trained; raise --max-memory to train it in memory",
              file=sys.stderr)
    for b in best.values():
        b["model"] = usable(b["model"], scaler)
    return best


def still_improving(best: dict[str, dict]) -> list[str]:
    """The heads whose patience had not run out when `select` stopped at MAX_EPOCHS: their val log-loss gained
    MIN_GAIN within the last PATIENCE epochs, so more epochs would likely have given a better model."""
    return [h for h, b in best.items() if b["sweep"] and b["sweep"][-1]["epochs"] == MAX_EPOCHS
            and b["waited"] < PATIENCE]


def refit(head: str, best: dict, store: FeatureStore, data: StreamedSplit):
    """The chosen configuration retrained on `data` (train+val) for the chosen number of epochs."""
    model = next(clone(m) for p, m in STREAM_HEADS[head](store.dim) if p == best["point"])
    scaler = None if isinstance(model, TorchMLP) else fit_scaler(data)
    rng = np.random.default_rng(0)
    for _ in range(best["epochs"]):
        _epoch([model], scaler, data, np.arange(len(store.class_names)), rng)
    return usable(model, scaler)
