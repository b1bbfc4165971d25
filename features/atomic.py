"""The one atomic write: a temporary file renamed over the target, so readers never see half a file."""
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
