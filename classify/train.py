"""The classify run: load and check feature stores, choose every head on val, score test once, save.

Order of work, so the test split cannot leak into any choice and nothing is written half-way:
1. load every store and reject bad input (one-line errors) before any training;
2. sweep each head's grid on train → val (`classify.select`); ensembles take each backbone's
   best head by validation log-loss; with `temperature`, each point is scored at a temperature fitted
   on its val probabilities, which the chosen model keeps (`classify.calibration`);
3. with `refit`, refit each chosen configuration on train+val (at its temperature);
4. predict the test split, once per model;
5. write `{models folder}/{backbones}-{head}[-refit].skops` and `.metrics.json`, each atomically.

Stores whose features exceed `max_memory` go through `run_streamed` instead: the same steps, with
the incremental heads of `classify.stream` fed from disk.
"""
import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from classify import ensembles, stream
from classify.calibration import Tempered
from classify.heads import ENSEMBLES, HEADS
from classify.metrics import correct_mask, evaluate, over_seeds, proba
from classify.models import SUFFIX, backbone_record, bundle, save_model
from classify.select import Selection, configurations, first_best, fit_fixed, score, scores, sweep, val_scores
from extract.config import refuse_with_features, resolve
from extract.datasets import Dataset, assign_splits, load_dataset, train_counts
from extract.names import store_stem
from features.atomic import atomic_write, check_folder, check_outside, keep_earlier, same_outcome
from features.errors import FeatbenchError, StoreError
from features.reader import FeatureStore, SplitData
from features.records import ModelMetrics, StoreMeta
from features.schema import NO_LABEL, SPLITS, featbench_version

# BLAS runs single-threaded while heads train: these dense problems are small, and a second
# OpenBLAS thread only spins when cores are shared (lbfgs on a small many-class store took many
# times the CPU with two threads on a busy 2-core machine as with one).
BLAS_THREADS = 1


@dataclass
class Store:
    """One feature store's checked splits; `name` (the file stem) names the outputs, `dataset` (its
    `FeatureStore.dataset_name`) their folder under --out."""
    path: Path
    name: str
    dataset: str
    meta: StoreMeta
    train: SplitData
    val: SplitData
    test: SplitData

    @property
    def class_names(self) -> list:
        return self.meta.class_names


def find_stores(folder: Path, backbones: list[str] | None = None, root=None) -> list[Path]:
    """The stores in a dataset's folder: all of them, or the one of each backbone name, as extract names it
    (`store_stem`) or, failing that, with the name as its stem (`NAME-cls+avg`).

    With the dataset's `root`, a store extracted from another folder of the same name is refused."""
    found = sorted(folder.glob("*.h5")) if folder.is_dir() else []
    if backbones:
        by_stem = {p.stem: p for p in found if p.is_file()}
        picked = [by_stem.get(store_stem(b)) or by_stem.get(b) for b in backbones]
        missing = [b for b, p in zip(backbones, picked) if p is None]
        if missing:
            have = ", ".join(p.stem for p in found) or "none"
            raise StoreError(f"{folder}: no feature store for {', '.join(missing)} (stores here: {have}); "
                             f"run `python -m extract --backbone {missing[0]}` first")
        found = picked
    if not found:
        raise StoreError(f"{folder}: no feature stores; run `python -m extract --backbone NAME` for this "
                         "dataset first, or pass --features FILE")
    if root is not None:
        for path in found:
            with FeatureStore(path) as fs:
                fs.check_made_from(root)
    return found


def dataset_stores(features: list[Path] | None, backbones: list[str] | None, **dataset) -> list[Path]:
    """The stores to train on: `features` as given, or those of the dataset that `resolve(**dataset)`
    configures (`find_stores`, only `backbones` if named); a store split otherwise than configured is
    used with its own splits, and noted."""
    if features:
        if backbones:
            raise FeatbenchError("pass either --features FILE… or --backbone NAME…, not both")
        refuse_with_features(dataset)
        return features
    settings = resolve(**dataset)
    listed = load_dataset(settings.path, settings.format, settings.target, settings.name)
    paths = find_stores(settings.out / listed.name, backbones, listed.root)
    for path in paths:
        with FeatureStore(path) as fs:
            made = (list(fs.meta.split_fractions), fs.meta.split_seed)
        if made != (list(settings.splits), settings.seed):
            print(f"note: {path} was split with fractions {made[0]} and seed {made[1]}, not the configured "
                  f"{list(settings.splits)} and {settings.seed}; its own splits are used", file=sys.stderr)
    return paths


