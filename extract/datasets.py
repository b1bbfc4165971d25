"""Image datasets: format detection, labels from names/folders/CSV, deterministic stratified splits."""
import csv
import hashlib
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.entries import entry_kind
from features.errors import FeatbenchError
from features.schema import NO_LABEL, SPLITS, check_dataset_name

FORMATS = ("dogs-vs-cats", "oxford-pets", "imagefolder", "csv")
DVC_LABELLED = re.compile(r"^(cat|dog)\.\d+\.[^.]+$", re.IGNORECASE)
DVC_UNLABELLED = re.compile(r"^\d+\.[^.]+$")
PETS = re.compile(r"^(?P<breed>[A-Za-z][A-Za-z_]*?)_\d+\.[^.]+$")
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class Item:
    """One file of the dataset: absolute path, path relative to the root, label index (-1: none)."""
    path: Path
    rel: str
    label: int = NO_LABEL
    split: str = ""


@dataclass
class Dataset:
    """A listed dataset: items sorted by relative path; files that could not be labelled are `unlisted`."""
    root: Path
    format: str
    name: str
    class_names: list
    items: list
    target: str = ""
    unlisted: list = field(default_factory=list)  # (rel path, reason)

    def describe(self) -> dict:
        return {"root": str(self.root), "format": self.format, "name": self.name, "target": self.target,
                "classes": len(self.class_names), "files": len(self.items) + len(self.unlisted),
                "listing": self.listing()}

    def listing(self) -> str:
        """A fingerprint of what was listed (each file's relative path with its label or why it is unlisted), not
        of the files' content: two copies of a dataset give the same one (`features merge` compares shards')."""
        lines = [f"{it.rel}\t{it.label}" for it in self.items] + [f"{rel}\t{why}" for rel, why in self.unlisted]
        return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _listed(entry: Path) -> bool:
    """Whether a folder's entry is listed as a file: anything not hidden but a sub-folder not named like an image."""
    return not entry.name.startswith(".") and (not entry.is_dir() or entry.suffix.lower() in IMAGE_EXT)


def _files(folder: Path) -> list[Path]:
    """Every entry `_listed`: FIFOs, sockets, devices, broken or looping links and folders named like images are
    listed too, so that extraction skips them with a reason instead of losing them."""
    return sorted(p for p in folder.iterdir() if _listed(p))


def _walk(top: Path, root: Path, seen: dict) -> tuple[list[Path], list[tuple[str, str]]]:
    """The `_listed` entries under `top`, sub-folders and symbolic links to folders followed, and the folders
    not walked, each (path relative to `root`, reason): unreadable ones, and those whose real path `seen` holds
    (real path → where it was listed), a link loop included, so that each folder is listed once."""
    files, unlisted = [], []

    def rel(path) -> str:
        return Path(path).relative_to(root).as_posix()

    def first_visit(folder: Path) -> bool:
        real = os.path.realpath(folder)
        if real in seen:
            unlisted.append((rel(folder), f"a symbolic link to a folder listed already ({seen[real]})"))
            return False
        seen[real] = rel(folder)
        return True

    def unreadable(e: OSError) -> None:
        unlisted.append((rel(e.filename), f"unreadable folder ({e.strerror or type(e).__name__})"))

    if first_visit(top):
        for folder, dirs, names in os.walk(top, onerror=unreadable, followlinks=True):
            entries = [Path(folder, n) for n in sorted(dirs + names)]
            files += [p for p in entries if _listed(p)]
            dirs[:] = [p.name for p in entries if p.name in dirs and not _listed(p) and not p.name.startswith(".")
                       and first_visit(p)]
    return files, unlisted


def _image_names(folder: Path) -> list[str]:
    return [p.name for p in _files(folder) if p.suffix.lower() in IMAGE_EXT]


