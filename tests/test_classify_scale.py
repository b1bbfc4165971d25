"""classify at scale: out-of-core heads streamed from HDF5, sweeps through joblib's parallel backends."""
import json
import os
from argparse import ArgumentTypeError

import joblib
import numpy as np
import pytest
from joblib import register_parallel_backend
from joblib._parallel_backends import ThreadingBackend
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier

from classify import stream
from classify.__main__ import main
from classify.heads import HEADS
from classify.models import load_model
from classify.select import sweep
from classify.train import run
from features import FeatureStore
from features.cli import parse_size, run_cli
from tests.test_classify import CLASSES, cli, make_store, one_line_error, synthetic, view


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A store of ~3 × BLOCK_ROWS rows: several chunks of the smallest size."""
    n = 12000
    latent, y, splits = synthetic(5, n=n)
    order = np.argsort(y, kind="stable")  # sorted by class, as a path-sorted store often is
    return make_store(tmp_path_factory.mktemp("big") / "synth" / "alpha.h5", view(latent, 16, 6)[order], y[order],
                      splits[order], "alpha")


def test_out_of_core_streams_chunks_and_learns(big, monkeypatch):
    read = []
    real = FeatureStore.embeddings
    monkeypatch.setattr(FeatureStore, "embeddings", lambda self, rows: read.append(rows) or real(self, rows))
    results = run([big], ["logreg", "mlp", "svm"], max_memory=1, log=print)
    assert {r.head for r in results} == {"logreg", "mlp"}  # svm does not learn incrementally
    assert max(map(len, read)) <= stream.chunk_rows_for(16, 1) < 12000 * 0.6  # never a whole split in one read
    with FeatureStore(big) as fs:
        test_rows = fs.rows("test")
    assert sum(np.isin(r, test_rows).sum() for r in read) == len(test_rows)  # test read once, for both heads
    for r in results:
        assert r.out_of_core and r.accuracy > 0.85, (r.head, r.accuracy)  # chance is 1/3
        assert r.n_train + r.n_val + r.n_test == 12000
        assert r.params["epochs"] >= 1 and len(r.sweep) >= len(stream.STREAM_HEADS[r.head](16))
    m = json.loads((big.parent / "models" / "alpha-logreg.metrics.json").read_text())
    assert m["val_log_loss"] == pytest.approx(min(row["val_log_loss"] for row in m["sweep"]), abs=1e-6)
    saved = load_model(big.parent / "models" / "alpha-logreg.skops")
    with FeatureStore(big) as fs:
        test = fs.split("test")
    assert (saved["estimator"].predict(test.X) == test.y).mean() == pytest.approx(m["accuracy"])


def test_streamed_chunks_stay_within_their_size(big, monkeypatch):
    """Every chunk a head sees holds at most chunk_rows rows, so a split is never in memory whole."""
    seen = []
    real = stream.StreamedSplit.chunks

    def recording(self, rng=None):
        for X, y in real(self, rng):
            seen.append((self.what, len(X)))
            yield X, y

    monkeypatch.setattr(stream.StreamedSplit, "chunks", recording)
    run([big], ["logreg"], max_memory=1)
    chunk = stream.chunk_rows_for(16, 1)
    with FeatureStore(big) as fs:
        sizes = {s: len(fs.rows(s)) for s in ("train", "val", "test")}
    assert chunk < sizes["train"]
    for split, n in sizes.items():
        got = [k for what, k in seen if what == split]
        assert got and max(got) <= chunk, split
        assert sum(got) % n == 0  # whole passes over the split, chunk by chunk


def test_out_of_core_matches_in_memory_logreg(big):
    """SGD out of core reaches the accuracy of lbfgs in memory on the same split (within 2 points)."""
    memory = run([big], ["logreg"])[0]
    streamed = run([big], ["logreg"], refit=True, max_memory=1)[0]
    assert streamed.refit and streamed.n_train == memory.n_train + memory.n_val
    assert streamed.accuracy >= memory.accuracy - 0.02, (streamed.accuracy, memory.accuracy)


def test_out_of_core_with_temperature_chooses_each_point_and_epoch_at_its_own_val_temperature(big, tmp_path):
    """`--temperature` out of core: every (point, epoch) is scored at the temperature fitted to its val probabilities,
    as in memory; the lowest wins and is kept at its temperature (refitted too), the test scores are at it,
    log_loss_raw is the head's own, and the saved model predicts what was scored."""
    from sklearn.metrics import log_loss

    from classify.calibration import Tempered
    plain = run([big], ["logreg"], max_memory=1, out=tmp_path / "plain")[0]
    m = run([big], ["logreg"], refit=True, max_memory=1, out=tmp_path, temperature=True)[0]
    assert m.out_of_core and m.refit and m.log_loss_raw != m.log_loss and m.params["early_stop"] == "tempered"
    assert all("temperature" in row for row in m.sweep) and not any("temperature" in row for row in plain.sweep)
    assert m.val_log_loss == pytest.approx(min(row["val_log_loss"] for row in m.sweep), abs=1e-6)
    assert m.val_log_loss_raw == pytest.approx(next(r["val_log_loss_raw"] for r in m.sweep
                                                    if r["val_log_loss"] == round(m.val_log_loss, 6)), abs=1e-6)
    for a, b in zip(plain.sweep, m.sweep):  # the same training, scored at each one's temperature
        assert b["val_log_loss"] <= a["val_log_loss"] + 1e-6 and b["val_accuracy"] == a["val_accuracy"]
    model = load_model(tmp_path / "synth" / "models" / "alpha-logreg-refit.skops")["estimator"]
    assert isinstance(model, Tempered) and model.temperature == pytest.approx(m.params["temperature"], abs=1e-4)
    with FeatureStore(big) as fs:
        test = fs.split("test")
    assert log_loss(test.y, model.predict_proba(test.X)) == pytest.approx(m.log_loss, abs=1e-6)
    assert log_loss(test.y, model.estimator_.predict_proba(test.X)) == pytest.approx(m.log_loss_raw, abs=1e-6)