def load_store(path, features: bool = True, need_val: bool = True) -> Store:
    """Read a store's splits, refusing what no head can train on or be honestly scored with.

    `features=False` reads labels, paths and rows only (X is None): for heads that stream features.
    `need_val=False` accepts an empty val split (for callers that can choose without one)."""
    with FeatureStore(path) as fs:
        where = fs.path
        if not len(fs.paths):
            raise StoreError(f"{where}: empty feature store (no embedded images); re-run `python -m extract`")
        fs.check_intact()
        for split in ("train", "val"):
            unlabelled = fs.rows(split, labelled_only=False)
            unlabelled = unlabelled[fs.labels[unlabelled] == NO_LABEL]
            if len(unlabelled):
                raise StoreError(f"{where}: {len(unlabelled)} {split} images have no label (first: "
                                 f"{fs.paths[unlabelled[0]]}); label them or put them in the test split")
        parts = {s: fs.split(s, features=features) for s in ("train", "val", "test")}
        names = fs.class_names
        meta, dataset = fs.meta, fs.dataset_name
        for split, data in parts.items():
            if not len(data) and (need_val or split != "val"):
                csv_list = (meta.dataset or {}).get("format") == "csv"
                how = ("give some rows of its CSV that split (or none, for --splits to assign)" if csv_list
                       else f"re-extract with --splits that give {split} a share")
                raise StoreError(f"{where}: no labelled {split} images; {how}")
            if data.X is not None:
                fs.check_finite(data.X, data.rows, split)
    counts = train_counts(where, names, parts["train"].y)
    for split in ("val", "test"):
        unseen = sorted(set(parts[split].y.tolist()) - set(np.flatnonzero(counts).tolist()))
        if unseen:
            raise StoreError(f"{where}: class {names[unseen[0]]!r} has {split} images but none in train "
                             f"({len(unseen)} such classes); give every class train images (--splits, or the "
                             "CSV split column)")
    _warn_absent_classes(where, names, parts)
    return Store(Path(path), Path(path).stem, dataset, meta, parts["train"], parts["val"], parts["test"])


def _warn_absent_classes(where: Path, names: list, parts: dict) -> None:
    """Warn of the classes of the store's list with no image in any split (each skipped at extraction)."""
    present = {int(c) for data in parts.values() for c in data.y}
    absent = [repr(c) for i, c in enumerate(names) if i not in present]
    if absent:
        absent = f"class{'es' * (len(absent) > 1)} {', '.join(absent)}"
        print(f"warning: {where}: no image of {absent} is in this store (each was skipped at extraction: "
              f"python -m features info {where} --skipped); the models never predict {absent}, whose test "
              "precision and recall read 0", file=sys.stderr)


def check_matching(stores: list[Store]) -> None:
    """Ensembles need stores of one dataset with one split assignment (same images, labels, splits),
    of one precision (an int8 store is never mixed with fp32 ones), extracted from the same image content
    (equal content hashes, row by row)."""
    first = stores[0]
    for other in stores[1:]:
        if (other.meta.split_fingerprint != first.meta.split_fingerprint
                or other.class_names != first.class_names):
            raise StoreError(
                f"{other.path} (dataset {other.dataset}, splits {other.meta.split_fingerprint}) and "
                f"{first.path} (dataset {first.dataset}, splits {first.meta.split_fingerprint}) do not share "
                "a dataset and split assignment; ensemble only stores extracted from the same dataset with "
                "the same --splits and --seed")
    for other in stores[1:]:
        if other.meta.precision != first.meta.precision:
            raise StoreError(f"{other.path} ({other.meta.precision}) and {first.path} ({first.meta.precision}) were "
                             "embedded at different precisions; ensemble stores of one --precision")
    with FeatureStore(first.path) as fs:
        paths, ours = fs.paths, fs.hashes
    for other in stores[1:]:
        with FeatureStore(other.path) as fs:
            changed = [p for p, a, b in zip(paths, ours, fs.hashes) if a != b]
        if changed:
            raise StoreError(f"{other.path} and {first.path}: {len(changed)} of {len(paths)} images differ in "
                             f"content hash (first: {changed[0]}), so the files changed between the two "
                             "extractions; re-run `python -m extract` for both backbones")


