"""The extraction run: list → reuse what is cached → embed the rest in batches → one atomic store.

Crash safety: every finished batch is committed to the store's journal (`NAME.h5.partial/`); a
re-run reuses journal rows and rows of an existing store whose file stamp (size, mtime) or content
hash is unchanged, and judges skipped files again (only embedded files keep a stamp and hash).
Batches are fixed blocks of the full sorted listing, so an interrupted and resumed run feeds the
model exactly the batches an uninterrupted run would, and writes an identical store.

Sharding (`torchrun`, `--shard R/N`): rank R embeds a contiguous block of the sorted listing into its
own shard store (same lock, journal and reuse); `features.merge` concatenates them in rank order.
"""
import ctypes
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from extract import gpudecode
from extract.backbones import Backbone, Planned, Preprocess, load_backbone
from extract.datasets import Dataset, Item, assign_splits
from extract.device import (
    amp_dtype,
    autocast,
    claim,
    cores,
    default_batch_size,
    default_workers,
    pick_device,
    to_host,
    uses_amp,
)
from extract.files import MAX_IMAGE_BYTES, file_stamp, read_file, size_text, within
from extract.images import BadImage, content_hash, load
from extract.inference import inference_model
from extract.names import store_stem
from extract.quantize import Calibration, calibration_set, check_precision, kept_model, recorded_calibration
from features.atomic import check_file, check_outside, make_folder
from features.errors import DamagedStore, FeatbenchError, StoreError
from features.merge import shard_path
from features.reader import FeatureStore, check_root
from features.records import Cost, Extraction, StoreMeta
from features.schema import library_versions
from features.writer import Journal, Record, Row, RowSource, store_lock, write_store


@dataclass
class Options:
    """How to run an extraction (none of these change the embeddings, except `dtype`, the AMP settings,
    `precision` and `gpu_decode`: those are in the reuse key)."""
    device: str = "auto"
    batch_size: int | None = None  # None: `default_batch_size` of the device
    workers: int = -1  # -1: auto (CPU: one embedding worker per core; GPU: `default_workers` decoders)
    dtype: str = "float32"
    amp: bool = True
    amp_dtype: str | None = None  # CUDA autocast type; None: `amp_dtype`'s default
    precision: str = "fp32"  # CPU model arithmetic: fp32, bf16 or int8 (`extract.quantize`)
    overwrite: bool = False
    optimize: bool = True  # CPU: frozen TorchScript with BatchNorm folded (same results to ~1e-6)
    compile: bool = False  # torch.compile (inductor); opt-in: slower than `optimize` on CPU here (benchmarks speed)
    gpu_decode: bool = False  # JPEGs decoded on the device (`extract.gpudecode`)
    progress: bool | None = None  # None: only on a terminal
    max_image_bytes: int = MAX_IMAGE_BYTES  # larger files are skipped unread

    def on(self, device: torch.device) -> "Options":
        """These options with the batch size settled for `device` (`default_batch_size` where not given)."""
        return replace(self, batch_size=self.batch_size or default_batch_size(device))


@dataclass
class Summary:
    path: Path
    rows: int
    embedded: int
    reused: int
    skipped: list = field(default_factory=list)  # (rel path, reason)
    seconds: float = 0.0
    device: str = ""

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        why = reason_counts(why for _, why in self.skipped)
        return (f"{self.path}: {self.rows} images stored ({self.embedded} embedded, {self.reused} reused), "
                f"{len(self.skipped)} skipped{f' ({why})' if why else ''}; {self.seconds:.1f}s, "
                f"{self.rate:.1f} img/s on {self.device}")


def reason_counts(reasons: Iterable[str]) -> str:
    """How many skips there are of each reason (its text before any ' ('): `3 empty file; 1 symbolic link loop`."""
    counts = Counter(why.split(" (")[0] for why in reasons)
    return "; ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def embeds_in_workers(device: torch.device, options: Options) -> bool:
    """On CPU the workers both decode and embed, one torch thread each (`_EmbedBatch`).

    Each core runs its own batches start to end instead of two threads meeting at every layer while a
    decoder takes one of their cores. Needs `fork` (the workers share the prepared model's weights;
    OpenMP is only fork-safe with one thread per worker); not with `torch.compile`.
    """
    return (device.type == "cpu" and options.workers != 0 and not options.compile and not options.gpu_decode
            and sys.platform == "linux")


