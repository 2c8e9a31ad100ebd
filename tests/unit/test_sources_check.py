"""``hub sources check``'s pure part (hub/ops/sources_check.py): sample files through the real ingest core,
signed with the registry's secret and split as ``hub publish`` would, read back into a report."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ConfigError, WarningCode
from hub.ingest.outcome import IngestRecord, KafkaCoordinates, Rejected
from hub.ingest.pipeline import IngestContext, process_ingest
from hub.normalise.codes import load_concept_maps
from hub.ops.sources_check import Count, FileReport, PartReport, check_files, totals
from hub.pathway.network_id import INS_TEST_NIR, NETWORK_ID_SYSTEM, PatientKey
from hub.publish import publications_for_file
from hub.sources.registry import Source

Loader = Callable[[str], dict[str, Any]]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GP_MAP = FIXTURES / "conceptmaps" / "test-gp.conceptmap.json"
GP_CONDITION = "urn:test:gp:condition"
PSEUDONYM_KEY = b"unit-test-pseudonym-key-0123456789abcdef"
TEST_INS = "248039263001064"
LIMIT = 1024 * 1024


@pytest.fixture
def check(context: IngestContext, gp: Source, now: datetime) -> Callable[..., list[FileReport]]:
    """check_files as the GP source, at the tests' clock, with the hub's default size limit."""

    def run(*paths: Path, **options: Any) -> list[FileReport]:
        arguments: dict[str, Any] = {
            "source_id": gp.id,
            "context": context,
            "max_bytes": LIMIT,
            "now": now,
        } | options
        return check_files(list(paths), **arguments)

    return run


def write(folder: Path, name: str, document: dict[str, Any] | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(document if isinstance(document, bytes) else json.dumps(document, indent=2).encode())
    return path


def only_part(reports: list[FileReport]) -> PartReport:
    assert len(reports) == 1
    assert len(reports[0].parts) == 1
    return reports[0].parts[0]


def observation(local_id: str, **fields: Any) -> dict[str, Any]:
    """A glucose Observation about one of the GP's local patients, in g/L as French labs write it."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.7.9999", "value": local_id}},
        "effectiveDateTime": "2024-05-02T08:15:00-04:00",
        "valueQuantity": {"value": 1.26, "unit": "g/L"},
    } | fields


def condition(local_id: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "subject": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.7.9999", "value": local_id}},
        "code": {"coding": [{"system": GP_CONDITION, "code": code}]},
        "recordedDate": "2024-05-02",
    }


