"""Bundle splitting, an input's one patient, and network patient ids (hub/ingest/split.py, hub/identity)."""

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
from hub.ingest.split import Entry, PatientIdentity, Split, split_entries
from hub.sources.registry import Source

Loader = Callable[[str], dict[str, Any]]

TEST_INS = "248039263001064"  # the fixtures' INS, in the test NIR system (.10)
PRODUCTION_INS = "185057800608436"
GP_LOCAL_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.9999"


def split(resource: dict[str, Any], source: Source, *, allow_test_ins: bool = True) -> Split:
    result = split_entries(resource, source, allow_test_ins=allow_test_ins)
    assert isinstance(result, Split), result
    return result


def entries(resource: dict[str, Any], source: Source, *, allow_test_ins: bool = True) -> tuple[Entry, ...]:
    return split(resource, source, allow_test_ins=allow_test_ins).entries


def patient(resource: dict[str, Any], source: Source, *, allow_test_ins: bool = True) -> PatientIdentity:
    """The input's one patient (the input must have one)."""
    identity = split(resource, source, allow_test_ins=allow_test_ins).patient
    assert identity is not None
    return identity


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


def local(source: Source, value: str) -> PatientKey:
    return PatientKey("local", source.id, value)


FIXTURE_INS = PatientKey("ins", INS_TEST_NIR, TEST_INS)


# --- a Patient's own identity ------------------------------------------------------------------------------


def test_qualified_ins_links_by_ins(fhir: Loader, gp: Source) -> None:
    """A Patient with an INS and FR Core identity reliability VALI is routed by that INS; its IPP is kept."""
    result = split(fhir("patient-ins-vali.json"), gp)
    [entry] = result.entries
    assert result.patient == PatientIdentity(local=local(gp, "IPP-004217"), ins=FIXTURE_INS)
    assert result.patient.routing == FIXTURE_INS
    assert (entry.index, entry.about_patient) == (None, True)


@pytest.mark.parametrize("reliability", ["PROV", "VIDE", "DOUTE", None])
def test_ins_without_vali_is_local(fhir: Loader, gp: Source, reliability: str | None) -> None:
    """Without VALI (provisional, empty, doubtful, absent) the INS may not link: the local IPP is used."""
    resource = fhir("patient-ins-vali.json")
    if reliability is None:
        del resource["extension"]
    else:
        resource["extension"][0]["extension"][0]["valueCoding"]["code"] = reliability
    assert not is_identity_validated(resource)
    identity = patient(resource, gp)
    assert identity == PatientIdentity(local=local(gp, "IPP-004217"))
    assert identity.routing == local(gp, "IPP-004217")


def test_unqualified_patient_without_local_identifier_uses_its_id(fhir: Loader, gp: Source) -> None:
    """With no qualified INS and no identifier in the source's systems, the resource id names the patient."""
    resource = fhir("patient-ins-vali.json")
    del resource["extension"]
    resource["identifier"] = [i for i in resource["identifier"] if i["system"] != GP_LOCAL_SYSTEM]
    assert patient(resource, gp) == PatientIdentity(local=local(gp, "pat-dupont"))


def test_qualified_patient_without_local_identifier_keeps_its_id_as_local(fhir: Loader, gp: Source) -> None:
    """A qualified Patient with no identifier in the source's systems has its resource id as local key."""
    resource = fhir("patient-ins-vali.json")
    resource["identifier"] = [i for i in resource["identifier"] if i["system"] != GP_LOCAL_SYSTEM]
    assert patient(resource, gp) == PatientIdentity(local=local(gp, "pat-dupont"), ins=FIXTURE_INS)


def test_qualified_patient_with_neither_id_nor_local_identifier_is_ins_only(fhir: Loader, gp: Source) -> None:
    """A qualified Patient with no id and no local identifier is known by its INS alone."""
    resource = fhir("patient-ins-vali.json")
    del resource["id"]
    resource["identifier"] = [i for i in resource["identifier"] if i["system"] != GP_LOCAL_SYSTEM]
    assert patient(resource, gp) == PatientIdentity(ins=FIXTURE_INS)