def test_out_of_core_warns_when_a_head_is_still_improving_at_the_epoch_cap(big, monkeypatch, capsys):
    """One epoch allowed: logreg is still gaining on val when it stops, and says so on stderr (one line)."""
    monkeypatch.setattr(stream, "MAX_EPOCHS", 1)
    run([big], ["logreg"], max_memory=1)
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "alpha-logreg" in warned[0] and "1 epochs" in warned[0] and "--max-memory" in warned[0]


def test_out_of_core_refuses_heads_that_cannot_stream(big, capsys):
    one_line_error(*cli(capsys, "--features", big, "--head", "knn", "--max-memory", "1K"),
                   "--max-memory", "logreg, mlp")


def test_max_memory_sizes():
    assert parse_size("8G") == 8 * 2**30 and parse_size("512m") == 512 * 2**20 and parse_size("1.5GiB") == 3 * 2**29
    assert parse_size("1000") == 1000
    for bad in ("inf", "-1G", "0", "lots"):
        with pytest.raises(ArgumentTypeError):
            parse_size(bad)


def test_bad_n_jobs_is_a_usage_error(big, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--features", str(big), "--n-jobs", "0"])
    assert exit_.value.code == 2 and "number of workers" in capsys.readouterr().err


def test_sweep_runs_through_the_configured_joblib_backend(tmp_path, capsys):
    """--backend NAME hands the sweep's runs to that registered joblib backend: at --n-jobs 3 it receives
    three runs of consecutive grid points, which together cover the whole grid once."""
    runs = []

    class Recording(ThreadingBackend):
        def submit(self, func, callback=None):
            runs.extend([p["n_neighbors"] for p in args[1]] for _, args, _ in func.items)
            return super().submit(func, callback)

    register_parallel_backend("recording", Recording)
    latent, y, splits = synthetic(3, n=150)
    store = make_store(tmp_path / "synth" / "a.h5", view(latent, 8, 4), y, splits, "a")
    rc, out, err = cli(capsys, "--features", store, "--head", "knn", "--backend", "recording", "--n-jobs", "3",
                       "--quiet")
    assert rc == 0, err
    grid = [p["n_neighbors"] for p in HEADS["knn"].grid(int((splits == 0).sum()))]
    assert len(runs) == 3 and sorted(runs) == sorted(map(list, np.array_split(grid, 3)))
    one_line_error(*cli(capsys, "--features", store, "--backend", "nope"), "unknown --backend 'nope'")


class PidKNN(ClassifierMixin, BaseEstimator):
    """kNN that appends `pid k` to `log` on every fit: which process fitted which grid point."""
    def __init__(self, k=1, log=None):
        self.k, self.log = k, log

    def fit(self, X, y):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {self.k}\n")
        self.knn_ = KNeighborsClassifier(self.k).fit(X, y)
        self.classes_ = self.knn_.classes_
        return self

    def predict_proba(self, X):
        return self.knn_.predict_proba(X)


def test_loky_splits_the_grid_over_worker_processes(tmp_path):
    """Two loky workers each fit one half of the grid (not the parent, not one worker for all), and the
    curve and the winner are those of the sequential sweep."""
    latent, y, splits = synthetic(4, n=150)
    X = view(latent, 8, 4)
    tr, va = splits == 0, splits == 1
    grid = [{"k": k} for k in (1, 3, 5, 9, 15, 25)]
    one = sweep(PidKNN(log=str(tmp_path / "one.log")), grid, X[tr], y[tr], X[va], y[va], 3)
    log = tmp_path / "two.log"
    with joblib.parallel_config(backend="loky", n_jobs=2):
        two = sweep(PidKNN(log=str(log)), grid, X[tr], y[tr], X[va], y[va], 3)
    by_pid = {}
    for line in log.read_text().split("\n")[:-1]:
        pid, k = map(int, line.split())
        by_pid.setdefault(pid, []).append(k)
    assert os.getpid() not in by_pid and sorted(by_pid.values()) == [[1, 3, 5], [9, 15, 25]]
    assert one.sweep == two.sweep and one.params == two.params == {"k": one.params["k"]}


def test_n_jobs_flag_runs_a_sweep_in_parallel(tmp_path):
    latent, y, splits = synthetic(4, n=150)
    store = make_store(tmp_path / "synth" / "a.h5", view(latent, 8, 4), y, splits, "a", class_names=CLASSES)
    assert run_cli(main, ["--features", str(store), "--head", "logreg", "--n-jobs", "2", "--quiet"]) == 0
