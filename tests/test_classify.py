"""classify on synthetic feature stores: heads, ensembles, validation-only selection, metrics, bad input."""
import copyreg
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import joblib
import numpy as np
import pytest
import skops.io
import torch
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from classify import audit, ensembles, stream
from classify.__main__ import main
from classify.calibration import Tempered, softmax, temper
from classify.ensembles import BlockScaler
from classify.heads import ENSEMBLES, HEADS, CoveringFolds, PlattSVM, SmoothedKNN
from classify.metrics import ece, most_confused, top_losses
from classify.mlp import TorchMLP
from classify.models import SUFFIX, load_model, save_model
from classify.scaling import ModeratedScaler
from classify.select import quiet, sweep
from features import Extraction, StoreError, write_store
from features.cli import run_cli
from features.errors import FeatbenchError

CLASSES = ["ant", "bee", "cat"]
N = 300


def synthetic(seed=0, n=N, k=3):
    """Latent class clusters, split 60/20/20; every 'backbone' sees them through its own noisy map."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    latent = rng.normal(size=(k, 6))[y] * 1.2 + rng.normal(size=(n, 6))
    splits = rng.permutation(np.repeat([0, 1, 2], [n * 6 // 10, n * 2 // 10, n - n * 8 // 10]))
    return latent, y, splits


def view(latent, dim, seed, noise=1.0):
    rng = np.random.default_rng(seed)
    return latent @ rng.normal(size=(latent.shape[1], dim)) + noise * rng.normal(size=(len(latent), dim))


def make_store(path, X, y, splits, backbone, dataset="synth", class_names=CLASSES, paths=None, hashes=None,
               fmt="imagefolder", root=None, root_from_store=None):
    n = len(y)
    paths = paths or [f"{class_names[c] if c >= 0 else 'x'}/{i:04d}.jpg" for i, c in enumerate(y)]
    meta = Extraction(backbone=backbone, weights_fingerprint="0123456789abcdef",
                      preprocess={"size": 224, "resize": 256, "interpolation": "bilinear", "mean": [0.5] * 3,
                                  "std": [0.5] * 3},
                      weights={"source": "random-init (tests only)", "fingerprint": "0123456789abcdef",
                               "random_init": True},
                      dataset={"root": root or f"/data/{dataset}", "format": fmt, "name": dataset, "target": "",
                               "classes": len(class_names), "files": n,
                               **({"root_from_store": root_from_store} if root_from_store else {})},
                      split_fractions=[0.6, 0.2, 0.2], split_seed=0, versions={})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_store(path, dim=X.shape[1], chunks=[X] if n else [], labels=y, paths=paths, splits=splits,
                hashes=hashes or [""] * n, stamps=[""] * n, skipped=[], class_names=class_names, meta=meta)
    return path


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores") / "synth"
    latent, y, splits = synthetic()
    return (make_store(root / "alpha.h5", view(latent, 24, 1, 1.5), y, splits, "alpha"),
            make_store(root / "beta.h5", view(latent, 40, 2, 2.5), y, splits, "beta"))


@pytest.fixture(scope="module")
def all_results(two_stores, tmp_path_factory):
    from classify.train import run
    return run(two_stores, [*HEADS, *ENSEMBLES])


def cli(capsys, *argv):
    rc = run_cli(main, list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


# ---- heads and ensembles ------------------------------------------------------------------------------

def test_every_head_and_ensemble_beats_chance(all_results):
    acc = {(r.backbone, r.head): r.accuracy for r in all_results}
    assert len(acc) == 2 * len(HEADS) + len(ENSEMBLES)
    assert all(a > 0.75 for a in acc.values()), acc  # chance is 1/3
    singles = [a for (b, h), a in acc.items() if h in HEADS]
    for r in all_results:
        if r.head in ("avg", "stack"):
            members = [acc[b, h] for b, h in r.members.items()]
            assert r.accuracy >= min(members) and set(r.members) == {"alpha", "beta"}
        if r.head in ENSEMBLES:
            assert r.accuracy >= min(singles), (r.head, r.accuracy, singles)


def test_avg_and_stack_name_the_member_sweeps_their_figures_include(all_results):
    """`avg` and `stack` choose each store's best head from every head's sweep: their fit_seconds and configurations
    include those sweeps, plus their own fit and val score, and `member_sweeps` names each, so a pool counts it once."""
    singles = {r.model.removesuffix(SUFFIX): r for r in all_results if r.head in HEADS}
    for r in all_results:
        if r.head not in ("avg", "stack"):
            assert r.member_sweeps is None, r.model
            continue
        assert r.member_sweeps == {name: {"seconds": s.fit_seconds, "configurations": s.configurations}
                                   for name, s in singles.items()}
        assert r.configurations == 1 + sum(s.configurations for s in singles.values())
        assert r.fit_seconds > sum(s.fit_seconds for s in singles.values())


def test_metrics_record_which_test_images_each_model_got_right(all_results, two_stores):
    """`test_correct`, as fine-tunes record it: bit i is the i-th test image in path order, set where it was right."""
    from classify.metrics import correct_mask, proba
    from classify.train import load_store
    for r in all_results:
        assert int(r.test_correct, 16).bit_count() == round(r.accuracy * r.n_test), r.model
    test = load_store(two_stores[0]).test
    model = load_model(two_stores[0].parent / "models" / "alpha-svm.skops")["estimator"]
    right = proba(model, test.X, len(CLASSES)).argmax(1) == test.y
    assert next(r for r in all_results if r.model == "alpha-svm.skops").test_correct == correct_mask(right, test.paths)


def test_outputs_and_metric_keys(all_results, two_stores):
    folder = two_stores[0].parent / "models"
    names = sorted(p.name for p in folder.iterdir())
    assert "alpha-logreg.skops" in names and "alpha+beta-stack.metrics.json" in names
    assert len(names) == 2 * len(all_results) and not any(n.endswith(".tmp") for n in names)
    m = json.loads((folder / "alpha-logreg.metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "log_loss", "ece", "precision/ant", "recall/cat", "confusion",
                "most_confused", "top_losses", "fit_seconds", "predict_seconds", "params", "sweep", "features",
                "backbone", "head", "dataset", "refit", "n_train", "n_val", "n_test", "val_log_loss"):
        assert key in m, key
    assert m["n_train"] + m["n_val"] + m["n_test"] == N and m["refit"] is False and m["dataset"] == "synth"
    assert np.array(m["confusion"]).sum() == m["n_test"] and len(m["sweep"]) == len(HEADS["logreg"].grid(N))
    assert set(m["top_losses"][0]) == {"path", "true", "predicted", "probability", "p_true", "loss"}
    assert m["params"]["C"] in [row["C"] for row in m["sweep"]]
    assert min(row["val_log_loss"] for row in m["sweep"]) == pytest.approx(m["val_log_loss"], abs=1e-6)
    model = load_model(folder / "alpha+beta-avg.skops")
    assert model["class_names"] == CLASSES and [b["name"] for b in model["backbones"]] == ["alpha", "beta"]
    assert model["backbones"][0]["weights_fingerprint"] == "0123456789abcdef" and model["featbench_version"]


def test_refit_on_train_and_val(two_stores, tmp_path):
    from classify.train import run
    stores = [make_store(tmp_path / "synth" / p.name, *_arrays(p), p.stem) for p in two_stores]
    r = {x.head: x for x in run(stores, ["mlp", "concat"], refit=True)}
    assert r["mlp"].refit and r["mlp"].n_train == N * 8 // 10 and r["mlp"].accuracy > 0.75
    assert r["mlp"].params["epochs"] >= 1 and r["concat"].accuracy > 0.75 and r["concat"].refit
    assert (tmp_path / "synth" / "models" / "alpha-mlp-refit.skops").is_file()
    assert (tmp_path / "synth" / "models" / "alpha+beta-concat-refit.metrics.json").is_file()


def test_a_rerun_keeps_an_earlier_model_whose_result_differs(two_stores, tmp_path, capsys):
    """The same run again replaces its models (same outcome, nothing lost); another setting moves the earlier
    models and metrics, together, to models/previous/1/ and says so; a report reads them there."""
    from benchmarks.report import load_metrics
    store = make_store(tmp_path / "synth" / "alpha.h5", *_arrays(two_stores[0]), "alpha")
    models = tmp_path / "synth" / "models"
    for _ in range(2):
        rc, _, err = cli(capsys, "--features", store, "--head", "logreg", "knn", "--quiet")
        assert rc == 0 and not (models / "previous").exists() and "kept as" not in err
    rc, _, err = cli(capsys, "--features", store, "--head", "logreg", "knn", "--quiet", "--temperature")
    previous = models / "previous" / "1"
    assert rc == 0 and (f"alpha-logreg.metrics.json: this run's result differs from the one there, which is kept as "
                        f"{previous / 'alpha-logreg.metrics.json'}") in err
    assert sorted(p.name for p in previous.iterdir()) == ["alpha-knn.metrics.json", "alpha-knn.skops",
                                                          "alpha-logreg.metrics.json", "alpha-logreg.skops"]
    assert all("temperature" not in m.params and Path(m.path).is_file() for m in load_metrics([previous]))
    assert "temperature" in json.loads((models / "alpha-logreg.metrics.json").read_text())["params"]


def _arrays(path):
    with h5py.File(path) as f:
        return f["embeddings"][:], f["labels"][:], f["splits"][:]


# ---- selection sees train and val only ------------------------------------------------------------------

def test_test_split_never_influences_selection(two_stores, tmp_path):
    """Replace the test split by noise with shuffled labels: every choice and val score stays identical."""
    from classify.train import run
    rng = np.random.default_rng(7)
    swapped = []
    for p in two_stores:
        X, y, splits = _arrays(p)
        test = splits == 2
        X[test] = rng.normal(size=(test.sum(), X.shape[1])) * 50
        y[test] = np.random.default_rng(8).permutation(y[test])
        swapped.append(make_store(tmp_path / "synth" / p.name, X, y, splits, p.stem))
    heads = ["logreg", "mlp", "knn", "avg", "concat"]
    clean = {(r.backbone, r.head): r for r in run(two_stores, heads)}
    noisy = {(r.backbone, r.head): r for r in run(swapped, heads)}
    assert clean.keys() == noisy.keys()
    for key in clean:
        a, b = clean[key], noisy[key]
        assert (a.params, a.sweep, a.members) == (b.params, b.sweep, b.members), key
        assert a.val_log_loss == b.val_log_loss and a.val_accuracy == b.val_accuracy
        assert a.accuracy > 0.75 > b.accuracy


def test_sweep_picks_lowest_validation_loss_and_records_curve():
    latent, y, splits = synthetic(3)
    X = view(latent, 16, 4)
    tr, va = splits == 0, splits == 1
    head = HEADS["logreg"]
    sel = sweep(head.make(), head.grid(tr.sum()), X[tr], y[tr], X[va], y[va], 3)
    losses = [row["val_log_loss"] for row in sel.sweep]
    assert len(losses) == len(head.grid(tr.sum())) and sel.val_log_loss == pytest.approx(min(losses), abs=1e-6)
    assert sel.params == {"C": sel.sweep[int(np.argmin(losses))]["C"]}


def test_sweep_scores_val_not_train():
    """Many noisy dimensions, few train rows: train loss keeps falling as C grows, val loss turns up. The
    chosen C, and every point of the curve, are what a fresh fit on train scores on val."""
    from sklearn.metrics import log_loss
    latent, y, splits = synthetic(11, n=240)
    X = view(latent, 120, 12, noise=3.0)
    tr, va = splits == 0, splits == 1
    head = HEADS["logreg"]
    grid = head.grid(tr.sum())
    sel = sweep(head.make(), grid, X[tr], y[tr], X[va], y[va], 3)
    fresh = [head.make().set_params(**g).fit(X[tr], y[tr]) for g in grid]
    val = [log_loss(y[va], m.predict_proba(X[va]), labels=range(3)) for m in fresh]
    train = [log_loss(y[tr], m.predict_proba(X[tr]), labels=range(3)) for m in fresh]
    assert [row["val_log_loss"] for row in sel.sweep] == pytest.approx(val, rel=0.01)  # warm or cold: one optimum
    assert sel.params["C"] == grid[int(np.argmin(val))]["logreg__C"] != grid[int(np.argmin(train))]["logreg__C"]


def test_a_logreg_rebuilt_from_its_chosen_c_is_the_model_that_was_validated():
    """A few images of many dimensions, classes separable: the sweep chooses a weak penalty, where a fit from zero
    that stops early lands far from the warm-started model the sweep scored. The rebuilt model (refit, ensemble
    members) scores what the validated one did, and `avg` of two such members is no worse than their mean."""
    from classify.select import fit_fixed, score
    rng = np.random.default_rng(0)
    means = 0.3 * rng.normal(size=(3, 300))

    def draw(m):
        y = np.repeat(np.arange(3), m)
        return means[y] + rng.normal(size=(len(y), 300)), y
    (X, y), (Xv, yv) = draw(7), draw(2)
    X2, Xv2 = X + rng.normal(size=X.shape), Xv + rng.normal(size=Xv.shape)
    head = HEADS["logreg"]
    chosen = [sweep(head.make(), head.grid(len(y)), A, y, Av, yv, 3) for A, Av in ((X, Xv), (X2, Xv2))]
    assert chosen[0].params["C"] >= 10
    for sel, (A, Av) in zip(chosen, ((X, Xv), (X2, Xv2))):
        assert score(fit_fixed(head.make(), sel.fixed, A, y), Av, yv, 3)[0] == pytest.approx(sel.val_log_loss,
                                                                                           rel=0.01)
    members = {n: head.make().set_params(**sel.fixed) for n, sel in zip("ab", chosen)}
    avg = fit_fixed(ensembles.average(members, [300, 300]), {}, np.hstack([X, X2]), y)
    assert score(avg, np.hstack([Xv, Xv2]), yv, 3)[0] <= np.mean([s.val_log_loss for s in chosen]) + 1e-4


def test_avg_is_the_plain_mean_and_stack_a_logreg_on_out_of_fold_probabilities():
    """Both ensembles, recomputed by hand from their members on a small problem."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    latent, y, _ = synthetic(5, n=120)
    A, B = view(latent, 6, 1, 1.5), view(latent, 9, 2, 2.5)
    X = np.hstack([A, B])
    members = {"a": HEADS["logreg"].make(), "b": HEADS["knn"].make().set_params(n_neighbors=7)}
    pa = clone(members["a"]).fit(A, y).predict_proba(A)
    pb = clone(members["b"]).fit(B, y).predict_proba(B)
    avg = ensembles.average(members, [6, 9]).fit(X, y)
    np.testing.assert_allclose(avg.predict_proba(X), (pa + pb) / 2, atol=1e-9)
    folds = ensembles.stack(members, [6, 9]).cv
    oof = np.hstack([cross_val_predict(clone(m), part, y, cv=folds, method="predict_proba")
                     for m, part in ((members["a"], A), (members["b"], B))])
    meta = LogisticRegression(max_iter=1000).fit(oof, y)
    stacked = ensembles.stack(members, [6, 9]).fit(X, y)
    np.testing.assert_allclose(stacked.predict_proba(X), meta.predict_proba(np.hstack([pa, pb])), atol=1e-6)


