"""The one atomic write: a temporary file renamed over the target, so readers never see half a file; and the CSV
text such writes hold."""
import csv
import io
import os
from pathlib import Path


def atomic_write(path, write) -> Path:
    """Call `write(tmp_path)`, then rename the temporary file over `path`; returns `path`.

    A failure (or a kill) leaves `path` as it was and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as CSV under a header of `columns` (default: every key, in first-seen order); None is empty."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if r.get(k) is None else r[k] for k in columns} for r in rows)
    return buf.getvalue()
