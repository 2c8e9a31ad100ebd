"""Receipts (``hub.receipts.v1``) and DLQ headers (``hub.dlq.v1``): outcomes without clinical data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hub.ingest.outcome import IngestOutcome, KafkaCoordinates, Rejected
from hub.normalise.time import utc_iso

ERROR_CODE_HEADER = "hub-error-code"
ERROR_DETAIL_HEADER = "hub-error-detail"
ORIGIN_HEADER = "hub-origin"

UNKNOWN_SOURCE_KEY = "unknown"


def receipt(
    outcome: IngestOutcome,
    origin: KafkaCoordinates,
    *,
    at: datetime,
    status: str | None = None,
    event_ids: tuple[str, ...] | list[str] | None = None,
) -> dict[str, Any]:
    """The receipt for one ingest record.

    For an accepted input, ``status`` may say ``duplicate`` and ``event_ids`` replace the outcome's
    own (the identity stage knows which facts were already published).
    """
    if isinstance(outcome, Rejected):
        return {
            "ingest": origin.as_dict(),
            "source": outcome.source_id,
            "message_id": outcome.message_id,
            "status": "rejected",
            "error": {"code": str(outcome.code), "detail": outcome.detail},
            "event_ids": [],
            "at": utc_iso(at),
        }
    return {
        "ingest": origin.as_dict(),
        "source": outcome.source_id,
        "message_id": outcome.message_id,
        "status": status or "accepted",
        "error": None,
        "event_ids": list(event_ids) if event_ids is not None else [e.event_id for e in outcome.events],
        "at": utc_iso(at),
    }


def receipt_key(outcome: IngestOutcome) -> str:
    """Receipts are keyed by source id, so one source's receipts stay in order."""
    return outcome.source_id or UNKNOWN_SOURCE_KEY


def dlq_headers(
    original: tuple[tuple[str, bytes], ...], rejected: Rejected, origin: KafkaCoordinates
) -> list[tuple[str, bytes]]:
    """The original headers unchanged, followed by the reject's code, detail and origin."""
    return [
        *original,
        (ERROR_CODE_HEADER, str(rejected.code).encode()),
        (ERROR_DETAIL_HEADER, rejected.detail.encode()),
        (ORIGIN_HEADER, str(origin).encode()),
    ]


__all__ = ["dlq_headers", "receipt", "receipt_key"]
