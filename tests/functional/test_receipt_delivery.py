"""Receipts are delivered at least once, with identical bytes, to hub.receipts.v1 and the source's own topic.

A worker killed after sending an input's receipt but before committing the input reads that input
again: the same ingest record (same coordinates) goes through the ingest and identity agents a second
time, with the identity tables as the changelog left them. Its receipt must be the first one again,
byte for byte (``at`` is the ingest record's timestamp, never a clock; a redelivered input is not a
duplicate of itself), so a consumer that keeps one receipt per ``ingest`` coordinates loses nothing.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.errors import BrokerError, ConfigError
from hub.identity.stage import IdentityStage
from hub.ingest.outcome import IngestRecord, KafkaCoordinates
from hub.ingest.pipeline import IngestContext
from hub.ingest.receipts import receipt_topics
from hub.ingest.signature import sign
from hub.records import Outgoing
from hub.schemas import schema_errors
from hub.sources.registry import load_sources
from hub.streams.routing import IdentityRouter, IngestRouter
from hub.topics import TopicNames, source_receipts

from .test_ingest_router import (
    CONDITION,
    CONTEXT,
    NOW,
    ORGANIZATION,
    OWN_RECEIPTS,
    QUALIFIED_PATIENT,
    SECRET,
    SOURCE,
    TOPICS,
)

#: When the input reached the ingest topic (its Kafka timestamp): before the workers' clocks below.
INGESTED = NOW - timedelta(seconds=2, milliseconds=250)
#: A worker's clock on the first pass, and on the redelivery after it was killed and restarted.
FIRST_PASS, REDELIVERY = NOW, NOW + timedelta(minutes=4)


def ingest_record(
    resource: dict[str, Any], *, offset: int, message_id: str | None = "msg-1", source: str = SOURCE.id
) -> IngestRecord:
    """An ingest record as Kafka hands it to the agent, with the timestamp it got on the topic."""
    value = json.dumps(resource).encode()
    headers = [
        ("hub-source", source.encode()),
        ("hub-signature", sign(SECRET, source, value, int(NOW.timestamp())).encode()),
    ]
    if message_id:
        headers.append(("hub-message-id", message_id.encode()))
    return IngestRecord(value, tuple(headers), KafkaCoordinates(TOPICS.ingest, 1, offset), INGESTED)


def receipts_of(
    ingest: IngestRouter, identity: IdentityRouter, rec: IngestRecord, *, now: datetime
) -> list[Outgoing]:
    """The receipt records both agents send for one input (following identity's own hops)."""
    sent: list[Outgoing] = []
    pending = list(ingest.route(rec, None, now=now))
    while pending:
        out = pending.pop(0)
        if out.topic == TOPICS.identity:
            assert out.value is not None
            pending[:0] = identity.route(out.value)
        elif out.topic in (TOPICS.receipts, OWN_RECEIPTS):
            sent.append(out)
    return sent


def value_of(out: Outgoing) -> dict[str, Any]:
    assert out.value is not None
    document: dict[str, Any] = json.loads(out.value)
    return document


INPUTS = {
    "accepted, events published by the identity agent": CONDITION,
    "accepted, linking a local id to a qualified INS": QUALIFIED_PATIENT,
    "accepted, about no patient (receipted by ingest)": ORGANIZATION,
    "rejected (receipted by ingest, copied to the DLQ)": {"resourceType": "Condition", "subject": {}},
}


@pytest.mark.parametrize("resource", INPUTS.values(), ids=INPUTS.keys())
def test_the_same_input_routed_again_gets_byte_identical_receipts(resource: dict[str, Any]) -> None:
    """Routed twice, hours of worker clock apart, with the identity tables kept (the changelog had them)
    or lost (it had not): the same receipt bytes each time, on hub.receipts.v1 and the source's topic."""
    ingest, identity = IngestRouter(CONTEXT, TOPICS), IdentityRouter(IdentityStage({}, {}, {}), TOPICS)
    rec = ingest_record(resource, offset=7)
    first = receipts_of(ingest, identity, rec, now=FIRST_PASS)
    assert [out.topic for out in first] == [TOPICS.receipts, OWN_RECEIPTS]
    assert first[0].value == first[1].value and first[0].key == first[1].key == SOURCE.id.encode()
    receipt = value_of(first[0])
    assert schema_errors("receipt.schema.json", receipt) == []
    assert receipt["at"] == "2025-03-30T00:29:57.750Z", "the ingest record's timestamp, not a clock"

    again = receipts_of(ingest, identity, rec, now=REDELIVERY)
    assert again == first
    state_lost = IdentityRouter(IdentityStage({}, {}, {}), TOPICS)
    assert receipts_of(IngestRouter(CONTEXT, TOPICS), state_lost, rec, now=REDELIVERY) == first


def test_a_redelivered_input_keeps_its_status_and_a_resend_stays_a_duplicate() -> None:
    """An input (offset 7) and its resend (offset 8, same message id), both redelivered after a crash: the
    first is still ``accepted`` (not a duplicate of itself), the resend still ``duplicate``, byte for byte."""
    ingest, identity = IngestRouter(CONTEXT, TOPICS), IdentityRouter(IdentityStage({}, {}, {}), TOPICS)
    original, resend = ingest_record(CONDITION, offset=7), ingest_record(CONDITION, offset=8)
    first = [receipts_of(ingest, identity, rec, now=FIRST_PASS) for rec in (original, resend)]
    assert [value_of(outs[0])["status"] for outs in first] == ["accepted", "duplicate"]
    again = [receipts_of(ingest, identity, rec, now=REDELIVERY) for rec in (original, resend)]
    assert again == first
    # The de-duplication key tells them apart: the two inputs' receipts name their own coordinates.
    assert [value_of(outs[0])["ingest"]["offset"] for outs in again] == [7, 8]


@pytest.mark.parametrize("claimed", ["not-registered", "../../etc", "Hub.Receipts"])
def test_an_unregistered_sources_receipt_goes_to_hub_receipts_only(claimed: str) -> None:
    """source.unknown: whatever the header claims, no per-source topic is named or written."""
    sent = IngestRouter(CONTEXT, TOPICS).route(
        ingest_record(CONDITION, offset=3, source=claimed), b"k", now=FIRST_PASS
    )
    receipts = [out for out in sent if "receipts" in out.topic]
    assert [out.topic for out in receipts] == [TOPICS.receipts]
    assert value_of(receipts[0])["error"]["code"] == "source.unknown"


def test_a_source_id_no_registry_can_hold_names_no_receipt_topic() -> None:
    """Receipt topic names come from TopicNames only, for ids of the registry's form; a receipt whose
    source id has another form still reaches hub.receipts.v1, and only it."""
    assert TOPICS.source_receipts("gp-func") == "f.hub.receipts.gp-func.v1"
    assert receipt_topics(TOPICS, "gp-func", registered=True) == (TOPICS.receipts, OWN_RECEIPTS)
    assert receipt_topics(TOPICS, "gp-func", registered=False) == (TOPICS.receipts,)
    for bad in ("", "x", "Gp", "gp.func", "gp_func", "../x", "a" * 64):
        with pytest.raises(ConfigError):
            source_receipts(bad)
        assert receipt_topics(TOPICS, bad, registered=True) == (TOPICS.receipts,)


def write_registry(path: Path, ids: list[str], *, stamp: int) -> None:
    """A source registry with these sources (one shared secret file), modified at ``stamp`` (seconds)."""
    entries = [
        {
            "id": source_id,
            "kind": "gp",
            "organization": {"system": "urn:test:org", "value": source_id},
            "time_zone": "Europe/Paris",
            "patient_identifier_systems": ["urn:test:patient"],
            "secrets": [{"file": "gp.key"}],
        }
        for source_id in ids
    ]
    path.write_text(json.dumps({"sources": entries}), encoding="utf-8")
    # A modification time of its own, whatever the file system's timestamp granularity.
    os.utime(path, ns=(stamp * 1_000_000_000, stamp * 1_000_000_000))


def test_a_source_added_while_the_worker_runs_gets_its_receipt_topic_before_its_first_receipt(
    tmp_path: Path,
) -> None:
    """The reload that brings a new source first creates its receipt topic; when that fails, the old
    registry stays (the input is refused source.unknown, receipted on hub.receipts.v1 only) and the
    reload is tried again at the next check."""
    (tmp_path / "gp.key").write_text(SECRET.decode(), encoding="utf-8")
    path = tmp_path / "sources.json"
    write_registry(path, ["gp-a"], stamp=1_000)
    topics = TopicNames("t.")
    asked: list[list[str]] = []
    broker_up = False

    def create_receipt_topics(source_ids: Any) -> list[str]:
        asked.append(list(source_ids))
        if not broker_up:
            raise BrokerError("cannot create topics on 127.0.0.1:1: NoBrokersAvailable")
        return [topics.source_receipts(source_id) for source_id in source_ids]

    context = IngestContext(registry=load_sources(path, environ={}), pseudonym_key=b"k" * 16)
    router = IngestRouter(context, topics, create_receipt_topics=create_receipt_topics)
    write_registry(path, ["gp-a", "gp-b"], stamp=2_000)
    value = json.dumps(ORGANIZATION).encode()
    rec = IngestRecord(
        value,
        (
            ("hub-source", b"gp-b"),
            ("hub-signature", sign(SECRET, "gp-b", value, int(NOW.timestamp())).encode()),
        ),
        KafkaCoordinates(topics.ingest, 0, 1),
        INGESTED,
    )

    router.refresh_registry(force=True)
    assert asked == [["gp-b"]] and router.context.registry.get("gp-b") is None
    refused = [out for out in router.route(rec, None, now=FIRST_PASS) if "receipts" in out.topic]
    assert [out.topic for out in refused] == [topics.receipts]
    assert value_of(refused[0])["error"]["code"] == "source.unknown"

    broker_up = True
    router.refresh_registry(force=True)
    assert asked == [["gp-b"], ["gp-b"]] and router.context.registry.get("gp-b") is not None
    accepted = router.route(rec, None, now=FIRST_PASS)
    assert [out.topic for out in accepted] == [topics.receipts, "t.hub.receipts.gp-b.v1"]
    assert value_of(accepted[1])["status"] == "accepted"
    router.refresh_registry(force=True)
    assert len(asked) == 2, "a registry without new sources creates no topic"
