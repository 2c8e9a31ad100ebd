"""AuditEvents of hub.audit.v1 (hub/consent/audit.py): valid FHIR R4, one deterministic id per event decided,
the rule and policy version carried, and the patient by network id only."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from hub.audit_vocabulary import (
    EVENT_ID_SYSTEM,
    OUTCOME_NOT_DONE,
    OUTCOME_SUCCESS,
    SHARE_DECISIONS,
    SHARE_RELEASES,
)
from hub.consent.audit import (
    RELEASES_PER_AUDIT,
    audit_consent_rejected,
    audit_decisions,
    audit_reject,
    audit_releases,
    decision_labels,
    share_decisions,
)
from hub.consent.policy import POLICY_VERSION, Decision, FinalDecision
from hub.consent.recipients import FINESS_SYSTEM, Identifier, Recipient, Subscription
from hub.consent.state import CONSENT_UNINTERPRETABLE, ConsentRejected
from hub.errors import ErrorCode
from hub.ingest.outcome import KafkaCoordinates, Rejected
from hub.pathway.network_id import INS_TEST_NIR, NETWORK_ID_SYSTEM

RECORDED = datetime(2026, 11, 22, 12, 30, 15, 250_000, tzinfo=UTC)
PATIENT = "pt-" + "a" * 24
INS = "255086920100146"
EVENT_ID = "0b7a3c1e-4d2f-5a6b-8c9d-0e1f2a3b4c5d"
ORIGIN = KafkaCoordinates("hub.ingest.v1", 0, 1)
HOSPITAL = Recipient(
    id="demo-hospital-chu",
    kind="hospital",
    organization=Identifier(FINESS_SYSTEM, "690999990"),
    kafka_principal="User:demo-hospital-chu",
    subscription=Subscription(kinds=("*",)),
)


def patient_event() -> dict[str, Any]:
    """A pathway event whose resource is a Patient with name, birth date and a qualified INS."""
    return {
        "event_id": EVENT_ID,
        "patient_id": PATIENT,
        "kind": "patient",
        "occurred_at": "2026-11-01T10:00:00.000Z",
        "recorded_at": "2026-11-01T10:00:05.000Z",
        "source": {"id": "demo-gp-cabinet-lamentin", "organization": {"system": "urn:x", "value": "y"}},
        "sensitivity": [],
        "resource": {
            "resourceType": "Patient",
            "identifier": [
                {"system": INS_TEST_NIR, "value": INS},
                {"system": NETWORK_ID_SYSTEM, "value": PATIENT},
            ],
            "name": [{"family": "Céleste", "given": ["Maryse"]}],
            "birthDate": "1955-08-12",
        },
        "provenance": {"ingest": {"topic": "hub.ingest.v1", "partition": 0, "offset": 3}, "steps": []},
    }


def final(verdict: Any, rule: str, reason: str = "because", version: str = POLICY_VERSION) -> FinalDecision:
    vote = Decision(verdict, rule, reason)
    return FinalDecision(verdict, rule, reason, "hub-secret-partage@2026-11-22.1", version, (vote,))


def details(audit: dict[str, Any]) -> dict[str, str]:
    return {d["type"]: d["valueString"] for d in audit["entity"][0]["detail"]}


def assert_no_identity(audit: dict[str, Any]) -> None:
    text = json.dumps(audit, ensure_ascii=False)
    for secret in (INS, "Céleste", "Maryse", "1955-08-12", INS_TEST_NIR):
        assert secret not in text


GP = "demo-gp-cabinet-lamentin"


def one(decision: FinalDecision, recipient: Recipient | str = HOSPITAL, **event: Any) -> dict[str, Any]:
    """The AuditEvent of one event decided for one recipient."""
    return audit_decisions([(recipient, decision)], event={**patient_event(), **event}, recorded=RECORDED)


@pytest.mark.parametrize(
    ("decision", "outcome"),
    [
        (final("permit", "care_team", "the recipient is the patient's declared GP"), OUTCOME_SUCCESS),
        (final("deny", "objection", "the patient objects to sharing with everyone"), OUTCOME_NOT_DONE),
        (
            final("deny", "subscription_filter", "not requested: kind patient is not subscribed"),
            OUTCOME_NOT_DONE,
        ),
        (
            final("deny", "state_unavailable", "the patient's state is corrupt: stored state unreadable"),
            OUTCOME_NOT_DONE,
        ),
    ],
    ids=["permit", "objection", "not requested", "corrupt state"],
)
def test_share_decisions_audit_is_valid_fhir(decision: FinalDecision, outcome: str) -> None:
    """Permit and deny both give an R4 AuditEvent (Export) with the rule, verdict and policy version."""
    audit = one(decision)
    AuditEvent.model_validate(audit)
    assert audit["type"]["code"] == "110106"
    assert audit["subtype"][0]["code"] == SHARE_DECISIONS
    assert audit["outcome"] == outcome
    assert audit["recorded"] == "2026-11-22T12:30:15.250Z"
    assert details(audit) == {
        "policy": "hub-secret-partage@2026-11-22.1",
        "policy_version": POLICY_VERSION,
        "kind": "patient",
        "source": GP,
    }
    assert audit["entity"][0]["what"]["identifier"] == {"system": EVENT_ID_SYSTEM, "value": EVENT_ID}
    assert share_decisions(audit) == [
        {
            "event_id": EVENT_ID,
            "verdict": decision.verdict,
            "rule": decision.rule,
            "reason": decision.reason,
            "policy": "hub-secret-partage@2026-11-22.1",
            "policy_version": POLICY_VERSION,
            "recipient": "demo-hospital-chu",
            "topic": "hub.pathway.demo-hospital-chu.v1",
            "kind": "patient",
            "source": GP,
        }
    ]


def test_one_audit_event_carries_every_recipients_decision() -> None:
    """One record per pathway event, not per event and recipient: each recipient its entity and agent;
    sent to one of two is a success, withheld from all is not done."""
    decisions: list[tuple[Recipient | str, FinalDecision]] = [
        (HOSPITAL, final("permit", "care_team")),
        (GP, final("deny", "objection", "the patient objects")),
    ]
    audit = audit_decisions(decisions, event=patient_event(), recorded=RECORDED)
    AuditEvent.model_validate(audit)
    assert audit["outcome"] == OUTCOME_SUCCESS
    assert audit["outcomeDesc"] == "sent to 1 of 2 recipients"
    assert [a["name"] for a in audit["agent"][1:]] == ["demo-hospital-chu", GP]
    found = {d["recipient"]: (d["verdict"], d["rule"]) for d in share_decisions(audit)}
    assert found == {"demo-hospital-chu": ("permit", "care_team"), GP: ("deny", "objection")}
    denied = audit_decisions([(GP, final("deny", "objection"))], event=patient_event(), recorded=RECORDED)
    assert denied["outcome"] == OUTCOME_NOT_DONE


def test_records_written_before_one_per_event_are_still_read() -> None:
    """An AuditEvent of the earlier form (one per event and recipient, subtype share-decision)."""
    old = {
        "resourceType": "AuditEvent",
        "subtype": [{"system": "urn:hub:audit-event-subtype", "code": "share-decision"}],
        "entity": [
            {
                "what": {"identifier": {"system": EVENT_ID_SYSTEM, "value": EVENT_ID}},
                "detail": [
                    {"type": "verdict", "valueString": "deny"},
                    {"type": "rule", "valueString": "objection"},
                    {"type": "recipient", "valueString": GP},
                ],
            }
        ],
    }
    assert share_decisions(old) == [
        {"event_id": EVENT_ID, "verdict": "deny", "rule": "objection", "recipient": GP}
    ]
    assert (
        share_decisions(
            audit_reject(Rejected(ErrorCode.SOURCE_UNKNOWN, "x"), origin=ORIGIN, recorded=RECORDED)
        )
        == []
    )


def released_event(n: int) -> dict[str, Any]:
    return {**patient_event(), "event_id": f"{EVENT_ID[:-4]}{n:04d}", "kind": "condition"}


def test_late_releases_of_one_event_are_one_audit_event_that_loses_no_decision() -> None:
    """The events one event released, to one recipient or two, in one valid AuditEvent (share-releases):
    read back, each released event's decisions are what one AuditEvent per event said, released_by too."""
    releaser = "00000000-0000-5000-8000-000000000002"
    permit = final("permit", "care_team")
    releases: list[tuple[dict[str, Any], list[tuple[Recipient | str, FinalDecision]]]] = [
        (released_event(1), [(HOSPITAL, permit)]),
        (released_event(2), [(HOSPITAL, permit), (GP, final("permit", "explicit_consent"))]),
    ]
    (audit,) = audit_releases(releases, released_by=releaser, recorded=RECORDED)
    AuditEvent.model_validate(audit)
    assert audit["subtype"][0]["code"] == SHARE_RELEASES
    assert (audit["type"]["code"], audit["action"], audit["outcome"]) == ("110106", "R", OUTCOME_SUCCESS)
    assert audit["outcomeDesc"] == "released 2 waiting events to 2 recipients"
    assert [a["name"] for a in audit["agent"][1:]] == ["demo-hospital-chu", GP]
    one_each = [
        {**decision, "released_by": releaser}
        for event, decisions in releases
        for decision in share_decisions(audit_decisions(decisions, event=event, recorded=RECORDED))
    ]
    assert share_decisions(audit) == one_each
    assert len(one_each) == 3 and all(d["released_by"] == releaser for d in one_each)
    assert audit["entity"][-1]["what"]["identifier"] == {"system": NETWORK_ID_SYSTEM, "value": PATIENT}
    assert_no_identity(audit)
    again = audit_releases(releases, released_by=releaser, recorded=RECORDED)
    assert [a["id"] for a in again] == [audit["id"]], "a release read again has the same id"
    other = audit_releases(releases[:1], released_by=releaser, recorded=RECORDED)
    assert other[0]["id"] != audit["id"]


