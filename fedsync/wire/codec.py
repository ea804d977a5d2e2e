"""Named numpy arrays <-> bytes, in the safetensors layout.

A payload is::

    [8 bytes]  N, the header length, unsigned little-endian
    [N bytes]  UTF-8 JSON object, right-padded with spaces so 8 + N is a multiple of 8:
               {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
                ...,
                "__metadata__": {"<key>": "<value>", ...}}     (optional, str -> str)
    [rest]     the data section: every array's raw bytes, little-endian, C order,
               back to back in header order; offsets are relative to its start.

Supported dtypes: F64 F32 F16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL. Files written
from these bytes load with the ``safetensors`` package, and its output decodes here.

The header is strict JSON: a key given twice or ``NaN``/``Infinity`` is refused.
:func:`decode` trusts nothing: any malformed input raises :class:`CodecError`
(a ``ValueError``) naming what is wrong, and the arrays it returns are views into
the given buffer, not copies.
"""

from __future__ import annotations

import json
import math
import reprlib
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, overload

import numpy as np

from .._util.json import loads_strict
from ..errors import CodecError

__all__ = [
    "HEADER_LIMIT",
    "MAX_TENSORS",
    "MAX_METADATA",
    "Payload",
    "encode_payload",
    "encode_frames",
    "encode",
    "payload_size",
    "read_exactly",
    "decode",
    "Header",
    "Tensor",
    "read_header",
    "read_pieces",
    "SUPPORTED_DTYPES",
    "carries",
    "check_carries",
]

HEADER_LIMIT = 8 * 1024 * 1024
"""Largest JSON header, in bytes, that :func:`encode` writes and, by default, :func:`decode` accepts.

About 80,000 tensors' entries (~100 bytes each). Parsing JSON takes up to ~20
times its size in memory, so this bounds what any header costs; readers that
know the layout they expect pass a tighter ``limit`` (FedArrays does).
"""

MAX_TENSORS = 65536
"""Most tensors a header may list."""

MAX_METADATA = 1024
"""Most ``__metadata__`` entries a header may carry."""

_METADATA_KEY = "__metadata__"
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_LENGTH = struct.Struct("<Q")
_MAX_NDIM = 64  # numpy's limit
_MAX_INTP = int(np.iinfo(np.intp).max)

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {(dt.kind, dt.itemsize): code for code, dt in _DTYPES.items()}
_SUPPORTED = ", ".join(_DTYPES)


def carries(dtype: np.dtype) -> bool:
    """Whether a payload can hold arrays of ``dtype`` (see :data:`SUPPORTED_DTYPES`)."""
    dtype = np.dtype(dtype)
    return (dtype.kind, dtype.itemsize) in _CODES


SUPPORTED_DTYPES = tuple(str(dt) for dt in _DTYPES.values())
"""The numpy dtypes a payload carries (safetensors' F64 ... BOOL; bfloat16 travels as float32 in the adapters)."""


def check_carries(name: object, dtype: np.dtype) -> None:
    """Refuse an array ``name`` of a ``dtype`` no payload carries, naming it and what is supported.

    Raises:
        TypeError: ``dtype`` is not one of :data:`SUPPORTED_DTYPES`.
    """
    if not carries(dtype):
        raise TypeError(
            f"array {name!r} has dtype {np.dtype(dtype)}, which a payload cannot carry; supported: "
            f"{', '.join(SUPPORTED_DTYPES)}. Convert it, e.g. a.astype(np.float32)"
        )


# Messages quote untrusted values; keep them short whatever the header holds.
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxdict = 8


