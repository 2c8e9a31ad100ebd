"""The keyring of a hub process, from its settings (entry points only)."""

from __future__ import annotations

from pathlib import Path

from hub.crypto.keyring import Keyring
from hub.crypto.keys import LocalKeyProvider, parse_kek
from hub.crypto.store import KeyStore
from hub.errors import SecretUnavailable
from hub.logging import register_secret
from hub.settings import Settings


def key_store_path(settings: Settings) -> Path:
    """``HUB_KEY_STORE_FILE``, or ``<state_dir>/keys/data-keys.sqlite3``."""
    if settings.key_store_file is not None:
        return settings.key_store_file.expanduser()
    return settings.state_dir.expanduser() / "keys" / "data-keys.sqlite3"


def _registered(text: str) -> bytes:
    """The KEK parsed, its text registered with the log redaction processor (never in a log line)."""
    register_secret(text.strip())
    return parse_kek(text)


def kek_bytes(settings: Settings) -> bytes:
    """The key-encryption key, from ``HUB_KEK`` or ``HUB_KEK_FILE``."""
    if settings.kek is not None and settings.kek.get_secret_value().strip():
        return _registered(settings.kek.get_secret_value())
    if settings.kek_file is not None:
        try:
            return _registered(settings.kek_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SecretUnavailable(
                f"cannot read the key-encryption key file {settings.kek_file}",
                hint="create it with `head -c 32 /dev/urandom | base64 > FILE` (`hub run` makes one)",
            ) from exc
    raise SecretUnavailable(
        "no key-encryption key configured: the hub encrypts every record that carries clinical data",
        hint="set HUB_KEK or HUB_KEK_FILE (`hub run` creates .hub/secrets/kek.key for the demo)",
    )


def keyring_from_settings(settings: Settings) -> Keyring:
    """The process's keyring: the local KEK provider over the machine's key store."""
    return Keyring(
        KeyStore(key_store_path(settings)),
        LocalKeyProvider(kek_bytes(settings)),
        ttl_seconds=settings.key_cache_seconds,
    )
