"""Data audit from cached features: duplicates, leakage, likely label errors, outliers and a 2-D map.

`python -m classify audit --backbone A [B …]` reads one or more stores of one dataset (same images, labels and
splits) and flags rows of five kinds, each with a score where higher means surer:

- `exact_duplicate`: the same content hash as an earlier row of its group (score 1);
- `near_duplicate`: cosine similarity ≥ `threshold` to its group's first row (score: that similarity);
- `leakage`: every row of a group (exact or near duplicates, joined transitively) spanning splits;
- `label_issue`: cleanlab's confident learning on out-of-fold probabilities of the logreg head (K folds over
  train+val, test scored by a model fitted on train+val, so no row is scored by a model that saw it), train+val
  rows judged among train+val rows only (test labels never change which train images are flagged); score
  1 - the probability of its given label, with the most probable class as the suggested label; the images of
  a class with fewer than two train+val images are not label-checked (the summary names those classes);
- `outlier`: far from every other image: score 1 - the mean cosine similarity to its `neighbours` nearest rows,
  flagged above the median by `outlier_z` robust standard deviations (1.4826 × the median absolute deviation).

With several stores, each store's rows are L2-normalised and divided by √(number of stores) before they are
concatenated, so a cosine similarity is the mean of the stores' similarities; label probabilities are averaged.
Similarities are exact (a matrix product), computed a block of rows at a time, so memory is the features plus
`BLOCK_BYTES`, never n × n.
"""
import csv
import io
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from classify.heads import HEADS
from classify.metrics import proba
from classify.select import fit_fixed, sweep
from classify.train import BLAS_THREADS, check_matching, load_store
from features.atomic import atomic_write, csv_text, keep_earlier
from features.errors import FeatbenchError
from features.reader import FeatureStore
from features.schema import NO_LABEL, SPLITS

KINDS = ("exact_duplicate", "near_duplicate", "leakage", "label_issue", "outlier")
THRESHOLD = 0.95  # near duplicates: cosine ≥ this (the README's Audit section shows the distribution it sits in)
NEIGHBOURS = 10
OUTLIER_Z = 4.5  # outliers: robust standard deviations above the median (the README's Audit section says why)
FOLDS = 5
FIT_ROWS = 25_000  # the label step's logregs each fit on at most this many rows (float64: ~20 bytes per value)
CHUNK_ROWS = 8192  # rows read and scored at a time
BLOCK_BYTES = 64 * 2**20  # one block of similarities (float32 rows × n)
EXACT_MAX = 100_000  # rows searched exactly; beyond, a faiss index
NPROBE = 32  # the index's lists searched per query
NEAREST_QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)  # the summary's view of nearest-neighbour similarities
COLUMNS = ("kind", "score", "group", "label", "suggested", "split", "path")
FILES = ("audit.csv", "map.csv", "map.png")


@dataclass
class Finding:
    kind: str
    row: int
    score: float
    group: int = -1
    suggested: int = NO_LABEL


@dataclass
class Audit:
    """What an audit found in the stores at `stores`: one `Finding` per flagged (row, kind), worst first per kind."""
    stores: list
    paths: list
    labels: np.ndarray
    splits: np.ndarray
    class_names: list
    findings: list
    leakage: dict  # (split, split) → groups spanning both
    groups: int  # duplicate groups
    threshold: float
    nearest: dict = field(default_factory=dict)  # quantile → each image's cosine similarity to its nearest other
    outliers: str = ""  # where the outlier threshold sits among the kNN distances
    unchecked: str = ""  # the classes the label step could not check (`unchecked_note`)
    seconds: dict = field(default_factory=dict)  # step → seconds
    coords: np.ndarray | None = None  # the 2-D map, a row per image

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def flagged(self) -> set[str]:
        return {self.paths[f.row] for f in self.findings}

    def rows(self) -> list[dict]:
        """audit.csv's rows, in KINDS order, worst first within a kind."""
        name = lambda y: self.class_names[y] if y != NO_LABEL else ""  # noqa: E731
        return [{"kind": f.kind, "score": round(f.score, 6), "group": f.group if f.group >= 0 else "",
                 "label": name(int(self.labels[f.row])), "suggested": name(f.suggested),
                 "split": SPLITS[self.splits[f.row]], "path": self.paths[f.row]} for f in self.findings]


