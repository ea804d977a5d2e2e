"""A coordinator's checkpoint: its FedData's own payload, the history and the repetition.

Layout of a checkpoint folder::

    round-000007/state.safetensors   (or state.txt) the FedData's serialize() output
    round-000007/history.json        the History up to that round
    round-000007/strategy.safetensors  the merge strategy's own state (a server optimizer's
                                      moments), only when it has any
    round-000007/devices.json        a simulation's device states (SCAFFOLD's c_i, error-feedback
                                      residuals, views): [[url, base, sha256], ...], only when any
    device-states/<sha256>           each such state's bytes, named by their sha256 (shared by rounds:
                                      a round writes only the states that changed)
    checkpoint.json                  {"repetition": 7, "specs": ..., "folder": "round-000007",
                                      "state": "state.safetensors", "state_sha256": ..., "history_sha256": ...,
                                      "strategy_sha256": ..., "devices_sha256": ... (only with those files)}

A round's files are complete before ``checkpoint.json`` points at them (each
written then renamed), and older round folders are removed only after, so a
crash at any moment leaves a consistent checkpoint: the old one or the new one.

The devices file lists, for each simulated device that keeps a state, the file of the bytes its state
is kept in between the rounds it sits out (``fedsync.device._kept``: the codec's layout, checked again
when the device is next built). A state file is written before the list that names it, the list before
``checkpoint.json``; state files no list names any more are deleted after (only 64-hex-digit names in
``device-states``, and such a name's ``.tmp`` a crash left).

The strategy file holds the arrays of ``strategy.state()`` and, in its metadata,
the strategy's identity (``strategy.identity()``: its class name, with any strategy it
wraps, ``DPFixedClipping(FedAdam)``). Restoring puts the saved model back as it was (the
merge of that one payload under FedAvg, whatever the run's strategy: a server
optimizer must not step, nor Krum refuse a single reply), then the strategy's
state, checked by ``strategy.check_state`` before anything changes.

A checkpoint is read as untrusted input, like a device's reply: every field of
``checkpoint.json`` is checked (the folder name must be ``round-NNNNNN`` of its
repetition, the state file one of two names, so no path leaves the checkpoint
folder), both files must match their sha256, and the history must be well
formed and end at the same repetition. The checksums detect corruption and
edits of the files, not a forger who rewrites ``checkpoint.json`` as well.
Only folders named ``round-NNNNNN`` inside the checkpoint folder are ever deleted.

A save holds a lock on the folder (an advisory ``flock``, where the system has it) from its first write
to its last removal: two runs given one folder by mistake save in turn, so a removal never takes a file
another save's pointer is about to name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from .._util.files import write_atomically
from .._util.json import loads_strict
from ..data.snapshot import restore, strategy_of
from ..errors import CheckpointError
from ..protocol import MAX_REPETITION, FedData
from ..wire import codec
from ..wire.http import MAX_PAYLOAD
from .history import MAX_HISTORY_BYTES, History

__all__ = ["save", "load", "load_devices", "device_state_limit", "read_history", "CheckpointError"]

POINTER = "checkpoint.json"
STATES = ("state.safetensors", "state.txt")
HISTORY = "history.json"
STRATEGY = "strategy.safetensors"
STRATEGY_KEY = "fedsync.strategy"
DEVICES = "devices.json"
DEVICE_STATES = "device-states"
_KEYS = frozenset({"repetition", "specs", "folder", "state", "state_sha256", "history_sha256"})
_OPTIONAL = frozenset({"strategy_sha256", "devices_sha256"})
_ROUND = re.compile(r"round-[0-9]{6,16}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_POINTER_LIMIT = 1 << 16  # bytes: checkpoint.json holds a few short fields
HISTORY_LIMIT = MAX_HISTORY_BYTES
"""The largest ``history.json`` a checkpoint loads, in bytes (a row per round and device): 256 MiB."""
STATE_SLACK = 1 << 20
"""Bytes a saved state (and strategy) file may have beyond what this coordinator's own state takes
(its metadata: metrics, specs). A larger file is refused before it is read: whatever a checkpoint
holds, a resume takes at most about 20 times the size of the files it reads, and its state files
at most a few times the model's size."""
STRATEGY_COPIES = 8
"""A strategy's saved state holds at most this many copies of the model (FedAdam and FedYogi hold two)."""
DEVICE_STATE_COPIES = 8
"""A simulated device's saved states, all its FedData together, hold at most this many copies of the run's model
(SCAFFOLD's ``c_i``, a top-k residual, a download's view and local layers take at most one each), besides
``state=``'s own arrays and :data:`STATE_SLACK`."""


