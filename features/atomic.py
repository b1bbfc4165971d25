"""The one atomic write: a temporary file of its own, synced and renamed over the target, so readers never see half
a file (a full disk or a read-only folder: one line); the output folders and files such writes go to, checked
before any work; an earlier result a write would replace with another, kept aside; and the CSV text such writes
hold."""
import csv
import errno
import glob
import hashlib
import io
import json
import os
import re
import socket
import sys
import tempfile
from pathlib import Path

from features.errors import FeatbenchError

UMASK = os.umask(0o022)  # read once, at import: reading it sets it, which other threads would see
os.umask(UMASK)


def _machine() -> str:
    """8 hex digits for this machine, boot and process-id namespace (a container has its own): where a pid names
    one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        boot = namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}/{boot}/{namespace}".encode()).hexdigest()[:8]


MACHINE = _machine()
# NAME.MACHINE-PID.XXXXXXXX.tmp: the owner and mkstemp's 8 characters; before 2026-12-04 NAME.XXXXXXXX.tmp
TEMPORARY = re.compile(r"(?:(?P<machine>[0-9a-f]{8})-(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp")


def atomic_write(path, write, tidy: bool = True) -> Path:
    """Call `write(tmp_path)` on a new file of its own, `NAME.MACHINE-PID.XXXXXXXX.tmp` beside `path` (made, never
    followed as a link, with the mode `open` gives), sync it, then rename it over `path`; returns `path`.

    A failure leaves `path` as it was and no temporary file behind; a kill may leave one, which the next
    `atomic_write` of `path` on this machine removes (`remove_temporaries`), unless `tidy` is off: a journal
    writing a new file per batch, which would list its growing folder each time and which is cleared whole."""
    path = check_file(path)
    make_folder(path.parent)
    if tidy:
        remove_temporaries(path, everyone=False)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{MACHINE}-{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        raise unwritable(path, e) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        os.close(fd)
        write(tmp)
        _sync(tmp)
        os.replace(tmp, path)
        _sync(path.parent)
    except OSError as e:  # one of these files, not one that `write` read
        raise (unwritable(path, e) if e.filename in (None, str(tmp), str(path)) else e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


FULL = {errno.ENOSPC, errno.EDQUOT}
REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS}


def unwritable(path, e: OSError) -> Exception:
    """A failed write of `path` as one line saying what to do where the disk is full or the folder not writable;
    any other error as it was."""
    if e.errno in FULL:
        return FeatbenchError(f"{path}: cannot write it ({e.strerror}); free some space or pass an --out on another "
                              "disk, then re-run the same command: finished work is kept")
    if e.errno in REFUSED:
        return FeatbenchError(f"{path}: cannot write it ({e.strerror}); pass an --out you can write to")
    return e


def remove_temporaries(path, everyone: bool = True) -> None:
    """Remove the temporary files killed `atomic_write`s of `path` left: every one (`everyone`: only for a caller
    that holds the lock of `path`, as a live writer's file would go too), else those of processes of this machine
    that have ended."""
    path = Path(path)
    for tmp in path.parent.glob(glob.escape(path.name) + ".*.tmp"):
        owner = TEMPORARY.fullmatch(tmp.name[len(path.name) + 1:])
        try:
            if owner and (everyone or (owner["machine"] == MACHINE and not _running(int(owner["pid"])))):
                tmp.unlink(missing_ok=True)
        except (OSError, OverflowError):  # another user's file, a folder by that name, a pid no process can have
            if everyone:
                raise


def _running(pid: int) -> bool:
    """Whether process `pid` of this machine may still run (where it cannot be asked, as on Windows: yes)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _sync(path: Path) -> None:
    """fsync a file; a folder best effort (not every system opens or syncs one)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not path.is_dir():
            raise


def same_outcome(path, doc: dict) -> bool:
    """Whether the JSON record at `path` says what `doc` does but for when, where from and how fast it was made and
    by which version (keys `created`, `path`, `featbench_version`, `split_source`, `dataset_root`, and any ending in
    `seconds` at any depth); False where it does not read."""
    def outcome(v, top: bool = False):
        if isinstance(v, dict):
            return {k: outcome(x) for k, x in v.items() if not k.endswith("seconds")
                    and not (top and k in ("created", "path", "featbench_version", "split_source", "dataset_root"))}
        return [outcome(x) for x in v] if isinstance(v, list) else v
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return outcome(old, True) == outcome(json.loads(json.dumps(doc)), True)


def keep_earlier(path, same: bool, companions=()) -> Path | None:
    """Where `path` holds an earlier result that this run's is not the `same` as, move it and those of its
    `companions` that are there to `previous/N/` beside it, under their names, N the first where none of them is
    yet, and say so on stderr: nothing computed is replaced unseen. Returns where `path` went (None: nothing
    moved)."""
    path = Path(path)
    if same or not path.is_file():
        return None
    files = [path, *(Path(c) for c in companions if Path(c).is_file())]
    n = 1
    while any((path.parent / "previous" / str(n) / f.name).exists() for f in files):
        n += 1
    folder = make_folder(path.parent / "previous" / str(n))
    try:
        for f in files:
            os.replace(f, folder / f.name)
    except OSError as e:
        raise unwritable(folder / f.name, e) from None
    print(f"note: {path}: this run's result differs from the one there, which is kept as {folder / path.name}",
          file=sys.stderr)
    return folder / path.name


def check_folder(folder, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be made: it or a folder above it is a file, or the
    deepest one that exists cannot be written to (the one line names `flag`, the option that gave it). Tried by
    making and removing a folder there (permission bits do not tell for root, /proc or a read-only mount); leaves
    nothing; returns `folder`."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents, Path.cwd()) if p.exists())
    if not existing.is_dir():
        raise FeatbenchError(f"{existing}: is a file, so the output folder {folder} cannot be made there; pass an "
                             f"output folder ({flag}) that is not a file or inside one")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".featbench-check-", dir=existing))
    except OSError as e:
        remedy = "free some space or pass one on another disk" if e.errno in FULL else "pass one you can write to"
        raise FeatbenchError(f"{existing}: the output folder {folder} cannot be made there ({e.strerror}); {remedy} "
                             f"({flag})") from None
    return folder


def recorded_roots(dataset: dict | None, store=None) -> list[Path]:
    """The folders a dataset record names, as real paths: its `root` and, seen from the folder of `store` (the
    store holding the record), its `root_from_store`, where a project moved or copied whole keeps its images;
    none without a root."""
    root = (dataset or {}).get("root")
    if not root:
        return []
    roots = [Path(os.path.realpath(root))]
    if store is not None and dataset.get("root_from_store"):
        roots.append(Path(os.path.realpath(Path(store).parent / dataset["root_from_store"])))
    return roots


def images_folder(dataset: dict | None, store=None) -> Path | None:
    """Where a dataset record's images are: the first of its `recorded_roots` that is a folder, else its recorded
    root (gone: reading it says so); None when it records none."""
    roots = recorded_roots(dataset, store)
    return next((r for r in roots if r.is_dir()), roots[0] if roots else None)


def check_outside(folder, dataset: dict | None, store=None) -> Path:
    """Refuse an output folder inside the listed folder of `dataset` (a store's or a listing's record: root,
    format; a CSV names its files), as `recorded_roots` finds it from `store`: what is written there would be
    listed as the dataset's images, or a new class, on the next extraction. Returns `folder`."""
    if (dataset or {}).get("format") == "csv":
        return Path(folder)
    real = Path(os.path.realpath(folder))
    for root in recorded_roots(dataset, store):
        if real.is_relative_to(root):
            raise FeatbenchError(f"{folder}: this output folder lies inside the dataset folder {root}, so the next "
                                 "extraction would list what is written there as images; pass an --out outside it "
                                 "(stores extracted into it: move them out, or use --features STORE --out DIR)")
    return Path(folder)


def check_file(path, flag: str = "--out") -> Path:
    """Refuse, before any work, a file to write whose place a folder takes (the rename would fail at the end; the
    one line names `flag`, the option that gave it). Creates nothing; returns `path`."""
    path = Path(path)
    if path.is_dir():
        raise FeatbenchError(f"{path}: a folder is where this file goes; move it away or pass another "
                             f"{'output folder (--out)' if flag == '--out' else flag}")
    return path


def make_folder(folder) -> Path:
    """`mkdir -p folder`; a file in the way (or no permission) is one line naming the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FeatbenchError(f"{folder}: cannot create this output folder ({e.strerror or type(e).__name__}); "
                             "pass an output folder (--out) that is not a file or inside one") from None
    return folder


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as CSV under a header of `columns` (default: every key, in first-seen order); None is empty."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if r.get(k) is None else r[k] for k in columns} for r in rows)
    return buf.getvalue()
