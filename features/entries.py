"""What is at a path, told without opening it: a regular file, a folder, a FIFO, a device, a broken link…"""
import errno
import os
import stat
from pathlib import Path

from features.errors import FeatbenchError

NOT_REGULAR = {stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
               stat.S_IFSOCK: "socket"}


def entry_kind(path: Path) -> str:
    """What is at a path: `file`, `folder`, `FIFO`, a device, `socket`, a broken or looping link, an unreadable
    one; `nothing` where nothing is."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return "nothing" if e.errno == errno.ENOENT and not Path(path).is_symlink() else unreadable(path, e)
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else NOT_REGULAR.get(stat.S_IFMT(mode),
                                                                                                   "special file")


def unreadable(path: Path, e: OSError) -> str:
    """Why `path` could not be read, in words."""
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if e.errno == errno.ENOENT and Path(path).is_symlink():
        return "broken symbolic link"
    return f"unreadable file ({e.strerror or type(e).__name__})"


def given_file(path, what: str, missing: str, error: type[FeatbenchError] = FeatbenchError) -> Path:
    """`path`, a file given on the command line (a `what`: `feature store`, `model file`…), where a regular file is
    there; else an `error` of one line naming it: `missing` where nothing is, what is there instead (a folder, a
    FIFO, a broken link) otherwise. Opens nothing."""
    path = Path(path)
    kind = entry_kind(path)
    if kind == "nothing":
        raise error(f"{path}: {missing}")
    if kind != "file":
        raise error(f"{path}: {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a {what}; pass the {what} itself")
    return path
