"""The right code for the right fault, and details in words (issue 12, item 2).

Invalid input in its own version is ``fhir.invalid`` (required-binding codes are checked in the input's
version before conversion); ``fhir.version.unsupported`` is left for valid input R4 cannot express.
Every ``fhir.invalid`` detail is ``Type.element.path: what is wrong``, the same for JSON and XML and for
STU3, R4 and R5, and never quotes a value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.errors import ErrorCode
from hub.ingest.decode import ContentType, Decoded, decode
from hub.ingest.outcome import Rejected
from hub.normalise.versions import validate_version

Loader = Callable[[str], dict[str, Any]]
VERSIONS = Path(__file__).resolve().parents[1] / "fixtures" / "fhir-versions"
UTC_ZONE = ZoneInfo("UTC")
FAMILY = "DUPONTEL"  # patient data put where it does not belong: never echoed
NOT_IN_SET = "code not in its required value set"
ONE_TYPE = "only one of its types may be given"
#: pydantic's and fhir_core's error type names (value_error, extra_forbidden...), never shown bare.
ERROR_TYPE = re.compile(r"\b[a-z]+[_.][a-z_.]+\b")


def result_of(body: bytes, version: str, media: str = "json") -> Decoded | Rejected:
    return decode(body, ContentType(media, version), default_version="4.0", zone=UTC_ZONE)


def rejected(document: dict[str, Any], version: str = "4.0") -> Rejected:
    result = result_of(json.dumps(document).encode(), version)
    assert isinstance(result, Rejected), result
    return result


def rejected_xml(body: bytes, version: str = "4.0") -> Rejected:
    result = result_of(body, version, "xml")
    assert isinstance(result, Rejected), result
    return result


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((VERSIONS / name).read_bytes())
    return document


def assert_in_words(result: Rejected, detail: str) -> None:
    assert result.code is ErrorCode.FHIR_INVALID, result
    assert result.detail == detail
    phrase = result.detail.split(": ", 1)[1]
    assert " " in phrase, result.detail  # words, not an error type such as "missing"
    assert not ERROR_TYPE.search(phrase), result.detail
    assert FAMILY not in result.detail


# --- codes: checked in the input's own version, before conversion --------------------------------------


@pytest.mark.parametrize(
    ("version", "name", "change", "detail"),
    [
        ("5.0", "r5/observation.json", {"status": "done"}, f"Observation.status: {NOT_IN_SET}"),
        ("3.0", "stu3/observation.json", {"status": "done"}, f"Observation.status: {NOT_IN_SET}"),
        # R4's code, not R5's (R5 says "completed"): invalid R5, whatever R4 would make of it.
        ("5.0", "r5/encounter.json", {"status": "finished"}, f"Encounter.status: {NOT_IN_SET}"),
        ("3.0", "stu3/encounter.json", {"status": "completed"}, f"Encounter.status: {NOT_IN_SET}"),
        ("3.0", "stu3/procedurerequest.json", {"intent": FAMILY}, f"ProcedureRequest.intent: {NOT_IN_SET}"),
        ("5.0", "r5/servicerequest.json", {"intent": FAMILY}, f"ServiceRequest.intent: {NOT_IN_SET}"),
        (
            "5.0",
            "r5/medicationstatement.json",
            {"status": "active"},
            f"MedicationStatement.status: {NOT_IN_SET}",
        ),
    ],
    ids=[
        "R5 Observation",
        "STU3 Observation",
        "R5 Encounter",
        "STU3 Encounter",
        "STU3 intent",
        "R5 intent",
        "R5 statement",
    ],
)
def test_a_code_invalid_in_its_own_version_is_fhir_invalid(
    version: str, name: str, change: dict[str, Any], detail: str
) -> None:
    """A code outside its required value set in the input's version is ``fhir.invalid``, not unsupported."""
    assert_in_words(rejected(load(name) | change, version), detail)


def test_an_r5_observation_with_an_invalid_status_in_xml_is_fhir_invalid() -> None:
    """The same check applies to XML, which takes the JSON path once read."""
    body = (
        b'<Observation xmlns="http://hl7.org/fhir"><status value="done"/>'
        b'<code><text value="glyc\xc3\xa9mie"/></code></Observation>'
    )
    assert_in_words(rejected_xml(body, "5.0"), f"Observation.status: {NOT_IN_SET}")