def worker_count(device: torch.device, options: Options) -> int:
    """`options.workers`, or by default one embedding worker per core, or `default_workers` decoders."""
    if options.workers >= 0:
        return options.workers
    return cores() if embeds_in_workers(device, options) else default_workers(device)


def store_path(out: Path, dataset: str, backbone: Backbone | Planned, weights_file: str | None, dtype: str,
               precision: str = "fp32") -> Path:
    """`{out}/{dataset}/{backbone}[READOUT][-random-init|-w<sha8>][-bf16|-int8][-f16].h5`: one store per distinct
    embedding (the backbone's name with characters other than letters, digits, `._-` as `_`: hf-hub:ORG/NAME,
    local-dir:FOLDER; READOUT as `Readout.suffix` shows a non-default pool, blocks, image size or TTA)."""
    stem = store_stem(backbone.name) + backbone.readout.suffix()
    if backbone.weights.get("random_init"):
        stem += "-random-init"
    elif weights_file:
        stem += "-w" + backbone.weights["file_sha256"][:8]
    if precision != "fp32":
        stem += f"-{precision}"
    if dtype == "float16":
        stem += "-f16"
    return Path(out) / dataset / f"{stem}.h5"


class Read(NamedTuple):
    """One listed file as a worker left it."""
    pos: int  # its position in the list being embedded
    hash: str  # content hash; "" unless the file was embedded or its hash is known
    stamp: str  # the opened file's stamp; "" likewise
    reason: str  # why it is skipped; "" when fine
    decoded: bool  # decoded in this batch, so one of the batch's embedding rows is its


class _Images(torch.utils.data.Dataset):
    """Reads (`read_file`), hashes and preprocesses one listed file; never raises for a bad file.

    Files whose content hash is in `known` are not decoded: their embedding already exists. With
    `gpu_decode`, JPEGs the device decodes come as their bytes (`gpudecode.on_device`).
    """

    def __init__(self, items, preprocess, known: frozenset = frozenset(), max_bytes: int = Options.max_image_bytes,
                 gpu_decode: bool = False):
        self.items, self.preprocess, self.known, self.max_bytes = items, preprocess, known, max_bytes
        self.gpu_decode = gpu_decode

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i) -> tuple[Read, torch.Tensor | None]:
        try:
            data, stamp = read_file(self.items[i].path, self.max_bytes)
            digest = content_hash(data)
            if digest in self.known:
                return Read(i, digest, stamp, "", False), None
            if self.gpu_decode and gpudecode.on_device(data, self.preprocess):
                return Read(i, digest, stamp, "", True), torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return Read(i, digest, stamp, "", True), load(data, self.preprocess)
        except BadImage as e:
            return Read(i, "", "", str(e), False), None


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _end_with_parent(main: int, worker_id: int) -> None:
    """DataLoader `worker_init_fn` (Linux): the kernel kills this worker when its parent dies.

    Without it, a worker whose main process is killed (the OOM killer's SIGKILL, `kill -9`) finishes
    its batch, then waits for ever to hand it over, holding its memory. `main` (the process iterating
    the loader) is the worker's parent, or with `forkserver` its grandparent (a forkserver ends with
    it); if neither, it died before the signal was asked for, and the worker exits now.
    """
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if main not in (os.getppid(), _parent_of(os.getppid())):
        os._exit(1)


def _collate(batch, tensor: bool = False) -> tuple[list[Read], np.ndarray | torch.Tensor | None]:
    """In the worker: the batch's reads and one uint8 array of the decoded images.

    A numpy array, not a tensor: tensors arriving through torch's shared memory made the CPU graph of
    `optimize_for_inference` grow the main process with every batch; arrays sent through the pipe
    keep it flat. For a GPU (`tensor`), a tensor, which the loader copies into pinned memory so that
    its copy to the device does not block.
    """
    tensors = [t for _, t in batch if t is not None]
    x = torch.stack(tensors) if tensors else None
    return [r for r, _ in batch], x if tensor or x is None else x.numpy()


def _collate_mixed(batch) -> tuple[list[Read], gpudecode.Packed | None]:
    """`--gpu-decode`: the batch's reads and its images, decoded (CHW) or JPEG bytes, `gpudecode.pack`ed."""
    tensors = [t for _, t in batch if t is not None]
    return [r for r, _ in batch], gpudecode.pack(tensors) if tensors else None


