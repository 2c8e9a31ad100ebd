"""``hub dlq``'s pure part: entries, filters, replay records and the replay AuditEvent."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from hub.consent.audit import audit_id
from hub.errors import ErrorCode
from hub.ingest.outcome import KafkaCoordinates, Rejected
from hub.ingest.receipts import DLQ_EXCERPT_BYTES, DLQ_HEADER_VALUE_BYTES
from hub.ingest.receipts import dlq_record as dlq_record_of
from hub.kafka.clients import Record
from hub.ops import dlq as d

BODY = b'{"resourceType":"Observation","note":[{"text":"Lamont secret diagnosis"}]}'
ORIGINAL = (
    ("hub-source", b"gp-1"),
    ("hub-signature", b"t=1,v1=abc"),
    ("hub-message-id", b"m-1"),
    ("content-type", b"application/fhir+json"),
)
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def dlq_record(
    *,
    code: str = "source.unknown",
    source: bytes = b"gp-1",
    offset: int = 7,
    at: datetime = T0,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> Record:
    original = tuple((k, source if k == "hub-source" else v) for k, v in ORIGINAL) + extra
    headers = (
        *original,
        ("hub-error-code", code.encode()),
        ("hub-error-detail", b"no such source"),
        ("hub-origin", f"p.hub.ingest.v1/2/{offset}".encode()),
    )
    return Record("p.hub.dlq.v1", 0, offset, int(at.timestamp() * 1000), b"m-1", BODY, headers)


def test_an_entry_names_origin_source_message_code_detail_and_time_never_the_body() -> None:
    record = dlq_record()
    entry = d.entry(record)
    assert entry == d.DlqEntry(
        where="p.hub.dlq.v1/0/7",
        origin="p.hub.ingest.v1/2/7",
        source="gp-1",
        message_id="m-1",
        code="source.unknown",
        detail="no such source",
        timestamp="2026-05-01T12:00:00.000Z",
    )
    listing = "\n".join(d.render([entry])) + json.dumps(entry.to_json())
    assert "Lamont" not in listing
    assert "Observation" not in listing
    assert "t=1,v1=abc" not in listing, "never the signature either"
    assert d.render([entry]) == [
        "p.hub.ingest.v1/2/7  gp-1  m-1  source.unknown  no such source  2026-05-01T12:00:00.000Z"
    ]


def test_an_unprintable_source_or_message_id_is_not_echoed() -> None:
    record = dlq_record(source=b"evil\x1b[31m source")
    record = Record(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp_ms,
        record.key,
        record.value,
        tuple((k, b"id\nwith newline" if k == "hub-message-id" else v) for k, v in record.headers),
    )
    entry = d.entry(record)
    assert entry.source is None
    assert entry.message_id == "(unprintable)"
    assert "\x1b" not in d.render([entry])[0]


def test_filters_by_code_source_and_since() -> None:
    records = [
        dlq_record(code="source.unknown", source=b"gp-1", offset=1, at=T0),
        dlq_record(code="patient.unresolved", source=b"gp-1", offset=2, at=T0.replace(hour=13)),
        dlq_record(code="source.unknown", source=b"gp-2", offset=3, at=T0.replace(hour=14)),
    ]

    def offsets(**filters: object) -> list[int]:
        return [r.offset for r in d.select(records, **filters)]  # type: ignore[arg-type]

    assert offsets() == [1, 2, 3]
    assert offsets(code="source.unknown") == [1, 3]
    assert offsets(source="gp-1") == [1, 2]
    assert offsets(code="source.unknown", source="gp-2") == [3]
    assert offsets(since=d.parse_since("2026-05-01T13:00:00")) == [2, 3]
    assert offsets(since=d.parse_since("2026-05-01T15:00:00+02:00")) == [2, 3]
    assert offsets(code="fhir.invalid") == []


def test_since_must_be_iso_8601() -> None:
    assert d.parse_since("2026-05-01") == datetime(2026, 5, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="ISO 8601"):
        d.parse_since("yesterday")


def test_a_replay_record_is_the_original_without_the_hubs_headers_plus_replay_of() -> None:
    again = d.replay_record(dlq_record())
    assert again.key == b"m-1"
    assert again.value == BODY
    assert again.origin == "p.hub.ingest.v1/2/7"
    assert again.headers == (*ORIGINAL, ("hub-replay-of", b"p.hub.ingest.v1/2/7"))


def test_a_reject_of_a_replay_is_replayed_with_one_replay_of_header_naming_its_own_origin() -> None:
    again = d.replay_record(dlq_record(offset=9, extra=(("hub-replay-of", b"p.hub.ingest.v1/2/7"),)))
    assert [v for k, v in again.headers if k == "hub-replay-of"] == [b"p.hub.ingest.v1/2/9"]
    assert not {k for k, _ in again.headers} & {"hub-error-code", "hub-error-detail", "hub-origin"}


def test_the_replay_audit_event_names_origin_and_new_coordinates_with_a_stable_id() -> None:
    entry = d.entry(dlq_record())
    where = KafkaCoordinates("p.hub.ingest.v1", 1, 42)
    audit = d.audit_replay(entry, replayed_to=where, recorded=T0)
    assert audit["resourceType"] == "AuditEvent"
    assert audit["type"]["code"] == "110107"
    assert audit["subtype"] == [{"system": "urn:hub:audit-event-subtype", "code": "dlq-replay"}]
    assert audit["outcome"] == "0"
    assert audit["entity"][0]["what"]["identifier"]["value"] == "p.hub.ingest.v1/2/7"
    details = {x["type"]: x["valueString"] for x in audit["entity"][0]["detail"]}
    assert details["replayed_to"] == "p.hub.ingest.v1/1/42"
    assert details["code"] == "source.unknown"
    assert details["message_id"] == "m-1"
    assert audit["id"] == audit_id("dlq-replay", "p.hub.ingest.v1/2/7", "p.hub.ingest.v1/1/42")
    assert d.audit_replay(entry, replayed_to=where, recorded=T0.replace(hour=18))["id"] == audit["id"]
    second = d.audit_replay(entry, replayed_to=KafkaCoordinates("p.hub.ingest.v1", 1, 43), recorded=T0)
    assert second["id"] != audit["id"], "replaying twice is visible"
    assert "Lamont" not in json.dumps(audit)
    assert d.audit_key(entry) == b"gp-1"
    with pytest.raises(ValueError, match="timezone"):
        d.audit_replay(entry, replayed_to=where, recorded=datetime(2026, 5, 1))  # noqa: DTZ001


def test_a_reject_too_large_for_the_dlq_keeps_headers_code_digest_and_a_bounded_excerpt() -> None:
    """The original's first bytes, its size and SHA-256, the reject's code: never lost, never too large."""
    rejected = Rejected(ErrorCode.PAYLOAD_TOO_LARGE, "body is too large", "gp-1", "m-1")
    origin = KafkaCoordinates("p.hub.ingest.v1", 2, 7)
    whole = dlq_record_of(BODY, ORIGINAL, rejected, origin, limit=1024)
    assert whole.whole and whole.value == BODY and whole.headers[: len(ORIGINAL)] == ORIGINAL

    huge = b"y" * 5_000_000
    headers = (*ORIGINAL, ("x-padding", b"p" * 100_000))
    kept = dlq_record_of(huge, headers, rejected, origin, limit=1024 * 1024)
    assert not kept.whole
    assert kept.value == huge[:DLQ_EXCERPT_BYTES]
    found = dict(kept.headers)
    assert found["hub-error-code"] == b"payload.too_large"
    assert found["hub-origin"] == b"p.hub.ingest.v1/2/7"
    assert found["hub-original-size"] == b"5000000"
    assert found["hub-original-sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert found["hub-source"] == b"gp-1", "the source's headers are kept, each bounded"
    assert len(found["x-padding"]) == DLQ_HEADER_VALUE_BYTES
    # Headers alone may make a record too large: a small value with huge headers is cut too.
    assert not dlq_record_of(BODY, headers, rejected, origin, limit=1024).whole


def test_an_excerpt_is_listed_as_one_and_never_replayed() -> None:
    record = dlq_record(extra=(("hub-dlq-kept", b"excerpt"), ("hub-original-size", b"5000000")))
    assert d.entry(record).excerpt_of == 5_000_000
    assert d.render([d.entry(record)])[0].endswith("(excerpt kept: the original was 5000000 bytes)")
    assert d.original_size(dlq_record()) is None
