"""The public transport seam: a third party's transport written from the hook's docstring runs a round,
and whatever a transport gets wrong is that device's failure alone."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays, Federated, Remote, plugins
from fedsync.errors import RemoteTimeout
from fedsync.transports.base import Answer, BytesAnswer, Transport
from fedsync.transports.local import LocalRemote, LocalTransport
from fedsync.transports.remote import MAX_JSON
from tests.support.devices.basic import constant
from tests.support.distributions import pip_install

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "support" / "plugins" / "fedsync-transport-sample"


@pytest.fixture(autouse=True)
def fresh_registry():
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture(scope="module")
def transport_install(tmp_path_factory):
    """``pip install`` the sample third-party transport package into its own folder."""
    return pip_install(SAMPLE, tmp_path_factory.mktemp("site"))


def zeros() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


@pytest.mark.slow  # ~3.2 s: keeps the fast tier under 90 s
def test_a_transport_written_from_the_docstring_runs_a_round_against_real_devices(transport_install, devices, monkeypatch):
    assert list(transport_install.glob("fedsync_transport_sample-0.1.0.dist-info"))
    monkeypatch.syspath_prepend(str(transport_install))
    (described,) = [t for t in plugins.describe_transports() if t["scheme"] == "plain"]
    assert (described["package"], described["version"]) == ("fedsync-transport-sample", "0.1.0")

    low, high = devices("constant", 1.0, 10), devices("constant", 4.0, 30)
    urls = [d.url.replace("http://", "plain://") for d in (low, high)]
    remote = plugins.remote(urls[0], timeout=10)
    assert isinstance(remote, Remote) and type(remote.transport).__name__ == "PlainTransport"
    assert remote.info()["specs"].startswith("arrays:")
    with Federated(zeros(), urls, timeout=30) as alg:
        result = alg.round()
    assert sorted(result.answered) == sorted(urls) and not result.failures
    assert np.allclose(alg.data.get_arrays()["w"], (1 * 10 + 4 * 30) / 40)  # sample-weighted, as over HTTP


class Broken(Transport):
    """A device in this process whose transport breaks one way: for the tests below."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.inner = LocalTransport(f"broken://{how}", constant(9.0, 5))

    def request(self, method, target, *, headers, body=None, timeout):
        answer = self.inner.request(method, target, headers=headers, body=body, timeout=timeout)
        if self.how == "huge-handshake" and target == "/info":  # a JSON answer over MAX_JSON
            return BytesAnswer(200, [("Content-Type", "application/json")], b" " * (MAX_JSON + 1))
        if self.how == "short" and "/result" in target and method == "GET" and answer.status in (200, 206):
            # Says the size it should send and ends halfway, every time (a resumed request with Range too):
            # the Remote resumes a few times, then counts what arrived and gives up.
            content = bytes(answer.body)
            return BytesAnswer(answer.status, [*answer.headers.items()], content[: len(content) // 2])
        if "/result" not in target or method != "GET" or answer.status != 200:
            return answer
        if self.how == "raises":
            return Raising(answer)
        if self.how == "over-the-limit":  # a body longer than the model's payload, and a Content-Length that says so
            content = bytes(answer.body) + b"\0" * 64
            return BytesAnswer(200, [("Content-Length", str(len(content)))], content)
        if self.how == "bad-length":  # a Content-Length that is not decimal digits: the Remote refuses it
            return BytesAnswer(200, [("Content-Length", f"{len(answer.body)} bytes")], bytes(answer.body))
        if self.how == "stalls":
            return Stalling(answer)
        raise AssertionError(self.how)


class Raising(Answer):
    def __init__(self, answer):
        self.status, self.headers = answer.status, answer.headers

    def readinto(self, view, deadline):
        # Not a ValueError (the merge refuses those itself): the transport seam must contain any exception.
        raise RuntimeError("a bug in a third party's answer")


class Stalling(Answer):
    """Never sends a byte: waits as long as the deadline allows, then says so, as the contract asks."""

    def __init__(self, answer):
        self.status, self.headers = answer.status, answer.headers

    def readinto(self, view, deadline):
        time.sleep(max(0.0, deadline.read_wait()))
        raise RemoteTimeout("broken://stalls", deadline.expired)


BROKEN = {
    "raises": "RuntimeError: a bug in a third party's answer",
    "over-the-limit": "expected no trailing bytes",
    "short": "the answer ended after",
    "bad-length": "without a valid Content-Length",
    "stalls": "RemoteTimeout: late",
    "huge-handshake": f"more than the limit ({MAX_JSON})",
}


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
@pytest.mark.parametrize("how", sorted(BROKEN))
def test_a_transport_error_is_that_devices_failure_alone(how):
    healthy = LocalRemote("local://healthy", device=constant(1.0, 10))
    broken = Remote(f"broken://{how}", transport=Broken(how), timeout=5)
    started = time.monotonic()
    with Federated(zeros(), [healthy, broken], min_results=1, timeout=3) as alg:
        result = alg.round()
    assert result.answered == ["local://healthy"] and list(result.failures) == [f"broken://{how}"]
    assert np.all(alg.data.get_arrays()["w"] == 1.0)  # the broken device's weights never reached the model
    assert BROKEN[how] in result.failures[f"broken://{how}"]
    assert time.monotonic() - started < 3 + 10 + 5  # the round's deadline and grace, not the broken device's whim


@pytest.mark.parametrize("doc, heading", [("plugins.md", "### `register_transports`"), ("simulation.md", "## Simulate over a transport of your own")])
def test_the_docs_transport_snippets_run_and_print_what_they_say(doc, heading, tmp_path):
    """A transport written as the docs show runs a round; the snippet prints what its last comment says."""
    import os
    import re

    text = (ROOT / "docs" / doc).read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)
    expected = code.rstrip().splitlines()[-1].split("  # ", 1)[1]
    (tmp_path / "snippet.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ran = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == expected