class _EmbedBatch:
    """`collate_fn` of a CPU embedding worker: decode the batch (`_collate`), then embed it in the worker."""

    def __init__(self, embed):
        self.embed = embed  # uint8 array -> embeddings array: `embed_batches`' forward pass

    def __call__(self, batch):
        reads, x = _collate(batch)
        with torch.inference_mode():
            return reads, None if x is None else self.embed(x)


def _provenance(backbone: Backbone, amp: str | None, gpu_decode: bool = False, precision: str = "fp32",
                calibration: dict | None = None) -> dict:
    """What decides whether stored rows can be reused: backbone, weights, preprocessing, readout (None: the
    default), effective AMP (`amp`: its type, None without), JPEGs decoded on the device, and precision (with
    int8, the calibration images). AMP's type and device decoding are recorded only when in effect, so stores
    made before they were kept stay reusable."""
    prov = {"backbone": backbone.name, "weights_fingerprint": backbone.weights["fingerprint"],
            "preprocess": backbone.preprocess.as_dict(), "readout": backbone.readout.as_dict(), "amp": bool(amp),
            "precision": precision}
    if amp:
        prov["amp_dtype"] = amp
    if gpu_decode:
        prov["gpu_decode"] = True
    if calibration is not None:
        prov["calibration"] = calibration
    return json.loads(json.dumps(prov))  # as it reads back from JSON (tuples become lists)


def _known_rows(path: Path, journal: Journal, prov: dict, overwrite: bool) -> tuple[dict, FeatureStore | None]:
    """Rows that can be reused: from the existing store, then (newer) from the journal."""
    known: dict[str, Record] = {}
    store = None
    if overwrite:
        journal.clear()
        return known, None
    if path.exists():
        try:
            store = _existing_store(path)
        except DamagedStore as e:
            print(f"note: ignoring the existing store ({e})", file=sys.stderr)
        if store is not None and {k: getattr(store.meta, k) for k in prov} != prov:
            print(f"note: {path} was made with other weights, preprocessing, readout, AMP, decoding or precision; "
                  "recomputing", file=sys.stderr)
            store.close()
            store = None
        if store is not None:
            damaged = store.damaged_rows() or []
            if damaged:
                print(f"note: {path}: {store.describe_damage(damaged)}; re-embedding them", file=sys.stderr)
            intact = np.ones(len(store.paths), bool)
            for lo, hi in damaged:
                intact[lo:hi] = False
            for row, (p, st, h) in enumerate(zip(store.paths, store.stamps, store.hashes)):
                if intact[row]:
                    known[p] = Record(st, h, "", Row(None, row))
            for p, why, st, h in store.skipped:
                known[p] = Record(st, h, why, None)
    if journal.parts():
        if journal.made_with(prov):
            for p, r in journal.records().items():
                held = known.get(p)
                if held and held.source and (held.stamp, held.hash) == (r.stamp, r.hash):
                    r.seconds = None  # the store holds it: written by a run stopped before it cleared the journal
                known[p] = r
            if journal.damaged:
                print(f"note: {len(journal.damaged)} parts of {journal.dir} are damaged (first "
                      f"{journal.damaged[0].name}); re-embedding their images", file=sys.stderr)
        else:
            _keep_aside(journal, prov)
    return known, store


def _keep_aside(journal: Journal, prov: dict) -> None:
    """Keep aside, with a note, an interrupted run's journal made otherwise than `prov` (AMP on a GPU, resumed on
    CPU): nothing computed is deleted. One that holds no embedding (skips alone) goes."""
    made, embeddings = journal.provenance(), journal.embeddings()
    if not embeddings:
        journal.clear()
        return
    aside = journal.keep_aside()
    print(f"note: {journal.dir}: an interrupted run's {embeddings} embeddings were made with other settings "
          f"({_differences(made, prov)}); kept aside as {aside}: to resume from them, move it back to {journal.dir} "
          "and re-run with those settings", file=sys.stderr)


def _differences(made: dict | None, now: dict) -> str:
    """The provenance keys whose values differ, each `key old → new` (a nested record: its key alone)."""
    if made is None:
        return "unknown: its provenance.json does not read"

    def text(v) -> str:
        return "none" if v is None else json.dumps(v)
    keys = sorted(k for k in made.keys() | now.keys() if made.get(k) != now.get(k))
    return ", ".join(k if isinstance(made.get(k), dict) or isinstance(now.get(k), dict)
                     else f"{k} {text(made.get(k))} → {text(now.get(k))}" for k in keys)


