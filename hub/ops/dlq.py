"""``hub dlq``, the pure part: DLQ records as entries, filters, replay records and their AuditEvents.

A DLQ record is the original ingest record (key, value, headers unchanged) followed by the headers
``hub-error-code``, ``hub-error-detail`` and ``hub-origin`` (:mod:`hub.ingest.receipts`). A replay
sends the original back to ``hub.ingest.v1``: same key, same value, the original headers without
the hub's own (``hub-error-*``, ``hub-origin``, an earlier ``hub-replay-of``), plus
``hub-replay-of: <origin>``.

Each replay is audited once (DICOM 110107 *Import*, subtype ``dlq-replay``). Its id is
``audit_id("dlq-replay", origin, new coordinates)``: stable for one replay (a redelivered audit
record de-duplicates), distinct for each replay of the same reject (replaying twice stays visible).
Neither an entry nor an AuditEvent carries the body: codes, ids and Kafka coordinates only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from hub.audit_vocabulary import (
    DESTINATION_ROLE,
    DLQ_REPLAY,
    IMPORT,
    JOB_ROLE,
    KAFKA_RECORD_SYSTEM,
    OPS_COMPONENT,
    OUTCOME_SUCCESS,
    SOURCE_ROLE,
    SYSTEM_OBJECT,
    agent,
    audit_event,
    audit_id,
    component,
    detail,
    entity,
    identified,
    observer,
    source_who,
)
from hub.ingest.outcome import KafkaCoordinates
from hub.ingest.pipeline import printable_id
from hub.ingest.receipts import UNKNOWN_SOURCE_KEY
from hub.kafka.clients import Record
from hub.normalise.time import utc_iso
from hub.records import (
    DLQ_HUB_HEADERS,
    DLQ_KEPT_HEADER,
    ERROR_CODE_HEADER,
    ERROR_DETAIL_HEADER,
    MESSAGE_ID_HEADER,
    ORIGIN_HEADER,
    ORIGINAL_SIZE_HEADER,
    REPLAY_OF_HEADER,
    SOURCE_HEADER,
    Headers,
    encode_headers,
    header,
)


@dataclass(frozen=True)
class DlqEntry:
    """One reject as an operator sees it: where, who, which message, why, when; never the body."""

    where: str
    origin: str | None
    source: str | None
    message_id: str | None
    code: str | None
    detail: str | None
    timestamp: str
    #: The original's size when the DLQ keeps only an excerpt of it (too large to keep whole).
    excerpt_of: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object."""
        return asdict(self)


def _message_id(raw: str | None) -> str | None:
    if raw is None or printable_id(raw) is not None:
        return raw
    return "(unprintable)"


def _timestamp(ms: int) -> str:
    return utc_iso(datetime.fromtimestamp(ms / 1000, tz=UTC))


def entry(record: Record) -> DlqEntry:
    """The entry of one DLQ record; source and message id are echoed only when printable."""
    return DlqEntry(
        where=f"{record.topic}/{record.partition}/{record.offset}",
        origin=header(record.headers, ORIGIN_HEADER),
        source=printable_id(header(record.headers, SOURCE_HEADER)),
        message_id=_message_id(header(record.headers, MESSAGE_ID_HEADER)),
        code=header(record.headers, ERROR_CODE_HEADER),
        detail=header(record.headers, ERROR_DETAIL_HEADER),
        timestamp=_timestamp(record.timestamp_ms),
        excerpt_of=original_size(record),
    )


def original_size(record: Record) -> int | None:
    """The original's size in bytes when the record keeps only an excerpt (hub.ingest.receipts.dlq_record).

    Such a record cannot be replayed: its value is not the input the source sent.
    """
    if header(record.headers, DLQ_KEPT_HEADER) != "excerpt":
        return None
    size = header(record.headers, ORIGINAL_SIZE_HEADER) or ""
    return int(size) if size.isdigit() else 0


