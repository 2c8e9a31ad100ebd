"""Same inputs, same outcome: what each recipient finally holds does not depend on arrival order.

The share stage keeps its decisions (hub.consent.decisions): an event denied only for want of a basis
waits, and is released when the recipient enters the care team or gains a consent; an event read
again gets its first decisions back. These tests run every order of small feeds through the pure
stage (no Kafka) and compare what each recipient holds.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.consent import load_policy, share_decisions
from hub.consent.decisions import WAITING_FIELD, decided_key, waiting_key
from hub.consent.policy import DEFAULT_BACKFILL_DAYS, parse_policy
from hub.consent.recipients import parse_recipients
from hub.consent.share import ShareStage
from hub.consent.state import PatientShareState
from hub.identity.stage import linked_event
from hub.streams.batch_writes import BatchWrites

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
RPPS = "urn:oid:1.2.250.1.71.4.2.1"
POLICY_FILE = Path(__file__).resolve().parents[2] / "config" / "policy.json"
POLICY = load_policy(POLICY_FILE)
GP_ORG = {"system": "urn:test:org", "value": "cabinet-x"}
HOSPITAL_ORG = {"system": "urn:test:org", "value": "chu-y"}
LAB_ORG = {"system": "urn:test:org", "value": "lab-z"}
RECIPIENTS = parse_recipients(
    {
        "recipients": [
            {
                "id": "gp-x",
                "kind": "gp",
                "organization": GP_ORG,
                "practitioners": [{"system": RPPS, "value": "10009900019"}],
                "kafka_principal": "User:gp-x",
                "subscription": {"kinds": ["*"]},
            },
            {
                "id": "chu-y",
                "kind": "hospital",
                "organization": HOSPITAL_ORG,
                "kafka_principal": "User:chu-y",
                "subscription": {"kinds": ["*"]},
            },
            {
                "id": "lab-z",
                "kind": "lab",
                "organization": LAB_ORG,
                "kafka_principal": "User:lab-z",
                "subscription": {"kinds": ["observation"]},
            },
        ]
    },
    origin="test",
)


def stage(
    states: MutableMapping[str, Any] | None = None, decided: MutableMapping[str, Any] | None = None
) -> ShareStage:
    return ShareStage(
        RECIPIENTS,
        POLICY,
        {} if states is None else states,
        topic_prefix="t.",
        audit_topic="t.audit",
        merge_topic="t.merge",
        decided=decided,
    )


def event(
    n: int, resource: dict[str, Any], kind: str, *, organization: dict[str, str], patient_id: str = "pt-x"
) -> dict[str, Any]:
    return {
        "event_id": f"00000000-0000-5000-8000-{n:012d}",
        "patient_id": patient_id,
        "kind": kind,
        "occurred_at": f"2026-12-0{n % 5 + 1}T10:00:00.000Z",
        "recorded_at": "2026-12-06T10:00:00.000Z",
        "source": {"id": f"src-{organization['value']}", "organization": organization},
        "sensitivity": [],
        "resource": resource,
        "provenance": {"ingest": {"topic": "hub.ingest.v1", "partition": 0, "offset": n}, "steps": []},
    }


def patient(patient_id: str = "pt-x") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:hub:network-patient-id", "value": patient_id}],
        "generalPractitioner": [{"identifier": {"system": RPPS, "value": "10009900019"}}],
    }


def condition(code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/pt-x"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]},
    }


def observation(value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/pt-x"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
        "effectiveDateTime": "2026-12-01T08:00:00Z",
    }


def admission() -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "stay-1",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/pt-x"},
        "serviceProvider": {"identifier": HOSPITAL_ORG},
        "period": {"start": "2026-12-03T10:00:00Z"},
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
    "patient": {"reference": "Patient/pt-x"},
    "dateTime": "2026-12-01T10:00:00Z",
    "provision": {"type": "deny"},
}

#: Three sources, each in its own order: the GP's software, the hospital's and the lab's.
GP_FEED = [
    event(1, condition("I10"), "condition", organization=GP_ORG),
    event(2, patient(), "patient", organization=GP_ORG),
    event(3, condition("E11"), "condition", organization=GP_ORG),
]
HOSPITAL_FEED = [
    event(4, condition("J44"), "condition", organization=HOSPITAL_ORG),
    event(5, admission(), "encounter.admission", organization=HOSPITAL_ORG),
]
LAB_FEED = [event(6, observation(9.1), "observation", organization=LAB_ORG)]


def interleavings(*feeds: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Every merge of the feeds that keeps each feed's own order."""
    slots = [i for i, feed in enumerate(feeds) for _ in feed]
    orders = []
    for arrangement in sorted(set(itertools.permutations(slots))):
        cursors = [iter(feed) for feed in feeds]
        orders.append([next(cursors[i]) for i in arrangement])
    return orders


