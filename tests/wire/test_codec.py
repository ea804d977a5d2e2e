"""fedsync.wire.codec: named numpy arrays <-> bytes in the safetensors layout."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors import safe_open
from safetensors.numpy import load, load_file, save

from fedsync.wire import codec
from fedsync.wire.codec import HEADER_LIMIT, decode, encode, encode_frames, payload_size
from fedsync.errors import CodecError

SUPPORTED = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
FUZZ = settings(max_examples=200, deadline=None)


def sample(dtype, shape=(2, 3)) -> np.ndarray:
    """A small array of ``dtype`` with distinct-ish values."""
    values = np.arange(int(np.prod(shape))).reshape(shape)
    return (values % 2 == 1) if np.dtype(dtype) == np.bool_ else values.astype(dtype)


def assert_same_array(expected, got: np.ndarray) -> None:
    """Same shape, same values bit for bit (NaN payloads included), little-endian dtype."""
    expected = np.asarray(expected)
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype.newbyteorder("<")
    assert np.ascontiguousarray(expected, dtype=got.dtype).tobytes() == got.tobytes()


def header_of(payload: bytes) -> dict:
    (length,) = struct.unpack_from("<Q", payload)
    return json.loads(payload[8 : 8 + length])


# ------------------------------------------------------------ round trips


@pytest.mark.parametrize("code", SUPPORTED)
def test_every_supported_dtype_round_trips(code):
    array = sample(SUPPORTED[code])
    arrays, metadata = decode(encode({"x": array}))
    assert_same_array(array, arrays["x"])
    assert header_of(encode({"x": array}))["x"]["dtype"] == code
    assert metadata == {}


def test_a_list_is_named_by_position():
    first, second = sample(np.float32), sample(np.int8, (4,))
    arrays, _ = decode(encode([first, second]))
    assert list(arrays) == ["0", "1"]
    assert_same_array(first, arrays["0"])
    assert_same_array(second, arrays["1"])


def test_a_tuple_is_named_by_position_too():
    arrays, _ = decode(encode((sample(np.uint8),)))
    assert list(arrays) == ["0"]


def test_order_of_arrays_is_preserved():
    names = ["zeta", "alpha", "mid", "0", "beta"]
    payload = encode({name: sample(np.float32) for name in names})
    arrays, _ = decode(payload)
    assert list(arrays) == names
    offsets = [header_of(payload)[name]["data_offsets"] for name in names]
    assert offsets == sorted(offsets)


@pytest.mark.parametrize("value", [np.float32(1.5), np.array(7, dtype=np.int64), np.array(True)])
def test_zero_dimensional_arrays_round_trip(value):
    arrays, _ = decode(encode({"scalar": value}))
    assert arrays["scalar"].shape == ()
    assert_same_array(value, arrays["scalar"])


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 2, 5)])
def test_empty_arrays_round_trip(shape):
    empty = np.zeros(shape, dtype=np.float32)
    payload = encode({"before": sample(np.int16), "empty": empty, "after": sample(np.uint8)})
    arrays, _ = decode(payload)
    assert_same_array(empty, arrays["empty"])
    assert header_of(payload)["empty"]["data_offsets"] == [12, 12]


def test_no_arrays_at_all_round_trips():
    assert decode(encode({})) == ({}, {})
    assert decode(encode([], {"only": "metadata"})) == ({}, {"only": "metadata"})


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4).T,
        np.arange(20, dtype=np.int32)[::3],
        np.arange(24, dtype=np.uint16).reshape(2, 3, 4)[:, ::2, 1:],
    ],
    ids=["transposed", "step-slice", "3d-slice"],
)
def test_non_contiguous_arrays_are_written_in_c_order(array):
    assert not array.flags.c_contiguous
    arrays, _ = decode(encode({"x": array}))
    assert_same_array(array, arrays["x"])


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i8", ">u2", ">f2"])
def test_big_endian_arrays_are_written_little_endian(dtype):
    array = sample(dtype)
    arrays, _ = decode(encode({"x": array}))
    assert arrays["x"].dtype == np.dtype(dtype).newbyteorder("<")
    np.testing.assert_array_equal(arrays["x"], array)


def test_array_likes_are_converted():
    arrays, _ = decode(encode({"ints": [1, 2, 3], "floats": [[0.5], [1.5]]}))
    assert_same_array(np.array([1, 2, 3]), arrays["ints"])
    assert_same_array(np.array([[0.5], [1.5]]), arrays["floats"])


def test_metadata_round_trips():
    metadata = {"round": "3", "specs": "mlp:a1b2", "unicode": "héllo ✓", "": ""}
    _, decoded = decode(encode({"w": sample(np.float32)}, metadata))
    assert decoded == metadata


def test_non_ascii_names_round_trip():
    arrays, _ = decode(encode({"poids_é": sample(np.float32), "层": sample(np.int8)}))
    assert list(arrays) == ["poids_é", "层"]


@given(
    st.lists(
        hnp.arrays(
            dtype=st.sampled_from([np.dtype(t) for t in SUPPORTED.values()])
            | st.sampled_from([np.dtype(t) for t in [">f8", ">f4", ">i4", ">u8"]]),
            shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
        ),
        max_size=4,
    ),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
@pytest.mark.slow  # ~0.9 s: keeps the fast tier under 90 s
@FUZZ
def test_random_arrays_round_trip(arrays, metadata):
    decoded, decoded_metadata = decode(encode(arrays, metadata))
    assert list(decoded) == [str(i) for i in range(len(arrays))]
    for array, got in zip(arrays, decoded.values()):
        assert_same_array(array, got)
    assert decoded_metadata == metadata


# ------------------------------------------------------------ the byte layout


def test_header_is_padded_with_spaces_to_an_8_byte_boundary():
    for name in ["a", "ab", "abc", "abcdefgh"]:
        payload = encode({name: np.zeros(1, np.uint8)})
        (length,) = struct.unpack_from("<Q", payload)
        assert (8 + length) % 8 == 0
        assert payload[8 : 8 + length].decode().startswith("{")
        assert payload[8 : 8 + length].rstrip(b" ").endswith(b"}")


def test_layout_matches_the_safetensors_format_exactly():
    payload = encode({"x": np.array([1.0, 2.0], dtype=np.float32)}, {"k": "v"})
    assert header_of(payload) == {
        "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "__metadata__": {"k": "v"},
    }
    assert payload.endswith(struct.pack("<2f", 1.0, 2.0))


def test_encode_is_the_concatenation_of_the_frames():
    arrays = {"a": sample(np.float32), "b": sample(np.int64).T, "c": np.zeros(0)}
    frames = encode_frames(arrays, {"m": "1"})
    payload = encode(arrays, {"m": "1"})
    assert isinstance(payload, bytes)
    assert payload == b"".join(frames)
    assert payload_size(frames) == len(payload)


def test_contiguous_arrays_are_framed_without_copying():
    array = np.arange(10, dtype=np.float32)
    _, frame = encode_frames({"x": array})
    assert isinstance(frame, memoryview)
    assert np.shares_memory(np.frombuffer(frame, np.uint8), array)


def test_non_contiguous_arrays_are_copied_once_into_their_frame():
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T
    _, frame = encode_frames({"x": array})
    assert not np.shares_memory(np.frombuffer(frame, np.uint8), array)
    assert bytes(frame) == np.ascontiguousarray(array).tobytes()


# ------------------------------------------------------------ decode is zero-copy


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda w: w.__name__)
def test_decoded_arrays_share_memory_with_the_buffer(wrap):
    buffer = wrap(encode({"a": sample(np.float64), "b": sample(np.int16)}))
    arrays, _ = decode(buffer)
    whole = np.frombuffer(buffer, np.uint8)
    assert all(np.shares_memory(array, whole) for array in arrays.values())


def test_decoded_arrays_see_writes_to_a_bytearray_buffer():
    buffer = bytearray(encode({"x": np.zeros(4, dtype=np.uint8)}))
    arrays, _ = decode(buffer)
    buffer[-1] = 42
    assert arrays["x"][-1] == 42


def test_decoded_arrays_from_bytes_are_read_only():
    arrays, _ = decode(encode({"x": np.zeros(4)}))
    assert not arrays["x"].flags.writeable


# ------------------------------------------------------------ safetensors interop


ALL_DTYPES = {code.lower(): sample(dtype) for code, dtype in SUPPORTED.items()}


def test_our_bytes_load_with_safetensors():
    arrays = {**ALL_DTYPES, "scalar": np.float32(2.5), "empty": np.zeros((3, 0), np.int32)}
    loaded = load(encode(arrays))
    assert loaded.keys() == arrays.keys()
    for name, array in arrays.items():
        assert_same_array(array, loaded[name])


def test_our_file_opens_with_safe_open_and_load_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(encode(ALL_DTYPES, {"format": "np", "round": "7"}))
    with safe_open(str(path), framework="np") as handle:
        assert handle.metadata() == {"format": "np", "round": "7"}
        assert set(handle.keys()) == set(ALL_DTYPES)
        assert_same_array(ALL_DTYPES["f16"], handle.get_tensor("f16"))
    loaded = load_file(str(path))
    for name, array in ALL_DTYPES.items():
        assert_same_array(array, loaded[name])


def test_safetensors_bytes_decode_with_ours():
    arrays = {**ALL_DTYPES, "empty": np.zeros((0,), np.float64)}
    decoded, metadata = decode(save(arrays, metadata={"written_by": "safetensors"}))
    assert metadata == {"written_by": "safetensors"}
    assert decoded.keys() == arrays.keys()
    for name, array in arrays.items():
        assert_same_array(array, decoded[name])


# ------------------------------------------------------------ malformed payloads


def raw(header, data: bytes = b"") -> bytes:
    """A payload with an arbitrary header (dict, or str/bytes taken verbatim)."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header)) + header + data


