"""Sharded extraction: torchrun with two gloo ranks on CPU, a rank re-run alone, `features merge`."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_extract_pipeline import contents

from classify.train import find_stores
from extract.__main__ import main as extract_main
from extract.backbones import create_backbone
from extract.datasets import load_dataset
from extract.pipeline import Options, extract
from features import FeatureStore
from features.reader import verify
from features.writer import Journal

from conftest import DOGS_VS_CATS, needs, write_image

ARGS = ["--backbone", "test_resnet", "--random-init", "--device", "cpu", "--batch-size", "2", "--workers", "0",
        "--no-optimize", "--quiet"]
OPTIONS = Options(progress=False, batch_size=2, workers=0, optimize=False)  # the same, in this process
STORE = "test_resnet-random-init.h5"


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("test_resnet", random_init=True)


def single(folder: Path, out: Path, backbone) -> Path:
    """The reference store: one process."""
    return extract(load_dataset(folder), backbone, out, options=OPTIONS).path


def torchrun(folder: Path, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "extract", *ARGS, "--data", str(folder), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)


def assert_equal_stores(a: Path, b: Path):
    ca, cb = contents(a), contents(b)
    assert {k: v for k, v in ca.items() if k != "X"} == {k: v for k, v in cb.items() if k != "X"}
    np.testing.assert_allclose(ca["X"], cb["X"], rtol=0, atol=1e-5)
    with FeatureStore(a) as sa, FeatureStore(b) as sb:
        assert sa.split_fingerprint == sb.split_fingerprint


@pytest.fixture
def pics(tmp_path):
    """10 images, one that cannot be decoded and one file outside the dataset: 11 listed, 2 skipped."""
    root = tmp_path / "pics"
    for i in range(5):
        write_image(root / f"cat.{i}.jpg", i)
        write_image(root / f"dog.{i}.jpg", 100 + i)
    (root / "dog.99.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("no label")
    return root


def test_torchrun_two_ranks_equals_one_process(pics, tmp_path, backbone):
    ref = single(pics, tmp_path / "ref", backbone)
    r = torchrun(pics, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and {ln[:9] for ln in lines[:2]} == {"rank 0/2:", "rank 1/2:"}, r.stdout
    merged = tmp_path / "out" / "pics" / STORE
    assert lines[2].startswith(f"{merged}: 10 images stored (10 embedded, 0 reused), 2 skipped"), lines[2]
    assert all(ln.endswith(" on cpu") for ln in lines[:2]) and lines[2].endswith(" on 2 ranks (cpu, cpu)")  # rank by rank
    assert_equal_stores(merged, ref)
    with FeatureStore(merged) as s:
        assert s.meta.merged_from == 2 and s.meta.shard is None and s.meta.images_embedded == 10
    assert find_stores(tmp_path / "out" / "pics") == [merged]  # shard stores stay out of classify's way
    again = extract(load_dataset(pics), backbone, tmp_path / "out", options=OPTIONS)
    assert (again.embedded, again.reused, again.path) == (0, 10, merged)  # the merged store is current


def test_torchrun_refuses_another_folders_store_before_any_rank_embeds(pics, tmp_path, backbone):
    """The merged store would replace one made from another dataset folder of the same name: rank 0 refuses with
    the merge's one line before any rank embeds anything (no shard, no journal), and the store stays."""
    other = tmp_path / "A" / "pics"
    other.parent.mkdir()
    pics.rename(other)
    single(other, tmp_path / "out", backbone)
    write_image(pics / "cat.0.jpg", 7)
    write_image(pics / "dog.0.jpg", 8)
    r = torchrun(pics, tmp_path / "out")
    store = tmp_path / "out" / "pics" / STORE
    errors = [ln for ln in r.stderr.splitlines() if "error: " in ln]
    assert r.returncode != 0 and errors == [f"error: {store}: made from {other}, not {pics} (two datasets with one "
                                            "name); pass --name NAME to give this dataset its own stores, or delete "
                                            f"{store} if the dataset moved; or replace it: --overwrite"], r.stderr
    assert not (tmp_path / "out" / "pics" / "shards").exists()  # nothing embedded, no journal begun
    with FeatureStore(store) as s:
        assert len(s.paths) == 10


