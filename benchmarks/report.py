"""Reports from metrics files: markdown, one self-contained HTML file, and CSV/JSON of every number.

`python -m benchmarks report OUT/DATASET` (or metrics files) rebuilds the report of a dataset from
its `models/*.metrics.json` and the feature stores beside them, without training anything.

Every measured model becomes one flat row (CLIP_benchmark style): `kind` (frozen | fine-tuned),
backbone, head, the test metrics, `fit_seconds`, `extract_seconds` and `images_per_second` (from
the stores: over every run that embedded their rows, `Extraction.cost`), `compute_seconds` (frozen:
extraction + head fit; fine-tuned: training) and `device`.
Published rows (`benchmarks.published`) follow with their sources, never mixed into the measured ones.
A label-efficiency curve (`curve.json` of `benchmarks curve` or `run`) adds a section, its plot and
`curve.csv` (every point, with its subset seed).
"""
import argparse
import base64
import csv
import html
import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import numpy as np
import sklearn

from benchmarks import plots
from benchmarks.published import TASK_CLASSES, published_for, task_of
from benchmarks.recipes import DEFAULT_RECIPE, MODES
from classify.audit import KINDS as AUDIT_KINDS
from classify.audit import leaking_pairs
from classify.heads import ENSEMBLES, HEADS
from classify.metrics import BOOTSTRAP_RESAMPLES, discordant, interval, mask_bits, mcnemar_p, two_way_bootstrap
from classify.models import SUFFIX
from classify.select import near_best
from classify.train import exclusion_pairs, flagged_test_note, short_params
from extract.files import read_given
from features.atomic import atomic_write, check_outside, csv_text, images_folder
from features.entries import given_file
from features.errors import FeatbenchError, StoreError
from features.reader import FeatureStore
from features.records import ModelMetrics, StoreMeta
from features.schema import check_dataset_name

HEAD_ORDER = [*HEADS, *ENSEMBLES, *(f"finetune-{m}" for m in MODES)]
SCALARS = ("accuracy", "balanced_accuracy", "log_loss", "ece", "val_log_loss", "val_log_loss_raw", "val_accuracy",
           "fit_seconds", "predict_seconds", "n_train", "n_val", "n_test", "refit", "configurations",
           "split_fingerprint")
SEED_KEYS = ("accuracy_mean", "accuracy_std", "log_loss_mean", "log_loss_std")
EXCLUDE_KEYS = ("trained_without_flagged", "train_removed", "test_flagged", "n_test_not_flagged",
                "accuracy_not_flagged", "log_loss_not_flagged")  # `--exclude`: the record's numbers, flat
FILES = ("report.md", "report.html", "results.csv", "results.json")
CURVE_FILES = ("curve.csv", "label_efficiency.png")  # with a curve
SELECTION_WORDS = {"val": "chosen on val", "default": "fitted with the head's defaults (a class with one image)"}


# ---- collecting -------------------------------------------------------------------------------------

def load_metrics(inputs) -> list[ModelMetrics]:
    """Metrics from `*.metrics.json` files or folders (a dataset folder OUT/DATASET or its models/)."""
    files = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted((p / "models" if (p / "models").is_dir() else p).glob("*.metrics.json"))
            if not found:
                raise FeatbenchError(f"{p}: no *.metrics.json here or in {p / 'models'}; run `python -m classify` "
                                     "or `python -m benchmarks run` first")
            files += found
        else:
            files.append(given_file(p, "metrics file", "no such metrics file or folder"))
    out = [ModelMetrics.read(f) for f in files]
    if other := next((i for i, m in enumerate(out) if m.dataset != out[0].dataset), None):
        raise FeatbenchError(f"{files[0]} and {files[other]}: models of two datasets ({out[0].dataset}, "
                             f"{out[other].dataset}); report one dataset at a time")
    return [replace(m, path=str(f.parent / m.model)) for f, m in zip(files, out)]


def one_split(metrics: list[ModelMetrics]) -> tuple[list[ModelMetrics], list[str]]:
    """Keep the models scored on the most common split assignment; name the others."""
    counts = Counter(m.split_fingerprint for m in metrics)
    keep = counts.most_common(1)[0][0]
    dropped = [f"{m.model}: scored on another split ({m.split_fingerprint}, not {keep}); left out"
               for m in metrics if m.split_fingerprint != keep]
    return [m for m in metrics if m.split_fingerprint == keep], dropped


def store_metas(metrics: list[ModelMetrics]) -> tuple[dict[str, StoreMeta], Path | None]:
    """Metadata of every feature store the frozen models were trained on, by store name: only a store still holding
    the embeddings a model was trained on (its fingerprint), not one extracted again since; and the first one's path
    (the store whose dataset record the report takes)."""
    metas, first = {}, None
    for m in metrics:
        for stem, fingerprint in m.features.items():
            path = m.dataset_folder() / f"{stem}.h5"
            if stem not in metas and path.is_file():
                with FeatureStore(path) as fs:
                    if fs.meta.fingerprint == fingerprint:
                        metas[stem], first = fs.meta, first or path
    return metas, first


def _extract_seconds(meta: StoreMeta | None) -> float | None:
    """Time to embed every image of a store at the rate of the runs that embedded its rows: its rows × their
    recorded seconds / images (`Extraction.cost`), which is those seconds where they embedded just its rows, not
    the rate rounded to 0.01 img/s; a store that records a rate alone: rows / it (None: no timing)."""
    cost = meta.cost() if meta else None
    if cost and cost.images and cost.seconds:
        return round(meta.rows * cost.seconds / cost.images, 3)
    if not meta or not meta.embedding_rate:
        return None
    return round(meta.rows / meta.embedding_rate, 3)


def measured_row(m: ModelMetrics, metas: dict) -> dict:
    """One model's flat row: test metrics, timing, compute and device."""
    finetuned = m.head.startswith("finetune-")
    row = {"kind": "fine-tuned" if finetuned else "frozen", "dataset": m.dataset, "backbone": m.backbone,
           "head": m.head, "model": m.model.rsplit(".", 1)[0]}
    row.update({k: getattr(m, k) for k in SCALARS})
    row.update(m.per_class())
    row["params"] = json.dumps(m.params, sort_keys=True)
    seeds = m.seeds or {}
    row.update(seeds=seeds.get("n"), **{k: seeds.get(k) for k in SEED_KEYS})
    row.update({f"exclude/{k}": (m.exclude or {}).get(k) for k in EXCLUDE_KEYS})
    calibrated = m.params.get("recipe", {}).get("calibrate") if finetuned else True  # seed: T = 1 recorded
    row.update(temperature=m.params.get("temperature") if calibrated else None, log_loss_raw=m.log_loss_raw)
    if finetuned:
        c = m.compute or {}
        recipe = m.params.get("recipe", {})
        row.update(recipe=recipe.get("name"), peak_lrs=" ".join(f"{x:g}" for x in recipe.get("lrs", [])),
                   best_epoch=m.params.get("best_epoch"), configurations=c.get("configurations"),
                   images_seen=c.get("images_seen"),
                   extract_seconds=None, images_per_second=None, compute_seconds=m.fit_seconds,
                   device=c.get("device", ""), device_name=c.get("device_name", ""))
    else:
        stores = [metas.get(s) for s in m.features]
        parts = [_extract_seconds(s) for s in stores]
        extract = round(sum(parts), 3) if parts and None not in parts else None
        row.update(extract_seconds=extract,
                   images_per_second=stores[0].embedding_rate if len(stores) == 1 and stores[0] else None,
                   compute_seconds=round(extract + m.fit_seconds, 3) if extract is not None else None,
                   device="+".join(sorted({s.device for s in stores if s})) or "",
                   device_name="")
    return row


def _order(row: dict) -> tuple:
    head = row["head"]
    return (row["kind"] != "frozen", head in ENSEMBLES, row["backbone"],
            HEAD_ORDER.index(head) if head in HEAD_ORDER else len(HEAD_ORDER), row.get("refit", False))


