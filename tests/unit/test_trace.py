"""`hub trace` and `hub consent show`, the pure parts (hub/ops/trace.py, hub/ops/consent_view.py):
hand-made receipts, DLQ records, pathway events, AuditEvents, recipient copies and changelog records."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from hub.consent.audit import audit_consent_rejected, audit_decisions, audit_reject, audit_releases
from hub.consent.decisions import WAITING_FIELD, waiting_key
from hub.consent.policy import FinalDecision
from hub.consent.recipients import FINESS_SYSTEM, NETWORK_SYSTEM, RPPS_SYSTEM, Identifier
from hub.consent.state import (
    CareTeamMember,
    CareTeamRecord,
    ConsentRecord,
    ConsentRejected,
    GpDeclaration,
    Involvement,
    PatientShareState,
    Period,
    Provision,
)
from hub.errors import ErrorCode
from hub.ingest.outcome import Accepted, KafkaCoordinates, Rejected
from hub.ingest.receipts import dlq_headers, receipt
from hub.kafka.clients import Record
from hub.ops.cli import SHARE_STATE_TABLE, recipient_topics
from hub.ops.consent_view import entries_of, holds_key, key_of, last_state, render_state, to_json
from hub.ops.trace import Target, build_trace, parse_target, render
from hub.records import TABLE_BATCH_FORMAT, TABLE_BATCH_HEADER
from hub.table_batches import BATCH_KEY_PREFIX, pack_entries
from hub.topics import TopicNames

PREFIX = "t."
INGEST = PREFIX + "hub.ingest.v1"
PATIENT = "pt-" + "a" * 24
OTHER = "pt-" + "b" * 24
E1 = "11111111-1111-5111-8111-111111111111"
E2 = "22222222-2222-5222-8222-222222222222"
E_OTHER = "99999999-9999-5999-8999-999999999999"
ORIGIN = KafkaCoordinates(INGEST, 2, 1234)
REJECTED_ORIGIN = KafkaCoordinates(INGEST, 0, 7)
AT = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)
#: Clinical content that must never reach the output: a diagnosis code and a name.
SECRET_CODE = "E11.9"
SECRET_NAME = "Dupont"


class Topic:
    """Appends hand-made records to one topic, offsets counting up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[Record] = []

    def add(self, value: Any, *, key: str | None = None, headers: Any = (), partition: int = 0) -> Record:
        data = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
        record = Record(
            self.name,
            partition,
            len(self.records),
            1_790_000_000_000 + len(self.records),
            None if key is None else key.encode(),
            data,
            tuple(headers),
        )
        self.records.append(record)
        return record


def event(
    event_id: str, kind: str, origin: KafkaCoordinates = ORIGIN, patient: str = PATIENT
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "patient_id": patient,
        "kind": kind,
        "occurred_at": "2026-11-20T12:00:00Z",
        "recorded_at": "2026-11-21T15:00:00Z",
        "source": {"id": "gp-test", "organization": {"system": FINESS_SYSTEM, "value": "330781196"}},
        "sensitivity": [],
        "resource": {
            "resourceType": "Condition",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": SECRET_CODE}]},
            "note": [{"text": f"seen by {SECRET_NAME}"}],
        },
        "provenance": {"ingest": origin.as_dict(), "steps": []},
    }


def decision(verdict: str, rule: str, reason: str) -> FinalDecision:
    return FinalDecision(verdict, rule, reason, "shared-secret", "2026-11-22.1", ())  # type: ignore[arg-type]


def share_audit(evt: dict[str, Any], recipient: str, verdict: str, rule: str, reason: str) -> dict[str, Any]:
    return audit_decisions([(recipient, decision(verdict, rule, reason))], event=evt, recorded=AT)


def without_recipient(record: Record, recipient: str) -> Record:
    """The audit record as if ``recipient`` had never been decided for."""
    audit = json.loads(record.value or b"{}")
    audit["entity"] = [
        e for e in audit.get("entity", []) if e["what"].get("identifier", {}).get("value") != recipient
    ]
    return dataclasses.replace(record, value=json.dumps(audit).encode())


def copy_of(evt: dict[str, Any], basis: str) -> dict[str, Any]:
    return {**evt, "decision": {"basis": basis, "policy": "shared-secret", "policy_version": "2026-11-22.1"}}