def entry(dtype="F32", shape=(1,), offsets=(0, 4)) -> dict:
    """A header entry; values go into the JSON as given (tuples become lists)."""
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


FOUR = b"\x00" * 4


def one(data: bytes = FOUR, **fields) -> bytes:
    """A payload holding one tensor "a": a valid 1-element F32, except for ``fields``."""
    return raw({"a": entry(**fields)}, data)


BIG = 2**64
DUPLICATE_TENSOR = '{"a": %s, "a": %s}' % (json.dumps(entry()), json.dumps(entry()))
DUPLICATE_FIELD = '{"a": {"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
case = pytest.param
MALFORMED = [
    # the length prefix
    case(b"", "shorter than the 8-byte", id="empty"),
    case(b"\x02\x00\x00", "shorter than the 8-byte", id="3-bytes"),
    case(struct.pack("<Q", HEADER_LIMIT + 1) + b"{}", "exceeds HEADER_LIMIT", id="over-limit"),
    case(struct.pack("<Q", 2**64 - 1), "exceeds HEADER_LIMIT", id="max-u64"),
    case(struct.pack("<Q", 100) + b"{}", "exceeds the 2 bytes that follow", id="past-end"),
    # the header as text
    case(raw(b'{"\xff\xfe": 1}'), "not valid UTF-8", id="not-utf8"),
    case(raw("{not json"), "not valid JSON", id="not-json"),
    case(raw(""), "not valid JSON", id="empty-header"),
    case(raw("[" * 100_000 + "]" * 100_000), "nested too deeply", id="deeply-nested"),
    case(raw('{"a": {"shape": [' + "9" * 5000 + "]}}"), "not valid JSON", id="5000-digit-int"),
    case(raw("[1, 2]"), "must be a JSON object, got list", id="header-list"),
    case(raw('"text"'), "must be a JSON object, got str", id="header-str"),
    case(raw(DUPLICATE_TENSOR, FOUR), "duplicate key 'a'", id="duplicate-tensor"),
    case(raw(DUPLICATE_FIELD, FOUR), "duplicate key 'dtype'", id="duplicate-field"),
    # entries
    case(raw({"": entry()}, FOUR), "names must be non-empty", id="empty-name"),
    case(raw({"a": [1, 2]}), "entry must be a JSON object, got list", id="entry-list"),
    case(raw({"a": None}), "entry must be a JSON object, got NoneType", id="entry-null"),
    case(raw({"a": {"dtype": "F32", "shape": [1]}}), "missing ['data_offsets']", id="missing-key"),
    case(raw({"a": {**entry(), "extra": 1}}, FOUR), "unexpected ['extra']", id="extra-key"),
    # dtype
    case(one(dtype="BF16"), "unknown dtype 'BF16'", id="dtype-bf16"),
    case(one(dtype="f32"), "supported: F64, F32", id="dtype-lowercase"),
    case(one(dtype=4), "unknown dtype 4", id="dtype-int"),
    # shape
    case(one(shape=3), "shape must be a list", id="shape-int"),
    case(one(shape=None), "got None", id="shape-null"),
    case(one(shape=[-1]), "got [-1]", id="shape-negative"),
    case(one(shape=[True]), "got [True]", id="shape-bool"),
    case(one(shape=[1.0]), "got [1.0]", id="shape-float"),
    case(one(shape=["1"]), "shape must be a list", id="shape-str"),
    case(one(shape=[BIG]), "integers in [0, ", id="shape-huge"),
    case(one(shape=[1] * 65), "at most 64", id="shape-65-dims"),
    case(one(b"", shape=[0, 2**40, 2**40], offsets=[0, 0]), "too large", id="shape-huge-empty"),
    # data_offsets
    case(one(offsets=[0]), "two integers [begin, end]", id="offsets-one"),
    case(one(offsets=[0, 4, 8]), "got [0, 4, 8]", id="offsets-three"),
    case(one(offsets=[0.0, 4]), "got [0.0, 4]", id="offsets-float"),
    case(one(offsets=[False, 4]), "got [False, 4]", id="offsets-bool"),
    case(one(offsets="0:4"), "got '0:4'", id="offsets-str"),
    case(one(offsets=[-4, 0]), "0 <= begin <= end", id="offsets-negative"),
    case(one(offsets=[4, 0]), "0 <= begin <= end", id="offsets-reversed"),
    case(one(offsets=[0, 8]), "<= 4 (the data section size)", id="offsets-past-data"),
    case(one(offsets=[0, BIG]), "got [0, 18446744073709551616]", id="offsets-huge"),
    case(one(shape=[2]), "span 4 bytes, but shape [2] of F32 needs 8", id="size-mismatch"),
    case(one(dtype="F64"), "needs 8", id="size-mismatch-dtype"),
    # coverage of the data section
    case(raw({"a": entry(), "b": entry()}, FOUR), "overlaps the previous", id="overlap-same"),
    case(
        raw({"a": entry(shape=[2], offsets=[0, 8]), "b": entry(offsets=[4, 8])}, FOUR * 2),
        "overlaps",
        id="overlap-partial",
    ),
    case(
        raw(
            {"a": entry(shape=[2], offsets=[0, 8]), "e": entry(shape=[0], offsets=[4, 4])},
            FOUR * 2,
        ),
        "overlaps",
        id="empty-inside-another",
    ),
    case(raw({"a": entry(), "b": entry(offsets=[8, 12])}, FOUR * 3), "hole", id="hole-between"),
    case(one(FOUR * 2, offsets=[4, 8]), "bytes [0, 4) belong to no tensor", id="hole-first"),
    case(one(FOUR * 2), "expected no trailing bytes", id="trailing-bytes"),
    case(raw({}, b"x"), "cover only 0", id="data-without-tensors"),
    # metadata
    case(raw({"__metadata__": ["a"]}), "__metadata__ must be a mapping", id="metadata-list"),
    case(raw({"__metadata__": None}), "got NoneType", id="metadata-null"),
    case(raw({"__metadata__": {"k": 1}}), "must map str -> str, got 'k': 1", id="metadata-int"),
    case(raw({"__metadata__": {"k": {"x": "y"}}}), "must map str -> str", id="metadata-nested"),
]


