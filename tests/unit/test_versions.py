"""STU3 and R5 resources converted to canonical R4 (hub.normalise.versions), on realistic examples.

Every fixture under ``tests/fixtures/fhir-versions`` is first proven valid in its own version, then
converted, then proven valid as R4 (with fhir.resources' R4B models, DESIGN.md section 4).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from fhir.resources import get_fhir_model_class as r5_model
from fhir.resources.R4B import get_fhir_model_class as r4_model
from fhir.resources.STU3 import get_fhir_model_class as stu3_model

from hub.normalise.versions import (
    SUPPORTED_TYPES,
    Converted,
    Unconvertible,
    convert_to_r4,
    validate_version,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir-versions"
VERSIONS = {"stu3": "3.0", "r5": "5.0"}
MODELS = {"3.0": stu3_model, "5.0": r5_model}
UNSUPPORTED = {"stu3/referralrequest.json", "r5/transport.json"}
ALL_JSON = sorted(f"{path.parent.name}/{path.name}" for path in FIXTURES.glob("*/*.json"))
CONVERTIBLE = [name for name in ALL_JSON if name not in UNSUPPORTED]

CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
STU3_EXT = "http://hl7.org/fhir/3.0/StructureDefinition/extension-"
R5_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"
ADHERENCE = "http://hl7.org/fhir/CodeSystem/medication-statement-adherence"


@cache
def _text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def load(name: str) -> dict[str, Any]:
    """A fresh copy of a JSON fixture, e.g. ``load("stu3/condition.json")``."""
    document: dict[str, Any] = json.loads(_text(name))
    return document


def version_of(name: str) -> str:
    return VERSIONS[name.split("/", maxsplit=1)[0]]


def converted(document: dict[str, Any], version: str) -> Converted:
    result = convert_to_r4(document, version)
    assert isinstance(result, Converted), result
    return result


def convert(name: str, **changes: Any) -> Converted:
    """Convert a fixture, with top-level elements replaced (None removes one)."""
    document = load(name)
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return converted(document, version_of(name))


def refusal(name: str, document: dict[str, Any] | None = None) -> str:
    result = convert_to_r4(document if document is not None else load(name), version_of(name))
    assert isinstance(result, Unconvertible), result
    return result.detail


def assert_valid_r4(resource: dict[str, Any]) -> None:
    r4_model(resource["resourceType"]).model_validate(resource)


def leaf_values(value: Any) -> Iterator[str]:
    """Strings of a document that look like data (dates, ids, names, free text), not like codes."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaf_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaf_values(item)
    elif isinstance(value, str) and len(value) >= 6 and any(ch.isdigit() or ch in " /" for ch in value):
        yield value


def codes(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(coding["system"], coding["code"]) for coding in concept["coding"]}


def carried(resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    """The cross-version extensions of one URL on an element."""
    return [extension for extension in resource.get("extension", ()) if extension["url"] == url]


# ---------------------------------------------------------------------------------------------------
# Every fixture


def test_the_fixtures_cover_every_supported_type_in_both_versions() -> None:
    for folder in VERSIONS:
        produced = {
            converted(load(name), version_of(name)).resource["resourceType"]
            for name in CONVERTIBLE
            if name.startswith(f"{folder}/")
        }
        assert produced == SUPPORTED_TYPES, folder


def test_supported_types_are_the_agreed_list() -> None:
    # R4 names: STU3's ProcedureRequest is converted to a ServiceRequest.
    assert {
        "Patient",
        "Practitioner",
        "Organization",
        "Encounter",
        "EpisodeOfCare",
        "Condition",
        "Observation",
        "Procedure",
        "MedicationRequest",
        "MedicationStatement",
        "AllergyIntolerance",
        "DiagnosticReport",
        "ServiceRequest",
        "DocumentReference",
        "CareTeam",
        "Consent",
        "Immunization",
        "MedicationDispense",
        "MedicationAdministration",
        "List",
        "Composition",
        "Task",
        "QuestionnaireResponse",
        "RiskAssessment",
        "CarePlan",
        "Goal",
        "Flag",
        "FamilyMemberHistory",
        "Specimen",
        "Device",
        "Binary",
        "Bundle",
    } == SUPPORTED_TYPES


@pytest.mark.parametrize("name", ALL_JSON)
def test_fixture_is_valid_in_its_own_version(name: str) -> None:
    document = load(name)
    version = version_of(name)
    MODELS[version](document["resourceType"]).model_validate(document)
    assert validate_version(document, version) is None


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_fixture_converts_to_valid_r4(name: str) -> None:
    result = convert(name)
    assert_valid_r4(result.resource)
    assert result.resource["resourceType"] in SUPPORTED_TYPES
    assert all(isinstance(step, str) and step for step in result.steps)


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_conversion_does_not_modify_its_input(name: str) -> None:
    document = load(name)
    before = copy.deepcopy(document)
    result = converted(document, version_of(name))
    assert document == before
    # Nor does the result share objects with the input: changing one leaves the other alone.
    result.resource.clear()
    assert document == before


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_steps_name_elements_never_values(name: str) -> None:
    document = load(name)
    steps = " | ".join(converted(document, version_of(name)).steps)
    leaked = [value for value in leaf_values(document) if value in steps]
    assert leaked == []


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("stu3/referralrequest.json", "ReferralRequest cannot be converted from STU3 yet"),
        ("r5/transport.json", "Transport cannot be converted from R5 yet"),
    ],
)
def test_types_outside_the_supported_list_are_refused_not_guessed(name: str, detail: str) -> None:
    assert refusal(name) == detail


