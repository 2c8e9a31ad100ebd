"""Bundle splitting, an input's one patient, and network patient ids (hub/ingest/split.py, hub/identity)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import pytest

from hub.errors import ErrorCode, WarningCode
from hub.ingest.outcome import IngestWarning, Rejected
from hub.ingest.split import Entry, Ins, PatientIdentity, Split, read_ins, split_entries
from hub.pathway.network_id import (
    INS_DEMO_NIR,
    INS_NIA,
    INS_NIR,
    INS_TEST_NIR,
    PatientKey,
    is_identity_validated,
)
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


def ins_warnings(result: Split) -> list[str]:
    """The details of the split's ``ins.unqualified`` warnings, after checking none quotes an INS."""
    details = [w.detail for w in result.warnings if w.code is WarningCode.INS_UNQUALIFIED]
    assert not any(value in detail for detail in details for value in (TEST_INS, PRODUCTION_INS))
    return details


# --- a Patient's own identity ------------------------------------------------------------------------------


def test_qualified_ins_links_by_ins(fhir: Loader, gp: Source) -> None:
    """A Patient with an INS and FR Core identity reliability VALI is routed by that INS; its IPP is kept."""
    result = split(fhir("patient-ins-vali.json"), gp)
    [entry] = result.entries
    assert result.patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS, ins_qualified=True)
    assert result.patient.routing == FIXTURE_INS
    assert (entry.index, entry.about_patient) == (None, True)
    assert result.warnings == ()


@pytest.mark.parametrize("reliability", ["PROV", "VIDE", "DOUTE", None])
def test_ins_without_vali_is_local(fhir: Loader, gp: Source, reliability: str | None) -> None:
    """Without VALI (provisional, empty, doubtful, absent) the INS may not link: the local IPP is used,
    and the receipt's warning says why (never which INS)."""
    resource = fhir("patient-ins-vali.json")
    if reliability is None:
        del resource["extension"]
    else:
        resource["extension"][0]["extension"][0]["valueCoding"]["code"] = reliability
    assert not is_identity_validated(resource)
    result = split(resource, gp)
    assert result.patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS)
    assert (result.patient.routing, result.patient.linking_ins) == (local(gp, "IPP-004217"), None)
    assert ins_warnings(result) == [
        "Patient.identifier: an INS is not used to link: the Patient has no FR Core identity reliability VALI"
    ]


def test_unqualified_patient_without_local_identifier_uses_its_id(fhir: Loader, gp: Source) -> None:
    """With no qualified INS and no identifier in the source's systems, the resource id names the patient."""
    resource = fhir("patient-ins-vali.json")
    del resource["extension"]
    resource["identifier"] = [i for i in resource["identifier"] if i["system"] != GP_LOCAL_SYSTEM]
    assert patient(resource, gp).routing == local(gp, "pat-dupont")


def test_qualified_patient_without_local_identifier_keeps_its_id_as_local(fhir: Loader, gp: Source) -> None:
    """A qualified Patient with no identifier in the source's systems has its resource id as local key."""
    resource = fhir("patient-ins-vali.json")
    resource["identifier"] = [i for i in resource["identifier"] if i["system"] != GP_LOCAL_SYSTEM]
    assert patient(resource, gp) == PatientIdentity(local(gp, "pat-dupont"), FIXTURE_INS, ins_qualified=True)


def test_qualified_patient_with_neither_id_nor_local_identifier_is_ins_only(fhir: Loader, gp: Source) -> None:
    """A qualified Patient with no id and no local identifier is known by its INS alone."""
    resource = fhir("patient-ins-vali.json")
    del resource["id"]
    resource["identifier"] = [i for i in resource["identifier"] if i["system"] != GP_LOCAL_SYSTEM]
    assert patient(resource, gp) == PatientIdentity(ins=FIXTURE_INS, ins_qualified=True)


def test_unqualified_patient_known_by_its_ins_alone_is_unresolved(fhir: Loader, gp: Source) -> None:
    """A Patient without VALI, id or local identifier names nobody the hub may route by:
    ``patient.unresolved``, saying why, without the INS."""
    resource = fhir("patient-ins-vali.json")
    del resource["extension"], resource["id"]
    resource["identifier"] = [i for i in resource["identifier"] if i["system"] != GP_LOCAL_SYSTEM]
    result = reject(resource, gp)
    assert result.code is ErrorCode.PATIENT_UNRESOLVED
    assert "by an INS alone" in result.detail
    assert "identity reliability VALI" in result.detail
    assert TEST_INS not in result.detail


def test_patient_with_no_id_nor_identifier_is_unresolved(gp: Source) -> None:
    """A Patient that names nobody is ``patient.unresolved``."""
    result = reject({"resourceType": "Patient", "gender": "female"}, gp)
    assert result.code is ErrorCode.PATIENT_UNRESOLVED


