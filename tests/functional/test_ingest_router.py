"""The agents' routing, in process: what the ingest and identity agents send per record, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub import metrics
from hub.audit.chainkey import ChainKey
from hub.consent import load_policy
from hub.consent.recipients import RecipientRegistry
from hub.consent.share import ShareStage
from hub.consent.state import PatientShareState
from hub.errors import ErrorCode
from hub.identity.stage import IdentityStage
from hub.ingest.outcome import IngestRecord, KafkaCoordinates
from hub.ingest.pipeline import IngestContext
from hub.ingest.signature import sign
from hub.pathway.network_id import INS_NIR, PatientKey
from hub.records import EVENT_ID_HEADER, Outgoing
from hub.schemas import schema_errors
from hub.settings import Settings
from hub.sources.registry import Source, SourceRegistry
from hub.streams import routing
from hub.streams.app import create_app
from hub.streams.changelog_batches import BatchedChangelogTable
from hub.streams.routing import IdentityRouter, IngestRouter, ShareRouter
from hub.topics import TopicNames

NOW = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)
POLICY = load_policy(Path(__file__).resolve().parents[2] / "config" / "policy.json")
SECRET = b"functional-secret-0123456789abcdef"
KEY = b"k" * 32
LOCAL_SYSTEM = "urn:hub:test:patient"
SOURCE = Source(
    id="gp-func",
    kind="gp",
    organization_system="urn:oid:1.2.250.1.71.4.2.2",
    organization_value="971000000",
    time_zone=ZoneInfo("America/Guadeloupe"),
    patient_identifier_systems=(LOCAL_SYSTEM,),
    secrets=(SECRET,),
)
CONTEXT = IngestContext(registry=SourceRegistry({SOURCE.id: SOURCE}), pseudonym_key=KEY)
TOPICS = TopicNames("f.")
#: The registered source's own receipt topic: each of its receipts is also written there, same bytes.
OWN_RECEIPTS = TOPICS.source_receipts(SOURCE.id)
INS = "185057800608436"
LOCAL_ID = PatientKey("local", SOURCE.id, "P-1").network_id(KEY)
INS_ID = PatientKey("ins", INS_NIR, INS).network_id(KEY)


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
    "subject": {"identifier": {"system": LOCAL_SYSTEM, "value": "P-1"}},
    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
    "recordedDate": "2025-03-29",
}
QUALIFIED_PATIENT = {
    "resourceType": "Patient",
    "extension": [
        {
            "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
            "extension": [
                {
                    "url": "identityReliability",
                    "valueCoding": {
                        "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
                        "code": "VALI",
                    },
                }
            ],
        }
    ],
    "identifier": [{"system": INS_NIR, "value": INS}, {"system": LOCAL_SYSTEM, "value": "P-1"}],
    "gender": "female",
}
ORGANIZATION = {"resourceType": "Organization", "name": "Cabinet"}


def ingest_router() -> IngestRouter:
    return IngestRouter(CONTEXT, TOPICS)


def identity_router() -> IdentityRouter:
    return IdentityRouter(IdentityStage({}, {}, {}), TOPICS)


def value_of(out: Outgoing) -> dict[str, Any]:
    assert out.value is not None
    document: dict[str, Any] = json.loads(out.value)
    return document


def through_both(ingest: IngestRouter, identity: IdentityRouter, rec: IngestRecord) -> list[Outgoing]:
    """Every record sent for one input: ingest's, then the identity agent's for each identity record
    (including those the identity agent sends back to itself, moving an input to its surviving id)."""
    sent: list[Outgoing] = []
    pending = list(ingest.route(rec, None, now=NOW))
    while pending:
        out = pending.pop(0)
        sent.append(out)
        if out.topic == TOPICS.identity:
            assert out.value is not None
            pending[:0] = identity.route(out.value)
    return sent


# --- the ingest agent ----------------------------------------------------------------------------------


def test_an_accepted_record_goes_to_the_identity_topic_keyed_by_patient_without_a_receipt() -> None:
    """Accepted with events: one input record on hub.identity.v1 keyed by its patient id; no receipt yet."""
    [out] = ingest_router().route(record(CONDITION), b"msg-1", now=NOW)
    assert out.topic == TOPICS.identity
    assert out.key == LOCAL_ID.encode()
    value = value_of(out)
    assert (value["type"], value["patient_id"], value["source"], value["message_id"]) == (
        "input", LOCAL_ID, SOURCE.id, "msg-1",
    )  # fmt: skip
    assert value["ingest"] == {"topic": TOPICS.ingest, "partition": 1, "offset": 7}
    [event] = value["events"]
    assert event["patient_id"] == LOCAL_ID
    assert schema_errors("pathway-event.schema.json", event) == []


def test_a_record_linking_local_id_and_ins_sends_only_the_link_carrying_its_input() -> None:
    """A Patient with local id and qualified INS: one link record keyed by local id, carrying its input
    (under INS); no separate input record, so the input cannot overtake the link."""
    [link] = ingest_router().route(record(QUALIFIED_PATIENT), None, now=NOW)
    assert link.topic == TOPICS.identity
    assert link.key == LOCAL_ID.encode()
    value = value_of(link)
    assert (value["type"], value["local_id"], value["ins_id"]) == ("link", LOCAL_ID, INS_ID)
    inp = value["input"]
    assert (inp["type"], inp["patient_id"]) == ("input", INS_ID)
    assert [event["patient_id"] for event in inp["events"]] == [INS_ID]
    assert INS not in json.dumps({key: field for key, field in value.items() if key != "input"})


def test_a_rejected_record_goes_to_the_dlq_unchanged_with_a_receipt() -> None:
    """Rejected: the original bytes and headers to the DLQ, plus code, detail and origin; then a receipt."""
    bad = record({"resourceType": "Condition", "subject": {"reference": "Group/x"}})
    sent = ingest_router().route(bad, b"k", now=NOW)
    assert [out.topic for out in sent] == [TOPICS.dlq, TOPICS.audit_unsealed, TOPICS.receipts, OWN_RECEIPTS]
    assert (sent[3].key, sent[3].value) == (sent[2].key, sent[2].value)
    assert sent[0].value == bad.value and sent[0].key == b"k"
    headers = dict(sent[0].headers)
    assert headers["hub-error-code"] == b"patient.unresolved"
    assert headers["hub-origin"] == f"{TOPICS.ingest}/1/7".encode()
    assert list(sent[0].headers[: len(bad.headers)]) == list(bad.headers)
    receipt = value_of(sent[2])
    assert (receipt["status"], receipt["error"]["code"]) == ("rejected", "patient.unresolved")
    assert sent[2].key == SOURCE.id.encode()
    assert schema_errors("receipt.schema.json", receipt) == []


def test_an_input_about_no_patient_gets_its_receipt_at_ingest() -> None:
    """Accepted with no event (an Organization): only an ``accepted`` receipt (and its source's copy),
    with no event ids."""
    [out, own] = ingest_router().route(record(ORGANIZATION), b"msg-1", now=NOW)
    assert (out.topic, out.key) == (TOPICS.receipts, SOURCE.id.encode())
    assert (own.topic, own.key, own.value) == (OWN_RECEIPTS, out.key, out.value)
    receipt = value_of(out)
    assert (receipt["status"], receipt["event_ids"], receipt["message_id"]) == ("accepted", [], "msg-1")
    assert schema_errors("receipt.schema.json", receipt) == []


def test_a_bug_in_the_core_becomes_a_reject_and_the_partition_moves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poison message: an unexpected exception is receipted hub.internal_error and kept in the DLQ."""

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(routing, "process_ingest", explode)
    sent = ingest_router().route(record(CONDITION), b"msg-1", now=NOW)
    assert [out.topic for out in sent] == [TOPICS.dlq, TOPICS.audit_unsealed, TOPICS.receipts, OWN_RECEIPTS]
    assert dict(sent[0].headers)["hub-error-code"] == b"hub.internal_error"
    receipt = value_of(sent[2])
    assert receipt["error"]["code"] == ErrorCode.INTERNAL
    assert receipt["source"] == SOURCE.id
    assert receipt["message_id"] == "msg-1"


def test_unmapped_codes_are_counted_per_source() -> None:
    """The ingest router counts unmapped local codes by source and code system."""
    router = ingest_router()
    local_code = dict(CONDITION, code={"coding": [{"system": "urn:local:codes", "code": "X"}]})
    router.route(record(local_code), None, now=NOW)
    router.route(record(local_code, offset=8), None, now=NOW)
    assert router.unmapped.snapshot() == {(SOURCE.id, "urn:local:codes"): 2}


def test_receipts_carry_warnings_through_both_agents() -> None:
    """What ingest ignored reaches the source in both receipt paths: the identity agent's (an input with
    events, accepted then duplicate) and ingest's own (an input about no patient); a reject has none."""
    ingest, identity = ingest_router(), identity_router()
    unqualified = {k: v for k, v in QUALIFIED_PATIENT.items() if k != "extension"}
    first, again = (
        value_of(through_both(ingest, identity, record(unqualified, offset=offset))[-1]) for offset in (7, 8)
    )
    expected = [
        {
            "code": "ins.unqualified",
            "detail": "Patient.identifier: an INS is not used to link: the Patient has no FR Core identity "
            "reliability VALI",
        }
    ]
    assert (first["status"], first["warnings"]) == ("accepted", expected)
    assert (again["status"], again["warnings"]) == ("duplicate", expected)
    [alone, _own] = ingest.route(
        record({"resourceType": "Medication", "status": "active"}, offset=9), None, now=NOW
    )
    assert value_of(alone)["warnings"][0]["code"] == "resource.ignored"
    rejected = ingest.route(record({"resourceType": "Condition", "subject": {"reference": "Group/x"}}), None)
    assert value_of(rejected[-1])["warnings"] == []
    for receipt in (first, again, value_of(alone), value_of(rejected[-1])):
        assert schema_errors("receipt.schema.json", receipt) == []
        assert INS not in json.dumps(receipt)


# --- the identity agent ---------------------------------------------------------------------------------


def test_the_identity_router_publishes_events_keyed_by_patient_then_the_receipt() -> None:
    """Identity stage sends become pathway records (key patient id, hub-event-id header), then a receipt."""
    [forwarded] = ingest_router().route(record(CONDITION), None, now=NOW)
    assert forwarded.value is not None
    event_out, receipt_out, own_out = identity_router().route(forwarded.value)
    assert (event_out.topic, receipt_out.topic, own_out.topic) == (
        TOPICS.pathway,
        TOPICS.receipts,
        OWN_RECEIPTS,
    )
    assert (own_out.key, own_out.value) == (receipt_out.key, receipt_out.value)
    event = value_of(event_out)
    assert event_out.key == event["patient_id"].encode() == LOCAL_ID.encode()
    assert dict(event_out.headers) == {EVENT_ID_HEADER: event["event_id"].encode()}
    receipt = value_of(receipt_out)
    assert receipt_out.key == SOURCE.id.encode()
    assert receipt_out.headers == ()
    assert (receipt["status"], receipt["event_ids"]) == ("accepted", [event["event_id"]])
    assert receipt["at"] == "2025-03-30T00:30:00.000Z"


def sent_by_identity(value: bytes) -> list[Outgoing]:
    return identity_router().route(value)


class Deciding:
    """The share router's interface: one AuditEvent and one copy per event; raises on ``failing_on``."""

    def __init__(self, failing_on: str | None = None) -> None:
        self.failing_on = failing_on

    def route(
        self, event: dict[str, Any], *, now: datetime | None = None, handover: dict[str, Any] | None = None
    ) -> list[Outgoing]:
        if event["kind"] == self.failing_on:
            raise KeyError("a bug in the share stage")
        key = event["patient_id"].encode()
        return [Outgoing(TOPICS.audit_unsealed, key, b"{}"), Outgoing("f.hub.pathway.chu.v1", key, b"{}")]


BUNDLE = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"resource": CONDITION},
        {"resource": {**CONDITION, "code": {"coding": [{**CONDITION["code"]["coding"][0], "code": "I10"}]}}},
    ],
}


