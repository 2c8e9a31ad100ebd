"""The share stage in process: state per patient, one audit per decision, and merging linked identities."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.consent import load_policy, share_decisions
from hub.consent.recipients import parse_recipients
from hub.consent.share import ShareStage
from hub.identity.stage import linked_event

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
RPPS = "urn:oid:1.2.250.1.71.4.2.1"
POLICY = load_policy(Path(__file__).resolve().parents[2] / "config" / "policy.json")
RECIPIENTS = parse_recipients(
    {
        "recipients": [
            {
                "id": "gp-x",
                "kind": "gp",
                "organization": {"system": "urn:test:org", "value": "cabinet-x"},
                "practitioners": [{"system": RPPS, "value": "10009900019"}],
                "kafka_principal": "User:gp-x",
                "subscription": {"kinds": ["*"]},
            }
        ]
    },
    origin="test",
)


def stage(states: dict[str, Any]) -> ShareStage:
    return ShareStage(
        RECIPIENTS, POLICY, states, topic_prefix="t.", audit_topic="t.audit", merge_topic="t.merge"
    )


def event(patient_id: str, resource: dict[str, Any], n: int, kind: str) -> dict[str, Any]:
    return {
        "event_id": f"00000000-0000-5000-8000-{n:012d}",
        "patient_id": patient_id,
        "kind": kind,
        "occurred_at": "2026-11-22T10:00:00.000Z",
        "recorded_at": "2026-11-22T10:00:00.000Z",
        "source": {"id": "gp-src", "organization": {"system": "urn:test:org", "value": "src"}},
        "sensitivity": [],
        "resource": resource,
        "provenance": {"ingest": {"topic": "hub.ingest.v1", "partition": 0, "offset": n}, "steps": []},
    }


def declaring_gp(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:hub:network-patient-id", "value": patient_id}],
        "generalPractitioner": [{"identifier": {"system": RPPS, "value": "10009900019"}}],
    }


OBJECTION = {
    "resourceType": "Consent",
    "status": "active",
    "scope": {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
        ]
    },
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "dateTime": "2026-11-21T10:00:00Z",
    "provision": {"type": "deny"},
}
CONDITION = {
    "resourceType": "Condition",
    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]},
}


def copies(shares: list[Any]) -> list[Any]:
    return [s for s in shares if s.topic == "t.hub.pathway.gp-x.v1"]


def audits(shares: list[Any]) -> list[Any]:
    return [s for s in shares if s.topic == "t.audit"]


def link(local_id: str, ins_id: str) -> dict[str, Any]:
    return linked_event(
        {
            "local_id": local_id,
            "ins_id": ins_id,
            "source": "gp-src",
            "organization": {"system": "urn:test:org", "value": "src"},
            "ingest": {"topic": "hub.ingest.v1", "partition": 0, "offset": 9},
            "recorded_at": "2026-11-22T10:00:00.000Z",
        }
    ).to_dict()


def test_the_declared_gp_receives_and_every_decision_is_audited_once() -> None:
    """A Patient declaring the GP, then a diagnosis: both reach the GP, one AuditEvent per decision."""
    sharing = stage({})
    first = sharing.handle(event("pt-x", declaring_gp("pt-x"), 1, "patient"), now=NOW)
    second = sharing.handle(
        event("pt-x", {**CONDITION, "subject": {"reference": "Patient/pt-x"}}, 2, "condition"), now=NOW
    )
    assert len(copies(first)) == len(copies(second)) == 1
    assert len(audits(first)) == len(audits(second)) == 1


def test_a_link_holds_events_until_the_other_identitys_state_is_merged_then_its_objection_holds() -> None:
    """patient.linked: the survivor's events wait for the local id's state; once merged, they are
    decided, and an objection recorded under the local id applies to them and to what follows."""
    states: dict[str, Any] = {}
    sharing = stage(states)
    sharing.handle(event("pt-x", declaring_gp("pt-x"), 1, "patient"), now=NOW)
    sharing.handle(
        event("pt-local", {**OBJECTION, "patient": {"reference": "Patient/pt-local"}}, 2, "consent"), now=NOW
    )
    linked = sharing.handle(link("pt-local", "pt-x"), now=NOW)
    [request] = linked
    assert (request.topic, request.key, request.value["type"]) == ("t.merge", "pt-local", "request")
    condition = event("pt-x", {**CONDITION, "subject": {"reference": "Patient/pt-x"}}, 3, "condition")
    assert sharing.handle(condition, now=NOW) == [], "held: neither decided nor audited yet"
    [answer] = sharing.handle_merge(request.value)
    assert (answer.key, answer.value["type"]) == ("pt-x", "state")
    released = sharing.handle_merge(answer.value)
    assert states["pt-x"].get("awaiting") is None and "pt-x#held" not in states
    assert copies(released) == []
    rules = {d["rule"] for audit in audits(released) for d in share_decisions(audit.value)}
    assert rules == {"objection"}, "both held events (the link notice and the diagnosis) meet the objection"
    after = sharing.handle({**condition, "event_id": "00000000-0000-5000-8000-000000000004"}, now=NOW)
    assert copies(after) == []


def test_a_link_to_an_identity_without_state_just_clears_the_wait() -> None:
    """A local id the share stage never saw has no state: the merge brings nothing and sharing resumes."""
    sharing = stage({})
    sharing.handle(event("pt-x", declaring_gp("pt-x"), 1, "patient"), now=NOW)
    [request] = [s for s in sharing.handle(link("pt-new", "pt-x"), now=NOW) if s.topic == "t.merge"]
    condition = event("pt-x", {**CONDITION, "subject": {"reference": "Patient/pt-x"}}, 5, "condition")
    assert sharing.handle(condition, now=NOW) == []
    [answer] = sharing.handle_merge(request.value)
    released = sharing.handle_merge(answer.value)
    kinds = [share.value["kind"] for share in copies(released)]
    assert kinds == ["patient.linked", "condition"], (
        "held events reach the declared GP, in order, after the wait"
    )


# --- redelivery: a worker killed after writing its table, before its outputs left ----------------------


def test_a_redelivered_link_asks_for_the_merge_again_and_holds_each_event_once() -> None:
    """The patient.linked event read again: the wait was recorded but its request may never have
    left, so the request goes out again; an event read again while held is held (and decided) once."""
    states: dict[str, Any] = {}
    sharing = stage(states)
    sharing.handle(event("pt-x", declaring_gp("pt-x"), 1, "patient"), now=NOW)
    first = sharing.handle(link("pt-local", "pt-x"), now=NOW)  # its request lost with the worker
    [request] = sharing.handle(link("pt-local", "pt-x"), now=NOW)
    assert request == first[0]
    condition = event("pt-x", {**CONDITION, "subject": {"reference": "Patient/pt-x"}}, 3, "condition")
    sharing.handle(condition, now=NOW)
    sharing.handle(condition, now=NOW)
    [answer] = sharing.handle_merge(request.value)
    released = sharing.handle_merge(answer.value)
    decided = [a.value["entity"][0]["what"]["identifier"]["value"] for a in audits(released)]
    assert sorted(decided) == sorted({link("pt-local", "pt-x")["event_id"], condition["event_id"]})
    assert [c.value["event_id"] for c in copies(released)].count(condition["event_id"]) == 1


def test_a_merge_answer_read_again_decides_the_released_events_again_with_the_same_ids() -> None:
    """The answer released the held events, then its worker died before their decisions left: read
    again, it decides them again (same event ids, consumers de-duplicate), none is lost."""
    states: dict[str, Any] = {}
    sharing = stage(states)
    sharing.handle(event("pt-x", declaring_gp("pt-x"), 1, "patient"), now=NOW)
    [request] = sharing.handle(link("pt-local", "pt-x"), now=NOW)
    condition = event("pt-x", {**CONDITION, "subject": {"reference": "Patient/pt-x"}}, 3, "condition")
    sharing.handle(condition, now=NOW)
    [answer] = sharing.handle_merge(request.value)
    released = sharing.handle_merge(answer.value)  # lost with the worker
    again = sharing.handle_merge(answer.value)
    assert [c.value["event_id"] for c in copies(again)] == [c.value["event_id"] for c in copies(released)]
    assert condition["event_id"] in [c.value["event_id"] for c in copies(again)]
    assert len(audits(again)) == len(audits(released))
    assert states["pt-x"].get("awaiting") is None


# -- the hand-over: the local id's partition sends its state with the link ------------------------------


def test_a_handed_over_objection_holds_at_once_with_no_round_trip_and_nothing_held() -> None:
    """The local id's partition hands its state over with the link (as identity records it): the INS
    id's partition merges it as the patient.linked event comes, so the objection made under the local
    id applies to the link notice and to the next diagnosis, with no request, answer or held event."""
    states: dict[str, Any] = {}
    sharing = stage(states)
    sharing.handle(event("pt-x", declaring_gp("pt-x"), 1, "patient"), now=NOW)
    sharing.handle(
        event("pt-local", {**OBJECTION, "patient": {"reference": "Patient/pt-local"}}, 2, "consent"), now=NOW
    )
    handover = sharing.hand_over("pt-local", "pt-x")
    assert handover["state"] is not None and states["pt-local#merged-into"] == "pt-x"
    linked = sharing.handle(link("pt-local", "pt-x"), now=NOW, handover=handover)
    assert [s for s in linked if s.topic == "t.merge"] == [], "no round trip"
    assert "pt-x#held" not in states and not states["pt-x"].get("awaiting")
    condition = event("pt-x", {**CONDITION, "subject": {"reference": "Patient/pt-x"}}, 3, "condition")
    decided = linked + sharing.handle(condition, now=NOW)
    assert copies(decided) == []
    rules = {d["rule"] for audit in audits(decided) for d in share_decisions(audit.value)}
    assert rules == {"objection"}, "the link notice and the diagnosis meet the objection"


def test_a_local_id_with_nothing_to_hand_over_says_so_and_the_link_changes_nothing() -> None:
    """A local id the share stage never saw: its hand-over is empty (said, so that nothing is asked),
    nothing is written for it, and the INS id's sharing goes on as before the link."""
    states: dict[str, Any] = {}
    sharing = stage(states)
    sharing.handle(event("pt-x", declaring_gp("pt-x"), 1, "patient"), now=NOW)
    before = {key: value for key, value in states.items() if "#d:" not in key}
    handover = sharing.hand_over("pt-new", "pt-x")
    assert handover == {"from": "pt-new", "to": "pt-x", "state": None, "waiting": []}
    linked = sharing.handle(link("pt-new", "pt-x"), now=NOW, handover=handover)
    assert [s for s in linked if s.topic == "t.merge"] == [] and len(audits(linked)) == 1
    written = {key: value for key, value in states.items() if "#d:" not in key}  # but the decisions
    assert written == before, "nothing written: the state is the INS id's as it was"
    condition = event("pt-x", {**CONDITION, "subject": {"reference": "Patient/pt-x"}}, 3, "condition")
    assert len(copies(sharing.handle(condition, now=NOW))) == 1


