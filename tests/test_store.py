"""The feature store: round trip, split access, streaming, and clear errors for foreign or broken files;
the versioned records of a store's metadata and a model's metrics."""
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from features import Extraction, FeatbenchError, FeatureStore, StoreError, write_store
from features.schema import NO_LABEL

from conftest import write_image


def make_store(path, n=50, dim=8, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    labels[-2:] = NO_LABEL
    splits = np.arange(n) % 3
    paths = [f"img/{i}.jpg" for i in range(n)]
    write_store(path, dim=dim, chunks=[X[:20], X[20:]], labels=labels, paths=paths, splits=splits,
                hashes=[f"h{i}" for i in range(n)], stamps=[f"{i}:1" for i in range(n)],
                skipped=[("bad.jpg", "empty file", "0:1", "")], class_names=["a", "b", "c"],
                meta=Extraction(backbone="toy"), dtype=dtype)
    return X, labels, splits, paths


def test_round_trip(tmp_path):
    X, labels, splits, paths = make_store(tmp_path / "s.h5")
    with FeatureStore(tmp_path / "s.h5") as s:
        assert s.backbone == "toy" and s.class_names == ["a", "b", "c"] and s.dim == 8
        assert s.paths == paths and s.skipped == [("bad.jpg", "empty file", "0:1", "")]
        for code, name in enumerate(["train", "val", "test"]):
            d = s.split(name)
            want = (splits == code) & (labels != NO_LABEL)
            np.testing.assert_array_equal(d.X, X[want])
            np.testing.assert_array_equal(d.y, labels[want])
            assert d.paths == [p for p, w in zip(paths, want) if w]
        assert len(s.split("train", labelled_only=False)) == (splits == 0).sum()
        streamed = np.concatenate([x for x, _ in s.iter_chunks(s.rows("train"), chunk_rows=4)])
        np.testing.assert_array_equal(streamed, s.split("train").X)
        assert len(s.fingerprint) == 16 and len(s.split_fingerprint) == 16
        with pytest.raises(StoreError, match="unknown split"):
            s.split("holdout")


def test_split_fingerprint_ignores_embeddings(tmp_path):
    make_store(tmp_path / "a.h5", seed=0)
    write = make_store(tmp_path / "b.h5", seed=0)
    with FeatureStore(tmp_path / "a.h5") as a, FeatureStore(tmp_path / "b.h5") as b:
        assert a.split_fingerprint == b.split_fingerprint
    X, labels, splits, paths = write
    write_store(tmp_path / "c.h5", dim=8, chunks=[X + 1], labels=labels, paths=paths, splits=splits,
                hashes=[""] * 50, stamps=[""] * 50, skipped=[], class_names=["a", "b", "c"], meta=Extraction())
    with FeatureStore(tmp_path / "a.h5") as a, FeatureStore(tmp_path / "c.h5") as c:
        assert a.split_fingerprint == c.split_fingerprint and a.fingerprint != c.fingerprint


def test_float16(tmp_path):
    X, *_ = make_store(tmp_path / "h.h5", dtype="float16")
    with FeatureStore(tmp_path / "h.h5") as s:
        assert s.split("train").X.dtype == np.float32
        np.testing.assert_allclose(s.embeddings(np.arange(50)), X, atol=2e-3)


@pytest.mark.parametrize("case,expected", [
    ("missing", "no feature store here"),
    ("folder", "x.h5: a folder, not a feature store; pass the feature store itself"),
    ("fifo", "x.h5: a FIFO, not a feature store; pass the feature store itself"),
    ("loop", "x.h5: a symbolic link loop, not a feature store; pass the feature store itself"),
    ("broken link", "x.h5: a broken symbolic link, not a feature store; pass the feature store itself"),
    ("text", "not a readable HDF5 file"),
    ("truncated", "not a readable HDF5 file|damaged"),
    ("foreign", "not a featbench feature store"),
    ("incomplete", "incomplete store"),
])
def test_bad_files_give_one_line_errors(tmp_path, case, expected):
    path = tmp_path / "x.h5"
    if case == "folder":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)  # called missing before; never opened (it would hang)
    elif case == "loop":
        path.symlink_to(path)
    elif case == "broken link":
        path.symlink_to(tmp_path / "gone.h5")
    elif case == "text":
        path.write_text("hello")
    elif case == "truncated":
        make_store(path, n=2000, dim=64)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "foreign":
        with h5py.File(path, "w") as f:
            f["data"] = np.zeros(3)
    elif case == "incomplete":
        make_store(path)
        with h5py.File(path, "a") as f:
            f.attrs["complete"] = False
    with pytest.raises(StoreError, match=expected) as err:
        FeatureStore(path)
    assert "\n" not in str(err.value)


def test_float16_overflow_is_one_line_error_with_hint(tmp_path):
    path = tmp_path / "f16.h5"
    X = np.ones((4, 2), np.float32)
    X[2, 0] = 1e6  # beyond float16's 65504
    with pytest.raises(FeatbenchError, match="overflow float16.*--dtype float32") as err:
        write_store(path, dim=2, chunks=[X], labels=[0] * 4, paths=list("abcd"), splits=[0] * 4,
                    hashes=[""] * 4, stamps=[""] * 4, skipped=[], class_names=["x"], meta=Extraction(), dtype="float16")
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


def test_write_is_atomic_and_refuses_nan(tmp_path):
    path = tmp_path / "n.h5"
    X = np.ones((4, 2), np.float32)
    X[1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_store(path, dim=2, chunks=[X], labels=[0] * 4, paths=list("abcd"), splits=[0] * 4,
                    hashes=[""] * 4, stamps=[""] * 4, skipped=[], class_names=["x"], meta=Extraction())
    assert not path.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["minimal", "truncated", "text"])
def test_info_cli_summary_or_one_line_error(tmp_path, case):
    path = tmp_path / "x.h5"
    if case == "text":
        path.write_text("hello")
    else:
        make_store(path, n=2000, dim=64)  # metadata: only what write_store itself records
    if case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    r = subprocess.run([sys.executable, "-m", "features", "info", str(path)], capture_output=True, text=True)
    assert "Traceback" not in r.stderr
    if case == "minimal":
        assert r.returncode == 0 and "2000 x 64 float32" in r.stdout and "toy" in r.stdout, r.stdout
    else:
        assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


def test_journal_lists_its_folder_once_not_per_batch(tmp_path, monkeypatch):
    """Appending is constant time (listing the parts per batch made long extractions quadratic); a new
    Journal on an interrupted run's folder numbers after its parts; after clear() numbering restarts."""
    from features.writer import Journal
    rows = np.zeros((1, 4), np.float32)
    Journal(tmp_path / "s.h5").append(["a"], ["1:1"], ["h0"], [""], rows)  # an earlier, interrupted run
    journal = Journal(tmp_path / "s.h5")
    listings, parts = [], Journal.parts
    monkeypatch.setattr(Journal, "parts", lambda self: listings.append(1) or parts(self))
    for i in range(1, 6):
        journal.append([f"f{i}"], ["1:1"], [f"h{i}"], [""], rows)
    assert len(listings) == 1
    assert [p.name for p in journal.parts()] == [f"part-{i:07d}.json" for i in range(6)]
    assert sorted(journal.records()) == ["a"] + [f"f{i}" for i in range(1, 6)]
    journal.clear()
    assert journal.append(["b"], ["1:1"], ["h"], [""], rows).name == "part-0000000.npy"


