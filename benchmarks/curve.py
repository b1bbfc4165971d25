"""`python -m benchmarks curve`: label-efficiency curves of frozen heads.

For each n (labelled train images per class) R seeded, stratified, nested subsets of the train
split are drawn: per repeat and class, one permutation of that class's train images (in path
order, so every store of the dataset gets the same images); subset(n) = its first n. Each
store × head × n × repeat is chosen on val when val is no larger than the subset, else by
k-fold CV inside the subset (k = min(3, smallest class, at least 2); a class with fewer images stays
on every fold's training side), else (one image per class) fitted with the head's default parameters
(kNN: k = 1); the `selection`
column says which, `val_log_loss` the score that chose it (none for defaults); `--select val` chooses every
point on the full val split. Every fit is scored on
the full test split. `all` is the full train split, fitted once (as `python -m classify`).

`--finetune-shots 8,64` adds fine-tuned points (`benchmarks finetune`'s recipe, on the images of the
same subsets, the first `--finetune-repeats` repeats): each chooses its peak rate, epoch and
temperature on the full val split, so with fine-tunes the frozen points do too (`--select val`; `auto`
is refused) and both sides see the same labels; when the fine-tunes' recipe fits a temperature, each frozen
point is chosen and scored at a temperature fitted on val too (`python -m classify --temperature`).
An epoch is at least `benchmarks finetune`'s MIN_EPOCH_IMAGES images (a small subset's images
repeat, each augmented afresh). Fine-tunes are cached in OUT/DATASET/curve/finetune/ by subset,
weights and settings: re-running with more frozen heads trains nothing again.
"""
import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.finetune import (
    DEFAULT_EPOCHS,
    MIN_EPOCH_IMAGES,
    budget_params,
    default_epochs,
    epoch_size,
    finetune,
    model_name,
    reusable,
)
from benchmarks.recipes import MODES, recipe_for
from benchmarks.report import curve_csv, short_count
from benchmarks.splits import SplitImages, from_store
from classify.heads import HEADS, CoveringFolds
from classify.metrics import correct_mask, interval, proba
from classify.select import fit_fixed, scores, sweep
from classify.train import BLAS_THREADS, Store, dataset_stores, load_store, parse_heads
from extract.backbones import create_backbone
from extract.config import add_dataset_args, dataset_flags
from extract.device import pick_device
from extract.names import canonical
from features.atomic import atomic_write, check_outside, keep_earlier, same_outcome
from features.errors import FeatbenchError, StoreError
from features.schema import SPLITS, split_fingerprint

ALL = 0  # the `all` shot: the full train split
CV_FOLDS = 3
FINETUNE_SHOTS = {"cpu": "8,64", "mps": "8,64", "cuda": "2,8,32,all"}  # `--finetune-shots auto`, by device


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
    kind: str = "frozen"  # frozen | finetune
    seconds: float = 0.0  # to fit (and choose) this point
    val_log_loss: float | None = None  # what chose it: val log-loss (`val`), mean held-out CV log-loss (`cvK`); None
    test_correct: str | None = None  # `classify.metrics.correct_mask` of the test split (curve.json only)
    temperature: float | None = None  # fitted on val, the test scores' (None: probabilities as the model gives)


def finetune_shots(value, device: str) -> list[int]:
    """`--finetune-shots` or `[curve] finetune_shots` as subset sizes: "auto" is the device's default
    (`FINETUNE_SHOTS`), "" none, else "8,64,all" or a list already parsed."""
    if value == "auto":
        value = FINETUNE_SHOTS.get(pick_device(device).type, FINETUNE_SHOTS["cpu"])
    return parse_shots(value) if isinstance(value, str) and value.strip() else list(value or [])


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


