"""Signed secure aggregation (Bonawitz et al. 2017, active variant) against a coordinator that forges keys or views.

Four real device processes serve over mutual TLS with ``peer_ca``; the hostile coordinator is
the real one with a hook on its side (``SecureRound._phase`` / ``_consistency``), never a mock
of the devices' code.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

pytest.importorskip("cryptography")
pytest.importorskip("Crypto")

from fedsync import FedArrays, Federated, Remote
from fedsync.wire import certs  # noqa: E402
from fedsync.errors import RoundFailed  # noqa: E402
from fedsync.secagg import SecAgg  # noqa: E402
from fedsync.secagg import coordinator as secagg_coordinator  # noqa: E402
from fedsync.secagg import identity, keys  # noqa: E402
from tests.support.processes import start_device, stop_all, tls_files  # noqa: E402
from tests.support.devices.secagg import model, noisy  # noqa: E402

D = "tests.support.devices.secagg:"
SEEDS = (1, 2, 3, 4)
SCALE = 2**16
_REPS = itertools.count(100, 10)  # a round refused in its key phases leaves the devices' keys phase at that repetition


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Four signed devices (noisy(seed, 10 * seed)) and the coordinator's mutual-TLS remotes for them."""
    folder = tmp_path_factory.mktemp("secsign")
    cert, key, ca = tls_files(folder)
    pki = folder / "pki"
    pairs = [(cert, key)] + [tuple(map(str, certs.issue_device(pki, ["127.0.0.1"], name=f"d{i}"))) for i in (2, 3, 4)]
    coordinator = tuple(map(str, certs.issue_coordinator(pki)))
    started = []
    try:
        for seed, (c, k) in zip(SEEDS, pairs):
            options = {"ssl_context": [c, k], "client_ca": ca, "peer_ca": ca, "secure_aggregation": "required"}
            started.append(start_device(D + "noisy", seed, 10 * seed, serve=options))
        yield {"urls": [d.url for d in started], "cert": coordinator, "ca": ca, "folder": folder}
    finally:
        stop_all(started)


def federated(fleet, data: FedArrays) -> Federated:
    remotes = [Remote(url, cert=fleet["cert"], verify=fleet["ca"], timeout=20) for url in fleet["urls"]]
    alg = Federated(data, remotes, timeout=30, secure_aggregation=SecAgg(scale=SCALE))
    alg.repetition = next(_REPS)
    return alg


def unchanged(data: FedArrays) -> bool:
    return all((a == 0).all() for a in data.model.values())


@pytest.fixture
def phases(monkeypatch):
    """The coordinator's phases as sent: (phase, bodies) in order; ``rewrite[phase](bodies)`` may alter them first."""
    sent: list[tuple[str, dict]] = []
    rewrite: dict = {}
    answers: dict[str, dict] = {}
    honest = secagg_coordinator.SecureRound._phase

    def spied(self, phase, bodies):
        bodies = rewrite.get(phase, lambda self, b: b)(self, bodies)
        sent.append((phase, bodies))
        answers[phase] = honest(self, phase, bodies)
        return answers[phase]

    monkeypatch.setattr(secagg_coordinator.SecureRound, "_phase", spied)
    return sent, rewrite, answers


@pytest.mark.slow  # ~1.6 s: keeps the fast tier under 90 s
def test_a_signed_round_over_mutual_tls_equals_the_unsigned_one(fleet, phases):
    sent, _, _ = phases
    signed = FedArrays(model())
    with federated(fleet, signed) as alg:
        result = alg.round()
    assert result.samples == 100 and result.failures == {}
    assert [p for p, _ in sent] == ["keys", "shares", "inbox", "consistency", "unmask"]
    assert all("signatures" in body for body in sent[-1][1].values())
    table = sent[1][1][1]["keys"]
    assert all(set(entry) == {"c", "s", "commitment", "signature", "certificate"} for entry in table.values())
    # The same round, unsigned, on in-process devices over the local transport: bit-equal.
    from fedsync.transports.local import register_device, unregister_device

    names = [f"secsign-{seed}" for seed in SEEDS]
    urls = [register_device(name, noisy(seed, 10 * seed)) for name, seed in zip(names, SEEDS)]
    try:
        plain = FedArrays(model())
        with Federated(plain, urls, timeout=30, secure_aggregation=SecAgg(scale=SCALE)) as alg:
            assert alg.round().samples == 100
    finally:
        for name in names:
            unregister_device(name)
    assert "consistency" not in [p for p, _ in sent[5:]]  # the unsigned devices ran no consistency phase
    for name in plain.model:
        assert np.array_equal(signed.model[name], plain.model[name]), name


