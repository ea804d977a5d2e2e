"""Per-round configuration, coordinator to devices (issue #12, point 5).

The config reaches ``train(model, config)`` and ``evaluate(model, config)`` on
real device processes; ``train(model)`` keeps working; a custom FedData reads it
through ``receive(encoding, repetition, config)``; the device refuses a bad
``X-Fedsync-Config`` header before reading the body; the coordinator refuses a
bad config before sending anything.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsync import FedArrays, FedAvg, Federated
from fedsync.wire.config import (
    MAX_CONFIG_BYTES,
    checked_config,
    decode_config,
    encode_config,
    round_config,
    takes_extra,
)
from fedsync.wire.http import CONFIG_HEADER, SPECS_HEADER
from tests.support.devices.config import ConfiguredFloat, mirrored
from tests.support.seed_fedfloat import FedFloat


def weights() -> FedArrays:
    """The coordinator's side of ``configured`` and ``one_argument``."""
    return FedArrays({"w": np.zeros(3, np.float32)})


def info(url: str) -> dict:
    return requests.get(f"{url}/info", timeout=10).json()


# -- the format ----------------------------------------------------------------------------


def test_a_config_round_trips_exactly_through_its_header():
    config = {
        "lr": 0.1 * 0.99**7,
        "epochs": 3,
        "mu": 0.0,
        "big": 2**53,
        "neg": -(2**53),
        "name": 'adam ü ✓ "q"',
        "shuffle": False,
    }
    text = encode_config(config)
    assert text.isascii() and "\n" not in text
    assert decode_config(text) == config
    assert all(type(decode_config(text)[k]) is type(v) for k, v in config.items())


@pytest.mark.parametrize(
    "value, words",
    [
        ({"lr": math.nan}, ["'lr'", "finite"]),
        ({"lr": math.inf}, ["'lr'", "finite"]),
        ({"layers": [[1, 2]]}, ["'layers'][0]", "list"]),
        ({"opt": {"inner": {"lr": 1}}}, ["'opt']['inner']", "dict inside a dict"]),
        ({"opt": {"lr": None}}, ["'opt']['lr']", "NoneType"]),
        ({"ids": [1, None]}, ["'ids'][1]", "NoneType"]),
        ({"ids": [math.nan]}, ["'ids'][0]", "finite"]),
        ({"ids": list(range(257))}, ["'ids'", "257 items", "MAX_CONFIG_ITEMS"]),
        ({"opt": {f"k{i}": i for i in range(65)}}, ["'opt'", "65 keys"]),
        ({"opt": {"": 1}}, ["'opt'", "key ''"]),
        ({"none": None}, ["'none'", "NoneType"]),
        ({"n": 2**53 + 1}, ["'n'", "2**53"]),
        ({"": 1}, ["key ''"]),
        ({"k" * 65: 1}, ["64"]),
        ({3: 1}, ["key 3"]),
        ({f"k{i}": i for i in range(65)}, ["65 keys"]),
    ],
)
def test_a_bad_config_is_refused_naming_the_key(value, words):
    with pytest.raises(ValueError) as caught:
        checked_config(value)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_too_long_a_config_is_refused_by_both_sides():
    config = {f"k{i}": "x" * 200 for i in range(60)}
    with pytest.raises(ValueError, match="MAX_CONFIG_BYTES"):
        encode_config(config)
    text = json.dumps(config)
    assert len(text) > MAX_CONFIG_BYTES
    with pytest.raises(ValueError, match="over the 8192"):
        decode_config(text)


