"""Merging the shard stores of a distributed extraction into the store a single process would write.

Rank R of N embeds a contiguous block of the sorted listing into `DATASET/shards/NAME.shard-R-of-N.h5`;
concatenating the shards in rank order gives the single-process rows, in the same order.
"""
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from features.atomic import make_folder
from features.errors import DamagedStore, FeatbenchError, StoreError
from features.reader import FeatureStore, check_root
from features.records import Cost
from features.writer import store_lock, write_store

SAME = ("backbone", "weights_fingerprint", "preprocess", "readout", "amp", "amp_dtype", "gpu_decode", "precision",
        "calibration", "dtype", "split_fractions", "split_seed", "class_names",
        "max_image_bytes")  # the reuse key's parts, the split, and which files were read
SHARD_NAME = re.compile(r"^(?P<stem>.+)\.shard-\d+-of-\d+\.h5$")


def shard_path(store: Path, rank: int, world: int) -> Path:
    """`FOLDER/shards/NAME.shard-R-of-N.h5` for the store `FOLDER/NAME.h5` (a sub-folder: classify globs
    FOLDER/*.h5)."""
    if not 0 <= rank < world:
        raise FeatbenchError(f"shard {rank}/{world}: need 0 <= RANK < WORLD (--shard RANK/WORLD)")
    return store.parent / "shards" / f"{store.stem}.shard-{rank}-of-{world}.h5"


def merged_path(shard: Path, folder: Path | None = None) -> Path:
    """The store that `shard_path` made `shard` for, or the store of that name in `folder`."""
    m = SHARD_NAME.match(shard.name)
    if m is None:
        raise StoreError(f"{shard}: not named NAME.shard-R-of-N.h5, as extract names its shards")
    if folder is None and shard.parent.name != "shards":
        raise StoreError(f"{shard}: not in a DATASET/shards/ folder; pass --out OUT for OUT/DATASET/NAME.h5")
    return (folder or shard.parent.parent) / f"{m['stem']}.h5"


def _provenance(store: FeatureStore) -> dict:
    dataset = {k: v for k, v in (store.meta.dataset or {}).items()  # nodes may mount it elsewhere
               if k not in ("root", "root_from_store")}
    return {**{k: getattr(store.meta, k) for k in SAME}, "dataset": dataset}


def _in_rank_order(stores: list[FeatureStore]) -> list[FeatureStore]:
    """The shards sorted by rank, after checking they are ranks 0..N-1 of one extraction, each once."""
    for s in stores:
        if s.meta.shard is None:
            raise StoreError(f"{s.path}: not a shard store (no shard in its metadata); "
                             "merge only NAME.shard-R-of-N.h5 files")
    first = stores[0]
    world = first.meta.shard[1]
    want = _provenance(first)
    by_rank: dict[int, FeatureStore] = {}
    for s in stores:
        rank, n = s.meta.shard
        if n != world:
            raise StoreError(f"{s.path}: shard {rank} of {n}, but {first.path} is of {world}; merge shards of one run")
        have = _provenance(s)
        for key in want["dataset"].keys() | have["dataset"].keys():
            theirs, ours = have["dataset"].get(key), want["dataset"].get(key)
            if theirs != ours:
                raise StoreError(f"{s.path}: its dataset's {key} differs from {first.path}'s ({theirs} vs {ours}): "
                                 "its rank listed another copy of the dataset, or the dataset changed between "
                                 "ranks; re-run every rank on one copy (--shard R/N) and merge again")
        for key in want:
            if have[key] != want[key]:
                raise StoreError(f"{s.path}: {key} differs from {first.path} ({str(have[key])[:60]} vs "
                                 f"{str(want[key])[:60]}); re-run that rank with the same command")
        if rank in by_rank:
            raise StoreError(f"shard {rank} of {world} given twice ({by_rank[rank].path} and {s.path})")
        by_rank[rank] = s
    missing = [r for r in range(world) if r not in by_rank]
    if missing:
        raise StoreError(f"shard {missing[0]} of {world} missing ({len(missing)} missing in all); run "
                         f"`python -m extract … --shard {missing[0]}/{world}` and merge again")
    return [by_rank[r] for r in range(world)]


def _embeddings(stores: list[FeatureStore], rows: int = 4096):
    """Each shard's embedding rows in order, a block at a time (never the whole matrix)."""
    for s in stores:
        yield from (X for X, _ in s.iter_chunks(np.arange(len(s.paths)), rows))


