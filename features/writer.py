"""Crash-safe writing: a journal of atomic parts while extracting, one atomic HDF5 store at the end.

Each finished batch becomes a part (an `.npy` of embeddings plus a JSON of its rows), written to a
temporary name and renamed, so a kill at any moment leaves only whole parts behind. The store itself
is written to a temporary `NAME.h5.MACHINE-PID.XXXXXXXX.tmp` and renamed over `NAME.h5` once complete.

Embeddings carry checksums: a CRC-32 per block of stored rows (`checksums`, whose `rows_per_block`
attribute gives the block) and per journal part, so bytes changed after writing are found on reuse.

A part also records the seconds its rows took (its run's time since its previous part with embeddings, the first:
since the run started), so a run that resumes a killed one counts the killed run's measured time with its rows.
"""
import hashlib
import json
import shutil
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import h5py
import numpy as np
from filelock import FileLock, Timeout

from features.atomic import atomic_write, make_folder, remove_temporaries, unwritable
from features.errors import FeatbenchError
from features.records import Extraction, StoreMeta
from features.schema import FORMAT, FORMAT_VERSION, SKIPPED_COLUMNS, SPLITS, crc, split_fingerprint

CHUNK_BYTES = 1 << 20
ROW_BYTES = 128  # per row besides embeddings and text: label, split, the strings' records (measured: 110-125)


class Row(NamedTuple):
    """Where one embedding lives: row `index` of a journal part's `.npy`, or of the existing store (`part` None)."""
    part: Path | None
    index: int


@dataclass
class Record:
    """What is known of one image: its file stamp, content hash, and embedding or skip reason."""
    stamp: str
    hash: str
    reason: str  # "" when embedded
    source: Row | None  # None when skipped
    seconds: float | None = None  # a journal row: its share of its part's seconds (None: not recorded)