def _forged_entry(alg_round, u: int, signer_cert: str | None = None, signer_key: str | None = None, honest: dict | None = None) -> dict:
    """Device ``u``'s table entry as a man in the middle makes it: its own fresh X25519 keys (it can then decrypt
    the shares sent to ``u``), signed with ``signer`` (a certificate it holds) or keeping ``u``'s signature."""
    c, s, b = keys.KeyPair(), keys.KeyPair(), os.urandom(32)
    entry = {"c": keys.b64(c.public), "s": keys.b64(s.public), "commitment": keys.b64(keys.commitment(b))}
    if signer_cert is None:
        return {**honest, "s": entry["s"]}  # only the mask key swapped: u's signature no longer covers it
    from fedsync.secagg.identity import Identity

    forger = Identity(signer_cert, signer_key, signer_cert.replace(os.path.basename(signer_cert), "ca.pem"))
    message = identity.keys_message(alg_round.rep, u, len(alg_round.by_id), alg_round.threshold, c.public, s.public, keys.commitment(b))
    return {**entry, "signature": keys.b64(forger.sign(message)), "certificate": keys.b64(forger.certificate_der)}


def _swap_for_others(victim: int, make):
    def rewrite(self, bodies):
        forged = make(self, bodies)
        return {u: ({"keys": {**body["keys"], str(victim): forged}} if u != victim else body) for u, body in bodies.items()}

    return rewrite


def test_a_coordinator_swapping_a_public_key_is_refused_by_the_devices_naming_the_bad_signature(fleet, phases):
    _, rewrite, _ = phases
    rewrite["shares"] = _swap_for_others(2, lambda self, bodies: _forged_entry(self, 2, honest=bodies[2]["keys"]["2"]))
    data = FedArrays(model())
    with federated(fleet, data) as alg:
        with pytest.raises(RoundFailed) as raised:
            alg.round()
    urls = fleet["urls"]
    for url in (urls[0], urls[2], urls[3]):
        assert "secagg_bad_signature" in raised.value.failures[url] and "device 2's keys signature" in raised.value.failures[url], raised.value.failures
    assert "completed the shares phase" in str(raised.value)
    assert unchanged(data)


def test_a_device_certificate_from_another_ca_is_refused(fleet, phases):
    """The coordinator invents device 2 with a well-formed, correctly signed entry, but a certificate from its own CA."""
    other = fleet["folder"] / "intruder"
    certs.init_ca(other)
    cert, key = map(str, certs.issue_device(other, ["127.0.0.1"], name="sybil"))
    _, rewrite, _ = phases
    rewrite["shares"] = _swap_for_others(2, lambda self, bodies: _forged_entry(self, 2, cert, key))
    data = FedArrays(model())
    with federated(fleet, data) as alg:
        with pytest.raises(RoundFailed) as raised:
            alg.round()
    for url in (fleet["urls"][0], fleet["urls"][2], fleet["urls"][3]):
        why = raised.value.failures[url]
        assert "secagg_bad_certificate" in why and "device 2's certificate is refused" in why and "peer CA" in why, why
    assert unchanged(data)


