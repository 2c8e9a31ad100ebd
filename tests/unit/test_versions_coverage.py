"""Conversion coverage (issue 16, item 2): every clinical and administrative type a GP or hospital
system sends is converted from STU3 and R5 to R4; an element R4 lacks is carried in HL7's cross-version
extension, named in a receipt warning and in ``hub sources check``; what is no clinical data for a
pathway is refused, with a detail that says so, in STU3, R4 and R5 alike.

The inputs are this project's own fixtures (``tests/fixtures/fhir-versions``): French GP, pharmacy,
laboratory and hospital records, valid in their own version (test_versions.py proves it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ErrorCode, WarningCode
from hub.ingest.outcome import Accepted, IngestOutcome, IngestRecord, Rejected
from hub.ingest.pipeline import IngestContext, process_ingest
from hub.normalise.versions import Converted, Unconvertible, carried_element, convert_to_r4, dropped_element

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir-versions"
VERSIONS = {"stu3": "3.0", "r5": "5.0"}
EXTENSION = {
    "3.0": "http://hl7.org/fhir/3.0/StructureDefinition/extension-",
    "5.0": "http://hl7.org/fhir/5.0/StructureDefinition/extension-",
}


@dataclass(frozen=True)
class Case:
    """One fixture: the pathway kind its event has (None: reference data), R4 elements it must have
    (dotted paths, list positions as numbers), and an element R4 lacks, carried on ``holder``."""

    name: str
    kind: str | None
    r4: dict[str, Any] = field(default_factory=dict)
    carried: str | None = None
    holder: str = ""

    @property
    def version(self) -> str:
        return VERSIONS[self.name.split("/")[0]]

    def __str__(self) -> str:
        return self.name


CASES = [
    Case(
        "stu3/immunization.json",
        "immunization",
        {
            "status": "completed",
            "occurrenceDateTime": "2017-10-16T09:40:00+02:00",
            "performer.0.function.coding.0.code": "AP",
            "protocolApplied.0.doseNumberPositiveInt": 1,
            "reasonCode.0.coding.0.code": "429060002",
        },
        "Immunization.vaccinationProtocol.doseStatus",
        "protocolApplied.0",
    ),
    Case(
        "r5/immunization.json",
        "immunization",
        {
            "manufacturer.reference": "Organization/gsk",
            "reportOrigin.coding.0.code": "record",
            "reasonReference.0.reference": "Observation/serologie-tetanos",
            "programEligibility.0.coding.0.code": "uninsured",
            "protocolApplied.0.doseNumberPositiveInt": 2,
        },
        "Immunization.reaction.manifestation",
        "reaction.0",
    ),
    Case(
        "stu3/medicationdispense.json",
        "medication",
        {
            "status": "completed",
            "dosageInstruction.0.doseAndRate.0.doseQuantity.value": 850,
            "performer.0.actor.reference": "Practitioner/pharmacien-leroy",
        },
        "MedicationDispense.performer.onBehalfOf",
        "performer.0",
    ),
    Case(
        "r5/medicationdispense.json",
        "medication",
        {
            "medicationCodeableConcept.coding.0.code": "J01CA04",
            "context.reference": "Encounter/consultation-gp",
            "category.coding.0.code": "community",
            "substitution.responsibleParty.0.reference": "Practitioner/pharmacien-leroy",
        },
        "MedicationDispense.recorded",
    ),
    Case(
        "stu3/medicationadministration.json",
        "medication",
        {
            "status": "completed",
            "request.reference": "MedicationRequest/prescription-lovenox",
            "dosage.dose.value": 4000,
        },
        "MedicationAdministration.definition",
    ),
    Case(
        "r5/medicationadministration.json",
        "medication",
        {
            "effectiveDateTime": "2024-04-29T08:00:00+02:00",
            "context.reference": "Encounter/sejour-chu-2024",
            "performer.0.actor.reference": "Practitioner/ide-bernard",
            "device.0.reference": "Device/pompe-perfusion-12",
            "reasonCode.0.coding.0.code": "274663001",
        },
        "MedicationAdministration.isSubPotent",
    ),
    Case(
        "stu3/list.json",
        "list",
        {"mode": "snapshot", "entry.1.item.reference": "MedicationStatement/ramipril"},
    ),
    Case(
        "r5/list.json",
        "list",
        {"subject.reference": "Patient/example", "entry.0.item.reference": "AllergyIntolerance/penicilline"},
    ),
    Case(
        "stu3/composition.json",
        "document",
        {
            "category.0.coding.0.code": "LP173421-1",
            "attester.0.mode": "legal",
            "section.0.entry.0.reference": "Condition/insuffisance-cardiaque",
        },
    ),
    Case(
        "r5/composition.json",
        "document",
        {
            "identifier.value": "CR-2024-5521",
            "subject.reference": "Patient/example",
            "attester.0.mode": "legal",
            "relatesTo.0.code": "replaces",
            "event.0.code.0.coding.0.code": "11429006",
            "event.0.detail.0.reference": "Observation/ecg-2024-05",
        },
        "Composition.note",
    ),
    Case(
        "stu3/documentmanifest.json",
        "document",
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "date": "2018-02-14T17:10:00+01:00",
            "content.0.attachment.url": "DocumentReference/lettre-de-liaison",
            "content.1.attachment.contentType": "application/pdf",
            "context.related.0.reference": "Encounter/sejour-chu-2018",
        },
        "DocumentManifest.recipient",
    ),
    Case(
        "stu3/task.json",
        "task",
        {
            "priority": "routine",
            "instantiatesUri": "https://has-sante.fr/suivi-diabete-type-2",
            "requester.reference": "Practitioner/dr-martin",
            "encounter.reference": "Encounter/consultation-gp",
            "reasonCode.text": "Suivi du diabète de type 2",
        },
        "Task.requester.onBehalfOf",
    ),
    Case(
        "r5/task.json",
        "task",
        {
            "statusReason.text": "Photos reçues, en cours d'analyse",
            "performerType.0.coding.0.code": "18803008",
            "reasonCode.coding.0.code": "269513004",
            "reasonReference.reference": "Observation/dermoscopie-1",
            "input.0.valueReference.reference": "DocumentReference/photo-lesion",
        },
        "Task.requestedPeriod",
    ),
    Case(
        "stu3/questionnaireresponse.json",
        "questionnaire_response",
        {
            "questionnaire": "Questionnaire/epices",
            "partOf.0.reference": "Procedure/entretien-social",
            "encounter.reference": "Encounter/consultation-gp",
            "item.2.answer.0.valueDecimal": 35.5,
        },
        "QuestionnaireResponse.item.subject",
        "item.1",
    ),
    Case(
        "r5/questionnaireresponse.json",
        "questionnaire_response",
        {
            "identifier.value": "QR-7710",
            "item.1.answer.0.valueInteger": 9,
            "item.2.answer.0.valueAttachment.size": 48211,
        },
    ),
    Case(
        "stu3/riskassessment.json",
        "risk_assessment",
        {
            "identifier.0.value": "RA-118",
            "encounter.reference": "Encounter/consultation-gp",
            "reasonReference.0.reference": "Condition/diabete-type-2",
            "note.0.text": "Calcul sur les données du bilan de février.",
        },
    ),
    Case(
        "r5/riskassessment.json",
        "risk_assessment",
        {"reasonCode.0.coding.0.code": "161898004", "reasonReference.0.reference": "Observation/tinetti"},
    ),
    Case(
        "stu3/careplan.json",
        "care_plan",
        {
            "status": "active",
            "contributor.1.reference": "Practitioner/ide-bernard",
            "activity.0.detail.statusReason.text": "En attente du rendez-vous",
            "activity.0.detail.doNotPerform": False,
        },
        "CarePlan.context",
    ),
    Case(
        "r5/careplan.json",
        "care_plan",
        {
            "author.reference": "Practitioner/dr-petit",
            "addresses.0.reference": "Condition/fracture-col-femur",
            "activity.0.reference.reference": "ServiceRequest/kine-domicile",
            "activity.0.outcomeReference.0.reference": "Procedure/seance-kine-1",
        },
        "CarePlan.addresses",
    ),
    Case(
        "stu3/goal.json",
        "goal",
        {
            "lifecycleStatus": "active",
            "achievementStatus.coding.0.code": "in-progress",
            "target.0.dueDate": "2018-09-12",
        },
        "Goal.status",
    ),
    Case(
        "r5/goal.json",
        "goal",
        {"expressedBy.reference": "Practitioner/kine-durand", "outcomeCode.0.text": "Marche avec canne"},
        "Goal.continuous",
    ),
    Case("stu3/flag.json", "flag", {"category.0.coding.0.code": "safety"}),
    Case("r5/flag.json", "flag", {"code.coding.0.code": "115329001"}),
    Case(
        "stu3/familymemberhistory.json",
        "family_member_history",
        {"sex.coding.0.code": "male", "condition.0.code.coding.0.code": "22298006"},
        "FamilyMemberHistory.definition",
    ),
    Case(
        "r5/familymemberhistory.json",
        "family_member_history",
        {"reasonCode.0.text": "Dépistage du cancer du sein", "sex.coding.0.code": "female"},
        "FamilyMemberHistory.procedure",
    ),
    Case(
        "stu3/specimen.json",
        "specimen",
        {"collection.collectedDateTime": "2018-03-13T07:45:00+01:00", "container.0.capacity.value": 5},
    ),
    Case(
        "r5/specimen.json",
        "specimen",
        {
            "collection.bodySite.coding.0.code": "368209003",
            "processing.0.procedure.coding.0.code": "434472006",
        },
        "Specimen.collection.procedure",
        "collection",
    ),
    Case(
        "stu3/device.json",
        "device",
        {
            "udiCarrier.0.deviceIdentifier": "05415067001234",
            "deviceName.0.type": "udi-label-name",
            "modelNumber": "Libre 2",
            "version.0.value": "2.1",
        },
    ),
    Case(
        "r5/device.json",
        None,
        {
            "definition.reference": "DeviceDefinition/minimed-780g",
            "deviceName.0.name": "ma pompe",
            "property.0.valueQuantity.0.value": 35,
            "type.coding.0.code": "69805005",
        },
        "Device.version.installDate",
        "version.0",
    ),
    Case(
        "stu3/binary.json", None, {"data": "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoK"}
    ),
    Case("r5/binary.json", None, {"contentType": "application/pdf"}),
]
CARRYING = [case for case in CASES if case.carried is not None]
XML = ["stu3/immunization.xml", "stu3/documentmanifest.xml", "r5/medicationdispense.xml", "r5/task.xml"]


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return document


def r4_of(document: dict[str, Any], version: str) -> Converted:
    result = convert_to_r4(document, version)
    assert isinstance(result, Converted), result
    return result


def at(value: Any, dotted: str) -> Any:
    """The element at a dotted path (``performer.0.actor``), numbers indexing lists."""
    for part in dotted.split(".") if dotted else ():
        value = value[int(part)] if part.isdigit() else value[part]
    return value


def ingest(
    make_record: Callable[..., IngestRecord],
    context: IngestContext,
    body: bytes | dict[str, Any],
    version: str,
    media: str = "json",
) -> IngestOutcome:
    record = make_record(body, content_type=f"application/fhir+{media}; fhirVersion={version}")
    return process_ingest(record, context, now=record.timestamp)


def accepted(outcome: IngestOutcome) -> Accepted:
    assert isinstance(outcome, Accepted), outcome
    return outcome


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_type_converts_to_r4_with_its_key_elements(case: Case) -> None:
    """The R4 form keeps what the source said, each element in its R4 home."""
    resource = r4_of(load(case.name), case.version).resource
    for dotted, expected in case.r4.items():
        assert at(resource, dotted) == expected, dotted


@pytest.mark.parametrize("case", CARRYING, ids=str)
def test_an_element_r4_lacks_is_carried_in_the_cross_version_extension(case: Case) -> None:
    """The element's path names HL7's extension for its version, on the R4 element that held it."""
    assert case.carried is not None
    result = r4_of(load(case.name), case.version)
    url = EXTENSION[case.version] + case.carried
    extensions = [ext for ext in at(result.resource, case.holder).get("extension", ()) if ext["url"] == url]
    assert extensions, f"no {url} on {case.holder or 'the resource'}"
    assert all(set(ext) == {"url", "extension"} or len(ext) == 2 for ext in extensions)  # value[x] or nested
    assert case.carried in {carried_element(step) for step in result.steps}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_type_is_accepted_end_to_end_with_its_pathway_kind(
    case: Case, make_record: Callable[..., IngestRecord], context: IngestContext
) -> None:
    """Through the ingest core: accepted, one event of the type's kind (none for reference data), and the
    receipt warns of each carried element, by name."""
    outcome = accepted(ingest(make_record, context, (FIXTURES / case.name).read_bytes(), case.version))
    assert [event.kind for event in outcome.events] == ([case.kind] if case.kind else [])
    carried = [w.detail for w in outcome.warnings if w.code is WarningCode.ELEMENT_CARRIED]
    if case.carried is not None:
        assert any(
            detail.startswith(f"{case.carried} (1 resource): R4 has no element for it") for detail in carried
        )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_r4_inputs_of_each_type_work_end_to_end(
    case: Case, make_record: Callable[..., IngestRecord], context: IngestContext
) -> None:
    """What a source sends as R4 takes the same path: the converted resource, sent as R4, makes the same
    event, without conversion warnings."""
    resource = r4_of(load(case.name), case.version).resource
    outcome = accepted(ingest(make_record, context, resource, "4.0"))
    assert [event.kind for event in outcome.events] == ([case.kind] if case.kind else [])
    assert not {WarningCode.ELEMENT_CARRIED, WarningCode.ELEMENT_DROPPED} & {w.code for w in outcome.warnings}


@pytest.mark.parametrize("name", XML)
def test_xml_inputs_convert_as_their_json_twin(
    name: str, make_record: Callable[..., IngestRecord], context: IngestContext
) -> None:
    """FHIR XML of the new types is read into the same resource as the JSON, and converted alike."""
    version = VERSIONS[name.split("/", maxsplit=1)[0]]
    from_xml = accepted(ingest(make_record, context, (FIXTURES / name).read_bytes(), version, "xml"))
    json_name = name.removesuffix(".xml") + ".json"
    from_json = accepted(ingest(make_record, context, (FIXTURES / json_name).read_bytes(), version))
    assert [event.resource for event in from_xml.events] == [event.resource for event in from_json.events]
    assert from_xml.warnings == from_json.warnings
    assert from_xml.steps[0] == f"decoded:xml/fhir-{version}"


def test_a_dropped_element_is_named_with_why_in_a_step_and_a_warning(
    make_record: Callable[..., IngestRecord], context: IngestContext
) -> None:
    """R5's rendering of a structured dosage says nothing the dosage does not: dropped, never silently."""
    result = r4_of(load("r5/medicationdispense.json"), "5.0")
    assert "renderedDosageInstruction" not in result.resource
    assert ("MedicationDispense.renderedDosageInstruction", "R5 rendering of the structured dosage kept") in {
        dropped_element(step) for step in result.steps
    }
    outcome = accepted(ingest(make_record, context, load("r5/medicationdispense.json"), "5.0"))
    assert any(
        w.code is WarningCode.ELEMENT_DROPPED
        and w.detail.startswith("MedicationDispense.renderedDosageInstruction (1 resource): dropped")
        for w in outcome.warnings
    )