def test_test_ins_refused_unless_allowed(fhir: Loader, gp: Source) -> None:
    """The test NIR system (.10) only links when allow_test_ins is set; otherwise the local IPP is used."""
    resource = fhir("patient-ins-vali.json")
    refused = split(resource, gp, allow_test_ins=False)
    assert refused.patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS)
    assert refused.patient.routing == local(gp, "IPP-004217")
    assert ins_warnings(refused) == [
        "Patient.identifier: a test INS (system …1.4.10 or …1.4.11) is not used to link: "
        "this hub links on production INS only"
    ]
    assert patient(resource, gp, allow_test_ins=True).routing == FIXTURE_INS


def test_production_ins_links_without_test_flag(fhir: Loader, gp: Source) -> None:
    """A qualified NIR (.8) links even when test INS are refused."""
    resource = fhir("patient-ins-vali.json")
    resource["identifier"][0]["system"] = INS_NIR
    resource["identifier"][0]["value"] = PRODUCTION_INS
    assert patient(resource, gp, allow_test_ins=False).routing == PatientKey("ins", INS_NIR, PRODUCTION_INS)


def test_a_second_qualified_ins_on_the_patient_is_not_used(fhir: Loader, gp: Source) -> None:
    """Only the Patient's first qualified INS links; another one is said to be left out."""
    resource = fhir("patient-ins-vali.json")
    resource["identifier"].insert(1, {"system": INS_NIA, "value": PRODUCTION_INS})
    result = split(resource, gp)
    assert result.patient is not None and result.patient.linking_ins == FIXTURE_INS
    assert ins_warnings(result) == [
        "Patient.identifier: a second INS is not used to link: the Patient's first qualified INS links"
    ]


# --- the one INS rule --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "validated", "allow_test_ins", "refusal"),
    [
        (INS_NIR, True, False, None),
        (INS_NIA, True, False, None),
        (INS_NIR, False, True, "not-validated"),
        (INS_TEST_NIR, True, False, "test-system"),
        (INS_DEMO_NIR, True, False, "test-system"),
        (INS_TEST_NIR, True, True, None),
        (INS_DEMO_NIR, False, True, "not-validated"),
    ],
)
def test_read_ins_is_one_rule_for_every_place(
    system: str,
    validated: bool,
    allow_test_ins: bool,
    refusal: Literal["test-system", "not-validated"] | None,
) -> None:
    """An INS links only in an accepted system and on a validated identity; anything else is no INS."""
    identifier = {"system": system, "value": PRODUCTION_INS}
    found = read_ins(identifier, validated=validated, allow_test_ins=allow_test_ins)
    assert found == Ins(PatientKey("ins", system, PRODUCTION_INS), refusal)
    assert read_ins({"system": GP_LOCAL_SYSTEM, "value": "x"}, validated=True, allow_test_ins=True) is None
    assert read_ins({"system": system}, validated=True, allow_test_ins=True) is None


# --- PatientIdentity -----------------------------------------------------------------------------------


def test_identity_routes_by_ins_when_qualified(gp: Source) -> None:
    """The routing key is the qualified INS when the identity has one (it is the same in every source),
    else local; an unqualified INS routes nothing."""
    ins = PatientKey("ins", INS_NIR, PRODUCTION_INS)
    assert PatientIdentity(local(gp, "a"), ins, ins_qualified=True).routing == ins
    assert PatientIdentity(local(gp, "a"), ins).routing == local(gp, "a")
    assert PatientIdentity(local=local(gp, "a")).routing == local(gp, "a")
    assert PatientIdentity(ins=ins, ins_qualified=True).routing == ins
    for nobody in (PatientIdentity(), PatientIdentity(ins=ins)):
        with pytest.raises(ValueError, match="qualified INS or a local identifier"):
            _ = nobody.routing
    with pytest.raises(ValueError, match="only an INS"):
        PatientIdentity(local(gp, "a"), ins_qualified=True)


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
    # An INS named unqualified (in a reference) is qualified by the same INS carried qualified.
    assert PatientIdentity(ins=ins).merged(PatientIdentity(local(gp, "a"), ins, ins_qualified=True)) == (
        PatientIdentity(local(gp, "a"), ins, ins_qualified=True)
    )
    assert PatientIdentity(ins=ins).merged(PatientIdentity(ins=other_ins, ins_qualified=True)) is None