@pytest.fixture
def world() -> dict[str, Any]:
    """One accepted admission (two events, three recipients), one rejected input, unrelated noise."""
    receipts, dlq, pathway, audit, alerts = (Topic(PREFIX + n) for n in ("r", "d", "p", "a", "al"))
    copies = {name: Topic(f"{PREFIX}hub.pathway.{name}.v1") for name in ("hosp-a", "gp-dr-x", "outsider")}
    e1, e2 = event(E1, "patient"), event(E2, "condition")
    other = event(E_OTHER, "observation", KafkaCoordinates(INGEST, 1, 5), OTHER)
    receipts.add(
        receipt(Accepted("gp-test", "noise", ()), KafkaCoordinates(INGEST, 1, 5), at=AT, event_ids=[E_OTHER])
    )
    receipts.add(receipt(Accepted("gp-test", "adm-1", ()), ORIGIN, at=AT, event_ids=[E1, E2]))
    bad = Rejected(ErrorCode.SIGNATURE_INVALID, "the signature does not match", "gp-test", "bad-1")
    receipts.add(receipt(bad, REJECTED_ORIGIN, at=AT))
    dlq.add(
        b"original bytes",
        headers=dlq_headers((("hub-source", b"gp-test"), ("hub-message-id", b"bad-1")), bad, REJECTED_ORIGIN),
    )
    for evt in (other, e1, e2):
        pathway.add(evt, key=str(evt["patient_id"]))
    audit.add(audit_reject(bad, origin=REJECTED_ORIGIN, recorded=AT))
    audit.add(share_audit(other, "hosp-a", "deny", "deny_by_default", "outside the care team"))
    audit.add(share_audit(e1, "gp-dr-x", "permit", "care_team", "the recipient is the patient's declared GP"))
    audit.add(share_audit(e1, "hosp-a", "deny", "deny_by_default", "no care-team relation and no consent"))
    audit.add(share_audit(e1, "outsider", "deny", "deny_by_default", "no care-team relation and no consent"))
    # The share stage's form: one AuditEvent per event, with every recipient's decision in it.
    e2_decisions = [
        (name, decision(verdict, rule, "why"))
        for name, verdict, rule in (
            ("gp-dr-x", "permit", "care_team"),
            ("hosp-a", "permit", "care_team"),
            ("outsider", "deny", "deny_by_default"),
        )
    ]
    audit.add(audit_decisions(e2_decisions, event=e2, recorded=AT))
    # At-least-once: a redelivered event has the same AuditEvent id and is shown once.
    audit.add(audit_decisions(e2_decisions, event=e2, recorded=AT))
    copies["gp-dr-x"].add(copy_of(e1, "care_team"))
    copies["gp-dr-x"].add(copy_of(e2, "care_team"))
    copies["hosp-a"].add(copy_of(e2, "care_team"))
    alerts.add({"alert_id": "al-1", "status": "eligible", "network": {"id": "diab-971"}, "reasons": [
        {"criterion": "diabetes", "event_ids": [E2]}]})  # fmt: skip
    alerts.add(
        {"alert_id": "al-2", "status": "eligible", "reasons": [{"criterion": "x", "event_ids": [E_OTHER]}]}
    )
    return {
        "receipts": receipts.records,
        "dlq": dlq.records,
        "pathway": pathway.records,
        "audit": audit.records,
        "alerts": alerts.records,
        "copies": {name: topic.records for name, topic in copies.items()},
    }


def rows(lines: list[str]) -> dict[str, list[str]]:
    """Decision rows of a rendered event: recipient -> its columns."""
    return {
        line.split()[0]: line.split() for line in lines if line.startswith("  ") and len(line.split()) > 4
    }


# -- targets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message_id", "expected"),
    [
        (E1.upper(), None, Target("event", E1)),
        ("hub.ingest.v1/2/1234", None, Target("ingest", f"{INGEST}/2/1234")),
        (f"{INGEST}/2/1234", None, Target("ingest", f"{INGEST}/2/1234")),
        ("2/1234", None, Target("ingest", f"{INGEST}/2/1234")),
        (None, "adm-1", Target("message", "adm-1")),
    ],
)
def test_an_id_is_an_event_an_ingest_record_or_a_message(
    text: str | None, message_id: str | None, expected: Target
) -> None:
    assert parse_target(text, message_id=message_id, ingest_topic=INGEST, prefix=PREFIX) == expected