# ---------------------------------------------------------------------------------------------------
# Rules of the new types


@pytest.mark.parametrize(
    ("status", "lifecycle", "achievement", "carried"),
    [
        ("proposed", "proposed", None, False),
        ("in-progress", "active", "in-progress", False),
        ("ahead-of-target", "active", "in-progress", True),
        ("sustaining", "active", "sustaining", False),
        ("achieved", "completed", "achieved", False),
        ("cancelled", "cancelled", None, False),
    ],
)
def test_stu3_goal_status_is_r4s_lifecycle_and_achievement(
    status: str, lifecycle: str, achievement: str | None, carried: bool
) -> None:
    """A progress against target R4 cannot say (ahead, behind, on target) keeps its STU3 code, carried."""
    resource = r4_of(load("stu3/goal.json") | {"status": status}, "3.0").resource
    assert resource["lifecycleStatus"] == lifecycle
    assert (resource.get("achievementStatus") or {"coding": [{"code": None}]})["coding"][0][
        "code"
    ] == achievement
    assert bool(resource.get("extension")) is carried


def test_stu3_not_given_and_not_done_flags_become_statuses() -> None:
    """STU3's notGiven / notDone are R4 statuses: not-done, declined; a reason moves with them."""
    reason = {
        "coding": [{"system": "http://snomed.info/sct", "code": "591000119102", "display": "Vaccine refused"}]
    }
    immunization = load("stu3/immunization.json") | {
        "notGiven": True,
        "explanation": {"reasonNotGiven": [reason]},
    }
    resource = r4_of(immunization, "3.0").resource
    assert (resource["status"], resource["statusReason"]) == ("not-done", reason)
    dispense = load("stu3/medicationdispense.json") | {
        "notDone": True,
        "notDoneReasonCodeableConcept": reason,
    }
    resource = r4_of(dispense, "3.0").resource
    assert (resource["status"], resource["statusReasonCodeableConcept"]) == ("declined", reason)