def test_only_stu3_and_r5_are_converted() -> None:
    result = convert_to_r4(load("stu3/patient.json"), "4.0")
    assert isinstance(result, Unconvertible)
    assert "STU3" in result.detail


def test_results_are_frozen() -> None:
    result = convert("stu3/patient.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.steps = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Unconvertible("x").detail = "y"  # type: ignore[misc]


def test_an_element_no_rule_names_is_refused_by_name() -> None:
    document = load("stu3/patient.json") | {"birthPlace": "Pointe-à-Pitre"}
    detail = refusal("stu3/patient.json", document)
    assert detail == "Patient.birthPlace: R4 has no element for it"


def test_validate_version_gives_locations_and_error_types_never_values() -> None:
    document = load("stu3/condition.json") | {"onsetDateTime": "le 2 avril 2013"}
    detail = validate_version(document, "3.0")
    assert detail is not None
    assert "onsetDateTime" in detail
    assert "avril" not in detail
    assert validate_version({"resourceType": "Nope"}, "5.0") == "no known FHIR resourceType"
    assert validate_version(load("r5/encounter.json"), "3.0") is not None  # an R5 Encounter is no STU3 one


# ---------------------------------------------------------------------------------------------------
# XML


@pytest.mark.parametrize(
    ("name", "version"),
    [("stu3/condition.xml", "3.0"), ("r5/encounter.xml", "5.0")],
)
def test_xml_is_read_with_its_own_version_model_then_converted(name: str, version: str) -> None:
    body = (FIXTURES / name).read_bytes()
    resource_type = name.split("/")[1].split(".", maxsplit=1)[0].capitalize()
    model = MODELS[version](resource_type).model_validate_xml(body)
    document = json.loads(model.model_dump_json(exclude_none=True))
    assert validate_version(document, version) is None
    result = converted(document, version)
    assert_valid_r4(result.resource)
    if version == "3.0":
        assert codes(result.resource["clinicalStatus"]) == {(CONDITION_CLINICAL, "active")}
        assert result.resource["encounter"] == {"reference": "Encounter/example"}
        assert result.resource["recordedDate"] == "2012-05-24"
    else:
        assert result.resource["status"] == "in-progress"
        assert result.resource["class"]["code"] == "HH"
        assert result.resource["participant"][0]["individual"] == {"reference": "Practitioner/example"}
        assert result.resource["reasonCode"] == [{"text": "Suivi post-infarctus à domicile"}]


# ---------------------------------------------------------------------------------------------------
# STU3 → R4, type by type


def test_stu3_patient_keeps_primitive_extensions_and_drops_stu3_profiles() -> None:
    result = convert("stu3/patient.json")
    assert result.resource["_birthDate"]["extension"][0]["url"].endswith("patient-birthTime")
    assert "meta" not in result.resource
    assert "Patient.meta.profile dropped (profiles of the source version)" in result.steps


def test_stu3_animal_patient_is_refused() -> None:
    document = load("stu3/patient.json") | {"animal": {"species": {"text": "Chien"}}}
    assert refusal("stu3/patient.json", document) == "Patient.animal: R4 has no animal patients"


def test_stu3_condition_statuses_become_codeable_concepts() -> None:
    resource = convert("stu3/condition.json").resource
    assert codes(resource["clinicalStatus"]) == {(CONDITION_CLINICAL, "resolved")}
    assert codes(resource["verificationStatus"]) == {
        ("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed")
    }
    assert resource["encounter"] == {"reference": "Encounter/f201"}
    assert resource["recordedDate"] == "2013-04-04"
    assert len(resource["stage"]) == 1
    assert not {"context", "assertedDate"} & set(resource)


def test_stu3_condition_unknown_verification_and_entered_in_error() -> None:
    assert "verificationStatus" not in convert("stu3/condition.json", verificationStatus="unknown").resource
    resource = convert("stu3/condition.json", verificationStatus="entered-in-error").resource
    assert "clinicalStatus" not in resource  # R4 con-5


def test_stu3_condition_abatement_boolean() -> None:
    resource = convert("stu3/condition.json", abatementString=None, abatementBoolean=True).resource
    assert "abatementBoolean" not in resource  # "resolved" already says it
    document = load("stu3/condition.json") | {"clinicalStatus": "active", "abatementBoolean": True}
    document.pop("abatementString")
    assert refusal("stu3/condition.json", document).startswith("Condition.abatementBoolean:")


def test_stu3_context_of_an_episode_of_care_has_no_r4_encounter_and_is_carried() -> None:
    result = convert("stu3/condition.json", context={"reference": "EpisodeOfCare/example"})
    assert "encounter" not in result.resource
    assert carried(result.resource, f"{STU3_EXT}Condition.context") == [
        {"url": f"{STU3_EXT}Condition.context", "valueReference": {"reference": "EpisodeOfCare/example"}}
    ]
    assert "Condition.context → cross-version extension (R3→R4)" in result.steps


def test_stu3_allergy_intolerance() -> None:
    resource = convert("stu3/allergyintolerance.json").resource
    assert codes(resource["clinicalStatus"]) == {
        ("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active")
    }
    assert codes(resource["verificationStatus"]) == {
        ("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed")
    }
    assert resource["recordedDate"] == "2014-10-09T14:58:00+11:00"
    resolved = convert("stu3/allergyintolerance.json", clinicalStatus="resolved").resource
    assert resolved["clinicalStatus"]["coding"][0]["code"] == "resolved"


def test_stu3_observation() -> None:
    resource = convert("stu3/observation.json").resource
    assert resource["encounter"] == {"reference": "Encounter/f001"}
    assert resource["interpretation"][0]["coding"][0]["code"] == "H"
    assert resource["note"] == [{"text": "Prélèvement à jeun."}]
    assert resource["derivedFrom"] == [{"reference": "Observation/f002"}]
    # A relation R4 has no element for, and an attachment value, are carried, not refused.
    sequel = convert(
        "stu3/observation.json", related=[{"type": "sequel-to", "target": {"reference": "Observation/x"}}]
    ).resource
    assert carried(sequel, f"{STU3_EXT}Observation.related") == [
        {
            "url": f"{STU3_EXT}Observation.related",
            "extension": [
                {"url": "type", "valueCode": "sequel-to"},
                {"url": "target", "valueReference": {"reference": "Observation/x"}},
            ],
        }
    ]
    attachment = convert(
        "stu3/observation.json", valueQuantity=None, valueAttachment={"title": "ECG"}
    ).resource
    assert carried(attachment, f"{STU3_EXT}Observation.value")[0]["valueAttachment"] == {"title": "ECG"}


def test_stu3_procedure_not_done_and_statuses() -> None:
    resource = convert("stu3/procedure.json").resource
    assert resource["performer"][0]["function"]["coding"][0]["code"] == "304292004"
    assert resource["encounter"] == {"reference": "Encounter/f001"}
    reason = {"coding": [{"system": "http://snomed.info/sct", "code": "183932001"}]}
    not_done = convert("stu3/procedure.json", notDone=True, notDoneReason=reason).resource
    assert not_done["status"] == "not-done"
    assert not_done["statusReason"] == reason
    assert convert("stu3/procedure.json", status="suspended").resource["status"] == "on-hold"
    assert convert("stu3/procedure.json", status="aborted").resource["status"] == "stopped"


def test_stu3_procedure_request_becomes_a_service_request() -> None:
    result = convert("stu3/procedurerequest.json")
    resource = result.resource
    assert resource["resourceType"] == "ServiceRequest"
    assert resource["requester"] == {"reference": "Practitioner/example", "display": "Dr Adam Careful"}
    assert resource["extension"] == [
        {
            "url": "http://hl7.org/fhir/3.0/StructureDefinition/extension-ProcedureRequest.requester.onBehalfOf",
            "valueReference": {"reference": "Organization/f001"},
        }
    ]
    assert resource["performer"] == [{"reference": "Practitioner/example"}]
    assert resource["encounter"] == {"reference": "Encounter/example"}
    assert "ProcedureRequest → ServiceRequest (STU3 map)" in result.steps
    assert convert("stu3/procedurerequest.json", status="suspended").resource["status"] == "on-hold"
    assert convert("stu3/procedurerequest.json", status="cancelled").resource["status"] == "revoked"


def test_stu3_definition_references_are_carried() -> None:
    definition = [{"reference": "ActivityDefinition/x"}]
    resource = convert("stu3/procedurerequest.json", definition=definition).resource
    assert carried(resource, f"{STU3_EXT}ProcedureRequest.definition") == [
        {"url": f"{STU3_EXT}ProcedureRequest.definition", "valueReference": definition[0]}
    ]


def test_stu3_medication_request_dosage_and_substitution() -> None:
    resource = convert("stu3/medicationrequest.json").resource
    dosage = resource["dosageInstruction"][0]
    assert dosage["doseAndRate"] == [
        {"doseQuantity": {"value": 500, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}
    ]
    assert "doseQuantity" not in dosage
    assert resource["substitution"] == {"allowedBoolean": True}
    assert resource["category"][0]["coding"][0]["code"] == "outpatient"
    assert resource["requester"]["reference"] == "Practitioner/f007"


@pytest.mark.parametrize(
    ("status", "taken", "expected"),
    [
        ("active", "y", "active"),
        ("active", "n", "not-taken"),
        ("intended", "n", "intended"),
        ("completed", "unk", "unknown"),
        ("entered-in-error", "n", "entered-in-error"),
        ("intended", "na", "intended"),
    ],
)
def test_stu3_medication_statement_taken_becomes_the_status(status: str, taken: str, expected: str) -> None:
    resource = convert("stu3/medicationstatement.json", status=status, taken=taken).resource
    assert resource["status"] == expected
    assert "taken" not in resource
    assert resource["dosage"][0]["doseAndRate"][0]["doseRange"]["high"]["value"] == 2


def test_stu3_medication_statement_not_taken_reason_and_refused_na() -> None:
    reason = [{"coding": [{"system": "http://snomed.info/sct", "code": "266710000"}]}]
    resource = convert("stu3/medicationstatement.json", taken="n", reasonNotTaken=reason).resource
    assert resource["statusReason"] == reason
    document = load("stu3/medicationstatement.json") | {"taken": "na"}
    assert refusal("stu3/medicationstatement.json", document).startswith("MedicationStatement.taken:")


def test_stu3_encounter() -> None:
    resource = convert("stu3/encounter.json").resource
    assert resource["basedOn"] == [{"reference": "ServiceRequest/example"}]  # a ReferralRequest in STU3
    assert resource["appointment"] == [{"reference": "Appointment/example"}]
    assert resource["reasonCode"][0]["coding"][0]["code"] == "83800002"
    assert resource["diagnosis"][0]["use"]["coding"][0]["code"] == "AD"
    assert resource["class"]["code"] == "AMB"
    document = load("stu3/encounter.json")
    del document["class"]
    assert refusal("stu3/encounter.json", document) == "Encounter.class: R4 requires the encounter class"


def test_stu3_diagnostic_report() -> None:
    resource = convert("stu3/diagnosticreport.json").resource
    performer = resource["performer"][0]
    assert performer["reference"] == "Organization/f001"
    assert performer["extension"][0]["url"].endswith("extension-DiagnosticReport.performer.role")
    assert resource["media"][0]["comment"] == "Frottis sanguin"
    assert resource["conclusionCode"][0]["coding"][0]["code"] == "428763004"
    assert resource["basedOn"] == [{"reference": "ServiceRequest/req"}]
    assert resource["encounter"] == {"reference": "Encounter/f001"}


def test_stu3_document_reference() -> None:
    resource = convert("stu3/documentreference.json").resource
    assert resource["date"] == "2005-12-24T09:43:41+11:00"
    assert resource["category"][0]["coding"][0]["code"] == "History and Physical"
    assert resource["extension"] == [
        {
            "url": "http://hl7.org/fhir/3.0/StructureDefinition/extension-DocumentReference.created",
            "valueDateTime": "2005-12-24T09:35:00+11:00",
        }
    ]
    context = resource["context"]
    assert context["encounter"] == [{"reference": "Encounter/xcda"}]
    assert context["related"] == [
        {
            "reference": "Patient/xcda",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.3.6.1.4.1.21367.2005.3.7.2345"},
        }
    ]
    appended = load("stu3/documentreference.json") | {"docStatus": "appended"}
    assert refusal("stu3/documentreference.json", appended) == (
        "DocumentReference.docStatus: the code has no R4 equivalent"
    )


def test_stu3_care_team() -> None:
    resource = convert("stu3/careteam.json").resource
    assert resource["encounter"] == {"reference": "Encounter/example"}
    assert [participant["role"] for participant in resource["participant"]] == [
        [{"text": "responsiblePerson"}],
        [{"text": "adviser"}],
    ]


def test_stu3_consent_becomes_provisions() -> None:
    resource = convert("stu3/consent.json").resource
    assert codes(resource["scope"]) == {
        ("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy")
    }
    assert resource["policyRule"] == {
        "coding": [{"system": "urn:ietf:rfc:3986", "code": "http://hl7.org/fhir/ConsentPolicy/opt-in"}]
    }
    assert resource["performer"] == [{"reference": "Patient/f001"}]
    provision = resource["provision"]
    assert "type" not in provision  # the base policy is policyRule
    assert provision["period"] == {"start": "2015-11-18"}
    (exception,) = provision["provision"]
    assert exception["type"] == "deny"
    assert exception["actor"][0]["reference"]["reference"] == "Practitioner/f204"
    assert [action["coding"][0]["code"] for action in exception["action"]] == ["access", "correct"]


def test_stu3_consent_that_is_not_a_privacy_consent_is_refused() -> None:
    research = [{"coding": [{"system": "http://hl7.org/fhir/consentcategorycodes", "code": "research"}]}]
    document = load("stu3/consent.json") | {"category": research}
    assert refusal("stu3/consent.json", document).startswith("Consent.category:")


def test_stu3_transaction_bundle() -> None:
    result = convert("stu3/bundle-transaction.json")
    bundle = result.resource
    patient, condition, request = (entry["resource"] for entry in bundle["entry"])
    assert (patient["resourceType"], condition["resourceType"], request["resourceType"]) == (
        "Patient",
        "Condition",
        "ServiceRequest",
    )
    assert bundle["entry"][2]["request"] == {"method": "POST", "url": "ServiceRequest"}
    assert request["replaces"] == [{"reference": "ServiceRequest/prev-77"}]
    assert request["reasonReference"] == [{"reference": bundle["entry"][1]["fullUrl"]}]
    assert request["subject"] == {"reference": bundle["entry"][0]["fullUrl"]}
    assert condition["clinicalStatus"]["coding"][0]["code"] == "active"
    assert "entry[2] ProcedureRequest → ServiceRequest (STU3 map)" in result.steps


def test_a_bundle_with_one_unconvertible_entry_is_refused_whole() -> None:
    bundle = load("stu3/bundle-transaction.json")
    bundle["entry"].insert(
        1,
        {
            "resource": load("stu3/referralrequest.json"),
            "request": {"method": "POST", "url": "ReferralRequest"},
        },
    )
    assert refusal("stu3/bundle-transaction.json", bundle) == (
        "Bundle.entry[1]: ReferralRequest cannot be converted from STU3 yet"
    )
    bundle = load("stu3/bundle-transaction.json")
    bundle["entry"][0]["resource"]["animal"] = {"species": {"text": "Chat"}}
    assert (
        refusal("stu3/bundle-transaction.json", bundle)
        == "Bundle.entry[0]: Patient.animal: R4 has no animal patients"
    )


def test_a_reference_to_a_type_r4_lacks_is_refused() -> None:
    document = load("stu3/observation.json") | {"device": {"reference": "DeviceComponent/monitor-1"}}
    assert refusal("stu3/observation.json", document) == (
        "Observation.device: refers to a resource type R4 does not have"
    )
    document = load("r5/servicerequest.json") | {"basedOn": [{"reference": "Transport/t-1"}]}
    assert refusal("r5/servicerequest.json", document) == (
        "ServiceRequest.basedOn: refers to a resource type R4 does not have"
    )


def test_contained_resources_are_converted_too() -> None:
    medication = {"resourceType": "Patient", "id": "p", "animal": {"species": {"text": "Chien"}}}
    document = load("stu3/condition.json") | {"contained": [medication]}
    assert refusal("stu3/condition.json", document) == (
        "Condition.contained: Patient.animal: R4 has no animal patients"
    )
    request = load("stu3/procedurerequest.json") | {"id": "req"}
    document = load("stu3/diagnosticreport.json") | {
        "contained": [request],
        "basedOn": [{"reference": "#req"}],
    }
    resource = convert_to_r4(document, "3.0")
    assert isinstance(resource, Converted)
    assert resource.resource["contained"][0]["resourceType"] == "ServiceRequest"


# ---------------------------------------------------------------------------------------------------
# R5 → R4, type by type


def test_r5_encounter() -> None:
    resource = convert("r5/encounter.json").resource
    assert resource["status"] == "finished"
    assert resource["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "IMP",
        "display": "inpatient encounter",
    }
    assert resource["period"]["start"] == "2024-04-28T22:10:00+02:00"
    assert resource["serviceType"]["coding"][0]["code"] == "165"
    assert resource["reasonCode"][0]["coding"][0]["code"] == "29857009"
    assert resource["reasonReference"] == [{"reference": "Condition/example"}]
    assert resource["diagnosis"] == [
        {
            "condition": {"reference": "Condition/example"},
            "use": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                        "code": "DD",
                        "display": "Discharge diagnosis",
                    }
                ]
            },
        }
    ]
    hospitalization = resource["hospitalization"]
    assert hospitalization["admitSource"]["coding"][0]["code"] == "emd"
    assert hospitalization["dietPreference"][0]["coding"][0]["code"] == "dairy-free"
    assert resource["participant"][0]["individual"] == {"reference": "Practitioner/example"}
    assert resource["location"][0]["physicalType"]["coding"][0]["code"] == "wa"
    assert not {"actualPeriod", "plannedStartDate", "admission", "dietPreference"} & set(resource)