def holdings(shares: list[Any]) -> dict[str, set[str]]:
    """Each recipient topic's event ids."""
    held: dict[str, set[str]] = {}
    for share in shares:
        if share.topic != "t.audit":
            held.setdefault(share.topic, set()).add(share.value["event_id"])
    return held


def run(order: list[dict[str, Any]], sharing: ShareStage | None = None) -> list[Any]:
    sharing = sharing or stage()
    return [share for item in order for share in sharing.handle(item, now=NOW)]


def test_every_interleaving_of_three_sources_gives_each_recipient_the_same_events() -> None:
    """60 orders of six events from three sources; the GP and the hospital learn their basis at
    different points of each. What each holds at the end is the same in every order."""
    orders = interleavings(GP_FEED, HOSPITAL_FEED, LAB_FEED)
    assert len(orders) == 60
    outcomes = {tuple(sorted((t, tuple(sorted(ids))) for t, ids in holdings(run(o)).items())) for o in orders}
    assert len(outcomes) == 1, outcomes
    [outcome] = outcomes
    held = dict(outcome)
    assert set(held["t.hub.pathway.gp-x.v1"]) == {e["event_id"] for e in GP_FEED + HOSPITAL_FEED + LAB_FEED}
    # The hospital's stay makes it a treating organisation: it receives the whole (recent) pathway.
    assert set(held["t.hub.pathway.chu-y.v1"]) == {e["event_id"] for e in GP_FEED + HOSPITAL_FEED + LAB_FEED}
    # The lab has no basis for anything but its own result: it receives only that.
    assert set(held["t.hub.pathway.lab-z.v1"]) == {LAB_FEED[0]["event_id"]}


def test_a_late_release_is_audited_with_its_basis_and_the_event_that_released_it() -> None:
    """The hospital's diagnosis came before the GP was declared: denied (waiting), then released by
    the Patient."""
    shares = run([HOSPITAL_FEED[0], GP_FEED[1]])
    decisions = [d for s in shares if s.topic == "t.audit" for d in share_decisions(s.value)]
    first = [
        d for d in decisions if d["event_id"] == HOSPITAL_FEED[0]["event_id"] and d["recipient"] == "gp-x"
    ]
    assert [(d["verdict"], d["rule"], d.get("released_by")) for d in first] == [
        ("deny", "deny_by_default", None),
        ("permit", "care_team", GP_FEED[1]["event_id"]),
    ]


def test_an_objection_stops_what_waits_and_is_the_one_order_bound_exception() -> None:
    """Events decided after an objection is processed never go out, even when a basis arrives later."""
    # The hospital's diagnosis waits for the GP's basis; the objection comes first: nothing is released.
    objection = event(7, OBJECTION, "consent", organization=GP_ORG)
    before = run([HOSPITAL_FEED[0], objection, GP_FEED[1]])
    assert "t.hub.pathway.gp-x.v1" not in holdings(before)
    # Released before the objection was processed, the diagnosis stays sent (it cannot be recalled).
    after = run([GP_FEED[1], HOSPITAL_FEED[0], objection])
    assert holdings(after)["t.hub.pathway.gp-x.v1"] == {GP_FEED[1]["event_id"], HOSPITAL_FEED[0]["event_id"]}


