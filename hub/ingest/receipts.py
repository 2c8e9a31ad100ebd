"""Receipts (``hub.receipts.v1``) and DLQ headers (``hub.dlq.v1``): outcomes without clinical data."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.ingest.outcome import IngestOutcome, KafkaCoordinates, Rejected
from hub.normalise.time import utc_iso
from hub.records import (
    DLQ_KEPT_HEADER,
    ERROR_CODE_HEADER,
    ERROR_DETAIL_HEADER,
    ORIGIN_HEADER,
    ORIGINAL_DIGEST_HEADER,
    ORIGINAL_SIZE_HEADER,
    Header,
    Headers,
    encode_headers,
)
from hub.topics import TopicNames, is_source_id

#: What an excerpt record keeps: the value's first bytes, each header's first bytes, the first headers.
DLQ_EXCERPT_BYTES = 4096
DLQ_HEADER_VALUE_BYTES = 1024
DLQ_HEADERS_KEPT = 32
#: The contract topics (ingest, DLQ, receipts…) take records up to this many times the payload limit.
CONTRACT_RECORD_FACTOR = 2
#: Room left in a DLQ record for the hub's own headers and the encryption envelope.
DLQ_OVERHEAD_BYTES = 64 * 1024


def dlq_limit(max_payload_bytes: int) -> int:
    """The largest original (value and headers) the DLQ keeps whole, for a given payload limit."""
    return CONTRACT_RECORD_FACTOR * max_payload_bytes - DLQ_OVERHEAD_BYTES


UNKNOWN_SOURCE_KEY = "unknown"


def receipt(
    outcome: IngestOutcome,
    origin: KafkaCoordinates,
    *,
    at: datetime,
    status: str | None = None,
    event_ids: tuple[str, ...] | list[str] | None = None,
    warnings: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The receipt for one ingest record.

    Receipts are delivered at least once: a worker that dies before committing its input's offset
    answers that input again. So a receipt is a function of the input alone, the same bytes each
    time: ``at`` is the ingest record's own timestamp (never a clock), and consumers de-duplicate by
    ``ingest`` (topic, partition, offset), which names the input.

    For an accepted input, ``status`` may say ``duplicate`` and ``event_ids`` replace the outcome's
    own (the identity stage knows which facts were already published), and ``warnings`` the outcome's
    (the identity stage has them as ingest forwarded them, ``{code, detail}`` objects). A reject has
    no warnings: its error says what to fix.
    """
    if isinstance(outcome, Rejected):
        return {
            "ingest": origin.as_dict(),
            "source": outcome.source_id,
            "message_id": outcome.message_id,
            "status": "rejected",
            "error": {"code": str(outcome.code), "detail": outcome.detail},
            "event_ids": [],
            "warnings": [],
            "at": utc_iso(at),
        }
    return {
        "ingest": origin.as_dict(),
        "source": outcome.source_id,
        "message_id": outcome.message_id,
        "status": status or "accepted",
        "error": None,
        "event_ids": list(event_ids) if event_ids is not None else [e.event_id for e in outcome.events],
        "warnings": (
            [dict(w) for w in warnings] if warnings is not None else [w.as_dict() for w in outcome.warnings]
        ),
        "at": utc_iso(at),
    }


def receipt_key(outcome: IngestOutcome) -> str:
    """Receipts are keyed by source id, so one source's receipts stay in order."""
    return outcome.source_id or UNKNOWN_SOURCE_KEY


def receipt_topics(topics: TopicNames, source_id: str | None, *, registered: bool) -> tuple[str, ...]:
    """Where one receipt goes: ``hub.receipts.v1`` (every receipt, for operators), and, for a
    ``registered`` source, also that source's own ``hub.receipts.<source>.v1``, the only receipt
    topic its principal may read. A source id no registry holds (a ``source.unknown`` reject's
    header) never makes a topic: its receipt stays on ``hub.receipts.v1``, never lost to a bad name."""
    if source_id is None or not registered or not is_source_id(source_id):
        return (topics.receipts,)
    return (topics.receipts, topics.source_receipts(source_id))


def dlq_headers(original: Headers, rejected: Rejected, origin: KafkaCoordinates) -> list[Header]:
    """The original headers unchanged, followed by the reject's code, detail and origin."""
    return [
        *original,
        *encode_headers(
            (
                (ERROR_CODE_HEADER, str(rejected.code)),
                (ERROR_DETAIL_HEADER, rejected.detail),
                (ORIGIN_HEADER, str(origin)),
            )
        ),
    ]


@dataclass(frozen=True)
class DlqRecord:
    """The value and headers of one reject's ``hub.dlq.v1`` record."""

    value: bytes | None
    headers: Headers
    #: False when only an excerpt of the original is kept (it was larger than the DLQ carries).
    whole: bool


def _record_size(value: bytes | None, headers: Headers) -> int:
    return len(value or b"") + sum(len(k) + len(v) for k, v in headers)


def dlq_record(
    value: bytes | None,
    headers: Headers,
    rejected: Rejected,
    origin: KafkaCoordinates,
    *,
    limit: int,
    excerpt_only: bool = False,
) -> DlqRecord:
    """The DLQ record of one reject: the original, unchanged, when it fits in ``limit`` bytes.

    A larger original (a compressed record decompresses far past the hub's limit; a sender may add
    huge headers) cannot be produced to the DLQ at all: then the record keeps the original's first
    headers and bytes, its size and SHA-256, and the reject's code, so the reject is never lost and
    the source can find which message it was. ``excerpt_only`` forces that form (the broker refused
    the whole one). Such a record cannot be replayed; the source must send the input again.
    """
    if not excerpt_only and _record_size(value, headers) <= limit:
        return DlqRecord(value, tuple(dlq_headers(headers, rejected, origin)), whole=True)
    original = value or b""
    kept = tuple(
        (k[:DLQ_HEADER_VALUE_BYTES], v[:DLQ_HEADER_VALUE_BYTES]) for k, v in headers[:DLQ_HEADERS_KEPT]
    )
    return DlqRecord(
        original[:DLQ_EXCERPT_BYTES],
        (
            *dlq_headers(kept, rejected, origin),
            *encode_headers(
                (
                    (DLQ_KEPT_HEADER, "excerpt"),
                    (ORIGINAL_SIZE_HEADER, str(len(original))),
                    (ORIGINAL_DIGEST_HEADER, hashlib.sha256(original).hexdigest()),
                )
            ),
        ),
        whole=False,
    )


__all__ = ["DlqRecord", "dlq_headers", "dlq_record", "receipt", "receipt_key", "receipt_topics"]
