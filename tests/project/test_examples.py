"""Every example under examples/ runs, as a newcomer would run it: examples/README's commands, as written."""

import importlib.util
import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import readme

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TOKEN = "example-token-Zx81"


def example_names():
    spec = importlib.util.spec_from_file_location("examples_run", EXAMPLES / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXAMPLES


def command(example: str) -> str:
    """The command examples/README's table gives for ``example``."""
    return readme.table_commands(EXAMPLES_TEXT)[example]


EXAMPLES_TEXT = readme.EXAMPLES_README.read_text()


def run(example: str, token: str | None = None) -> str:
    env = {"FEDSYNC_TOKEN": token} if token else {}
    done = readme.shell(command(example), cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(autouse=True)
def no_inherited_token(monkeypatch):
    monkeypatch.delenv("FEDSYNC_TOKEN", raising=False)


def test_every_example_folder_is_runnable_by_run_py_and_listed():
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir() and (p / "device.py").exists()}
    assert folders == set(example_names())
    assert readme.table_commands(EXAMPLES_TEXT) == {
        "quickstart": "python examples/quickstart.py",
        **{name: f"python examples/run.py {name}" for name in folders},
    }


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_quickstart():
    out = run("quickstart")
    assert "round 15: 3 devices, 600 samples" in out
    federated = re.search(r"federated w, b: \[ *([-\d.]+)", out).group(1)
    central = re.search(r"central   w, b: \[ *([-\d.]+)", out).group(1)
    assert abs(float(federated) - float(central)) < 0.02


@pytest.mark.slow  # starts processes that run a whole command: full suite only (fast tier < 90 s)
@pytest.mark.parametrize("token", [None, TOKEN])
def test_custom_fedfloat_example(token):
    """With FEDSYNC_TOKEN exported, the devices require it and the coordinator's Remote sends it."""
    out = run("custom_fedfloat", token)
    assert out.splitlines()[-3:] == ["round 1: value 2.0", "round 2: value 2.0", "round 3: value 2.0"]


def run_in_terminal(argv: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its controlling terminal, as in a person's shell; (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: every process holding the terminal has exited
                    break
                if not chunk:
                    break
                output += chunk
    finally:
        os.close(fd)
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_run_py_in_a_terminal_does_not_ask_to_press_ctrl_c():
    """run.py stops its devices itself; they run in their own session, where Ctrl-C cannot reach them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    code, out = run_in_terminal([sys.executable, str(EXAMPLES / "run.py"), "custom_fedfloat"], env)
    assert code == 0, out
    assert "round 3: value 2.0" in out
    assert "Ctrl-C" not in out


def test_fedsync_serve_in_a_terminal_says_how_to_stop_it_once(tmp_path):
    """The contrast to the test above: a device a person started in the foreground says it, once."""
    (tmp_path / "device.py").write_text("import numpy as np, fedsync\ndata = fedsync.FedArrays({'w': np.zeros(1)})\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # A shell in the terminal starts the device in its (foreground) process group, then stops it.
    script = (
        f'cd "{tmp_path}"; "{sys.executable}" -m fedsync serve device.py:data --port 0 >out & '
        "for i in $(seq 600); do grep -q serving out && break; sleep 0.1; done; cat out; kill -TERM $!; wait $!"
    )
    code, out = run_in_terminal(["/bin/bash", "-c", script], env)
    assert code == 0, out
    assert "serving http://127.0.0.1:" in out
    assert out.count("press Ctrl-C to stop") == 1


def final_accuracy(out):
    return float(re.findall(r"round 5: .*test accuracy ([\d.]+)", out)[-1])


@pytest.mark.slow
def test_torch_example():
    pytest.importorskip("torch")
    assert final_accuracy(run("torch_digits")) >= 0.85


@pytest.mark.slow
def test_keras_example():
    pytest.importorskip("keras")
    assert final_accuracy(run("keras_digits", TOKEN)) >= 0.85


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_real_machines_instructions_as_written(tmp_path):
    """examples/README's device and coordinator commands, on this machine: the device addresses are the only change."""
    pytest.importorskip("torch")
    export, device, coordinator = readme.commands(EXAMPLES_TEXT)
    assert export.startswith("export FEDSYNC_TOKEN=") and "--token" not in device
    ports = [free_port(), free_port()]
    devices = [
        device.replace("DEVICE=0", f"DEVICE={i}").replace(
            "--host 0.0.0.0 --port 8000", f"--host 127.0.0.1 --port {port}"
        )
        for i, port in enumerate(ports)
    ]
    coordinator = coordinator.replace(
        "http://device-a:8000,http://device-b:8000", ",".join(f"http://127.0.0.1:{p}" for p in ports)
    )
    wait = " && ".join(f"until (exec 3<>/dev/tcp/127.0.0.1/{p}) 2>/dev/null; do sleep 0.2; done" for p in ports)
    script = "\n".join(
        [
            export,
            *(f"{d} >{tmp_path}/device{i}.log 2>&1 &" for i, d in enumerate(devices)),
            "trap 'kill $(jobs -p) 2>/dev/null' EXIT",
            f"timeout 120 bash -c '{wait}'",
            # Without the token, the coordinator is refused: the devices do require it.
            f"(unset FEDSYNC_TOKEN; {coordinator}) 2>&1 | tail -1 >{tmp_path}/refused.log",
            coordinator,
        ]
    )
    done = readme.shell(script, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert final_accuracy(done.stdout) >= 0.85
    assert "401" in (tmp_path / "refused.log").read_text()


def test_a_command_run_as_a_newcomer_leaves_no_process_behind(tmp_path):
    """A device started in the background through the ``fedsync``/``python`` shell functions is stopped with the command."""
    pid_file = tmp_path / "pid"
    script = (
        f'python -c \'import os, time; open("{pid_file}", "w").write(str(os.getpid())); time.sleep(120)\' >/dev/null 2>&1 &\n'
        f"for i in $(seq 100); do [ -s {pid_file} ] && break; sleep 0.1; done\n"
        "kill $!  # stops the subshell the function runs in, not the python under it\n"
    )
    done = readme.shell(script, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return  # gone
        if state == "Z":
            return  # dead, waiting for init to reap it
        time.sleep(0.1)
    pytest.fail(f"process {pid} started by the command still runs after it")
