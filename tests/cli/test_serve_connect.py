"""``fedsync serve FILE:NAME --connect URL``: a device that dials out, from the command line (issue #20)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from fedsync.cli import main
from fedsync.wire import codec
from tests.support.cli import fedsync_command, read_line
from tests.support.dial_coordinator import DialCoordinator

CONNECT = ["serve", "device.py:data", "--connect", "http://127.0.0.1:9"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--token", "t"], "--connect needs --name"),
        (["--name", "site-a"], "--connect needs --token"),
        (["--name", ".x", "--token", "t"], "device name '.x' is not allowed"),
        (["--name", "site-a", "--token", "t", "--port", "9000"], "--port: a device that dials out listens on nothing"),
        (["--name", "site-a", "--token", "t", "--host", "0.0.0.0"], "--host: a device that dials out"),
        (["--name", "site-a", "--token", "t", "--client-ca", "ca.pem"], "--client-ca: a device that dials out"),
        (["--name", "site-a", "--token", "t", "--cafile", "nope.pem"], "--cafile file not found: nope.pem"),
        (["--name", "site-a", "--token", "t", "--certfile", "nope.pem"], "--certfile file not found"),
    ],
)
def test_connect_usage_errors_are_one_line_with_exit_2(workdir, capsys, args, says):
    assert main([*CONNECT, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and says in err, err


def test_dialing_options_need_connect(workdir, capsys):
    assert main(["serve", "device.py:data", "--name", "site-a"]) == 2
    assert "add --connect URL" in capsys.readouterr().err


def test_a_bad_connect_url_is_a_usage_error(workdir, capsys):
    assert main(["serve", "device.py:data", "--connect", "ftp://x", "--name", "a", "--token", "t"]) == 2
    assert "is not http(s)://host[:port]" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_connect_dials_answers_and_a_refusal_exits_2(workdir):
    with DialCoordinator({"site-a": "token-a"}, wait=1) as coordinator:
        process = fedsync_command(
            "serve", "device.py:data", "--connect", coordinator.url, "--name", "site-a", "--token", "token-a",
            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert read_line(process.stdout) == f"dialing {coordinator.url} as site-a\n"
            coordinator.wait_registered("site-a", timeout=30)
            specs = coordinator.run("site-a", "GET", "/info").json()["specs"]
            payload = codec.encode({"w": np.full((2, 3), 5, np.float32)}, {"fedsync.specs": specs})
            headers = {"X-Fedsync-Specs": specs, "Content-Type": "application/octet-stream"}
            assert coordinator.run("site-a", "POST", "/1/submit", payload, headers=headers).status == 202
            result = coordinator.run("site-a", "GET", "/1/result?wait=20")
            assert result.status == 200
            np.testing.assert_array_equal(codec.decode(bytes(result.answer))[0]["w"], np.full((2, 3), 6, np.float32))
            coordinator.refuse = 403  # the coordinator's operator takes site-a off the list
            assert process.wait(timeout=30) == 2
            err = process.stderr.read()
            assert "registered with" in err and "fedsync serve: error:" in err and "allow-list" in err
            assert "token-a" not in err
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
            process.stdout.close()
            process.stderr.close()