@contextmanager
def store_lock(path: Path):
    """Hold `NAME.h5.lock` while writing a store; a second writer gets a one-line error instead of waiting.
    The temporary files of a killed writer go once it is held."""
    lock = FileLock(str(path) + ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FeatbenchError(f"{path}: another extraction is writing this store right now; wait for it "
                             f"to finish (or remove {path}.lock if no featbench process is running)") from None
    except OSError as e:
        raise unwritable(f"{path}.lock", e) from None
    try:
        remove_temporaries(path)
        yield
    finally:
        lock.release()


class Journal:
    """The `NAME.h5.partial/` folder of finished batches of an interrupted or running extraction."""

    def __init__(self, store_path: Path):
        self.dir = Path(str(store_path) + ".partial")
        self._next = -1  # number of the next part: counted once (one writer holds the store's lock)
        self.damaged: list[Path] = []  # parts whose embeddings failed their checksum in `records()`

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.json")) if self.dir.is_dir() else []

    def start(self, provenance: dict, dataset: dict) -> None:
        """Record (atomically) what the parts are embeddings of: backbone, weights, preprocessing, AMP,
        and which dataset (its `root` and `root_from_store`, as a store's metadata records them)."""
        atomic_write(self.dir / "provenance.json", lambda tmp: tmp.write_text(json.dumps(provenance)))
        atomic_write(self.dir / "dataset.json", lambda tmp: tmp.write_text(json.dumps(dataset)))

    def dataset(self) -> dict | None:
        """The dataset the parts were made from; None without parts or a readable record (older featbench)."""
        try:
            return json.loads((self.dir / "dataset.json").read_text()) if self.parts() else None
        except (OSError, ValueError):
            return None

    def provenance(self) -> dict | None:
        """What the parts were made with (as `start` recorded it); None when missing or unreadable."""
        try:
            made = json.loads((self.dir / "provenance.json").read_text())
        except (OSError, ValueError):
            return None
        return made if isinstance(made, dict) else None

    def made_with(self, provenance: dict) -> bool:
        """True when the parts were made with `provenance`; a missing or unreadable record is False."""
        return self.provenance() == provenance

    def embeddings(self) -> int:
        """How many embeddings the parts hold (those whose record reads)."""
        return sum(meta["reasons"].count("") for meta in map(_part_meta, self.parts()) if meta)

    def records(self) -> dict[str, Record]:
        """What the parts know (a later part's record of a path wins); each embedded row with an equal share of its
        part's seconds, where the part records them. A part whose record does not read, or whose embeddings fail
        their checksum (or do not read), is left out, so its images are embedded again, and its damaged file is
        listed in `damaged`."""
        out = {}
        self.damaged = []
        for meta_file in self.parts():
            meta = _part_meta(meta_file)
            npy = meta_file.with_suffix(".npy")
            if meta is None or not _part_intact(npy, meta.get("crc")):
                self.damaged.append(meta_file if meta is None else npy)
                continue
            seconds, row = meta.get("seconds"), 0
            share = seconds / meta["reasons"].count("") if _measured(seconds) and "" in meta["reasons"] else None
            for path, stamp, digest, reason in zip(meta["paths"], meta["stamps"], meta["hashes"], meta["reasons"]):
                src = None if reason else Row(npy, row)
                row += not reason
                out[path] = Record(stamp, digest, reason, src, share if src else None)
        return out

    def prune(self) -> None:
        """Remove the parts that hold no embedding (skips alone: every run judges those again), and the journal
        when no part is left; a part whose record does not read is kept."""
        for meta_file in self.parts():
            meta = _part_meta(meta_file)
            if meta is not None and "" not in meta["reasons"]:
                meta_file.unlink()  # first: the commit point
                meta_file.with_suffix(".npy").unlink(missing_ok=True)
        if not self.parts():
            self.clear()

    def append(self, paths, stamps, hashes, reasons, embeddings: np.ndarray, seconds: float | None = None) -> Path:
        """Add one finished batch; `embeddings` has a row per image whose reason is empty, and took `seconds`.

        Returns the part's `.npy` file, the source of those rows.
        """
        if self._next < 0:  # not per batch: listing the folder each time made long runs quadratic
            make_folder(self.dir)
            self._next = len(self.parts())
        while (self.dir / f"part-{self._next:07d}.json").exists():
            self._next += 1
        stem = self.dir / f"part-{self._next:07d}"
        self._next += 1

        def save(tmp):
            with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to a path
                np.save(fh, np.ascontiguousarray(embeddings))
        npy = atomic_write(stem.with_suffix(".npy"), save, tidy=False)  # killed writers' files go with the journal
        meta = {"paths": list(paths), "stamps": list(stamps), "hashes": list(hashes), "reasons": list(reasons),
                "crc": crc(embeddings), **({} if seconds is None else {"seconds": seconds})}
        atomic_write(stem.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta)), tidy=False)  # commit
        return npy

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self._next = -1

    def keep_aside(self) -> Path:
        """Rename the journal to the first free `NAME.h5.partial-N`, which no run resumes or deletes; returns it."""
        n = 1
        while Path(f"{self.dir}-{n}").exists():
            n += 1
        aside = Path(f"{self.dir}-{n}")
        self.dir.rename(aside)
        self._next = -1
        return aside


COLUMNS = ("paths", "stamps", "hashes", "reasons")  # a part's record: one entry per image in each


def _part_meta(meta_file: Path) -> dict | None:
    """A part's record (`append`), or None where it does not read as one (empty, cut short, edited)."""
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return None
    columns = [meta.get(k) for k in COLUMNS] if isinstance(meta, dict) else [None]
    if not all(isinstance(c, list) and all(isinstance(v, str) for v in c) for c in columns) \
            or len({len(c) for c in columns}) != 1:
        return None
    return meta


def _measured(seconds) -> bool:
    """True for a part's recorded seconds (parts of older featbench record none)."""
    return isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < float("inf")


def _part_intact(npy: Path, expected: int | None) -> bool:
    """True when a part's `.npy` reads and matches its checksum (parts of older featbench have none)."""
    try:
        rows = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return expected is None or crc(rows) == expected


class RowSource:
    """Reads embedding rows from journal parts (memory-mapped, a few open at once) or a finished store."""

    def __init__(self, store: "h5py.File | None" = None, max_open: int = 8):
        self.store = store
        self.open: OrderedDict = OrderedDict()
        self.max_open = max_open

    def row(self, source: Row) -> np.ndarray:
        if source.part is None:
            return self.store["embeddings"][source.index]
        arr = self.open.pop(source.part, None)
        if arr is None:
            arr = np.load(source.part, mmap_mode="r")
            if len(self.open) >= self.max_open:
                self.open.popitem(last=False)
        self.open[source.part] = arr
        return arr[source.index]

    def chunks(self, sources: list[Row], rows_per_chunk: int) -> Iterator[np.ndarray]:
        for start in range(0, len(sources), rows_per_chunk):
            yield np.stack([self.row(s) for s in sources[start:start + rows_per_chunk]]).astype(np.float32)


