"""The adapter registry: entry points, specs tokens, laziness, third-party packages."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fedsync
from fedsync import FedArrays, Federated, plugins
from fedsync.errors import AdapterNotFound, FedSyncError, PluginError
from tests.support.distributions import make_distribution, pip_install

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "support" / "plugins" / "fedsync-sample"


@pytest.fixture(autouse=True)
def fresh_registry():
    plugins.reset()
    yield
    plugins.reset()


ADAPTER_SOURCE = """
    import fedsync

    class Fed{cls}(fedsync.FedData):
        def specs(self, repetition):
            return "{token}:v1"

    @fedsync.hookimpl
    def register_adapters(register):
        register("{token}", Fed{cls})
"""


def test_builtin_adapter_registers_through_the_hook():
    registered = plugins.adapters()
    assert registered["arrays"] is FedArrays
    assert plugins.adapter_for(FedArrays([]).specs(1)) is FedArrays
    (arrays,) = [a for a in plugins.describe() if a["token"] == "arrays"]
    assert arrays["plugin"] == "fedsync.data.arrays" and arrays["package"] == "fedsync"


def test_unknown_token_lists_installed_adapters_and_how_to_install():
    with pytest.raises(AdapterNotFound) as caught:
        plugins.adapter_for("jax:sha256:0123")
    assert isinstance(caught.value, LookupError) and isinstance(caught.value, FedSyncError)
    assert "'jax'" in str(caught.value) and "arrays" in str(caught.value)


def test_disabled_framework_adapter_says_which_extra_to_install(monkeypatch):
    monkeypatch.setenv("FEDSYNC_LOAD_PLUGINS", "")
    assert set(plugins.adapters()) == {"arrays", "bundle"}
    with pytest.raises(AdapterNotFound, match=r"pip install 'fedsync\[torch\]'"):
        plugins.adapter_for("torch:sha256:0123")


def test_entry_points_are_discovered_and_can_be_restricted(tmp_path, monkeypatch):
    make_distribution(tmp_path, "fedsync-alpha", {"alpha": "alpha_plugin"}, {"alpha_plugin": ADAPTER_SOURCE.format(cls="Alpha", token="alpha")})
    make_distribution(tmp_path, "fedsync-beta", {"beta": "beta_plugin"}, {"beta_plugin": ADAPTER_SOURCE.format(cls="Beta", token="beta")})
    monkeypatch.syspath_prepend(str(tmp_path))
    found = plugins.adapters()
    assert {"alpha", "beta"} <= found.keys()
    assert plugins.adapter_for("alpha:v1").__name__ == "FedAlpha"
    (alpha,) = [a for a in plugins.describe() if a["token"] == "alpha"]
    assert (alpha["plugin"], alpha["package"], alpha["version"]) == ("alpha", "fedsync-alpha", "1.0")

    plugins.reset()
    monkeypatch.setenv("FEDSYNC_LOAD_PLUGINS", "beta")
    assert set(plugins.adapters()) == {"arrays", "bundle", "beta"}


def test_duplicate_token_names_both_plugins(tmp_path, monkeypatch):
    make_distribution(tmp_path, "fedsync-one", {"one": "one_plugin"}, {"one_plugin": ADAPTER_SOURCE.format(cls="One", token="same")})
    make_distribution(tmp_path, "fedsync-two", {"two": "two_plugin"}, {"two_plugin": ADAPTER_SOURCE.format(cls="Two", token="same")})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as caught:
        plugins.adapters()
    assert "'same'" in str(caught.value) and "'one'" in str(caught.value) and "'two'" in str(caught.value)


def test_bad_registration_is_explained(tmp_path, monkeypatch):
    source = """
        import fedsync

        @fedsync.hookimpl
        def register_adapters(register):
            register("Not A Token", object)
    """
    make_distribution(tmp_path, "fedsync-bad", {"bad": "bad_plugin"}, {"bad_plugin": source})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="plugin 'bad'.*lowercase word"):
        plugins.adapters()


def test_broken_plugin_does_not_break_the_registry(tmp_path, monkeypatch, caplog):
    make_distribution(tmp_path, "fedsync-broken", {"broken": "broken_plugin"}, {"broken_plugin": "raise ImportError('no jax here')"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "arrays" in plugins.adapters()
    assert "no jax here" in caplog.text


def test_plugins_load_lazily_and_import_no_framework():
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import requests
        import fedsync
        from fedsync import plugins
        from fedsync.data import FedData, FIRST
        loaded_at_import = plugins.loaded()
        tokens = sorted(plugins.adapters())
        loaded_after_lookup = plugins.loaded()
        with fedsync.serve(fedsync.FedArrays([np.zeros(3)]), port=0, block=False) as server:
            info = requests.get(server.url + "/info", timeout=5).json()
        heavy = sorted(m for m in ("torch", "tensorflow", "keras", "jax", "ray") if m in sys.modules)
        print(json.dumps({"loaded_at_import": loaded_at_import, "loaded_after_lookup": loaded_after_lookup, "tokens": tokens, "heavy": heavy, "specs": info["specs"]}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["loaded_at_import"] is False
    assert report["loaded_after_lookup"] is True
    assert "arrays" in report["tokens"]
    assert report["heavy"] == []
    assert report["specs"].startswith("arrays:sha256:")


@pytest.fixture(scope="module")
def sample_install(tmp_path_factory):
    """``pip install`` the sample third-party adapter package into its own folder."""
    return pip_install(SAMPLE, tmp_path_factory.mktemp("site"))


@pytest.mark.slow  # ~3.1 s: keeps the fast tier under 90 s
def test_third_party_adapter_distribution_runs_a_round(sample_install, devices, monkeypatch):
    assert list(sample_install.glob("fedsync_sample-0.3.0.dist-info"))
    monkeypatch.syspath_prepend(str(sample_install))
    adapter = plugins.adapter_for("sample:max-v1")
    (described,) = [a for a in plugins.describe() if a["token"] == "sample"]
    assert (described["package"], described["version"]) == ("fedsync-sample", "0.3.0")

    low = devices("by_specs", "sample:max-v1", 3.0, path=(str(sample_install),))
    high = devices("by_specs", "sample:max-v1", 11.5, path=(str(sample_install),))
    info = fedsync.Remote(low.url).info()
    assert info["specs"] == "sample:max-v1" and info["type"] == "FedMax"

    data = plugins.adapter_for(info["specs"])(1.0)
    assert type(data) is adapter
    with Federated(data=data, remotes=[low.url, high.url]) as alg:
        alg.round()
    assert data.value == 11.5


def test_seed_import_path_resolves_adapters_through_the_registry(monkeypatch):
    import fedsync.data

    from fedsync_torch.adapter import FedTorch

    assert plugins.adapters()["torch"] is FedTorch  # fedsync's own entry point registers it, torch installed or not
    if importlib.util.find_spec("torch") is not None:  # decided by the environment, not by the code under test
        assert fedsync.data.FedTorch is FedTorch
    plugins.reset()
    monkeypatch.setenv("FEDSYNC_LOAD_PLUGINS", "")
    with pytest.raises(ImportError, match=r"FedTorch is not installed.*pip install 'fedsync\[torch\]'"):
        fedsync.data.FedTorch
    with pytest.raises(ImportError, match=r"pip install 'fedsync\[keras\]'"):
        fedsync.data.FedKeras
    with pytest.raises(AttributeError):
        fedsync.data.FedJax


def test_missing_framework_names_the_extra(tmp_path, monkeypatch, caplog):
    source = """
        import fedsync

        class FedGhost(fedsync.FedData):
            requires = ("a_framework_that_is_not_installed",)

        @fedsync.hookimpl
        def register_adapters(register):
            register("keras", FedGhost)
    """
    make_distribution(tmp_path, "fedsync-ghost", {"keras": "ghost_plugin"}, {"ghost_plugin": source})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FEDSYNC_LOAD_PLUGINS", "keras")
    import fedsync.data

    described = [a for a in plugins.describe() if a["token"] == "keras"]
    assert len(described) == 1 and described[0]["importable"] is False
    assert "is shadowed by the one of fedsync-ghost" in caplog.text
    with pytest.raises(ImportError, match=r"FedKeras needs a_framework_that_is_not_installed.*pip install 'fedsync\[keras\]'"):
        fedsync.data.FedKeras


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_trace_switch_prints_every_plugins_hook_call(tmp_path):
    """FEDSYNC_TRACE_PLUGINS=1 prints each register_adapters call, through pluggy's tracer."""
    code = "from fedsync import plugins; print(sorted(plugins.adapters()))"
    env = {"PATH": "", "FEDSYNC_LOAD_PLUGINS": "torch", "FEDSYNC_TRACE_PLUGINS": "1"}
    traced = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.strip() == "['arrays', 'bundle', 'torch']"
    # One call per plugin: the two built-in ones and the torch entry point.
    assert traced.stderr.count("register_adapters [hook]") == 3
    assert traced.stderr.count("finish register_adapters") == 3
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={"PATH": "", "FEDSYNC_LOAD_PLUGINS": "torch"}, cwd=ROOT)
    assert "register_adapters" not in quiet.stderr
