"""classify on new images: save → load → predict round trip, the weights check, a Kaggle submission.

The images are generated and the backbones random-init: what is tested is the round trip, so these run
everywhere, with or without ../shared/data and the real weights."""
import csv
import io
import os
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch

from classify import predict
from classify.__main__ import main
from classify.metrics import proba
from classify.models import build_backbones, load_model, save_model
from classify.predict import embedding_precision, probabilities
from classify.train import load_store, run
from extract.backbones import create_backbone
from extract.datasets import load_dataset
from extract.pipeline import Options, embed_files, extract
from features.cli import run_cli
from features.reader import FeatureStore

from conftest import write_image

pytestmark = pytest.mark.slow
BACKBONES = ("resnet10t", "resnet18")  # random init: no download, the round trip is what is tested


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """24 generated photos, two random-init stores, a logreg model per store and their avg."""
    root = tmp_path_factory.mktemp("real")
    data = root / "photos"
    data.mkdir()
    for i in range(12):
        for animal in ("cat", "dog"):
            write_image(data / f"{animal}.{i}.jpg", i + 100 * (animal == "dog"), size=(96, 72))
    stores = [extract(load_dataset(data), create_backbone(b, random_init=True), root / "runs",
                      options=Options(progress=False, batch_size=8, workers=0)).path for b in BACKBONES]
    results = run(stores, ["logreg", "avg"])
    return data, stores, {r.backbone if r.head == "logreg" else "avg": r.path for r in results}


