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

from hub.consent.audit import (
    COMPONENT_SYSTEM,
    DCM,
    KAFKA_RECORD_SYSTEM,
    OUTCOME_SUCCESS,
    SOURCE_SYSTEM,
    SUBTYPE_SYSTEM,
    audit_id,
)
from hub.ingest.outcome import KafkaCoordinates
from hub.ingest.pipeline import printable_id
from hub.ingest.receipts import (
    DLQ_KEPT_HEADER,
    ERROR_CODE_HEADER,
    ERROR_DETAIL_HEADER,
    ORIGIN_HEADER,
    ORIGINAL_SIZE_HEADER,
    UNKNOWN_SOURCE_KEY,
)
from hub.kafka.clients import Record
from hub.normalise.time import utc_iso

SOURCE_HEADER = "hub-source"
MESSAGE_ID_HEADER = "hub-message-id"
#: Added to a replayed record: the ``topic/partition/offset`` of the record first rejected.
REPLAY_OF_HEADER = "hub-replay-of"
#: The hub's own headers, dropped from a replayed record.
HUB_HEADERS = frozenset({ERROR_CODE_HEADER, ERROR_DETAIL_HEADER, ORIGIN_HEADER, REPLAY_OF_HEADER})
REPLAY_SUBTYPE = "dlq-replay"
#: The audit record's key when the reject names no registered source (as receipts do).

_IMPORT = {"system": DCM, "code": "110107", "display": "Import"}
_SOURCE_ROLE = {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]}
_DESTINATION_ROLE = {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]}
_SYSTEM_OBJECT = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
    "code": "2",
    "display": "System Object",
}
_JOB_ROLE = {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "20", "display": "Job"}
_APPLICATION_SERVER = {
    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
    "code": "4",
    "display": "Application Server",
}


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


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    """A header's text (last occurrence: the hub's headers come after the source's), or None."""
    found = None
    for key, value in headers:
        if key == name:
            found = value.decode(errors="replace")
    return found


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
        origin=_header(record.headers, ORIGIN_HEADER),
        source=printable_id(_header(record.headers, SOURCE_HEADER)),
        message_id=_message_id(_header(record.headers, MESSAGE_ID_HEADER)),
        code=_header(record.headers, ERROR_CODE_HEADER),
        detail=_header(record.headers, ERROR_DETAIL_HEADER),
        timestamp=_timestamp(record.timestamp_ms),
        excerpt_of=original_size(record),
    )


def original_size(record: Record) -> int | None:
    """The original's size in bytes when the record keeps only an excerpt (hub.ingest.receipts.dlq_record).

    Such a record cannot be replayed: its value is not the input the source sent.
    """
    if _header(record.headers, DLQ_KEPT_HEADER) != "excerpt":
        return None
    size = _header(record.headers, ORIGINAL_SIZE_HEADER) or ""
    return int(size) if size.isdigit() else 0


def matches(
    record: Record, *, code: str | None = None, source: str | None = None, since: datetime | None = None
) -> bool:
    """Whether a DLQ record passes every given filter (code and source exactly; at or after ``since``)."""
    if code is not None and _header(record.headers, ERROR_CODE_HEADER) != code:
        return False
    if source is not None and printable_id(_header(record.headers, SOURCE_HEADER)) != source:
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
    headers: tuple[tuple[str, bytes], ...]


def replay_record(record: Record) -> ReplayRecord:
    """The original record again: key and value unchanged, the hub's headers replaced by ``hub-replay-of``."""
    origin = _header(record.headers, ORIGIN_HEADER) or f"{record.topic}/{record.partition}/{record.offset}"
    headers = tuple((k, v) for k, v in record.headers if k not in HUB_HEADERS)
    return ReplayRecord(origin, record.key, record.value, (*headers, (REPLAY_OF_HEADER, origin.encode())))


def audit_key(dlq_entry: DlqEntry) -> bytes:
    """The replay AuditEvent's key: the source id, as for the reject's own audit record."""
    return (dlq_entry.source or UNKNOWN_SOURCE_KEY).encode()


def _detail(name: str, value: str) -> dict[str, str]:
    return {"type": name, "valueString": value}


def audit_replay(dlq_entry: DlqEntry, *, replayed_to: KafkaCoordinates, recorded: datetime) -> dict[str, Any]:
    """The AuditEvent of one replay: the DLQ origin, its code, the new ingest coordinates; no body."""
    if recorded.utcoffset() is None:
        raise ValueError("recorded must be timezone-aware")
    origin = dlq_entry.origin or dlq_entry.where
    details = [
        _detail("code", dlq_entry.code or "unknown"),
        _detail("dlq", dlq_entry.where),
        _detail("replayed_to", str(replayed_to)),
        _detail("topic", replayed_to.topic),
        _detail("partition", str(replayed_to.partition)),
        _detail("offset", str(replayed_to.offset)),
    ]
    if dlq_entry.message_id:
        details.append(_detail("message_id", dlq_entry.message_id))
    if dlq_entry.source:
        details.append(_detail("source", dlq_entry.source))
    return {
        "resourceType": "AuditEvent",
        "id": audit_id(REPLAY_SUBTYPE, origin, str(replayed_to)),
        "type": _IMPORT,
        "subtype": [{"system": SUBTYPE_SYSTEM, "code": REPLAY_SUBTYPE}],
        "action": "C",
        "recorded": utc_iso(recorded),
        "outcome": OUTCOME_SUCCESS,
        "outcomeDesc": f"replayed {origin} ({dlq_entry.code or 'unknown'}) as {replayed_to}",
        "agent": [
            {
                "type": _SOURCE_ROLE,
                "who": (
                    {"identifier": {"system": SOURCE_SYSTEM, "value": dlq_entry.source}}
                    if dlq_entry.source
                    else {"display": "unregistered source"}
                ),
                "requestor": False,
            },
            {
                "type": _DESTINATION_ROLE,
                "who": {"type": "Device", "identifier": {"system": COMPONENT_SYSTEM, "value": "hub-ops"}},
                "requestor": True,
            },
        ],
        "source": {
            "observer": {"type": "Device", "identifier": {"system": COMPONENT_SYSTEM, "value": "hub-ops"}},
            "type": [_APPLICATION_SERVER],
        },
        "entity": [
            {
                "what": {"identifier": {"system": KAFKA_RECORD_SYSTEM, "value": origin}},
                "type": _SYSTEM_OBJECT,
                "role": _JOB_ROLE,
                "detail": details,
            }
        ],
    }
