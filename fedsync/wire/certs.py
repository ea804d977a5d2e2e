"""Certificates for mutual TLS in one command each: a CA, device certificates, coordinator certificates.

Made with the ``cryptography`` package (``pip install 'fedsync[tls]'``), never by
hand: ECDSA P-256 keys, SHA-256 signatures, X.509 v3 with the extensions TLS
clients check (basic constraints, key usage, extended key usage, subject
alternative names). Layout of a folder::

    ca.pem  ca-key.pem                       the certificate authority (keep ca-key.pem offline)
    device-NAME.pem  device-NAME-key.pem     a device's server certificate (serve --certfile/--keyfile)
    coordinator-NAME.pem  coordinator-NAME-key.pem   a coordinator's client certificate (Remote(cert=...))

    crl.pem                                  the CA's revocation list (``fedsync certs revoke``)

A device started with ``serve(..., client_ca="ca.pem")`` accepts only
coordinators presenting a certificate signed by that CA; a coordinator passes
``Remote(url, cert=(certfile, keyfile), verify="ca.pem")``. Private keys are
written with mode 0600 and never overwritten.

A certificate whose key leaked is revoked with :func:`revoke`: it is added to the
CA's certificate revocation list ``crl.pem`` (RFC 5280, signed by the CA key), which
is valid for ``CRL_DAYS`` and renewed by the same call. ``serve(..., crl="crl.pem")``
refuses revoked coordinators in the TLS handshake and revoked devices' keys in signed
secure aggregation; :func:`crls_for` checks a list before it is used (fail closed).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._util.checks import is_int

__all__ = [
    "init_ca",
    "issue_device",
    "issue_coordinator",
    "revoke",
    "crls_for",
    "unused_crls",
    "is_revoked",
    "CA_DAYS",
    "LEAF_DAYS",
    "CRL_DAYS",
    "MAX_CRL",
]

CA_DAYS = 3650
"""Days a CA made by :func:`init_ca` is valid (10 years)."""

LEAF_DAYS = 825
"""Days a device or coordinator certificate is valid (the longest browsers accept for servers)."""

CRL_DAYS = 30
"""Days a revocation list made by :func:`revoke` is valid (its ``next_update``): renew it before, with the
same command; a device given an older one refuses to start, and a running one refuses every peer."""

MAX_CRL = 16 << 20
"""The largest revocation list file read, in bytes (a CRL entry takes about 40)."""

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


def revoke(folder: str | os.PathLike, names: Sequence[str] = (), *, days: int = CRL_DAYS) -> tuple[Path, list[int]]:
    """Revoke certificates of the CA in ``folder``: add them to ``folder/crl.pem`` and sign it anew.

    Each name is a certificate's file (``device-HOST.pem``, as given, or in ``folder``), its stem
    (``device-HOST``, ``coordinator-NAME``), the name given to ``fedsync certs`` (``HOST``,
    ``NAME``), or its serial number (decimal, or hex as ``0x...`` or ``aa:bb:...``, for a
    certificate whose file is gone). With no names the list is renewed: the same entries,
    a fresh ``next_update`` ``days`` from now. Entries already in the list stay.

    Returns:
        ``(crl path, serials added)`` (already revoked ones are not added twice).

    Raises:
        FileNotFoundError: ``folder`` has no CA, or a name matches no certificate.
        ValueError: a name is ambiguous, a certificate was not issued by this CA (or is the CA),
            the existing ``crl.pem`` is not this CA's, or ``days`` is not a positive integer.
        ImportError: the ``cryptography`` package is missing.
    """
    x509, hashes, serialization, *_ = _crypto()
    if not is_int(days) or not 0 < days <= CA_DAYS:
        raise ValueError(f"days must be an integer from 1 to {CA_DAYS}, got {days!r}")
    folder = Path(folder)
    ca_cert_path, ca_key_path = folder / "ca.pem", folder / "ca-key.pem"
    if not ca_cert_path.is_file() or not ca_key_path.is_file():
        raise FileNotFoundError(
            f"no CA in {folder} (ca.pem and ca-key.pem): revoke on the machine that issued the certificates"
        )
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    crl_path = folder / "crl.pem"
    entries: dict[int, Any] = {}
    number = 0
    if crl_path.exists():
        old = _read_crl(crl_path)
        if old.issuer != ca_cert.subject or not old.is_signature_valid(ca_cert.public_key()):
            raise ValueError(
                f"{crl_path} is not signed by the CA in {folder}: move it away (it is not this CA's list) and run again"
            )
        entries = {entry.serial_number: entry for entry in old}
        try:
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = 0
    now = _now()
    added = []
    for name in names:
        serial = _serial_to_revoke(folder, name, ca_cert)
        if serial not in entries:
            entries[serial] = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            added.append(serial)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))  # devices whose clocks lag a little accept it
        .next_update(now + datetime.timedelta(days=days))
        .add_extension(x509.CRLNumber(number + 1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    for entry in entries.values():
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    from .._util.files import write_atomically

    write_atomically(crl_path, crl.public_bytes(serialization.Encoding.PEM))
    return crl_path, added


def crls_for(
    crl: str | os.PathLike | Sequence[str | os.PathLike], ca: str | os.PathLike, what: str
) -> list[tuple[Path, Any]]:
    """The revocation lists among ``crl`` that the CA(s) in the PEM file ``ca`` issued, each checked now.

    Checked: each file reads as a PEM CRL; one whose issuer is a CA of ``ca`` is signed by that
    CA's key and current (``last_update`` passed, ``next_update`` not); every CA of ``ca``
    has one. Lists of other CAs are left for the caller (see :func:`unused_crls`).

    Args:
        crl: a CRL file (PEM) or several (one per CA, when client and peer CAs differ).
        ca: the CA file the lists are for.
        what: the option ``ca`` came from (``"client_ca"``, ``"peer_ca"``), named in errors.

    Returns:
        ``(path, list)`` of each list of ``ca``'s CAs: the path for ``SSLContext.load_verify_locations``,
        the loaded list for :func:`is_revoked` (loaded once: a renewed file is read at the next start).

    Raises:
        OSError: a file is missing or unreadable.
        ValueError: not a CRL, not signed by its CA, not current, or a CA of ``ca`` without a list.
        ImportError: the ``cryptography`` package is missing.
    """
    x509, *_ = _crypto()
    roots = _read_cas(ca, what)
    found: list[tuple[Path, Any]] = []
    covered = set()
    loaded_all = _read_crls(crl)
    for path, loaded in loaded_all:
        issuers = [root for root in roots if root.subject == loaded.issuer]
        if not issuers:
            continue
        if not any(loaded.is_signature_valid(root.public_key()) for root in issuers):
            raise ValueError(
                f"the revocation list {path} names {loaded.issuer.rfc4514_string()} as its issuer but is not "
                f"signed by that CA's key in {what} {os.fspath(ca)!r}: a forged list, or another CA's of the same "
                "name; make it with `fedsync certs revoke DIR` where DIR holds this CA"
            )
        _check_current(path, loaded)
        found.append((path, loaded))
        covered.add(loaded.issuer)
    missing = [root.subject.rfc4514_string() for root in roots if root.subject not in covered]
    if missing:
        raise ValueError(
            f"no revocation list of the CA {', '.join(missing)} ({what} {os.fspath(ca)!r}) among "
            f"{[os.fspath(p) for p, _ in loaded_all]}: make one with `fedsync certs revoke DIR` "
            "(no names: an empty list) and pass its crl.pem"
        )
    return found


def unused_crls(
    crl: str | os.PathLike | Sequence[str | os.PathLike], cas: Sequence[str | os.PathLike | None]
) -> list[Path]:
    """The lists among ``crl`` issued by none of the CA files ``cas`` (``None`` entries skipped): mistakes to report.

    Raises:
        OSError, ValueError: as :func:`crls_for` for a file that cannot be read as a CRL or CA.
    """
    roots = [root.subject for ca in cas if ca is not None for root in _read_cas(ca, "CA")]
    return [path for path, loaded in _read_crls(crl) if loaded.issuer not in roots]


def is_revoked(certificate: Any, crls: Sequence[tuple[Path, Any]]) -> str | None:
    """Why ``certificate`` (a cryptography ``x509.Certificate``) is refused by the lists ``crls``
    (as :func:`crls_for` returns them), or ``None``.

    Each list is checked to be still current: one past its ``next_update`` refuses
    everyone of its CA (fail closed) rather than vouching for what it no longer covers.
    """
    for path, loaded in crls:
        if loaded.issuer != certificate.issuer:
            continue
        try:
            _check_current(path, loaded)
        except ValueError as exc:
            return str(exc)
        entry = loaded.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is not None:
            when = _utc(entry, "revocation_date")
            return f"its certificate (serial {certificate.serial_number:#x}) was revoked on {when:%Y-%m-%d} ({path})"
    return None


def _read_cas(ca: str | os.PathLike, what: str) -> list[Any]:
    x509, *_ = _crypto()
    try:
        with open(ca, "rb") as f:
            data = f.read(MAX_CRL + 1)
        return list(x509.load_pem_x509_certificates(data))
    except OSError as exc:
        raise OSError(f"cannot read {what} {os.fspath(ca)!r} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"{what} {os.fspath(ca)!r} holds no PEM certificate ({exc})") from None


def _read_crls(crl: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[Path, Any]]:
    paths = [crl] if isinstance(crl, (str, os.PathLike)) else list(crl)
    if not paths:
        raise ValueError("crl is an empty list; give the crl.pem made by `fedsync certs revoke DIR`")
    return [(Path(p), _read_crl(Path(p))) for p in paths]


def _read_crl(path: Path) -> Any:
    """The CRL in ``path`` (PEM), at most ``MAX_CRL`` bytes."""
    x509, *_ = _crypto()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CRL + 1)
    except OSError as exc:
        raise OSError(
            f"cannot read the revocation list {path} ({exc.strerror or exc}); "
            "make it with `fedsync certs revoke DIR` (no names: an empty list)"
        ) from None
    if len(data) > MAX_CRL:
        raise ValueError(f"the revocation list {path} is over {MAX_CRL} bytes; it is not read")
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise ValueError(
            f"{path} is not a PEM certificate revocation list ({exc}); give the crl.pem of `fedsync certs revoke`"
        ) from None


def _check_current(path: Path, loaded: Any) -> None:
    now = _now()
    last, following = _utc(loaded, "last_update"), _utc(loaded, "next_update")
    if following is None:
        raise ValueError(f"the revocation list {path} has no next update date; make it with `fedsync certs revoke`")
    if now >= following:
        raise ValueError(
            f"the revocation list {path} expired on {following:%Y-%m-%d %H:%M} UTC (its next update): renew it "
            "with `fedsync certs revoke DIR` on the CA's machine and restart with the new crl.pem"
        )
    if last is not None and now < last:
        raise ValueError(
            f"the revocation list {path} is dated {last:%Y-%m-%d %H:%M} UTC, in the future: check the clock"
        )


def _utc(obj: Any, field: str) -> Any:
    """``obj.<field>_utc`` (cryptography >= 42), or the naive UTC ``obj.<field>`` made aware."""
    value = getattr(obj, f"{field}_utc", None)
    if value is None:
        naive = getattr(obj, field, None)
        value = None if naive is None else naive.replace(tzinfo=datetime.timezone.utc)
    return value


def _serial_to_revoke(folder: Path, name: str, ca_cert: Any) -> int:
    """The serial number ``name`` stands for (see :func:`revoke`), its certificate checked to be this CA's."""
    x509, *_ = _crypto()
    if not isinstance(name, str) or not name or len(name) > 300:
        raise ValueError(f"a certificate to revoke is named by its file or serial number, got {name!r}")
    candidates = [Path(name), folder / name, folder / f"{name}.pem"]
    candidates += [folder / f"{kind}-{name}.pem" for kind in ("device", "coordinator")]
    found = list(dict.fromkeys(p.resolve() for p in candidates if p.is_file() and not p.name.endswith("-key.pem")))
    if len(found) > 1:
        raise ValueError(f"{name!r} names several certificates ({', '.join(map(str, found))}): give the file")
    if found:
        try:
            certificate = x509.load_pem_x509_certificate(found[0].read_bytes())
        except ValueError as exc:
            raise ValueError(f"{found[0]} is not a PEM certificate ({exc})") from None
        if certificate.serial_number == ca_cert.serial_number and certificate.subject == ca_cert.subject:
            raise ValueError(f"{found[0]} is the CA itself: to retire a CA, stop trusting it (make a new one)")
        try:
            certificate.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, Exception) as exc:  # InvalidSignature is not a ValueError
            raise ValueError(
                f"{found[0]} was not issued by the CA in {folder} ({type(exc).__name__}): "
                "revoke it with the CA that issued it"
            ) from None
        return int(certificate.serial_number)
    text = name.strip().lower()
    try:
        if text.isdigit():
            return int(text)
        if re.fullmatch(r"0x[0-9a-f]+", text):
            return int(text, 16)
        if re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2})+", text):
            return int(text.replace(":", ""), 16)
    except ValueError:
        pass
    raise FileNotFoundError(
        f"no certificate {name!r} in {folder} (looked for {', '.join(str(p) for p in candidates)}); "
        "give its file, its name, or its serial number (decimal, or hex as 0x... or aa:bb:...)"
    )