@dataclass
class Collected:
    """Everything a report shows, before formatting."""
    metrics: list
    rows: list
    published: list
    metas: dict
    notes: list = field(default_factory=list)
    curve: dict | None = None  # curve.json's doc
    audit: dict | None = None  # `read_audit`: audit.csv's rows and map.png of `classify audit`
    excluded: list = field(default_factory=list)  # models trained without the audit's flagged images (--exclude)
    dataset: dict = field(default_factory=dict)  # `dataset_record`
    dataset_store: Path | None = None  # the store that record is from

    def images_root(self) -> Path:
        """The dataset's folder (`images_folder`: a project moved whole finds its images from the store), else the
        current folder."""
        return images_folder(self.dataset, self.dataset_store) or Path(".")

    def best(self, kind: str, backbone: str | None = None, refit: bool | None = None) -> dict | None:
        """The `kind` row (of one backbone, if given) chosen by validation log-loss, never by test; ties (within
        `classify.select.TIE` of the lowest: a `-refit` model carries its twin's val scores, heads all right on val
        sit at one Laplace-limited confidence) go to the model not refitted, then the lower raw val log-loss (T = 1;
        `classify.select.first_best`), then val accuracy, then name. `refit` (True, False) keeps only the models
        refitted on train + val, or only those fitted on train alone."""
        rows = [r for r in self.rows if r["kind"] == kind and r.get("val_log_loss") is not None
                and backbone in (None, r["backbone"]) and refit in (None, bool(r.get("refit")))]
        if not rows:
            return None
        raw = [r.get("val_log_loss_raw") or r["val_log_loss"] for r in rows]
        best = min(near_best([(r["val_log_loss"], x) for r, x in zip(rows, raw)]),
                   key=lambda i: (bool(rows[i].get("refit")), raw[i], -(rows[i].get("val_accuracy") or 0),
                                  rows[i].get("model", "")))
        return rows[best]

    def metrics_of(self, row: dict) -> ModelMetrics:
        return next(m for m in self.metrics if m.model.rsplit(".", 1)[0] == row["model"])


def collect(metrics: list[ModelMetrics], notes: list | None = None, curve: dict | None = None,
            audit: dict | None = None) -> Collected:
    if not metrics:
        raise FeatbenchError("no models to report on")
    excluded = [m for m in metrics if (m.exclude or {}).get("trained_without_flagged")]
    metrics = [m for m in metrics if not (m.exclude or {}).get("trained_without_flagged")]
    if not metrics:
        raise FeatbenchError("only models trained without an audit's flagged images (--exclude); report them with "
                             "the models trained on every image")
    metrics, dropped = one_split(metrics)
    metas, first = store_metas(metrics)
    rows = sorted((measured_row(m, metas) for m in metrics), key=_order)
    dataset, store = dataset_record(metrics, metas, first)
    published = [p.as_row() for p in published_for(task_of(dataset))]
    return Collected(metrics, rows, published, metas, list(notes or []) + dropped + _mixed_calibration(rows), curve,
                     audit, excluded, dataset, store)


def dataset_record(metrics: list[ModelMetrics], metas: dict[str, StoreMeta], first: Path | None
                   ) -> tuple[dict, Path | None]:
    """The dataset record (`Dataset.describe()`: root, format, name…) of a store the models were trained on, and
    that store: a frozen model's (`store_metas`' first, at `first`), else the one a fine-tune took its split from;
    ({}, None) where none is here."""
    if metas:
        return next(iter(metas.values())).dataset or {}, first
    for m in metrics:
        if not (m.split_source or "").startswith("store "):
            continue
        recorded = Path(m.split_source.removeprefix("store "))  # as the run gave it: maybe relative to its folder
        for store in (m.dataset_folder() / recorded.name, recorded):
            try:
                with FeatureStore(store) as fs:
                    return fs.meta.dataset or {}, store
            except StoreError:  # gone, moved or damaged since: only a hint
                continue
    return {}, None


def _mixed_calibration(rows: list[dict]) -> list[str]:
    """A note when some frozen models are at a val temperature and others not: the best by val log-loss leans
    to the former, as a temperature never raises the val log-loss it is fitted on."""
    frozen = [r for r in rows if r["kind"] == "frozen"]
    tempered = [r for r in frozen if r.get("temperature") is not None]
    if not 0 < len(tempered) < len(frozen):
        return []
    return [f"{len(tempered)} of the {len(frozen)} frozen models are at a val temperature (`classify --temperature`) "
            "and the others not; a temperature never raises val log-loss, so choosing the best frozen model by it "
            "leans to them: train them alike"]