@pytest.mark.parametrize(
    ("text", "message_id"), [("adm-1", None), ("x/y/z", None), (None, None), ("2/3", "adm-1"), (None, "")]
)
def test_an_unreadable_id_says_what_is_expected(text: str | None, message_id: str | None) -> None:
    with pytest.raises(ValueError, match=r"event id|--message-id"):
        parse_target(text, message_id=message_id, ingest_topic=INGEST, prefix=PREFIX)


# -- traces ---------------------------------------------------------------------------------------------


def test_an_event_shows_its_receipt_and_every_recipients_decision_and_copy(world: dict[str, Any]) -> None:
    trace = build_trace(Target("event", E2), recipients=["hosp-a", "gp-dr-x", "outsider"], **world)
    assert trace.found
    assert [r.message_id for r in trace.receipts] == ["adm-1"]
    assert trace.receipts[0].status == "accepted" and trace.receipts[0].event_ids == (E1, E2)
    [only] = trace.events
    assert (only.event_id, only.kind, only.patient_id, only.source) == (E2, "condition", PATIENT, "gp-test")
    assert only.ingest == f"{INGEST}/2/1234"
    decided = {d.recipient: (d.verdict, d.rule, d.policy_version, d.copy) for d in only.decisions}
    assert decided == {
        "gp-dr-x": ("permit", "care_team", "2026-11-22.1", True),
        "hosp-a": ("permit", "care_team", "2026-11-22.1", True),
        "outsider": ("deny", "deny_by_default", "2026-11-22.1", False),
    }
    assert only.undecided == () and only.unaudited_copies == ()
    assert [(a.alert_id, a.network, a.criteria) for a in trace.alerts] == [
        ("al-1", "diab-971", ("diabetes",))
    ]
    table = rows(render(trace))
    assert table["outsider"][1:3] == ["deny", "deny_by_default"]
    assert table["gp-dr-x"][1:5] == ["permit", "care_team", "2026-11-22.1", "yes"]


def test_an_event_released_late_shows_the_release_among_its_decisions(world: dict[str, Any]) -> None:
    """The release of E1 and E2 to hosp-a, told in one share-releases AuditEvent whose first entity is
    E1: tracing E2 finds it too, and shows only E2's part of it."""
    releaser = "33333333-3333-5333-8333-333333333333"
    release = audit_releases(
        [
            (event(E1, "patient"), [("hosp-a", decision("permit", "care_team", "a stay began"))]),
            (event(E2, "condition"), [("hosp-a", decision("permit", "explicit_consent", "consented"))]),
        ],
        released_by=releaser,
        recorded=datetime(2026, 11, 21, 16, 0, tzinfo=UTC),
    )
    audit = Topic(PREFIX + "a")
    audit.records = list(world["audit"])
    for value in release:
        audit.add(value)
    trace = build_trace(Target("event", E2), recipients=["hosp-a"], **{**world, "audit": audit.records})
    [only] = trace.events
    hospital = [(d.verdict, d.rule, d.recorded) for d in only.decisions if d.recipient == "hosp-a"]
    assert hospital == [
        ("permit", "care_team", "2026-11-21T15:00:00.000Z"),
        ("permit", "explicit_consent", "2026-11-21T16:00:00.000Z"),
    ]


@pytest.mark.parametrize(
    ("text", "message_id"), [(f"{INGEST}/2/1234", None), ("2/1234", None), (None, "adm-1")]
)
def test_an_input_shows_all_its_events(
    world: dict[str, Any], text: str | None, message_id: str | None
) -> None:
    target = parse_target(text, message_id=message_id, ingest_topic=INGEST, prefix=PREFIX)
    trace = build_trace(target, **world)
    assert [e.event_id for e in trace.events] == [E1, E2]
    first = {d.recipient: (d.verdict, d.copy) for d in trace.events[0].decisions}
    assert first == {"gp-dr-x": ("permit", True), "hosp-a": ("deny", False), "outsider": ("deny", False)}


