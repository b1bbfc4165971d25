"""Reading a featbench store: numpy arrays by split, metadata, skipped images."""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from features.atomic import recorded_roots
from features.entries import given_file
from features.errors import DamagedStore, StoreError
from features.records import StoreMeta
from features.schema import (
    FORMAT,
    FORMAT_VERSION,
    NO_LABEL,
    ROW_DATASETS,
    SKIPPED_COLUMNS,
    SPLITS,
    check_dataset_name,
    crc,
    split_fingerprint,
)

REWRITE = "rewrite them (it reuses the embeddings that are intact)"


@dataclass
class SplitData:
    """One split of a store: features (None when streamed), integer labels (-1 = unlabelled), relative
    paths, store rows."""
    X: np.ndarray | None
    y: np.ndarray
    paths: list
    rows: np.ndarray

    def __len__(self):
        return len(self.y)


class FeatureStore:
    """A read-only view of one store; small arrays and `meta` (its `StoreMeta`) are loaded at open,
    embeddings on demand."""

    def __init__(self, path):
        self.path = Path(path)
        given_file(self.path, "feature store", "no feature store here; run `python -m extract` first", StoreError)
        if not os.access(self.path, os.R_OK):
            raise StoreError(f"{self.path}: not readable (permission denied); give this user read access to it")
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise DamagedStore(f"{self.path}: not a readable HDF5 file (truncated or corrupt: {e}); "
                               "delete it and re-run `python -m extract`") from None
        try:
            attrs = self.h5.attrs
            if attrs.get("format") != FORMAT:
                raise StoreError(f"{self.path}: an HDF5 file but not a featbench feature store")
            if not attrs.get("complete", False):
                raise DamagedStore(f"{self.path}: incomplete store; re-run `python -m extract` to finish it")
            self._check_version(attrs.get("format_version", 1))
            meta = attrs.get("meta")
            if not isinstance(meta, (str, bytes)):
                raise self._damaged("no meta attribute of JSON text")
            self.meta = StoreMeta.from_json(json.loads(meta), self.path)
            self._check_meta()
            self._check_layout()
            self.labels = self.h5["labels"][:]
            self.splits = self.h5["splits"][:]
            self.paths = self.h5["paths"].asstr()[:].tolist()
        except StoreError:
            self.h5.close()
            raise
        except (KeyError, OSError, ValueError) as e:
            self.h5.close()
            raise self._damaged(e) from None

    def _check_version(self, version) -> None:
        """A format this featbench reads (1: before checksums; 2: a `checksums` dataset it must have)."""
        if not isinstance(version, (int, np.integer)) or isinstance(version, bool) or version < 1:
            raise self._damaged(f"format_version {version!r} is not a format number")
        if version > FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format {version}, newer than this featbench reads ({FORMAT_VERSION});"
                             " upgrade featbench, or re-run `python -m extract --overwrite` with this one")
        if version >= 2 and "checksums" not in self.h5:
            raise self._damaged("no checksums dataset, which its format has")

    def _check_meta(self) -> None:
        """What the metadata's field types leave open: class names, and the dataset record's name and
        folders, are text."""
        if not all(isinstance(c, str) for c in self.meta.class_names):
            raise self._damaged("class names that are not text")
        dataset = self.meta.dataset or {}
        for key in ("name", "root", "root_from_store"):
            if not isinstance(dataset.get(key, ""), str):
                raise self._damaged(f"a dataset {key} that is not text")

    def _check_layout(self) -> None:
        """Every dataset of the format present, of its kind (`_kind_problem`), with a row per image (per skip,
        in `skipped/`), the embeddings `meta.dim` wide, and the checksums' blocks covering them."""
        names = [*ROW_DATASETS, *(f"skipped/{k}" for k in SKIPPED_COLUMNS)]
        missing = [k for k in names if k not in self.h5]
        if missing:
            raise self._damaged(f"no {missing[0]} dataset")
        for k in [*names, *(["checksums"] if "checksums" in self.h5 else [])]:
            problem = _kind_problem(k, self.h5[k])
            if problem:
                raise self._damaged(problem)
        rows = len(self.h5["paths"])
        for k in names:
            want = len(self.h5["skipped/paths"]) if k.startswith("skipped/") else rows
            if len(self.h5[k]) != want:
                raise self._damaged(f"{k} has {len(self.h5[k])} rows for {want} images")
        width = self.h5["embeddings"].shape[1]
        if width != self.meta.dim:
            raise self._damaged(f"embeddings are {width} wide, not its dim {self.meta.dim}")
        if (self.meta.rows, self.meta.dtype, list(self.meta.split_names)) != (rows, self.h5["embeddings"].dtype.name,
                                                                              list(SPLITS)):
            raise self._damaged(f"metadata of {self.meta.rows} rows of {self.meta.dtype}, splits "
                                f"{', '.join(map(str, self.meta.split_names))}, for {rows} rows of "
                                f"{self.h5['embeddings'].dtype.name}, splits {', '.join(SPLITS)}")
        if "checksums" in self.h5:
            per = int(self.h5["checksums"].attrs.get("rows_per_block", 0))
            if per < 1 or len(self.h5["checksums"]) != -(-rows // per):
                raise self._damaged("its checksums do not cover its embeddings")

    def _damaged(self, why) -> StoreError:
        return StoreError(f"{self.path}: damaged featbench store ({why}); delete it and re-run `python -m extract`")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.h5.close()

    @property
    def backbone(self) -> str | None:
        return self.meta.backbone

    @property
    def class_names(self) -> list:
        return self.meta.class_names

    @property
    def dim(self) -> int:
        return int(self.meta.dim)

    @property
    def dataset_name(self) -> str:
        """The dataset's name, the folder of its outputs under --out: as recorded, or the store's folder's for a
        store that records none; refused in one line where it is not one folder name (`check_dataset_name`)."""
        name = (self.meta.dataset or {}).get("name")
        if name is None:
            return check_dataset_name(self.path.resolve().parent.name, f"the folder of {self.path}")
        return check_dataset_name(name, f"recorded in {self.path}")

    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    @property
    def split_fingerprint(self) -> str:
        return self.meta.split_fingerprint

    @property
    def hashes(self) -> list:
        return self.h5["hashes"].asstr()[:].tolist()

    @property
    def stamps(self) -> list:
        return self.h5["stamps"].asstr()[:].tolist()

    @property
    def skipped(self) -> list[tuple[str, str, str, str]]:
        """(path, reason, stamp, hash) of every image that was not embedded."""
        g = self.h5["skipped"]
        cols = [g[k].asstr()[:].tolist() for k in SKIPPED_COLUMNS]
        return list(zip(*cols))

    def rows(self, split: str, labelled_only: bool = True) -> np.ndarray:
        if split not in SPLITS:
            raise StoreError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        mask = self.splits == SPLITS.index(split)
        if labelled_only:
            mask &= self.labels != NO_LABEL
        return np.flatnonzero(mask)

    def split(self, split: str, labelled_only: bool = True, features: bool = True) -> SplitData:
        """One split; `features=False` leaves X as None (labels, paths and rows only, for streaming)."""
        rows = self.rows(split, labelled_only)
        X = self.embeddings(rows) if features else None
        return SplitData(X, self.labels[rows], [self.paths[i] for i in rows], rows)

    def embeddings(self, rows: np.ndarray) -> np.ndarray:
        """Sorted rows of the embedding matrix as float32 (read as one range when dense enough)."""
        emb = self.h5["embeddings"]
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        lo, hi = int(rows[0]), int(rows[-1]) + 1  # rows are sorted
        if hi - lo <= 8 * len(rows):
            return np.asarray(emb[lo:hi], dtype=np.float32)[rows - lo]
        return np.asarray(emb[rows], dtype=np.float32)

    def iter_chunks(self, rows: np.ndarray, chunk_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream (X, y) of sorted `rows` (e.g. `rows("train")`) in order, `chunk_rows` at a time."""
        for start in range(0, len(rows), chunk_rows):
            r = rows[start:start + chunk_rows]
            yield self.embeddings(r), self.labels[r]

    def check_finite(self, X: np.ndarray, rows: np.ndarray, what: str) -> None:
        """Refuse NaN/inf feature rows (`rows`: their store rows) with a one-line StoreError."""
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            raise StoreError(f"{self.path}: {int(bad.sum())} {what} rows have NaN/inf features (first: "
                             f"{self.paths[int(rows[np.flatnonzero(bad)[0]])]}); re-extract with --overwrite")

    def damaged_rows(self) -> list[tuple[int, int]] | None:
        """Row ranges [lo, hi) of the embedding blocks whose stored bytes no longer match their checksums
        (or no longer read), adjacent ones joined; None for a store written without checksums."""
        if "checksums" not in self.h5:
            return None
        emb, sums = self.h5["embeddings"], self.h5["checksums"]
        per, expected = int(sums.attrs["rows_per_block"]), sums[:]
        bad: list[tuple[int, int]] = []
        for block, lo in enumerate(range(0, len(self.paths), per)):
            hi = min(lo + per, len(self.paths))
            try:
                intact = crc(emb[lo:hi]) == expected[block]
            except OSError:
                intact = False
            if intact:
                continue
            if bad and bad[-1][1] == lo:
                bad[-1] = (bad[-1][0], hi)
            else:
                bad.append((lo, hi))
        return bad

    def describe_damage(self, ranges: list[tuple[int, int]]) -> str:
        """`N damaged rows (rows 8-15, 40-47; first img/8.jpg)` for `damaged_rows()`' ranges."""
        shown = ", ".join(f"{lo}-{hi - 1}" if hi - lo > 1 else f"{lo}" for lo, hi in ranges[:4])
        more = f", … ({len(ranges)} ranges)" if len(ranges) > 4 else ""
        return (f"{sum(hi - lo for lo, hi in ranges)} damaged rows (rows {shown}{more}; first "
                f"{self.paths[ranges[0][0]]})")

    def row_problems(self) -> list[str]:
        """What is wrong with the labels, splits and paths (cheap next to the checksums): labels outside the
        store's classes (-1: unlabelled), split codes outside `SPLITS`, and values that no longer hash to the
        split fingerprint written with them (edited after writing); [] when nothing is."""
        problems = [self._out_of_range("label", self.labels, NO_LABEL, len(self.class_names),
                                       f"its {len(self.class_names)} classes"),
                    self._out_of_range("split code", self.splits, 0, len(SPLITS),
                                       f"0-{len(SPLITS) - 1}, {'/'.join(SPLITS)}")]
        problems = [p for p in problems if p]
        if not problems and split_fingerprint(self.paths, self.labels, self.splits) != self.split_fingerprint:
            problems.append("labels, splits or paths that differ from those written (not their split fingerprint)")
        return problems

    def _out_of_range(self, what: str, values: np.ndarray, lo: int, hi: int, within: str) -> str | None:
        """`N labels outside its 3 classes (row 4, img/4.jpg: 7)` for the values not in [lo, hi), or None."""
        bad = np.flatnonzero((values < lo) | (values >= hi))
        if not len(bad):
            return None
        i = int(bad[0])
        return f"{len(bad)} {what}{'s' * (len(bad) > 1)} outside {within} (row {i}, {self.paths[i]}: {values[i]})"

    def check_intact(self) -> None:
        """Refuse, with one line, a store whose labels, splits or paths are not as written (`row_problems`) or
        whose embeddings no longer match their checksums (naming the rows)."""
        problems = self.row_problems()
        if problems:
            raise StoreError(f"{self.path}: {'; '.join(problems)}; see `python -m features verify {self.path}`, "
                             f"and re-run `python -m extract` on its dataset to {REWRITE}")
        bad = self.damaged_rows()
        if bad:
            raise StoreError(f"{self.path}: {self.describe_damage(bad)}: the embeddings changed after they were "
                             "written; re-run `python -m extract` on its dataset to re-embed them")

    def check_made_from(self, root) -> None:
        """Refuse a store extracted from another dataset folder than `root` (one with the same name).

        A store without a recorded root (older featbench) passes, as do shard and merged stores, whose
        root is where the node that made them mounted the dataset."""
        if not (self.meta.shard or self.meta.merged_from):
            check_root(self.path, self.meta.dataset, root)


KINDS = {"embeddings": (2, "f", "float"), "labels": (1, "iu", "integer"), "splits": (1, "iu", "integer"),
         "checksums": (1, "iu", "integer")}  # (dimensions, numpy dtype kinds, in words)
TEXT = (1, "", "string")  # every other dataset: strings (h5py.check_string_dtype)


def _kind_problem(name: str, node) -> str | None:
    """`labels is not a 1-D integer dataset` where `node` is not the dataset `name` should be, else None."""
    ndim, kinds, what = KINDS.get(name, TEXT)
    if isinstance(node, h5py.Dataset) and node.ndim == ndim and (
            node.dtype.kind in kinds if kinds else h5py.check_string_dtype(node.dtype) is not None):
        return None
    return f"{name} {'are' if name == 'embeddings' else 'is'} not a {ndim}-D {what} dataset"


def check_root(where: Path, dataset: dict | None, root) -> None:
    """Refuse what `where` (a store, or a journal beside it) holds when its `dataset` record names another
    folder than `root`: neither its `root` nor its `root_from_store` seen from where the store is now (a
    project moved or copied whole, stores and images together, is still the same dataset)."""
    same = recorded_roots(dataset, where)
    root = Path(os.path.realpath(root))
    if not same or root in same:
        return
    raise StoreError(f"{where}: made from {dataset['root']}, not {root} (two datasets with one name); pass --name "
                     f"NAME to give this dataset its own stores, or delete {where} if the dataset moved")


def verify(path) -> tuple[bool, str]:
    """Check a store's labels, splits and paths (`row_problems`) and its embeddings against their checksums:
    (False when something is wrong, one line saying `OK`, what is wrong, or `unverified` for a store whose
    embeddings were written without checksums)."""
    with FeatureStore(path) as store:
        problems, bad = store.row_problems(), store.damaged_rows()
        if problems:
            found = "; ".join(problems + ([store.describe_damage(bad)] if bad else []))
            return False, f"{store.path}: {found}; re-run `python -m extract` on its dataset to {REWRITE}"
        if bad is None:
            return True, (f"{store.path}: unverified ({len(store.paths)} rows, written without checksums); "
                          "`python -m extract --overwrite` rewrites it with them")
        if bad:
            return False, f"{store.path}: {store.describe_damage(bad)}; re-run `python -m extract` to re-embed them"
        return True, f"{store.path}: OK ({len(store.paths)} rows)"


def open_store(path) -> FeatureStore:
    return FeatureStore(path)
