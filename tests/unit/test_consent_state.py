"""Care-team and consent state (hub/consent/state.py): applying real-shaped FHIR resources, refusing
uninterpretable Consents, and the JSON round trip through the faust changelog."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub.consent.recipients import FINESS_SYSTEM, NETWORK_SYSTEM, RPPS_SYSTEM, Identifier
from hub.consent.sensitivity import HIV, PSYCHIATRY
from hub.consent.state import (
    CONSENT_UNINTERPRETABLE,
    MAX_CLOSED_INVOLVEMENTS,
    ConsentRejected,
    PatientShareState,
    Period,
    StateUpdate,
    apply,
)
from hub.normalise.references import SOURCE_REFERENCE_URL
from hub.pathway.network_id import NETWORK_ID_SYSTEM

PATIENT = "pt-" + "a" * 24
OTHER_PATIENT = "pt-" + "b" * 24
T0 = datetime(2026, 10, 1, 9, tzinfo=UTC)
GP_RPPS = {"system": RPPS_SYSTEM, "value": "10009900019"}
NURSE_RPPS = {"system": RPPS_SYSTEM, "value": "10009900068"}
HOSPITAL = {"system": FINESS_SYSTEM, "value": "690999990"}
GP_PRACTICE = {"system": "urn:hub:demo:organization", "value": "demo-org-cabinet-lamentin"}
SUBJECT = {"reference": f"Patient/{PATIENT}", "identifier": {"system": NETWORK_ID_SYSTEM, "value": PATIENT}}
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def ref(resource_type: str, identifier: dict[str, str]) -> dict[str, Any]:
    return {"type": resource_type, "identifier": identifier}


def consent(**overrides: Any) -> dict[str, Any]:
    """An active patient-privacy Consent, normalised as the pathway carries it (patient by network id)."""
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "identifier": [{"system": "urn:hub:test:consent", "value": "C-1"}],
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": SUBJECT,
        "dateTime": "2026-10-01T09:00:00Z",
        "provision": {"type": "permit", "actor": [{"reference": ref("Organization", HOSPITAL)}]},
    }
    resource.update(overrides)
    return resource


def applied(
    state: PatientShareState, resource: dict[str, Any], *, at: datetime = T0, source: str = "demo-gp"
) -> StateUpdate:
    update = apply(state, resource, event_id=f"ev-{at.isoformat()}", occurred_at=at, source_id=source)
    assert isinstance(update, StateUpdate), update
    return update


def test_patient_general_practitioner_by_rpps_is_declared() -> None:
    """A Patient naming its GP by RPPS identifier declares that GP; a bare in-Bundle reference cannot."""
    patient = {
        "resourceType": "Patient",
        "generalPractitioner": [ref("Practitioner", GP_RPPS), {"reference": "urn:uuid:5a1c"}],
    }
    update = applied(PatientShareState.empty(PATIENT), patient, source="demo-hospital-chu")
    assert update.changed
    (declaration,) = update.state.general_practitioners
    assert declaration.parties == (Identifier(RPPS_SYSTEM, "10009900019"),)
    assert declaration.source_id == "demo-hospital-chu"
    assert any("generalPractitioner[1] has no identifier" in step for step in update.steps)


def test_declared_gps_are_kept_per_source() -> None:
    """A Patient without GP erases only its own source's declaration, and an older one cannot restore it."""
    declared = applied(
        PatientShareState.empty(PATIENT),
        {"resourceType": "Patient", "generalPractitioner": [ref("Practitioner", GP_RPPS)]},
        source="demo-hospital-chu",
    ).state
    lab = applied(declared, {"resourceType": "Patient"}, source="demo-lab-bio", at=T0 + timedelta(days=1))
    assert not lab.changed
    assert lab.state.general_practitioners == declared.general_practitioners
    withdrawn = applied(
        declared, {"resourceType": "Patient"}, source="demo-hospital-chu", at=T0 + timedelta(days=2)
    )
    assert withdrawn.changed
    assert [gp.parties for gp in withdrawn.state.general_practitioners] == [()]
    stale = applied(
        withdrawn.state,
        {"resourceType": "Patient", "generalPractitioner": [ref("Practitioner", GP_RPPS)]},
        source="demo-hospital-chu",
        at=T0,
    )
    assert not stale.changed


