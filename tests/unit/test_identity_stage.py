"""The identity stage (hub/identity/stage.py): links, aliases, duplicates, receipts; dicts as tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from hub.crypto.records import patient_of_table_key
from hub.identity import stage as stage_module
from hub.identity.stage import (
    INPUT_RECORD,
    LINK_RECORD,
    IdentityStage,
    Send,
    input_record,
    link_record,
    linked_event,
)
from hub.ingest.outcome import Accepted, IdentityLink, IngestOutcome, IngestRecord, KafkaCoordinates
from hub.ingest.pipeline import IngestContext, process_ingest
from hub.pathway.network_id import INS_TEST_NIR, NETWORK_ID_SYSTEM, PatientKey
from hub.schemas import schema_errors

Loader = Callable[[str], dict[str, Any]]
RecordBuilder = Callable[..., IngestRecord]

GP_ID = "gp-cabinet-lamentin"
GP_LOCAL_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.9999"
HOSPITAL_ID = "chu-guadeloupe"
HOSPITAL_SECRET = b"chu-unit-test-secret-fedcba9876543210"
PSEUDONYM_KEY = b"unit-test-pseudonym-key-0123456789abcdef"
TEST_INS = "248039263001064"
OTHER_INS = "248039263001065"
INS_ID = PatientKey("ins", INS_TEST_NIR, TEST_INS).network_id(PSEUDONYM_KEY)
LOCAL_ID = PatientKey("local", GP_ID, "IPP-004217").network_id(PSEUDONYM_KEY)
FROM_HOSPITAL: dict[str, Any] = {"source_id": HOSPITAL_ID, "secret": HOSPITAL_SECRET}
RECEIPT_SCHEMA = "receipt.schema.json"
EVENT_SCHEMA = "pathway-event.schema.json"


class Tables:
    """The stage's three tables as plain dicts, kept so a test can look inside."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.seen_messages: dict[str, Any] = {}
        self.seen_events: dict[str, Any] = {}

    def stage(self) -> IdentityStage:
        return IdentityStage(self.aliases, self.seen_messages, self.seen_events)


@pytest.fixture
def tables() -> Tables:
    """Empty tables."""
    return Tables()


@pytest.fixture
def stage(tables: Tables) -> IdentityStage:
    """A stage over the empty tables."""
    return tables.stage()


class Feed:
    """Builds signed ingest records and returns what ingest forwards for them, through JSON as on Kafka."""

    def __init__(
        self, context: IngestContext, now: datetime, make_record: RecordBuilder, fhir: Loader
    ) -> None:
        self.context, self.now, self.make_record, self.fhir = context, now, make_record, fhir
        self.offset = 0

    def records(self, resource: dict[str, Any], **record_args: Any) -> list[dict[str, Any]]:
        """The one record ingest sends on hub.identity.v1: the link record carrying the input when the
        input shows a local id and a qualified INS, else the input record.

        Each call is a new ingest record (the next offset): the same record read again after a worker
        died is a redelivery, which the stage publishes again (see the redelivery tests).
        """
        self.offset += 1
        record_args.setdefault("origin", KafkaCoordinates("hub.ingest.v1", 0, self.offset))
        record = self.make_record(resource, **record_args)
        outcome = accepted(process_ingest(record, self.context, now=self.now))
        if outcome.link is not None:
            value = link_record(outcome.link, outcome, record.origin, record.timestamp)
        else:
            value = input_record(outcome, record.origin, record.timestamp)
        decoded: dict[str, Any] = json.loads(json.dumps(value))
        return [decoded]


@pytest.fixture
def feed(context: IngestContext, now: datetime, make_record: RecordBuilder, fhir: Loader) -> Feed:
    """The record feed of these tests."""
    return Feed(context, now, make_record, fhir)


def accepted(outcome: IngestOutcome) -> Accepted:
    assert isinstance(outcome, Accepted), outcome
    return outcome


def pathway(sends: list[Send]) -> list[Send]:
    return [send for send in sends if send.topic == "pathway"]