def test_a_hand_over_read_again_merges_to_the_same_state_and_sends_what_it_sent() -> None:
    """The forwarded input read again (its worker died): the same hand-over, the same merged state,
    and the link notice's decisions again under the same ids."""
    states: dict[str, Any] = {}
    sharing = stage(states)
    sharing.handle(event("pt-local", declaring_gp("pt-local"), 1, "patient"), now=NOW)
    handover = sharing.hand_over("pt-local", "pt-x")
    first = sharing.handle(link("pt-local", "pt-x"), now=NOW, handover=handover)
    merged = dict(states["pt-x"])
    again = sharing.handle(link("pt-local", "pt-x"), now=NOW, handover=handover)
    assert states["pt-x"] == merged
    assert [(s.topic, s.value.get("id") or s.value.get("event_id")) for s in again] == [
        (s.topic, s.value.get("id") or s.value.get("event_id")) for s in first
    ]
    condition = event("pt-x", {**CONDITION, "subject": {"reference": "Patient/pt-x"}}, 3, "condition")
    assert len(copies(sharing.handle(condition, now=NOW))) == 1, "the GP declared under the local id"


def test_a_link_without_a_hand_over_still_takes_the_round_trip() -> None:
    """An input sent on by an earlier version carries no hand-over: the merge is asked for."""
    sharing = stage({})
    [request] = [s for s in sharing.handle(link("pt-local", "pt-x"), now=NOW) if s.topic == "t.merge"]
    assert request.value["type"] == "request"
    other = sharing.hand_over("pt-other", "pt-x")
    [request] = [
        s for s in sharing.handle(link("pt-local", "pt-x"), now=NOW, handover=other) if s.topic == "t.merge"
    ]
    assert request.value["type"] == "request", "a hand-over of another local id is not this link's"