# --- references to the patient ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "value", "allow_test_ins", "why"),
    [
        (INS_NIR, PRODUCTION_INS, False, "a reference cannot state identity reliability"),
        (INS_TEST_NIR, TEST_INS, True, "a reference cannot state identity reliability"),
        (INS_TEST_NIR, TEST_INS, False, "this hub links on production INS only"),
    ],
)
def test_reference_identifier_with_an_ins_alone_is_unresolved(
    gp: Source, system: str, value: str, allow_test_ins: bool, why: str
) -> None:
    """``subject.identifier`` with an INS and nothing else: no Patient of the input states the INS's
    reliability, so it may not link, and nothing else names the patient: ``patient.unresolved``, saying
    why and what to send, never the INS."""
    subject = {"identifier": {"system": system, "value": value}}
    result = reject(observation(subject), gp, allow_test_ins=allow_test_ins)
    assert result.code is ErrorCode.PATIENT_UNRESOLVED
    assert result.detail.startswith("the input names its patient by an INS alone")
    assert why in result.detail
    assert "Observation.subject.identifier" in result.detail
    assert value not in result.detail


def test_reference_identifier_in_source_system_is_local(gp: Source) -> None:
    """``subject.identifier`` in one of the source's patient systems is that source's local identifier."""
    subject = {"identifier": {"system": GP_LOCAL_SYSTEM, "value": "IPP-004217"}}
    assert patient(observation(subject), gp) == PatientIdentity(local=local(gp, "IPP-004217"))


def test_reference_with_literal_and_ins_identifier_is_local_and_warns(gp: Source) -> None:
    """A reference giving both ``Patient/<id>`` and an INS that no Patient of the input qualifies names
    the source's local patient: the INS does not link, and a warning says so."""
    subject = {"reference": "Patient/pat-dupont", "identifier": {"system": INS_NIR, "value": PRODUCTION_INS}}
    result = split(observation(subject), gp)
    assert result.patient == PatientIdentity(
        local(gp, "pat-dupont"), PatientKey("ins", INS_NIR, PRODUCTION_INS)
    )
    assert (result.patient.routing, result.patient.linking_ins) == (local(gp, "pat-dupont"), None)
    assert ins_warnings(result) == [
        "Observation.subject.identifier: an INS is not used to link: a reference cannot state identity "
        "reliability, and no Patient of this input carries this INS with FR Core identity reliability VALI"
    ]


def test_reference_by_local_identifier_resolves_to_the_bundle_patient(fhir: Loader, gp: Source) -> None:
    """``subject.identifier`` naming the Bundle Patient's local identifier takes that Patient's INS too."""
    subject = {"identifier": {"system": GP_LOCAL_SYSTEM, "value": "IPP-004217"}}
    result = split(collection(fhir("patient-ins-vali.json"), observation(subject)), gp)
    assert result.patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS, ins_qualified=True)
    assert [entry.about_patient for entry in result.entries] == [True, True]


def test_reference_by_ins_identifier_resolves_to_the_bundle_patient(fhir: Loader, gp: Source) -> None:
    """``subject.identifier`` naming the INS the Bundle's Patient carries with VALI links by it, wherever
    the Patient sits in the Bundle, and takes that Patient's local identifier too."""
    subject = {"identifier": {"system": INS_TEST_NIR, "value": TEST_INS}}
    bundle = collection(observation(subject), fhir("patient-ins-vali.json"))
    result = split(bundle, gp)
    assert result.patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS, ins_qualified=True)
    assert result.warnings == ()


def test_reference_by_ins_of_an_unqualified_bundle_patient_does_not_link(fhir: Loader, gp: Source) -> None:
    """The same INS on a Bundle Patient without VALI: the reference names that Patient, nothing links."""
    patient_resource = fhir("patient-ins-vali.json")
    del patient_resource["extension"]
    subject = {"identifier": {"system": INS_TEST_NIR, "value": TEST_INS}}
    result = split(collection(observation(subject), patient_resource), gp)
    assert result.patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS)
    assert ins_warnings(result) == [
        "Patient.identifier: an INS is not used to link: the Patient has no FR Core identity reliability VALI"
    ]


def test_literal_reference_resolved_through_the_bundle(fhir: Loader, gp: Source) -> None:
    """``Patient/<id>`` names the Bundle's Patient with that id, so it takes that Patient's INS."""
    bundle = collection(fhir("patient-ins-vali.json"), fhir("observation-hba1c.json"))
    result = split(bundle, gp)
    patient_entry, obs = result.entries
    assert obs.resource["subject"] == {"reference": "Patient/pat-dupont"}
    assert result.patient == PatientIdentity(local(gp, "IPP-004217"), FIXTURE_INS, ins_qualified=True)
    assert (patient_entry.index, obs.index) == (0, 1)
    assert patient_entry.about_patient and obs.about_patient


