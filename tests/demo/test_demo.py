"""`fedsync demo` as a newcomer runs it: a real command, real device processes, files on disk."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy  # a test dependency: the interop check must not skip after the demo already ran

from fedsync.wire import codec
from fedsync.demo.data import DemoError, dirichlet_split, load_split
from fedsync.demo.fleet import Fleet
from fedsync.demo.models import BACKENDS, available, backend_class
from fedsync.demo.report import plot_figure
from tests.support import readme

ROOT = Path(__file__).resolve().parents[2]
DEVICE_LINE = re.compile(r"device (\d+)\s+(http://\S+)\s+pid (\d+)")

pytest.importorskip("sklearn", reason="the demo's data set comes with scikit-learn (pip install 'fedsync[demo]')")


def run_demo(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "fedsync", "demo", "--output", str(tmp_path / "out"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env,
    )  # fmt: skip


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its parent does not count)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def demo_devices(coordinator: int) -> list[int]:
    """Live processes started as devices by the coordinator with pid ``coordinator`` (a /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fedsync.demo" in argv and b"--parent" in argv and argv[argv.index(b"--parent") + 1] == str(coordinator).encode():
            if alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def check_demo_output(result: subprocess.CompletedProcess, out: Path, devices: int, rounds: int) -> list[int]:
    assert result.returncode == 0, result.stderr
    assert re.search(r"federated test accuracy: 0\.\d{3}", result.stdout)
    assert "central (all training data pooled)" in result.stdout
    assert "each device alone (mean)" in result.stdout
    assert "point of federated learning" in result.stdout
    history = json.loads((out / "history.json").read_text())
    assert [row["round"] for row in history["rounds"]] == list(range(1, rounds + 1))
    assert all(row["devices"] == devices for row in history["rounds"])
    assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in history["rounds"])
    assert len(history["comparison"]["alone"]) == devices

    raw = (out / "model.safetensors").read_bytes()
    arrays, metadata = codec.decode(raw)
    assert metadata["fedsync.rounds"] == str(rounds)
    assert float(metadata["fedsync.test_accuracy"]) == pytest.approx(history["comparison"]["federated"], abs=1e-6)
    loaded = safetensors.numpy.load(raw)
    assert loaded.keys() == arrays.keys()
    for name, array in arrays.items():
        np.testing.assert_array_equal(loaded[name], array)

    pids = [int(m.group(3)) for m in DEVICE_LINE.finditer(result.stdout)]
    assert len(pids) == devices
    assert not [pid for pid in pids if alive(pid)], "device processes outlived the demo"
    return pids


def loading_snippets() -> dict[str, str]:
    """The README's snippets loading the demo's model, by the adapter named in their first line."""
    text = readme.section(readme.README, "### Loading the demo's model")
    snippets = {}
    for code in readme.blocks(text, "python"):
        adapter = code.split()[1].lower()  # "# numpy (...)", "# torch ...", "# Keras ..."
        snippets[adapter] = code
    assert snippets.keys() == {"numpy", "torch", "keras"}
    return snippets


