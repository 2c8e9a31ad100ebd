"""Kafka records as the hub writes and reads them: header names and pairs, the JSON codec, the record to send.

A ground-floor module (it imports nothing from the hub): the stages, the gateway, the console, ops,
metrics, crypto and bench spell every header, read it, and encode and decode every JSON record here,
so one record means the same thing to every part that touches it.

- **Headers.** Every Kafka header the hub reads or writes is named below, once. Values are UTF-8
  bytes; :func:`header` reads one the same way everywhere: names compare case-insensitively, and a
  name the hub appends after the headers a record came with (``hub-error-code``, ``hub-origin``, the
  envelope's and the audit chain's) is read at its *last* occurrence, every other one (what a source
  sends: ``hub-source``, ``hub-message-id``…) at its *first*, as ingest reads it. So a sender's own
  ``hub-error-code`` can never stand in for the hub's, and the DLQ, trace and the console name the
  source ingest named.
- **JSON.** :func:`encode_json` writes a record's value (orjson: several times faster than the
  standard library on the agents' hot path); the bytes depend only on the document, whose keys keep
  the order its builder gave them, so a receipt built again from the same input (a redelivery) has
  the same bytes. :func:`canonical_json` writes the bytes that are hashed or signed (event ids, audit
  checkpoints): sorted keys and the standard library's number format, frozen, since changing one
  byte there would change every id. :func:`decode_json` reads with the standard library: orjson
  reads an integer beyond 64 bits as a float, and a FHIR decimal may carry one.
- **The one record to send**, :class:`Outgoing`: topic, key, value and headers, as the agents hand
  it to Kafka. The pure cores do not make it: the identity, share and eligibility stages return
  plain results about plain data (``hub.identity.stage.Send``, ``hub.consent.share.Share``,
  ``hub.alerts.stage.AlertOut``: a JSON object and a string key, for a logical destination), which
  only ``hub.streams.routing`` turns into ``Outgoing``. The cores stay testable without bytes, topic
  prefixes or headers, and every encoding decision stays in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

# Ingest (DESIGN.md 2): what a source sends with each record.
SOURCE_HEADER = "hub-source"
SIGNATURE_HEADER = "hub-signature"
MESSAGE_ID_HEADER = "hub-message-id"
CONTENT_TYPE_HEADER = "content-type"

# A reject's DLQ record: the original headers, then the hub's (hub.ingest.receipts).
ERROR_CODE_HEADER = "hub-error-code"
ERROR_DETAIL_HEADER = "hub-error-detail"
#: ``topic/partition/offset`` of the ingest record rejected.
ORIGIN_HEADER = "hub-origin"
#: On a DLQ record whose original did not fit: ``excerpt`` (the value is the original's first bytes).
DLQ_KEPT_HEADER = "hub-dlq-kept"
#: The original value's length in bytes and its SHA-256 (hex), on an excerpt record.
ORIGINAL_SIZE_HEADER = "hub-original-size"
ORIGINAL_DIGEST_HEADER = "hub-original-sha256"
#: Added to a replayed record (``hub dlq replay``): the ``topic/partition/offset`` first rejected.
REPLAY_OF_HEADER = "hub-replay-of"

#: On a table's changelog record that carries the entries of a batch (hub.streams.changelog_batches):
#: their packing's format.
TABLE_BATCH_HEADER = "hub-table-batch"
TABLE_BATCH_FORMAT = "1"

#: A pathway event's id, on ``hub.pathway.v1``: the record id its envelope is bound to.
EVENT_ID_HEADER = "hub-event-id"

# Encryption at rest (hub.crypto.records): the scheme, the key id, the record id in the associated data.
ENC_HEADER = "hub-enc"
KEY_ID_HEADER = "hub-key-id"
RECORD_ID_HEADER = "hub-record-id"
#: Added by the operator tools to a record read back that could not be opened: the error code.
CRYPTO_ERROR_HEADER = "hub-crypto-error"

# The audit chain (hub.audit.chain): each hub.audit.v1 record's place in its partition's chain.
AUDIT_FORMAT_HEADER = "hub-audit-format"
AUDIT_SEQ_HEADER = "hub-audit-seq"
AUDIT_PREV_HEADER = "hub-audit-prev"
AUDIT_MAC_HEADER = "hub-audit-mac"
AUDIT_KEY_ID_HEADER = "hub-audit-key-id"
AUDIT_BREAK_HEADER = "hub-audit-break"
#: Format 1's link: SHA-256 without a key (legacy, read only).
AUDIT_HASH_HEADER = "hub-audit-hash"

#: The envelope's headers (hub.crypto.records).
CRYPTO_HEADERS = frozenset({ENC_HEADER, KEY_ID_HEADER, RECORD_ID_HEADER})
#: The audit chain's headers, in the order the sealer writes them (the legacy hash last).
AUDIT_CHAIN_HEADERS = (
    AUDIT_FORMAT_HEADER,
    AUDIT_SEQ_HEADER,
    AUDIT_PREV_HEADER,
    AUDIT_MAC_HEADER,
    AUDIT_KEY_ID_HEADER,
    AUDIT_BREAK_HEADER,
    AUDIT_HASH_HEADER,
)
#: What the hub adds to a reject's original headers in the DLQ, and drops from a replay.
DLQ_HUB_HEADERS = frozenset({ERROR_CODE_HEADER, ERROR_DETAIL_HEADER, ORIGIN_HEADER, REPLAY_OF_HEADER})
#: Headers the hub appends after those a record came with: :func:`header` reads their last occurrence.
HUB_APPENDED_HEADERS = frozenset(
    {
        *DLQ_HUB_HEADERS,
        DLQ_KEPT_HEADER,
        ORIGINAL_SIZE_HEADER,
        ORIGINAL_DIGEST_HEADER,
        *CRYPTO_HEADERS,
        CRYPTO_ERROR_HEADER,
        *AUDIT_CHAIN_HEADERS,
    }
)

#: One header as the hub passes it around: its name and its value's bytes.
Header = tuple[str, bytes]
Headers = tuple[Header, ...]


def headers_of(raw: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> Headers:
    """A Kafka client's headers as pairs: faust gives a dict or a list, kafka-python a list, and a
    header may come without a value (read as empty)."""
    if not raw:
        return ()
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    return tuple((str(name), bytes(value or b"")) for name, value in pairs)


def encode_headers(items: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]) -> Headers:
    """Header pairs to send, from names and texts (UTF-8) or bytes, in the order given."""
    pairs = items.items() if isinstance(items, Mapping) else items
    return tuple((name, value.encode() if isinstance(value, str) else value) for name, value in pairs)


def header(headers: Iterable[tuple[str, bytes | None]], name: str) -> str | None:
    """A header's text (UTF-8, undecodable bytes replaced), or None when absent.

    Names compare case-insensitively; a header the hub appends is read at its last occurrence, any
    other at its first (see the module's text).
    """
    wanted = name.lower()
    last = wanted in HUB_APPENDED_HEADERS
    found: str | None = None
    for key, value in headers:
        if key.lower() == wanted:
            found = (value or b"").decode("utf-8", errors="replace")
            if not last:
                return found
    return found


def header_dict(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """Each header's text by name, the occurrence :func:`header` would read (for display)."""
    found: dict[str, str] = {}
    for key, value in headers:
        text = (value or b"").decode("utf-8", errors="replace")
        if key.lower() in HUB_APPENDED_HEADERS:
            found[key] = text
        else:
            found.setdefault(key, text)
    return found


def encode_json(document: object) -> bytes:
    """A record's value: compact UTF-8 JSON, keys in the document's order (orjson)."""
    try:
        return orjson.dumps(document)
    except TypeError:
        # An integer beyond 64 bits (FHIR decimals may carry one): the standard library writes it as is.
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_json(document: object) -> bytes:
    """Bytes to hash or sign: sorted keys, compact, UTF-8, the standard library's number format.

    Frozen: deterministic event ids and signed checkpoints are computed over these bytes.
    """
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


#: Each ASCII digit to "9", every other byte to a space: a run of 19 digits, the only numbers orjson
#: reads inexactly (an integer past 64 bits becomes a float), becomes :data:`_LONG_RUN`. A translation
#: and a substring search cost a fifteenth of the regular expression ``\d{19}`` on the agents' records
#: (1.3 against 19 µs for 2 kB; orjson's parse of them, 4.8 µs: docs/PERFORMANCE.md, session 8).
_DIGITS_ONLY = bytes(0x39 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN = b"9" * 19


def decode_json(data: bytes | bytearray | str) -> Any:
    """A record's JSON value; ValueError when it is not JSON. Integers stay exact, whatever their size.

    orjson reads most values (several times faster: every stage decodes each record it reads); a
    value with a 19-digit run, or one orjson refuses (NaN, a lone surrogate), is the standard
    library's, which reads any integer exactly.
    """
    if not isinstance(data, str) and _LONG_RUN not in data.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


@dataclass(frozen=True)
class Outgoing:
    """One record to produce: full topic name, key, value and headers, as the agents send it.

    ``plain`` is the JSON document ``value`` encodes, when the stage had it: the agents count what
    their outputs say (hub.streams.counting) from it instead of decoding ``value`` again. Never sent.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    plain: Any = field(default=None, compare=False, repr=False)


__all__ = [
    "AUDIT_BREAK_HEADER",
    "AUDIT_CHAIN_HEADERS",
    "AUDIT_FORMAT_HEADER",
    "AUDIT_HASH_HEADER",
    "AUDIT_KEY_ID_HEADER",
    "AUDIT_MAC_HEADER",
    "AUDIT_PREV_HEADER",
    "AUDIT_SEQ_HEADER",
    "CONTENT_TYPE_HEADER",
    "CRYPTO_ERROR_HEADER",
    "CRYPTO_HEADERS",
    "DLQ_HUB_HEADERS",
    "DLQ_KEPT_HEADER",
    "ENC_HEADER",
    "ERROR_CODE_HEADER",
    "ERROR_DETAIL_HEADER",
    "EVENT_ID_HEADER",
    "HUB_APPENDED_HEADERS",
    "KEY_ID_HEADER",
    "MESSAGE_ID_HEADER",
    "ORIGINAL_DIGEST_HEADER",
    "ORIGINAL_SIZE_HEADER",
    "ORIGIN_HEADER",
    "RECORD_ID_HEADER",
    "REPLAY_OF_HEADER",
    "SIGNATURE_HEADER",
    "SOURCE_HEADER",
    "Header",
    "Headers",
    "Outgoing",
    "canonical_json",
    "decode_json",
    "encode_headers",
    "encode_json",
    "header",
    "header_dict",
    "headers_of",
]