def choose_cv(head: str, X, y, n_classes: int, seed: int) -> tuple[object, str, float | None]:
    """(model, selection, its mean held-out log-loss over the folds): the head chosen by k-fold CV inside (X, y)
    (k = min(3, smallest class, at least 2); classes with fewer than k images stay on every fold's training side:
    `CoveringFolds`), refitted on all of it; or, when no class has two images, the head's defaults (no score).
    An early-stopped head (mlp) is refitted for the median of its folds' best epochs at the chosen point."""
    counts = np.bincount(y)[np.unique(y)]
    if counts.max() < 2:
        return fit_fixed(HEADS[head].make(), defaults(head, 1), X, y), "default", None
    k = min(CV_FOLDS, max(2, int(counts.min())))
    folds = list(CoveringFolds(k, seed).split(X, y))
    grid = HEADS[head].grid(min(len(tr) for tr, _ in folds))
    rows = [sweep(HEADS[head].make(), grid, X[tr], y[tr], X[held], y[held], n_classes).sweep for tr, held in folds]
    losses = np.mean([[row["val_log_loss"] for row in fold] for fold in rows], axis=0)
    best = int(losses.argmin())
    epochs = [fold[best]["epochs"] for fold in rows if "epochs" in fold[best]]
    fixed = {**grid[best], **({"max_epochs": max(1, round(float(np.median(epochs))))} if epochs else {})}
    return fit_fixed(HEADS[head].make(), fixed, X, y), f"cv{k}", float(losses[best])


def fit_point(store: Store, head: str, idx: np.ndarray | None, seed: int, select: str = "auto",
              temperature: bool = False) -> dict:
    """`Point`'s selection, accuracy, log_loss, val_log_loss, test_correct and temperature of `head` fitted on the
    train rows `idx` (None: all of train), chosen on val when `select` is `val` or val is no larger than the subset
    (with `temperature`, at a temperature fitted on val: `classify.select.sweep`), else by CV inside the subset."""
    X, y = (store.train.X, store.train.y) if idx is None else (store.train.X[idx], store.train.y[idx])
    if len(np.unique(y)) < 2:
        raise ValueError("the subset holds a single class")
    n_classes = len(store.class_names)
    if len(store.val) and (select == "val" or len(store.val) <= len(y)):
        chosen = sweep(HEADS[head].make(), HEADS[head].grid(len(y)), X, y, store.val.X, store.val.y, n_classes,
                       temperature)
        model, mode, val_loss, t = chosen.model, "val", chosen.val_log_loss, chosen.temperature
    else:
        (model, mode, val_loss), t = choose_cv(head, X, y, n_classes, seed), None
    p = proba(model, store.test.X, n_classes)
    loss, acc = scores(p, store.test.y, n_classes)
    right = p.argmax(1) == store.test.y
    return {"selection": mode, "accuracy": acc, "log_loss": loss, "val_log_loss": val_loss,
            "test_correct": correct_mask(right, store.test.paths), "temperature": t}


def check_same_images(stores: list[Store]) -> None:
    """Subsets are mapped by path, test images paired by path: every store must hold the same labelled train and
    test images and classes; and one split assignment (val and row order too), the one curve.json records."""
    first = stores[0]

    def key(s: Store) -> tuple:
        return s.class_names, *(dict(zip(part.paths, part.y.tolist())) for part in (s.train, s.test))
    for s in stores[1:]:
        if key(s) != key(first):
            raise StoreError(f"{s.path} and {first.path} do not hold the same train and test images and labels; "
                             "curves compare stores of one dataset extracted with the same --splits and --seed")
        if s.meta.split_fingerprint != first.meta.split_fingerprint:
            raise StoreError(f"{s.path} (split {s.meta.split_fingerprint}) and {first.path} (split "
                             f"{first.meta.split_fingerprint}) hold the same train and test images but not one split "
                             "assignment (their val images or row order differ); curves compare stores of one "
                             "dataset extracted with the same --splits and --seed")


def curve(stores: list[Store], heads: list[str], shots: list[int], repeats: int, seed: int = 0,
          log=lambda msg: None, select: str = "auto", temperature: bool = False) -> tuple[list[Point], list[dict]]:
    """Every frozen point (store × head × n × repeat) and the notes of the points skipped (`temperature`: see
    `fit_point`)."""
    if repeats < 1 or seed < 0:
        raise FeatbenchError(f"--repeats must be at least 1 and --subset-seed at least 0 (got {repeats}, {seed})")
    check_same_images(stores)
    points, skipped = [], []
    for s in stores:
        perms = [permutations(s.train.y, s.train.paths, seed + r) for r in range(repeats)]
        for head in heads:
            for n in shots:
                for r in range(1 if n == ALL else repeats):
                    idx = None if n == ALL else subset(perms[r], n)
                    started = time.perf_counter()
                    try:
                        fit = fit_point(s, head, idx, seed + r, select, temperature)
                    except ValueError as e:
                        why = str(e).splitlines()[0]
                        skipped.append({"store": s.name, "head": head, "n": shot_name(n), "repeat": r, "why": why})
                        log(f"note: {s.name}-{head} n={shot_name(n)} repeat {r} skipped: {why}")
                        continue
                    points.append(Point(s.name, head, shot_name(n), r, seed + r,
                                        len(s.train) if idx is None else len(idx), **fit,
                                        seconds=round(time.perf_counter() - started, 3)))
    return points, skipped


