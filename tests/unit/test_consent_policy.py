"""The shared-secret and consent policy (hub/consent/policy.py): every voter, the reducer's precedence,
sensitivity, the policy file, and the minimised per-recipient copy (hub/consent/minimise.py)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.consent.minimise import recipient_copy
from hub.consent.policy import (
    CARE_TEAM,
    DENY_BY_DEFAULT,
    EXPLICIT_CONSENT,
    OBJECTION,
    POLICY_VERSION,
    PRODUCER_ORGANIZATION,
    SENSITIVITY,
    STATE_UNAVAILABLE,
    SUBSCRIPTION_FILTER,
    Decision,
    FinalDecision,
    care_team,
    decide,
    explicit_consent,
    load_policy,
    objection,
    producer_organization,
    sensitivity,
    subscription_filter,
    view_event,
)
from hub.consent.recipients import (
    FINESS_SYSTEM,
    NETWORK_SYSTEM,
    RPPS_SYSTEM,
    Identifier,
    Recipient,
    Subscription,
)
from hub.consent.sensitivity import (
    GENETICS,
    HIV,
    PSYCHIATRY,
    RESTRICTED,
    SEXUAL_REPRODUCTIVE,
    SUBSTANCE_USE,
    CodeSet,
    categories_of,
)
from hub.consent.state import PatientShareState, StateUpdate, apply
from hub.errors import ConfigError
from hub.normalise.codes import CIM10
from hub.pathway.network_id import NETWORK_ID_SYSTEM
from hub.schemas import schema_errors

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "config" / "policy.json")
TEST_POLICY = replace(POLICY, id="test-policy", version="t1")

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
PATIENT = "pt-" + "a" * 24
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"

HOSPITAL_ORG = {"system": FINESS_SYSTEM, "value": "690999990"}
CLINIC_ORG = {"system": FINESS_SYSTEM, "value": "970100000"}
GP_ORG = {"system": "urn:hub:demo:organization", "value": "demo-org-cabinet-lamentin"}
LAB_ORG = {"system": "urn:hub:demo:organization", "value": "demo-org-lab-bio"}
GP_RPPS = {"system": RPPS_SYSTEM, "value": "10009900019"}
NETWORK_ID = {"system": NETWORK_SYSTEM, "value": "onco-guadeloupe"}
SUBJECT = {"reference": f"Patient/{PATIENT}", "identifier": {"system": NETWORK_ID_SYSTEM, "value": PATIENT}}


def recipient(
    recipient_id: str,
    organization: dict[str, str],
    *,
    kinds: tuple[str, ...] = ("*",),
    codes: tuple[CodeSet, ...] = (),
    practitioners: tuple[dict[str, str], ...] = (),
    network: str | None = None,
    fields: Any = "structured",
) -> Recipient:
    return Recipient(
        id=recipient_id,
        kind="network" if network else "hospital",
        organization=Identifier(**organization),
        kafka_principal=f"User:{recipient_id}",
        subscription=Subscription(kinds=kinds, codes=codes, fields=fields),
        practitioners=tuple(Identifier(**p) for p in practitioners),
        network=network,
    )


HOSPITAL = recipient("chu", HOSPITAL_ORG)
CLINIC = recipient("clinique", CLINIC_ORG)
GP = recipient("cabinet", GP_ORG, practitioners=(GP_RPPS,))
NETWORK = recipient(
    "onco-team", {"system": "urn:hub:demo:organization", "value": "onco"}, network="onco-guadeloupe"
)
LAB = recipient("labo", LAB_ORG)
ONCOLOGY_ONLY = recipient(
    "onco-codes",
    CLINIC_ORG,
    kinds=("condition", "encounter.*"),
    codes=(CodeSet.from_config({"system": ICD10, "ranges": ["C00-C97"]}),),
)


# -- FHIR builders --------------------------------------------------------------------------------------


def ref(resource_type: str, identifier: dict[str, str]) -> dict[str, Any]:
    return {"type": resource_type, "identifier": identifier}


def condition(code: str = "E11.9", *, labels: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {"coding": [{"system": ICD10, "code": code}], "text": "local label"},
        "subject": SUBJECT,
        "onsetDateTime": "2026-11-01T10:00:00Z",
    }
    if labels:
        resource["meta"] = {"security": [{"system": system, "code": code} for system, code in labels]}
    return resource


def event(
    resource: dict[str, Any] | None = None,
    *,
    kind: str = "condition",
    source: dict[str, str] = LAB_ORG,
    occurred_at: str = "2026-11-01T10:00:00.000Z",
) -> dict[str, Any]:
    """A hub.pathway.v1 envelope, as PathwayEvent.to_dict() writes it."""
    resource = resource or condition()
    return {
        "event_id": "0b7a3c1e-4d2f-5a6b-8c9d-0e1f2a3b4c5d",
        "patient_id": PATIENT,
        "kind": kind,
        "occurred_at": occurred_at,
        "recorded_at": "2026-11-01T10:00:05.000Z",
        "source": {"id": "demo-lab-bio", "organization": source},
        "sensitivity": sorted(label["code"] for label in resource.get("meta", {}).get("security", [])),
        "resource": resource,
        "provenance": {
            "ingest": {"topic": "hub.ingest.v1", "partition": 0, "offset": 7},
            "steps": ["decoded"],
        },
    }


def consent(provision: dict[str, Any], *, status: str = "active", value: str = "C-1") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "identifier": [{"system": "urn:hub:test:consent", "value": value}],
        "status": status,
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "patient": SUBJECT,
        "provision": provision,
    }


def actor(identifier: dict[str, str], resource_type: str = "Organization") -> dict[str, Any]:
    return {"reference": ref(resource_type, identifier)}


def permit(*actors: dict[str, str], labels: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "permit", "actor": [actor(a) for a in actors], **extra}
    if labels:
        provision["securityLabel"] = [{"system": ACT_CODE, "code": code} for code in labels]
    return consent(provision, value="P-" + "-".join(a["value"] for a in actors) + "-".join(labels))


def deny(*actors: dict[str, str], **extra: Any) -> dict[str, Any]:
    return consent(
        {"type": "deny", "actor": [actor(a) for a in actors], **extra}, value="D-" + str(len(actors))
    )


GP_DECLARED = {"resourceType": "Patient", "generalPractitioner": [ref("Practitioner", GP_RPPS)]}


def encounter(
    status: str = "in-progress", *, end: str | None = None, org: dict[str, str] = HOSPITAL_ORG
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "identifier": [{"system": "urn:test:stay", "value": f"{org['value']}-1"}],
        "status": status,
        "subject": SUBJECT,
        "serviceProvider": ref("Organization", org),
    }
    if end is not None:
        resource["period"] = {"start": "2026-01-01", "end": end}
    return resource


def care_team_of(*participants: dict[str, Any], status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "CareTeam",
        "id": "ct-1",
        "status": status,
        "subject": SUBJECT,
        "participant": list(participants),
    }


ENROLMENT = {
    "resourceType": "EpisodeOfCare",
    "id": "ep-1",
    "status": "active",
    "patient": SUBJECT,
    "managingOrganization": {"identifier": NETWORK_ID},
}


def state_of(*resources: dict[str, Any]) -> PatientShareState:
    """The patient's state after applying ``resources`` in order, one minute apart, before NOW."""
    state = PatientShareState.empty(PATIENT)
    for n, resource in enumerate(resources):
        at = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=n)
        update = apply(state, resource, event_id=f"ev-{n}", occurred_at=at, source_id="demo-gp")
        assert isinstance(update, StateUpdate), update
        state = update.state
    return state


