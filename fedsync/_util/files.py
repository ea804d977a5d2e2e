"""Files written whole or not at all, and files of a saved run read with bounds: what checkpoints,
``History.save``/``load``, ``CSVLogger`` and the dashboard share.

Internal: its names may change without notice.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePath

__all__ = ["FileRefused", "read_inside", "read_regular", "write_atomically"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_WALKS = os.open in os.supports_dir_fd and bool(_NOFOLLOW and _DIRECTORY)


class FileRefused(ValueError):
    """A saved file that is not read: not a regular file, a symbolic link, outside its folder, or over its size cap.

    The message names the file and the cause.
    """


def write_atomically(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename.

    The bytes go to ``path.name + ".tmp"`` beside it, are flushed and fsync'ed, then
    renamed over ``path`` (``os.replace``): a reader sees the old file or the new one,
    never a part. Creates ``path``'s parent folders.

    Raises:
        OSError: the folder or file cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of ``path``, a regular file (not a link, FIFO or device) of at most ``limit`` bytes.

    Opened without following a final symbolic link and without blocking (a FIFO
    would wait for a writer forever); its size is checked before any byte is read,
    and at most ``limit + 1`` bytes are ever read (a file that grows meanwhile is
    refused too), so the memory it takes is at most its size.

    Raises:
        FileNotFoundError: there is no such file.
        FileRefused: a link, not a regular file, or over ``limit`` bytes, naming which.
        OSError: it cannot be read.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except OSError as exc:
        raise _refused(path, exc) from None
    return _read_fd(fd, path, limit)


def read_inside(root: str | os.PathLike[str], relative: str | PurePath, limit: int) -> bytes:
    """:func:`read_regular` of ``root / relative``, which must lie inside ``root``.

    No component of ``relative`` may be a symbolic link, ``..`` or absolute: each
    folder is opened relative to the one before it (``openat`` with ``O_NOFOLLOW``),
    so a link swapped in meanwhile cannot lead out of ``root``. ``root`` itself may be
    a link: the user named it.

    Raises:
        FileNotFoundError, FileRefused, OSError: as :func:`read_regular`; FileRefused
            also for a path that would leave ``root``.
    """
    root = Path(root)
    path = root / relative
    parts = PurePath(relative).parts
    if not parts or PurePath(relative).is_absolute() or any(p in ("..", ".") for p in parts):
        raise FileRefused(f"{path} is not a file inside {root}")
    if not _WALKS:  # no openat here: check the resolved path instead (a race remains)
        if not os.path.realpath(path).startswith(os.path.realpath(root) + os.sep):
            raise FileRefused(f"{path} leads out of {root} (a symbolic link); a saved run holds only real files")
        return read_regular(path, limit)
    folder = os.open(root, os.O_RDONLY | _DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=folder)
            except OSError as exc:
                raise _refused(path, exc, f"{root / part}") from None
            os.close(folder)
            folder = inner
        try:
            fd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK, dir_fd=folder)
        except OSError as exc:
            raise _refused(path, exc) from None
    finally:
        os.close(folder)
    return _read_fd(fd, path, limit)


def _refused(path: Path, exc: OSError, part: str | None = None) -> OSError | FileRefused:
    """The error for a file (or one of its folders, ``part``) that did not open."""
    if exc.errno in (errno.ELOOP, errno.EMLINK) or (part is not None and exc.errno == errno.ENOTDIR):
        what = part or str(path)
        return FileRefused(f"{what} is a symbolic link or not a folder; a saved run holds only real files and folders")
    return exc


def _read_fd(fd: int, path: Path, limit: int) -> bytes:
    """Up to ``limit`` bytes of the open regular file ``fd`` (closed here)."""
    with os.fdopen(fd, "rb", buffering=0) as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{path} is not a regular file (a FIFO, device, socket or folder); refusing to read it")
        if info.st_size > limit:
            raise FileRefused(f"{path} is {info.st_size} bytes, over the {limit} bytes such a file may have")
        chunks, total = [], 0
        while total <= limit:  # read what fstat said, and one byte more to see it did not grow
            chunk = f.read(min(info.st_size - total, limit - total) + 1 if total < info.st_size else 1)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise FileRefused(f"{path} grew over the {limit} bytes such a file may have while it was read")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