@pytest.mark.parametrize(("status", "expected"), [("on-hold", "onleave"), ("discharged", "finished")])
def test_r5_encounter_statuses(status: str, expected: str) -> None:
    assert convert("r5/encounter.json", status=status).resource["status"] == expected


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ({"status": "discontinued"}, "status"),
        ({"class": [{"coding": [{"code": "IMP"}]}, {"coding": [{"code": "VR"}]}]}, "class"),
        ({"participant": [{"actor": {"reference": "Patient/example"}}]}, "participant.individual"),
        ({"basedOn": [{"reference": "CarePlan/example"}]}, "basedOn"),
    ],
)
def test_r5_encounter_refusals(change: dict[str, Any], element: str) -> None:
    detail = refusal("r5/encounter.json", load("r5/encounter.json") | change)
    assert detail.startswith(f"Encounter.{element}:")


def test_r5_encounter_subject_status_is_carried() -> None:
    status = {"coding": [{"code": "departed"}]}
    resource = convert("r5/encounter.json", subjectStatus=status).resource
    assert carried(resource, f"{R5_EXT}Encounter.subjectStatus")[0]["valueCodeableConcept"] == status


def test_r5_condition() -> None:
    resource = convert("r5/condition.json").resource
    assert resource["recorder"] == {"reference": "Practitioner/example"}
    assert resource["asserter"] == {"reference": "Patient/example"}
    assert resource["evidence"] == [
        {
            "code": [
                {
                    "coding": [
                        {"system": "http://snomed.info/sct", "code": "29857009", "display": "Chest pain"}
                    ]
                }
            ]
        },
        {"detail": [{"reference": "Observation/troponin"}]},
    ]
    unknown = {"coding": [{"system": CONDITION_CLINICAL, "code": "unknown"}]}
    assert "clinicalStatus" not in convert("r5/condition.json", clinicalStatus=unknown).resource
    enterer = load("r5/condition.json")
    enterer["participant"][0]["function"]["coding"][0]["code"] = "enterer"
    resource = converted(enterer, "5.0").resource
    assert "recorder" not in resource  # an enterer is no R4 recorder: the participant is carried
    (participant,) = carried(resource, f"{R5_EXT}Condition.participant")
    assert [part["url"] for part in participant["extension"]] == ["function", "actor"]


