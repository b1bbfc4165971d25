"""The one atomic write: a temporary file of its own, synced and renamed over the target, so readers never see half
a file; the output folders such writes go to, checked before any work; and the CSV text such writes hold."""
import csv
import fcntl
import glob
import io
import os
import stat
import tempfile
from pathlib import Path

from features.errors import FeatbenchError

UMASK = os.umask(0o022)  # read once, at import: reading it sets it, which other threads would see
os.umask(UMASK)


def atomic_write(path, write) -> Path:
    """Call `write(tmp_path)` on a new file of its own, `NAME.XXXXXXXX.tmp` beside `path` (made, never followed
    as a link, with the mode `open` gives), sync it, then rename it over `path`; returns `path`.

    A failure leaves `path` as it was and no temporary file behind; a kill may leave one, which the next write of
    `path` removes (`remove_temporaries`)."""
    path = check_file(path)
    make_folder(path.parent)
    remove_temporaries(path)
    fd, tmp = _temporary(path)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        write(tmp)
        _sync(tmp)
        os.replace(tmp, path)
        _sync(path.parent)
    finally:
        os.close(fd)  # its lock goes with it, once renamed
        tmp.unlink(missing_ok=True)
    return path


def _temporary(path: Path) -> tuple[int, Path]:
    """Make `NAME.XXXXXXXX.tmp` beside `path` and hold it open with a shared flock (readers of the renamed file
    take one too) for as long as it is written, so that `remove_temporaries` leaves it alone; one it removed
    before the lock was taken is made anew. (HDF5 locks a file it writes: `write_store` opens it unlocked.)"""
    while True:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:  # a filesystem without locks: `remove_temporaries` can lock none there either
            return fd, Path(name)
        try:
            if os.path.samestat(os.fstat(fd), os.lstat(name)):
                return fd, Path(name)
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_temporaries(path) -> None:
    """Remove the temporary files `NAME.XXXXXXXX.tmp` that killed `atomic_write`s of `path` left: regular files
    (a link is neither followed nor removed) that no live writer holds locked."""
    path = Path(path)
    for tmp in path.parent.glob(glob.escape(path.name) + ".????????.tmp"):
        try:
            st = os.lstat(tmp)
            if not stat.S_ISREG(st.st_mode):
                continue
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
            if os.path.samestat(st, os.fstat(fd)):
                tmp.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


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


def check_folder(folder) -> Path:
    """Refuse, before any work, an output folder that cannot be made: it or a folder above it is a file, or the
    deepest one that exists cannot be written to. Creates nothing; returns `folder`."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents, Path.cwd()) if p.exists())
    if not existing.is_dir():
        raise FeatbenchError(f"{existing}: is a file, so the output folder {folder} cannot be made there; pass an "
                             "output folder (--out) that is not a file or inside one")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FeatbenchError(f"{existing}: not writable, so the output folder {folder} cannot be made there; pass "
                             "an output folder (--out) you can write to")
    return folder


def check_file(path) -> Path:
    """Refuse, before any work, a file to write whose place a folder takes (the rename would fail at the end).
    Creates nothing; returns `path`."""
    path = Path(path)
    if path.is_dir():
        raise FeatbenchError(f"{path}: a folder is where this file goes; move it away or pass another output "
                             "folder (--out)")
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