def _str_dataset(f, name, values):
    f.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype())


def write_store(path: Path, *, dim: int, chunks: Iterable[np.ndarray], labels, paths, splits,
                hashes, stamps, skipped: list[tuple[str, str, str, str]], class_names: list[str], meta: Extraction,
                dtype: str = "float32") -> dict:
    """Write a complete store atomically; returns the fingerprints that were stored in its metadata.

    `chunks` yields the embedding rows in order; `skipped` holds (path, reason, stamp, hash) tuples.
    """
    path = Path(path)
    prints = {}

    def write(tmp: Path) -> None:
        _check_room(tmp, len(paths) * (dim * np.dtype(dtype).itemsize + ROW_BYTES)
                    + sum(len(x) for column in (paths, hashes, stamps) for x in column), path)
        with h5py.File(tmp, "w") as f:
            digest = _write_embeddings(f, chunks, len(paths), dim, dtype, path)
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
            f.create_dataset("splits", data=np.asarray(splits, dtype=np.int8))
            _str_dataset(f, "paths", paths)
            _str_dataset(f, "hashes", hashes)
            _str_dataset(f, "stamps", stamps)
            g = f.create_group("skipped")
            for i, key in enumerate(SKIPPED_COLUMNS):
                _str_dataset(g, key, [s[i] for s in skipped])
            prints.update(fingerprint=digest[:16], split_fingerprint=split_fingerprint(paths, labels, splits))
            record = StoreMeta(**{k.name: getattr(meta, k.name) for k in fields(Extraction)},
                               class_names=list(class_names), split_names=list(SPLITS), dim=dim, rows=len(paths),
                               dtype=dtype, skipped=len(skipped), **prints)
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["backbone"] = record.backbone or ""
            f.attrs["meta"] = json.dumps(record.to_json())
            f.attrs["complete"] = True
    atomic_write(path, write)
    return prints


def _check_room(tmp: Path, need: int, path: Path) -> None:
    """Refuse, before HDF5 starts, to write about `need` bytes (and a tenth and 1 MiB more) to `tmp` where its
    disk has less free: HDF5 (2.0, h5py 3.16) ends a write the disk cuts short in a traceback, and may crash the
    process."""
    free = shutil.disk_usage(tmp.parent).free
    if free < need * 1.1 + (1 << 20):
        raise FeatbenchError(f"{path}: needs about {need / 2**20:.0f} MiB and its disk has {free / 2**20:.0f} MiB "
                             "free; free some space or pass an --out on another disk, then re-run the same command: "
                             "finished work is kept")


def _write_embeddings(f: h5py.File, chunks: Iterable[np.ndarray], n: int, dim: int, dtype: str, path: Path) -> str:
    """The `embeddings` dataset of `n` rows from `chunks`, checked finite in `dtype`, and the `checksums`
    of its blocks (one per HDF5 chunk of rows); returns the rows' sha256."""
    rows_per_chunk = max(1, min(n, CHUNK_BYTES // (dim * np.dtype(dtype).itemsize)))
    emb = f.create_dataset("embeddings", shape=(n, dim), dtype=dtype, maxshape=(None, dim),
                           chunks=(rows_per_chunk, dim) if n else True)
    content = hashlib.sha256()
    sums, running = [], 0
    at = 0
    for block in chunks:
        with np.errstate(over="ignore"):
            stored = np.asarray(block, dtype=dtype)
        if not np.isfinite(stored).all():
            if np.isfinite(block).all():
                raise FeatbenchError(f"{path}: embedding values up to {np.abs(block).max():.3g} overflow "
                                     f"{dtype}; store them as float32 (--dtype float32)")
            raise ValueError("non-finite embeddings")
        emb[at:at + len(stored)] = stored
        content.update(stored.tobytes())
        lo = 0
        while lo < len(stored):  # a block of the store may span several pieces of `chunks`, and the reverse
            hi = min(len(stored), lo + rows_per_chunk - (at + lo) % rows_per_chunk)
            running = crc(stored[lo:hi], running)
            if (at + hi) % rows_per_chunk == 0 or at + hi == n:
                sums.append(running)
                running = 0
            lo = hi
        at += len(stored)
    if at != n:
        raise ValueError(f"wrote {at} embedding rows for {n} images")
    f.create_dataset("checksums", data=np.array(sums, dtype=np.uint32))
    f["checksums"].attrs["rows_per_block"] = rows_per_chunk
    return content.hexdigest()