@pytest.mark.parametrize(
    "text",
    [
        "[1]",
        '"lr"',
        "1",
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": -Infinity}',
        '{"a": 1, "a": 2}',
        '{"a": {"b": {"c": 1}}}',
        '{"a": [[1]]}',
        '{"a": [{"b": 1}]}',
        '{"a": [null]}',
        '{"a": {"b": null}}',
        '{"a": {"b": 1, "b": 2}}',
        '{"a": [' + ",".join(["1"] * 257) + "]}",
        '{"a": null}',
        '{"a": 1',
        '{"a": ' + "9" * 17 + "}",
        "[" * 5000 + "]" * 5000,
        '{"\\u00e9": 1}'.replace("\\u00e9", "é"),
        '{"a": 1e999}',
        '{"k": 1}  x',
        "",
    ],
)
def test_a_peer_sends_a_bad_header_value(text):
    with pytest.raises(ValueError):
        decode_config(text)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.text(max_size=200)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=8,
    ).map(json.dumps)
)
def test_any_header_value_is_either_a_valid_config_or_a_value_error(text):
    try:
        config = decode_config(text)
    except ValueError:
        return
    assert isinstance(config, dict) and len(config) <= 64

    def scalar(value):
        return isinstance(value, (str, bool, int, float)) and (not isinstance(value, float) or math.isfinite(value))

    for key, value in config.items():
        assert isinstance(key, str) and 1 <= len(key) <= 64
        if isinstance(value, dict):  # one level of mapping, of scalars and lists of scalars
            assert len(value) <= 64
            assert all(scalar(v) or (isinstance(v, list) and all(map(scalar, v))) for v in value.values())
        elif isinstance(value, list):
            assert len(value) <= 256 and all(map(scalar, value))
        else:
            assert scalar(value)
    assert decode_config(encode_config(config)) == config


def test_lists_and_one_level_of_mapping_round_trip_through_the_header():
    config = {
        "stragglers": [3, 17, 22],
        "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True, "betas": [0.9, 0.999]},
        "empty": [],
        "none_set": {},
        "from_tuple": (1, "a", False),
    }
    decoded = decode_config(encode_config(config))
    assert decoded == {**config, "from_tuple": [1, "a", False]}
    assert type(decoded["optimizer"]["momentum"]) is float and type(decoded["stragglers"][0]) is int
    assert checked_config({"ids": np.arange(2).tolist(), "lr": {"a": np.float32(0.5)}}) == {
        "ids": [0, 1],
        "lr": {"a": 0.5},
    }


def test_a_per_device_config_is_told_the_device_and_read_from_the_signature():
    from fedsync.wire.config import per_device

    def fixed(server_round): ...
    def each(server_round, device): ...
    def named(server_round, device=None): ...
    def defaulted(server_round, epochs=3): ...

    assert [per_device(f) for f in (fixed, each, named, defaulted, {"lr": 1}, None)] == [
        False,
        True,
        True,
        False,
        False,
        False,
    ]
    slow = {"local://device-1"}

    def epochs(server_round, device):
        return {"epochs": 1 if device in slow else 5, "round": server_round}

    assert round_config(epochs, 4, None, "local://device-1") == {"epochs": 1, "round": 4}
    assert round_config(epochs, 4, None, "local://device-2") == {"epochs": 5, "round": 4}
    with pytest.raises(ValueError, match=r"config\(4, 'local://device-2'\)\['bad'\]"):
        round_config(lambda rnd, device: {"bad": None}, 4, None, "local://device-2")


def test_who_gets_the_config_is_decided_by_the_signature():
    def one(model): ...
    def two(model, config): ...
    def named(model, config=None): ...
    def keyword(model, epochs=3): ...
    def varargs(*args): ...

    assert [takes_extra(f, 1) for f in (one, two, named, keyword, varargs, lambda m: 0)] == [
        False,
        True,
        True,
        False,
        True,
        False,
    ]


def test_strategy_keys_come_first_and_the_users_win():
    class Proximal(FedAvg):
        def configure(self, server_round):
            return {"mu": 0.01, "lr": 1.0, "round": server_round}

    assert round_config(lambda rnd: {"lr": 0.1 * rnd}, 3, Proximal()) == {
        "mu": 0.01,
        "lr": pytest.approx(0.3),
        "round": 3,
    }
    assert round_config({"lr": 0.5}, 3, FedAvg()) == {"lr": 0.5}
    assert round_config(None, 3, None) == {}

    class Broken(FedAvg):
        def configure(self, server_round):
            return {"mu": "a" * 9000}

    with pytest.raises(ValueError, match="MAX_CONFIG_BYTES"):
        round_config(None, 1, Broken())