def test_patient_with_no_id_nor_identifier_is_unresolved(gp: Source) -> None:
    """A Patient that names nobody is ``patient.unresolved``."""
    result = reject({"resourceType": "Patient", "gender": "female"}, gp)
    assert result.code is ErrorCode.PATIENT_UNRESOLVED


def test_test_ins_refused_unless_allowed(fhir: Loader, gp: Source) -> None:
    """The test NIR system (.10) only links when allow_test_ins is set; otherwise the local IPP is used."""
    resource = fhir("patient-ins-vali.json")
    assert qualified_ins(resource, allow_test_ins=False) is None
    assert patient(resource, gp, allow_test_ins=False) == PatientIdentity(local=local(gp, "IPP-004217"))
    assert patient(resource, gp, allow_test_ins=True).routing == FIXTURE_INS


def test_production_ins_links_without_test_flag(fhir: Loader, gp: Source) -> None:
    """A qualified NIR (.8) links even when test INS are refused."""
    resource = fhir("patient-ins-vali.json")
    resource["identifier"][0]["system"] = INS_NIR
    resource["identifier"][0]["value"] = PRODUCTION_INS
    assert patient(resource, gp, allow_test_ins=False).routing == PatientKey("ins", INS_NIR, PRODUCTION_INS)


# --- PatientIdentity -----------------------------------------------------------------------------------


def test_identity_routes_by_ins_when_known(gp: Source) -> None:
    """The routing key is the INS when the identity has one (it is the same in every source), else local."""
    ins = PatientKey("ins", INS_NIR, PRODUCTION_INS)
    assert PatientIdentity(local(gp, "a"), ins).routing == ins
    assert PatientIdentity(local=local(gp, "a")).routing == local(gp, "a")
    assert PatientIdentity(ins=ins).routing == ins
    with pytest.raises(ValueError, match="at least one key"):
        _ = PatientIdentity().routing


def test_identities_merge_unless_they_contradict(gp: Source) -> None:
    """Two views of one patient combine; a different local id or a different INS is a contradiction."""
    ins = PatientKey("ins", INS_NIR, PRODUCTION_INS)
    other_ins = PatientKey("ins", INS_NIR, "185057800608437")
    assert PatientIdentity(local=local(gp, "a")).merged(PatientIdentity(ins=ins)) == PatientIdentity(
        local(gp, "a"), ins
    )
    assert PatientIdentity(local(gp, "a"), ins).merged(PatientIdentity(local=local(gp, "a"))) == (
        PatientIdentity(local(gp, "a"), ins)
    )
    assert PatientIdentity(local=local(gp, "a")).merged(PatientIdentity(local=local(gp, "b"))) is None
    assert PatientIdentity(local(gp, "a"), ins).merged(PatientIdentity(ins=other_ins)) is None


# --- references to the patient ---------------------------------------------------------------------------


def test_reference_identifier_with_ins_links_by_ins(gp: Source) -> None:
    """``subject.identifier`` with an INS is a linking identity (a sender only transmits a qualified INS)."""
    subject = {"identifier": {"system": INS_NIR, "value": PRODUCTION_INS}}
    identity = patient(observation(subject), gp, allow_test_ins=False)
    assert identity == PatientIdentity(ins=PatientKey("ins", INS_NIR, PRODUCTION_INS))


def test_reference_identifier_with_test_ins_needs_the_flag(gp: Source) -> None:
    """A test INS in ``subject.identifier`` is unresolved when test INS are refused."""
    subject = {"identifier": {"system": INS_TEST_NIR, "value": TEST_INS}}
    assert reject(observation(subject), gp, allow_test_ins=False).code is ErrorCode.PATIENT_UNRESOLVED
    assert patient(observation(subject), gp, allow_test_ins=True).routing == FIXTURE_INS


def test_reference_identifier_in_source_system_is_local(gp: Source) -> None:
    """``subject.identifier`` in one of the source's patient systems is that source's local identifier."""
    subject = {"identifier": {"system": GP_LOCAL_SYSTEM, "value": "IPP-004217"}}
    assert patient(observation(subject), gp) == PatientIdentity(local=local(gp, "IPP-004217"))


