"""Patient facts (hub/networks/facts.py), criteria (criteria.py) and findings (eligibility.py): every
criterion kind and combinator, ICD-10 ranges, thresholds across units, look-back windows, age and
residence boundaries, enrolment, territory, and the demo feed run through the real ingest pipeline."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.consent.recipients import NETWORK_SYSTEM, RPPS_SYSTEM
from hub.demo.generator import DEMO_SOURCES, generate_feed
from hub.identity.stage import IdentityStage, input_record, link_record
from hub.ingest.outcome import Accepted, IngestRecord, KafkaCoordinates
from hub.ingest.pipeline import IngestContext, process_ingest
from hub.ingest.signature import sign
from hub.networks import (
    PatientFacts,
    apply_event,
    evaluate,
    load_networks,
    new_findings,
    parse_criterion,
    parse_network,
    replaced_patient_ids,
)
from hub.networks.criteria import Context, Lookback, Territory, department_of
from hub.networks.facts import OBSERVATIONS_PER_CODE, Address
from hub.normalise.codes import CIM10, load_concept_maps
from hub.normalise.time import utc_iso
from hub.pathway.network_id import NETWORK_ID_SYSTEM
from hub.sources.registry import Source, SourceRegistry

ROOT = Path(__file__).resolve().parents[2]
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
PATIENT = "pt-" + "a" * 24
OTHER_PATIENT = "pt-" + "b" * 24
NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
GUADELOUPE = Territory(departments=frozenset({"971"}))
GP_SYSTEM = "urn:hub:demo:demo-gp-cabinet-lamentin:patient"
INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"


# -- builders ----------------------------------------------------------------------------------------


def event_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def event(
    name: str,
    resource: dict[str, Any],
    *,
    at: datetime = NOW - timedelta(days=10),
    kind: str = "x",
    patient: str = PATIENT,
    source: str = "gp-1",
) -> dict[str, Any]:
    """A pathway event envelope as hub.pathway.v1 carries it."""
    return {
        "event_id": event_id(name),
        "patient_id": patient,
        "kind": kind,
        "occurred_at": utc_iso(at),
        "recorded_at": utc_iso(at),
        "source": {"id": source, "organization": {"system": "urn:x", "value": source}},
        "sensitivity": [],
        "resource": resource,
        "provenance": {"ingest": {"topic": "hub.ingest.v1", "partition": 0, "offset": 1}, "steps": []},
    }


def patient_event(
    name: str = "patient",
    *,
    birth: str | None = "1950-06-15",
    postal: str | None = "97110",
    insee: str | None = "97120",
    gps: tuple[str, ...] = ("10009900019",),
    source: str = "gp-1",
    at: datetime = NOW - timedelta(days=100),
    use: str = "home",
) -> dict[str, Any]:
    address: dict[str, Any] = {"use": use, "line": ["8 impasse des Cannes"], "city": "Pointe-à-Pitre"}
    if postal:
        address["postalCode"] = postal
    if insee:
        address["extension"] = [
            {
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code",
                "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune", "code": insee},
            }
        ]
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {"system": GP_SYSTEM, "value": "GP1-000001"},
            {"system": INS_TEST, "value": "250069712012345"},
            {"system": NETWORK_ID_SYSTEM, "value": PATIENT},
        ],
        "name": [{"family": "Céleste", "given": ["Maryse"]}],
        "address": [address] if postal or insee else [],
        "generalPractitioner": [{"identifier": {"system": RPPS_SYSTEM, "value": rpps}} for rpps in gps],
    }
    if birth:
        resource["birthDate"] = birth
    return event(name, resource, at=at, kind="patient", source=source)


def condition_event(
    name: str,
    code: str,
    *,
    system: str = ICD10,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    identifier: str | None = None,
    at: datetime = NOW - timedelta(days=50),
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": system, "code": code}]},
    }
    if clinical:
        resource["clinicalStatus"] = {"coding": [{"code": clinical}]}
    if verification:
        resource["verificationStatus"] = {"coding": [{"code": verification}]}
    if identifier:
        resource["identifier"] = [{"system": "urn:gp:condition", "value": identifier}]
    return event(name, resource, at=at, kind="condition")


def observation_event(
    name: str,
    value: float,
    *,
    loinc: str = "4548-4",
    unit: str = "%",
    at: datetime = NOW - timedelta(days=30),
    status: str = "final",
    identifier: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": "urn:lab:test", "code": "HBA1C"}, {"system": LOINC, "code": loinc}]},
        "effectiveDateTime": utc_iso(at),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }
    if identifier:
        resource["identifier"] = [{"system": "urn:lab:result", "value": identifier}]
    return event(name, resource, at=at, kind="observation")


def encounter_event(
    name: str,
    *,
    cls: str = "IMP",
    status: str = "finished",
    start: datetime = NOW - timedelta(days=20),
    end: datetime | None = NOW - timedelta(days=12),
    stay: str | None = "SEJ-1",
    service: str | None = None,
) -> dict[str, Any]:
    period = {"start": utc_iso(start)} | ({"end": utc_iso(end)} if end else {})
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls},
        "period": period,
    }
    if stay:
        resource["identifier"] = [{"system": "urn:chu:encounter", "value": stay}]
    if service:
        resource["serviceType"] = {"coding": [{"system": SNOMED, "code": service}]}
    kind = "encounter.discharge" if status == "finished" else "encounter.admission"
    return event(name, resource, at=end if status == "finished" and end else start, kind=kind)


def episode_event(
    name: str, network: str, *, status: str = "active", episode: str = "EP-1"
) -> dict[str, Any]:
    resource = {
        "resourceType": "EpisodeOfCare",
        "identifier": [{"system": "urn:network:episode", "value": episode}],
        "status": status,
        "managingOrganization": {"identifier": {"system": NETWORK_SYSTEM, "value": network}},
        "period": {"start": utc_iso(NOW - timedelta(days=40))},
    }
    return event(name, resource, at=NOW - timedelta(days=40), kind="episode")


def facts_of(*events: dict[str, Any]) -> PatientFacts:
    facts = PatientFacts.empty(PATIENT)
    for item in events:
        facts = apply_event(facts, item)
    return facts


def holds(criterion: dict[str, Any], facts: PatientFacts, *, now: datetime = NOW) -> bool:
    parsed = parse_criterion(criterion, where="test: criteria")
    return parsed.evaluate(facts, Context(now, GUADELOUPE)).matched


def network(criteria: dict[str, Any], **overrides: Any) -> Any:
    document: dict[str, Any] = {
        "id": "diab-test",
        "name": "Réseau diabète test",
        "kind": "thematic",
        "territory": {"departments": ["971"]},
        "coordination_team": {"name": "Team", "url": "https://team.example.org"},
        "criteria": criteria,
    }
    document.update(overrides)
    return parse_network(document, origin="test.json")


DIABETES = {"condition": {"system": ICD10, "ranges": ["E10-E14"]}}
HBA1C_OVER_8 = {
    "observation": {"loinc": "4548-4", "comparator": ">", "value": 8, "unit": "%", "lookback": "P6M"}
}


# -- facts --------------------------------------------------------------------------------------------


def test_facts_round_trip_through_json() -> None:
    """Every kind of record survives to_json, json.dumps and from_json unchanged."""
    facts = facts_of(
        patient_event(),
        condition_event("c1", "E11.9"),
        condition_event("c2", "C50.9", clinical=None, verification=None),
        observation_event("o1", 8.4),
        observation_event("o2", 64, loinc="59261-8", unit="mmol/mol", identifier="R1"),
        encounter_event("e1", service="309904001"),
        encounter_event("e2", cls="EMER", end=None, status="in-progress", stay=None),
        episode_event("ep1", "onco-guadeloupe"),
    )
    text = json.dumps(facts.to_json())
    assert PatientFacts.from_json(text) == facts
    assert PatientFacts.from_json(text.encode()) == facts
    assert PatientFacts.from_json(json.loads(text)) == facts


@pytest.mark.parametrize(
    "stored", ["not json", b"\xff", {"v": 99}, {"v": 1, "patient_id": PATIENT}, [], {"v": 1, "patient_id": 3}]
)
def test_unreadable_facts_are_none(stored: Any) -> None:
    """Unreadable stored facts give None (the stage starts again from empty), never an exception."""
    assert PatientFacts.from_json(stored) is None


def test_observations_are_bounded_per_code_newest_first() -> None:
    """Only the newest OBSERVATIONS_PER_CODE results of one LOINC code are kept, newest first."""
    results = [observation_event(f"o{n}", 7 + n / 10, at=NOW - timedelta(days=n)) for n in range(15)]
    facts = facts_of(*reversed(results))
    kept = facts.observations["4548-4"]
    assert len(kept) == OBSERVATIONS_PER_CODE
    assert [r.event_id for r in kept] == [event_id(f"o{n}") for n in range(OBSERVATIONS_PER_CODE)]
    older = observation_event("old", 9.9, at=NOW - timedelta(days=400))
    assert apply_event(facts, older) is facts


def test_applying_an_event_twice_changes_nothing() -> None:
    """Events are delivered at least once: a repeat is a no-op, and returns the same object."""
    items = [patient_event(), condition_event("c", "E11.9"), observation_event("o", 9), encounter_event("e")]
    facts = facts_of(*items)
    for item in items:
        assert apply_event(facts, item) is facts


def test_events_of_another_patient_or_unreadable_are_ignored() -> None:
    """An event about another patient, without event id or with an odd resource changes nothing."""
    facts = PatientFacts.empty(PATIENT)
    other = condition_event("c", "E11.9")
    other["patient_id"] = OTHER_PATIENT
    no_id = condition_event("c2", "E11.9")
    del no_id["event_id"]
    odd = event("odd", {"resourceType": "Condition", "code": "E11.9", "clinicalStatus": 7})
    assert apply_event(facts, other) is facts
    assert apply_event(facts, no_id) is facts
    assert apply_event(facts, {"what": "ever"}) is facts
    assert apply_event(facts, odd).conditions[0].codes == ()


def test_a_later_version_of_a_condition_replaces_it() -> None:
    """A condition resolved later (same identifier) is no longer active; an older version cannot undo it."""
    active = condition_event("c1", "E11.9", identifier="P1", at=NOW - timedelta(days=50))
    resolved = condition_event(
        "c2", "E11.9", identifier="P1", clinical="resolved", at=NOW - timedelta(days=5)
    )
    facts = facts_of(active, resolved)
    assert [c.active for c in facts.conditions] == [False]
    assert apply_event(facts, active) is facts


def test_an_admission_is_replaced_by_its_discharge() -> None:
    """Admission and discharge of one stay are one encounter, in its latest state."""
    admission = encounter_event("adm", status="in-progress", end=None)
    facts = facts_of(admission, encounter_event("dis"))
    [stay] = facts.encounters
    assert stay.status == "finished" and stay.event_id == event_id("dis")


def test_a_withdrawn_result_is_forgotten() -> None:
    """An Observation entered in error takes its earlier version (same identifier) with it."""
    facts = facts_of(observation_event("o1", 9.1, identifier="R1"))
    withdrawn = observation_event("o2", 9.1, identifier="R1", status="entered-in-error")
    assert apply_event(facts, withdrawn).observations == {}


def test_preliminary_results_do_not_count() -> None:
    """Only final, amended or corrected results are kept."""
    assert facts_of(observation_event("o", 9.5, status="preliminary")).observations == {}


def test_patient_identifiers_gps_and_withdrawal() -> None:
    """Identifiers (not the hub's own) and declared GPs per source; a later Patient without GP withdraws
    that source's declaration only."""
    facts = facts_of(patient_event(), patient_event("p2", gps=("10009900027",), source="hospital"))
    assert facts.practitioners == ("10009900019", "10009900027")
    assert facts.identifiers_in([GP_SYSTEM]) == [{"system": GP_SYSTEM, "value": "GP1-000001"}]
    assert (NETWORK_ID_SYSTEM, PATIENT) not in facts.identifiers
    withdrawn = apply_event(facts, patient_event("p3", gps=(), at=NOW - timedelta(days=1)))
    assert withdrawn.practitioners == ("10009900027",)


def test_a_linked_identity_merges_its_facts() -> None:
    """patient.linked names the replaced ids; merged_with brings their records in, later versions winning."""
    local = PatientFacts.empty(OTHER_PATIENT)
    for item in (condition_event("c", "C50.9"), observation_event("o", 9.0)):
        local = apply_event(local, {**item, "patient_id": OTHER_PATIENT})
    linked = event(
        "link",
        {
            "resourceType": "Patient",
            "identifier": [{"system": NETWORK_ID_SYSTEM, "value": PATIENT}],
            "link": [{"other": {"identifier": {"system": NETWORK_ID_SYSTEM, "value": OTHER_PATIENT}}}],
        },
        kind="patient.linked",
    )
    assert replaced_patient_ids(linked) == (OTHER_PATIENT,)
    facts = facts_of(patient_event())
    assert apply_event(facts, linked) is facts
    merged = facts.merged_with(local)
    assert merged.patient_id == PATIENT and merged.birth_date == facts.birth_date
    assert [c.event_id for c in merged.conditions] == [event_id("c")]
    assert merged.observations == local.observations


# -- conditions and combinators -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "ranges", "expected"),
    [
        ("E11.9", ["E10-E14"], True),
        ("E10", ["E10-E14"], True),
        ("E14.9", ["E10-E14"], True),
        ("E15", ["E10-E14"], False),
        ("E09.9", ["E10-E14"], False),
        ("C97", ["C00-C97"], True),
        ("C50.9", ["C00-C97"], True),
        ("D05.1", ["C00-C97"], False),
        ("I50.9", ["I50"], True),
        ("I51", ["I50"], False),
        ("N18.3", ["N18.3"], True),
        ("N18.4", ["N18.3"], False),
    ],
)
def test_icd10_ranges_compare_the_category_bounds_included(
    code: str, ranges: list[str], expected: bool
) -> None:
    """A range holds a code whose first characters lie between its bounds, both included."""
    facts = facts_of(condition_event("c", code))
    assert holds({"condition": {"system": ICD10, "ranges": ranges}}, facts) is expected