def normalised(paths: list, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """The stores' rows, each store's L2-normalised and scaled by 1/√(stores), side by side (float32)."""
    with FeatureStore(paths[0]) as fs:
        n = len(fs.paths)
    dims = []
    for p in paths:
        with FeatureStore(p) as fs:
            dims.append(fs.dim)
    out = np.empty((n, sum(dims)), np.float32)
    at = 0
    for p, d in zip(paths, dims):
        with FeatureStore(p) as fs:
            for start, (X, _) in zip(range(0, n, chunk_rows), fs.iter_chunks(np.arange(n), chunk_rows)):
                X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12) * math.sqrt(len(paths))
                out[start:start + len(X), at:at + d] = X
        at += d
    return out


def neighbours(X: np.ndarray, threshold: float, k: int, block_bytes: int = BLOCK_BYTES) -> tuple:
    """(pairs i < j with cosine ≥ threshold as (i, j, similarity) arrays, each row's mean similarity to its k
    nearest other rows, each row's similarity to its nearest), by exact search a block of rows at a time up to
    `EXACT_MAX` rows, beyond by a faiss index (`indexed_neighbours`)."""
    n = len(X)
    if n > EXACT_MAX:
        return indexed_neighbours(X, threshold, k)
    k = min(k, n - 1)
    block = max(1, block_bytes // (4 * n))
    left, right, sims, knn, nearest = [], [], [], np.empty(n, np.float32), np.empty(n, np.float32)
    for a in range(0, n, block):
        S = X[a:a + block] @ X.T
        b = len(S)
        S[np.arange(b), np.arange(a, a + b)] = -np.inf  # not its own neighbour
        top = np.partition(S, n - k, axis=1)[:, n - k:]
        knn[a:a + b], nearest[a:a + b] = top.mean(axis=1), top.max(axis=1)
        i, j = np.nonzero(S >= threshold)
        keep = j > i + a
        left.append(i[keep] + a)
        right.append(j[keep])
        sims.append(S[i[keep], j[keep]])
    return np.concatenate(left), np.concatenate(right), np.concatenate(sims), knn, nearest


def indexed_neighbours(X: np.ndarray, threshold: float, k: int) -> tuple:
    """`neighbours` from a faiss inverted-file index (inner product on the normalised rows, about 4√n lists,
    `NPROBE` of them searched per query): approximate; a pair is found when one is among the other's k nearest
    found, and a group of more than k + 1 copies is still joined through its members."""
    try:
        import faiss
    except ImportError:
        raise FeatbenchError(f"an audit of more than {EXACT_MAX:,} images searches a faiss index: pip install "
                             "'featbench[index]' (faiss-cpu)") from None
    n, d = X.shape
    k = min(k, n - 1)
    lists = max(1, int(4 * math.sqrt(n)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    index.train(X[np.sort(rng.choice(n, min(n, 64 * lists), replace=False))])
    index.add(X)
    index.nprobe = min(NPROBE, lists)
    left, right, sims, knn, nearest = [], [], [], np.empty(n, np.float32), np.empty(n, np.float32)
    for a in range(0, n, 8192):
        D, rows = index.search(X[a:a + 8192], k + 1)
        own = rows == np.arange(a, a + len(D))[:, None]
        D[own | (rows < 0)] = -np.inf  # not its own neighbour; -1: fewer found than asked
        order = np.argsort(-D, axis=1)[:, :k]
        top = np.take_along_axis(D, order, axis=1)
        top[~np.isfinite(top)] = 0.0
        knn[a:a + len(D)], nearest[a:a + len(D)] = top.mean(axis=1), top[:, 0]
        r, c = np.nonzero(D >= threshold)
        i, j = r + a, rows[r, c]
        left.append(np.minimum(i, j))
        right.append(np.maximum(i, j))
        sims.append(D[r, c])
    left, right, sims = map(np.concatenate, (left, right, sims))
    _, once = np.unique(left.astype(np.int64) * n + right, return_index=True)  # a pair found from both ends
    return left[once], right[once], sims[once], knn, nearest


def duplicate_groups(hashes: list, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """A group id per row (-1: in no group): rows joined by equal content hashes or by a similar pair."""
    parent = list(range(len(hashes)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = {}
    pairs = [(first.setdefault(h, i), i) for i, h in enumerate(hashes) if h and first.setdefault(h, i) != i]
    for i, j in [*pairs, *zip(left.tolist(), right.tolist())]:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([root(i) for i in range(len(hashes))])
    sizes = np.bincount(roots, minlength=len(hashes))
    members = sizes[roots] > 1
    ids = np.full(len(hashes), -1)
    _, ids[members] = np.unique(roots[members], return_inverse=True)
    return ids


def duplicate_findings(X, hashes, splits, groups) -> tuple[list[Finding], dict]:
    """Duplicates (every row of a group but its first) and leakage (every row of a group spanning splits), and
    the number of leaking groups per split pair."""
    found = []
    grouped = np.flatnonzero(groups >= 0)
    grouped = grouped[np.argsort(groups[grouped], kind="stable")]  # by group, rows in order within each
    for rows in np.split(grouped, np.flatnonzero(np.diff(groups[grouped])) + 1) if len(grouped) else []:
        g, first = int(groups[rows[0]]), rows[0]
        sims = X[rows] @ X[first]
        for r, s in zip(rows[1:], sims[1:]):
            exact = hashes[r] == hashes[first]
            found.append(Finding("exact_duplicate" if exact else "near_duplicate", int(r), 1.0 if exact else float(s),
                                 g))
        if len(set(splits[rows].tolist())) > 1:
            found += [Finding("leakage", int(r), float(s), g) for r, s in zip(rows, sims)]
    leaks = leaking_pairs((f.group, SPLITS[splits[f.row]]) for f in found if f.kind == "leakage")
    return found, dict(leaks)


def leaking_pairs(leakage) -> Counter:
    """Duplicate groups spanning splits, per split pair, from the (group, split name) of each leakage row."""
    spans: dict = {}
    for group, split in leakage:
        spans.setdefault(group, set()).add(split)
    order = lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)  # noqa: E731
    return Counter(pair for names in spans.values() for pair in combinations(sorted(names, key=order), 2))


def capped(rows: np.ndarray, y: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """`rows` (sorted) if there are at most `cap`, else about `cap` of them drawn per class in proportion (every
    class keeps one row at least), sorted."""
    if len(rows) <= cap:
        return rows
    rng = np.random.default_rng(seed)
    take = [rng.choice(rows[y == c], max(1, round(cap * (y == c).mean())), replace=False) for c in np.unique(y)]
    return np.sort(np.concatenate(take))


def label_classes(labels: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """The classes the label step checks: those with two or more train+val images (out-of-fold probabilities need
    one to fit on and one to score)."""
    counts = np.bincount(labels[(splits != SPLITS.index("test")) & (labels != NO_LABEL)])
    return np.flatnonzero(counts >= 2)


def unchecked_note(labels: np.ndarray, classes: np.ndarray, names: list) -> str:
    """A line naming the labelled classes outside `classes` and how many images they leave unchecked ('' if none)."""
    left = np.setdiff1d(np.unique(labels[labels != NO_LABEL]), classes)
    if not len(left):
        return ""
    none = "" if len(classes) >= 2 else "; fewer than two classes remain, so no label is checked"
    return (f"not checked for {len(left)} {'class' if len(left) == 1 else 'classes'} with fewer than two train+val "
            f"images ({', '.join(names[c] for c in left)}; {int(np.isin(labels, left).sum())} images){none}")


def of_classes(part, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(store rows, labels) of a split's rows whose label is one of `classes`."""
    m = np.isin(part.y, classes)
    return part.rows[m], part.y[m]


def out_of_fold(path, classes: np.ndarray, folds: int = FOLDS, fit_rows: int = FIT_ROWS,
                log=lambda msg: None) -> tuple:
    """(store rows, probabilities) of every labelled row of `classes` (each with two or more train+val images), each
    from a logreg that never saw it: its C chosen on train → val, K-fold over train+val, test from the model fitted
    on train+val. The probabilities have a column per entry of `classes`, in that order.

    Each fit reads at most `fit_rows` rows (a stratified sample) from the store, and rows are scored a chunk at
    a time, so memory is bounded by `fit_rows`, not by the store's size."""
    s = load_store(path, features=False)
    k = len(s.class_names)
    train, val, test = (of_classes(part, classes) for part in (s.train, s.val, s.test))
    rows = np.concatenate([train[0], val[0]])
    order = np.argsort(rows)
    rows, y = rows[order], np.concatenate([train[1], val[1]])[order]
    smallest = int(np.bincount(y)[classes].min())
    template = HEADS["logreg"].make()
    with FeatureStore(path) as fs, threadpool_limits(limits=BLAS_THREADS):
        def features(r):
            X = fs.embeddings(r)
            fs.check_finite(X, r, "labelled")
            return X

        def read(r, labels):
            r = capped(r, labels, fit_rows)
            return features(r), fs.labels[r]

        def scored(model, r):
            return np.vstack([proba(model, features(r[i:i + CHUNK_ROWS]), k)[:, classes]
                              for i in range(0, len(r), CHUNK_ROWS)])

        chosen = sweep(template, HEADS["logreg"].grid(min(len(train[0]), fit_rows)), *read(*train), *read(*val), k)
        p = np.zeros((len(y), len(classes)))
        for fit, held in StratifiedKFold(min(folds, smallest), shuffle=True, random_state=0).split(rows, y):
            p[held] = scored(fit_fixed(template, chosen.fixed, *read(rows[fit], y[fit])), rows[held])
        p_test = scored(fit_fixed(template, chosen.fixed, *read(rows, y)), test[0])
    sampled = f", each fit on at most {fit_rows:,} rows" if len(rows) > fit_rows else ""
    log(f"{s.name}: out-of-fold logreg probabilities (C chosen on val: {chosen.params}{sampled})")
    return np.concatenate([rows, test[0]]), np.vstack([p, p_test])


def label_findings(paths: list, labels: np.ndarray, splits: np.ndarray, fit_rows: int = FIT_ROWS,
                   log=lambda msg: None) -> list[Finding]:
    """cleanlab's label issues among the labelled rows of the `label_classes`, ranked by self-confidence (worst
    first); none when fewer than two classes have two or more train+val images.

    Train and val rows are judged among train and val rows only, so test labels cannot change which of them are
    flagged (and so which train images `--exclude` removes); test rows are judged among all labelled rows, and
    only their flags are kept from that pass."""
    from cleanlab.filter import find_label_issues

    classes = label_classes(labels, splits)
    if len(classes) < 2:
        return []
    rows, p = None, 0
    for path in paths:
        r, q = out_of_fold(path, classes, fit_rows=fit_rows, log=log)
        rows, p = r, p + q / len(paths)  # same rows in the same order for every matching store
    given = np.searchsorted(classes, labels[rows])  # a column of p
    test = splits[rows] == SPLITS.index("test")

    def issues(among: np.ndarray) -> np.ndarray:
        return among[find_label_issues(given[among], p[among], return_indices_ranked_by="self_confidence", n_jobs=1)]

    found = issues(np.flatnonzero(~test))
    if test.any():
        every = issues(np.arange(len(rows)))
        found = np.concatenate([found, every[test[every]]])
    found = found[np.argsort(p[found, given[found]], kind="stable")]
    return [Finding("label_issue", int(rows[i]), float(1 - p[i, given[i]]), suggested=int(classes[p[i].argmax()]))
            for i in found]


def outlier_findings(knn: np.ndarray, z: float) -> tuple[list[Finding], str]:
    """Rows whose kNN distance (1 - mean similarity) is more than `z` robust standard deviations above the median,
    and a line saying where the threshold sits."""
    distance = 1 - knn.astype(np.float64)
    median = np.median(distance)
    spread = 1.4826 * np.median(np.abs(distance - median)) or 1e-12
    rows = np.flatnonzero(distance > median + z * spread)
    line = (f"kNN distance median {median:.3f}, robust sd {spread:.3f}, farthest image "
            f"{(distance.max() - median) / spread:.1f} sd above the median (flagged above {z:g})")
    rows = rows[np.argsort(-distance[rows], kind="stable")]
    return [Finding("outlier", int(r), float(distance[r])) for r in rows], line


def check_labels(paths: list) -> None:
    """One line for a store no audit can read labels from: no labels at all, or a single class."""
    for p in paths:
        with FeatureStore(p) as fs:
            present = np.unique(fs.labels[fs.labels != NO_LABEL])
            names = fs.class_names
        if not len(present):
            raise FeatbenchError(f"{p}: no labelled images; an audit needs labels (extract a labelled dataset)")
        if len(present) < 2:
            raise FeatbenchError(f"{p}: every labelled image is {names[int(present[0])]!r}; an audit needs two "
                                 "classes or more")


def audit(paths: list, threshold: float = THRESHOLD, k: int = NEIGHBOURS, outlier_z: float = OUTLIER_Z,
          make_map: bool = True, fit_rows: int = FIT_ROWS, log=lambda msg: None) -> Audit:
    """Audit the stores at `paths` (one dataset); `make_map=False` skips the UMAP map; `fit_rows` caps the rows each
    label-step model is fitted on."""
    if not 0 < threshold <= 1:
        raise FeatbenchError(f"--threshold {threshold}: a cosine similarity in (0, 1]")
    if k < 1:
        raise FeatbenchError(f"--neighbours {k}: at least 1")
    if fit_rows < 2:
        raise FeatbenchError(f"--fit-rows {fit_rows}: at least 2")
    check_labels(paths)
    if len(paths) > 1:
        check_matching([load_store(p, features=False) for p in paths])
    with FeatureStore(paths[0]) as fs:
        names, labels, splits, hashes, rows = fs.class_names, fs.labels, fs.splits, fs.hashes, fs.paths
    seconds, t = {}, time.perf_counter()
    X = normalised(paths)
    seconds["read"] = time.perf_counter() - t
    left, right, sims, knn, nearest = neighbours(X, threshold, k)
    seconds["neighbours"] = time.perf_counter() - t - seconds["read"]
    groups = duplicate_groups(hashes, left, right)
    dupes, leaks = duplicate_findings(X, hashes, splits, groups)
    coords = None
    if make_map:
        t = time.perf_counter()
        coords = umap_coords(X)
        seconds["map"] = time.perf_counter() - t
    del X  # the label step reads each store's features again: only one copy in memory at a time
    t = time.perf_counter()
    unchecked = unchecked_note(labels, label_classes(labels, splits), names)
    if unchecked:
        log(f"note: {unchecked}")
    labelled = label_findings(paths, labels, splits, fit_rows, log)
    seconds["labels"] = time.perf_counter() - t
    outliers, outlier_line = outlier_findings(knn, outlier_z)
    found = dupes + labelled + outliers
    order = {kind: i for i, kind in enumerate(KINDS)}
    found.sort(key=lambda f: (order[f.kind], -f.score if f.kind in ("label_issue", "outlier") else f.group, f.row))
    spread = {q: float(np.quantile(nearest, q)) for q in NEAREST_QUANTILES}
    return Audit(list(paths), rows, labels, splits, names, found, leaks, int(groups.max() + 1), threshold, spread,
                 outlier_line, unchecked, seconds, coords)


def umap_coords(X: np.ndarray) -> np.ndarray:
    """2-D UMAP coordinates (cosine neighbourhoods: Euclidean on the normalised rows), seeded."""
    import warnings

    from umap import UMAP
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "n_jobs value", UserWarning)  # a seed forces one thread
        return UMAP(n_neighbors=min(15, len(X) - 1), random_state=0).fit_transform(X)


def map_png(a: Audit) -> bytes:
    """The map: every image coloured by its label, flagged ones ringed by kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7))
    xy = a.coords
    cmap = plt.get_cmap("tab10" if len(a.class_names) <= 10 else "tab20")
    for c, name in enumerate(a.class_names):
        m = a.labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(c % cmap.N), alpha=0.6, label=name)
    m = a.labels == NO_LABEL
    if m.any():
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color="lightgrey", label="unlabelled")
    marks = {"leakage": ("s", "red"), "near_duplicate": ("D", "orange"), "exact_duplicate": ("D", "purple"),
             "label_issue": ("o", "black"), "outlier": ("X", "magenta")}
    for kind, (marker, colour) in marks.items():
        rows = [f.row for f in a.of(kind)]
        if rows:
            ax.scatter(xy[rows, 0], xy[rows, 1], s=60, marker=marker, facecolors="none", edgecolors=colour,
                       linewidths=1.2, label=f"{kind} ({len(rows)})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("UMAP of the embeddings, coloured by label; flagged images ringed", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), markerscale=1.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write(a: Audit, folder: Path) -> dict[str, Path]:
    """audit.csv (one row per flagged image and kind) and, with a map, map.csv (path, x, y, label, split, kinds)
    and map.png, each written atomically; an earlier audit that flagged otherwise is kept (`keep_earlier`)."""
    folder = Path(folder)
    texts = {"audit.csv": csv_text(a.rows(), list(COLUMNS))}
    if a.coords is not None:
        kinds: dict[int, list] = {}
        for f in a.findings:
            kinds.setdefault(f.row, []).append(f.kind)
        name = lambda y: a.class_names[y] if y != NO_LABEL else ""  # noqa: E731
        texts["map.csv"] = csv_text(
            [{"path": p, "x": round(float(x), 5), "y": round(float(y), 5), "label": name(a.labels[i]),
              "split": SPLITS[a.splits[i]], "kinds": "+".join(dict.fromkeys(kinds.get(i, [])))}
             for i, (p, (x, y)) in enumerate(zip(a.paths, a.coords))], ["path", "x", "y", "label", "split", "kinds"])
    earlier = folder / "audit.csv"
    keep_earlier(earlier, earlier.is_file() and earlier.read_text() == texts["audit.csv"],
                 [folder / "map.csv", folder / "map.png"])
    written = {n: atomic_write(folder / n, lambda tmp, t=t: tmp.write_text(t)) for n, t in texts.items()}
    if a.coords is not None:
        png = map_png(a)
        written["map.png"] = atomic_write(folder / "map.png", lambda tmp: tmp.write_bytes(png))
    return written


def summary(a: Audit, top: int = 5) -> str:
    """Counts per kind, leaking split pairs, the top rows of each kind and the time of each step."""
    n = len(a.paths)
    lines = [f"audit of {', '.join(map(str, a.stores))}: {n} images, {len(a.class_names)} classes, "
             f"near-duplicate threshold cosine ≥ {a.threshold:g}"]
    for kind in KINDS:
        found = a.of(kind)
        lines.append(f"  {kind:<16}{len(found):>6}")
        for f in found[:top]:
            label = a.class_names[a.labels[f.row]] if a.labels[f.row] != NO_LABEL else "-"
            extra = f" → {a.class_names[f.suggested]}" if f.suggested != NO_LABEL else ""
            extra += f" group {f.group}" if f.group >= 0 else ""
            lines.append(f"      {f.score:.4f}  {SPLITS[a.splits[f.row]]:<5} {label}{extra}  {a.paths[f.row]}")
    pairs = ", ".join(f"{x}-{y} {c}" for (x, y), c in sorted(a.leakage.items())) or "none"
    lines.append(f"  {a.groups} duplicate groups; groups spanning splits: {pairs}")
    lines.append("  each image's cosine similarity to its nearest other: "
                 + ", ".join(f"{'max' if q == 1 else 'median' if q == 0.5 else f'{100 * q:g}%'} {v:.3f}"
                             for q, v in a.nearest.items()))
    lines.append(f"  outliers: {a.outliers}")
    if a.unchecked:
        lines.append(f"  label issues: {a.unchecked}")
    lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in a.seconds.items()))
    return "\n".join(lines)


def read_flagged(path) -> dict[str, set[str]]:
    """Each image path an audit.csv flags → the kinds it is flagged as, for `--exclude`; a file that is not one is
    one line: missing or not a regular file (never opened: a FIFO would hang), not CSV, without kind and path
    columns, a row without a path or of another kind than `KINDS`, or no row at all."""
    path = Path(path)
    if not path.is_file():
        raise FeatbenchError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}; pass an "
                             "audit.csv written by `python -m classify audit`")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if not {"kind", "path"} <= set(reader.fieldnames or ()):
                raise FeatbenchError(f"{path}: not an audit.csv (needs kind and path columns; write one with "
                                     "`python -m classify audit`)")
            flagged: dict[str, set[str]] = {}
            for r in reader:
                if r["kind"] not in KINDS or not r["path"]:
                    raise FeatbenchError(f"{path}:{reader.line_num}: not an audit.csv row (a kind of "
                                         f"{', '.join(KINDS)} and a path expected, got {r['kind']!r}, "
                                         f"{r['path']!r}); write one with `python -m classify audit`")
                flagged.setdefault(r["path"], set()).add(r["kind"])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FeatbenchError(f"{path}: cannot read the audit file ({e})") from None
    if not flagged:
        raise FeatbenchError(f"{path}: flags no image, so --exclude would leave nothing out; drop --exclude")
    return flagged