@pytest.mark.parametrize("payload, fragment", MALFORMED)
def test_malformed_payloads_raise_codec_error(payload, fragment):
    with pytest.raises(CodecError) as caught:
        decode(payload)
    assert fragment in str(caught.value)


def test_codec_error_is_a_value_error():
    with pytest.raises(ValueError):
        decode(b"junk")


@pytest.mark.parametrize("buffer", ["a string", None, 12345], ids=["str", "None", "int"])
def test_decode_wants_a_bytes_like_object(buffer):
    with pytest.raises(CodecError, match="expected bytes, bytearray or memoryview"):
        decode(buffer)


def test_decode_rejects_a_non_contiguous_memoryview():
    with pytest.raises(CodecError, match="contiguous"):
        decode(memoryview(encode({"x": np.zeros(3)}))[::2])


def test_decode_accepts_a_memoryview_of_another_format():
    payload = encode({"x": np.arange(3, dtype=np.float64)})
    words = np.frombuffer(payload, dtype=np.uint64)  # payloads are 8-byte aligned in length
    arrays, _ = decode(memoryview(words))
    np.testing.assert_array_equal(arrays["x"], [0.0, 1.0, 2.0])


def test_decode_rejects_a_buffer_it_cannot_read_as_bytes():
    with pytest.raises(CodecError, match="cannot be read as plain bytes"):
        decode(memoryview(np.zeros((2, 0))))