def detect_format(path: Path) -> str:
    """Guess the format from mostly cat.N/dog.N names, two or more Breed_N breeds, or class folders;
    raise with the choices when it is ambiguous (numbered N.jpg files alone carry no label), or say so when
    no file at any depth is named like an image."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise FeatbenchError(f"{path}: a file, but not a .csv list; pass a folder or a CSV of path,label[,split]")
    if not path.is_dir():
        raise _no_folder(path)
    names = _image_names(path)
    for sub in ("train", "images"):
        if not names and (path / sub).is_dir():
            names = _image_names(path / sub)
    if names:
        if sum(bool(DVC_LABELLED.match(n)) for n in names) >= 0.9 * len(names):
            return "dogs-vs-cats"
        breeds = [m["breed"] for m in map(PETS.match, names) if m]
        if len(breeds) >= 0.9 * len(names) and len(set(breeds)) >= 2:
            return "oxford-pets"
    if any(d.is_dir() and _image_names(d) for d in path.iterdir()):
        return "imagefolder"
    if not any(p.suffix.lower() in IMAGE_EXT for p in _walk(path, path, {})[0]):
        raise FeatbenchError(f"{path}: no image files in this folder or its sub-folders (named "
                             f"{', '.join(sorted(IMAGE_EXT))}); check --data or the [dataset] path in featbench.toml")
    raise FeatbenchError(f"{path}: cannot tell the dataset format; pass --format "
                         f"{'|'.join(FORMATS)}")


def _no_folder(path: Path) -> FeatbenchError:
    """No dataset folder at `path`: nothing there, or what is (a FIFO, a broken link, …)."""
    kind = entry_kind(path)
    what = ("no such dataset folder" if kind == "nothing" else
            f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a dataset folder")
    return FeatbenchError(f"{path}: {what}; check --data or the [dataset] path in featbench.toml")


GENERIC_FOLDERS = {"train", "test", "val", "valid", "images", "data", "img", "imgs"}


def _slug(path: Path) -> str:
    """Folder name, prefixed by its parent's when it is generic (dogs-vs-cats/train → dogs-vs-cats-train), as one
    folder name `check_dataset_name` accepts: no leading dot, and `dataset` where nothing ASCII is left."""
    path = path.resolve()
    parts = [path.parent.name, path.name] if path.name.lower() in GENERIC_FOLDERS else [path.name]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.").lower() or "dataset"


def _unread_folders(folder: Path, read: list[Path], root: Path, reason: str) -> list[tuple[str, str]]:
    """The sub-folders of `folder` that are not in `read`, not hidden, not named like an image (those are listed
    as files) and not empty, each (path relative to `root`, reason)."""
    def has_entries(d: Path) -> bool:
        try:
            return any(not n.startswith(".") for n in os.listdir(d))
        except OSError:
            return True
    return [(d.relative_to(root).as_posix(), reason) for d in sorted(folder.iterdir())
            if d.is_dir() and d not in read and not _listed(d) and not d.name.startswith(".") and has_entries(d)]


DVC_FOLDERS = ("train", "test", "test1")
DVC_UNREAD = ("not read: a Dogs vs. Cats dataset's images are at its root, or in train/, test/ and test1/ when the "
              "root has none; list these in a CSV of path,label[,split] to use them")


def _dogs_vs_cats(root: Path):
    """Labels from cat.N/dog.N names (N.jpg: unlabelled test images) at the root, or in the Kaggle folders when
    the root has none; other non-empty sub-folders are unlisted, unread, with the reason."""
    folders = [root] if _image_names(root) else [root / d for d in DVC_FOLDERS if (root / d).is_dir()]
    items, unlisted = [], []
    for folder in dict.fromkeys([root, *folders]):
        unlisted += _unread_folders(folder, folders, root, DVC_UNREAD)
    for folder in folders:
        for p in _files(folder):
            rel = p.relative_to(root).as_posix()
            if DVC_LABELLED.match(p.name):
                items.append(Item(p, rel, 0 if p.name.lower().startswith("cat") else 1))
            elif DVC_UNLABELLED.match(p.name):
                items.append(Item(p, rel, NO_LABEL, "test"))
            else:
                unlisted.append((rel, "no label in file name (expected cat.N.jpg, dog.N.jpg or N.jpg)"))
    return ["cat", "dog"], items, unlisted


def _pets_images(root: Path) -> Path:
    """An Oxford-IIIT Pet dataset's folder of images: `root/images` when the images are there (the release's
    layout), so that the release's folder and its images/ are one dataset: one root, paths, splits and name."""
    return root / "images" if (root / "images").is_dir() and not _image_names(root) else root


