"""A device's own state (:meth:`FedData.device_state`) kept between rounds: in a file, or as bytes.

- ``serve(state_dir=DIR)``: :func:`use_state_dir` restores each FedData's state from its file at
  start (a bounded read of a regular file, the codec's checks, the FedData's own layout) and makes
  the device save it atomically after each round it trained (:meth:`Device.save_state`), before
  the reply is served.
- Simulations: :func:`keep_states` encodes the states of a device about to be dropped, and
  :func:`restore_states` loads them into the device built afresh when it is next sampled.

Everything is the codec's safetensors layout (:mod:`fedsync.data._state`), never pickle.

Internal: its names may change without notice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._util.files import FileRefused, read_regular, write_atomically
from ..data._state import encode_state, max_state_bytes, model_of, restore_state, state_of

__all__ = ["STATE_FILE", "keep_states", "restore_states", "state_file", "use_state_dir"]

logger = logging.getLogger("fedsync.server")

STATE_FILE = "device_state.safetensors"
"""The file, in ``state_dir``, of a device serving one FedData; ``<name>.device_state.safetensors`` for a dict's."""


def state_file(state_dir: Path, base: str) -> Path:
    """The state file of the FedData mounted at ``base`` (``""``, or ``"/name"`` for a dict's)."""
    return state_dir / (f"{base[1:]}.{STATE_FILE}" if base else STATE_FILE)


def use_state_dir(app: Any, state_dir: str | os.PathLike[str]) -> None:
    """Restore each of ``app``'s FedData from its file in ``state_dir`` (if saved before); save there after each round.

    A FedData whose ``device_state()`` is empty keeps no file.

    Raises:
        ValueError: a state file is damaged, not a device state, of another layout, a link or not a
            regular file, too large for the FedData's state, or unreadable; it names the file and what to do.
    """
    folder = Path(state_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"state_dir {folder} is not a folder; give a folder (created if missing) for the states")
    for base, device in app.devices.items():
        state = state_of(device.fed)
        if not state:
            continue
        path = state_file(folder, base)
        try:
            data = read_regular(path, max_state_bytes(state))
        except FileNotFoundError:
            logger.info("no saved state at %s: %s starts from its initial state", path, type(device.fed).__name__)
        except FileRefused as exc:
            raise ValueError(f"the device state file was refused: {exc}; move it away to start afresh") from None
        except OSError as exc:  # a folder, no permission: named, not "Is a directory: 12"
            raise ValueError(
                f"the device state file {path} cannot be read ({exc.strerror or exc}); fix it or move it away"
            ) from None
        else:
            restore_state(device.fed, data, f"the device state file {path}")
            logger.info("restored %s's device state from %s", type(device.fed).__name__, path)
        device.state_path = path


def save_state(fed: Any, path: Path) -> None:
    """Write ``fed``'s device state to ``path`` atomically (the old file or the new one, never a part).

    Raises:
        OSError: it cannot be written; TypeError: ``device_state()`` returned no dict of carried arrays.
    """
    write_atomically(path, encode_state(state_of(fed), model_of(fed)))


def keep_states(app: Any, previous: Mapping[str, bytes]) -> dict[str, bytes]:
    """The encoded states of ``app``'s FedData, by base, for a device about to be dropped.

    A FedData whose job still runs (a hung round) keeps its ``previous`` bytes: its arrays are
    being written. One whose state is empty costs nothing. One whose ``device_state()`` fails is
    logged and keeps ``previous``.
    """
    kept: dict[str, bytes] = {}
    for base, device in app.devices.items():
        if device.busy.locked():
            if base in previous:
                kept[base] = previous[base]
            continue
        try:
            state = state_of(device.fed)
            if state:
                kept[base] = encode_state(state, model_of(device.fed))
        except Exception:  # user code: this device keeps its last good state
            logger.exception("device_state() of %s failed; its previous state is kept", type(device.fed).__name__)
            if base in previous:
                kept[base] = previous[base]
    return kept


def restore_states(app: Any, kept: Mapping[str, bytes], device: str) -> None:
    """Load the ``kept`` states (from :func:`keep_states`) into ``app``'s freshly built FedData.

    Raises:
        ValueError: a state no longer fits (``device_fn`` built a FedData of another state layout),
            naming ``device``; nothing changed.
    """
    for base, data in kept.items():
        if base in app.devices:
            restore_state(app.devices[base].fed, data, f"{device}'s state kept from its last round")