def test_error_messages_stay_short_whatever_the_header_holds():
    with pytest.raises(CodecError) as caught:
        decode(raw({"a": entry(dtype="X" * 100_000)}, FOUR))
    assert len(str(caught.value)) < 300


# ------------------------------------------------------------ encode refuses what it cannot write


@pytest.mark.parametrize(
    "array",
    [
        np.array([object(), 1], dtype=object),
        np.array([1 + 2j]),
        np.array(["text"]),
        np.array([b"bytes"]),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]),
        np.zeros(2, dtype="V4"),
    ],
    ids=["object", "complex", "str", "bytes", "datetime", "structured", "void"],
)
def test_unsupported_dtypes_raise_codec_error(array):
    with pytest.raises(CodecError) as caught:
        encode({"bad": array})
    message = str(caught.value)
    assert "'bad'" in message and str(array.dtype) in message and "supported: F64" in message


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize == 8, reason="longdouble is float64 here")
def test_long_double_is_not_silently_truncated():
    with pytest.raises(CodecError, match="unsupported dtype"):
        encode([np.zeros(2, dtype=np.longdouble)])


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"": np.zeros(1)}, "non-empty str"),
        ({1: np.zeros(1)}, "non-empty str, got 1"),
        ({"__metadata__": np.zeros(1)}, "reserved"),
        (np.zeros(3), "got ndarray"),
        ("abc", "got str"),
        (b"abc", "got bytes"),
        ({"ragged": [[1, 2], [3]]}, "not convertible"),
        ({"surrogate\ud800": np.zeros(1)}, "valid Unicode"),
    ],
    ids=["empty-name", "int-name", "reserved", "ndarray", "str", "bytes", "ragged", "surrogate"],
)
def test_bad_arrays_argument_raises_codec_error(arrays, fragment):
    with pytest.raises(CodecError) as caught:
        encode(arrays)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    "metadata, fragment",
    [
        ({"round": 3}, "must map str -> str, got 'round': 3"),
        ({3: "round"}, "must map str -> str, got 3: 'round'"),
        ([("k", "v")], "must be a mapping of str -> str, got list"),
        ("k=v", "got str"),
    ],
    ids=["int-value", "int-key", "list", "str"],
)
def test_bad_metadata_raises_codec_error(metadata, fragment):
    with pytest.raises(CodecError) as caught:
        encode({"x": np.zeros(1)}, metadata)
    assert fragment in str(caught.value)