def test_crashed_rank_resumes_alone_then_merge_by_hand(pics, tmp_path, backbone, monkeypatch, capsys):
    ref = single(pics, tmp_path / "ref", backbone)
    cli = [*ARGS, "--data", str(pics), "--out", str(tmp_path / "out")]
    append, calls = Journal.append, []

    def crash_after_two_batches(self, *a):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return append(self, *a)

    monkeypatch.setattr(Journal, "append", crash_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        extract_main([*cli, "--shard", "1/2"])
    monkeypatch.undo()
    shards = tmp_path / "out" / "pics" / "shards"
    assert not list(shards.glob("*.h5")) and len(list(shards.glob("*.partial/part-*.json"))) == 2
    assert extract_main([*cli, "--shard", "1/2"]) == 0
    out = capsys.readouterr()
    assert "rank 1/2:" in out.out and "(1 embedded, 4 reused)" in out.out  # dog.0-3 resumed; dog.4, dog.99 left
    assert "python -m features merge" in out.err
    assert extract_main([*cli, "--shard", "0/2"]) == 0
    r = subprocess.run([sys.executable, "-m", "features", "merge", *map(str, sorted(shards.glob("*.h5")))],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(str(tmp_path / "out" / "pics" / STORE)), r.stderr
    assert_equal_stores(tmp_path / "out" / "pics" / STORE, ref)
    assert verify(tmp_path / "out" / "pics" / STORE) == (True, f"{tmp_path / 'out' / 'pics' / STORE}: OK (10 rows)")


def test_merge_refuses_missing_rank_and_foreign_shards(pics, tmp_path, backbone):
    ds = load_dataset(pics)
    s0 = extract(ds, backbone, tmp_path / "a", options=OPTIONS, shard=(0, 2)).path
    s1 = extract(ds, backbone, tmp_path / "b", options=OPTIONS, shard=(1, 2), seed=1).path
    amp = extract(ds, backbone, tmp_path / "c", options=OPTIONS, shard=(1, 2)).path
    with h5py.File(amp, "r+") as f:  # as if re-run on a GPU with fp16 autocast
        f.attrs["meta"] = json.dumps({**json.loads(f.attrs["meta"]), "amp": True})
    decoded = extract(ds, backbone, tmp_path / "e", options=OPTIONS, shard=(1, 2)).path
    with h5py.File(decoded, "r+") as f:  # as if that rank were re-run without --gpu-decode, or in another autocast
        f.attrs["meta"] = json.dumps({**json.loads(f.attrs["meta"]), "gpu_decode": True, "amp_dtype": "bfloat16"})
    copy = tmp_path / "copy" / "pics"  # another node's copy of the dataset: one file named otherwise
    shutil.copytree(pics, copy)
    (copy / "dog.99.jpg").rename(copy / "dog.98.jpg")
    other_copy = extract(load_dataset(copy), backbone, tmp_path / "f", options=OPTIONS, shard=(1, 2)).path
    damaged = extract(ds, backbone, tmp_path / "d", options=OPTIONS, shard=(1, 2)).path
    with h5py.File(damaged, "r+") as f:  # rows changed after the shard was written: never merged into a store
        f["embeddings"][1, 0] = 1e30
    for files, expected in [([s0], "shard 1 of 2 missing"),
                            ([s0, s1], "split_seed differs"),
                            ([s0, amp], "amp differs"),
                            ([s0, decoded], "amp_dtype differs"),
                            ([s0, other_copy], "its dataset's listing differs from"),
                            ([s0, damaged], f"{damaged.name}: 5 damaged rows (rows 0-4; first dog.0.jpg)"),
                            ([s0, s0], "shard 0 of 2 given twice"),
                            ([s0.parent / "nothing.shard-1-of-2.h5"], "no feature store here")]:
        r = subprocess.run([sys.executable, "-m", "features", "merge", *map(str, files)], capture_output=True, text=True)
        assert r.returncode == 2 and expected in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "a" / "pics" / STORE).exists()


@pytest.mark.parametrize("before", ["a rank's block changed", "shards of an older featbench"])
def test_shards_rerun_after_the_listing_changed_merge(pics, tmp_path, backbone, before):
    """A rank whose rows are unchanged still takes the new listing (its store's record is rewritten, nothing is
    embedded again), so re-running every rank after the dataset changed in one rank's block, or after an upgrade
    to stores that record a listing, merges."""
    shards = [extract(load_dataset(pics), backbone, tmp_path / "out", options=OPTIONS, shard=(r, 2)).path
              for r in range(2)]
    if before == "shards of an older featbench":
        for shard in shards:
            with h5py.File(shard, "r+") as f:
                meta = json.loads(f.attrs["meta"])
                f.attrs["meta"] = json.dumps({**meta, "dataset": {k: v for k, v in meta["dataset"].items()
                                                                  if k != "listing"}})
    (pics / "notes.txt").rename(pics / "readme.txt")  # unlisted, in rank 1's block
    runs = [extract(load_dataset(pics), backbone, tmp_path / "out", options=OPTIONS, shard=(r, 2)) for r in range(2)]
    assert [r.embedded for r in runs] == [0, 0]
    listings = set()
    for shard in shards:
        with FeatureStore(shard) as s:
            listings.add(s.meta.dataset["listing"])
    assert listings == {load_dataset(pics).listing()}
    r = subprocess.run([sys.executable, "-m", "features", "merge", *map(str, shards)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs(DOGS_VS_CATS)
def test_torchrun_on_real_photos(tmp_path, backbone):
    folder = tmp_path / "photos"
    folder.mkdir()
    for f in sorted(DOGS_VS_CATS.glob("cat.*.jpg"))[:10] + sorted(DOGS_VS_CATS.glob("dog.*.jpg"))[:10]:
        (folder / f.name).symlink_to(f)
    ref = single(folder, tmp_path / "ref", backbone)
    r = torchrun(folder, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert_equal_stores(tmp_path / "out" / "photos" / STORE, ref)
