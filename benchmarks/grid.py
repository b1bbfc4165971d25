"""`python -m benchmarks run CONFIG.toml`: backbones × heads on one dataset, fine-tunes, one report.

For each backbone: extract (cached rows are reused; a backbone without weights here is skipped and
the report says why), then every head on every store, then the configured fine-tunes on the same
split (a fine-tune whose metrics already exist for this split, weights and settings is reused),
then the report in OUT/DATASET/report/. The config (its [dataset] table as featbench.toml's; the
dataset flags override it):

    [dataset]                  # a relative path (path, out) is relative to the config file
    path = "../../../shared/data/dogs-vs-cats/train"
    splits = [0.7, 0.15, 0.15]
    seed = 0

    [benchmark]
    backbones = ["mobilenet_v2", "resnet152v2"]
    heads = ["all"]            # logreg, mlp, svm, knn, avg, stack, concat, or all
    refit = false              # refit each chosen head on train+val before its test score
    audit = true               # `python -m classify audit` on the run's stores, a report section (--no-audit: off)
    temperature = true         # frozen heads (and the curve's frozen points) at a val temperature (classify
                               # --temperature); default: as the fine-tunes of the run, true when one fits one (lp-ft)

    [benchmark.weights]        # weights files for backbones that need one (relative to the config)
    resnet152v2 = "weights/resnet152v2.pth"

    [[finetune]]               # any number; keys as `python -m benchmarks finetune`
    backbone = "mobilenet_v2"
    mode = "full"              # full | bn-head | head
    # budget: epochs (default per device), epoch_images, batch_size, seeds, train_seed;
    # recipe = "lp-ft" | "seed" (default: the mode's), and any of its settings: lr (one or a list),
    # head_init, layer_ratio, weight_decay, decay_norm_bias, augment, crop_scale, label_smoothing,
    # freeze_bn_stats, ema, calibrate, pct_start

    [curve]                    # label-efficiency curve after the fine-tunes (as `python -m benchmarks curve`)
    heads = ["logreg", "svm", "knn"]     # single heads (the default)
    shots = "1,2,4,8,16,32,64,all"       # train images per class, a string or a list (the default)
    repeats = 5                # nested subsets drawn per n, seeds subset_seed + r (defaults 5, 0)
    subset_seed = 0
    backbones = ["mobilenet_v2"]         # default: every store of the run (`--backbone` narrows both)
    finetune_shots = "8,64"    # fine-tuned points at these n (default none; "auto": by device; `--no-finetune`: none)
    finetune_repeats = 3
    finetune_mode = "full"     # full | bn-head | head
    finetune_backbones = ["mobilenet_v2"]  # default: the curve's first backbone (each costs minutes a point on CPU)

`--no-curve` skips the [curve] table; `--head` does not change its heads. `--exclude AUDIT.csv` also trains every
head without the train images that audit flags, and scores every model on all test images and on those not flagged
(the report's audit section shows the four numbers side by side).
"""
import argparse
import sys
import time
from pathlib import Path

from benchmarks.curve import finetune_shots, parse_shots, run_curve
from benchmarks.finetune import budget_params, default_epochs, epoch_size, finetune, model_name, reusable
from benchmarks.recipes import AUGMENTS, HEAD_INITS, MODES, OVERRIDES, RECIPES, recipe_for
from benchmarks.report import build, files_line, markdown_table, read_audit
from benchmarks.splits import same_split
from classify import audit
from classify.heads import ENSEMBLES, HEADS
from classify.train import Exclusion, asked_heads, parse_heads
from classify.train import run as classify
from extract.backbones import create_backbone
from extract.config import (
    FLAG,
    NUMBER,
    TEXT,
    TEXTS,
    WHOLE,
    Kind,
    add_dataset_args,
    check_table,
    dataset_flags,
    one_of,
    read_toml,
    resolve,
    whole,
)
from extract.datasets import load_dataset
from extract.device import pick_device
from extract.names import canonical
from extract.pipeline import Options, extract
from features.errors import FeatbenchError

BENCHMARK_KINDS = {"backbones": TEXTS, "heads": TEXTS, "refit": FLAG, "seeds": whole(1), "audit": FLAG,
                   "temperature": FLAG,
                   "weights": Kind('a table of backbone = "FILE"',
                                   lambda v: isinstance(v, dict) and all(isinstance(f, str) for f in v.values()))}