PETS_UNREAD = ("not read: an Oxford-IIIT Pet dataset's images are in one folder; list these in a CSV of "
               "path,label[,split] to use them")


def _oxford_pets(root: Path, target: str):
    """Labels from Breed_N names (a capital letter: a cat breed) in the one folder of images; its non-empty
    sub-folders are unlisted, unread, with the reason."""
    found, unlisted = [], _unread_folders(root, [], root, PETS_UNREAD)
    for p in _files(root):
        rel = p.relative_to(root).as_posix()
        m = PETS.match(p.name)
        if m is None:
            unlisted.append((rel, "no breed in file name (expected Breed_N.jpg)"))
            continue
        breed = m["breed"]
        found.append((p, rel, breed if target == "breed" else ("cat" if breed[0].isupper() else "dog")))
    classes = sorted({c for *_, c in found})
    index = {c: i for i, c in enumerate(classes)}
    return classes, [Item(p, rel, index[c]) for p, rel, c in found], unlisted


def _imagefolder(root: Path):
    """One class per sub-folder with an image in it (walked to any depth, links followed, each folder once);
    files at the root, the entries of a folder without images and a folder whose name is not UTF-8 (no class
    name a store can keep) are unlisted, with the reason."""
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise FeatbenchError(f"{root}: no class sub-folders; an imagefolder dataset has one folder per class")
    unlisted = [(p.name, "not in a class folder (an imagefolder dataset has one folder per class)")
                for p in _files(root) if not p.is_dir()]
    unlisted += [(c, NOT_UTF8) for c in folders if not _utf8(c)]
    folders = [c for c in folders if _utf8(c)]
    seen, found = {os.path.realpath(root): "the dataset folder"}, {}
    for c in folders:
        files, unwalked = _walk(root / c, root, seen)
        unlisted += unwalked
        if any(p.suffix.lower() in IMAGE_EXT for p in files):
            found[c] = files
            continue
        unlisted += [(p.relative_to(root).as_posix(), f"in {c}, a folder with no images, so no class")
                     for p in files]
        if c not in {rel for rel, _ in unwalked}:
            unlisted.append((c, "a folder with no images, so no class"))
    items = [Item(p, p.relative_to(root).as_posix(), i) for i, files in enumerate(found.values()) for p in files]
    return list(found), items, unlisted


NOT_UTF8 = "path is not valid UTF-8 (rename it)"


def _utf8(text: str) -> bool:
    """Whether a path is valid UTF-8 (not a name whose bytes are Latin-1, say, which Python holds as surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _utf8_only(items: list[Item], unlisted: list) -> tuple[list[Item], list]:
    """The items whose path is valid UTF-8, the text a store keeps, and the unlisted entries with the others added
    (`NOT_UTF8`), each path shown with the bytes that are not UTF-8 escaped (`caf\\xe9.jpg`)."""
    def shown(rel: str) -> str:
        return rel.encode(errors="surrogateescape").decode(errors="backslashreplace")
    unlisted = unlisted + [(it.rel, NOT_UTF8) for it in items if not _utf8(it.rel)]
    return [it for it in items if _utf8(it.rel)], [(shown(rel), why) for rel, why in unlisted]


def _field_count(where: str, n: int, header: list[str]) -> FeatbenchError:
    """The one-line refusal of a row with `n` fields under `header`, and what to do."""
    return FeatbenchError(f"{where}: {n} field{'s' * (n != 1)} where the header has {len(header)} "
                          f"({','.join(header)}); put a path or label with a comma in double quotes, and give "
                          "every row each column (an empty label: a trailing comma)")


def _csv_rows(path: Path) -> list[tuple[int, dict]]:
    """Each non-blank row as (its first line, {column: field without surrounding whitespace}); a header
    without path and label or with a column twice, a row whose field count is not the header's, malformed CSV
    or text that is not UTF-8 is one line naming the file (and line)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's byte-order mark
            reader, line = csv.reader(fh), 1
            header = [h.strip() for h in next(reader, [])]
            if not {"path", "label"} <= set(header):
                raise FeatbenchError(f"{path}: needs a header with columns path,label[,split]")
            twice = sorted({h for h in header if header.count(h) > 1})
            if twice:
                raise FeatbenchError(f"{path}:1: column {twice[0]!r} is in the header twice; keep one")
            rows, line = [], reader.line_num + 1
            for fields in reader:
                if fields and len(fields) != len(header):
                    raise _field_count(f"{path}:{line}", len(fields), header)
                if fields:
                    rows.append((line, {h: f.strip() for h, f in zip(header, fields)}))
                line = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise FeatbenchError(f"{path}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8") from None
    except csv.Error as e:
        raise FeatbenchError(f"{path}:{line}: not valid CSV ({e})") from None
    return rows