def test_a_stay_that_ended_long_ago_is_the_other_order_bound_exception() -> None:
    """A stay known as open is a basis; its discharge, ended more than the recency window before the
    decision, withdraws it. The GP's diagnosis decided between the two was sent (it cannot be
    recalled); decided after the discharge, it is not. docs/CONSENT.md states it."""
    discharge = event(
        9,
        {
            **admission(),
            "status": "finished",
            "period": {"start": "2025-01-03T10:00:00Z", "end": "2025-01-05T10:00:00Z"},
        },
        "encounter.discharge",
        organization=HOSPITAL_ORG,
    )
    admitted = event(
        10,
        {**admission(), "period": {"start": "2025-01-03T10:00:00Z"}},
        "encounter.admission",
        organization=HOSPITAL_ORG,
    )
    between = run([admitted, GP_FEED[0], discharge])
    after = run([admitted, discharge, GP_FEED[0]])
    assert GP_FEED[0]["event_id"] in holdings(between)["t.hub.pathway.chu-y.v1"]
    assert GP_FEED[0]["event_id"] not in holdings(after)["t.hub.pathway.chu-y.v1"]


def test_a_redelivered_event_gets_the_decisions_it_first_had() -> None:
    """A worker died after deciding the diagnosis but before committing it; the Patient declaring the
    GP was processed meanwhile. Read again, the diagnosis is not decided anew: same audit, no flip."""
    sharing = stage()
    first = sharing.handle(HOSPITAL_FEED[0], now=NOW)
    sharing.handle(GP_FEED[1], now=NOW)
    again = sharing.handle(HOSPITAL_FEED[0], now=NOW + timedelta(minutes=1))
    [audit_first] = [s.value for s in first if s.topic == "t.audit"]
    [audit_again] = [s.value for s in again if s.topic == "t.audit"]
    assert audit_again == audit_first, "same id, same recorded time, same verdicts"
    # The hospital receives its own diagnosis again (at least once; same event id); the GP's copy came
    # from the late release, which this event's redelivery does not repeat.
    assert holdings(again) == holdings(first) == {"t.hub.pathway.chu-y.v1": {HOSPITAL_FEED[0]["event_id"]}}


def test_a_redelivered_releasing_event_sends_its_late_releases_again() -> None:
    """The Patient released the diagnosis, then its worker died before the records left: read again,
    the Patient's own decisions and the release it made are sent again, identical."""
    sharing = stage()
    sharing.handle(HOSPITAL_FEED[0], now=NOW)
    first = sharing.handle(GP_FEED[1], now=NOW)
    again = sharing.handle(GP_FEED[1], now=NOW + timedelta(minutes=1))
    assert [(s.topic, s.value) for s in again] == [(s.topic, s.value) for s in first]
    assert holdings(again)["t.hub.pathway.gp-x.v1"] == {HOSPITAL_FEED[0]["event_id"], GP_FEED[1]["event_id"]}


def test_the_events_one_event_releases_are_audited_in_one_record_before_any_is_sent() -> None:
    """The hospital's diagnosis and stay both wait for the GP's basis; the Patient declaring the GP
    releases both: one share-releases AuditEvent for the two (not one each), ahead of their copies,
    and the same record again when the Patient is read again."""
    sharing = stage()
    diagnosis, stay = HOSPITAL_FEED
    run([diagnosis, stay], sharing)
    first = sharing.handle(GP_FEED[1], now=NOW)
    released = [
        s for s in first if s.topic == "t.audit" and s.value["subtype"][0]["code"] == "share-releases"
    ]
    assert len(released) == 1
    decisions = share_decisions(released[0].value)
    assert [(d["event_id"], d["recipient"], d["released_by"]) for d in decisions] == [
        (diagnosis["event_id"], "gp-x", GP_FEED[1]["event_id"]),
        (stay["event_id"], "gp-x", GP_FEED[1]["event_id"]),
    ]
    copies = [n for n, s in enumerate(first) if s.topic == "t.hub.pathway.gp-x.v1"]
    assert first.index(released[0]) < min(
        n for n in copies if first[n].value["event_id"] in {diagnosis["event_id"], stay["event_id"]}
    )
    again = sharing.handle(GP_FEED[1], now=NOW + timedelta(minutes=1))
    assert [(s.topic, s.value) for s in again] == [(s.topic, s.value) for s in first]


def test_events_decided_longer_ago_than_the_look_back_are_not_released() -> None:
    sharing = stage()
    sharing.handle(HOSPITAL_FEED[0], now=NOW - POLICY.backfill - timedelta(hours=1))
    released = sharing.handle(GP_FEED[1], now=NOW)
    assert holdings(released)["t.hub.pathway.gp-x.v1"] == {GP_FEED[1]["event_id"]}