def asked_heads(values: list[str]) -> set[str]:
    """The names in `logreg mlp`, `logreg,mlp`, `all`…; unknown names refused."""
    asked = {h.strip() for v in values for h in v.split(",") if h.strip()}
    unknown = sorted(asked - {*HEADS, *ENSEMBLES, "all"})
    if unknown:
        raise FeatbenchError(f"unknown head {unknown[0]!r}; choose from {', '.join([*HEADS, *ENSEMBLES])} or all")
    return asked


def parse_heads(values: list[str]) -> list[str]:
    """Head names in canonical order (`all`: every head and ensemble)."""
    asked = asked_heads(values)
    return [h for h in [*HEADS, *ENSEMBLES] if h in asked or "all" in asked]


@dataclass
class Candidate:
    """A model chosen on train/val, waiting for its single test score."""
    name: str
    head: str
    stores: list
    template: object  # unfitted estimator; `chosen.fixed` params rebuild the chosen model without val
    chosen: Selection  # the chosen model, fitted on train, and the sweep that chose it
    members: dict = field(default_factory=dict)  # ensembles: each store's head
    configurations: int = 0  # `classify.select.configurations` scored on val to choose this model
    member_sweeps: dict | None = None  # avg/stack: `ModelMetrics.member_sweeps`
    replicas: dict = field(default_factory=dict)  # seed → Selection of the same head with that random state

    def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return side_by_side(self.stores, split)


def side_by_side(stores: list[Store], split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features of every store, column blocks in store order; labels) of one split."""
    parts = [getattr(s, split) for s in stores]
    return (parts[0].X if len(parts) == 1 else np.hstack([p.X for p in parts])), parts[0].y


def _single(store: Store, head: str, sel, replicas: dict) -> Candidate:
    return Candidate(f"{store.name}-{head}", head, [store], HEADS[head].make(), sel,
                     configurations=configurations(sel), replicas=replicas)


def seeded(head: str) -> bool:
    """Whether a head's fit depends on a random state (initialisation, order, folds)."""
    return "random_state" in HEADS[head].make().get_params()


def _ensemble(head: str, stores: list[Store], selections: dict, n_classes: int, temperature: bool) -> Candidate:
    name = "+".join(s.name for s in stores) + f"-{head}"
    dims = [s.train.X.shape[1] for s in stores]
    X, y = side_by_side(stores, "train")
    Xv, yv = side_by_side(stores, "val")
    if head == "concat":
        sel = sweep(ensembles.concat(dims), HEADS["logreg"].grid(len(y)), X, y, Xv, yv, n_classes, temperature)
        return Candidate(name, head, stores, ensembles.concat(dims), sel, configurations=configurations(sel))
    heads, best = list(HEADS), {}
    for s in stores:  # each store's best head on val (ties: `classify.select.first_best`)
        h = heads[first_best([selections[s.name, h].scores for h in heads])]
        best[s.name] = h, selections[s.name, h]
    members = {n: _member(HEADS[h].make().set_params(**sel.fixed), sel.temperature) for n, (h, sel) in best.items()}
    template = (ensembles.average if head == "avg" else ensembles.stack)(members, dims)
    started = time.perf_counter()
    model = fit_fixed(template, {}, X, y)
    p = proba(model, Xv, n_classes)
    t, loss, acc, raw = val_scores(model, p, yv, n_classes, temperature)
    if t is not None:
        model = Tempered.around(model, t)
    sweeps = {f"{s.name}-{h}": selections[s.name, h] for s in stores for h in HEADS}  # as `_single` names them
    seconds = time.perf_counter() - started + sum(sel.seconds for sel in sweeps.values())
    params = {n: {"head": h, **sel.params} for n, (h, sel) in best.items()}
    chosen = Selection(model, {**params, **({"temperature": round(t, 4)} if t is not None else {})}, {}, [], loss,
                       acc, seconds, t, raw)
    included = {k: {"seconds": round(sel.seconds, 3), "configurations": configurations(sel)}
                for k, sel in sweeps.items()}
    return Candidate(name, head, stores, template, chosen, members={n: h for n, (h, _) in best.items()},
                     configurations=1 + sum(m["configurations"] for m in included.values()), member_sweeps=included)


def _member(head, temperature: float | None):
    """An ensemble's member as its single head was chosen: at its val temperature, if it has one."""
    return head if temperature is None else Tempered(head, temperature)


@contextmanager
def refusal(where, head: str):
    """scikit-learn refusing the data (e.g. too few images for the folds) → one line, not a traceback."""
    try:
        yield
    except ValueError as e:
        raise FeatbenchError(f"{where}: the {head} head cannot be trained on these features "
                             f"({str(e).splitlines()[0]})") from None


