"""STU3 and R5 on ingest's one path (hub/ingest/decode.py, hub/normalise/versions.py): validated once in
their own version, converted in place, then checked once as R4; what only the R4 check refuses stays
refused with the same code and detail, and the cheaper paths give exactly what the full ones gave."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import get_fhir_model_class as r4_model
from fhir.resources.R4B.resource import Resource
from pydantic import BaseModel

from hub.errors import ErrorCode
from hub.ingest.decode import ContentType, Decoded, decode
from hub.ingest.outcome import Rejected
from hub.normalise import fast_validation, versions
from hub.normalise.instants import fix_naive_times_before_validation
from hub.normalise.versions import Converted, convert_to_r4

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir-versions"
UNSUPPORTED = {"stu3/referralrequest.json", "r5/transport.json"}
CONVERTIBLE = sorted(
    f"{path.parent.name}/{path.name}"
    for path in FIXTURES.glob("*/*.json")
    if f"{path.parent.name}/{path.name}" not in UNSUPPORTED
)
VERSIONS = {"stu3": "3.0", "r5": "5.0"}
PARIS = ZoneInfo("Europe/Paris")


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return document


def version_of(name: str) -> str:
    return VERSIONS[name.split("/", maxsplit=1)[0]]


def decode_json(document: dict[str, Any], version: str) -> Decoded | Rejected:
    body = json.dumps(document).encode()
    return decode(body, ContentType("json", version), default_version="4.0", zone=PARIS)


def refused(document: dict[str, Any], version: str) -> Rejected:
    result = decode_json(document, version)
    assert isinstance(result, Rejected), result
    return result


# --- what only R4 refuses, once converted -------------------------------------------------------------


def test_a_stu3_goal_without_subject_is_valid_stu3_but_refused_once_converted() -> None:
    """STU3's Goal.subject is optional, R4's is required: the R4 check after conversion refuses it."""
    goal = load("stu3/goal.json")
    del goal["subject"]
    assert versions.validate_version(goal, "3.0") is None
    result = refused(goal, "3.0")
    assert result.code is ErrorCode.FHIR_VERSION_UNSUPPORTED
    assert result.detail == "not valid R4 once converted: Goal.subject: required element missing"


def test_a_stu3_frequency_below_one_is_valid_stu3_but_refused_once_converted() -> None:
    """STU3's Timing.repeat.frequency is an integer, R4's a positiveInt."""
    request = load("stu3/medicationrequest.json")
    request["dosageInstruction"][0]["timing"]["repeat"]["frequency"] = -1
    assert versions.validate_version(request, "3.0") is None
    result = refused(request, "3.0")
    assert result.code is ErrorCode.FHIR_VERSION_UNSUPPORTED
    assert result.detail == (
        "not valid R4 once converted: MedicationRequest.dosageInstruction.0.timing.repeat.frequency: "
        "out of its allowed range"
    )


def test_an_r5_reference_r4_does_not_allow_is_refused_by_its_element() -> None:
    """R5 models do not check reference targets; R4's allowed types are checked on the converted form."""
    team = load("r5/careteam.json")
    team["participant"][0]["onBehalfOf"] = {"reference": "Patient/example"}
    assert versions.validate_version(team, "5.0") is None
    result = refused(team, "5.0")
    assert result.code is ErrorCode.FHIR_VERSION_UNSUPPORTED
    assert (
        result.detail
        == "CareTeam.participant.onBehalfOf: R4 does not allow a reference to that resource type here"
    )


def test_of_two_bad_references_the_first_in_model_order_is_named_whatever_the_input_order() -> None:
    """The reference check reads only the elements present, yet in the model's order (the R4B models
    list elements alphabetically) as a full walk did, not in the order the input or converter wrote."""
    team = load("r5/careteam.json")
    team["subject"] = {"reference": "Device/pump"}
    team["managingOrganization"] = [{"reference": "Patient/example"}]
    subject_first = {"subject": team["subject"], **team}
    organization_first = {"managingOrganization": team["managingOrganization"], **team}
    for document in (subject_first, organization_first):
        assert refused(document, "5.0").detail == (
            "CareTeam.managingOrganization: R4 does not allow a reference to that resource type here"
        )


def test_a_bad_reference_in_a_bundle_entry_is_named_from_the_entry_resource() -> None:
    bundle = load("stu3/bundle-transaction.json")
    condition = bundle["entry"][1]["resource"]
    condition["asserter"] = {"reference": "Device/pump"}  # STU3 Condition.asserter: any; R4's: no Device
    result = refused(bundle, "3.0")
    assert result.code is ErrorCode.FHIR_VERSION_UNSUPPORTED
    assert result.detail == "Condition.asserter: R4 does not allow a reference to that resource type here"