@pytest.mark.parametrize(
    ("adherence", "expected"),
    [
        ("taking", "active"),
        ("not-taking", "not-taken"),
        ("stopped-as-directed", "stopped"),
        (None, "unknown"),
    ],
)
def test_r5_medication_statement_status_comes_from_adherence(adherence: str | None, expected: str) -> None:
    change = {"code": {"coding": [{"system": ADHERENCE, "code": adherence}]}} if adherence else None
    resource = convert("r5/medicationstatement.json", adherence=change).resource
    assert resource["status"] == expected
    assert resource["medicationCodeableConcept"]["coding"][0]["code"] == "313782"
    assert resource["context"] == {"reference": "Encounter/gp-visit"}
    assert resource["informationSource"] == {"reference": "Patient/example"}
    assert resource["dosage"][0]["asNeededBoolean"] is True


def test_r5_medication_statement_refusals() -> None:
    draft = load("r5/medicationstatement.json") | {"status": "draft"}
    assert refusal("r5/medicationstatement.json", draft).startswith("MedicationStatement.status:")
    off_plan = {"code": {"coding": [{"system": ADHERENCE, "code": "taking-not-as-directed"}]}}
    document = load("r5/medicationstatement.json") | {"adherence": off_plan}
    assert refusal("r5/medicationstatement.json", document).startswith("MedicationStatement.adherence:")
    error = convert("r5/medicationstatement.json", status="entered-in-error").resource
    assert error["status"] == "entered-in-error"


