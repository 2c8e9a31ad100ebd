"""Content-type and FHIR version detection, parsing (JSON or XML) and one validation per input.

Every body takes one path: parsed (XML read into the JSON form of the same resource, by
hub/ingest/fhir_xml.py), its structure checked (the shapes the models let through or fail on, resource
types, and required-binding codes in the input's own version), its naive times read in the source's
zone, then validated once with its version's models, and STU3 and R5 converted to R4. A fault is named
by its element path and a phrase (``Observation.status: code not in its required value set``), never
by a value: details reach receipts and logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from hub.errors import ErrorCode
from hub.ingest import fhir_rules
from hub.ingest.fhir_xml import read_xml
from hub.ingest.outcome import Rejected
from hub.normalise import fast_validation, versions
from hub.normalise.fhir_errors import path_step, unreadable_detail, validation_detail
from hub.normalise.fhir_model import VERSION_NAMES, elements, model_lookup
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
#: Deeper JSON is refused, as libxml2 refuses deeper XML: no FHIR resource comes near it.
_MAX_DEPTH = 256

# fhir.resources records required bindings as ``enum_values`` but checks none of them, and it cuts
# some lists short with "+". Those value sets, in full; these are the same in each version that cuts them:
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
_REQUEST_INTENT = frozenset(
    {
        "proposal",
        "plan",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
#: ... and these differ: RequestIntent of STU3's ProcedureRequest, and of R5, which adds "directive".
_COMPLETED_BY_VERSION: dict[str, dict[tuple[str, str], frozenset[str]]] = {
    "3.0": {("ProcedureRequest", "intent"): _REQUEST_INTENT},
    "5.0": {("ServiceRequest", "intent"): _REQUEST_INTENT | {"directive"}},
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
        # The hook marks an object naming a member twice, which the structure check refuses.
        document = json.loads(value.decode("utf-8-sig"), object_pairs_hook=fhir_rules.json_object)
    except RecursionError:
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "JSON nesting is too deep")
    except ValueError:  # bad UTF-8, bad JSON, or an integer longer than Python converts
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "body is not valid UTF-8 JSON")
    if not isinstance(document, dict):
        return Rejected(ErrorCode.FHIR_INVALID, "a FHIR resource is a JSON object")
    return document


@cache
def _required_codes(model_class: Any, version: str) -> dict[str, frozenset[str]]:
    """Top-level code elements of a resource with a required binding: alias -> allowed codes."""
    resource_type = model_class.get_resource_type()
    completions = _COMPLETED_CODES | _COMPLETED_BY_VERSION.get(version, {})
    found: dict[str, frozenset[str]] = {}
    for model_field in model_class.model_fields.values():
        extra = model_field.json_schema_extra
        codes = extra.get("enum_values") if isinstance(extra, dict) else None
        if not isinstance(codes, list) or not model_field.alias:
            continue
        if "+" in codes:
            completed = completions.get((resource_type, model_field.alias))
            if completed is not None:
                found[model_field.alias] = completed
        else:
            found[model_field.alias] = frozenset(str(code) for code in codes)
    return found


#: Where a node sits: the root resource's type, or (where its parent sits, key or index). The text
#: (``Bundle.entry.0.resource``) is built only when a problem is told, not for every node walked.
_Where = tuple[Any, str | int] | str


def _path(where: _Where) -> str:
    steps: list[str] = []
    while isinstance(where, tuple):
        where, step = where
        steps.append(path_step(step))
    steps.append(where)
    return ".".join(reversed(steps))


def _resource_problem(node: Any, where: _Where | None, version: str) -> str | None:
    """What is wrong with a resource as such (``where`` is None for the root): its type, and the codes
    of its required bindings."""
    if not isinstance(node, dict):
        at = _path(where) if where is not None else "resource"
        return f"{at}: must be a resource (an object with a resourceType)"
    resource_type = node.get("resourceType")
    fault = None
    if "resourceType" not in node:
        fault = "required element missing"
    elif resource_type is None:
        fault = "null is not allowed"
    elif not isinstance(resource_type, str):
        fault = "must be a string naming a resource type"
    elif (model_class := versions.source_model(resource_type, version)) is None:
        fault = f"not a FHIR {VERSION_NAMES[version]} resource type"
    if fault is not None:
        return f"{_path((where, 'resourceType')) if where is not None else 'resourceType'}: {fault}"
    for alias, allowed in _required_codes(model_class, version).items():
        code = node.get(alias)
        if isinstance(code, str) and code not in allowed:
            return f"{_path((where or resource_type, alias))}: code not in its required value set"
    return None


def _null_allowed(node: dict[str, Any], key: str, index: int) -> bool:
    """A null item is FHIR JSON only in a primitive's value list whose ``_key`` list (or the reverse)
    has something at that place: the two lists stay aligned."""
    partner = node.get(key[1:] if key.startswith("_") else f"_{key}")
    return isinstance(partner, list) and index < len(partner) and partner[index] is not None


# Where a walk stands: a resource, a Bundle entry, a primitive's ``_name`` object, or any other element.
_RESOURCE, _ENTRY, _EXTRAS, _ELEMENT = "resource", "entry", "extras", "element"


# What hub/ingest/fhir_rules.py checks on a member besides its type's rule: a primitive's ``_name``
# object (ele-1), and a list of extensions (url, ext-1).
_EXTRAS_RULE, _EXTENSIONS_RULE = "_name", "extensions"


class _Member(NamedTuple):
    """What the walk needs to know of one member name of a model."""

    rule: str | None  # a FHIR type whose rule fhir_rules checks (id, base64Binary, xhtml), or the above
    inner: str | None  # the type of the element it holds, walked with that type's members
    #: It holds JSON objects: a data type, a backbone element, a primitive's ``_name``, a resource.
    objects: bool = False


@cache
def _members_of(version: str, type_name: str) -> dict[str, _Member]:
    """A resource's, data type's or backbone element's members in FHIR JSON, by name: its elements, and
    each primitive's ``_name`` (its id and extensions, an Element). A resource-typed element (contained,
    entry.resource) has no inner type: a resource is known by its own resourceType. A member the model
    lacks has no rule here: validation refuses it."""
    found: dict[str, _Member] = {}
    for name, element in elements(model_lookup(version)(type_name)).items():
        if element.primitive:
            rule = element.type_name if element.type_name in fhir_rules.CHECKED_TYPES else None
            found[name] = _Member(rule, None)
            found[f"_{name}"] = _Member(_EXTRAS_RULE, "Element", objects=True)
        elif element.type_name == "Resource":
            found[name] = _Member(None, None, objects=True)
        else:
            rule = _EXTENSIONS_RULE if name in fhir_rules.EXTENSION_LISTS else None
            found[name] = _Member(rule, element.type_name, objects=True)
    return found


def _container_problem(key: str, value: Any, where: _Where, resource_type: str) -> str | None:
    """The containers of resources in a resource, which later stages walk (split.py reads entries)."""
    if key == "contained" and not isinstance(value, list):
        return f"{_path(where)}: must be an array of resources"
    if resource_type == "Bundle" and key == "entry":
        if not isinstance(value, list):
            return f"{_path(where)}: must be an array of objects"
        bad = next((n for n, entry in enumerate(value) if not isinstance(entry, dict)), None)
        if bad is not None:
            return f"{_path((where, bad))}: an entry must be an object"
    return None


def _member_problem(
    node: dict[str, Any], key: str, value: Any, where: _Where, resource_type: str | None
) -> str | None:
    """What is wrong with one member of an object, on its own (its items are walked after)."""
    if value is None:
        return f"{_path(where)}: null is not allowed (leave the element out)"
    problem = _container_problem(key, value, where, resource_type) if resource_type is not None else None
    if problem is not None:
        return problem
    if not value and isinstance(value, list | dict | str):  # an empty string is no value either (ele-1)
        return f"{_path(where)}: {fhir_rules.EMPTY}"
    if isinstance(value, list):
        for index, item in enumerate(value):
            if item is None and not _null_allowed(node, key, index):
                return f"{_path((where, index))}: null is not allowed"
            if item == "":
                return f"{_path((where, index))}: {fhir_rules.EMPTY}"
    return None


def _items(value: Any, where: _Where) -> list[tuple[_Where, Any]]:
    """A member's values with where each sits: the member itself, or each item of its array."""
    if isinstance(value, list):
        return [((where, n), item) for n, item in enumerate(value)]
    return [(where, value)]