def test_codes_are_exact_and_cim10_reads_as_icd10() -> None:
    """Listed codes match exactly; a French CIM-10 coding meets an ICD-10 criterion."""
    facts = facts_of(condition_event("c", "Z51.5", system=CIM10))
    assert holds({"condition": {"system": ICD10, "codes": ["Z51.5"]}}, facts)
    assert not holds({"condition": {"system": ICD10, "codes": ["Z51"]}}, facts)
    snomed = facts_of(condition_event("s", "44054006", system=SNOMED))
    assert holds({"condition": {"system": SNOMED, "codes": ["44054006"]}}, snomed)
    assert not holds(DIABETES, snomed)


@pytest.mark.parametrize(
    ("clinical", "verification", "expected"),
    [
        ("active", "confirmed", True),
        ("recurrence", None, True),
        ("relapse", "provisional", True),
        (None, None, True),
        ("resolved", "confirmed", False),
        ("remission", None, False),
        ("inactive", None, False),
        ("active", "refuted", False),
        ("active", "entered-in-error", False),
    ],
)
def test_only_active_conditions_count(clinical: str | None, verification: str | None, expected: bool) -> None:
    """Active, recurrence, relapse or no status count; resolved, refuted and entered-in-error do not."""
    facts = facts_of(condition_event("c", "E11.9", clinical=clinical, verification=verification))
    assert holds(DIABETES, facts) is expected


