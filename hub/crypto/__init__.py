"""Encryption at rest: AES-256-GCM envelopes under per-patient data keys wrapped by a key-encryption key.

Pure core (:mod:`.envelope`, :mod:`.keys`, the key ids of :mod:`.keyids`), a key store that can
destroy a key (:mod:`.store`), the keyring that caches unwrapped keys (:mod:`.keyring`) and the
Kafka record policy (:mod:`.records`).
docs/SECURITY.md describes the scheme and the key lifecycle.
"""

from __future__ import annotations

from hub.crypto.envelope import SCHEME, is_envelope
from hub.crypto.keyring import Keyring
from hub.crypto.keys import KeyProvider, LocalKeyProvider, parse_kek
from hub.crypto.store import KeyStore

__all__ = ["SCHEME", "KeyProvider", "KeyStore", "Keyring", "LocalKeyProvider", "is_envelope", "parse_kek"]
