"""Content-type and FHIR version detection, parsing (JSON or XML) and one validation per input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from lxml import etree
from pydantic import ValidationError

from hub.errors import ErrorCode
from hub.ingest.outcome import Rejected
from hub.normalise import versions
from hub.normalise.instants import fix_naive_times_before_validation, naive_time_step

JSON_MEDIA = "application/fhir+json"
XML_MEDIA = "application/fhir+xml"
_JSON_ALIASES = frozenset({JSON_MEDIA, "application/json", "application/json+fhir"})
_XML_ALIASES = frozenset({XML_MEDIA, "application/xml", "text/xml", "application/xml+fhir"})

#: Versions read natively: R4 and R4B share fhir.resources' R4B models (DESIGN.md section 4).
READABLE_VERSIONS = frozenset({"4.0", "4.3"})
#: Versions converted to R4 first (hub/normalise/versions.py).
CONVERTED_VERSIONS = frozenset({"3.0", "5.0"})
KNOWN_VERSIONS = READABLE_VERSIONS | CONVERTED_VERSIONS
_VALIDATION_ERRORS_SHOWN = 3

# fhir.resources records required bindings as ``enum_values`` but checks none of them, and it cuts
# some lists short with "+". The R4 value sets of those, in full:
_OBSERVATION_STATUS = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
)
_COMPLETED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Observation", "status"): _OBSERVATION_STATUS,
    ("RiskAssessment", "status"): _OBSERVATION_STATUS,
    ("DetectedIssue", "status"): _OBSERVATION_STATUS,
    ("DiagnosticReport", "status"): _OBSERVATION_STATUS | {"partial", "appended"},
    ("Encounter", "status"): frozenset(
        {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled"}
        | {"entered-in-error", "unknown"}
    ),
}


@dataclass(frozen=True)
class ContentType:
    """The parsed ``content-type`` header."""

    media: str  # "json" or "xml"
    fhir_version: str | None


@dataclass(frozen=True)
class Decoded:
    """A validated FHIR resource as plain JSON-shaped data, with the version it was read as."""

    resource: dict[str, Any]
    fhir_version: str
    media: str
    steps: tuple[str, ...] = ()


def parse_content_type(header: str | None) -> ContentType | Rejected:
    """Media type and optional ``fhirVersion`` parameter; JSON when the header is absent."""
    if not header:
        return ContentType("json", None)
    media, *params = (part.strip() for part in header.split(";"))
    media = media.lower()
    if media in _JSON_ALIASES:
        kind = "json"
    elif media in _XML_ALIASES:
        kind = "xml"
    else:
        return Rejected(
            ErrorCode.PAYLOAD_MALFORMED,
            f"content-type {media[:60]!r} is neither {JSON_MEDIA} nor {XML_MEDIA}",
        )
    version = None
    for param in params:
        name, _, text = param.partition("=")
        if name.strip().lower() == "fhirversion":
            version = ".".join(text.strip().strip('"').split(".")[:2])
    return ContentType(kind, version)


def _parse_json(value: bytes) -> dict[str, Any] | Rejected:
    try:
        # FHIR JSON is UTF-8: json.loads(bytes) would also take UTF-16/32. A UTF-8 BOM is tolerated.
        document = json.loads(value.decode("utf-8-sig"))
    except RecursionError:
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "JSON nesting is too deep")
    except ValueError:  # bad UTF-8, bad JSON, or an integer longer than Python converts
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "body is not valid UTF-8 JSON")
    if not isinstance(document, dict):
        return Rejected(ErrorCode.FHIR_INVALID, "a FHIR resource is a JSON object")
    return document


# No DTDs, no entities, no network: XML from outside is hostile until proven otherwise.
_SAFE_XML = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
)


def _xml_root_type(value: bytes) -> str | Rejected:
    try:
        root = etree.fromstring(value, parser=_SAFE_XML)
    except etree.XMLSyntaxError:
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "body is not well-formed XML")
    if root.getroottree().docinfo.doctype:
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "XML with a DOCTYPE is refused")
    qname = etree.QName(root)
    if qname.namespace != "http://hl7.org/fhir":
        return Rejected(ErrorCode.FHIR_INVALID, "XML root is not in the FHIR namespace")
    return str(qname.localname)


def _validation_detail(exc: ValidationError) -> str:
    # Locations and error types only: pydantic's messages and inputs may quote patient data.
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    shown = [
        f"{'.'.join(str(p) for p in err['loc'])}: {err['type']}" for err in errors[:_VALIDATION_ERRORS_SHOWN]
    ]
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def _model_class(resource_type: object) -> Any:
    """The R4B model of a concrete resource type, or None (data types and abstract types too)."""
    from fhir.resources.R4B import get_fhir_model_class  # noqa: PLC0415 - heavy import, once
    from fhir.resources.R4B.resource import Resource  # noqa: PLC0415

    if not isinstance(resource_type, str) or not resource_type.isalpha():
        return None
    if resource_type in {"Resource", "DomainResource"}:
        return None
    try:
        model_class = get_fhir_model_class(resource_type)
    except (ValueError, KeyError):
        return None
    return model_class if issubclass(model_class, Resource) else None


@cache
def _required_codes(model_class: Any) -> dict[str, frozenset[str]]:
    """Top-level code elements of a resource with a required binding: alias -> allowed codes."""
    resource_type = model_class.get_resource_type()
    found: dict[str, frozenset[str]] = {}
    for model_field in model_class.model_fields.values():
        extra = model_field.json_schema_extra
        codes = extra.get("enum_values") if isinstance(extra, dict) else None
        if not isinstance(codes, list) or not model_field.alias:
            continue
        if "+" in codes:
            completed = _COMPLETED_CODES.get((resource_type, model_field.alias))
            if completed is not None:
                found[model_field.alias] = completed
        else:
            found[model_field.alias] = frozenset(str(code) for code in codes)
    return found


def _check_resource(resource: dict[str, Any], where: str = "") -> Rejected | None:
    """What model validation leaves out: nested resources' types, and required-binding codes.

    Details name the element, never its value.
    """
    prefix = f"{where}." if where else ""
    model_class = _model_class(resource.get("resourceType"))
    if model_class is None:
        return Rejected(ErrorCode.FHIR_INVALID, f"{where or 'resource'}: no known FHIR resourceType")
    for alias, allowed in _required_codes(model_class).items():
        code = resource.get(alias)
        if isinstance(code, str) and code not in allowed:
            return Rejected(ErrorCode.FHIR_INVALID, f"{prefix}{alias}: code not in its required value set")
    nested: list[tuple[str, Any]] = [
        (f"{prefix}contained.{n}", inner) for n, inner in enumerate(resource.get("contained") or ())
    ]
    if resource["resourceType"] == "Bundle":
        nested += [
            (f"{prefix}entry.{n}.resource", entry.get("resource"))
            for n, entry in enumerate(resource.get("entry") or ())
            if isinstance(entry, dict) and "resource" in entry
        ]
    for inner_where, inner in nested:
        if not isinstance(inner, dict):
            return Rejected(ErrorCode.FHIR_INVALID, f"{inner_where}: not a resource")
        rejected = _check_resource(inner, inner_where)
        if rejected is not None:
            return rejected
    return None


def _xml_document(value: bytes, version: str) -> dict[str, Any] | Rejected:
    """FHIR XML read with the model of its version, as JSON-shaped data (the models validate it)."""
    resource_type = _xml_root_type(value)
    if isinstance(resource_type, Rejected):
        return resource_type
    model_class = _model_class(resource_type) if version in READABLE_VERSIONS else None
    if version not in READABLE_VERSIONS:
        model_class = versions.source_model(resource_type, version)
    if model_class is None:
        return Rejected(ErrorCode.FHIR_INVALID, f"unknown resource type {resource_type[:40]!r}")
    try:
        model = model_class.model_validate_xml(value)
    except ValidationError as exc:
        return Rejected(ErrorCode.FHIR_INVALID, _validation_detail(exc))
    except (ValueError, KeyError, TypeError, etree.LxmlError) as exc:
        # fhir.resources' XML reader raises KeyError on an unknown element, for one.
        return Rejected(ErrorCode.FHIR_INVALID, f"XML cannot be read as FHIR ({type(exc).__name__})")
    except RecursionError:
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "FHIR nesting is too deep")
    document: dict[str, Any] = json.loads(model.model_dump_json(exclude_none=True))
    return document


def _validate_r4(document: dict[str, Any]) -> Rejected | None:
    model_class = _model_class(document.get("resourceType"))
    if model_class is None:
        return Rejected(ErrorCode.FHIR_INVALID, "no known FHIR resourceType")
    try:
        model_class.model_validate(document)
    except ValidationError as exc:
        return Rejected(ErrorCode.FHIR_INVALID, _validation_detail(exc))
    except (ValueError, KeyError, TypeError) as exc:
        # fhir.resources raises these on some bad nested resourceType values instead of validating.
        return Rejected(ErrorCode.FHIR_INVALID, f"JSON cannot be read as FHIR ({type(exc).__name__})")
    except RecursionError:
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "FHIR nesting is too deep")
    return _check_resource(document)


def _to_r4(document: dict[str, Any], version: str) -> tuple[dict[str, Any], tuple[str, ...]] | Rejected:
    """An STU3 or R5 document validated in its own version, then converted (the converter re-validates)."""
    problem = versions.validate_version(document, version)
    if problem is not None:
        return Rejected(ErrorCode.FHIR_INVALID, problem)
    converted = versions.convert_to_r4(document, version)
    if isinstance(converted, versions.Unconvertible):
        return Rejected(ErrorCode.FHIR_VERSION_UNSUPPORTED, converted.detail)
    rejected = _check_resource(converted.resource)
    return rejected if rejected is not None else (converted.resource, converted.steps)


def decode(
    value: bytes, content_type: ContentType, *, default_version: str, zone: ZoneInfo
) -> Decoded | Rejected:
    """Parse, repair naive times, convert to R4 and validate one body, once.

    Later stages carry the plain data, never the model (validation costs ~250 us a resource).
    """
    version = content_type.fhir_version or default_version
    if version not in KNOWN_VERSIONS:
        return Rejected(
            ErrorCode.FHIR_VERSION_UNSUPPORTED,
            f"fhirVersion {version[:10]!r} is not one of {', '.join(sorted(KNOWN_VERSIONS))}",
        )
    steps: list[str] = [f"decoded:{content_type.media}/fhir-{version}"]
    if content_type.media == "xml":
        document = _xml_document(value, version)
    else:
        document = _parse_json(value)
        if isinstance(document, dict):
            # fhir.resources refuses a time without offset; real software sends them, so read the
            # source's wall clock before validating.
            document, repaired = fix_naive_times_before_validation(document, zone)
            if repaired:
                steps.append(naive_time_step(zone))
    if isinstance(document, Rejected):
        return document
    if version in READABLE_VERSIONS:
        # The XML reader already validated with the model; JSON is validated here, once.
        rejected = _check_resource(document) if content_type.media == "xml" else _validate_r4(document)
        if rejected is not None:
            return rejected
        return Decoded(document, version, content_type.media, tuple(steps))
    converted = _to_r4(document, version)
    if isinstance(converted, Rejected):
        return converted
    resource, conversion_steps = converted
    return Decoded(resource, version, content_type.media, (*steps, *conversion_steps))