def test_stu3_plain_status_codes_are_read() -> None:
    """A clinicalStatus written as a plain code (STU3 style) is read too."""
    item = condition_event("c", "E11.9", clinical=None)
    item["resource"]["clinicalStatus"] = "resolved"
    assert not holds(DIABETES, facts_of(item))


def test_all_any_and_not() -> None:
    """all needs every item, any one of them, not the absence of its item."""
    facts = facts_of(patient_event(), condition_event("c", "E11.9"))
    cancer = {"condition": {"system": ICD10, "ranges": ["C00-C97"]}}
    assert holds({"all": [DIABETES, {"age": {"min": 70}}]}, facts)
    assert not holds({"all": [DIABETES, cancer]}, facts)
    assert holds({"any": [cancer, DIABETES]}, facts)
    assert not holds({"any": [cancer, {"age": {"max": 30}}]}, facts)
    assert holds({"not": cancer}, facts)
    assert not holds({"not": DIABETES}, facts)
    assert holds({"all": [DIABETES, {"not": {"all": [cancer, DIABETES]}}]}, facts)


def test_reasons_cite_the_events_that_met_each_leaf() -> None:
    """Reasons are the leaves that held, with their own event ids; not cites none."""
    facts = facts_of(patient_event(), condition_event("c1", "E11.9"), condition_event("c2", "E10"))
    criterion = parse_criterion(
        {"all": [DIABETES, {"age": {"min": 70, "label": "Aged 70+"}}, {"not": {"age": {"max": 30}}}]},
        where="test",
    )
    match = criterion.evaluate(facts, Context(NOW, GUADELOUPE))
    assert [(r.criterion, r.event_ids) for r in match.reasons] == [
        ("Active condition: ICD-10 E10-E14", (event_id("c1"), event_id("c2"))),
        ("Aged 70+", (event_id("patient"),)),
    ]