def test_reference_with_literal_and_ins_identifier_is_merged(gp: Source) -> None:
    """A reference giving both ``Patient/<id>`` and a qualified INS names one patient known by both."""
    subject = {"reference": "Patient/pat-dupont", "identifier": {"system": INS_NIR, "value": PRODUCTION_INS}}
    identity = patient(observation(subject), gp)
    assert identity == PatientIdentity(local(gp, "pat-dupont"), PatientKey("ins", INS_NIR, PRODUCTION_INS))
    assert identity.routing == PatientKey("ins", INS_NIR, PRODUCTION_INS)


def test_reference_by_local_identifier_resolves_to_the_bundle_patient(fhir: Loader, gp: Source) -> None:
    """``subject.identifier`` naming the Bundle Patient's local identifier takes that Patient's INS too."""
    subject = {"identifier": {"system": GP_LOCAL_SYSTEM, "value": "IPP-004217"}}
    result = split(collection(fhir("patient-ins-vali.json"), observation(subject)), gp)
    assert result.patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS)
    assert [entry.about_patient for entry in result.entries] == [True, True]


def test_reference_by_ins_identifier_resolves_to_the_bundle_patient(fhir: Loader, gp: Source) -> None:
    """``subject.identifier`` naming the Bundle Patient's INS takes that Patient's local identifier too."""
    subject = {"identifier": {"system": INS_TEST_NIR, "value": TEST_INS}}
    bundle = collection(observation(subject), fhir("patient-ins-vali.json"))
    assert split(bundle, gp).patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS)


def test_literal_reference_resolved_through_the_bundle(fhir: Loader, gp: Source) -> None:
    """``Patient/<id>`` names the Bundle's Patient with that id, so it takes that Patient's INS."""
    bundle = collection(fhir("patient-ins-vali.json"), fhir("observation-hba1c.json"))
    result = split(bundle, gp)
    patient_entry, obs = result.entries
    assert obs.resource["subject"] == {"reference": "Patient/pat-dupont"}
    assert result.patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS)
    assert (patient_entry.index, obs.index) == (0, 1)
    assert patient_entry.about_patient and obs.about_patient


def test_urn_uuid_full_url_resolution(fhir: Loader, gp: Source) -> None:
    """In a transaction, ``urn:uuid:`` references resolve through ``fullUrl`` to the Patient entry."""
    result = split(fhir("bundle-transaction.json"), gp)
    assert result.patient == PatientIdentity(ins=FIXTURE_INS)
    by_type = {entry.resource["resourceType"]: entry for entry in result.entries}
    for resource_type in ("Patient", "Encounter", "Condition", "Observation"):
        assert by_type[resource_type].about_patient, resource_type
    assert [entry.index for entry in result.entries] == list(range(6))


def test_absolute_full_url_resolution(fhir: Loader, gp: Source) -> None:
    """An absolute ``fullUrl`` used as the reference resolves to that Patient entry."""
    url = "https://dpi.example.org/fhir/Patient/9f2c"
    resource = fhir("patient-ins-vali.json")
    del resource["id"]
    bundle = collection(resource, observation({"reference": url}), full_urls=(url, None))
    assert patient(bundle, gp).routing == FIXTURE_INS


def test_literal_reference_outside_a_bundle_is_local(fhir: Loader, gp: Source) -> None:
    """A single resource's ``Patient/<id>`` is the source's local patient with that id."""
    [entry] = entries(fhir("observation-hba1c.json"), gp)
    assert entry.about_patient
    assert patient(fhir("observation-hba1c.json"), gp) == PatientIdentity(local=local(gp, "pat-dupont"))


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
    assert patient(observation({"reference": reference}), gp) == PatientIdentity(
        local=local(gp, "pat-dupont")
    )
    bundle = collection(fhir("patient-ins-vali.json"), observation({"reference": reference}))
    assert patient(bundle, gp).routing == FIXTURE_INS


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


# --- one patient per input ------------------------------------------------------------------------------


def test_two_patients_in_one_bundle_are_ambiguous(fhir: Loader, gp: Source) -> None:
    """A Bundle whose entries name two different patients is ``patient.ambiguous``, naming the entry."""
    other = {"resourceType": "Patient", "id": "pat-other"}
    result = reject(collection(fhir("patient-ins-vali.json"), other), gp)
    assert result.code is ErrorCode.PATIENT_AMBIGUOUS
    assert result.detail.startswith("entry 1: ")
    assert "pat-other" not in result.detail