@pytest.mark.parametrize(
    ("name", "change", "element"),
    [
        ("r5/composition.json", {"status": "corrected"}, "Composition.status"),
        ("r5/careplan.json", {"intent": "directive"}, "CarePlan.intent"),
        ("r5/task.json", {"doNotPerform": True}, "Task.doNotPerform"),
        ("stu3/familymemberhistory.json", {"notDone": True}, "FamilyMemberHistory.notDone"),
    ],
)
def test_a_meaning_r4_cannot_express_is_still_refused(
    name: str, change: dict[str, Any], element: str
) -> None:
    """A status without an R4 code, or a modifier R4 would misread, is refused, not carried."""
    result = convert_to_r4(load(name) | change, VERSIONS[name.split("/", maxsplit=1)[0]])
    assert isinstance(result, Unconvertible)
    assert result.code is ErrorCode.FHIR_VERSION_UNSUPPORTED
    assert result.detail.startswith(f"{element}:")


@pytest.mark.parametrize("version", ["3.0", "5.0"])
def test_a_contained_binary_is_converted_with_its_document(version: str) -> None:
    """A document's bytes may travel contained in it: the Binary is converted with the DocumentReference."""
    folder = "stu3" if version == "3.0" else "r5"
    binary = load(f"{folder}/binary.json")
    document = load(f"{folder}/documentreference.json") | {"contained": [binary]}
    resource = r4_of(document, version).resource
    (contained,) = resource["contained"]
    assert (contained["resourceType"], contained["contentType"]) == ("Binary", "application/pdf")
    assert contained["data"].startswith("JVBERi0")


