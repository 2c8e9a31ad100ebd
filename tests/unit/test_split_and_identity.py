"""Bundle splitting, patient resolution and network patient ids (hub/ingest/split.py, hub/identity)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from hub.errors import ErrorCode
from hub.identity.network_id import (
    INS_NIR,
    INS_TEST_NIR,
    PatientKey,
    is_identity_validated,
    qualified_ins,
)
from hub.ingest.outcome import Rejected
from hub.ingest.split import Entry, split_entries
from hub.sources.registry import Source

Loader = Callable[[str], dict[str, Any]]

TEST_INS = "248039263001064"  # the fixtures' INS, in the test NIR system (.10)
PRODUCTION_INS = "185057800608436"
GP_LOCAL_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.9999"


def entries(resource: dict[str, Any], source: Source, *, allow_test_ins: bool = True) -> list[Entry]:
    result = split_entries(resource, source, allow_test_ins=allow_test_ins)
    assert not isinstance(result, Rejected), result
    return result


def reject(resource: dict[str, Any], source: Source, *, allow_test_ins: bool = True) -> Rejected:
    result = split_entries(resource, source, allow_test_ins=allow_test_ins)
    assert isinstance(result, Rejected), result
    return result


def collection(*resources: dict[str, Any], full_urls: tuple[str | None, ...] = ()) -> dict[str, Any]:
    entry: list[dict[str, Any]] = []
    for index, resource in enumerate(resources):
        item: dict[str, Any] = {"resource": resource}
        url = full_urls[index] if index < len(full_urls) else None
        if url:
            item["fullUrl"] = url
        entry.append(item)
    return {"resourceType": "Bundle", "type": "collection", "entry": entry}


def observation(subject: dict[str, Any] | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "valueQuantity": {"value": 7.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }
    if subject is not None:
        resource["subject"] = subject
    return resource


# --- a Patient's own identity ------------------------------------------------------------------------------


def test_qualified_ins_links_by_ins(fhir: Loader, gp: Source) -> None:
    """A Patient with an INS and FR Core identity reliability VALI is known by that INS."""
    [entry] = entries(fhir("patient-ins-vali.json"), gp)
    assert entry.patient == PatientKey("ins", INS_TEST_NIR, TEST_INS)
    assert entry.index is None


@pytest.mark.parametrize("reliability", ["PROV", "VIDE", "DOUTE", None])
def test_ins_without_vali_is_local(fhir: Loader, gp: Source, reliability: str | None) -> None:
    """Without VALI (provisional, empty, doubtful, absent) the INS may not link: the local IPP is used."""
    patient = fhir("patient-ins-vali.json")
    if reliability is None:
        del patient["extension"]
    else:
        patient["extension"][0]["extension"][0]["valueCoding"]["code"] = reliability
    assert not is_identity_validated(patient)
    [entry] = entries(patient, gp)
    assert entry.patient == PatientKey("local", gp.id, "IPP-004217")


def test_unqualified_patient_without_local_identifier_uses_its_id(fhir: Loader, gp: Source) -> None:
    """With no qualified INS and no identifier in the source's systems, the resource id names the patient."""
    patient = fhir("patient-ins-vali.json")
    del patient["extension"]
    patient["identifier"] = [i for i in patient["identifier"] if i["system"] != GP_LOCAL_SYSTEM]
    [entry] = entries(patient, gp)
    assert entry.patient == PatientKey("local", gp.id, "pat-dupont")


def test_patient_with_no_id_nor_identifier_is_unresolved(gp: Source) -> None:
    """A Patient that names nobody is ``patient.unresolved``."""
    result = reject({"resourceType": "Patient", "gender": "female"}, gp)
    assert result.code is ErrorCode.PATIENT_UNRESOLVED


def test_test_ins_refused_unless_allowed(fhir: Loader, gp: Source) -> None:
    """The test NIR system (.10) only links when allow_test_ins is set; otherwise the local IPP is used."""
    patient = fhir("patient-ins-vali.json")
    assert qualified_ins(patient, allow_test_ins=False) is None
    [refused] = entries(patient, gp, allow_test_ins=False)
    assert refused.patient == PatientKey("local", gp.id, "IPP-004217")
    [allowed] = entries(patient, gp, allow_test_ins=True)
    assert allowed.patient == PatientKey("ins", INS_TEST_NIR, TEST_INS)


def test_production_ins_links_without_test_flag(fhir: Loader, gp: Source) -> None:
    """A qualified NIR (.8) links even when test INS are refused."""
    patient = fhir("patient-ins-vali.json")
    patient["identifier"][0]["system"] = INS_NIR
    patient["identifier"][0]["value"] = PRODUCTION_INS
    [entry] = entries(patient, gp, allow_test_ins=False)
    assert entry.patient == PatientKey("ins", INS_NIR, PRODUCTION_INS)


# --- references to the patient ---------------------------------------------------------------------------


