"""Content type, FHIR version, parsing and the one validation per input (hub/ingest/decode.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.errors import ErrorCode
from hub.ingest.decode import ContentType, Decoded, decode, parse_content_type
from hub.ingest.outcome import Rejected

JSON = ContentType("json", None)
XML = ContentType("xml", None)
VERSIONS = Path(__file__).resolve().parents[1] / "fixtures" / "fhir-versions"
UTC_ZONE = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
FAMILY = "DUPONTEL"  # the fixtures' patient family name: must never be echoed in a detail

Loader = Callable[[str], dict[str, Any]]


def decoded(
    value: bytes, content_type: ContentType = JSON, *, default_version: str = "4.0", zone: ZoneInfo = UTC_ZONE
) -> Decoded:
    result = decode(value, content_type, default_version=default_version, zone=zone)
    assert isinstance(result, Decoded), result
    return result


def rejected(
    value: bytes, content_type: ContentType = JSON, *, default_version: str = "4.0", zone: ZoneInfo = UTC_ZONE
) -> Rejected:
    result = decode(value, content_type, default_version=default_version, zone=zone)
    assert isinstance(result, Rejected), result
    return result


# --- content-type ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ContentType("json", None)),
        ("", ContentType("json", None)),
        ("application/fhir+json", ContentType("json", None)),
        ("Application/FHIR+JSON", ContentType("json", None)),
        ("application/json", ContentType("json", None)),
        ("application/json+fhir; charset=utf-8", ContentType("json", None)),
        ("application/fhir+json; fhirVersion=4.0", ContentType("json", "4.0")),
        ("application/fhir+json;fhirVersion=4.0.1", ContentType("json", "4.0")),
        ('application/fhir+json; fhirversion="4.3"', ContentType("json", "4.3")),
        ("application/fhir+json; charset=utf-8; fhirVersion=5.0", ContentType("json", "5.0")),
        ("application/fhir+xml", ContentType("xml", None)),
        ("application/xml; fhirVersion=3.0", ContentType("xml", "3.0")),
        ("text/xml", ContentType("xml", None)),
    ],
)
def test_content_type_parsing(header: str | None, expected: ContentType) -> None:
    """JSON when absent; FHIR/JSON/XML media and aliases; fhirVersion parameter cut to major.minor."""
    assert parse_content_type(header) == expected


@pytest.mark.parametrize("header", ["text/plain", "application/pdf", "multipart/form-data; boundary=x"])
def test_unknown_media_type_is_malformed(header: str) -> None:
    """A media type that is neither FHIR JSON nor FHIR XML is ``payload.malformed``."""
    result = parse_content_type(header)
    assert isinstance(result, Rejected)
    assert result.code is ErrorCode.PAYLOAD_MALFORMED


# --- bodies that are not a JSON object --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", ErrorCode.PAYLOAD_MALFORMED),
        (b"   \n", ErrorCode.PAYLOAD_MALFORMED),
        (b"not json", ErrorCode.PAYLOAD_MALFORMED),
        (b'{"resourceType": "Patient",', ErrorCode.PAYLOAD_MALFORMED),
        (
            '{"resourceType":"Patient","name":[{"family":"Müller"}]}'.encode("latin-1"),
            ErrorCode.PAYLOAD_MALFORMED,
        ),
        ('{"resourceType":"Patient","id":"p1"}'.encode("utf-16"), ErrorCode.PAYLOAD_MALFORMED),
        (b"\xff\xfe\xfa", ErrorCode.PAYLOAD_MALFORMED),
        (b'{"resourceType":"Patient","x":1' + b"0" * 5000 + b"}", ErrorCode.PAYLOAD_MALFORMED),
        (b"[]", ErrorCode.FHIR_INVALID),
        (b'[{"resourceType":"Patient"}]', ErrorCode.FHIR_INVALID),
        (b'"Patient"', ErrorCode.FHIR_INVALID),
        (b"42", ErrorCode.FHIR_INVALID),
        (b"null", ErrorCode.FHIR_INVALID),
    ],
    ids=[
        "empty",
        "blank",
        "not json",
        "truncated",
        "latin-1",
        "utf-16",
        "invalid utf-8",
        "5000-digit integer",
        "empty array",
        "array of resources",
        "string",
        "number",
        "null",
    ],
)
def test_body_that_is_not_a_json_object(body: bytes, code: ErrorCode) -> None:
    """Empty, non-JSON or non-UTF-8 bodies are ``payload.malformed``; a non-object is ``fhir.invalid``."""
    assert rejected(body).code is code


@pytest.mark.parametrize("top", [b"[", b'{"a":['], ids=["lists", "object of lists"])
def test_very_deep_nesting_is_rejected_not_a_crash(top: bytes) -> None:
    """100 000 nested lists are ``payload.malformed``, without RecursionError escaping."""
    closing = b"]" * 100_000 + (b"}" if top.startswith(b"{") else b"")
    body = top + b"[" * 99_999 + closing
    result = rejected(body)
    assert result.code is ErrorCode.PAYLOAD_MALFORMED
    assert "deep" in result.detail


def test_utf8_byte_order_mark_is_tolerated(fhir: Loader) -> None:
    """A UTF-8 BOM before the JSON (common from Windows tools) does not make the body malformed."""
    body = b"\xef\xbb\xbf" + json.dumps(fhir("observation-hba1c.json")).encode()
    assert decoded(body).resource["resourceType"] == "Observation"


# --- resource types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        {"resourceType": "Nope"},
        {"resourceType": "patient"},
        {"resourceType": "Patient1"},
        {"resourceType": 5},
        {"id": "no-type"},
        {"resourceType": "Coding", "code": "x"},  # a data type, not a resource
        {"resourceType": "Extension", "url": "http://example.org"},
        {"resourceType": "Resource", "id": "x"},  # abstract
        {"resourceType": "DomainResource", "id": "x"},
    ],
    ids=lambda d: str(d.get("resourceType", "absent")),
)
def test_unknown_resource_type_is_fhir_invalid(document: dict[str, Any]) -> None:
    """Only concrete FHIR R4 resource types are read; others (and data types) are ``fhir.invalid``."""
    assert rejected(json.dumps(document).encode()).code is ErrorCode.FHIR_INVALID


@pytest.mark.parametrize(
    "name",
    [
        "observation-hba1c.json",
        "patient-ins-vali.json",
        "encounter-imp-finished.json",
        "bundle-transaction.json",
    ],
)
def test_fixtures_are_valid_r4(name: str, fixture_bytes: Callable[[str], bytes]) -> None:
    """Real FHIR R4 shapes decode, and the JSON path hands on the document exactly as parsed."""
    result = decoded(fixture_bytes(name))
    assert result.resource == json.loads(fixture_bytes(name))
    assert (result.fhir_version, result.media) == ("4.0", "json")


# --- invalid FHIR: fhir.invalid, and the detail quotes no data ----------------------------------------


def _patient_with(fhir: Loader, **changes: Any) -> dict[str, Any]:
    patient = fhir("patient-ins-vali.json")
    patient.update(changes)
    return patient


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"gender": FAMILY}, "gender"),
        ({"birthDate": FAMILY}, "birthDate"),
        ({"active": FAMILY}, "active"),
        ({"name": FAMILY}, "name"),
        ({"name": [{"family": [FAMILY]}]}, "name.0.family"),
        ({"familyName": FAMILY}, "familyName"),
    ],
    ids=[
        "bad gender code",
        "name as date",
        "name as boolean",
        "name as string",
        "family as list",
        "extra field",
    ],
)
def test_invalid_patient_detail_does_not_quote_the_value(
    fhir: Loader, change: dict[str, Any], where: str
) -> None:
    """A patient name put in a wrong field is ``fhir.invalid``; the detail names the field, never the name."""
    result = rejected(json.dumps(_patient_with(fhir, **change)).encode())
    assert result.code is ErrorCode.FHIR_INVALID
    assert where in result.detail
    assert FAMILY not in result.detail
    assert "Jeanne" not in result.detail


@pytest.mark.parametrize("status", ["DUPONTEL", "FINAL", "done", ""])
def test_bad_status_code_is_fhir_invalid(fhir: Loader, status: str) -> None:
    """An Observation status outside its required value set is ``fhir.invalid``, naming ``status``."""
    observation = fhir("observation-hba1c.json")
    observation["status"] = status
    result = rejected(json.dumps(observation).encode())
    assert result.code is ErrorCode.FHIR_INVALID
    assert "status" in result.detail
    if status:
        assert status not in result.detail


@pytest.mark.parametrize(
    "status",
    [
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    ],
)
def test_every_r4_observation_status_is_accepted(fhir: Loader, status: str) -> None:
    """All eight R4 ObservationStatus codes are valid, including those fhir.resources lists as '+'."""
    observation = fhir("observation-hba1c.json")
    observation["status"] = status
    assert decoded(json.dumps(observation).encode()).resource["status"] == status


@pytest.mark.parametrize("status", ["entered-in-error", "unknown"])
def test_full_r4_encounter_status_set_is_accepted(fhir: Loader, status: str) -> None:
    """Encounter status codes beyond fhir.resources' abbreviated list are still valid R4."""
    encounter = fhir("encounter-imp-finished.json")
    encounter["status"] = status
    assert decoded(json.dumps(encounter).encode()).resource["status"] == status


