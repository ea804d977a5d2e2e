"""Revoked certificates in real TLS handshakes: a device process (serve crl=) and the dial-out Listener (crl=)."""

from __future__ import annotations

import datetime
import ssl

import numpy as np
import pytest
import requests

pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402

import fedsync  # noqa: E402
from fedsync import FedArrays, Federated, Remote  # noqa: E402
from fedsync.errors import RemoteUnavailable  # noqa: E402
from fedsync.gateway.listen import tls_context  # noqa: E402
from fedsync.wire import certs  # noqa: E402
from tests.support.devices.basic import setting  # noqa: E402
from tests.support.processes import start_device, stop_all, tls_files  # noqa: E402


@pytest.fixture
def pki(tmp_path):
    """A device certificate for 127.0.0.1, coordinators 'good' and 'leaked', and a CRL revoking 'leaked'."""
    cert, key, ca = tls_files(tmp_path)
    folder = tmp_path / "pki"
    good = tuple(map(str, certs.issue_coordinator(folder, name="good")))
    leaked = tuple(map(str, certs.issue_coordinator(folder, name="leaked")))
    crl, _ = certs.revoke(folder, ["coordinator-leaked"])
    return {"device": (cert, key), "ca": ca, "good": good, "leaked": leaked, "crl": str(crl), "folder": folder}


def expired_crl(pki, path):
    """A list signed by the right CA whose next update has passed."""
    folder = pki["folder"]
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    built = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - datetime.timedelta(days=40))
        .next_update(now - datetime.timedelta(days=10))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.mark.slow
def test_a_device_process_refuses_a_revoked_coordinator_and_accepts_the_others(pki):
    options = {"ssl_context": list(pki["device"]), "client_ca": pki["ca"], "crl": pki["crl"]}
    device = start_device("tests.support.devices.basic:setting", 1.0, serve=options)
    try:
        # TLS 1.3: the refusal arrives as the "certificate revoked" alert, or as a hang-up, depending on timing.
        with pytest.raises(RemoteUnavailable, match="TLS handshake refused: the device('s revocation list| closed)"):
            Remote(device.url, cert=pki["leaked"], verify=pki["ca"], retries=0, timeout=10).info()
        data = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
        remote = Remote(device.url, cert=pki["good"], verify=pki["ca"], timeout=20)
        with Federated(data, [remote], timeout=30) as alg:
            result = alg.round()
        assert result.answered == [device.url]
        assert np.all(data.model["w"] == 1.0)
    finally:
        stop_all([device])


def test_a_device_without_the_list_still_accepts_the_leaked_certificate(pki):
    """What the list changes: the same device served without crl lets the leaked coordinator in."""
    server = fedsync.serve(setting(1.0), port=0, block=False, ssl_context=pki["device"], client_ca=pki["ca"])
    try:
        assert Remote(server.url, cert=pki["leaked"], verify=pki["ca"], retries=0, timeout=10).info()
    finally:
        server.close()


def test_a_list_that_cannot_vouch_stops_the_start(pki, tmp_path):
    """Fail closed: missing, unreadable, foreign, forged or expired lists are errors, never ignored."""
    device, ca = pki["device"], pki["ca"]

    def start(**options):
        return fedsync.serve(setting(1.0), port=0, block=False, ssl_context=device, client_ca=ca, **options)

    with pytest.raises(OSError, match="cannot read the revocation list"):
        start(crl=str(tmp_path / "missing.pem"))
    unreadable = tmp_path / "folder.pem"
    unreadable.mkdir()  # reading a folder fails whatever the user's rights (tests may run as root)
    with pytest.raises(OSError, match="cannot read the revocation list"):
        start(crl=str(unreadable))
    with pytest.raises(ValueError, match="expired on"):
        start(crl=expired_crl(pki, tmp_path / "expired.pem"))
    other = tmp_path / "other"
    certs.init_ca(other, name="another CA")
    other_crl, _ = certs.revoke(other, [])
    with pytest.raises(ValueError, match="belong to neither client_ca nor peer_ca"):
        start(crl=str(other_crl))
    with pytest.raises(ValueError, match="crl needs client_ca or peer_ca"):
        fedsync.serve(setting(1.0), port=0, block=False, ssl_context=device, crl=pki["crl"])
    with pytest.raises(ValueError, match="crl needs client_ca"):
        tls_context(device, None, pki["crl"])
    context = tls_context(device, ca, pki["crl"])
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF and context.verify_mode == ssl.CERT_REQUIRED


def test_the_dial_out_listener_refuses_a_revoked_client_certificate_in_the_handshake(pki, tmp_path):
    pytest.importorskip("aiohttp")
    from fedsync.transports.dial.listener import Listener

    with pytest.raises(ValueError, match="expired on"):
        Listener("127.0.0.1", 0, devices={"good": "t"}, ssl_context=pki["device"], client_ca=pki["ca"], crl=expired_crl(pki, tmp_path / "expired.pem"))
    with Listener("127.0.0.1", 0, devices={"good": "t"}, ssl_context=pki["device"], client_ca=pki["ca"], crl=pki["crl"]) as listener:
        with pytest.raises(requests.exceptions.ConnectionError):  # SSLError or a reset: the handshake refused it
            requests.get(f"{listener.url}/dial/1/poll", cert=pki["leaked"], verify=pki["ca"], timeout=10)
        answered = requests.get(f"{listener.url}/dial/1/poll", cert=pki["good"], verify=pki["ca"], timeout=10)
        assert 200 <= answered.status_code < 500  # past TLS: HTTP answers, whatever it thinks of the request


def test_a_coordinator_with_the_list_refuses_a_device_whose_certificate_is_revoked(pki, tmp_path):
    """A leaked device key lets its holder pose as that device: Remote(crl=) refuses it in the handshake."""
    folder = pki["folder"]
    leaked_device = tuple(map(str, certs.issue_device(folder, ["127.0.0.1"], name="stolen")))
    certs.revoke(folder, ["device-stolen"])
    servers = [fedsync.serve(setting(1.0), port=0, block=False, ssl_context=pair) for pair in (pki["device"], leaked_device)]
    try:
        honest, impostor = (server.url for server in servers)
        with pytest.raises(RemoteUnavailable, match="TLS certificate revoked: the device's certificate is on the revocation list"):
            Remote(impostor, verify=pki["ca"], crl=pki["crl"], retries=0, timeout=10).info()
        assert Remote(impostor, verify=pki["ca"], retries=0, timeout=10).info()  # what the list changes
        assert Remote(honest, verify=pki["ca"], crl=pki["crl"], retries=0, timeout=10).info()
    finally:
        for server in servers:
            server.close()
    with pytest.raises(ValueError, match="crl needs verify=CA_FILE"):
        Remote(honest, crl=pki["crl"])
    with pytest.raises(ValueError, match="expired on"):
        Remote(honest, verify=pki["ca"], crl=expired_crl(pki, tmp_path / "expired.pem"))