def drive(stage: IdentityStage, value: dict[str, Any], now: datetime) -> list[Send]:
    """Every send for one hub.identity.v1 record, in order; each ``identity`` send is handled again by
    the stage right after it (as Kafka would bring it back), its own sends following it."""
    sends: list[Send] = []
    for send in stage.handle(value):
        sends.append(send)
        if send.topic == "identity":
            sends += drive(stage, send.value, now)
    return sends


def kinds(sends: list[Send]) -> list[str]:
    return [send.value["kind"] for send in pathway(sends)]


def without_input(link_value: dict[str, Any]) -> dict[str, Any]:
    """A link record's own fields: what a forwarded input carries under ``linked``."""
    return {key: value for key, value in link_value.items() if key != "input"}


def the_receipt(sends: list[Send]) -> dict[str, Any]:
    receipts = [send for send in sends if send.topic == "receipts"]
    assert len(receipts) == 1, sends
    assert sends[-1] is receipts[0], "the receipt comes last"
    return receipts[0].value


def by_ipp(fhir: Loader) -> dict[str, Any]:
    """The HbA1c, naming its patient by the GP's local IPP only (no INS)."""
    observation = fhir("observation-hba1c.json")
    observation["subject"] = {"identifier": {"system": GP_LOCAL_SYSTEM, "value": "IPP-004217"}}
    return observation


def ins_named(fhir: Loader, value: float = 7.4) -> dict[str, Any]:
    """The HbA1c, naming its patient by the (test) INS only: it links only beside a Patient qualifying it."""
    observation = fhir("observation-hba1c.json")
    observation["subject"] = {"identifier": {"system": INS_TEST_NIR, "value": TEST_INS}}
    observation["valueQuantity"]["value"] = value
    return observation


def by_ins(fhir: Loader, *values: float) -> dict[str, Any]:
    """HbA1c results (7.4 unless ``values`` say) named by INS, with the Patient known by that INS alone,
    carried with identity reliability VALI (a reference alone cannot qualify it): routed by INS, no
    local id to link. The Patient is a fact too."""
    patient = fhir("patient-ins-vali.json")
    del patient["id"]
    patient["identifier"] = [i for i in patient["identifier"] if i["system"] == INS_TEST_NIR]
    entries = [{"resource": patient}, *({"resource": ins_named(fhir, v)} for v in values or (7.4,))]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def qualified(fhir: Loader, ins: str = TEST_INS, gender: str = "female") -> dict[str, Any]:
    """The Patient, named by the GP's local IPP and a qualified (test) INS: ingest sends a link record."""
    patient = fhir("patient-ins-vali.json")
    patient["identifier"][0]["value"] = ins
    patient["gender"] = gender
    return patient


# --- records ingest forwards ---------------------------------------------------------------------------


def test_a_patient_with_local_id_and_ins_forwards_one_link_carrying_its_input(feed: Feed) -> None:
    """An input showing a local id and a qualified INS forwards one link record, carrying the input
    (under INS) itself: no separate input record."""
    [link_value] = feed.records(feed.fhir("patient-ins-vali.json"), message_id="m-1")
    assert link_value["type"] == LINK_RECORD
    assert (link_value["local_id"], link_value["ins_id"]) == (LOCAL_ID, INS_ID)
    assert link_value["organization"] == {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "970000001"}
    input_value = link_value["input"]
    assert input_value["type"] == INPUT_RECORD
    assert "linked" not in input_value
    assert (input_value["patient_id"], input_value["source"], input_value["message_id"]) == (
        INS_ID,
        GP_ID,
        "m-1",
    )
    assert input_value["recorded_at"] == "2024-05-03T10:00:00.000Z"
    assert [event["patient_id"] for event in input_value["events"]] == [INS_ID]


# --- links ---------------------------------------------------------------------------------------------