def extract(dataset: Dataset, backbone: Backbone | Planned, out: Path, *, fractions=(0.7, 0.15, 0.15), seed: int = 0,
            weights_file: str | None = None, options: Options = Options(),
            shard: tuple[int, int] | None = None) -> Summary:
    """Embed every image of `dataset` with `backbone` into its store, reusing all earlier work.

    A `Planned` backbone is loaded once this run holds the store's lock: a second writer fails before any
    weights load. With `shard=(rank, world)`, embed only that rank's block of the listing into its shard store.
    """
    device = pick_device(options.device)
    check_precision(options.precision, device, options.compile, options.optimize)
    claim(device)
    options = options.on(device)
    store = store_path(out, dataset.name, backbone, weights_file, options.dtype, options.precision)
    path = shard_path(store, *shard) if shard else store
    check_outside(path.parent, dataset.describe())
    for p in dict.fromkeys([path, store]):  # a folder in the store's (or the merged store's) place: one line now,
        check_file(p)  # not a rename failing at the end of the run or of the merge
    make_folder(path.parent)
    with store_lock(path):
        if not shard:  # a shard's root is its node's mount, which may differ between re-runs of a rank
            _refuse_other_dataset(path, dataset, options.overwrite)
        if isinstance(backbone, Planned):
            backbone = load_backbone(backbone)
        return _extract_locked(dataset, backbone, path, device, fractions, seed, options, shard, store)


def _existing_store(path: Path) -> FeatureStore:
    """The store at `path`; DamagedStore where nothing in it can be read (a re-run replaces it), and a one-line
    refusal for a store this run must not replace: newer, foreign or unreadable by this user."""
    try:
        return FeatureStore(path)
    except DamagedStore:
        raise
    except StoreError as e:
        raise StoreError(f"{e}; or replace it: --overwrite") from None


def _refuse_other_dataset(path: Path, dataset: Dataset, overwrite: bool) -> None:
    """Refuse to replace the store, or resume the journal, of another dataset folder with this one's name."""
    try:
        store = _existing_store(path) if path.exists() else None
    except StoreError as e:
        if not (overwrite or isinstance(e, DamagedStore)):
            raise
        store = None  # damaged (`_known_rows` notes it) or to be overwritten: a new store is written
    if store is not None:
        with store:
            store.check_made_from(dataset.root)
    journal = Journal(path)
    check_root(journal.dir, journal.dataset(), dataset.root)


def _dataset_record(dataset: Dataset, path: Path) -> dict:
    """`Dataset.describe()` and where the dataset is from the store's folder (`check_root`)."""
    return {**dataset.describe(), "root_from_store": os.path.relpath(dataset.root, path.parent.resolve())}