class Tensor(NamedTuple):
    """One array's entry in a payload's header: where its bytes are in the data section."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    """Offset of its first byte in the data section (after the 8 + N header bytes)."""
    end: int
    """Offset one past its last byte in the data section; ``end - begin`` is its size in bytes."""


# ----------------------------------------------------------------- encoding


def encode_frames(
    arrays: Mapping[str, Any] | Sequence[Any], metadata: Mapping[str, str] | None = None
) -> list[memoryview | bytes]:
    """Encode arrays as a list of frames: the header, then one zero-copy view per array."""
    header: dict[str, Any] = {}
    frames: list[memoryview | bytes] = []
    offset = 0
    for name, array in _named_arrays(arrays):
        end = offset + array.nbytes
        header[name] = {
            "dtype": _CODES[array.dtype.kind, array.dtype.itemsize],
            "shape": list(array.shape),
            "data_offsets": [offset, end],
        }
        frames.append(_raw_bytes(array))
        offset = end
    if len(header) > MAX_TENSORS:
        raise CodecError(f"{len(header)} arrays are more than MAX_TENSORS ({MAX_TENSORS}) a payload may hold")
    if metadata is not None:
        checked = _checked_metadata(metadata, "metadata")
        if checked:
            header[_METADATA_KEY] = checked
    return [_header_frame(header), *frames]


def encode(arrays: Mapping[str, Any] | Sequence[Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """Encode arrays into one immutable ``bytes`` object (see :func:`encode_frames`)."""
    # bytes.join sums the frame sizes, allocates once and memcpy's each buffer:
    # a single copy, and the result is bytes (safetensors.numpy.load rejects bytearray).
    return b"".join(encode_frames(arrays, metadata))


class Payload:
    """A payload as a sequence of buffers, sent as one body without joining them.

    ``len(payload)`` is the total size, so ``requests`` sends it with a
    Content-Length and writes each buffer to the socket as it is: the arrays
    reach the wire without a copy. ``bytes(payload)`` joins it when a single
    buffer is needed.
    """

    def __init__(self, frames: list[memoryview | bytes]) -> None:
        self.frames = frames
        self.nbytes = payload_size(frames)

    def __iter__(self) -> Iterator[memoryview | bytes]:
        return iter(self.frames)

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.frames)

    def __repr__(self) -> str:
        return f"Payload({len(self.frames)} frames, {self.nbytes} bytes)"


def encode_payload(arrays: Mapping[str, Any] | Sequence[Any], metadata: Mapping[str, str] | None = None) -> Payload:
    """Encode arrays as a :class:`Payload` that views them (no copy for contiguous little-endian arrays)."""
    return Payload(encode_frames(arrays, metadata))


@overload
def read_exactly(
    readinto: Callable[[memoryview], int | None], length: int, *, as_view: Literal[True], into: np.ndarray | None = None
) -> memoryview: ...


@overload
def read_exactly(
    readinto: Callable[[memoryview], int | None], length: int, *, as_view: bool = False, into: np.ndarray | None = None
) -> bytearray | memoryview: ...


def read_exactly(
    readinto: Callable[[memoryview], int | None], length: int, *, as_view: bool = False, into: np.ndarray | None = None
) -> bytearray | memoryview:
    """Fill a fresh buffer of ``length`` bytes from ``readinto``; shorter if the source ends early.

    ``as_view`` allocates with numpy (huge pages where the system allows: far
    fewer page faults than a zero-filled bytearray) and returns a memoryview;
    ``into`` (a uint8 array of ``length`` bytes) is filled instead of a new one.
    """
    if into is None and as_view:
        into = np.empty(length, np.uint8)
    buffer: bytearray | memoryview = into.data if into is not None else bytearray(length)
    view = memoryview(buffer)
    got = 0
    while got < length and (n := readinto(view[got:])):
        got += n
    return buffer if got == length else buffer[:got]


def payload_size(frames: Iterable[memoryview | bytes]) -> int:
    """Total number of bytes in frames."""
    return sum(memoryview(frame).nbytes for frame in frames)


def _named_arrays(arrays: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, np.ndarray]]:
    if isinstance(arrays, Mapping):
        items = list(arrays.items())
    elif isinstance(arrays, Sequence) and not isinstance(arrays, (str, bytes, bytearray)):
        items = [(str(index), value) for index, value in enumerate(arrays)]
    else:
        raise CodecError(
            f"arrays must be a mapping of name -> array or a list/tuple of arrays, got {type(arrays).__name__}"
        )
    return [(_checked_name(name), _wire_array(name, value)) for name, value in items]


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise CodecError(f"array names must be non-empty str, got {_repr.repr(name)}")
    if name == _METADATA_KEY:
        raise CodecError(f"{_METADATA_KEY!r} is reserved and cannot name an array")
    return name


def _wire_array(name: str, value: Any) -> np.ndarray:
    """The array as little-endian and C-contiguous, copied only if it is not already."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"array {name!r} is not convertible to a numpy array: {exc}") from exc
    if (array.dtype.kind, array.dtype.itemsize) not in _CODES or array.dtype.fields:
        raise CodecError(f"array {name!r} has unsupported dtype {array.dtype}; supported: {_SUPPORTED}")
    # np.ascontiguousarray would turn 0-d arrays into 1-d ones; asarray(order="C") does not.
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


