"""FHIR XML read into the FHIR JSON form, so that an XML body then takes the JSON body's path.

An XML body becomes the very data ``json.loads`` would give for the same resource in JSON: the same
structure checks, the same repair of naive times (read in the source's zone, by the same rule) and one
model validation follow, and a fault is named by the same element path in both formats.

fhir.resources' own XML reader is not used for this. It validates while it reads, model by nested
model, so an error names only the innermost element (``start: value_error``) and a naive time is
refused before anything can repair it; it keeps comments (one before ``<id>`` fails as ``id__ext``),
takes a narrative only with the XHTML namespace as default, and raises KeyError on an unknown element.

The rules are FHIR's (http://hl7.org/fhir/R4/xml.html), with the names, types and cardinalities of the
input version's models: an element repeats only where its model field is a list; a primitive's value is
its ``value`` attribute (booleans, integers and decimals become JSON booleans and numbers), its ``id``
and extensions go to the ``_name`` sibling; ``id`` and, on an extension, ``url`` are attributes of
other elements; a resource-typed element (``contained``, ``entry.resource``) wraps one resource; the
narrative ``div`` is serialised with the XHTML namespace as default, whatever prefix it was written with.

The parser is the hub's safe one: no DTD, no entities, no network, comments and processing instructions
dropped. Details name element paths (``Bundle.entry.0.resource.status``), never values.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lxml import etree

from hub.errors import ErrorCode
from hub.ingest.outcome import Rejected
from hub.normalise import versions
from hub.normalise.fhir_errors import path_step
from hub.normalise.fhir_model import VERSION_NAMES, Element, elements, model_lookup

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
#: schemaLocation hints on the root: allowed, and not FHIR content.
_XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

#: No DTDs, no entities, no network: XML from outside is hostile until proven otherwise (narratives
#: sent in JSON are read with it too). libxml2 also refuses more than 256 levels of nesting without
#: huge_tree.
SAFE_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)

_UNDECLARED_ENTITY = (
    "body is not well-formed XML: it uses an entity XML does not have "
    "(XML has &lt; &gt; &amp; &quot; &apos; and numeric references such as &#174;)"
)

_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", re.ASCII)
_INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt"})
_ATTRIBUTES = frozenset({"id"})
_EXTENSION_ATTRIBUTES = frozenset({"id", "url"})


class _Unreadable(Exception):
    """Unwinds the reading from any depth; :func:`read_xml` turns it into a reject."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _typed(text: str, type_name: str) -> Any:
    """A primitive's ``value`` attribute as JSON would carry it; text that does not fit its type is
    left as text, for validation to name."""
    if type_name == "boolean" and text in ("true", "false"):
        return text == "true"
    try:
        if type_name in _INTEGER_TYPES and _INTEGER.fullmatch(text):
            return int(text)
        if type_name == "decimal" and _DECIMAL.fullmatch(text):
            return json.loads(text)  # exactly the number the JSON body would have held
    except ValueError:  # more digits than Python converts (4300): no FHIR number has them
        return text
    return text


def _no_text(element: Any, path: str) -> None:
    if (element.text or "").strip() or any((child.tail or "").strip() for child in element):
        raise _Unreadable(f"{path}: text outside a value attribute")


def _copy_xhtml(element: Any, parent: Any | None) -> Any:
    """``element`` copied under XHTML as the default namespace, so that it serialises with no prefix
    and with no namespace declarations of the FHIR document around it."""
    attributes = dict(element.attrib)
    if parent is None:
        copy = etree.Element(element.tag, attributes, nsmap={None: XHTML_NS})
    else:
        copy = etree.SubElement(parent, element.tag, attributes)
        copy.tail = element.tail
    copy.text = element.text
    for child in element:
        _copy_xhtml(child, copy)
    return copy


def _xhtml(element: Any, path: str) -> str:
    if element.tag != f"{{{XHTML_NS}}}div":
        raise _Unreadable(f"{path}: the narrative must be an XHTML div")
    text: str = etree.tostring(_copy_xhtml(element, None), encoding="unicode")
    return text


def _primitive(element: Any, field: Element, path: str, version: str) -> tuple[Any, dict[str, Any] | None]:
    """A primitive element's value (None when it has only extensions) and its ``_name`` object."""
    extras: dict[str, Any] = {}
    for name, text in element.attrib.items():
        if name == "id":
            extras["id"] = text
        elif name != "value":
            raise _Unreadable(f"{path}: unknown attribute")
    _no_text(element, path)
    extension_class = model_lookup(version)("Extension")
    extensions: list[dict[str, Any]] = []
    for child in element:
        if child.tag != f"{{{FHIR_NS}}}extension":
            raise _Unreadable(f"{path}.{path_step(etree.QName(child).localname)}: unknown element")
        extensions.append(_element(child, extension_class, f"{path}.extension.{len(extensions)}", version))
    if extensions:
        extras["extension"] = extensions
    value = element.get("value")
    if value is None and not extras:
        raise _Unreadable(f"{path}: has neither a value nor extensions")
    return (None if value is None else _typed(value, field.type_name)), (extras or None)


