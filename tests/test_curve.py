"""benchmarks curve on synthetic stores: nested stratified subsets, intervals, the `all` point, edge cases."""
import json
import re

import numpy as np
import pytest
from scipy import stats

from benchmarks.__main__ import main
from benchmarks.curve import ALL, curve, fit_point, parse_shots, permutations, subset, summarise
from classify.metrics import correct_mask, interval
from classify.select import fit_fixed
from classify.train import load_store, run
from features.cli import run_cli
from features.errors import FeatbenchError

from test_classify import make_store, synthetic, view
from test_classify import two_stores as stores  # noqa: F401 (the fixture: two synthetic stores of one dataset)


def test_subsets_nested_stratified_and_shared_across_stores(stores):
    a, b = (load_store(p) for p in stores)
    for r in range(3):
        pa = permutations(a.train.y, a.train.paths, r)
        pb = permutations(b.train.y, b.train.paths, r)
        previous = set()
        for n in (1, 2, 4, 8, 16):
            sa, sb = subset(pa, n), subset(pb, n)
            assert [a.train.paths[i] for i in sa] == [b.train.paths[i] for i in sb]
            assert np.bincount(a.train.y[sa]).tolist() == [n] * 3
            assert previous <= set(sa.tolist())
            previous = set(sa.tolist())
    assert not np.array_equal(subset(permutations(a.train.y, a.train.paths, 0), 4),
                              subset(permutations(a.train.y, a.train.paths, 1), 4))


def test_subsets_map_by_path_not_row(tmp_path):
    latent, y, splits = synthetic()
    order = np.random.default_rng(5).permutation(len(y))
    paths = [f"c{c}/{i:04d}.jpg" for i, c in enumerate(y)]
    a = load_store(make_store(tmp_path / "s" / "a.h5", view(latent, 8, 1), y, splits, "a", paths=paths))
    b = load_store(make_store(tmp_path / "s" / "b.h5", view(latent, 8, 1)[order], y[order], splits[order], "b",
                              paths=[paths[i] for i in order]))
    sa = subset(permutations(a.train.y, a.train.paths, 3), 4)
    sb = subset(permutations(b.train.y, b.train.paths, 3), 4)
    assert sorted(a.train.paths[i] for i in sa) == sorted(b.train.paths[i] for i in sb)


def test_interval_shrinks_with_repeats(stores):
    s = load_store(stores[0])
    points, _ = curve([s], ["logreg"], [2], 12)
    acc = [p.accuracy for p in points]
    assert np.std(acc) > 0
    assert interval(acc[:3])[1] > interval(acc[:3] * 4)[1] > 0  # the same spread over more repeats: narrower
    assert interval([0.5])[1] is None


def test_all_point_equals_classify(stores, tmp_path):
    s = load_store(stores[0])
    points, _ = curve([s], ["logreg"], [ALL], 5)
    assert len(points) == 1 and points[0].selection == "val" and points[0].n_train == len(s.train)
    [m] = run([stores[0]], ["logreg"], out=tmp_path)
    assert points[0].accuracy == pytest.approx(m.accuracy, abs=1e-12)
    assert points[0].log_loss == pytest.approx(m.log_loss, abs=1e-9)


@pytest.mark.parametrize("head", ["logreg", "knn"])
def test_small_n_finite(stores, head):
    s = load_store(stores[0])
    points, skipped = curve([s], [head], [1, 2, 4], 2)
    assert not skipped and len(points) == 6
    assert all(np.isfinite(p.accuracy) and np.isfinite(p.log_loss) for p in points)
    assert {p.selection for p in points if p.n == "1"} == {"default"}
    if head == "knn":  # k = 1 at one image per class: no ties at chance
        assert min(p.accuracy for p in points if p.n == "1") > 0.5
    assert {p.selection for p in points if p.n == "2"} == {"cv2"}


def test_cv_refit_of_an_early_stopped_head_keeps_the_folds_epochs(stores, monkeypatch):
    import benchmarks.curve as cv
    s = load_store(stores[0])
    idx = subset(permutations(s.train.y, s.train.paths, 0), 6)
    fits = []
    monkeypatch.setattr(cv, "fit_fixed", lambda est, fixed, X, y: fits.append(fixed) or fit_fixed(est, fixed, X, y))
    model, mode, _ = cv.choose_cv("mlp", s.train.X[idx], s.train.y[idx], len(s.class_names), 0)
    assert mode == "cv3" and fits[0]["max_epochs"] == model.max_epochs < 60  # not the full 60 epochs