def subset_split(data: SplitImages, train_paths: list) -> SplitImages:
    """`data` with its train split cut to `train_paths` (val and test whole), fingerprinted as such."""
    keep = set(train_paths)
    rows = [i for i, q in enumerate(data.paths["train"]) if q in keep]
    paths = {**data.paths, "train": [data.paths["train"][i] for i in rows]}
    labels = {**data.labels, "train": data.labels["train"][rows]}
    listing = [(q, y, code) for code, split in enumerate(SPLITS) for q, y in zip(paths[split], labels[split])]
    fingerprint = split_fingerprint(*zip(*listing))
    return replace(data, paths=paths, labels=labels, fingerprint=fingerprint,
                   source=f"{data.source}, train cut to {len(rows)} images")


@dataclass
class Finetunes:
    """How the curve's fine-tuned points are trained: `benchmarks finetune`'s recipe for `mode`."""
    shots: list[int]
    repeats: int = 3
    mode: str = "full"
    epochs: int | None = None  # per run (default: by device, as `benchmarks finetune`)
    device: str = "auto"
    weights: dict | None = None  # backbone → weights file, for backbones that need one
    backbones: list[str] | None = None  # only these stores' backbones (default: every store's)

    def __post_init__(self):  # backbones as stores record them: `ResNet152V2` is resnet152v2
        self.weights = {canonical(k): v for k, v in (self.weights or {}).items()}
        self.backbones = [canonical(b) for b in self.backbones] if self.backbones else None


def check_readout(s: Store) -> None:
    """Refuse, in one line, fine-tuning a store read out otherwise than by default: a fine-tune trains the
    backbone as it pools by default, not these features."""
    if s.meta.readout:
        given = ", ".join(f"{k} {v}" for k, v in s.meta.readout.items())
        raise FeatbenchError(f"{s.path.name}: its features are read out with {given}, which a fine-tune does not "
                             "reproduce; fine-tune a store extracted with the default readout, or leave this one out "
                             "(--finetune-backbone)")


def start_weights(s: Store, given: str | None) -> str | None:
    """The weights file a fine-tune of store `s` starts from (`given`, else the file its features were extracted
    with where it is still there; None: the backbone's default), checked to load the weights of its features;
    else one line."""
    w = s.meta.weights or {}
    source = w.get("source")
    weights = given or (source if w.get("file_sha256") and source and Path(source).is_file() else None)
    made = create_backbone(s.meta.backbone, weights, bool(w.get("random_init"))).weights
    if made["fingerprint"] != w.get("fingerprint"):
        raise FeatbenchError(f"{s.path.name}: its features come from weights {w.get('fingerprint')} "
                             f"({source or 'unrecorded'}), a fine-tune would start from {made['fingerprint']} "
                             f"({made['source']}); give the store's weights file ([benchmark.weights] in a "
                             "`benchmarks run` config), or leave this store out (--finetune-backbone)")
    return weights


def tuned_stores(stores: list[Store], spec: Finetunes) -> list[Store]:
    """The stores whose backbones are fine-tuned, each checked for a default readout (`check_readout`)."""
    chosen = [s for s in stores if not spec.backbones or s.meta.backbone in spec.backbones]
    for s in chosen:
        check_readout(s)
    return chosen