def test_r5_medication_request() -> None:
    resource = convert("r5/medicationrequest.json").resource
    assert resource["medicationCodeableConcept"]["coding"][0]["code"] == "316812"
    as_needed = resource["dosageInstruction"][1]
    assert as_needed["asNeededCodeableConcept"]["coding"][0]["code"] == "22253000"
    assert as_needed["maxDosePerPeriod"]["numerator"]["value"] == 3
    assert resource["dispenseRequest"]["performer"] == {"reference": "Organization/pharmacie-du-port"}
    assert resource["reasonCode"][0]["coding"][0]["code"] == "44054006"
    assert "renderedDosageInstruction" not in resource
    ended = load("r5/medicationrequest.json") | {"status": "ended"}
    assert refusal("r5/medicationrequest.json", ended).startswith("MedicationRequest.status:")
    text_only = load("r5/medicationrequest.json")
    del text_only["dosageInstruction"]
    rendered = carried(
        converted(text_only, "5.0").resource, f"{R5_EXT}MedicationRequest.renderedDosageInstruction"
    )
    assert rendered == [
        {
            "url": f"{R5_EXT}MedicationRequest.renderedDosageInstruction",
            "valueMarkdown": text_only["renderedDosageInstruction"],
        }
    ]


def test_r5_medication_request_reported_source() -> None:
    resource = convert(
        "r5/medicationrequest.json", reported=True, informationSource=[{"reference": "Patient/example"}]
    ).resource
    assert resource["reportedReference"] == {"reference": "Patient/example"}
    assert convert("r5/medicationrequest.json", reported=False).resource["reportedBoolean"] is False