def test_different_survivor_lists_get_no_shares_and_fail_the_round(fleet, phases, monkeypatch):
    """Devices 1, 2 are told everyone survived, devices 3, 4 that device 2 dropped: neither list gets t = 3 signatures."""
    _, rewrite, answers = phases
    views = {1: [1, 2, 3, 4], 2: [1, 2, 3, 4], 3: [1, 3, 4], 4: [1, 3, 4]}
    signatures: dict[int, str] = {}

    def consistency(self, survivors):  # the hostile coordinator: split views, relay every signature it got
        got = self._phase("consistency", {u: {"survivors": views[u]} for u in survivors})
        signatures.update({u: a["signature"] for u, a in got.items() if isinstance(a, dict)})
        return {str(u): text for u, text in signatures.items()}

    monkeypatch.setattr(secagg_coordinator.SecureRound, "_consistency", consistency)
    rewrite["unmask"] = lambda self, bodies: {
        u: {"survivors": views[u], "dropped": sorted({1, 2, 3, 4} - set(views[u])), "signatures": {str(v): signatures[v] for v in views[u] if views[v] == views[u]}}
        for u in bodies
    }  # fmt: skip
    data = FedArrays(model())
    with federated(fleet, data) as alg:
        with pytest.raises(RoundFailed) as raised:
            alg.round()
    assert sorted(signatures) == [1, 2, 3, 4]  # each device signed its own view
    revealed = answers["unmask"]
    assert sorted(revealed) == [1, 2, 3, 4] and all(isinstance(a, Exception) for a in revealed.values()), revealed  # not one share
    assert all("secagg_inconsistent" in str(a) and "signed the survivors" in str(a) for a in revealed.values()), revealed
    assert "answered the unmask phase, fewer than the threshold 3" in str(raised.value)
    assert unchanged(data)


# -- in-process devices over real HTTPS: the signed phases' refusals, and serve()'s checks ---------------


@pytest.fixture
def signed_trio(tmp_path):
    """Three in-process signed devices over mutual TLS, driven by hand; ``post(i, rep, phase, body)``."""
    import fedsync
    import requests

    cert, key, ca = tls_files(tmp_path)
    pki = tmp_path / "pki"
    pairs = [(cert, key)] + [tuple(map(str, certs.issue_device(pki, ["127.0.0.1"], name=f"t{i}"))) for i in (2, 3)]
    client = tuple(map(str, certs.issue_coordinator(pki)))
    servers = [fedsync.serve(noisy(seed, 5), port=0, block=False, ssl_context=pair, client_ca=ca, peer_ca=ca) for seed, pair in zip((1, 2, 3), pairs)]

    def post(i: int, rep: int, phase: str, body) -> requests.Response:
        return requests.post(f"{servers[i - 1].url}/{rep}/secagg/{phase}", json=body, cert=client, verify=ca, timeout=10)

    yield post, [s.url for s in servers], client, ca
    for server in servers:
        server.close()


def test_signed_phases_refuse_what_the_paper_forbids_and_change_nothing(signed_trio):
    post, urls, client, ca = signed_trio
    rep = 1
    answers = {i: post(i, rep, "keys", {"devices": 3, "id": i, "threshold": 3, "clip": 1.0, "scale": 2**16, "max_samples": 100}).json() for i in (1, 2, 3)}
    table = {str(i): a for i, a in answers.items()}
    assert post(1, rep, "shares", {"keys": {**table, "2": {"c": table["2"]["c"], "s": table["2"]["s"]}}}).json()["error"] == "secagg_unsigned_peer"
    relabeled = {**table, "2": table["3"], "3": table["2"]}  # the coordinator swaps two devices' ids
    assert post(1, rep, "shares", {"keys": relabeled}).json()["error"] in ("secagg_bad_signature", "secagg_bad_keys")
    shares = {i: post(i, rep, "shares", {"keys": table}).json()["shares"] for i in (1, 2, 3)}
    for i in (1, 2, 3):
        inbox = {"participants": [1, 2, 3], "shares": {str(v): shares[v][str(i)] for v in (1, 2, 3) if v != i}}
        assert post(i, rep, "inbox", inbox).status_code == 200
    assert post(1, rep, "consistency", {"survivors": [1, 2, 3]}).json()["error"] == "secagg_out_of_order"  # before its masked result
    coordinator = FedArrays(model())
    for url in urls:
        remote = Remote(url, cert=client, verify=ca)
        remote.submit(rep, coordinator.serialize(rep), coordinator.specs(rep))
        for _ in range(200):
            if remote.ready(rep, 0.1):
                break
    signed = {i: post(i, rep, "consistency", {"survivors": [1, 2, 3]}).json()["signature"] for i in (1, 2, 3)}
    assert post(1, rep, "consistency", {"survivors": [1, 2]}).json()["error"] in ("secagg_too_few", "secagg_inconsistent")
    body = {"survivors": [1, 2, 3], "dropped": []}
    assert post(1, rep, "unmask", body).json()["error"] == "secagg_malformed"  # no signatures at all
    two = {"1": signed[1], "2": signed[2]}
    assert post(1, rep, "unmask", {**body, "signatures": two}).json()["error"] == "secagg_inconsistent"  # fewer than t
    forged = {**two, "3": signed[2]}  # device 2's signature passed off as device 3's
    response = post(1, rep, "unmask", {**body, "signatures": forged})
    assert response.json()["error"] == "secagg_bad_signature" and "device 3's consistency signature" in response.json()["message"]
    answer = post(1, rep, "unmask", {**body, "signatures": {str(i): s for i, s in signed.items()}})
    assert answer.status_code == 200 and sorted(answer.json()["b"]) == ["1", "2", "3"]  # nothing was spent by the refusals