def test_cv_keeps_a_one_image_class_in_training(stores, monkeypatch):
    """A long tail (a class with one image) still gets CV for the others, not the head's defaults."""
    import benchmarks.curve as cv
    s = load_store(stores[0])
    idx = subset(permutations(s.train.y, s.train.paths, 0), 6)
    one = np.flatnonzero(s.train.y[idx] == 0)[1:]  # class 0 keeps a single image
    idx = np.setdiff1d(idx, idx[one])
    held = []
    real = cv.sweep
    monkeypatch.setattr(cv, "sweep", lambda est, grid, X, y, Xv, yv, n: held.append(yv) or real(est, grid, X, y, Xv, yv, n))
    _, mode, _ = cv.choose_cv("logreg", s.train.X[idx], s.train.y[idx], len(s.class_names), 0)
    assert mode == "cv2" and len(held) == 2 and not any((h == 0).any() for h in held)


def test_selection_on_val_when_val_is_small(stores):
    s = load_store(stores[0])
    n = len(s.val) // 3 + 1  # subset of 3n ≥ val
    points, _ = curve([s], ["logreg"], [n], 1)
    assert points[0].selection == "val"


@pytest.mark.parametrize("text", ["0", "-2", "1,x", "", "4,all,0"])
def test_bad_shots_one_line(text):
    with pytest.raises(FeatbenchError) as e:
        parse_shots(text)
    assert "\n" not in str(e.value)
    assert parse_shots("all,4,1,4") == [1, 4, ALL]


def test_single_class_subset_skipped(stores):
    s = load_store(stores[0])
    with pytest.raises(ValueError, match="single class"):
        fit_point(s, "logreg", np.flatnonzero(s.train.y == 0)[:3], 0)


def test_unfittable_head_skipped_with_note(stores, monkeypatch, capsys):
    import benchmarks.curve as c
    s = load_store(stores[0])
    monkeypatch.setattr(c, "choose_cv", lambda *a: (_ for _ in ()).throw(ValueError("too few\nmore")))
    points, skipped = curve([s], ["logreg"], [2], 2, log=print)
    assert not points and [k["why"] for k in skipped] == ["too few", "too few"]
    assert "skipped: too few" in capsys.readouterr().out