def test_journal_records_number_embedded_rows_and_keep_provenance(tmp_path):
    """Each record points at its part's row, counting embedded images only; skipped ones keep their reason;
    a later part's record of the same path wins; provenance matches only itself."""
    from features.writer import Journal, RowSource
    journal = Journal(tmp_path / "s.h5")
    assert journal.records() == {} and not journal.made_with({"backbone": "a"})
    journal.start({"backbone": "a", "weights": "w"}, {"root": "/data/pics"})
    assert journal.made_with({"backbone": "a", "weights": "w"}) and not journal.made_with({"backbone": "a"})
    first = journal.append(["x", "bad", "y"], ["1:1", "2:2", "3:3"], ["hx", "", "hy"], ["", "truncated", ""],
                           np.array([[1, 1], [2, 2]], np.float32))
    second = journal.append(["z", "x"], ["4:4", "5:5"], ["hz", "hx2"], ["", ""], np.array([[3, 3], [4, 4]], np.float32))
    got = journal.records()
    assert got["y"].source == (first, 1) and got["z"].source == (second, 0) and got["x"].source == (second, 1)
    assert (got["bad"].reason, got["bad"].source, got["bad"].stamp) == ("truncated", None, "2:2")
    assert (got["x"].stamp, got["x"].hash, got["x"].reason) == ("5:5", "hx2", "")
    rows = RowSource(max_open=1)
    assert rows.row(got["y"].source).tolist() == [2, 2] and rows.row(got["x"].source).tolist() == [4, 4]
    assert list(rows.open) == [second]  # one part open at most
    chunks = list(rows.chunks([got[p].source for p in ("y", "z", "x")], 2))
    assert [c.tolist() for c in chunks] == [[[2, 2], [3, 3]], [[4, 4]]] and chunks[0].dtype == np.float32
    (journal.dir / "provenance.json").write_text("{not json")
    assert not journal.made_with({"backbone": "a", "weights": "w"})
    journal.clear()
    assert not journal.dir.exists() and journal.records() == {}


def test_journal_rows_share_the_seconds_their_part_records(tmp_path):
    """A part's seconds are shared by its embedded rows (a skip takes none); a part that records none (older
    featbench) or not a number of seconds leaves its rows unmeasured."""
    from features.writer import Journal
    journal = Journal(tmp_path / "s.h5")
    journal.append(["x", "bad", "y"], ["1:1", "2:2", "3:3"], ["hx", "", "hy"], ["", "truncated", ""],
                   np.ones((2, 2), np.float32), 6.0)
    journal.append(["z"], ["4:4"], ["hz"], [""], np.ones((1, 2), np.float32))
    journal.append(["w"], ["5:5"], ["hw"], [""], np.ones((1, 2), np.float32), 2.5)
    (journal.dir / "part-0000002.json").write_text(
        (journal.dir / "part-0000002.json").read_text().replace("2.5", "true"))
    got = journal.records()
    assert {p: r.seconds for p, r in got.items()} == {"x": 3.0, "bad": None, "y": 3.0, "z": None, "w": None}


def test_second_writer_is_refused_with_one_line(tmp_path):
    from features.writer import store_lock
    with store_lock(tmp_path / "s.h5"):
        with pytest.raises(FeatbenchError, match="another extraction is writing this store") as err:
            with store_lock(tmp_path / "s.h5"):
                pass
    assert "\n" not in str(err.value)
    with store_lock(tmp_path / "s.h5"):  # released: the next writer gets it
        pass


def test_a_full_disk_or_unwritable_folder_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """Root ignores file modes, so the failures are made: the journal's np.save on a full disk, the store's lock in
    a read-only folder. Either leaves no temporary file."""

    from filelock import FileLock

    from features.writer import Journal, store_lock

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "save", full)
    with pytest.raises(FeatbenchError, match=r"part-0000000.npy: cannot write it \(No space left on device\); free "
                                             "some space or pass an --out on another disk, then re-run the same"):
        Journal(tmp_path / "s.h5").append(["a.jpg"], ["1:1"], ["h"], [""], np.zeros((1, 4), np.float32))
    assert not [p for p in (tmp_path / "s.h5.partial").iterdir() if p.suffix == ".tmp"]

    def read_only(self, *a, **k):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "s.h5.lock"))
    monkeypatch.setattr(FileLock, "acquire", read_only)
    with pytest.raises(FeatbenchError, match=r"s.h5.lock: cannot write it \(Read-only file system\); pass an --out you"):
        with store_lock(tmp_path / "s.h5"):
            pass


def test_a_store_without_room_on_its_disk_is_refused_before_hdf5_writes(tmp_path, monkeypatch):
    import features.writer
    room = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(features.writer.shutil, "disk_usage", lambda p: room._replace(free=2 << 20))
    with pytest.raises(FeatbenchError, match=r"a\.h5: needs about 2 MiB and its disk has 2 MiB free; free some space"):
        make_store(tmp_path / "a.h5", n=1000, dim=512)
    assert list(tmp_path.iterdir()) == []
    make_store(tmp_path / "a.h5", n=100, dim=512)  # 0.2 MiB fits


def test_same_outcome_ignores_when_where_from_and_how_fast_a_record_was_made(tmp_path):
    """A fine-tune trained again from its store reached by another path, or by a later version, is the same result;
    a changed score, even one nested in `compute`, is not."""
    from features.atomic import same_outcome
    doc = {"accuracy": 0.9, "created": "2026-12-01", "path": "/a/m.pt", "featbench_version": "0.1",
           "split_source": "store /a/s.h5", "dataset_root": "/a/data", "fit_seconds": 3.0,
           "compute": {"runs": 3, "seconds": 2.0}}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    moved = {**doc, "created": "2026-12-04", "path": "/b/m.pt", "featbench_version": "0.2",
             "split_source": "store /b/s.h5", "dataset_root": "/b/data", "fit_seconds": 9.0,
             "compute": {"runs": 3, "seconds": 7.0}}
    assert same_outcome(tmp_path / "m.json", moved)
    assert not same_outcome(tmp_path / "m.json", {**moved, "accuracy": 0.91})
    assert not same_outcome(tmp_path / "m.json", {**moved, "compute": {"runs": 4, "seconds": 7.0}})
    assert not same_outcome(tmp_path / "missing.json", doc)