def collection(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def network_id(basis: str, namespace: str, value: str) -> str:
    return PatientKey(basis, namespace, value).network_id(PSEUDONYM_KEY)  # type: ignore[arg-type]


# --- outcomes ------------------------------------------------------------------------------------------


def test_an_accepted_file_reports_its_events_identity_and_unit_conversion(
    check: Callable[..., list[FileReport]], gp: Source, tmp_path: Path
) -> None:
    """A valid Observation is accepted: one event (kind, type, UTC time), the local basis, g/L→mmol/L."""
    part = only_part(check(write(tmp_path, "glucose.json", observation("IPP-1"))))
    assert (part.status, part.code, part.detail, part.read_as) == ("accepted", None, None, "json/fhir-4.0")
    [event] = part.events
    assert (event.kind, event.resource_type, event.occurred_at) == (
        "observation",
        "Observation",
        "2024-05-02T12:15:00.000Z",
    )
    assert event.occurred_at_from_resource
    assert event.resource["valueQuantity"]["code"] == "mmol/L"
    assert event.resource["subject"]["identifier"]["system"] == NETWORK_ID_SYSTEM
    assert part.identity is not None
    assert (part.identity.basis, part.identity.patient_id) == ("local", network_id("local", gp.id, "IPP-1"))
    assert part.units == (Count("unit:2345-7:g/L->mmol/L", 1),)
    assert part.unit_conversions == 1
    assert not part.rejected


def test_a_rejected_file_reports_its_code_and_detail(
    check: Callable[..., list[FileReport]], tmp_path: Path
) -> None:
    """An Observation whose status is outside its required value set is ``fhir.invalid``, with the field."""
    reports = check(write(tmp_path, "bad.json", observation("IPP-1", status="done")))
    part = only_part(reports)
    assert (part.status, part.code) == ("rejected", "fhir.invalid")
    assert part.detail is not None
    assert "status" in part.detail
    assert part.events == ()
    assert reports[0].rejected
    assert not totals(reports).ok


def test_the_signature_is_made_with_the_registry_secret_so_it_never_rejects(
    check: Callable[..., list[FileReport]], fhir: Loader, tmp_path: Path, now: datetime
) -> None:
    """Whatever the clock, the check signs at ``now`` with the source's own key: no ``signature.*``."""
    path = write(tmp_path, "obs.json", fhir("observation-hba1c.json"))
    for moment in (now, now - timedelta(days=400)):
        part = only_part(check(path, now=moment))
        assert part.status == "accepted", part.detail


def test_unknown_source_is_a_configuration_error(
    context: IngestContext, tmp_path: Path, now: datetime
) -> None:
    """A source id the registry does not hold raises ConfigError naming the registered ones."""
    with pytest.raises(ConfigError, match="not registered") as raised:
        check_files([tmp_path], source_id="gp-nobody", context=context, max_bytes=LIMIT, now=now)
    assert raised.value.hint is not None
    assert "gp-cabinet-lamentin" in raised.value.hint


def test_folders_are_read_like_hub_publish_does(
    check: Callable[..., list[FileReport]], tmp_path: Path, fixture_bytes: Callable[[str], bytes]
) -> None:
    """A folder gives its .json and .xml files, recursively and sorted; other files are left out."""
    write(tmp_path, "b/obs.json", observation("IPP-1"))
    write(tmp_path, "a/patient.xml", fixture_bytes("patient-ins-vali.xml"))
    write(tmp_path, "notes.txt", b"not FHIR")
    reports = check(tmp_path)
    assert [report.path.relative_to(tmp_path).as_posix() for report in reports] == [
        "a/patient.xml",
        "b/obs.json",
    ]


# --- formats, versions and sizes -----------------------------------------------------------------------


def test_xml_is_sent_as_fhir_xml(
    check: Callable[..., list[FileReport]], tmp_path: Path, fixture_bytes: Callable[[str], bytes]
) -> None:
    """A .xml file is sent with the FHIR XML content type and read as XML."""
    part = only_part(check(write(tmp_path, "patient.xml", fixture_bytes("patient-ins-vali.xml"))))
    assert part.content_type == "application/fhir+xml"
    assert (part.status, part.read_as) == ("accepted", "xml/fhir-4.0")
    assert [event.kind for event in part.events] == ["patient"]


def test_fhir_version_option_converts_stu3_and_summarises_the_rules(
    check: Callable[..., list[FileReport]], tmp_path: Path
) -> None:
    """``fhir_version="3.0"`` reads an STU3 Bundle: conversion rules counted without entry positions."""
    stu3 = (FIXTURES / "fhir-versions" / "stu3" / "bundle-transaction.json").read_bytes()
    part = only_part(check(write(tmp_path, "stu3.json", stu3), fhir_version="3.0"))
    assert part.content_type == "application/fhir+json; fhirVersion=3.0"
    assert (part.status, part.read_as, part.converted) == ("accepted", "json/fhir-3.0", True)
    rules = [count.item for count in part.conversions]
    assert "ProcedureRequest → ServiceRequest (STU3 map)" in rules
    assert not any(rule.startswith("entry[") for rule in rules)
    assert all(count.count >= 1 for count in part.conversions)
    # Without the option the source's default (R4) applies, and the STU3 body is refused as R4.
    assert only_part(check(tmp_path / "stu3.json")).code == "fhir.invalid"


def test_a_bundle_over_the_limit_is_split_exactly_as_hub_publish_splits_it(
    check: Callable[..., list[FileReport]], gp: Source, fhir: Loader, tmp_path: Path
) -> None:
    """Parts as publications_for_file makes them; each repeats the Patient, whose event is then a repeat."""
    patient = fhir("patient-ins-vali.json")
    observations = [
        observation("IPP-004217", effectiveDateTime=f"2024-05-{day:02d}T08:15:00-04:00")
        for day in range(1, 21)
    ]
    path = write(tmp_path, "big.json", collection(patient, *observations))
    max_bytes = 4096 + len(json.dumps(patient)) + 2000
    expected = publications_for_file(path, source_id=gp.id, secret=b"x" * 32, max_bytes=max_bytes)
    assert len(expected) > 1
    [report] = check(path, max_bytes=max_bytes)
    assert [part.label for part in report.parts] == [publication.label for publication in expected]
    assert [part.size for part in report.parts] == [len(publication.value) for publication in expected]
    assert all(part.status == "accepted" for part in report.parts)
    assert report.events == 20 + len(report.parts)  # each part's Patient makes an event...
    first, *rest = report.parts
    assert all(event.repeat_of is None for event in first.events)
    for part in rest:  # ...which is the same event as the first part's: the hub publishes it once
        assert [event.repeat_of for event in part.events if event.kind == "patient"] == [first.label]
    assert totals([report]).repeats == len(rest)


def test_a_body_over_the_limit_that_cannot_be_split_is_payload_too_large(
    check: Callable[..., list[FileReport]], context: IngestContext, tmp_path: Path
) -> None:
    """A single resource over the limit is sent whole, as hub publish sends it, and rejected by the hub's
    own limit (the context's; ``max_bytes`` is where the sender splits)."""
    big = observation("IPP-1", note=[{"text": "x" * 3000}])
    small = dataclasses.replace(context, max_payload_bytes=2048)
    part = only_part(check(write(tmp_path, "big.json", big), max_bytes=2048, context=small))
    assert (part.status, part.code) == ("rejected", "payload.too_large")


# --- what normalisation did ----------------------------------------------------------------------------


def test_naive_times_are_reported_once_per_event(
    check: Callable[..., list[FileReport]], tmp_path: Path
) -> None:
    """Naive times (read in the source's zone, America/Guadeloupe) show as a naive-time step per event."""
    bundle = collection(
        observation("IPP-1", effectiveDateTime="2024-05-02T08:15:00"),
        observation("IPP-1", effectiveDateTime="2024-05-03T08:15:00"),
    )
    part = only_part(check(write(tmp_path, "naive.json", bundle)))
    assert part.instants == (Count("naive-time-read-in:America/Guadeloupe", 2),)
    assert part.events_with_naive_times == 2
    assert [event.occurred_at for event in part.events] == [
        "2024-05-02T12:15:00.000Z",
        "2024-05-03T12:15:00.000Z",
    ]
    assert part.warnings == ()


def test_unknown_units_and_unreadable_instants_are_warnings(
    check: Callable[..., list[FileReport]], tmp_path: Path
) -> None:
    """A unit the hub cannot convert, and an instant before year 1 in UTC, pass as sent with a step and
    the receipt's warning (which names neither the unit nor the value)."""
    odd_unit = observation("IPP-1", valueQuantity={"value": 7, "unit": "mmol/dL"})
    year_one = observation("IPP-1", effectiveDateTime="0001-01-01T00:30:00+14:00")
    [unit_part] = check(write(tmp_path, "unit.json", odd_unit))[0].parts
    [instant_part] = check(write(tmp_path, "year-one.json", year_one))[0].parts
    assert unit_part.units == (Count("unit-unknown:2345-7:mmol/dL", 1),)
    assert unit_part.unit_conversions == 0
    assert instant_part.instants == (Count("instant-unreadable:effectiveDateTime", 1),)
    assert not instant_part.events[0].occurred_at_from_resource
    assert [(w.code, w.detail) for w in (*unit_part.warnings, *instant_part.warnings)] == [
        (
            WarningCode.UNIT_UNKNOWN,
            "Observation: 1 quantity in a unit the hub cannot convert to its canonical unit; "
            "passed on as sent",
        ),
        (
            WarningCode.INSTANT_UNREADABLE,
            "Observation.effectiveDateTime: 1 value not readable as a date-time; passed on as sent",
        ),
    ]
    assert totals(check(tmp_path)).warnings == 2


def test_unmapped_codes_are_counted_and_mapped_ones_listed(
    check: Callable[..., list[FileReport]], context: IngestContext, gp: Source, tmp_path: Path
) -> None:
    """With the GP's ConceptMap, DT2 gains ICD-10; an unknown local code is counted per occurrence."""
    mapped = dataclasses.replace(context, code_mappers={gp.id: load_concept_maps([GP_MAP])})
    bundle = collection(condition("IPP-1", "DT2"), condition("IPP-1", "NOPE"), condition("IPP-1", "NOPE"))
    bundle["entry"][2]["resource"]["recordedDate"] = "2024-05-03"  # another fact, same code
    reports = check(write(tmp_path, "conditions.json", bundle), context=mapped)
    part = only_part(reports)
    assert part.unmapped == (Count(f"{GP_CONDITION}|NOPE", 2),)
    assert part.mapped == (
        Count(f"{GP_CONDITION}|DT2->http://hl7.org/fhir/sid/icd-10|E11.9", 1),
        Count(f"{GP_CONDITION}|DT2->http://snomed.info/sct|44054006", 1),
    )
    summary = totals(reports)
    assert (summary.unmapped, summary.unmapped_distinct) == (2, 1)


# --- identity ------------------------------------------------------------------------------------------


def test_identity_links_routes_and_conflicts_across_the_files_of_one_check(
    check: Callable[..., list[FileReport]], gp: Source, fhir: Loader, tmp_path: Path
) -> None:
    """Local id + qualified INS links; a later local-only input is routed to the INS id (events and ids
    made again under it); a later, different INS for the same local id is a conflict (the first wins)."""
    write(tmp_path, "1-patient.json", fhir("patient-ins-vali.json"))
    write(tmp_path, "2-glucose.json", observation("IPP-004217"))
    other = fhir("patient-ins-vali.json")
    other["identifier"][0]["value"] = "185057800608436"
    write(tmp_path, "3-other-ins.json", other)
    first, second, third = (report.parts[0] for report in check(tmp_path))
    local_id = network_id("local", gp.id, "IPP-004217")
    ins_id = network_id("ins", INS_TEST_NIR, TEST_INS)
    assert first.identity is not None
    assert (first.identity.basis, first.identity.patient_id, first.identity.links_local_id) == (
        "ins",
        ins_id,
        local_id,
    )
    assert second.identity is not None
    assert (second.identity.basis, second.identity.patient_id) == ("local", local_id)
    assert (second.identity.routed_to, second.identity.linked_by) == (ins_id, "1-patient.json")
    assert second.events[0].resource["subject"]["reference"] == f"Patient/{ins_id}"
    assert third.identity is not None
    assert (third.identity.conflicts_with, third.identity.linked_by) == (ins_id, "1-patient.json")
    assert (first.identity.links, third.identity.links) == (True, False)
    summary = totals(check(tmp_path))
    assert (summary.links, summary.conflicts) == (1, 1)


def test_the_same_body_twice_is_a_resend(check: Callable[..., list[FileReport]], tmp_path: Path) -> None:
    """Two files with the same bytes have one message id: the hub answers the second ``duplicate``."""
    first = write(tmp_path, "a.json", observation("IPP-1"))
    second = write(tmp_path, "b.json", first.read_bytes())
    reports = check(first, second)
    assert reports[0].parts[0].resend_of is None
    assert reports[1].parts[0].resend_of == "a.json"
    assert reports[1].parts[0].events[0].repeat_of == "a.json"


def test_reference_data_is_accepted_without_events_or_patient(
    check: Callable[..., list[FileReport]], tmp_path: Path
) -> None:
    """An Organization is about no patient: accepted, no event, no identity (how it was read is known)."""
    organization = {"resourceType": "Organization", "name": "Cabinet"}
    part = only_part(check(write(tmp_path, "org.json", organization)))
    assert (part.status, part.events, part.identity, part.read_as) == ("accepted", (), None, "json/fhir-4.0")


def test_totals_add_up(check: Callable[..., list[FileReport]], tmp_path: Path) -> None:
    """The summary counts files, records, outcomes, events and conversions over everything checked."""
    write(tmp_path, "1.json", observation("IPP-1"))
    write(tmp_path, "2.json", observation("IPP-1", status="done"))
    write(tmp_path, "3.json", observation("IPP-2", effectiveDateTime="2024-05-02T08:15:00"))
    summary = totals(check(tmp_path))
    assert (summary.files, summary.parts, summary.accepted, summary.rejected) == (3, 3, 2, 1)
    assert (summary.events, summary.unit_conversions, summary.naive_time_events) == (2, 2, 1)
    assert (summary.converted_parts, summary.links, summary.conflicts, summary.ok) == (0, 0, 0, False)


# --- the documented decisions on bad input (docs/NORMALISATION.md), as the check reports them ----------


@pytest.mark.parametrize(
    ("changes", "code", "step"),
    [
        ({"subject": {"reference": "#p1"}, "contained": [{"resourceType": "Patient", "id": "p1"}]},
         "patient.unresolved", None),
        ({"subject": {"reference": "Group/12"}}, "patient.unresolved", None),
        ({"subject": {"reference": "Patient/IPP-1",
                      "identifier": {"system": "urn:oid:1.2.250.1.71.4.2.7.9999", "value": "IPP-2"}}},
         "patient.ambiguous", None),
        ({"valueQuantity": {"value": 7, "unit": "mmol/dL"}}, None, "unit-unknown:2345-7:mmol/dL"),
        ({"effectiveDateTime": "2025-02-30T08:15:00-04:00"}, "fhir.invalid", None),
        ({"effectiveDateTime": "2025-02-30T08:15:00"}, "fhir.invalid", None),
        ({"effectiveDateTime": "0001-01-01T00:30:00+14:00"}, None, "instant-unreadable:effectiveDateTime"),
    ],
    ids=[
        "contained patient",
        "not a patient",
        "reference and identifier disagree",
        "unknown unit",
        "impossible date",
        "impossible naive date",
        "instant before year 1 in UTC",
    ],
)  # fmt: skip
def test_bad_input_is_rejected_with_a_code_or_passed_with_a_step(
    check: Callable[..., list[FileReport]],
    tmp_path: Path,
    changes: dict[str, Any],
    code: str | None,
    step: str | None,
) -> None:
    """Each bad-input case has one documented outcome: a reject code, or the value as sent and a step."""
    part = only_part(check(write(tmp_path, "case.json", observation("IPP-1", **changes))))
    assert part.code == code, part.detail
    if step is not None:
        assert step in [count.item for count in (*part.units, *part.instants)]
        assert len(part.warnings) == 1


def test_another_servers_patient_is_read_as_a_local_id(
    check: Callable[..., list[FileReport]], gp: Source, tmp_path: Path
) -> None:
    """A reference to a Patient on another server names the source's own local id: no lookup, no link."""
    reference = {"reference": "https://ehr.example/fhir/Patient/4711"}
    part = only_part(check(write(tmp_path, "other.json", observation("IPP-1", subject=reference))))
    assert part.identity is not None
    assert (part.identity.basis, part.identity.patient_id) == ("local", network_id("local", gp.id, "4711"))


# --- warnings -------------------------------------------------------------------------------------------


def test_each_part_carries_the_warnings_its_receipt_would(
    check: Callable[..., list[FileReport]],
    context: IngestContext,
    fhir: Loader,
    tmp_path: Path,
    now: datetime,
) -> None:
    """A Patient with a provisional INS and an unmapped local code: the part lists exactly the warnings
    of the ingest outcome (what the receipt carries), and the totals count them; a reject has none."""
    gp = context.registry.sources["gp-cabinet-lamentin"]
    mapped = dataclasses.replace(context, code_mappers={gp.id: load_concept_maps([GP_MAP])})
    patient = fhir("patient-ins-vali.json")
    patient["extension"][0]["extension"][0]["valueCoding"]["code"] = "PROV"
    path = write(tmp_path, "1-visit.json", collection(patient, condition("IPP-004217", "NOPE")))
    write(tmp_path, "2-bad.json", observation("IPP-1", status="done"))
    good, bad = check(tmp_path, context=mapped)
    [part] = good.parts
    [publication] = publications_for_file(
        path, source_id=gp.id, secret=gp.secrets[0], max_bytes=LIMIT, now=int(now.timestamp())
    )
    record = IngestRecord(publication.value, publication.headers, KafkaCoordinates("t", 0, 0), now)
    outcome = process_ingest(record, mapped, now=now)
    assert not isinstance(outcome, Rejected)
    assert part.warnings == outcome.warnings
    assert [(str(w.code), w.detail) for w in part.warnings] == [
        (
            "ins.unqualified",
            "Patient.identifier: an INS is not used to link: "
            "the Patient has no FR Core identity reliability VALI",
        ),
        (
            "code.unmapped",
            f"Condition: 1 code of {GP_CONDITION}, not in this source's ConceptMaps for that system; "
            "kept as sent and marked unmapped",
        ),
    ]
    assert bad.parts[0].rejected and bad.parts[0].warnings == ()
    assert totals([good, bad]).warnings == 2


def test_each_file_names_the_elements_carried_as_extensions_and_dropped(
    check: Callable[..., list[FileReport]], tmp_path: Path
) -> None:
    """An R5 dispense: what R4 lacks is carried (``recorded``), what says nothing new is dropped (the
    rendering of the structured dosage), each named by element, without entry positions."""
    dispense = (FIXTURES / "fhir-versions" / "r5" / "medicationdispense.json").read_bytes()
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": json.loads(dispense)}]}
    part = only_part(check(write(tmp_path, "dispense.json", bundle), fhir_version="5.0"))
    assert part.status == "accepted"
    assert Count("MedicationDispense.recorded", 1) in part.carried
    assert Count("MedicationDispense.basedOn", 1) in part.carried
    assert Count("MedicationDispense.statusChanged (R5 date of the last status change)", 1) in part.dropped
    codes = {warning.code for warning in part.warnings}
    assert {WarningCode.ELEMENT_CARRIED, WarningCode.ELEMENT_DROPPED} <= codes


def test_reference_data_says_what_its_conversion_carried(
    check: Callable[..., list[FileReport]], tmp_path: Path
) -> None:
    """An R5 Device affixed to nobody makes no event, and its report still names what was carried."""
    device = (FIXTURES / "fhir-versions" / "r5" / "device.json").read_bytes()
    part = only_part(check(write(tmp_path, "device.json", device), fhir_version="5.0"))
    assert (part.status, part.events, part.read_as) == ("accepted", (), "json/fhir-5.0")
    assert Count("Device.displayName", 1) in part.carried
