"""The Ray transport: devices in Ray actors on the production path, failures per device, the same model as local and HTTP."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays, Federated, plugins
from fedsync.cli import main
from fedsync.errors import RemoteTimeout
from fedsync.transports.local import LocalRemote
from fedsync.coordinator.simulation import run_simulation
from fedsync_ray.paths import device_fn_for_actors, load
from tests.support.devices.by_value import adding, run_script
from tests.support.devices.ray_devices import SHARDS, shard
from tests.support.distributions import make_distribution


def model() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (start-up costs seconds): 2 CPUs, 127.0.0.1, no usage stats."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read at import: keeps _node_ip_address on loopback
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",  # never a cluster named by /tmp/ray/ray_current_cluster
        num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", namespace="fedsync", log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_entry_point(tmp_path, monkeypatch):
    """The ``ray = fedsync_ray`` entry point as an installed fedsync declares it.

    An editable install built before the entry point existed lacks it until reinstalled;
    test_packaging checks that the wheel carries it.
    """
    if not any(e.name == "ray" for e in importlib.metadata.entry_points(group="fedsync")):
        make_distribution(tmp_path, "fedsync-ray-entry", {"ray": "fedsync_ray"}, {})
        monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    yield
    plugins.reset()


# -- no Ray needed: refusals happen before anything starts -------------------------------


def test_a_bad_device_fn_path_or_backend_option_is_refused_for_ray_with_what_to_do():
    # A lambda or a closure runs (sent by value): see the tests of device functions by value below.
    with pytest.raises(ValueError, match="does not resolve here") as caught:
        run_simulation("tests.support.devices.ray_devices:no_such_function", 4, 1, data=model(), backend="ray")
    assert "'mypackage.devices:device_fn'" in str(caught.value)
    with pytest.raises(ValueError, match="does not resolve here"):
        run_simulation("tests.support.devices.ray_devices:no_such_function", 4, 1, data=model(), backend="ray")
    with pytest.raises(ValueError, match="backend_config takes the keys"):
        run_simulation(shard, 4, 1, data=model(), backend="ray", backend_config={"cpus": 1})
    with pytest.raises(ValueError, match="workers is for backend='local'"):
        run_simulation(shard, 4, 1, data=model(), backend="ray", workers=2)
    with pytest.raises(ValueError, match="for backend='ray'"):
        run_simulation(shard, 4, 1, data=model(), backend_config={"num_cpus": 1})


def test_fedsync_plugins_lists_the_ray_transport_and_its_plugin(ray_entry_point, capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    transports = {line.split()[0]: line.split() for line in lines[lines.index("") + 2 :]}
    assert transports["ray"][1:3] == ["fedsync_ray.remote.RayRemote", "ray"]
    assert transports["local"][1:3] == ["fedsync.transports.local.LocalRemote", "fedsync.transports.local"]


# -- on a local Ray ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_test_ray_listens_on_loopback_only(ray_session):
    assert ray_session.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert ray_session.util.get_node_ip_address() == "127.0.0.1"


@pytest.mark.slow
def test_a_local_ray_started_by_run_simulation_listens_on_loopback_only(tmp_path):
    """run_simulation(backend="ray") with no Ray running starts one on 127.0.0.1 (in a fresh interpreter)."""
    script = (
        "import numpy as np, ray\n"
        "from fedsync import FedArrays\n"
        "from fedsync.coordinator.simulation import run_simulation\n"
        "seen = []\n"
        "def where(alg, result):\n"
        "    seen.append(ray.get_runtime_context().gcs_address)\n"
        "run_simulation('tests.support.devices.ray_devices:shard', 2, 1, data=FedArrays({'w': np.zeros((3, 1)), 'b': np.zeros(1)}),\n"
        "               backend='ray', backend_config={'num_cpus': 1, 'actors': 1}, timeout=60, progress=False, callbacks=[where])\n"
        "print(seen[0])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # fedsync_ray must set it itself
    # A stale `ray start` record naming a dead cluster must not be joined: a local Ray is started.
    short = Path(
        tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    )  # Ray's unix socket paths live under it (107 bytes at most)
    (short / "ray").mkdir()
    (short / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    env["RAY_TMPDIR"] = str(short)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path
        )
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("127.0.0.1:"), done.stdout


@pytest.mark.slow
def test_a_simulation_on_ray_merges_what_the_local_one_merges(ray_session):
    models, histories = [], []
    for backend, device_fn in (("local", shard), ("ray", "tests.support.devices.ray_devices:shard")):
        data = model()
        histories.append(
            run_simulation(
                device_fn, len(SHARDS), 3, data=data, fraction=0.5, seed=5, backend=backend, timeout=60, progress=False
            )
        )
        models.append(data.get_arrays())
    local, on_ray = histories
    assert all(url.startswith("ray://sim-") for result in on_ray for url in result.answered)
    assert [len(r.answered) for r in on_ray] == [2, 2, 2] and not any(r.failures for r in on_ray)
    # The same seeded sample: device ids agree round by round.
    assert [sorted(u.rsplit("/", 1)[1] for u in r.answered) for r in on_ray] == [
        sorted(u.rsplit("//", 1)[1] for u in r.answered) for r in local
    ]
    assert not np.allclose(models[0]["w"], 0.0)
    for name in ("w", "b"):
        np.testing.assert_allclose(models[1][name], models[0][name], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_the_same_model_over_local_ray_and_http_devices(ray_session, ray_entry_point, devices):
    from fedsync_ray import RayDevices

    http = [devices("linreg", *spec).url for spec in SHARDS]
    local = [LocalRemote(f"local://shard-{i}", device=shard(i)) for i in range(len(SHARDS))]
    with RayDevices(shard, len(SHARDS), name="equivalence") as on_ray:
        models = []
        for remotes in (http, local, on_ray.urls):  # ray:// URLs as strings: built through the registered transport
            with Federated(model(), remotes, timeout=60, seed=0) as alg:
                alg.fit(3)
                models.append(alg.data.get_arrays())
            assert not any(result.failures for result in alg.history)
    assert on_ray.urls[:2] == ["ray://equivalence-0/device-0", "ray://equivalence-1/device-1"]
    assert not np.allclose(models[0]["w"], 0.0)
    for other in models[1:]:
        for name in ("w", "b"):
            np.testing.assert_allclose(other[name], models[0][name], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_a_killed_actor_and_a_raising_device_fn_fail_only_their_own_devices(ray_session):
    from fedsync_ray import RayDevices

    with RayDevices(
        "tests.support.devices.ray_devices:shard_but_3_is_missing",
        4,
        name="failing",
        backend_config={"num_cpus": 1, "actors": 2},
    ) as on_ray:
        with Federated(model(), on_ray.remotes, timeout=60, min_results=1) as alg:
            first = alg.round()
            on_ray.release()  # as run_simulation does after each round
            dead = on_ray.actors[0]
            ray_session.kill(dead)  # devices 0 and 2 lived there
            second = alg.round()
            on_ray.release()
            third = alg.round()
        assert on_ray.actors[0] is not dead
    urls = on_ray.urls
    assert sorted(first.answered) == sorted(urls[i] for i in (0, 1, 2))
    assert set(first.failures) == {urls[3]}
    assert "device_fn raised OSError: partition 3 is missing" in first.failures[urls[3]]
    # Killed between rounds: the requests that find it dead fail, and the actor is replaced for the next ones.
    assert set(second.failures) <= {urls[0], urls[2], urls[3]} and urls[1] in second.answered
    for url in set(second.failures) - {urls[3]}:
        assert "its Ray actor 'failing-0' died or is unreachable" in second.failures[url]
        assert "replaced for later requests" in second.failures[url]
    assert sorted(third.answered) == sorted(urls[i] for i in (0, 1, 2)), third.failures
    assert set(third.failures) == {urls[3]}


@pytest.mark.slow
def test_a_device_that_kills_its_actor_fails_alone_and_its_actors_other_devices_go_on(ray_session):
    # Device 0's train calls os._exit while the model is all zeros (round 1); devices 0 and 2 share actor 0.
    # Before the fix the dead actor was never replaced: devices 0 and 2 failed every later round.
    history = run_simulation(
        "tests.support.devices.ray_devices:exits_on_a_fresh_model", 4, 3, data=model(), backend="ray",
        backend_config={"num_cpus": 1, "actors": 2}, timeout=60, min_results=1, progress=False,
    )  # fmt: skip
    first, *later = history
    urls = sorted(first.answered) + sorted(first.failures)
    killer = next(url for url in urls if url.endswith("/device-0"))
    assert killer in first.failures and "died or is unreachable" in first.failures[killer]
    # Only devices of the killer's actor that were in flight when it died may fail with it.
    assert all(url.endswith(("/device-0", "/device-2")) for url in first.failures)
    for result in later:
        assert not result.failures, result.failures
        assert len(result.answered) == 4


def test_a_resource_request_the_cluster_cannot_hold_is_refused_at_once_naming_both():
    from fedsync_ray.devices import _checked_config, fitting_actors

    cluster = {"CPU": 2.0, "memory": 4 * 2**30, "object_store_memory": 2**30}
    node = [dict(cluster)]

    def fit(nodes=node, **config):
        return fitting_actors(_checked_config(config), 8, cluster, nodes)

    assert fit() == 2
    assert fit(num_cpus=0.5) == 4
    assert fit(num_cpus=0.1, actors=20) == 20  # 20 x 0.1 is 2 CPUs in Ray's steps, not 2.0000000000000004
    assert fit(num_cpus=1, memory=2**30) == 2
    with pytest.raises(
        ValueError, match=r"each Ray device actor for \{CPU: 1, GPU: 1\}.*cluster has \{CPU: 2, GPU: 0\}"
    ):
        fit(num_gpus=1)
    with pytest.raises(ValueError, match=r"for \{CPU: 3\}.*cluster has \{CPU: 2\}"):
        fit(num_cpus=3)
    with pytest.raises(ValueError, match=r"3 Ray device actors of \{CPU: 1\} each, \{CPU: 3\} in all.*\{CPU: 2\}"):
        fit(actors=3)
    with pytest.raises(ValueError, match=r"\{CPU: 1, tpu: 1\}.*\{CPU: 2, tpu: 0\}"):
        fit(resources={"tpu": 1})
    with pytest.raises(ValueError, match=r"memory: 8 GiB.*memory: 4 GiB"):
        fit(memory=8 * 2**30)
    with pytest.raises(ValueError, match="no node of the cluster has that much"):  # 2 CPUs in all, 1 per node
        fit(nodes=[{"CPU": 1.0}, {"CPU": 1.0}], num_cpus=2)
    with pytest.raises(ValueError, match="backend_config\\['resources'\\] must map custom Ray resource names"):
        fit(resources={"GPU": 1})
    with pytest.raises(ValueError, match="backend_config\\['memory'\\] must be a positive number of bytes"):
        fit(memory=-1)


@pytest.mark.slow
def test_a_gpu_on_a_cluster_without_one_is_refused_before_any_actor_starts(ray_session):
    before = ray_session.util.list_named_actors(all_namespaces=True)
    for config, asked in (
        ({"num_gpus": 1}, "GPU: 1"), ({"num_cpus": 3}, "CPU: 3"), ({"resources": {"tpu": 1}}, "tpu: 1"),
        ({"memory": 2**50}, "memory: 1.05e+06 GiB"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match="the cluster has") as caught:
            run_simulation(shard, 4, 1, data=model(), backend="ray", backend_config=config, progress=False)
        assert asked in str(caught.value)
    assert ray_session.util.list_named_actors(all_namespaces=True) == before


@pytest.mark.slow
def test_an_actor_that_does_not_answer_in_time_is_that_devices_timeout(ray_session, ray_entry_point):
    from fedsync_ray import RayDevices

    with RayDevices("tests.support.devices.ray_devices:sleepy", 1, name="sleepy", timeout=1.0) as on_ray:
        remote = plugins.remote(on_ray.urls[0], timeout=1.0)  # found by name, as a user's ray:// string is
        with pytest.raises(
            RemoteTimeout, match="ray://sleepy-0/device-0: timed out: no answer from its Ray actor within 1s"
        ):
            remote.info()
    with pytest.raises(ValueError, match="no fedsync device actor named 'gone'"):
        plugins.remote("ray://gone/device-0")
    with pytest.raises(ValueError, match="ray://ACTOR/device-ID"):
        plugins.remote("ray://gone/17")


@pytest.mark.slow
def test_a_model_past_rays_inline_limit_crosses_the_object_store(ray_session):
    data = FedArrays({"w": np.zeros(500_000)})  # 4 MB: Ray passes it through the object store, not inline
    history = run_simulation(
        "tests.support.devices.ray_devices:big", 4, 2, data=data, backend="ray", timeout=60, progress=False
    )
    assert not any(result.failures for result in history)
    np.testing.assert_array_equal(data.get_arrays()["w"], 5.0)  # each round adds the mean of 1, 2, 3, 4


BODY = np.frombuffer(b"{}", np.uint8)
BROKEN_ANSWERS = [
    ("not a tuple", r"expected \(status, headers, body, error\)"),
    ((200, [], BODY), r"expected \(status, headers, body, error\)"),
    ((200, [], BODY, None), "an error of type NoneType"),
    ((0, [], BODY, "device_fn failed"), "device_fn failed"),
    ((True, [], BODY, ""), "status"),
    ((200, [("a", 1)], BODY, ""), "malformed headers"),
    ((200, [("X", "y")] * 101, BODY, ""), "malformed headers"),
    ((200, [], b"{}", ""), "1-d numpy uint8"),
    ((200, [], BODY.astype(np.int64), ""), "1-d numpy uint8"),
    ((200, [("Content-Length", "1")], BODY, ""), "must agree"),  # says 1 byte, sends 2
    ((200, [("Content-Length", "2"), ("content-length", "2")], BODY, ""), "must agree"),
]


@pytest.mark.parametrize("answer, reason", BROKEN_ANSWERS, ids=range(len(BROKEN_ANSWERS)))
def test_a_broken_actor_answer_is_this_devices_error(answer, reason):
    """Whatever a (broken or other-version) actor answers is checked before use: a RemoteError naming the device."""
    from fedsync.errors import RemoteError
    from fedsync_ray import RayRemote

    remote = RayRemote("ray://sim-x/device-3", actor=object())
    with pytest.raises(RemoteError, match=reason) as raised:
        remote.transport.checked(answer)
    assert "ray://sim-x/device-3" in str(raised.value)
    assert remote.transport.checked((200, [("Content-Length", "2")], BODY, ""))[0] == 200  # and a good one passes


def test_a_reply_read_from_memory_is_not_copied_whole():
    """A Ray result is read out of the object store a piece at a time, never copied whole into the heap."""
    import tracemalloc

    from fedsync.transports.base import BytesAnswer
    from fedsync.wire.transfer import NEVER

    content = np.zeros(32 << 20, np.uint8)
    tracemalloc.start()
    try:
        body = BytesAnswer(200, [], memoryview(content))
        piece = memoryview(bytearray(1 << 20))
        pieces = sum(body.readinto(piece, NEVER) for _ in range(40))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pieces == content.size and peak < 4 << 20, peak


@pytest.mark.slow
def test_a_simulation_joins_an_existing_ray_cluster_by_address_and_leaves_it_running(tmp_path):
    """`ray start --head` (bound to 127.0.0.1) stands for a cluster; run_simulation(ray_address=...) joins it."""
    import shutil
    import signal
    import socket
    import time

    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    assert ray_cli, "the ray command comes with the ray package"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PYTHONPATH": root,
        "OMP_NUM_THREADS": "1",
    }
    temp = tempfile.mkdtemp(
        prefix="ray-", dir="/tmp"
    )  # short: Ray's unix socket paths live under it (107 bytes at most)
    log = open(tmp_path / "head.log", "wb")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        deadline = time.monotonic() + 90
        while not listening():
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        script = (
            "import numpy as np, ray\n"
            "from fedsync import FedArrays\n"
            "from fedsync.coordinator.simulation import run_simulation\n"
            f"h = run_simulation('tests.support.devices.ray_devices:shard', 4, 2, data=FedArrays({{'w': np.zeros((3, 1)), 'b': np.zeros(1)}}), backend='ray',\n"
            f"                   ray_address='127.0.0.1:{port}', backend_config={{'num_cpus': 1, 'actors': 2}}, timeout=60, progress=False)\n"
            "print([len(r.answered) for r in h], ray.is_initialized())\n"
        )
        # `ray start` turns Ray's token authentication on; a driver joining must say so (the token: ~/.ray/auth_token)
        driver_env = {**env, "RAY_AUTH_MODE": "token"}
        done = subprocess.run(
            [sys.executable, "-c", script], env=driver_env, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == "[4, 4] False"  # every device answered; the driver disconnected
        assert head.poll() is None and listening()  # the cluster it joined is still running
    finally:
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):  # ray start --block stops what it started
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


# -- device functions by value: a lambda, a closure, __main__, a script from stdin --------


def test_a_function_by_name_goes_to_the_actors_as_its_path_and_a_lambda_as_rays_cloudpickle():
    pytest.importorskip("ray")
    assert device_fn_for_actors(shard) == "tests.support.devices.ray_devices:shard"
    pickled = device_fn_for_actors(lambda i: shard(i))
    assert isinstance(pickled, bytes) and load(pickled)(1).get_arrays()["w"].shape == (3, 1)


def test_without_rays_cloudpickle_a_lambda_is_refused_naming_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.cloudpickle", None)  # as if missing: importing it raises ImportError
    with pytest.raises(ImportError, match=r"by value.*ray.cloudpickle.*pip install 'fedsync\[ray\]'"):
        device_fn_for_actors(lambda i: shard(i))
    assert device_fn_for_actors(shard) == "tests.support.devices.ray_devices:shard"  # by name: no pickling


@pytest.mark.slow
def test_a_lambda_and_a_closure_capturing_data_run_on_ray(ray_session):
    models = []
    for device_fn in ("tests.support.devices.ray_devices:shard", lambda i: shard(i)):
        run_simulation(
            device_fn,
            len(SHARDS),
            1,
            data=(data := model()),
            seed=5,
            backend="ray",
            timeout=60,
            backend_config={"num_cpus": 1, "actors": 2},
            progress=False,
        )
        models.append(data.get_arrays())
    assert not np.allclose(models[0]["w"], 0.0)
    for name in ("w", "b"):
        np.testing.assert_array_equal(models[1][name], models[0][name])

    captured = np.array([1.0, -2.0, 0.5])

    def closure(device_id):
        return adding(captured, device_id)

    history = run_simulation(
        closure,
        4,
        1,
        data=(data := FedArrays({"w": np.zeros(3)})),
        backend="ray",
        timeout=60,
        backend_config={"num_cpus": 1, "actors": 2},
        progress=False,
    )
    assert len(history[0].answered) == 4 and not history[0].failures
    np.testing.assert_allclose(data.get_arrays()["w"], captured * 2.5)  # the mean of 1, 2, 3, 4


@pytest.mark.slow  # a fresh interpreter that starts its own local Ray
@pytest.mark.parametrize("how", ["file", "stdin"])
def test_a_function_of_a_script_run_as_main_or_read_from_stdin_runs_on_ray(tmp_path, how):
    """The driver's __main__ cannot be imported by the actors, so its function goes by value too."""
    assert run_script(tmp_path, how, "ray") == '{"answered": 3, "w": [2.0, 4.0]}'