RECIPE_KEYS = {"recipe", "lr", *(k for k in OVERRIDES if k != "lrs")}
FINETUNE_KINDS = {"backbone": TEXT, "mode": one_of(MODES), "epochs": whole(1), "epoch_images": whole(0),
                  "batch_size": whole(2), "seeds": whole(1), "train_seed": whole(0), "recipe": one_of(RECIPES),
                  "lr": Kind("a learning rate or a list of them, e.g. 3e-4 or [1e-4, 3e-4]",
                             lambda v: NUMBER.test(v) or isinstance(v, list) and all(map(NUMBER.test, v))),
                  "head_init": one_of(HEAD_INITS), "augment": one_of(AUGMENTS),
                  **dict.fromkeys(("layer_ratio", "weight_decay", "crop_scale", "label_smoothing", "pct_start"),
                                  NUMBER),
                  **dict.fromkeys(("decay_norm_bias", "freeze_bn_stats", "ema", "calibrate"), FLAG)}
SHOTS = Kind('images per class, e.g. "1,2,4,all", [1, 2, 4, "all"] or 16',
             lambda v: isinstance(v, str) or WHOLE.test(v) or isinstance(v, list) and all(isinstance(n, str) or
                                                                                          WHOLE.test(n) for n in v))
CURVE_KINDS = {"heads": TEXTS, "shots": SHOTS, "repeats": whole(1), "subset_seed": whole(0), "backbones": TEXTS,
               "finetune_shots": SHOTS, "finetune_repeats": whole(1), "finetune_mode": one_of(MODES),
               "finetune_backbones": TEXTS}
CURVE_DEFAULTS = {"heads": ["logreg", "svm", "knn"], "shots": "1,2,4,8,16,32,64,all", "repeats": 5, "subset_seed": 0,
                  "backbones": None, "finetune_shots": "", "finetune_repeats": 3, "finetune_mode": "full",
                  "finetune_backbones": None}