def _extract_locked(dataset, backbone, path, device, fractions, seed, options, shard, store) -> Summary:
    """`extract` under the lock of `path` (the store, or a shard of `store`)."""
    started = time.perf_counter()
    items, unlisted = dataset.items, dataset.unlisted
    codes = assign_splits(items, fractions, seed)  # stratified over the whole listing, shard or not
    if shard:
        rank, world = shard
        lo, hi = rank * len(items) // world, (rank + 1) * len(items) // world
        items, codes = items[lo:hi], codes[lo:hi]
        unlisted = unlisted if rank == world - 1 else []  # last, as in a single run's store
    journal = Journal(path)
    provenance = partial(_provenance, backbone, amp_dtype(options.amp_dtype) if uses_amp(device, options.amp)
                         else None, options.gpu_decode, options.precision)
    calibration = None
    if options.precision == "int8":
        calibration = _calibration(dataset, backbone, [store, path] if shard else [path], journal, provenance(),
                                   options)
    prov = provenance(calibration=calibration.record if calibration else None)
    calibration = calibration.kept_at(store, prov) if calibration else None  # shards share the store's
    known, old_store = _known_rows(path, journal, prov, options.overwrite)
    records, todo, by_hash = _pending(items, known, backbone.preprocess, options.max_image_bytes)
    if calibration and calibration.images is None and (todo or shard) and not calibration.model_kept():
        # the store's calibration images changed or went, and so did its quantised model: nothing can embed
        # new images as its rows were, so it is calibrated afresh (every rank of a torchrun alike)
        print(f"note: {path}: the quantised model its rows came from ({calibration.keep.name}) is gone or was made "
              "otherwise, and its calibration images are no longer all in the dataset unchanged; calibrating "
              "afresh", file=sys.stderr)
        if old_store is not None:
            old_store.close()
        calibration = calibration_set(dataset.items, backbone.preprocess, max_bytes=options.max_image_bytes)
        prov = provenance(calibration=calibration.record)
        calibration = calibration.kept_at(store, prov)
        known, old_store = _known_rows(path, journal, prov, options.overwrite)
        records, todo, by_hash = _pending(items, known, backbone.preprocess, options.max_image_bytes)

    embedded, record = 0, _dataset_record(dataset, path)
    if todo:
        journal.start(prov, record)
        embedded = _embed(items, todo, records, by_hash, backbone, device, journal, options, calibration, started)

    rows = [i for i, r in enumerate(records) if not r.reason]
    skipped = [(items[i].rel, r.reason, r.stamp, r.hash) for i, r in enumerate(records) if r.reason]
    skipped += [(rel, why, "", "") for rel, why in unlisted]
    if not rows and not shard:
        raise _nothing_embedded(dataset.root, items, records, journal)
    labels, splits = [items[i].label for i in rows], codes[rows]
    stamps = [records[i].stamp for i in rows]
    if not _store_is_current(old_store, [records[i].source for i in rows], stamps, labels, splits, skipped,
                             dataset.class_names, options.dtype, options.max_image_bytes, record):
        seconds = round(time.perf_counter() - started, 3)
        resumed = [records[i].seconds for i in rows if records[i].seconds is not None]
        recovered = Cost(len(resumed), sum(resumed))
        total = _total_cost(old_store.meta if old_store else None, recovered, embedded, seconds)
        run = dict(versions=library_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   device=str(device), optimized=options.optimize and device.type == "cpu", compiled=options.compile,
                   batch_size=options.batch_size, extraction_seconds=seconds, images_embedded=embedded,
                   images_per_second=Cost(embedded, seconds).rate, images_embedded_total=total.images,
                   extraction_seconds_total=total.seconds)
        if old_store is not None:
            _note_relabelled(path, old_store, dataset.class_names, list(fractions), seed, options.max_image_bytes)
            if not (embedded or recovered.images):  # every row reused: the run that computed them stays on record
                run = {k: getattr(old_store.meta, k) for k in run}
        meta = Extraction(**prov, weights=backbone.weights, max_image_bytes=options.max_image_bytes, dataset=record,
                          split_fractions=list(fractions), split_seed=seed, shard=list(shard) if shard else None,
                          **run)
        source = RowSource(old_store.h5 if old_store else None)
        write_store(path, dim=backbone.dim, chunks=source.chunks([records[i].source for i in rows], 4096),
                    labels=labels, paths=[items[i].rel for i in rows], splits=splits,
                    hashes=[records[i].hash for i in rows], stamps=stamps,
                    skipped=skipped, class_names=dataset.class_names, meta=meta, dtype=options.dtype)
    if old_store is not None:
        old_store.close()
    journal.clear()
    if not shard:  # a shard may lack a class that the others hold
        _warn_empty_classes(path, dataset.class_names, items, records)
    return Summary(path, len(rows), embedded, len(rows) - embedded, [(p, why) for p, why, *_ in skipped],
                   time.perf_counter() - started, str(device))


def _total_cost(old: StoreMeta | None, recovered: Cost, embedded: int, seconds: float) -> Cost:
    """The store's `Extraction.cost` after this run: the old store's, plus the rows this run `recovered` from the
    journal of a killed run with the seconds their parts record (each image with the measured time that embedded
    it; rows of parts that record none, from older featbench, count in neither), plus this run where it embedded
    rows. A killed run's time after its last part is lost with it."""
    before = old.cost() if old else Cost(0, 0.0)
    images = before.images + recovered.images + embedded
    return Cost(images, round(before.seconds + recovered.seconds + (seconds if embedded else 0.0), 3))


def _calibration(dataset: Dataset, backbone: Backbone, stores: list[Path], journal: Journal, base: dict,
                 options: Options) -> Calibration:
    """int8's calibration: the one recorded by the first of `stores` (for a shard: the merged store, then its
    own) or else the journal made as `base` says but for the calibration, its images read again where they
    are all there (`recorded_calibration`), so new images never recompute a store; else, or with `overwrite`,
    the dataset's own (`calibration_set`)."""
    args = dict(preprocess=backbone.preprocess, max_bytes=options.max_image_bytes)
    if not options.overwrite:
        for path in stores:
            try:
                with FeatureStore(path) as s:  # one this run cannot read: `_known_rows` says so, or it is not ours
                    record, made, rows = s.meta.calibration, {k: getattr(s.meta, k) for k in base}, s.paths
            except (OSError, StoreError):
                continue
            if made == base and _is_calibration(record):
                return recorded_calibration(dataset.items, record, rows=rows, **args)
        if journal.parts():
            made = journal.provenance() or {}
            record = made.pop("calibration", None)
            if made == base and _is_calibration(record):
                return recorded_calibration(dataset.items, record, **args)
    return calibration_set(dataset.items, **args)