def test_each_event_is_decided_as_it_is_published_right_after_it() -> None:
    """The share stage decides each pathway event in the identity agent's batch: its records follow it."""
    [forwarded] = ingest_router().route(record(BUNDLE), None, now=NOW)
    assert forwarded.value is not None
    router = IdentityRouter(IdentityStage({}, {}, {}), TOPICS, Deciding())  # type: ignore[arg-type]
    sent = router.route(forwarded.value)
    assert [out.topic for out in sent] == [
        TOPICS.pathway,
        TOPICS.audit_unsealed,
        "f.hub.pathway.chu.v1",
        TOPICS.pathway,
        TOPICS.audit_unsealed,
        "f.hub.pathway.chu.v1",
        TOPICS.receipts,
        OWN_RECEIPTS,
    ]


def test_a_bug_deciding_an_event_costs_its_decisions_not_the_input_its_receipt() -> None:
    """As when the share stage had its own agent: the event is published, the receipt sent, the
    failure logged and counted; nothing about the event leaves for any recipient."""
    [forwarded] = ingest_router().route(record(CONDITION), None, now=NOW)
    assert forwarded.value is not None
    failures = metrics.REGISTRY.get_sample_value
    before = failures("hub_stage_failures_total", {"stage": "share"}) or 0.0
    failing = Deciding(failing_on=value_of(sent_by_identity(forwarded.value)[0])["kind"])
    router = IdentityRouter(IdentityStage({}, {}, {}), TOPICS, failing)  # type: ignore[arg-type]
    sent = router.route(forwarded.value)
    assert [out.topic for out in sent] == [TOPICS.pathway, TOPICS.receipts, OWN_RECEIPTS]
    assert value_of(sent[1])["status"] == "accepted"
    assert failures("hub_stage_failures_total", {"stage": "share"}) == before + 1


