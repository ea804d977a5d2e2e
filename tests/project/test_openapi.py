"""docs/openapi.json, the machine-readable description of a device's routes (#24 item 2), stays equal to the code.

It is a valid OpenAPI 3.1 document (checked by openapi-spec-validator, a well-kept library), its paths and methods
are exactly ``fedsync.wire.http.ROUTES`` (a GET route answers HEAD too), its error codes exactly ``ErrorCode``, and
its /info schema names every key a real device's /info answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays, Remote
from fedsync._version import PROTOCOL_VERSION
from fedsync.wire.http import ROUTES, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = json.loads((ROOT / "docs" / "openapi.json").read_text())


def test_it_is_a_valid_openapi_3_1_document():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0" and DOCUMENT["info"]["version"] == str(PROTOCOL_VERSION)


def test_its_routes_are_the_devices_routes():
    documented = {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item}
    code = {(route.method, route.path) for route in ROUTES}
    assert documented == code
    ids = {item[method]["operationId"] for item in DOCUMENT["paths"].values() for method in item}
    assert ids == {route.endpoint for route in ROUTES}


def test_its_error_codes_are_the_codes_the_code_answers():
    enum = DOCUMENT["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
    assert sorted(enum) == sorted(code.value for code in ErrorCode)


def test_its_info_schema_names_every_key_a_device_answers():
    with fedsync.serve(FedArrays({"w": np.zeros(2, np.float32)}, lambda m: 1), port=0, block=False) as served:
        info = Remote(served.url).info()
    schema = DOCUMENT["components"]["schemas"]["Info"]
    assert set(info) == set(schema["properties"]) and set(schema["required"]) == {"specs", "repetition"}
    assert set(info["capabilities"]) == set(schema["properties"]["capabilities"]["properties"])
    assert (
        info["capabilities"]["wire_formats"]
        == schema["properties"]["capabilities"]["properties"]["wire_formats"]["items"]["enum"]
    )