def _is_calibration(record) -> bool:
    """A calibration record as `calibration_set` writes it (or wrote it before its paths were listed)."""
    paths = record.get("paths", []) if isinstance(record, dict) else None
    return isinstance(paths, list) and all(isinstance(p, str) for p in paths) \
        and isinstance(record.get("images"), int) and isinstance(record.get("sha256"), str)


def _pending(items, known, preprocess, max_bytes: int) -> tuple[list[Record | None], list[int], dict]:
    """Each item's record where `known` settles it, the indices of those to embed, and the known rows by hash."""
    by_hash = {r.hash: r for r in known.values() if r.hash and r.source}
    records: list[Record | None] = [None] * len(items)
    todo = []
    for i, it in enumerate(items):
        r = known.get(it.rel)
        if r is not None and not r.reason and r.stamp and r.stamp == file_stamp(it.path) and within(r.stamp, max_bytes):
            records[i] = r
        else:
            todo.append(i)  # new, changed, over the cap, or skipped before (a skip is judged again on every run)
    todo = _recheck(items, todo, known, by_hash, records, preprocess, max_bytes)
    return records, todo, by_hash


def _warn_empty_classes(path: Path, class_names: list, items: list[Item], records: list[Record]) -> None:
    """Warn of each class none of whose images was embedded. It stays in the class list: labels are indices into
    it, shared by the dataset's stores of every backbone, and a later run that embeds its images keeps them."""
    embedded = {it.label for it, r in zip(items, records) if not r.reason}
    for c, name in enumerate(class_names):
        if c in embedded:
            continue
        reasons = [r.reason for it, r in zip(items, records) if it.label == c]
        what = (f"none of the {len(reasons)} images of class {name!r} could be embedded ({reason_counts(reasons)})"
                if reasons else f"no image of class {name!r} is in the dataset")
        print(f"warning: {path}: {what}; it stays in the class list, so labels keep their indices, but no model can "
              "learn it: fix its images or take them out of the dataset", file=sys.stderr)


def _nothing_embedded(root: Path, items: list[Item], records: list[Record], journal: Journal) -> FeatbenchError:
    """The one-line refusal of a run that embedded no image, with its reasons. The journal keeps only the
    embeddings it holds (an interrupted run's, reused once the files read again), else it goes."""
    journal.prune()
    return FeatbenchError(f"{root}: none of the {len(items)} images could be embedded "
                          f"({reason_counts(r.reason for r in records)}; first: {items[0].rel}: {records[0].reason}); "
                          "check --data")


def _recheck(items, todo, known, by_hash, records, preprocess, max_bytes: int) -> list[int]:
    """Settle here, without the model, the pending files the store knows by path; return the rest of `todo`.

    A file whose content is an embedded row's takes that row with its new stamp (so a `touch` costs one
    read, once); a file skipped before is read and decoded again and, still bad, skipped with a fresh reason.
    """
    left = []
    for i in todo:
        if items[i].rel not in known:
            left.append(i)
            continue
        try:
            data, stamp = read_file(items[i].path, max_bytes)
            digest = content_hash(data)
            if digest in by_hash:
                records[i] = Record(stamp, digest, "", by_hash[digest].source)
                continue
            if known[items[i].rel].reason:
                load(data, preprocess)
            left.append(i)
        except BadImage as e:
            records[i] = Record("", "", str(e), None)
    return left