def test_a_rejected_input_shows_its_code_dlq_record_and_reject_audit(world: dict[str, Any]) -> None:
    for target in (Target("message", "bad-1"), Target("ingest", str(REJECTED_ORIGIN))):
        trace = build_trace(target, **world)
        assert trace.found
        [shown] = trace.receipts
        assert (shown.status, shown.code, shown.reject_audited) == ("rejected", "signature.invalid", True)
        assert [(r.code, r.origin) for r in trace.rejects] == [("signature.invalid", str(REJECTED_ORIGIN))]
        assert trace.events == ()
        text = "\n".join(render(trace))
        assert "signature.invalid" in text and "reject AuditEvent: recorded" in text
        assert "original bytes" not in text


def test_an_input_without_a_message_id_or_a_known_source_says_so_rather_than_none() -> None:
    """No hub-message-id (and a source the receipt did not echo): "no message id", never "None"."""
    receipts, dlq = Topic(PREFIX + "r"), Topic(PREFIX + "d")
    unknown = Rejected(ErrorCode.SOURCE_UNKNOWN, "no hub-source header", None, None)
    receipts.add(receipt(unknown, REJECTED_ORIGIN, at=AT))
    dlq.add(b"original bytes", headers=dlq_headers((), unknown, REJECTED_ORIGIN))
    empty: list[Record] = []
    trace = build_trace(
        Target("ingest", str(REJECTED_ORIGIN)),
        receipts=receipts.records,
        dlq=dlq.records,
        pathway=empty,
        audit=empty,
        alerts=empty,
        copies={},
    )
    text = "\n".join(render(trace))
    assert "no message id" in text and "no source id" in text
    assert "None" not in text


def test_an_unknown_id_is_not_found(world: dict[str, Any]) -> None:
    for target in (
        Target("event", "33333333-3333-5333-8333-333333333333"),
        Target("message", "never-sent"),
        Target("ingest", f"{INGEST}/0/999"),
    ):
        trace = build_trace(target, **world)
        assert not trace.found
        assert render(trace) == [
            f"{target.describe()}: not found (no receipt, DLQ record, event or decision names it)"
        ]
        assert trace.to_json()["found"] is False


def test_no_clinical_content_is_printed(world: dict[str, Any]) -> None:
    trace = build_trace(Target("message", "adm-1"), **world)
    for text in ("\n".join(render(trace)), json.dumps(trace.to_json())):
        assert SECRET_CODE not in text and SECRET_NAME not in text
        assert E1 in text and "condition" in text


def test_missing_decisions_and_unaudited_copies_are_called_out(world: dict[str, Any]) -> None:
    world["copies"]["outsider"] = [*world["copies"]["outsider"], world["copies"]["hosp-a"][0]]
    audits = [without_recipient(r, "outsider") for r in world["audit"]]
    trace = build_trace(
        Target("event", E2), **{**world, "audit": audits}, recipients=["hosp-a", "late-joiner"]
    )
    [only] = trace.events
    assert only.undecided == ("late-joiner",)
    assert only.unaudited_copies == ("outsider",)
    text = "\n".join(render(trace))
    assert "late-joiner: no decision on record" in text
    assert "outsider: holds a copy WITHOUT a decision on record" in text


def test_a_copy_is_unknown_when_the_recipient_topic_was_not_read(world: dict[str, Any]) -> None:
    trace = build_trace(Target("event", E2), **{**world, "copies": {"hosp-a": world["copies"]["hosp-a"]}})
    copies = {d.recipient: d.copy for d in trace.events[0].decisions}
    assert copies == {"gp-dr-x": None, "hosp-a": True, "outsider": None}
    assert rows(render(trace))["gp-dr-x"][4] == "?"


def test_an_event_listed_by_a_receipt_but_not_yet_shared_says_so(world: dict[str, Any]) -> None:
    trace = build_trace(Target("event", E2), receipts=world["receipts"], pathway=world["pathway"])
    assert trace.found and trace.events[0].decisions == ()
    assert "decisions: none on record" in "\n".join(render(trace))
    # Not on the pathway at all (only the receipt lists it).
    trace = build_trace(Target("message", "adm-1"), receipts=world["receipts"])
    assert [e.on_pathway for e in trace.events] == [False, False]


