"""The audit chain, pure: sealing one record, reading its chain headers back, checkpoints.

Each partition of ``hub.audit.v1`` is one chain. A sealed record keeps its value (the FHIR
AuditEvent, byte for byte) and carries the chain in headers. Format 2, what the hub writes:

- ``hub-audit-format``: ``2``;
- ``hub-audit-seq``: position in the partition's chain, from 1, decimal;
- ``hub-audit-prev``: the previous record's link (64 hex digits; all zeros before the first record,
  and at the start of a segment that cannot link to what came before);
- ``hub-audit-mac``: the record's link, HMAC-SHA256 under the audit chain key
  (:mod:`hub.audit.chainkey`) over :func:`mac_input`;
- ``hub-audit-key-id``: which chain key (its 16-hex-digit id);
- ``hub-audit-break``: only on the first record of a new segment, the reason the sealer could not
  continue from the records before it (``record.forged``, ``format.legacy``...): that record's value
  is an AuditEvent (subtype ``audit-chain-break``) saying what it found.

The MAC covers a domain tag naming the format, the partition, the sequence number, the previous
link, the break reason, the key and the value, all length-prefixed, so no two different records
encode alike, a record moved to another position or partition no longer verifies, and nobody
without the key can make a record that does. Format 1 (hubs before the chain key) had
``hub-audit-hash``, a plain SHA-256 that anyone could recompute; it is still read, as legacy.

A checkpoint states, for one chain, a position and the link of the record there, signed with the
hub's Ed25519 audit key (:mod:`hub.audit.signing`).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.audit.chainkey import ChainKey
from hub.normalise.time import utc_iso
from hub.records import (
    AUDIT_BREAK_HEADER,
    AUDIT_CHAIN_HEADERS,
    AUDIT_FORMAT_HEADER,
    AUDIT_HASH_HEADER,
    AUDIT_KEY_ID_HEADER,
    AUDIT_MAC_HEADER,
    AUDIT_PREV_HEADER,
    AUDIT_SEQ_HEADER,
    canonical_json,
    decode_json,
    encode_headers,
)

#: The record format the sealer writes.
FORMAT = 2
LEGACY_FORMAT = 1
#: The previous link of a chain's first record.
GENESIS = "0" * 64
#: Positions stay far below 2**63, so a forged header cannot make the next position overflow.
MAX_SEQ = 2**62
_RECORD_TAG_V1 = b"hub.audit.record.v1\x00"
_RECORD_TAG_V2 = b"hub.audit.record.v2\x00"
_CHECKPOINT_TAG = b"hub.audit.checkpoint.v1\x00"
_NO_KEY = 0xFFFFFFFF
_BREAK_REASON = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class ChainHead:
    """Where a chain stands: the last sealed record's position and link."""

    seq: int
    link: str

    @classmethod
    def genesis(cls) -> ChainHead:
        """The head of an empty chain."""
        return cls(0, GENESIS)


def _key_part(key: bytes | None) -> bytes:
    return struct.pack(">I", _NO_KEY) if key is None else struct.pack(">I", len(key)) + key


def mac_input(
    partition: int, seq: int, prev: str, key: bytes | None, value: bytes, *, break_reason: str = ""
) -> bytes:
    """The canonical bytes a format-2 record's MAC covers (length-prefixed, so unambiguous)."""
    reason = break_reason.encode("ascii")
    return (
        _RECORD_TAG_V2
        + struct.pack(">IQ", partition, seq)
        + bytes.fromhex(prev)
        + struct.pack(">H", len(reason))
        + reason
        + _key_part(key)
        + struct.pack(">Q", len(value))
        + value
    )


def record_mac(
    chain_key: ChainKey,
    *,
    partition: int,
    seq: int,
    prev: str,
    key: bytes | None,
    value: bytes,
    break_reason: str = "",
) -> str:
    """A format-2 record's link: HMAC-SHA256 of :func:`mac_input` under the chain key, hex."""
    return chain_key.mac(mac_input(partition, seq, prev, key, value, break_reason=break_reason))


def legacy_digest_input(partition: int, seq: int, prev: str, key: bytes | None, value: bytes) -> bytes:
    """The canonical bytes a format-1 record's SHA-256 covers."""
    return (
        _RECORD_TAG_V1
        + struct.pack(">IQ", partition, seq)
        + bytes.fromhex(prev)
        + _key_part(key)
        + struct.pack(">Q", len(value))
        + value
    )


def legacy_hash(partition: int, seq: int, prev: str, key: bytes | None, value: bytes) -> str:
    """A format-1 record's link: SHA-256 without a key, which anyone can recompute (legacy)."""
    return hashlib.sha256(legacy_digest_input(partition, seq, prev, key, value)).hexdigest()


@dataclass(frozen=True)
class Sealed:
    """A record sealed onto its chain: the headers to send and the new head."""

    headers: tuple[tuple[str, bytes], ...]
    head: ChainHead


def seal(
    head: ChainHead,
    partition: int,
    key: bytes | None,
    value: bytes,
    chain_key: ChainKey,
    *,
    break_reason: str | None = None,
) -> Sealed:
    """Chain one record after ``head``. Deterministic: the same input after the same head seals alike.

    With ``break_reason`` the record starts a new segment: it links to ``head`` all the same (the
    sealer passes the last record it could verify, or a head with the genesis link when none).
    """
    if break_reason is not None and not _BREAK_REASON.match(break_reason):
        raise ValueError("a break reason is a short dotted code")
    seq = head.seq + 1
    if seq > MAX_SEQ:
        raise ValueError("the audit chain is full")
    link = record_mac(
        chain_key,
        partition=partition,
        seq=seq,
        prev=head.link,
        key=key,
        value=value,
        break_reason=break_reason or "",
    )
    headers = encode_headers(
        (
            (AUDIT_FORMAT_HEADER, str(FORMAT)),
            (AUDIT_SEQ_HEADER, str(seq)),
            (AUDIT_PREV_HEADER, head.link),
            (AUDIT_MAC_HEADER, link),
            (AUDIT_KEY_ID_HEADER, chain_key.key_id),
            *(() if break_reason is None else ((AUDIT_BREAK_HEADER, break_reason),)),
        )
    )
    return Sealed(headers, ChainHead(seq, link))