def test_bad_code_in_a_bundle_entry_names_the_entry(fhir: Loader) -> None:
    """A bad code inside a Bundle entry rejects the Bundle, naming the entry and field, not the value."""
    bundle = fhir("bundle-transaction.json")
    bundle["entry"][3]["resource"]["status"] = FAMILY
    result = rejected(json.dumps(bundle).encode())
    assert result.code is ErrorCode.FHIR_INVALID
    assert "entry.3.resource.status" in result.detail
    assert FAMILY not in result.detail


@pytest.mark.parametrize(
    "resource",
    [{"id": "no-type"}, {"resourceType": "Nope"}, {"resourceType": 5}, {"resourceType": ["Patient"]},
     {"resourceType": "Resource"}],
    ids=["absent", "unknown", "number", "list", "abstract"],
)  # fmt: skip
def test_bundle_entry_without_a_known_resource_type_is_fhir_invalid(
    fhir: Loader, resource: dict[str, Any]
) -> None:
    """Bundle entries must be concrete resources too; a bad nested type is a reject, not an exception."""
    bundle = fhir("bundle-transaction.json")
    bundle["entry"][2]["resource"] = resource
    assert rejected(json.dumps(bundle).encode()).code is ErrorCode.FHIR_INVALID


def test_contained_resource_without_type_is_fhir_invalid(fhir: Loader) -> None:
    """A contained resource with no resourceType is ``fhir.invalid``."""
    observation = fhir("observation-hba1c.json")
    observation["contained"] = [{"id": "spec-1"}]
    result = rejected(json.dumps(observation).encode())
    assert result.code is ErrorCode.FHIR_INVALID
    assert "contained.0" in result.detail