def test_count_counts_each_listed_code_or_range_once() -> None:
    """Two diabetes codes are one entry of the list; diabetes, hypertension and CKD are three."""
    count = {
        "count": {
            "at_least": 3,
            "of": {"condition": {"system": ICD10, "ranges": ["E10-E14", "I10-I15", "N18", "J44"]}},
        }
    }
    two = facts_of(condition_event("a", "E11.9"), condition_event("b", "E10.1"), condition_event("c", "I10"))
    assert not holds(count, two)
    three = apply_event(two, condition_event("d", "N18.3"))
    assert holds(count, three)
    resolved = apply_event(three, condition_event("e", "J44.9", clinical="resolved"))
    assert holds(count, resolved)
    match = parse_criterion(count, where="t").evaluate(three, Context(NOW, GUADELOUPE))
    assert set(match.reasons[0].event_ids) == {event_id(n) for n in "abcd"}


# -- observations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("comparator", "value", "expected"),
    [
        (">", 8.0, False),
        (">", 8.1, True),
        (">=", 8.0, True),
        ("<", 8.0, False),
        ("<=", 8.0, True),
        ("<", 7.9, True),
    ],
)
def test_comparators(comparator: str, value: float, expected: bool) -> None:
    """Each comparator against a threshold of 8 %."""
    facts = facts_of(observation_event("o", value))
    criterion = {"observation": {"loinc": "4548-4", "comparator": comparator, "value": 8, "unit": "%"}}
    assert holds(criterion, facts) is expected