def test_an_entry_about_another_patient_is_ambiguous(fhir: Loader, gp: Source) -> None:
    """An Observation about another local patient than the Bundle's Patient is ``patient.ambiguous``."""
    bundle = collection(fhir("patient-ins-vali.json"), observation({"reference": "Patient/someone-else"}))
    assert reject(bundle, gp).code is ErrorCode.PATIENT_AMBIGUOUS


def test_contradicting_ins_in_one_bundle_is_ambiguous(fhir: Loader, gp: Source) -> None:
    """An entry naming another qualified INS than the Bundle's Patient carries is ``patient.ambiguous``."""
    subject = {"identifier": {"system": INS_NIR, "value": PRODUCTION_INS}}
    result = reject(collection(fhir("patient-ins-vali.json"), observation(subject)), gp)
    assert result.code is ErrorCode.PATIENT_AMBIGUOUS
    assert PRODUCTION_INS not in result.detail


def test_contradicting_ins_across_entries_without_a_patient_is_ambiguous(gp: Source) -> None:
    """Two entries naming one local patient with two different INS is ``patient.ambiguous``."""
    first = {"reference": "Patient/p1", "identifier": {"system": INS_NIR, "value": PRODUCTION_INS}}
    second = {"reference": "Patient/p1", "identifier": {"system": INS_NIR, "value": "185057800608437"}}
    assert reject(collection(observation(first), observation(second)), gp).code is ErrorCode.PATIENT_AMBIGUOUS


def test_reference_contradicting_the_bundle_patient_ins_is_ambiguous(fhir: Loader, gp: Source) -> None:
    """A reference naming the Bundle's Patient literally but with another INS is ``patient.ambiguous``."""
    subject = {"reference": "Patient/pat-dupont", "identifier": {"system": INS_NIR, "value": PRODUCTION_INS}}
    result = reject(collection(fhir("patient-ins-vali.json"), observation(subject)), gp)
    assert result.code is ErrorCode.PATIENT_AMBIGUOUS
    assert result.detail.startswith("entry 1: ")


def test_entries_adding_to_one_identity_are_merged(gp: Source) -> None:
    """Entries that each show part of one patient (local id, then its INS) make one merged identity."""
    ins = PatientKey("ins", INS_NIR, PRODUCTION_INS)
    bundle = collection(
        observation({"reference": "Patient/p1"}),
        observation({"reference": "Patient/p1", "identifier": {"system": INS_NIR, "value": PRODUCTION_INS}}),
    )
    assert patient(bundle, gp) == PatientIdentity(local(gp, "p1"), ins)


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
    resource = {"resourceType": resource_type, field: {"reference": "Patient/p9"}}
    assert patient(resource, gp) == PatientIdentity(local=local(gp, "p9"))


def test_reference_data_makes_no_patient(fhir: Loader, gp: Source) -> None:
    """Organization and Practitioner are about no patient: they are kept, not about the patient (no event)."""
    result = split(fhir("bundle-transaction.json"), gp)
    reference_data = [entry for entry in result.entries if not entry.about_patient]
    assert sorted(entry.resource["resourceType"] for entry in reference_data) == [
        "Organization",
        "Practitioner",
    ]


def test_reference_data_alone_has_no_patient(fhir: Loader, gp: Source) -> None:
    """An input of reference data only (an Organization) has entries but no patient."""
    organization = fhir("bundle-transaction.json")["entry"][4]["resource"]
    result = split(organization, gp)
    assert result.patient is None
    assert [entry.about_patient for entry in result.entries] == [False]


def test_delete_entries_carry_no_resource(fhir: Loader, gp: Source) -> None:
    """A transaction DELETE entry has no resource and is skipped; indexes still count it."""
    bundle = fhir("bundle-transaction.json")
    bundle["entry"].insert(0, {"request": {"method": "DELETE", "url": "Observation/old-1"}})
    result = entries(bundle, gp)
    assert len(result) == 6
    assert result[0].index == 1


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