def check_loading_snippet(adapter: str, cwd: Path) -> None:
    """Run the README's snippet where the demo wrote fedsync-demo/: the loaded model classifies digits."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", loading_snippets()[adapter]], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    accuracy = float(re.fullmatch(r"accuracy on all 1797 digits: (0\.\d{3})\n", done.stdout).group(1))
    assert accuracy > 0.6  # the trained weights, loaded: untrained ones score about 0.1


@pytest.mark.parametrize(
    "options, devices, rounds",
    [pytest.param("", 4, 20, id="as-written", marks=pytest.mark.slow), pytest.param(" --devices 2 --rounds 3", 2, 3, id="shorter")],
)
@pytest.mark.slow  # starts processes that run a whole command: full suite only (fast tier < 90 s)
def test_the_readme_demo_command_then_loading_its_model(tmp_path, options, devices, rounds):
    """`fedsync demo` as the README's first command runs it (without the install), then the README's numpy snippet.

    As written it takes about 5 s on a loaded machine; the fast tier runs it with fewer rounds and devices.
    """
    demo = readme.commands(readme.section(readme.README, "## Two commands"))[0].partition(" && ")[2]
    result = readme.shell(demo + options, cwd=tmp_path)
    out = tmp_path / "fedsync-demo"
    check_demo_output(result, out, devices=devices, rounds=rounds)
    history = json.loads((out / "history.json").read_text())
    assert history["adapter"] == "numpy"  # --adapter auto: the fastest to start
    assert "adapter: numpy, picked by --adapter auto as the fastest installed" in result.stdout
    assert history["comparison"]["federated"] > (0.8 if rounds == 20 else 0.6)
    assert "round  devices  samples  train loss  test acc  seconds" in result.stdout
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # matplotlib is in the [demo] extra
    check_loading_snippet("numpy", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["torch", "keras"])
def test_framework_demo_end_to_end(tmp_path, adapter):
    # Decided here, not by the code under test: a wrong `missing()` must fail, not skip.
    module = {"torch": "torch", "keras": "keras"}[adapter]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"the {module} extra is not installed (pip install 'fedsync[{adapter}]')")
    assert available()[adapter] is None
    result = run_demo(tmp_path, "--rounds", "3", "--devices", "2", "--adapter", adapter)
    check_demo_output(result, tmp_path / "out", devices=2, rounds=3)
    assert json.loads((tmp_path / "out" / "history.json").read_text())["adapter"] == adapter
    (tmp_path / "out").rename(tmp_path / "fedsync-demo")
    check_loading_snippet(adapter, tmp_path)


def test_auto_picks_the_fastest_backend_which_is_always_installed():
    assert list(BACKENDS) == ["numpy", "torch", "keras"]  # measured start-up cost, see BACKENDS
    assert backend_class("auto") is BACKENDS["numpy"]


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_the_plot_labels_the_first_and_the_last_round():
    plt = pytest.importorskip("matplotlib.pyplot")
    for last in (3, 11, 23):
        rows = [{"round": r, "test_accuracy": 0.5, "test_loss": 1.0, "train_accuracy": 0.5, "train_loss": 1.0} for r in range(1, last + 1)]
        figure = plot_figure(plt, rows, central=0.9, alone=[0.4, 0.6], title="t")
        try:
            figure.canvas.draw()
            for axis in figure.axes:
                labels = [int(label.get_text()) for label in axis.get_xticklabels() if label.get_text()]
                assert labels[0] == 1 and labels[-1] == last, labels
                assert 3 <= len(labels) <= 10 or last < 3
                lo, hi = axis.get_xlim()
                assert lo < 1 and last < hi  # every labelled round is on the axis
        finally:
            plt.close(figure)


def start_endless_demo(tmp_path: Path, devices: int, stderr: int) -> subprocess.Popen:
    """``fedsync demo`` with more rounds than a test waits for, its output read line by line."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedsync", "demo", "--adapter", "numpy", "--devices", str(devices),
         "--rounds", "1000000", "--output", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_ctrl_c_stops_every_device(tmp_path):
    demo = start_endless_demo(tmp_path, devices=3, stderr=subprocess.PIPE)
    try:
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if re.match(r"\s+2\s+3\s", line):  # the second round is done
                break
        pids = [int(m.group(3)) for m in DEVICE_LINE.finditer("".join(lines))]
        assert len(pids) == 3 and all(alive(pid) for pid in pids)
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130
    assert "interrupted" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)]
    assert demo_devices(demo.pid) == []


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_devices_exit_when_the_coordinator_is_killed_outright(tmp_path):
    demo = start_endless_demo(tmp_path, devices=2, stderr=subprocess.DEVNULL)
    try:
        for line in demo.stdout:
            if line.startswith("round"):
                break
        assert len(demo_devices(demo.pid)) == 2
        demo.kill()  # SIGKILL: no finally block runs in the coordinator
        demo.wait(timeout=10)
    finally:
        if demo.poll() is None:
            demo.kill()
    deadline = time.monotonic() + 10
    while demo_devices(demo.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert demo_devices(demo.pid) == []


@pytest.mark.slow  # ~0.7 s: keeps the fast tier under 90 s
def test_a_device_that_cannot_start_is_reported_with_its_log(tmp_path):
    split = load_split(devices=2, alpha=0.5, seed=0)
    with Fleet(tmp_path) as fleet:
        fleet.start(split.shards, "bogus", epochs=1, seed=0)
        with pytest.raises(DemoError, match=r"exited with code 1 before serving; its log:\n[\s\S]*unknown adapter 'bogus'"):
            fleet.wait_ready(timeout=60)
    assert all(device.process.poll() is not None for device in fleet.devices)


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_bad_options_fail_with_one_line(tmp_path):
    result = run_demo(tmp_path, "--devices", "0", "--adapter", "numpy")
    assert result.returncode == 1
    assert result.stderr.strip() == "fedsync demo: error: --devices must be at least 1, got 0"
    result = run_demo(tmp_path, "--strategy", "nope", "--adapter", "numpy")
    assert result.returncode == 1 and "unknown strategy 'nope'; choose one of: bulyan, fedadagrad, fedadam, fedavg," in result.stderr
    assert "Traceback" not in result.stderr
    # Krum with its default f=0 needs 2f+3 = 3 results: refused before any device starts
    result = run_demo(tmp_path, "--strategy", "krum", "--devices", "2", "--adapter", "numpy")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "fedsync demo: error: --strategy krum cannot run on 2 devices: Krum with num_malicious_clients=0 "
        "(n >= 2f + 3) needs at least 3 results, got 2; pass more --devices, or another --strategy"
    )
    assert not (tmp_path / "history.json").exists()


def test_dirichlet_split_is_seeded_and_skewed_by_alpha():
    labels = np.repeat(np.arange(10), 100)
    first = dirichlet_split(labels, 4, 0.5, seed=3)
    again = dirichlet_split(labels, 4, 0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert sorted(np.concatenate(first).tolist()) == list(range(1000))  # a partition: every sample once

    def skew(alpha):
        parts = dirichlet_split(labels, 4, alpha, seed=0)
        return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])

    assert skew(0.1) > skew(100.0)


def test_split_holds_out_a_stratified_test_set():
    split = load_split(devices=3, alpha=0.5, seed=0)
    assert len(split.shards) == 3
    assert np.bincount(split.y_test).min() >= 40  # every digit is tested
    assert len(split.y_test) + sum(len(s.y) for s in split.shards) == 1797
    assert split.x_test.dtype == np.float32 and split.x_test.max() <= 1.0


def test_stratified_split_counts_are_exact_for_decimal_fractions():
    """0.575 of 100 samples is 57.5, which rounds (half to even) to 58; float arithmetic gives 57.49999."""
    from fedsync.demo.data import stratified_split

    labels = np.zeros(100, np.int64)
    train, test = stratified_split(labels, 0.575, seed=0)
    assert (len(train), len(test)) == (42, 58)
