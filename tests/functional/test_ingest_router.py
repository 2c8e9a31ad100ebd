"""The ingest agent's routing, in process: what it sends for each outcome, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.errors import ErrorCode
from hub.ingest.outcome import IngestRecord, KafkaCoordinates
from hub.ingest.pipeline import IngestContext
from hub.ingest.signature import sign
from hub.settings import Settings
from hub.sources.registry import Source, SourceRegistry
from hub.streams import routing
from hub.streams.app import create_app
from hub.streams.routing import IngestRouter
from hub.topics import TopicNames

NOW = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)
SECRET = b"functional-secret-0123456789abcdef"
SOURCE = Source(
    id="gp-func",
    kind="gp",
    organization_system="urn:oid:1.2.250.1.71.4.2.2",
    organization_value="971000000",
    time_zone=ZoneInfo("America/Guadeloupe"),
    patient_identifier_systems=("urn:hub:test:patient",),
    secrets=(SECRET,),
)
CONTEXT = IngestContext(registry=SourceRegistry({SOURCE.id: SOURCE}), pseudonym_key=b"k" * 32)
TOPICS = TopicNames("f.")


def record(resource: dict[str, Any], *, message_id: str | None = "msg-1", offset: int = 7) -> IngestRecord:
    value = json.dumps(resource).encode()
    headers = [
        ("hub-source", SOURCE.id.encode()),
        ("hub-signature", sign(SECRET, SOURCE.id, value, int(NOW.timestamp())).encode()),
    ]
    if message_id:
        headers.append(("hub-message-id", message_id.encode()))
    return IngestRecord(value, tuple(headers), KafkaCoordinates(TOPICS.ingest, 1, offset), NOW)


CONDITION = {
    "resourceType": "Condition",
    "subject": {"identifier": {"system": "urn:hub:test:patient", "value": "P-1"}},
    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
    "recordedDate": "2025-03-29",
}


def test_an_accepted_record_sends_its_events_then_one_receipt() -> None:
    """Accepted: pathway events keyed by network patient id, then exactly one receipt, last."""
    sent = IngestRouter(CONTEXT, TOPICS, {}).route(record(CONDITION), b"msg-1", now=NOW)
    assert [out.topic for out in sent] == [TOPICS.pathway, TOPICS.receipts]
    event = json.loads(sent[0].value or b"")
    assert sent[0].key == event["patient_id"].encode()
    assert dict(sent[0].headers)["hub-event-id"].decode() == event["event_id"]
    receipt = json.loads(sent[1].value or b"")
    assert receipt["status"] == "accepted"
    assert receipt["event_ids"] == [event["event_id"]]
    assert sent[1].key == SOURCE.id.encode()


def test_a_rejected_record_goes_to_the_dlq_unchanged_with_a_receipt() -> None:
    """Rejected: the original bytes and headers to the DLQ, plus code, detail and origin; then a receipt."""
    bad = record({"resourceType": "Condition", "subject": {"reference": "Group/x"}})
    sent = IngestRouter(CONTEXT, TOPICS, {}).route(bad, b"k", now=NOW)
    assert [out.topic for out in sent] == [TOPICS.dlq, TOPICS.receipts]
    assert sent[0].value == bad.value and sent[0].key == b"k"
    headers = dict(sent[0].headers)
    assert headers["hub-error-code"] == b"patient.unresolved"
    assert headers["hub-origin"] == f"{TOPICS.ingest}/1/7".encode()
    assert list(sent[0].headers[: len(bad.headers)]) == list(bad.headers)


def test_a_resent_message_id_is_receipted_duplicate_and_sends_no_event() -> None:
    """The second copy of one message id publishes nothing and repeats the first event ids."""
    seen: dict[str, list[str]] = {}
    router = IngestRouter(CONTEXT, TOPICS, seen)
    first = router.route(record(CONDITION), b"msg-1", now=NOW)
    again = router.route(record(CONDITION, offset=8), b"msg-1", now=NOW)
    assert [out.topic for out in again] == [TOPICS.receipts]
    receipt = json.loads(again[0].value or b"")
    assert receipt["status"] == "duplicate"
    assert receipt["event_ids"] == json.loads(first[-1].value or b"")["event_ids"]


def test_without_a_message_id_the_same_fact_keeps_its_event_id() -> None:
    """No idempotency key: the fact is published again, under the same deterministic event id."""
    router = IngestRouter(CONTEXT, TOPICS, {})
    one = router.route(record(CONDITION, message_id=None), None, now=NOW)
    two = router.route(record(CONDITION, message_id=None, offset=9), None, now=NOW)
    assert json.loads(one[0].value or b"")["event_id"] == json.loads(two[0].value or b"")["event_id"]


def test_a_bug_in_the_core_becomes_a_reject_and_the_partition_moves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poison message: an unexpected exception is receipted hub.internal_error and kept in the DLQ."""

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(routing, "process_ingest", explode)
    sent = IngestRouter(CONTEXT, TOPICS, {}).route(record(CONDITION), b"msg-1", now=NOW)
    assert [out.topic for out in sent] == [TOPICS.dlq, TOPICS.receipts]
    receipt = json.loads(sent[1].value or b"")
    assert receipt["error"]["code"] == ErrorCode.INTERNAL
    assert receipt["source"] == SOURCE.id


def test_the_app_declares_the_contract_topics_with_one_ingest_agent() -> None:
    """The faust app consumes the ingest topic with one agent of concurrency 1, and a co-partitioned table."""
    settings = Settings(topic_prefix="f.", topic_partitions=4, bootstrap_servers="127.0.0.1:1")
    app = create_app(settings, CONTEXT)
    agents = list(app.agents.values())
    assert len(agents) == 1
    assert agents[0].concurrency == 1
    assert agents[0].channel.get_topic_name() == TOPICS.ingest
    table = app.tables["ingest-message-ids"]
    assert table.partitions == 4
