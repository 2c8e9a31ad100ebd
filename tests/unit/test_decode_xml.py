"""FHIR XML read into the JSON form (hub/ingest/fhir_xml.py), and naive times in every format and version.

Issue 12, item 3: a date-time without offset is read in the source's zone whether it came as JSON or
XML, STU3, R4 or R5, and lands on the same UTC instant. Issue 16, item 1: a comment before ``<id>`` and
a narrative div written with a namespace prefix are read like any valid resource.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr
from zoneinfo import ZoneInfo

import pytest

from hub.ingest.decode import ContentType, Decoded, decode
from hub.ingest.fhir_xml import read_xml
from hub.ingest.outcome import Accepted, IngestRecord, Rejected
from hub.ingest.pipeline import IngestContext, process_ingest
from hub.normalise.fhir_model import elements, model_lookup
from hub.normalise.instants import is_date_time_field, naive_time_step
from hub.normalise.versions import SUPPORTED_TYPES, source_model

Loader = Callable[[str], dict[str, Any]]
PARIS = ZoneInfo("Europe/Paris")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HOSPITAL_ID = "chu-guadeloupe"  # the conftest's hospital source, in Paris time
HOSPITAL_SECRET = b"chu-unit-test-secret-fedcba9876543210"
XHTML = "http://www.w3.org/1999/xhtml"


def to_xml(node: dict[str, Any], name: str | None = None) -> str:
    """The FHIR XML of a simple JSON resource (objects, arrays and strings only), for the tests."""
    name = name or str(node["resourceType"])
    inner = ""
    for key, value in node.items():
        if key == "resourceType":
            continue
        for item in value if isinstance(value, list) else [value]:
            inner += to_xml(item, key) if isinstance(item, dict) else f"<{key} value={quoteattr(item)}/>"
    namespace = ' xmlns="http://hl7.org/fhir"' if "resourceType" in node else ""
    return f"<{name}{namespace}>{inner}</{name}>"


def decoded(body: bytes, media: str, version: str, zone: ZoneInfo = PARIS) -> Decoded:
    result = decode(body, ContentType(media, version), default_version="4.0", zone=zone)
    assert isinstance(result, Decoded), result
    return result


def encounter(version: str, start: str) -> dict[str, Any]:
    """An Encounter that started at ``start``, in the shape of its version (R5 renamed two elements)."""
    act_code = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}
    if version == "5.0":
        return {"resourceType": "Encounter", "id": "e1", "status": "completed",
                "class": [{"coding": [act_code]}], "actualPeriod": {"start": start}}  # fmt: skip
    return {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": act_code,
        "period": {"start": start},
    }


def observation(start: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "HbA1c"},
        "effectiveDateTime": start,
    }


FORMATS = [("xml", "3.0"), ("json", "3.0"), ("xml", "4.0"), ("json", "4.0"), ("xml", "5.0"), ("json", "5.0")]


@pytest.mark.parametrize(
    ("naive", "read_as", "utc"),
    [
        ("2026-03-29T01:30:00", "2026-03-29T01:30:00+01:00", "2026-03-29T00:30:00+00:00"),
        ("2026-03-29T02:30:00", "2026-03-29T03:30:00+02:00", "2026-03-29T01:30:00+00:00"),
        ("2026-03-29T03:30:00", "2026-03-29T03:30:00+02:00", "2026-03-29T01:30:00+00:00"),
        ("2026-10-25T02:30:00", "2026-10-25T02:30:00+02:00", "2026-10-25T00:30:00+00:00"),
    ],
    ids=["before the spring change", "in the spring gap", "after the spring change", "ambiguous autumn hour"],
)
def test_a_naive_time_is_the_same_instant_in_every_format_and_version(
    naive: str, read_as: str, utc: str
) -> None:
    """STU3, R4 and R5, JSON and XML: the Encounter start and Observation time read alike, step recorded."""
    for media, version in FORMATS:
        resources = (encounter(version, naive), observation(naive))
        for resource in resources:
            body = (to_xml(resource) if media == "xml" else json.dumps(resource)).encode()
            result = decoded(body, media, version)
            value = result.resource.get("period", {}).get("start") or result.resource["effectiveDateTime"]
            assert value == read_as, (media, version, resource["resourceType"])
            assert datetime.fromisoformat(value).astimezone(UTC).isoformat() == utc
            assert naive_time_step(PARIS) in result.steps, (media, version)


def test_a_naive_time_in_xml_reaches_the_pathway_in_utc(
    make_record: Callable[..., IngestRecord], context: IngestContext, now: datetime
) -> None:
    """Through the whole ingest core: the XML Encounter's naive start is a UTC instant in the event."""
    resource = encounter("4.0", "2026-03-29T01:30:00") | {"subject": {"reference": "Patient/p1"}}
    record = make_record(
        to_xml(resource).encode(),
        source_id=HOSPITAL_ID,
        secret=HOSPITAL_SECRET,
        content_type="application/fhir+xml",
    )
    outcome = process_ingest(record, context, now=now)
    assert isinstance(outcome, Accepted), outcome
    (event,) = outcome.events
    assert event.resource["period"]["start"] == "2026-03-29T00:30:00Z"
    assert naive_time_step(PARIS) in event.steps