def choose(stores: list[Store], heads: list[str], log=lambda msg: None, seeds: int = 1,
           temperature: bool = False) -> list[Candidate]:
    """Step 2: every requested head (and ensemble) chosen on train → val; test is not touched.

    With `seeds` > 1, each head with a random state is also chosen with random states 1..seeds-1
    (each seed its own sweep), to measure how much its test score depends on the seed. With `temperature`,
    every model is chosen and kept at a temperature fitted on val (`classify.select.sweep`)."""
    singles = [h for h in heads if h in HEADS]
    wanted = [h for h in heads if h in ENSEMBLES]
    if wanted and len(stores) < 2:
        raise FeatbenchError(f"ensembles ({', '.join(wanted)}) need at least two feature stores; found "
                             f"{stores[0].path}; extract another backbone or drop them")
    if wanted:
        check_matching(stores)
    need = list(HEADS) if {"avg", "stack"} & set(wanted) else singles
    selections = {}
    for s in stores:
        for h in need:
            with refusal(s.path, h):
                sel = selections[s.name, h] = sweep(HEADS[h].make(), HEADS[h].grid(len(s.train)), s.train.X,
                                                    s.train.y, s.val.X, s.val.y, len(s.class_names), temperature)
            log(f"{s.name}-{h}: {short_params(sel.params)} val log-loss {sel.val_log_loss:.4f} ({sel.seconds:.1f}s)")
    replicas = {}
    for s in stores:
        for h in (h for h in singles if seeds > 1 and seeded(h)):
            with refusal(s.path, h):
                replicas[s.name, h] = {seed: sweep(HEADS[h].make().set_params(random_state=seed),
                                                   HEADS[h].grid(len(s.train)), s.train.X, s.train.y, s.val.X,
                                                   s.val.y, len(s.class_names), temperature)
                                             for seed in range(1, seeds)}
            log(f"{s.name}-{h}: {seeds - 1} more seeds chosen "
                f"({sum(r.seconds for r in replicas[s.name, h].values()):.1f}s)")
    out = [_single(s, h, selections[s.name, h], replicas.get((s.name, h), {})) for s in stores for h in singles]
    for h in wanted:
        with refusal(stores[0].path.parent, h):
            out.append(_ensemble(h, stores, selections, len(stores[0].class_names), temperature))
        log(f"{out[-1].name}: val log-loss {out[-1].chosen.val_log_loss:.4f} ({out[-1].chosen.seconds:.1f}s)")
    return out


@dataclass
class Exclusion:
    """`--exclude AUDIT.csv`: the flagged images' paths (each → the kinds it is flagged as), left out of train when a
    model is `trained_without` them, and left out of test for the second score every model gets."""
    audit: Path
    flagged: dict

    def kept(self, paths: list) -> np.ndarray:
        """Whether each of `paths` is not flagged."""
        return np.array([p not in self.flagged for p in paths], bool)

    def without(self, store: Store) -> Store:
        """The store with its flagged train images removed (val and test unchanged)."""
        t = store.train
        keep = self.kept(t.paths)
        train = SplitData(t.X[keep], t.y[keep], [p for p, k in zip(t.paths, keep) if k], t.rows[keep])
        return replace(store, train=train)

    def scores(self, c: Candidate, removed: int | None) -> dict:
        """The `exclude` record of a finished model: how many flagged train images it was fitted without, how many
        test images the audit flags (in all and per kind), and its test accuracy and log-loss on the test images
        the audit did not flag (`removed` None: fitted on them all)."""
        X, y = c.features("test")
        keep = self.kept(c.stores[0].test.paths)
        kinds = Counter(k for p in c.stores[0].test.paths if p in self.flagged for k in self.flagged[p])
        loss, acc = score(c.chosen.model, X[keep], y[keep], len(c.stores[0].class_names)) if keep.any() else (None,
                                                                                                             None)
        return {"audit": str(Path(self.audit).resolve()), "trained_without_flagged": removed is not None,
                "train_removed": removed or 0, "test_flagged": int((~keep).sum()),
                "test_flagged_kinds": dict(sorted(kinds.items())),
                "n_test_not_flagged": int(keep.sum()), "accuracy_not_flagged": acc, "log_loss_not_flagged": loss}

    def check(self, stores: list[Store]) -> None:
        """Refuse, before any training, an audit that flags none of a store's images (an audit of another dataset)
        or every train image of a class (no head could learn that class without them)."""
        for s in stores:
            self._check(s.path, [p for part in (s.train, s.val, s.test) for p in part.paths], s.train.paths,
                        s.train.y, s.class_names)

    def check_listing(self, dataset: Dataset, fractions, seed: int) -> None:
        """`check` on a dataset's listing, split as its stores will be: before they are extracted."""
        codes = assign_splits(dataset.items, fractions, seed)
        train = [it for it, c in zip(dataset.items, codes) if SPLITS[c] == "train" and it.label != NO_LABEL]
        self._check(dataset.root, [it.rel for it in dataset.items], [it.rel for it in train],
                    np.array([it.label for it in train], int), dataset.class_names)

    def _check(self, where, paths: list, train_paths: list, train_y: np.ndarray, class_names: list) -> None:
        if not self.flagged.keys() & set(paths):
            raise FeatbenchError(f"--exclude {self.audit}: none of its {len(self.flagged)} flagged images is in "
                                 f"{where}; pass the audit.csv of this dataset (`python -m classify audit`)")
        before = np.bincount(train_y, minlength=len(class_names))
        after = np.bincount(train_y[self.kept(train_paths)], minlength=len(class_names))
        gone = np.flatnonzero((before > 0) & (after == 0))
        if len(gone):
            raise FeatbenchError(f"--exclude {self.audit}: it flags all {before[gone[0]]} train images of class "
                                 f"{class_names[gone[0]]!r} in {where}, so no train images would be left for "
                                 "it; drop that class's rows from the audit file or train without --exclude")


