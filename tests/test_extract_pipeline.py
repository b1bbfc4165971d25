"""End-to-end extraction: the store's contents, resume after kill -9, reuse, hostile files, lock, CLI."""
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from test_images import BAD, hostile_files

from extract import pipeline
from extract.backbones import create_backbone
from extract.datasets import load_dataset
from extract.device import pick_device
from extract.pipeline import Options, _end_with_parent, _known_rows, _provenance, extract
from features import FeatureStore, Journal
from features.errors import FeatbenchError

from conftest import DOGS_VS_CATS, needs, write_image

QUIET = Options(progress=False, batch_size=8, workers=0)


@pytest.fixture(scope="module")
def tiny():
    return create_backbone("resnet10t", random_init=True)


def run(folder, out, backbone, **kw):
    return extract(load_dataset(folder), backbone, out, options=Options(**{**QUIET.__dict__, **kw}))


def contents(path: Path) -> dict:
    with FeatureStore(path) as s:
        return {"X": s.embeddings(np.arange(len(s.paths))), "paths": s.paths, "labels": s.labels.tolist(),
                "splits": s.splits.tolist(), "hashes": s.hashes, "stamps": s.stamps, "skipped": s.skipped}


def assert_same(a: dict, b: dict):
    assert {k: v for k, v in a.items() if k != "X"} == {k: v for k, v in b.items() if k != "X"}
    np.testing.assert_allclose(a["X"], b["X"], rtol=0, atol=1e-6)


def test_store_holds_everything(dvc_folder, tmp_path, tiny):
    summary = run(dvc_folder, tmp_path / "out", tiny)
    assert summary.embedded == 24 and summary.path == tmp_path / "out" / "dvc" / "resnet10t-random-init.h5"
    with FeatureStore(summary.path) as s:
        assert s.backbone == "resnet10t" and s.class_names == ["cat", "dog"] and s.dim == tiny.dim
        assert s.meta.weights["random_init"] is True and s.meta.preprocess["size"] == tiny.preprocess.size
        assert s.meta.versions["torch"] and s.meta.images_per_second > 0
        train, val, test = s.split("train"), s.split("val"), s.split("test")
        assert len(train) + len(val) + len(test) == 24 and train.X.dtype == np.float32
        assert sorted(train.paths + val.paths + test.paths) == sorted(p.name for p in dvc_folder.iterdir())
        assert all(s.class_names[y] == p.split(".")[0] for y, p in zip(train.y, train.paths))


def test_an_out_inside_the_dataset_or_a_folder_at_the_store_path_is_refused_first(dvc_folder, tmp_path, tiny):
    with pytest.raises(FeatbenchError, match=r"lies inside the dataset folder .*pass an --out outside it"):
        run(dvc_folder, dvc_folder / "runs", tiny)
    assert not (dvc_folder / "runs").exists() and len(load_dataset(dvc_folder).items) == 24
    (tmp_path / "out" / "dvc" / "resnet10t-random-init.h5").mkdir(parents=True)
    for overwrite in False, True:  # a folder where the store goes: --overwrite would not help either
        with pytest.raises(FeatbenchError, match="random-init.h5: a folder is where this file goes; move it away"):
            run(dvc_folder, tmp_path / "out", tiny, overwrite=overwrite)
    with pytest.raises(FeatbenchError, match="random-init.h5: a folder is where this file goes"):  # the merge's
        extract(load_dataset(dvc_folder), tiny, tmp_path / "out", options=QUIET, shard=(0, 2))
    assert sorted(p.name for p in (tmp_path / "out" / "dvc").iterdir()) == ["resnet10t-random-init.h5"]


def test_rerun_does_nothing_and_new_images_only_are_embedded(dvc_folder, tmp_path, tiny):
    first = run(dvc_folder, tmp_path / "out", tiny)
    before = contents(first.path)
    again = run(dvc_folder, tmp_path / "out", tiny)
    assert again.embedded == 0 and again.reused == 24
    assert_same(before, contents(first.path))
    write_image(dvc_folder / "cat.100.jpg", 500)
    write_image(dvc_folder / "dog.100.jpg", 501)
    more = run(dvc_folder, tmp_path / "out", tiny)
    assert more.embedded == 2 and more.rows == 26
    fresh = run(dvc_folder, tmp_path / "fresh", tiny)
    assert_same(contents(more.path), contents(fresh.path))


def batch_clock(monkeypatch, overhead: float, per_batch: float) -> SimpleNamespace:
    """The runs' clock (`pipeline.time`): `overhead` seconds pass while a run settles what is known (listing,
    hashing), `per_batch` while each batch is embedded, and none otherwise; returned to change them."""
    clock = SimpleNamespace(now=0.0, overhead=overhead, per_batch=per_batch)
    pending, batches = pipeline._pending, pipeline.embed_batches

    def settle(*args):
        clock.now += clock.overhead
        return pending(*args)

    def embed(*args, **kw):
        for batch in batches(*args, **kw):
            clock.now += clock.per_batch
            yield batch
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    monkeypatch.setattr(pipeline, "_pending", settle)
    monkeypatch.setattr(pipeline, "embed_batches", embed)
    return clock