def test_a_link_aliases_the_local_id_and_publishes_one_linked_event(
    stage: IdentityStage, tables: Tables, feed: Feed, now: datetime
) -> None:
    """A link record remembers local id → INS id and sends its input on to the INS id, announcing the
    link; there one ``patient.linked`` event is published under the INS."""
    [link_value] = feed.records(qualified(feed.fhir), message_id="m-1")
    [moved] = stage.handle(link_value)
    assert tables.aliases == {LOCAL_ID: INS_ID}
    assert moved == Send("identity", INS_ID, {**link_value["input"], "linked": without_input(link_value)})
    sends = stage.handle(moved.value)
    assert kinds(sends) == ["patient.linked", "patient"]
    send = pathway(sends)[0]
    assert send.key == INS_ID
    event = send.value
    assert (event["kind"], event["patient_id"]) == ("patient.linked", INS_ID)
    assert event["resource"]["identifier"] == [{"system": NETWORK_ID_SYSTEM, "value": INS_ID}]
    assert event["resource"]["link"][0]["other"]["reference"] == f"Patient/{LOCAL_ID}"
    assert event["resource"]["link"][0]["type"] == "replaces"
    assert event["occurred_at"] == event["recorded_at"] == "2024-05-03T10:00:00.000Z"
    assert schema_errors(EVENT_SCHEMA, event) == []


def test_a_repeated_link_is_idempotent(
    stage: IdentityStage, tables: Tables, feed: Feed, now: datetime
) -> None:
    """The same link again from another input of the same patient (or the same message resent)
    publishes no second ``patient.linked`` event: its input goes on to the INS id without announcing
    the link."""
    [link_value] = feed.records(qualified(feed.fhir), message_id="m-1")
    first = drive(stage, link_value, now)
    [linked] = [s.value for s in pathway(first) if s.value["kind"] == "patient.linked"]
    assert linked_event(without_input(link_value)).event_id == linked["event_id"]
    resent = feed.records(qualified(feed.fhir), message_id="m-1")
    for again in (*resent, *feed.records(qualified(feed.fhir, gender="male"), message_id="m-2")):
        [moved] = stage.handle(again)
        assert moved == Send("identity", INS_ID, {**again["input"], "linked": None})
        assert "patient.linked" not in kinds(stage.handle(moved.value))
    assert tables.aliases == {LOCAL_ID: INS_ID}


def test_a_redelivered_link_record_announces_the_link_again_with_the_same_event(
    stage: IdentityStage, tables: Tables, feed: Feed, now: datetime
) -> None:
    """The link record read again (its worker died before committing it): the alias was already
    written, but its ``patient.linked`` event may never have left, so it goes out again, same id."""
    [link_value] = feed.records(qualified(feed.fhir), message_id="m-1")
    first = drive(stage, link_value, now)
    again = drive(stage, link_value, now)
    assert [s.value for s in pathway(again)] == [s.value for s in pathway(first)]
    assert kinds(again)[0] == "patient.linked"
    assert the_receipt(again)["status"] == "accepted"
    assert tables.aliases == {LOCAL_ID: INS_ID}


def test_a_conflicting_link_changes_nothing(
    stage: IdentityStage, tables: Tables, feed: Feed, now: datetime
) -> None:
    """A second, different INS for a linked local id is an identity conflict: no alias change, no linked
    event; the input still goes on to its own INS id, unannounced."""
    [link_value] = feed.records(qualified(feed.fhir), message_id="m-1")
    drive(stage, link_value, now)
    other_ins_id = PatientKey("ins", INS_TEST_NIR, OTHER_INS).network_id(PSEUDONYM_KEY)
    [conflicting] = feed.records(qualified(feed.fhir, OTHER_INS), message_id="m-2")
    assert conflicting["ins_id"] == other_ins_id
    [moved] = stage.handle(conflicting)
    assert moved == Send("identity", other_ins_id, {**conflicting["input"], "linked": None})
    sends = stage.handle(moved.value)
    assert kinds(sends) == ["patient"]
    assert {send.key for send in pathway(sends)} == {other_ins_id}
    assert tables.aliases == {LOCAL_ID: INS_ID}