def test_a_threshold_in_another_unit_is_converted() -> None:
    """64 mmol/mol is 8.01 %: a criterion written in mmol/mol reads results published in %."""
    criterion = {"observation": {"loinc": "4548-4", "comparator": ">=", "value": 64, "unit": "mmol/mol"}}
    assert holds(criterion, facts_of(observation_event("o", 8.1)))
    assert not holds(criterion, facts_of(observation_event("o", 8.0)))
    glucose = {"observation": {"loinc": "2345-7", "comparator": ">", "value": 1.26, "unit": "g/L"}}
    assert holds(glucose, facts_of(observation_event("g", 7.1, loinc="2345-7", unit="mmol/L")))
    assert not holds(glucose, facts_of(observation_event("g", 6.9, loinc="2345-7", unit="mmol/L")))


def test_a_result_left_in_another_unit_is_converted_to_compare() -> None:
    """A result the pipeline did not convert (mmol/mol under an HbA1c code) is converted to compare."""
    facts = facts_of(observation_event("o", 75, unit="mmol/mol"))
    assert holds(HBA1C_OVER_8, facts)
    unknown = facts_of(observation_event("o", 75, unit="furlongs"))
    assert not holds(HBA1C_OVER_8, unknown)


def test_several_loinc_codes_are_one_analyte() -> None:
    """A criterion listing the IFCC code reads HbA1c results under it too."""
    facts = facts_of(observation_event("o", 9.2, loinc="59261-8"))
    assert not holds(HBA1C_OVER_8, facts)
    both = {"observation": {**HBA1C_OVER_8["observation"], "loinc": ["4548-4", "59261-8"]}}
    assert holds(both, facts)


@pytest.mark.parametrize(
    ("lookback", "age", "expected"),
    [
        ("P6M", timedelta(0), True),
        ("P6M", NOW - datetime(2024, 12, 15, 12, 0, tzinfo=UTC), True),
        ("P6M", NOW - datetime(2024, 12, 15, 11, 59, 59, tzinfo=UTC), False),
        ("P30D", timedelta(days=30), True),
        ("P30D", timedelta(days=30, seconds=1), False),
        (30, timedelta(days=30), True),
        (30, timedelta(days=31), False),
        ("P1Y", timedelta(days=365), True),
        ("P1Y", timedelta(days=366), False),
        ("P2W", timedelta(days=14), True),
        ("P2W", timedelta(days=15), False),
    ],
)
def test_lookback_windows_just_inside_and_outside(
    lookback: str | int, age: timedelta, expected: bool
) -> None:
    """A result at the window's first instant is in; one second (or day) earlier is out."""
    criterion = {
        "observation": {"loinc": "4548-4", "comparator": ">", "value": 8, "unit": "%", "lookback": lookback}
    }
    assert holds(criterion, facts_of(observation_event("o", 9.0, at=NOW - age))) is expected


def window_start(duration: str, now: datetime) -> datetime:
    lookback = Lookback.parse(duration)
    assert lookback is not None
    return lookback.start(now)


def test_a_month_back_from_the_31st_is_the_end_of_the_shorter_month() -> None:
    """P1M from 31 March is 28 February (29 in a leap year): calendar months, clamped."""
    assert window_start("P1M", datetime(2025, 3, 31, tzinfo=UTC)) == datetime(2025, 2, 28, tzinfo=UTC)
    assert window_start("P1M", datetime(2024, 3, 31, tzinfo=UTC)) == datetime(2024, 2, 29, tzinfo=UTC)
    assert window_start("P1Y2M3D", datetime(2025, 1, 10, tzinfo=UTC)) == datetime(2023, 11, 7, tzinfo=UTC)
    assert Lookback.parse("P") is None and Lookback.parse("P0D") is None and Lookback.parse(0) is None


def test_any_result_in_the_window_or_the_latest_only() -> None:
    """match any (default): one high result in the window is enough; match latest: the latest decides."""
    facts = facts_of(
        observation_event("high", 9.0, at=NOW - timedelta(days=100)),
        observation_event("low", 7.0, at=NOW - timedelta(days=10)),
    )
    assert holds(HBA1C_OVER_8, facts)
    latest = {"observation": {**HBA1C_OVER_8["observation"], "match": "latest"}}
    assert not holds(latest, facts)
    match = parse_criterion(HBA1C_OVER_8, where="t").evaluate(facts, Context(NOW, GUADELOUPE))
    assert match.reasons[0].event_ids == (event_id("high"),)