# ---- a temperature fitted on val (--temperature) ------------------------------------------------------------

def test_tempered_probabilities_are_the_heads_at_a_temperature():
    """softmax(log p / T): T = 1 gives the head's own probabilities, T < 1 sharpens them, the predicted class never
    changes; a refit fits a fresh head and keeps the temperature."""
    latent, y, splits = synthetic(5, n=120)
    X = view(latent, 24, 6)
    head = HEADS["logreg"].make().fit(X[splits == 0], y[splits == 0])
    p = head.predict_proba(X)
    sharp = Tempered.around(head, 0.5)
    np.testing.assert_allclose(Tempered.around(head, 1.0).predict_proba(X), p)
    np.testing.assert_allclose(sharp.predict_proba(X), softmax(np.log(p), 0.5))
    np.testing.assert_allclose(temper(p, 0.5), sharp.predict_proba(X))
    assert (sharp.predict(X) == head.predict(X)).all() and (sharp.predict_proba(X).max(1) >= p.max(1) - 1e-12).all()
    refit = clone(sharp).fit(X, y)
    assert refit.temperature == 0.5 and refit.estimator_ is not head and refit.n_features_in_ == 24


def test_with_temperature_each_point_is_chosen_at_its_own_val_temperature():
    """Every grid point is scored at the temperature fitted to its val probabilities (never worse than T = 1, same
    accuracy), the lowest such score wins, and the chosen model keeps that temperature."""
    from sklearn.metrics import log_loss
    latent, y, splits = synthetic(6)
    X = view(latent, 24, 7, 2.0)
    tr, va = splits == 0, splits == 1
    grid = HEADS["knn"].grid(tr.sum())
    plain = sweep(HEADS["knn"].make(), grid, X[tr], y[tr], X[va], y[va], 3)
    tempered = sweep(HEADS["knn"].make(), grid, X[tr], y[tr], X[va], y[va], 3, temperature=True)
    assert plain.temperature is None and "temperature" not in plain.sweep[0] and not isinstance(plain.model, Tempered)
    for a, b in zip(plain.sweep, tempered.sweep, strict=True):
        assert b["val_log_loss"] <= a["val_log_loss"] + 1e-6 and b["val_accuracy"] == a["val_accuracy"]
    assert tempered.val_log_loss == pytest.approx(min(row["val_log_loss"] for row in tempered.sweep), abs=1e-6)
    assert tempered.val_log_loss < plain.val_log_loss
    assert isinstance(tempered.model, Tempered) and tempered.params["temperature"] == round(tempered.temperature, 4)
    assert log_loss(y[va], tempered.model.predict_proba(X[va])) == pytest.approx(tempered.val_log_loss, abs=1e-6)