def _raw_bytes(array: np.ndarray) -> memoryview:
    # memoryview(array).cast("B") fails on some 0-d and empty shapes; a flat uint8
    # view of a contiguous array is always possible and still shares its memory.
    return array.reshape(-1).view(np.uint8).data


def _header_frame(header: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(f"names and metadata must be valid Unicode text: {exc}") from exc
    size = len(text) + (-len(text) % 8)
    if size > HEADER_LIMIT:
        raise CodecError(
            f"header is {size} bytes, more than HEADER_LIMIT ({HEADER_LIMIT}); "
            "raise fedsync.wire.codec.HEADER_LIMIT for a model of that many tensors"
        )
    return _LENGTH.pack(size) + text.ljust(size, b" ")


# ----------------------------------------------------------------- decoding


def decode(
    buffer: bytes | bytearray | memoryview, *, limit: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Decode a payload into (arrays viewing ``buffer`` without copying, metadata).

    ``limit``: the largest header accepted, in bytes (default :data:`HEADER_LIMIT`).
    Raises :class:`CodecError` for anything malformed or over a limit.
    """
    if isinstance(buffer, Payload):
        buffer = bytes(buffer)
    view = _byte_view(buffer)
    header_end = _LENGTH.size + _header_length(view[: _LENGTH.size], len(view), limit)
    data = view[header_end:]
    tensors, metadata = _layout(view[_LENGTH.size : header_end], len(data))
    arrays = _views(tensors, data)
    return arrays, metadata


def _byte_view(buffer: Any) -> memoryview:
    try:
        view = memoryview(buffer)
    except TypeError as exc:
        raise CodecError(f"expected bytes, bytearray or memoryview, got {type(buffer).__name__}") from exc
    if not view.c_contiguous:
        raise CodecError("buffer must be contiguous")
    if view.ndim == 1 and view.format == "B":
        return view
    try:
        return view.cast("B")
    except (TypeError, ValueError) as exc:  # e.g. zeros in a multi-dimensional shape
        raise CodecError(f"buffer cannot be read as plain bytes: {exc}") from exc


class Header(NamedTuple):
    """A payload's header read off a stream: where each tensor's bytes lie, and the metadata."""

    tensors: list[Tensor]
    """In data-section order; they tile it exactly."""
    metadata: dict[str, str]

    def arrays(self, data: memoryview) -> dict[str, np.ndarray]:
        """The arrays viewing a buffer that holds the whole data section."""
        return _views(self.tensors, data)


def read_header(readinto: Callable[[memoryview], int | None], length: int, *, limit: int | None = None) -> Header:
    """Read and check the header of a ``length``-byte payload from a stream.

    The stream is then at the start of the data section: read it with
    :func:`read_pieces`. Malformed headers raise :class:`CodecError`, as in
    :func:`decode`, before any data is read; a header longer than ``limit``
    bytes (default :data:`HEADER_LIMIT`) before anything past its 8-byte length.
    """
    prefix = memoryview(bytearray(_LENGTH.size))
    if length >= _LENGTH.size:  # else _header_length says the payload is too short
        _read_into(readinto, prefix)
    header_length = _header_length(prefix, length, limit)
    raw = _read_into(readinto, memoryview(bytearray(header_length)))
    tensors, metadata = _layout(raw, length - _LENGTH.size - header_length)
    return Header(tensors, metadata)


def read_pieces(
    readinto: Callable[[memoryview], int | None], header: Header, buffer: memoryview
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Read the data section into ``buffer`` a piece at a time.

    Yields ``(name, first_element, values)``: ``values`` is a flat array of the
    tensor's elements ``[first_element, first_element + len(values))``. It views
    ``buffer``, which the next piece overwrites: use it before asking for more.
    ``buffer`` needs room for at least one element (8 bytes).
    """
    for tensor in header.tensors:
        itemsize = tensor.dtype.itemsize
        per_piece = len(buffer) // itemsize
        if per_piece < 1:
            raise CodecError(
                f"buffer of {len(buffer)} bytes cannot hold one {tensor.dtype} "
                "element; give read_pieces a buffer of at least 8 bytes"
            )
        count = (tensor.end - tensor.begin) // itemsize
        for first in range(0, count, per_piece):
            piece = _read_into(readinto, buffer[: min(per_piece, count - first) * itemsize])
            yield tensor.name, first, _checked_values(tensor, np.frombuffer(piece, tensor.dtype))


def _views(tensors: list[Tensor], data: memoryview) -> dict[str, np.ndarray]:
    return {
        t.name: _checked_values(t, np.frombuffer(data, t.dtype, math.prod(t.shape), t.begin)).reshape(t.shape)
        for t in tensors
    }


def _checked_values(tensor: Tensor, values: np.ndarray) -> np.ndarray:
    """``values`` of ``tensor``, refused if they are not what its dtype allows: a BOOL byte is 0 or 1.

    Every other dtype's every bit pattern is a value (NaN and infinity are the receiver's check).
    """
    if values.dtype.kind == "b" and values.size and int(values.view(np.uint8).max()) > 1:
        bad = int(values.view(np.uint8).max())
        raise CodecError(f"tensor {tensor.name!r} is BOOL but holds the byte {bad}: a boolean is 0 or 1")
    return values


def _read_into(readinto: Callable[[memoryview], int | None], view: memoryview) -> memoryview:
    got = 0
    while got < len(view):
        n = readinto(view[got:])
        if not n:
            raise CodecError(f"payload ended {len(view) - got} bytes early")
        got += n
    return view


def _layout(raw_header: memoryview, data_size: int) -> tuple[list[Tensor], dict[str, str]]:
    """The checked tensors (in data order) and metadata of a header's JSON."""
    header = _parse_header(raw_header)
    metadata = _checked_metadata(header.pop(_METADATA_KEY, {}), _METADATA_KEY)
    if len(header) > MAX_TENSORS or len(metadata) > MAX_METADATA:
        raise CodecError(
            f"header lists {len(header)} tensors and {len(metadata)} metadata entries; "
            f"at most MAX_TENSORS ({MAX_TENSORS}) and MAX_METADATA ({MAX_METADATA}) are accepted"
        )
    tensors = [_tensor(name, entry, data_size) for name, entry in header.items()]
    return _check_coverage(tensors, data_size), metadata


def _header_length(prefix: memoryview, payload_size: int, limit: int | None = None) -> int:
    if payload_size < _LENGTH.size or len(prefix) < _LENGTH.size:
        raise CodecError(f"payload is {payload_size} bytes, shorter than the 8-byte header length prefix")
    (length,) = _LENGTH.unpack(prefix[: _LENGTH.size])
    if limit is None and length > HEADER_LIMIT:
        raise CodecError(
            f"header length {length} exceeds HEADER_LIMIT ({HEADER_LIMIT}); raise "
            "fedsync.wire.codec.HEADER_LIMIT for a model of that many tensors"
        )
    if limit is not None and length > limit:
        raise CodecError(f"header length {length} exceeds the {limit} bytes a payload of this model's layout can need")
    if length > payload_size - _LENGTH.size:
        raise CodecError(f"header length {length} exceeds the {payload_size - _LENGTH.size} bytes that follow")
    return length


def _parse_header(raw: memoryview) -> dict[str, Any]:
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(f"header is not valid UTF-8: {exc}") from exc
    try:
        header = loads_strict(
            text,
            duplicate=lambda key: CodecError(f"header has duplicate key {_repr.repr(key)}; keys must be unique"),
            constant=lambda name: CodecError(f"header holds {name}, not a finite number"),
        )
    except CodecError:
        raise
    except RecursionError as exc:
        raise CodecError("header JSON is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise CodecError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CodecError(f"header must be a JSON object, got {type(header).__name__}")
    return header


def _checked_metadata(metadata: Any, what: str) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise CodecError(f"{what} must be a mapping of str -> str, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CodecError(f"{what} must map str -> str, got {_repr.repr(key)}: {_repr.repr(value)}")
    return dict(metadata)


def _tensor(name: str, entry: Any, data_size: int) -> Tensor:
    label = f"tensor {_repr.repr(name)}"
    if not name:
        raise CodecError("tensor names must be non-empty")
    if not isinstance(entry, dict):
        raise CodecError(f"{label}: entry must be a JSON object, got {type(entry).__name__}")
    if entry.keys() != _ENTRY_KEYS:
        missing = sorted(_ENTRY_KEYS - entry.keys())
        unexpected = sorted(entry.keys() - _ENTRY_KEYS)
        raise CodecError(
            f"{label}: entry must have exactly the keys dtype, shape, data_offsets; "
            f"missing {missing}, unexpected {_repr.repr(unexpected)}"
        )
    dtype = _entry_dtype(label, entry["dtype"])
    shape = _entry_shape(label, entry["shape"], dtype.itemsize)
    begin, end = _entry_offsets(label, entry["data_offsets"], data_size)
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise CodecError(
            f"{label}: data_offsets span {end - begin} bytes, but shape {list(shape)} "
            f"of {entry['dtype']} needs {expected}"
        )
    return Tensor(name, dtype, shape, begin, end)


def _entry_dtype(label: str, code: Any) -> np.dtype:
    if not isinstance(code, str) or code not in _DTYPES:
        raise CodecError(f"{label}: unknown dtype {_repr.repr(code)}; supported: {_SUPPORTED}")
    return _DTYPES[code]


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass, and JSON true is no size


def _entry_shape(label: str, shape: Any, itemsize: int) -> tuple[int, ...]:
    valid = (
        isinstance(shape, list)
        and len(shape) <= _MAX_NDIM
        and all(_is_int(dim) and 0 <= dim <= _MAX_INTP for dim in shape)
    )
    if not valid:
        raise CodecError(
            f"{label}: shape must be a list of at most {_MAX_NDIM} integers "
            f"in [0, {_MAX_INTP}], got {_repr.repr(shape)}"
        )
    # numpy refuses even empty arrays whose non-zero dims multiply past intp.
    if math.prod(dim for dim in shape if dim) * itemsize > _MAX_INTP:
        raise CodecError(f"{label}: shape {_repr.repr(shape)} is too large for an array")
    return tuple(shape)


def _entry_offsets(label: str, offsets: Any, data_size: int) -> tuple[int, int]:
    valid = (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(map(_is_int, offsets))
        and 0 <= offsets[0] <= offsets[1] <= data_size
    )
    if not valid:
        raise CodecError(
            f"{label}: data_offsets must be two integers [begin, end] with "
            f"0 <= begin <= end <= {data_size} (the data section size), got {_repr.repr(offsets)}"
        )
    return offsets[0], offsets[1]


def _check_coverage(tensors: list[Tensor], data_size: int) -> list[Tensor]:
    """Tensors must tile the data section exactly: no overlap, no hole, nothing after.

    Returns them in data order.
    """
    position = 0
    ordered = sorted(tensors, key=lambda t: (t.begin, t.end))
    for tensor in ordered:
        if tensor.begin < position:
            raise CodecError(
                f"tensor {_repr.repr(tensor.name)} at bytes [{tensor.begin}, {tensor.end}) "
                f"overlaps the previous tensor, which ends at {position}"
            )
        if tensor.begin > position:
            raise CodecError(
                f"hole in the data section: bytes [{position}, {tensor.begin}) belong to no "
                f"tensor (next is {_repr.repr(tensor.name)})"
            )
        position = tensor.end
    if position != data_size:
        raise CodecError(
            f"data section is {data_size} bytes but the tensors cover only {position}; expected no trailing bytes"
        )
    return ordered