def test_care_team_participants_with_periods() -> None:
    """CareTeam members are kept by identifier, with onBehalfOf and their own periods."""
    team = {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": SUBJECT,
        "period": {"start": "2026-09-01T08:00:00Z"},
        "participant": [
            {"member": ref("Practitioner", GP_RPPS), "onBehalfOf": ref("Organization", GP_PRACTICE)},
            {
                "member": ref("Practitioner", NURSE_RPPS),
                "period": {"start": "2026-09-01", "end": "2026-09-30"},
            },
            {"member": {"reference": "Practitioner/123"}},
        ],
    }
    update = applied(PatientShareState.empty(PATIENT), team)
    (record,) = update.state.care_teams
    assert record.status == "active"
    assert record.period == Period(datetime(2026, 9, 1, 8, tzinfo=UTC), None)
    gp, nurse = record.members
    assert (gp.member, gp.on_behalf_of) == (Identifier(**GP_RPPS), Identifier(**GP_PRACTICE))
    # A date-only end covers its whole day: the member counts until midnight after it.
    assert nurse.period == Period(datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC))
    assert any("participant[2]" in step for step in update.steps)


@pytest.mark.parametrize(
    ("status", "period", "open_", "ended_at"),
    [
        ("in-progress", {"start": "2026-09-20T10:00:00Z"}, True, None),
        (
            "finished",
            {"start": "2026-09-20T10:00:00Z", "end": "2026-09-25T15:00:00Z"},
            False,
            datetime(2026, 9, 25, 15, tzinfo=UTC),
        ),
        ("finished", {"start": "2026-09-20T10:00:00Z"}, False, T0),
        ("cancelled", {"start": "2026-09-20T10:00:00Z"}, False, None),
        ("planned", {"start": "2026-12-20T10:00:00Z"}, False, None),
    ],
    ids=["open stay", "finished at period.end", "finished without end: event time", "cancelled", "planned"],
)
def test_encounter_service_provider_treats_the_patient(
    status: str, period: dict[str, str], open_: bool, ended_at: datetime | None
) -> None:
    """An Encounter's serviceProvider (FINESS) is recorded open, ended at its end, or as never counting."""
    encounter = {
        "resourceType": "Encounter",
        "identifier": [{"system": "urn:hub:demo:demo-hospital-chu:encounter", "value": "SEJ-000001"}],
        "status": status,
        "class": {"system": ACT_CODE, "code": "IMP"},
        "subject": SUBJECT,
        "period": period,
        "serviceProvider": ref("Organization", HOSPITAL),
    }
    (involvement,) = applied(PatientShareState.empty(PATIENT), encounter).state.involvements
    assert involvement.organization == Identifier(**HOSPITAL)
    assert (involvement.kind, involvement.open, involvement.ended_at) == ("encounter", open_, ended_at)


def test_encounter_without_service_provider_identifier_changes_nothing() -> None:
    """An Encounter whose serviceProvider is not an identifier names no organisation: no change."""
    encounter = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "serviceProvider": {"reference": "Organization/1"},
    }
    update = applied(PatientShareState.empty(PATIENT), encounter)
    assert not update.changed
    assert update.state.involvements == ()


def test_a_late_older_version_does_not_reopen_a_stay() -> None:
    """A replayed admission older than the discharge already applied is ignored (the stay stays ended)."""
    identifier = [{"system": "urn:test:stay", "value": "SEJ-1"}]
    base = {
        "resourceType": "Encounter",
        "identifier": identifier,
        "serviceProvider": ref("Organization", HOSPITAL),
    }
    discharged = applied(
        PatientShareState.empty(PATIENT),
        {**base, "status": "finished", "period": {"start": "2026-09-20", "end": "2026-09-25"}},
        at=datetime(2026, 9, 25, tzinfo=UTC),
    ).state
    replay = applied(discharged, {**base, "status": "in-progress"}, at=datetime(2026, 9, 20, tzinfo=UTC))
    assert not replay.changed
    assert not replay.state.involvements[0].open