def test_the_look_back_is_read_from_the_policy_file() -> None:
    """config/policy.json says 30 days; another value in the file is taken, and the default is 30."""
    document = json.loads(POLICY_FILE.read_text())
    assert POLICY.backfill == timedelta(days=document["backfill_days"]) == timedelta(days=30)
    assert parse_policy({**document, "backfill_days": 7}, origin="test").backfill == timedelta(days=7)
    without = {k: v for k, v in document.items() if k != "backfill_days"}
    assert parse_policy(without, origin="test").backfill == timedelta(days=DEFAULT_BACKFILL_DAYS)


def test_what_the_recipient_did_not_ask_for_never_waits() -> None:
    """The lab subscribes to observations only: a diagnosis denied to it as not requested is final;
    only the GP (no basis yet) waits for the hospital's diagnosis."""
    sharing = stage()
    sharing.handle(HOSPITAL_FEED[0], now=NOW)
    stored = sharing.decided.get(f"pt-x#d:{HOSPITAL_FEED[0]['event_id']}")
    assert stored is not None and stored["waiting"] == ["gp-x"], "the hospital produced it: sent back"


def test_the_waiting_index_lives_in_share_decided_and_the_state_is_written_only_when_it_changes() -> None:
    """The ids of the events waiting for a basis are kept in share-decided (``<patient>#waiting``),
    whose changelog takes a batch's entries in one record: a batch where the hospital's events wait
    writes the patient's share-state record only for the stay that changes the state, and none when
    only the index changes."""
    states = BatchWrites({}, name="share-state")
    decided = BatchWrites({}, name="share-decided")
    sharing = stage(states, decided)
    diagnosis, stay = HOSPITAL_FEED
    run([diagnosis, stay, GP_FEED[0]], sharing)
    assert set(states._pending[""]) == {"pt-x"}
    assert set(decided._pending[""]) == {
        waiting_key("pt-x"),
        *(decided_key("pt-x", e["event_id"]) for e in (diagnosis, stay, GP_FEED[0])),
    }
    # The GP has no basis yet for the hospital's events; the stay is in the state, not the index.
    assert decided[waiting_key("pt-x")] == [diagnosis["event_id"], stay["event_id"]] == still_waiting(sharing)
    assert WAITING_FIELD not in states["pt-x"]
    assert PatientShareState.from_json(states["pt-x"]).involvements
    # An event that only waits writes the index, not the state.
    state_write, index_write = states._pending[""]["pt-x"], decided._pending[""][waiting_key("pt-x")]
    run([{**diagnosis, "event_id": "0" * 31 + "9"}], sharing)
    assert states._pending[""]["pt-x"] is state_write, "the state did not change: not written again"
    assert decided._pending[""][waiting_key("pt-x")] != index_write
    # The Patient declaring the GP releases them: the index goes, the state keeps the stay.
    released = run([GP_FEED[1]], sharing)
    assert holdings(released)["t.hub.pathway.gp-x.v1"] >= {diagnosis["event_id"], stay["event_id"]}
    assert decided.get(waiting_key("pt-x")) is None
    assert still_waiting(sharing) == []
    assert PatientShareState.from_json(states["pt-x"]).involvements


def still_waiting(sharing: ShareStage) -> list[str]:
    """The events whose decision record says some recipient still waits, in event order."""
    records = {key: sharing.decided[key] for key in sharing.decided if "#d:" in key}
    return sorted(key.split("#d:")[1] for key, record in records.items() if record.get("waiting"))


def test_a_waiting_index_in_the_patients_record_is_read_then_moved_to_share_decided() -> None:
    """Tables written by sessions 12 and 13 hold the index in the patient's share-state record: its
    events are still released, and the field leaves the record the next time either is written."""
    states: dict[str, Any] = {}
    decided: dict[str, Any] = {}
    sharing = stage(states, decided)
    sharing.handle(HOSPITAL_FEED[0], now=NOW)
    # As sessions 12 and 13 stored it: the index a field of the patient's record.
    states["pt-x"] = {
        **PatientShareState.empty("pt-x").to_json(),
        WAITING_FIELD: decided.pop(waiting_key("pt-x")),
    }
    assert still_waiting(sharing) == [HOSPITAL_FEED[0]["event_id"]]
    released = sharing.handle(GP_FEED[1], now=NOW)
    assert HOSPITAL_FEED[0]["event_id"] in holdings(released)["t.hub.pathway.gp-x.v1"]
    assert WAITING_FIELD not in states["pt-x"]
    assert HOSPITAL_FEED[0]["event_id"] not in (decided.get(waiting_key("pt-x")) or [])