def test_a_link_then_a_local_input_are_published_under_the_ins_id() -> None:
    """End to end in process: link record → its input on to the INS id → patient.linked, then the input's
    event; a later local-only input goes under the INS id."""
    ingest, identity = ingest_router(), identity_router()
    first = through_both(ingest, identity, record(QUALIFIED_PATIENT, message_id="m-1"))
    assert [out.topic for out in first] == [
        TOPICS.identity, TOPICS.identity, TOPICS.pathway, TOPICS.pathway, TOPICS.receipts, OWN_RECEIPTS,
    ]  # fmt: skip
    assert (first[0].key, first[1].key) == (LOCAL_ID.encode(), INS_ID.encode())
    assert value_of(first[1])["linked"]["local_id"] == LOCAL_ID
    assert [value_of(out)["kind"] for out in first[2:4]] == ["patient.linked", "patient"]
    assert {out.key for out in first if out.topic == TOPICS.pathway} == {INS_ID.encode()}
    later = through_both(ingest, identity, record(CONDITION, message_id="m-2", offset=8))
    [forwarded, moved, published, receipt, _own] = later
    assert forwarded.key == LOCAL_ID.encode()
    assert (moved.topic, moved.key) == (TOPICS.identity, INS_ID.encode())
    assert published.key == INS_ID.encode()
    assert value_of(published)["patient_id"] == INS_ID
    assert value_of(published)["provenance"]["steps"][-1] == "patient-id:linked"
    assert value_of(receipt)["event_ids"] == [value_of(published)["event_id"]]


