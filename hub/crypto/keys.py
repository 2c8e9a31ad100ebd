"""Key-encryption keys behind a small provider interface: a local KEK today, a KMS tomorrow.

A provider wraps and unwraps data keys (DEKs); the hub never stores a DEK in the clear. The local
provider uses AES-256-GCM with the KEK, binding each wrapped DEK to its key id (a wrapped key copied
to another id does not unwrap). A KMS provider (AWS KMS, GCP KMS, Vault transit) would implement the
same three members with the KMS's encrypt/decrypt and its own access policy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.errors import ConfigError, KekInvalid

KEK_BYTES = 32
_WRAP_CONTEXT = b"hub/dek-wrap/v1\x00"


class KeyProvider(Protocol):
    """Wraps and unwraps data keys; ``kek_id`` names the KEK (never the key itself)."""

    @property
    def kek_id(self) -> str:
        """A fingerprint of the key-encryption key, stored beside each wrapped key."""
        ...

    def wrap(self, dek: bytes, *, key_id: str) -> bytes:
        """``dek`` encrypted for storage under ``key_id``."""
        ...

    def unwrap(self, wrapped: bytes, *, key_id: str) -> bytes:
        """The DEK; :class:`KekInvalid` when this provider did not wrap it (for this key id)."""
        ...


def parse_kek(text: str | bytes) -> bytes:
    """A 32-byte KEK from 64 hex digits or base64 (what ``head -c 32 /dev/urandom | base64`` gives)."""
    raw = text.decode() if isinstance(text, bytes) else text
    raw = raw.strip()
    try:
        key = bytes.fromhex(raw) if len(raw) == 2 * KEK_BYTES else base64.b64decode(raw, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(
            "the key-encryption key is neither 64 hex digits nor base64",
            hint="create one with `head -c 32 /dev/urandom | base64`",
        ) from exc
    if len(key) != KEK_BYTES:
        raise ConfigError(
            f"the key-encryption key has {len(key)} bytes, not {KEK_BYTES}",
            hint="create one with `head -c 32 /dev/urandom | base64`",
        )
    return key


class LocalKeyProvider:
    """A KEK held by the process (from a file or an environment variable)."""

    def __init__(self, kek: bytes) -> None:
        if len(kek) != KEK_BYTES:
            raise ConfigError(f"the key-encryption key must have {KEK_BYTES} bytes")
        self._aead = AESGCM(kek)
        self._kek_id = "local:" + hashlib.sha256(b"hub/kek-id/v1\x00" + kek).hexdigest()[:16]

    @property
    def kek_id(self) -> str:
        """``local:`` and 16 hex digits of a hash of the KEK."""
        return self._kek_id

    def wrap(self, dek: bytes, *, key_id: str) -> bytes:
        """Nonce and ciphertext of ``dek``, bound to ``key_id``."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, dek, _WRAP_CONTEXT + key_id.encode())

    def unwrap(self, wrapped: bytes, *, key_id: str) -> bytes:
        """The DEK wrapped for ``key_id``."""
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], _WRAP_CONTEXT + key_id.encode())
        except InvalidTag as exc:
            raise KekInvalid(
                f"the configured key-encryption key cannot unwrap key {key_id}",
                hint="set HUB_KEK or HUB_KEK_FILE to the KEK the key store was written with",
            ) from exc