def finish(c: Candidate, refit: bool) -> ModelMetrics:
    """Steps 3-4 for one model: refit on train+val if asked, then score the test split once."""
    n_train = len(c.stores[0].train)
    if refit:
        X, y = c.features("train")
        Xv, yv = c.features("val")
        started = time.perf_counter()
        c.chosen = replace(c.chosen, model=fit_fixed(c.template, c.chosen.fixed, np.vstack([X, Xv]),
                                                     np.concatenate([y, yv]), c.chosen.temperature),
                           seconds=c.chosen.seconds + time.perf_counter() - started)
        n_train += len(c.stores[0].val)
    X, y = c.features("test")
    n_classes = len(c.stores[0].class_names)
    started = time.perf_counter()
    p = proba(c.chosen.model, X, n_classes)
    seconds = time.perf_counter() - started
    raw = proba(c.chosen.model.estimator_, X, n_classes) if isinstance(c.chosen.model, Tempered) else None
    metrics = report(c, p, seconds, n_train, refit, raw)
    if c.replicas:
        metrics = replace(metrics, **_seed_scores(c, metrics, refit))
    return metrics


def _seed_scores(c: Candidate, metrics: ModelMetrics, refit: bool) -> dict:
    """`seeds` and `seeds_seconds` of a head chosen once per random state (see `choose`)."""
    X, y = c.features("test")
    n_classes = len(c.stores[0].class_names)
    started = time.perf_counter()
    runs = [{"seed": c.template.get_params()["random_state"], "accuracy": metrics.accuracy,
             "log_loss": metrics.log_loss, "val_log_loss": c.chosen.val_log_loss, "params": c.chosen.params}]
    for seed, sel in c.replicas.items():
        model = sel.model
        if refit:
            Xt, yt = c.features("train")
            Xv, yv = c.features("val")
            model = fit_fixed(c.template, {**sel.fixed, "random_state": seed}, np.vstack([Xt, Xv]),
                              np.concatenate([yt, yv]), sel.temperature)
        loss, acc = score(model, X, y, n_classes)
        runs.append({"seed": seed, "accuracy": acc, "log_loss": loss, "val_log_loss": sel.val_log_loss,
                     "params": sel.params})
    seconds = sum(sel.seconds for sel in c.replicas.values()) + time.perf_counter() - started
    return {"seeds": over_seeds(runs), "seeds_seconds": round(seconds, 3)}