def test_urn_uuid_full_url_resolution(fhir: Loader, gp: Source) -> None:
    """In a transaction, ``urn:uuid:`` references resolve through ``fullUrl`` to the Patient entry."""
    result = split(fhir("bundle-transaction.json"), gp)
    assert result.patient == PatientIdentity(ins=FIXTURE_INS, ins_qualified=True)
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
    """Entries that each show part of one patient (local id, then an INS) make one merged identity; an
    INS only references name stays unqualified, so the input is routed by the local id."""
    ins = PatientKey("ins", INS_NIR, PRODUCTION_INS)
    bundle = collection(
        observation({"reference": "Patient/p1"}),
        observation({"reference": "Patient/p1", "identifier": {"system": INS_NIR, "value": PRODUCTION_INS}}),
    )
    assert patient(bundle, gp) == PatientIdentity(local(gp, "p1"), ins)
    assert patient(bundle, gp).routing == local(gp, "p1")


@pytest.mark.parametrize(
    ("resource_type", "field"),
    [
        ("Encounter", "subject"),
        ("EpisodeOfCare", "patient"),
        ("Immunization", "patient"),
        ("Coverage", "beneficiary"),
        ("Invoice", "subject"),
        ("DetectedIssue", "patient"),
        ("Task", "for"),
        ("Device", "patient"),
        ("FamilyMemberHistory", "patient"),
    ],
)
def test_patient_field_per_resource_type(gp: Source, resource_type: str, field: str) -> None:
    """Each patient-compartment type names its patient in its own R4 element (subject, patient, for...)."""
    resource = {"resourceType": resource_type, field: {"reference": "Patient/p9"}}
    assert patient(resource, gp) == PatientIdentity(local=local(gp, "p9"))


def test_an_account_names_its_patient_in_its_one_subject(gp: Source) -> None:
    """R4 Account.subject is a list: its one subject is the patient; several would need a choice."""
    account = {"resourceType": "Account", "status": "active", "subject": [{"reference": "Patient/p9"}]}
    assert patient(account, gp) == PatientIdentity(local=local(gp, "p9"))
    shared = account | {"subject": [{"reference": "Patient/p9"}, {"reference": "Device/d1"}]}
    assert reject(shared, gp).code is ErrorCode.PATIENT_UNRESOLVED


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Device", "status": "active"},
        {"resourceType": "Task", "status": "ready", "intent": "order"},
    ],
    ids=["Device", "Task"],
)
def test_a_device_or_task_for_no_patient_is_reference_data(gp: Source, resource: dict[str, Any]) -> None:
    """A Device affixed to nobody is equipment (R5 Devices never name one), a Task for nobody is work on
    something else (a claim): no patient, no reject, no event."""
    result = split(resource, gp)
    assert result.patient is None
    assert [entry.about_patient for entry in result.entries] == [False]


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
    """A transaction DELETE entry has no resource and is skipped (indexes still count it), and the
    receipt says nothing was applied, without the request's url."""
    bundle = fhir("bundle-transaction.json")
    for _ in range(2):
        bundle["entry"].insert(0, {"request": {"method": "DELETE", "url": "Observation/old-1"}})
    result = split(bundle, gp)
    assert len(result.entries) == 6
    assert result.entries[0].index == 2
    assert result.warnings == (
        IngestWarning(
            WarningCode.ENTRY_NO_RESOURCE,
            "2 Bundle entries without a resource (request DELETE): the hub applies no request, "
            "nothing was changed",
        ),
    )


@pytest.mark.parametrize(
    "resource",
    [
        {
            "resourceType": "AdverseEvent",
            "actuality": "actual",
            "subject": {"reference": "Patient/pat-dupont"},
        },
        {"resourceType": "Appointment", "status": "booked", "participant": []},
        {
            "resourceType": "Medication",
            "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02"}]},
        },
    ],
    ids=["AdverseEvent", "Appointment", "Medication"],
)
def test_resources_that_make_no_event_are_named(fhir: Loader, gp: Source, resource: dict[str, Any]) -> None:
    """A resource about the patient of a type that makes no pathway event (or a Medication, whose content
    a reference does not carry) is accepted, counted in a ``resource.ignored`` warning by type."""
    result = split(collection(fhir("patient-ins-vali.json"), resource, dict(resource)), gp)
    assert [entry.about_patient for entry in result.entries] == [True, False, False]
    assert result.warnings == (
        IngestWarning(
            WarningCode.RESOURCE_IGNORED,
            f"{resource['resourceType']} (2 entries): the hub makes no pathway event of this resource "
            "type, so no recipient receives it",
        ),
    )


def test_reference_data_is_no_warning(fhir: Loader, gp: Source) -> None:
    """Organization and Practitioner make no event either, but they are what references point to: the
    transaction Bundle has nothing to warn about."""
    assert split(fhir("bundle-transaction.json"), gp).warnings == ()


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