# ---------------------------------------------------------------------------------------------------
# What is no clinical data, in every version


def _not_clinical(resource_type: str, version: str) -> dict[str, Any]:
    """A minimal valid resource of a type that is no clinical data, in a version's shape."""
    status = {"status": "active"}
    url = {"url": "https://hub.example/fhir/x"}
    return {
        "StructureDefinition": url
        | status
        | {
            "name": "FrPatient",
            "kind": "resource",
            "abstract": False,
            "type": "Patient",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
            "derivation": "constraint",
        },
        "CodeSystem": url | status | {"content": "not-present"},
        "Questionnaire": status | {"item": [{"linkId": "1", "text": "Fumez-vous ?", "type": "boolean"}]},
        "PlanDefinition": status | {"title": "Parcours diabète"},
        "Parameters": {"parameter": [{"name": "code", "valueString": "fievre"}]},
        "Group": {"type": "person", "actual": True}
        if version != "5.0"
        else {"type": "person", "membership": "enumerated"},
    }[resource_type] | {"resourceType": resource_type}


@pytest.mark.parametrize("version", ["3.0", "4.0", "5.0"])
@pytest.mark.parametrize(
    ("resource_type", "why"),
    [
        ("StructureDefinition", "a conformance resource, not clinical data for a patient's pathway"),
        ("CodeSystem", "a terminology resource, not clinical data for a patient's pathway"),
        ("Questionnaire", "a knowledge or definition resource, not clinical data for a patient's pathway"),
        ("PlanDefinition", "a knowledge or definition resource, not clinical data for a patient's pathway"),
        ("Parameters", "an operation's parameters or outcome, not clinical data for a patient's pathway"),
        ("Group", "a group of subjects (a cohort, a household), not one patient's record"),
    ],
)
def test_what_is_no_clinical_data_is_refused_alike_in_every_version(
    resource_type: str,
    why: str,
    version: str,
    make_record: Callable[..., IngestRecord],
    context: IngestContext,
) -> None:
    """``fhir.invalid``, naming the type and why: the same answer whichever version the source sends."""
    outcome = ingest(make_record, context, _not_clinical(resource_type, version), version)
    assert isinstance(outcome, Rejected), outcome
    assert (outcome.code, outcome.detail) == (ErrorCode.FHIR_INVALID, f"{resource_type}: {why}")