@pytest.mark.parametrize(
    ("version", "name", "field", "codes"),
    [
        ("3.0", "stu3/observation.json", "status", ["corrected", "cancelled", "entered-in-error", "unknown"]),
        ("5.0", "r5/observation.json", "status", ["corrected", "cancelled", "entered-in-error", "unknown"]),
        ("3.0", "stu3/procedurerequest.json", "intent", ["original-order", "filler-order", "option"]),
        ("5.0", "r5/servicerequest.json", "intent", ["directive", "original-order", "option"]),
    ],
)
def test_codes_fhir_resources_lists_as_plus_are_valid(
    version: str, name: str, field: str, codes: list[str]
) -> None:
    """Value sets fhir.resources cuts short with "+" are completed per version, so valid codes pass."""
    for code in codes:
        result = result_of(json.dumps(load(name) | {field: code}).encode(), version)
        assert isinstance(result, Decoded), (code, result)


def test_valid_input_r4_cannot_express_stays_version_unsupported() -> None:
    """R5's Encounter status ``discontinued`` is valid R5 with no R4 code: ``fhir.version.unsupported``."""
    result = rejected(load("r5/encounter.json") | {"status": "discontinued"}, "5.0")
    assert result.code is ErrorCode.FHIR_VERSION_UNSUPPORTED
    assert "Encounter.status" in result.detail


# --- details in words ---------------------------------------------------------------------------------

_OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "glycémie"}}
_ENCOUNTER = {"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"}}
_PATIENT = {"resourceType": "Patient", "id": "p1"}


@pytest.mark.parametrize(
    ("document", "detail"),
    [
        (
            _ENCOUNTER | {"period": {"start": "2026-03-29T01:30"}},
            "Encounter.period.start: not a valid date-time",
        ),
        (
            _ENCOUNTER | {"period": {"start": "2025-02-30T08:15:00"}},
            "Encounter.period.start: not a valid date-time",
        ),
        (
            {
                "resourceType": "AllergyIntolerance",
                "patient": {"reference": "Patient/p1"},
                "reaction": [{"manifestation": [{"text": "urticaire"}], "onset": "2026-03-29T01:30:00"}],
            },
            "AllergyIntolerance.reaction.0.onset: a time needs a UTC offset",
        ),
        (_OBSERVATION | {"status": FAMILY}, f"Observation.status: {NOT_IN_SET}"),
        (_PATIENT | {"birthDate": FAMILY}, "Patient.birthDate: not a valid date"),
        (_PATIENT | {"birthDate": "2024-02-30"}, "Patient.birthDate: not a valid date"),
        (
            {k: v for k, v in _OBSERVATION.items() if k != "code"},
            "Observation.code: required element missing",
        ),
        (
            {k: v for k, v in _ENCOUNTER.items() if k != "status"},
            "Encounter.status: required element missing",
        ),
        (_OBSERVATION | {"foo": FAMILY}, "Observation.foo: unknown element"),
        (
            _OBSERVATION | {"issued": "2024-05-03"},
            "Observation.issued: not a valid instant (a date and time with a UTC offset)",
        ),
        (
            _OBSERVATION | {"valueQuantity": {"value": FAMILY}},
            "Observation.valueQuantity.value: not a valid decimal number",
        ),
        (_OBSERVATION | {"valueQuantity": 5}, "Observation.valueQuantity: must be an object"),
        (_OBSERVATION | {"valueInteger": 1.5}, "Observation.valueInteger: must be an integer"),
        (_OBSERVATION | {"valueInteger": 2**40}, "Observation.valueInteger: out of its allowed range"),
        (_OBSERVATION | {"identifier": {"value": FAMILY}}, "Observation.identifier: must be an array"),
        (_OBSERVATION | {"identifier": [FAMILY]}, "Observation.identifier.0: must be an object"),
        (_OBSERVATION | {"subject": {"reference": 5}}, "Observation.subject.reference: must be a string"),
        (_OBSERVATION | {"valueString": FAMILY, "valueBoolean": True}, f"Observation.value[x]: {ONE_TYPE}"),
        (
            _OBSERVATION
            | {"component": [{"code": {"text": "a"}, "valueDateTime": "2024", "valueString": "x"}]},
            f"Observation.component.0.value[x]: {ONE_TYPE}",
        ),
        (_PATIENT | {"id": "p 1"}, "Patient.id: not in the form its type requires"),
        (_PATIENT | {"name": [{"family": [FAMILY]}]}, "Patient.name.0.family: must be a string"),
        (
            _PATIENT | {"contained": [{"resourceType": "Patient", "gender": FAMILY}]},
            f"Patient.contained.0.gender: {NOT_IN_SET}",
        ),
    ],
    ids=[
        "time without seconds",
        "impossible naive date",
        "naive time the repair does not reach",
        "bad code",
        "name as date",
        "impossible date",
        "missing code",
        "missing status",
        "unknown element",
        "instant without time",
        "decimal",
        "object expected",
        "integer expected",
        "integer too large",
        "array expected",
        "object in array expected",
        "string expected",
        "two choice types",
        "choice in a backbone element",
        "bad id",
        "list for a string",
        "contained code",
    ],
)
def test_fhir_invalid_details_name_the_path_and_say_what_is_wrong(
    document: dict[str, Any], detail: str
) -> None:
    """``Type.element.path: phrase``, never pydantic's bare error type, never the value."""
    assert_in_words(rejected(document), detail)