def test_a_refused_consent_is_shown_with_its_code(world: dict[str, Any]) -> None:
    evt = event(E2, "consent")
    refused = audit_consent_rejected(ConsentRejected("Consent.patient is missing"), event=evt, recorded=AT)
    audit = Topic(PREFIX + "a")
    audit.add(refused)
    trace = build_trace(Target("event", E2), pathway=world["pathway"], audit=audit.records)
    assert trace.events[0].refusals == ("consent.uninterpretable: Consent.patient is missing",)


def test_recipient_topics_are_found_under_the_prefix_only() -> None:
    existing = [
        "t.hub.pathway.v1", "t.hub.pathway.hosp-a.v1", "t.hub.pathway.gp.dr.v1", "hub.pathway.hosp-a.v1",
        "u.hub.pathway.hosp-a.v1", "t.hub.audit.v1",
    ]  # fmt: skip
    assert recipient_topics(existing, TopicNames("t.")) == {
        "t.hub.pathway.gp.dr.v1": "gp.dr",
        "t.hub.pathway.hosp-a.v1": "hosp-a",
    }
    assert recipient_topics(existing, TopicNames()) == {"hub.pathway.hosp-a.v1": "hosp-a"}


# -- consent view ---------------------------------------------------------------------------------------

T0 = datetime(2026, 10, 1, 9, tzinfo=UTC)
GP = Identifier(RPPS_SYSTEM, "10009900019")
HOSPITAL = Identifier(FINESS_SYSTEM, "970100228")


def full_state() -> PatientShareState:
    return PatientShareState(
        patient_id=PATIENT,
        general_practitioners=(GpDeclaration("gp-test", (GP,), T0),),
        care_teams=(
            CareTeamRecord(
                "CareTeam|id|gp-test|ct1",
                "gp-test",
                "active",
                Period(T0, None),
                (
                    CareTeamMember(
                        Identifier(RPPS_SYSTEM, "10000000001"),
                        HOSPITAL,
                        Period(T0, datetime(2027, 1, 1, tzinfo=UTC)),
                    ),
                ),
                T0,
            ),
        ),
        involvements=(
            Involvement("Encounter|event|e1", "encounter", HOSPITAL, True, None, T0),
            Involvement(
                "Encounter|event|e2", "encounter", Identifier(FINESS_SYSTEM, "750000001"), False, T0, T0
            ),
            Involvement(
                "EpisodeOfCare|event|e3", "episode", Identifier(NETWORK_SYSTEM, "diab-971"), True, None, T0
            ),
        ),
        consents=(
            ConsentRecord(
                "Consent|id|gp-test|c1",
                "gp-test",
                E1,
                "active",
                "patient-privacy",
                T0,
                Provision(
                    "permit",
                    actors=(HOSPITAL,),
                    labels=frozenset({"hiv"}),
                    period=Period(T0, None),
                    provisions=(Provision("deny", actors=(Identifier(FINESS_SYSTEM, "750000001"),)),),
                ),
            ),
            ConsentRecord("Consent|id|gp-test|c0", "gp-test", E2, "inactive", "treatment", T0, None),
        ),
    )


def changelog(*values: tuple[str | None, Any]) -> list[Record]:
    topic = Topic("hub-share-state-changelog")
    for key, value in values:
        topic.add(value, key=None if key is None else json.dumps(key))
    return topic.records


def test_the_last_value_of_the_patients_key_wins() -> None:
    old = PatientShareState(PATIENT, general_practitioners=(GpDeclaration("gp-test", (), T0),))
    records = changelog(
        (PATIENT, old.to_json()),
        (OTHER, PatientShareState(OTHER).to_json()),
        (PATIENT, full_state().to_json()),
        (OTHER, None),
        (None, b"junk"),
    )
    assert key_of(records[0]) == PATIENT
    lookup = last_state(records, PATIENT)
    assert lookup.found and lookup.state == full_state()
    assert lookup.where == "hub-share-state-changelog/0/2"
    assert to_json(lookup)["state"] == full_state().to_json()