def test_reference_identifier_with_ins_links_by_ins(gp: Source) -> None:
    """``subject.identifier`` with an INS is a linking identity (a sender only transmits a qualified INS)."""
    subject = {"identifier": {"system": INS_NIR, "value": PRODUCTION_INS}}
    [entry] = entries(observation(subject), gp, allow_test_ins=False)
    assert entry.patient == PatientKey("ins", INS_NIR, PRODUCTION_INS)


def test_reference_identifier_with_test_ins_needs_the_flag(gp: Source) -> None:
    """A test INS in ``subject.identifier`` is unresolved when test INS are refused."""
    subject = {"identifier": {"system": INS_TEST_NIR, "value": TEST_INS}}
    assert reject(observation(subject), gp, allow_test_ins=False).code is ErrorCode.PATIENT_UNRESOLVED
    [entry] = entries(observation(subject), gp, allow_test_ins=True)
    assert entry.patient == PatientKey("ins", INS_TEST_NIR, TEST_INS)


def test_reference_identifier_in_source_system_is_local(gp: Source) -> None:
    """``subject.identifier`` in one of the source's patient systems is that source's local identifier."""
    [entry] = entries(observation({"identifier": {"system": GP_LOCAL_SYSTEM, "value": "IPP-004217"}}), gp)
    assert entry.patient == PatientKey("local", gp.id, "IPP-004217")


def test_literal_reference_resolved_through_the_bundle(fhir: Loader, gp: Source) -> None:
    """``Patient/<id>`` names the Bundle's Patient with that id, so it takes that Patient's INS."""
    bundle = collection(fhir("patient-ins-vali.json"), fhir("observation-hba1c.json"))
    patient, obs = entries(bundle, gp)
    assert obs.resource["subject"] == {"reference": "Patient/pat-dupont"}
    assert obs.patient == patient.patient == PatientKey("ins", INS_TEST_NIR, TEST_INS)
    assert (patient.index, obs.index) == (0, 1)


def test_urn_uuid_full_url_resolution(fhir: Loader, gp: Source) -> None:
    """In a transaction, ``urn:uuid:`` references resolve through ``fullUrl`` to the Patient entry."""
    split = entries(fhir("bundle-transaction.json"), gp)
    by_type = {entry.resource["resourceType"]: entry for entry in split}
    ins = PatientKey("ins", INS_TEST_NIR, TEST_INS)
    for resource_type in ("Patient", "Encounter", "Condition", "Observation"):
        assert by_type[resource_type].patient == ins, resource_type
    assert [entry.index for entry in split] == list(range(6))


def test_absolute_full_url_resolution(fhir: Loader, gp: Source) -> None:
    """An absolute ``fullUrl`` used as the reference resolves to that Patient entry."""
    url = "https://dpi.example.org/fhir/Patient/9f2c"
    patient = fhir("patient-ins-vali.json")
    del patient["id"]
    bundle = collection(patient, observation({"reference": url}), full_urls=(url, None))
    _, obs = entries(bundle, gp)
    assert obs.patient == PatientKey("ins", INS_TEST_NIR, TEST_INS)


def test_literal_reference_outside_a_bundle_is_local(fhir: Loader, gp: Source) -> None:
    """A single resource's ``Patient/<id>`` is the source's local patient with that id."""
    [entry] = entries(fhir("observation-hba1c.json"), gp)
    assert entry.patient == PatientKey("local", gp.id, "pat-dupont")


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/pat-dupont/_history/3",
        "https://dpi.example.org/fhir/Patient/pat-dupont",
        "Patient/pat-dupont/",
    ],
)
def test_reference_forms_of_the_same_patient(fhir: Loader, gp: Source, reference: str) -> None:
    """Version-specific, absolute and trailing-slash references name the same patient as ``Patient/<id>``."""
    [entry] = entries(observation({"reference": reference}), gp)
    assert entry.patient == PatientKey("local", gp.id, "pat-dupont")
    bundle = collection(fhir("patient-ins-vali.json"), observation({"reference": reference}))
    assert entries(bundle, gp)[1].patient == PatientKey("ins", INS_TEST_NIR, TEST_INS)


