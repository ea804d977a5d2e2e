"""Signed views for secure aggregation against an active coordinator (Bonawitz et al. 2017, CCS, section 4,
the "malicious" variant: signed AdvertiseKeys and the ConsistencyCheck round).

A device served with ``serve(..., ssl_context=(certfile, keyfile), peer_ca="ca.pem")`` holds an
:class:`Identity`: it signs its keys answer and its survivor list with its TLS certificate's
ECDSA P-256 key (SHA-256, DER signatures; ``cryptography``, never by hand), and it believes a
peer's keys only when the peer's certificate chains to ``peer_ca`` (validity, basic
constraints, key usage ``digitalSignature``, extended key usage ``serverAuth``: a *device*
certificate; a coordinator's ``clientAuth`` certificate from the same CA is refused), is not
revoked by the CA's revocation list when one is given (``serve(..., crl=...)``,
:func:`fedsync.wire.certs.crls_for`), and its signature verifies.

**Identity.** A device is its certified key: the CA vouches that whoever signs with a device
certificate's key is one device. The coordinator still numbers the round's devices; a
signature binds that number, so a coordinator can neither relabel a device, nor swap its
keys, nor invent one without a device certificate. Names (subject CN, subjectAltName) are
shown in errors but not required to differ (several devices may share a host behind NAT);
two ids with one certified key are refused.

Signed messages (fixed-length fields, big-endian; ASCII tags end with a NUL byte)::

    keys:      b"fedsync-secagg-v1 keys\\0"      rep(u64) id(u16) n(u16) t(u16) c_pk(32) s_pk(32) commitment(32)
    survivors: b"fedsync-secagg-v1 survivors\\0" rep(u64) s_pk(32) count(u16) id(u16) * count  (ids ascending)

``s_pk`` in the survivors message is the signer's fresh mask key of this repetition: a
signature cannot be replayed into another repetition or another FedData served with the
same certificate.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import os
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from .._util.json import shown
from ..wire import certs

__all__ = [
    "Identity",
    "Peer",
    "keys_message",
    "survivors_message",
    "verifies",
    "peer_of_unverified",
    "encode_b64",
    "decode_b64",
    "MAX_CERTIFICATE",
    "MAX_SIGNATURE",
]

MAX_CERTIFICATE = 4096
"""The largest device certificate (DER bytes) relayed in the keys phase (``fedsync certs`` makes ~400)."""
MAX_SIGNATURE = 80
"""The largest ECDSA P-256 DER signature accepted (at most 72 bytes in practice)."""

_KEYS_TAG = b"fedsync-secagg-v1 keys\x00"
_SURVIVORS_TAG = b"fedsync-secagg-v1 survivors\x00"


def keys_message(
    rep: int, me: int, devices: int, threshold: int, c_public: bytes, s_public: bytes, commitment: bytes
) -> bytes:
    """The bytes a device signs for its keys answer (see the module's layout)."""
    return _KEYS_TAG + struct.pack(">QHHH", rep, me, devices, threshold) + c_public + s_public + commitment


def survivors_message(rep: int, s_public: bytes, survivors: Iterable[int]) -> bytes:
    """The bytes a device signs in the consistency phase: ``rep``, its fresh ``s_pk`` and the sorted survivors."""
    ids = sorted(survivors)
    return (
        _SURVIVORS_TAG
        + struct.pack(">Q", rep)
        + s_public
        + struct.pack(">H", len(ids))
        + b"".join(struct.pack(">H", u) for u in ids)
    )


class Peer:
    """A peer's verified certificate: its ECDSA public key and a name for messages."""

    def __init__(self, certificate: Any) -> None:
        self.certificate = certificate
        self.public_key = certificate.public_key()
        self.name = _name_of(certificate)

    def key_bytes(self) -> bytes:
        """The certified public key (SubjectPublicKeyInfo DER): the peer's identity."""
        from cryptography.hazmat.primitives import serialization

        return self.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """``True`` if ``signature`` is this peer's ECDSA-SHA256 signature of ``message``."""
        return verifies(self.public_key, signature, message)


class Identity:
    """This device's certificate and signing key, and the CA it trusts for its peers' certificates.

    Args:
        certfile: the device's certificate (PEM), as served for TLS.
        keyfile: its private key (PEM, unencrypted): ECDSA P-256, as ``fedsync certs device`` makes.
        peer_ca: the CA certificate(s) (PEM) that sign the devices of a round.
        crl: the revocation list(s) of ``peer_ca``'s CA(s) (``fedsync certs revoke``): a device whose
            certificate is listed there is refused as a peer, as if its certificate did not verify.

    Raises:
        ValueError: the key is not ECDSA P-256 or does not match the certificate, or the
            device's own certificate does not verify against ``peer_ca`` or is revoked (it
            would be refused by every peer: the reason is given), or ``crl`` is refused
            (not a CRL, not signed by the CA, past its next update: see
            :func:`fedsync.wire.certs.crls_for`).
        OSError: a file cannot be read.
        ImportError: ``cryptography`` is missing.
    """

    def __init__(
        self,
        certfile: str | os.PathLike,
        keyfile: str | os.PathLike,
        peer_ca: str | os.PathLike,
        crl: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    ) -> None:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509 import verification
        except ImportError:
            raise ImportError(
                "signed secure aggregation needs the cryptography package: pip install 'fedsync[secagg]'"
            ) from None
        try:
            roots = x509.load_pem_x509_certificates(open(peer_ca, "rb").read())
        except ValueError as exc:
            raise ValueError(
                f"peer_ca {os.fspath(peer_ca)!r} holds no PEM certificate "
                f"({exc}); give the ca.pem made by `fedsync certs init`"
            ) from None
        self.store = verification.Store(roots)
        # Checked once, here (fail closed at start); is_revoked re-checks each list's next update.
        self.crls = certs.crls_for(crl, peer_ca, "peer_ca") if crl is not None else []
        try:
            certificate = x509.load_pem_x509_certificates(open(certfile, "rb").read())[0]
            key = serialization.load_pem_private_key(open(keyfile, "rb").read(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"cannot load the device certificate {os.fspath(certfile)!r} "
                f"and key {os.fspath(keyfile)!r} for signing ({exc})"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError(
                "signed secure aggregation needs an ECDSA P-256 device key "
                f"(as `fedsync certs device` makes); {os.fspath(keyfile)!r} holds {type(key).__name__}"
            )
        certified = certificate.public_key()
        if not isinstance(certified, ec.EllipticCurvePublicKey) or (
            key.public_key().public_numbers() != certified.public_numbers()
        ):
            raise ValueError(
                f"the key {os.fspath(keyfile)!r} does not belong to the certificate {os.fspath(certfile)!r}"
            )
        self.key = key
        self.certificate_der = certificate.public_bytes(serialization.Encoding.DER)
        if len(self.certificate_der) > MAX_CERTIFICATE:
            raise ValueError(
                f"the device certificate is {len(self.certificate_der)} "
                f"bytes (DER); peers take at most {MAX_CERTIFICATE}"
            )
        try:
            self.me = self.verify_peer(self.certificate_der)
        except ValueError as exc:
            raise ValueError(f"this device's own certificate would be refused by its peers: {exc}") from None

    def sign(self, message: bytes) -> bytes:
        """The ECDSA-SHA256 signature (DER) of ``message`` with this device's certificate key."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self.key.sign(message, ec.ECDSA(hashes.SHA256()))

    def verify_peer(self, der: bytes) -> Peer:
        """The :class:`Peer` of a certificate (DER) that chains to ``peer_ca`` now, as a device certificate.

        Raises:
            ValueError: not a certificate, not ECDSA P-256, no subjectAltName, refused
                by the verifier (chain, validity, constraints, key usage, ``serverAuth``), or
                revoked by ``crl`` (or ``crl`` is past its next update: every peer is refused).
        """
        from cryptography import x509
        from cryptography.x509 import verification

        certificate = _p256_certificate(der)
        subject = _first_name(certificate)
        try:
            # The verifier checks the name against the certificate's own first subjectAltName:
            # the name is for messages (the coordinator chooses which device is which id), the
            # rest (chain, validity, constraints, serverAuth) is what the CA vouches for.
            verifier = (
                verification.PolicyBuilder()
                .store(self.store)
                .time(datetime.datetime.now(datetime.timezone.utc))
                .build_server_verifier(subject)
            )
            verifier.verify(certificate, [])
        except verification.VerificationError as exc:
            raise ValueError(
                f"certificate {_name_of(certificate)} does not verify against the peer CA: {exc}"
            ) from None
        revoked = certs.is_revoked(certificate, self.crls) if self.crls else None
        if revoked is not None:
            raise ValueError(f"certificate {_name_of(certificate)} is refused: {revoked}")
        usage = _extension(certificate, x509.KeyUsage)
        if usage is None or not usage.digital_signature:
            raise ValueError(
                f"certificate {_name_of(certificate)} does not allow "
                "digitalSignature (key usage); a device certificate signs its keys"
            )
        return Peer(certificate)


def verifies(public_key: Any, signature: bytes, message: bytes) -> bool:
    """``True`` if ``signature`` is a valid ECDSA-SHA256 signature of ``message`` by ``public_key``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def peer_of_unverified(der: bytes) -> Peer:
    """A :class:`Peer` from a certificate without checking its chain (the coordinator has no device CA).

    Raises:
        ValueError: not a DER certificate with an ECDSA P-256 key.
    """
    return Peer(_p256_certificate(der))


def _p256_certificate(der: bytes) -> Any:
    """The certificate in ``der``, checked to hold an ECDSA P-256 key (what device certificates hold).

    Raises:
        ValueError: not a DER X.509 certificate, or another kind of key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise ValueError(f"not a DER X.509 certificate ({exc})") from None
    key = _public_key(certificate)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(
            f"certificate {_name_of(certificate)} holds a {type(key).__name__}; device keys are ECDSA P-256"
        )
    return certificate


def encode_b64(raw: bytes) -> str:
    """Standard base64 with padding, as every binary value of the phases."""
    return base64.b64encode(raw).decode("ascii")


def decode_b64(text: Any, limit: int, what: str) -> bytes:
    """``text`` decoded from base64: 1 to ``limit`` bytes; else ValueError naming ``what``."""
    if not isinstance(text, str) or not text or len(text) > 4 * (limit // 3 + 1):
        raise ValueError(f"{what} must be a base64 string of at most {limit} bytes, got {shown(text, 80)}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"{what} is not valid base64: {shown(text, 80)}") from None
    if not 0 < len(raw) <= limit:
        raise ValueError(f"{what} decodes to {len(raw)} bytes; expected 1 to {limit}")
    return raw


def _first_name(certificate: Any) -> Any:
    from cryptography import x509
    from cryptography.x509 import verification

    names = _extension(certificate, x509.SubjectAlternativeName)
    if names is None:
        raise ValueError(
            f"certificate {_name_of(certificate)} has no subjectAltName; device "
            "certificates name their host (`fedsync certs device --host`)"
        )
    for address in names.get_values_for_type(x509.IPAddress):
        if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return verification.IPAddress(address)
    for dns in names.get_values_for_type(x509.DNSName):
        if "*" not in dns:
            return verification.DNSName(dns)
    raise ValueError(
        f"certificate {_name_of(certificate)} names no single host (an IP address or a DNS name without '*')"
    )


def _name_of(certificate: Any) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        common = [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except Exception:  # a subject cryptography cannot decode: a hostile certificate's name is only shown
        common = []
    try:
        alt = _extension(certificate, x509.SubjectAlternativeName)
    except ValueError:
        alt = None
    names = (
        []
        if alt is None
        else [str(n) for n in alt.get_values_for_type(x509.IPAddress)] + list(alt.get_values_for_type(x509.DNSName))
    )
    text = f"CN={common[0] if common else '?'}" + (f" ({', '.join(names[:3])})" if names else "")
    # Peer-chosen text in an error message: printable characters only, bounded.
    return shown("".join(c if c.isprintable() else "?" for c in text[:200]), 80, quote=False)


def _public_key(certificate: Any) -> Any:
    try:
        return certificate.public_key()
    except Exception as exc:  # UnsupportedAlgorithm is not a ValueError
        raise ValueError(f"its public key cannot be read ({type(exc).__name__})") from None


def _extension(certificate: Any, kind: Any) -> Any:
    """The value of ``certificate``'s extension ``kind``, ``None`` if absent.

    Raises:
        ValueError: the certificate's extensions do not parse.
    """
    from cryptography import x509

    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except Exception as exc:  # DuplicateExtension, UnsupportedGeneralNameType, ...: not ValueError subclasses
        raise ValueError(f"its extensions do not parse ({type(exc).__name__})") from None
