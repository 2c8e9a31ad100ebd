"""The audit checkpoint key: Ed25519, from a file or the environment, like every other hub secret.

A private key is a PEM PKCS#8 document (``openssl genpkey -algorithm ed25519``) or its 32-byte seed
as 64 hex digits. A verifier needs only the public key: a PEM SubjectPublicKeyInfo document or the
32 raw bytes as hex. The key id, the first 16 hex digits of SHA-256 over the raw public key, names
the key in each checkpoint so a verifier knows which key it needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hub.audit.chain import Checkpoint
from hub.errors import ConfigError, SecretUnavailable
from hub.settings import Settings

_KEY_HINT = (
    "create one with `openssl genpkey -algorithm ed25519 -out FILE` (`hub run` makes one for the demo)"
)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short, stable name of a public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_private_key(text: str, *, where: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM PKCS#8 or a hex seed; the error never repeats the text."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"{where} is not an Ed25519 key", hint=_KEY_HINT)
            return key
        seed = bytes.fromhex(text)
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return Ed25519PrivateKey.from_private_bytes(seed)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where} does not hold an Ed25519 private key", hint=_KEY_HINT) from exc


def parse_public_key(text: str, *, where: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM or 64 hex digits."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN PRIVATE KEY"):
            return parse_private_key(text, where=where).public_key()
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"{where} is not an Ed25519 public key", hint=_KEY_HINT)
            return key
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where} does not hold an Ed25519 public key", hint=_KEY_HINT) from exc


def read_key_file(path: Path) -> str:
    """A key file's text; SecretUnavailable names the file, never its content."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretUnavailable(f"audit key file {path} cannot be read", hint=_KEY_HINT) from exc


def public_pem(public_key: Ed25519PublicKey) -> str:
    """The public key as PEM, to hand to auditors."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def new_private_pem() -> str:
    """A fresh Ed25519 private key as PEM PKCS#8 (for `hub run` and `hub audit keygen`)."""
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )


class CheckpointSigner:
    """Signs checkpoints with the hub's audit key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = key_id(private_key.public_key())

    def public_key(self) -> Ed25519PublicKey:
        """The key a verifier needs."""
        return self._key.public_key()

    def sign(self, checkpoint: Checkpoint) -> Checkpoint:
        """The checkpoint with its key id and signature (hex) filled in."""
        named = dataclasses.replace(checkpoint, key_id=self.key_id)
        return dataclasses.replace(named, signature=self._key.sign(named.signed_bytes()).hex())


def signature_valid(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    """True when the checkpoint was signed by this key and not changed since."""
    if checkpoint.key_id != key_id(public_key):
        return False
    try:
        public_key.verify(bytes.fromhex(checkpoint.signature), checkpoint.signed_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


def signer_from_settings(settings: Settings) -> CheckpointSigner | None:
    """The checkpoint signer from ``HUB_AUDIT_SIGNING_KEY`` or ``HUB_AUDIT_SIGNING_KEY_FILE``, if set."""
    if settings.audit_signing_key is not None and settings.audit_signing_key.get_secret_value().strip():
        text, where = settings.audit_signing_key.get_secret_value(), "HUB_AUDIT_SIGNING_KEY"
    elif settings.audit_signing_key_file is not None:
        text, where = read_key_file(settings.audit_signing_key_file), str(settings.audit_signing_key_file)
    else:
        return None
    return CheckpointSigner(parse_private_key(text, where=where))