def test_a_release_of_many_events_is_told_in_bounded_audit_events() -> None:
    """More than RELEASES_PER_AUDIT events released at once: several AuditEvents, every event in one."""
    count = 2 * RELEASES_PER_AUDIT + 3
    releases: list[tuple[dict[str, Any], list[tuple[Recipient | str, FinalDecision]]]] = [
        (released_event(n), [(HOSPITAL, final("permit", "care_team"))]) for n in range(count)
    ]
    audits = audit_releases(releases, released_by=EVENT_ID, recorded=RECORDED)
    assert [len(share_decisions(a)) for a in audits] == [RELEASES_PER_AUDIT, RELEASES_PER_AUDIT, 3]
    assert [d["event_id"] for a in audits for d in share_decisions(a)] == [
        released_event(n)["event_id"] for n in range(count)
    ]
    assert len({a["id"] for a in audits}) == 3


def test_the_metrics_reader_finds_the_decisions_share_decisions_finds() -> None:
    """decision_labels (what hub_share_decisions_total counts) agrees with share_decisions on every
    form: one per event, late releases, the earlier one per decision, and records of no decision."""
    decisions: list[tuple[Recipient | str, FinalDecision]] = [
        (HOSPITAL, final("permit", "care_team")),
        (GP, final("deny", "objection")),
    ]
    forms = [
        audit_decisions(decisions, event=patient_event(), recorded=RECORDED),
        *audit_releases(
            [(patient_event(), decisions[:1]), (released_event(3), decisions)],
            released_by=EVENT_ID,
            recorded=RECORDED,
        ),
        {
            "subtype": [{"system": "urn:hub:audit-event-subtype", "code": "share-decision"}],
            "entity": [
                {"detail": [{"type": "verdict", "valueString": "deny"}, {"type": "rule", "valueString": "x"}]}
            ],
        },
        audit_reject(Rejected(ErrorCode.SOURCE_UNKNOWN, "x"), origin=ORIGIN, recorded=RECORDED),
        {"subtype": "not a list", "entity": None},
    ]
    for audit in forms:
        expected = [(d.get("rule", ""), d.get("verdict", "")) for d in share_decisions(audit)]
        assert decision_labels(audit) == expected
    assert [len(decision_labels(a)) for a in forms] == [2, 3, 1, 0, 0]