def test_a_patient_keeps_every_open_stay_and_only_the_latest_ended_ones() -> None:
    """Years of encounters do not grow the state without bound: past MAX_CLOSED_INVOLVEMENTS ended
    stays the oldest are forgotten; an open stay, however old, is kept (docs/STATE.md)."""
    first_day = T0 - timedelta(days=2000)

    def stay(number: int, status: str) -> dict[str, Any]:
        # Stay n ends n days after the first: the later the number, the more recent the stay.
        end = {"end": (first_day + timedelta(days=number)).date().isoformat()} if status == "finished" else {}
        return {
            "resourceType": "Encounter",
            "identifier": [{"system": "urn:test:stay", "value": f"SEJ-{number}"}],
            "status": status,
            "period": {"start": first_day.date().isoformat(), **end},
            "serviceProvider": ref("Organization", HOSPITAL),
        }

    state = applied(PatientShareState.empty(PATIENT), stay(0, "in-progress"), at=first_day).state
    # Sent newest first: what is forgotten is decided by when a stay ended, not by arrival order.
    for number in reversed(range(1, MAX_CLOSED_INVOLVEMENTS + 11)):
        state = applied(state, stay(number, "finished"), at=first_day + timedelta(days=number)).state
    assert len(state.involvements) == MAX_CLOSED_INVOLVEMENTS + 1
    kept = {item.key.rsplit("|", 1)[-1] for item in state.involvements}
    # The open one and the latest ended ones; the ten stays that ended first are forgotten.
    assert (
        "SEJ-0" in kept and "SEJ-10" not in kept and {"SEJ-11", f"SEJ-{MAX_CLOSED_INVOLVEMENTS + 10}"} <= kept
    )
    assert PatientShareState.from_json(state.to_json()) == state


def test_episode_of_care_managed_by_a_network_is_an_enrolment() -> None:
    """An EpisodeOfCare managed by identifier urn:hub:network|<id> records the network enrolment."""
    episode = {
        "resourceType": "EpisodeOfCare",
        "id": "ep-1",
        "status": "active",
        "patient": SUBJECT,
        "managingOrganization": {"identifier": {"system": NETWORK_SYSTEM, "value": "onco-guadeloupe"}},
        "period": {"start": "2026-09-01"},
    }
    (involvement,) = applied(PatientShareState.empty(PATIENT), episode).state.involvements
    assert involvement.organization == Identifier(NETWORK_SYSTEM, "onco-guadeloupe")
    assert (involvement.kind, involvement.open) == ("episode", True)
    assert involvement.key == "EpisodeOfCare|id|demo-gp|ep-1"


def test_consent_permit_with_actor_label_and_period() -> None:
    """A permit Consent keeps its actor, security-label categories, period and nested exceptions."""
    resource = consent(
        provision={
            "type": "permit",
            "period": {"start": "2026-10-01", "end": "2027-10-01"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": ref("Organization", HOSPITAL),
                }
            ],
            "securityLabel": [{"system": ACT_CODE, "code": "HIV"}],
            "provision": [{"type": "deny", "securityLabel": [{"system": ACT_CODE, "code": "PSY"}]}],
        }
    )
    update = applied(PatientShareState.empty(PATIENT), resource)
    (record,) = update.state.consents
    assert record.in_force
    assert record.key == "Consent|identifier|urn:hub:test:consent|C-1"
    assert record.provision is not None
    assert record.provision.type == "permit"
    assert record.provision.actors == (Identifier(**HOSPITAL),)
    assert record.provision.labels == {HIV}
    assert record.provision.period == Period(
        datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 10, 2, tzinfo=UTC)
    )
    (nested,) = record.provision.provisions
    assert (nested.type, nested.labels) == ("deny", {PSYCHIATRY})


def test_objection_without_actor_and_policy_rule_fallback() -> None:
    """A deny without actor objects to everyone; without provision.type, an OPTOUT policyRule decides."""
    resource = consent(
        identifier=[],
        policyRule={"coding": [{"system": ACT_CODE, "code": "OPTOUT"}]},
        provision={"period": {"start": "2026-10-01T09:00:00Z"}},
    )
    (record,) = applied(PatientShareState.empty(PATIENT), resource).state.consents
    assert record.provision is not None
    assert (record.provision.type, record.provision.actors) == ("deny", ())
    assert record.key.startswith("Consent|event|")