def report(c: Candidate, p: np.ndarray, predict_seconds: float, n_train: int, refit: bool,
           raw: np.ndarray | None = None) -> ModelMetrics:
    """The metrics of a model from its test-split probabilities `p` (at its val temperature, if any: `raw` are
    the head's own, whose log-loss is `log_loss_raw`)."""
    store = c.stores[0]
    y = store.test.y
    return ModelMetrics(dataset=store.dataset, backbone="+".join(s.name for s in c.stores),
                        backbones=[s.meta.backbone for s in c.stores], head=c.head,
                        model=f"{c.name}{'-refit' if refit else ''}{SUFFIX}", refit=refit,
                        classes=store.class_names, n_train=n_train, n_val=len(store.val), n_test=len(y),
                        **evaluate(y, p, store.test.paths, store.class_names),
                        val_log_loss=c.chosen.val_log_loss, val_accuracy=c.chosen.val_accuracy,
                        val_log_loss_raw=c.chosen.val_log_loss_raw if c.chosen.temperature is not None else None,
                        params=c.chosen.params, sweep=c.chosen.sweep, members=c.members, member_sweeps=c.member_sweeps,
                        configurations=c.configurations, fit_seconds=round(c.chosen.seconds, 3),
                        predict_seconds=round(predict_seconds, 4),
                        features={s.name: s.meta.fingerprint for s in c.stores},
                        split_fingerprint=store.meta.split_fingerprint, featbench_version=featbench_version(),
                        test_correct=correct_mask(p.argmax(1) == y, store.test.paths),
                        log_loss_raw=None if raw is None else scores(raw, y, len(store.class_names))[0])


def write(c: Candidate, metrics: ModelMetrics, folder: Path) -> ModelMetrics:
    """Step 5: the model bundle and its metrics JSON, each written atomically; returns the metrics
    with `created` and `path` set."""
    path = folder / metrics.model
    store = c.stores[0]
    model = bundle(c.chosen.model, head=c.head, class_names=store.class_names,
                   backbones=[backbone_record(s.name, s.meta) for s in c.stores],
                   split_fingerprint=store.meta.split_fingerprint, dataset=store.dataset,
                   refit=metrics.refit, params=c.chosen.params)
    metrics = replace(metrics, created=model["created"])
    record = path.with_suffix(".metrics.json")
    keep_earlier(record, same_outcome(record, metrics.to_json()), [path])
    save_model(path, model)
    atomic_write(record, lambda tmp: tmp.write_text(metrics.dumps()))
    return replace(metrics, path=str(path))


def default_max_memory() -> int:
    """An eighth of this machine's RAM: in-memory heads copy the features a few times over
    (standardised, float64), so their peak is several times the float32 matrix."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8


def feature_bytes(path) -> int:
    """The size of a store's feature matrix once read into memory (float32)."""
    with FeatureStore(path) as fs:
        return len(fs.paths) * fs.dim * 4


def check_models_folders(stores: list, out: Path | None) -> None:
    """`check_folder` (and `check_outside` its dataset) each models folder the stores' models go to, before any
    training."""
    for s in stores:
        check_folder(check_outside(models_folder(s, out), s.meta.dataset, s.path))


def models_folder(store: Store, out: Path | None) -> Path:
    """Where models go: OUT/DATASET/models, or without `out` the models/ folder beside the store."""
    return Path(out) / store.dataset / "models" if out is not None else store.path.parent / "models"