# -- over HTTP: the config reaches train and evaluate --------------------------------------


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
def test_round_config_reaches_two_argument_train_and_one_argument_train_still_works(devices):
    two, one = (
        devices("tests.support.devices.config:configured", 10),
        devices("tests.support.devices.config:one_argument", 30),
    )
    schedule = lambda rnd: {
        "lr": 0.1 * 0.99**rnd,
        "epochs": rnd,
        "optimizer": "sgd ✓",
        "shuffle": rnd % 2 == 0,
        "value": 4.0,
    }
    with Federated(weights(), [two.url, one.url], config=schedule) as alg:
        for _ in range(2):
            result = alg.round()
            rnd = result.repetition
            got = result.devices[two.url]["metrics"]
            assert got == mirrored(schedule(rnd)), got
            assert got["cfg.lr"] == 0.1 * 0.99**rnd  # exactly: JSON carries every double
            assert result.devices[one.url]["metrics"] == {"called": 1.0}
        # FedAvg of 4.0 (10 samples) and 2.0 (30 samples)
        np.testing.assert_allclose(alg.data.model["w"], 2.5)
        evaluation = alg.evaluate()
    assert evaluation.devices[two.url]["metrics"] == mirrored(schedule(2))
    assert evaluation.devices[one.url]["metrics"] == {"evaluated": 1.0}


def test_a_plain_dict_and_no_config_at_all(devices):
    two = devices("tests.support.devices.config:configured", 10)
    with Federated(weights(), [two.url], config={"epochs": 2}) as alg:
        assert alg.round().devices[two.url]["metrics"] == {"config.keys": 1.0, "cfg.epochs": 2.0}
    with Federated(weights(), [two.url]) as alg:
        assert alg.round().devices[two.url]["metrics"] == {"config.keys": 0.0}


def test_strategy_configure_reaches_the_devices_under_the_users_keys(devices):
    two = devices("tests.support.devices.config:configured", 10)

    class Proximal(FedAvg):
        def configure(self, server_round):
            return {"mu": 0.25, "lr": 1.0}

    data = FedArrays({"w": np.zeros(3, np.float32)}, strategy=Proximal())
    with Federated(data, [two.url], config={"lr": 0.5}) as alg:
        assert alg.round().devices[two.url]["metrics"] == {"config.keys": 2.0, "cfg.mu": 0.25, "cfg.lr": 0.5}


def test_a_custom_fed_data_reads_the_config_through_receive(devices):
    a, b = (
        devices("tests.support.devices.config:configured_float"),
        devices("tests.support.devices.config:configured_float"),
    )
    with Federated(ConfiguredFloat(), [a.url, b.url], config=lambda rnd: {"scale": float(rnd + 1)}) as alg:
        alg.data.value = 1.5
        alg.round()
        assert alg.data.value == 3.0  # 1.5 * 2 on both devices
        alg.round()
        assert alg.data.value == 9.0  # 3.0 * 3


def test_the_seed_fedfloat_ignores_a_config(devices):
    one = devices("fedfloat", 1.0)
    with Federated(FedFloat(10.0), [one.url], config={"scale": 5.0}) as alg:
        alg.round()
        assert alg.data.value == 1.0  # on FIRST the device keeps its own value
        alg.round()
        assert alg.data.value == 1.0


def test_a_bad_config_from_the_users_function_fails_the_round_before_anything_is_sent(devices):
    two = devices("tests.support.devices.config:configured", 10)
    with Federated(weights(), [two.url], config=lambda rnd: {"lr": 0.1, "schedule": [[0.1, 0.01]]}) as alg:
        with pytest.raises(ValueError, match=r"config\(1\)\['schedule'\]\[0\]"):
            alg.round()
    assert info(two.url)["repetition"] == 0
    with pytest.raises(ValueError, match=r"\['lr'\].*finite"):
        Federated(weights(), [two.url], config={"lr": math.nan})
    with pytest.raises(TypeError, match="dict"):
        Federated(weights(), [two.url], config=[("lr", 0.1)])


# -- over HTTP: the device checks the header before the body ------------------------------


def submit_raw(url: str, path: str, headers: dict[str, str], body: bytes, length: int) -> tuple[int, dict]:
    """POST with a Content-Length of ``length`` but only ``body`` sent: the answer must come without the rest."""
    parts = urlsplit(url)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Length: {length}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        return response.status, json.loads(response.read())


