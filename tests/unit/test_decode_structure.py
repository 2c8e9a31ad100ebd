"""Shapes that fhir.resources lets through or fails on with an exception are ``fhir.invalid`` values
(hub/ingest/decode.py's structure check), named by element path, in every version; later stages
(split.py walks Bundle entries) never see them. Issue 12, item 1."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.errors import ErrorCode
from hub.ingest.decode import ContentType, Decoded, decode
from hub.ingest.outcome import IngestRecord, Rejected
from hub.ingest.pipeline import IngestContext, process_ingest

Loader = Callable[[str], dict[str, Any]]
UTC_ZONE = ZoneInfo("UTC")
TRANSACTION = {"resourceType": "Bundle", "type": "transaction"}
OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "glycémie"}}


def rejected(document: Any, version: str = "4.0") -> Rejected:
    result = decode(
        json.dumps(document).encode(), ContentType("json", version), default_version="4.0", zone=UTC_ZONE
    )
    assert isinstance(result, Rejected), result
    return result


def test_the_fuzzed_bundle_with_a_null_entry_is_rejected_by_ingest(
    make_record: Callable[..., IngestRecord], context: IngestContext, now: datetime
) -> None:
    """The input the fuzz test drew (``entry: null``) was an internal error: it is ``fhir.invalid`` now."""
    record = make_record(b'{"resourceType":"Bundle","type":"transaction","entry":null}')
    outcome = process_ingest(record, context, now=now)
    assert isinstance(outcome, Rejected)
    assert outcome.code is ErrorCode.FHIR_INVALID
    assert outcome.detail.startswith("Bundle.entry: ")


@pytest.mark.parametrize("version", ["3.0", "4.0", "4.3", "5.0"])
@pytest.mark.parametrize(
    ("document", "detail"),
    [
        (TRANSACTION | {"entry": None}, "Bundle.entry: null is not allowed (leave the element out)"),
        (TRANSACTION | {"entry": {"resource": OBSERVATION}}, "Bundle.entry: must be an array of objects"),
        (TRANSACTION | {"entry": "urn:uuid:1"}, "Bundle.entry: must be an array of objects"),
        (TRANSACTION | {"entry": []}, "Bundle.entry: must not be empty (leave the element out)"),
        (
            TRANSACTION | {"entry": [{"resource": OBSERVATION}, 7]},
            "Bundle.entry.1: an entry must be an object",
        ),
        (TRANSACTION | {"entry": ["x"]}, "Bundle.entry.0: an entry must be an object"),
        (TRANSACTION | {"entry": [None]}, "Bundle.entry.0: an entry must be an object"),
        (TRANSACTION | {"entry": [{"resource": None}]}, "Bundle.entry.0.resource: null is not allowed"),
        (
            TRANSACTION | {"entry": [{"resource": "Observation"}]},
            "Bundle.entry.0.resource: must be a resource (an object with a resourceType)",
        ),
        (
            TRANSACTION | {"entry": [{"resource": [OBSERVATION]}]},
            "Bundle.entry.0.resource: must be a resource (an object with a resourceType)",
        ),
        (
            TRANSACTION | {"entry": [{"resource": {"resourceType": 5}}]},
            "Bundle.entry.0.resource.resourceType: must be a string naming a resource type",
        ),
        (
            TRANSACTION | {"entry": [{"resource": {"resourceType": ["Observation"]}}]},
            "Bundle.entry.0.resource.resourceType: must be a string naming a resource type",
        ),
        (
            TRANSACTION | {"entry": [{"resource": {"resourceType": None}}]},
            "Bundle.entry.0.resource.resourceType: null is not allowed",
        ),
        (
            TRANSACTION | {"entry": [{"resource": {"id": "x"}}]},
            "Bundle.entry.0.resource.resourceType: required element missing",
        ),
        (
            TRANSACTION | {"entry": [{"resource": {"resourceType": "Coding"}}]},
            "Bundle.entry.0.resource.resourceType: not a FHIR",
        ),
        (
            TRANSACTION
            | {"entry": [{"request": {"method": "DELETE", "url": "Patient/1"}, "resource": None}]},
            "Bundle.entry.0.resource: null is not allowed",
        ),
        (OBSERVATION | {"contained": None}, "Observation.contained: null is not allowed"),
        (OBSERVATION | {"contained": {"resourceType": "Patient"}}, "Observation.contained: must be an array"),
        (OBSERVATION | {"contained": "Patient"}, "Observation.contained: must be an array of resources"),
        (OBSERVATION | {"contained": [None]}, "Observation.contained.0: null is not allowed"),
        (
            OBSERVATION | {"contained": [{"resourceType": 5, "id": "p"}]},
            "Observation.contained.0.resourceType: must be a string naming a resource type",
        ),
        (
            OBSERVATION | {"contained": [{"resourceType": True}]},
            "Observation.contained.0.resourceType: must be a string naming a resource type",
        ),
        (
            OBSERVATION | {"contained": ["Patient"]},
            "Observation.contained.0: must be a resource (an object with a resourceType)",
        ),
        (
            OBSERVATION
            | {"contained": [{"resourceType": "Organization", "contained": [{"resourceType": 1}]}]},
            "Observation.contained.0.contained.0.resourceType: must be a string naming a resource type",
        ),
        (
            TRANSACTION | {"entry": [{"resource": OBSERVATION | {"contained": [{"resourceType": 2.5}]}}]},
            "Bundle.entry.0.resource.contained.0.resourceType: must be a string naming a resource type",
        ),
    ],
    ids=[
        "entry null",
        "entry an object",
        "entry a string",
        "entry empty",
        "entry item a number",
        "entry item a string",
        "entry item null",
        "resource null",
        "resource a string",
        "resource a list",
        "entry resourceType a number",
        "entry resourceType a list",
        "entry resourceType null",
        "entry resource without resourceType",
        "entry resourceType a data type",
        "DELETE entry with a null resource",
        "contained null",
        "contained an object",
        "contained a string",
        "contained item null",
        "contained resourceType a number",
        "contained resourceType a boolean",
        "contained item a string",
        "contained in contained",
        "contained in an entry",
    ],
)
def test_bad_shapes_are_fhir_invalid_naming_the_element(document: Any, detail: str, version: str) -> None:
    """Each shape is ``fhir.invalid`` in every version, and the detail names the element and the fault."""
    result = rejected(document, version)
    assert result.code is ErrorCode.FHIR_INVALID
    assert result.detail.startswith(detail), result.detail


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"identifier": None}, "Patient.identifier: null is not allowed"),
        ({"identifier": []}, "Patient.identifier: must not be empty"),
        ({"name": [{"given": None}]}, "Patient.name.0.given: null is not allowed"),
        ({"name": [{"given": ["Jeanne", None]}]}, "Patient.name.0.given.1: null is not allowed"),
        ({"meta": {}}, "Patient.meta: must not be empty"),
    ],
    ids=["null", "empty array", "nested null", "null item without its extension", "empty object"],
)
def test_nulls_and_empty_containers_are_fhir_invalid(
    fhir: Loader, change: dict[str, Any], detail: str
) -> None:
    """FHIR JSON has no null members and no empty arrays or objects; later stages need not expect them."""
    result = rejected(fhir("patient-ins-vali.json") | change)
    assert result.code is ErrorCode.FHIR_INVALID
    assert result.detail.startswith(detail), result.detail
    assert "DUPONTEL" not in result.detail


def test_a_null_kept_aligned_with_a_primitive_extension_is_fhir_json(fhir: Loader) -> None:
    """A null in a primitive's list is FHIR JSON when the ``_name`` list has the extension at that place."""
    patient = fhir("patient-ins-vali.json")
    patient["name"][0]["given"] = ["Jeanne", None]
    patient["name"][0]["_given"] = [
        None,
        {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
    ]
    result = decode(
        json.dumps(patient).encode(), ContentType("json", None), default_version="4.0", zone=UTC_ZONE
    )
    assert isinstance(result, Decoded), result


def test_a_resource_anywhere_is_checked_for_its_type() -> None:
    """Any object with a resourceType is a resource: Bundle.entry.response.outcome too."""
    response = {"status": "201 Created", "outcome": {"resourceType": 404}}
    bundle = {"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": response}]}
    result = rejected(bundle)
    assert result.code is ErrorCode.FHIR_INVALID
    assert (
        result.detail
        == "Bundle.entry.0.response.outcome.resourceType: must be a string naming a resource type"
    )