def test_many_errors_are_summarised(fhir: Loader) -> None:
    """At most three validation errors are listed, then a count of the rest."""
    patient = fhir("patient-ins-vali.json")
    patient.update({f"extra{n}": FAMILY for n in range(6)})
    detail = rejected(json.dumps(patient).encode()).detail
    assert detail.count(": unknown element") == 3
    assert detail.startswith("Patient.extra0: unknown element; ")
    assert "(+3 more)" in detail


# --- FHIR versions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.4", "2.0", "4.1", "6.0"])
def test_unknown_versions_are_unsupported(fhir: Loader, version: str) -> None:
    """A fhirVersion other than STU3, R4, R4B or R5 is ``fhir.version.unsupported``, naming the version."""
    body = json.dumps(fhir("observation-hba1c.json")).encode()
    result = rejected(body, ContentType("json", version))
    assert result.code is ErrorCode.FHIR_VERSION_UNSUPPORTED
    assert version in result.detail


def test_source_default_version_applies_without_header(fixture_bytes: Callable[[str], bytes]) -> None:
    """Without a fhirVersion parameter the source's default version decides; a header overrides it."""
    body = fixture_bytes("observation-hba1c.json")
    assert decoded(body, default_version="4.3").fhir_version == "4.3"
    assert rejected(body, default_version="1.0").code is ErrorCode.FHIR_VERSION_UNSUPPORTED
    assert decoded(body, ContentType("json", "4.0"), default_version="1.0").fhir_version == "4.0"
    stu3 = (VERSIONS / "stu3" / "condition.json").read_bytes()
    from_default = decoded(stu3, default_version="3.0")
    assert from_default.fhir_version == "3.0"
    assert from_default.steps[0] == "decoded:json/fhir-3.0"


