"""The `fedsync` command: help, serving a user's FedData, reading a device's handshake, listing plugins."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from fedsync.cli import main
from tests.support.cli import fedsync_command

ROOT = Path(__file__).resolve().parents[2]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- help -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "serve", "info", "plugins"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: fedsync {command}")
    assert "examples:" in text or command in ("plugins",)
    # Each command's options show their real defaults (argparse prints them from the parser).
    defaults = {
        "demo": ["number of device processes (default: 4)", "(default: fedavg)"],
        "serve": ["--port PORT", "(default: 8000)", "(default: 127.0.0.1)"],
        "info": ["seconds to wait for an answer (default: 5.0)"],
        "plugins": ["--json"],
    }
    flat = " ".join(text.split())
    for fragment in defaults[command]:
        assert fragment in flat, (command, fragment, text)


def test_python_dash_m_fedsync_lists_the_commands(tmp_path):
    process = fedsync_command("--help", cwd=tmp_path, stdout=subprocess.PIPE)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    for command in ("demo", "serve", "info", "plugins"):
        assert f"    {command} " in out


def test_console_script_is_installed(tmp_path):
    # Next to this interpreter, not on PATH: PATH may hold another install, or none without an activated venv.
    folder = Path(sys.executable).parent
    script = next((folder / name for name in ("fedsync", "fedsync.exe") if (folder / name).exists()), None)
    assert script is not None, f"no fedsync console script next to {sys.executable}: pip install -e '.[all,test]'"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("fedsync ")


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().err


# -- serve ------------------------------------------------------------------------


def test_serve_a_fed_data_from_a_file_and_stop_it(serve):
    process, url = serve("device.py:data")
    info = requests.get(f"{url}/info", timeout=10).json()
    assert info["specs"].startswith("arrays:") and info["state"] == "idle"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


SLOW_DEVICE_FILE = """\
import time
import numpy as np
import fedsync

def train(model):
    time.sleep(120)  # still training when the device is told to stop
    return 1

data = fedsync.FedArrays({"w": np.zeros(3, np.float32)}, train)
"""


def port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as probe:
        probe.settimeout(5)
        return probe.connect_ex((host, int(port))) == 0


def test_sigterm_stops_a_device_mid_round_and_frees_its_port(serve, workdir):
    """`kill PID` (as examples/run.py, systemd or docker stop do) ends a device that is training and holding a connection."""
    (workdir / "slow_device.py").write_text(SLOW_DEVICE_FILE)
    process, url = serve("slow_device.py:data")
    session = requests.Session()  # a coordinator's kept-open connection
    info = session.get(f"{url}/info", timeout=10).json()
    body = fedsync_codec_payload(info)
    answer = session.post(f"{url}/1/submit", data=body, headers={"X-Fedsync-Specs": info["specs"], "Content-Type": "application/octet-stream"}, timeout=10)
    assert answer.status_code == 202, answer.text
    assert session.get(f"{url}/info", timeout=10).json()["state"] == "training"
    process.send_signal(signal.SIGTERM)
    # Bounds that only catch a device that never stops (it takes well under a second).
    assert process.wait(timeout=30) == 0
    assert not port_open(url)
    assert "Traceback" not in process.stderr.read()
    session.close()


def fedsync_codec_payload(info: dict) -> bytes:
    """The payload a coordinator would send for the device's declared weights (zeros)."""
    import numpy as np

    from fedsync.wire import codec

    arrays = {w["name"]: np.zeros(w["shape"], w["dtype"]) for w in info["summary"]["weights"]}
    return codec.encode(arrays)


def test_serve_a_dict_under_named_bases_with_a_token(serve):
    _, url = serve("device:both", "--token", "s3cret")  # a dotted module name, importable from the cwd
    assert requests.get(f"{url}/model/info", timeout=10).status_code == 401
    headers = {"Authorization": "Bearer s3cret"}
    assert requests.get(f"{url}/threshold/info", headers=headers, timeout=10).json()["summary"]["weights"][0]["name"] == "t"


def test_serve_over_tls(serve, workdir):
    # Certificates from `fedsync certs` (the cryptography package), not the openssl binary.
    assert main(["certs", "init", str(workdir / "pki")]) == 0
    assert main(["certs", "device", str(workdir / "pki"), "--host", "127.0.0.1"]) == 0
    cert, key = workdir / "pki" / "device-127.0.0.1.pem", workdir / "pki" / "device-127.0.0.1-key.pem"
    _, url = serve("device.py:data", "--certfile", str(cert), "--keyfile", str(key))
    assert url.startswith("https://127.0.0.1:")
    assert requests.get(f"{url}/info", verify=str(workdir / "pki" / "ca.pem"), timeout=10).json()["specs"].startswith("arrays:")


