"""Redelivery versus resend: the same ingest record read again publishes its events again, same ids.

Found by the worker-kill fault test (tests/integration/test_faults_worker_kill.py):

- with two workers, the local id's partition and the INS id's partition live on different workers,
  each with only its own tables. An input redelivered after the link was forwarded to the INS id's
  partition, which had never seen it, so its facts went out a second time under new event ids;
- faust sends table changelog records as the stage writes them, its outputs only as the input
  completes: a worker killed in between left an input "seen" whose events never left, and the
  restarted owner answered ``duplicate``. The same record read again (same ingest coordinates) now
  publishes its events again under the same ids; a resend (a new record) is still a duplicate.

Here the workers are stages over separate tables, as faust gives each worker its own partitions' state
(or one shared stage when two ids hash to one partition)."""

from __future__ import annotations

from typing import Any

import pytest

from hub.identity.stage import INPUT_RECORD, LINK_RECORD, IdentityStage, Send
from hub.ingest.pipeline import with_patient
from hub.pathway.event import PathwayEvent, event_id_for

LOCAL_ID = "pt-local-0001"
INS_ID = "pt-ins-0001"
NOW_TEXT = "2026-11-22T10:00:00+00:00"


def stage() -> IdentityStage:
    """One worker's identity stage: its own (empty) tables."""
    return IdentityStage({}, {}, {})