# -- age and residence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "criterion", "expected"),
    [
        ("1950-06-15", {"min": 75}, True),  # 75th birthday today
        ("1950-06-16", {"min": 75}, False),  # tomorrow
        ("1950-06-16", {"max": 74}, True),
        ("1950-06-15", {"max": 74}, False),
        ("1950-06-15", {"min": 75, "max": 75}, True),
        ("1949-06-16", {"max": 75}, True),  # 76 tomorrow
        ("1949-06-15", {"max": 75}, False),
        ("1949", {"min": 75}, True),  # 75 or 76 today
        ("1950", {"min": 75}, False),  # 74 or 75 today: not certain
        ("1950-05", {"min": 75}, True),
        ("1950-06", {"min": 75}, False),
        ("1950-06", {"max": 75}, True),
        ("not-a-date", {"min": 0}, False),
    ],
)
def test_age_boundaries(birth: str, criterion: dict[str, int], expected: bool) -> None:
    """Whole years on the day of evaluation, bounds included; a partial date must hold for every day."""
    assert holds({"age": criterion}, facts_of(patient_event(birth=birth))) is expected


def test_a_29_february_birthday_comes_on_1_march() -> None:
    """Born 29 Feb 1948: 77 on 1 March 2025, not on 28 February."""
    facts = facts_of(patient_event(birth="1948-02-29"))
    assert not holds({"age": {"min": 77}}, facts, now=datetime(2025, 2, 28, 12, tzinfo=UTC))
    assert holds({"age": {"min": 77}}, facts, now=datetime(2025, 3, 1, 12, tzinfo=UTC))


def test_no_birth_date_no_age() -> None:
    """Without a birth date an age criterion does not hold (nor does its max)."""
    assert not holds({"age": {"max": 120}}, facts_of(patient_event(birth=None)))


@pytest.mark.parametrize(
    ("territory", "postal", "insee", "expected"),
    [
        ({"departments": ["971"]}, "97110", None, True),
        ({"departments": ["971"]}, None, "97120", True),
        ({"departments": ["971"]}, "97200", "97209", False),  # Martinique
        ({"departments": ["69"]}, "69008", "69388", True),
        ({"departments": ["69"]}, "75014", "75114", False),
        ({"postal_codes": ["69008", "69003"]}, "69008", None, True),
        ({"postal_codes": ["69008"]}, "69007", "69387", False),
        ({"insee_codes": ["69387"]}, "69007", "69387", True),
        ({"insee_codes": ["69387"]}, None, "69388", False),
        ({"departments": ["2A"]}, "20000", None, True),
        ({"departments": ["2B"]}, None, "2B033", True),
    ],
)
def test_residence_by_postal_insee_or_department(
    territory: dict[str, list[str]], postal: str | None, insee: str | None, expected: bool
) -> None:
    """An address is in a territory by postal code, INSEE code, or the département of either."""
    facts = facts_of(patient_event(postal=postal, insee=insee))
    assert holds({"residence": {"territory": territory}}, facts) is expected


def test_residence_defaults_to_the_network_territory_and_reads_home_addresses_only() -> None:
    """residence {} reads the network's territory; a work or old address is not where one lives."""
    assert holds({"residence": {}}, facts_of(patient_event()))
    assert not holds({"residence": {}}, facts_of(patient_event(use="work")))
    assert not holds({"residence": {}}, facts_of(patient_event(postal=None, insee=None)))


def test_the_latest_patient_resource_gives_the_address() -> None:
    """A patient who moved to Lyon is no longer in Guadeloupe."""
    moved = patient_event("p2", postal="69008", insee="69388", at=NOW - timedelta(days=5))
    assert not holds({"residence": {}}, facts_of(patient_event(), moved))
    assert holds({"residence": {}}, facts_of(moved, patient_event("p3", at=NOW - timedelta(days=1))))


def test_departments_of_codes() -> None:
    """Overseas départements have three digits, Corsica 2A/2B."""
    assert [department_of(c) for c in ("97110", "97120", "69008", "20167", "20200", "2A004", "98800")] == [
        "971",
        "971",
        "69",
        "2A",
        "2B",
        "2A",
        "988",
    ]
    assert Territory(postal_codes=frozenset({"69003"})).contains(Address("69003", None))


# -- encounters -------------------------------------------------------------------------------------


DISCHARGED_30_DAYS = {"encounter": {"class": "IMP", "discharged": True, "lookback": "P30D"}}