def test_points_tied_at_their_val_temperatures_go_to_the_lower_raw_val_log_loss():
    """Val all right and every image equally sure: kNN with k = 1 (vote share 0.75) and k = 3 (0.875) reach the same
    confidence at their Laplace-limited temperatures, so their tempered val log-losses tie to within rounding. The
    tie goes to the better model before calibration (k = 3 here), never to whichever float noise favours."""
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = np.repeat([0, 1], 30)
    X = centres[y] + rng.normal(scale=0.01, size=(60, 3))
    tr = np.arange(60) % 3 != 0
    chosen = sweep(HEADS["knn"].make(), [{"n_neighbors": 1}, {"n_neighbors": 3}], X[tr], y[tr], X[~tr], y[~tr], 2,
                   temperature=True)
    first, second = chosen.sweep
    assert first["val_log_loss"] == pytest.approx(second["val_log_loss"], abs=1e-8)
    assert chosen.params["n_neighbors"] == 3 and chosen.sweep[1]["val_log_loss_raw"] < chosen.sweep[0]["val_log_loss_raw"]
    from classify.select import TIE, first_best
    a, b, c = ((1.0 + i * 0.8 * TIE, raw) for i, raw in enumerate((5, 4, 3)))
    nan = (float("nan"), float("nan"))
    assert first_best([a, b, c]) == 1 and first_best([b, c, a]) == 0  # b: within TIE of the lowest, c is not
    assert first_best([nan, c]) == 1 and first_best([a, nan]) == 0  # a diverged model never wins


def test_a_class_without_images_does_not_bend_the_temperature():
    """A class listed in the store with no image (all skipped at extraction) is a zero column of every model's
    probabilities: the temperature is fitted over the classes the model knows, as `Tempered` applies it."""
    latent, y, splits = synthetic(6)
    X = view(latent, 24, 7, 2.0)
    tr, va = splits == 0, splits == 1
    fits = [sweep(HEADS["logreg"].make(), HEADS["logreg"].grid(tr.sum()), X[tr], y[tr], X[va], y[va], k, True)
            for k in (3, 4)]
    assert fits[1].temperature == pytest.approx(fits[0].temperature, rel=1e-6) and fits[0].temperature < 1
    assert fits[1].val_log_loss == pytest.approx(fits[0].val_log_loss) and fits[1].params == fits[0].params


def test_classify_with_temperature_saves_and_scores_the_tempered_models(all_results, two_stores, tmp_path, capsys):
    """`--temperature`: every model (a single head, an ensemble, refitted too) is chosen and saved at its val
    temperature; its metrics score test at it and give the head's own test log-loss as log_loss_raw, and the saved
    model predicts what was scored. Without it, nothing is tempered."""
    from sklearn.metrics import log_loss

    from classify.metrics import proba
    from classify.train import load_store
    assert all("temperature" not in r.params and r.log_loss_raw is None for r in all_results)
    stores = [make_store(tmp_path / "synth" / p.name, *_arrays(p), p.stem) for p in two_stores]
    rc, out, err = cli(capsys, "--features", *stores, "--head", "logreg", "knn", "avg", "stack", "concat",
                       "--temperature", "--refit", "--quiet")
    assert rc == 0, err
    tests = {p.stem: load_store(p).test for p in stores}
    written = sorted((tmp_path / "synth" / "models").glob("*.metrics.json"))
    assert len(written) == 7 and "temperature=" in out
    for path in written:
        m = json.loads(path.read_text())
        t = m["params"]["temperature"]
        model = load_model(path.parent / m["model"])["estimator"]
        assert isinstance(model, Tempered) and model.temperature == pytest.approx(t, abs=1e-4) and m["refit"]
        if m["head"] in ("avg", "stack"):  # each member as its single head was chosen: at its own temperature
            members = [pipe.named_steps["head"] for pipe in model.estimator_.estimators_]
            assert [round(mb.temperature, 4) for mb in members] == [m["params"][s]["temperature"] for s in m["members"]]
        X, y = np.hstack([tests[name].X for name in m["features"]]), tests[next(iter(m["features"]))].y
        assert log_loss(y, proba(model, X, 3), labels=[0, 1, 2]) == pytest.approx(m["log_loss"], abs=1e-6)
        assert log_loss(y, proba(model.estimator_, X, 3), labels=[0, 1, 2]) == pytest.approx(m["log_loss_raw"],
                                                                                             abs=1e-6)
        assert m["log_loss"] != m["log_loss_raw"], path.name


# ---- estimator conformance --------------------------------------------------------------------------------

def _estimators():
    members = {"a": HEADS["logreg"].make(), "b": HEADS["knn"].make()}
    return {**{h: HEADS[h].make() for h in HEADS}, "avg": ensembles.average(members, [12, 12]),
            "stack": ensembles.stack(members, [12, 12]), "concat": ensembles.concat([12, 12]),
            "tempered": Tempered(HEADS["svm"].make(), 0.6)}