def test_the_linked_event_precedes_the_forwarded_inputs_events(
    stage: IdentityStage, feed: Feed, now: datetime
) -> None:
    """A link's forwarded input, handled on the INS id's partition, publishes ``patient.linked`` before
    the input's first event, all under the INS id (so the share stage merges the local id's state
    first); a repeated link forwards its input with ``linked`` null, and no second linked event."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": qualified(feed.fhir)}, {"resource": ins_named(feed.fhir)}],
    }
    [link_value] = feed.records(bundle, message_id="m-1")
    [moved] = stage.handle(link_value)
    assert (moved.topic, moved.key, moved.value["linked"]) == ("identity", INS_ID, without_input(link_value))
    sends = stage.handle(moved.value)
    assert kinds(sends) == ["patient.linked", "patient", "observation"]
    assert {send.key for send in pathway(sends)} == {INS_ID}
    assert {send.value["patient_id"] for send in pathway(sends)} == {INS_ID}
    receipt = the_receipt(sends)
    assert receipt["event_ids"] == [event["event_id"] for event in link_value["input"]["events"]]
    [link_again] = feed.records(bundle, message_id="m-2")
    [moved_again] = stage.handle(link_again)
    assert moved_again == Send("identity", INS_ID, {**link_again["input"], "linked": None})
    assert "patient.linked" not in kinds(stage.handle(moved_again.value))


def test_an_input_under_a_linked_local_id_is_published_under_the_ins_id(
    stage: IdentityStage,
    feed: Feed,
    now: datetime,
) -> None:
    """After a link, an input routed under the local id moves to the INS id's partition, then is published
    there under the INS id; its event ids stay those made at ingest, whatever the order of the link."""
    [link_value] = feed.records(qualified(feed.fhir), message_id="m-1")
    drive(stage, link_value, now)
    [record] = feed.records(by_ipp(feed.fhir), message_id="m-2")
    assert record["patient_id"] == LOCAL_ID
    original = record["events"][0]
    [moved] = stage.handle(record)
    assert (moved.topic, moved.key, moved.value["patient_id"]) == ("identity", INS_ID, INS_ID)
    sends = stage.handle(moved.value)
    [published] = pathway(sends)
    assert published.key == INS_ID
    event = published.value
    assert event["event_id"] == original["event_id"]
    assert event["patient_id"] == INS_ID
    assert event["resource"]["subject"] == {
        "reference": f"Patient/{INS_ID}",
        "identifier": {"system": NETWORK_ID_SYSTEM, "value": INS_ID},
    }
    assert event["provenance"]["steps"] == [*original["provenance"]["steps"], "patient-id:linked"]
    assert LOCAL_ID not in json.dumps(event)
    receipt = the_receipt(sends)
    assert (receipt["status"], receipt["event_ids"]) == ("accepted", [event["event_id"]])
    assert schema_errors(EVENT_SCHEMA, event) == []


def test_an_input_under_an_unlinked_local_id_is_published_as_it_came(
    stage: IdentityStage,
    feed: Feed,
    now: datetime,
) -> None:
    """Without a link, an input's events are published unchanged under the id ingest made them under."""
    [record] = feed.records(by_ipp(feed.fhir))
    [published] = pathway(stage.handle(record))
    assert published.key == LOCAL_ID
    assert published.value == record["events"][0]


# --- duplicates ----------------------------------------------------------------------------------------


def test_the_same_message_twice_is_a_duplicate(
    stage: IdentityStage,
    feed: Feed,
    now: datetime,
) -> None:
    """A resent message id publishes nothing; its receipt says ``duplicate`` with the first event ids."""
    *_, first_record = feed.records(feed.fhir("bundle-transaction.json"), message_id="tx-1")
    first = stage.handle(first_record)
    first_ids = the_receipt(first)["event_ids"]
    assert [send.value["event_id"] for send in pathway(first)] == first_ids
    *_, again_record = feed.records(feed.fhir("bundle-transaction.json"), message_id="tx-1")
    again = stage.handle(again_record)
    assert pathway(again) == []
    receipt = the_receipt(again)
    assert (receipt["status"], receipt["event_ids"], receipt["message_id"]) == (
        "duplicate",
        first_ids,
        "tx-1",
    )


