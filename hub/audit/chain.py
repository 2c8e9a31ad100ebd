"""The audit hash chain, pure: sealing one record, checkpoints, and their canonical encodings.

Each partition of ``hub.audit.v1`` is one chain. A sealed record keeps its value (the FHIR
AuditEvent, byte for byte) and carries the chain in headers:

- ``hub-audit-seq``: position in the partition's chain, from 1, decimal;
- ``hub-audit-prev``: the previous record's hash (64 hex digits; all zeros before the first);
- ``hub-audit-hash``: SHA-256 over :func:`record_digest_input`.

The digest covers a domain tag, the partition, the sequence number, the previous hash, and the key
and value with their lengths, so no two different records encode alike and a record moved to another
position or partition no longer verifies. A checkpoint states, for one chain, a position and the hash
of the record there, signed with the hub's Ed25519 audit key (:mod:`hub.audit.signing`).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.normalise.time import utc_iso

SEQ_HEADER = "hub-audit-seq"
PREV_HEADER = "hub-audit-prev"
HASH_HEADER = "hub-audit-hash"
CHAIN_HEADERS = (SEQ_HEADER, PREV_HEADER, HASH_HEADER)

#: The previous hash of a chain's first record.
GENESIS = "0" * 64
_RECORD_TAG = b"hub.audit.record.v1\x00"
_CHECKPOINT_TAG = b"hub.audit.checkpoint.v1\x00"
_NO_KEY = 0xFFFFFFFF


@dataclass(frozen=True)
class ChainHead:
    """Where a chain stands: the last sealed record's position and hash."""

    seq: int
    hash: str

    @classmethod
    def genesis(cls) -> ChainHead:
        """The head of an empty chain."""
        return cls(0, GENESIS)


def record_digest_input(partition: int, seq: int, prev: str, key: bytes | None, value: bytes) -> bytes:
    """The canonical bytes a record's hash covers (length-prefixed, so unambiguous)."""
    key_part = struct.pack(">I", _NO_KEY) if key is None else struct.pack(">I", len(key)) + key
    return (
        _RECORD_TAG
        + struct.pack(">IQ", partition, seq)
        + bytes.fromhex(prev)
        + key_part
        + struct.pack(">Q", len(value))
        + value
    )


def record_hash(partition: int, seq: int, prev: str, key: bytes | None, value: bytes) -> str:
    """SHA-256 of one record's canonical encoding, hex."""
    return hashlib.sha256(record_digest_input(partition, seq, prev, key, value)).hexdigest()


@dataclass(frozen=True)
class Sealed:
    """A record sealed onto its chain: the headers to send and the new head."""

    headers: tuple[tuple[str, bytes], ...]
    head: ChainHead


def seal(head: ChainHead, partition: int, key: bytes | None, value: bytes) -> Sealed:
    """Chain one record after ``head``. Deterministic: the same input after the same head seals alike."""
    seq = head.seq + 1
    digest = record_hash(partition, seq, head.hash, key, value)
    headers = (
        (SEQ_HEADER, str(seq).encode()),
        (PREV_HEADER, head.hash.encode()),
        (HASH_HEADER, digest.encode()),
    )
    return Sealed(headers, ChainHead(seq, digest))


@dataclass(frozen=True)
class ChainFields:
    """The chain headers of a record as read back; None when a header is absent or malformed."""

    seq: int
    prev: str
    hash: str


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def chain_fields(headers: Sequence[tuple[str, bytes]]) -> ChainFields | None:
    """The chain headers of one record, or None when it was never sealed (or they are garbled)."""
    found: dict[str, str] = {}
    for name, raw in headers:
        if name in CHAIN_HEADERS:
            try:
                found[name] = raw.decode("ascii")
            except UnicodeDecodeError:
                return None
    seq_text = found.get(SEQ_HEADER, "")
    prev = found.get(PREV_HEADER, "")
    digest = found.get(HASH_HEADER, "")
    if not (seq_text.isascii() and seq_text.isdigit()) or not _is_hex64(prev) or not _is_hex64(digest):
        return None
    return ChainFields(int(seq_text), prev, digest)


def head_of(headers: Sequence[tuple[str, bytes]]) -> ChainHead | None:
    """The chain head a sealed record leaves behind (what a restarted sealer continues from)."""
    fields = chain_fields(headers)
    return None if fields is None else ChainHead(fields.seq, fields.hash)


# -- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: chain ``partition`` had record ``seq`` with hash ``head`` at ``at``."""

    partition: int
    seq: int
    head: str
    at: str
    key_id: str
    signature: str = ""

    def signed_bytes(self) -> bytes:
        """The canonical bytes the Ed25519 signature covers."""
        at = self.at.encode()
        return (
            _CHECKPOINT_TAG
            + struct.pack(">IQ", self.partition, self.seq)
            + bytes.fromhex(self.head)
            + struct.pack(">H", len(at))
            + at
        )

    def as_json(self) -> dict[str, Any]:
        """The value of a ``hub.audit-checkpoints.v1`` record."""
        return {
            "kind": "audit-checkpoint",
            "chain": {"partition": self.partition},
            "seq": self.seq,
            "head": self.head,
            "at": self.at,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, document: Any) -> Checkpoint | None:
        """A checkpoint read back, or None when the record is not one."""
        try:
            checkpoint = cls(
                partition=int(document["chain"]["partition"]),
                seq=int(document["seq"]),
                head=str(document["head"]),
                at=str(document["at"]),
                key_id=str(document["key_id"]),
                signature=str(document["signature"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return checkpoint if _is_hex64(checkpoint.head) and checkpoint.seq >= 1 else None


def unsigned_checkpoint(partition: int, head: ChainHead, *, at: datetime, key_id: str) -> Checkpoint:
    """A checkpoint of ``head``, to be signed."""
    return Checkpoint(partition, head.seq, head.hash, utc_iso(at), key_id)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """JSON bytes of a checkpoint record."""
    return json.dumps(checkpoint.as_json(), separators=(",", ":"), sort_keys=True).encode()


def header_map(headers: Sequence[tuple[str, bytes]]) -> Mapping[str, bytes]:
    """Headers by name (the last wins)."""
    return dict(headers)
