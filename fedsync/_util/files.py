"""Files written whole or not at all: what checkpoints, ``History.save``, ``CSVLogger`` and the dashboard's
``run.json`` share.

Internal: its names may change without notice.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomically"]


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