def test_the_same_message_id_from_another_source_is_not_a_duplicate_by_id(
    stage: IdentityStage, tables: Tables, feed: Feed, now: datetime
) -> None:
    """Message ids are per source: another source's ``m-1`` with new facts is accepted."""
    [gp_record] = feed.records(by_ins(feed.fhir), message_id="m-1")
    stage.handle(gp_record)
    [hospital_record] = feed.records(by_ins(feed.fhir, 8.2), message_id="m-1", **FROM_HOSPITAL)
    sends = stage.handle(hospital_record)
    assert len(pathway(sends)) == 1
    assert the_receipt(sends)["status"] == "accepted"
    assert len(tables.seen_messages) == 2


def test_the_same_fact_from_another_source_is_a_duplicate(
    stage: IdentityStage,
    feed: Feed,
    now: datetime,
) -> None:
    """Facts the GP sent, sent again by the hospital, are not published again; the receipt names their ids."""
    [from_gp] = feed.records(by_ins(feed.fhir), message_id="gp-1")
    event_ids = the_receipt(stage.handle(from_gp))["event_ids"]
    [from_hospital] = feed.records(by_ins(feed.fhir), message_id="lab-9", **FROM_HOSPITAL)
    sends = stage.handle(from_hospital)
    assert pathway(sends) == []
    receipt = the_receipt(sends)
    assert (receipt["status"], receipt["event_ids"], receipt["source"]) == (
        "duplicate",
        event_ids,
        HOSPITAL_ID,
    )


def test_the_same_fact_without_message_id_is_a_duplicate(
    stage: IdentityStage,
    tables: Tables,
    feed: Feed,
    now: datetime,
) -> None:
    """Without ``hub-message-id`` nothing is remembered by message, but a known fact is still a duplicate."""
    [first] = feed.records(by_ins(feed.fhir))
    assert the_receipt(stage.handle(first))["status"] == "accepted"
    assert tables.seen_messages == {}
    [again] = feed.records(by_ins(feed.fhir))
    sends = stage.handle(again)
    assert pathway(sends) == []
    assert the_receipt(sends)["status"] == "duplicate"


def test_a_partly_new_input_is_accepted_and_publishes_only_the_new_facts(
    stage: IdentityStage,
    feed: Feed,
    now: datetime,
) -> None:
    """Known facts and a new one: ``accepted``, only the new event is sent, all ids are receipted."""
    [single] = feed.records(by_ins(feed.fhir), message_id="m-1")
    known_ids = the_receipt(stage.handle(single))["event_ids"]
    [record] = feed.records(by_ins(feed.fhir, 7.4, 8.1), message_id="m-2")
    sends = stage.handle(record)
    [published] = pathway(sends)
    assert published.value["event_id"] not in known_ids
    receipt = the_receipt(sends)
    assert receipt["status"] == "accepted"
    assert receipt["event_ids"] == [*known_ids, published.value["event_id"]]


def test_a_resent_input_after_a_partial_one_is_a_duplicate_by_message(
    stage: IdentityStage,
    feed: Feed,
    now: datetime,
) -> None:
    """The message memory keeps every event id of the input, not only the new ones."""
    [single] = feed.records(by_ins(feed.fhir), message_id="m-1")
    stage.handle(single)
    bundle = by_ins(feed.fhir, 7.4, 8.1)
    [record] = feed.records(bundle, message_id="m-2")
    first_ids = the_receipt(stage.handle(record))["event_ids"]
    [resent] = feed.records(bundle, message_id="m-2")
    again = stage.handle(resent)
    assert pathway(again) == []
    assert the_receipt(again)["event_ids"] == first_ids


def test_a_redelivered_partial_input_publishes_again_only_what_it_published(
    stage: IdentityStage,
    feed: Feed,
    now: datetime,
) -> None:
    """The same record read again: its own new fact again (same id), not the one another input made."""
    [single] = feed.records(by_ins(feed.fhir), message_id="m-1")
    known_ids = the_receipt(stage.handle(single))["event_ids"]
    [record] = feed.records(by_ins(feed.fhir, 7.4, 8.1), message_id="m-2")
    first = stage.handle(record)
    again = stage.handle(record)
    assert [s.value for s in pathway(again)] == [s.value for s in pathway(first)]
    assert not set(known_ids) & {s.value["event_id"] for s in pathway(again)}
    assert (the_receipt(again)["status"], the_receipt(again)["event_ids"]) == (
        "accepted",
        the_receipt(first)["event_ids"],
    )


