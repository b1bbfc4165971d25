"""Test-split metrics of a model, the fields of its `features.records.ModelMetrics`
(`{model}.metrics.json` next to the model)."""
import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)

ECE_BINS = 15
TOP_LOSSES = 10
BOOTSTRAP_RESAMPLES = 2000


def proba(model, X, n_classes: int) -> np.ndarray:
    """predict_proba in float64, one column per class index 0..n_classes-1 (absent classes get 0)."""
    return pad(model.predict_proba(X), model.classes_, n_classes)


def pad(p: np.ndarray, classes, n_classes: int) -> np.ndarray:
    """Probabilities `p` over a model's `classes` as float64 columns for class indices 0..n_classes-1 (absent: 0)."""
    out = np.zeros((len(p), n_classes))
    out[:, np.asarray(classes, dtype=int)] = p
    return out / out.sum(axis=1, keepdims=True)


def ece(y, p, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-label confidence."""
    conf, hit = p.max(axis=1), p.argmax(axis=1) == y
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(hit[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def most_confused(confusion: np.ndarray, class_names: list, min_count: int = 1) -> list:
    """Off-diagonal (true, predicted, count) with count ≥ min_count, most frequent first."""
    pairs = [[class_names[t], class_names[q], int(confusion[t, q])]
             for t in range(len(confusion)) for q in range(len(confusion))
             if t != q and confusion[t, q] >= min_count]
    return sorted(pairs, key=lambda r: -r[2])


def top_losses(y, p, paths, class_names, k: int = TOP_LOSSES) -> list:
    """The k test images with the highest log-loss, worst first."""
    p_true = p[np.arange(len(y)), y]
    loss = -np.log(np.clip(p_true, 1e-15, 1))
    order = np.argsort(-loss, kind="stable")[:k]
    return [{"path": paths[i], "true": class_names[y[i]], "predicted": class_names[int(p[i].argmax())],
             "probability": round(float(p[i].max()), 6), "p_true": round(float(p_true[i]), 6),
             "loss": round(float(loss[i]), 6)} for i in order]


def evaluate(y, p, paths, class_names) -> dict:
    """The test-split fields of a `ModelMetrics`, by name."""
    labels = list(range(len(class_names)))
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=labels)
    prec, rec, _, _ = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out = {"accuracy": float(accuracy_score(y, pred)), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
           "log_loss": float(log_loss(y, p, labels=labels)), "ece": ece(y, p)}
    return {**out, "precision": {c: float(v) for c, v in zip(class_names, prec)},
            "recall": {c: float(v) for c, v in zip(class_names, rec)}, "confusion": cm.tolist(),
            "most_confused": most_confused(cm, class_names), "top_losses": top_losses(y, p, paths, class_names)}


def over_seeds(runs: list[dict]) -> dict:
    """Mean and sample standard deviation of test accuracy and log-loss over runs with different seeds."""
    acc, ll = np.array([r["accuracy"] for r in runs]), np.array([r["log_loss"] for r in runs])
    ddof = 1 if len(runs) > 1 else 0
    return {"n": len(runs), "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=ddof)),
            "log_loss_mean": float(ll.mean()), "log_loss_std": float(ll.std(ddof=ddof)), "runs": runs}


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p of paired right/wrong outcomes: `a_only` pairs right only on one side, `b_only`
    right only on the other (1 when none differ)."""
    flips = a_only + b_only
    return float(stats.binomtest(a_only, flips).pvalue) if flips else 1.0


def correct_mask(right: np.ndarray, paths: list) -> str:
    """Which images were classified right, as hex: bit i is the i-th of `paths` in sorted order, so two models
    scored on the same images, in whatever row order, can be paired (`discordant`)."""
    order = np.argsort(np.asarray(paths, dtype=object), kind="stable")
    bits = np.packbits(np.asarray(right, bool)[order], bitorder="little")
    return format(int.from_bytes(bits.tobytes(), "little"), "x")


def mask_bits(mask: str, n: int) -> np.ndarray:
    """A `correct_mask` of n images back as booleans, in path order."""
    raw = np.frombuffer(int(mask, 16).to_bytes((n + 7) // 8, "little"), np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


def two_way_bootstrap(d: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `d`, a subsets × test images matrix (e.g. a paired right/wrong difference),
    and its 95% basic (reverse-percentile) bootstrap interval, the test images and the subsets resampled
    independently, both with replacement: one draw of images for every subset, as they share them, so the interval
    carries the test set's sampling noise and the subsets' spread. Basic, not percentile: with few images that
    differ, the resampled means pile up at 0 and a percentile interval is too eager to exclude it. Images alike in
    every subset are drawn as one group (a multinomial's margins), those that differ nowhere as the remainder.
    Deterministic (`seed`)."""
    rows, n = d.shape
    rng = np.random.default_rng(seed)
    patterns, sizes = np.unique(d[:, d.any(axis=0)].T, axis=0, return_counts=True)
    counts = rng.multinomial(n, [*(sizes / n), 1 - sizes.sum() / n], size=resamples)[:, :len(sizes)]
    per_subset = counts @ patterns / n  # resamples × subsets
    means = np.take_along_axis(per_subset, rng.integers(rows, size=(resamples, rows)), axis=1).mean(axis=1)
    mean = float(d.mean())
    q_low, q_high = np.quantile(means, [0.025, 0.975])
    return mean, float(2 * mean - q_high), float(2 * mean - q_low)


def discordant(a: str, b: str) -> tuple[int, int]:
    """(images right only in `a`, right only in `b`) of two `correct_mask`s of the same images."""
    x, y = int(a, 16), int(b, 16)
    return (x & ~y).bit_count(), (y & ~x).bit_count()


def interval(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% t-interval over repeats; None for one repeat)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), None
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