@pytest.mark.parametrize("version", ["3.0", "4.0", "4.3", "5.0"])
@pytest.mark.parametrize(
    ("document", "detail"),
    [
        (OBSERVATION | {"code": json.dumps({"text": "glycémie"})}, "Observation.code: must be an object"),
        (OBSERVATION | {"category": [{"text": "a"}, "b"]}, "Observation.category.1: must be an object"),
        (OBSERVATION | {"_status": json.dumps({"id": "s"})}, "Observation._status: must be an object"),
        (
            TRANSACTION
            | {"entry": [{"resource": OBSERVATION, "request": json.dumps({"method": "POST", "url": "x"})}]},
            "Bundle.entry.0.request: must be an object",
        ),
    ],
    ids=["data type", "item of a list", "primitive's _name", "backbone element"],
)
def test_a_string_of_json_standing_for_an_object_is_refused(document: Any, detail: str, version: str) -> None:
    """fhir.resources' models parse a string given for an object as JSON, and accept it: the string then
    reached the stages after ingest (an R5 Bundle's ``entry.request`` as a string made the converter
    raise; found by tests/unit/test_fast_validation.py's wide search). FHIR JSON has an object there."""
    assert rejected(document, version) == Rejected(ErrorCode.FHIR_INVALID, detail)


@pytest.mark.parametrize("version", ["3.0", "4.0", "5.0"])
def test_nesting_deeper_than_xml_allows_is_refused_before_any_recursive_walk(version: str) -> None:
    """500 nested arrays (which json.loads reads) are ``payload.malformed``, not a RecursionError."""
    body = b'{"resourceType":"Observation","note":' + b"[" * 500 + b"]" * 500 + b"}"
    result = decode(body, ContentType("json", version), default_version="4.0", zone=UTC_ZONE)
    assert isinstance(result, Rejected), result
    assert (result.code, result.detail) == (ErrorCode.PAYLOAD_MALFORMED, "FHIR nesting is too deep")