@pytest.mark.slow
def test_a_ray_devices_own_state_survives_the_rounds_it_is_sampled_in(ray_session):
    from tests.device.factories import check_counted

    history = run_simulation(
        "tests.device.factories:counting_device", 6, 4, data=FedArrays({"w": np.zeros(2)}),
        fraction=0.5, seed=3, backend="ray", timeout=60, progress=False,
    )  # fmt: skip
    check_counted(history)  # each device counts 1, 2, 3, ... across its rounds: never rebuilt from zero


@pytest.mark.slow
def test_research_patterns_run_on_ray_as_on_threads_to_the_bit(ray_session):
    """#23 items 1, 3, 4 and 5 on Ray: a custom sampler, per-device configs, evaluation apart from training,
    and SCAFFOLD's device state in the actors: the same devices, configs, evaluations and weights as threads."""
    from fedsync.strategies import Scaffold
    from tests.support.devices.stateful import N, every_other_first, research_device, steps_by_device

    runs = []
    for backend, device_fn in (("local", research_device), ("ray", "tests.support.devices.stateful:research_device")):
        data = FedArrays({"w": np.zeros(5)}, strategy=Scaffold(num_devices=N))
        history = run_simulation(
            device_fn, N, 4, data=data, sampler=every_other_first, config=steps_by_device, seed=11,
            evaluate_every=2, evaluate_fraction=1.0, backend=backend, timeout=60, progress=False,
        )  # fmt: skip
        runs.append((history, data.model["w"].copy()))
    (local, w_local), (on_ray, w_ray) = runs
    ids = [[[u.rsplit("-", 1)[1] for u in r.sampled] for r in h] for h in (local, on_ray)]
    assert ids[0] == ids[1] and ids[0][0] == ["0", "2", "4"]
    assert [sorted(r.configs.values(), key=str) for r in on_ray] == [sorted(r.configs.values(), key=str) for r in local]
    assert not any(r.failures for r in on_ray)
    evaluated = [r for r in on_ray if r.evaluation is not None]
    assert len(evaluated) == 2 and all(len(r.evaluation.devices) == N for r in evaluated)
    assert [r.evaluation.metrics for r in evaluated] == [r.evaluation.metrics for r in local if r.evaluation]
    assert np.abs(w_local).max() > 0
    np.testing.assert_array_equal(w_ray, w_local)  # bit-identical, SCAFFOLD's c_i kept by the actors


@pytest.mark.slow  # three Ray simulations
def test_a_resumed_ray_simulation_gets_its_devices_states_back_from_the_checkpoint(ray_session, tmp_path):
    """The actors hand the states that changed to the checkpoint; a resumed run gives them back: SCAFFOLD's c_i
    survive, and the run ends bit-identical to an unbroken one on threads."""
    from fedsync.strategies import Scaffold
    from tests.support.devices.stateful import DIM, N, scaffold_device

    def run(backend, rounds, folder):
        data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
        device_fn = "tests.support.devices.stateful:scaffold_device" if backend == "ray" else scaffold_device
        history = run_simulation(device_fn, N, rounds, data=data, devices_per_round=2, seed=3, backend=backend,
                                 timeout=60, progress=False, checkpoint=folder)  # fmt: skip
        assert not any(r.failures for r in history)
        return data.model["w"].copy()

    unbroken = run("local", 4, tmp_path / "threads")
    run("ray", 2, tmp_path / "ray")
    assert len(list((tmp_path / "ray" / "device-states").iterdir())) >= 2  # the sampled devices' c_i
    np.testing.assert_array_equal(run("ray", 4, tmp_path / "ray"), unbroken)
