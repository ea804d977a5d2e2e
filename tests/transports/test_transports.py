"""Transports as plugins: the registry by URL scheme, third-party transports, mixed remotes, local:// == HTTP."""

import sys
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays, Federated, Remote, plugins
from fedsync.device import DeviceApp
from fedsync.errors import PluginError, RoundFailed
from fedsync.transports.local import LocalRemote, register_device, unregister_device
from tests.support.devices.basic import constant, linreg
from tests.support.devices.transports import Picky
from tests.support.distributions import make_distribution

LOOP_TRANSPORT = """
    import fedsync
    from fedsync.transports.local import LocalRemote
    from tests.support.devices.basic import constant

    class LoopRemote(LocalRemote):
        '''A third party's transport: loop://NAME reaches an in-process device that trains to 2.0.'''

        def __init__(self, url, **options):
            super().__init__("local://" + url.split("://", 1)[1], device=constant(2.0, 5), **options)
            self.url = url

    @fedsync.hookimpl
    def register_transports(register):
        register("{scheme}", LoopRemote)
"""


@pytest.fixture(autouse=True)
def fresh_registry():
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.endswith("_transport")]:
        del sys.modules[name]


def zeros() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def test_http_https_and_local_register_through_the_hook():
    found = plugins.transports()
    assert found["http"] is Remote and found["https"] is Remote and found["local"] is LocalRemote
    implementers = {impl.plugin_name for impl in plugins.plugin_manager().hook.register_transports.get_hookimpls()}
    assert {"fedsync.transports.remote", "fedsync.transports.local"} <= implementers  # through the hook, as third parties do


def test_third_party_transport_from_an_entry_point_runs_a_round(on_path):
    make_distribution(on_path, "fedsync-loop", {"loop": "loop_transport"}, {"loop_transport": LOOP_TRANSPORT.format(scheme="loop")})
    assert plugins.transport_for("loop://a").__name__ == "LoopRemote"
    with Federated(zeros(), ["loop://a", "loop://b"], timeout=30) as alg:
        result = alg.round()
    assert sorted(result.answered) == ["loop://a", "loop://b"]
    assert np.all(alg.data.get_arrays()["w"] == 2.0)


def test_duplicate_scheme_names_both_plugins(on_path):
    make_distribution(on_path, "fedsync-one", {"one": "one_transport"}, {"one_transport": LOOP_TRANSPORT.format(scheme="dup")})
    make_distribution(on_path, "fedsync-two", {"two": "two_transport"}, {"two_transport": LOOP_TRANSPORT.format(scheme="dup")})
    with pytest.raises(PluginError, match=r"'dup' is registered by both plugin '(one|two)' and plugin '(one|two)'"):
        plugins.transports()


def test_taking_over_http_is_a_duplicate_too(on_path):
    make_distribution(on_path, "fedsync-hijack", {"hijack": "hijack_transport"}, {"hijack_transport": LOOP_TRANSPORT.format(scheme="http")})
    with pytest.raises(PluginError, match=r"'http' is registered by both plugin 'fedsync.transports.remote' and plugin 'hijack'"):
        plugins.transports()


def test_unknown_scheme_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"no transport for remote 'grpc://x'.*http://, https://, local://"):
        Federated(zeros(), ["grpc://x"])
    with pytest.raises(ValueError, match="no transport"):
        plugins.transport_for("127.0.0.1:8000")


def test_federated_takes_http_and_local_remotes_together(devices):
    http = devices("constant", 1.0, 10)
    url = register_device("mixed-b", constant(4.0, 30))
    try:
        with Federated(zeros(), [http.url, url], timeout=30) as alg:
            result = alg.round()
    finally:
        unregister_device("mixed-b")
    assert sorted(result.answered) == sorted([http.url, "local://mixed-b"])
    # Sample-weighted: (1 * 10 + 4 * 30) / 40.
    assert np.allclose(alg.data.get_arrays()["w"], 3.25)


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_the_same_seeded_training_merges_the_same_model_over_local_and_http(devices):
    shards = [(1, 40, 0.0), (2, 60, 1.0), (3, 50, -1.0)]
    http = [devices("linreg", seed, n, shift).url for seed, n, shift in shards]
    local = [LocalRemote(f"local://shard-{i}", device=linreg(*shard)) for i, shard in enumerate(shards)]
    models = []
    for remotes in (http, local):
        with Federated(FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)}), remotes, timeout=60, seed=0) as alg:
            alg.fit(3)
            models.append(alg.data.get_arrays())
    assert not np.allclose(models[0]["w"], 0.0)
    for name in ("w", "b"):
        np.testing.assert_allclose(models[0][name], models[1][name], rtol=1e-12, atol=1e-12)


def test_a_payload_refused_over_http_is_refused_in_process_with_the_same_error(devices):
    http = devices("tests.support.devices.transports:picky", 0.0).url
    failures = []
    for remote in (http, LocalRemote("local://picky", device=Picky(0.0))):
        with Federated(Picky(-1.0), [remote], timeout=30) as alg:
            with pytest.raises(RoundFailed) as caught:
                alg.round()
        url = remote if isinstance(remote, str) else remote.url
        failures.append(caught.value.failures[url].replace(url, "DEVICE"))
    assert "PayloadRejected" in failures[0] and "never negative" in failures[0]
    assert failures[0] == failures[1]


@pytest.mark.slow  # a few seconds of real waiting: the full suite runs it (fast tier: 90 s budget)
def test_a_device_past_the_deadline_is_late_in_process_as_over_http(devices):
    from tests.support.devices.basic import slow

    fast = devices("slow", 0.0).url
    late = devices("slow", 3.0).url
    failures = []
    for remotes in ([fast, late], [LocalRemote("local://fast", device=slow(0.0)), LocalRemote("local://late", device=slow(3.0))]):
        with Federated(FedArrays({"w": np.zeros(4, np.float32)}), remotes, min_results=1, timeout=1.5, poll=0.5) as alg:
            result = alg.round()
        late_url = remotes[1] if isinstance(remotes[1], str) else remotes[1].url
        assert len(result.answered) == 1
        failures.append(result.failures[late_url].replace(late_url, "DEVICE"))
    assert failures[0].startswith("RemoteTimeout")
    assert failures[0] == failures[1]


def test_the_protocol_layer_never_names_the_server_and_fed_app_still_works():
    import ast

    import fedsync.protocol

    tree = ast.parse(Path(fedsync.protocol.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(module and "server" in module for module in imported), imported
    app = DeviceApp(Picky(1.0))
    assert type(app).__name__ == "DeviceApp" and app.devices[""].fed.value == 1.0


def test_local_evaluation_answers_through_the_devices_app():
    def evaluate(model):
        return 7, {"loss": float(model["w"].sum())}

    fed = FedArrays({"w": np.ones(3)}, None, evaluate=evaluate)
    with Federated(FedArrays({"w": np.full(3, 2.0)}), [LocalRemote("local://ev", device=fed)], timeout=30) as alg:
        result = alg.evaluate()
    assert result.samples == 7 and result.metrics == {"loss": 6.0}