def cli(capsys, *argv):
    rc = run_cli(main, list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def expected(model_path, stores) -> dict:
    """What the saved model says about every stored image, from the stores' own features."""
    model = load_model(model_path)
    by_name = {s.stem: s for s in stores}
    parts = [load_store(by_name[b["store"]]) for b in model["backbones"]]
    out = {}
    for split in ("train", "val", "test"):
        X = np.hstack([getattr(p, split).X for p in parts])
        for path, row in zip(getattr(parts[0], split).paths, proba(model["estimator"], X, 2)):
            out[path] = (model["class_names"][int(row.argmax())], float(row.max()))
    return out


def test_predict_fails_when_no_image_could_be_predicted(trained, tmp_path, capsys):
    """Every image unreadable (text, a JPEG cut short, an empty file): one line naming them with why, exit 2, in
    predict (it listed them on stdout and exited 1) and submit (it wrote a submission of 0.5 only)."""
    data, _, models = trained
    test = tmp_path / "test1"
    test.mkdir()
    (test / "1.jpg").write_bytes(b"not a jpeg")
    (test / "2.jpg").write_bytes((data / "cat.0.jpg").read_bytes()[:300])
    (test / "3.jpg").write_bytes(b"")
    rc, out, err = cli(capsys, "predict", "--model", models["avg"], test / "1.jpg", test / "2.jpg", test / "3.jpg")
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {test / '1.jpg'} (not an image") and f"{test / '3.jpg'} (empty file)" in err
    assert "truncated" in err and "none of the 3 images could be read" in err
    rc, out, err = cli(capsys, "submit", "--model", models["avg"], test, "--out", tmp_path / "kaggle")
    assert rc == 2 and err.count("\n") == 1 and "none of the 3 images could be read" in err, err
    assert not (tmp_path / "kaggle" / "submission.csv").exists()


@pytest.mark.parametrize("head", ["resnet18-random-init", "avg"])
def test_predict_matches_the_stored_features(trained, tmp_path, capsys, head):
    data, stores, models = trained
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    rc, out, err = cli(capsys, "predict", "--model", models[head], "--csv", data, broken)
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 25 and rows[-1]["label"] == "" and rows[-1]["error"]
    want = expected(models[head], stores)
    for r in rows[:-1]:
        label, p = want[r["path"].rsplit("/", 1)[-1]]
        assert r["label"] == label and float(r["probability"]) == pytest.approx(p, abs=1e-3), r
    rc, table, _ = cli(capsys, "predict", "--model", models[head], data / "cat.0.jpg")
    assert rc == 0 and "cat.0.jpg" in table and "probability" in table.splitlines()[0]


def test_predict_embeds_a_stored_image_as_extraction_stored_it(trained):
    """predict's embedding path is extraction's: the model's rebuilt backbone, on every stored image,
    gives back the stored rows (CPU, to 1e-5), whatever the batch size and worker layout."""
    data, stores, models = trained
    model = load_model(models["avg"])
    assert [b["amp"] for b in model["backbones"]] == [False, False]  # CPU stores: predict runs without autocast
    for backbone, store in zip(build_backbones(model, models["avg"]), stores):
        with FeatureStore(store) as fs:
            files = [data / p for p in fs.paths]
            X, reasons = embed_files(backbone, files, Options(batch_size=5, progress=False))
            stored = fs.embeddings(np.arange(len(files)))
            assert not any(reasons) and X.shape == stored.shape
            np.testing.assert_allclose(X, stored, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bf16 on this CPU")
def test_predict_embeds_in_the_precision_of_the_training_store(trained, tmp_path, capsys, monkeypatch):
    """A model trained on a bf16 store embeds new images in bf16, as its training images were; an int8 one in fp32,
    with a note (its graph was calibrated on the training images)."""
    data = trained[0]
    store = extract(load_dataset(data), create_backbone("resnet10t", random_init=True), tmp_path,
                    options=Options(progress=False, batch_size=8, workers=0, precision="bf16")).path
    path, = [r.path for r in run([store], ["logreg"])]
    model = load_model(path)
    assert model["backbones"][0]["precision"] == "bf16"
    files = sorted(data.glob("*.jpg"))
    asked = []
    monkeypatch.setattr(predict, "embed_files", lambda bb, f, o: asked.append(o.precision) or embed_files(bb, f, o))
    P, reasons = probabilities(model, path, files, "cpu")
    assert asked == ["bf16"]
    want = expected(path, [store])
    assert not any(reasons)
    np.testing.assert_allclose(P.max(axis=1), [want[f.name][1] for f in files], atol=2e-3)
    assert embedding_precision({"store": "s-int8", "precision": "int8"}, "cpu") == "fp32"
    assert "note: s-int8 was extracted in int8; embedding these images in fp32" in capsys.readouterr().err


def test_model_with_other_weights_is_refused(trained, tmp_path, capsys):
    _, _, models = trained
    model = load_model(models["resnet10t-random-init"])
    model["backbones"][0]["weights_fingerprint"] = "feedfeedfeedfeed"
    save_model(tmp_path / "other.skops", model)
    rc, out, err = cli(capsys, "predict", "--model", tmp_path / "other.skops", trained[0])
    assert rc == 2 and err.count("\n") == 1 and "weights feedfeedfeedfeed" in err and "resnet10t" in err
    (tmp_path / "junk.skops").write_bytes(b"junk")
    rc, out, err = cli(capsys, "predict", "--model", tmp_path / "junk.skops", trained[0])
    assert rc == 2 and "not a featbench model" in err and err.count("\n") == 1
    rc, out, err = cli(capsys, "predict", "--model", tmp_path / "junk.skops", trained[0], "--trust-pickle")
    assert rc == 2 and "not a featbench model" in err.splitlines()[-1]  # junk is no pickle: never unpickled


def test_older_joblib_model_predicts_only_with_trust_pickle(trained, tmp_path, capsys):
    data, _, models = trained
    old = tmp_path / "old.joblib"
    joblib.dump(load_model(models["avg"]), old)
    rc, out, err = cli(capsys, "predict", "--model", old, "--csv", data)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "--trust-pickle" in err
    rc, out, err = cli(capsys, "predict", "--model", old, "--csv", data, "--trust-pickle")
    assert rc == 0 and err.count("\n") == 1 and err.startswith("warning: ") and "old.joblib" in err
    assert out == cli(capsys, "predict", "--model", models["avg"], "--csv", data)[1]


def test_kaggle_submission(trained, tmp_path, capsys):
    data, _, models = trained
    test = tmp_path / "test1"
    test.mkdir()
    for kaggle_id, name in [(10, "cat.1.jpg"), (2, "dog.0.jpg"), (1, "cat.0.jpg")]:
        (test / f"{kaggle_id}.jpg").symlink_to(data / name)
    (test / "3.jpg").write_bytes(b"broken")
    out = tmp_path / "kaggle" / "submission.csv"
    done = subprocess.run([sys.executable, "-m", "classify", "submit", "--model", models["avg"], test,
                           "--clip", "0.005", "--out", out.parent], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "4 rows (1 unreadable images set to 0.5)" in done.stdout
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label" and [int(x.split(",")[0]) for x in lines[1:]] == [1, 2, 3, 10]
    p = {int(i): float(v) for i, v in (x.split(",") for x in lines[1:])}
    assert p[3] == 0.5 and all(0.005 <= v <= 0.995 for v in p.values())
    label, prob = expected(models["avg"], trained[1])["dog.0.jpg"]
    assert p[2] == pytest.approx(np.clip(prob if label == "dog" else 1 - prob, 0.005, 0.995), abs=1e-3)
    rc, _, err = cli(capsys, "submit", "--model", models["avg"], data, "--out", tmp_path / "no")
    assert rc == 2 and err.startswith("error: ") and "N.jpg" in err and not (tmp_path / "no").exists()
    first = out.read_text()  # the same submission again replaces it; another one keeps it in previous/1/
    for clip in "0.005", "0.499":
        rc, _, err = cli(capsys, "submit", "--model", models["avg"], test, "--clip", clip, "--out", out.parent)
        assert rc == 0, err
    assert (out.parent / "previous" / "1" / "submission.csv").read_text() == first != out.read_text()
    assert f"kept as {out.parent / 'previous' / '1' / 'submission.csv'}" in err
    assert sorted(p.name for p in (out.parent / "previous").iterdir()) == ["1"]


def test_every_entry_named_like_an_image_is_listed_and_unreadable_ones_say_why(trained, tmp_path, capsys, monkeypatch):
    """A broken link or a FIFO named like a test image keeps its row: 0.5 in the submission, which Kaggle rejects
    without every id, and `(skipped: reason)` in predict (both were dropped unseen); neither is opened."""
    data, _, models = trained
    test = tmp_path / "test1"
    test.mkdir()
    (test / "1.jpg").symlink_to(data / "cat.0.jpg")
    (test / "2.jpg").symlink_to(data / "dog.0.jpg")
    (test / "3.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(test / "4.jpg")
    (test / "cat.5.jpg").symlink_to(data / "cat.0.jpg")  # not a Kaggle id: said, not dropped unseen
    out = tmp_path / "kaggle"
    rc, stdout, err = cli(capsys, "submit", "--model", models["avg"], test, "--out", out)
    assert rc == 0 and "4 rows (2 unreadable images set to 0.5)" in stdout, err
    assert f"note: {test}: 1 name not N.jpg left out of the submission (first: cat.5.jpg)" in err
    rows = [x.split(",") for x in (out / "submission.csv").read_text().splitlines()[1:]]
    assert [i for i, _ in rows] == ["1", "2", "3", "4"] and [float(p) for _, p in rows[2:]] == [0.5, 0.5]
    rc, stdout, _ = cli(capsys, "predict", "--model", models["avg"], test)
    assert rc == 0 and "(skipped: broken symbolic link)" in stdout and "(skipped: not a regular file (FIFO))" in stdout
    assert len(stdout.splitlines()) == 6  # predict lists every image, cat.5.jpg too
    (out / "submission.csv").unlink()
    (out / "submission.csv").mkdir()  # a folder where the submission goes: refused before any image is embedded
    monkeypatch.setattr("classify.predict.probabilities", lambda *a, **k: pytest.fail("embedded before refusing"))
    rc, _, err = cli(capsys, "submit", "--model", models["avg"], test, "--out", out)
    assert rc == 2 and err.count("\n") == 1 and "submission.csv: a folder is where this file goes" in err