def test_the_state_is_shown_with_identifiers_and_codes_only() -> None:
    lookup = last_state(changelog((PATIENT, full_state().to_json())), PATIENT)
    text = "\n".join(render_state(lookup, now=T0))
    for expected in (
        f"share state of patient {PATIENT}",
        f"from gp-test (as of 2026-10-01T09:00:00Z): {RPPS_SYSTEM}|10009900019",
        "CareTeam|id|gp-test|ct1  status active  period 2026-10-01T09:00:00Z → …",
        f"member {RPPS_SYSTEM}|10000000001  on behalf of {FINESS_SYSTEM}|970100228"
        "  period 2026-10-01T09:00:00Z → 2027-01-01T00:00:00Z",
        f"encounter {FINESS_SYSTEM}|970100228  open",
        f"encounter {FINESS_SYSTEM}|750000001  ended at 2026-10-01T09:00:00Z",
        "episode   diab-971  open",
        "Consent|id|gp-test|c1  status active  IN FORCE  scope patient-privacy",
        f"permit  actors {FINESS_SYSTEM}|970100228  labels hiv  period 2026-10-01T09:00:00Z → …",
        f"exception deny  actors {FINESS_SYSTEM}|750000001  labels -  period unbounded",
        "Consent|id|gp-test|c0  status inactive  not in force  scope treatment",
    ):
        assert expected in text, expected
    # Networks are not listed among organisations, and the other way round.
    organisations = text.split("organisations involved:")[1].split("network enrolments:")[0]
    assert "diab-971" not in organisations
    # Whether a consent applies depends on its period and the moment asked.
    before = "\n".join(render_state(lookup, now=datetime(2026, 1, 1, tzinfo=UTC)))
    assert "Consent|id|gp-test|c1  status active  not yet in force" in before
    ended = PatientShareState(
        PATIENT,
        consents=(
            ConsentRecord(
                "Consent|id|gp-test|c2", "gp-test", E1, "active", "treatment", T0,
                Provision("permit", period=Period(T0, datetime(2026, 11, 1, tzinfo=UTC))),
            ),
        ),
    )  # fmt: skip
    after = render_state(last_state(changelog((PATIENT, ended.to_json())), PATIENT), now=AT)
    assert "Consent|id|gp-test|c2  status active  expired  scope treatment" in "\n".join(after)


def test_a_consent_is_named_by_its_source_and_the_id_the_source_gave_it() -> None:
    """A DPO finds the Consent at its source: ``from <source> as Consent/<id>``; a consent stored before
    the hub kept that id says so instead."""
    named = ConsentRecord(
        "Consent|id|gp-test|5f0c", "gp-test", E1, "active", "patient-privacy", T0, Provision("deny"),
        source_reference="Consent/objection-7",
    )  # fmt: skip
    unnamed = ConsentRecord(
        "Consent|event|e9", "gp-test", E2, "active", "patient-privacy", T0, Provision("deny")
    )
    state = PatientShareState(PATIENT, consents=(named, unnamed))
    text = "\n".join(render_state(last_state(changelog((PATIENT, state.to_json())), PATIENT), now=AT))
    assert f"from gp-test as Consent/objection-7  event {E1}" in text
    assert "Consent|id|gp-test|5f0c  status active" in text  # the hub's key is still shown
    assert f"from gp-test (its own id not on record)  event {E2}" in text


def test_an_empty_state_says_none_in_each_section() -> None:
    lines = render_state(last_state(changelog((PATIENT, PatientShareState(PATIENT).to_json())), PATIENT))
    assert lines[1:] == [
        "declared GPs:", "  none", "care teams:", "  none", "organisations involved:", "  none",
        "network enrolments:", "  none", "consents:", "  none", "events waiting for a basis:", "  none",
    ]  # fmt: skip


def decided_changelog(*records: tuple[str, Any] | list[tuple[str, Any]]) -> list[Record]:
    """share-decided's changelog: a record per key, or (a list) one record carrying a batch of entries."""
    topic = Topic("hub-share-decided-changelog")
    for item in records:
        if isinstance(item, list):
            [packed] = pack_entries(
                (json.dumps(key).encode(), None if value is None else json.dumps(value).encode())
                for key, value in item
            )
            headers = ((TABLE_BATCH_HEADER, TABLE_BATCH_FORMAT.encode()),)
            topic.add(packed, key=json.dumps(f"{BATCH_KEY_PREFIX}1"), headers=headers)
        else:
            key, value = item
            topic.add(value, key=json.dumps(key))
    return topic.records