def observation(value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "effectiveDateTime": "2026-11-20T08:00:00Z",
        "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }


def input_for(patient_id: str, message_id: str | None, value: float, offset: int) -> dict[str, Any]:
    """What ingest sends on hub.identity.v1 for an input of one Observation about ``patient_id``."""
    resource = with_patient(observation(value), patient_id)
    ingest = {"topic": "hub.ingest.v1", "partition": 0, "offset": offset}
    event = PathwayEvent(
        event_id=event_id_for(patient_id, resource),
        patient_id=patient_id,
        kind="observation",
        occurred_at="2026-11-20T08:00:00Z",
        recorded_at=NOW_TEXT,
        source_id="gp",
        source_organization={"system": "urn:test", "value": "gp"},
        resource=resource,
        ingest=ingest,
    )
    return {
        "type": INPUT_RECORD,
        "patient_id": patient_id,
        "source": "gp",
        "message_id": message_id,
        "ingest": ingest,
        "recorded_at": NOW_TEXT,
        "events": [event.to_dict()],
    }


def run(workers: dict[str, IdentityStage], key: str, record: dict[str, Any]) -> list[Send]:
    """Handle one record on the worker that owns ``key``'s partition, following internal hops."""
    out: list[Send] = []
    pending = [(key, record)]
    while pending:
        key, record = pending.pop(0)
        for send in workers[key].handle(record):
            if send.topic == "identity":
                pending.append((send.key, send.value))
            else:
                out.append(send)
    return out


def events(sends: list[Send]) -> list[dict[str, Any]]:
    return [s.value for s in sends if s.topic == "pathway"]


def linked_after(workers: dict[str, IdentityStage], message_id: str | None) -> list[Send]:
    """The first input under the local id, then a later input linking the local id to the INS id."""
    first = run(workers, LOCAL_ID, input_for(LOCAL_ID, message_id, 8.1, offset=1))
    link = {
        "type": LINK_RECORD,
        "local_id": LOCAL_ID,
        "ins_id": INS_ID,
        "source": "gp",
        "organization": {"system": "urn:test", "value": "gp"},
        "ingest": {"topic": "hub.ingest.v1", "partition": 1, "offset": 2},
        "recorded_at": NOW_TEXT,
        "input": input_for(INS_ID, "m-2", 9.0, offset=2),
    }
    run(workers, LOCAL_ID, link)
    return first


@pytest.mark.parametrize("message_id", ["m-1", None], ids=["with hub-message-id", "without"])
def test_an_input_resent_after_its_local_id_was_linked_is_a_duplicate_with_its_first_ids(
    message_id: str | None,
) -> None:
    """Same input sent again (a new ingest record) after the link: no new facts, same event ids."""
    workers = {LOCAL_ID: stage(), INS_ID: stage()}  # two partitions on two workers
    first = linked_after(workers, message_id)
    (receipt,) = [s.value for s in first if s.topic == "receipts"]
    assert receipt["status"] == "accepted"
    published = [s.value["event_id"] for s in first if s.topic == "pathway"]
    assert receipt["event_ids"] == published

    again = run(workers, LOCAL_ID, input_for(LOCAL_ID, message_id, 8.1, offset=7))
    assert [s.topic for s in again] == ["receipts"], "its facts must not be published a second time"
    assert again[0].value["status"] == "duplicate"
    assert again[0].value["event_ids"] == published, "a resent input names the events it made"


@pytest.mark.parametrize("message_id", ["m-1", None], ids=["with hub-message-id", "without"])
def test_an_input_redelivered_after_its_local_id_was_linked_publishes_its_events_again_same_ids(
    message_id: str | None,
) -> None:
    """The same ingest record read again (its worker died before committing it, after writing its
    tables): its events may never have left, so they go out again exactly as first made, under the
    local id and with the same ids (consumers de-duplicate by event_id), never under new ids."""
    workers = {LOCAL_ID: stage(), INS_ID: stage()}
    first = linked_after(workers, message_id)
    again = run(workers, LOCAL_ID, input_for(LOCAL_ID, message_id, 8.1, offset=1))
    assert events(again) == events(first)
    (receipt,) = [s.value for s in again if s.topic == "receipts"]
    (first_receipt,) = [s.value for s in first if s.topic == "receipts"]
    assert (receipt["status"], receipt["event_ids"]) == ("accepted", first_receipt["event_ids"])


def test_a_redelivered_input_publishes_again_what_its_lost_run_recorded() -> None:
    """The crash this guards against: tables written, outputs never sent. Reading the record again
    publishes every event its receipt names; a resend from the source stays a duplicate."""
    worker = stage()
    record = input_for(INS_ID, "m-1", 8.1, offset=4)
    lost = worker.handle(record)  # never sent: killed
    again = worker.handle(record)
    named = {e for s in again if s.topic == "receipts" for e in s.value["event_ids"]}
    assert named == {s.value["event_id"] for s in again if s.topic == "pathway"} != set()
    assert events(again) == events(lost)
    resent = worker.handle(input_for(INS_ID, "m-1", 8.1, offset=9))
    assert [s.topic for s in resent] == ["receipts"]
    assert resent[0].value["status"] == "duplicate"


def test_a_new_input_under_a_linked_local_id_still_moves_to_the_ins_id() -> None:
    """The duplicate check does not stop new facts: they go to the INS id's partition as before."""
    workers = {LOCAL_ID: stage(), INS_ID: stage()}
    run(workers, LOCAL_ID, input_for(LOCAL_ID, "m-1", 8.1, offset=1))
    workers[LOCAL_ID].aliases[LOCAL_ID] = INS_ID
    later = run(workers, LOCAL_ID, input_for(LOCAL_ID, "m-3", 7.2, offset=3))
    events = [s.value for s in later if s.topic == "pathway"]
    assert [e["patient_id"] for e in events] == [INS_ID]
    assert [s.value["status"] for s in later if s.topic == "receipts"] == ["accepted"]


@pytest.mark.parametrize("message_id", ["m-1", None], ids=["with hub-message-id", "without"])
def test_an_input_moved_to_the_ins_id_on_the_same_partition_is_moved_again_when_redelivered(
    message_id: str | None,
) -> None:
    """The local id and the INS id hash to one partition (one table): an input that arrived after the
    link was published under the INS id; read again, it is published under the INS id again, not
    under the local id because its message is "seen" in that shared table (found by the fault test)."""
    shared = stage()
    workers = {LOCAL_ID: shared, INS_ID: shared}
    link = {
        "type": LINK_RECORD,
        "local_id": LOCAL_ID,
        "ins_id": INS_ID,
        "source": "gp",
        "organization": {"system": "urn:test", "value": "gp"},
        "ingest": {"topic": "hub.ingest.v1", "partition": 1, "offset": 2},
        "recorded_at": NOW_TEXT,
        "input": input_for(INS_ID, "m-2", 9.0, offset=2),
    }
    run(workers, LOCAL_ID, link)
    first = run(workers, LOCAL_ID, input_for(LOCAL_ID, message_id, 8.1, offset=5))
    assert {e["patient_id"] for e in events(first)} == {INS_ID}
    again = run(workers, LOCAL_ID, input_for(LOCAL_ID, message_id, 8.1, offset=5))
    assert events(again) == events(first)
    assert [s.value["event_ids"] for s in again if s.topic == "receipts"] == [
        s.value["event_ids"] for s in first if s.topic == "receipts"
    ]