def test_extraction_seconds_are_every_run_that_embedded_rows(dvc_folder, tmp_path, tiny, monkeypatch):
    """A re-run that embeds 2 new images adds its seconds to the store's cost, and one that embeds none adds
    nothing: the report's extraction time is what the store's rows cost, never rows / the last run's rate."""
    from benchmarks.report import _extract_seconds
    clock = batch_clock(monkeypatch, overhead=0.0, per_batch=0.0)

    def timed(seconds: float):  # the run takes `seconds` before it embeds anything
        clock.overhead = seconds
        summary = run(dvc_folder, tmp_path / "out", tiny)
        with FeatureStore(summary.path) as s:
            return summary, s.meta

    done, first = timed(20.0)  # 24 images in 20 s
    assert first.cost() == (24, 20.0) and _extract_seconds(first) == 20.0
    with h5py.File(done.path, "r+") as f:  # as a store from before the totals: its last run starts them
        f.attrs["meta"] = json.dumps({k: v for k, v in json.loads(f.attrs["meta"]).items() if "total" not in k})
    write_image(dvc_folder / "cat.100.jpg", 500)
    write_image(dvc_folder / "dog.100.jpg", 501)
    more, meta = timed(6.0)  # 2 more in 6 s, model preparation mostly
    assert more.embedded == 2 and meta.extraction_seconds == 6.0 and meta.images_per_second == round(2 / 6, 2)
    assert _extract_seconds(meta) == 26.0  # 26 rows embedded in 26 s; not 26 / (2 / 6) = 78 s
    (dvc_folder / "dog.100.jpg").unlink()
    fewer, meta = timed(5.0)  # embeds nothing, rewrites the store without the row
    assert fewer.embedded == 0 and fewer.rows == 25 and _extract_seconds(meta) == 25.0
    again, meta = timed(4.0)  # nothing to do: the store is not rewritten
    assert again.embedded == 0 and _extract_seconds(meta) == 25.0


def test_float16_store(dvc_folder, tmp_path, tiny):
    s = run(dvc_folder, tmp_path / "out", tiny, dtype="float16")
    assert s.path.name.endswith("-f16.h5")
    with h5py.File(s.path) as f:
        assert f["embeddings"].dtype == np.float16


def test_hostile_files_on_disk_are_embedded_or_skipped(dvc_folder, tmp_path, tiny):
    names = {}
    for k, (name, data) in enumerate(hostile_files().items()):
        (dvc_folder / f"cat.{200 + k}.jpg").write_bytes(data)
        names[f"cat.{200 + k}.jpg"] = name
    for k, (name, (data, _)) in enumerate(BAD.items()):
        (dvc_folder / f"dog.{300 + k}.jpg").write_bytes(data)
        names[f"dog.{300 + k}.jpg"] = name
    (dvc_folder / "notes.txt").write_text("not part of the dataset")
    summary = run(dvc_folder, tmp_path / "out", tiny)
    skipped = dict(summary.skipped)
    assert {names[p] for p in skipped if p in names} == set(BAD)
    for path, why in skipped.items():  # each kind of bad file keeps its own reason
        if path in names:
            assert re.fullmatch(f".*({BAD[names[path]][1]}).*", why), (names[path], why)
    assert "notes.txt" in skipped and "no label" in skipped["notes.txt"]
    assert summary.rows == 24 + len(hostile_files())
    assert f"{len(skipped)} skipped" in summary.line()
    with FeatureStore(summary.path) as s:
        assert {p for p, *_ in s.skipped} == set(skipped)
        assert np.isfinite(s.embeddings(np.arange(summary.rows))).all()


def test_skip_reasons_say_why(dvc_folder, tmp_path, tiny, monkeypatch):
    """Too large, unreadable and vanished files are skipped, each with its own reason in the store."""
    from PIL import Image
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(dvc_folder / "cat.90.jpg")
    write_image(dvc_folder / "dog.91.jpg", 91)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15000)  # 200×200 is over twice that: refused as a bomb
    real = os.open
    monkeypatch.setattr(os, "open", lambda path, *a: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if Path(path).name == "dog.91.jpg" else real(path, *a))
    summary = run(dvc_folder, tmp_path / "out", tiny)
    with FeatureStore(summary.path) as s:
        why = {p: reason for p, reason, *_ in s.skipped}
    assert why.keys() == {"cat.90.jpg", "dog.91.jpg"}
    assert "decompression bomb" in why["cat.90.jpg"] and "Permission denied" in why["dog.91.jpg"]