# --- converted in place: the same result as from a copy -----------------------------------------------


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_a_given_up_document_converts_to_exactly_what_a_copy_converts_to(name: str) -> None:
    version = version_of(name)
    kept = convert_to_r4(load(name), version)
    given_up = convert_to_r4(load(name), version, given_up=True)
    assert isinstance(kept, Converted), kept
    assert given_up == kept


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_ingest_decodes_a_fixture_to_exactly_the_standalone_conversion(name: str) -> None:
    """decode converts its own parsed document in place: the resource and steps are the converter's."""
    document, version = load(name), version_of(name)
    result = decode_json(document, version)
    assert isinstance(result, Decoded), result
    repaired, _ = fix_naive_times_before_validation(document, PARIS)  # as decode does first
    alone = convert_to_r4(repaired, version)
    assert isinstance(alone, Converted), alone
    assert result.resource == alone.resource
    assert result.steps[len(result.steps) - len(alone.steps) :] == alone.steps
    assert document == load(name), "the caller's document is not touched"


def test_the_default_conversion_still_leaves_its_input_as_it_was() -> None:
    bundle = load("stu3/bundle-transaction.json")
    before = copy.deepcopy(bundle)
    assert isinstance(convert_to_r4(bundle, "3.0"), Converted)
    assert bundle == before


# --- the reference check over set fields finds what a walk of every field finds -----------------------


def _every_field_walk(model: BaseModel, path: str) -> str | None:
    """The reference check as it was: every field of every model, set or not (the oracle)."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        types = extra.get("enum_reference_types")
        allowed = frozenset(str(kind) for kind in types) if isinstance(types, list) else {"Resource"}
        where = f"{path}.{field.alias or name}"
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, BaseModel):
                continue
            named = versions._referenced_type(item) if "Resource" not in allowed else None
            if named is not None and named not in allowed:
                return f"{where}: R4 does not allow a reference to that resource type here"
            inner = item.get_resource_type() if isinstance(item, Resource) else where
            problem = _every_field_walk(item, inner)
            if problem is not None:
                return problem
    return None


def _reference_nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for child in node.values():
            yield from _reference_nodes(child)
    elif isinstance(node, list):
        for child in node:
            yield from _reference_nodes(child)


_TARGETS = ("Patient/p", "Device/d", "Organization/o", "Encounter/e", "Group/g")


def _retargeted(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The resource with one of its references, in turn, naming each of a few resource types."""
    count = sum(1 for _ in _reference_nodes(resource))
    for index in range(count):
        for target in _TARGETS:
            changed = copy.deepcopy(resource)
            node = list(_reference_nodes(changed))[index]
            node["reference"] = target
            yield changed


def test_the_reference_check_agrees_with_a_walk_of_every_field() -> None:
    """Every fixture's R4 form with each reference pointed at several types: the same verdict and words
    from the check on the model and from the check on the document (used where the compiled first look
    accepts the converted resource, so that no R4 model is built)."""
    verdicts: list[str | None] = []
    for name in CONVERTIBLE:
        converted = convert_to_r4(load(name), version_of(name))
        assert isinstance(converted, Converted), converted
        for resource in _retargeted(converted.resource):
            resource_type = resource["resourceType"]
            model = r4_model(resource_type).model_validate(resource)
            found = versions._reference_problem(model, resource_type)
            assert found == _every_field_walk(model, resource_type), (name, found)
            assert fast_validation.models_accept(resource, "4.0"), (name, resource_type)
            in_document = versions._document_reference_problem
            assert in_document(resource, r4_model(resource_type), resource_type) == found, name
            verdicts.append(found)
    assert any(v is None for v in verdicts) and sum(v is not None for v in verdicts) > 50, (
        "both verdicts seen"
    )


# --- found while measuring: an R5 relation without a referenced composition ---------------------------


@pytest.mark.parametrize(
    "relation",
    [{"type": "replaces"}, {"type": "replaces", "resource": "http://example.org/Composition/cr-v1"}],
)
def test_an_r5_composition_relation_naming_no_composition_by_reference_is_carried(
    relation: dict[str, Any],
) -> None:
    """R5 relatesTo is a RelatedArtifact whose resourceReference is optional; R4's target is required.
    Such a relation used to crash the converter (a KeyError, an internal error on ingest)."""
    composition = load("r5/composition.json")
    composition["relatesTo"] = [relation]
    assert versions.validate_version(composition, "5.0") is None
    result = decode_json(composition, "5.0")
    assert isinstance(result, Decoded), result
    assert "relatesTo" not in result.resource
    carried = [
        extension
        for extension in result.resource["extension"]
        if extension["url"] == "http://hl7.org/fhir/5.0/StructureDefinition/extension-Composition.relatesTo"
    ]
    assert [item["url"] for item in carried[0]["extension"]] == [
        "type",
        *(["resource"] if len(relation) > 1 else []),
    ]