def _object_problem(value: Any, where: _Where, *, resource: bool) -> str | None:
    """A data type, backbone element or resource is a JSON object, not a string or a number: the models
    would read a string of JSON in its place, and hand the string to the stages after. (A null in a list
    was checked before; an array in an array is walked for its shapes, and its depth, then refused.)"""
    for at, item in _items(value, where):
        if item is not None and not isinstance(item, dict | list):
            what = "a resource (an object with a resourceType)" if resource else "an object"
            return f"{_path(at)}: must be {what}"
    return None


def _rules_problem(node: dict[str, Any], key: str, value: Any, parent: _Where, rule: str) -> str | None:
    """FHIR's rules on one member (hub/ingest/fhir_rules.py): its type's rule (id, base64Binary,
    narrative), ele-1 for a primitive's ``_name`` object, or its extensions' url and ext-1."""
    where: _Where = (parent, key)
    if rule == _EXTRAS_RULE:
        # ele-1 for a primitive: its id and extensions, without extensions, need the value beside them.
        # The primitive's own place is named (``Patient.birthDate``), as XML's reader names it.
        name = key[1:]
        if isinstance(value, dict) and not ("extension" in value or name in node):
            return f"{_path((parent, name))}: {fhir_rules.NO_PRIMITIVE_VALUE}"
        for n, extras in enumerate(value if isinstance(value, list) else ()):
            if isinstance(extras, dict) and not ("extension" in extras or _null_allowed(node, key, n)):
                return f"{_path(((parent, name), n))}: {fhir_rules.NO_PRIMITIVE_VALUE}"
    elif rule == _EXTENSIONS_RULE:
        for at, extension in _items(value, where):
            fault = fhir_rules.extension_problem(extension) if isinstance(extension, dict) else None
            if fault is not None:
                step, said = fault
                return f"{_path(at if step is None else (at, step))}: {said}"
    else:
        for at, item in _items(value, where):
            phrase = fhir_rules.primitive_problem(rule, item) if isinstance(item, str) else None
            if phrase is not None:
                return f"{_path(at)}: {phrase}"
    return None


