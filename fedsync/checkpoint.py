"""A coordinator's checkpoint: its FedData's own payload, the history and the repetition.

Layout of a checkpoint folder::

    round-000007/state.safetensors   (or state.txt) the FedData's serialize() output
    round-000007/history.json        the History up to that round
    checkpoint.json                  {"repetition": 7, "specs": ..., "folder": "round-000007", "state": ...}

A round's files are complete before ``checkpoint.json`` points at them (each
written then renamed), and the previous round's folder is removed only after,
so a crash at any moment leaves a consistent checkpoint: the old one or the new one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .errors import FedSyncError
from .history import History, write_atomically
from .protocol import FedData

__all__ = ["save", "load", "CheckpointError"]

POINTER = "checkpoint.json"


class CheckpointError(FedSyncError, ValueError):
    """A checkpoint that does not fit the FedData it should restore."""


def save(folder: Path, data: FedData, repetition: int, history: History) -> None:
    """Write the checkpoint of ``data`` after ``repetition`` merged."""
    payload = data.serialize(repetition)
    if isinstance(payload, str):
        state, raw = "state.txt", payload.encode("utf-8")
    else:
        state, raw = "state.safetensors", bytes(payload)
    round_folder = f"round-{repetition:06d}"
    write_atomically(folder / round_folder / state, raw)
    history.save(folder / round_folder / "history.json")
    previous = _read_pointer(folder)
    meta = {"repetition": repetition, "specs": data.specs(repetition), "folder": round_folder, "state": state}
    write_atomically(folder / POINTER, json.dumps(meta).encode("utf-8"))
    if previous is not None and previous.get("folder") not in (None, round_folder):
        shutil.rmtree(folder / previous["folder"], ignore_errors=True)


def load(folder: Path, data: FedData) -> tuple[int, History] | None:
    """Restore ``data`` from ``folder``; ``(repetition, history)``, or ``None`` if there is none."""
    meta = _read_pointer(folder)
    if meta is None:
        return None
    try:
        repetition = int(meta["repetition"])
        round_folder = folder / meta["folder"]
        raw = (round_folder / meta["state"]).read_bytes()
        history = History.load(round_folder / "history.json")
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise CheckpointError(f"checkpoint {folder} is damaged ({exc}); remove it to start over") from None
    if meta["specs"] != data.specs(repetition):
        raise CheckpointError(
            f"checkpoint {folder} holds specs {meta['specs']!r} but this FedData's are {data.specs(repetition)!r}; "
            "use another checkpoint folder or the same declaration"
        )
    encoding: Any = raw.decode("utf-8") if meta["state"].endswith(".txt") else raw
    try:
        data.check(encoding, repetition)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {folder} is damaged: {exc}") from None
    data.merge([encoding], repetition)  # the merge of one payload is that payload
    return repetition, history


def _read_pointer(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / POINTER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CheckpointError(f"{folder / POINTER} is not JSON ({exc}); remove the folder to start over") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / POINTER} is damaged; remove the folder to start over")
    return meta