def read_config(path: Path) -> dict:
    """The config file `path`, each table checked (`check_table`): [benchmark], every [[finetune]] and [curve]."""
    cfg = read_toml(path, " (shipped ones: benchmarks/configs/*.toml)")
    bench = check_table(cfg.get("benchmark", {}), path, "benchmark", BENCHMARK_KINDS)
    if not bench.get("backbones"):
        raise FeatbenchError(f"{path}: [benchmark] needs backbones = [\"NAME\", …]")
    try:
        asked_heads(bench.get("heads", []))
    except FeatbenchError as e:
        raise FeatbenchError(f"{path}: [benchmark] {e}") from None
    entries = cfg.get("finetune", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FeatbenchError(f"{path}: finetune = {entries!r:.40} is no list of tables; write each as a "
                             "[[finetune]] header above its keys")
    for entry in entries:
        check_table(entry, path, "[finetune]", FINETUNE_KINDS)
        if "backbone" not in entry:
            raise FeatbenchError(f'{path}: each [[finetune]] needs backbone = "NAME" (mode is full by default)')
        try:
            _recipe(entry)
        except FeatbenchError as e:
            raise FeatbenchError(f"{path}: [[finetune]] {entry}: {e}") from None
    if "curve" in cfg:
        check_table(cfg["curve"], path, "curve", CURVE_KINDS)
        try:
            curve_settings(cfg["curve"])
        except FeatbenchError as e:
            raise FeatbenchError(f"{path}: [curve] {e}") from None
    return cfg


def _shots(value) -> list[int]:
    """A shots value, "1,2,all" or [1, 2, "all"], as parse_shots' list; "" or [] is none."""
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return parse_shots(text) if text.strip() else []


def curve_settings(table: dict) -> dict:
    """A [curve] table whose keys and their kinds are checked (`CURVE_KINDS`), defaults filled in and shots parsed;
    heads that are not single heads and unparsable shots are one line."""
    c = {**CURVE_DEFAULTS, **table}
    if not c["heads"] or not set(c["heads"]) <= set(HEADS):
        raise FeatbenchError(f"heads {c['heads']}: single heads only, some of {', '.join(HEADS)}")
    ft = c["finetune_shots"]
    return {**c, "shots": _shots(c["shots"]), "finetune_shots": ft if ft == "auto" else _shots(ft)}


def _recipe(entry: dict):
    return recipe_for(entry.get("mode", "full"), entry.get("recipe"), lrs=entry.get("lr"),
                      **{k: entry.get(k) for k in RECIPE_KEYS - {"recipe", "lr"}})


def finetune_settings(entry: dict, n_train: int, device: str) -> tuple:
    """A [[finetune]] entry as (recipe, finetune() keyword budget, the params its metrics would record)."""
    mode, dev = entry.get("mode", "full"), pick_device(device)
    recipe = _recipe(entry)
    budget = {"epochs": entry.get("epochs") or default_epochs(dev),
              "epoch_images": entry.get("epoch_images", 0), "batch_size": entry.get("batch_size", 32),
              "seeds": entry.get("seeds", 1), "train_seed": entry.get("train_seed", 0)}
    per_epoch = epoch_size(n_train, budget["epoch_images"])
    recorded = budget_params(mode, recipe, **{**budget, "epoch_images": per_epoch}, device=dev)
    return recipe, budget, recorded


def run(config: Path, *, backbones: list[str] | None = None, heads: list[str] | None = None, finetunes: bool = True,
        curve: bool = True, seeds: int | None = None, random_init: bool = False, device: str = "auto",
        title: str = "", quiet: bool = False, audited: bool = True, exclude: Path | None = None, **overrides) -> tuple:
    """The benchmark of `config`; `backbones`, `heads` and `seeds` override its own, `overrides` (keywords of
    `extract.config.resolve`: data, splits, seed, out…) its [dataset] table; `curve=False` skips its [curve],
    `finetunes=False` its fine-tunes (the curve's too), `audited=False` the audit; `exclude` (an audit.csv) also
    trains every head without its flagged train images. Returns the report's (Collected, files)."""
    started = time.perf_counter()
    cfg = read_config(config)
    bench = cfg["benchmark"]
    heads = parse_heads(heads or bench.get("heads", ["all"]))  # --head checked before any extraction
    if seeds is not None and seeds < 1:
        raise FeatbenchError(f"--seeds must be at least 1 (got {seeds})")
    exclusion = Exclusion(exclude, audit.read_flagged(exclude)) if exclude else None
    settings = resolve(config, **overrides)
    dataset = load_dataset(settings.path, settings.format, settings.target, settings.name)
    if exclusion:
        exclusion.check_listing(dataset, settings.splits, settings.seed)  # before the extraction, not after it
    names = [canonical(n) for n in backbones or bench["backbones"]]  # as stores record them: ResNet152V2 is resnet152v2
    weight_files = {canonical(k): str(config.parent / v) for k, v in bench.get("weights", {}).items()}
    notes, stores, built = [], [], {}
    options = Options(device=device, progress=False if quiet else None)
    for name in names:
        weights = None if random_init else weight_files.get(name)  # --random-init: every backbone random
        if weights and not Path(weights).is_file():
            notes.append(f"{name}: skipped, weights file {weights} not found")
            print(f"note: {notes[-1]}", file=sys.stderr)
            continue
        try:
            backbone = create_backbone(name, weights, random_init)
        except FeatbenchError as e:
            notes.append(f"{name}: skipped ({str(e).split('. ')[0]})")  # the first sentence says why
            print(f"note: {name}: skipped, no weights here", file=sys.stderr)
            continue
        summary = extract(dataset, backbone, settings.out, fractions=settings.splits, seed=settings.seed,
                          weights_file=weights, options=options)
        print(summary.line(), file=sys.stderr)
        stores.append(summary.path)
        built[name] = (backbone.weights["fingerprint"], weights, summary.path)
    if not stores:
        raise FeatbenchError(f"none of the backbones {', '.join(names)} has weights here; see "
                             "`python -m extract --list-backbones` and `--fetch-weights`")
    if len(stores) < 2 and any(h in ENSEMBLES for h in heads):
        heads = [h for h in heads if h not in ENSEMBLES]
        notes.append("ensembles skipped: they need two feature stores or more")
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    extracted = time.perf_counter()
    entries = cfg.get("finetune", []) if finetunes else []
    tempered = bench.get("temperature", any(_recipe(e).calibrate for e in entries if canonical(e["backbone"]) in built))
    metrics = classify(stores, heads, bench.get("refit", False), log, seeds=seeds or bench.get("seeds", 1),
                       exclude=exclusion, temperature=tempered)
    classified = time.perf_counter()
    found = None
    if audited and bench.get("audit", True):
        found = _audit(stores, settings.out / dataset.name / "audit", notes, log)
    audit_done = time.perf_counter()

    for entry in entries:
        name, mode = canonical(entry["backbone"]), entry.get("mode", "full")
        if name not in built:
            notes.append(f"{name} finetune-{mode}: skipped, {name} is not in this run or has no weights here")
            continue
        data = same_split(settings, name)
        entry = {**entry, **({"seeds": seeds} if seeds else {})}
        recipe, budget, recorded = finetune_settings(entry, len(data.paths["train"]), device)
        fp, weights, store = built[name]
        stem = model_name(store.stem, mode, recipe.name)
        done = reusable(settings.out / dataset.name / "models" / f"{stem}.metrics.json", data, fp,
                         recorded)
        if done:
            log(f"{stem}: reused (same split, weights and settings); delete its metrics file to retrain")
            metrics.append(done)
            continue
        log(f"{stem}: fine-tuning ({recipe.name} recipe; peak lr {', '.join(f'{x:g}' for x in recipe.lrs)}; "
            f"epochs per run: {budget['epochs']}; seeds: {budget['seeds']})")
        metrics.append(finetune(data, name, mode, settings.out, recipe=recipe, device=device, weights=weights,
                                random_init=random_init, log=log, **budget))
    tuned = time.perf_counter()
    doc = None
    if curve and "curve" in cfg:
        doc = _curve(curve_settings(cfg["curve"]), built, finetunes, settings.out, device, notes, log,
                     bench.get("temperature"))
    done = time.perf_counter()
    notes.append(f"this run: {done - started:.0f} s wall; extraction {extracted - started:.0f} s, frozen heads "
                 f"{classified - extracted:.0f} s, audit {audit_done - classified:.0f} s, fine-tunes "
                 f"{tuned - audit_done:.0f} s ({(tuned - audit_done) / (done - started):.0%} "
                 "of the run; reused fine-tunes cost nothing here)"
                 + (f", label-efficiency curve {done - tuned:.0f} s" if doc else ""))
    print(f"note: {notes[-1]}", file=sys.stderr)
    return build(metrics, settings.out / dataset.name / "report", title, notes, doc, found)


def _audit(stores: list[Path], folder: Path, notes: list, log) -> dict | None:
    """`classify audit` on the run's stores, written to `folder`: `read_audit`'s dict, or None (with a note) when
    these stores cannot be audited (a class with one train+val image, …)."""
    try:
        found = audit.audit(stores, log=log)
    except FeatbenchError as e:
        notes.append(f"audit skipped: {e}")
        return None
    audit.write(found, folder)
    log(f"audit: {len(found.findings)} flagged rows in {folder / 'audit.csv'}")
    return read_audit(folder)


def _curve(c: dict, built: dict, finetunes: bool, out: Path, device: str, notes: list, log,
           temperature: bool | None = None) -> dict | None:
    """The [curve] table `c` run on the run's stores (those of its backbones, if it names some): curve.json's doc
    (`temperature`: the run's [benchmark] setting, None: as the curve's fine-tunes)."""
    wanted = [canonical(n) for n in c["backbones"] or ()]
    names = [n for n in (wanted or built) if n in built]
    notes += [f"{n}: not in the label-efficiency curve, not in this run or no weights here"
              for n in wanted if n not in built]
    if not names:
        return None
    ft = finetune_shots(c["finetune_shots"], device)
    if ft and not finetunes:
        notes.append("label-efficiency curve: fine-tuned points skipped (--no-finetune)")
    log(f"label-efficiency curve: {', '.join(names)} × {', '.join(c['heads'])}")
    doc, folder = run_curve([built[n][2] for n in names], c["heads"], c["shots"], c["repeats"],
                            subset_seed=c["subset_seed"], out=out,
                            finetune_shots=ft if finetunes else [],
                            finetune_repeats=c["finetune_repeats"], finetune_mode=c["finetune_mode"],
                            finetune_backbones=c["finetune_backbones"] or names[:1], device=device,
                            weights={n: w for n, (_, w, _) in built.items() if w}, log=log, temperature=temperature)
    log(f"label-efficiency curve: {len(doc['points'])} points in {folder}")
    return doc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.add_argument("benchmark", type=Path, metavar="CONFIG.toml", help="e.g. benchmarks/configs/dogs-vs-cats.toml")
    p.add_argument("--backbone", nargs="+", metavar="NAME", help="only these backbones (default: the config's)")
    p.add_argument("--head", nargs="+", metavar="H", help="only these heads (default: the config's)")
    p.add_argument("--no-finetune", action="store_true", help="skip the config's fine-tunes (the curve's too)")
    p.add_argument("--no-curve", action="store_true", help="skip the config's [curve] (label-efficiency curve)")
    p.add_argument("--no-audit", action="store_true", help="skip the data audit (python -m classify audit)")
    p.add_argument("--exclude", type=Path, metavar="AUDIT.csv",
                   help="also train every head without the train images this audit flags; every model is scored "
                        "on all test images and on those not flagged")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="N seeds in all for the frozen heads that have a random state and for every fine-tune, as "
                        "in classify and finetune (default: the config's [benchmark] seeds and [[finetune]] seeds, "
                        "else 1)")
    p.add_argument("--random-init", action="store_true", help="random backbone weights (tests only)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--title", default="", help="report title")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_dataset_args(p, config=False)


def main(args: argparse.Namespace) -> int:
    c, written = run(args.benchmark, backbones=args.backbone, heads=args.head, finetunes=not args.no_finetune,
                     curve=not args.no_curve, seeds=args.seeds, random_init=args.random_init, device=args.device,
                     title=args.title, quiet=args.quiet, audited=not args.no_audit, exclude=args.exclude,
                     **dataset_flags(args))
    print(markdown_table(c))
    print(files_line(written))
    return 0