def test_agents_are_the_hub_and_the_recipients() -> None:
    """The hub exports (not a requestor); a recipient is named by organisation and Kafka principal."""
    audit = one(final("permit", "care_team"))
    hub, recipient = audit["agent"]
    assert hub["requestor"] is False
    assert hub["who"]["identifier"]["value"] == "hub-share"
    assert recipient["requestor"] is False
    assert recipient["who"] == {
        "type": "Organization",
        "identifier": {"system": FINESS_SYSTEM, "value": "690999990"},
    }
    assert (recipient["altId"], recipient["name"]) == ("User:demo-hospital-chu", "demo-hospital-chu")


def test_patient_appears_by_network_id_only() -> None:
    """The patient entity carries the network id; no name, birth date or INS appears anywhere."""
    audit = one(final("permit", "care_team"))
    patient = audit["entity"][-1]
    assert patient["what"] == {
        "type": "Patient",
        "identifier": {"system": NETWORK_ID_SYSTEM, "value": PATIENT},
    }
    assert patient["role"]["code"] == "1"
    assert_no_identity(audit)


def test_audit_id_is_deterministic_per_event_recipients_and_policy_version() -> None:
    """A redelivered event gets the same id; other recipients or another policy version another one."""

    def audit_id(decision: FinalDecision, recipient: Recipient | str = HOSPITAL) -> str:
        return str(one(decision, recipient)["id"])

    first = audit_id(final("permit", "care_team"))
    assert first == audit_id(final("permit", "care_team"))
    assert first != audit_id(final("permit", "care_team"), GP)
    assert first != audit_id(final("permit", "care_team", version="2027-01-01.1"))