@pytest.mark.parametrize(
    "subject",
    [
        {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"},
        {"reference": "Group/diabetics"},
        {"reference": "Patient/"},
        {"reference": "#contained-patient"},
        {"identifier": {"system": "urn:oid:1.2.3.4", "value": "x"}},
        {"display": "Jeanne DUPONTEL"},
        None,
    ],
    ids=["unknown urn", "group", "no id", "contained", "foreign identifier", "display only", "absent"],
)
def test_unresolvable_subject_names_the_entry_index(
    fhir: Loader, gp: Source, subject: dict[str, Any] | None
) -> None:
    """An entry whose patient cannot be identified is ``patient.unresolved``; the detail names its index."""
    bundle = fhir("bundle-transaction.json")
    bundle["entry"].append({"resource": observation(subject)})
    result = reject(bundle, gp)
    assert result.code is ErrorCode.PATIENT_UNRESOLVED
    assert result.detail.startswith("entry 6: Observation.subject")
    assert "DUPONTEL" not in result.detail


def test_unresolvable_single_resource_has_no_entry_prefix(gp: Source) -> None:
    """For a single resource the detail names the element without an entry index."""
    result = reject(observation({"reference": "Group/diabetics"}), gp)
    assert result.detail.startswith("Observation.subject")


@pytest.mark.parametrize(
    ("resource_type", "field"),
    [
        ("Encounter", "subject"),
        ("EpisodeOfCare", "patient"),
        ("Immunization", "patient"),
        ("Coverage", "beneficiary"),
    ],
)
def test_patient_field_per_resource_type(gp: Source, resource_type: str, field: str) -> None:
    """Each patient-compartment type names its patient in its own element (subject, patient, beneficiary)."""
    [entry] = entries({"resourceType": resource_type, field: {"reference": "Patient/p9"}}, gp)
    assert entry.patient == PatientKey("local", gp.id, "p9")


def test_reference_data_makes_no_patient(fhir: Loader, gp: Source) -> None:
    """Organization and Practitioner are about no patient: they are kept, with no patient (so no event)."""
    split = entries(fhir("bundle-transaction.json"), gp)
    reference_data = [entry for entry in split if entry.patient is None]
    assert sorted(entry.resource["resourceType"] for entry in reference_data) == [
        "Organization",
        "Practitioner",
    ]


def test_delete_entries_carry_no_resource(fhir: Loader, gp: Source) -> None:
    """A transaction DELETE entry has no resource and is skipped; indexes still count it."""
    bundle = fhir("bundle-transaction.json")
    bundle["entry"].insert(0, {"request": {"method": "DELETE", "url": "Observation/old-1"}})
    split = entries(bundle, gp)
    assert len(split) == 6
    assert split[0].index == 1


def test_nested_bundle_is_fhir_invalid(fhir: Loader, gp: Source) -> None:
    """A Bundle inside a Bundle is ``fhir.invalid``: nested Bundles are sent alone."""
    bundle = fhir("bundle-transaction.json")
    bundle["entry"].append({"resource": {"resourceType": "Bundle", "type": "collection"}})
    result = reject(bundle, gp)
    assert result.code is ErrorCode.FHIR_INVALID
    assert "entry 6" in result.detail


@pytest.mark.parametrize(
    "bundle_type", ["searchset", "history", "transaction-response", "batch-response", None]
)
def test_non_ingestable_bundle_types(fhir: Loader, gp: Source, bundle_type: str | None) -> None:
    """Search results, histories and responses are not facts to ingest: ``fhir.invalid``."""
    bundle = fhir("bundle-transaction.json")
    if bundle_type is None:
        del bundle["type"]
    else:
        bundle["type"] = bundle_type
    assert reject(bundle, gp).code is ErrorCode.FHIR_INVALID


@pytest.mark.parametrize("bundle_type", ["transaction", "batch", "collection", "message", "document"])
def test_ingestable_bundle_types(fhir: Loader, gp: Source, bundle_type: str) -> None:
    """Transaction, batch, collection, message and document Bundles are split."""
    bundle = fhir("bundle-transaction.json")
    bundle["type"] = bundle_type
    assert len(entries(bundle, gp)) == 6


# --- network patient ids ---------------------------------------------------------------------------------

KEY = b"unit-test-pseudonym-key-0123456789abcdef"


def test_network_id_is_deterministic() -> None:
    """The same identity and key always give the same id (safe to recompute in any worker)."""
    first = PatientKey("ins", INS_NIR, PRODUCTION_INS).network_id(KEY)
    assert first == PatientKey("ins", INS_NIR, PRODUCTION_INS).network_id(KEY)
    assert re.fullmatch(r"pt-[a-z2-7]{24}", first)


def test_network_id_differs_with_the_key() -> None:
    """Another pseudonymisation key gives unrelated ids."""
    identity = PatientKey("ins", INS_NIR, PRODUCTION_INS)
    assert identity.network_id(KEY) != identity.network_id(b"another-pseudonym-key-0123456789ab")


@pytest.mark.parametrize(
    "other",
    [
        PatientKey("local", INS_NIR, PRODUCTION_INS),
        PatientKey("ins", INS_TEST_NIR, PRODUCTION_INS),
        PatientKey("ins", INS_NIR, "185057800608437"),
        PatientKey("local", "gp-a", "12"),
    ],
    ids=["basis", "system", "value", "other"],
)
def test_network_id_differs_per_identity(other: PatientKey) -> None:
    """Basis, namespace and value all count: a local id never collides with an INS of the same digits."""
    assert other.network_id(KEY) != PatientKey("ins", INS_NIR, PRODUCTION_INS).network_id(KEY)


@pytest.mark.parametrize("value", [PRODUCTION_INS, TEST_INS, "IPP-004217", "pat-dupont"])
def test_network_id_never_contains_the_identifier(value: str) -> None:
    """The id is a keyed hash: neither the identifier nor any 6-character run of it appears in it."""
    network_id = PatientKey("local", "gp-a", value).network_id(KEY)
    lowered = value.lower()
    runs = {lowered[i : i + 6] for i in range(len(lowered) - 5)}
    assert not any(run in network_id for run in runs)
