"""`fedsync certs revoke` and `fedsync serve --crl`: a leaked coordinator key is revoked and refused."""

from __future__ import annotations

import pytest

pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402

from fedsync import Remote  # noqa: E402
from fedsync.cli import main  # noqa: E402
from fedsync.errors import RemoteUnavailable  # noqa: E402


@pytest.fixture
def pki(tmp_path):
    folder = tmp_path / "pki"
    assert main(["certs", "init", str(folder)]) == 0
    assert main(["certs", "device", str(folder), "--host", "127.0.0.1"]) == 0
    assert main(["certs", "coordinator", str(folder), "--name", "good"]) == 0
    assert main(["certs", "coordinator", str(folder), "--name", "leaked"]) == 0
    return folder


def pair(folder, name):
    return str(folder / f"coordinator-{name}.pem"), str(folder / f"coordinator-{name}-key.pem")


def test_certs_revoke_writes_the_list_and_says_how_to_use_and_renew_it(pki, capsys):
    capsys.readouterr()
    assert main(["certs", "revoke", str(pki), "coordinator-leaked"]) == 0
    out = capsys.readouterr().out
    serial = x509.load_pem_x509_certificate((pki / "coordinator-leaked.pem").read_bytes()).serial_number
    assert f"revoked: serial {serial:#x}" in out and "valid 30 days" in out and f"--crl {pki / 'crl.pem'}" in out
    listed = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert [entry.serial_number for entry in listed] == [serial]
    assert main(["certs", "revoke", str(pki), "--days", "7"]) == 0  # renewal: same entries, a new next update
    assert "valid 7 days" in capsys.readouterr().out
    assert [e.serial_number for e in x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())] == [serial]
    assert main(["certs", "revoke", str(pki), "nobody"]) == 2
    assert "no certificate 'nobody'" in capsys.readouterr().err


def test_serve_refuses_to_start_on_a_list_that_cannot_vouch(pki, workdir, capsys, tmp_path):
    device = ["--certfile", str(pki / "device-127.0.0.1.pem"), "--keyfile", str(pki / "device-127.0.0.1-key.pem")]
    base = ["serve", "device.py:data", "--port", "0", *device, "--client-ca", str(pki / "ca.pem")]
    assert main([*base, "--crl", str(tmp_path / "missing.pem")]) != 0
    assert "cannot read the revocation list" in capsys.readouterr().err
    (tmp_path / "bad.pem").write_text("garbage")
    assert main([*base, "--crl", str(tmp_path / "bad.pem")]) == 2
    assert "not a PEM certificate revocation list" in capsys.readouterr().err
    assert main(["serve", "device.py:data", "--port", "0", *device, "--crl", str(tmp_path / "bad.pem")]) == 2
    assert "crl needs client_ca or peer_ca" in capsys.readouterr().err


@pytest.mark.slow
def test_fedsync_serve_with_crl_refuses_the_revoked_coordinator_in_the_handshake(pki, serve):
    assert main(["certs", "revoke", str(pki), "leaked"]) == 0
    _, url = serve(
        "device.py:data", "--certfile", str(pki / "device-127.0.0.1.pem"), "--keyfile", str(pki / "device-127.0.0.1-key.pem"),
        "--client-ca", str(pki / "ca.pem"), "--crl", str(pki / "crl.pem"),
    )  # fmt: skip
    # TLS 1.3: the device's refusal arrives as its "certificate revoked" alert, or as a hang-up, depending on timing.
    with pytest.raises(RemoteUnavailable, match="TLS handshake refused: the device('s revocation list| closed)"):
        Remote(url, cert=pair(pki, "leaked"), verify=str(pki / "ca.pem"), retries=0, timeout=10).info()
    assert Remote(url, cert=pair(pki, "good"), verify=str(pki / "ca.pem"), retries=0, timeout=10).info()