def test_r5_allergy_intolerance() -> None:
    resource = convert("r5/allergyintolerance.json").resource
    assert resource["type"] == "allergy"
    assert resource["recorder"] == {"reference": "Practitioner/example"}
    assert resource["asserter"] == {"reference": "Patient/example"}
    assert resource["reaction"][0]["manifestation"][0]["coding"][0]["code"] == "39579001"
    presumed = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                "code": "presumed",
            }
        ]
    }
    document = load("r5/allergyintolerance.json") | {"verificationStatus": presumed}
    assert refusal("r5/allergyintolerance.json", document).startswith(
        "AllergyIntolerance.verificationStatus:"
    )


def test_r5_observation() -> None:
    result = convert("r5/observation.json")
    resource = result.resource
    assert "instantiatesCanonical" not in resource
    assert "meta" not in resource
    assert resource["component"][1]["referenceRange"][0]["text"] == "adulte"
    assert resource["encounter"] == {"reference": "Encounter/example"}
    triggered = convert(
        "r5/observation.json", triggeredBy=[{"observation": {"reference": "Observation/x"}, "type": "reflex"}]
    )
    assert carried(triggered.resource, f"{R5_EXT}Observation.triggeredBy") == [
        {
            "url": f"{R5_EXT}Observation.triggeredBy",
            "extension": [
                {"url": "observation", "valueReference": {"reference": "Observation/x"}},
                {"url": "type", "valueCode": "reflex"},
            ],
        }
    ]
    assert "Observation.triggeredBy → cross-version extension (R5→R4)" in triggered.steps


