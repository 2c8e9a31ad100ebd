"""What the ingest agent sends for one record: the pure core's outcome turned into Kafka records."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime

from hub.errors import ErrorCode
from hub.ingest.outcome import Accepted, IngestOutcome, IngestRecord, Rejected
from hub.ingest.pipeline import SOURCE_HEADER, IngestContext, message_id_of, printable_id, process_ingest
from hub.ingest.receipts import dlq_headers, receipt, receipt_key
from hub.logging import get_logger
from hub.topics import TopicNames

log = get_logger(__name__)

EVENT_ID_HEADER = "hub-event-id"


@dataclass(frozen=True)
class Outgoing:
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def _json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class IngestRouter:
    """Decides, for one ingest record, every record to send: events, one receipt, maybe a DLQ copy.

    ``seen`` remembers ``(source, hub-message-id)`` → event ids, so a resent message is receipted
    ``duplicate`` and publishes nothing again. In the worker it is a faust table, co-partitioned with
    the ingest topic: sources key their records by message id so a resend lands on the same partition.
    """

    def __init__(
        self, context: IngestContext, topics: TopicNames, seen: MutableMapping[str, list[str]]
    ) -> None:
        self.context = context
        self.topics = topics
        self.seen = seen

    def outcome_for(self, record: IngestRecord, *, now: datetime) -> IngestOutcome:
        """The pure outcome; a bug in the core becomes a reject so the partition keeps moving."""
        try:
            return process_ingest(record, self.context, now=now)
        except Exception as exc:
            log.error("ingest.internal_error", error=type(exc).__name__, origin=str(record.origin))
            return Rejected(
                ErrorCode.INTERNAL,
                f"hub failed on this record ({type(exc).__name__})",
                printable_id(record.header(SOURCE_HEADER)),
                message_id_of(record),
            )

    def route(
        self, record: IngestRecord, key: bytes | None, *, now: datetime | None = None
    ) -> list[Outgoing]:
        """Every record to produce for this input, receipt last."""
        at = now or datetime.now(UTC)
        outcome = self.outcome_for(record, now=at)
        out: list[Outgoing] = []
        duplicate_of: tuple[str, ...] | None = None
        if isinstance(outcome, Rejected):
            out.append(
                Outgoing(
                    self.topics.dlq,
                    key,
                    record.value,
                    tuple(dlq_headers(record.headers, outcome, record.origin)),
                )
            )
            log.info("ingest.rejected", code=str(outcome.code), source=outcome.source_id)
        else:
            duplicate_of = self._publish_or_recall(outcome, out)
        out.append(
            Outgoing(
                self.topics.receipts,
                receipt_key(outcome).encode(),
                _json(receipt(outcome, record.origin, at=at, duplicate_of=duplicate_of)),
            )
        )
        return out

    def _publish_or_recall(self, outcome: Accepted, out: list[Outgoing]) -> tuple[str, ...] | None:
        memo_key = f"{outcome.source_id}\x1f{outcome.message_id}" if outcome.message_id else None
        if memo_key is not None and memo_key in self.seen:
            log.info("ingest.duplicate", source=outcome.source_id)
            return tuple(self.seen[memo_key])
        for event in outcome.events:
            out.append(
                Outgoing(
                    self.topics.pathway,
                    event.patient_id.encode(),
                    event.to_json(),
                    ((EVENT_ID_HEADER, event.event_id.encode()),),
                )
            )
        if memo_key is not None:
            self.seen[memo_key] = [event.event_id for event in outcome.events]
        log.info("ingest.accepted", source=outcome.source_id, events=len(outcome.events))
        return None