def test_a_recent_discharge_holds_just_inside_the_window() -> None:
    """A discharge exactly 30 days ago is in; 30 days and a second ago is out."""
    assert holds(DISCHARGED_30_DAYS, facts_of(encounter_event("e", end=NOW - timedelta(days=30))))
    assert not holds(
        DISCHARGED_30_DAYS, facts_of(encounter_event("e", end=NOW - timedelta(days=30, seconds=1)))
    )


def test_an_ongoing_stay_or_another_class_is_not_a_discharge() -> None:
    """An admission still open, or an emergency visit, is not an inpatient discharge."""
    assert not holds(DISCHARGED_30_DAYS, facts_of(encounter_event("e", status="in-progress", end=None)))
    assert not holds(DISCHARGED_30_DAYS, facts_of(encounter_event("e", cls="EMER")))
    assert holds(
        {"encounter": {"class": ["IMP", "EMER"], "discharged": True}},
        facts_of(encounter_event("e", cls="EMER")),
    )


def test_encounters_by_class_and_service_type() -> None:
    """Without discharged any encounter that happened counts (not a planned one); service types filter."""
    facts = facts_of(encounter_event("e", cls="AMB", status="in-progress", end=None, service="394802001"))
    assert holds({"encounter": {"class": "AMB"}}, facts)
    service = {"system": SNOMED, "codes": ["394802001"]}
    assert holds({"encounter": {"class": "AMB", "service_type": service}}, facts)
    other = {"system": SNOMED, "codes": ["394579002"]}
    assert not holds({"encounter": {"class": "AMB", "service_type": other}}, facts)
    planned = facts_of(encounter_event("p", cls="AMB", status="planned", end=None))
    assert not holds({"encounter": {"class": "AMB"}}, planned)


# -- findings --------------------------------------------------------------------------------------


DIABETES_NETWORK = {"all": [DIABETES, HBA1C_OVER_8]}


def test_eligible_in_territory_with_reasons() -> None:
    """Criteria met and a home in the territory: eligible, with each leaf and the residence as reasons."""
    facts = facts_of(patient_event(), condition_event("c", "E11.9"), observation_event("o", 8.6))
    finding = evaluate(network(DIABETES_NETWORK), facts, now=NOW)
    assert finding is not None and finding.status == "eligible" and finding.key == "diab-test|eligible"
    assert [(r.criterion, r.event_ids) for r in finding.reasons] == [
        ("Active condition: ICD-10 E10-E14", (event_id("c"),)),
        ("Result of LOINC 4548-4 > 8 % within 6 months", (event_id("o"),)),
        ("Lives in département 971", (event_id("patient"),)),
    ]


def test_out_of_territory_no_finding() -> None:
    """The same patient living in Lyon gets nothing from a Guadeloupe network; nor without address."""
    clinical = (condition_event("c", "E11.9"), observation_event("o", 8.6))
    lyon = facts_of(patient_event(postal="69008", insee="69388"), *clinical)
    assert evaluate(network(DIABETES_NETWORK), lyon, now=NOW) is None
    nowhere = facts_of(patient_event(postal=None, insee=None), *clinical)
    assert evaluate(network(DIABETES_NETWORK), nowhere, now=NOW) is None


def test_criteria_not_met_no_finding() -> None:
    """A controlled diabetic (HbA1c 7.2 %) is not eligible."""
    facts = facts_of(patient_event(), condition_event("c", "E11.9"), observation_event("o", 7.2))
    assert evaluate(network(DIABETES_NETWORK), facts, now=NOW) is None


def test_enrolled_wins_over_eligible_and_territory() -> None:
    """An active episode managed by the network makes the patient enrolled, even if eligible or away."""
    facts = facts_of(
        patient_event(postal="69008", insee="69388"),
        condition_event("c", "E11.9"),
        observation_event("o", 9.1),
        episode_event("ep", "diab-test"),
    )
    finding = evaluate(network(DIABETES_NETWORK), facts, now=NOW)
    assert finding is not None and finding.status == "enrolled"
    assert [r.event_ids for r in finding.reasons] == [(event_id("ep"),)]


def test_a_finished_episode_or_another_network_is_not_enrolment() -> None:
    """A closed episode, or one managed by another network, does not make the patient enrolled."""
    base = (patient_event(), condition_event("c", "E11.9"), observation_event("o", 9.1))
    closed = facts_of(
        *base, episode_event("ep", "diab-test"), episode_event("ep2", "diab-test", status="finished")
    )
    finding = evaluate(network(DIABETES_NETWORK), closed, now=NOW)
    assert finding is not None and finding.status == "eligible"
    elsewhere = facts_of(*base, episode_event("ep", "onco-guadeloupe"))
    finding = evaluate(network(DIABETES_NETWORK), elsewhere, now=NOW)
    assert finding is not None and finding.status == "eligible"