def test_r5_procedure() -> None:
    resource = convert("r5/procedure.json").resource
    assert resource["performedDateTime"] == "2013-04-05"
    assert resource["category"]["coding"][0]["code"] == "387713003"
    assert resource["complicationDetail"] == [{"reference": "Condition/wound-infection"}]
    assert resource["usedCode"][0]["coding"][0]["code"] == "469690008"
    assert resource["reasonCode"][0]["text"].startswith("Generalized abdominal pain")
    assert not {"recorded", "reportedBoolean", "occurrenceDateTime"} & set(resource)
    reported = convert(
        "r5/procedure.json", reportedBoolean=None, reportedReference={"reference": "Patient/example"}
    )
    assert reported.resource["asserter"] == {"reference": "Patient/example"}


def test_r5_service_request() -> None:
    resource = convert("r5/servicerequest.json").resource
    assert resource["code"]["coding"][0]["code"] == "183519002"
    assert resource["reasonCode"][0]["coding"][0]["code"] == "29857009"
    assert resource["reasonReference"] == [{"reference": "Condition/example"}]
    assert resource["supportingInfo"] == [{"reference": "Observation/blood-pressure"}]
    assert resource["patientInstruction"] == "Apporter l'ECG et les derniers bilans."
    detail = {"parameter": [{"code": {"text": "view"}, "valueString": "PA"}]}
    ordered = convert("r5/servicerequest.json", orderDetail=[detail]).resource
    (extension,) = carried(ordered, f"{R5_EXT}ServiceRequest.orderDetail")
    assert extension["extension"] == [
        {
            "url": "parameter",
            "extension": [
                {"url": "code", "valueCodeableConcept": {"text": "view"}},
                {"url": "value", "valueString": "PA"},
            ],
        }
    ]


def test_r5_diagnostic_report_attachments() -> None:
    result = convert("r5/diagnosticreport.json")
    form = result.resource["presentedForm"][0]
    assert form["size"] == 48211  # an integer64 string in R5, an unsignedInt in R4
    assert "pages" not in form
    assert (
        "DiagnosticReport.presentedForm.pages dropped (R5 presentation detail, no R4 element)" in result.steps
    )
    noted = convert("r5/diagnosticreport.json", note=[{"text": "Contrôle à 3 mois"}]).resource
    assert carried(noted, f"{R5_EXT}DiagnosticReport.note")[0]["valueAnnotation"] == {
        "text": "Contrôle à 3 mois"
    }


def test_r5_document_reference() -> None:
    resource = convert("r5/documentreference.json").resource
    assert resource["authenticator"] == {"reference": "Practitioner/example"}
    assert resource["relatesTo"] == [
        {"target": {"reference": "DocumentReference/cr-hospitalisation-v1"}, "code": "replaces"}
    ]
    content = resource["content"][0]
    assert content["attachment"]["size"] == 154210
    assert content["format"]["code"] == "urn:ihe:iti:xds:2017:mimeTypeSufficient"
    context = resource["context"]
    assert context["encounter"] == [{"reference": "Encounter/example"}]
    assert context["event"][0]["coding"][0]["code"] == "22298006"
    assert context["related"] == [{"reference": "ServiceRequest/cardio-referral"}]
    assert context["period"]["end"] == "2024-05-03T11:00:00+02:00"
    assert not {"version", "attester", "basedOn", "period", "facilityType"} & set(resource)
    legal = load("r5/documentreference.json")
    legal["attester"][0]["mode"]["coding"][0]["code"] = "legal"
    resource = converted(legal, "5.0").resource
    assert "authenticator" not in resource  # only an official attester is R4's authenticator
    assert len(carried(resource, f"{R5_EXT}DocumentReference.attester")) == 1