def test_r4b_is_read(fhir: Loader) -> None:
    """R4B (4.3) is read with the same models as R4."""
    body = json.dumps(fhir("observation-hba1c.json")).encode()
    assert decoded(body, ContentType("json", "4.3")).fhir_version == "4.3"


# --- XML ------------------------------------------------------------------------------------------------


def test_xml_patient_decodes_to_its_json_form(fixture_bytes: Callable[[str], bytes], fhir: Loader) -> None:
    """A Patient in FHIR XML decodes to exactly the same JSON as the same Patient sent as JSON."""
    from_xml = decoded(fixture_bytes("patient-ins-vali.xml"), XML)
    from_json = decoded(fixture_bytes("patient-ins-vali.json"), JSON)
    assert from_xml.resource == from_json.resource == fhir("patient-ins-vali.json")
    assert from_xml.media == "xml"


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?>\n<!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        b'<Patient xmlns="http://hl7.org/fhir"><id value="&xxe;"/></Patient>',
        b'<?xml version="1.0"?>\n<!DOCTYPE Patient [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>\n'
        b'<Patient xmlns="http://hl7.org/fhir"><id value="&b;"/></Patient>',
        b'<?xml version="1.0"?>\n<!DOCTYPE Patient SYSTEM "http://example.org/fhir.dtd">\n'
        b'<Patient xmlns="http://hl7.org/fhir"><id value="p1"/></Patient>',
    ],
    ids=["external entity", "entity expansion", "external DTD"],
)
def test_xml_with_doctype_or_entities_is_refused(body: bytes) -> None:
    """XXE: any DOCTYPE or entity makes the body ``payload.malformed``; nothing is fetched or expanded."""
    result = rejected(body, XML)
    assert result.code is ErrorCode.PAYLOAD_MALFORMED
    assert "root:" not in result.detail


@pytest.mark.parametrize("body", [b"", b"<Patient", b"not xml at all", b"<a></b>"])
def test_xml_not_well_formed_is_malformed(body: bytes) -> None:
    """XML that does not parse is ``payload.malformed``."""
    assert rejected(body, XML).code is ErrorCode.PAYLOAD_MALFORMED


@pytest.mark.parametrize(
    "body",
    [
        b'<Patient><id value="p1"/></Patient>',
        b'<Patient xmlns="http://example.org/not-fhir"><id value="p1"/></Patient>',
    ],
    ids=["no namespace", "other namespace"],
)
def test_xml_outside_the_fhir_namespace_is_fhir_invalid(body: bytes) -> None:
    """An XML root outside ``http://hl7.org/fhir`` is ``fhir.invalid``."""
    assert rejected(body, XML).code is ErrorCode.FHIR_INVALID


@pytest.mark.parametrize(
    "body",
    [
        b'<Nope xmlns="http://hl7.org/fhir"><id value="p1"/></Nope>',
        b'<Coding xmlns="http://hl7.org/fhir"><code value="x"/></Coding>',
        b'<Patient xmlns="http://hl7.org/fhir"><familyName value="DUPONTEL"/></Patient>',
        b'<Patient xmlns="http://hl7.org/fhir"><gender value="DUPONTEL"/></Patient>',
        b'<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/><entry><resource/></entry></Bundle>',
    ],
    ids=["unknown root", "data type root", "unknown element", "bad code", "empty entry resource"],
)
def test_xml_that_is_not_valid_fhir(body: bytes) -> None:
    """Unknown roots, unknown elements and bad codes in XML are ``fhir.invalid``, never an exception."""
    result = rejected(body, XML)
    assert result.code is ErrorCode.FHIR_INVALID
    assert FAMILY not in result.detail