@pytest.mark.parametrize("media", ["xml", "json"])
def test_a_string_that_looks_like_a_date_time_is_left_as_sent(media: str) -> None:
    """Only date-time elements are repaired: a valueString or a note's text keeps its naive text."""
    resource = observation("2026-03-29T01:30:00") | {
        "valueString": "2026-03-29T01:30:00",
        "note": [{"text": "2026-03-29T01:30:00"}],
    }
    body = (to_xml(resource) if media == "xml" else json.dumps(resource)).encode()
    result = decoded(body, media, "4.0")
    assert result.resource["effectiveDateTime"] == "2026-03-29T01:30:00+01:00"
    assert result.resource["valueString"] == "2026-03-29T01:30:00"
    assert result.resource["note"] == [{"text": "2026-03-29T01:30:00"}]


@cache
def _date_time_named_fields(version: str) -> dict[tuple[str, str], str]:
    """(model, element) -> FHIR type, for every element of the hub's resource types (and the data types
    they use, transitively) whose name the naive-time repair takes for a date-time."""
    found: dict[tuple[str, str], str] = {}
    seen: set[Any] = set()
    queue = [model for name in SUPPORTED_TYPES if (model := source_model(name, version)) is not None]
    while queue:
        model = queue.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, element in elements(model).items():
            if is_date_time_field(name):
                found[(model.__name__, name)] = element.type_name
            if not element.primitive and element.type_name != "Resource":
                queue.append(model_lookup(version)(element.type_name))
    return found


@pytest.mark.parametrize("version", ["3.0", "4.0", "5.0"])
def test_the_repair_rule_never_picks_a_text_element(version: str) -> None:
    """Why XML is repaired by the JSON rule (element names) rather than by model types: in the hub's
    resource types no element it picks holds free text, so no string is ever rewritten; the rest are
    date-times, dates and numbers (which never look like a date-time) or objects (which it walks into)."""
    picked = _date_time_named_fields(version)
    assert picked[("Period", "start")] == "dateTime"
    text_types = {"string", "markdown", "uri", "url", "canonical", "oid", "uuid", "base64Binary", "xhtml"}
    assert not {key: kind for key, kind in picked.items() if kind in text_types}


# --- reading XML into the JSON form --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "observation-hba1c.json",
        "patient-ins-vali.json",
        "encounter-imp-finished.json",
        "bundle-transaction.json",
    ],
)
def test_xml_written_by_fhir_resources_reads_back_to_the_json(name: str, fhir: Loader) -> None:
    """The fixtures, written as XML by fhir.resources' own writer, read back to exactly their JSON."""
    document = fhir(name)
    written = source_model(document["resourceType"], "4.0").model_validate(document).model_dump_xml()
    assert read_xml(written, "4.0") == document