def test_unknown_module_names_it_and_says_what_to_do(workdir, capsys):
    assert main(["serve", "no_such_module:data"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no module named 'no_such_module'" in err and "device.py:data" in err

    assert main(["serve", "missing/device.py:data"]) == 2
    assert "no file 'missing/device.py'" in capsys.readouterr().err


def test_unknown_attribute_lists_what_the_module_defines(workdir, capsys):
    assert main(["serve", "device.py:model"]) == 2
    err = capsys.readouterr().err
    assert "module 'device.py' has no attribute 'model'; it defines: both, data" in err


def test_attribute_that_is_not_fed_data(workdir, capsys):
    assert main(["serve", "device.py:not_fed"]) == 2
    assert "device.py:not_fed is a int, not a FedData or a dict of them" in capsys.readouterr().err
    assert main(["serve", "device.py"]) == 2
    assert "expected MODULE:ATTR" in capsys.readouterr().err


def test_module_that_raises_shows_its_traceback(workdir, capsys):
    (workdir / "broken.py").write_text("import numpy\nraise RuntimeError('no GPU here')\n")
    assert main(["serve", "broken.py:data"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "broken.py" in err
    assert err.strip().splitlines()[-1] == (
        "fedsync serve: error: importing 'broken.py' raised RuntimeError: no GPU here (traceback above)"
    )


def test_port_in_use_names_the_port(workdir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "device.py:data", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert "--port 0" in err and "Traceback" not in err


def test_bad_tls_files(workdir, capsys):
    assert main(["serve", "device.py:data", "--certfile", "nope.pem"]) == 2
    assert "TLS file not found: nope.pem" in capsys.readouterr().err
    (workdir / "junk.pem").write_text("not a certificate")
    assert main(["serve", "device.py:data", "--certfile", "junk.pem"]) == 2
    assert "cannot load the TLS certificate 'junk.pem'" in capsys.readouterr().err


# -- info -------------------------------------------------------------------------


def test_info_shows_a_live_devices_handshake(devices, capsys):
    device = devices("constant", 1.0, 5)
    assert main(["info", device.url]) == 0
    out = capsys.readouterr().out
    fields = dict(line.split(None, 1) for line in out.splitlines() if line.strip())  # key, then its value
    assert fields["device"] == device.url and fields["state"] == "idle"
    assert fields["specs"].startswith("arrays:sha256:")
    assert "2 arrays, 8 parameters" in out
    assert main(["info", device.url.removeprefix("http://"), "--json"]) == 0  # http:// is assumed
    assert json.loads(capsys.readouterr().out)["repetition"] == 0


def test_info_on_a_device_serving_several_fed_data(serve, capsys):
    _, url = serve("device.py:both")
    assert main(["info", url]) == 0
    out = capsys.readouterr().out
    pairs = [line.split(None, 1) for line in out.splitlines() if line.strip()]
    assert [value for key, value in pairs if key == "device"] == [f"{url}/model", f"{url}/threshold"]


def test_info_on_an_unreachable_url_is_one_line(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["info", url]) == 1
    err = capsys.readouterr().err
    assert err == f"fedsync info: error: cannot connect to {url}: is a device serving there? (start one with: fedsync serve MODULE:ATTR)\n"


def test_info_with_a_wrong_token(serve, capsys):
    _, url = serve("device.py:data", "--token", "right")
    assert main(["info", url, "--token", "wrong"]) == 1
    assert "401 unauthorized" in capsys.readouterr().err


MANY_WEIGHTS_FILE = """\
import numpy as np
import fedsync

data = fedsync.FedArrays({f"layer{i:04d}.weight": np.zeros(2, np.float32) for i in range(3000)})
"""


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_info_piped_to_head_stops_quietly(serve, workdir):
    """`fedsync info --json URL | head -1`: head exits after one line while info still writes (~360 kB, more than a pipe holds)."""
    (workdir / "many.py").write_text(MANY_WEIGHTS_FILE)
    _, url = serve("many.py:data")
    script = f'"{sys.executable}" -m fedsync info --json {url} | head -1; echo "exit code ${{PIPESTATUS[0]}}" >&2'
    done = subprocess.run(["bash", "-c", script], cwd=workdir, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60)
    assert done.stdout == "{\n"
    assert done.stderr == "exit code 141\n"  # as `yes | head -1` would: no traceback, no 'Exception ignored'


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["plugins"], ["plugins", "--json"], ["info", "--help"]])
def test_every_command_writing_into_a_closed_pipe_stops_quietly(args, tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails with EPIPE
    try:
        process = fedsync_command(*args, cwd=tmp_path, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    _, err = process.communicate(timeout=60)
    assert err == ""  # no traceback, no 'Exception ignored ... BrokenPipeError'
    # 141 as `yes | head -1`; argparse's help writer swallows the error itself and exits 0.
    assert process.returncode == (0 if "--help" in args or "--version" in args else 141)


# -- plugins ----------------------------------------------------------------------


def test_plugins_lists_the_adapters(capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["token", "class", "plugin", "package", "framework"]
    rows = {line.split()[0]: line for line in lines[1:lines.index("")]}
    assert "fedsync.data.arrays.FedArrays" in rows["arrays"]
    transports = lines[lines.index("") + 1:]
    assert transports[0].split() == ["scheme", "class", "plugin", "package"]
    assert {line.split()[0]: line.split()[1] for line in transports[1:]}["local"] == "fedsync.transports.local.LocalRemote"
    assert main(["plugins", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    http = next(t for t in answer["transports"] if t["scheme"] == "http")  # sorted by scheme: dial:// comes first
    assert {"scheme": "http", "class": "fedsync.transports.remote.Remote", "plugin": "fedsync.transports.remote"}.items() <= http.items()
    listed = {row["token"]: row for row in answer["adapters"]}
    assert listed["arrays"]["framework"] == "installed"
    for token in ("torch", "keras"):  # registered by fedsync's own entry points, whether or not the framework is
        assert listed[token]["framework"] == "installed" or f"fedsync[{token}]" in listed[token]["framework"]


def test_plugins_help_text_mentions_the_environment_switch(capsys):
    with pytest.raises(SystemExit):
        main(["plugins", "--help"])
    assert "FEDSYNC_LOAD_PLUGINS" in capsys.readouterr().out
