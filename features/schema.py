"""Layout of a featbench store: dataset names, split codes and format constants."""
import hashlib
import importlib.metadata
import platform
import zlib

import numpy as np

from features.errors import FeatbenchError

FORMAT = "featbench-store"
FORMAT_VERSION = 2  # 2: per-block checksums of the embeddings (`checksums`)
SPLITS = ("train", "val", "test")
NO_LABEL = -1
ROW_DATASETS = ("embeddings", "labels", "splits", "paths", "hashes", "stamps")  # a row per embedded image
SKIPPED_COLUMNS = ("paths", "reasons", "stamps", "hashes")  # datasets of the `skipped` group, a row per skip


def check_dataset_name(name, source: str) -> str:
    """`name` where it names one folder in --out (text, no '/', '\\' or NUL, not starting with '.'), else a
    one-line refusal naming where it came from (`source`)."""
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise FeatbenchError(f"dataset name {name!r} ({source}): it names one folder in --out; use no '/' or "
                             "'\\' and do not start it with '.'")
    return name


def featbench_version() -> str:
    try:
        return importlib.metadata.version("featbench")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def library_versions() -> dict:
    """Versions of everything that can change an embedding."""
    out = {"python": platform.python_version(), "featbench": featbench_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "h5py", "pillow", "simplejpeg", "open_clip_torch",
                 "onnxruntime", "onnx"):  # None: not installed
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def split_fingerprint(paths, labels, splits) -> str:
    """Hash of which image is in which split with which label: equal for every backbone of a dataset."""
    h = hashlib.sha256()
    for p, y, s in zip(paths, np.asarray(labels).tolist(), np.asarray(splits).tolist()):
        h.update(f"{p}\t{y}\t{s}\n".encode())
    return h.hexdigest()[:16]


def crc(rows: np.ndarray, running: int = 0) -> int:
    """The checksum of embedding rows as stored: CRC-32 of their C-order bytes (continuing `running`)."""
    return zlib.crc32(np.ascontiguousarray(rows), running)