def read_audit(folder: Path) -> dict | None:
    """The audit in `folder` (audit.csv and map.png of `python -m classify audit`), or None when there is none."""
    folder = Path(folder)
    if not (folder / "audit.csv").is_file():
        return None
    with open(folder / "audit.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    png = folder / "map.png"
    return {"folder": str(folder), "rows": rows, "map": png.read_bytes() if png.is_file() else None}


def audit_texts(c: Collected) -> tuple[str, tuple, tuple | None]:
    """The audit section's sentence, its counts table and (with --exclude models) the side-by-side table."""
    rows = c.audit["rows"]
    counts = Counter(r["kind"] for r in rows)
    pairs = leaking_pairs((r["group"], r["split"]) for r in rows if r["kind"] == "leakage")
    leak = ", ".join(f"{a}-{b} {n}" for (a, b), n in sorted(pairs.items())) or "none"
    intro = (f"`python -m classify audit` flagged {plural(len({r['path'] for r in rows}), 'image')} "
             f"({c.audit['folder']}/audit.csv, one row per image and kind; scores: higher is surer). Duplicate "
             f"groups spanning splits (leakage), per split pair: {leak}.")
    table = (["kind", "flagged"], [[k, counts.get(k, 0)] for k in AUDIT_KINDS])
    side = [[m.model.removesuffix(SUFFIX), pct(m.accuracy), pct(m.exclude["accuracy_not_flagged"]),
             pct(twin.accuracy) if twin else "-", pct(twin.exclude["accuracy_not_flagged"]) if twin else "-"]
            for m, twin in exclusion_pairs(c.metrics + c.excluded)]
    if not side:
        return intro, table, None
    e = next(m.exclude for m in c.metrics if m.exclude)
    removed = max((m.exclude["train_removed"] for m in c.excluded), default=0)
    intro += (f" Trained again without the {removed} flagged train images of {e['audit']} (val unchanged); test "
              f"scored on all {c.metrics[0].n_test} images and on the {e['n_test_not_flagged']} not flagged. "
              f"{flagged_test_note(e)}").rstrip()
    return intro, table, (["model", "trained on all: test all", "not flagged", "without flagged: test all",
                           "not flagged"], side)


def read_curve(path: Path) -> dict:
    """A curve.json (of `benchmarks curve` or `run`); a missing or unreadable one (`read_given`) is one line."""
    data = read_given(path, "curve file", "no such curve file (`python -m benchmarks curve` writes one)")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise FeatbenchError(f"{path}: not a readable curve.json ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("points"), list) or "summaries" not in doc:
        raise FeatbenchError(f"{path}: not a curve.json (no points and summaries)")
    return doc


def check_curve(doc: dict, path: Path, metrics: list[ModelMetrics]) -> list[str]:
    """Refuse, in one line naming `path`, a curve of another dataset or split than the models the report keeps
    (`one_split`); a curve.json that records no split (older ones) is a note, returned."""
    kept = one_split(metrics)[0][0]
    if doc.get("dataset", kept.dataset) != kept.dataset:
        raise FeatbenchError(f"{path}: a curve of {doc['dataset']}, not of {kept.dataset}")
    split = doc.get("split_fingerprint")
    if split is None:
        return [f"{path}: records no split fingerprint (written before curves did), so the report cannot check "
                "that it was drawn on its models' split; re-run the curve to check"]
    if split != kept.split_fingerprint:
        raise FeatbenchError(f"{path}: a curve drawn on split {split}, not on the report's models' split "
                             f"({kept.split_fingerprint}); re-run the curve on their stores (python -m benchmarks "
                             "curve)")
    return []


# ---- formatting -------------------------------------------------------------------------------------

def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def num(x, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def secs(x) -> str:
    return "—" if x is None else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def published_note(c: Collected) -> str:
    """Why the published rows are orientation only: other splits and, where it differs, another class set."""
    note = "Published rows were measured on other splits (listed below)"
    task, classes = c.published[0]["task"], len(c.metrics[0].classes)
    if TASK_CLASSES.get(task, classes) != classes:
        note += f", over {TASK_CLASSES[task]} classes where this dataset has {classes}"
    return note + ", and are shown for orientation, not as like-for-like comparisons."


def main_table(c: Collected) -> tuple[list, list, list]:
    """(header, rows, sources): measured rows (★ = best of its kind by val log-loss), then published ones."""
    best = {id(c.best("frozen")), id(c.best("fine-tuned"))}
    header = ["result", "backbone", "head", "test accuracy", "log-loss", "fit s", "extraction s", "images/s",
              "compute s", "device", "configs", "over seeds"]
    rows = []
    for r in c.rows:
        head = r["head"] + (", refit" if r.get("refit") else "")
        head += "" if _default_recipe(r) else f", {r['recipe']} recipe"
        rows.append([f"{'★ ' if id(r) in best else ''}measured, {r['kind']}", r["backbone"], head, pct(r["accuracy"]),
                     num(r["log_loss"]), secs(r["fit_seconds"]), secs(r["extract_seconds"]),
                     num(r["images_per_second"], 1), secs(r["compute_seconds"]), r["device"] or "—",
                     str(r["configurations"]) if r.get("configurations") is not None else "—", spread(r)])
    sources = []
    for p in c.published:
        sources.append(f"{p['source']} — measured on: {p['split']}")
        rows.append([f"published [{len(sources)}]", p["backbone"], p["method"], pct(p["accuracy"]),
                     num(p["log_loss"]), "—", "—", "—", "—", "—", "—", "—"])
    return header, rows, sources


def _default_recipe(r: dict) -> bool:
    """Whether a row is a frozen head or a fine-tune trained with its mode's default recipe."""
    mode = r["head"].removeprefix("finetune-")
    return r["kind"] == "frozen" or not r.get("recipe") or r["recipe"] == DEFAULT_RECIPE.get(mode)


def spread(r: dict) -> str:
    """`98.70 ± 0.21% / 0.0412 ± 0.0031 (3 seeds)`: test accuracy and log-loss over seeds, or —."""
    if not r.get("seeds"):
        return "—"
    return (f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}% / {r['log_loss_mean']:.4f} ± "
            f"{r['log_loss_std']:.4f} ({r['seeds']} seeds)")


def _qualifiers(r: dict) -> str:
    """` (seed recipe; …)`: what a verdict says beside a fine-tune's name: a recipe not its mode's default, one
    peak learning rate rather than a sweep (an untuned ablation), and that val chose its starting point (0 epochs
    of training); empty for the rest."""
    words = [] if _default_recipe(r) else [f"{r['recipe']} recipe"]
    if len((r.get("peak_lrs") or "").split()) == 1:
        words.append(f"an untuned ablation: one peak lr, {r['peak_lrs']}, not swept on val")
    if r.get("best_epoch") == 0:
        words.append("its starting point: 0 epochs of training chosen on val")
    return f" ({'; '.join(words)})" if words else ""


def _compute_words(r: dict) -> str:
    if r["kind"] == "fine-tuned":
        return f"{secs(r['compute_seconds'])} s of training on {r['device_name'] or r['device']}"
    if r["compute_seconds"] is None:
        return f"{secs(r['fit_seconds'])} s of head fitting (extraction time not recorded)"
    return (f"{secs(r['compute_seconds'])} s: {secs(r['extract_seconds'])} s extraction on {r['device']} "
            f"+ {secs(r['fit_seconds'])} s head fit on cpu")


def _log_loss_words(r: dict) -> str:
    """A row's test log-loss with its calibration: its val temperature and the raw (T = 1) one, or none."""
    if r.get("temperature") is None:
        return f"{num(r['log_loss'])} with no val temperature"
    raw = f"{num(r['log_loss_raw'])} raw" if r.get("log_loss_raw") is not None else "raw not recorded"
    return f"{num(r['log_loss'])} after its val temperature T = {r['temperature']:.2f}, {raw}"


def fine_tune_opponent(c: Collected, backbone: str | None = None) -> dict | None:
    """The frozen row a fine-tune (trained on train alone) is set against: the best fitted on train alone where
    there is one, else the best refitted on train + val (`_versus` then says the frozen side saw val too)."""
    return c.best("frozen", backbone, refit=False) or c.best("frozen", backbone)


def _fitted_alike(a: dict, b: dict) -> bool:
    """Whether two rows were both refitted on train + val, or both fitted on train alone."""
    return bool(a.get("refit")) == bool(b.get("refit"))


def _versus(frozen: dict, tuned: dict) -> str:
    ratio = tuned["compute_seconds"] / frozen["compute_seconds"]
    gap = 100 * (frozen["accuracy"] - tuned["accuracy"])
    where = "equal in test accuracy" if round(gap, 2) == 0 else \
        f"{abs(gap):.2f} points {'above' if gap > 0 else 'below'} in test accuracy"
    tempered = (frozen.get("temperature") is not None, tuned.get("temperature") is not None)
    unequal = {(False, True): "; only the fine-tune's log-loss is at a val temperature: `python -m classify "
                              "--temperature` gives the frozen heads one",
               (True, False): "; only the frozen head's log-loss is at a val temperature (its recipe fits the "
                              "fine-tune none): compare the frozen head's raw log-loss"}.get(tempered, "")
    refit = (f"; the frozen head was refitted on train + val ({frozen['n_train']} images), the fine-tune trained on "
             f"train alone ({tuned['n_train']}): the frozen side saw "
             f"{plural(frozen['n_train'] - tuned['n_train'], 'more labelled image')}" if frozen.get("refit") else "")
    return (f"{where}{refit} "
            f"(log-loss {_log_loss_words(frozen)} against {_log_loss_words(tuned)}{unequal}), with "
            f"{max(ratio, 1 / ratio):.3g}× {'less' if ratio >= 1 else 'more'} compute "
            f"({secs(frozen['compute_seconds'])} s against {secs(tuned['compute_seconds'])} s)")


def _significance(c: Collected, frozen: dict, tuned: dict) -> str:
    """`; …`: an exact McNemar test on the test images only one side got right, where both models record which
    (`test_correct`) on the same test images; else that the difference is not tested."""
    f, t = c.metrics_of(frozen), c.metrics_of(tuned)
    if not (f.test_correct and t.test_correct) or (f.n_test, f.split_fingerprint) != (t.n_test, t.split_fingerprint):
        return "; not tested for significance (no per-image results of both on the same test images)"
    only_frozen, only_tuned = discordant(f.test_correct, t.test_correct)
    p = mcnemar_p(only_frozen, only_tuned)
    return (f"; {plural(only_frozen, 'test image')} right only frozen, {only_tuned} only fine-tuned "
            f"(exact McNemar p = {p:.2g}): "
            f"{'a significant difference' if p < 0.05 else 'not distinguishable'} on {f.n_test} test images")


def _gap(r: dict) -> str:
    """The chosen configuration's validation scores next to its test scores."""
    if r.get("val_accuracy") is None:
        return ""
    return (f"val{' (its train-only fit)' if r.get('refit') else ''} {pct(r['val_accuracy'])} / log-loss "
            f"{num(r['val_log_loss'])} → test {pct(r['accuracy'])} / "
            f"{num(r['log_loss'])}" + (f"; test over seeds {spread(r)}" if r.get("seeds") else ""))


@dataclass
class Pool:
    """What a pool of models took to fit and choose, each (store, head) sweep counted once."""
    seconds: float
    configurations: int
    reused: int  # `avg`/`stack` models whose single-head sweeps are counted once
    recounted: int  # `avg`/`stack` models whose metrics do not name the sweeps they include (counted again)


def pool_totals(c: Collected, rows: list[dict]) -> Pool:
    """Every model's own fit and configurations; an `avg` or `stack` includes every single head's sweep on its stores
    (`member_sweeps`), so each counts once: by the pool's row of that store and head, else by one ensemble naming it."""
    rows_of = {f"{r['backbone']}-{r['head']}" for r in rows}
    seconds, configs, shared, reused, recounted = 0.0, 0, {}, 0, 0
    for r in rows:
        m = c.metrics_of(r)
        sweeps = m.member_sweeps or {}
        reused += bool(sweeps)
        recounted += bool(m.members) and m.member_sweeps is None
        seconds += (r["fit_seconds"] or 0) - sum(s["seconds"] for s in sweeps.values())
        configs += (r.get("configurations") or 0) - sum(s["configurations"] for s in sweeps.values())
        shared.update((k, s) for k, s in sweeps.items() if k not in rows_of)
    return Pool(seconds + sum(s["seconds"] for s in shared.values()),
                configs + sum(s["configurations"] for s in shared.values()), reused, recounted)


def _pool(c: Collected, rows: list[dict]) -> str:
    """How many models and configurations the choice was made among, and what computing all of them took."""
    pool = pool_totals(c, rows)
    once = " (the single heads' sweeps that avg and stack reuse counted once)" if pool.reused else ""
    recounted = (f", counting again the single-head sweeps included by {plural(pool.recounted, 'ensemble')} whose "
                 "metrics predate `member_sweeps`" if pool.recounted else "")
    return (f"best by val log-loss of {len(rows)} models, {pool.configurations} configurations scored on val in all"
            f"{once}, {_pool_seconds(c, rows, pool.seconds)}{recounted}")


def _pool_seconds(c: Collected, rows: list[dict], fits: float) -> str:
    """The whole pool's compute: fine-tunes' training; frozen: each store's extraction once + the head fits."""
    if rows[0]["kind"] == "fine-tuned":
        return f"{secs(fits)} s of training for all of them"
    stores = dict.fromkeys(s for r in rows for s in c.metrics_of(r).features)
    extracts = [_extract_seconds(c.metas.get(s)) for s in stores]
    if None in extracts:
        return f"{secs(fits)} s of head fits for all of them (extraction time not recorded for every store)"
    return (f"{secs(sum(extracts) + fits)} s for all of them ({plural(len(stores), 'store')} extracted once: "
            f"{secs(sum(extracts))} s, + {secs(fits)} s of head fits)")


def frozen_budget(c: Collected, r: dict, pool: list[dict]) -> str:
    """What the frozen side was given: configurations, images and their treatment, seconds, device."""
    m = c.metrics_of(r)
    images = max((c.metas[s].rows for s in m.features if s in c.metas), default=None)
    stores = len(m.features) or 1
    embedded = (f"each of {images} images embedded once{f' by each of {stores} backbones' if stores > 1 else ''}"
                if images else "every image embedded once")
    tried = _pool(c, pool) if len(pool) > 1 else f"{r.get('configurations') or 0} configurations scored on val"
    chosen = f"{r['head']} {short_params(m.params)}".rstrip()
    fitted = (f"the head refitted on {r['n_train']} train + val images" if r.get("refit") else
              f"the head fitted on {r['n_train']} train images")
    treated = _treatment([c.metas[s] for s in m.features if s in c.metas])
    return (f"frozen — {tried}; chosen {chosen} ({_gap(r)}); {embedded} ({treated}), {fitted}, "
            f"{_frozen_calibration(m)}; {_compute_words(r)}{_more_seeds(m, 'each sweeps its grid on val again')}")


def _frozen_calibration(m: ModelMetrics) -> str:
    """How a frozen model's probabilities are made: an SVM's β fitted on train folds, then a val temperature or
    none (`python -m classify --temperature`)."""
    tempered = _temperature_words(m.params.get("temperature"), m.log_loss_raw)
    if m.params.get("temperature") is not None:
        stopped_raw = m.params.get("early_stop") != "tempered"  # metrics of an older featbench
        caveats = {", its epoch early-stopped at T = 1": stopped_raw and m.head == "mlp" and not m.out_of_core,
                   ", fitted for the point and epoch chosen at T = 1 (out of core)": stopped_raw and m.out_of_core,
                   ", fitted with the train-only fit and kept for the refit on train + val": m.refit}
        tempered += "".join(words for words, applies in caveats.items() if applies)
    if m.head == "svm":
        return f"probabilities softmax(β·margins) with β fitted on train folds, {tempered}"
    svm = " (its SVM members': β fitted on train folds)" if "svm" in m.members.values() else ""
    return f"probabilities as the {'ensemble' if m.members else 'head'} gives them{svm}, {tempered}"


def _treatment(metas: list) -> str:
    """How the stores read their images: resize, crop, readout and arithmetic as recorded, and no augmentation."""
    words = {"pool": "pool {}", "blocks": "last {} blocks", "tta": "{}-averaged features"}
    parts = []
    for s in metas:
        p = s.preprocess or {}
        crop = ("resize + centre crop" if not p else
                f"resize to {p['size']}×{p['size']} {p['interpolation']} (squash, no crop)" if not p["resize"] else
                f"resize {p['resize']} + centre crop {p['size']} {p['interpolation']}")
        readout = [words.get(k, k + " {}").format(v) for k, v in (s.readout or {}).items() if k != "image_size"]
        precision = [f"{s.precision} arithmetic"] if s.precision != "fp32" else []
        parts.append(", ".join([crop, *readout, *precision]))
    return "; ".join(dict.fromkeys(parts or ["resize + centre crop"])) + ", no augmentation"


def finetune_budget(c: Collected, r: dict, pool: list[dict]) -> str:
    """What the fine-tuned side was given: recipe, runs × epochs, images seen, chosen point, seconds, device."""
    m = c.metrics_of(r)
    p, cp = m.params, m.compute or {}
    recipe = p.get("recipe", {})
    lrs = ", ".join(f"{x:g}" for x in recipe.get("lrs", [p.get("lr", 0)]))
    probe = f" + {cp['probe_images']} images embedded for the linear probe" if cp.get("probe_images") else ""
    pooled = _pool(c, pool) + "; " if len(pool) > 1 else ""
    counted = "run × epoch, + probe C values, the start among them" if probe else "run × epoch, + the start"
    chosen = (f"chosen: its starting point, epoch 0, before any training step (the pretrained trunk with "
              f"{'the linear probe' if probe else 'a random head'}; no trained epoch scored lower on val)"
              if p.get("best_epoch") == 0 else f"chosen lr {p.get('lr', 0):g}, epoch {p.get('best_epoch', '?')}")
    again = (f"each trains the chosen peak lr {p.get('lr', 0):g} again, its epoch "
             f"{'and temperature ' if recipe.get('calibrate') else ''}chosen on val; unlike a frozen head's seeds, "
             "which sweep its grid again, the lr is not swept again")
    return (f"fine-tuned — {pooled}{r['head']}, {recipe.get('name', '?')} recipe ({cp.get('augment', '?')}): "
            f"{plural(cp.get('runs', 1), 'run')} at peak lr {lrs}, {plural(p.get('epochs', 0), 'epoch')} each, "
            f"trained on {r['n_train']} train images, "
            f"{cp.get('configurations', '?')} configurations ({counted}) scored on val; "
            f"{cp.get('images_seen', '?')} training images seen{probe}; {chosen} ({_gap(r)}); "
            f"{_tuned_calibration(r)}; {secs(r['compute_seconds'])} s of training on "
            f"{r['device_name'] or r['device']}{_more_seeds(m, again)}")


def _tuned_calibration(r: dict) -> str:
    """How a fine-tune's test probabilities are made: at the temperature fitted on val (with the raw log-loss), or
    as its softmax gives them."""
    if r.get("temperature") is None:
        return "probabilities as its softmax gives them, no val temperature"
    return _temperature_words(r["temperature"], r.get("log_loss_raw"))


def _temperature_words(temperature: float | None, raw: float | None) -> str:
    """Test probabilities at a val temperature, with the test log-loss at T = 1 (`raw`); or no val temperature."""
    if temperature is None:
        return "no val temperature"
    at_one = f"test log-loss {num(raw)} at T = 1" if raw is not None else "raw test log-loss not recorded"
    return f"test probabilities at temperature T = {temperature:.2f} fitted on val ({at_one})"


def _more_seeds(m: ModelMetrics, how: str) -> str:
    """The extra seeds' cost, which the compute figures leave out, and `how` each was chosen."""
    n = (m.seeds or {}).get("n", 1)
    return f"; {plural(n - 1, 'more seed')} ({how}): {secs(m.seeds_seconds)} s more" if n > 1 else ""


def _budgets(c: Collected, frozen: dict, tuned: dict, frozen_pool: list, tuned_pool: list) -> str:
    return f"Budgets: {frozen_budget(c, frozen, frozen_pool)}. {finetune_budget(c, tuned, tuned_pool)}."


def verdict(c: Collected) -> str:
    """The best frozen-feature model against the best fine-tuned one, then each fine-tune against the best
    frozen head on its own backbone: scores, compute, and each side's budget."""
    best_frozen, tuned = c.best("frozen"), c.best("fine-tuned")
    frozen_rows = [r for r in c.rows if r["kind"] == "frozen"]
    tuned_rows = [r for r in c.rows if r["kind"] == "fine-tuned"]
    lines = []
    for label, r in (("Best frozen-feature model", best_frozen), ("Best fine-tuned model", tuned)):
        if r is not None:
            lines.append(f"**{label}** (chosen by validation log-loss): {r['backbone']} + {r['head']}"
                         f"{_qualifiers(r)} — "
                         f"test accuracy {pct(r['accuracy'])}, log-loss {_log_loss_words(r)}; "
                         f"compute {_compute_words(r)}.")
    frozen = fine_tune_opponent(c)
    if frozen and tuned and frozen["compute_seconds"] and tuned["compute_seconds"]:
        fitted = ("" if frozen is best_frozen else f" (the best frozen model fitted on train alone, as the fine-tune: "
                                                   f"{frozen['backbone']} + {frozen['head']})")
        lines.append(f"Best frozen against best fine-tuned{fitted}: frozen {_versus(frozen, tuned)}"
                     f"{_significance(c, frozen, tuned)}. "
                     + _budgets(c, frozen, tuned, [r for r in frozen_rows if _fitted_alike(r, frozen)], tuned_rows))
    for t in tuned_rows:
        f = fine_tune_opponent(c, t["backbone"])
        if f and f["compute_seconds"] and t["compute_seconds"]:
            mine = [r for r in frozen_rows if r["backbone"] == t["backbone"] and _fitted_alike(r, f)]
            lines.append(f"Same backbone, {t['backbone']}: frozen + {f['head']} (its best head by validation "
                         f"log-loss) against {t['head']}{_qualifiers(t)}: {_versus(f, t)}{_significance(c, f, t)}. "
                         + _budgets(c, f, t, mine, [t]))
    if not tuned:
        lines.append("No fine-tuned baseline was measured on this split (`python -m benchmarks finetune`).")
    return "\n\n".join(lines)


def extraction_table(c: Collected) -> tuple[list, list]:
    header = ["backbone", "store", "dim", "images", "extraction s", "images/s", "device", "weights"]
    rows = [[m.backbone, stem, str(m.dim), str(m.rows), secs(_extract_seconds(m)),
             num(m.embedding_rate, 1), m.device, m.weights.get("source", "?")]
            for stem, m in sorted(c.metas.items())]
    return header, rows


def environment(c: Collected) -> list[str]:
    """Devices, library versions, weights sha256, dataset and split identity."""
    items = []
    metas = list(c.metas.values())
    ds = metas[0].dataset if metas else {}
    first = c.metrics[0]
    if ds:
        items.append(f"dataset: {ds.get('name')} ({ds.get('format')}{', ' + ds['target'] if ds.get('target') else ''}) "
                     f"at {ds.get('root')}, {ds.get('classes')} classes")
    fractions = f", fractions {metas[0].split_fractions}, seed {metas[0].split_seed}" if metas else ""
    items.append(f"split fingerprint {first.split_fingerprint}{fractions}: {first.n_train} train / "
                 f"{first.n_val} val / {first.n_test} test labelled images")
    for stem, m in sorted(c.metas.items()):
        w = m.weights
        items.append(f"{stem}: store fingerprint {m.fingerprint}, weights sha256 {w.get('file_sha256', '—')} "
                     f"(fingerprint {w.get('fingerprint')}, {w.get('source')}), extracted on {m.device} "
                     f"{m.created or ''}")
    for m in c.metrics:
        if m.head.startswith("finetune-"):
            cmp = m.compute or {}
            items.append(f"{m.model}: trained on {cmp.get('device_name', '?')} (amp {cmp.get('amp')}), "
                         f"{cmp.get('epochs_run')} epochs, {cmp.get('images_seen')} images seen, "
                         f"{cmp.get('trainable_params')} of {cmp.get('total_params')} parameters trained, "
                         f"weights sha256 {(m.weights or {}).get('file_sha256', '—')}, split from "
                         f"{m.split_source or '?'}")
    if metas:
        items.append("extraction versions: " + ", ".join(f"{k} {v}" for k, v in metas[0].versions.items()))
    items.append(f"heads: scikit-learn {sklearn.__version__} on cpu; report: matplotlib {matplotlib.__version__}")
    return items


def curve_kind(row: dict) -> str:
    """A curve point's or summary's kind: frozen | finetune (older curve.json files have no `kind`)."""
    return row.get("kind") or ("finetune" if row["head"].startswith("finetune-") else "frozen")


def curve_series(doc: dict) -> dict[tuple, list[dict]]:
    """The curve's summaries per (kind, store, head), frozen first, each in increasing n (`all` last)."""
    series = {}
    for s in sorted(doc["summaries"], key=lambda s: (curve_kind(s) != "frozen", s["store"], s["head"],
                                                     float("inf") if s["n"] == "all" else int(s["n"]))):
        series.setdefault((curve_kind(s), s["store"], s["head"]), []).append(s)
    return series


def _mean_ci(s: dict) -> str:
    """`97.10 ± 0.42%`: a summary's mean test accuracy and its 95% interval (the mean alone with one repeat)."""
    ci = s.get("accuracy_ci")
    return pct(s["accuracy"]) if ci is None else f"{100 * s['accuracy']:.2f} ± {100 * ci:.2f}%"


def within_one_point(doc: dict) -> list[str]:
    """Per frozen store + head (highest full-split test accuracy first): the smallest measured n whose mean test
    accuracy is within 1 point of its `all` point's."""
    series = [(k, rows) for k, rows in curve_series(doc).items() if k[0] == "frozen"]
    full = {k: next((r for r in rows if r["n"] == "all"), None) for k, rows in series}
    out = []
    for (_, store, head), rows in sorted(series, key=lambda kr: -(full[kr[0]] or {"accuracy": -1})["accuracy"]):
        name, top = f"frozen {store} + {head}", full[("frozen", store, head)]
        below = [r for r in rows if r["n"] != "all"]
        if top is None:
            out.append(f"{name}: no full-split (`all`) point measured")
            continue
        hit = next((r for r in below if r["accuracy"] >= top["accuracy"] - 0.01 - 1e-12), None)
        full_data = f"within 1 point of its full-data accuracy ({pct(top['accuracy'])})"
        if hit:
            out.append(f"{name} reaches {full_data} at n = {hit['n']} ({_mean_ci(hit)})")
        else:
            out.append(f"{name} does not reach {full_data} below the full split"
                       + (f" (at n = {below[-1]['n']}, the largest measured below it: {_mean_ci(below[-1])})"
                          if below else ""))
    return out


def frozen_opponent(doc: dict, n: str, repeats: set) -> dict | None:
    """The frozen store + head a fine-tune at `n` is compared with, over its subsets `repeats` (both sides then
    score the same subsets): of those with a point on each, the lowest mean validation log-loss (each point's
    own `val_log_loss`); where a point records none (curve.json files before it, heads fitted with their
    defaults), the highest mean test accuracy, `by` saying so. Its mean accuracy and interval are over `repeats`."""
    found = {}
    for p in doc["points"]:
        if curve_kind(p) == "frozen" and p["n"] == n and p.get("repeat") in repeats:
            found.setdefault((p["store"], p["head"]), []).append(p)
    candidates = [ps for ps in found.values() if len(ps) == len(repeats)]
    if not candidates:
        return None
    by_val = all(p.get("val_log_loss") is not None for ps in candidates for p in ps)
    ps = (min(candidates, key=lambda ps: sum(p["val_log_loss"] for p in ps)) if by_val else
          max(candidates, key=lambda ps: sum(p["accuracy"] for p in ps)))
    acc, ci = interval([p["accuracy"] for p in ps])
    return {"store": ps[0]["store"], "head": ps[0]["head"], "n": n, "repeats": len(ps), "accuracy": acc,
            "accuracy_ci": ci, "by": "val" if by_val else "test", "points": ps}


def _chosen(f: dict) -> str:
    """How the frozen opponent `f` was chosen, for a sentence."""
    if f["by"] == "val":
        return "the frozen store + head with the lowest validation log-loss there"
    return ("the frozen store + head with the highest test accuracy there, as its points record no validation "
            "score: a choice that favours the frozen side")


def test_images(doc: dict) -> int | None:
    """How many test images the points' `test_correct` masks cover: curve.json's `n_test`, or in one written before
    it, a frozen point's right images over its accuracy (frozen points score every test image); None: no masks."""
    if doc.get("n_test"):
        return doc["n_test"]
    p = next((p for p in doc["points"] if curve_kind(p) == "frozen" and p.get("test_correct") and p["accuracy"]), None)
    return round(int(p["test_correct"], 16).bit_count() / p["accuracy"]) if p else None


def paired(tuned: list[dict], frozen: list[dict], n_test: int | None) -> tuple[int, str]:
    """(1 | -1 | 0: the fine-tune significantly above | below its frozen opponent | neither, in words) of the
    fine-tune's points against the opponent's on the same subsets, from the `n_test` test images each got right:
    with two or more subsets, the 95% interval of the mean paired difference by `two_way_bootstrap` (test images and
    subsets resampled); with one, an exact McNemar test."""
    pairs = [(t, next(f for f in frozen if f.get("repeat") == t.get("repeat"))) for t in tuned]
    if not n_test or not all(t.get("test_correct") and f.get("test_correct") for t, f in pairs):
        diff = np.mean([t["accuracy"] - f["accuracy"] for t, f in pairs])
        return 0, f"difference {100 * diff:+.2f} points, no per-image results to test it"
    if len(pairs) > 1:
        d = np.array([mask_bits(t["test_correct"], n_test).astype(np.int8) - mask_bits(f["test_correct"], n_test)
                      for t, f in pairs])
        mean, low, high = two_way_bootstrap(d)
        return (1 if low > 0 else -1 if high < 0 else 0,
                f"paired difference {100 * mean:+.2f} points, 95% interval {100 * low:+.2f} to {100 * high:+.2f} "
                f"(bootstrap of the {n_test} test images and the {len(pairs)} subsets)")
    (t, f), = pairs
    diff = t["accuracy"] - f["accuracy"]
    only_tuned, only_frozen = discordant(t["test_correct"], f["test_correct"])
    p = mcnemar_p(only_tuned, only_frozen)
    return (int(np.sign(only_tuned - only_frozen)) if p < 0.05 else 0,
            f"difference {100 * diff:+.2f} points, one fit a side: {only_tuned} test images right only "
            f"fine-tuned, {only_frozen} only frozen (exact McNemar p = {p:.2g})")


PAIRED_WORDS = {1: "above", -1: "below", 0: "not distinguishable"}


def _untuned(doc: dict) -> str:
    """`, seed recipe: an untuned ablation, …` where the curve's fine-tunes trained at one peak rate (curve.json's
    `finetune_recipe`; none before it was recorded)."""
    recipe = doc.get("finetune_recipe") or {}
    if len(recipe.get("lrs") or ()) != 1:
        return ""
    return f", {recipe['name']} recipe: an untuned ablation, one peak lr {recipe['lrs'][0]:g}, not swept on val"


def overtakes(doc: dict) -> list[str]:
    """Per fine-tuned series, against its frozen opponent (`frozen_opponent`) at each n on the same subsets
    (`paired`): the smallest measured n from which it is significantly above, at that n and every larger
    fine-tuned one; each n's outcome (above, below, not distinguishable)."""
    series, n_test = curve_series(doc), test_images(doc)
    tuned = {k: rows for k, rows in series.items() if k[0] != "frozen"}
    if not tuned:
        return ["No fine-tuned points on this curve: fine-tuning is not compared at small n "
                "(`finetune_shots` in the config's [curve] table adds them)."]
    out = []
    for (_, store, head), rows in tuned.items():
        compared, alone = [], []
        for r in rows:
            mine = [p for p in doc["points"] if (p["store"], p["head"], p["n"]) == (store, head, r["n"])]
            f = frozen_opponent(doc, r["n"], {p.get("repeat") for p in mine})
            if f is None:
                alone.append(r["n"])
            else:
                compared.append((r, f, *paired(mine, f["points"], n_test)))
        name = f"Fine-tuning {store} ({head}{_untuned(doc)})"
        alone = f"; no frozen point at n = {', '.join(alone)}" if alone else ""
        if not compared:
            out.append(f"{name}: no frozen point at the same n to compare with{alone}.")
            continue
        outcomes = ", ".join(f"{r['n']}: {PAIRED_WORDS[sign]}" for r, _, sign, _ in compared)
        start = next((i for i in range(len(compared)) if all(c[2] == 1 for c in compared[i:])), None)
        t, f, _, difference = compared[-1 if start is None else start]
        versus = (f"at n = {t['n']}, {_mean_ci(t)} against {_mean_ci(f)} for {f['store']} + {f['head']} on the "
                  f"same {plural(f['repeats'], 'subset')} ({_chosen(f)}); {difference}")
        if start is None:
            out.append(f"{name} does not significantly overtake frozen features within the measured range "
                       f"(n = {outcomes}): {versus}{alone}.")
        else:
            out.append(f"{name} overtakes frozen features from n = {t['n']}, significantly above there and at every "
                       f"larger fine-tuned n (n = {outcomes}): {versus}{alone}.")
    return out


def _selections(points: list[dict]) -> str:
    """`12 chosen on val, 30 by 3-fold CV inside the subset, …`: how a side's points chose their parameters."""
    def words(mode: str) -> str:
        cv = re.fullmatch(r"cv(\d+)", mode)
        return SELECTION_WORDS.get(mode) or (f"by {cv[1]}-fold CV inside the subset" if cv else f"by {mode}")
    return ", ".join(f"{n} {words(mode)}" for mode, n in sorted(Counter(p["selection"] for p in points).items()))


def _fit_seconds(points: list[dict], what: str) -> str:
    """`; 12.3 s of WHAT`: the seconds a side's points took, where recorded."""
    seconds = [p["seconds"] for p in points if p.get("seconds") is not None]
    return f"; {secs(sum(seconds))} s of {what}" if seconds else ""


def curve_texts(c: Collected) -> tuple[str, list[str], str]:
    """(what the curve is, its sentences, each side's budget) from the curve's own numbers."""
    doc = c.curve
    points, frozen = doc["points"], [p for p in doc["points"] if curve_kind(p) == "frozen"]
    tuned = [p for p in points if curve_kind(p) != "frozen"]
    seeds = sorted({p["subset_seed"] for p in points if p["n"] != "all"})
    full = next((p["n_train"] for p in points if p["n"] == "all"), None)
    intro = (f"{plural(len(points), 'point')}: per n (labelled train images per class) and repeat, a nested, "
             f"stratified subset of the train split (subset seeds {', '.join(map(str, seeds)) or '—'}; the same "
             f"images for every store and head), each fitted once and scored on the full test split "
             f"({c.metrics[0].n_test} images); mean test accuracy ± the 95% t-interval over repeats. "
             + (f"`all` is the full train split ({full} images), fitted once. " if full else "")
             + ("A fine-tune is set against its frozen opponent on the same subsets, image by image: the mean "
                "paired accuracy difference with a 95% interval from "
                f"{BOOTSTRAP_RESAMPLES} bootstrap resamples of the test images (one draw for both sides and every "
                "subset, which share them) and of the subsets, so it carries both the test set's sampling noise "
                "and the subsets' spread; with one fit a side, an exact McNemar test on the test images; it is "
                "above or below only where the interval excludes 0 (p < 0.05). " if tuned else "")
             + (f"{plural(len(doc.get('skipped', [])), 'point')} skipped (results.json). " if doc.get("skipped")
                else "")
             + "Every point is in curve.csv with its subset seed.")
    budget = (f"Budgets: frozen — {plural(len(frozen), 'point')}: {_selections(frozen) or 'none'}"
              f"{_fit_seconds(frozen, 'head fits on the stores, each image embedded once, no augmentation')}."
              + (f" Fine-tuned — {plural(len(tuned), 'point')}: {_selections(tuned)}"
                 f"{_fit_seconds(tuned, 'training')}." if tuned else "")
              + f" The curve took {secs(doc.get('seconds'))} s."
              + "".join(f" {n.rstrip('.')}." for n in doc.get("notes", [])))
    return intro, within_one_point(doc) + overtakes(doc), budget


def curve_csv(points: list[dict]) -> str:
    """curve.csv: a row per point, every field but its per-image `test_correct` (in curve.json)."""
    return csv_text([{k: v for k, v in p.items() if k != "test_correct"} for p in points])


def short_count(summary: dict) -> str:
    """`29 classes` (their names are in the summary's `short`), or `-`."""
    n = len(summary["short"].split(",")) if summary.get("short") else 0
    return f"{n} class{'es' if n > 1 else ''}" if n else "-"


def curve_table(doc: dict) -> tuple[list, list]:
    """(header, rows): every summary of the curve, frozen series first."""
    header = ["kind", "store", "head", "n", "repeats", "test accuracy", "log-loss", "selection", "short classes",
              "fit s"]
    rows = []
    for (kind, store, head), summaries in curve_series(doc).items():
        for s in summaries:
            loss = num(s["log_loss"]) + (f" ± {num(s['log_loss_ci'])}" if s.get("log_loss_ci") is not None else "")
            rows.append([kind if kind == "frozen" else "fine-tuned", store, head, s["n"], str(s["repeats"]),
                         _mean_ci(s), loss, s["selection"], short_count(s), secs(s.get("seconds"))])
    return header, rows


def unmatched_note(doc: dict) -> str:
    """A line under the curve table where a fine-tuned row averages fewer subsets than the frozen rows at its n
    (else "")."""
    frozen = {}
    for s in doc["summaries"]:
        if curve_kind(s) == "frozen":
            frozen[s["n"]] = max(frozen.get(s["n"], 0), s["repeats"])
    fewer = [s["n"] for s in doc["summaries"] if curve_kind(s) != "frozen" and s["repeats"] < frozen.get(s["n"], 0)]
    if not fewer:
        return ""
    return (f"At n = {', '.join(dict.fromkeys(fewer))} the fine-tuned rows average fewer subsets (the first of the "
            "frozen rows', `repeats`) than the frozen rows, so the table and the plot do not set them side by side "
            "on the same subsets; the sentences below do.")


@dataclass
class Figure:
    name: str
    title: str
    png: bytes


def figures(c: Collected) -> list[Figure]:
    out = [Figure("accuracy_vs_compute.png", "Accuracy vs compute", plots.accuracy_vs_compute(c.rows))]
    measured = [r for r in (c.best("frozen"), c.best("fine-tuned")) if r]
    if measured:
        best = min(measured, key=lambda r: r["val_log_loss"])
        m = c.metrics_of(best)
        label = f"{best['backbone']} + {best['head']}"
        out.append(Figure("confusion.png", f"Confusion matrix of the best model ({label})",
                          plots.confusion(m, f"{label}: test confusion")))
        png = plots.top_losses(m, Path(m.dataset_root) if m.dataset_root else c.images_root(), label)
        if png:
            out.append(Figure("top_losses.png", f"Top losses of the best model ({label})", png))
    png = plots.sweeps(c.metrics)
    if png:
        out.append(Figure("sweeps.png", "Regularisation sweeps of the frozen heads (validation log-loss)", png))
    png = plots.finetune_curves(c.metrics)
    if png:
        out.append(Figure("finetune_curves.png", "Fine-tunes per epoch (validation log-loss and accuracy; "
                                                 "★ the chosen run and epoch)", png))
    if c.curve:
        full = next((p["n_train"] for p in c.curve["points"] if p["n"] == "all"), None)
        png = plots.label_efficiency(curve_series(c.curve), full / len(c.metrics[0].classes) if full else None)
        out.append(Figure(CURVE_FILES[1], "Label-efficiency curve: test accuracy against labelled train images "
                                          "per class", png))
    return out


def audit_figures(c: Collected, per_kind: int = 9) -> list[Figure]:
    """The audit's map and a thumbnail grid of the top-ranked images of each kind."""
    if not c.audit:
        return []
    out = [Figure("audit_map.png", "Map of the embeddings (UMAP), flagged images ringed", c.audit["map"])] \
        if c.audit["map"] else []
    root = c.images_root()
    for kind in AUDIT_KINDS:
        rows = [r for r in c.audit["rows"] if r["kind"] == kind][:per_kind]
        items = [(r["path"], f"{r['split']} {r['label']}" + (f" → {r['suggested']}" if r["suggested"] else "")
                  + (f", group {r['group']}" if r["group"] else "") + f"\nscore {float(r['score']):.3f}\n"
                  f"{Path(r['path']).name}") for r in rows]
        png = plots.image_grid(items, root, f"{kind}: the top-ranked {len(items)}")
        if png:
            out.append(Figure(f"audit_{kind}.png", f"Audit: {kind.replace('_', ' ')}", png))
    return out


# ---- rendering -------------------------------------------------------------------------------------

def _md_table(header, rows) -> str:
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    return "\n".join(["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def _inline(text: str) -> str:
    """Escape, then the two markdown inline forms the report uses: **bold** and `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html_table(header, rows, cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    published = '<tr class="published">'
    body = "".join((published if str(r[0]).startswith("published") else "<tr>")
                   + "".join(f"<td>{html.escape(str(v)).replace('+', '+<wbr>')}</td>" for v in r) + "</tr>"
                   for r in rows)  # <wbr>: an ensemble's long a+b+c… name may wrap after each +
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_figure(f: Figure) -> str:
    return (f'<figure><figcaption>{html.escape(f.title)}</figcaption><img alt="{html.escape(f.title)}" '
            f'src="data:image/png;base64,{base64.b64encode(f.png).decode()}"></figure>')


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}td:nth-child(n+4){text-align:right}tr:nth-child(even){background:#fafafa}
img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}figcaption{font-weight:600}
tr.published td{color:#555;font-style:italic;background:#f4f6fb}li{margin:.2em 0}
code{background:#f3f3f3;padding:0 .2em}"""


def render(c: Collected, figs: list[Figure], title: str) -> tuple[str, str]:
    """(markdown, self-contained HTML) of the same report."""
    header, rows, sources = main_table(c)
    eheader, erows = extraction_table(c)
    env = environment(c)
    first = c.metrics[0]
    intro = (f"{first.n_train + first.n_val + first.n_test} labelled images "
             f"({first.n_train} train / {first.n_val} val / {first.n_test} test), "
             f"{len(first.classes)} classes. Every head and fine-tune is chosen on val and scored once on "
             f"the same test split. Compute: frozen = extraction of every image + head fit (selection "
             f"included); fine-tuned = training (its validation passes included). "
             f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}.")
    note = published_note(c) if sources else ""
    md = [f"# {title}", intro, "## Results", _md_table(header, rows)]
    md += [note, "\n".join(f"{i}. {s}" for i, s in enumerate(sources, 1))] if sources else []
    curve = [f for f in figs if f.name == CURVE_FILES[1]]
    figs = [f for f in figs if f.name != CURVE_FILES[1]]
    md += [verdict(c)]
    if c.curve:
        curve_intro, sentences, budget = curve_texts(c)
        md += ["## Label-efficiency curve", curve_intro, *(f"![{f.title}]({f.name})" for f in curve),
               _md_table(*curve_table(c.curve)), unmatched_note(c.curve), "\n".join(f"- {t}" for t in sentences),
               budget]
    audited = [f for f in figs if f.name.startswith("audit_")]
    figs = [f for f in figs if not f.name.startswith("audit_")]
    if c.audit:
        audit_intro, counts, side = audit_texts(c)
        md += ["## Data audit", audit_intro, _md_table(*counts), *([_md_table(*side)] if side else []),
               *(f"### {f.title}\n\n![{f.title}]({f.name})" for f in audited)]
    md += ["## Extraction", _md_table(eheader, erows), "## Plots"]
    md += [f"### {f.title}\n\n![{f.title}]({f.name})" for f in figs]
    md += ["## Environment", "\n".join(f"- {e}" for e in env)]
    if c.notes:
        md += ["## Notes", "\n".join(f"- {n}" for n in c.notes)]
    markdown = "\n\n".join(p for p in md if p) + "\n"

    h = [f"<h1>{html.escape(title)}</h1>", f"<p>{_inline(intro)}</p>", "<h2>Results</h2>",
         _html_table(header, rows, "results")]
    if sources:
        h += [f"<p>{_inline(note)}</p>", "<ol>" + "".join(f"<li>{html.escape(s)}</li>" for s in sources) + "</ol>"]
    h += [f"<p>{_inline(p)}</p>" for p in verdict(c).split("\n\n")]
    if c.curve:
        h += ["<h2>Label-efficiency curve</h2>", f"<p>{_inline(curve_intro)}</p>", *map(_html_figure, curve),
              _html_table(*curve_table(c.curve), "curve"),
              *([f"<p>{_inline(unmatched)}</p>"] if (unmatched := unmatched_note(c.curve)) else []),
              "<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in sentences) + "</ul>", f"<p>{_inline(budget)}</p>"]
    if c.audit:
        h += ["<h2>Data audit</h2>", f"<p>{_inline(audit_intro)}</p>", _html_table(*counts, "audit"),
              *([_html_table(*side, "exclusion")] if side else []), *map(_html_figure, audited)]
    h += ["<h2>Extraction</h2>", _html_table(eheader, erows, "extraction"), "<h2>Plots</h2>"]
    h += [_html_figure(f) for f in figs]
    h += ["<h2>Environment</h2>", "<ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in env) + "</ul>"]
    if c.notes:
        h += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in c.notes) + "</ul>"]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(h) + "\n</body></html>\n")
    return markdown, page


def results_rows(c: Collected) -> list[dict]:
    """results.csv: every measured row, then the models trained without an audit's flagged images (never in a
    verdict), then the published ones."""
    return c.rows + sorted((measured_row(m, c.metas) for m in c.excluded), key=_order) + c.published


def write_report(c: Collected, folder: Path, title: str) -> dict[str, Path]:
    """Write report.md, report.html, results.csv, results.json, the figures' PNGs and, with a curve, curve.csv
    into `folder`."""
    folder = Path(folder)
    figs = figures(c) + audit_figures(c)
    markdown, page = render(c, figs, title)
    frozen, tuned = c.best("frozen"), c.best("fine-tuned")
    data = {"title": title, "rows": c.rows, "published": c.published, "best": {"frozen": frozen, "fine-tuned": tuned},
            "environment": environment(c), "notes": c.notes, "metrics": [m.to_json() for m in c.metrics],
            "curve": c.curve, "audit": {"folder": c.audit["folder"], "rows": c.audit["rows"]} if c.audit else None,
            "excluded": [m.to_json() for m in c.excluded]}
    texts = {"report.md": markdown, "report.html": page, "results.csv": csv_text(results_rows(c)),
             "results.json": json.dumps(data, indent=1, default=str) + "\n"}
    if c.curve:
        texts[CURVE_FILES[0]] = curve_csv(c.curve["points"])
    written = {}
    for name, text in texts.items():
        atomic_write(folder / name, lambda tmp, text=text: tmp.write_text(text))
        written[name] = folder / name
    for f in figs:
        atomic_write(folder / f.name, lambda tmp, png=f.png: tmp.write_bytes(png))
        written[f.name] = folder / f.name
    return written


def build(metrics: list[ModelMetrics], folder: Path, title: str = "", notes: list | None = None,
          curve: dict | None = None, audit: dict | None = None) -> tuple[Collected, dict]:
    """Collect and write a report (with `curve`, curve.json's doc, and `audit`, `read_audit`'s, their sections);
    returns what it collected and the files it wrote."""
    c = collect(metrics, notes, curve, audit)
    check_outside(folder, c.dataset, c.dataset_store)
    return c, write_report(c, folder, title or f"featbench report: {c.rows[0]['dataset']}")


def markdown_table(c: Collected) -> str:
    """The main table alone, as markdown (for a README or a pull request)."""
    return _md_table(*main_table(c)[:2])


def files_line(written: dict[str, Path]) -> str:
    """The closing line of `benchmarks run` and `report`: where the report went."""
    extra = ", curve.csv" if CURVE_FILES[0] in written else ""
    return f"\nreport: {written['report.md']}, {written['report.html']} (+ results.csv, results.json{extra}, figures)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.add_argument("inputs", nargs="+", metavar="FOLDER_OR_METRICS",
                   help="a dataset folder (OUT/DATASET), its models/ folder, or *.metrics.json files")
    p.add_argument("--out", type=Path,
                   help="output folder: the report goes to OUT/DATASET/report/ (default: the OUT the metrics are in)")
    p.add_argument("--title", default="", help="report title (default: featbench report: DATASET)")
    p.add_argument("--curve", type=Path, metavar="PATH",
                   help="a label-efficiency curve.json for the report's curve section (default: "
                        "OUT/DATASET/curve/curve.json beside the metrics, if there is one)")


def main(args: argparse.Namespace) -> int:
    metrics = load_metrics(args.inputs)
    here, folders = metrics[0].dataset_folder(), {Path(m.path).parent: m.kept() for m in metrics}
    kept = [f for f, k in folders.items() if k]
    if kept and len(folders) > 1:
        raise FeatbenchError(f"{', '.join(map(str, sorted(kept)))}: models kept by later runs, given with others; "
                             "report each previous/N folder on its own")
    folder = (args.out / check_dataset_name(metrics[0].dataset, f"recorded for {metrics[0].path}") if args.out
              else kept[0] if kept else here) / "report"
    found = None if kept else here / "curve" / "curve.json"  # the latest curve and audit: not for models kept
    curve = read_curve(args.curve) if args.curve else read_curve(found) if found and found.is_file() else None
    notes = check_curve(curve, args.curve or found, metrics) if curve else []
    c, written = build(metrics, folder, args.title, notes, curve, None if kept else read_audit(here / "audit"))
    print(markdown_table(c))
    print(files_line(written))
    return 0