def finetune_points(stores: list[Store], spec: Finetunes, seed: int, folder: Path,
                    log=lambda msg: None) -> tuple[list[Point], list[dict], list[str]]:
    """Fine-tuned points on the frozen points' subsets, reusing any already trained (cached by subset,
    weights and settings in `folder`), each starting from its store's weights (`start_weights`); (points,
    skipped, budget notes)."""
    if spec.mode not in MODES:
        raise FeatbenchError(f"--finetune-mode {spec.mode!r}: choose {', '.join(MODES)}")
    points, skipped, notes = [], [], []
    recipe, dev = recipe_for(spec.mode), pick_device(spec.device)
    epochs = spec.epochs or default_epochs(dev)
    for s in tuned_stores(stores, spec):
        backbone, w = s.meta.backbone, s.meta.weights or {}
        checked, weights = False, None
        data = from_store(s.path)
        perms = [permutations(s.train.y, s.train.paths, seed + r) for r in range(spec.repeats)]
        stem = model_name(s.name, spec.mode, recipe.name)
        starts = []  # points whose val chose the starting point (epoch 0) over every trained epoch
        for n in spec.shots:
            for r in range(1 if n == ALL else spec.repeats):
                sub = data if n == ALL else subset_split(data, [s.train.paths[i] for i in subset(perms[r], n)])
                n_train = len(sub.paths["train"])
                per_epoch = epoch_size(n_train)
                budget = {"epochs": epochs, "epoch_images": per_epoch, "batch_size": 32, "seeds": 1,
                          "train_seed": seed + r}
                path = folder / f"{stem}-n{shot_name(n)}-r{r}.metrics.json"
                m = reusable(path, sub, w.get("fingerprint"), budget_params(spec.mode, recipe, **budget, device=dev))
                what = f"{s.name} finetune-{spec.mode} n={shot_name(n)} repeat {r}"
                if m:
                    log(f"{what}: reused ({path.name})")
                else:
                    if not checked:  # once a store, before its first fine-tune (reused ones match its weights)
                        weights, checked = start_weights(s, spec.weights.get(backbone)), True
                    log(f"{what}: fine-tuning on {n_train} images ({epochs} epochs of {per_epoch} × "
                        f"{len(recipe.lrs)} peak rates)")
                    try:
                        m = finetune(sub, backbone, spec.mode, folder.parent.parent.parent, recipe=recipe,
                                     device=spec.device, weights=weights,
                                     random_init=bool(w.get("random_init")), path=path, save_weights=False,
                                     **budget)
                    except (FeatbenchError, ValueError) as e:
                        why = str(e).splitlines()[0]
                        skipped.append({"store": s.name, "head": f"finetune-{spec.mode}", "n": shot_name(n),
                                        "repeat": r, "why": why})
                        log(f"note: {what} skipped: {why}")
                        continue
                whole = m.n_test == len(sub.paths["test"])  # else its accuracy is over fewer images: not paired
                points.append(Point(s.name, m.head, shot_name(n), r, seed + r, n_train, "val", m.accuracy,
                                    m.log_loss, "finetune", m.fit_seconds, m.val_log_loss,
                                    m.test_correct if whole else None,
                                    m.params.get("temperature") if recipe.calibrate else None))
                if not whole:
                    notes.append(f"{what} read {m.n_test} of the {len(sub.paths['test'])} test images: not paired "
                                 "with the frozen points")
                    log(f"note: {notes[-1]}")
                if m.params.get("best_epoch") == 0:
                    starts.append(f"n = {shot_name(n)} repeat {r}")
        chose_start = (f"; val chose the starting point (epoch 0, no training step) at {', '.join(starts)}"
                       if starts else "")
        rates = (f"{len(recipe.lrs)} peak rates" if len(recipe.lrs) > 1 else
                 f"one peak rate, {recipe.lrs[0]:g}, not swept (an untuned ablation)")
        chosen = (["rate"] * (len(recipe.lrs) > 1) + ["epoch (0, its start, included)"]
                  + ["temperature"] * recipe.calibrate)
        notes.append(f"{s.name} finetune-{spec.mode}: {recipe.name} recipe, {rates} × {epochs} epochs of at least "
                     f"{MIN_EPOCH_IMAGES} images (the whole subset if larger), each point's "
                     f"{', '.join(chosen[:-1])}{' and ' if len(chosen) > 1 else ''}{chosen[-1]} chosen on the full "
                     f"val split ({len(data.paths['val'])} images){chose_start}")
    return points, skipped, notes


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
        out.append({"store": store, "head": head, "n": n, "kind": ps[0].kind, "repeats": len(ps), "accuracy": acc,
                    "accuracy_ci": acc_ci, "log_loss": loss, "log_loss_ci": loss_ci,
                    "selection": "|".join(sorted({p.selection for p in ps})), "short": ",".join(short),
                    "seconds": round(float(np.mean([p.seconds for p in ps])), 3)})
    return out