def _csv_labels(path: Path, rows: list[tuple[int, dict]]) -> list[str]:
    """The sorted labels of the rows; two that differ only by case are one line naming both spellings."""
    first: dict[str, tuple[str, int]] = {}
    for line, r in rows:
        label = r["label"]
        if label:
            spelled, at = first.setdefault(label.casefold(), (label, line))
            if spelled != label:
                raise FeatbenchError(f"{path}:{line}: label {label!r} differs only by case from {spelled!r} "
                                     f"(line {at}); spell each class one way")
    if rows and not first:
        raise FeatbenchError(f"{path}: no row has a label, so there is no class to learn; fill in the label "
                             "column (unlabelled rows are test images beside labelled ones)")
    return sorted(spelled for spelled, _ in first.values())


def _csv(path: Path):
    """Rows of path,label[,split]; an unlabelled row is a test image (without a split) or one line; each path once."""
    root = path.parent
    rows = _csv_rows(path)
    labels = _csv_labels(path, rows)
    index = {c: i for i, c in enumerate(labels)}
    items, first_line = [], {}
    for line, r in rows:
        split = r.get("split") or ("" if r["label"] else "test")
        if split and split not in SPLITS:
            raise FeatbenchError(f"{path}:{line}: split {split!r} is not one of {', '.join(SPLITS)}")
        if not r["path"]:
            raise FeatbenchError(f"{path}:{line}: the path is empty; fill it in or delete the row")
        if not r["label"] and split != "test":
            raise FeatbenchError(f"{path}:{line}: {r['path']} is in the {split} split but has no label; label it, or "
                                 "give it the test split (or none): an unlabelled image is a test image")
        if "\0" in r["path"]:
            raise FeatbenchError(f"{path}:{line}: the path contains a NUL byte")
        p = Path(r["path"])
        p = p if p.is_absolute() else root / p
        key = os.path.realpath(p)  # not Path.resolve, which raises on a symbolic link loop
        if key in first_line:
            raise FeatbenchError(f"{path}:{line}: {r['path']} is listed twice (first on line {first_line[key]}); "
                                 "list each image once")
        first_line[key] = line
        items.append(Item(p, r["path"], index[r["label"]] if r["label"] else NO_LABEL, split))
    return labels, items, []


def load_dataset(path, format: str = "auto", target: str = "breed", name: str = "") -> Dataset:
    """List a dataset (no image is opened): items sorted by relative path, with labels; `name`, if given, is
    one folder name (no separator, not starting with '.'), else the name comes from the path."""
    if name:
        check_dataset_name(name, "--name, or [dataset] name")
    root = Path(path).expanduser()
    with _readable(root):
        return _load(root, format, target, name)


