"""FedBundle: several named FedData exchanged in one payload and one round.

A bundle lets one round carry, say, a model and a custom statistic together:
``FedBundle({"model": FedTorch(net, train), "threshold": FedFloat(0.5)})``.
Each part keeps its own specs, serialization and merge; the bundle's payload
is the safetensors layout with one byte array per part, so it is as safe to
decode as any array payload.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .._util.json import loads_strict, shown
from ..errors import PayloadRejected
from ..plugins.hookspecs import RegisterAdapter, hookimpl
from ..protocol import FedData
from ..wire import codec
from .arrays import fingerprint
from .snapshot import Snapshot

__all__ = ["FedBundle"]

PARTS_KEY = "fedsync.parts"


def _as_bytes(encoding: Any) -> tuple[Any, bool]:
    if isinstance(encoding, str):
        return encoding.encode("utf-8"), True
    if isinstance(encoding, codec.Payload):
        return bytes(encoding), False
    return encoding, False


class FedBundle(FedData):
    """Named FedData parts that travel and merge together in one round.

    Every payload is checked part by part, through each part's own ``check``,
    before any part changes. A part whose specs token names a registered
    adapter must be an instance of that adapter (see :mod:`fedsync.plugins`).
    """

    token = "bundle"
    accepts_views = True  # codec.decode reads any buffer

    def __init__(self, parts: Mapping[str, FedData]) -> None:
        super().__init__()
        if not isinstance(parts, Mapping) or not parts:
            raise TypeError(
                "FedBundle takes a non-empty dict of FedData, e.g. "
                "FedBundle({'model': fed, 'threshold': FedFloat(0.5)})"
            )
        for name, part in parts.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"part names must be non-empty strings, got {name!r}")
            if not isinstance(part, FedData):
                raise TypeError(f"part {name!r} is a {type(part).__name__}, not a FedData")
        self.parts = dict(parts)

    def __getitem__(self, name: str) -> FedData:
        return self.parts[name]

    def specs(self, repetition: int) -> str:
        return f"{self.token}:{fingerprint(self._part_specs(repetition))}"

    def summary(self, repetition: int) -> dict[str, Any]:
        return {
            "parts": {
                name: {
                    "type": type(part).__name__,
                    "specs": part.specs(repetition),
                    "summary": part.summary(repetition),
                }
                for name, part in self.parts.items()
            }
        }

    def serialize(self, repetition: int) -> bytes:
        arrays, kinds = {}, {}
        for name, part in self.parts.items():
            raw, text = _as_bytes(part.serialize(repetition))
            arrays[name] = np.frombuffer(raw, dtype=np.uint8)
            kinds[name] = {"specs": part.specs(repetition), "text": text}
        return codec.encode(arrays, {PARTS_KEY: json.dumps(kinds)})

    def check(self, encoding: Any, repetition: int) -> None:
        for name, part_encoding in self._split(encoding, repetition).items():
            try:
                self.parts[name].check(part_encoding, repetition)
            except ValueError as exc:
                raise PayloadRejected(f"part {name!r}: {exc}") from None

    def receive(self, encoding: Any, repetition: int, config: dict[str, Any] | None = None) -> None:
        """Hand each part its own payload, and the round's ``config`` to parts that take one."""
        from ..wire.config import takes_extra

        self.check(encoding, repetition)
        for name, part_encoding in self._split(encoding, repetition).items():
            # FedData.receive takes (encoding, repetition); a part's own may take the config third.
            receive: Callable[..., None] = self.parts[name].receive
            if takes_extra(receive, 2):
                receive(part_encoding, repetition, config or {})
            else:
                receive(part_encoding, repetition)

    def merge(self, encodings: Iterable[Any], repetition: int) -> None:
        """Merge each part's share of the replies; all parts change, or none.

        Holds every reply until the last one arrives, and one copy of each part's
        state while merging (:class:`fedsync.data.snapshot.Snapshot`).

        Raises:
            PayloadRejected: a reply is not a valid bundle payload; nothing changed.
            RoundFailed: a part's merge failed; every part is as it was.
        """
        # Every reply must arrive (and the round succeed) before any part changes.
        splits = [self._split(encoding, repetition) for encoding in encodings]
        # A part whose merge fails (no samples, NaN in the result) leaves itself unchanged;
        # the parts merged before it are put back, so the bundle changes all or nothing.
        merged: list[Snapshot] = []
        try:
            for name, part in self.parts.items():
                snapshot = Snapshot(part, repetition)
                part.merge([split[name] for split in splits], repetition)
                merged.append(snapshot)
        except BaseException:
            for snapshot in reversed(merged):
                snapshot.restore()
            raise

    def _part_specs(self, repetition: int) -> dict[str, str]:
        return {name: part.specs(repetition) for name, part in self.parts.items()}

    def _split(self, encoding: Any, repetition: int) -> dict[str, Any]:
        """The parts' own encodings (zero-copy views), after checking names and specs."""
        if isinstance(encoding, str):
            raise PayloadRejected("FedBundle expects a binary payload, got text")
        arrays, metadata = codec.decode(encoding)
        try:
            kinds = loads_strict(
                metadata[PARTS_KEY],
                duplicate=lambda key: PayloadRejected(
                    f"bundle payload's {PARTS_KEY!r} metadata names the key {shown(key)} twice"
                ),
                constant=lambda name: PayloadRejected(
                    f"bundle payload's {PARTS_KEY!r} metadata holds {name}, not a finite number"
                ),
            )
        except PayloadRejected:
            raise
        except (KeyError, ValueError, RecursionError):
            kinds = None
        # A real check, not an assert: `python -O` removes asserts.
        if not isinstance(kinds, dict) or not all(isinstance(k, dict) for k in kinds.values()):
            raise PayloadRejected(f"bundle payload has no valid {PARTS_KEY!r} metadata")
        if arrays.keys() != self.parts.keys() or kinds.keys() != self.parts.keys():
            raise PayloadRejected(f"bundle parts {sorted(arrays)} do not match this bundle's {sorted(self.parts)}")
        expected = self._part_specs(repetition)
        out = {}
        for name, part in self.parts.items():
            specs = kinds[name].get("specs")
            if specs != expected[name]:
                raise PayloadRejected(f"part {name!r} has specs {specs!r}, expected {expected[name]!r}")
            self._check_adapter(name, part, expected[name])
            raw = arrays[name]
            out[name] = raw.tobytes().decode("utf-8", errors="strict") if kinds[name].get("text") else raw.data
        return out

    @staticmethod
    def _check_adapter(name: str, part: FedData, specs: str) -> None:
        from .. import plugins  # lazily: the registry loads plugins on first use

        token = specs.split(":", 1)[0]
        registered = plugins.adapters().get(token)
        if registered is not None and not isinstance(part, registered):
            raise PayloadRejected(
                f"part {name!r} has specs token {token!r}, registered to {registered.__name__}, "
                f"but is a {type(part).__name__}"
            )


@hookimpl
def register_adapters(register: RegisterAdapter) -> None:
    """Bundles register through the same hook as every adapter."""
    register(FedBundle.token, FedBundle)
