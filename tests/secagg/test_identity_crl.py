"""Signed secure aggregation honours the peer CA's revocation list: a revoked device's keys are refused."""

from __future__ import annotations

import datetime
import itertools

import numpy as np
import pytest

pytest.importorskip("cryptography")
pytest.importorskip("Crypto")

import fedsync  # noqa: E402
from fedsync import FedArrays, Federated, Remote  # noqa: E402
from fedsync.errors import RoundFailed  # noqa: E402
from fedsync.secagg import SecAgg  # noqa: E402
from fedsync.secagg.identity import Identity  # noqa: E402
from fedsync.wire import certs  # noqa: E402
from tests.support.devices.secagg import model, noisy  # noqa: E402
from tests.support.processes import start_device, stop_all, tls_files  # noqa: E402

_REPS = itertools.count(300, 10)


@pytest.fixture
def pki(tmp_path):
    """Devices d1 (tls_files), d2, d3, d4 of one CA; a coordinator; crl.pem revoking d4."""
    cert, key, ca = tls_files(tmp_path)
    folder = tmp_path / "pki"
    pairs = [(cert, key)] + [tuple(map(str, certs.issue_device(folder, ["127.0.0.1"], name=f"d{i}"))) for i in (2, 3, 4)]
    coordinator = tuple(map(str, certs.issue_coordinator(folder)))
    crl, _ = certs.revoke(folder, ["d4"])
    return {"pairs": pairs, "ca": ca, "crl": str(crl), "coordinator": coordinator, "folder": folder}


def der(path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate(open(path, "rb").read()).public_bytes(serialization.Encoding.DER)


def test_an_identity_with_the_list_refuses_a_revoked_peer_and_believes_the_others(pki, monkeypatch):
    (c1, k1), (c2, _), _, (c4, k4) = pki["pairs"]
    me = Identity(c1, k1, pki["ca"], crl=pki["crl"])
    assert me.verify_peer(der(c2)).name.startswith("CN=")
    with pytest.raises(ValueError, match=r"is refused: its certificate \(serial 0x[0-9a-f]+\) was revoked on"):
        me.verify_peer(der(c4))
    assert Identity(c1, k1, pki["ca"]).verify_peer(der(c4))  # without the list, d4 is still believed
    # A device whose own certificate is revoked would be refused by every peer: it does not start.
    with pytest.raises(ValueError, match="own certificate would be refused by its peers: .*was revoked"):
        Identity(c4, k4, pki["ca"], crl=pki["crl"])
    # A device running past its list's next update believes nobody until it gets a fresh list (fail closed).
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=certs.CRL_DAYS + 1)
    monkeypatch.setattr(certs, "_now", lambda: later)
    with pytest.raises(ValueError, match="expired on"):
        me.verify_peer(der(c2))
    with pytest.raises(ValueError, match="expired on"):  # and does not start with it
        Identity(c1, k1, pki["ca"], crl=pki["crl"])


def test_serve_with_peer_ca_checks_the_list_at_start(pki, tmp_path):
    (c1, k1), *_ = pki["pairs"]
    other = tmp_path / "other"
    certs.init_ca(other)  # the same name, "fedsync CA", another key: its list is a forgery for this CA
    forged, _ = certs.revoke(other, [])
    with pytest.raises(ValueError, match="not signed by that CA's key in peer_ca"):
        fedsync.serve(noisy(1, 5), port=0, block=False, ssl_context=(c1, k1), peer_ca=pki["ca"], crl=str(forged))
    with pytest.raises(OSError, match="cannot read the revocation list"):
        fedsync.serve(noisy(1, 5), port=0, block=False, ssl_context=(c1, k1), peer_ca=pki["ca"], crl=str(tmp_path / "none.pem"))


@pytest.mark.slow
def test_signed_secure_aggregation_refuses_a_revoked_devices_keys(pki):
    """d1..d3 hold the list revoking d4; d4 (its key leaked) does not. Without d4 the round runs; with it, refused."""
    ca, crl = pki["ca"], pki["crl"]
    started = []
    try:
        for seed, (c, k) in zip((1, 2, 3, 4), pki["pairs"]):
            options = {"ssl_context": [c, k], "client_ca": ca, "peer_ca": ca, "secure_aggregation": "required"}
            if seed != 4:
                options["crl"] = crl
            started.append(start_device("tests.support.devices.secagg:noisy", seed, 10 * seed, serve=options))
        urls = [device.url for device in started]

        def round_over(chosen):
            remotes = [Remote(url, cert=pki["coordinator"], verify=ca, timeout=20) for url in chosen]
            data = FedArrays(model())
            with Federated(data, remotes, timeout=30, secure_aggregation=SecAgg(scale=2**16)) as alg:
                alg.repetition = next(_REPS)
                return data, alg.round()

        data, result = round_over(urls[:3])
        assert result.failures == {} and result.samples == 60  # devices with the list believe unrevoked peers
        assert not all((a == 0).all() for a in data.model.values())
        with pytest.raises(RoundFailed) as raised:
            round_over(urls)
        for url in urls[:3]:
            why = raised.value.failures[url]
            assert "secagg_bad_certificate" in why and "device 4's certificate is refused" in why and "revoked" in why, why
    finally:
        stop_all(started)