def test_serve_checks_the_signing_identity_up_front(tmp_path, workdir, capsys):
    import fedsync
    from fedsync.cli import main

    cert, key, ca = tls_files(tmp_path)
    with pytest.raises(ValueError, match=r"peer_ca needs ssl_context=\(certfile, keyfile\)"):
        fedsync.serve(noisy(1, 5), port=0, block=False, peer_ca=ca)
    other = tmp_path / "other"
    other_ca = certs.init_ca(other)
    with pytest.raises(ValueError, match="own certificate would be refused by its peers: .*does not verify against the peer CA"):
        fedsync.serve(noisy(1, 5), port=0, block=False, ssl_context=(cert, key), peer_ca=str(other_ca))
    coordinator_cert, coordinator_key = map(str, certs.issue_coordinator(tmp_path / "pki"))  # clientAuth: not a device
    with pytest.raises(ValueError, match="subjectAltName|does not verify"):
        fedsync.serve(noisy(1, 5), port=0, block=False, ssl_context=(coordinator_cert, coordinator_key), peer_ca=ca)
    assert main(["serve", "device.py:data", "--port", "0", "--peer-ca", ca]) == 2
    assert "--peer-ca needs --certfile and --keyfile" in capsys.readouterr().err
    assert main(["serve", "device.py:data", "--port", "0", "--certfile", cert, "--keyfile", key, "--peer-ca", str(tmp_path / "missing.pem")]) == 2
    assert "peer CA file not found" in capsys.readouterr().err


def test_mangled_certificates_are_refused_naming_the_peer(signed_trio):
    """Every byte of a peer's certificate is the coordinator's to change: each mangled one is a 400, never a 500."""
    import base64

    post, _, _, _ = signed_trio
    rep = 1
    answers = {i: post(i, rep, "keys", {"devices": 3, "id": i, "threshold": 3, "clip": 1.0, "scale": 2**16, "max_samples": 100}).json() for i in (1, 2, 3)}
    der = base64.b64decode(answers[2]["certificate"])
    rng = np.random.default_rng(0)
    mangled = [der[:n] for n in (0, 1, 50, len(der) - 1)] + [b"\x00" * 64, der + b"\x00", b"x" * 5000]
    for _ in range(25):
        copy = bytearray(der)
        copy[int(rng.integers(len(copy)))] ^= 1 << int(rng.integers(8))
        mangled.append(bytes(copy))
    for blob in mangled:
        table = {str(i): a for i, a in answers.items()}
        table["2"] = {**table["2"], "certificate": base64.b64encode(blob).decode()}
        response = post(1, rep, "shares", {"keys": table})
        assert response.status_code == 400, (blob[:20], response.text)
        assert response.json()["error"] == "secagg_malformed" or "device 2" in response.json()["message"], response.text
    assert post(1, rep, "shares", {"keys": {str(i): a for i, a in answers.items()}}).status_code == 200  # nothing was spent