def table(summaries: list[dict]) -> str:
    def ci(v):
        return f"±{v:.4f}" if v is not None else "±  n/a "
    w = max([len("store"), *(len(s["store"]) for s in summaries)]) + 2
    head = f"{'store':<{w}}{'head':<14}{'n':>5}{'accuracy':>10}{'':>9}{'log-loss':>10}{'':>9}{'R':>3}  selection  short"
    lines = [head, "-" * len(head)]
    for s in summaries:
        lines.append(f"{s['store']:<{w}}{s['head']:<14}{s['n']:>5}{s['accuracy']:>10.4f} {ci(s['accuracy_ci'])}"
                     f"{s['log_loss']:>10.4f} {ci(s['log_loss_ci'])}{s['repeats']:>3}  {s['selection']:<10} "
                     f"{short_count(s)}")
    return "\n".join(lines)



def write(folder: Path, doc: dict) -> Path:
    """`curve.csv` (one row per point) and `curve.json` (the whole doc); an earlier curve of other points is kept
    (`keep_earlier`)."""
    text = curve_csv(doc["points"])
    keep_earlier(folder / "curve.json", same_outcome(folder / "curve.json", doc), [folder / "curve.csv"])
    atomic_write(folder / "curve.csv", lambda tmp: tmp.write_text(text))
    atomic_write(folder / "curve.json", lambda tmp: tmp.write_text(json.dumps(doc, indent=1)))
    return folder


