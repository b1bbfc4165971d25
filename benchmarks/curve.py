"""`python -m benchmarks curve`: label-efficiency curves of frozen heads.

For each n (labelled train images per class) R seeded, stratified, nested subsets of the train
split are drawn: per repeat and class, one permutation of that class's train images (in path
order, so every store of the dataset gets the same images); subset(n) = its first n. Each
store × head × n × repeat is chosen on val when val is no larger than the subset, else by
stratified k-fold CV inside the subset (k = min(3, smallest class)), else (a class with one image)
fitted with the head's default parameters (kNN: k at most the smallest class); the `selection`
column says which. Every fit is scored on the full test split. `all` is the full train split,
fitted once (as `python -m classify`).
"""
import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from benchmarks.report import csv_text
from classify.heads import HEADS
from classify.select import fit_fixed, score, sweep
from classify.train import BLAS_THREADS, Store, dataset_stores, load_store, parse_heads
from extract.config import add_dataset_args, dataset_flags
from features.atomic import atomic_write
from features.errors import FeatbenchError, StoreError

ALL = 0  # the `all` shot: the full train split
CV_FOLDS = 3


@dataclass
class Point:
    """One fit on one subset, scored on the full test split."""
    store: str
    head: str
    n: str  # images per class, or "all"
    repeat: int
    subset_seed: int
    n_train: int
    selection: str  # val | cv3 | cv2 | default
    accuracy: float
    log_loss: float


def parse_shots(text: str) -> list[int]:
    """`1,2,4,all` → [1, 2, 4, ALL]; zero, negative or unparsable values are one line."""
    shots = []
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            shots.append(ALL)
            continue
        try:
            n = int(part)
        except ValueError:
            n = -1
        if n < 1:
            raise FeatbenchError(f"--shots {text!r}: {part!r} is not a number of images per class (1, 2, …) or all")
        shots.append(n)
    return sorted(set(shots), key=lambda n: n or float("inf"))


def shot_name(n: int) -> str:
    return "all" if n == ALL else str(n)


def permutations(y: np.ndarray, paths: list, seed: int) -> list[np.ndarray]:
    """Per class (in class order), that class's train indices in a seeded random order.

    Indices are drawn from path order, so stores of one dataset give the same images."""
    rng = np.random.default_rng(seed)
    by_path = np.argsort(np.asarray(paths, dtype=object), kind="stable")
    return [rng.permutation(by_path[y[by_path] == c]) for c in np.unique(y)]


def subset(perms: list[np.ndarray], n: int) -> np.ndarray:
    """The first n of each class's permutation (all of a class with fewer): nested in n."""
    return np.sort(np.concatenate([p[:n] for p in perms]))


def short_classes(y: np.ndarray, n: int, class_names: list) -> list[str]:
    """Classes with fewer than n train images (they use all they have)."""
    counts = np.bincount(y, minlength=len(class_names))
    return [class_names[c] for c in np.flatnonzero((counts > 0) & (counts < n))] if n != ALL else []


def defaults(head: str, smallest: int) -> dict:
    """The head's default parameters, with kNN's k cut to the smallest class (k = 1 at one image per class:
    a larger k only ties)."""
    k = HEADS[head].make().get_params().get("n_neighbors")
    return {"n_neighbors": min(k, smallest)} if k else {}


def choose_cv(head: str, X, y, n_classes: int, seed: int) -> tuple[object, str]:
    """The head chosen by stratified k-fold CV inside (X, y), refitted on all of it; or, when a class
    has a single image, the head's defaults."""
    k = min(CV_FOLDS, int(np.bincount(y)[np.unique(y)].min()))
    if k < 2:
        return fit_fixed(HEADS[head].make(), defaults(head, k), X, y), "default"
    folds = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y))
    grid = HEADS[head].grid(min(len(tr) for tr, _ in folds))
    losses = np.zeros(len(grid))
    for tr, held in folds:
        sel = sweep(HEADS[head].make(), grid, X[tr], y[tr], X[held], y[held], n_classes)
        losses += [row["val_log_loss"] for row in sel.sweep]
    return fit_fixed(HEADS[head].make(), grid[int(losses.argmin())], X, y), f"cv{k}"