def decided(
    resources: tuple[dict[str, Any], ...],
    who: Recipient,
    the_event: dict[str, Any] | None = None,
    *,
    now: datetime = NOW,
) -> FinalDecision:
    return decide(the_event or event(), who, state_of(*resources), now=now, policy=TEST_POLICY)


# -- the rules, table-driven ------------------------------------------------------------------------------

HIV_EVENT = event(condition("B20"))
PSY_LABELLED = event(condition("E11.9", labels=((ACT_CODE, "PSY"),)))
RESTRICTED_EVENT = event(condition("E11.9", labels=((CONFIDENTIALITY, "R"),)))
ONCOLOGIST = {"system": RPPS_SYSTEM, "value": "10009900084"}
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"


def member(identifier: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"member": ref("Practitioner", identifier), **extra}


def actions(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": CONSENT_ACTION, "code": code}]}]


def revoked(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "status": "inactive"}


def nested(root: str, child: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return consent({"type": root, **extra, "provision": [child]})


ONLY_HOSPITAL = nested("deny", {"type": "permit", "actor": [actor(HOSPITAL_ORG)]})
CLINIC_BUT_PSY = nested(
    "permit",
    {"type": "deny", "securityLabel": [{"system": ACT_CODE, "code": "PSY"}]},
    actor=[actor(CLINIC_ORG)],
)
RESTRICTED_CONSENT = consent({"type": "permit", "securityLabel": [{"system": CONFIDENTIALITY, "code": "R"}]})
OUTSIDE = (encounter(org=CLINIC_ORG),)
PERMIT, DENY = "permit", "deny"

CASES: list[tuple[str, tuple[dict[str, Any], ...], Recipient, dict[str, Any] | None, str, str]] = [
    # care team: permitted without explicit consent
    ("declared GP", (GP_DECLARED,), GP, None, PERMIT, CARE_TEAM),
    ("CareTeam member by RPPS", (care_team_of(member(GP_RPPS)),), GP, None, PERMIT, CARE_TEAM),
    (
        "CareTeam member on behalf of the hospital",
        (care_team_of(member(ONCOLOGIST, onBehalfOf=ref("Organization", HOSPITAL_ORG))),),
        HOSPITAL,
        None,
        PERMIT,
        CARE_TEAM,
    ),
    ("open encounter", (encounter(),), HOSPITAL, None, PERMIT, CARE_TEAM),
    (
        "encounter ended 30 days ago",
        (encounter("finished", end="2026-10-23"),),
        HOSPITAL,
        None,
        PERMIT,
        CARE_TEAM,
    ),
    ("network enrolment", (ENROLMENT,), NETWORK, None, PERMIT, CARE_TEAM),
    # outside the care team: nothing without explicit consent
    ("outside, no consent", (GP_DECLARED, encounter()), CLINIC, None, DENY, DENY_BY_DEFAULT),
    ("consent names the organisation", (permit(CLINIC_ORG),), CLINIC, None, PERMIT, EXPLICIT_CONSENT),
    ("consent names the practitioner", (permit(GP_RPPS),), GP, None, PERMIT, EXPLICIT_CONSENT),
    ("consent names the network", (permit(NETWORK_ID),), NETWORK, None, PERMIT, EXPLICIT_CONSENT),
    ("consent names someone else", (permit(HOSPITAL_ORG),), CLINIC, None, DENY, DENY_BY_DEFAULT),
    # objection wins
    ("objection beats care team", (GP_DECLARED, deny()), GP, None, DENY, OBJECTION),
    ("objection beats consent", (permit(CLINIC_ORG), deny()), CLINIC, None, DENY, OBJECTION),
    ("objection naming the clinic", (permit(CLINIC_ORG), deny(CLINIC_ORG)), CLINIC, None, DENY, OBJECTION),
    ("objection naming the clinic, GP", (GP_DECLARED, deny(CLINIC_ORG)), GP, None, PERMIT, CARE_TEAM),
    # revocation and periods
    (
        "revoked consent",
        (permit(CLINIC_ORG), revoked(permit(CLINIC_ORG))),
        CLINIC,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
    ("revoked objection", (GP_DECLARED, deny(), revoked(deny())), GP, None, PERMIT, CARE_TEAM),
    (
        "expired consent",
        (permit(CLINIC_ORG, period={"end": "2026-11-01"}),),
        CLINIC,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
    (
        "consent not yet started",
        (permit(CLINIC_ORG, period={"start": "2027-01-01"}),),
        CLINIC,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
    ("expired objection", (GP_DECLARED, deny(period={"end": "2026-11-01"})), GP, None, PERMIT, CARE_TEAM),
    (
        "expired CareTeam membership",
        (care_team_of(member(GP_RPPS, period={"end": "2026-10-31"})),),
        GP,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
    (
        "inactive CareTeam",
        (care_team_of(member(GP_RPPS), status="inactive"),),
        GP,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
    (
        "encounter beyond the recency window",
        (encounter("finished", end="2026-08-20"),),
        HOSPITAL,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
    ("cancelled encounter", (encounter("cancelled"),), HOSPITAL, None, DENY, DENY_BY_DEFAULT),
    (
        "consent for data of 2027 only",
        (permit(CLINIC_ORG, dataPeriod={"start": "2027-01-01"}),),
        CLINIC,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
    # sensitive data: consent covering the category, whoever the recipient, except the producer
    ("HIV in the team, no consent", (GP_DECLARED,), GP, HIV_EVENT, DENY, SENSITIVITY),
    (
        "HIV in the team, HIV consent",
        (GP_DECLARED, permit(labels=("HIV",))),
        GP,
        HIV_EVENT,
        PERMIT,
        CARE_TEAM,
    ),
    ("HIV, consent for PSY", (GP_DECLARED, permit(labels=("PSY",))), GP, HIV_EVENT, DENY, SENSITIVITY),
    ("HIV, general consent", (GP_DECLARED, permit(GP_RPPS)), GP, HIV_EVENT, DENY, SENSITIVITY),
    (
        "HIV outside, consent naming it and HIV",
        (permit(CLINIC_ORG, labels=("HIV",)),),
        CLINIC,
        HIV_EVENT,
        PERMIT,
        EXPLICIT_CONSENT,
    ),
    (
        "HIV consent for another",
        (GP_DECLARED, permit(CLINIC_ORG, labels=("HIV",))),
        GP,
        HIV_EVENT,
        DENY,
        SENSITIVITY,
    ),
    ("HIV back to its producer", (), LAB, HIV_EVENT, PERMIT, PRODUCER_ORGANIZATION),
    ("psychiatry by security label", (GP_DECLARED,), GP, PSY_LABELLED, DENY, SENSITIVITY),
    ("psychiatry by ICD-10 code", (GP_DECLARED,), GP, event(condition("F32.1")), DENY, SENSITIVITY),
    ("restricted confidentiality", (GP_DECLARED,), GP, RESTRICTED_EVENT, DENY, SENSITIVITY),
    (
        "restricted, consent covering R",
        (GP_DECLARED, RESTRICTED_CONSENT),
        GP,
        RESTRICTED_EVENT,
        PERMIT,
        CARE_TEAM,
    ),
    ("dementia is not psychiatry", (GP_DECLARED,), GP, event(condition("F03")), PERMIT, CARE_TEAM),
    # minimum necessary: not requested
    ("kind not subscribed", OUTSIDE, ONCOLOGY_ONLY, event(kind="observation"), DENY, SUBSCRIPTION_FILTER),
    ("code outside the subscribed ranges", OUTSIDE, ONCOLOGY_ONLY, None, DENY, SUBSCRIPTION_FILTER),
    (
        "code inside the subscribed ranges",
        OUTSIDE,
        ONCOLOGY_ONLY,
        event(condition("C50.9")),
        PERMIT,
        CARE_TEAM,
    ),
    (
        "no clinical code: kind decides",
        OUTSIDE,
        ONCOLOGY_ONLY,
        event(encounter(), kind="encounter.admission"),
        PERMIT,
        CARE_TEAM,
    ),
    # nested provisions: exceptions override their parent
    ("deny all but the hospital: hospital", (ONLY_HOSPITAL,), HOSPITAL, None, PERMIT, EXPLICIT_CONSENT),
    ("deny all but the hospital: GP", (GP_DECLARED, ONLY_HOSPITAL), GP, None, DENY, OBJECTION),
    ("permit the clinic but not PSY", (CLINIC_BUT_PSY,), CLINIC, PSY_LABELLED, DENY, OBJECTION),
    ("permit the clinic but not PSY: other", (CLINIC_BUT_PSY,), CLINIC, None, PERMIT, EXPLICIT_CONSENT),
    # what the hub cannot check: a permit permits nothing, a deny denies more
    (
        "permit narrowed by purpose",
        (permit(CLINIC_ORG, purpose=[{"code": "HRESCH"}]),),
        CLINIC,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
    (
        "deny narrowed by code",
        (GP_DECLARED, deny(code=[{"coding": [{"code": "x"}]}])),
        GP,
        None,
        DENY,
        OBJECTION,
    ),
    (
        "permit to collect only",
        (permit(CLINIC_ORG, action=actions("collect")),),
        CLINIC,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
    (
        "permit to disclose",
        (permit(CLINIC_ORG, action=actions("disclose")),),
        CLINIC,
        None,
        PERMIT,
        EXPLICIT_CONSENT,
    ),
    (
        "permit for observations only",
        (permit(CLINIC_ORG, **{"class": [{"system": RESOURCE_TYPES, "code": "Observation"}]}),),
        CLINIC,
        None,
        DENY,
        DENY_BY_DEFAULT,
    ),
]


@pytest.mark.parametrize(
    ("resources", "who", "the_event", "verdict", "rule"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rules(
    resources: tuple[dict[str, Any], ...],
    who: Recipient,
    the_event: dict[str, Any] | None,
    verdict: str,
    rule: str,
) -> None:
    """Each rule of DOMAIN.md decides its case, with the rule's name and the policy version carried."""
    decision = decided(resources, who, the_event)
    assert (decision.verdict, decision.rule) == (verdict, rule), decision
    assert decision.policy_version == POLICY_VERSION
    assert decision.policy == "test-policy@t1"
    assert Decision(decision.verdict, decision.rule, decision.reason) in decision.votes


def test_guards_deny_what_cannot_be_evaluated() -> None:
    """Unknown recipient, missing/corrupt/foreign state, unreadable event, bad Consent event: deny."""
    state = state_of(GP_DECLARED)
    cases = [
        (event(), None, state, DENY_BY_DEFAULT, "unknown recipient"),
        ({**event(), "occurred_at": "yesterday"}, GP, state, DENY_BY_DEFAULT, "envelope"),
        ({**event(), "source": {"id": "x"}}, GP, state, DENY_BY_DEFAULT, "envelope"),
        (
            event(consent({"type": "maybe"}), kind="consent"),
            GP,
            state,
            DENY_BY_DEFAULT,
            "Consent the hub cannot",
        ),
        (event(), GP, None, STATE_UNAVAILABLE, "no care-team"),
        (event(), GP, PatientShareState.from_json(b"garbage"), STATE_UNAVAILABLE, "corrupt"),
        (event(), GP, replace(state, patient_id="pt-" + "z" * 24), STATE_UNAVAILABLE, "another patient"),
    ]
    for the_event, who, the_state, rule, words in cases:
        decision = decide(the_event, who, the_state, now=NOW, policy=TEST_POLICY)
        assert (decision.verdict, decision.rule) == ("deny", rule)
        assert words in decision.reason
        assert decision.votes == (Decision("deny", rule, decision.reason),)
        assert decision.policy_version == POLICY_VERSION


def test_precedence_deny_wins_in_domain_order() -> None:
    """Objection before the basis check, the basis check before sensitivity, sensitivity before the filter."""
    unrequested_hiv = event(condition("B20"), kind="observation")
    narrow_gp = replace(GP, subscription=Subscription(kinds=("condition",)))
    assert decided((GP_DECLARED, deny()), narrow_gp, unrequested_hiv).rule == OBJECTION
    assert decided((), narrow_gp, unrequested_hiv).rule == DENY_BY_DEFAULT
    assert decided((GP_DECLARED,), narrow_gp, unrequested_hiv).rule == SENSITIVITY
    not_requested = decided((GP_DECLARED, permit(labels=("HIV",))), narrow_gp, unrequested_hiv)
    assert (not_requested.rule, not_requested.not_requested) == (SUBSCRIPTION_FILTER, True)
    assert not_requested.reason.startswith("not requested")


def test_basis_is_the_first_permitting_rule_and_votes_are_kept() -> None:
    """Care team comes before explicit consent as the basis; every vote is kept for trace."""
    decision = decided((GP_DECLARED, permit(GP_RPPS)), GP)
    assert decision.rule == CARE_TEAM
    assert [vote.rule for vote in decision.votes] == [CARE_TEAM, EXPLICIT_CONSENT]
    assert decision.permitted and not decision.not_requested


def test_outside_the_team_deny_lists_the_fallback_vote() -> None:
    """With no permitting rule, the decision is deny_by_default and that vote is appended."""
    decision = decided((), CLINIC)
    assert decision.votes[-1].rule == DENY_BY_DEFAULT
    assert "outside the care team" in decision.reason


def test_each_voter_alone() -> None:
    """Each voter abstains (None) unless its own rule applies; only the guards and voters vote."""
    view = view_event(event(condition("B20")), TEST_POLICY)
    assert view is not None
    empty = state_of()
    team = state_of(GP_DECLARED)
    objected = state_of(deny(CLINIC_ORG))
    consented = state_of(permit(CLINIC_ORG, labels=("HIV",)))
    assert objection(view, GP, objected, NOW, TEST_POLICY) is None
    assert objection(view, CLINIC, objected, NOW, TEST_POLICY) == Decision(
        "deny", OBJECTION, "the patient objects to sharing with this recipient"
    )
    assert care_team(view, GP, empty, NOW, TEST_POLICY) is None
    assert care_team(view, GP, team, NOW, TEST_POLICY) == Decision(
        "permit", CARE_TEAM, "the recipient is the patient's declared GP"
    )
    assert explicit_consent(view, GP, consented, NOW, TEST_POLICY) is None
    assert explicit_consent(view, CLINIC, consented, NOW, TEST_POLICY) is not None
    assert producer_organization(view, GP, empty, NOW, TEST_POLICY) is None
    assert producer_organization(view, LAB, empty, NOW, TEST_POLICY) is not None
    assert sensitivity(view, LAB, empty, NOW, TEST_POLICY) is None  # the producer is excepted
    assert sensitivity(view, CLINIC, consented, NOW, TEST_POLICY) is None
    assert sensitivity(view, GP, team, NOW, TEST_POLICY) == Decision(
        "deny", SENSITIVITY, "sensitive data without a consent covering its category"
    )
    assert subscription_filter(view, GP, empty, NOW, TEST_POLICY) is None
    assert subscription_filter(view, ONCOLOGY_ONLY, empty, NOW, TEST_POLICY) is not None


def test_reasons_never_name_codes_or_categories() -> None:
    """Reasons reach audit records and operators: they never quote a code or a sensitivity category."""
    for case in CASES:
        decision = decided(case[1], case[2], case[3])
        for vote in decision.votes:
            for secret in ("B20", "F32", "hiv", "psychiatry", "HIV", "PSY", "E11"):
                assert secret not in vote.reason, (case[0], vote)


def test_recency_window_is_the_configured_one() -> None:
    """An ended encounter counts for recency_days after its end, and not a day more."""
    ended = (encounter("finished", end="2026-09-01T00:00:00Z"),)
    window = replace(TEST_POLICY, recency=timedelta(days=10))
    at_edge = datetime(2026, 9, 11, tzinfo=UTC)
    assert decide(event(), HOSPITAL, state_of(*ended), now=at_edge, policy=window).rule == CARE_TEAM
    later = at_edge + timedelta(seconds=1)
    assert decide(event(), HOSPITAL, state_of(*ended), now=later, policy=window).rule == DENY_BY_DEFAULT


def test_naive_now_is_a_bug() -> None:
    """The clock must be timezone-aware."""
    with pytest.raises(ValueError, match="aware"):
        decide(event(), GP, state_of(), now=datetime(2026, 11, 22), policy=TEST_POLICY)  # noqa: DTZ001


# -- sensitivity ----------------------------------------------------------------------------------------


def coded(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


@pytest.mark.parametrize(
    ("resource", "categories"),
    [
        (condition("B20"), {HIV}),
        (condition("B24"), {HIV}),
        (condition("F32.1"), {PSYCHIATRY}),
        (condition("F10.2"), {SUBSTANCE_USE}),
        (condition("F03"), set()),
        (condition("O04"), {SEXUAL_REPRODUCTIVE}),
        (condition("Z31.5"), {SEXUAL_REPRODUCTIVE, GENETICS}),
        (condition("Q90.9"), {GENETICS}),
        (condition("E11.9"), set()),
        (condition("E11.9", labels=((ACT_CODE, "ETH"),)), {SUBSTANCE_USE}),
        (condition("E11.9", labels=((ACT_CODE, "SPI"),)), {PSYCHIATRY, SUBSTANCE_USE}),
        (condition("E11.9", labels=((CONFIDENTIALITY, "V"),)), {RESTRICTED}),
        (condition("E11.9", labels=((CONFIDENTIALITY, "N"),)), set()),
        ({**condition(), "meta": {"security": [{"code": "HIV"}]}}, {HIV}),
        ({"resourceType": "Observation", "code": coded("http://loinc.org", "56888-1")}, {HIV}),
        ({"resourceType": "Condition", "code": coded(CIM10, "F200")}, {PSYCHIATRY}),
        ({"resourceType": "ServiceRequest", "reasonCode": [coded(ICD10, "B21")]}, {HIV}),
    ],
    ids=[
        "B20", "B24", "F32 depression", "F10 alcohol", "F03 dementia", "O04 abortion", "Z31.5 genetic",
        "Q90 Down", "E11 diabetes", "ETH label", "SPI label", "V confidentiality", "N confidentiality",
        "label without system", "LOINC HIV test", "CIM-10 spelling", "reason code",
    ],
)  # fmt: skip
def test_sensitivity_categories(resource: dict[str, Any], categories: set[str]) -> None:
    """Categories come from security labels and from the configured code sets (config/policy.json)."""
    assert categories_of(resource, POLICY.sensitive_codes) == categories


# -- the policy file -------------------------------------------------------------------------------------


def test_policy_file_loads() -> None:
    """config/policy.json is valid: id, version, a 90-day window and code sets for five categories."""
    assert POLICY.label == "hub-secret-partage@2026-12-06.1"
    assert POLICY.recency == timedelta(days=90)
    assert set(POLICY.sensitive_codes) == {HIV, PSYCHIATRY, SEXUAL_REPRODUCTIVE, GENETICS, SUBSTANCE_USE}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"recency_days": -1}, "recency_days"),
        ({"sensitive_codes": {"oncology": []}}, "sensitive_codes"),
        ({"sensitive_codes": {"hiv": [{"system": ICD10}]}}, "sensitive_codes.hiv.0"),
        (
            {"sensitive_codes": {"hiv": [{"system": ICD10, "ranges": ["B24-B20"]}]}},
            "sensitive_codes.hiv.0.ranges",
        ),
        ({"version": None}, "version"),
    ],
    ids=["negative window", "unknown category", "code set without codes", "range out of order", "no version"],
)
def test_policy_file_errors_name_file_and_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    """A bad policy file is a ConfigError naming the file and the field."""
    document = {**json.loads((ROOT / "config" / "policy.json").read_text(encoding="utf-8")), **change}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_policy(path)
    assert str(path) in str(raised.value)
    assert field in str(raised.value)


# -- the per-recipient copy --------------------------------------------------------------------------------


def _rich_condition() -> dict[str, Any]:
    return {
        **condition("C50.9", labels=((ACT_CODE, "PSY"),)),
        "id": "cond-1",
        "text": {"status": "generated", "div": "<div>Mme Céleste, cancer du sein</div>"},
        "contained": [{"resourceType": "Patient", "name": [{"family": "Céleste"}]}],
        "note": [{"text": "patiente anxieuse"}],
        "evidence": [{"detail": [{"reference": "DiagnosticReport/1"}]}],
    }


@pytest.mark.parametrize(
    ("level", "kept", "gone"),
    [
        ("full", {"text", "contained", "note", "evidence", "code", "meta"}, set()),
        ("structured", {"evidence", "code", "meta", "clinicalStatus"}, {"text", "contained", "note"}),
        (
            "summary",
            {"code", "clinicalStatus", "onsetDateTime", "subject", "meta", "id"},
            {"text", "contained", "note", "evidence"},
        ),
    ],
)
def test_recipient_copy_is_minimised(level: Any, kept: set[str], gone: set[str]) -> None:
    """The copy keeps what the subscription's level asks for, carries the decision, fits the schema."""
    the_event = {**event(_rich_condition()), "internal": "not for recipients"}
    original = copy.deepcopy(the_event)
    who = replace(GP, subscription=Subscription(kinds=("*",), fields=level))
    decision = decide(
        the_event, who, state_of(GP_DECLARED, permit(labels=("PSY",))), now=NOW, policy=TEST_POLICY
    )
    shared = recipient_copy(the_event, who, decision)
    assert kept <= set(shared["resource"])
    assert not gone & set(shared["resource"])
    assert shared["decision"] == {
        "basis": CARE_TEAM,
        "policy": "test-policy@t1",
        "policy_version": POLICY_VERSION,
    }
    assert "internal" not in shared
    assert schema_errors("pathway-event.schema.json", shared) == []
    assert shared["provenance"] == the_event["provenance"]
    assert the_event == original  # deciding and copying never change the event
    if level == "summary":
        assert shared["resource"]["meta"] == {"security": [{"system": ACT_CODE, "code": "PSY"}]}


def test_a_denied_event_has_no_recipient_copy() -> None:
    """Asking for the copy of a denied event is a bug in the caller."""
    decision = decided((), CLINIC)
    with pytest.raises(ValueError, match="deny_by_default"):
        recipient_copy(event(), CLINIC, decision)