def test_primitives_are_typed_and_their_extensions_aligned() -> None:
    """Booleans and numbers become JSON's; a repeated primitive's ids and extensions sit in ``_name``."""
    body = (
        b'<Patient xmlns="http://hl7.org/fhir"><active value="true"/>'
        b'<name><given value="Jeanne"/><given id="g2"><extension url="http://example.org/x">'
        b'<valueDecimal value="1.50"/></extension></given><given value="Marie"/></name>'
        b'<multipleBirthInteger value="2"/></Patient>'
    )
    assert read_xml(body, "4.0") == {
        "resourceType": "Patient",
        "active": True,
        "name": [
            {
                "given": ["Jeanne", None, "Marie"],
                "_given": [
                    None,
                    {"id": "g2", "extension": [{"url": "http://example.org/x", "valueDecimal": 1.5}]},
                    None,
                ],
            }
        ],
        "multipleBirthInteger": 2,
    }


def test_contained_resources_and_element_ids_are_read() -> None:
    """A resource-typed element wraps its resource; an element's ``id`` is an attribute (or, as
    fhir.resources writes it, a child)."""
    body = (
        b'<Observation xmlns="http://hl7.org/fhir"><contained><Patient><id value="p1"/></Patient></contained>'
        b'<status value="final"/><code id="c1"><text value="x"/></code>'
        b'<component><id value="k1"/><code><text value="y"/></code></component></Observation>'
    )
    assert read_xml(body, "4.0") == {
        "resourceType": "Observation",
        "contained": [{"resourceType": "Patient", "id": "p1"}],
        "status": "final",
        "code": {"id": "c1", "text": "x"},
        "component": [{"id": "k1", "code": {"text": "y"}}],
    }


def test_comments_and_processing_instructions_are_dropped(
    fixture_bytes: Callable[[str], bytes], fhir: Loader
) -> None:
    """Issue 16: a comment before ``<id>`` (or anywhere) and a processing instruction change nothing."""
    body = fixture_bytes("patient-ins-vali.xml").replace(
        b'<id value="pat-dupont"/>', b'<!-- exported by X --><?app keep?><id value="pat-dupont"/><!-- end -->'
    )
    assert b"<!--" in body
    result = decoded(body, "xml", "4.0")
    assert result.resource == fhir("patient-ins-vali.json")


@pytest.mark.parametrize(
    "div",
    [
        f'<div xmlns="{XHTML}"><p>Jeanne <b>Dupont</b></p></div>',
        f'<n:div xmlns:n="{XHTML}"><n:p>Jeanne <n:b>Dupont</n:b></n:p></n:div>',
        f'<h:div xmlns:h="{XHTML}" xmlns:other="urn:x"><h:p>Jeanne <h:b>Dupont</h:b></h:p></h:div>',
    ],
    ids=["default namespace", "prefixed", "prefixed with another declaration"],
)
def test_a_narrative_reads_the_same_whatever_its_namespace_prefix(div: str) -> None:
    """Issue 16: the div is read as JSON writes it, with XHTML as the default namespace, prefix or not."""
    body = (
        '<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<id value="p1"/><text><status value="generated"/>{div}</text></Patient>'
    ).encode()
    result = decoded(body, "xml", "4.0")
    assert result.resource["text"]["div"] == f'<div xmlns="{XHTML}"><p>Jeanne <b>Dupont</b></p></div>'


def test_a_narrative_outside_xhtml_is_fhir_invalid() -> None:
    """A ``div`` in the FHIR namespace is not a narrative."""
    body = (
        b'<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div>x</div></text></Patient>'
    )
    result = decode(body, ContentType("xml", "4.0"), default_version="4.0", zone=PARIS)
    assert isinstance(result, Rejected)
    assert result.detail == "Patient.text.div: unknown element"


def test_stu3_and_r5_xml_fixtures_read_like_their_models_read_them() -> None:
    """The STU3 and R5 XML fixtures give the same data as fhir.resources' own reader of that version."""
    for version, name in (("3.0", "stu3/condition.xml"), ("5.0", "r5/encounter.xml")):
        body = (FIXTURES / "fhir-versions" / name).read_bytes()
        document = read_xml(body, version)
        assert isinstance(document, dict), document
        model_class = source_model(str(document["resourceType"]), version)
        by_model = json.loads(model_class.model_validate_xml(body).model_dump_json(exclude_none=True))
        assert json.loads(model_class.model_validate(document).model_dump_json(exclude_none=True)) == by_model