def _side_by_side(costs: list[Cost]) -> Cost:
    """What shards embedded side by side took: all their images, in the slowest one's seconds."""
    return Cost(sum(c.images for c in costs), max(c.seconds for c in costs))


def check_replaceable(out: Path, root: str | None, paths: list, keep_rows: bool) -> None:
    """Refuse, in one line, to replace the store at `out` when this featbench cannot read it as its own (a
    damaged one is replaced, as extract replaces it), when it was made from another dataset folder than `root`
    (`check_root`, whether it is a plain store or an earlier merge), or, with `keep_rows`, when it has rows that
    `paths` lack (older shards merged again). torchrun's rank 0 asks it before any rank embeds."""
    if not out.exists():
        return
    try:
        with FeatureStore(out) as existing:
            if root:  # an earlier merge's root too: `check_made_from` lets shard and merged stores pass
                check_root(out, existing.meta.dataset, root)
            lost = sorted(set(existing.paths) - set(paths)) if keep_rows else []
    except DamagedStore:
        return
    except StoreError as e:
        raise StoreError(f"{e}; or replace it: --overwrite") from None
    if lost:
        raise StoreError(f"{out}: {len(lost)} row{'s' * (len(lost) > 1)} the shards lack ({lost[0]}"
                         f"{', …' if len(lost) > 1 else ''}): the shards are older than it, or those images left "
                         "the dataset; re-run the ranks (--shard R/N) and merge again, or replace it: --overwrite")


def _seen_from(dataset: dict | None, shard: Path, out: Path) -> dict | None:
    """Shard 0's dataset record with its `root_from_store` (the dataset folder relative to the shard's folder, which
    finds the data after a project moves whole) made relative to the merged store's folder instead."""
    if not dataset or not dataset.get("root_from_store"):
        return dataset
    root = (shard.parent.resolve() / dataset["root_from_store"]).resolve()
    return {**dataset, "root_from_store": os.path.relpath(root, out.parent.resolve())}


def merge(shard_paths: list, out=None, overwrite: bool = False, keep_rows: bool = True) -> Path:
    """Write shards 0..N-1 of one extraction, in rank order, into one store; returns its path:
    OUT/DATASET/NAME.h5 with an `out` folder, else DATASET/NAME.h5 beside the shards/ folder.

    Unless `overwrite`, a store already there is replaced only as `check_replaceable` allows; `keep_rows=False`
    (torchrun, whose shards this run made from the current listing) drops rows of images gone from the dataset,
    as a single run does."""
    stores: list[FeatureStore] = []
    try:
        for p in shard_paths:
            stores.append(FeatureStore(p))
        if not stores:
            raise StoreError("no shard stores to merge")
        stores = _in_rank_order(stores)
        for s in stores:
            s.check_intact()
        paths = [p for s in stores for p in s.paths]
        if any(a >= b for a, b in zip(paths, paths[1:])):
            raise StoreError(f"{stores[0].path.name} and its other shards overlap: the dataset changed between "
                             "ranks; re-run every rank on the same listing")
        if not paths:
            why = next((why for s in stores for _, why, *_ in s.skipped), "none")
            raise StoreError(f"none of the shards' images could be embedded (first reason: {why})")
        metas = [s.meta for s in stores]
        out = merged_path(stores[0].path, out and Path(out) / stores[0].dataset_name)
        last = _side_by_side([Cost(m.images_embedded, m.extraction_seconds) for m in metas])
        total = _side_by_side([m.cost() for m in metas])
        meta = replace(metas[0], shard=None, images_embedded=last.images, extraction_seconds=last.seconds,
                       images_per_second=last.rate, images_embedded_total=total.images,
                       extraction_seconds_total=total.seconds, merged_from=len(stores),
                       dataset=_seen_from(metas[0].dataset, stores[0].path, out))
        make_folder(out.parent)
        with store_lock(out):
            if not overwrite:
                check_replaceable(out, (metas[0].dataset or {}).get("root"), paths, keep_rows)
            write_store(out, dim=stores[0].dim, chunks=_embeddings(stores), paths=paths,
                        labels=np.concatenate([s.labels for s in stores]),
                        splits=np.concatenate([s.splits for s in stores]),
                        hashes=[h for s in stores for h in s.hashes], stamps=[t for s in stores for t in s.stamps],
                        skipped=[k for s in stores for k in s.skipped], class_names=meta.class_names,
                        meta=meta, dtype=meta.dtype)
    finally:
        for s in stores:
            s.close()
    return out