@pytest.mark.parametrize("version", ["4.0", "5.0"])
@pytest.mark.parametrize("value", [5, True, ["http://example.org/photo"], {"a": 1}])
def test_a_url_element_holding_no_string_is_named(version: str, value: Any) -> None:
    """fhir.resources raises on a ``url``-typed element that is not a string; the element is still named."""
    photo = {"contentType": "image/png", "url": value}
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": _PATIENT | {"photo": [photo]}}],
    }
    assert_in_words(rejected(bundle, version), "Bundle.entry.0.resource.photo.0.url: must be a string")


def test_more_than_three_errors_are_counted() -> None:
    """Three errors are told, the rest counted with the "(+N more)" suffix."""
    result = rejected(
        _PATIENT | {"gender": 1, "active": [1], "birthDate": 2, "multipleBirthInteger": "x", "x": 1}
    )
    assert result.detail.endswith(" (+2 more)"), result.detail
    assert result.detail.count("; ") == 2
    assert result.detail.startswith("Patient.")


@pytest.mark.parametrize(
    ("version", "name", "change", "detail"),
    [
        (
            "3.0",
            "stu3/condition.json",
            {"onsetDateTime": "le 2 avril 2013"},
            "Condition.onsetDateTime: not a valid date-time",
        ),
        (
            "3.0",
            "stu3/condition.json",
            {"assertedDate": "2013-04-04T10:00:00"},
            "Condition.assertedDate: a time needs a UTC offset",
        ),
        (
            "3.0",
            "stu3/condition.json",
            {"subject": {"reference": "Patient/f201", "display": [FAMILY]}},
            "Condition.subject.display: must be a string",
        ),
        (
            "5.0",
            "r5/encounter.json",
            {"period": {"start": "2024-05-06T09:00:00+02:00"}},
            "Encounter.period: unknown element",
        ),
        ("5.0", "r5/encounter.json", {"class": {"text": FAMILY}}, "Encounter.class: must be an array"),
    ],
    ids=["STU3 date-time", "STU3 naive time outside the repair", "STU3 list", "R5 R4 element", "R5 list"],
)
def test_stu3_and_r5_validation_details_are_in_words(
    version: str, name: str, change: dict[str, Any], detail: str
) -> None:
    """versions.validate_version tells its faults as R4's are told, through decode and directly."""
    document = load(name) | change
    assert_in_words(rejected(document, version), detail)
    assert validate_version(document, version) == detail


# --- XML: the same paths and phrases -------------------------------------------------------------------


def _xml(resource_type: str, inner: str) -> bytes:
    return f'<{resource_type} xmlns="http://hl7.org/fhir">{inner}</{resource_type}>'.encode()


_XML_OBSERVATION = '<status value="final"/><code><text value="glycémie"/></code>'


