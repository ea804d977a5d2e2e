"""A broken or hostile device is that device's failure: never the round's, never the coordinator's memory or time.

Misbehaving devices are real processes (``tests/support/run_hostile.py``, ``tests/support/hostile.py``)
answering over real HTTP; memory is measured in a coordinator subprocess, since a
process's peak RSS (``ru_maxrss``) only grows.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest

from fedsync import FedArrays, Federated, Remote
from fedsync.coordinator._round import exact_share
from fedsync.errors import RemoteError, RemoteUnavailable, RoundFailed, SpecsMismatch
from tests.support.processes import ROOT, DeviceProcess, stop_all, tls_files

MIB = 1024 * 1024


def weights() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def _launch(*args: str, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "tests.support.run_hostile", *args], stdout=subprocess.PIPE, cwd=ROOT, env=env, text=True)
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    return process, line.strip()


@pytest.fixture
def spawn():
    """``spawn("hostile", scenario, {options})`` or ``spawn("device", {options})``: a process serving on loopback."""
    started: list[DeviceProcess] = []

    def start(command: str, *args) -> DeviceProcess:
        process, line = _launch(command, *(a if isinstance(a, str) else json.dumps(a) for a in args))
        device = DeviceProcess(process, line.split()[1] if line.startswith("READY ") else "")
        started.append(device)
        if not device.url:
            raise RuntimeError(f"{command} {args} did not start (exit code {process.poll()})")
        return device

    yield start
    stop_all(started)


def coordinator(options: dict) -> dict:
    """Run one round (or evaluation) in a fresh process; its outcome and how much its peak RSS grew."""
    process, line = _launch("coordinator", json.dumps(options), timeout=120)
    process.wait(timeout=30)
    assert line.startswith("{"), f"coordinator printed {line!r} (exit code {process.returncode})"
    return json.loads(line)


# -- kind 3: a misbehaving device is that device's failure ----------------------------


@pytest.mark.slow  # a device process per case (12 cases): full suite only (fast tier < 90 s)
@pytest.mark.parametrize("repetition", ["Infinity", '"abc"', "null", "1e400", "-1", "true", "1.5", "9007199254740993", "1" * 400])
def test_bad_info_repetition_is_that_devices_failure(devices, spawn, repetition):
    healthy = devices("constant", 2.0, 10)
    bad = spawn("hostile", "info", {"repetition": repetition})
    data = weights()
    with Federated(data, [healthy.url, bad.url], min_results=1, timeout=20) as alg:
        result = alg.round()
    assert result.answered == [healthy.url]
    assert list(result.failures) == [bad.url]
    assert "repetition" in result.failures[bad.url]
    assert np.all(data.model["w"] == 2.0)


@pytest.mark.parametrize(
    "answer, why",
    [
        ('{"samples": 10000000000000000000000000000000000000000, "metrics": {}}', "samples"),
        ('{"samples": 10, "metrics": {"loss": NaN}}', "finite"),
        ('{"samples": 10, "metrics": {"loss": %s}}' % ("9" * 400), "finite"),
        ('{"samples": "12", "metrics": {}}', "samples"),
        ('{"samples": true, "metrics": {}}', "samples"),
        ('{"samples": 10, "metrics": [1, 2]}', "metrics"),
        ('{"samples": 10, "metrics": {"loss": "0.5"}}', "number"),
        ("[]", "object"),
        ("not json", "JSON"),
        ("[" * 100000, "JSON"),
    ],
)
@pytest.mark.slow  # a device process per case (12 cases): full suite only (fast tier < 90 s)
def test_bad_evaluation_answer_is_that_devices_failure(devices, spawn, answer, why):
    healthy = devices("evaluating", 1.0, 10, 4, 0.75)
    bad = spawn("hostile", "eval", {"answer": answer})
    with Federated(weights(), [healthy.url, bad.url], timeout=20) as alg:
        result = alg.evaluate()
    assert list(result.devices) == [healthy.url]
    assert result.samples == 4 and result.metrics["accuracy"] == 0.75
    assert list(result.failures) == [bad.url] and why in result.failures[bad.url]


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
@pytest.mark.parametrize("headers", [{"Content-Length": "+{n}"}, {"X-Fedsync-Repetition": "01"}, {"X-Fedsync-Repetition": "1.0"}])
def test_malformed_result_headers_are_that_devices_failure(devices, spawn, headers):
    healthy = devices("constant", 2.0, 10)
    # Content-Length "+N" announces the right length with a sign: refused all the same.
    options = {"headers": {k: v.replace("{n}", str(len(weights().serialize(1)))) for k, v in headers.items()}}
    bad = spawn("hostile", "header", options)
    data = weights()
    with Federated(data, [healthy.url, bad.url], min_results=1, timeout=20) as alg:
        result = alg.round()
    assert result.answered == [healthy.url] and list(result.failures) == [bad.url]
    assert ("Content-Length" in result.failures[bad.url]) or ("repetition" in result.failures[bad.url])
    assert np.all(data.model["w"] == 2.0)


def test_device_with_other_specs_is_that_devices_failure_when_others_match(devices):
    healthy = devices("constant", 2.0, 10)
    other = devices("fedfloat", 1.0)
    data = weights()
    with Federated(data, [healthy.url, other.url], min_results=1, timeout=20) as alg:
        result = alg.round()
    assert result.answered == [healthy.url]
    assert result.failures[other.url].startswith("SpecsMismatch: ") and "'Float'" in result.failures[other.url]
    assert Remote(other.url).info()["repetition"] == 0  # nothing was sent to it
    with Federated(weights(), [other.url], timeout=20) as alone, pytest.raises(SpecsMismatch):
        alone.round()  # no sampled device matches: a configuration error


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_round_failed_by_the_merge_names_the_rounds_failures(devices):
    class NoSamples(FedArrays):
        def merge(self, encodings, repetition):
            list(encodings)
            raise RoundFailed("every device reported 0 samples; the model is unchanged")

    healthy = devices("constant", 2.0, 0)
    dead = devices("constant", 2.0, 0)
    dead.kill()
    data = NoSamples({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    with Federated(data, [healthy.url, dead.url], min_results=1, timeout=20) as alg, pytest.raises(RoundFailed) as failed:
        alg.round()
    assert "every device reported 0 samples" in str(failed.value)
    assert list(failed.value.failures) == [dead.url] and "cannot connect" in failed.value.failures[dead.url]


def test_reply_the_merge_cannot_take_names_its_device(devices, spawn):
    from tests.support.seed_fedfloat import FedFloat

    healthy = devices("fedfloat", 2.0)
    bad = spawn("hostile", "text", {"kind": "fedfloat", "text": "not a number"})
    data = FedFloat(0.0)
    with Federated(data, [healthy.url, bad.url], min_results=1, timeout=20) as alg, pytest.raises(RoundFailed) as failed:
        alg.round()  # the seed's FedFloat has no check(): its merge meets the bad text
    assert "ValueError" in failed.value.failures[bad.url] and healthy.url not in failed.value.failures
    assert data.value == 0.0


# -- kind 4: the round's deadline bounds every wait ---------------------------------


@pytest.mark.slow
def test_frozen_known_device_is_named_and_the_healthy_one_merges(devices):
    healthy = devices("constant", 2.0, 10)
    frozen = devices("constant", 9.0, 10)
    data = weights()
    with Federated(data, [healthy.url, frozen.url], min_results=1, timeout=5) as alg:
        assert len(alg.round().answered) == 2
        frozen.stop()
        started = time.monotonic()
        second = alg.round()  # known: submission times out at the deadline
        third = alg.round()  # forgotten after its failure: the handshake is bounded
        elapsed = time.monotonic() - started
    for result in (second, third):
        assert result.answered == [healthy.url] and list(result.failures) == [frozen.url]
    assert "did not accept the payload" in second.failures[frozen.url]
    assert "did not answer the handshake within 2.5s" in third.failures[frozen.url]
    assert elapsed < 25  # was 30 s per round: the handshake waited Remote.timeout
    assert np.all(data.model["w"] == 2.0)


@pytest.mark.slow  # 5.5 s of a reply dripping past the deadline: the full suite runs it
@pytest.mark.parametrize("kind", ["arrays", "fedfloat"])
def test_drip_fed_reply_is_dropped_as_late_and_the_healthy_one_merges(devices, spawn, kind):
    healthy = devices("constant", 2.0, 10) if kind == "arrays" else devices("fedfloat", 2.0)
    # Its reply, sent a byte every 2 s, needs far longer than the round's 5 s (9 bytes of text at least).
    drip = spawn("hostile", "drip", {"kind": kind, "value": 9.0000001, "every": 2.0})
    from tests.support.seed_fedfloat import FedFloat

    data = weights() if kind == "arrays" else FedFloat(0.0)
    started = time.monotonic()
    with Federated(data, [healthy.url, drip.url], min_results=1, timeout=5) as alg:
        result = alg.round()
    # About timeout + 1 s; was 46 s: every byte restarted the read timeout. Generous for a loaded machine.
    assert time.monotonic() - started < 12
    assert result.answered == [healthy.url]
    assert "late" in result.failures[drip.url]
    assert (np.all(data.model["w"] == 2.0)) if kind == "arrays" else data.value == 2.0


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_errors_say_which_kind_of_connection_failure(devices, spawn, tmp_path):
    certfile, keyfile, cafile = tls_files(tmp_path)
    secure = spawn("device", {"certfile": certfile, "keyfile": keyfile})
    assert secure.url.startswith("https://")
    with pytest.raises(RemoteUnavailable) as untrusted:
        Remote(secure.url, retries=0).info()
    assert "TLS certificate not trusted (pass verify=CA_BUNDLE" in str(untrusted.value) and "cannot connect" not in str(untrusted.value)
    assert Remote(secure.url, verify=cafile).info()["specs"] == weights().specs(1)
    plain = devices("constant", 1.0, 1)
    with pytest.raises(RemoteUnavailable, match="TLS handshake failed"):
        Remote(plain.url.replace("http://", "https://"), retries=0).info()
    plain.kill()
    with pytest.raises(RemoteUnavailable, match="cannot connect"):
        Remote(plain.url, retries=0).info()
    garbled = spawn("hostile", "many_headers", {})  # it connected and answered: not "cannot connect"
    with pytest.raises(RemoteError, match="answered malformed HTTP") as malformed:
        Remote(garbled.url, retries=0).info()
    assert not isinstance(malformed.value, RemoteUnavailable) and "cannot connect" not in str(malformed.value)


# -- kind 5: memory stays bounded whatever a device sends ------------------------------


@pytest.mark.slow  # over a second: the full suite (the fast tier stays under 90 s)
@pytest.mark.parametrize("scenario, evaluate", [("huge_info", False), ("huge_error", False), ("huge_eval", True)])
def test_huge_answer_is_that_devices_failure_and_costs_no_memory(devices, spawn, scenario, evaluate):
    healthy = devices("evaluating", 2.0, 10, 4, 0.5)
    bad = spawn("hostile", scenario, {"size": 256 * MIB})
    outcome = coordinator({"urls": [healthy.url, bad.url], "evaluate": evaluate, "timeout": 30})
    assert list(outcome["failures"]) == [bad.url], outcome
    assert outcome["grew_kib"] * 1024 < 32 * MIB, outcome  # the body is 256 MiB
    assert "error" not in outcome


@pytest.mark.slow  # 2 s: the full suite runs it (fast tier budget)
def test_whole_replies_download_within_the_byte_budget(spawn):
    size = 64 * MIB  # each over DOWNLOAD_BUDGET: they download one at a time
    hosts = [spawn("hostile", "huge_text", {"kind": "fedfloat", "size": size}) for _ in range(4)]
    outcome = coordinator({"urls": [h.url for h in hosts], "kind": "fedfloat", "min_results": 4, "timeout": 60})
    assert outcome["failures"] == {} and outcome["value"] == 1.0, outcome
    # One reply being merged, the next downloading and decoding: about 3 replies, never all 4 (8 with text).
    assert outcome["grew_kib"] * 1024 < 4 * size, outcome


# -- kind 7: tokens never leak ----------------------------------------------------------


@pytest.mark.parametrize("token", ["", "   ", "\n", "abc\ndef", "abc\x00def", "t\u00f6ken"])
def test_unusable_token_is_refused_without_showing_it(token):
    with pytest.raises(ValueError) as refused:
        Remote("http://127.0.0.1:9", token=token)
    if token.strip():
        assert token.strip() not in str(refused.value)


@pytest.mark.slow  # over a second: the full suite (the fast tier stays under 90 s)
def test_token_read_from_a_file_works_and_never_leaks(spawn, tmp_path):
    token = "s3cret-token-value-42"
    device = spawn("device", {"token": token})
    echo = spawn("hostile", "echo", {})
    dead = spawn("hostile", "echo", {})
    dead.kill()
    remotes = [Remote(u, token=token + "\n", timeout=10, retries=0) for u in (device.url, echo.url, dead.url)]
    with Federated(weights(), remotes, min_results=1, timeout=20, checkpoint=tmp_path / "run") as alg:
        result = alg.round()
    assert result.answered == [device.url] and set(result.failures) == {echo.url, dead.url}
    assert "refused: Bearer [redacted]" in result.failures[echo.url]  # the device echoed the header
    saved = "".join(p.read_text(errors="replace") for p in (tmp_path / "run").rglob("*.json"))
    assert saved and token not in saved and token not in json.dumps(result.failures)
    with Federated(weights(), [Remote(echo.url, token=token + "\n")], timeout=20) as alone, pytest.raises(RoundFailed) as failed:
        alone.round()
    assert echo.url in str(failed.value) and token not in str(failed.value)


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
@pytest.mark.parametrize("where", ["info", "header", "array"])
def test_a_token_a_device_echoes_in_any_value_never_leaks(spawn, tmp_path, where):
    # The device knows the token it was sent and quotes it bare (no "Bearer"): as its
    # /info repetition, its X-Fedsync-Repetition header, an array name of its reply.
    token = "s3cret-token-value-43"
    device = spawn("device", {"token": token})
    echo = spawn("hostile", "echo_token", {"where": where})
    remotes = [Remote(u, token=token, timeout=10, retries=0) for u in (device.url, echo.url)]
    with Federated(weights(), remotes, min_results=1, timeout=20, checkpoint=tmp_path / "run") as alg:
        result = alg.round()
    assert result.answered == [device.url] and "[token]" in result.failures[echo.url], result.failures
    saved = "".join(p.read_text(errors="replace") for p in (tmp_path / "run").rglob("*.json"))
    assert saved and token not in saved and token not in json.dumps(result.failures)
    with Federated(weights(), [Remote(echo.url, token=token, retries=0)], timeout=20) as alone, pytest.raises(RoundFailed) as failed:
        alone.round()
    assert echo.url in str(failed.value) and token not in str(failed.value) and token not in str(failed.value.failures)
    if where == "info":  # an evaluation's handshake quotes it too
        with Federated(weights(), [Remote(echo.url, token=token, retries=0)], timeout=20) as alone, pytest.raises(RoundFailed) as failed:
            alone.evaluate()
        assert "[token]" in str(failed.value) and token not in str(failed.value)


_INFO = '"protocol": 1, "fedsync": "0.1.0", "specs": "arrays:sha256:1", "repetition": 0, "state": "idle"'


@pytest.mark.parametrize(
    "body, shown",
    [
        ('{' + _INFO + ', "summary": {"weights": [{"name": "w", "shape": ["abc"], "dtype": "f"}]}}', "1 arrays, ? parameters"),
        # Infinity is not JSON: the whole answer is refused, naming where it was (it was shown as "?" before).
        ('{' + _INFO + ', "summary": {"weights": [{"name": "w", "shape": [Infinity]}]}}', "/info answered Infinity for the key 'shape'"),
        ('{' + _INFO + ', "summary": {"weights": [{"name": "w", "shape": [' + ", ".join(["9" * 4000] * 4) + "]}]}}", "1 arrays, ? parameters"),
        ('{' + _INFO + ', "summary": {"weights": ["a", 7]}}', "2 arrays, ? parameters"),
        ('{"protocol": 1, "specs": "a:b", "repetition": 0, "state": "\\u001b[2J\\u001b]0;title\\u0007"}', "state          \\x1b[2J\\x1b]0;title\\x07"),
        ('{"protocol": 1, "specs": "a:b", "repetition": "__TOKEN__"}', "repetition '[token]'"),
        ('{"protocol": 1, "bases": [' + ", ".join(f'"b{i}"' for i in range(10000)) + "]}", "10000 bases, not a list of at most 256 names"),
        ('{"protocol": 1, "bases": ["model", 1, null]}', "3 bases, not a list of at most 256 names"),
    ],
    ids=["shape-text", "shape-infinity", "shape-huge", "weights-not-objects", "terminal-escapes", "token-echoed", "10000-bases", "bases-not-names"],
)
def test_fedsync_info_shows_any_info_a_device_answers_without_a_traceback_or_its_token(spawn, capsys, body, shown):
    from fedsync.cli import main

    token = "s3cret-token-value-44"
    device = spawn("hostile", "info_body", {"body": body})
    code = main(["info", device.url, "--token", token, "--timeout", "10"])
    out, err = capsys.readouterr()
    assert shown in out + err and token not in out + err
    assert code == (1 if err else 0) and "\x1b" not in out + err, (out, err)


# -- kind 10: counts derived from fractions are exact ----------------------------------


@pytest.mark.parametrize("fraction, count, expected", [(0.14, 50, 7), (0.29, 100, 29), (0.57, 100, 57), (0.07, 100, 7), (0.1, 30, 3), (1 / 3, 3, 1)])
def test_sampled_count_is_the_exact_ceiling(fraction, count, expected):
    remotes = [f"http://127.0.0.1:{10000 + i}" for i in range(count)]
    alg = Federated(weights(), remotes, fraction=fraction, seed=1)
    assert len(alg.sample()) == expected == exact_share(fraction, count)


def test_every_share_samples_the_exact_ceiling():
    for count in (7, 50, 100, 300):
        remotes = [Remote(f"http://127.0.0.1:{10000 + i}") for i in range(count)]
        for hundredths in range(1, 101):
            fraction = hundredths / 100
            share = Fraction(str(fraction)) * count
            exact = max(1, math.ceil(share))
            assert len(Federated(weights(), remotes, fraction=fraction).sample()) == exact, (fraction, count)