@contextmanager
def _readable(root: Path):
    """A folder or file of the dataset this user may not read (a mode-000 root, a sub-folder, the CSV list),
    whatever the format, as one line naming it and what to do."""
    try:
        yield
    except OSError as e:
        raise FeatbenchError(f"{e.filename or root}: cannot read it ({e.strerror or type(e).__name__}); make the "
                             f"dataset readable (chmod -R u+rX {root}) or pass another --data") from None


def _load(root: Path, format: str, target: str, name: str) -> Dataset:
    """`load_dataset` of the path `root`."""
    fmt = detect_format(root) if format in ("", "auto", None) else format
    if fmt not in FORMATS:
        raise FeatbenchError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "csv" and not root.is_dir():
        raise _no_folder(root)
    if fmt == "csv" and not root.is_file():
        raise FeatbenchError(f"{root}: {'a folder' if root.is_dir() else 'no such file'}; --format csv needs "
                             "--data FILE.csv, a CSV of path,label[,split] (or drop --format csv for a folder)")
    if target not in ("breed", "species"):
        raise FeatbenchError(f"unknown --target {target!r}; choose breed or species")
    if fmt == "oxford-pets":
        root = _pets_images(root)
    if fmt == "dogs-vs-cats":
        classes, items, unlisted = _dogs_vs_cats(root)
    elif fmt == "oxford-pets":
        classes, items, unlisted = _oxford_pets(root, target)
    elif fmt == "imagefolder":
        classes, items, unlisted = _imagefolder(root)
    else:
        classes, items, unlisted = _csv(root)
    items, unlisted = _utf8_only(items, unlisted)
    if not items:
        raise FeatbenchError(f"{root}: no images found for format {fmt}")
    items.sort(key=lambda it: it.rel)
    slug = name or _slug(root.parent if fmt == "oxford-pets" and root.name == "images" else
                         root.with_suffix("") if fmt == "csv" else root)
    if fmt == "oxford-pets" and not name:
        slug += f"-{target}"
    return Dataset(root.resolve() if fmt != "csv" else root.resolve().parent, fmt, slug, classes, items,
                   target if fmt == "oxford-pets" else "", unlisted)


def _rank_key(seed: int, rel: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{rel}".encode(), digest_size=8).digest()


def train_counts(where, names: list, y: np.ndarray) -> np.ndarray:
    """Train images per class; one line where fewer than two classes have any: no classifier can learn."""
    counts = np.bincount(y, minlength=len(names))
    if (counts > 0).sum() < 2:
        raise FeatbenchError(f"{where}: the train split has only one class ({names[int(counts.argmax())]}); "
                             "a classifier needs at least two")
    return counts


def split_fractions(values) -> tuple[float, float, float]:
    """Train, val and test fractions from `0.7,0.15,0.15` or a sequence: three finite, non-negative
    numbers that sum to 1; anything else is one line saying so."""
    text = values if isinstance(values, str) else ",".join(map(str, values))
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not all(math.isfinite(x) and x >= 0 for x in parts) or not math.isclose(sum(parts), 1):
        raise FeatbenchError(f"split fractions {text!r}: give three non-negative train,val,test fractions that sum "
                             "to 1, e.g. --splits 0.7,0.15,0.15")
    return parts


def assign_splits(items: list, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """Deterministic stratified split codes (index into SPLITS) for items, from their paths alone.

    Items that already carry a split (CSV column, unlabelled test images) keep it. Within each class
    the images are ordered by a seeded hash of their relative path and cut at the fractions, so the
    assignment is the same for every backbone and every listing order.
    """
    f = np.array(split_fractions(fractions))
    cuts = np.cumsum(f / f.sum())
    codes = np.full(len(items), -1, dtype=np.int8)
    by_class: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        if it.split:
            codes[i] = SPLITS.index(it.split)
        else:
            by_class.setdefault(it.label, []).append(i)
    for members in by_class.values():
        members.sort(key=lambda i: _rank_key(seed, items[i].rel))
        n = len(members)
        bounds = np.round(cuts * n).astype(int)
        for rank, i in enumerate(members):
            codes[i] = int(np.searchsorted(bounds, rank, side="right"))
    return codes