#: A node to walk: (node, where, role, its model's members).
_Child = tuple[Any, _Where, str, dict[str, _Member]]
_NO_MEMBERS: dict[str, _Member] = {}


def _children(
    key: str,
    value: list[Any] | dict[str, Any],
    where: _Where,
    resource_type: str | None,
    inner: dict[str, _Member],
) -> list[_Child]:
    """The objects and arrays a member holds, to walk, and whatever stands where a resource belongs."""
    extras = key.startswith("_")
    if isinstance(value, dict):
        # Any object with a resourceType is a resource (Bundle.entry.response.outcome, ...).
        if "resourceType" in value:
            return [(value, where, _RESOURCE, _NO_MEMBERS)]
        return [(value, where, _EXTRAS if extras else _ELEMENT, inner)]
    if resource_type is not None and key == "contained":
        return [(item, (where, n), _RESOURCE, _NO_MEMBERS) for n, item in enumerate(value)]
    role = _ENTRY if resource_type == "Bundle" and key == "entry" else _EXTRAS if extras else _ELEMENT
    return [(item, (where, n), role, inner) for n, item in enumerate(value) if isinstance(item, dict | list)]


def _members(
    node: dict[str, Any], where: _Where, role: str, members: dict[str, _Member], version: str
) -> tuple[str | None, list[_Child]]:
    """A problem of ``node`` and its members, or the children to walk."""
    if isinstance(node, fhir_rules.RepeatedMembers):
        return f"{_path((where, node.repeated))}: {fhir_rules.REPEATED}", []
    if len(node) < 2 and role in (_ELEMENT, _ENTRY):
        phrase = fhir_rules.element_problem(node)
        if phrase is not None:
            return f"{_path(where)}: {phrase}", []
    children: list[_Child] = []
    resource_type = str(node["resourceType"]) if role == _RESOURCE else None
    plain = role in (_ELEMENT, _EXTRAS)  # no container of resources in it
    for key, value in node.items():
        known = members.get(key)
        checked = known is not None and (known.rule is not None or known.objects)
        if plain and isinstance(value, str) and value and not checked:
            continue  # the most common member, a primitive's value without a rule: nothing to check
        member: _Where = (where, key)
        problem = _member_problem(node, key, value, member, resource_type)
        if problem is None and known is not None and known.rule is not None:
            problem = _rules_problem(node, key, value, where, known.rule)
        if problem is None and known is not None and known.objects and not isinstance(value, dict):
            problem = _object_problem(value, member, resource=known.inner is None)
        if problem is not None:
            return problem, []
        if role == _ENTRY and key == "resource":
            children.append((value, member, _RESOURCE, _NO_MEMBERS))
        elif isinstance(value, list | dict):
            inner = _members_of(version, known.inner) if known is not None and known.inner else _NO_MEMBERS
            children += _children(key, value, member, resource_type, inner)
    return None, children