# ------------------------------------------------------------ fuzzing: a result or CodecError


def decode_or_codec_error(payload: bytes) -> None:
    """decode must return a valid result or raise CodecError; anything else fails the test."""
    try:
        arrays, metadata = decode(payload)
    except CodecError:
        return
    assert all(isinstance(array, np.ndarray) for array in arrays.values())
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    (length,) = struct.unpack_from("<Q", payload)
    assert sum(array.nbytes for array in arrays.values()) == len(payload) - 8 - length


VALID_PAYLOADS = [
    encode({"w": sample(np.float32), "b": sample(np.int64, (3,))}, {"round": "1"}),
    encode([np.float16(1.0), np.zeros((2, 0), np.uint8), sample(np.bool_, (5,))]),
    encode({}),
]


@st.composite
def mutated_payloads(draw) -> bytes:
    payload = bytearray(draw(st.sampled_from(VALID_PAYLOADS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete"]))
        where = draw(st.integers(0, max(len(payload) - 1, 0)))
        if kind == "flip" and payload:
            payload[where] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del payload[where:]
        elif kind == "extend":
            payload += draw(st.binary(min_size=1, max_size=16))
        elif kind == "insert":
            payload[where:where] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del payload[where : where + draw(st.integers(1, 4))]
    return bytes(payload)


@given(st.binary(max_size=256))
@FUZZ
def test_arbitrary_bytes_decode_or_raise_codec_error(payload):
    decode_or_codec_error(payload)


@given(st.binary(max_size=200))
@FUZZ
def test_arbitrary_bytes_after_a_plausible_length_decode_or_raise_codec_error(tail):
    decode_or_codec_error(struct.pack("<Q", len(tail) // 2) + tail)


@given(mutated_payloads())
@FUZZ
def test_mutated_payloads_decode_or_raise_codec_error(payload):
    decode_or_codec_error(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
plausible_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(list(SUPPORTED)) | json_values,
        "shape": st.lists(st.integers(0, 4), max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(-1, 40), min_size=2, max_size=2) | json_values,
    }
)


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "", "__metadata__"]) | st.text(max_size=3),
        plausible_entries | json_values,
        max_size=4,
    ),
    st.binary(max_size=40),
)
@FUZZ
@pytest.mark.slow  # 200 examples, about 2 s: the full suite
def test_structurally_random_headers_decode_or_raise_codec_error(header, data):
    decode_or_codec_error(raw(header, data))


