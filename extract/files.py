"""Reading a listed file safely: regular files only, never more than a byte cap, a reason when not; and a
file given on the command line (a config, a curve) the same way."""
import os
import stat
from pathlib import Path

from extract.images import BadImage
from features.entries import NOT_REGULAR, given_file, unreadable
from features.errors import FeatbenchError

MAX_IMAGE_BYTES = 256 * 2**20  # larger files are skipped unread (--max-image-bytes)


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def file_stamp(path: Path) -> str:
    try:
        return _stamp(path.stat())
    except OSError:
        return ""


def within(stamp: str, max_bytes: int) -> bool:
    """Whether the file a stamp was taken of is at most `max_bytes` long (True for a stamp that says no size)."""
    size = stamp.partition(":")[0]
    return not size.isdigit() or int(size) <= max_bytes


def size_text(max_bytes: int) -> str:
    """`256 MiB`, or `100000 bytes` where the size is no whole number of MiB."""
    return f"{max_bytes / 2**20:g} MiB" if max_bytes % 2**20 == 0 else f"{max_bytes} bytes"


def _too_large(max_bytes: int) -> BadImage:
    return BadImage(f"larger than the {size_text(max_bytes)} cap (--max-image-bytes)")


def _refuse(st: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise BadImage("a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise BadImage(f"not a regular file ({NOT_REGULAR.get(stat.S_IFMT(st.st_mode), 'unknown type')})")
    if st.st_size > max_bytes:
        raise _too_large(max_bytes)


def read_file(path: Path, max_bytes: int) -> tuple[bytes, str]:
    """The bytes of a regular file (symbolic links followed) and its stamp, or BadImage with why not.

    Anything else (FIFO, device, socket, folder) is refused by its `stat` without being opened; the open
    descriptor is checked again (non-blocking, so a FIFO swapped in meanwhile cannot hang the read), and
    no more than `max_bytes` are read (files whose size says 0, as in /proc, included).
    """
    try:
        _refuse(os.stat(path), max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise BadImage(unreadable(path, e)) from None
    try:
        st = os.fstat(fd)
        _refuse(st, max_bytes)
        parts, total = [], 0
        while total <= max_bytes:
            part = os.read(fd, min(max_bytes + 1 - total, max(st.st_size + 1 - total, 1 << 16)))
            if not part:
                break
            parts.append(part)
            total += len(part)
        if total > max_bytes:
            raise _too_large(max_bytes)
        return b"".join(parts), _stamp(st)
    except OSError as e:
        raise BadImage(unreadable(path, e)) from None
    finally:
        os.close(fd)


def read_given(path, what: str, missing: str) -> bytes:
    """The bytes of a file given on the command line, a `what` (`config file`), read as `read_file` reads an
    image; one line naming it when it is not there (`missing`: what to say), a folder, or no readable regular
    file (a FIFO is refused by its `stat`, never opened)."""
    path = given_file(path, what, missing)
    try:
        return read_file(path, MAX_IMAGE_BYTES)[0]
    except BadImage as e:
        raise FeatbenchError(f"{path}: cannot read this {what}: {e}") from None