def test_a_link_carries_the_local_ids_share_state_to_the_ins_id_instead_of_a_merge_round_trip() -> None:
    """The identity agent decides as it publishes: on the local id's partition the share stage hands
    the local id's state over with the input sent on to the INS id, whose partition merges it as the
    patient.linked event is decided. Nothing goes to hub.share-merge.v1."""
    states: dict[str, Any] = {LOCAL_ID: PatientShareState.empty(LOCAL_ID).to_json()}
    sharing = ShareStage(
        RecipientRegistry({}),
        POLICY,
        states,
        topic_prefix="f.",
        audit_topic="a",
        merge_topic=TOPICS.share_merge,
    )
    identity = IdentityRouter(IdentityStage({}, {}, {}), TOPICS, ShareRouter(sharing))
    sent = through_both(ingest_router(), identity, record(QUALIFIED_PATIENT, message_id="m-1"))
    [moved] = [out for out in sent if out.topic == TOPICS.identity and out.key == INS_ID.encode()]
    assert value_of(moved)["handover"] == {
        "from": LOCAL_ID,
        "to": INS_ID,
        "state": states[LOCAL_ID],
        "waiting": [],
    }
    assert states[f"{LOCAL_ID}#merged-into"] == INS_ID
    assert "m" not in {out.topic for out in sent}, "no request, no answer on the merge topic"
    assert not states.get(INS_ID, {}).get("awaiting") and f"{INS_ID}#held" not in states