def test_payload_views_the_arrays_and_joins_to_the_encoding():
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    payload = codec.encode_payload({"w": weights}, {"k": "v"})
    assert len(payload) == len(codec.encode({"w": weights}, {"k": "v"}))
    assert bytes(payload) == codec.encode({"w": weights}, {"k": "v"})
    assert any(np.shares_memory(np.frombuffer(frame, np.uint8), weights) for frame in payload if isinstance(frame, memoryview))
    arrays, metadata = codec.decode(payload)
    np.testing.assert_array_equal(arrays["w"], weights)
    assert metadata == {"k": "v"}


# ------------------------------------------------------------ reading from a stream


def stream_decode(payload: bytes, piece_bytes: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """What read_header + read_pieces yield, assembled back into arrays."""
    source = io.BytesIO(payload)
    header = codec.read_header(source.readinto, len(payload))
    arrays = {t.name: np.empty(int(np.prod(t.shape)), t.dtype) for t in header.tensors}
    for name, first, values in codec.read_pieces(source.readinto, header, memoryview(bytearray(piece_bytes))):
        arrays[name][first : first + len(values)] = values
    shapes = {t.name: t.shape for t in header.tensors}
    return {name: a.reshape(shapes[name]) for name, a in arrays.items()}, header.metadata


@given(
    st.lists(
        hnp.arrays(
            dtype=st.sampled_from([np.dtype(t) for t in SUPPORTED.values()]),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        ),
        max_size=4,
    ),
    st.sampled_from([8, 9, 24, 1 << 10]),
)
@FUZZ
def test_a_stream_read_piece_by_piece_decodes_as_the_whole_buffer(arrays, piece_bytes):
    # Odd-sized uint8/bool arrays put later float64 arrays at unaligned offsets.
    payload = encode(arrays, {"k": "v"})
    whole, metadata = decode(payload)
    pieces, stream_metadata = stream_decode(payload, piece_bytes)
    assert stream_metadata == metadata == {"k": "v"}
    assert list(pieces) == list(whole)
    for name in whole:
        assert_same_array(whole[name], pieces[name])


def test_a_stream_is_read_in_pieces_no_larger_than_the_buffer():
    payload = encode({"a": np.arange(10, dtype=np.float64), "b": np.arange(3, dtype=np.uint8)})
    source = io.BytesIO(payload)
    header = codec.read_header(source.readinto, len(payload))
    pieces = [(name, first, len(values)) for name, first, values in codec.read_pieces(source.readinto, header, memoryview(bytearray(32)))]
    assert pieces == [("a", 0, 4), ("a", 4, 4), ("a", 8, 2), ("b", 0, 3)]


@pytest.mark.parametrize("payload, fragment", MALFORMED)
def test_a_malformed_stream_header_raises_before_any_data_is_read(payload, fragment):
    source = io.BytesIO(payload)
    with pytest.raises(CodecError) as caught:
        codec.read_header(source.readinto, len(payload))
    assert fragment in str(caught.value)
    # read_header alone raised, having read at most the prefix and the header it declares: no tensor data
    declared = int.from_bytes(payload[:8], "little") if len(payload) >= 8 else 0
    assert source.tell() <= 8 + declared


def test_a_stream_that_ends_early_raises():
    payload = encode({"a": np.arange(100, dtype=np.float32)})
    source = io.BytesIO(payload[:-10])
    header = codec.read_header(source.readinto, len(payload))
    with pytest.raises(CodecError, match="ended 10 bytes early"):
        for _ in codec.read_pieces(source.readinto, header, memoryview(bytearray(64))):
            pass


def test_read_pieces_with_a_buffer_smaller_than_one_element_raises_codec_error():
    payload = codec.encode({"w": np.zeros(4, np.float64)})
    source = io.BytesIO(payload)
    header = codec.read_header(source.readinto, len(payload))
    with pytest.raises(CodecError, match="cannot hold one float64 element"):
        list(codec.read_pieces(source.readinto, header, memoryview(bytearray(4))))


def test_a_boolean_array_holding_a_byte_other_than_0_or_1_is_refused():
    # #24's contract review: the codec read any byte as a BOOL, and the weighted majority summed it as that
    # byte (a 255 counting as 255 votes). A BOOL byte is 0 or 1, decoded whole or read piece by piece.
    from fedsync.errors import CodecError

    good = bytes(codec.encode({"flag": np.array([True, False])}, {}))
    forged = bytearray(good)
    forged[-1] = 255
    with pytest.raises(CodecError, match="BOOL but holds the byte 255"):
        codec.decode(bytes(forged))
    view = memoryview(bytes(forged))
    position = 0

    def readinto(target):
        nonlocal position
        n = min(len(target), len(view) - position)
        target[:n] = view[position : position + n]
        position += n
        return n

    header = codec.read_header(readinto, len(view))
    with pytest.raises(CodecError, match="BOOL"):
        list(codec.read_pieces(readinto, header, memoryview(bytearray(64))))
    assert codec.decode(good)[0]["flag"].tolist() == [True, False]
