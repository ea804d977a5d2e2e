"""Mutual TLS: `fedsync certs` makes a CA and certificates; a device with --client-ca accepts only coordinators it trusts."""

from __future__ import annotations

import ipaddress
import os
import stat

import numpy as np
import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedsync import FedArrays, Federated, Remote
from fedsync.cli import main
from fedsync.errors import RemoteUnavailable, RoundFailed


@pytest.fixture
def pki(tmp_path):
    """A CA with a device certificate for 127.0.0.1 and a coordinator certificate, made with the CLI."""
    folder = tmp_path / "pki"
    assert main(["certs", "init", str(folder)]) == 0
    assert main(["certs", "device", str(folder), "--host", "127.0.0.1", "--host", "localhost"]) == 0
    assert main(["certs", "coordinator", str(folder)]) == 0
    return folder


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_make_a_ca_a_server_and_a_client_certificate(pki):
    ca, device, coordinator = load(pki / "ca.pem"), load(pki / "device-127.0.0.1.pem"), load(pki / "coordinator-coordinator.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (device, coordinator):
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)  # raises if the signature does not check
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = device.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert list(device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(coordinator.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for key in ("ca-key.pem", "device-127.0.0.1-key.pem", "coordinator-coordinator-key.pem"):
        assert stat.S_IMODE(os.stat(pki / key).st_mode) == 0o600


def test_certs_never_overwrite_and_explain_what_is_missing(pki, tmp_path, capsys):
    before = (pki / "ca-key.pem").read_bytes()
    assert main(["certs", "init", str(pki)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert (pki / "ca-key.pem").read_bytes() == before
    assert main(["certs", "coordinator", str(tmp_path / "empty")]) == 2
    assert "fedsync certs init" in capsys.readouterr().err
    assert main(["certs", "device", str(pki), "--host", "not a host!"]) == 2
    assert "neither an IP address nor a DNS name" in capsys.readouterr().err


def mtls_device(serve, pki):
    _, url = serve("device.py:data", "--certfile", str(pki / "device-127.0.0.1.pem"), "--keyfile", str(pki / "device-127.0.0.1-key.pem"), "--client-ca", str(pki / "ca.pem"))
    return url


def test_a_round_over_mutual_tls(serve, pki):
    url = mtls_device(serve, pki)
    cert = (str(pki / "coordinator-coordinator.pem"), str(pki / "coordinator-coordinator-key.pem"))
    data = FedArrays({"w": np.zeros((2, 3), np.float32)})
    with Federated(data, [Remote(url, cert=cert, verify=str(pki / "ca.pem"), timeout=20)], timeout=30) as alg:
        result = alg.round()
    assert result.answered == [url] and result.samples == 3
    assert np.all(data.model["w"] == 1.0)


def test_a_coordinator_without_a_certificate_is_refused_in_the_handshake(serve, pki):
    url = mtls_device(serve, pki)
    # TLS 1.3 reports the device's refusal as an alert or as a hang-up, depending on timing: both say why.
    with pytest.raises(RemoteUnavailable, match=r"TLS handshake refused: .*client certificate"):
        Remote(url, verify=str(pki / "ca.pem"), retries=0, timeout=10).info()
    with Federated(FedArrays({"w": np.zeros((2, 3), np.float32)}), [Remote(url, verify=str(pki / "ca.pem"), retries=0, timeout=10)], timeout=20) as alg:
        with pytest.raises(RoundFailed, match=r"TLS handshake refused: .*client certificate"):
            alg.round()


def test_a_coordinator_certificate_from_another_ca_is_refused_in_the_handshake(serve, pki, tmp_path):
    url = mtls_device(serve, pki)
    other = tmp_path / "other"
    assert main(["certs", "init", str(other)]) == 0
    assert main(["certs", "coordinator", str(other), "--name", "intruder"]) == 0
    cert = (str(other / "coordinator-intruder.pem"), str(other / "coordinator-intruder-key.pem"))
    with pytest.raises(RemoteUnavailable, match="TLS handshake refused"):
        Remote(url, cert=cert, verify=str(pki / "ca.pem"), retries=0, timeout=10).info()


def test_client_ca_needs_tls_and_a_readable_file(workdir, pki, capsys):
    assert main(["serve", "device.py:data", "--port", "0", "--client-ca", str(pki / "ca.pem")]) == 2
    assert "client_ca needs TLS" in capsys.readouterr().err
    tls = ["--certfile", str(pki / "device-127.0.0.1.pem"), "--keyfile", str(pki / "device-127.0.0.1-key.pem")]
    assert main(["serve", "device.py:data", "--port", "0", *tls, "--client-ca", str(workdir / "missing.pem")]) == 2
    assert "client CA file not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="fedsync certs coordinator"):
        Remote("https://127.0.0.1:1", cert=(str(workdir / "no.pem"), str(workdir / "no-key.pem")))


def test_fedsync_info_trusts_cafile_and_presents_a_client_certificate(serve, pki, capsys):
    url = mtls_device(serve, pki)
    cert = ["--cert", str(pki / "coordinator-coordinator.pem"), "--key", str(pki / "coordinator-coordinator-key.pem")]
    assert main(["info", url, "--cafile", str(pki / "ca.pem"), *cert]) == 0
    assert f"device         {url}" in capsys.readouterr().out
    # Without --cafile the device's certificate is not trusted, and the error says so (not "cannot connect").
    assert main(["info", url, *cert]) == 1
    err = capsys.readouterr().err
    assert "TLS certificate not trusted (pass --cafile with the device's certificate or its CA)" in err  # its own flags
    assert main(["info", url, "--cafile", str(pki / "ca.pem")]) == 1
    err = capsys.readouterr().err
    # TLS 1.3 reports the refusal as a hang-up or as a certificate_required alert: both hints name the flags
    assert "client certificate" in err and "pass --cert CERTFILE --key KEYFILE signed by its CA" in err, err
    assert main(["info", url.replace("https://", "http://"), "--cafile", str(pki / "ca.pem"), *cert]) == 1
    assert "use an https:// URL" in capsys.readouterr().err


def test_plain_http_to_a_tls_device_is_told_to_use_https(tmp_path):
    """As nginx does: a plain-HTTP request on the TLS port gets a 400 saying so, not a dropped connection."""
    import fedsync
    from fedsync import Remote
    from fedsync.errors import RemoteError
    from tests.support.processes import tls_files
    from tests.support.seed_fedfloat import FedFloat

    cert, key, ca = tls_files(tmp_path)
    with fedsync.serve(FedFloat(1.0), port=0, block=False, ssl_context=(cert, key)) as server:
        plain = server.url.replace("https://", "http://")
        answer = requests.get(plain + "/info", timeout=10)
        assert answer.status_code == 400 and answer.json()["error"] == "tls_required"
        with pytest.raises(RemoteError, match="use an https:// URL"):
            Remote(plain, retries=0).info()
        assert Remote(server.url, verify=ca).info()["specs"] == "Float"  # and the device still serves HTTPS