def run(paths: list, heads: list[str], refit: bool = False, log=lambda msg: None,
        max_memory: int | None = None, seeds: int = 1, out: Path | None = None,
        exclude: Exclusion | None = None, temperature: bool = False) -> list[ModelMetrics]:
    """Train `heads` on the stores at `paths`; returns each model's metrics (with `path` added).
    Each model is written to `models_folder(its first store, out)`: stores of several datasets each get their
    own dataset's folder (an ensemble's stores share one dataset). Each folder is checked
    (`check_folder`) before any training.

    `seeds` > 1 also chooses every head that has a random state with N-1 further seeds and records
    their test scores (`seeds` in the metrics); the saved model is the default seed's.

    `temperature` scales every model's probabilities by a temperature fitted on val (`choose`), as a calibrated
    fine-tune's are; metrics then give the test log-loss at it and at T = 1 (`log_loss_raw`).

    When the feature matrices exceed `max_memory` bytes (default: an eighth of RAM), the heads that
    learn incrementally stream them from disk instead (`classify.stream`).

    With `exclude`, every model is also chosen and fitted again without the audit's flagged train images (saved as
    NAME-excluded), and every model's `exclude` record holds its test scores on the images the audit did not flag
    too: both numbers, for both models, are always there."""
    unique = {}  # one per file, under the path first given (models go beside it)
    for p in paths:
        unique.setdefault(Path(p).resolve(), Path(p))
    names = [p.stem for p in unique.values()]
    if len(set(names)) < len(names):
        raise FeatbenchError(f"two feature stores share a name ({names}); models are named after their stores, "
                             "so train them in separate runs")
    limit = default_max_memory() if max_memory is None else max_memory
    need = sum(feature_bytes(p) for p in unique.values())
    if seeds < 1:
        raise FeatbenchError(f"--seeds must be at least 1 (got {seeds})")
    if need > limit:
        if exclude:
            raise FeatbenchError("--exclude trains in memory only; raise --max-memory or leave out --exclude")
        if seeds > 1:
            print("note: out of core, each head is trained with its default seed only", file=sys.stderr)
        return run_streamed(list(unique.values()), heads, refit, log, limit, need, out, temperature)
    stores = [load_store(p) for p in unique.values()]
    if exclude:
        exclude.check(stores)
    check_models_folders(stores, out)
    with threadpool_limits(limits=BLAS_THREADS):
        candidates = choose(stores, heads, log, seeds, temperature)
        results = [finish(c, refit) for c in candidates]
        if exclude:
            kept = [exclude.without(s) for s in stores]
            removed = len(stores[0].train) - len(kept[0].train)
            log(f"--exclude {exclude.audit}: {removed} flagged train images left out; every head chosen again")
            again = choose(kept, heads, log, seeds, temperature)
            for c in again:
                c.name += "-excluded"
            results = [replace(m, exclude=exclude.scores(c, None)) for c, m in zip(candidates, results)]
            results += [replace(finish(c, refit), exclude=exclude.scores(c, removed)) for c in again]
            candidates += again
    return [write(c, metrics, models_folder(c.stores[0], out)) for c, metrics in zip(candidates, results)]


def short_params(params: dict) -> str:
    """`{'C': 0.0316}` → `C=0.0316`; ensemble members (one dict per backbone) → `logreg+svm` (`logreg+svm
    temperature=0.8` at a val temperature)."""
    members = "+".join(v["head"] for v in params.values() if isinstance(v, dict))
    return " ".join([members] * bool(members) + [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in params.items() if not isinstance(v, dict)])


def table(results: list[ModelMetrics]) -> str:
    """One line per model: chosen params, validation and test scores, time."""
    width = max(len(r.model) for r in results) - len(SUFFIX) + 2
    head = f"{'model':<{width}}{'params':<26}{'val loss':>9}{'val acc':>8}{'test acc':>9}{'bal acc':>8}" \
           f"{'log-loss':>9}{'ECE':>7}{'fit s':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        name = r.model.removesuffix(SUFFIX)
        lines.append(f"{name:<{width}}{short_params(r.params)[:25]:<26}{r.val_log_loss:>9.4f}"
                     f"{r.val_accuracy:>8.4f}{r.accuracy:>9.4f}{r.balanced_accuracy:>8.4f}"
                     f"{r.log_loss:>9.4f}{r.ece:>7.4f}{r.fit_seconds:>7.1f}")
    return "\n".join(lines)


def exclusion_pairs(results: list[ModelMetrics]) -> list[tuple[ModelMetrics, ModelMetrics | None]]:
    """Each model trained on every train image under `--exclude`, with its `-excluded` twin (None when missing)."""
    twins = {r.model.replace("-excluded", ""): r for r in results if r.exclude and r.exclude["trained_without_flagged"]}
    return [(r, twins.get(r.model)) for r in results if r.exclude and not r.exclude["trained_without_flagged"]]


def exclusion_table(results: list[ModelMetrics]) -> str:
    """Each model's test accuracy, trained on every train image and without the flagged ones, each scored on every
    test image and on those not flagged: the four numbers side by side."""
    pairs = exclusion_pairs(results)
    first = pairs[0][0]
    removed = max(r.exclude["train_removed"] for r in results if r.exclude)
    width = max(len(r.model.removesuffix(SUFFIX)) for r, _ in pairs) + 2
    lines = [f"--exclude {first.exclude['audit']}: {removed} flagged train images left out; test scored on all "
             f"{first.n_test} images and on the {first.exclude['n_test_not_flagged']} not flagged",
             f"{'model':<{width}}{'trained on all':>28}{'trained without flagged':>28}",
             f"{'':<{width}}" + f"{'test all':>14}{'not flagged':>14}" * 2]
    lines.append("-" * len(lines[-1]))
    for r, other in pairs:
        cells = [r.accuracy, r.exclude["accuracy_not_flagged"]]
        cells += [other.accuracy, other.exclude["accuracy_not_flagged"]] if other else [None, None]
        lines.append(f"{r.model.removesuffix(SUFFIX):<{width}}"
                     + "".join(f"{'-' if v is None else f'{v:.4f}':>14}" for v in cells))
    return "\n".join([*lines, *filter(None, [flagged_test_note(first.exclude)])])


