"""Key agreement and share encryption for secure aggregation (Bonawitz et al. 2017, CCS, section 4).

Each device makes two X25519 key pairs per repetition (RFC 7748): ``c`` to encrypt the
shares it sends to each peer, ``s`` to agree the pairwise mask seeds. A shared secret
``X25519(sk_u, pk_v)`` is never used directly: HKDF-SHA256 (RFC 5869, empty salt)
derives a 32-byte key from it, bound to its purpose and the repetition by the ``info``
string ``b"fedsync-secagg-v1 <purpose> <rep>"`` (purpose ``mask``, ``share`` or ``self``).
Shares travel encrypted with AES-256-GCM; the associated data
``b"fedsync-secagg-v1 share <rep> <sender> <receiver>"`` ties each ciphertext to its
repetition and direction, so the coordinator that relays it cannot replay or swap it.

Everything here is ``cryptography``'s; nothing is hand-written. Imported only when a
round uses secure aggregation (extra ``fedsync[secagg]``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Any

from .._util.json import shown

__all__ = [
    "KEY_BYTES",
    "CIPHERTEXT_BYTES",
    "SHARE_PLAINTEXT",
    "KeyPair",
    "derive",
    "agree",
    "encrypt_share",
    "decrypt_share",
    "b64",
    "unb64",
    "commitment",
    "public_of",
]

KEY_BYTES = 32
"""Bytes of an X25519 key, a seed, a derived key."""
NONCE_BYTES = 12
SHARE_PLAINTEXT = 64
"""An encrypted share's plaintext: the share of ``b`` (32 bytes) then the share of ``s_sk`` (32 bytes)."""
CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT + 16
"""nonce (12) || AES-GCM ciphertext (64) || tag (16)."""
LABEL = b"fedsync-secagg-v1"


def _need() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import x25519
    except ImportError:
        raise ImportError(
            "secure aggregation needs the 'cryptography' and 'pycryptodome' packages: pip install 'fedsync[secagg]'"
        ) from None
    return x25519


class KeyPair:
    """A fresh X25519 key pair; ``public`` is its 32 raw bytes."""

    def __init__(self, private: Any = None) -> None:
        x25519 = _need()
        self.private = private if private is not None else x25519.X25519PrivateKey.generate()
        self.public = public_of(self.private)

    def secret(self) -> bytes:
        """The private key's 32 raw bytes (what is secret-shared for ``s``)."""
        from cryptography.hazmat.primitives import serialization

        return self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @classmethod
    def from_secret(cls, raw: bytes) -> KeyPair:
        """The key pair of 32 raw private bytes (a reconstructed ``s_sk``)."""
        return cls(_need().X25519PrivateKey.from_private_bytes(raw))


def public_of(private: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derive(secret: bytes, purpose: str, rep: int) -> bytes:
    """HKDF-SHA256 of ``secret`` (empty salt, info ``fedsync-secagg-v1 <purpose> <rep>``): 32 bytes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = b"%s %s %d" % (LABEL, purpose.encode("ascii"), rep)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def agree(pair: KeyPair, peer_public: bytes, purpose: str, rep: int) -> bytes:
    """The key ``derive(X25519(sk, peer_pk), purpose, rep)``, the same from both ends.

    Raises:
        ValueError: ``peer_public`` is not a usable X25519 key (a low-order point).
    """
    peer = _need().X25519PublicKey.from_public_bytes(peer_public)
    return derive(pair.private.exchange(peer), purpose, rep)


def check_public(raw: bytes) -> None:
    """Raise ValueError unless ``raw`` is an X25519 public key a peer can agree a secret with."""
    agree(KeyPair(), raw, "check", 0)


def _associated(rep: int, sender: int, receiver: int) -> bytes:
    return b"%s share %d %d %d" % (LABEL, rep, sender, receiver)


def encrypt_share(key: bytes, rep: int, sender: int, receiver: int, plaintext: bytes) -> bytes:
    """AES-256-GCM of a 64-byte share pair; returns nonce || ciphertext || tag (92 bytes)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _associated(rep, sender, receiver))


def decrypt_share(key: bytes, rep: int, sender: int, receiver: int, blob: bytes) -> bytes:
    """The 64-byte plaintext of :func:`encrypt_share`; ValueError if it was altered or is not for us."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(blob) != CIPHERTEXT_BYTES:
        raise ValueError(f"an encrypted share is {CIPHERTEXT_BYTES} bytes, got {len(blob)}")
    try:
        plain = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _associated(rep, sender, receiver))
    except InvalidTag:
        raise ValueError(
            f"the share from device {sender} does not decrypt (altered, "
            f"or not for repetition {rep} and device {receiver})"
        ) from None
    if len(plain) != SHARE_PLAINTEXT:
        raise ValueError(f"the share from device {sender} holds {len(plain)} bytes; expected {SHARE_PLAINTEXT}")
    return plain


def commitment(seed: bytes) -> bytes:
    """SHA-256 of a self-mask seed: published in the keys phase, checked when the seed is rebuilt."""
    return hashlib.sha256(seed).digest()


def b64(raw: bytes) -> str:
    """Standard base64 with padding (RFC 4648 section 4), as every binary value in the phases' JSON."""
    return base64.b64encode(raw).decode("ascii")


def unb64(text: Any, size: int, what: str) -> bytes:
    """``text`` decoded from base64, which must give exactly ``size`` bytes; else ValueError naming ``what``."""
    if not isinstance(text, str) or len(text) > 4 * (size // 3 + 1):
        raise ValueError(f"{what} must be a base64 string of {size} bytes, got {shown(text)}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"{what} is not valid base64: {shown(text)}") from None
    if len(raw) != size:
        raise ValueError(f"{what} decodes to {len(raw)} bytes; expected {size}")
    return raw
