"""The envelope: ``b"HE" | version | key id length | key id | nonce (12) | AES-256-GCM ciphertext+tag``.

Self-describing: a reader learns the key id from the bytes, and the associated data it must supply
(topic, record id) from where it read the record. The associated data binds the ciphertext to its
key id, topic and record id, so the same bytes copied to another patient's key, another topic or
another record fail authentication (:class:`hub.errors.DecryptFailed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.errors import DecryptFailed, EnvelopeInvalid

MAGIC = b"HE"
VERSION = 1
#: Named in the ``hub-enc`` header of every encrypted record.
SCHEME = "aes-256-gcm/v1"
NONCE_BYTES = 12
KEY_BYTES = 32
MAX_KEY_ID = 255
_HEADER = len(MAGIC) + 2


@dataclass(frozen=True)
class Envelope:
    """The parts of one encrypted value."""

    key_id: str
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        """The wire form."""
        key_id = self.key_id.encode()
        return MAGIC + bytes((VERSION, len(key_id))) + key_id + self.nonce + self.ciphertext


def is_envelope(value: bytes | None) -> bool:
    """True when ``value`` starts like an envelope (JSON, XML and text never start with ``HE\\x01``)."""
    return value is not None and value[:3] == MAGIC + bytes((VERSION,))


def parse(value: bytes) -> Envelope:
    """The envelope's parts; :class:`EnvelopeInvalid` when the bytes are not one this hub can read."""
    if len(value) < _HEADER or value[:2] != MAGIC:
        raise EnvelopeInvalid("not a hub envelope")
    if value[2] != VERSION:
        raise EnvelopeInvalid(f"envelope version {value[2]} is unknown to this hub")
    length = value[3]
    body = _HEADER + length
    if length == 0 or len(value) < body + NONCE_BYTES + 16:
        raise EnvelopeInvalid("envelope truncated")
    try:
        key_id = value[_HEADER:body].decode()
    except UnicodeDecodeError as exc:
        raise EnvelopeInvalid("envelope key id is not text") from exc
    return Envelope(key_id, value[body : body + NONCE_BYTES], value[body + NONCE_BYTES :])


_SCHEME_PART = len(SCHEME).to_bytes(4, "big") + SCHEME.encode()


def associated_data(key_id: str, topic: str, record_id: str) -> bytes:
    """What the ciphertext is bound to; each part length-prefixed so no two triples collide."""
    key, where, record = key_id.encode(), topic.encode(), record_id.encode()
    return b"".join(
        (
            _SCHEME_PART,
            len(key).to_bytes(4, "big"),
            key,
            len(where).to_bytes(4, "big"),
            where,
            len(record).to_bytes(4, "big"),
            record,
        )
    )


def seal(dek: bytes | AESGCM, plaintext: bytes, *, key_id: str, topic: str, record_id: str) -> bytes:
    """Encrypt ``plaintext`` under ``dek`` (a fresh random nonce each time), bound to its context.

    ``dek`` is the key, or an ``AESGCM`` made from it (the keyring caches those: no key schedule per record).
    """
    key = key_id.encode()
    if not key or len(key) > MAX_KEY_ID:
        raise ValueError("a key id is 1 to 255 bytes")
    aead = dek if isinstance(dek, AESGCM) else AESGCM(dek)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = aead.encrypt(nonce, plaintext, associated_data(key_id, topic, record_id))
    return b"".join((MAGIC, bytes((VERSION, len(key))), key, nonce, ciphertext))


def open_envelope(dek: bytes | AESGCM, envelope: Envelope, *, topic: str, record_id: str) -> bytes:
    """The plaintext; :class:`DecryptFailed` when the bytes or their context are not the sealed ones."""
    aead = dek if isinstance(dek, AESGCM) else AESGCM(dek)
    try:
        return aead.decrypt(
            envelope.nonce, envelope.ciphertext, associated_data(envelope.key_id, topic, record_id)
        )
    except InvalidTag as exc:
        raise DecryptFailed(
            f"record under key {envelope.key_id} does not authenticate on {topic} as {record_id}",
            hint="the record was altered, or copied from another topic, record or patient",
        ) from exc
