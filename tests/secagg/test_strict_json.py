"""A secure-aggregation phase body is strict JSON: a key given twice or NaN is ``400 secagg_malformed``
naming it, and makes no session."""

import json

import pytest
import requests

pytest.importorskip("cryptography")
pytest.importorskip("Crypto")

import fedsync  # noqa: E402
from tests.support.devices.secagg import noisy  # noqa: E402

KEYS = {"devices": 3, "id": 1, "threshold": 3, "clip": 1.0, "scale": 2**20, "max_samples": 1000}


def post(url: str, phase: str, body: bytes) -> requests.Response:
    return requests.post(f"{url}/1/secagg/{phase}", data=body, headers={"Content-Type": "application/json"}, timeout=10)


@pytest.mark.parametrize(
    "body, why",
    [
        (json.dumps(KEYS)[:-1] + ', "id": 2}', "the body has the key 'id' twice"),
        (json.dumps(KEYS)[:-1] + ', "threshold": 2}', "the body has the key 'threshold' twice"),
        (json.dumps(KEYS).replace('"clip": 1.0', '"clip": NaN'), "the body holds NaN, not a finite number"),
    ],
    ids=["id-twice", "threshold-twice", "nan-clip"],
)
def test_a_keys_body_with_a_key_twice_or_a_constant_is_refused_and_makes_no_session(body, why):
    with fedsync.serve(noisy(1, 5), port=0, block=False) as server:
        refused = post(server.url, "keys", body.encode())
        assert refused.status_code == 400 and refused.json()["error"] == "secagg_malformed", refused.text
        assert why in refused.json()["message"]
        assert post(server.url, "shares", b'{"keys": {}}').json()["error"] == "secagg_out_of_order"  # no session
        assert post(server.url, "keys", json.dumps(KEYS).encode()).status_code == 200  # a good one still works