@dataclass(frozen=True)
class ChainFields:
    """The chain headers of a record as read back (format 1 or 2)."""

    format: int
    seq: int
    prev: str
    link: str
    key_id: str | None = None
    break_reason: str | None = None

    @property
    def head(self) -> ChainHead:
        """The head this record leaves behind, if it is authentic."""
        return ChainHead(self.seq, self.link)


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def chain_fields(headers: Sequence[tuple[str, bytes]]) -> ChainFields | None:
    """The chain headers of one record, or None when it was never sealed (or they are garbled).

    Says nothing about authenticity: :func:`authentic` does, with the chain key.
    """
    found: dict[str, str] = {}
    for name, raw in headers:
        if name in AUDIT_CHAIN_HEADERS:
            try:
                found[name] = raw.decode("ascii")
            except UnicodeDecodeError:
                return None
    seq_text = found.get(AUDIT_SEQ_HEADER, "")
    prev = found.get(AUDIT_PREV_HEADER, "")
    if not (seq_text.isascii() and seq_text.isdigit()) or not _is_hex64(prev):
        return None
    seq = int(seq_text)
    if not 1 <= seq <= MAX_SEQ:
        return None
    version = found.get(AUDIT_FORMAT_HEADER)
    if version is None:
        digest = found.get(AUDIT_HASH_HEADER, "")
        return ChainFields(LEGACY_FORMAT, seq, prev, digest) if _is_hex64(digest) else None
    if version != str(FORMAT):
        return None
    link, key_id = found.get(AUDIT_MAC_HEADER, ""), found.get(AUDIT_KEY_ID_HEADER, "")
    reason = found.get(AUDIT_BREAK_HEADER)
    if not _is_hex64(link) or not _KEY_ID.match(key_id):
        return None
    if reason is not None and not _BREAK_REASON.match(reason):
        return None
    return ChainFields(FORMAT, seq, prev, link, key_id, reason)


#: What :func:`authentic` can say of a record.
AUTHENTIC = "authentic"
MAC_INVALID = "mac-invalid"
KEY_UNKNOWN = "key-unknown"


def authentic(
    fields: ChainFields,
    partition: int,
    key: bytes | None,
    value: bytes,
    chain_keys: Mapping[str, ChainKey],
) -> str:
    """Whether a record's link is right for its content: :data:`AUTHENTIC`, :data:`MAC_INVALID`, or
    :data:`KEY_UNKNOWN` (a format-2 record naming a chain key not in ``chain_keys``).

    A format-1 record is "authentic" when its SHA-256 is right, which anyone can make so: the caller
    decides what a legacy record is worth.
    """
    if fields.format == LEGACY_FORMAT:
        right = legacy_hash(partition, fields.seq, fields.prev, key, value) == fields.link
        return AUTHENTIC if right else MAC_INVALID
    chain_key = chain_keys.get(fields.key_id or "")
    if chain_key is None:
        return KEY_UNKNOWN
    data = mac_input(partition, fields.seq, fields.prev, key, value, break_reason=fields.break_reason or "")
    return AUTHENTIC if chain_key.verifies(data, fields.link) else MAC_INVALID


# -- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: chain ``partition`` had record ``seq`` with link ``head`` at ``at``.

    ``offset`` is where that record is in the partition: a hint that lets a sealer start reading
    there, not signed (whoever uses it checks that the record there is the one signed for).
    """

    partition: int
    seq: int
    head: str
    at: str
    key_id: str
    signature: str = ""
    offset: int | None = None

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
        document: dict[str, Any] = {
            "kind": "audit-checkpoint",
            "chain": {"partition": self.partition},
            "seq": self.seq,
            "head": self.head,
            "at": self.at,
            "key_id": self.key_id,
            "signature": self.signature,
        }
        if self.offset is not None:
            document["offset"] = self.offset
        return document

    @classmethod
    def from_json(cls, document: Any) -> Checkpoint | None:
        """A checkpoint read back, or None when the record is not one."""
        try:
            offset = document.get("offset")
            checkpoint = cls(
                partition=int(document["chain"]["partition"]),
                seq=int(document["seq"]),
                head=str(document["head"]),
                at=str(document["at"]),
                key_id=str(document["key_id"]),
                signature=str(document["signature"]),
                offset=None if offset is None else int(offset),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        if checkpoint.offset is not None and checkpoint.offset < 0:
            return None
        return checkpoint if _is_hex64(checkpoint.head) and 1 <= checkpoint.seq <= MAX_SEQ else None


def unsigned_checkpoint(
    partition: int, head: ChainHead, *, at: datetime, key_id: str, offset: int | None = None
) -> Checkpoint:
    """A checkpoint of ``head`` (the record at ``offset``), to be signed."""
    return Checkpoint(partition, head.seq, head.link, utc_iso(at), key_id, offset=offset)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """JSON bytes of a checkpoint record."""
    return canonical_json(checkpoint.as_json())


def decode_checkpoint(value: bytes | None) -> Checkpoint | None:
    """The checkpoint of a ``hub.audit-checkpoints.v1`` record; None when it is not one."""
    try:
        return Checkpoint.from_json(decode_json(value or b"null"))
    except ValueError:
        return None
