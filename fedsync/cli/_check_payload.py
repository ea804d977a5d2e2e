"""The payload side of ``fedsync check``: the specs rule recomputed, a known payload, a reply read.

Everything here follows docs/protocol.md ("Specs", "Array payloads", "Compressed payloads") and reuses
fedsync's own codec, so a device that passes talks to a real coordinator.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data.arrays import fingerprint
from ..wire import codec, compression
from ..wire.reports import SAMPLES_KEY, read_report

__all__ = ["NUMPY_DTYPES", "weights_of", "rule_of", "why_specs_differ", "known_payload", "read_reply"]

NUMPY_DTYPES: tuple[str, ...] = tuple(
    "float64 float32 float16 int64 int32 int16 int8 uint64 uint32 uint16 uint8 bool".split()
)
"""The numpy dtype names a summary may give (docs/protocol.md, "Array payloads")."""

Weights = list[dict[str, Any]]


def weights_of(summary: Any) -> Weights | str:
    """The ``weights`` list of an array FedData's ``/info`` summary, or why it is not one."""
    if not isinstance(summary, Mapping) or not isinstance(summary.get("weights"), list):
        return "summary has no 'weights' list (not an array FedData)"
    weights = summary["weights"]
    if not weights:
        return "summary lists no weights"
    names = set()
    for i, w in enumerate(weights[:65536]):
        if not isinstance(w, Mapping) or set(w) != {"name", "shape", "dtype"}:
            return f"summary weight {i} is not an object of exactly name, shape, dtype"
        if not isinstance(w["name"], str) or not w["name"] or w["name"] in names:
            return f"summary weight {i}: name must be a non-empty string, each once"
        names.add(w["name"])
        shape = w["shape"]
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= 2**31 for d in shape):
            return f"summary weight {w['name']!r}: shape must be a list of non-negative integers"
        if int(np.prod(shape, dtype=np.int64)) > 2**26:
            return f"summary weight {w['name']!r} is over 2**26 values: too large for a conformance check"
        if w["dtype"] not in NUMPY_DTYPES:
            return (
                f"summary weight {w['name']!r}: dtype {str(w['dtype'])[:40]!r} is not one of {', '.join(NUMPY_DTYPES)}"
            )
    return list(weights)


def rule_of(specs: str, weights: Weights) -> bool:
    """Whether ``specs`` follows the array rule for ``weights`` (the wire format is not part of it)."""
    return specs == "arrays:" + fingerprint(weights)


def wire_format_of(info: dict[str, Any]) -> str | None:
    """The wire format to send the device: the first its ``/info`` capabilities list that fedsync knows, else none."""
    capabilities = info.get("capabilities")
    formats = capabilities.get("wire_formats") if isinstance(capabilities, dict) else None
    known = [f for f in formats if f in compression.WIRE_DTYPES] if isinstance(formats, list) else []
    return known[0] if known else None


def why_specs_differ(specs: str, weights: Weights) -> str:
    """What the device's specs would be under the documented rule, and which known wrong guess it matches."""
    text = json.dumps(weights, sort_keys=True, separators=(",", ":"), default=str)
    expected = "arrays:" + fingerprint(weights)

    def digest(value: str, full: bool = False) -> str:
        hexed = hashlib.sha256(value.encode("utf-8")).hexdigest()
        return "arrays:sha256:" + (hexed if full else hexed[:16])

    guesses = {
        "keys not sorted (name, shape, dtype as listed)": json.dumps(weights, separators=(",", ":")),
        "spaces after ',' and ':'": json.dumps(weights, sort_keys=True),
        "non-ASCII characters not escaped": json.dumps(
            weights, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ),
        "weights sorted by name": json.dumps(
            sorted(weights, key=lambda w: str(w["name"])), sort_keys=True, separators=(",", ":")
        ),
    }
    found = [why for why, guess in guesses.items() if specs == digest(guess)]
    if specs == digest(text, full=True):
        found.append("the whole digest, not its first 16 hex digits")
    hint = f"; it matches a known wrong guess: {found[0]}" if found else ""
    return f"the rule gives {expected} (canonical JSON {text[:120]}{'...' if len(text) > 120 else ''}){hint}"


def _values(shape: list[int], dtype: np.dtype) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64))
    if dtype.kind == "f":
        a = np.linspace(-0.5, 0.5, size) if size > 1 else np.full(size, 0.25)
    elif dtype.kind == "b":
        a = np.arange(size) % 2 == 0
    else:
        a = np.arange(size) % 7
    return np.ascontiguousarray(a.astype(dtype).reshape(shape))


def known_payload(weights: Weights, specs: str, wire_dtype: str | None) -> bytes:
    """A coordinator's payload for ``weights``: known values, 0 samples, packed as ``wire_dtype`` if set."""
    arrays = {w["name"]: _values(w["shape"], np.dtype(w["dtype"])) for w in weights}
    metadata = {SAMPLES_KEY: "0", "fedsync.metrics": "{}", "fedsync.specs": specs}
    if wire_dtype is not None:
        arrays, metadata[compression.WIRE_KEY] = compression.pack(arrays, wire_dtype)
    return bytes(codec.encode(arrays, metadata))


def read_reply(body: bytes, weights: Weights, wire_dtype: str | None) -> tuple[list[str], dict[str, Any] | None]:
    """Problems with a device's reply (layout, samples, metrics, values), and its report when it has one."""
    try:
        arrays, metadata = codec.decode(body)
    except ValueError as exc:
        return [f"not a valid array payload: {exc}"], None
    problems = []
    if SAMPLES_KEY not in metadata:
        problems.append(
            f"no {SAMPLES_KEY!r} in __metadata__: a coordinator counts it as 0, so this reply weighs nothing"
        )
    try:
        report: dict[str, Any] | None = dict(read_report(metadata))
    except ValueError as exc:
        return [*problems, f"metadata: {exc}"], None
    if compression.WIRE_KEY in metadata:
        try:
            expected = {w["name"]: np.dtype(w["dtype"]) for w in weights}
            shapes = {w["name"]: tuple(w["shape"]) for w in weights}
            arrays = compression.unpack(arrays, metadata[compression.WIRE_KEY], expected, shapes=shapes)
        except ValueError as exc:
            return [*problems, f"{compression.WIRE_KEY}: {exc}"], report
    found = {name: (list(a.shape), a.dtype.name) for name, a in arrays.items()}
    want = {w["name"]: (w["shape"], w["dtype"]) for w in weights}
    if found != want:
        missing, extra = sorted(want.keys() - found.keys()), sorted(found.keys() - want.keys())
        changed = sorted(n for n in want.keys() & found.keys() if want[n] != found[n])
        problems.append(
            f"arrays differ from the summary: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"other shape or dtype {[(n, found[n]) for n in changed[:3]]}"
        )
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            problems.append(f"array {name!r} holds NaN or infinity")
    return problems, report