def test_new_findings_skip_what_was_already_alerted() -> None:
    """A finding whose key is already alerted is not new; a change of status is."""
    facts = facts_of(patient_event(), condition_event("c", "E11.9"), observation_event("o", 9.1))
    networks = [
        network(DIABETES_NETWORK),
        network({"condition": {"system": ICD10, "ranges": ["C00-C97"]}}, id="onco-x"),
    ]
    [found] = new_findings(networks, facts, set(), now=NOW)
    assert found.key == "diab-test|eligible"
    assert new_findings(networks, facts, {"diab-test|eligible"}, now=NOW) == []
    enrolled = apply_event(facts, episode_event("ep", "diab-test"))
    assert [f.key for f in new_findings(networks, enrolled, {"diab-test|eligible"}, now=NOW)] == [
        "diab-test|enrolled"
    ]


def test_evaluate_needs_an_aware_instant() -> None:
    """A naive now is a bug in the caller."""
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(network(DIABETES_NETWORK), PatientFacts.empty(PATIENT), now=NOW.replace(tzinfo=None))


# -- the demo feed ---------------------------------------------------------------------------------


def demo_pathway(now: datetime) -> Iterator[dict[str, Any]]:
    """The demo feed through the real ingest pipeline (with the demo ConceptMaps) and identity stage."""
    secret = b"unit-test-demo-secret-0123456789"
    sources = {
        s.id: Source(
            id=s.id,
            kind=s.kind,
            organization_system=s.organization_identifier["system"],
            organization_value=s.organization_identifier["value"],
            time_zone=ZoneInfo(s.time_zone),
            patient_identifier_systems=(s.patient_identifier_system,),
            default_fhir_version=s.fhir_version,
            secrets=(secret,),
        )
        for s in DEMO_SOURCES
    }
    maps = ROOT / "config" / "conceptmaps"
    context = IngestContext(
        registry=SourceRegistry(sources),
        pseudonym_key=b"unit-test-pseudonym-key-0123456789abcdef",
        allow_test_ins=True,
        code_mappers={s.id: load_concept_maps([maps / f"{s.id}.conceptmap.json"]) for s in DEMO_SOURCES},
    )
    stage = IdentityStage({}, {}, {})
    for offset, message in enumerate(generate_feed(patients=60, seed=7, now=now)):
        body, origin = message.body(), KafkaCoordinates("hub.ingest.v1", 0, offset)
        headers = (
            ("hub-source", message.source_id.encode()),
            ("hub-signature", sign(secret, message.source_id, body, int(now.timestamp())).encode()),
            ("content-type", message.content_type.encode()),
        )
        outcome = process_ingest(IngestRecord(body, headers, origin, now), context, now=now)
        assert isinstance(outcome, Accepted), outcome
        records = [link_record(outcome.link, outcome, origin, now)] if outcome.link else []
        records += [input_record(outcome, origin, now)] if outcome.events else []
        while records:
            for send in stage.handle(records.pop(0)):
                if send.topic == "pathway":
                    yield send.value
                elif send.topic == "identity":
                    records.append(send.value)


def test_the_demo_feed_makes_diabetes_and_oncology_findings() -> None:
    """60 demo patients through ingest and identity: some are eligible for the diabetes and the oncology
    networks of Guadeloupe, and every finding's reasons cite events of that patient's pathway."""
    facts: dict[str, PatientFacts] = {}
    seen: dict[str, set[str]] = {}
    for item in demo_pathway(NOW):
        patient_id = item["patient_id"]
        current = facts.get(patient_id) or PatientFacts.empty(patient_id)
        for replaced in replaced_patient_ids(item):
            if replaced in facts:
                current = current.merged_with(facts.pop(replaced))
                seen.setdefault(patient_id, set()).update(seen.pop(replaced, set()))
        facts[patient_id] = apply_event(current, item)
        seen.setdefault(patient_id, set()).add(item["event_id"])
    registry = load_networks(ROOT / "config" / "networks")
    counts: Counter[str] = Counter()
    for patient_id, patient_facts in facts.items():
        assert PatientFacts.from_json(json.dumps(patient_facts.to_json())) == patient_facts
        for finding in new_findings(registry, patient_facts, set(), now=NOW):
            counts[finding.network_id] += 1
            assert {e for r in finding.reasons for e in r.event_ids} <= seen[patient_id]
    assert counts["diabete-guadeloupe"] > 0
    assert counts["onco-guadeloupe"] > 0
