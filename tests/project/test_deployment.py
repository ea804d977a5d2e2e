"""docs/deployment.md and the files it ships under deploy/ cannot rot (issue #21).

The doc holds each shipped file verbatim; the nginx settings exceed fedsync's own limits and timeouts, read from
fedsync's code; the systemd units pass ``systemd-analyze verify``; every command line in a unit or a Dockerfile is
accepted by the parser that will run it; the Dockerfiles build where a Docker daemon runs. The real nginx runs in
test_deployment_nginx.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedsync.cli import build_parser
from fedsync.device.dialer import POLL_MARGIN
from fedsync.gateway.server import IDLE_TIMEOUT
from fedsync.transports.dial._server import HEAD_TIMEOUT, MAX_POLL
from fedsync.wire.config import MAX_CONFIG_BYTES
from fedsync.wire.http import CONFIG_HEADER, MAX_PAYLOAD, MAX_WAIT
from tests.support.nginx import SHIPPED, top_blocks
from tests.support.processes import ROOT

DOC = ROOT / "docs" / "deployment.md"
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
SIZES = {"k": 1024, "m": 1024**2, "g": 1024**3}
SECONDS = {"s": 1, "m": 60, "h": 3600}


def fenced_blocks(text: str) -> list[str]:
    return [match.group(1) for match in re.finditer(r"^```[a-z]*\n(.*?)^```$", text, re.M | re.S)]


def directives(block: str, name: str) -> list[list[str]]:
    return [line.split(";")[0].split()[1:] for line in block.splitlines() if line.split()[:1] == [name]]


def amount(value: str, units: dict[str, int]) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-z]?)", value.lower()).groups()  # type: ignore[union-attr]
    return int(number) * (units[unit] if unit else 1)


def test_the_doc_holds_every_shipped_file_verbatim():
    blocks = fenced_blocks(DOC.read_text())
    for path in [SHIPPED, *UNITS, *DOCKERFILES, DEPLOY / "coordinator.py"]:
        assert path.read_text() in blocks, f"docs/deployment.md must include {path.relative_to(ROOT)} verbatim"
    assert len(UNITS) == 3 and len(DOCKERFILES) == 2


def test_the_tree_section_is_left_for_the_aggregator_work():
    text = DOC.read_text()
    assert "## A tree of aggregators" in text
    section = text.split("## A tree of aggregators", 1)[1].split("\n## ", 1)[0]
    assert section.strip(), "the section must not be empty"


def test_the_nginx_settings_exceed_fedsyncs_own_limits_and_timeouts():
    for block in top_blocks(SHIPPED.read_text()):
        if block.startswith("upstream fedsync_device "):
            assert amount(directives(block, "keepalive_timeout")[0][0], SECONDS) < IDLE_TIMEOUT
        elif block.startswith("upstream fedsync_listener "):
            # The listener closes a kept-alive connection HEAD_TIMEOUT s after its last answer: nginx must let go first.
            assert amount(directives(block, "keepalive_timeout")[0][0], SECONDS) < HEAD_TIMEOUT
        else:
            longest_poll = max(MAX_WAIT, MAX_POLL)  # result?wait= and the dial-out next?wait=
            assert amount(directives(block, "proxy_read_timeout")[0][0], SECONDS) > longest_poll
            assert amount(directives(block, "proxy_read_timeout")[0][0], SECONDS) < MAX_POLL + POLL_MARGIN + 30
            assert amount(directives(block, "client_max_body_size")[0][0], SIZES) >= MAX_PAYLOAD
            count, size = directives(block, "large_client_header_buffers")[0]
            assert amount(size, SIZES) >= len(f"{CONFIG_HEADER}: \r\n") + MAX_CONFIG_BYTES
            for name in ("proxy_request_buffering", "proxy_buffering"):
                assert directives(block, name) == [["off"]], name
            assert directives(block, "proxy_http_version") == [["1.1"]]
            assert directives(block, "proxy_set_header")[0] == ["Connection", '""']


def test_the_largest_config_header_overflows_nginxs_default_buffers():
    """Why large_client_header_buffers is raised: the default (4 8k) refuses a full X-Fedsync-Config with 400."""
    assert len(f"{CONFIG_HEADER}: \r\n") + MAX_CONFIG_BYTES > 8 * 1024


def exec_start(unit: Path) -> list[str]:
    lines = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, unit
    return shlex.split(lines[0].removeprefix("ExecStart="))


def dockerfile_cmds(dockerfile: Path) -> list[list[str]]:
    """The CMD, and the commands its comments tell the user to run in the image (``docker run ... IMAGE CMD``)."""
    text = dockerfile.read_text()
    cmds = [json.loads(line.removeprefix("CMD ")) for line in text.splitlines() if line.startswith("CMD ")]
    comments = " ".join(line.lstrip("# ").rstrip("\\").strip() for line in text.splitlines() if line.startswith("#"))
    cmds += [
        shlex.split("fedsync " + rest) for rest in re.findall(r"fedsync-device fedsync (.*?--cafile \S+)", comments)
    ]
    return cmds


def coordinator_parser():
    spec = importlib.util.spec_from_file_location("deploy_coordinator", DEPLOY / "coordinator.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.build_parser()


def parse(command: list[str]) -> None:
    """Parse ``command`` with the parser of the program it runs (argparse exits 2 on anything it refuses)."""
    program = Path(command[0]).name
    if program == "fedsync":
        args = build_parser().parse_args(command[1:])
        assert args.command == "serve" and args.target.endswith(":data")
    else:
        assert program.startswith("python") and Path(command[1]).name == "coordinator.py", command
        args = coordinator_parser().parse_args(command[2:])
        assert args.target == "model.py:data"


@pytest.mark.parametrize("path", UNITS + DOCKERFILES, ids=lambda p: p.name)
def test_every_shipped_command_line_is_accepted_by_its_parser(path):
    commands = [exec_start(path)] if path.suffix == ".service" else dockerfile_cmds(path)
    assert commands
    for command in commands:
        parse(command)
    if path.name == "device.Dockerfile":
        assert any("--connect" in command for command in commands)  # the dial-out variant in its comment


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verifies_each_unit(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the systemd package): the units are not verified here")
    # verify checks that ExecStart's binary exists: point it at this machine's fedsync and Python.
    fedsync = shutil.which("fedsync") or str(Path(sys.executable).with_name("fedsync"))
    text = unit.read_text().replace("/usr/local/bin/fedsync", fedsync).replace("/usr/bin/python3", sys.executable)
    copy = tmp_path / unit.name
    copy.write_text(text)
    run = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and copy.name not in run.stderr, run.stderr
    broken = tmp_path / f"broken-{unit.name}"
    broken.write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    run = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert broken.name in run.stderr  # the check can fail: a bad line is reported


def docker_daemon() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client: the Dockerfiles are checked by their command lines only")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"no Docker daemon answers `docker info` ({info.stderr.strip()[-200:]}): the images are not built")
    return docker


@pytest.mark.slow  # builds an image: minutes, where a daemon runs
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_dockerfile_builds_and_its_command_starts(dockerfile):
    docker = docker_daemon()
    tag = f"fedsync-test-{dockerfile.name.split('.')[0]}"
    build = subprocess.run([docker, "build", "-f", str(dockerfile), "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    try:
        program = dockerfile_cmds(dockerfile)[0][:2]
        run = subprocess.run(
            [docker, "run", "--rm", tag, *program, "--help"], capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=300)