def run_curve(stores: list[Path], heads: list[str], shots: list[int], repeats: int, *, subset_seed: int = 0,
              out: Path | None = None, select: str | None = None, finetune_shots: list[int] = (),
              finetune_repeats: int = 3, finetune_mode: str = "full", finetune_epochs: int | None = None,
              finetune_backbones: list[str] | None = None, device: str = "auto", weights: dict[str, str] | None = None,
              log=lambda msg: None, temperature: bool | None = None) -> tuple[dict, Path]:
    """The curve of `stores` (one dataset), written to OUT/DATASET/curve (OUT: `out`, else beside the
    stores); returns (the doc curve.json holds, that folder). `select`: auto, or val (the default with
    fine-tunes, and the only choice with them: both sides then see the same labels). `temperature`: whether the
    frozen points chosen on val are scored at a temperature fitted on it (None: when the fine-tuned points are)."""
    started = time.perf_counter()
    select = select or ("val" if finetune_shots else "auto")
    if select not in ("auto", "val"):
        raise FeatbenchError(f"--select {select!r}: choose auto or val")
    if select == "auto" and finetune_shots:
        raise FeatbenchError("--select auto with fine-tuned points: the fine-tunes choose on the full val split, "
                             "the frozen points would choose inside their subsets, on fewer labels; drop --select "
                             "auto (val is the default with fine-tunes) or the fine-tuned shots")
    loaded = [load_store(p, need_val=bool(finetune_shots)) for p in dict.fromkeys(Path(p).resolve() for p in stores)]
    notes = []
    for s in (s for s in loaded if not len(s.val)):
        notes.append(f"{s.path} has no val split; every point is chosen by CV inside its subset")
    short = {n: short_classes(loaded[0].train.y, n, loaded[0].class_names) for n in shots}
    if any(short.values()):
        first = next(c for c in short.values() if c)
        named = ", ".join(first[:5]) + ("…" if len(first) > 5 else "")
        notes.append("Classes with fewer train images than n use all they have (`short` column): "
                     + ", ".join(f"{len(c)} at n={n}" for n, c in short.items() if c)
                     + f" of {len(loaded[0].class_names)} (first: {named})")
    calibrated = bool(finetune_shots) and recipe_for(finetune_mode).calibrate
    tempered = calibrated if temperature is None else temperature
    if select == "val":
        notes.append("Every frozen point is chosen on the full val split (--select val)" +
                     (", as the fine-tunes are" if finetune_shots else ""))
    if tempered or calibrated:
        notes.append("The frozen points chosen on val are " + ("" if tempered else "not ") + "scored at a "
                     "temperature fitted on it" + (", as the fine-tuned points are" if calibrated else ""))
    for note in notes:
        log(f"note: {note}")
    folder = check_outside((Path(out) / loaded[0].dataset if out else loaded[0].path.parent) / "curve",
                           loaded[0].meta.dataset, loaded[0].path)
    spec = Finetunes(list(finetune_shots), min(finetune_repeats, repeats), finetune_mode, finetune_epochs, device,
                     weights, finetune_backbones)
    if finetune_shots:
        tuned_stores(loaded, spec)  # refused before the frozen points, not after
    with threadpool_limits(limits=BLAS_THREADS):
        points, skipped = curve(loaded, heads, shots, repeats, subset_seed, log, select, tempered)
    if finetune_shots:
        more, gone, budget = finetune_points(loaded, spec, subset_seed, folder / "finetune", log)
        points, skipped, notes = points + more, skipped + gone, notes + budget
    doc = {"dataset": loaded[0].dataset, "split_fingerprint": loaded[0].meta.split_fingerprint,  # every store's one
           "n_test": len(loaded[0].test), "points": [asdict(p) for p in points],
           "summaries": summarise(points, loaded), "skipped": skipped, "select": select, "notes": notes,
           "finetune_recipe": recipe_for(finetune_mode).as_dict() if finetune_shots else None,
           "seconds": round(time.perf_counter() - started, 2)}
    return doc, write(folder, doc)


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
    p.add_argument("--select", choices=["auto", "val"],
                   help="auto: val when no larger than the subset, else CV inside it; val: the full val split "
                        "(default: val with fine-tunes, the only choice with them; else auto)")
    g = p.add_argument_group("fine-tuned points")
    g.add_argument("--finetune-shots", metavar="N,…",
                   help="fine-tune each store's backbone on these subsets too, e.g. 8,64,all; auto: "
                        + "; ".join(f"{k} {v}" for k, v in FINETUNE_SHOTS.items()) + " (default: none)")
    g.add_argument("--finetune-repeats", type=int, default=3, metavar="R",
                   help="subsets fine-tuned per n: the first R of --repeats (default 3)")
    g.add_argument("--finetune-mode", choices=list(MODES), default="full", help="(default full, its lp-ft recipe)")
    g.add_argument("--finetune-epochs", type=int, metavar="E",
                   help="epochs of each run (default: " + ", ".join(f"{v} on {k}" for k, v in DEFAULT_EPOCHS.items())
                        + ")")
    g.add_argument("--finetune-backbone", nargs="+", metavar="NAME",
                   help="fine-tune only these stores' backbones (default: every store's)")
    g.add_argument("--device", default="auto", help="the fine-tunes' device: auto (CUDA, MPS, CPU), cpu, cuda, …")
    add_dataset_args(p)


def main(args) -> int:
    heads = parse_heads(args.head)
    if not set(heads) <= set(HEADS):
        raise FeatbenchError("curves take single heads only (no ensembles or `all`): " + ", ".join(HEADS))
    shots = parse_shots(args.shots)
    ft_shots = finetune_shots(args.finetune_shots, args.device)
    if args.finetune_repeats < 1:
        raise FeatbenchError(f"--finetune-repeats must be at least 1 (got {args.finetune_repeats})")
    paths = dataset_stores(args.features, args.backbone, **dataset_flags(args))
    doc, folder = run_curve(paths, heads, shots, args.repeats, subset_seed=args.subset_seed, out=args.out,
                            select=args.select, finetune_shots=ft_shots, finetune_repeats=args.finetune_repeats,
                            finetune_mode=args.finetune_mode, finetune_epochs=args.finetune_epochs,
                            finetune_backbones=args.finetune_backbone, device=args.device,
                            log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(table(doc["summaries"]))
    print(f"\n{len(doc['points'])} points ({len(doc['skipped'])} skipped) in {doc['seconds']:.1f}s; every point and "
          f"summary in {folder}/curve.csv and curve.json")
    return 0
