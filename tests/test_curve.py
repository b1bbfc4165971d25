"""benchmarks curve on synthetic stores: nested stratified subsets, intervals, the `all` point, edge cases."""
import json

import numpy as np
import pytest

from benchmarks.__main__ import main
from benchmarks.curve import ALL, curve, fit_point, interval, parse_shots, permutations, subset, summarise
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
    assert "no val split" in out.err and "n=8 is more than some classes have (cat)" in out.err
    doc = json.loads((tmp_path / "out" / "synth" / "curve" / "curve.json").read_text())
    assert {p["selection"] for p in doc["points"]} <= {"cv2", "cv3"}
    short = {(s["head"], s["n"]): s["short"] for s in doc["summaries"]}
    assert short[("logreg", "8")] == "cat" and short[("logreg", "2")] == ""
    csv = (tmp_path / "out" / "synth" / "curve" / "curve.csv").read_text().splitlines()
    assert csv[0] == "store,head,n,repeat,subset_seed,n_train,selection,accuracy,log_loss"
    assert len(csv) == 1 + len(doc["points"]) == 1 + 2 * (2 + 2 + 1)
    assert "seconds" in doc and "points (0 skipped) in" in out.out


def test_cli_bad_shots_one_line(stores, capsys):
    rc = run_cli(main, ["curve", "--features", str(stores[0]), "--shots", "0,4"])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--shots" in err


def test_summaries_group_by_store(stores):
    s = [load_store(p) for p in stores]
    points, _ = curve(s, ["knn"], [4], 3)
    summ = summarise(points, s)
    assert {(x["store"], x["repeats"]) for x in summ} == {("alpha", 3), ("beta", 3)}
    same = [p for p in points if p.repeat == 0]
    assert same[0].subset_seed == same[1].subset_seed and same[0].n_train == same[1].n_train == 12