def fit_point(store: Store, head: str, idx: np.ndarray | None, seed: int) -> tuple[float, float, str]:
    """(accuracy, log-loss, selection) of `head` fitted on the train rows `idx` (None: all of train)."""
    X, y = (store.train.X, store.train.y) if idx is None else (store.train.X[idx], store.train.y[idx])
    if len(np.unique(y)) < 2:
        raise ValueError("the subset holds a single class")
    n_classes = len(store.class_names)
    if len(store.val) and len(store.val) <= len(y):
        model = sweep(HEADS[head].make(), HEADS[head].grid(len(y)), X, y, store.val.X, store.val.y, n_classes).model
        mode = "val"
    else:
        model, mode = choose_cv(head, X, y, n_classes, seed)
    loss, acc = score(model, store.test.X, store.test.y, n_classes)
    return acc, loss, mode


def check_same_images(stores: list[Store]) -> None:
    """Subsets are mapped by path: every store must hold the same labelled train images and classes."""
    first = stores[0]
    key = dict(zip(first.train.paths, first.train.y.tolist()))
    for s in stores[1:]:
        if s.class_names != first.class_names or dict(zip(s.train.paths, s.train.y.tolist())) != key:
            raise StoreError(f"{s.path} and {first.path} do not hold the same train images and labels; "
                             "curves compare stores of one dataset extracted with the same --splits and --seed")


def curve(stores: list[Store], heads: list[str], shots: list[int], repeats: int, seed: int = 0,
          log=lambda msg: None) -> tuple[list[Point], list[dict]]:
    """Every point (store × head × n × repeat) and the notes of the points skipped."""
    if repeats < 1:
        raise FeatbenchError(f"--repeats must be at least 1 (got {repeats})")
    check_same_images(stores)
    points, skipped = [], []
    for s in stores:
        perms = [permutations(s.train.y, s.train.paths, seed + r) for r in range(repeats)]
        for head in heads:
            for n in shots:
                for r in range(1 if n == ALL else repeats):
                    idx = None if n == ALL else subset(perms[r], n)
                    try:
                        acc, loss, mode = fit_point(s, head, idx, seed + r)
                    except ValueError as e:
                        why = str(e).splitlines()[0]
                        skipped.append({"store": s.name, "head": head, "n": shot_name(n), "repeat": r, "why": why})
                        log(f"note: {s.name}-{head} n={shot_name(n)} repeat {r} skipped: {why}")
                        continue
                    points.append(Point(s.name, head, shot_name(n), r, seed + r,
                                        len(s.train) if idx is None else len(idx), mode, acc, loss))
    return points, skipped


def interval(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% t-interval over repeats; None for one repeat)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), None
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def summarise(points: list[Point], stores: list[Store]) -> list[dict]:
    """Per store × head × n: mean accuracy and log-loss ± 95% interval, repeats, selection, short classes."""
    y, names = stores[0].train.y, stores[0].class_names
    groups = {}
    for p in points:
        groups.setdefault((p.store, p.head, p.n), []).append(p)
    out = []
    for (store, head, n), ps in groups.items():
        acc, acc_ci = interval([p.accuracy for p in ps])
        loss, loss_ci = interval([p.log_loss for p in ps])
        short = short_classes(y, ALL if n == "all" else int(n), names)
        out.append({"store": store, "head": head, "n": n, "repeats": len(ps), "accuracy": acc, "accuracy_ci": acc_ci,
                    "log_loss": loss, "log_loss_ci": loss_ci,
                    "selection": "|".join(sorted({p.selection for p in ps})), "short": ",".join(short)})
    return out


def table(summaries: list[dict]) -> str:
    def ci(v):
        return f"±{v:.4f}" if v is not None else "±  n/a "
    head = f"{'store':<16}{'head':<8}{'n':>5}{'accuracy':>10}{'':>9}{'log-loss':>10}{'':>9}{'R':>3}  selection  short"
    lines = [head, "-" * len(head)]
    for s in summaries:
        lines.append(f"{s['store']:<16}{s['head']:<8}{s['n']:>5}{s['accuracy']:>10.4f} {ci(s['accuracy_ci'])}"
                     f"{s['log_loss']:>10.4f} {ci(s['log_loss_ci'])}{s['repeats']:>3}  {s['selection']:<10} "
                     f"{s['short'] or '-'}")
    return "\n".join(lines)