def _wrapped_resource(element: Any, path: str, version: str) -> dict[str, Any]:
    """The one resource a resource-typed element (``contained``, ``entry.resource``) holds."""
    _no_text(element, path)
    children = list(element)
    if element.attrib or len(children) != 1:
        raise _Unreadable(f"{path}: must hold one resource")
    return _resource(children[0], path, version)


def _value(element: Any, field: Element, path: str, version: str) -> tuple[Any, dict[str, Any] | None]:
    """One child element's JSON value, and for a primitive its ``_name`` object."""
    if field.type_name == "xhtml":
        return _xhtml(element, path), None
    if field.primitive:
        return _primitive(element, field, path, version)
    if field.type_name == "Resource":
        return _wrapped_resource(element, path, version), None
    return _element(element, model_lookup(version)(field.type_name), path, version), None


def _children(element: Any, model_class: Any, path: str, version: str) -> dict[str, Any]:
    """The JSON members of a resource or data type from its child elements."""
    _no_text(element, path)
    fields = elements(model_class)
    members: dict[str, Any] = {}
    extras: dict[str, list[dict[str, Any] | None]] = {}  # the _name lists of repeating primitives
    for child in element:
        qname = etree.QName(child)
        name = qname.localname
        field = fields.get(name)
        expected_ns = XHTML_NS if field is not None and field.type_name == "xhtml" else FHIR_NS
        if field is None or qname.namespace != expected_ns:
            raise _Unreadable(f"{path}.{path_step(name)}: unknown element")
        if not field.repeats and (name in members or f"_{name}" in members):
            raise _Unreadable(f"{path}.{name}: must not repeat")
        where = f"{path}.{name}.{len(members.get(name, ()))}" if field.repeats else f"{path}.{name}"
        value, extra = _value(child, field, where, version)
        if not field.repeats:
            if value is not None:
                members[name] = value
            if extra is not None:
                members[f"_{name}"] = extra
            continue
        members.setdefault(name, []).append(value)
        if field.primitive:
            extras.setdefault(name, []).append(extra)
    # JSON keeps a repeating primitive's values and extensions in two aligned lists, with null where an
    # item has none; a list of nulls only is left out.
    for name, items in extras.items():
        if any(item is not None for item in items):
            members[f"_{name}"] = items
        if all(item is None for item in members[name]):
            del members[name]
    return members


def _element(element: Any, model_class: Any, path: str, version: str) -> dict[str, Any]:
    """A data type or backbone element: ``id`` (and an extension's ``url``) are attributes.

    fhir.resources' XML writer puts an element's ``id`` in a child element instead; that form is read too.
    """
    attributes = _EXTENSION_ATTRIBUTES if model_class.get_resource_type() == "Extension" else _ATTRIBUTES
    members = _children(element, model_class, path, version)
    for name, text in element.attrib.items():
        if name not in attributes:
            raise _Unreadable(f"{path}: unknown attribute")
        if name in members:
            raise _Unreadable(f"{path}.{name}: must not repeat")
        members[name] = text
    return members


def _resource(element: Any, path: str | None, version: str) -> dict[str, Any]:
    """A resource element as FHIR JSON; ``path`` is where it sits (None for the root)."""
    qname = etree.QName(element)
    name = qname.localname
    model_class = versions.source_model(name, version) if qname.namespace == FHIR_NS else None
    if model_class is None:  # named as JSON would name it, by its resourceType
        where = f"{path}.resourceType" if path else "resourceType"
        raise _Unreadable(f"{where}: not a FHIR {VERSION_NAMES[version]} resource type")
    if any(etree.QName(attribute).namespace != _XSI_NS for attribute in element.attrib):
        raise _Unreadable(f"{path or name}: unknown attribute")
    return {"resourceType": name, **_children(element, model_class, path or name, version)}


def read_xml(value: bytes, version: str) -> dict[str, Any] | Rejected:
    """A FHIR XML body as the FHIR JSON data of the same resource, or why it cannot be read."""
    try:
        root = etree.fromstring(value, parser=SAFE_PARSER)
    except etree.XMLSyntaxError as exc:
        # HTML's named entities (&reg;, &nbsp;) are the usual cause in a narrative: say so, without the name.
        if exc.code == etree.ErrorTypes.ERR_UNDECLARED_ENTITY:
            return Rejected(ErrorCode.PAYLOAD_MALFORMED, _UNDECLARED_ENTITY)
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "body is not well-formed XML")
    if root.getroottree().docinfo.doctype:
        return Rejected(ErrorCode.PAYLOAD_MALFORMED, "XML with a DOCTYPE is refused")
    if etree.QName(root).namespace != FHIR_NS:
        return Rejected(ErrorCode.FHIR_INVALID, "XML root is not in the FHIR namespace")
    try:
        return _resource(root, None, version)
    except _Unreadable as unreadable:
        return Rejected(ErrorCode.FHIR_INVALID, unreadable.detail)