@pytest.mark.parametrize(
    ("version", "body", "detail"),
    [
        (
            "4.0",
            _xml(
                "Encounter",
                '<status value="finished"/><class><code value="IMP"/></class>'
                '<period><start value="2026-03-29T01:30"/></period>',
            ),
            "Encounter.period.start: not a valid date-time",
        ),
        ("4.0", _xml("Patient", f'<birthDate value="{FAMILY}"/>'), "Patient.birthDate: not a valid date"),
        ("4.0", _xml("Patient", f'<familyName value="{FAMILY}"/>'), "Patient.familyName: unknown element"),
        (
            "4.0",
            _xml("Patient", '<birthDate value="1980-01-01"/><birthDate value="1981-01-01"/>'),
            "Patient.birthDate: must not repeat",
        ),
        (
            "4.0",
            _xml("Patient", f'<name><family value="X"/>{FAMILY}</name>'),
            "Patient.name.0: text outside a value attribute",
        ),
        (
            "4.0",
            _xml("Patient", f'<name><family value="X" use="{FAMILY}"/></name>'),
            "Patient.name.0.family: unknown attribute",
        ),
        ("4.0", _xml("Patient", "<active/>"), "Patient.active: has neither a value nor extensions"),
        (
            "4.0",
            _xml("Observation", '<code><text value="x"/></code>'),
            "Observation.status: required element missing",
        ),
        (
            "4.0",
            _xml("Bundle", '<type value="collection"/><entry><resource/></entry>'),
            "Bundle.entry.0.resource: must hold one resource",
        ),
        (
            "4.0",
            _xml(
                "Bundle",
                f'<type value="collection"/><entry><resource><Observation>{_XML_OBSERVATION}'
                f'<valueString value="{FAMILY}"/><valueBoolean value="true"/>'
                "</Observation></resource></entry>",
            ),
            f"Bundle.entry.0.resource.value[x]: {ONE_TYPE}",
        ),
        (
            "4.0",
            _xml("Bundle", '<type value="collection"/><entry><resource><Nope/></resource></entry>'),
            "Bundle.entry.0.resource.resourceType: not a FHIR R4 resource type",
        ),
        ("4.0", _xml("Coding", '<code value="x"/>'), "resourceType: not a FHIR R4 resource type"),
        (
            "3.0",
            _xml(
                "Condition",
                '<subject><reference value="Patient/1"/></subject><onsetDateTime value="le 2 avril"/>',
            ),
            "Condition.onsetDateTime: not a valid date-time",
        ),
        (
            "5.0",
            _xml("Encounter", f'<status value="completed"/><period><start value="{FAMILY}"/></period>'),
            "Encounter.period: unknown element",
        ),
    ],
    ids=[
        "time without seconds",
        "bad date",
        "unknown element",
        "repeated element",
        "stray text",
        "unknown attribute",
        "empty primitive",
        "missing element",
        "empty entry resource",
        "choice in an entry",
        "unknown nested type",
        "data type root",
        "STU3 date-time",
        "R5 unknown element",
    ],
)
def test_xml_details_name_the_same_paths_as_json(version: str, body: bytes, detail: str) -> None:
    """XML faults are named by the element path JSON would have, from the root resource type."""
    assert_in_words(rejected_xml(body, version), detail)


@pytest.mark.parametrize(
    ("media", "body"),
    [
        ("json", b'{"resourceType": "Patient", "Jeanne DUPONTEL 1985-03-12": null}'),
        ("json", b'{"resourceType": "Patient", "name": [{"DUPONTEL, Jeanne": []}]}'),
        ("xml", b'<Patient xmlns="http://hl7.org/fhir"><DUPONTEL-Jeanne value="x"/></Patient>'),
    ],
    ids=["JSON key with spaces", "nested JSON key", "XML element name"],
)
def test_a_name_that_is_no_element_name_is_not_written_out(media: str, body: bytes) -> None:
    """Keys and element names are echoed only when they look like FHIR names: data put there is not."""
    result = result_of(body, "4.0", media)
    assert isinstance(result, Rejected), result
    assert result.code is ErrorCode.FHIR_INVALID
    assert ".?" in result.detail, result.detail
    assert FAMILY not in result.detail
    assert "Jeanne" not in result.detail