@pytest.mark.parametrize("name", [*HEADS, *ENSEMBLES, "tempered"])
def test_clone_get_params_and_pickle(name):
    est = _estimators()[name]
    params = est.get_params(deep=False)
    twin = clone(est)
    assert twin is not est and twin.get_params(deep=False).keys() == params.keys()
    latent, y, splits = synthetic(5, n=120)
    X = view(latent, 24, 6)
    fitted = clone(est).fit(X[splits == 0], y[splits == 0])
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(again.predict_proba(X[splits == 2]), fitted.predict_proba(X[splits == 2]))
    assert list(fitted.classes_) == [0, 1, 2] and fitted.score(X[splits == 2], y[splits == 2]) > 0.6


def _streamed():
    """The out-of-core heads as `classify.stream` saves them: scaler + SGD, and an MLP mid-`partial_fit`."""
    latent, y, _ = synthetic(5, n=120)
    X = view(latent, 24, 6)
    scaler = stream.fit_scaler(type("Split", (), {"chunks": lambda self: iter([(X, y)])})())
    sgd = stream.sgd_logreg(24).partial_fit(scaler.transform(X), y, classes=[0, 1, 2])
    mlp = TorchMLP().partial_fit(X, y, classes=[0, 1, 2])
    return {"streamed-logreg": stream.usable(sgd, scaler), "streamed-mlp": stream.usable(mlp, scaler)}


@pytest.mark.parametrize("name", [*HEADS, *ENSEMBLES, "tempered", "streamed-logreg", "streamed-mlp"])
def test_saved_model_predicts_the_same_after_loading(name, tmp_path):
    latent, y, splits = synthetic(5, n=120)
    X = view(latent, 24, 6)
    fitted = _streamed()[name] if name.startswith("streamed") else clone(_estimators()[name]).fit(X, y)
    path = tmp_path / f"m{SUFFIX}"
    save_model(path, {**small_bundle(), "estimator": fitted})
    loaded = load_model(path)
    assert zipfile.is_zipfile(path) and loaded["class_names"] == CLASSES
    np.testing.assert_array_equal(loaded["estimator"].predict_proba(X), fitted.predict_proba(X))


def test_an_mlp_saved_before_a_hyper_parameter_existed_loads_with_its_default(tmp_path):
    """A model file of an older featbench lacks the MLP's newer constructor arguments: once loaded, the head still
    predicts, prints, gives its parameters and clones, with the default (`tempered_stopping` False)."""
    latent, y, splits = synthetic(5, n=120)
    X = view(latent, 24, 6)
    old = Tempered.around(TorchMLP(max_epochs=3).fit(X, y), 0.7)
    del old.estimator.tempered_stopping, old.estimator_.tempered_stopping
    save_model(tmp_path / f"m{SUFFIX}", {**small_bundle(), "estimator": old})
    loaded = load_model(tmp_path / f"m{SUFFIX}")["estimator"]
    np.testing.assert_array_equal(loaded.predict_proba(X), old.predict_proba(X))
    assert loaded.estimator_.get_params()["tempered_stopping"] is False and "TorchMLP" in repr(loaded)
    assert clone(loaded).estimator.tempered_stopping is False


