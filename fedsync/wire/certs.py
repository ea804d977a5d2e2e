"""Certificates for mutual TLS in one command each: a CA, device certificates, coordinator certificates.

Made with the ``cryptography`` package (``pip install 'fedsync[tls]'``), never by
hand: ECDSA P-256 keys, SHA-256 signatures, X.509 v3 with the extensions TLS
clients check (basic constraints, key usage, extended key usage, subject
alternative names). Layout of a folder::

    ca.pem  ca-key.pem                       the certificate authority (keep ca-key.pem offline)
    device-NAME.pem  device-NAME-key.pem     a device's server certificate (serve --certfile/--keyfile)
    coordinator-NAME.pem  coordinator-NAME-key.pem   a coordinator's client certificate (Remote(cert=...))

A device started with ``serve(..., client_ca="ca.pem")`` accepts only
coordinators presenting a certificate signed by that CA; a coordinator passes
``Remote(url, cert=(certfile, keyfile), verify="ca.pem")``. Private keys are
written with mode 0600 and never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["init_ca", "issue_device", "issue_coordinator", "CA_DAYS", "LEAF_DAYS"]

CA_DAYS = 3650
"""Days a CA made by :func:`init_ca` is valid (10 years)."""

LEAF_DAYS = 825
"""Days a device or coordinator certificate is valid (the longest browsers accept for servers)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def init_ca(folder: str | os.PathLike, *, name: str = "fedsync CA", days: int = CA_DAYS) -> Path:
    """Create a certificate authority in ``folder``: ``ca.pem`` and ``ca-key.pem``.

    Returns:
        The path of ``ca.pem``, to give devices as ``client_ca`` and coordinators as ``verify``.

    Raises:
        FileExistsError: ``folder`` already holds a CA (nothing is overwritten).
        ImportError: the ``cryptography`` package is missing.
    """
    x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID = _crypto()
    folder = Path(folder)
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    _refuse_existing(cert_path, key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(folder, cert_path, key_path, cert, key)
    return cert_path


def issue_device(
    folder: str | os.PathLike, hosts: Sequence[str], *, name: str | None = None, days: int = LEAF_DAYS
) -> tuple[Path, Path]:
    """A device's server certificate for ``hosts`` (DNS names or IP addresses), signed by the CA in ``folder``.

    Returns:
        ``(certfile, keyfile)``: pass them to ``fedsync serve --certfile/--keyfile``.

    Raises:
        ValueError: no host, or a host that is neither a DNS name nor an IP address.
        FileNotFoundError: ``folder`` has no CA (run :func:`init_ca` first).
        FileExistsError: the certificate exists already.
    """
    if not hosts:
        raise ValueError(
            "a device certificate needs at least one host, e.g. --host 192.0.2.10 --host device1.example.org"
        )
    x509, *_ = _crypto()
    names: list[Any] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.fullmatch(
                r"(?=.{1,253}$)([A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
                host,
            ):
                raise ValueError(
                    f"host {host!r} is neither an IP address nor a DNS name; e.g. 192.0.2.10 or device1.example.org"
                ) from None
            names.append(x509.DNSName(host))
    label = _checked_name(name or hosts[0].replace(":", "-"))
    return _issue(Path(folder), f"device-{label}", hosts[0], names, server=True, days=days)


def issue_coordinator(
    folder: str | os.PathLike, *, name: str = "coordinator", days: int = LEAF_DAYS
) -> tuple[Path, Path]:
    """A coordinator's client certificate, signed by the CA in ``folder``.

    Returns:
        ``(certfile, keyfile)``: pass them as ``Remote(url, cert=(certfile, keyfile), verify=ca.pem)``.

    Raises:
        FileNotFoundError: ``folder`` has no CA (run :func:`init_ca` first).
        FileExistsError: the certificate exists already.
    """
    label = _checked_name(name)
    return _issue(Path(folder), f"coordinator-{label}", label, [], server=False, days=days)


def _issue(
    folder: Path, stem: str, common_name: str, names: list[Any], *, server: bool, days: int
) -> tuple[Path, Path]:
    x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID = _crypto()
    ca_cert_path, ca_key_path = folder / "ca.pem", folder / "ca-key.pem"
    if not ca_cert_path.is_file() or not ca_key_path.is_file():
        raise FileNotFoundError(f"no CA in {folder}: create one first with `fedsync certs init {folder}`")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    _refuse_existing(cert_path, key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(folder, cert_path, key_path, cert, key)
    return cert_path, key_path


def _crypto() -> tuple[Any, ...]:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise ImportError("certificates need the cryptography package: pip install 'fedsync[tls]'") from None
    return x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"certificate name {name!r} must be a word of letters, digits, '.', '_' or '-' (at most 63), e.g. 'device1'"
        )
    return name


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise FileExistsError(
                f"{path} exists already; fedsync never overwrites keys: remove it, or pick another --name"
            )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(folder: Path, cert_path: Path, key_path: Path, cert: Any, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    folder.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # The key file is created 0600: it is never readable by others, not even for a moment.
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
