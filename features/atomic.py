"""The one atomic write: a temporary file renamed over the target, so readers never see half a file; the output
folders such writes go to, checked before any work; and the CSV text such writes hold."""
import csv
import io
import os
from pathlib import Path

from features.errors import FeatbenchError


def atomic_write(path, write) -> Path:
    """Call `write(tmp_path)`, then rename the temporary file over `path`; returns `path`.

    A failure (or a kill) leaves `path` as it was and no temporary file behind."""
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
