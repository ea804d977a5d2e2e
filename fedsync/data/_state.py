"""A device's own state as bytes: what survives between rounds and never travels.

A FedData's :meth:`~fedsync.protocol.FedData.device_state` (control variates, error-feedback
residuals, personal layers) is kept by the device, never sent to the coordinator. This module
turns it into the codec's safetensors layout (never pickle) and back, checked before use:

- :func:`encode_state`: the arrays as one payload, marked as a device state.
- :func:`restore_state`: bytes (a saved file, or a simulation's kept copy) decoded with the
  codec's checks, a header bounded by the state's own layout, the names, shapes and dtypes
  checked against the FedData's current state, then handed to ``load_device_state``;
  anything wrong raises ``ValueError`` and nothing changes.

A state file is at most :func:`max_state_bytes` long, so a reader bounds its read by it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..protocol import FedData
from ..wire import codec
from . import _updates, _views
from ._layout import check_layout, header_limit, layout_of

log = logging.getLogger("fedsync.device")

__all__ = ["STATE_KEY", "check_state", "encode_state", "max_state_bytes", "restore_state", "state_of"]

STATE_KEY = "fedsync.device_state"
"""Metadata key marking a payload as a device's own state (value ``"1"``): a model payload is not one."""


def check_state(state: Any, owner: str = "device_state()") -> dict[str, np.ndarray]:
    """``state`` as a dict of named numpy arrays the codec carries.

    Raises:
        TypeError: not a mapping of ``str`` names to numpy arrays, naming the culprit.
        TypeError: also an array of a dtype the codec cannot carry (e.g. complex, object).
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"{owner} must be a dict of name -> numpy array, got {type(state).__name__}")
    for name, a in state.items():
        if not isinstance(name, str):
            raise TypeError(f"{owner}: names must be strings, got {name!r}")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{owner}: {name!r} is a {type(a).__name__}, not a numpy array; wrap it with np.asarray")
        codec.check_carries(name, a.dtype)
    return dict(state)


def state_of(fed: FedData) -> dict[str, np.ndarray]:
    """``fed.device_state()``, checked (:func:`check_state`)."""
    return check_state(fed.device_state(), f"{type(fed).__name__}.device_state()")


def encode_state(state: Mapping[str, np.ndarray], model: str | None = None) -> bytes:
    """The arrays of ``state`` as one payload (the codec's safetensors layout), marked with :data:`STATE_KEY`.

    A copy: the bytes stay as they are while the live arrays change. ``model``: the specs of the model
    the state was kept with (:func:`model_of`), saved as :data:`MODEL_KEY`: a restore into another model
    resets the caches (residuals, a view) instead of applying them.

    Raises:
        TypeError: as :func:`check_state`.
    """
    metadata = {STATE_KEY: "1", **({MODEL_KEY: model} if model else {})}
    return codec.encode(check_state(state, "a device state"), metadata)


def max_state_bytes(state: Mapping[str, np.ndarray]) -> int:
    """The longest encoding, in bytes, of a state of the same layout as ``state`` (prefix, largest header, data)."""
    layout = layout_of(state)
    data = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in layout.values())
    return 15 + header_limit(layout) + data


MODEL_KEY = "fedsync.state_model"
"""Metadata of a saved device state: the specs of the model it was saved with (its caches fit only that one)."""


def _residual(name: str) -> bool:
    return name.startswith(_updates.RESIDUAL)


CACHES = (_residual, _views.is_view)
"""The groups of state entries that only save bytes (top-k's residuals, a download's view): reset, not refused,
when saved for another model (other specs, or another layout)."""


def model_of(fed: Any) -> str | None:
    """The specs a device state is saved with (``fed.specs(0)``), or ``None`` if they cannot be had."""
    try:
        specs = fed.specs(0)
    except Exception:  # user code: the state is then saved without them, and its caches checked by layout alone
        return None
    return specs if isinstance(specs, str) else None


def restore_state(fed: FedData, data: bytes | bytearray | memoryview, source: str = "the saved state") -> None:
    """Decode ``data`` and load it into ``fed`` with ``fed.load_device_state``; nothing changes on failure.

    The bytes are checked with the codec's checks (a header no larger than ``fed``'s state layout can
    need), must be marked as a device state, and must hold exactly ``fed``'s current state's names,
    shapes and dtypes, with owned copies handed over (the bytes may be reused after).

    Raises:
        ValueError: (``CodecError``, ``PayloadRejected``) damaged bytes, not a device state, or another
            layout; the message names ``source`` and the cause.
    """
    expected = layout_of(state_of(fed))
    optional = fed.optional_state() if hasattr(fed, "optional_state") else {}  # a cached view, all or none
    try:
        arrays, metadata = codec.decode(data, limit=header_limit({**expected, **optional}))
        if metadata.get(STATE_KEY) != "1":
            raise ValueError(f"it is not a device state (no {STATE_KEY!r} metadata): a model payload, or another file")
        found = layout_of(arrays)
        for cache in CACHES:  # a cache the FedData has not made yet (a view, an asked-for residual): adopt it whole
            mine = {name: v for name, v in optional.items() if cache(name) and name not in expected}
            if mine and all(name in found for name in mine):
                expected = {**expected, **mine}
        saved_model = metadata.get(MODEL_KEY)
        other_model = saved_model is not None and saved_model != model_of(fed)
        for cache in CACHES:  # what only saves bytes or work: another model resets it
            theirs = {name: v for name, v in found.items() if cache(name)}
            ours = {name: v for name, v in expected.items() if cache(name)}
            if theirs != ours or (other_model and theirs):
                if theirs:
                    log.warning("%s: %s (a cache) is another model's; starting it afresh", source, sorted(theirs)[0])
                arrays = {name: a for name, a in arrays.items() if name not in theirs}
                found = {name: v for name, v in found.items() if name not in theirs}
                expected = {name: v for name, v in expected.items() if name not in ours}
        check_layout(found, expected, what="the saved state", of=f"{type(fed).__name__}'s device state")
    except ValueError as exc:
        raise type(exc)(f"{source} was refused, nothing changed: {exc}") from None
    fed.load_device_state({name: np.array(a, copy=True) for name, a in arrays.items()})


def load_in_place(target: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray]) -> None:
    """Copy ``state``'s arrays into ``target``'s arrays **in place** (references to them stay valid).

    Raises:
        ValueError: (``PayloadRejected``) other names, shapes or dtypes; checked before any copy.
    """
    check_layout(layout_of(check_state(state, "load_device_state")), layout_of(target), what="the state", of="state=")
    for name, a in state.items():
        np.copyto(target[name], a)