# --- contract -------------------------------------------------------------------------------------------


def test_receipts_and_events_match_the_contract(
    stage: IdentityStage,
    feed: Feed,
    now: datetime,
) -> None:
    """Every receipt (accepted, duplicate) and event (plain, linked, aliased) the stage makes is valid."""
    sends: list[Send] = []

    def run(value: dict[str, Any]) -> None:
        # An input moved to another id comes back to the stage, as over Kafka.
        sends.extend(send for send in drive(stage, value, now) if send.topic != "identity")

    for value in feed.records(feed.fhir("patient-ins-vali.json"), message_id="p-1"):
        run(value)
    for value in feed.records(feed.fhir("bundle-transaction.json"), message_id="tx-1"):
        run(value)
        run(value)
    # The same message sent again (a new record): a duplicate.
    for value in feed.records(feed.fhir("bundle-transaction.json"), message_id="tx-1"):
        run(value)
    for value in feed.records(by_ipp(feed.fhir)):
        run(value)
    statuses = {send.value["status"] for send in sends if send.topic == "receipts"}
    kinds = {send.value["kind"] for send in sends if send.topic == "pathway"}
    assert statuses == {"accepted", "duplicate"}
    assert {"patient.linked", "patient", "observation"} <= kinds
    for send in sends:
        schema = RECEIPT_SCHEMA if send.topic == "receipts" else EVENT_SCHEMA
        assert schema_errors(schema, send.value) == [], send
        if send.topic == "receipts":
            assert send.key == send.value["source"]
        else:
            assert send.key == send.value["patient_id"]


def test_receipts_name_the_ingest_record(
    stage: IdentityStage,
    feed: Feed,
    now: datetime,
) -> None:
    """The stage's receipt names the ingest record's coordinates and its timestamp (``recorded_at``),
    as ingest's would: never the stage's clock, so a redelivery writes the same receipt."""
    origin = KafkaCoordinates("hub.ingest.v1", 5, 77)
    [record] = feed.records(by_ins(feed.fhir), message_id="m-1", origin=origin)
    record = {**record, "recorded_at": "2024-05-03T09:59:58.250Z"}
    receipt = the_receipt(stage.handle(record))
    assert receipt["ingest"] == {"topic": "hub.ingest.v1", "partition": 5, "offset": 77}
    assert receipt["at"] == "2024-05-03T09:59:58.250Z"
    assert receipt["error"] is None


# --- memory ---------------------------------------------------------------------------------------------


def test_seen_events_are_kept_one_key_per_fact_with_its_first_input(
    stage: IdentityStage,
    tables: Tables,
    feed: Feed,
    now: datetime,
) -> None:
    """One small entry per fact (``<event id>|<routing id>``, sealed under the patient's key): no
    per-patient list rewritten at every input; the value is where the fact first came from."""
    first_seen: dict[str, Any] = {}
    for n in range(3):
        [record] = feed.records(by_ins(feed.fhir, 6.0 + n / 10), message_id=f"m-{n}")
        for event_id in the_receipt(stage.handle(record))["event_ids"]:
            first_seen.setdefault(stage_module.seen_event_key(event_id, INS_ID), record["ingest"])
    assert len(first_seen) == 4  # the Patient once, and three results
    assert tables.seen_events == first_seen
    assert {patient_of_table_key(key) for key in tables.seen_events} == {INS_ID}


def test_seen_events_are_kept_per_routing_id(
    stage: IdentityStage,
    tables: Tables,
    feed: Feed,
    now: datetime,
) -> None:
    """Event ids are remembered under the id the input was routed by (the partition's own key)."""
    [by_local] = feed.records(by_ipp(feed.fhir))
    [by_ins_id] = feed.records(by_ins(feed.fhir))
    stage.handle(by_local)
    stage.handle(by_ins_id)
    assert {patient_of_table_key(key) for key in tables.seen_events} == {LOCAL_ID, INS_ID}