def _note_relabelled(path: Path, store: FeatureStore, class_names: list, fractions: list, seed: int,
                     max_bytes: int) -> None:
    """A note for each thing the rewritten store changes besides its embeddings: the classes (say, another
    --target) and the split (--seed, --splits), which other backbones' stores of the dataset then no longer
    share, and the file size cap (--max-image-bytes), which decides which files are read."""
    def names(c: list) -> str:
        return f"{len(c)} ({', '.join(c[:4])}{', …' if len(c) > 4 else ''})"
    if store.class_names != list(class_names):
        print(f"note: {path}: the classes change from {names(store.class_names)} to {names(list(class_names))}; "
              "embeddings reused", file=sys.stderr)
    if (store.meta.split_fractions, store.meta.split_seed) not in ((None, None), (fractions, seed)):
        print(f"note: {path}: the split changes (fractions {store.meta.split_fractions} → {fractions}, seed "
              f"{store.meta.split_seed} → {seed}); embeddings reused; re-run the dataset's other backbones the "
              "same way before comparing or ensembling them", file=sys.stderr)
    if store.meta.max_image_bytes not in (None, max_bytes):
        over = sum(not within(st, max_bytes) for st in store.stamps)
        print(f"note: {path}: --max-image-bytes changes from {size_text(store.meta.max_image_bytes)} to "
              f"{size_text(max_bytes)}: {over} stored image{'s' * (over != 1)} over it {'is' if over == 1 else 'are'} "
              "skipped now, and files skipped as over the old cap are read again", file=sys.stderr)


def _store_is_current(store, sources, stamps, labels, splits, skipped, class_names, dtype, max_bytes,
                      record: dict) -> bool:
    """True when the existing store already holds exactly these rows, stamps, labels, splits and skips, read
    under this file size cap (or one it does not record), with this dataset record (its `listing`, which a shard's
    other ranks are merged against, covers the whole listing, not only the shard's rows)."""
    return (store is not None and store.meta.dataset == record
            and sources == [Row(None, k) for k in range(len(store.paths))] and store.stamps == stamps
            and np.array_equal(store.labels, labels) and np.array_equal(store.splits, splits)
            and sorted(store.skipped) == sorted(skipped) and store.class_names == list(class_names)
            and store.meta.dtype == dtype and store.meta.max_image_bytes in (None, max_bytes))


def blocks_of(todo: list[int], size: int) -> list[list[int]]:
    """Group pending items by their fixed block of the full listing (block = index // size)."""
    out: dict[int, list[int]] = {}
    for pos, i in enumerate(todo):
        out.setdefault(i // size, []).append(pos)
    return list(out.values())


def batch_loader(items: list[Item], preprocess: Preprocess, device: torch.device, options: Options,
                 blocks: list[list[int]], known: frozenset = frozenset(), embed=None) -> torch.utils.data.DataLoader:
    """`embed_batches`' DataLoader: each block's reads and images, read, hashed and decoded by its workers (for
    a GPU a pinned tensor; with `gpu_decode` the images as they are), or with `embed` (`embeds_in_workers`)
    their embeddings. Each batch as it is ready: a slow batch does not hold up the other workers."""
    cuda = device.type == "cuda"
    return torch.utils.data.DataLoader(
        _Images(items, preprocess, known, options.max_image_bytes, options.gpu_decode), batch_sampler=blocks,
        num_workers=worker_count(device, options),
        collate_fn=_EmbedBatch(embed) if embed else _collate_mixed if options.gpu_decode else
        partial(_collate, tensor=cuda), pin_memory=cuda,
        multiprocessing_context="fork" if embed else None,
        worker_init_fn=partial(_end_with_parent, os.getpid()),
        in_order=False)


def embed_batches(items: list[Item], backbone: Backbone, device: torch.device, options: Options,
                  blocks: list[list[int]], known: frozenset = frozenset(), desc: str = "extract",
                  calibration: Calibration | None = None) -> Iterator[tuple[list[Read], np.ndarray]]:
    """The one embedding path: each batch of `blocks` (positions in `items`), as it is ready, as its reads
    and the embeddings of its decoded images, in order. Files whose hash is in `known` are not decoded.

    The model is the fastest exact form for the device (`inference_model`) under the one autocast
    decision; with `options.precision` bf16 its bfloat16 graph, with int8 the ONNX Runtime int8 model
    quantised on `calibration`, or kept from an earlier run (`kept_model`; each process runs its own
    session). On CPU the forked workers both decode and embed (`embeds_in_workers`).
    On a GPU, batches come in pinned memory and are copied asynchronously; one batch computes while the
    previous one's embeddings are copied back and written.
    """
    cuda = device.type == "cuda"
    size = backbone.preprocess.size
    example = torch.zeros(options.batch_size if options.compile else 2, 3, size, size, dtype=torch.uint8)

    def run(net, x: np.ndarray | torch.Tensor | gpudecode.Packed) -> torch.Tensor:
        """One batch through `net` as every batch goes (the compile warm-up too): its embeddings, on the device."""
        if isinstance(x, gpudecode.Packed):
            x = gpudecode.decode_batch(x, backbone.preprocess, device)
        x = torch.as_tensor(x).to(device, non_blocking=True)
        n = len(x)
        if options.compile and n < options.batch_size:  # one shape: no recompiling for short batches
            x = torch.cat([x, x.new_zeros((options.batch_size - n, *x.shape[1:]))])
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, options.amp, options.amp_dtype):
            return net(x)[:n].float()

    def forward(x: np.ndarray | torch.Tensor | gpudecode.Packed):
        """The embeddings array, or on a GPU a call that waits for it (`to_host`)."""
        return to_host(run(model, x)) if cuda else run(model, x).cpu().numpy()
    in_workers = embeds_in_workers(device, options)
    prepare = partial(inference_model, backbone.model, device, example, options.optimize, options.compile, run,
                      bf16=options.precision == "bf16")
    if options.precision == "int8":
        prepare = partial(kept_model, backbone.model, calibration, options.optimize)
    model = prepare() if in_workers else None  # before the fork: the workers share it
    batches = iter(batch_loader(items, backbone.preprocess, device, options, blocks, known,
                                forward if in_workers else None))
    if not in_workers:
        model = prepare()  # the decoding workers have started meanwhile
    bar = tqdm(total=len(items), unit="img", desc=f"{desc} {backbone.name}", file=sys.stderr, dynamic_ncols=True,
               disable=None if options.progress is None else not options.progress)

    def done(reads: list[Read], feats) -> tuple[list[Read], np.ndarray]:
        feats = feats() if callable(feats) else feats
        if not np.isfinite(feats).all():
            fresh = [r.pos for r in reads if r.decoded]
            bad = [items[i].rel for i, row in zip(fresh, feats) if not np.isfinite(row).all()]
            raise FeatbenchError(f"{bad[0]}: the backbone produced non-finite features "
                                 f"({len(bad)} images); try --no-amp or --device cpu")
        bar.update(len(reads))
        return reads, feats

    with bar, torch.inference_mode():
        ahead, in_flight = [], 1 if cuda else 0  # on a GPU, a batch is finished after the next one is launched
        for reads, x in batches:
            feats = np.zeros((0, backbone.dim), np.float32)
            if x is not None:
                feats = x if in_workers else forward(x)  # workers send embeddings
            ahead.append((reads, feats))
            if len(ahead) > in_flight:
                yield done(*ahead.pop(0))
        if ahead:
            yield done(*ahead.pop())