BAD_HEADERS = [
    '{"lr": NaN}',
    "[1,2]",
    '{"a": {"b": {"c": 1}}}',
    '{"a": 1, "a": 2}',
    "not json",
    '{"é": 1}',
    "{" + '"k":1,' * 2000 + '"z":1}',
]


@pytest.mark.parametrize("route", ["submit", "evaluate"])
def test_the_device_refuses_a_bad_config_before_reading_the_body_and_changes_nothing(devices, route):
    device = devices("tests.support.devices.config:configured", 10)
    payload = bytes(weights().serialize(1))
    specs = weights().specs(1)
    before = info(device.url)
    for bad in BAD_HEADERS:
        # The payload's size announced, nothing sent: the answer comes from the headers alone. (A size
        # beyond the model's is refused 413 first, from Content-Length: docs/protocol.md's order.)
        status, answer = submit_raw(
            device.url, f"/1/{route}", {SPECS_HEADER: specs, CONFIG_HEADER: bad}, b"", len(payload)
        )
        assert (status, answer["error"]) == (400, "bad_config"), (bad, answer)
        assert CONFIG_HEADER in answer["message"], answer
    after = info(device.url)
    assert (after["repetition"], after["state"], after["rounds_served"]) == (before["repetition"], "idle", 0)
    # The device is as good as new: a good config after the bad ones is taken.
    headers = {
        SPECS_HEADER: specs,
        CONFIG_HEADER: encode_config({"value": 3.0}),
        "Content-Type": "application/octet-stream",
    }
    response = requests.post(f"{device.url}/1/submit", data=payload, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    result = requests.get(f"{device.url}/1/result", params={"wait": "30"}, timeout=60)
    assert result.status_code == 200


def test_the_specs_are_checked_before_the_config(devices):
    device = devices("tests.support.devices.config:configured", 10)
    status, answer = submit_raw(device.url, "/1/submit", {SPECS_HEADER: "arrays:other", CONFIG_HEADER: "[1]"}, b"", 100)
    assert (status, answer["error"]) == (409, "specs_mismatch")
    status, answer = submit_raw(device.url, "/1/submit", {CONFIG_HEADER: "[1]"}, b"", 100)
    assert (status, answer["error"]) == (400, "missing_specs")


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["torch_configured", "keras_configured"])
def test_round_config_reaches_train_on_torch_and_keras_devices(devices, factory):
    framework = pytest.importorskip("torch" if factory.startswith("torch") else "keras")
    device = devices(f"tests.support.devices.config:{factory}", 5)
    if framework.__name__ == "torch":
        from fedsync_torch import FedTorch

        framework.manual_seed(0)
        data = FedTorch(framework.nn.Linear(2, 1))
    else:
        from fedsync_keras import FedKeras

        data = FedKeras(framework.Sequential([framework.Input((2,)), framework.layers.Dense(1)]))
    config = {"value": 0.75, "epochs": 2, "name": "x"}
    with Federated(data, [device.url], config=config) as alg:
        result = alg.round()
    assert result.devices[device.url]["metrics"] == mirrored(config)
    kernel = [a for name, a in data.get_arrays().items() if a.ndim == 2][0]
    np.testing.assert_array_equal(
        kernel, np.full((1, 2) if framework.__name__ == "torch" else (2, 1), 0.75, np.float32)
    )


def test_a_bundle_hands_the_round_config_to_the_parts_that_take_one():
    import numpy as np

    from fedsync import FedArrays, FedBundle

    seen = {}

    def train(model, config):
        seen["arrays"] = dict(config)
        return 1

    class Threshold(FedFloat):
        def receive(self, encoding, repetition, config):
            seen["threshold"] = dict(config)
            super().receive(encoding, repetition)

    device = FedBundle(
        {"w": FedArrays({"w": np.zeros(2, np.float32)}, train), "t": Threshold(0.5), "plain": FedFloat(0.1)}
    )
    coordinator = FedBundle(
        {"w": FedArrays({"w": np.ones(2, np.float32)}), "t": Threshold(0.7), "plain": FedFloat(0.2)}
    )
    device.receive(coordinator.serialize(2), 2, {"lr": 0.5})
    assert seen == {"arrays": {"lr": 0.5}, "threshold": {"lr": 0.5}}