def test_cli_outputs_short_and_no_val(tmp_path, capsys):
    latent, y, splits = synthetic(n=120)
    y = y.copy()
    y[(y == 2) & (splits == 0)] = np.where(np.arange(((y == 2) & (splits == 0)).sum()) < 5, 2, 1)
    splits = np.where(splits == 1, 2, splits)  # no val split
    path = make_store(tmp_path / "s" / "novall.h5", view(latent, 8, 1), y, splits, "novall")
    rc = run_cli(main, ["curve", "--features", str(path), "--head", "logreg", "knn", "--shots", "2,8,all",
                        "--repeats", "2", "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "no val split" in out.err and "Classes with fewer train images than n use all they have (`short` column): 1 at n=8 of 3 (first: cat)" in out.err
    doc = json.loads((tmp_path / "out" / "synth" / "curve" / "curve.json").read_text())
    assert {p["selection"] for p in doc["points"]} <= {"cv2", "cv3"}
    assert doc["n_test"] == len(load_store(path, need_val=False).test)  # the images each `test_correct` covers
    short = {(s["head"], s["n"]): s["short"] for s in doc["summaries"]}
    assert short[("logreg", "8")] == "cat" and short[("logreg", "2")] == ""
    csv = (tmp_path / "out" / "synth" / "curve" / "curve.csv").read_text().splitlines()
    assert csv[0] == ("store,head,n,repeat,subset_seed,n_train,selection,accuracy,log_loss,kind,seconds,val_log_loss,"
                      "temperature")
    assert len(csv) == 1 + len(doc["points"]) == 1 + 2 * (2 + 2 + 1)
    assert "seconds" in doc and "points (0 skipped) in" in out.out
    rc = run_cli(main, ["curve", "--features", str(path), "--head", "logreg", "--shots", "2", "--repeats", "2",
                        "--out", str(tmp_path / "out")])  # other points: the earlier curve is kept
    kept = tmp_path / "out" / "synth" / "curve" / "previous"
    assert rc == 0 and json.loads((kept / "1" / "curve.json").read_text()) == doc and (kept / "1" / "curve.csv").is_file()
    assert f"which is kept as {kept / '1' / 'curve.json'}" in capsys.readouterr().err


def test_cli_bad_shots_one_line(stores, capsys):
    rc = run_cli(main, ["curve", "--features", str(stores[0]), "--shots", "0,4"])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--shots" in err


@pytest.mark.parametrize("flag, value, got", [("--subset-seed", "-1", "5, -1"), ("--repeats", "0", "0, 0")])
def test_cli_bad_repeats_or_subset_seed_one_line(stores, capsys, flag, value, got):
    """numpy refuses a negative seed with a traceback: one line instead, before anything is fitted."""
    rc = run_cli(main, ["curve", "--features", str(stores[0]), "--shots", "2", flag, value])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: --repeats must be at least 1 and --subset-seed at least 0 (got {got})"


def test_select_auto_with_fine_tuned_points_is_refused(stores, capsys):
    """Fine-tunes choose on the full val split: frozen points chosen by CV inside their subsets would see fewer
    labels, so `--select auto` with fine-tuned points is one line, before anything is fitted."""
    rc = run_cli(main, ["curve", "--features", str(stores[0]), "--shots", "2", "--repeats", "1", "--select", "auto",
                        "--finetune-shots", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --select auto with fine-tuned points") and "drop --select auto" in err


def test_summaries_group_by_store(stores):
    s = [load_store(p) for p in stores]
    points, _ = curve(s, ["knn"], [4], 3)
    summ = summarise(points, s)
    assert {(x["store"], x["repeats"]) for x in summ} == {("alpha", 3), ("beta", 3)}
    same = [p for p in points if p.repeat == 0]
    assert same[0].subset_seed == same[1].subset_seed and same[0].n_train == same[1].n_train == 12


# ---- the report's curve section: sentences and plot from a hand-made curve.json -----------------------

TEST_IMAGES = 300


def masks(n: int, right: set) -> str:
    return correct_mask(np.isin(np.arange(n), list(right)), [f"{i:04d}.jpg" for i in range(n)])


def series_points(store, head, n, accs, kind, val=None) -> list[dict]:
    """One series' points at n, one per repeat (`val`: their validation log-loss, default 1 - accuracy), each right
    on the first accuracy × 300 test images."""
    return [{"store": store, "head": head, "n": n, "repeat": r, "subset_seed": r, "n_train": 1, "selection": "val",
             "accuracy": a, "log_loss": 1 - a, "kind": kind, "seconds": 0.0,
             "val_log_loss": 1 - a if val is None else val,
             "test_correct": masks(TEST_IMAGES, set(range(round(a * TEST_IMAGES))))} for r, a in enumerate(accs)]


def summary_of(points: list[dict]) -> dict:
    acc, ci = interval([p["accuracy"] for p in points])
    p = points[0]
    return {"store": p["store"], "head": p["head"], "n": p["n"], "kind": p["kind"], "repeats": len(points),
            "accuracy": acc, "accuracy_ci": ci, "log_loss": 1 - acc, "log_loss_ci": None, "selection": "val",
            "short": ""}


SPREAD = 0.01 * np.sqrt(3) / stats.t.ppf(0.975, 2)  # 3 repeats a - SPREAD, a, a + SPREAD: a ± 1.00%


def curve_doc(frozen: dict, tuned: dict | None = None, val: dict | None = None) -> dict:
    """{(store, head): {n: accuracy, or a list of one per repeat}} → a curve.json doc over 300 test images (a single
    accuracy: 3 repeats, a ± 1.00%, one at `all`); `val`: {(store, head): validation log-loss of its points}."""
    points = []
    for kind, series in (("frozen", frozen), ("finetune", tuned or {})):
        for (s, h), accs in series.items():
            for n, a in accs.items():
                a = a if isinstance(a, list) else [a] if n == "all" else [a - SPREAD, a, a + SPREAD]
                points += series_points(s, h, n, a, kind, (val or {}).get((s, h)))
    groups = {}
    for p in points:
        groups.setdefault((p["store"], p["head"], p["n"]), []).append(p)
    return {"dataset": "synth", "n_test": TEST_IMAGES, "points": points,
            "summaries": [summary_of(ps) for ps in groups.values()], "skipped": [], "seconds": 1.0, "notes": []}


FROZEN = {("a", "logreg"): {"1": 0.6, "2": 0.7, "4": 0.8, "8": 0.975, "16": 0.99, "64": 0.9, "all": 0.98},
          ("b", "svm"): {"8": 0.8, "16": 0.85, "64": 0.94, "all": 0.96}}


def test_within_one_point_of_the_full_split():
    from benchmarks.report import within_one_point
    assert within_one_point(curve_doc(FROZEN)) == [
        "frozen a + logreg reaches within 1 point of its full-data accuracy (98.00%) at n = 8 (97.50 ± 1.00%)",
        "frozen b + svm does not reach within 1 point of its full-data accuracy (96.00%) below the full split "
        "(at n = 64, the largest measured below it: 94.00 ± 1.00%)"]


INTERVAL = r"95% interval ([+-]\d+\.\d\d) to ([+-]\d+\.\d\d) \(bootstrap of the 300 test images and the 3 subsets\)"
# frozen series the fine-tunes below differ from by clear-cut margins (10, 5 points) or by one point (3 images)
TUNED_FROZEN = {("a", "logreg"): {"8": 0.8, "16": 0.9, "64": 0.9}, ("b", "svm"): {"8": 0.7, "16": 0.85, "64": 0.94}}


def test_fine_tuning_overtakes_from_the_n_where_it_stays_above():
    from benchmarks.report import overtakes
    # 10 points above at 8, 5 below at 16, and at 64 one point (3 of 300 test images) above b + svm, the frozen
    # opponent there, on every subset: steady, but within the test images' sampling noise, so not distinguishable
    [text] = overtakes(curve_doc(TUNED_FROZEN, {("a", "finetune-full"): {"8": 0.9, "16": 0.85, "64": 0.95}}))
    assert text.startswith("Fine-tuning a (finetune-full) does not significantly overtake frozen features within the "
                           "measured range (n = 8: above, 16: below, 64: not distinguishable): at n = 64, 95.00 ± 1.00% "
                           "against 94.00 ± 1.00% for b + svm on the same 3 subsets (the frozen store + head with the "
                           "lowest validation log-loss there); paired difference +1.00 points, 95% interval ")
    low, high = map(float, re.search(INTERVAL, text).groups())
    assert low <= 0 < 1 < high
    # five points above at 64: from 64, not from 8
    [text] = overtakes(curve_doc(TUNED_FROZEN, {("a", "finetune-full"): {"8": 0.9, "16": 0.85, "64": 0.99}}))
    assert text.startswith("Fine-tuning a (finetune-full) overtakes frozen features from n = 64, significantly above "
                           "there and at every larger fine-tuned n (n = 8: above, 16: below, 64: above): at n = 64, "
                           "99.00 ± 1.00% against 94.00 ± 1.00% for b + svm on the same 3 subsets (the frozen store + "
                           "head with the lowest validation log-loss there); paired difference +5.00 points, 95% "
                           "interval ")
    low, high = map(float, re.search(INTERVAL, text).groups())
    assert 0 < low < 5 < high
    # the kind comes from the head where a point has none
    doc = curve_doc(FROZEN)
    tuned = series_points("a", "finetune-full", "64", [0.93] * 3, "finetune")
    doc["points"] += [{k: v for k, v in p.items() if k != "kind"} for p in tuned]
    doc["summaries"] += [{k: v for k, v in summary_of(tuned).items() if k != "kind"}]
    [never] = overtakes(doc)
    assert never.startswith("Fine-tuning a (finetune-full) does not significantly overtake frozen features within the "
                            "measured range (n = 64: not distinguishable): at n = 64, 93.00 ± 0.00% against 94.00 ± 1.00%")
    [above_below] = overtakes(curve_doc(TUNED_FROZEN, {("a", "finetune-full"): {"8": 0.9, "64": 0.9, "32": 0.99}}))
    assert "does not significantly overtake" in above_below and "(n = 8: above, 64: below)" in above_below and \
        "no frozen point at n = 32" in above_below
    assert overtakes(curve_doc(FROZEN))[0].startswith("No fine-tuned points on this curve")
    from benchmarks.recipes import recipe_for
    ablation = curve_doc(TUNED_FROZEN, {("a", "finetune-head"): {"8": 0.9}})
    ablation["finetune_recipe"] = recipe_for("head").as_dict()  # one peak rate: the verdict says so
    assert overtakes(ablation)[0].startswith("Fine-tuning a (finetune-head, seed recipe: an untuned ablation, one "
                                             "peak lr 0.002, not swept on val) overtakes frozen features")


def test_a_higher_mean_is_not_overtaking_unless_the_paired_difference_is_significant():
    """Paired per subset: a mean 1.3 points above with differences +4, -2, +2 is not distinguishable; +2 on every
    subset (6 other test images each) is above."""
    from benchmarks.report import overtakes
    noisy = curve_doc({("a", "logreg"): {"8": [0.95] * 3}}, {("a", "finetune-full"): {"8": [0.99, 0.93, 0.97]}})
    [text] = overtakes(noisy)
    assert text.startswith("Fine-tuning a (finetune-full) does not significantly overtake frozen features within "
                           "the measured range (n = 8: not distinguishable): at n = 8, 96.33 ± 7.59% against 95.00")
    assert "paired difference +1.33 points, 95% interval " in text
    low, high = map(float, re.search(INTERVAL, text).groups())
    assert low < 0 < high
    steady = curve_doc({("a", "logreg"): {"8": [0.90, 0.93, 0.96]}}, {("a", "finetune-full"): {"8": [0.92, 0.95, 0.98]}})
    assert "overtakes frozen features from n = 8" in overtakes(steady)[0]


@pytest.mark.parametrize("only_tuned, only_frozen, words", [
    (2, 0, "all: not distinguishable"), (12, 0, "all: above"), (0, 12, "all: below")])
def test_one_fit_a_side_is_tested_on_the_test_images(only_tuned, only_frozen, words):
    """At `all` (one fit a side) an exact McNemar test on the images only one side got right decides."""
    from benchmarks.report import overtakes
    both = set(range(250))
    frozen, tuned = both | set(range(250, 250 + only_frozen)), both | set(range(270, 270 + only_tuned))
    doc = curve_doc({("a", "logreg"): {"all": len(frozen) / 300}}, {("a", "finetune-full"): {"all": len(tuned) / 300}})
    for p in doc["points"]:
        p["test_correct"] = masks(300, tuned if p["kind"] == "finetune" else frozen)
    [text] = overtakes(doc)
    assert f"(n = {words})" in text and (("overtakes frozen" in text) == (words == "all: above"))
    assert f"{only_tuned} test images right only fine-tuned, {only_frozen} only frozen (exact McNemar p = " in text
    for p in doc["points"]:  # a curve.json without per-image results: not tested, not a winner
        del p["test_correct"]
    assert "n = all: not distinguishable" in overtakes(doc)[0] and "no per-image results to test it" in \
        overtakes(doc)[0]


def discordant_doc(only_tuned: int, only_frozen: int, subsets: int = 3) -> dict:
    """n = 8 over 300 test images: on each subset both sides get the same 200 right, the fine-tune `only_tuned` more
    and the frozen head `only_frozen` more, other images on each subset."""
    doc = curve_doc({("a", "logreg"): {"8": [(200 + only_frozen) / 300] * subsets}},
                    {("a", "finetune-full"): {"8": [(200 + only_tuned) / 300] * subsets}})
    for p in doc["points"]:
        start = 200 + p["repeat"] * (only_tuned + only_frozen) + (0 if p["kind"] == "finetune" else only_tuned)
        p["test_correct"] = masks(300, set(range(200)) | set(range(start, start + (
            only_tuned if p["kind"] == "finetune" else only_frozen))))
    return doc


def test_a_steady_gain_within_the_test_images_noise_is_not_distinguishable():
    """+1 image in 300 on each of 3 subsets (5 right only fine-tuned, 4 only frozen): steady across subsets, so a
    t-interval over subsets alone has zero width, but well within the test images' sampling noise."""
    from benchmarks.report import overtakes
    [text] = overtakes(discordant_doc(5, 4))
    assert text.startswith("Fine-tuning a (finetune-full) does not significantly overtake frozen features within the "
                           "measured range (n = 8: not distinguishable)")
    assert "paired difference +0.33 points, 95% interval " in text
    low, high = map(float, re.search(INTERVAL, text).groups())
    assert low < 0 < 0.33 < high


def test_a_large_steady_gain_is_significant():
    """+30 images in 300 on each of 3 subsets: above; a curve.json without `n_test` (older ones) counts the test
    images from a frozen point; one without per-image results at all is not tested."""
    from benchmarks.report import overtakes
    doc = discordant_doc(30, 0)
    [text] = overtakes(doc)
    assert "overtakes frozen features from n = 8" in text and "paired difference +10.00 points, 95% interval " in text
    low, high = map(float, re.search(INTERVAL, text).groups())
    assert 5 < low < 10 < high < 15
    del doc["n_test"]
    assert overtakes(doc) == [text]
    for p in doc["points"]:
        del p["test_correct"]
    [untested] = overtakes(doc)
    assert "(n = 8: not distinguishable)" in untested and "no per-image results to test it" in untested


def test_the_bootstrap_resamples_the_test_images_and_the_subsets():
    """One image right only on one side in every subset: not distinguishable from none (it is left out of a third
    of the resamples); +30 images on two subsets and -30 on a third: the subsets' spread crosses 0, where one subset
    of +30 alone is above 0. Deterministic."""
    from classify.metrics import two_way_bootstrap
    one = np.zeros((3, 300))
    one[:, 0] = 1
    mean, low, high = two_way_bootstrap(one)
    assert mean == pytest.approx(1 / 300) and low < 0 < mean < high
    assert two_way_bootstrap(one) == (mean, low, high)
    assert two_way_bootstrap(np.zeros((3, 300))) == (0, 0, 0)
    mixed = np.zeros((3, 300))
    mixed[[0, 1], :30], mixed[2, 30:60] = 1, -1
    mean, low, high = two_way_bootstrap(mixed)
    assert mean == pytest.approx(10 / 300) and low < 0 < high
    assert two_way_bootstrap(mixed[:1])[1] > 0


def test_correct_masks_pair_images_by_path():
    from scipy.stats import binomtest

    from classify.metrics import correct_mask, discordant, mcnemar_p
    assert correct_mask(np.array([True, False, True]), ["b", "c", "a"]) == "3"  # a, b right; c wrong: bits 0, 1
    assert correct_mask(np.array([True, True, False]), ["a", "c", "b"]) == "5"  # a, c right: bits 0, 2
    assert discordant("3", "5") == (1, 1) and discordant("3", "3") == (0, 0)
    assert mcnemar_p(9, 1) == pytest.approx(binomtest(9, 10).pvalue) and mcnemar_p(0, 0) == 1


def test_points_record_their_test_images_right_in_path_order(stores):
    s = load_store(stores[0])
    points, _ = curve([s], ["logreg"], [4, ALL], 2)
    for p in points:
        assert int(p.test_correct, 16).bit_count() == round(p.accuracy * len(s.test))


def test_frozen_opponent_is_chosen_on_validation_not_on_test():
    """a + logreg scores best on test but worst on val: the fine-tune is compared with b + svm, chosen on val."""
    from benchmarks.report import frozen_opponent, overtakes
    frozen = {("a", "logreg"): {"8": 0.97}, ("b", "svm"): {"8": 0.95}, ("b", "knn"): {"8": 0.93}}
    doc = curve_doc(frozen, {("a", "finetune-full"): {"8": 0.96}},
                    val={("a", "logreg"): 0.30, ("b", "svm"): 0.10, ("b", "knn"): 0.20})
    f = frozen_opponent(doc, "8", {0, 1, 2})
    assert (f["store"], f["head"], f["by"]) == ("b", "svm", "val") and f["accuracy"] == pytest.approx(0.95)
    [text] = overtakes(doc)
    assert "for b + svm on the same 3 subsets (the frozen store + head with the lowest validation log-loss there)" \
        in text


def test_a_curve_without_validation_scores_says_its_opponent_was_chosen_on_test():
    """curve.json files before `val_log_loss`: the test-accuracy choice, stated as favouring the frozen side."""
    from benchmarks.report import frozen_opponent, overtakes
    doc = curve_doc({("a", "logreg"): {"8": 0.97}, ("b", "svm"): {"8": 0.95}}, {("a", "finetune-full"): {"8": 0.96}})
    for p in doc["points"]:
        del p["val_log_loss"]
    assert frozen_opponent(doc, "8", {0, 1, 2})["by"] == "test"
    [text] = overtakes(doc)
    assert ("94.00" not in text and "for a + logreg on the same 3 subsets (the frozen store + head with the highest "
            "test accuracy there, as its points record no validation score: a choice that favours the frozen side)"
            in text)


def test_points_record_the_score_that_chose_them(stores):
    """val: the chosen configuration's val log-loss; cvK: its mean held-out log-loss; default: none."""
    from classify.heads import HEADS
    from classify.select import sweep
    s = load_store(stores[0])
    points, _ = curve([s], ["logreg"], [1, 2, ALL], 1)
    by_n = {p.n: p for p in points}
    assert by_n["1"].selection == "default" and by_n["1"].val_log_loss is None
    assert by_n["2"].selection == "cv2" and 0 < by_n["2"].val_log_loss < 5
    chosen = sweep(HEADS["logreg"].make(), HEADS["logreg"].grid(len(s.train)), s.train.X, s.train.y, s.val.X,
                   s.val.y, len(s.class_names))
    assert by_n["all"].val_log_loss == pytest.approx(chosen.val_log_loss)


@pytest.mark.parametrize("mode, setting, tempered", [("full", None, True), ("bn-head", None, False),
                                                     ("full", False, False), ("bn-head", True, True)])
def test_frozen_points_get_a_val_temperature_when_the_fine_tuned_points_fit_one(stores, tmp_path, monkeypatch, mode,
                                                                                setting, tempered):
    """Beside lp-ft's points (a temperature fitted on val), every frozen point is chosen and scored at its own val
    temperature; beside the seed recipe's (none), at none, unless `temperature` says otherwise; the notes say so."""
    import benchmarks.curve as bc
    monkeypatch.setattr(bc, "tuned_stores", lambda loaded, spec: None)
    monkeypatch.setattr(bc, "finetune_points", lambda *args: ([], [], []))  # the frozen side only
    doc, _ = bc.run_curve([stores[0]], ["logreg"], [4, ALL], 1, out=tmp_path, finetune_shots=[4], finetune_mode=mode,
                          temperature=setting)
    temperatures = [p["temperature"] for p in doc["points"]]
    assert len(temperatures) == 2 and all((t is not None) == tempered for t in temperatures), temperatures
    said = ("The frozen points chosen on val are " + ("" if tempered else "not ") + "scored at a temperature fitted "
            "on it" + (", as the fine-tuned points are" if mode == "full" else ""))
    assert (said in doc["notes"]) == (tempered or mode == "full"), doc["notes"]
    s = load_store(stores[0])
    point = fit_point(s, "logreg", None, 0, "val", temperature=True)
    plain = fit_point(s, "logreg", None, 0, "val")
    assert point["val_log_loss"] <= plain["val_log_loss"] and plain["temperature"] is None
    assert 0 < point["temperature"] and point["log_loss"] != plain["log_loss"]


@pytest.mark.parametrize("tuned", [False, True])
def test_label_efficiency_plot(tuned, monkeypatch):
    from benchmarks import plots
    from benchmarks.report import curve_series
    doc = curve_doc(FROZEN, {("a", "finetune-full"): {"8": 0.99, "64": 0.95}} if tuned else None)
    png = plots.label_efficiency(curve_series(doc), 700.0)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    shown = []
    monkeypatch.setattr(plots, "_png", shown.append)
    plots.label_efficiency(curve_series(doc), 700.0)
    ax = shown[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8", "16", "64", "all (700)"]
    assert list(ax.get_xticks()) == [1, 2, 4, 8, 16, 64, 700]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert list(lines["a + logreg"].get_xdata()) == [1, 2, 4, 8, 16, 64, 700]
    assert lines["b + svm"].get_ydata()[-1] == pytest.approx(96)
    assert len(ax.collections) == 2 + tuned  # a shaded band per frozen series (+ the fine-tune's error bars)
    assert len(ax.containers) == tuned
    assert ("a finetune-full (fine-tuned; subsets: 3/3)" in [t.get_text() for t in ax.get_legend().get_texts()]) \
        == tuned


def test_the_table_says_where_fine_tunes_average_fewer_subsets():
    """Frozen rows over 5 subsets, fine-tuned over the first 3: a line under the table says so; none when equal."""
    from benchmarks.report import unmatched_note
    frozen = {("a", "logreg"): {"8": [0.9] * 5, "64": [0.95] * 3}}
    note = unmatched_note(curve_doc(frozen, {("a", "finetune-full"): {"8": [0.92] * 3, "64": [0.96] * 3}}))
    assert note.startswith("At n = 8 the fine-tuned rows average fewer subsets") and "the sentences below do" in note
    assert unmatched_note(curve_doc(frozen, {("a", "finetune-full"): {"64": [0.96] * 3}})) == ""


def test_overtaking_compares_the_same_subsets():
    """Frozen scored on 5 subsets, fine-tuned on the first 3: the comparison uses those 3 on both sides."""
    from benchmarks.report import overtakes
    frozen = [0.90, 0.90, 0.90, 0.99, 0.99]  # mean over all 5: 0.936
    doc = curve_doc({("a", "logreg"): {"8": frozen}}, {("a", "finetune-full"): {"8": [0.93] * 3}})
    [text] = overtakes(doc)
    assert "overtakes frozen features from n = 8" in text and "90.00 ± 0.00% for a + logreg on the same 3 subsets" \
        in text and "paired difference +3.00 points, 95% interval +" in text


def test_stores_with_other_test_images_are_refused(tmp_path):
    """Test images are paired across stores by path: a store with another test split is one line."""
    from features.errors import StoreError
    latent, y, splits = synthetic()
    other = splits.copy()
    val, test = np.flatnonzero(splits == 1)[0], np.flatnonzero(splits == 2)[0]
    other[[val, test]] = 2, 1  # one val and one test image swap splits; train unchanged
    a = load_store(make_store(tmp_path / "s" / "a.h5", view(latent, 8, 1), y, splits, "a"))
    b = load_store(make_store(tmp_path / "s" / "b.h5", view(latent, 8, 2), y, other, "b"))
    with pytest.raises(StoreError, match="same train and test images"):
        curve([a, b], ["logreg"], [2], 1)


def test_stores_of_another_split_assignment_are_refused(tmp_path, capsys):
    """curve.json records one split fingerprint, which `benchmarks report` checks against its models': stores with the
    same train and test images but another val split (one val image fewer here) or row order are one line naming
    both (the curve was drawn, and recorded the first store's split as the second's)."""
    latent, y, splits = synthetic(n=120)
    paths = [f"c{c}/{i:04d}.jpg" for i, c in enumerate(y)]
    keep = np.arange(len(y)) != np.flatnonzero(splits == 1)[0]
    a = make_store(tmp_path / "s" / "a.h5", view(latent, 8, 1), y, splits, "a", paths=paths)
    b = make_store(tmp_path / "s" / "b.h5", view(latent, 8, 2)[keep], y[keep], splits[keep], "b",
                   paths=[p for p, k in zip(paths, keep) if k])
    order = np.random.default_rng(3).permutation(len(y))
    c = make_store(tmp_path / "s" / "c.h5", view(latent, 8, 3)[order], y[order], splits[order], "c",
                   paths=[paths[i] for i in order])
    for other in (b, c):
        rc = run_cli(main, ["curve", "--features", str(a), str(other), "--shots", "2", "--repeats", "1",
                            "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        theirs = load_store(other).meta.split_fingerprint
        assert rc == 2 and err.count("\n") == 1 and f"{other} (split {theirs})" in err and str(a) in err, err
        assert "one split assignment" in err and not (tmp_path / "out").exists()


# ---- a curve's fine-tunes start from the store's backbone, weights and readout ----------------------------

def fake_store(tmp_path, readout=None, weights=None):
    from types import SimpleNamespace
    meta = SimpleNamespace(backbone="mobilenet_v2", readout=readout, weights=weights)
    return SimpleNamespace(path=tmp_path / "mobilenet_v2-w1234abcd.h5", meta=meta)


def test_a_store_with_another_readout_is_not_fine_tuned(tmp_path):
    from benchmarks.curve import check_readout
    with pytest.raises(FeatbenchError) as e:
        check_readout(fake_store(tmp_path, readout={"pool": "avg", "blocks": 4}))
    assert str(e.value).startswith("mobilenet_v2-w1234abcd.h5: its features are read out with pool avg, blocks 4, "
                                   "which a fine-tune does not reproduce") and "\n" not in str(e.value)
    check_readout(fake_store(tmp_path))  # the default readout: fine


def test_fine_tuned_backbones_and_their_weights_are_matched_by_canonical_name(tmp_path):
    """--finetune-backbone ([curve] finetune_backbones) and the weights files are matched to a store's backbone as
    extract names it: `ResNet152V2` picks the resnet152v2 store (it picked none: a curve without fine-tuned points)."""
    from types import SimpleNamespace

    from benchmarks.curve import Finetunes, tuned_stores
    s = SimpleNamespace(path=tmp_path / "resnet152v2.h5", meta=SimpleNamespace(backbone="resnet152v2", readout=None))
    assert tuned_stores([s], Finetunes([8], backbones=["ResNet152V2"])) == [s]
    assert tuned_stores([s], Finetunes([8], backbones=["mobilenet_v2"])) == []
    assert Finetunes([8], weights={"ResNet152V2": "w.pth"}).weights == {"resnet152v2": "w.pth"}


def test_fine_tunes_start_from_the_stores_weights_or_are_refused(tmp_path, monkeypatch):
    """The store's weights file is carried to the fine-tune; weights a fine-tune would not load are one line."""
    from types import SimpleNamespace

    import benchmarks.curve as cv
    built = []

    def backbone(name, weights=None, random_init=False):
        built.append((name, weights, random_init))
        return SimpleNamespace(weights={"fingerprint": "custom" if weights else "default", "source": "online"})
    monkeypatch.setattr(cv, "create_backbone", backbone)
    file = tmp_path / "mine.pth"
    file.write_bytes(b"weights")
    custom = fake_store(tmp_path, weights={"fingerprint": "custom", "source": str(file), "file_sha256": "ab"})
    assert cv.start_weights(custom, None) == str(file) and built[-1] == ("mobilenet_v2", str(file), False)
    file.unlink()  # the file the features came from is gone: the default weights would be fine-tuned instead
    with pytest.raises(FeatbenchError) as e:
        cv.start_weights(custom, None)
    assert str(e.value).startswith(f"mobilenet_v2-w1234abcd.h5: its features come from weights custom ({file}), a "
                                   "fine-tune would start from default (online); give the store's weights file")
    assert "\n" not in str(e.value)
    assert cv.start_weights(fake_store(tmp_path, weights={"fingerprint": "default", "source": "online"}), None) is None


def test_a_subset_keeps_everything_but_the_cut_train_split():
    """A fine-tune on a subset reads val and test whole, under the store's byte cap (--max-image-bytes)."""
    from pathlib import Path

    from benchmarks.curve import subset_split
    from benchmarks.splits import SplitImages
    data = SplitImages(Path("/data"), {"name": "d"}, ["a", "b"],
                       {"train": ["a/1.jpg", "b/2.jpg", "a/3.jpg"], "val": ["a/4.jpg"], "test": ["b/5.jpg"]},
                       {"train": np.array([0, 1, 0]), "val": np.array([0]), "test": np.array([1])}, "f" * 16, "store s",
                       max_bytes=1000)
    sub = subset_split(data, ["a/3.jpg", "b/2.jpg"])
    assert sub.paths == {"train": ["b/2.jpg", "a/3.jpg"], "val": ["a/4.jpg"], "test": ["b/5.jpg"]}
    assert sub.labels["train"].tolist() == [1, 0] and sub.max_bytes == 1000 and sub.fingerprint != data.fingerprint
    assert sub.source == "store s, train cut to 2 images"
