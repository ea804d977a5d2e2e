"""The device's checks on a submission run in the documented order (docs/protocol.md, "in this order").

Each case breaks one check and every check after it: the answer must name the first.
Real device processes, raw HTTP, and nothing changes on the device.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from fedsync import FedArrays
from fedsync.wire.http import SPECS_HEADER
from tests.support import device_http as robust

GOOD = "good"


def request(rep: int | str, body: bytes, specs: str, *, length: str = GOOD, specs_header: str = GOOD, config: str = GOOD, auth: str | None = None) -> bytes:
    """A raw submission; each keyword left GOOD passes its check, else names the fault."""
    lines = [f"POST /{rep}/submit HTTP/1.1", "Host: x", "Content-Type: application/octet-stream", "Connection: close"]
    if auth is not None:
        lines.append(f"Authorization: Bearer {auth}")
    send_body = True
    if length == GOOD:
        lines.append(f"Content-Length: {len(body)}")
    elif length == "bad":
        lines.append("Content-Length: 1_0")
        send_body = False
    elif length == "huge":
        lines.append("Content-Length: 99999999999")
        send_body = False
    else:
        assert length == "missing"
        send_body = False
    if specs_header == GOOD:
        lines.append(f"{SPECS_HEADER}: {specs}")
    elif specs_header == "wrong":
        lines.append(f"{SPECS_HEADER}: arrays:sha256:0000000000000000")
    if config == "bad":
        lines.append("X-Fedsync-Config: not json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body if send_body else b"")


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_each_check_answers_before_every_later_one(devices):
    weights = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    payload, specs = bytes(weights.serialize(2)), weights.specs(2)
    garbage = b"\x00garbage" * (len(payload) // 8)
    idle = devices("constant", 1.0, 3)
    assert requests.post(f"{idle.url}/1/submit", data=payload, headers={SPECS_HEADER: specs}, timeout=30).status_code == 202
    robust.wait_ready(idle.url, 1)  # the device is idle, its last repetition 1
    busy = devices("slow", 60.0)
    busy_weights = FedArrays({"w": np.zeros(4, np.float32)})
    busy_payload, busy_specs = bytes(busy_weights.serialize(1)), busy_weights.specs(1)
    assert requests.post(f"{busy.url}/1/submit", data=busy_payload, headers={SPECS_HEADER: busy_specs}, timeout=30).status_code == 202
    locked = devices("constant", 1.0, 3, token="s3cret")

    everything_after = dict(length="missing", specs_header="missing", config="bad")
    cases = [
        # (device, request, expected error): the first failing check in protocol order wins
        (locked, request(2**53 + 1, garbage, specs, **everything_after), "unauthorized"),
        (idle, request(2**53 + 1, garbage, specs, **everything_after), "bad_repetition"),
        (idle, request(1, garbage, specs, length="huge", specs_header="missing", config="bad"), "stale_repetition"),
        (busy, request(1, garbage, busy_specs, **everything_after), "stale_repetition"),
        (busy, request(2, garbage, busy_specs, **everything_after), "busy"),
        (idle, request(2, garbage, specs, **everything_after), "length_required"),
        (idle, request(2, garbage, specs, length="bad", specs_header="missing", config="bad"), "bad_content_length"),
        (idle, request(2, garbage, specs, length="huge", specs_header="wrong", config="bad"), "too_large"),
        (idle, request(2, garbage, specs, specs_header="missing", config="bad"), "missing_specs"),
        (idle, request(2, garbage, specs, specs_header="wrong", config="bad"), "specs_mismatch"),
        (idle, request(2, garbage, specs, config="bad"), "bad_config"),
        (idle, request(2, garbage, specs), "malformed_payload"),  # the body, checked last
    ]
    before = {device.url: robust.state(device.url, **kw) for device, kw in ((idle, {}), (busy, {}))}
    for device, raw, expected in cases:
        answer = robust.assert_json_error(*robust.exchange(device.url, raw), raw)
        assert answer["error"] == expected, (expected, answer, raw[:300])
    assert {device.url: robust.state(device.url) for device in (idle, busy)} == before
    assert robust.state(locked.url, headers={"Authorization": "Bearer s3cret"}) == (0, "idle", 0)
