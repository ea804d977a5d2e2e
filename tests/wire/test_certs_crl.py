"""Revocation lists made by fedsync.wire.certs.revoke and checked by crls_for / is_revoked (the cryptography package)."""

from __future__ import annotations

import datetime

import pytest

pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402

from fedsync.wire import certs  # noqa: E402


@pytest.fixture
def pki(tmp_path):
    folder = tmp_path / "pki"
    certs.init_ca(folder)
    certs.issue_device(folder, ["127.0.0.1"], name="d1")
    certs.issue_device(folder, ["127.0.0.1"], name="d2")
    certs.issue_coordinator(folder)
    return folder


def cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def crl_of(folder):
    return x509.load_pem_x509_crl((folder / "crl.pem").read_bytes())


def handmade_crl(folder, path, *, last_days, next_days, key_folder=None):
    """A CRL of ``folder``'s CA name with the given dates, signed by ``key_folder``'s CA key (default: the same)."""
    ca = cert(folder / "ca.pem")
    key = serialization.load_pem_private_key(((key_folder or folder) / "ca-key.pem").read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    built = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now + datetime.timedelta(days=last_days))
        .next_update(now + datetime.timedelta(days=next_days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    return path


def test_revoke_lists_a_certificate_by_file_name_or_serial_signed_by_the_ca(pki):
    ca = cert(pki / "ca.pem")
    d1, d2 = cert(pki / "device-d1.pem"), cert(pki / "device-d2.pem")
    path, added = certs.revoke(pki, ["d1"])
    assert path == pki / "crl.pem" and added == [d1.serial_number]
    listed = crl_of(pki)
    assert listed.is_signature_valid(ca.public_key()) and listed.issuer == ca.subject
    assert listed.get_revoked_certificate_by_serial_number(d1.serial_number) is not None
    assert listed.get_revoked_certificate_by_serial_number(d2.serial_number) is None
    days = (listed.next_update_utc - listed.last_update_utc).days
    assert days == certs.CRL_DAYS  # 30 days and the 5 minutes it is backdated by
    # The same certificate again adds nothing; by file, by stem and by serial (hex) all work; entries accumulate.
    assert certs.revoke(pki, [str(pki / "device-d1.pem")])[1] == []
    assert certs.revoke(pki, ["coordinator-coordinator"])[1] == [cert(pki / "coordinator-coordinator.pem").serial_number]
    assert certs.revoke(pki, [f"{d2.serial_number:#x}"])[1] == [d2.serial_number]
    assert certs.revoke(pki, ["4660"])[1] == [4660]  # a certificate whose file is gone: its decimal serial
    later = crl_of(pki)
    assert len(later) == 4
    number = later.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    # Renewing (no names) keeps every entry, re-signs and counts up the CRL number.
    certs.revoke(pki, [], days=90)
    renewed = crl_of(pki)
    assert {e.serial_number for e in renewed} == {e.serial_number for e in later}
    assert renewed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert (renewed.next_update_utc - renewed.last_update_utc).days == 90


def test_revoke_refuses_what_it_cannot_revoke_and_changes_nothing(pki, tmp_path):
    other = tmp_path / "other"
    certs.init_ca(other)
    stranger, _ = certs.issue_device(other, ["127.0.0.1"], name="x")
    with pytest.raises(ValueError, match="not issued by the CA in"):
        certs.revoke(pki, [str(stranger)])
    with pytest.raises(ValueError, match="is the CA itself"):
        certs.revoke(pki, ["ca.pem"])
    with pytest.raises(FileNotFoundError, match="no certificate 'nobody' in .*serial number"):
        certs.revoke(pki, ["nobody"])
    with pytest.raises(FileNotFoundError, match="no CA in"):
        certs.revoke(tmp_path / "empty", ["d1"])
    with pytest.raises(ValueError, match="days must be an integer"):
        certs.revoke(pki, [], days=0)
    assert not (pki / "crl.pem").exists()
    # A crl.pem that is not this CA's is never extended (nor silently replaced).
    certs.revoke(other, [])
    (pki / "crl.pem").write_bytes((other / "crl.pem").read_bytes())
    with pytest.raises(ValueError, match="is not signed by the CA in"):
        certs.revoke(pki, ["d1"])
    assert (pki / "crl.pem").read_bytes() == (other / "crl.pem").read_bytes()


def test_crls_for_fails_closed_naming_the_cause(pki, tmp_path):
    ca = pki / "ca.pem"
    with pytest.raises(OSError, match="cannot read the revocation list .*missing.pem.*fedsync certs revoke"):
        certs.crls_for(tmp_path / "missing.pem", ca, "client_ca")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a CRL")
    with pytest.raises(ValueError, match="is not a PEM certificate revocation list"):
        certs.crls_for(garbage, ca, "client_ca")
    expired = handmade_crl(pki, tmp_path / "expired.pem", last_days=-40, next_days=-10)
    with pytest.raises(ValueError, match="expired on .*renew it with `fedsync certs revoke DIR`"):
        certs.crls_for(expired, ca, "client_ca")
    future = handmade_crl(pki, tmp_path / "future.pem", last_days=2, next_days=30)
    with pytest.raises(ValueError, match="in the future"):
        certs.crls_for(future, ca, "client_ca")
    # Another CA of the same name ("fedsync CA") signs a list for this CA's name: a forgery, refused.
    impostor = tmp_path / "impostor"
    certs.init_ca(impostor)
    forged = handmade_crl(pki, tmp_path / "forged.pem", last_days=0, next_days=30, key_folder=impostor)
    with pytest.raises(ValueError, match="not signed by that CA's key in client_ca"):
        certs.crls_for(forged, ca, "client_ca")
    # A list of another CA only: this CA has none, which is an error too (not "nothing revoked").
    certs.revoke(impostor, [])
    other_name = tmp_path / "named"
    certs.init_ca(other_name, name="another CA")
    certs.revoke(other_name, [])
    with pytest.raises(ValueError, match="no revocation list of the CA CN=fedsync CA"):
        certs.crls_for(other_name / "crl.pem", ca, "peer_ca")
    assert certs.unused_crls(other_name / "crl.pem", [ca, None]) == [other_name / "crl.pem"]


def test_is_revoked_names_the_revoked_certificate_and_refuses_all_once_the_list_expires(pki, monkeypatch):
    certs.revoke(pki, ["d1"])
    lists = certs.crls_for(pki / "crl.pem", pki / "ca.pem", "peer_ca")
    d1, d2 = cert(pki / "device-d1.pem"), cert(pki / "device-d2.pem")
    assert "was revoked on" in certs.is_revoked(d1, lists)
    assert f"{d1.serial_number:#x}" in certs.is_revoked(d1, lists)
    assert certs.is_revoked(d2, lists) is None
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=certs.CRL_DAYS + 1)
    monkeypatch.setattr(certs, "_now", lambda: later)  # a device running past its list's next update
    assert "expired on" in certs.is_revoked(d2, lists)