DeviceStates = Mapping[str, Mapping[str, bytes]]
"""A simulation's kept device states: url to base to the codec bytes of that FedData's state."""


def save(
    folder: str | Path,
    data: FedData,
    repetition: int,
    history: History,
    devices: Callable[[], DeviceStates] | None = None,
) -> None:
    """Write the checkpoint of ``data`` after ``repetition`` merged (and ``devices()``' states, when given).

    Raises:
        CheckpointError: ``repetition`` is not an integer in ``[0, MAX_REPETITION]``,
            ``history`` does not end at ``repetition``, or ``data``'s own
            ``check`` refuses its state (e.g. NaN or infinity in an array).
            Nothing is written then.
    """
    folder = Path(folder)
    if type(repetition) is not int or not 0 <= repetition <= MAX_REPETITION:
        raise CheckpointError(f"repetition must be an integer in [0, {MAX_REPETITION}], got {repetition!r}")
    if not len(history) or history[-1].repetition != repetition:
        last = history[-1].repetition if len(history) else None
        raise CheckpointError(f"the history must end with repetition {repetition}, but its last round is {last}")
    payload = data.serialize(repetition)
    encoding: str | bytes
    if isinstance(payload, str):
        state, encoding, raw = STATES[1], payload, payload.encode("utf-8")
    else:
        state = STATES[0]
        raw = encoding = bytes(payload)
    try:
        data.check(encoding, repetition)
    except ValueError as exc:
        raise CheckpointError(
            f"refusing to checkpoint repetition {repetition} into {folder}: the state is not valid ({exc}); "
            "nothing was written, and the previous checkpoint stays"
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    with _saving(folder):  # another run's save into this folder would remove this one's files, or the reverse
        round_folder = _round_name(repetition)
        if (folder / round_folder).is_symlink():
            raise CheckpointError(f"{folder / round_folder} is a symbolic link; checkpoints write only real folders")
        text = history.to_json().encode("utf-8")
        strategy = _strategy_bytes(data)
        write_atomically(folder / round_folder / state, raw)
        write_atomically(folder / round_folder / HISTORY, text)
        meta = {
            "repetition": repetition,
            "specs": data.specs(repetition),
            "folder": round_folder,
            "state": state,
            "state_sha256": hashlib.sha256(raw).hexdigest(),
            "history_sha256": hashlib.sha256(text).hexdigest(),
        }
        if strategy is not None:
            write_atomically(folder / round_folder / STRATEGY, strategy)
            meta["strategy_sha256"] = hashlib.sha256(strategy).hexdigest()
        listed = _save_device_states(folder, devices() if devices is not None else {})
        if listed:
            text = json.dumps(listed).encode("utf-8")
            write_atomically(folder / round_folder / DEVICES, text)
            meta["devices_sha256"] = hashlib.sha256(text).hexdigest()
        write_atomically(folder / POINTER, json.dumps(meta).encode("utf-8"))
        _remove_old_rounds(folder, keep=round_folder)
        _remove_unlisted_states(folder, {digest for _, _, digest in listed})


def load(folder: str | Path, data: FedData) -> tuple[int, History] | None:
    """Restore ``data`` from ``folder``; ``(repetition, history)``, or ``None`` if there is none.

    Raises:
        CheckpointError: naming the cause, for a malformed or edited
            ``checkpoint.json``, a state or history file that does not match its
            sha256, a malformed history, or a state of other specs. ``data``
            is unchanged then.
    """
    folder = Path(folder)
    meta = _read_pointer(folder)
    if meta is None:
        return None
    repetition = meta["repetition"]
    where = folder / meta["folder"]
    own = _own_size(data, repetition)
    raw = _read_checked(folder, where / meta["state"], meta["state_sha256"], limit=own + STATE_SLACK)
    history = _history(folder, meta)
    expected = data.specs(repetition)
    if meta["specs"] != expected:
        raise CheckpointError(
            f"checkpoint {folder} holds specs {meta['specs'][:200]!r} but this FedData's are {expected!r}; "
            "use another checkpoint folder or the same declaration"
        )
    strategy_state = _strategy_state(folder, where, meta, data, limit=STRATEGY_COPIES * own + STATE_SLACK)
    try:
        encoding: Any = raw.decode("utf-8") if meta["state"] == STATES[1] else raw
        data.check(encoding, repetition)
        restore(data, encoding, repetition)
    except (ValueError, RuntimeError) as exc:  # RoundFailed is a RuntimeError
        raise _damaged(folder, f"its state does not restore: {exc}") from None
    if strategy_state is not None:
        data.strategy.load_state(strategy_state, data.layout())  # type: ignore[attr-defined]  # FedData has no strategy; only array kinds, which strategy_of found
    return repetition, history


def load_devices(folder: str | Path, urls: Collection[str], each: int) -> dict[str, dict[str, bytes]]:
    """The device states saved with checkpoint ``folder``'s last round, by url and base; ``{}`` if none.

    ``urls``: this simulation's devices; ``each``: the most bytes one device's states may take, all its
    bases together (:func:`device_state_limit`), checked before a file is read. A file listed more than
    once is read once. Each state is checked again when its device is built.

    Raises:
        CheckpointError: naming the cause, for a devices list that does not match its sha256 or is not a
            JSON list of ``[url, base, sha256]``, each url one of ``urls`` and no ``(url, base)`` twice; or a
            state file that is missing, not matching the sha256 it is named by, or over what is left of
            ``each`` for its device.
    """
    folder = Path(folder)
    meta = _read_pointer(folder)
    if meta is None or "devices_sha256" not in meta:
        return {}
    limit = len(urls) * 1024 + (1 << 16)  # an entry of a url, a base and 64 hex digits each
    text = _read_checked(folder, folder / meta["folder"] / DEVICES, meta["devices_sha256"], limit=limit)
    try:
        listed = loads_strict(text.decode("utf-8"), duplicate=_twice, constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _damaged(folder, f"{DEVICES} is not JSON ({str(exc)[:200]})") from None
    known = set(urls)
    if not isinstance(listed, list) or not all(
        isinstance(e, list) and len(e) == 3 and all(isinstance(x, str) for x in e) for e in listed
    ):
        raise _damaged(folder, f"{DEVICES} must be a list of [url, base, sha256] entries")
    out: dict[str, dict[str, bytes]] = {}
    if (folder / DEVICE_STATES).is_symlink():
        raise _damaged(folder, f"{folder / DEVICE_STATES} is a symbolic link; a checkpoint holds only real files")
    read: dict[str, bytes] = {}  # by sha256: a file named twice is held once
    taken: dict[str, int] = {}  # bytes of each device's states so far
    for url, base, digest in listed:
        if url not in known or base in out.get(url, {}) or not _SHA256.fullmatch(digest):
            raise _damaged(
                folder,
                f"{DEVICES} names device {url[:80]!r} (base {base[:40]!r}, state {digest[:70]!r}), which is not one "
                "of this run's devices, is there twice, or is not named by 64 lowercase hex digits",
            )
        left = each - taken.get(url, 0)
        if digest not in read:
            share = f"{DEVICE_STATE_COPIES} copies of this run's model and a little"
            read[digest] = _read_checked(
                folder, folder / DEVICE_STATES / digest, digest, limit=left,
                what=f"bytes left of the {each} that {url[:80]}'s states may take ({share})",
            )  # fmt: skip
        raw = read[digest]
        if len(raw) > left:
            raise _damaged(
                folder,
                f"{url[:80]}'s states take {taken.get(url, 0) + len(raw)} bytes or more, over the {each} a device's "
                "states may take (its listed files together)",
            )
        taken[url] = taken.get(url, 0) + len(raw)
        out.setdefault(url, {})[base] = raw
    return out


def device_state_limit(data: FedData, repetition: int) -> int:
    """The most bytes a simulated device's saved states may take, all bases together, in a run of ``data``.

    :data:`DEVICE_STATE_COPIES` times the model (its whole layout, local and frozen arrays too, or its own
    payload if larger), plus ``state=``'s arrays and :data:`STATE_SLACK`; at most what a device's request
    may carry (2 GiB), as a worker process keeps no larger state.
    """
    model = _own_size(data, repetition)
    try:
        layout = data.layout()  # type: ignore[attr-defined]  # array kinds only; others fall back to the payload
        model = max(model, sum(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for s, d in layout.values()))
    except Exception:  # noqa: BLE001  # no layout (a scalar FedData) or user code that fails: its payload's size
        pass
    own = getattr(data, "state", None)
    extra = sum(a.nbytes for a in own.values() if isinstance(a, np.ndarray)) if isinstance(own, Mapping) else 0
    return min(MAX_PAYLOAD, DEVICE_STATE_COPIES * model + extra + STATE_SLACK)


def _save_device_states(folder: Path, states: DeviceStates) -> list[list[str]]:
    """Each state written to ``device-states/<sha256>`` unless already there; the ``[url, base, sha256]`` list."""
    listed = [
        [url, base, hashlib.sha256(raw).hexdigest()] for url, kept in states.items() for base, raw in kept.items()
    ]
    if listed and (folder / DEVICE_STATES).is_symlink():
        raise CheckpointError(f"{folder / DEVICE_STATES} is a symbolic link; checkpoints write only real folders")
    for url, base, digest in listed:
        path = folder / DEVICE_STATES / digest
        if not path.is_file():  # unchanged since a round that wrote it: the same bytes, not written again
            write_atomically(path, states[url][base])
    return listed


def _remove_unlisted_states(folder: Path, keep: set[str]) -> None:
    """Delete state files no list names: only 64-hex-digit files directly inside ``device-states``, and
    ``<64 hex digits>.tmp`` ones a crash left half written (under the save lock, no save is writing one)."""
    where = folder / DEVICE_STATES
    if where.is_symlink() or not where.is_dir():
        return
    for child in where.iterdir():
        name = child.name.removesuffix(".tmp")
        unlisted = child.name not in keep and _SHA256.fullmatch(name)
        if unlisted and not child.is_symlink() and child.is_file():
            child.unlink(missing_ok=True)


def read_history(folder: str | Path) -> History:
    """The history saved in checkpoint ``folder``, checked as :func:`load` checks it, without a FedData.

    For reading a finished run (``fedsync replay``, :mod:`fedsync.coordinator.replay`): the
    state is not read.

    Raises:
        CheckpointError: ``folder`` holds no ``checkpoint.json``, or (naming the cause) a malformed
            one, a history over :data:`HISTORY_LIMIT` bytes, not matching its sha256, or malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; name a checkpoint folder (Federated(checkpoint=...))")
    meta = _read_pointer(folder)
    if meta is None:
        raise CheckpointError(
            f"{folder} holds no {POINTER}: not a checkpoint folder, or no round finished there; name the folder "
            "given as Federated(checkpoint=...) or run_simulation(checkpoint=...)"
        )
    return _history(folder, meta)


def _history(folder: Path, meta: dict[str, Any]) -> History:
    """The history that the checked ``checkpoint.json`` ``meta`` points at, checked; it ends at its repetition."""
    where, repetition = folder / meta["folder"], meta["repetition"]
    history_raw = _read_checked(folder, where / HISTORY, meta["history_sha256"], limit=HISTORY_LIMIT)
    try:
        history = History.from_json(history_raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError too
        raise _damaged(folder, f"{where / HISTORY} is malformed: {exc}") from None
    if not len(history) or history[-1].repetition != repetition:
        last = history[-1].repetition if len(history) else None
        raise _damaged(folder, f"{POINTER} says repetition {repetition} but the history's last round is {last}")
    return history


def _strategy_bytes(data: FedData) -> bytes | None:
    """The strategy's state as a safetensors file, or ``None`` when it keeps none."""
    strategy = strategy_of(data)
    state = strategy.state() if strategy is not None else {}
    if not state:
        return None
    return bytes(codec.encode_payload(state, {STRATEGY_KEY: _identity(strategy)}))


def _identity(strategy: Any) -> str:
    """The strategy's full identity, wrapped strategies included (``Strategy.identity``)."""
    identity = getattr(strategy, "identity", None)
    return identity() if callable(identity) else type(strategy).__name__


def _strategy_state(
    folder: Path, where: Path, meta: dict[str, Any], data: FedData, limit: int
) -> dict[str, Any] | None:
    """The saved strategy state (a file of at most ``limit`` bytes), checked against ``data``'s strategy and
    layout; ``None`` if none was saved."""
    if "strategy_sha256" not in meta:
        return None  # a strategy with state then starts afresh, as in a new run
    raw = _read_checked(folder, where / STRATEGY, meta["strategy_sha256"], limit=limit)
    strategy = strategy_of(data)
    try:
        arrays, metadata = codec.decode(raw, limit=len(raw))
        saved = metadata.get(STRATEGY_KEY)
        if strategy is None or saved != _identity(strategy):
            mine = _identity(strategy) if strategy is not None else f"a {type(data).__name__} without a strategy"
            raise CheckpointError(
                f"checkpoint {folder} holds the state of strategy {str(saved)[:80]!r} but this coordinator merges "
                f"with {mine}; use the same strategy, or another checkpoint folder"
            )
        strategy.check_state(arrays, data.layout())  # type: ignore[attr-defined]  # FedData has no strategy; only array kinds, which strategy_of found
    except CheckpointError:
        raise
    except ValueError as exc:
        raise _damaged(folder, f"its strategy state does not fit: {exc}") from None
    return arrays


def _own_size(data: FedData, repetition: int) -> int:
    """Bytes of ``data``'s own state now: what a saved state of the same model takes, up to its metadata."""
    payload = data.serialize(repetition)
    if isinstance(payload, str):
        return len(payload.encode("utf-8"))
    if isinstance(payload, codec.Payload):
        return payload.nbytes  # its frames, not copied
    return memoryview(payload).nbytes


def _round_name(repetition: int) -> str:
    return f"round-{repetition:06d}"


def _damaged(folder: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {folder} is damaged or was edited: {why}; remove it to start over")


def _read_pointer(folder: Path) -> dict[str, Any] | None:
    """``checkpoint.json``, every field checked; ``None`` if there is none."""
    path = folder / POINTER
    try:
        with _open_regular(folder, path) as f:
            text = f.read(_POINTER_LIMIT + 1)
    except FileNotFoundError:
        return None
    if len(text) > _POINTER_LIMIT:
        raise _damaged(folder, f"{POINTER} is over {_POINTER_LIMIT} bytes")
    try:
        meta = loads_strict(text.decode("utf-8"), duplicate=_twice, constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _damaged(folder, f"{POINTER} is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _damaged(folder, f"{POINTER} is not a JSON object")
    if not _KEYS <= meta.keys() <= _KEYS | _OPTIONAL:
        missing, unknown = sorted(_KEYS - meta.keys()), sorted(str(k)[:40] for k in meta.keys() - _KEYS - _OPTIONAL)
        raise _damaged(
            folder,
            f"{POINTER} lacks {missing} or has unknown keys {unknown}; expected exactly {sorted(_KEYS)}, and "
            f"{sorted(_OPTIONAL)} with a strategy state",
        )
    repetition = meta["repetition"]
    if type(repetition) is not int or not 0 <= repetition <= MAX_REPETITION:
        raise _damaged(folder, f"repetition must be an integer in [0, {MAX_REPETITION}], got {str(repetition)[:40]}")
    if meta["folder"] != _round_name(repetition):
        raise _damaged(
            folder,
            f"folder {str(meta['folder'])[:80]!r} is not {_round_name(repetition)!r}, the folder of repetition "
            f"{repetition}",
        )
    if meta["state"] not in STATES:
        raise _damaged(folder, f"state {str(meta['state'])[:80]!r} is not one of {list(STATES)}")
    if not isinstance(meta["specs"], str):
        raise _damaged(folder, f"specs must be a string, got {type(meta['specs']).__name__}")
    for key in ("state_sha256", "history_sha256", *(_OPTIONAL & meta.keys())):
        if not isinstance(meta[key], str) or not _SHA256.fullmatch(meta[key]):
            raise _damaged(folder, f"{key} must be 64 lowercase hex digits, got {str(meta[key])[:80]!r}")
    return meta


def _read_checked(folder: Path, path: Path, sha256: str, limit: int | None = None, what: str | None = None) -> bytes:
    """The bytes of ``path`` (a real file inside ``folder``), if they match ``sha256``.

    The file is hashed a piece at a time before it is read whole: a file that grew
    (corrupted, appended to) is refused without holding it in memory. ``limit``:
    the most bytes it may have, checked before reading any (``what``: what the limit is, for the message).
    """
    if path.parent.is_symlink():
        raise _damaged(folder, f"{path.parent} is a symbolic link; a checkpoint holds only real files")
    try:
        with _open_regular(folder, path) as f:
            size = os.fstat(f.fileno()).st_size
            if limit is not None and size > limit:
                raise _damaged(
                    folder,
                    f"{path} is {size} bytes, over the {limit} "
                    + (
                        what
                        or "such a file of this coordinator's checkpoint may take "
                        f"(its history {HISTORY_LIMIT}; its state this model's size plus {STATE_SLACK})"
                    ),
                )
            digest, hashed = hashlib.sha256(), 0
            while hashed <= size and (piece := f.read(_HASH_PIECE)):  # a file that grows is refused below
                digest.update(piece)
                hashed += len(piece)
            if not hmac.compare_digest(digest.hexdigest(), sha256):
                raise _damaged(folder, f"{path} does not match the sha256 in {POINTER}: it was changed or corrupted")
            f.seek(0)
            raw = f.read(size + 1)
            if len(raw) != size:  # it grew or shrank between fstat and now
                raise _damaged(folder, f"{path} changed while it was read")
    except FileNotFoundError as exc:
        raise _damaged(folder, f"{path} cannot be read ({exc.strerror or exc})") from None
    except OSError as exc:
        raise _damaged(folder, f"{path} cannot be read ({exc.strerror or exc})") from None
    if not hmac.compare_digest(hashlib.sha256(raw).hexdigest(), sha256):  # changed between the two reads
        raise _damaged(folder, f"{path} does not match the sha256 in {POINTER}: it was changed or corrupted")
    return raw


_HASH_PIECE = 1 << 20
SAVE_LOCK_WAIT = 60.0
"""Seconds a save waits for another process's save into the same folder before it fails."""


def _open_regular(folder: Path, path: Path) -> Any:
    """``path`` opened for reading if it is a regular file, not a symbolic link (never a FIFO,
    which would block, or a device); raises FileNotFoundError if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        if path.is_symlink():  # a dangling link
            raise _damaged(folder, f"{path} is a symbolic link; a checkpoint holds only real files") from None
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _damaged(folder, f"{path} is a symbolic link; a checkpoint holds only real files") from None
        raise _damaged(folder, f"{path} cannot be read ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _damaged(folder, f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _saving(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s save lock (an advisory ``flock`` on the folder itself) for one save.

    A save removes the round folders and state files its pointer does not name: two runs given the same
    folder would remove each other's files before their pointers move. Held in turn, every pointer names
    files that are there. Waits at most :data:`SAVE_LOCK_WAIT` seconds (the other save then hangs).
    """
    if fcntl is None:  # no flock (Windows): one run per folder, as documented
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise CheckpointError(f"cannot open {folder} to save a checkpoint ({exc.strerror or exc})") from None
    try:
        deadline = time.monotonic() + SAVE_LOCK_WAIT
        while True:  # bounded by the deadline
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CheckpointError(
                        f"another process has been saving a checkpoint into {folder} for over {SAVE_LOCK_WAIT:.0f} s; "
                        "give each run its own checkpoint folder"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_old_rounds(folder: Path, keep: str) -> None:
    """Delete the folders of earlier rounds: only ``round-NNNNNN`` folders directly inside ``folder``."""
    for child in folder.iterdir():
        if child.name != keep and _ROUND.fullmatch(child.name) and not child.is_symlink() and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def _twice(key: str) -> ValueError:
    """A key given twice in ``checkpoint.json`` (parsers disagree on which one wins)."""
    return ValueError(f"a key appears twice: {key[:40]!r}")


def _no_constant(name: str) -> ValueError:
    """``NaN`` or an infinity in ``checkpoint.json``."""
    return ValueError(f"{name} is not a number a checkpoint holds")