def write(folder: Path, points: list[Point], summaries: list[dict], skipped: list[dict], seconds: float) -> Path:
    """`curve.csv` (one row per point) and `curve.json` (points, summaries, skipped points, seconds)."""
    rows = [asdict(p) for p in points]
    text = csv_text(rows, [f.name for f in fields(Point)])
    atomic_write(folder / "curve.csv", lambda tmp: tmp.write_text(text))
    doc = {"points": rows, "summaries": summaries, "skipped": skipped, "seconds": round(seconds, 2)}
    atomic_write(folder / "curve.json", lambda tmp: tmp.write_text(json.dumps(doc, indent=1)))
    return folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--features", nargs="+", type=Path, metavar="STORE", help="feature stores of one dataset")
    p.add_argument("--backbone", nargs="+", metavar="NAME", help="the dataset's stores OUT/DATASET/NAME.h5")
    p.add_argument("--head", nargs="+", default=["logreg"], metavar="H", help=f"{'|'.join(HEADS)} (default logreg)")
    p.add_argument("--shots", default="1,2,4,8,16,32,64,all", help="train images per class (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="subsets drawn per n (default 5)")
    p.add_argument("--subset-seed", type=int, default=0, metavar="S",
                   help="repeat r draws its subsets with seed S+r, the same for every store and head (default 0)")
    add_dataset_args(p)


def main(args) -> int:
    started = time.perf_counter()
    heads = parse_heads(args.head)
    if not set(heads) <= set(HEADS):
        raise FeatbenchError("curves take single heads only (no ensembles or `all`): " + ", ".join(HEADS))
    shots = parse_shots(args.shots)
    paths = dataset_stores(args.features, args.backbone, **dataset_flags(args))
    loaded = [load_store(p, need_val=False) for p in dict.fromkeys(Path(p).resolve() for p in paths)]
    for s in (s for s in loaded if not len(s.val)):
        print(f"note: {s.path} has no val split; every point is chosen by CV inside its subset", file=sys.stderr)
    smallest = int(np.bincount(loaded[0].train.y)[np.unique(loaded[0].train.y)].min())
    for n in (n for n in shots if n > smallest):
        short = short_classes(loaded[0].train.y, n, loaded[0].class_names)
        print(f"note: n={n} is more than some classes have ({', '.join(short[:5])}"
              f"{'…' if len(short) > 5 else ''}); they use all their train images (`short` column)", file=sys.stderr)
    with threadpool_limits(limits=BLAS_THREADS):
        points, skipped = curve(loaded, heads, shots, args.repeats, args.subset_seed,
                                log=lambda msg: print(msg, file=sys.stderr, flush=True))
    summaries = summarise(points, loaded)
    out = (Path(args.out) / loaded[0].dataset if args.out else loaded[0].path.parent) / "curve"
    seconds = time.perf_counter() - started
    write(out, points, summaries, skipped, seconds)
    print(table(summaries))
    print(f"\n{len(points)} points ({len(skipped)} skipped) in {seconds:.1f}s; every point and summary in "
          f"{out}/curve.csv and curve.json")
    return 0


def run_curve(stores: list[Path], heads: list[str], shots: list[int], repeats: int, *, subset_seed: int = 0,
              out: Path | None = None, select: str | None = None, finetune_shots: list[int] = (),
              finetune_repeats: int = 3, finetune_mode: str = "full", device: str = "auto",
              random_init: bool = False, weights: dict[str, str] | None = None,
              log=lambda msg: None) -> tuple[dict, Path]:
    """STAND-IN for the lead's run_curve (frozen points only; fine-tune arguments ignored): (curve.json's doc,
    OUT/DATASET/curve)."""
    started = time.perf_counter()
    loaded = [load_store(p, need_val=False) for p in dict.fromkeys(Path(p).resolve() for p in stores)]
    with threadpool_limits(limits=BLAS_THREADS):
        points, skipped = curve(loaded, heads, shots, repeats, subset_seed, log=log)
    summaries = summarise(points, loaded)
    folder = (Path(out) / loaded[0].dataset if out else loaded[0].path.parent) / "curve"
    seconds = time.perf_counter() - started
    write(folder, points, summaries, skipped, seconds)
    notes = ["fine-tuned points: not measured (stand-in run_curve)"] if finetune_shots else []
    return {"dataset": loaded[0].dataset, "points": [asdict(p) for p in points], "summaries": summaries,
            "skipped": skipped, "seconds": round(seconds, 2), "select": "auto", "notes": notes}, folder