# --- naive times, read in the source's zone before validation ------------------------------------------


def _with_effective(fhir: Loader, when: str) -> bytes:
    observation = fhir("observation-hba1c.json")
    observation["effectiveDateTime"] = when
    return json.dumps(observation).encode()


def test_naive_time_in_the_spring_forward_gap_is_read_in_the_source_zone(fhir: Loader) -> None:
    """A naive 02:30 on 2025-03-30 (Paris DST gap) becomes 03:30+02:00, and the step names the zone."""
    result = decoded(_with_effective(fhir, "2025-03-30T02:30:00"), zone=PARIS)
    assert result.resource["effectiveDateTime"] == "2025-03-30T03:30:00+02:00"
    assert result.steps == ("decoded:json/fhir-4.0", "naive-time-read-in:Europe/Paris")


@pytest.mark.parametrize(
    ("naive", "repaired"),
    [
        ("2025-03-30T01:30:00", "2025-03-30T01:30:00+01:00"),
        ("2025-03-30T03:30:00", "2025-03-30T03:30:00+02:00"),
        ("2025-10-26T02:30:00", "2025-10-26T02:30:00+02:00"),
    ],
    ids=["before the change", "after the change", "ambiguous autumn hour"],
)
def test_naive_times_around_the_change_take_the_offset_in_force(
    fhir: Loader, naive: str, repaired: str
) -> None:
    """A naive time takes the source zone's offset at that moment; an ambiguous one its first occurrence."""
    result = decoded(_with_effective(fhir, naive), zone=PARIS)
    assert result.resource["effectiveDateTime"] == repaired


def test_times_with_an_offset_are_left_as_sent(fixture_bytes: Callable[[str], bytes]) -> None:
    """Nothing to repair: the document is handed on as parsed and no naive-time step is recorded."""
    result = decoded(fixture_bytes("observation-hba1c.json"), zone=PARIS)
    assert result.resource == json.loads(fixture_bytes("observation-hba1c.json"))
    assert result.steps == ("decoded:json/fhir-4.0",)


# --- STU3 and R5, converted to R4 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "name", "resource_type", "converted_type"),
    [
        ("3.0", "stu3/condition.json", "Condition", "Condition"),
        ("3.0", "stu3/procedurerequest.json", "ProcedureRequest", "ServiceRequest"),
        ("3.0", "stu3/bundle-transaction.json", "Bundle", "Bundle"),
        ("5.0", "r5/encounter.json", "Encounter", "Encounter"),
        ("5.0", "r5/medicationrequest.json", "MedicationRequest", "MedicationRequest"),
        ("5.0", "r5/bundle-collection.json", "Bundle", "Bundle"),
    ],
)
def test_stu3_and_r5_json_decode_to_r4_with_conversion_steps(
    version: str, name: str, resource_type: str, converted_type: str
) -> None:
    """STU3 and R5 JSON are validated in their version, converted to R4, and the conversion is recorded."""
    body = (VERSIONS / name).read_bytes()
    assert json.loads(body)["resourceType"] == resource_type
    result = decoded(body, ContentType("json", version))
    assert result.resource["resourceType"] == converted_type
    assert (result.fhir_version, result.media) == (version, "json")
    assert result.steps[0] == f"decoded:json/fhir-{version}"
    arrow = "R3→R4" if version == "3.0" else "R5→R4"
    assert any(arrow in step for step in result.steps[1:])