def test_nothing_embeddable_is_one_line_with_the_reasons_and_leaves_no_journal(dvc_folder, tmp_path, tiny,
                                                                               monkeypatch):
    """Every image corrupt: one line counting the reasons and naming the first, and no journal left behind (it
    held skips alone, judged again on every run). A journal holding an interrupted run's embeddings is kept,
    so that they are reused once the files read again."""
    originals = {p: p.read_bytes() for p in dvc_folder.iterdir()}
    for p in originals:
        p.write_bytes(b"" if p.name.startswith("dog") else b"not an image")
    journal = Journal(tmp_path / "out" / "dvc" / "resnet10t-random-init.h5").dir
    with pytest.raises(FeatbenchError) as err:
        run(dvc_folder, tmp_path / "out", tiny)
    assert str(err.value) == (f"{dvc_folder}: none of the 24 images could be embedded (12 empty file; 12 not an "
                              "image PIL can read; first: cat.0.jpg: not an image PIL can read); check --data")
    assert not journal.exists()

    for p, data in originals.items():
        p.write_bytes(data)
    monkeypatch.setattr(pipeline, "write_store", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # killed once every batch is in the journal
        run(dvc_folder, tmp_path / "out", tiny)
    monkeypatch.undo()
    for p in originals:
        p.write_bytes(b"")
    with pytest.raises(FeatbenchError, match="none of the 24 images could be embedded"):
        run(dvc_folder, tmp_path / "out", tiny)
    assert journal.is_dir()
    for p, data in originals.items():
        p.write_bytes(data)
    assert run(dvc_folder, tmp_path / "out", tiny).reused == 24


def test_a_class_with_no_embedded_image_is_named_in_a_warning(tmp_path, tiny, capsys):
    """A class whose every image is skipped stays in the class list (labels are indices into it, shared by the
    dataset's stores of every backbone), and the run warns that no model can learn it, on every run."""
    root = tmp_path / "fruit"
    (root / "plums").mkdir(parents=True)
    for i in range(3):
        write_image(root / "apples" / f"{i}.jpg", i)
        write_image(root / "pears" / f"{i}.jpg", 10 + i)
        (root / "plums" / f"{i}.jpg").write_bytes(b"not an image")
    warning = ("warning: {}: none of the 3 images of class 'plums' could be embedded (3 not an image PIL can "
               "read); it stays in the class list, so labels keep their indices, but no model can learn it: fix "
               "its images or take them out of the dataset\n")
    for _ in range(2):
        summary = run(root, tmp_path / "out", tiny)
        assert capsys.readouterr().err == warning.format(summary.path)
    with FeatureStore(summary.path) as s:
        assert s.class_names == ["apples", "pears", "plums"] and sorted(set(s.labels.tolist())) == [0, 1]


def test_another_max_image_bytes_applies_to_stored_rows_too(dvc_folder, tmp_path, tiny, capsys):
    """The store records --max-image-bytes; a run with another cap applies it to every file, the stored rows too,
    with a note, so that the store is the one a fresh run with that cap writes, whatever ran before."""
    write_image(dvc_folder / "cat.0.jpg", 0, size=(400, 300))  # about 200 KB; the others about 5 KB
    first = run(dvc_folder, tmp_path / "out", tiny)
    assert first.rows == 24
    with FeatureStore(first.path) as s:
        assert s.meta.max_image_bytes == 256 * 2**20
    capsys.readouterr()
    lowered = run(dvc_folder, tmp_path / "out", tiny, max_image_bytes=100_000)
    assert (lowered.rows, lowered.embedded) == (23, 0)
    assert lowered.skipped == [("cat.0.jpg", "larger than the 100000 bytes cap (--max-image-bytes)")]
    assert capsys.readouterr().err == (f"note: {first.path}: --max-image-bytes changes from 256 MiB to 100000 bytes: "
                                       "1 stored image over it is skipped now, and files skipped as over the old "
                                       "cap are read again\n")
    fresh = run(dvc_folder, tmp_path / "fresh", tiny, max_image_bytes=100_000)
    assert_same(contents(fresh.path), contents(lowered.path))
    with FeatureStore(lowered.path) as s:
        assert s.meta.max_image_bytes == 100_000
    raised = run(dvc_folder, tmp_path / "out", tiny)
    assert (raised.rows, raised.embedded, raised.skipped) == (24, 1, [])
    assert_same(contents(first.path), contents(raised.path))


def test_unreadable_journal_provenance_keeps_the_journal_aside(dvc_folder, tmp_path, tiny, capsys):
    path = tmp_path / "out" / "dvc" / "resnet10t-random-init.h5"
    journal = Journal(path)
    journal.append(["cat.0.jpg"], ["0:0"], ["h"], [""], np.full((1, tiny.dim), 7, np.float32))  # stale part
    (journal.dir / "provenance.json").write_text('{"backbone": "resn')  # cut short
    summary = run(dvc_folder, tmp_path / "out", tiny)
    assert summary.embedded == 24 and not journal.dir.exists()
    assert (tmp_path / "out" / "dvc" / "resnet10t-random-init.h5.partial-1" / "part-0000000.npy").is_file()
    assert "1 embeddings were made with other settings (unknown: its provenance.json does not read)" in \
        capsys.readouterr().err
    assert_same(contents(summary.path), contents(run(dvc_folder, tmp_path / "fresh", tiny).path))


def test_effective_amp_decides_reuse(dvc_folder, tmp_path, tiny):
    """Rows embedded on CPU in fp32 are reused on CPU, never under CUDA autocast (fp16 or bf16); an fp32 store
    records `amp: false` and no type, as before the type was kept."""
    summary = run(dvc_folder, tmp_path / "out", tiny)
    journal = Journal(summary.path)
    fp32, fp16, bf16 = (_provenance(tiny, amp=a) for a in (None, "float16", "bfloat16"))
    assert fp32["amp"] is False and "amp_dtype" not in fp32 and fp16["amp"] is True and fp16 != bf16
    known, store = _known_rows(summary.path, journal, fp32, overwrite=False)
    assert store is not None and len(known) == 24 and store.meta.amp_dtype is None
    store.close()
    for amp in (fp16, bf16):
        known, store = _known_rows(summary.path, journal, amp, overwrite=False)
        assert store is None and not known
    journal.start(fp32, {"root": str(dvc_folder)})
    journal.append(["cat.0.jpg"], ["0:0"], ["h"], [""], np.zeros((1, tiny.dim), np.float32))
    assert _known_rows(tmp_path / "none.h5", journal, fp16, overwrite=False) == ({}, None)
    assert not journal.dir.exists()  # parts of another precision are kept aside
    assert Path(f"{journal.dir}-1").is_dir()


def interrupt_after_two_batches(folder: Path, out: Path, backbone, monkeypatch) -> Path:
    """Run an extraction killed (Ctrl-C) once two batches are in its journal; returns the journal's folder. Only
    its own patch is undone after (a test's clock stays)."""
    append, calls = Journal.append, []

    def crash_after_two_batches(self, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return append(self, *args)
    with monkeypatch.context() as patched:
        patched.setattr(Journal, "append", crash_after_two_batches)
        with pytest.raises(KeyboardInterrupt):
            run(folder, out, backbone)
    return Journal(out / folder.name / "resnet10t-random-init.h5").dir


def test_a_resume_counts_the_killed_runs_measured_seconds(dvc_folder, tmp_path, tiny, monkeypatch):
    """A killed run's journal parts record the seconds they took, so the store that a resume writes counts every
    image with the seconds that embedded it: not the resume's own 8 images extrapolated to 24 (its overhead
    three times), nor, when every row comes from the journal, no cost at all."""
    from benchmarks.report import _extract_seconds
    batch_clock(monkeypatch, overhead=2.0, per_batch=4.0)
    interrupt_after_two_batches(dvc_folder, tmp_path / "out", tiny, monkeypatch)  # 16 images in 2 + 4 + 4 s
    resumed = run(dvc_folder, tmp_path / "out", tiny)  # 8 more in 2 + 4 s
    assert (resumed.embedded, resumed.reused) == (8, 16)
    with FeatureStore(resumed.path) as s:
        assert s.meta.cost() == (24, 16.0) and s.meta.embedding_rate == 1.5 and _extract_seconds(s.meta) == 16.0
        assert (s.meta.images_embedded, s.meta.extraction_seconds) == (8, 6.0)  # the resume's own

    with monkeypatch.context() as patched:  # killed once every batch is in the journal: 24 images in 2 + 3 × 4 s
        patched.setattr(pipeline, "write_store", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run(dvc_folder, tmp_path / "all", tiny)
    resumed = run(dvc_folder, tmp_path / "all", tiny)  # embeds nothing
    assert (resumed.embedded, resumed.reused) == (0, 24)
    with FeatureStore(resumed.path) as s:
        assert s.meta.cost() == (24, 14.0) and _extract_seconds(s.meta) == 14.0
        assert s.meta.images_embedded == 0 and s.meta.images_per_second is None  # this run embedded none

    with monkeypatch.context() as patched:  # killed after writing its store, before clearing its journal
        patched.setattr(Journal, "clear", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run(dvc_folder, tmp_path / "cleared", tiny)
    assert Journal(resumed.path).parts() == []
    again = run(dvc_folder, tmp_path / "cleared", tiny)  # its journal's rows are the store's: not paid twice
    with FeatureStore(again.path) as s:
        assert s.meta.cost() == (24, 14.0)


def test_a_journal_made_otherwise_is_kept_aside_with_a_note(dvc_folder, tmp_path, tiny, monkeypatch, capsys):
    """An interrupted run's journal made with other settings (a CUDA run's AMP, resumed on CPU) is not resumed
    from, nor deleted: it is kept aside under another name, and a note names it, its embeddings and what differs."""
    journal = interrupt_after_two_batches(dvc_folder, tmp_path / "out", tiny, monkeypatch)
    made = json.loads((journal / "provenance.json").read_text())
    (journal / "provenance.json").write_text(json.dumps({**made, "amp": True, "amp_dtype": "float16"}))
    parts = sorted(p.name for p in journal.iterdir())
    capsys.readouterr()
    resumed = run(dvc_folder, tmp_path / "out", tiny)
    assert (resumed.embedded, resumed.reused) == (24, 0) and not journal.exists()
    aside = journal.with_name(journal.name + "-1")
    assert sorted(p.name for p in aside.iterdir()) == parts
    assert capsys.readouterr().err == (
        f"note: {journal}: an interrupted run's 16 embeddings were made with other settings (amp true → false, "
        f"amp_dtype \"float16\" → none); kept aside as {aside}: to resume from them, move it back to {journal} and "
        "re-run with those settings\n")


def pets_folder(root: Path, seed: int) -> Path:
    for i in range(4):
        write_image(root / f"cat.{i}.jpg", seed + i)
        write_image(root / f"dog.{i}.jpg", seed + 50 + i)
    return root


def test_two_datasets_with_one_name_do_not_share_a_store(tmp_path, tiny, monkeypatch):
    """A/pets/train and B/pets/train are both `pets-train`: extracting B into the same --out is refused with
    one line naming both folders (the store, or the journal of an interrupted extraction, of A), and A's
    store is left as it was; A through a symlink is A, and so is a copy of A and its stores made together;
    `--name` stores B apart."""
    a = pets_folder(tmp_path / "A" / "pets" / "train", 0)
    b = pets_folder(tmp_path / "B" / "pets" / "train", 200)
    first = run(a, tmp_path / "out", tiny)
    assert first.path == tmp_path / "out" / "pets-train" / "resnet10t-random-init.h5"
    with FeatureStore(first.path) as s:
        assert (s.meta.dataset["root"], s.meta.dataset["root_from_store"]) == (str(a), "../../A/pets/train")
    (tmp_path / "copy").mkdir()
    for folder in ("A", "out"):
        shutil.copytree(tmp_path / folder, tmp_path / "copy" / folder)
    assert run(tmp_path / "copy" / "A" / "pets" / "train", tmp_path / "copy" / "out", tiny).reused == 8
    written = first.path.read_bytes()
    with pytest.raises(FeatbenchError) as err:
        run(b, tmp_path / "out", tiny)
    assert str(err.value) == (f"{first.path}: made from {a}, not {b} (two datasets with one name); pass --name NAME "
                              f"to give this dataset its own stores, or delete {first.path} if the dataset moved")
    assert first.path.read_bytes() == written
    (tmp_path / "link").symlink_to(tmp_path / "A")
    assert run(tmp_path / "link" / "pets" / "train", tmp_path / "out", tiny).reused == 8
    apart = extract(load_dataset(b, name="pets-b"), tiny, tmp_path / "out", options=QUIET)
    assert apart.embedded == 8 and apart.path.parent.name == "pets-b"

    append = Journal.append

    def interrupted(self, *args):
        append(self, *args)
        raise KeyboardInterrupt
    monkeypatch.setattr(Journal, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(a, tmp_path / "resumed", tiny)
    monkeypatch.undo()
    journal = tmp_path / "resumed" / "pets-train" / "resnet10t-random-init.h5.partial"
    with pytest.raises(FeatbenchError, match=rf"^{re.escape(str(journal))}: made from {re.escape(str(a))}, not "):
        run(b, tmp_path / "resumed", tiny)
    assert run(a, tmp_path / "resumed", tiny).embedded == 0


def test_an_oxford_pets_folder_and_its_images_folder_are_one_dataset(tmp_path, tiny):
    """`--data pets` (the release's layout, images in images/) and `--data pets/images` are both `pets-breed`:
    one dataset, with one root, the same paths and splits, so the second run reuses every row of the first."""
    for i in range(4):
        write_image(tmp_path / "pets" / "images" / f"Bengal_{i}.jpg", i)
        write_image(tmp_path / "pets" / "images" / f"pug_{i}.jpg", 50 + i)
    (tmp_path / "pets" / "annotations").mkdir()
    first = run(tmp_path / "pets", tmp_path / "out", tiny)
    second = run(tmp_path / "pets" / "images", tmp_path / "out", tiny)
    assert first.path == second.path == tmp_path / "out" / "pets-breed" / "resnet10t-random-init.h5"
    assert (second.embedded, second.reused) == (0, 8)
    with FeatureStore(second.path) as s:
        assert s.meta.dataset["root"] == str((tmp_path / "pets" / "images").resolve())
        assert s.paths == sorted(f"{b}_{i}.jpg" for b in ("Bengal", "pug") for i in range(4))
    assert run(tmp_path / "pets", tmp_path / "out", tiny).reused == 8


def test_a_damaged_block_alone_is_re_embedded(dvc_folder, tmp_path, tiny, monkeypatch, capsys):
    """Values written over a store's rows (NaN, and 1e30, which is finite) fail their block's checksum: a
    re-run re-embeds that block only, and the store is then bit for bit the one a clean run writes."""
    import features.writer
    from features.reader import verify
    monkeypatch.setattr(features.writer, "CHUNK_BYTES", 8 * tiny.dim * 4)  # blocks of 8 rows: one batch each
    clean = run(dvc_folder, tmp_path / "clean", tiny).path
    path = run(dvc_folder, tmp_path / "out", tiny).path
    with h5py.File(path, "r+") as f:
        f["embeddings"][9, 0] = np.nan
        f["embeddings"][12, 5] = 1e30
    assert verify(path)[0] is False
    again = run(dvc_folder, tmp_path / "out", tiny)
    assert (again.embedded, again.reused, again.rows) == (8, 16, 24)
    assert f"note: {path}: 8 damaged rows (rows 8-15; first cat.6.jpg); re-embedding them" in capsys.readouterr().err
    assert verify(path) == (True, f"{path}: OK (24 rows)")
    with FeatureStore(path) as s, FeatureStore(clean) as c:
        assert s.fingerprint == c.fingerprint and s.meta.split_fingerprint == c.meta.split_fingerprint
    with h5py.File(path) as f, h5py.File(clean) as g:
        assert f["embeddings"][:].tobytes() == g["embeddings"][:].tobytes()
        assert f["checksums"][:].tolist() == g["checksums"][:].tolist()


def test_a_damaged_journal_part_is_re_embedded(dvc_folder, tmp_path, tiny, monkeypatch, capsys):
    """An interrupted run's part whose rows changed on disk is not resumed from: its images are embedded again."""
    clean = contents(run(dvc_folder, tmp_path / "clean", tiny).path)
    part = interrupt_after_two_batches(dvc_folder, tmp_path / "out", tiny, monkeypatch) / "part-0000001.npy"
    rows = np.load(part)
    rows[3, 7] = 1e30
    np.save(part, rows)
    resumed = run(dvc_folder, tmp_path / "out", tiny)
    assert (resumed.embedded, resumed.reused) == (16, 8)
    assert "1 parts of" in capsys.readouterr().err
    assert_same(clean, contents(resumed.path))


@pytest.mark.parametrize("record", ["", "{\"paths\": [\"cat.0.jpg\"]}", "[1, 2]",
                                    '{"paths": [[1]], "stamps": [""], "hashes": [""], "reasons": [""]}'])
def test_a_journal_part_whose_record_does_not_read_is_re_embedded(dvc_folder, tmp_path, tiny, monkeypatch, capsys,
                                                                    record):
    """An interrupted run's part whose JSON record is empty or malformed counts as damaged: its images are embedded
    again, with a note, not a traceback on every re-run."""
    clean = contents(run(dvc_folder, tmp_path / "clean", tiny).path)
    journal = interrupt_after_two_batches(dvc_folder, tmp_path / "out", tiny, monkeypatch)
    (journal / "part-0000000.json").write_text(record)
    resumed = run(dvc_folder, tmp_path / "out", tiny)
    assert (resumed.embedded, resumed.reused) == (16, 8)
    assert f"note: 1 parts of {journal} are damaged (first part-0000000.json); re-embedding their images" in \
        capsys.readouterr().err
    assert_same(clean, contents(resumed.path))


def test_file_vanishing_mid_run_is_skipped(dvc_folder, tmp_path, tiny, monkeypatch):
    ds = load_dataset(dvc_folder)
    (dvc_folder / "cat.0.jpg").unlink()  # listed, then gone before it is read
    s = extract(ds, tiny, tmp_path / "out", options=QUIET)
    assert dict(s.skipped)["cat.0.jpg"].startswith("unreadable file")


def test_device_index_beyond_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(FeatbenchError, match=r"--device cuda:7: only 2 CUDA GPUs visible \(cuda:0\.\.cuda:1\)") as err:
        pick_device("cuda:7")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FeatbenchError, match=r"^--device cuda:9: no CUDA GPU visible to torch; use --device cpu$"):
        pick_device("cuda:9")  # as given, not "--device cuda"


CLI = [sys.executable, "-m", "extract", "--backbone", "resnet18", "--random-init", "--batch-size", "4",
       "--workers", "0", "--quiet"]


def test_kill_9_mid_run_then_resume_gives_identical_store(tmp_path):
    folder = tmp_path / "pics"
    for i in range(64):
        write_image(folder / f"{'cat' if i % 2 else 'dog'}.{i}.jpg", i, size=(120, 90))
    ref = subprocess.run(CLI + ["--data", str(folder), "--out", str(tmp_path / "ref")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "resumed"
    journal = out / "pics" / "resnet18-random-init.h5.partial"
    proc = subprocess.Popen(CLI + ["--data", str(folder), "--out", str(out)], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (journal / "part-0000003.json").exists():
        assert proc.poll() is None and time.time() < deadline, "extraction ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "pics" / "resnet18-random-init.h5").exists()
    done_before = len(list(journal.glob("part-*.json")))
    resumed = subprocess.run(CLI + ["--data", str(folder), "--out", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    embedded = int(resumed.stdout.split("(")[1].split(" embedded")[0])
    assert embedded == 64 - 4 * done_before
    assert not journal.exists()
    assert_same(contents(tmp_path / "ref" / "pics" / "resnet18-random-init.h5"),
                contents(out / "pics" / "resnet18-random-init.h5"))


# two embedding workers, each batch's features (40 × 512 float32) more than a pipe holds
WORKERS = [sys.executable, "-m", "extract", "--backbone", "resnet10t", "--random-init", "--batch-size", "40",
           "--workers", "2", "--quiet"]
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="worker processes are watched through /proc")


def _pics(folder: Path, n: int) -> Path:
    for i in range(n):
        write_image(folder / f"{'cat' if i % 2 else 'dog'}.{i}.jpg", i, size=(120, 90))
    return folder


def _stat(pid) -> list[str]:
    """/proc/PID/stat from field 3 (state) on: [0] state, [1] parent pid, [19] start time."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of the processes whose parent is `pid`."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = _stat(stat.parent.name)
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append((int(stat.parent.name), fields[19]))
    return out


def _running(procs) -> list[int]:
    """Those of `procs` (pid, start time) that are still running or sleeping."""
    alive = []
    for pid, start in procs:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        if fields[19] == start and fields[0] not in "ZX":
            alive.append(pid)
    return alive


def _workers_once_committed(proc, journal: Path) -> list[tuple[int, str]]:
    """Wait for the run's first committed batch (the others are in the workers' hands); its workers."""
    deadline = time.time() + 120
    while not (journal / "part-0000000.json").exists():
        assert proc.poll() is None and time.time() < deadline, "extraction ended before it could be stopped"
        time.sleep(0.02)
    return _children(proc.pid)


@linux_only
def test_workers_die_with_a_killed_main_process(tmp_path):
    """SIGKILL of the main process (the OOM killer) ends its workers within seconds: before, each
    finished its batch, then slept for ever waiting to send it."""
    folder = _pics(tmp_path / "pics", 160)
    out = tmp_path / "out"
    proc = subprocess.Popen(WORKERS + ["--data", str(folder), "--out", str(out)], stderr=subprocess.DEVNULL)
    workers = []
    try:
        workers = _workers_once_committed(proc, out / "pics" / "resnet10t-random-init.h5.partial")
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        while _running(workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not _running(workers)
    finally:
        proc.kill()
        for pid in _running(workers):
            os.kill(pid, signal.SIGKILL)


@linux_only
def test_sigterm_ends_the_run_as_ctrl_c_does_and_it_resumes(tmp_path):
    folder = _pics(tmp_path / "pics", 120)
    out = tmp_path / "out"
    journal = out / "pics" / "resnet10t-random-init.h5.partial"
    cmd = WORKERS + ["--data", str(folder), "--out", str(out)]
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(cmd, stderr=err)
    workers = []
    try:
        workers = _workers_once_committed(proc, journal)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
        for pid in _running(workers):
            os.kill(pid, signal.SIGKILL)
    interrupted = "interrupted: finished work is saved; re-run the same command to resume\n"
    assert (tmp_path / "stderr").read_text() == interrupted
    assert len(workers) == 2 and not _running(workers)
    done = len(list(journal.glob("part-*.json")))
    assert done >= 1 and not (out / "pics" / "resnet10t-random-init.h5").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"120 images stored ({120 - 40 * done} embedded, {40 * done} reused)" in resumed.stdout
    assert not journal.exists()


@linux_only
def test_a_worker_whose_main_process_is_gone_exits_at_start():
    """`_end_with_parent` in a real child: it stays while the main process is its parent (fork) or
    grandparent (forkserver), and exits at once when the main process is neither (it died first)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    for method, main, code in [("fork", os.getpid(), 0), ("forkserver", os.getpid(), 0), ("fork", dead.pid, 1)]:
        child = multiprocessing.get_context(method).Process(target=_end_with_parent, args=(main, 0))
        child.start()
        child.join(60)
        assert child.exitcode == code, (method, child.exitcode)


HELD = """import sys
import extract.pipeline as pipeline
from extract.__main__ import main
from features.cli import run_cli
fifo, load = sys.argv.pop(1), pipeline.load

def held(data, pre):
    with open(fifo, "rb") as f:  # blocks until the test opens the FIFO for writing, then until it closes it
        f.read()
    pipeline.load = load
    return load(data, pre)
pipeline.load = held
sys.exit(run_cli(main, sys.argv[1:]))
"""


def test_second_extraction_process_refused_by_lock(tmp_path):
    """Two real `python -m extract` runs on one store: the second exits 2 with the lock message.

    The first (`HELD`) is held inside its lock by its first decode, which reads a FIFO until the test
    closes it after the second run, so the overlap does not depend on timing (a listed FIFO is skipped unread).
    """
    for i in range(7):
        write_image(tmp_path / f"{i}.jpg", i)
    fifo = tmp_path / "held"
    os.mkfifo(fifo)
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{i}.jpg,{'ab'[i % 2]}\n" for i in range(7)))
    cmd = CLI + ["--data", str(tmp_path / "list.csv"), "--out", str(tmp_path / "out")]
    first = subprocess.Popen([sys.executable, "-c", HELD, str(fifo), *cmd[3:]], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:  # opening the FIFO for writing succeeds once the first process reads it, inside the lock
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert first.poll() is None and time.time() < deadline, "the first run never read the FIFO"
                time.sleep(0.05)
        second = subprocess.run(cmd, capture_output=True, text=True)
        os.close(fd)
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert "another extraction is writing this store right now" in second.stderr
    assert first.returncode == 0, err
    with FeatureStore(tmp_path / "out" / "list" / "resnet18-random-init.h5") as s:
        assert len(s.paths) == 7 and np.isfinite(s.embeddings(np.arange(7))).all()


def test_second_writer_refused_before_loading_the_backbone(dvc_folder, tmp_path, monkeypatch, capsys):
    """The store's lock is taken before the weights load: a second writer fails fast, with the lock's line."""
    from dataclasses import replace

    from extract import backbones
    from extract.__main__ import main
    from features.cli import run_cli
    from features.writer import store_lock
    spec = backbones.REGISTRY["resnet18"]
    monkeypatch.setitem(backbones.REGISTRY, "resnet18",
                        replace(spec, arch=lambda: pytest.fail("the backbone was loaded before the lock")))
    store = tmp_path / "out" / "dvc" / "resnet18-random-init.h5"
    store.parent.mkdir(parents=True)
    with store_lock(store):
        assert run_cli(main, ["--data", str(dvc_folder), "--backbone", "resnet18", "--random-init", "--out",
                              str(tmp_path / "out"), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: {store}: another extraction is writing this store right now; wait "
                                       f"for it to finish (or remove {store}.lock if no featbench process is running)\n")


def test_cli_errors_are_one_line(tmp_path, dvc_folder, monkeypatch, capsys):
    """In process (a subprocess spent 6 s a case importing torch)."""
    from extract.__main__ import main
    from features.cli import run_cli
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "readme.txt").write_text("no images here")
    (tmp_path / "typo.toml").write_text('[datset]\npath = "odd"\n')
    (tmp_path / "none.toml").write_text('[benchmark]\nbackbones = ["resnet18"]\n')
    for args, expected in [(["--data", str(tmp_path / "missing")], "no such dataset folder"),
                           ([], "no dataset configured: pass --data PATH or write a [dataset] path in "
                                "./featbench.toml"),
                           (["--config", "none.toml"], "write a [dataset] path in none.toml"),
                           (["--config", "typo.toml"], "typo.toml: unknown table or key 'datset' at the top; a "
                                                       "config holds [dataset], [benchmark], [[finetune]] and [curve]"),
                           (["--data", str(tmp_path / "odd")], "odd: no image files in this folder or its"),
                           (["--data", str(dvc_folder), "--backbone", "nope_net"], "unknown backbone"),
                           (["--data", str(dvc_folder), "--batch-size", "0"], "--batch-size must be")]:
        rc = run_cli(main, ["--backbone", "resnet18", "--random-init", *args])
        err = capsys.readouterr().err
        assert rc == 2 and expected in err and err.count("\n") == 1, err


def test_cli_list_backbones_and_config_file(dvc_folder, tmp_path):
    r = subprocess.run([sys.executable, "-m", "extract", "--list-backbones"], capture_output=True, text=True)
    assert r.returncode == 0 and "mobilenet_v2" in r.stdout and "1280" in r.stdout and "weights here" in r.stdout
    (tmp_path / "featbench.toml").write_text(f'[dataset]\npath = "{dvc_folder}"\nout = "stores"\n')
    r = subprocess.run(CLI, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "stores" / "dvc" / "resnet18-random-init.h5").is_file()
    info = subprocess.run([sys.executable, "-m", "features", "info",
                           str(tmp_path / "stores" / "dvc" / "resnet18-random-init.h5")], capture_output=True, text=True)
    assert info.returncode == 0 and "24 x 512 float32" in info.stdout


@pytest.mark.slow
@needs(DOGS_VS_CATS)
def test_real_photos_with_real_weights(tmp_path):
    from test_backbones import real
    bb = real("mobilenet_v2")
    csv = tmp_path / "list.csv"
    files = sorted(DOGS_VS_CATS.glob("cat.*.jpg"))[:12] + sorted(DOGS_VS_CATS.glob("dog.*.jpg"))[:12]
    csv.write_text("path,label\n" + "".join(f"{f},{f.name.split('.')[0]}\n" for f in files))
    s = extract(load_dataset(csv), bb, tmp_path, options=QUIET)
    with FeatureStore(s.path) as store:
        X = store.embeddings(np.arange(24))
        y = store.labels
    logits = bb.classifier(__import__("torch").from_numpy(X)).numpy()
    # ImageNet classes 151-268 are dogs, 281-285 domestic cats: the real weights see the right animal
    dogish = logits[:, 151:269].max(1) > logits[:, 281:286].max(1)
    assert (dogish == (y == 1)).mean() >= 0.9


def test_cpu_embedding_workers_give_the_same_store(dvc_folder, tmp_path, tiny, monkeypatch):
    """Default CPU extraction: forked workers decode and embed (one thread each); the store matches a serial
    run's, short batch, skip reason and duplicate file included, and no batch was embedded in this process."""
    import extract.pipeline as pipeline
    (dvc_folder / "cat.99.jpg").write_bytes(b"not a jpeg")
    (dvc_folder / "dog.98.jpg").write_bytes((dvc_folder / "dog.1.jpg").read_bytes())
    serial = contents(run(dvc_folder, tmp_path / "a", tiny).path)
    pids = tmp_path / "pids"
    call = pipeline._EmbedBatch.__call__

    def recorded(self, batch):
        with pids.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return call(self, batch)
    monkeypatch.setattr(pipeline._EmbedBatch, "__call__", recorded)
    assert pipeline.embeds_in_workers(torch.device("cpu"), Options(workers=2))
    parallel = contents(run(dvc_folder, tmp_path / "b", tiny, workers=2).path)
    workers = set(pids.read_text().split())
    assert len(pids.read_text().split()) == 4 and str(os.getpid()) not in workers and 1 <= len(workers) <= 2
    np.testing.assert_allclose(serial.pop("X"), parallel.pop("X"), atol=1e-4)
    assert serial == parallel and serial["skipped"] and "dog.98.jpg" in serial["paths"]


def test_a_slow_batch_does_not_hold_up_the_other_worker(dvc_folder, tmp_path, tiny, monkeypatch):
    """Batches are committed as they finish: the worker on the first batch waits until another batch has
    reached the journal (in listing order that never happens, and it gives up after a minute); the store is
    unchanged. An event shared with the forked workers, not a sleep, so a loaded machine cannot reorder it."""
    import multiprocessing

    import extract.pipeline as pipeline
    from features.writer import Journal
    serial = contents(run(dvc_folder, tmp_path / "a", tiny, batch_size=4).path)
    get, append, committed = pipeline._Images.__getitem__, Journal.append, []
    other_batch_committed = multiprocessing.get_context("fork").Event()

    def first_waits(self, i):
        if i == 0:
            other_batch_committed.wait(60)
        return get(self, i)

    def recorded(self, paths, *a):
        committed.append(paths[0])
        other_batch_committed.set()
        return append(self, paths, *a)
    monkeypatch.setattr(pipeline._Images, "__getitem__", first_waits)
    monkeypatch.setattr(Journal, "append", recorded)
    parallel = contents(run(dvc_folder, tmp_path / "b", tiny, batch_size=4, workers=2).path)
    first = sorted(p.name for p in dvc_folder.iterdir())[0]
    assert len(committed) == 6 and committed[0] != first and first in committed[1:]
    np.testing.assert_allclose(serial.pop("X"), parallel.pop("X"), atol=1e-4)
    assert serial == parallel


def test_compiled_model_gives_the_same_store(dvc_folder, tmp_path, tiny, capsys):
    """--compile: torch.compile on batches padded to one shape (24 images, batch 8, one bad file → a short batch)."""
    (dvc_folder / "cat.99.jpg").write_bytes(b"not a jpeg")
    plain = run(dvc_folder, tmp_path / "a", tiny).path
    compiled = run(dvc_folder, tmp_path / "b", tiny, compile=True).path
    a, b = contents(plain), contents(compiled)
    np.testing.assert_allclose(a.pop("X"), b.pop("X"), atol=1e-4)
    assert a == b
    with FeatureStore(compiled) as s:
        assert s.meta.compiled is True


def test_compile_failure_falls_back_to_the_usual_model(dvc_folder, tmp_path, tiny, monkeypatch, capsys):
    def broken(model, **kw):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler here")
        return fail
    monkeypatch.setattr(torch, "compile", broken)
    summary = run(dvc_folder, tmp_path / "c", tiny, compile=True)
    assert summary.rows == 24 and "not compiled (RuntimeError: no C++ compiler here)" in capsys.readouterr().err


def test_compile_failure_on_the_first_real_batch_falls_back_too(dvc_folder, tmp_path, tiny, monkeypatch, capsys):
    """A compiled model that warms up but fails on the first real batch (a recompile, say) runs the usual form."""
    def fails_after_warm_up(model, **kw):
        calls = []

        def call(x):
            calls.append(x.shape)
            if len(calls) > 1:
                raise RuntimeError("recompiled and failed")
            return model(x)
        return call
    monkeypatch.setattr(torch, "compile", fails_after_warm_up)
    summary = run(dvc_folder, tmp_path / "c", tiny, compile=True)
    assert summary.rows == 24 and "not compiled (RuntimeError: recompiled and failed)" in capsys.readouterr().err
    assert_same(contents(summary.path), contents(run(dvc_folder, tmp_path / "plain", tiny).path))


def test_compile_warms_up_exactly_as_the_batches_run(dvc_folder, tmp_path, tiny, monkeypatch):
    """The warm-up goes through the batches' own path: same shape, dtype, memory format and autocast."""
    seen = []

    def recording(model, **kw):
        def call(x):
            seen.append((x.shape, x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last),
                         torch.is_autocast_enabled(x.device.type), torch.is_inference_mode_enabled()))
            return model(x)
        return call
    monkeypatch.setattr(torch, "compile", recording)
    (dvc_folder / "cat.99.jpg").write_bytes(b"not a jpeg")  # a short batch, padded
    run(dvc_folder, tmp_path / "c", tiny, compile=True)
    assert len(seen) == 1 + 4 and len(set(seen)) == 1 and seen[0][0][0] == QUIET.batch_size  # 25 files, batch 8


def test_a_store_this_run_cannot_read_is_refused_not_replaced(dvc_folder, tmp_path, tiny, monkeypatch, capsys):
    """A newer featbench's store, a foreign HDF5 file or one this user cannot read stay as they are (one line;
    --overwrite replaces them); a truncated store, of which nothing can be read, is recomputed with a note."""
    import json

    import features.reader
    path = run(dvc_folder, tmp_path / "runs", tiny).path
    with h5py.File(path, "r+") as f:
        f.attrs["meta"] = json.dumps({**json.loads(f.attrs["meta"]), "version": 99})
    newer = path.read_bytes()
    with pytest.raises(FeatbenchError, match="newer than this featbench reads .*; or replace it: --overwrite"):
        run(dvc_folder, tmp_path / "runs", tiny)
    assert path.read_bytes() == newer
    with h5py.File(path, "w") as f:
        f["data"] = [1, 2, 3]
    with pytest.raises(FeatbenchError, match="not a featbench feature store; or replace it"):
        run(dvc_folder, tmp_path / "runs", tiny)
    monkeypatch.setattr(features.reader.os, "access", lambda p, mode: False)
    with pytest.raises(FeatbenchError, match="not readable .permission denied.; give this user read access"):
        run(dvc_folder, tmp_path / "runs", tiny)
    monkeypatch.undo()
    assert run(dvc_folder, tmp_path / "runs", tiny, overwrite=True).embedded == 24
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    assert run(dvc_folder, tmp_path / "runs", tiny).embedded == 24
    assert "note: ignoring the existing store" in capsys.readouterr().err


def test_a_new_split_or_new_classes_rewrite_the_store_with_a_note_keeping_its_run_on_record(dvc_folder, tmp_path,
                                                                                           tiny, capsys):
    first = run(dvc_folder, tmp_path / "runs", tiny)
    with FeatureStore(first.path) as s:
        made = s.meta
    capsys.readouterr()
    again = extract(load_dataset(dvc_folder), tiny, tmp_path / "runs", seed=1, options=QUIET)
    assert again.embedded == 0
    assert "the split changes (fractions [0.7, 0.15, 0.15] → [0.7, 0.15, 0.15], seed 0 → 1)" in capsys.readouterr().err
    with FeatureStore(first.path) as s:
        assert s.meta.split_seed == 1  # rewritten, but the run that computed the rows stays on record
        assert (s.meta.created, s.meta.images_embedded, s.meta.extraction_seconds, s.meta.batch_size) == \
            (made.created, 24, made.extraction_seconds, made.batch_size)
    (dvc_folder / "cat.0.jpg").rename(dvc_folder / "fox.0.jpg")  # a third class
    csv = dvc_folder / "list.csv"
    csv.write_text("path,label\n" + "".join(f"{p.name},{p.name.split('.')[0]}\n" for p in sorted(dvc_folder.iterdir())
                                            if p.suffix == ".jpg"))
    extract(load_dataset(csv, name="dvc"), tiny, tmp_path / "runs", seed=1, options=QUIET)
    assert "the classes change from 2 (cat, dog) to 3 (cat, dog, fox)" in capsys.readouterr().err