def matches(
    record: Record, *, code: str | None = None, source: str | None = None, since: datetime | None = None
) -> bool:
    """Whether a DLQ record passes every given filter (code and source exactly; at or after ``since``)."""
    if code is not None and header(record.headers, ERROR_CODE_HEADER) != code:
        return False
    if source is not None and printable_id(header(record.headers, SOURCE_HEADER)) != source:
        return False
    return since is None or record.timestamp_ms >= since.timestamp() * 1000


def select(
    records: Iterable[Record],
    *,
    code: str | None = None,
    source: str | None = None,
    since: datetime | None = None,
) -> Iterator[Record]:
    """The records passing the filters, in the order read."""
    return (r for r in records if matches(r, code=code, source=source, since=since))


def parse_since(text: str) -> datetime:
    """An ISO 8601 instant or date; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r} is not an ISO 8601 date or instant") from None
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)


def render(entries: Iterable[DlqEntry]) -> list[str]:
    """One line per reject: origin, source, message id, code, detail, Kafka timestamp."""
    lines = []
    for e in entries:
        cells = [e.origin or e.where, e.source or "-", e.message_id or "-", e.code or "-"]
        kept = [] if e.excerpt_of is None else [f"(excerpt kept: the original was {e.excerpt_of} bytes)"]
        lines.append("  ".join([*cells, e.detail or "-", e.timestamp, *kept]))
    return lines


@dataclass(frozen=True)
class ReplayRecord:
    """What to produce to the ingest topic for one reject."""

    origin: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def replay_record(record: Record) -> ReplayRecord:
    """The original record again: key and value unchanged, the hub's headers replaced by ``hub-replay-of``."""
    origin = header(record.headers, ORIGIN_HEADER) or f"{record.topic}/{record.partition}/{record.offset}"
    headers = tuple((k, v) for k, v in record.headers if k not in DLQ_HUB_HEADERS)
    return ReplayRecord(
        origin, record.key, record.value, (*headers, *encode_headers({REPLAY_OF_HEADER: origin}))
    )


def audit_key(dlq_entry: DlqEntry) -> bytes:
    """The replay AuditEvent's key: the source id, as for the reject's own audit record."""
    return (dlq_entry.source or UNKNOWN_SOURCE_KEY).encode()


def audit_replay(dlq_entry: DlqEntry, *, replayed_to: KafkaCoordinates, recorded: datetime) -> dict[str, Any]:
    """The AuditEvent of one replay: the DLQ origin, its code, the new ingest coordinates; no body."""
    if recorded.utcoffset() is None:
        raise ValueError("recorded must be timezone-aware")
    origin = dlq_entry.origin or dlq_entry.where
    details = [
        detail("code", dlq_entry.code or "unknown"),
        detail("dlq", dlq_entry.where),
        detail("replayed_to", str(replayed_to)),
        detail("topic", replayed_to.topic),
        detail("partition", str(replayed_to.partition)),
        detail("offset", str(replayed_to.offset)),
    ]
    if dlq_entry.message_id:
        details.append(detail("message_id", dlq_entry.message_id))
    if dlq_entry.source:
        details.append(detail("source", dlq_entry.source))
    return audit_event(
        id=audit_id(DLQ_REPLAY, origin, str(replayed_to)),
        type=IMPORT,
        subtype=DLQ_REPLAY,
        action="C",
        recorded=utc_iso(recorded),
        outcome=OUTCOME_SUCCESS,
        description=f"replayed {origin} ({dlq_entry.code or 'unknown'}) as {replayed_to}",
        agents=[
            agent(SOURCE_ROLE, source_who(dlq_entry.source), requestor=False),
            agent(DESTINATION_ROLE, component(OPS_COMPONENT), requestor=True),
        ],
        source=observer(OPS_COMPONENT),
        entities=[
            entity(
                identified(KAFKA_RECORD_SYSTEM, origin), type=SYSTEM_OBJECT, role=JOB_ROLE, details=details
            )
        ],
    )
