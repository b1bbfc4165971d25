"""The heads' split as image paths: what a fine-tune trains, selects and is scored on.

Read from a feature store of the dataset (the same backbone's if there is one), or, without a store,
recomputed from the listing with the same fractions and seed.
"""
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from extract.datasets import assign_splits, load_dataset
from extract.files import MAX_IMAGE_BYTES, file_stamp
from extract.names import store_stem
from features.atomic import images_folder, recorded_roots
from features.errors import StoreError
from features.reader import FeatureStore
from features.schema import NO_LABEL, SPLITS, split_fingerprint


@dataclass
class SplitImages:
    """The labelled images of each split, as relative paths under `root`, and where the split came from."""
    root: Path
    dataset: dict
    class_names: list
    paths: dict  # split → [rel path]
    labels: dict  # split → np.ndarray
    fingerprint: str
    source: str
    max_bytes: int = MAX_IMAGE_BYTES  # files larger are not read: the store's --max-image-bytes
    store: Path | None = None  # the store the split and `dataset` come from (its root_from_store is seen from it)

    def files_fingerprint(self) -> str:
        """16 hex digits of sha256 over every split's images' paths, sizes and modification times, as extraction
        stamps them: an image changed in place (same name) changes it."""
        h = hashlib.sha256()
        for split in SPLITS:
            for rel in self.paths[split]:
                h.update(f"{split}\t{rel}\t{file_stamp(self.root / rel)}\n".encode())
        return h.hexdigest()[:16]


def from_store(path: Path) -> SplitImages:
    """The split of the store at `path`, its dataset named as `FeatureStore.dataset_name` (outputs go under it)."""
    with FeatureStore(path) as fs:
        labels, splits, paths, meta = fs.labels, fs.splits, fs.paths, fs.meta
        dataset = {**(meta.dataset or {}), "name": fs.dataset_name}
    if "root" not in dataset:
        raise StoreError(f"{path}: records no dataset folder, so its images cannot be read; re-run `python -m "
                         "extract` on the dataset, or give it as --data instead of --features")
    keep = {s: np.flatnonzero((splits == SPLITS.index(s)) & (labels != NO_LABEL)) for s in SPLITS}
    return SplitImages(images_folder(dataset, path), dataset, meta.class_names,  # a project moved: found from the store
                       {s: [paths[i] for i in rows] for s, rows in keep.items()},
                       {s: labels[rows] for s, rows in keep.items()}, meta.split_fingerprint, f"store {path}",
                       meta.max_image_bytes or MAX_IMAGE_BYTES, Path(path))


def same_split(settings, backbone: str, features: Path | None = None) -> SplitImages:
    """The heads' split: `features`, else this backbone's store, else any store made with these
    fractions and seed, else the listing split afresh (identical when no image was skipped)."""
    if features is not None:
        return from_store(features)
    dataset = load_dataset(settings.path, settings.format, settings.target, settings.name)
    folder = settings.out / dataset.name
    candidates = [folder / f"{store_stem(backbone)}.h5"] + sorted(folder.glob("*.h5"))
    for path in dict.fromkeys(candidates):
        if not path.is_file():
            continue
        with FeatureStore(path) as fs:
            same = (fs.meta.split_fractions == list(settings.splits) and fs.meta.split_seed == settings.seed
                    and Path(os.path.realpath(dataset.root)) in recorded_roots(fs.meta.dataset, path))
        if same:  # the images of the folder given, where two copies of a project are the same dataset
            return replace(from_store(path), root=dataset.root)
    codes = assign_splits(dataset.items, settings.splits, settings.seed)
    labels = np.array([it.label for it in dataset.items])
    rels = [it.rel for it in dataset.items]
    keep = {s: np.flatnonzero((codes == SPLITS.index(s)) & (labels != NO_LABEL)) for s in SPLITS}
    return SplitImages(dataset.root, dataset.describe(), dataset.class_names,
                       {s: [rels[i] for i in rows] for s, rows in keep.items()},
                       {s: labels[rows] for s, rows in keep.items()},
                       split_fingerprint(rels, labels, codes), "dataset listing (no feature store yet)")