def test_tables_hold_json_values_only(
    stage: IdentityStage,
    tables: Tables,
    feed: Feed,
    now: datetime,
) -> None:
    """Table values are plain strings and lists of strings (faust tables store them as JSON)."""
    for value in feed.records(feed.fhir("patient-ins-vali.json"), message_id="p-1"):
        drive(stage, value, now)
    for table in (tables.aliases, tables.seen_messages, tables.seen_events):
        assert json.loads(json.dumps(table)) == table
    [(memo, first)] = tables.seen_messages.items()
    assert memo == f"{GP_ID}\x1fp-1"
    assert {stage_module.seen_event_key(i, INS_ID) for i in first["event_ids"]} <= set(tables.seen_events)


def test_identity_link_is_what_the_link_record_carries(
    context: IngestContext, make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """The link record is keyed and built from ``Accepted.link``: its own fields are local id and INS id,
    nothing clinical; the input it carries is the input record ingest would otherwise have sent."""
    record = make_record(fhir("patient-ins-vali.json"))
    outcome = accepted(process_ingest(record, context, now=now))
    assert outcome.link == IdentityLink(LOCAL_ID, INS_ID)
    value = link_record(outcome.link, outcome, record.origin, record.timestamp)
    assert value["input"] == input_record(outcome, record.origin, record.timestamp)
    text = json.dumps(without_input(value))
    assert TEST_INS not in text
    assert "DUPONTEL" not in text
    assert "IPP-004217" not in text


# --- warnings -------------------------------------------------------------------------------------------

UNQUALIFIED_INS = {
    "code": "ins.unqualified",
    "detail": "Patient.identifier: an INS is not used to link: "
    "the Patient has no FR Core identity reliability VALI",
}


def test_accepted_and_duplicate_receipts_carry_the_inputs_warnings(
    stage: IdentityStage, feed: Feed, now: datetime
) -> None:
    """What ingest ignored travels in the identity record to the receipt this stage writes: the first
    time (accepted) and for the same message again (duplicate); the receipts stay valid."""
    patient = feed.fhir("patient-ins-vali.json")
    del patient["extension"]  # the INS is not validated: the IPP routes, the INS links nothing
    [record] = feed.records(patient, message_id="m-1")
    assert record["type"] == INPUT_RECORD
    assert record["warnings"] == [UNQUALIFIED_INS]
    accepted_receipt = the_receipt(stage.handle(record))
    [resent] = feed.records(patient, message_id="m-1")
    duplicate_receipt = the_receipt(stage.handle(resent))
    assert (accepted_receipt["status"], duplicate_receipt["status"]) == ("accepted", "duplicate")
    for receipt in (accepted_receipt, duplicate_receipt):
        assert receipt["warnings"] == [UNQUALIFIED_INS]
        assert schema_errors(RECEIPT_SCHEMA, receipt) == []
        assert TEST_INS not in json.dumps(receipt)


def test_a_linking_input_keeps_its_warnings_through_the_link(
    stage: IdentityStage, feed: Feed, now: datetime
) -> None:
    """An input that links (link record, then the input moved to the INS id) still receipts its warnings."""
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/pat-dupont"},
        "code": {"coding": [{"system": "urn:test:gp:condition", "code": "DT2"}]},
        "recordedDate": "2024-05-02",
    }
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": qualified(feed.fhir)}, {"resource": condition},
    ]}  # fmt: skip
    [link_value] = feed.records(bundle, message_id="m-1")
    assert link_value["type"] == LINK_RECORD
    receipt = the_receipt(drive(stage, link_value, now))
    assert receipt["warnings"] == [
        {
            "code": "code.system_unknown",
            "detail": "Condition: 1 code of urn:test:gp:condition, a code system the hub does not know and "
            "no ConceptMap of this source maps; kept as sent and marked unmapped",
        }
    ]
    assert "DT2" not in json.dumps(receipt)


def test_a_record_from_before_warnings_receipts_none(stage: IdentityStage, feed: Feed, now: datetime) -> None:
    """An identity record written by a hub that did not forward warnings yet gets ``warnings: []``."""
    [record] = feed.records(by_ipp(feed.fhir), message_id="m-1")
    del record["warnings"]
    assert the_receipt(stage.handle(record))["warnings"] == []