def test_stu3_condition_statuses_become_r4_codeable_concepts() -> None:
    """STU3's code-typed Condition statuses are R4 CodeableConcepts after conversion (R3→R4 map)."""
    result = decoded((VERSIONS / "stu3" / "condition.json").read_bytes(), ContentType("json", "3.0"))
    assert result.resource["clinicalStatus"]["coding"][0]["code"] == "resolved"
    assert "assertedDate" not in result.resource
    assert result.resource["recordedDate"] == "2013-04-04"
    assert "Condition.clinicalStatus code → CodeableConcept (R3→R4)" in result.steps


def test_stu3_xml_is_read_with_the_stu3_model_and_converted() -> None:
    """STU3 XML is read with the STU3 model, then converted to the same R4 form as JSON would be."""
    result = decoded((VERSIONS / "stu3" / "condition.xml").read_bytes(), ContentType("xml", "3.0"))
    assert (result.fhir_version, result.media) == ("3.0", "xml")
    assert result.resource["resourceType"] == "Condition"
    assert result.resource["encounter"] == {"reference": "Encounter/example"}
    assert result.resource["clinicalStatus"]["coding"][0]["code"] == "active"
    assert result.steps[0] == "decoded:xml/fhir-3.0"
    assert "Condition.context → encounter (R3→R4)" in result.steps


def test_r5_xml_is_read_with_the_r5_model_and_converted() -> None:
    """R5 XML is read with the R5 model, then converted to R4."""
    result = decoded((VERSIONS / "r5" / "encounter.xml").read_bytes(), ContentType("xml", "5.0"))
    assert result.resource["resourceType"] == "Encounter"
    assert "Encounter.actualPeriod → period (R5→R4)" in result.steps


def test_naive_time_in_stu3_json_is_repaired_before_validation() -> None:
    """Naive times are repaired in STU3 input too, before it is validated and converted."""
    condition = json.loads((VERSIONS / "stu3" / "condition.json").read_bytes())
    condition["onsetDateTime"] = "2025-03-30T02:30:00"
    result = decoded(json.dumps(condition).encode(), ContentType("json", "3.0"), zone=PARIS)
    assert result.resource["onsetDateTime"] == "2025-03-30T03:30:00+02:00"
    assert result.steps[:2] == ("decoded:json/fhir-3.0", "naive-time-read-in:Europe/Paris")


@pytest.mark.parametrize(
    ("version", "name", "resource_type"),
    [("3.0", "stu3/referralrequest.json", "ReferralRequest"), ("5.0", "r5/transport.json", "Transport")],
)
def test_unconvertible_resource_is_version_unsupported(version: str, name: str, resource_type: str) -> None:
    """A resource the converter refuses is ``fhir.version.unsupported``, its detail naming the type."""
    result = rejected((VERSIONS / name).read_bytes(), ContentType("json", version))
    assert result.code is ErrorCode.FHIR_VERSION_UNSUPPORTED
    assert resource_type in result.detail


def test_invalid_stu3_is_fhir_invalid() -> None:
    """A document labelled STU3 that is not valid STU3 (here an R4-shaped status) is ``fhir.invalid``."""
    condition = json.loads((VERSIONS / "stu3" / "condition.json").read_bytes())
    condition["clinicalStatus"] = {"coding": [{"code": "resolved"}]}
    result = rejected(json.dumps(condition).encode(), ContentType("json", "3.0"))
    assert result.code is ErrorCode.FHIR_INVALID
    assert "clinicalStatus" in result.detail


def test_invalid_stu3_detail_does_not_quote_the_value() -> None:
    """An STU3 validation detail names the element, never the patient data in it."""
    condition = json.loads((VERSIONS / "stu3" / "condition.json").read_bytes())
    condition["subject"] = {"reference": "Patient/f201", "display": [FAMILY]}
    result = rejected(json.dumps(condition).encode(), ContentType("json", "3.0"))
    assert result.code is ErrorCode.FHIR_INVALID
    assert FAMILY not in result.detail


def test_unknown_stu3_resource_type_is_fhir_invalid() -> None:
    """A resourceType STU3 does not have is ``fhir.invalid`` in STU3 as in R4."""
    result = rejected(b'{"resourceType":"Nope","id":"x"}', ContentType("json", "3.0"))
    assert result.code is ErrorCode.FHIR_INVALID