def flagged_test_note(e: dict) -> str:
    """A sentence on the test images an `exclude` record leaves out of its not-flagged scores, per kind, and why
    leaving out label issues favours every model ('' when none is left out)."""
    if not e["test_flagged"]:
        return ""
    kinds = e.get("test_flagged_kinds")  # absent from metrics written before kinds were counted
    note = f"Flagged test images left out of the not-flagged scores: {e['test_flagged']}"
    note += f" ({', '.join(f'{k} {n}' for k, n in kinds.items())})" if kinds else ""
    if kinds is None or "label_issue" in kinds:
        note += ("; label issues are flagged where a model on these features disagreed with the label, so leaving "
                 "them out favours every model: only the test-all columns compare like for like")
    return note + "."


def run_streamed(paths: list, heads: list[str], refit: bool, log, max_memory: int, need: int,
                 out: Path | None = None, temperature: bool = False) -> list[ModelMetrics]:
    """`run` out of core: each store's incremental heads fed chunk by chunk from HDF5. With `temperature`, each
    (point, epoch) is chosen at the temperature fitted to its val probabilities (`classify.stream.select`)."""
    gib = f"{need / 2**30:.1f} GiB of features > --max-memory {max_memory / 2**30:.2f} GiB"
    wanted = [h for h in heads if h in stream.STREAM_HEADS]
    if not wanted:
        raise FeatbenchError(f"{gib}: out of core only the {', '.join(stream.STREAM_HEADS)} heads learn "
                             "incrementally; pass --head logreg or mlp, or raise --max-memory")
    stores = [load_store(p, features=False) for p in paths]
    check_models_folders(stores, out)
    dropped = [h for h in heads if h not in wanted]
    print(f"note: {gib}: streaming features from disk"
          + (f"; skipping {', '.join(dropped)} (they do not learn incrementally)" if dropped else ""), file=sys.stderr)
    written = []
    with threadpool_limits(limits=BLAS_THREADS):
        for store in stores:
            with FeatureStore(store.path) as fs:
                chunk = stream.chunk_rows_for(fs.dim, max_memory)
                train, val, test = (stream.StreamedSplit(fs, getattr(store, s).rows, chunk, s)
                                    for s in ("train", "val", "test"))
                scaler = stream.fit_scaler(train)
                chosen = stream.select(wanted, fs, train, val, scaler, log, temperature)
                fitted = train  # what the saved models were fitted on
                if refit:
                    fitted = stream.StreamedSplit(fs, np.concatenate([train.rows, val.rows]), chunk, "train+val")
                k = len(store.class_names)
                candidates = []
                for head, best in chosen.items():
                    t = best["temperature"]
                    params = {**best["point"], "epochs": best["epochs"]}
                    fixed = params
                    if t is not None:
                        params = {**params, "temperature": round(t, 4), "early_stop": "tempered"}
                    sel = Selection(best["model"] if t is None else Tempered.around(best["model"], t), params, fixed,
                                    best["sweep"], best["val_log_loss"], best["val_accuracy"], best["seconds"], t,
                                    best["val_log_loss_raw"])
                    c = Candidate(f"{store.name}-{head}", head, [store], None, sel, configurations=configurations(sel))
                    if refit:
                        started = time.perf_counter()
                        model = stream.refit(head, best, fs, fitted)
                        c.chosen = replace(c.chosen, model=model if t is None else Tempered.around(model, t),
                                           seconds=c.chosen.seconds + time.perf_counter() - started)
                    candidates.append(c)
                raws = [c.chosen.model.estimator_ for c in candidates] if temperature else []  # in the same pass
                probs, seconds = stream.predict([c.chosen.model for c in candidates] + raws, test, k)
                raws = probs[len(candidates):] or [None] * len(candidates)
                for c, p, raw, predict_seconds in zip(candidates, probs, raws, seconds):
                    written.append((c, replace(report(c, p, predict_seconds, len(fitted), refit, raw),
                                               out_of_core=True)))
    return [write(c, metrics, models_folder(c.stores[0], out)) for c, metrics in written]
