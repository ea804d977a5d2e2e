"""A payload's JSON (the codec's header, compression's wire metadata) is strict: a key given twice or
NaN/Infinity is refused naming it, by the codec or by the device over real HTTP, and changes nothing."""

import json
import struct

import numpy as np
import pytest
import requests

import fedsync
from fedsync import FedArrays
from fedsync.errors import CodecError, PayloadRejected
from fedsync.wire import codec, compression
from fedsync.wire.http import SPECS_HEADER, ErrorCode


def raw(header: str, data: bytes = b"\x00" * 4) -> bytes:
    encoded = header.encode()
    encoded += b" " * (-(8 + len(encoded)) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


ENTRY = '"dtype": "F32", "shape": [1], "data_offsets": [0, 4]'
HEADERS = [
    ('{"w": {%s, "shape": [1]}}' % ENTRY, "header has duplicate key 'shape'; keys must be unique"),
    ('{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', "header holds NaN, not a finite number"),
    ('{"w": {%s}, "__metadata__": {"fedsync.samples": Infinity}}' % ENTRY, "header holds Infinity, not a finite number"),
]


@pytest.mark.parametrize("header, why", HEADERS, ids=["twice", "nan-shape", "infinity-metadata"])
def test_a_payload_header_with_a_key_twice_or_a_constant_is_a_codec_error_naming_it(header, why):
    with pytest.raises(CodecError) as refused:
        codec.decode(raw(header))
    assert why in str(refused.value)


@pytest.mark.parametrize("header, why", HEADERS, ids=["twice", "nan-shape", "infinity-metadata"])
def test_a_device_refuses_such_a_payload_with_400_malformed_payload_and_changes_nothing(header, why):
    data = FedArrays({"w": np.zeros(1, np.float32)})
    with fedsync.serve(data, port=0, block=False) as server:
        answer = requests.post(
            f"{server.url}/1/submit", data=raw(header), headers={SPECS_HEADER: data.specs(1)}, timeout=10
        )
        assert answer.status_code == 400 and answer.json()["error"] == ErrorCode.MALFORMED_PAYLOAD
        assert why in answer.json()["message"]
        info = requests.get(f"{server.url}/info", timeout=10).json()
        assert info["repetition"] == 0 and info["state"] == "idle"
    assert np.all(data.model["w"] == 0)


def packed(wire: str) -> bytes:
    arrays = {"w": np.ones((3, 2), np.int8), "b": np.ones(2, np.int8)}
    return codec.encode(arrays, {"fedsync.samples": "3", compression.WIRE_KEY: wire})


def int8_model() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}, wire_dtype="int8")


@pytest.mark.parametrize(
    "w, why",
    [
        ('{"as": "int8", "scale": 0.5, "scale": 0.25}', "payload metadata 'fedsync.wire' names the key 'scale' twice"),
        ('{"as": "int8", "scale": NaN}', "payload metadata 'fedsync.wire' holds NaN, not a finite number"),
    ],
    ids=["scale-twice", "nan-scale"],
)
def test_wire_metadata_naming_a_key_twice_or_holding_a_constant_is_refused_and_changes_nothing(w, why):
    wire = '{"w": %s, "b": {"as": "int8", "scale": 0.5}}' % w
    data = int8_model()
    with pytest.raises(PayloadRejected, match=why):
        data.merge([packed(wire)], 1)
    assert data.last_merge is None and np.all(data.model["w"] == 0)
    with pytest.raises(PayloadRejected, match=why):
        data.check(packed(wire), 1)  # what a device runs on a payload it is sent
    json.loads(wire)  # Python's own json reads it: the refusal is strict JSON's