@pytest.mark.parametrize("version", ["3.0", "4.0", "5.0"])
def test_no_clinical_data_inside_a_bundle_or_contained_refuses_the_input(
    version: str, make_record: Callable[..., IngestRecord], context: IngestContext
) -> None:
    """A Bundle is all or nothing; a contained resource is part of the one that holds it."""
    questionnaire = _not_clinical("Questionnaire", version) | {"id": "q"}
    flag = load("r5/flag.json")  # a Flag is the same in every version but for its category's cardinality
    if version == "3.0":
        flag = load("stu3/flag.json")
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": flag}, {"resource": questionnaire}],
    }
    outcome = ingest(make_record, context, bundle, version)
    assert isinstance(outcome, Rejected) and outcome.code is ErrorCode.FHIR_INVALID
    assert "entry" in outcome.detail and "Questionnaire: a knowledge or definition resource" in outcome.detail
    outcome = ingest(make_record, context, flag | {"contained": [questionnaire]}, version)
    assert isinstance(outcome, Rejected) and outcome.code is ErrorCode.FHIR_INVALID
    assert "Questionnaire: a knowledge or definition resource" in outcome.detail


def test_an_r4_account_event_names_the_patient_in_its_subject_list(
    make_record: Callable[..., IngestRecord], context: IngestContext
) -> None:
    """R4 Account and Invoice name the patient in ``subject`` (a list for Account), which keeps its shape."""
    account = {"resourceType": "Account", "status": "active", "subject": [{"reference": "Patient/example"}]}
    (event,) = accepted(ingest(make_record, context, account, "4.0")).events
    (subject,) = event.resource["subject"]
    assert subject["reference"] == f"Patient/{event.patient_id}"
    invoice = {"resourceType": "Invoice", "status": "issued", "subject": {"reference": "Patient/example"}}
    (event,) = accepted(ingest(make_record, context, invoice, "4.0")).events
    assert event.resource["subject"]["reference"] == f"Patient/{event.patient_id}"


def test_a_carried_primitive_loses_only_its_own_extensions_and_says_so() -> None:
    """R4's Extension has no place for the extensions of a carried value: named, as a dropped element."""
    absent = {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
        ]
    }
    result = r4_of(load("r5/goal.json") | {"_continuous": absent}, "5.0")
    assert at(result.resource, "extension.0") == {
        "url": f"{EXTENSION['5.0']}Goal.continuous",
        "valueBoolean": False,
    }
    assert ("Goal.continuous.extension", "R4 has no place for it on a carried value") in {
        dropped_element(step) for step in result.steps
    }
