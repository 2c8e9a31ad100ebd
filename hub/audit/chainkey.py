"""The audit chain key: the HMAC-SHA256 key that links each sealed record, from a file or the environment.

Only the sealing stage (the workers) and the operators who run ``hub audit verify`` hold it: whoever
can only write to the broker cannot seal a record that verifies. The key is 32 bytes, written as 64 hex
digits or as base64 (what ``head -c 32 /dev/urandom | base64`` gives), like the KEK. Its key id, the
first 16 hex digits of HMAC-SHA256(key, ``hub.audit.chain-key-id.v1``), names it in every record so a
verifier knows which key a record claims, without the id telling anything about the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from pathlib import Path

from hub.errors import ConfigError, SecretUnavailable
from hub.logging import register_secret
from hub.settings import Settings

CHAIN_KEY_BYTES = 32
_KEY_ID_TAG = b"hub.audit.chain-key-id.v1"
_HINT = "create one with `head -c 32 /dev/urandom | base64 > FILE` (`hub run` makes one for the demo)"


class ChainKey:
    """An audit chain key; its repr shows the key id only."""

    __slots__ = ("_secret", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != CHAIN_KEY_BYTES:
            raise ConfigError(
                f"an audit chain key has {CHAIN_KEY_BYTES} bytes, not {len(secret)}", hint=_HINT
            )
        self._secret = secret
        self.key_id = hmac.new(secret, _KEY_ID_TAG, hashlib.sha256).hexdigest()[:16]

    def mac(self, data: bytes) -> str:
        """HMAC-SHA256 of ``data`` under this key, hex."""
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def verifies(self, data: bytes, mac: str) -> bool:
        """True when ``mac`` is this key's HMAC of ``data`` (compared in constant time)."""
        return hmac.compare_digest(self.mac(data), mac)

    def __repr__(self) -> str:
        return f"ChainKey(key_id={self.key_id!r})"


def parse_chain_key(text: str, *, where: str) -> ChainKey:
    """A chain key from 64 hex digits or base64; the error names ``where``, never the text."""
    raw = text.strip()
    try:
        secret = (
            bytes.fromhex(raw) if len(raw) == 2 * CHAIN_KEY_BYTES else base64.b64decode(raw, validate=True)
        )
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"{where} is neither 64 hex digits nor base64", hint=_HINT) from exc
    if len(secret) != CHAIN_KEY_BYTES:
        raise ConfigError(
            f"{where} holds {len(secret)} bytes, an audit chain key {CHAIN_KEY_BYTES}", hint=_HINT
        )
    # Scrubbed from every later log line, like the hub's other secrets.
    register_secret(raw)
    return ChainKey(secret)


def read_chain_key_file(path: Path) -> ChainKey:
    """The chain key in a file; SecretUnavailable names the file, never its content."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretUnavailable(f"audit chain key file {path} cannot be read", hint=_HINT) from exc
    return parse_chain_key(text, where=str(path))


def chain_key_configured(settings: Settings) -> bool:
    """True when ``HUB_AUDIT_CHAIN_KEY`` or ``HUB_AUDIT_CHAIN_KEY_FILE`` is set."""
    value = settings.audit_chain_key
    return (
        value is not None and bool(value.get_secret_value().strip())
    ) or settings.audit_chain_key_file is not None


def chain_key_from_settings(settings: Settings) -> ChainKey:
    """The chain key, from ``HUB_AUDIT_CHAIN_KEY`` or ``HUB_AUDIT_CHAIN_KEY_FILE``: needed to seal, verify."""
    if settings.audit_chain_key is not None and settings.audit_chain_key.get_secret_value().strip():
        return parse_chain_key(settings.audit_chain_key.get_secret_value(), where="HUB_AUDIT_CHAIN_KEY")
    if settings.audit_chain_key_file is not None:
        return read_chain_key_file(settings.audit_chain_key_file.expanduser())
    raise SecretUnavailable(
        "no audit chain key configured: every hub.audit.v1 record is linked with it, and without it a "
        "record anyone wrote to the topic could not be told from a sealed one",
        hint="set HUB_AUDIT_CHAIN_KEY or HUB_AUDIT_CHAIN_KEY_FILE "
        "(`hub run` creates .hub/secrets/audit-chain.key for the demo)",
    )