@pytest.mark.parametrize("dim, dtype", [(8, "float32"), (1, "float16"), (256, "float16")])
def test_the_room_a_store_is_checked_for_covers_what_it_takes(tmp_path, monkeypatch, dim, dtype):
    """Narrow rows are mostly paths, hashes and stamps, whose HDF5 records cost more than their text."""
    import features.writer
    needs = []
    monkeypatch.setattr(features.writer, "_check_room", lambda tmp, need, path: needs.append(need))
    n = 20_000
    write_store(tmp_path / "s.h5", dim=dim, chunks=[np.ones((n, dim), np.float32)], labels=np.arange(n) % 3,
                paths=[f"c{i % 37}/{i}.jpg" for i in range(n)], splits=np.arange(n) % 3, hashes=["a" * 64] * n,
                stamps=["123456:1733300000000000000"] * n, skipped=[], class_names=list("abc"), meta=Extraction(),
                dtype=dtype)
    assert (tmp_path / "s.h5").stat().st_size <= needs[0] * 1.1 + (1 << 20)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_folder_that_cannot_be_made_is_refused_and_the_check_leaves_nothing(tmp_path, monkeypatch):
    """/proc takes no folder, though its mode lets root write: only making one tells (it was found at the end)."""
    from features.atomic import check_folder
    with pytest.raises(FeatbenchError, match=r"^/proc: the output folder /proc/x cannot be made there \(.+\); pass "
                                             r"one you can write to \(--out\)$"):
        check_folder(Path("/proc/x"))
    assert check_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b" and list(tmp_path.iterdir()) == []

    def full(**kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("features.atomic.tempfile.mkdtemp", full)
    with pytest.raises(FeatbenchError, match=r"\(No space left on device\); free some space or pass one on another "
                                             r"disk \(--out\)$"):
        check_folder(tmp_path / "a")


def test_an_output_folder_inside_a_dataset_folder_is_refused_and_a_link_loop_is_no_traceback(tmp_path):
    from features.atomic import check_outside
    data = {"root": str(tmp_path / "data"), "format": "imagefolder"}
    (tmp_path / "link").symlink_to(tmp_path / "data")
    for inside in tmp_path / "data" / "runs", tmp_path / "link" / "runs", tmp_path / "data" / ".." / "data" / "x":
        with pytest.raises(FeatbenchError, match="lies inside the dataset folder"):
            check_outside(inside, data)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for outside in tmp_path / "data2", tmp_path / "loop" / "runs":
        assert check_outside(outside, data) == outside
    assert check_outside(tmp_path / "data" / "runs", {**data, "format": "csv"})  # a CSV names its files
    moved = {"root": "/gone/data", "format": "imagefolder", "root_from_store": "../../data"}  # the project moved whole
    store = tmp_path / "runs" / "data" / "resnet18.h5"
    with pytest.raises(FeatbenchError, match=f"inside the dataset folder {tmp_path / 'data'},"):
        check_outside(tmp_path / "data" / "audit", moved, store)
    assert check_outside(tmp_path / "runs" / "data" / "audit", moved, store)


def test_store_chunks_rows_and_metadata(tmp_path):
    """Rows are chunked by bytes (about 1 MiB), the metadata records what was written, and a writer that
    yields too few rows leaves nothing behind."""
    from features.writer import CHUNK_BYTES
    X, labels, splits, paths = make_store(tmp_path / "s.h5", n=600, dim=512)
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["embeddings"].chunks == (CHUNK_BYTES // (512 * 4), 512) and f["embeddings"].dtype == np.float32
        assert f["splits"].dtype == np.int8 and f["labels"].dtype == np.int64
        meta = json.loads(f.attrs["meta"])
        assert f.attrs["backbone"] == "toy" and f.attrs["complete"]
    assert {k: meta[k] for k in ("dim", "rows", "dtype", "skipped", "split_names")} == \
        {"dim": 512, "rows": 600, "dtype": "float32", "skipped": 1, "split_names": ["train", "val", "test"]}
    with pytest.raises(ValueError, match="wrote 2 embedding rows for 3 images"):
        write_store(tmp_path / "short.h5", dim=2, chunks=[np.ones((2, 2))], labels=[0] * 3, paths=list("abc"),
                    splits=[0] * 3, hashes=[""] * 3, stamps=[""] * 3, skipped=[], class_names=["x"], meta=Extraction())
    assert not (tmp_path / "short.h5").exists() and not list(tmp_path.glob("short.h5*.tmp"))


def test_atomic_write_follows_no_link_at_a_temporary_name_and_writers_do_not_collide(tmp_path):
    """The temporary file is a new one of its own (it was always NAME.tmp): a link planted at NAME.h5.tmp is
    neither followed (the victim was overwritten with the store) nor renamed over the store, and a second
    writer of the same path meanwhile does not take the first one's file away (a FileNotFoundError)."""
    from features.atomic import atomic_write
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (tmp_path / "s.h5.tmp").symlink_to(victim)
    make_store(tmp_path / "s.h5")
    assert victim.read_text() == "mine" and not (tmp_path / "s.h5").is_symlink()
    with FeatureStore(tmp_path / "s.h5") as s:
        assert len(s.paths) == 50
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "s.h5").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, not mkstemp's 0600
    target = tmp_path / "m.json"

    def outer(tmp):
        tmp.write_text("outer")
        atomic_write(target, lambda inner: inner.write_text("inner"))

    atomic_write(target, outer)
    assert target.read_text() == "outer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "s.h5", "s.h5.tmp", "victim.txt"]
    (tmp_path / "in-the-way").mkdir()  # a folder where the file goes: one line before `write` runs
    wrote = []
    with pytest.raises(FeatbenchError, match="in-the-way: a folder is where this file goes"):
        atomic_write(tmp_path / "in-the-way", wrote.append)
    assert not wrote and sorted(p.name for p in tmp_path.iterdir()) == ["in-the-way", "m.json", "s.h5", "s.h5.tmp",
                                                                        "victim.txt"]


def test_a_store_writer_removes_the_temporary_files_a_killed_one_left(tmp_path):
    """A kill -9 mid-write leaves NAME.h5.MACHINE-PID.XXXXXXXX.tmp (NAME.h5.XXXXXXXX.tmp before) behind; the next
    writer of that store, holding its lock, removes every one, and leaves other files alone."""
    from features.writer import store_lock
    left = [tmp_path / "s.h5.abcd_123.tmp", tmp_path / "s.h5.0123abcd-77.abcd_123.tmp", tmp_path / "s.h5.tmp",
            tmp_path / "s2.h5.abcd_123.tmp", tmp_path / "s.h5.mine.tmp"]
    for p in left:
        p.write_text("half a store")
    with store_lock(tmp_path / "s.h5"):
        pass
    assert [p.exists() for p in left] == [False, False, True, True, True]


def test_any_writer_removes_the_temporary_file_a_killed_writer_of_that_file_left_on_this_machine(tmp_path):
    """A writer killed mid-write (kill -9) leaves its temporary file; the next `atomic_write` of that file removes
    it, and keeps those a live process, another machine or an older featbench (no owner in the name) may own."""
    from features.atomic import MACHINE, atomic_write
    target = tmp_path / "m.skops"
    code = ("import sys, time; from features.atomic import atomic_write\n"
            f"atomic_write({str(target)!r}, lambda tmp: (tmp.write_bytes(b'half'), print('writing', flush=True), "
            "time.sleep(60)))")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait()
    killed = list(tmp_path.glob("m.skops.*.tmp"))
    assert [p.name.split(".")[2] for p in killed] == [f"{MACHINE}-{child.pid}"]
    kept = [tmp_path / f"m.skops.{MACHINE}-{os.getpid()}.abcd_123.tmp", tmp_path / "m.skops.0123abcd-1.abcd_123.tmp",
            tmp_path / "m.skops.abcd_123.tmp"]
    for p in kept:
        p.write_text("someone's")
    strays = [tmp_path / f"m.skops.{MACHINE}-99999999999999999999.abcd_123.tmp",  # no process has that pid
              tmp_path / f"m.skops.{MACHINE}-{child.pid}.folder_1.tmp"]  # a folder: cannot be unlinked
    strays[0].write_text("?")
    strays[1].mkdir()
    atomic_write(target, lambda tmp: tmp.write_text("whole"))  # the tidying is best effort: the write goes on
    assert target.read_text() == "whole" and not killed[0].exists() and all(p.exists() for p in kept)


def test_journal_folder_numbering_and_clearing(tmp_path):
    """`NAME.h5.partial/` is where a resumed run looks; its parent is made if missing; a new part sorts after
    every existing one even past a gap (a later part's records win); start and clear are idempotent."""
    from features.writer import Journal
    rows = np.zeros((1, 2), np.float32)
    journal = Journal(tmp_path / "new" / "s.h5")
    assert journal.dir == tmp_path / "new" / "s.h5.partial"
    journal.clear()  # nothing there yet: no error
    journal.start({"v": 1}, {"root": "/data/pics"})
    journal.start({"v": 2}, {"root": "/data/pics"})
    assert journal.made_with({"v": 2})
    Journal(tmp_path / "other" / "s.h5").append(["a"], ["1:1"], ["h"], [""], rows)  # append makes the folder too
    for n in (0, 2):
        Journal(tmp_path / "new" / "s.h5").append(["a"], ["1:1"], [f"h{n}"], [""], rows)
    (journal.dir / "part-0000001.json").rename(journal.dir / "part-0000002.json")  # a gap: parts 0 and 2
    (journal.dir / "part-0000001.npy").rename(journal.dir / "part-0000002.npy")
    later = Journal(tmp_path / "new" / "s.h5")
    assert later.append(["a"], ["1:1"], ["h3"], [""], rows).name == "part-0000003.npy"
    assert later.records()["a"].hash == "h3"
    later.clear()
    later.clear()
    assert not later.dir.exists()


def test_row_source_reads_stores_and_keeps_the_most_recent_parts_open(tmp_path):
    from features.writer import Row, RowSource
    X, *_ = make_store(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as f:
        np.testing.assert_array_equal(RowSource(f).row(Row(None, 7)), X[7])
    parts = []
    for k in range(3):
        np.save(tmp_path / f"{k}.npy", np.full((2, 3), k, np.float32))
        parts.append(tmp_path / f"{k}.npy")
    rows = RowSource(max_open=2)
    rows.row(Row(parts[0], 1))
    first = rows.open[parts[0]]
    assert isinstance(first, np.memmap)
    rows.row(Row(parts[1], 0))
    assert rows.row(Row(parts[0], 0)).tolist() == [0, 0, 0] and rows.open[parts[0]] is first  # not read again
    assert list(rows.open) == [parts[1], parts[0]]  # most recently used last
    rows.row(Row(parts[2], 0))
    assert list(rows.open) == [parts[0], parts[2]]  # the least recently used part was closed


def test_store_records_hashes_stamps_and_format(tmp_path):
    """What reuse and resume read back: hashes and stamps per row, the format version, int64 labels, a
    resizable embeddings dataset (a store grows when images are added); an empty store is valid too."""
    from features.schema import FORMAT_VERSION
    make_store(tmp_path / "s.h5")
    with FeatureStore(tmp_path / "s.h5") as s:
        assert s.hashes[:2] == ["h0", "h1"] and s.stamps[:2] == ["0:1", "1:1"]
    with h5py.File(tmp_path / "s.h5") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION and f["labels"].dtype == np.int64
        assert f["embeddings"].maxshape == (None, 8)
    write_store(tmp_path / "e.h5", dim=4, chunks=[], labels=[], paths=[], splits=[], hashes=[], stamps=[],
                skipped=[("x.jpg", "empty file", "", "")], class_names=[], meta=Extraction())
    with h5py.File(tmp_path / "e.h5") as f:
        assert f["embeddings"].shape == (0, 4) and f.attrs["backbone"] == "" and f["embeddings"].dtype == np.float32


# ---- checksums, damage and the store's layout ------------------------------------------------------------

@pytest.fixture
def blocks_of_10(monkeypatch):
    """Stores of 8-dim float32 rows are written in blocks (HDF5 chunks) of 10 rows."""
    import features.writer
    monkeypatch.setattr(features.writer, "CHUNK_BYTES", 10 * 8 * 4)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_checksums_cover_each_block_of_stored_rows(tmp_path, dtype, monkeypatch):
    """A CRC-32 of each block's stored bytes, whatever pieces the rows arrive in; a clean store verifies OK."""
    import zlib

    import features.writer
    from features.reader import verify
    monkeypatch.setattr(features.writer, "CHUNK_BYTES", 10 * 8 * np.dtype(dtype).itemsize)
    X = np.random.default_rng(0).normal(size=(45, 8)).astype(np.float32)
    path = tmp_path / "s.h5"
    write_store(path, dim=8, chunks=[X[:7], X[7:33], X[33:34], X[34:]], labels=[0] * 45,
                paths=[f"{i}" for i in range(45)], splits=[0] * 45, hashes=[""] * 45, stamps=[""] * 45, skipped=[],
                class_names=["x"], meta=Extraction(), dtype=dtype)
    stored = X.astype(dtype)
    with h5py.File(path) as f:
        assert f["embeddings"].chunks == (10, 8) and f["checksums"].attrs["rows_per_block"] == 10
        assert f["checksums"][:].tolist() == [zlib.crc32(stored[i:i + 10].tobytes()) for i in range(0, 45, 10)]
    with FeatureStore(path) as s:
        assert s.damaged_rows() == []
        s.check_intact()
    assert verify(path) == (True, f"{path}: OK (45 rows)")


@pytest.mark.parametrize("value", [np.nan, 1e30])
def test_verify_names_the_rows_of_blocks_whose_bytes_changed(tmp_path, blocks_of_10, value):
    """Values written over a store's embeddings (1e30 is finite: no NaN check sees it) are found by block."""
    from features.reader import verify
    path = tmp_path / "s.h5"
    make_store(path)
    with h5py.File(path, "r+") as f:
        f["embeddings"][12, 3] = value
        f["embeddings"][45] = value
    with FeatureStore(path) as s:
        assert s.damaged_rows() == [(10, 20), (40, 50)]
        with pytest.raises(StoreError) as err:
            s.check_intact()
    assert str(err.value) == (f"{path}: 20 damaged rows (rows 10-19, 40-49; first img/10.jpg): the embeddings changed "
                              "after they were written; re-run `python -m extract` on its dataset to re-embed them")
    assert verify(path) == (False, (f"{path}: 20 damaged rows (rows 10-19, 40-49; first img/10.jpg); re-run "
                                    "`python -m extract` to re-embed them"))


def test_verify_finds_bytes_changed_on_disk_and_joins_adjacent_blocks(tmp_path, blocks_of_10):
    """Bytes overwritten in the file itself, past HDF5, in two adjacent blocks: one range."""
    path = tmp_path / "s.h5"
    make_store(path)
    with h5py.File(path) as f:
        offsets = [f["embeddings"].id.get_chunk_info_by_coord((row, 0)).byte_offset for row in (20, 30)]
    with open(path, "r+b") as fh:
        for offset in offsets:
            fh.seek(offset + 5 * 8 * 4)
            fh.write(np.float32(1e30).tobytes())
    with FeatureStore(path) as s:
        assert s.damaged_rows() == [(20, 40)]
        assert s.describe_damage(s.damaged_rows()) == "20 damaged rows (rows 20-39; first img/20.jpg)"


@pytest.mark.parametrize("change, expected", [
    (lambda f: f.attrs.__setitem__("format_version", 99), "store format 99, newer than this featbench reads (2); "
                                                          "upgrade featbench"),
    (lambda f: f.attrs.__setitem__("format_version", "two"), "damaged featbench store (format_version 'two' is not"),
    (lambda f: f.__delitem__("checksums"), "damaged featbench store (no checksums dataset, which its format has)"),
    (lambda f: f.attrs.__setitem__("meta", json.dumps({**json.loads(f.attrs["meta"]), "rows": 7})),
     "damaged featbench store (metadata of 7 rows of float32, splits train, val, test, for 50 rows of float32"),
    (lambda f: f.attrs.__setitem__("meta", json.dumps({**json.loads(f.attrs["meta"]), "dtype": "object"})),
     "damaged featbench store (metadata of 50 rows of object, splits train, val, test, for 50 rows of float32"),
    (lambda f: f.attrs.__setitem__("meta", json.dumps({**json.loads(f.attrs["meta"]), "split_names": ["a"]})),
     "damaged featbench store (metadata of 50 rows of float32, splits a, for 50 rows of float32, splits train, val, test"),
])
def test_a_store_of_a_newer_format_or_whose_metadata_disagrees_with_it_is_refused(tmp_path, change, expected):
    """Each was read as if nothing were wrong: a newer featbench's format, a format 2 store stripped of its
    checksums (then only "unverified"), metadata whose rows, dtype or splits are not the store's."""
    path = tmp_path / "s.h5"
    make_store(path)
    with h5py.File(path, "r+") as f:
        change(f)
    with pytest.raises(StoreError, match=re.escape(f"{path}: {expected}")):
        FeatureStore(path)


def test_a_store_without_checksums_reads_and_is_unverified(tmp_path):
    """A store of format version 1 (no `checksums`) reads as before; verify calls it unverified, not damaged."""
    from features.reader import verify
    path = tmp_path / "old.h5"
    X, *_ = make_store(path)
    with h5py.File(path, "r+") as f:
        del f["checksums"]
        f.attrs["format_version"] = 1
    with FeatureStore(path) as s:
        assert s.damaged_rows() is None
        s.check_intact()
        np.testing.assert_array_equal(s.embeddings(np.arange(50)), X)
    assert verify(path) == (True, (f"{path}: unverified (50 rows, written without checksums); `python -m extract "
                                   "--overwrite` rewrites it with them"))


@pytest.mark.parametrize("name,value,expected", [
    ("labels", 3, "1 label outside its 3 classes (row 4, img/4.jpg: 3)"),
    ("labels", -2, "1 label outside its 3 classes (row 4, img/4.jpg: -2)"),
    ("splits", 3, "1 split code outside 0-2, train/val/test (row 4, img/4.jpg: 3)"),
    ("splits", -1, "1 split code outside 0-2, train/val/test (row 4, img/4.jpg: -1)"),
    ("labels", None, "labels, splits or paths that differ from those written (not their split fingerprint)"),
    ("paths", "img/elsewhere.jpg", "labels, splits or paths that differ from those written"),
])
def test_verify_and_export_find_labels_and_splits_changed_after_writing(tmp_path, capsys, name, value, expected):
    """A label outside the store's classes or a split code outside train/val/test (a hand-edited or damaged store)
    fails verify, and export, classify and merge (`check_intact`) refuse it in one line naming the store, as they
    do labels, splits or paths edited in range (the split fingerprint no longer matches); export used to raise an
    IndexError, or write a split code of -1 as `test`, and verify checked the embeddings only."""
    from features.__main__ import main as features_main
    from features.cli import run_cli
    from features.reader import verify
    path = tmp_path / "s.h5"
    _, labels, *_ = make_store(path)
    with h5py.File(path, "r+") as f:
        f[name][4] = (labels[4] + 1) % 3 if value is None else value
    ok, line = verify(path)
    assert not ok and line.startswith(f"{path}: {expected}") and "re-run `python -m extract`" in line
    with FeatureStore(path) as s, pytest.raises(StoreError, match=f"^{re.escape(f'{path}: {expected}')}"):
        s.check_intact()
    assert run_cli(features_main, ["export", str(path), "--format", "npy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {expected}") and err.count("\n") == 1
    assert f"python -m features verify {path}" in err and "re-run `python -m extract`" in err
    assert not (tmp_path / "s-export").exists()


def test_export_replaces_neither_the_store_nor_an_earlier_export_and_names_a_folder(tmp_path, capsys):
    """`export --out` never writes over the store it reads, replaces an existing export only with --overwrite (and
    with it, only a file that begins as an export of that format does), and a folder where the parquet file goes is one line (it was an IsADirectoryError)."""
    pytest.importorskip("pyarrow", reason="the [parquet] extra (in [test]) is not installed")
    from features.__main__ import main as features_main
    from features.cli import run_cli
    path = tmp_path / "s.h5"
    make_store(path)
    store = path.read_bytes()
    export = ["export", str(path), "--format"]
    (tmp_path / "link.h5").symlink_to(path)
    for out in (path, tmp_path / "link.h5", tmp_path / "." / "s.h5"):
        assert run_cli(features_main, [*export, "parquet", "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {out}: is the store being exported; pass another --out\n", err
    assert path.read_bytes() == store and (tmp_path / "link.h5").is_symlink()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "labels.npy").write_text("mine")
    assert run_cli(features_main, [*export, "npy", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {mine / 'labels.npy'}: already there; pass --overwrite to replace it, or another "
                   "--out\n"), err
    assert [p.name for p in mine.iterdir()] == ["labels.npy"] and (mine / "labels.npy").read_text() == "mine"
    assert run_cli(features_main, [*export, "npy", "--out", str(mine), "--overwrite"]) == 2  # not an export
    err = capsys.readouterr().err
    assert err == (f"error: {mine / 'labels.npy'}: not an earlier npy export, so --overwrite does not replace it; "
                   "pass another --out\n"), err
    np.save(mine / "labels.npy", np.arange(3))  # an earlier export's file: replaced
    assert run_cli(features_main, [*export, "npy", "--out", str(mine), "--overwrite"]) == 0
    assert len(np.load(mine / "labels.npy")) == 50
    other = tmp_path / "other.h5"  # another store, or a model, is no export: --overwrite leaves it
    shutil.copy(path, other)
    assert run_cli(features_main, [*export, "parquet", "--out", str(other), "--overwrite"]) == 2
    assert "other.h5: not an earlier parquet export" in capsys.readouterr().err and other.read_bytes() == store
    assert run_cli(features_main, [*export, "parquet", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {mine}: a folder, where the export writes a file; pass another --out\n", err
    assert run_cli(features_main, [*export, "parquet"]) == 0
    assert run_cli(features_main, [*export, "parquet"]) == 2  # the default target, now there
    assert "s.parquet: already there" in capsys.readouterr().err
    assert run_cli(features_main, [*export, "parquet", "--overwrite"]) == 0  # an earlier parquet export: replaced


@pytest.mark.parametrize("name,expected", [
    ("skipped", "no skipped/paths dataset"),
    ("skipped/hashes", "no skipped/hashes dataset"),
    ("hashes", "no hashes dataset"),
    ("stamps", "no stamps dataset"),
    ("short hashes", "hashes has 49 rows for 50 images"),
    ("checksums", "its checksums do not cover its embeddings"),
])
def test_a_store_missing_a_dataset_is_one_line_in_info(tmp_path, capsys, name, expected):
    """What `info` and `extract` read lazily is checked at open: one line naming the store, no KeyError."""
    from features.__main__ import main as features_main
    from features.cli import run_cli
    path = tmp_path / "x.h5"
    make_store(path)
    with h5py.File(path, "r+") as f:
        if name == "short hashes":
            hashes = f["hashes"][:-1]
            del f["hashes"]
            f["hashes"] = hashes
        elif name == "checksums":
            f["checksums"].attrs["rows_per_block"] = 1
        else:
            del f[name]
    assert run_cli(features_main, ["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: damaged featbench store ({expected}); delete it and re-run `python -m extract`\n"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A store `extract` wrote of 24 images of two classes, and the command line that wrote it."""
    from extract.__main__ import main as extract_main
    root = tmp_path_factory.mktemp("made")
    for i in range(12):
        write_image(root / "dvc" / f"cat.{i}.jpg", i)
        write_image(root / "dvc" / f"dog.{i}.jpg", 100 + i)
    argv = ["--backbone", "test_resnet", "--random-init", "--device", "cpu", "--workers", "0", "--no-optimize",
            "--quiet", "--data", str(root / "dvc")]
    assert extract_main([*argv, "--out", str(root / "runs")]) == 0
    return root / "runs" / "dvc" / "test_resnet-random-init.h5", argv


def _malform(path, change: str) -> None:
    """Change one dataset or the metadata of the store at `path` as a hand-made or older store might have it."""
    with h5py.File(path, "r+") as f:
        meta = json.loads(f.attrs["meta"])
        replaced = {"paths as integers": ("paths", lambda d: np.arange(len(d))),
                    "byte-string labels": ("labels", lambda d: d[:].astype("S")),
                    "float splits": ("splits", lambda d: d[:].astype(np.float32)),
                    "embeddings narrower than dim": ("embeddings", lambda d: d[:, :-1])}
        if change in replaced:
            name, value = replaced[change]
            data = value(f[name])
            del f[name]
            f[name] = data
        elif change == "labels as a group":
            del f["labels"]
            f.create_group("labels")
        elif change == "meta not text":
            f.attrs["meta"] = 5
        else:
            f.attrs["meta"] = json.dumps({**meta, **{"dim as text": {"dim": "many"},
                                                     "class names not text": {"class_names": [1, 2]},
                                                     "dataset root not text": {"dataset": {"name": "dvc", "root": 5}},
                                                     }[change]})


@pytest.mark.parametrize("change, why", [
    ("paths as integers", "paths is not a 1-D string dataset"),
    ("byte-string labels", "labels is not a 1-D integer dataset"),
    ("labels as a group", "labels is not a 1-D integer dataset"),
    ("float splits", "splits is not a 1-D integer dataset"),
    ("embeddings narrower than dim", "embeddings are 95 wide, not its dim 96"),
    ("meta not text", "no meta attribute of JSON text"),
    ("dim as text", "dim 'many' is not int"),
    ("class names not text", "class names that are not text"),
    ("dataset root not text", "a dataset root that is not text"),
])
def test_a_malformed_store_is_one_line_everywhere_and_overwrite_replaces_it(extracted, tmp_path, capsys, change, why):
    """A store with a dataset of another type or shape, or metadata of other types (hand-made, or older), is one
    line naming it in info, verify and classify, as a missing dataset is (they were TypeErrors), and
    `extract --overwrite` replaces it (it raised the same TypeError)."""
    from classify.__main__ import main as classify_main
    from extract.__main__ import main as extract_main
    from features.__main__ import main as features_main
    from features.cli import run_cli
    good, argv = extracted
    path = tmp_path / "runs" / "dvc" / good.name
    path.parent.mkdir(parents=True)
    shutil.copy(good, path)
    _malform(path, change)
    line = f"error: {path}: "
    for cli, args in [(features_main, ["info", str(path)]), (features_main, ["verify", str(path)]),
                      (classify_main, ["--features", str(path), "--quiet"])]:
        assert run_cli(cli, args) == 2
        err = capsys.readouterr().err
        assert err.startswith(line) and why in err and err.count("\n") == 1, err
    assert run_cli(extract_main, [*argv, "--out", str(tmp_path / "runs"), "--overwrite"]) == 0, capsys.readouterr()
    with FeatureStore(path) as s:
        assert len(s.paths) == 24 and s.meta.dataset["name"] == "dvc"


def test_a_store_that_records_no_dataset_is_named_by_its_folder(extracted, tmp_path, capsys):
    """A store whose metadata has no dataset record (a minimal or older one) is named by its folder where a
    command puts its outputs under --out (classify and audit raised a TypeError)."""
    from classify.__main__ import main as classify_main
    from features.__main__ import main as features_main
    from features.cli import run_cli
    path = tmp_path / "pets" / "s.h5"
    path.parent.mkdir()
    shutil.copy(extracted[0], path)
    with h5py.File(path, "r+") as f:
        meta = json.loads(f.attrs["meta"])
    set_meta(path, {k: v for k, v in meta.items() if k != "dataset"})
    with FeatureStore(path) as s:
        assert s.dataset_name == "pets"
    assert run_cli(features_main, ["verify", str(path)]) == 0
    out = tmp_path / "out"
    assert run_cli(classify_main, ["--features", str(path), "--out", str(out), "--quiet"]) == 0, capsys.readouterr()
    assert (out / "pets" / "models" / "s-logreg.skops").is_file()
    assert run_cli(classify_main, ["audit", "--features", str(path), "--out", str(out), "--no-map", "--quiet"]) == 0
    assert (out / "pets" / "audit" / "audit.csv").is_file()


def test_journal_leaves_out_parts_whose_embeddings_changed(tmp_path):
    """A part whose `.npy` no longer matches its checksum, or no longer reads, is left out (its images are
    embedded again) and listed in `damaged`; a part of an older featbench (no checksum) is used as it is."""
    from features.writer import Journal
    journal = Journal(tmp_path / "s.h5")
    parts = [journal.append([name], ["1:1"], [f"h{name}"], [""], np.full((1, 4), k, np.float32))
             for k, name in enumerate("abcd")]
    changed = np.load(parts[1])
    changed[0, 2] = 1e30
    np.save(parts[1], changed)
    parts[2].write_bytes(parts[2].read_bytes()[:-4])
    old = parts[3].with_suffix(".json")
    old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items() if k != "crc"}))
    assert sorted(journal.records()) == ["a", "d"] and journal.damaged == parts[1:3]


def test_made_from_refuses_another_dataset_folder(tmp_path):
    """A store made from another folder of the same name is refused, naming both; the same folder through
    a symlink passes, as does the folder at the store's recorded place beside it (stores and images moved
    together), a store with no recorded root (older featbench), and shard or merged stores."""
    (tmp_path / "A" / "pets").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "A")
    path = tmp_path / "s.h5"
    make_store(path)
    with h5py.File(path) as f:
        meta = json.loads(f.attrs["meta"])
    set_meta(path, {**meta, "dataset": {"name": "pets", "root": str(tmp_path / "A" / "pets")}})
    with FeatureStore(path) as s:
        s.check_made_from(tmp_path / "link" / "pets")
        with pytest.raises(StoreError) as err:
            s.check_made_from(tmp_path / "B" / "pets")
    assert str(err.value) == (f"{path}: made from {tmp_path / 'A' / 'pets'}, not {tmp_path / 'B' / 'pets'} (two "
                              "datasets with one name); pass --name NAME to give this dataset its own stores, or "
                              f"delete {path} if the dataset moved")
    for changes in ({"dataset": {"name": "pets"}}, {"shard": [0, 2]}, {"merged_from": 2}):
        set_meta(path, {**meta, "dataset": {"name": "pets", "root": str(tmp_path / "A" / "pets")}, **changes})
        with FeatureStore(path) as s:
            s.check_made_from(tmp_path / "B" / "pets")
    set_meta(path, {**meta, "dataset": {"name": "pets", "root": "/gone/A/pets", "root_from_store": "A/pets"}})
    with FeatureStore(path) as s:  # made as /gone/s.h5 from /gone/A/pets, then both moved here
        s.check_made_from(tmp_path / "A" / "pets")
        with pytest.raises(StoreError, match="made from /gone/A/pets, not "):
            s.check_made_from(tmp_path / "B" / "pets")


# ---- the records: store metadata and model metrics -------------------------------------------------------

def set_meta(path, meta: dict):
    with h5py.File(path, "r+") as f:
        f.attrs["meta"] = json.dumps(meta)


def test_a_store_written_before_the_metadata_had_a_version_still_reads(tmp_path):
    """The metadata as the first featbench wrote it (no version, no optimized/compiled/shard) reads as version 0."""
    from features.__main__ import info
    make_store(tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5") as f:
        written = json.loads(f.attrs["meta"])
    assert written["version"] == 1 and written["backbone"] == "toy" and not {"shard", "extra"} & set(written)
    set_meta(tmp_path / "old.h5", {
        "backbone": "toy", "weights_fingerprint": "0123456789abcdef", "preprocess": {"size": 224},
        "amp": False, "weights": {"source": "pypi:toy", "fingerprint": "0123456789abcdef"},
        "dataset": {"name": "pics", "root": "/data/pics", "format": "imagefolder"},
        "split_fractions": [0.7, 0.15, 0.15], "split_seed": 0, "versions": {"torch": "2.0"},
        "created": "2026-11-22T08:00:00+00:00", "device": "cpu", "batch_size": 32, "extraction_seconds": 1.5,
        "images_embedded": 50, "images_per_second": None,
        **{k: written[k] for k in ("class_names", "split_names", "dim", "rows", "dtype", "skipped", "fingerprint",
                                   "split_fingerprint")}})
    with FeatureStore(tmp_path / "old.h5") as s:
        m = s.meta
        assert m.version == 0 and m.backbone == "toy" and m.dataset["name"] == "pics" and m.amp is False
        assert m.optimized is None and m.shard is None and m.images_per_second is None and m.extra == {}
        assert m.cost() == (50, 1.5) and m.embedding_rate is None  # its last run's, and the rate as recorded
        assert s.dim == 8 and s.class_names == ["a", "b", "c"] and len(s.split("train")) > 0
    text = info(tmp_path / "old.h5")
    assert "backbone     toy (pypi:toy, weights fingerprint 0123456789abcdef)" in text and "made         2026" in text


def test_store_metadata_keeps_unknown_keys_and_refuses_a_newer_version(tmp_path):
    """Keys this featbench does not know survive a rewrite (as a merge does); a newer version is one line."""
    make_store(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as f:
        meta = json.loads(f.attrs["meta"])
    set_meta(tmp_path / "s.h5", {**meta, "hand_note": "from a notebook"})
    with FeatureStore(tmp_path / "s.h5") as s:
        assert s.meta.extra == {"hand_note": "from a notebook"} and s.meta.backbone == "toy"
        write_store(tmp_path / "copy.h5", dim=8, chunks=[s.embeddings(np.arange(len(s.paths)))], labels=s.labels,
                    paths=s.paths, splits=s.splits, hashes=s.hashes, stamps=s.stamps, skipped=s.skipped,
                    class_names=s.class_names, meta=s.meta)
    with FeatureStore(tmp_path / "copy.h5") as c:
        assert c.meta.extra == {"hand_note": "from a notebook"} and c.meta.version == 1
    set_meta(tmp_path / "s.h5", {**meta, "version": 99})
    with pytest.raises(StoreError, match=r"s\.h5: feature store version 99, newer than this featbench reads \(1\)"):
        FeatureStore(tmp_path / "s.h5")
    set_meta(tmp_path / "s.h5", {k: v for k, v in meta.items() if k != "dim"})
    with pytest.raises(StoreError, match=r"s\.h5: not a featbench feature store \(no dim\)"):
        FeatureStore(tmp_path / "s.h5")


def metrics_record(**changes):
    from features.records import ModelMetrics
    fields = dict(dataset="pics", backbone="toy", backbones=["toy"], head="logreg", model="toy-logreg.skops",
                  refit=False, classes=["cat", "dog"], n_train=6, n_val=2, n_test=2, accuracy=1.0,
                  balanced_accuracy=1.0, log_loss=0.1, ece=0.05, precision={"cat": 1.0, "dog": 1.0},
                  recall={"cat": 1.0, "dog": 0.5}, confusion=[[1, 0], [0, 1]], most_confused=[], top_losses=[],
                  val_log_loss=0.2, val_accuracy=1.0, params={"C": 1.0}, sweep=[], members={}, configurations=3,
                  fit_seconds=0.1, predict_seconds=0.01, features={"toy": "f" * 16}, split_fingerprint="s" * 16,
                  featbench_version="0.1", created="today")
    return ModelMetrics(**{**fields, **changes})


def test_metrics_json_is_flat_and_round_trips(tmp_path):
    from features.records import ModelMetrics
    m = metrics_record()
    flat = m.to_json()
    assert flat["version"] == 1 and flat["precision/cat"] == 1.0 and flat["recall/dog"] == 0.5
    assert "precision" not in flat and not any(isinstance(v, dict) for k, v in flat.items() if "/" in k)
    assert not {"seeds", "seeds_seconds", "out_of_core", "compute", "path", "extra"} & set(flat)  # unset: not written
    (tmp_path / "m.metrics.json").write_text(m.dumps())
    assert ModelMetrics.read(tmp_path / "m.metrics.json") == m
    assert ModelMetrics.from_json(metrics_record(out_of_core=True, seeds={"n": 2}).to_json(), "x") == \
        metrics_record(out_of_core=True, seeds={"n": 2})


def test_old_and_foreign_metrics_files(tmp_path):
    """A metrics file from before the version (and `configurations`) reads as version 0; unknown keys are kept
    and written back; a newer version, a missing key or broken JSON is a one-line error naming the file."""
    from features.records import ModelMetrics
    old = {k: v for k, v in metrics_record().to_json().items() if k not in ("version", "configurations")}
    path = tmp_path / "old.metrics.json"
    path.write_text(json.dumps({**old, "notebook": [1, 2]}))
    m = ModelMetrics.read(path)
    assert m.version == 0 and m.configurations is None and m.precision == {"cat": 1.0, "dog": 1.0}
    assert m.extra == {"notebook": [1, 2]} and m.to_json()["notebook"] == [1, 2] and m.accuracy == 1.0
    no_head = {k: v for k, v in old.items() if k != "head"}
    for text, message in [(json.dumps({**old, "version": 2}), "metrics file version 2, newer than this featbench"),
                          (json.dumps(no_head), "not a featbench metrics file (no head)"),
                          (json.dumps({**old, "version": "2"}), "not a featbench metrics file (version '2')"),
                          (json.dumps([1]), "not a featbench metrics file"),
                          ("{", "not a readable metrics JSON")]:
        path.write_text(text)
        with pytest.raises(FeatbenchError) as e:
            ModelMetrics.read(path)
        assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("key, value, why", [
    ("accuracy", "high", "accuracy 'high' is not float"), ("accuracy", None, "accuracy None is not float"),
    ("log_loss", [1], "log_loss [1] is not float"), ("confusion", "x", "confusion 'x' is not list"),
    ("top_losses", 5, "top_losses 5 is not list"), ("classes", 3, "classes 3 is not list"),
    ("params", [1], "params [1] is not dict"), ("head", 7, "head 7 is not str"),
    ("sweep", {"a": 1}, "sweep {'a': 1} is not list"), ("n_test", "x", "n_test 'x' is not int"),
    ("backbones", "abc", "backbones 'abc' is not list"), ("refit", 1, "refit 1 is not bool"),
])
def test_a_metrics_field_of_another_type_is_one_line_in_report(tmp_path, capsys, key, value, why):
    """A metrics file whose field has another JSON type is refused where it is read, naming the file and field
    (report raised a TypeError, ValueError or AttributeError, or accepted it); null stays fine where None is."""
    from benchmarks.__main__ import main
    from features.cli import run_cli
    from features.records import ModelMetrics
    path = tmp_path / "m.metrics.json"
    path.write_text(json.dumps({**metrics_record().to_json(), "log_loss_raw": None, key: value}))
    assert run_cli(main, ["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and why in err and "re-run the command" in err and err.count("\n") == 1
    assert ModelMetrics.from_json({**metrics_record().to_json(), "log_loss_raw": None, "seeds": None}, "m").seeds is None


def test_info_says_how_the_embeddings_were_made(tmp_path):
    """Readout, precision (int8's calibration), CUDA autocast and GPU decoding: a flip-averaged int8 store does
    not look like a plain fp32 one."""
    from features.__main__ import info
    make_store(tmp_path / "plain.h5")
    assert "  readout      default\n  arithmetic   fp32\n" in info(tmp_path / "plain.h5")
    meta = Extraction(backbone="toy", readout={"tta": "flip"}, precision="int8", amp=True, amp_dtype="bfloat16",
                      gpu_decode=True, calibration={"images": 32, "sha256": "ab" * 32})
    write_store(tmp_path / "made.h5", dim=2, chunks=[np.ones((2, 2), np.float32)], labels=[0, 1], paths=["a", "b"],
                splits=[0, 0], hashes=["", ""], stamps=["", ""], skipped=[], class_names=["x", "y"], meta=meta)
    text = info(tmp_path / "made.h5")
    assert "  readout      tta flip\n" in text
    assert ("  arithmetic   int8 (calibrated on 32 images, sha256 abababababab), CUDA autocast bfloat16, JPEGs "
            "decoded on the GPU\n") in text
    from features.schema import library_versions
    assert {"simplejpeg", "onnxruntime", "onnx"} <= library_versions().keys()  # they decide decoding and int8


def test_metadata_types_take_no_bool_for_a_number():
    """bool is an int to Python: `rows: true` or `dim: true` (which matched 1-wide embeddings) passed as numbers."""
    from features.records import StoreMeta
    good = StoreMeta(rows=2, dim=4, dtype="float32", class_names=["a"], split_names=["train"], skipped=0,
                     fingerprint="f", split_fingerprint="s").to_json()
    StoreMeta.from_json(good, "s.h5").check_types("s.h5")
    for key in ("rows", "dim", "extraction_seconds"):
        with pytest.raises(StoreError, match=f"{key} True is not"):
            StoreMeta.from_json({**good, key: True}, "s.h5").check_types("s.h5")