def waiting_lookup(states: list[Record], decided: list[Record]) -> Any:
    """As ``hub consent show`` reads: the records holding the index, then its entries."""
    index = waiting_key(PATIENT)
    return last_state(states, PATIENT, list(entries_of([r for r in decided if holds_key(r, index)], index)))


def test_the_events_waiting_for_a_basis_are_counted_from_the_waiting_index_in_share_decided() -> None:
    """The share stage keeps the ids of the patient's waiting events under ``<patient>#waiting`` in
    share-decided, often inside a batch record: its last value counts, a deletion is none."""
    states = changelog((PATIENT, PatientShareState(PATIENT).to_json()))
    index = waiting_key(PATIENT)
    batched = decided_changelog(
        (index, [E1]),
        [(f"{PATIENT}#d:{E1}", {"waiting": ["gp"]}), (index, [E1, E2]), (f"{OTHER}#waiting", [E1])],
    )
    lookup = waiting_lookup(states, batched)
    assert lookup.found and lookup.waiting == 2 and to_json(lookup)["waiting_events"] == 2
    lines = render_state(lookup)
    assert lines[-2:] == ["events waiting for a basis:", "  2, decided again at each change of this state"]
    assert waiting_lookup(states, [*batched, *decided_changelog([(index, None)])]).waiting == 0
    unreadable = decided_changelog([(index, [E1])])[0]
    future = dataclasses.replace(unreadable, headers=((TABLE_BATCH_HEADER, b"9"),))
    assert waiting_lookup(states, [*batched, future]).waiting == 2, "a newer format is skipped"


def test_a_patient_whose_events_wait_without_a_state_record_is_shown_with_an_empty_state() -> None:
    """The state is written only when an event changes it: events that only wait leave the index."""
    lookup = waiting_lookup(changelog(), decided_changelog([(waiting_key(PATIENT), [E1])]))
    assert lookup.found and lookup.state == PatientShareState.empty(PATIENT) and lookup.waiting == 1
    assert lookup.where == "hub-share-decided-changelog/0/0"
    absent = waiting_lookup(changelog(), decided_changelog([(waiting_key(PATIENT), None)]))
    assert absent.status == "absent"


def test_the_waiting_ids_in_a_state_record_of_sessions_12_and_13_are_counted_while_there() -> None:
    record = {**PatientShareState(PATIENT).to_json(), WAITING_FIELD: [E1, E2]}
    lookup = waiting_lookup(changelog((PATIENT, record)), decided_changelog((waiting_key(PATIENT), [E1])))
    assert lookup.found and lookup.waiting == 2, "the record's field, not an index written before it"


def test_no_state_a_tombstone_and_a_corrupt_value_are_not_found() -> None:
    absent = last_state(changelog((OTHER, PatientShareState(OTHER).to_json())), PATIENT)
    assert (absent.status, absent.found) == ("absent", False)
    assert "no share state" in render_state(absent)[0]
    deleted = last_state(changelog((PATIENT, full_state().to_json()), (PATIENT, None)), PATIENT)
    assert (deleted.status, deleted.found) == ("deleted", False)
    assert "deleted" in render_state(deleted)[0]
    for value in (b"{not json", {"v": 1, "patient_id": PATIENT, "care_teams": "oops"}, {"v": 99}):
        corrupt = last_state(changelog((PATIENT, full_state().to_json()), (PATIENT, value)), PATIENT)
        assert (corrupt.status, corrupt.found) == ("corrupt", False)
        assert "CORRUPT" in render_state(corrupt)[0]
        assert to_json(corrupt)["state"] is None
    marked = last_state(changelog((PATIENT, PatientShareState.corrupted(PATIENT, "bad").to_json())), PATIENT)
    assert marked.status == "corrupt" and marked.reason == "bad"
    misfiled = last_state(changelog((PATIENT, PatientShareState(OTHER).to_json())), PATIENT)
    assert misfiled.status == "corrupt" and "another patient" in misfiled.reason


def test_the_changelog_name_is_fausts() -> None:
    from hub.streams.tables import TABLES  # noqa: PLC0415 - imports faust

    assert SHARE_STATE_TABLE in TABLES
    assert TopicNames.changelog("hub-x", SHARE_STATE_TABLE) == "hub-x-share-state-changelog"