class Payload:
    """Unpickling runs `exec` of code that writes `marker`: what a crafted model file can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({self.marker!r}).write_text('ran')",)


class Untrusted:
    """A type no featbench model holds; constructing it from a file would write `marker`."""

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")


def test_a_crafted_model_file_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.joblib"
    joblib.dump(Payload(marker), evil)
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    (tmp_path / "test1").mkdir()
    (tmp_path / "test1" / "1.jpg").write_bytes(b"")
    for argv in (["predict", "--model", evil, image], ["submit", "--model", evil, tmp_path / "test1"]):
        one_line_error(*cli(capsys, *argv), "evil.joblib", "--trust-pickle", "re-train")
        assert not marker.exists()
    shutil.copy(evil, tmp_path / "evil.skops")  # the name does not decide how a file is read
    one_line_error(*cli(capsys, "predict", "--model", tmp_path / "evil.skops", image), "--trust-pickle")
    holder = Untrusted()
    holder.marker = str(marker)
    skops.io.dump({"format": "featbench-model", "estimator": holder}, tmp_path / "odd.skops")
    one_line_error(*cli(capsys, "predict", "--model", tmp_path / "odd.skops", image), "odd.skops",
                   "test_classify.Untrusted", "refusing")
    assert not marker.exists()
    rc, out, err = cli(capsys, "predict", "--model", evil, image, "--trust-pickle")  # the payload is real
    assert rc == 2 and marker.read_text() == "ran" and err.startswith("warning: ") and err.count("\n") == 2, err


def small_bundle() -> dict:
    """A model bundle as `python -m classify` saves one: a knn on a 24-d 'alpha' backbone."""
    from classify.models import bundle
    latent, y, _ = synthetic(5, n=60)
    knn = SmoothedKNN(3).fit(view(latent, 24, 6), y)
    record = {"name": "alpha", "store": "alpha", "dim": 24, "preprocess": {}, "readout": None,
              "weights": {"source": "random-init", "fingerprint": "0" * 16, "random_init": True},
              "weights_fingerprint": "0" * 16, "store_fingerprint": "f", "amp": False, "amp_dtype": None,
              "precision": "fp32"}
    return bundle(knn, head="knn", class_names=CLASSES, backbones=[record], split_fingerprint="s", dataset="synth",
                  refit=False, params={"n_neighbors": 3})


def test_a_truncated_or_empty_model_is_damaged_not_a_pickle(tmp_path):
    """Cut short (head or tail), emptied or not a model at all: one line that never suggests trusting pickles;
    a real pickle still names --trust-pickle."""
    good = tmp_path / "good.skops"
    save_model(good, small_bundle())
    data = good.read_bytes()
    assert load_model(good)["head"] == "knn"
    for name, content in {"half": data[:len(data) // 2], "tail": data[:-10], "empty": b""}.items():
        (tmp_path / f"{name}.skops").write_bytes(content)
        with pytest.raises(FeatbenchError, match="truncated or damaged model file; re-train") as e:
            load_model(tmp_path / f"{name}.skops")
        assert "pickle" not in str(e.value) and f"{name}.skops" in str(e.value)
    (tmp_path / "text.skops").write_text("hello")
    with pytest.raises(FeatbenchError, match="not a featbench model") as e:
        load_model(tmp_path / "text.skops")
    assert "--trust-pickle" not in str(e.value)
    joblib.dump({"format": "featbench-model"}, tmp_path / "old.skops")
    with pytest.raises(FeatbenchError, match="--trust-pickle"):
        load_model(tmp_path / "old.skops")
    os.mkfifo(tmp_path / "fifo.skops")  # there, but not a model file: said so, never opened
    (tmp_path / "loop.skops").symlink_to(tmp_path / "loop.skops")
    for name, kind in (("fifo.skops", "a FIFO"), ("loop.skops", "a symbolic link loop")):
        with pytest.raises(FeatbenchError, match=f"{name}: {kind}, not a model file; pass the model file itself$"):
            load_model(tmp_path / name)


@pytest.mark.parametrize("change, words", [
    (lambda m: {"format": m["format"], "x": {"a": 1}}, ["'format_version' missing"]),
    (lambda m: {**m, "estimator": "knn"}, ["'estimator' is not a classifier"]),
    (lambda m: {**m, "backbones": [{"name": "alpha"}]}, ["backbone record lacks store, dim"]),
    (lambda m: {**m, "class_names": "ant"}, ["'class_names' missing or not of type list"]),
    (lambda m: {**m, "backbones": m["backbones"] * 2}, ["reads 24 features, its backbones give 48"]),
    (lambda m: {**m, "format_version": 99}, ["newer featbench", "upgrade"]),
    (lambda m: {**m, "class_names": ["ant"]}, ["classes [0, 1, 2] are not indices of its 1 class names"]),
    (lambda m: {**m, "backbones": [{**m["backbones"][0], "name": 5}]}, ["name 5 or store 'alpha' is not text"]),
    (lambda m: {**m, "backbones": [{**m["backbones"][0], "readout": "zzz"}]}, ["readout 'zzz' is not one"]),
    (lambda m: {**m, "backbones": [{**m["backbones"][0], "readout": {"pool": "zzz"}}]},
     ["alpha's readout {'pool': 'zzz'} is not one this featbench reads"]),
    (lambda m: setattr(m["estimator"].knn_, "_fit_X", np.zeros((3, 3))) or m, ["fails on a row of 24 features"]),
])
def test_a_malformed_bundle_is_one_line(tmp_path, capsys, change, words):
    """A skops file with the featbench `format` key but missing or mistyped contents, class names that its estimator's
    classes do not index, or an array of another shape: one line naming the file that says to re-train, never a
    traceback (nor a flag the user did not pass)."""
    skops.io.dump(change(small_bundle()), tmp_path / "m.skops")
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    rc, out, err = cli(capsys, "predict", "--model", tmp_path / "m.skops", image)
    one_line_error(rc, out, err, "m.skops", *words)
    assert "--pool" not in err and ("re-train" in err or "upgrade" in err)


def test_a_class_the_model_never_predicts_is_noted(tmp_path, capsys):
    """Class names beyond its estimator's classes (a class without train images, or a list changed after training):
    loading says which it never predicts, rather than labelling silently."""
    save_model(tmp_path / "m.skops", {**small_bundle(), "class_names": ["fox", *CLASSES]})
    assert load_model(tmp_path / "m.skops")["class_names"][0] == "fox"
    assert capsys.readouterr().err == (f"note: {tmp_path / 'm.skops'}: the model never predicts 'cat' (no train images "
                                       "of it, or a class list changed after training); re-train it if it should\n")


def test_an_older_platt_svm_is_named_with_what_to_do(tmp_path, capsys):
    """An svm saved before the small-n calibration (sklearn's CalibratedClassifierCV inside) is one line
    saying what it is and how to replace it, not an 'untrusted types' refusal."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC
    latent, y, _ = synthetic(5, n=120)
    old = CalibratedClassifierCV(SVC(kernel="linear"), cv=2).fit(view(latent, 24, 6), y)
    skops.io.dump({"format": "featbench-model", "estimator": old}, tmp_path / "old-svm.skops")
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    one_line_error(*cli(capsys, "predict", "--model", tmp_path / "old-svm.skops", image), "old-svm.skops",
                   "an svm saved by an older featbench", "--head svm")


def test_older_pickled_models_load_with_trust_pickle(tmp_path, capsys):
    """A .joblib bundle as older featbench wrote it (the MLP's torch module pickled whole) loads with
    --trust-pickle only, with a one-line warning."""
    latent, y, _ = synthetic(5, n=120)
    X = view(latent, 24, 6)
    members = {"a": HEADS["mlp"].make(), "b": HEADS["svm"].make()}
    fitted = ensembles.average(members, [12, 12]).fit(X, y)
    mlp = fitted.estimators_[0].named_steps["head"]

    class AsBefore:  # pickles the MLP with its state as it was before TorchMLP.__getstate__
        def __reduce__(self):
            return copyreg._reconstructor, (TorchMLP, object, None), dict(vars(mlp))

    fitted.estimators_[0].steps[-1] = ("head", AsBefore())
    old = tmp_path / "old.joblib"
    joblib.dump({**small_bundle(), "estimator": fitted}, old)
    fitted.estimators_[0].steps[-1] = ("head", mlp)
    with pytest.raises(FeatbenchError, match="--trust-pickle"):
        load_model(old)
    loaded = load_model(old, trust_pickle=True)
    assert "warning: " in capsys.readouterr().err
    assert isinstance(loaded["estimator"].estimators_[0].named_steps["head"].module_, torch.nn.Module)
    np.testing.assert_array_equal(loaded["estimator"].predict_proba(X), fitted.predict_proba(X))


def test_long_tailed_classes_train_every_head_and_ensemble():
    """Classes with one or two training images (Oxford Pets subsets) must not break SVM calibration
    or stacking folds."""
    y = np.array([0] * 40 + [1] * 40 + [2] * 2 + [3])
    X = view(np.eye(4)[y] * 4 + np.random.default_rng(0).normal(size=(len(y), 4)), 24, 13, 0.5)
    folds = list(CoveringFolds(3).split(X, y))
    held = np.sort(np.concatenate([h for _, h in folds]))
    assert len(folds) == 3 and np.array_equal(held, np.arange(80))  # big classes held out once each
    assert all(set(y[train]) == {0, 1, 2, 3} for train, _ in folds)
    for name, est in _estimators().items():
        with quiet():  # sklearn warns that class 3 cannot be in every stacking fold
            p = clone(est).fit(X, y).predict_proba(X)
        assert p.shape == (len(y), 4) and np.allclose(p.sum(axis=1), 1), name


def test_knn_probabilities_are_smoothed_vote_shares():
    X = np.array([[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [0.2, 1.0]])
    y = np.array([0, 0, 1, 1])
    knn = SmoothedKNN(n_neighbors=1).fit(X, y)
    np.testing.assert_allclose(knn.predict_proba(X), [[0.75, 0.25]] * 2 + [[0.25, 0.75]] * 2)  # (1 + 1/2) / 2
    assert (knn.predict(X) == y).all()
    p = SmoothedKNN(n_neighbors=3).fit(X, y).predict_proba(X[:1])
    np.testing.assert_allclose(p, [[(2 + 0.5) / 4, (1 + 0.5) / 4]])


@parametrize_with_checks([TorchMLP(max_epochs=5), PlattSVM(), BlockScaler(), SmoothedKNN(), ModeratedScaler(),
                          Tempered(SmoothedKNN(), 0.5)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_mlp_early_stops_and_refits_with_fixed_epochs():
    latent, y, splits = synthetic(8)
    X = view(latent, 20, 9)
    tr, va = splits == 0, splits == 1
    m = TorchMLP(max_epochs=40, patience=3).fit(X[tr], y[tr], eval_set=(X[va], y[va]))
    assert 1 <= m.best_epoch_ <= len(m.val_losses_) <= 40
    assert m.val_losses_[m.best_epoch_ - 1] == min(m.val_losses_)
    fixed = TorchMLP(max_epochs=m.best_epoch_).fit(X[tr], y[tr])
    assert fixed.best_epoch_ == m.best_epoch_ and fixed.score(X[va], y[va]) > 0.75


def test_mlp_with_temperature_early_stops_on_each_epochs_tempered_val_loss():
    """As the lp-ft fine-tune chooses its epoch: each epoch's val log-loss at the temperature fitted to that epoch's
    val logits (never above its T = 1 loss); `sweep(temperature=True)` stops the mlp that way and its row says so."""
    from classify.calibration import fit_temperature, log_loss_at
    latent, y, splits = synthetic(8)
    X = view(latent, 20, 9)
    tr, va = splits == 0, splits == 1
    raw = TorchMLP(max_epochs=12, patience=99).fit(X[tr], y[tr], eval_set=(X[va], y[va]))
    tempered = TorchMLP(max_epochs=12, patience=99, tempered_stopping=True).fit(X[tr], y[tr], eval_set=(X[va], y[va]))
    assert len(raw.val_losses_) == len(tempered.val_losses_) == 12
    assert all(t <= r + 1e-6 for r, t in zip(raw.val_losses_, tempered.val_losses_, strict=True))
    assert tempered.val_losses_[tempered.best_epoch_ - 1] == min(tempered.val_losses_)
    logits = np.log(tempered.predict_proba(X[va]))
    assert tempered.val_losses_[tempered.best_epoch_ - 1] == pytest.approx(
        log_loss_at(logits, y[va], fit_temperature(logits, y[va])), abs=1e-5)
    grid = [{"lr": 1e-3, "max_epochs": 12}]
    plain = sweep(TorchMLP(), grid, X[tr], y[tr], X[va], y[va], 3)
    calibrated = sweep(TorchMLP(), grid, X[tr], y[tr], X[va], y[va], 3, temperature=True)
    assert "early_stop" not in plain.params and not plain.model.tempered_stopping
    assert calibrated.params["early_stop"] == "tempered" and calibrated.model.estimator_.tempered_stopping
    assert calibrated.model.estimator_.val_losses_ == tempered.val_losses_[:len(calibrated.model.estimator_.val_losses_)]

def test_mlp_configurations_are_the_epochs_it_scored_on_val(tmp_path):
    """Each learning rate scores its epochs on val and keeps the best: every one is a configuration, as a fine-tune
    counts each (run, epoch) and the out-of-core MLP each (point, epoch)."""
    from classify.train import run
    latent, y, splits = synthetic(3, n=150)
    store = make_store(tmp_path / "synth" / "alpha.h5", view(latent, 16, 4), y, splits, "alpha")
    result = run([store], ["mlp"])[0]
    X, y, splits = _arrays(store)
    tr, va = splits == 0, splits == 1
    scored = [len(TorchMLP(**point).fit(X[tr], y[tr], eval_set=(X[va], y[va])).val_losses_)
              for point in HEADS["mlp"].grid(int(tr.sum()))]
    assert result.configurations == sum(scored) > len(scored)
    assert [row["val_epochs"] for row in result.sweep] == scored


def test_torch_loads_only_when_a_torch_model_runs(tmp_path):
    """A fresh process imports classify's CLI, audit and the report and trains and saves a logreg without torch, timm
    or torchvision; it builds and clones an MLP head without them too, and a saved MLP model loads torch when read
    and predicts as before."""
    latent, y, splits = synthetic(5, n=120)
    X = view(latent, 24, 6)
    store = make_store(tmp_path / "synth" / "alpha.h5", X, y, splits, "alpha")
    mlp = TorchMLP(max_epochs=5).fit(X, y)
    save_model(tmp_path / f"m{SUFFIX}", {**small_bundle(), "estimator": mlp})
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "P.npy", mlp.predict_proba(X))
    code = f"""
import sys
import numpy as np
import classify.__main__, classify.train, classify.audit, benchmarks.report
from sklearn.base import clone
from classify.heads import HEADS
from classify.models import load_model
assert classify.__main__.main(["--features", {str(store)!r}, "--head", "logreg", "--quiet"]) == 0
clone(HEADS["mlp"].make()).get_params()
heavy = {{"torch", "torchvision", "timm"}} & set(sys.modules)
assert not heavy, heavy
model = load_model({str(tmp_path / f"m{SUFFIX}")!r})
assert "torch" in sys.modules
np.testing.assert_array_equal(model["estimator"].predict_proba(np.load({str(tmp_path / "X.npy")!r})),
                              np.load({str(tmp_path / "P.npy")!r}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "synth" / "models" / f"alpha-logreg{SUFFIX}").is_file()


def test_block_scaler_gives_each_backbone_equal_weight():
    rng = np.random.default_rng(0)
    X = np.hstack([rng.normal(5, 3, size=(200, 8)), rng.normal(-1, 0.1, size=(200, 32))])
    Z = BlockScaler((8, 32)).fit_transform(X)
    assert Z[:, :8].var(axis=0).sum() == pytest.approx(Z[:, 8:].var(axis=0).sum())
    assert Z.var(axis=0).sum() == pytest.approx(40)


# ---- metrics ---------------------------------------------------------------------------------------------

def test_metric_helpers():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])
    assert ece(y, p) == pytest.approx((abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.6) + abs(1 - 0.7)) / 4)
    assert ece(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0
    cm = np.array([[5, 1, 0], [3, 4, 2], [0, 0, 6]])
    assert most_confused(cm, CLASSES) == [["bee", "ant", 3], ["bee", "cat", 2], ["ant", "bee", 1]]
    worst = top_losses(y, p, ["a", "b", "c", "d"], ["cat", "dog"], k=2)
    assert [w["path"] for w in worst] == ["b", "c"] and worst[0]["predicted"] == "dog"
    assert worst[0]["p_true"] == pytest.approx(0.2) and worst[0]["probability"] == pytest.approx(0.8)


# ---- command line and bad input -----------------------------------------------------------------------------

def test_cli_trains_the_configured_dataset(two_stores, tmp_path, capsys, monkeypatch):
    data = tmp_path / "synth"
    for c in CLASSES:  # an imagefolder listing named like the stores' dataset; no image is opened
        (data / c).mkdir(parents=True)
        (data / c / "0.jpg").write_bytes(b"")
    out = two_stores[0].parent.parent
    for store in two_stores:  # made from this listing's folder
        with h5py.File(store, "r+") as f:
            meta = json.loads(f.attrs["meta"])
            f.attrs["meta"] = json.dumps({**meta, "dataset": {**meta["dataset"], "root": str(data.resolve())}})
    (tmp_path / "featbench.toml").write_text(f'[dataset]\npath = "{data}"\nout = "{out}"\nsplits = [0.6, 0.2, 0.2]\n')
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = cli(capsys, "--head", "logreg", "--backbone", "beta", "--quiet")
    assert rc == 0 and "beta-logreg" in stdout and "alpha" not in stdout and err == ""
    rc, stdout, err = cli(capsys, "--head", "knn", "--seed", "3", "--quiet")
    assert rc == 0 and "alpha-knn" in stdout and "beta-knn" in stdout
    assert "was split with fractions [0.6, 0.2, 0.2] and seed 0, not the configured" in err
    one_line_error(*cli(capsys, "--features", two_stores[0], "--backbone", "beta"), "not both")


def one_line_error(rc, out, err, *words):
    assert rc == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def nothing_written(folder):
    assert not (folder / "models").exists()


@pytest.fixture
def good(tmp_path):
    latent, y, splits = synthetic(11, n=120)
    return tmp_path / "ds", view(latent, 12, 12), y, splits


@pytest.mark.parametrize("command", ["train", "audit"])
def test_out_that_is_a_file_is_refused_before_any_work(good, capsys, monkeypatch, command):
    """`--out` at a file (or inside one): one line naming it, before a head is chosen or an audit runs."""
    from classify import train
    root, X, y, splits = good
    store = make_store(root / "alpha.h5", X, y, splits, "alpha")
    monkeypatch.setattr(train, "choose", lambda *a, **k: pytest.fail("trained before checking --out"))
    monkeypatch.setattr(audit, "audit", lambda *a, **k: pytest.fail("audited before checking --out"))
    afile = root / "afile"
    afile.write_text("")
    for out in (afile, afile / "deeper"):
        one_line_error(*cli(capsys, command, "--features", store, "--out", out), str(afile), "is a file", "--out")
    nothing_written(root)


def test_atomic_write_under_a_file_is_one_featbench_error(tmp_path):
    from features.atomic import atomic_write
    (tmp_path / "afile").write_text("")
    with pytest.raises(FeatbenchError, match="afile/x: cannot create this output folder"):
        atomic_write(tmp_path / "afile" / "x" / "m.json", lambda tmp: tmp.write_text("{}"))


def test_unknown_head(good, capsys):
    folder, X, y, splits = good
    store = make_store(folder / "a.h5", X, y, splits, "a")
    one_line_error(*cli(capsys, "--head", "logreg,forest", "--features", store), "unknown head 'forest'")
    nothing_written(folder)


def test_dataset_flags_beside_features_are_refused_not_ignored(good, capsys):
    folder, X, y, splits = good
    store = make_store(folder / "a.h5", X, y, splits, "a")
    for command in [], ["audit"]:
        one_line_error(*cli(capsys, *command, "--features", store, "--data", folder, "--seed", "5"),
                       "so --data, --seed would be ignored: drop them, or drop --features")
    one_line_error(*cli(capsys, "--features", store, "--config", folder / "featbench.toml"), "so --config would be")
    nothing_written(folder)


def test_an_out_inside_the_stores_dataset_folder_is_refused_before_any_work(good, capsys):
    """A store records its dataset folder (here /data/synth): models, an audit or a curve written inside it would
    be listed as its images, or a new class, on the next extraction."""
    folder, X, y, splits = good
    store = make_store(folder / "a.h5", X, y, splits, "a")
    for command in [], ["audit"]:
        one_line_error(*cli(capsys, *command, "--features", store, "--out", "/data/synth/runs"),
                       "/data/synth/runs/synth/", "lies inside the dataset folder /data/synth, so the next extraction")
    from benchmarks.__main__ import main as benchmarks
    rc = run_cli(benchmarks, ["curve", "--features", str(store), "--out", "/data/synth/runs"])
    assert rc == 2 and "lies inside the dataset folder /data/synth" in capsys.readouterr().err
    nothing_written(folder)
    inside = make_store(folder / "runs" / "b.h5", X, y, splits, "b", root=str(folder))  # extracted into its data
    for command in [], ["audit"]:  # without --out, beside the store: refused too, saying what to do
        one_line_error(*cli(capsys, *command, "--features", inside), "move them out, or use --features STORE --out")
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["b.h5"]
    moved = make_store(folder / "runs" / "c.h5", X, y, splits, "c", root="/gone/synth", root_from_store="..")
    for command in [], ["audit"]:  # a project moved whole: its data is where the store finds it from its folder
        one_line_error(*cli(capsys, *command, "--features", moved, "--out", folder / "out"),
                       f"lies inside the dataset folder {folder.resolve()}, so")
    rc = run_cli(benchmarks, ["curve", "--features", str(moved), "--out", str(folder / "out")])
    assert rc == 2 and f"lies inside the dataset folder {folder.resolve()}" in capsys.readouterr().err
    assert not (folder / "out").exists()


def test_missing_and_empty_stores(tmp_path, capsys):
    one_line_error(*cli(capsys, "--features", tmp_path / "nope.h5"), "nope.h5", "python -m extract")
    (tmp_path / "zero.h5").write_bytes(b"")
    one_line_error(*cli(capsys, "--features", tmp_path / "zero.h5"), "zero.h5")
    empty = make_store(tmp_path / "empty.h5", np.zeros((0, 4), np.float32), [], [], "e")
    one_line_error(*cli(capsys, "--features", empty), "empty feature store")
    data = tmp_path / "imgs"
    (data / "a").mkdir(parents=True)
    (data / "a" / "1.jpg").write_bytes(b"")
    one_line_error(*cli(capsys, "--data", data, "--out", tmp_path / "runs"), "no feature stores")
    nothing_written(tmp_path)


def test_an_empty_split_says_how_to_fill_it_for_the_datasets_format(good, capsys):
    folder, X, y, splits = good
    no_val = np.where(splits == 1, 0, splits)
    one_line_error(*cli(capsys, "--features", make_store(folder / "a.h5", X, y, no_val, "a")),
                   "a.h5: no labelled val images; re-extract with --splits that give val a share")
    one_line_error(*cli(capsys, "--features", make_store(folder / "b.h5", X, y, no_val, "b", fmt="csv")),
                   "b.h5: no labelled val images; give some rows of its CSV that split (or none, for --splits")


def test_one_class(good, capsys):
    folder, X, y, splits = good
    store = make_store(folder / "a.h5", X, np.zeros_like(y), splits, "a")
    one_line_error(*cli(capsys, "--features", store), "only one class")
    nothing_written(folder)


def test_labels_missing_in_train(good, capsys):
    folder, X, y, splits = good
    y = y.copy()
    y[np.flatnonzero(splits == 0)[:4]] = -1
    store = make_store(folder / "a.h5", X, y, splits, "a")
    one_line_error(*cli(capsys, "--features", store), "4 train images have no label")
    nothing_written(folder)


def test_class_missing_in_train(good, capsys):
    folder, X, y, splits = good
    y = y.copy()
    y[(y == 2) & (splits == 0)] = 1  # 'cat' only in val and test
    store = make_store(folder / "a.h5", X, y, splits, "a")
    one_line_error(*cli(capsys, "--features", store, "--head", "mlp"), "'cat' has val images but none in train")
    nothing_written(folder)


def test_a_class_without_images_is_named_in_a_warning(good, capsys):
    """A class of the store's list with no image at all (each skipped at extraction) is named in a warning: the
    models never predict it, and its precision and recall read 0."""
    folder, X, y, splits = good
    keep = y != 2
    store = make_store(folder / "a.h5", X[keep], y[keep], splits[keep], "a")
    rc, out, err = cli(capsys, "--features", store, "--head", "logreg", "--quiet")
    assert rc == 0, err
    assert err.startswith(f"warning: {store}: no image of class 'cat' is in this store (each was skipped at "
                          f"extraction: python -m features info {store} --skipped); the models never predict "
                          "class 'cat', whose test precision and recall read 0\n"), err


def test_single_heads_on_stores_with_different_classes(good, capsys):
    folder, X, y, splits = good
    a = make_store(folder / "a.h5", X, y, splits, "a")
    b = make_store(folder / "b.h5", X, y % 2, splits, "b", class_names=["x", "y"])
    rc, out, err = cli(capsys, "--features", b, a, "--head", "logreg,mlp", "--quiet")
    assert rc == 0, err
    assert "a-logreg" in out and "b-mlp" in out


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features(good, capsys, value):
    """In a store without checksums (older featbench), where no checksum tells the damage."""
    folder, X, y, splits = good
    store = make_store(folder / "a.h5", X, y, splits, "a")
    with h5py.File(store, "r+") as f:
        f["embeddings"][int(np.flatnonzero(splits == 2)[0]), 3] = value
        del f["checksums"]
        f.attrs["format_version"] = 1  # as an older featbench wrote it
    one_line_error(*cli(capsys, "--features", store, "--head", "all"), "NaN/inf", "test")
    nothing_written(folder)


@pytest.mark.parametrize("value", [np.nan, 1e30])
@pytest.mark.parametrize("out_of_core", [False, True])
def test_damaged_store_is_refused_naming_the_rows(good, capsys, value, out_of_core):
    """Rows written over after extraction (1e30 is finite: only the checksum tells) are never trained on."""
    folder, X, y, splits = good
    store = make_store(folder / "a.h5", X, y, splits, "a")
    with h5py.File(store, "r+") as f:
        f["embeddings"][70, 3] = value
    memory = ["--max-memory", "1000"] if out_of_core else []
    one_line_error(*cli(capsys, "--features", store, "--head", "logreg", "--quiet", *memory),
                   f"{store}: 120 damaged rows (rows 0-119; first ", "re-run `python -m extract`")
    nothing_written(folder)


def test_stores_of_another_dataset_folder_are_refused(good):
    from classify.train import find_stores
    folder, X, y, splits = good
    make_store(folder / "a.h5", X, y, splits, "a")  # made from /data/synth
    assert find_stores(folder, root="/data/synth") == [folder / "a.h5"]
    with pytest.raises(StoreError, match=r"a\.h5: made from /data/synth, not /elsewhere/synth .*--name NAME") as err:
        find_stores(folder, ["a"], root="/elsewhere/synth")
    assert "\n" not in str(err.value)


def test_stores_are_found_by_the_backbone_names_extract_takes(good):
    """--backbone finds the store extract wrote for that name: an alias's (canonical name) and one whose characters
    outside letters, digits and `._-` extract writes as `_` (open_clip:, hf-hub:, local-dir:); a store's own
    stem finds it too (`-cls+avg`: the readout suffix as written), an alias's with its readout suffix too
    (`ResNet152V2-flip`: `resnet152v2-flip.h5`, which was not found)."""
    from classify.train import find_stores
    folder, X, y, splits = good
    stems = {"open_clip:ViT-B-32/laion2b_s34b_b79k": "open_clip_ViT-B-32_laion2b_s34b_b79k",
             "ResNet152V2": "resnet152v2", "local-dir:/models/my net": "local-dir__models_my_net",
             "vit_small_patch16_224-cls+avg": "vit_small_patch16_224-cls+avg", "a-flip": "a-flip",
             "ResNet152V2-flip": "resnet152v2-flip", "resnetv2_152-336px-flip": "resnet152v2-336px-flip"}
    for name, stem in stems.items():
        make_store(folder / f"{stem}.h5", X, y, splits, name)
    assert find_stores(folder, list(stems)) == [folder / f"{stem}.h5" for stem in stems.values()]


def test_ensemble_of_different_datasets(good, capsys):
    folder, X, y, splits = good
    a = make_store(folder / "a.h5", X, y, splits, "a")
    b = make_store(folder / "b.h5", X, y, splits, "b", dataset="other",
                   paths=[f"other/{i}.jpg" for i in range(len(y))])
    assert run_cli(main, ["--features", str(a), str(b), "--head", "logreg", "--quiet"]) == 0  # singles are fine
    capsys.readouterr()
    for sub in (folder / "models").iterdir():
        sub.unlink()
    (folder / "models").rmdir()
    one_line_error(*cli(capsys, "--features", a, b, "--head", "all"), "do not share a dataset and split")
    nothing_written(folder)
    one_line_error(*cli(capsys, "--features", a, "--head", "stack"), "at least two feature stores")


def test_stores_of_two_datasets_each_save_to_their_own_dataset_folder(good, capsys):
    """Single heads on stores of two datasets: each model in OUT/ITS DATASET/models (or beside its own store),
    never in the first store's folder."""
    folder, X, y, splits = good
    a = make_store(folder / "a" / "alpha.h5", X, y, splits, "alpha")
    b = make_store(folder / "b" / "beta.h5", X, y, splits, "beta", dataset="other",
                   paths=[f"other/{i}.jpg" for i in range(len(y))])
    out = folder / "out"
    rc, printed, err = cli(capsys, "--features", a, b, "--head", "knn", "--out", out, "--quiet")
    assert rc == 0, err
    for dataset, name in (("synth", "alpha"), ("other", "beta")):
        models = out / dataset / "models"
        assert sorted(p.name for p in models.iterdir()) == [f"{name}-knn.metrics.json", f"{name}-knn.skops"]
        assert str(models) in printed
    assert run_cli(main, ["--features", str(a), str(b), "--head", "knn", "--quiet"]) == 0
    assert (folder / "a" / "models" / "alpha-knn.skops").is_file() and not (folder / "a" / "models" / "beta-knn.skops").exists()
    assert (folder / "b" / "models" / "beta-knn.skops").is_file()


@pytest.mark.parametrize("head", ENSEMBLES)
def test_ensemble_of_stores_whose_images_changed(good, capsys, head):
    """Same paths, labels and splits, but two images had other bytes when the second store was extracted."""
    folder, X, y, splits = good
    hashes = [f"{i:064x}" for i in range(len(y))]
    a = make_store(folder / "a.h5", X, y, splits, "a", hashes=hashes)
    b = make_store(folder / "b.h5", X, y, splits, "b", hashes=[h if i not in (7, 30) else "f" * 64
                                                                 for i, h in enumerate(hashes)])
    one_line_error(*cli(capsys, "--features", a, b, "--head", head), "a.h5", "b.h5",
                   "2 of 120 images differ in content")
    nothing_written(folder)
    c = make_store(folder / "c.h5", X, y, splits, "c", hashes=hashes)
    assert run_cli(main, ["--features", str(a), str(c), "--head", head, "--quiet"]) == 0


def test_all_with_one_store_skips_ensembles(good, capsys):
    folder, X, y, splits = good
    store = make_store(folder / "a.h5", X, y, splits, "a")
    rc, out, err = cli(capsys, "--features", store, "--head", "knn", "all")
    assert rc == 0 and "ensembles skipped" in err and "a-svm" in out and "avg" not in out
    rc, out, err = cli(capsys, "--features", store, "--head", "logreg,all")
    assert rc == 0 and "ensembles skipped" in err


def test_too_few_images_for_stacking_folds(tmp_path, capsys):
    y = np.repeat([0, 1], 7)
    splits = np.tile([0, 0, 0, 0, 1, 1, 2], 2)  # 4 training images per class, fewer than 5 folds
    X = view(np.eye(2)[y] * 3, 8, 14, 0.3)
    a, b = (make_store(tmp_path / f"{n}.h5", X, y, splits, n, class_names=CLASSES[:2]) for n in ("a", "b"))
    rc_out_err = cli(capsys, "--features", a, b, "--head", "logreg", "stack", "--quiet")
    one_line_error(*rc_out_err, "stack head cannot be trained")
    nothing_written(tmp_path)
    assert run_cli(main, ["--features", str(a), str(b), "--head", "svm", "avg", "--quiet"]) == 0


# ---- seeds ------------------------------------------------------------------------------------------

def test_seeds_repeat_the_heads_with_a_random_state(tmp_path, capsys):
    latent, y, splits = synthetic(3)
    store = make_store(tmp_path / "synth" / "gamma.h5", view(latent, 16, 3, 2.0), y, splits, "gamma")
    from classify.train import run
    results = {r.head: r for r in run([store], ["logreg", "mlp", "svm"], seeds=3)}
    assert results["logreg"].seeds is None  # deterministic: nothing to repeat
    for head in ("mlp", "svm"):
        s = results[head].seeds
        assert s["n"] == 3 and [r["seed"] for r in s["runs"]] == [0, 1, 2]
        assert (s["runs"][0]["accuracy"], s["runs"][0]["log_loss"]) == (results[head].accuracy, results[head].log_loss)
        acc = [r["accuracy"] for r in s["runs"]]
        assert s["accuracy_mean"] == pytest.approx(np.mean(acc)) and s["accuracy_std"] == pytest.approx(np.std(acc, ddof=1))
        assert results[head].seeds_seconds > 0
    mlp = results["mlp"].seeds["runs"]
    assert len({r["log_loss"] for r in mlp}) == 3  # other initialisations, other models
    seed1 = sweep(TorchMLP(random_state=1), HEADS["mlp"].grid(0), *_split(store, "train"), *_split(store, "val"), 3)
    assert mlp[1]["val_log_loss"] == pytest.approx(seed1.val_log_loss)  # each seed chose on val on its own
    rc, out, _ = cli(capsys, "--features", store, "--head", "mlp", "--seeds", "2", "--quiet")
    assert rc == 0 and "gamma-mlp: over 2 seeds test accuracy" in out


def _split(store, name):
    from features.reader import FeatureStore
    with FeatureStore(store) as fs:
        part = fs.split(name)
    return part.X, part.y