def test_revocation_stops_the_consent_and_a_stale_version_cannot_undo_it() -> None:
    """A later inactive version withdraws the consent; an older active version arriving after is ignored."""
    given = applied(PatientShareState.empty(PATIENT), consent()).state
    revoked = applied(given, consent(status="inactive", provision=None), at=T0 + timedelta(days=10)).state
    (record,) = revoked.consents
    assert (record.status, record.in_force) == ("inactive", False)
    stale = applied(revoked, consent(), at=T0)
    assert not stale.changed
    assert not stale.state.consents[0].in_force


def test_a_late_revocation_still_applies() -> None:
    """A revocation older than the active version already applied still withdraws the consent."""
    given = applied(PatientShareState.empty(PATIENT), consent(), at=T0 + timedelta(days=10)).state
    late = applied(given, consent(status="inactive"), at=T0)
    assert late.changed
    (record,) = late.state.consents
    assert (record.in_force, record.as_of) == (False, T0 + timedelta(days=10))
    assert not applied(late.state, consent(), at=T0 + timedelta(days=5)).changed


def test_research_consent_is_not_about_sharing() -> None:
    """A Consent whose scope is research does not govern sharing: the state is unchanged."""
    research = consent(
        scope={
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]
        }
    )
    update = applied(PatientShareState.empty(PATIENT), research)
    assert not update.changed
    assert update.state.consents == ()


def _bad_actor(actor: dict[str, Any]) -> dict[str, Any]:
    return consent(provision={"type": "permit", "actor": [actor]})


@pytest.mark.parametrize(
    ("resource", "fault"),
    [
        (consent(patient=None), "Consent.patient is missing"),
        (
            consent(patient={"identifier": {"system": NETWORK_ID_SYSTEM, "value": OTHER_PATIENT}}),
            "another patient",
        ),
        (consent(status="withdrawn"), "Consent.status"),
        (consent(scope=None), "Consent.scope"),
        (_bad_actor({"reference": {"reference": "Organization/123"}}), "provision.actor[0].reference"),
        (
            _bad_actor({"role": {"coding": [{"code": "AUT"}]}, "reference": ref("Organization", HOSPITAL)}),
            "provision.actor[0].role",
        ),
        (
            consent(provision={"type": "permit", "securityLabel": [{"system": ACT_CODE, "code": "TBOO"}]}),
            "securityLabel[0]",
        ),
        (consent(provision={"type": "deny", "period": {"start": "01/10/2026"}}), "provision.period.start"),
        (
            consent(provision={"type": "deny", "period": {"start": "2026-10-02", "end": "2026-10-01"}}),
            "ends before",
        ),
        (consent(provision={"type": "permit", "provision": [{"actor": []}]}), "provision.provision[0].type"),
        (consent(provision={}), "neither permit nor deny"),
        (consent(identifier=[], status="inactive"), "must carry the identifier or id"),
    ],
    ids=[
        "missing patient",
        "another patient",
        "unknown status",
        "no scope",
        "actor by literal reference",
        "actor in author role",
        "unknown security label",
        "malformed period",
        "period ends before start",
        "nested provision without type",
        "no decision",
        "revocation naming no consent",
    ],
)
def test_uninterpretable_consent_is_refused_and_changes_nothing(resource: dict[str, Any], fault: str) -> None:
    """A Consent the hub cannot interpret is refused with consent.uninterpretable and no new state."""
    state = applied(
        PatientShareState.empty(PATIENT), consent(identifier=[{"system": "urn:x", "value": "0"}])
    ).state
    result = apply(state, resource, event_id="ev-bad", occurred_at=T0, source_id="demo-gp")
    assert isinstance(result, ConsentRejected)
    assert result.code == CONSENT_UNINTERPRETABLE == "consent.uninterpretable"
    assert fault in result.detail
    assert state.consents[0].in_force  # the caller keeps its state: nothing was replaced


def test_resources_without_share_meaning_change_nothing() -> None:
    """An Observation (or any resource not about team or consent) leaves the state as it is."""
    state = PatientShareState.empty(PATIENT)
    update = applied(state, {"resourceType": "Observation", "status": "final"})
    assert (update.state, update.changed) == (state, False)


