"""A store's rows for other tools: `python -m features export STORE --format npy|parquet`.

npy: a folder of four arrays, row i of each the same image, all readable with `np.load(allow_pickle=False)`:
`embeddings.npy` (float32, n × dim), `paths.npy`, `labels.npy` (class names, "" for an unlabelled image) and
`splits.npy` (train | val | test). parquet: one table with the columns path, label (null when unlabelled), split
and embedding (a fixed-size list of float32). Both are written a chunk of rows at a time, then moved into place;
an earlier export is replaced only with `--overwrite`, and no other file (the store, a model) ever.
"""
from pathlib import Path

import numpy as np

from features.atomic import atomic_write, make_folder
from features.errors import FeatbenchError
from features.reader import FeatureStore
from features.schema import NO_LABEL, SPLITS

FORMATS = ("npy", "parquet")
CHUNK_ROWS = 8192


def columns(store: FeatureStore) -> dict[str, np.ndarray]:
    """The store's paths, labels (class names, "" unlabelled) and splits as string arrays."""
    names = np.array([*store.class_names, ""])
    return {"paths": np.array(store.paths), "labels": names[np.where(store.labels == NO_LABEL, -1, store.labels)],
            "splits": np.array(SPLITS)[store.splits]}


MAGIC = {"npy": b"\x93NUMPY", "parquet": b"PAR1"}  # how each format's files begin


def check_target(target: Path, store: FeatureStore, overwrite: bool, fmt: str) -> None:
    """Refuse, in one line, to write `target` where it is the store being exported, a folder, or a file already
    there: with `overwrite`, one that is not a regular file beginning as an `fmt` file does (an earlier export)."""
    if target.resolve() == store.path.resolve():
        raise FeatbenchError(f"{target}: is the store being exported; pass another --out")
    if target.is_dir():
        raise FeatbenchError(f"{target}: a folder, where the export writes a file; pass another --out")
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise FeatbenchError(f"{target}: already there; pass --overwrite to replace it, or another --out")
    if not (target.is_file() and _begins(target, MAGIC[fmt])):
        raise FeatbenchError(f"{target}: not an earlier {fmt} export, so --overwrite does not replace it; pass "
                             "another --out")


def _begins(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError:
        return False


def export_npy(store: FeatureStore, folder: Path, overwrite: bool = False) -> Path:
    cols = columns(store)
    for name in ("embeddings", *cols):
        check_target(folder / f"{name}.npy", store, overwrite, "npy")
    make_folder(folder)
    rows = np.arange(len(store.paths))

    def embeddings(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(rows), store.dim))
        for start, (X, _) in zip(range(0, len(rows), CHUNK_ROWS), store.iter_chunks(rows, CHUNK_ROWS)):
            out[start:start + len(X)] = X
        out.flush()
        del out

    atomic_write(folder / "embeddings.npy", embeddings)
    for name, values in cols.items():
        atomic_write(folder / f"{name}.npy", lambda tmp, v=values: _save(tmp, v))
    return folder


def _save(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save(path) would add .npy to the temporary file's name
        np.save(fh, values, allow_pickle=False)


def export_parquet(store: FeatureStore, path: Path, overwrite: bool = False) -> Path:
    check_target(path, store, overwrite, "parquet")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FeatbenchError("--format parquet needs pyarrow: pip install 'featbench[parquet]'") from None
    cols = columns(store)
    rows = np.arange(len(store.paths))
    schema = pa.schema([("path", pa.string()), ("label", pa.string()), ("split", pa.string()),
                        ("embedding", pa.list_(pa.float32(), store.dim))])

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start, (X, _) in zip(range(0, len(rows), CHUNK_ROWS), store.iter_chunks(rows, CHUNK_ROWS)):
                part = slice(start, start + len(X))
                labels = cols["labels"][part]
                writer.write_batch(pa.record_batch([
                    pa.array(cols["paths"][part].tolist()),
                    pa.array(labels.tolist(), mask=labels == ""),
                    pa.array(cols["splits"][part].tolist()),
                    pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), store.dim)], schema=schema))

    return atomic_write(path, write)


def export(path, fmt: str, out: Path | None = None, overwrite: bool = False) -> Path:
    """Export the store at `path` as `fmt` to `out` (default: beside the store, STEM-export/ for npy,
    STEM.parquet for parquet); returns what was written. Files already there are replaced only with
    `overwrite`, and then only earlier exports (`check_target`): the store itself never."""
    if fmt not in FORMATS:
        raise FeatbenchError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    with FeatureStore(path) as store:
        store.check_intact()
        if fmt == "npy":
            return export_npy(store, Path(out) if out else store.path.with_name(f"{store.path.stem}-export"),
                              overwrite)
        return export_parquet(store, Path(out) if out else store.path.with_suffix(".parquet"), overwrite)