def _embed(items, todo, records, by_hash, backbone, device, journal, options, calibration, started) -> int:
    """Embed `todo` (indices into items), committing each batch to the journal with the seconds since the last
    commit of embeddings (the first: since the run `started`); returns rows computed."""
    computed, last = 0, started
    for reads, feats in embed_batches([items[i] for i in todo], backbone, device, options,
                                      blocks_of(todo, options.batch_size), frozenset(by_hash), calibration=calibration):
        new = [r for r in reads if r.decoded or r.reason]
        now = time.perf_counter()
        npy = journal.append([items[todo[r.pos]].rel for r in new], [r.stamp for r in new],
                             [r.hash for r in new], [r.reason for r in new], feats, round(now - last, 3))
        if len(feats):  # a batch of skips alone: its time goes with the next part that holds embeddings
            last = now
        row = 0
        for r in new:
            records[todo[r.pos]] = Record(r.stamp, r.hash, r.reason, None if r.reason else Row(npy, row))
            row += not r.reason
        for r in reads:
            if not (r.decoded or r.reason):  # same content as an embedded row: reuse its embedding
                records[todo[r.pos]] = Record(r.stamp, r.hash, "", by_hash[r.hash].source)
        computed += len(feats)
    return computed


def embed_files(backbone: Backbone, files: list, options: Options) -> tuple[np.ndarray, list[str]]:
    """Embed loose image files (no store) exactly as extraction does: returns (a feature row per file, NaN
    where it could not be embedded; the reason per file, "" when it was embedded)."""
    items = [Item(Path(f), str(f)) for f in files]
    device = pick_device(options.device)
    options = options.on(device)
    blocks = blocks_of(list(range(len(items))), options.batch_size)
    feats = np.full((len(items), backbone.dim), np.nan, np.float32)
    reasons = [""] * len(items)
    for reads, x in embed_batches(items, backbone, device, options, blocks, desc="embed"):
        feats[[r.pos for r in reads if r.decoded]] = x
        for r in reads:
            reasons[r.pos] = r.reason
    return feats, reasons