def test_a_bug_taking_the_hand_over_costs_the_link_its_shortcut_not_the_input() -> None:
    """The local id's state cannot be taken (a bug): the input goes on without a hand-over, so the
    INS id's partition asks for the state over hub.share-merge.v1; the failure is logged and counted."""

    class FailingHandOver(Deciding):
        def hand_over(self, local_id: str, ins_id: str) -> dict[str, Any]:
            raise KeyError("a bug in the share stage")

    failures = metrics.REGISTRY.get_sample_value
    before = failures("hub_stage_failures_total", {"stage": "share"}) or 0.0
    identity = IdentityRouter(IdentityStage({}, {}, {}), TOPICS, FailingHandOver())  # type: ignore[arg-type]
    sent = through_both(ingest_router(), identity, record(QUALIFIED_PATIENT, message_id="m-1"))
    [moved] = [out for out in sent if out.topic == TOPICS.identity and out.key == INS_ID.encode()]
    assert value_of(moved)["linked"]["local_id"] == LOCAL_ID and "handover" not in value_of(moved)
    assert TOPICS.receipts in {out.topic for out in sent}, "the input is published and receipted"
    assert failures("hub_stage_failures_total", {"stage": "share"}) == before + 1


def test_a_resent_message_id_is_receipted_duplicate_and_sends_no_event() -> None:
    """The second copy of one message id publishes nothing and repeats the first event ids."""
    ingest, identity = ingest_router(), identity_router()
    first = through_both(ingest, identity, record(CONDITION))
    again = through_both(ingest, identity, record(CONDITION, offset=8))
    assert [out.topic for out in again] == [TOPICS.identity, TOPICS.receipts, OWN_RECEIPTS]
    receipt = value_of(again[-1])
    assert receipt["status"] == "duplicate"
    assert receipt["event_ids"] == value_of(first[-1])["event_ids"]
    assert receipt["ingest"]["offset"] == 8


def test_without_a_message_id_the_same_fact_is_a_duplicate_with_its_event_id() -> None:
    """No idempotency key: the known fact is not published again; the receipt names its event id."""
    ingest, identity = ingest_router(), identity_router()
    one = through_both(ingest, identity, record(CONDITION, message_id=None))
    two = through_both(ingest, identity, record(CONDITION, message_id=None, offset=9))
    event_id = value_of(one[1])["event_id"]
    assert [out.topic for out in two] == [TOPICS.identity, TOPICS.receipts, OWN_RECEIPTS]
    assert (value_of(two[-1])["status"], value_of(two[-1])["event_ids"]) == ("duplicate", [event_id])


def test_a_linked_event_is_published_once_per_link() -> None:
    """The same link seen again (another input with local id and INS) makes no second patient.linked event."""
    ingest, identity = ingest_router(), identity_router()
    through_both(ingest, identity, record(QUALIFIED_PATIENT, message_id="m-1"))
    patient = dict(QUALIFIED_PATIENT, gender="male")
    again = through_both(ingest, identity, record(patient, message_id="m-2", offset=8))
    kinds = [value_of(out)["kind"] for out in again if out.topic == TOPICS.pathway]
    assert kinds == ["patient"]


# --- the app ---------------------------------------------------------------------------------------------