def test_unknown_recipient_is_audited_by_id() -> None:
    """A decision for an id not in the registry is still a valid AuditEvent naming that id."""
    audit = one(
        final("deny", "deny_by_default", "unknown recipient: not in the recipient registry"), "gone-recipient"
    )
    AuditEvent.model_validate(audit)
    assert audit["agent"][1]["who"]["identifier"]["value"] == "gone-recipient"


def test_unreadable_event_is_still_audited() -> None:
    """Even an envelope without ids gives a valid AuditEvent (with no patient entity)."""
    audit = audit_decisions(
        [(HOSPITAL, final("deny", "deny_by_default", "the event envelope cannot be read"))],
        event={"kind": 3},
        recorded=RECORDED,
    )
    AuditEvent.model_validate(audit)
    assert [e["role"]["code"] for e in audit["entity"]] == ["4", "16"]


def test_ingest_reject_audit() -> None:
    """A rejected record is audited with source, Kafka coordinates and code, no clinical data."""
    rejected = Rejected(
        ErrorCode.SIGNATURE_INVALID, "HMAC does not match", "demo-lab-bio", "demo-lab-bio-000042"
    )
    origin = KafkaCoordinates("hub.ingest.v1", 2, 1234)
    audit = audit_reject(rejected, origin=origin, recorded=RECORDED)
    AuditEvent.model_validate(audit)
    assert (audit["type"]["code"], audit["outcome"], audit["action"]) == ("110107", OUTCOME_NOT_DONE, "C")
    assert audit["agent"][0]["who"]["identifier"]["value"] == "demo-lab-bio"
    assert audit["agent"][0]["requestor"] is True
    assert details(audit) == {
        "code": "signature.invalid",
        "detail": "HMAC does not match",
        "topic": "hub.ingest.v1",
        "partition": "2",
        "offset": "1234",
        "message_id": "demo-lab-bio-000042",
    }
    assert audit["id"] == audit_reject(rejected, origin=origin, recorded=datetime.now(UTC))["id"]


def test_reject_from_an_unregistered_source() -> None:
    """A reject with no registered source names none and stays valid."""
    rejected = Rejected(ErrorCode.SOURCE_UNKNOWN, "hub-source is not registered")
    audit = audit_reject(rejected, origin=KafkaCoordinates("hub.ingest.v1", 0, 1), recorded=RECORDED)
    AuditEvent.model_validate(audit)
    assert audit["agent"][0]["who"] == {"display": "unregistered source"}


def test_consent_rejected_audit() -> None:
    """A refused Consent is audited (Patient Record, update not done) with its code, patient by network id."""
    event = {**patient_event(), "kind": "consent"}
    rejection = ConsentRejected("provision.actor[0].reference names no one by identifier (system and value)")
    audit = audit_consent_rejected(rejection, event=event, recorded=RECORDED)
    AuditEvent.model_validate(audit)
    assert (audit["type"]["code"], audit["action"], audit["outcome"]) == ("110110", "U", OUTCOME_NOT_DONE)
    assert details(audit) == {"code": CONSENT_UNINTERPRETABLE, "detail": rejection.detail}
    assert audit["agent"][0]["who"]["identifier"]["value"] == "demo-gp-cabinet-lamentin"
    assert_no_identity(audit)


def test_naive_recorded_is_a_bug() -> None:
    """The recorded instant must be timezone-aware."""
    with pytest.raises(ValueError, match="aware"):
        audit_decisions(
            [(HOSPITAL, final("permit", "care_team"))],
            event=patient_event(),
            recorded=datetime(2026, 11, 22),  # noqa: DTZ001
        )