def test_an_index_in_the_patients_record_moves_to_share_decided_when_an_event_waits() -> None:
    states: dict[str, Any] = {}
    decided: dict[str, Any] = {}
    sharing = stage(states, decided)
    diagnosis = HOSPITAL_FEED[0]
    sharing.handle(diagnosis, now=NOW)
    states["pt-x"] = {
        **PatientShareState.empty("pt-x").to_json(),
        WAITING_FIELD: decided.pop(waiting_key("pt-x")),
    }
    sharing.handle({**diagnosis, "event_id": "0" * 31 + "9"}, now=NOW)
    assert WAITING_FIELD not in states["pt-x"]
    assert decided[waiting_key("pt-x")] == [diagnosis["event_id"], "0" * 31 + "9"]


def local_linked_to_ins() -> dict[str, Any]:
    """Identity's ``patient.linked``: the hospital's local id pt-local is the INS id pt-x."""
    return linked_event(
        {
            "local_id": "pt-local",
            "ins_id": "pt-x",
            "source": "src-chu-y",
            "organization": HOSPITAL_ORG,
            "ingest": {"topic": "hub.ingest.v1", "partition": 0, "offset": 9},
            "recorded_at": "2026-12-06T10:00:00.000Z",
        }
    ).to_dict()


@pytest.mark.parametrize("link_first", [True, False])
def test_events_waiting_under_a_linked_local_id_are_released_on_the_merged_state(link_first: bool) -> None:
    """A diagnosis sent under a local id (no GP known there) waits; the link to the INS id, whose
    Patient declares the GP, brings it over and the GP receives it, whichever came first."""
    states: dict[str, Any] = {}
    sharing = stage(states)
    local = event(8, condition("I10"), "condition", organization=HOSPITAL_ORG, patient_id="pt-local")
    declared = event(2, patient(), "patient", organization=GP_ORG)
    linked = local_linked_to_ins()
    shares = []
    for item in [declared, local] if link_first else [local, declared]:
        shares += sharing.handle(item, now=NOW)
    [request] = [s for s in sharing.handle(linked, now=NOW) if s.topic == "t.merge"]
    [answer] = sharing.handle_merge(request.value)
    shares += sharing.handle_merge(answer.value)
    assert local["event_id"] in holdings(shares)["t.hub.pathway.gp-x.v1"]


@pytest.mark.parametrize("answered_first", [True, False])
def test_a_local_id_event_decided_after_the_merge_request_is_decided_under_the_ins_id(
    answered_first: bool,
) -> None:
    """The local id's partition of the pathway ran behind the merge topic's (after a rebalance): the
    request was answered before the local id's diagnosis was decided. Decided under the local id, it
    would wait for a state nothing changes any more; it goes on to the INS id and the GP receives it,
    as when it came first (tests/integration/test_convergence.py's killed run lost a hospital's events so)."""
    sharing = stage({})
    local = event(8, condition("I10"), "condition", organization=HOSPITAL_ORG, patient_id="pt-local")
    declared = event(2, patient(), "patient", organization=GP_ORG)
    linked = local_linked_to_ins()
    shares = sharing.handle(declared, now=NOW)
    [request] = [s for s in sharing.handle(linked, now=NOW) if s.topic == "t.merge"]
    [answer] = sharing.handle_merge(request.value)
    if answered_first:
        shares += sharing.handle_merge(answer.value)
    [forward] = sharing.handle(local, now=NOW)
    assert forward.topic == "t.merge" and forward.key == "pt-x", "on to the identity it was merged into"
    shares += sharing.handle_merge(forward.value)
    if not answered_first:
        shares += sharing.handle_merge(answer.value)
    assert local["event_id"] in holdings(shares)["t.hub.pathway.gp-x.v1"]
    copies = [
        s.value
        for s in shares
        if s.topic == "t.hub.pathway.gp-x.v1" and s.value["event_id"] == local["event_id"]
    ]
    assert {c["patient_id"] for c in copies} == {"pt-x"}
