"""Edits of a checkpoint folder's device states, as a forger who also rewrites checkpoint.json would make them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def listed(folder: Path) -> tuple[dict[str, Any], Path]:
    """``checkpoint.json`` and the path of the last round's ``devices.json``."""
    pointer = json.loads((folder / "checkpoint.json").read_text())
    return pointer, folder / pointer["folder"] / "devices.json"


def forged(folder: Path, edit: Callable[[Any], Any]) -> Any:
    """Rewrite the devices list with ``edit(entries)`` and point checkpoint.json at it; the entries before."""
    pointer, path = listed(folder)
    entries = json.loads(path.read_text())
    text = json.dumps(edit(entries)).encode()
    path.write_bytes(text)
    pointer["devices_sha256"] = hashlib.sha256(text).hexdigest()
    (folder / "checkpoint.json").write_text(json.dumps(pointer))
    return entries