def test_r5_care_team_and_episode_of_care() -> None:
    team = convert("r5/careteam.json").resource
    assert team["participant"][0]["period"] == {"start": "2024-05-03", "end": "2024-08-03"}
    assert team["participant"][0]["role"][0]["coding"][0]["code"] == "224535009"
    assert team["reasonCode"][0]["coding"][0]["code"] == "22298006"
    episode = convert("r5/episodeofcare.json").resource
    assert episode["team"] == [{"reference": "CareTeam/example", "display": "example care team"}]
    assert episode["diagnosis"][0]["condition"] == {"reference": "Condition/stroke"}
    assert episode["diagnosis"][0]["role"]["coding"][0]["code"] == "CC"


def test_r5_consent() -> None:
    resource = convert("r5/consent.json").resource
    assert codes(resource["scope"]) == {
        ("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy")
    }
    assert resource["patient"]["reference"] == "Patient/example"
    assert resource["dateTime"] == "2015-11-18"
    assert resource["performer"] == [{"reference": "Patient/example"}]
    assert resource["organization"] == [{"reference": "Organization/hl7"}]
    assert resource["policyRule"]["coding"][0]["code"] == "OPTIN"
    assert resource["policy"] == [
        {"uri": "https://www.legifrance.gouv.fr/codes/article_lc/LEGIARTI000031929003"}
    ]
    assert resource["sourceAttachment"] == {"title": "The terms of the consent in lawyer speak."}
    assert resource["verification"][0]["verificationDate"] == "2015-11-18"
    provision = resource["provision"]
    assert provision["type"] == "permit"  # R5 decision
    assert provision["period"] == {"start": "2015-11-18"}
    (exception,) = provision["provision"]
    assert exception["type"] == "deny"  # an R5 provision negates the decision above it
    assert exception["actor"][0]["reference"]["reference"] == "Practitioner/f204"


def test_r5_consent_refusals() -> None:
    undecided = load("r5/consent.json")
    del undecided["decision"]
    assert refusal("r5/consent.json", undecided).startswith("Consent.provision:")
    vague = load("r5/consent.json") | {
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]
    }
    assert refusal("r5/consent.json", vague).startswith("Consent.category:")
    not_done = load("r5/consent.json") | {"status": "not-done"}
    assert refusal("r5/consent.json", not_done).startswith("Consent.status:")


def test_r5_organization_contacts() -> None:
    result = convert("r5/organization.json")
    resource = result.resource
    assert [telecom["system"] for telecom in resource["telecom"]] == ["phone", "email"]
    assert resource["address"][0]["city"] == "Basse-Terre"
    assert resource["contact"] == [
        {
            "purpose": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/contactentity-type", "code": "ADMIN"}
                ]
            },
            "telecom": [{"system": "phone", "value": "+590 590 80 54 00"}],
            "name": {"text": "Bureau des admissions"},
        }
    ]
    assert "description" not in resource


def test_r5_practitioner_and_patient() -> None:
    practitioner = convert("r5/practitioner.json").resource
    assert [language["coding"][0]["code"] for language in practitioner["communication"]] == ["fr", "en"]
    deceased = convert("r5/practitioner.json", deceasedBoolean=True).resource
    assert carried(deceased, f"{R5_EXT}Practitioner.deceased")[0]["valueBoolean"] is True
    patient = convert("r5/patient.json").resource
    assert patient["photo"] == [
        {"contentType": "image/jpeg", "url": "https://example.org/photos/cordier.jpg", "size": 20480}
    ]


def test_r5_collection_bundle() -> None:
    bundle = convert("r5/bundle-collection.json").resource
    assert bundle["timestamp"] == "2024-05-03T14:30:00+02:00"
    statement = bundle["entry"][2]["resource"]
    assert statement["status"] == "active"
    assert statement["medicationCodeableConcept"]["coding"][0]["code"] == "B01AC06"


def test_r5_extension_values() -> None:
    typed = {
        "url": "http://example.org/fhir/StructureDefinition/reason",
        "valueCodeableReference": {"concept": {"text": "x"}},
    }
    document = load("r5/condition.json") | {"extension": [typed]}
    assert refusal("r5/condition.json", document) == "Condition.extension: a value type R4 does not have"
    scan = {
        "url": "http://example.org/fhir/StructureDefinition/scan",
        "valueAttachment": {"url": "Binary/s", "size": "77", "width": 640},
    }
    resource = convert("r5/condition.json", extension=[scan]).resource
    assert resource["extension"][0]["valueAttachment"] == {"url": "Binary/s", "size": 77}