def _rich_state() -> PatientShareState:
    state = PatientShareState.empty(PATIENT)
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "generalPractitioner": [ref("Practitioner", GP_RPPS)]},
        {
            "resourceType": "CareTeam",
            "status": "active",
            "period": {"start": "2026-09-01T08:00:00.123456+02:00"},
            "participant": [{"member": ref("Practitioner", NURSE_RPPS), "period": {"end": "2026-12-31"}}],
        },
        {
            "resourceType": "Encounter",
            "status": "in-progress",
            "serviceProvider": ref("Organization", HOSPITAL),
        },
        {
            "resourceType": "EpisodeOfCare",
            "status": "finished",
            "period": {"end": "2026-09-30"},
            "managingOrganization": {"identifier": {"system": NETWORK_SYSTEM, "value": "onco-guadeloupe"}},
        },
        consent(
            provision={
                "type": "deny",
                "dataPeriod": {"start": "2020"},
                "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
                "action": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                "code": "disclose",
                            }
                        ]
                    }
                ],
                "purpose": [{"code": "HRESCH"}],
                "provision": [{"type": "permit", "actor": [{"reference": ref("Organization", HOSPITAL)}]}],
            }
        ),
        consent(identifier=[{"system": "urn:hub:test:consent", "value": "C-2"}], status="inactive"),
    ]
    for n, resource in enumerate(resources):
        state = applied(state, resource, at=T0 + timedelta(minutes=n, microseconds=7)).state
    return state


def test_state_json_round_trip() -> None:
    """to_json → JSON text → from_json gives back the same state, exactly (changelog-safe)."""
    state = _rich_state()
    assert len(state.consents) == 2
    text = json.dumps(state.to_json())
    assert PatientShareState.from_json(json.loads(text)) == state
    assert PatientShareState.from_json(text) == state
    assert PatientShareState.from_json(text.encode()) == state


def test_a_consent_keeps_how_its_source_names_it_and_older_states_still_load() -> None:
    """The source's own Consent/<id> (carried in meta) is kept beside the hub's key and survives the
    changelog; a state stored before it was kept (no such field) loads with none, unchanged."""
    sent_as = {"extension": [{"url": SOURCE_REFERENCE_URL, "valueString": "Consent/consent-42"}]}
    state = applied(PatientShareState.empty(PATIENT), consent(meta=sent_as)).state
    (record,) = state.consents
    assert (record.source_id, record.source_reference) == ("demo-gp", "Consent/consent-42")
    assert PatientShareState.from_json(json.dumps(state.to_json())) == state
    stored_before = applied(PatientShareState.empty(PATIENT), consent()).state.to_json()
    assert "source_reference" not in stored_before["consents"][0]
    (old,) = PatientShareState.from_json(json.dumps(stored_before)).consents
    assert old.source_reference is None and old.key == record.key


@pytest.mark.parametrize(
    ("data", "patient_id"),
    [
        (b"\xff\xfe not json", ""),
        ("[1, 2]", ""),
        ({"v": 99, "patient_id": PATIENT}, PATIENT),
        ({"v": 1, "patient_id": PATIENT}, PATIENT),
        ({"v": 1, "patient_id": PATIENT, "general_practitioners": [{"source": 3}]}, PATIENT),
        (
            {**_rich_state().to_json(), "involvements": [{"key": "k", "kind": "stay", "open": True}]},
            PATIENT,
        ),
        ({**_rich_state().to_json(), "consents": [{"as_of": "yesterday"}]}, PATIENT),
        (None, ""),
    ],
    ids=[
        "bytes",
        "a list",
        "unknown format",
        "missing fields",
        "wrong types",
        "unknown kind",
        "bad instant",
        "None",
    ],
)
def test_corrupt_state_is_marked_never_raised(data: Any, patient_id: str) -> None:
    """Unreadable stored state comes back marked corrupt (patient id kept when readable), never raises."""
    state = PatientShareState.from_json(data)
    assert state.corrupt
    assert state.patient_id == patient_id
    assert "yesterday" not in state.corrupt_reason  # the reason never quotes stored content


def test_corrupt_state_stays_corrupt() -> None:
    """A corrupt state survives its own round trip and is not updated by apply."""
    corrupt = PatientShareState.corrupted(PATIENT, "stored state unreadable (KeyError)")
    assert PatientShareState.from_json(json.dumps(corrupt.to_json())) == corrupt
    update = applied(corrupt, consent())
    assert (update.state, update.changed) == (corrupt, False)