def test_the_app_declares_an_ingest_and_an_identity_agent_with_the_identity_tables(tmp_path: Path) -> None:
    """An ingest and an identity agent, each of concurrency 1, and three co-partitioned identity tables."""
    from hub.crypto import Keyring, KeyStore, LocalKeyProvider  # noqa: PLC0415

    settings = Settings(
        topic_prefix="f.", topic_partitions=4, bootstrap_servers="127.0.0.1:1", table_dir=tmp_path / "tables"
    )
    keyring = Keyring(KeyStore(tmp_path / "keys.sqlite3"), LocalKeyProvider(bytes(32)))
    app = create_app(settings, CONTEXT, keyring=keyring, audit_chain_key=ChainKey(bytes(32)))
    agents = {agent.channel.get_topic_name(): agent for agent in app.agents.values()}
    assert {TOPICS.ingest, TOPICS.identity} <= set(agents)
    # The identity agent decides each pathway event as it publishes it: nothing reads the pathway back.
    assert TOPICS.pathway not in agents
    assert (agents[TOPICS.ingest].concurrency, agents[TOPICS.identity].concurrency) == (1, 1)
    for name in ("identity-aliases", "identity-seen-messages", "identity-seen-events"):
        assert app.tables[name].partitions == 4, name
    # Encryption at rest: sealed tables keep bytes (their changelogs hold ciphertext only).
    assert app.tables["identity-aliases"].value_serializer == "raw"
    # identity-seen-messages is in the clear, its JSON values kept as bytes: its changelog, as
    # identity-seen-events' and share-decided's, takes a batch's entries in one record per partition.
    assert app.tables["identity-seen-messages"].value_serializer == "raw"
    for name in ("identity-seen-messages", "identity-seen-events"):
        assert isinstance(app.tables[name], BatchedChangelogTable), name
    assert not isinstance(app.tables["identity-aliases"], BatchedChangelogTable)


# --- what replaces a record Kafka refused for good ------------------------------------------------------


def test_a_refused_identity_record_ends_the_input_as_an_internal_reject_kept_whole_in_the_dlq() -> None:
    """Accepted, but Kafka refused what the hub made of it: one reject receipt, its audit, the original."""
    router = ingest_router()
    rec = record(CONDITION)
    [refused] = router.route(rec, b"msg-1", now=NOW)
    dlq, audit, receipt, own = router.replacing(rec, b"msg-1", refused, "MessageSizeTooLargeError", now=NOW)
    assert (dlq.topic, audit.topic, receipt.topic) == (TOPICS.dlq, TOPICS.audit_unsealed, TOPICS.receipts)
    assert (own.topic, own.value) == (OWN_RECEIPTS, receipt.value)
    assert dlq.value == rec.value
    assert dict(dlq.headers)["hub-error-code"] == b"hub.internal_error"
    error = value_of(receipt)["error"]
    assert error["code"] == "hub.internal_error"
    assert "MessageSizeTooLargeError" in error["detail"]
    assert value_of(receipt)["message_id"] == "msg-1"


def test_a_refused_dlq_copy_is_sent_again_as_an_excerpt_and_nothing_else() -> None:
    """Its receipt went out already: only the DLQ record is replaced, never a second receipt."""
    router = ingest_router()
    rec = record({"resourceType": "Observation"})  # no patient: rejected
    dlq = next(out for out in router.route(rec, b"k", now=NOW) if out.topic == TOPICS.dlq)
    [again] = router.replacing(rec, b"k", dlq, "MessageSizeTooLargeError", now=NOW)
    assert again.topic == TOPICS.dlq
    assert dict(again.headers)["hub-dlq-kept"] == b"excerpt"
    assert dict(again.headers)["hub-error-code"] == dict(dlq.headers)["hub-error-code"]


def test_a_refused_receipt_has_no_substitute() -> None:
    """A receipt is small; one refused means Kafka's configuration is wrong: the agent resends it."""
    router = ingest_router()
    rec = record({"resourceType": "Observation"})
    receipt = next(out for out in router.route(rec, b"k", now=NOW) if out.topic == TOPICS.receipts)
    assert router.replacing(rec, b"k", receipt, "TopicAuthorizationFailedError", now=NOW) == []