def _structure_problem(document: dict[str, Any], version: str) -> Rejected | None:
    """The shapes the models do not check, or fail on with an exception, and later stages rely on.

    FHIR JSON has no nulls (but aligned in a primitive's lists), no empty strings, objects or arrays, and
    no member named twice in an object; a Bundle's entries are objects, ``contained`` and
    ``entry.resource`` hold resources, and every resourceType names a resource of the input's version
    (fhir.resources raises TypeError or KeyError on one that does not, and accepts nulls that later
    stages would then trip on). Codes of required bindings are checked here too: the models record them
    but check none; and so are FHIR's rules the models let through (hub/ingest/fhir_rules.py: ids,
    base64, narrative, extensions, ele-1), following each element's type in the version's models. One
    walk, without recursion, so that nesting deeper than XML's parser allows is refused rather than
    overflowing the stack later.
    """
    problem = _resource_problem(document, None, version)
    if problem is not None:
        return Rejected(ErrorCode.FHIR_INVALID, problem)
    root: _Where = str(document["resourceType"])
    stack: list[tuple[Any, _Where, str, int, dict[str, _Member]]] = [
        (document, root, _RESOURCE, 0, _NO_MEMBERS)
    ]
    while stack:
        node, where, role, depth, members = stack.pop()
        if depth > _MAX_DEPTH:
            return Rejected(ErrorCode.PAYLOAD_MALFORMED, "FHIR nesting is too deep")
        if role == _RESOURCE:
            problem = _resource_problem(node, where, version) if depth > 0 else None
            if problem is not None:
                return Rejected(ErrorCode.FHIR_INVALID, problem)
            members = _members_of(version, str(node["resourceType"]))
        if isinstance(node, list):  # a list in a list: not FHIR, but walked for its shapes
            items = [(item, (where, n)) for n, item in enumerate(node) if isinstance(item, dict | list)]
            stack.extend((item, at, _ELEMENT, depth + 1, _NO_MEMBERS) for item, at in reversed(items))
            continue
        problem, children = _members(node, where, role, members, version)
        if problem is not None:
            return Rejected(ErrorCode.FHIR_INVALID, problem)
        stack.extend(
            (value, at, child_role, depth + 1, inner) for value, at, child_role, inner in reversed(children)
        )
    return None


def _validate_r4(document: dict[str, Any], version: str) -> Rejected | None:
    """One validation with the R4B models (the structure check has found the resource type): their
    compiled first look, and the models themselves where it does not accept (their words for a reject)."""
    if fast_validation.models_accept(document, version):
        return None
    resource_type = str(document["resourceType"])
    try:
        versions.source_model(resource_type, version).model_validate(document)
    except ValidationError as exc:
        return Rejected(ErrorCode.FHIR_INVALID, validation_detail(exc, resource_type))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # fhir.resources raises these instead of validating on some values of a wrong JSON type.
        return Rejected(ErrorCode.FHIR_INVALID, unreadable_detail(exc, document, version))
    except RecursionError:
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "FHIR nesting is too deep")
    return None


def _to_r4(document: dict[str, Any], version: str) -> tuple[dict[str, Any], tuple[str, ...]] | Rejected:
    """An STU3 or R5 document validated in its own version, then converted (the converter re-validates).

    Invalid input was refused before conversion, so what the converter or the R4 check refuses is valid
    input that R4 cannot express (``fhir.version.unsupported``), or a resource that is no clinical data
    for a pathway (``fhir.invalid``, the code the converter gives, as for R4 input).
    """
    problem = versions.validate_version(document, version)
    if problem is not None:
        return Rejected(ErrorCode.FHIR_INVALID, problem)
    # The document was parsed for this input alone: converted in place, not deep-copied first.
    converted = versions.convert_to_r4(document, version, given_up=True)
    if isinstance(converted, versions.Unconvertible):
        return Rejected(converted.code, converted.detail)
    rejected = _structure_problem(converted.resource, "4.0")
    if rejected is not None:
        return Rejected(ErrorCode.FHIR_VERSION_UNSUPPORTED, f"not valid R4 once converted: {rejected.detail}")
    return converted.resource, converted.steps


def decode(
    value: bytes, content_type: ContentType, *, default_version: str, zone: ZoneInfo
) -> Decoded | Rejected:
    """Parse, check, repair naive times, validate once and convert to R4 one body, JSON or XML alike.

    Later stages carry the plain data, never the model (validation costs ~250 us a resource).
    """
    version = content_type.fhir_version or default_version
    if version not in KNOWN_VERSIONS:
        return Rejected(
            ErrorCode.FHIR_VERSION_UNSUPPORTED,
            f"fhirVersion {version[:10]!r} is not one of {', '.join(sorted(KNOWN_VERSIONS))}",
        )
    steps: list[str] = [f"decoded:{content_type.media}/fhir-{version}"]
    # XML is read into the JSON form of the same resource: from here on both formats take one path.
    document = read_xml(value, version) if content_type.media == "xml" else _parse_json(value)
    if isinstance(document, Rejected):
        return document
    rejected = _structure_problem(document, version)
    if rejected is not None:
        return rejected
    # fhir.resources refuses a time without offset; real software sends them, so read the source's
    # wall clock before validating (XML too: it is in the JSON form now, and one rule serves both).
    document, repaired = fix_naive_times_before_validation(document, zone)
    if repaired:
        steps.append(naive_time_step(zone))
    if version in READABLE_VERSIONS:
        rejected = _validate_r4(document, version)
        if rejected is not None:
            return rejected
        return Decoded(document, version, content_type.media, tuple(steps))
    converted = _to_r4(document, version)
    if isinstance(converted, Rejected):
        return converted
    resource, conversion_steps = converted
    return Decoded(resource, version, content_type.media, (*steps, *conversion_steps))
