"""Stable ids for a source's resources, so references survive the Bundle they came in.

Inside a Bundle, ``urn:uuid:`` full URLs and relative ``Type/id`` references only mean something to
that Bundle or to the source's own server. The hub gives each resource a stable id, a UUIDv5 of the
source and the resource's own address (its ``Type/id``, else its full URL), and rewrites references
to ``Type/<stable id>``: the same resource sent again, or referenced from a later input, gets the
same id. Absolute URLs of other servers and ``#contained`` references are left as they are; the
patient reference is the identity stage's (network patient id).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Namespace of stable resource ids.
RESOURCE_ID_NAMESPACE = uuid.UUID("a3c5f0f2-7f1e-4a67-9f57-2c1c3f0b6d11")

RPPS = "urn:oid:1.2.250.1.71.4.2.1"
FINESS = "urn:oid:1.2.250.1.71.4.2.2"
#: The identifier a reference to these types should carry, by preference.
_PREFERRED_SYSTEMS = {"Practitioner": (RPPS,), "PractitionerRole": (RPPS,), "Organization": (FINESS,)}


@dataclass(frozen=True)
class Target:
    """Where a Bundle address points: the stable reference, and the identifier to carry with it."""

    reference: str
    identifier: dict[str, Any] | None = None


def _identifier_of(resource: Mapping[str, Any]) -> dict[str, Any] | None:
    preferred = _PREFERRED_SYSTEMS.get(str(resource.get("resourceType")))
    if preferred is None:
        return None
    identifiers = [i for i in resource.get("identifier") or () if i.get("system") and i.get("value")]
    for system in preferred:
        for identifier in identifiers:
            if identifier["system"] == system:
                return {"system": system, "value": identifier["value"]}
    first = identifiers[0] if identifiers else None
    return None if first is None else {"system": first["system"], "value": first["value"]}


def stable_id(source_id: str, address: str) -> str:
    """The hub's id for the resource a source knows at ``address`` (``Type/id`` or a full URL)."""
    return str(uuid.uuid5(RESOURCE_ID_NAMESPACE, f"{source_id}|{address}"))


def address_book(source_id: str, items: Iterable[tuple[str | None, Mapping[str, Any]]]) -> dict[str, Target]:
    """Every way a Bundle's entries can be referenced (full URL, ``Type/id``) → where it points."""
    book: dict[str, Target] = {}
    for full_url, resource in items:
        resource_type = str(resource.get("resourceType"))
        own = f"{resource_type}/{resource['id']}" if resource.get("id") else None
        address = own or full_url
        if address is None:
            continue
        target = Target(f"{resource_type}/{stable_id(source_id, address)}", _identifier_of(resource))
        book[address] = target
        if full_url:
            book[full_url] = target
    return book


def _relative(reference: str) -> bool:
    parts = reference.split("/")
    return len(parts) == 2 and parts[0].isalpha() and parts[0][:1].isupper() and bool(parts[1])


def with_stable_references(
    resource: dict[str, Any], *, source_id: str, book: Mapping[str, Target]
) -> tuple[dict[str, Any], bool]:
    """The resource with its own stable id and its references rewritten; whether anything changed."""
    changed = False

    def rewrite(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, dict):
            literal = node.get("reference")
            out = {key: (value if key == "reference" else rewrite(value)) for key, value in node.items()}
            if isinstance(literal, str):
                target = book.get(literal)
                if target is None and _relative(literal):
                    target = Target(f"{literal.split('/')[0]}/{stable_id(source_id, literal)}")
                if target is not None:
                    changed = changed or target.reference != literal
                    out["reference"] = target.reference
                    if target.identifier is not None and "identifier" not in node:
                        out["identifier"] = dict(target.identifier)
                        changed = True
            return out
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    rewritten: dict[str, Any] = rewrite(resource)
    own = f"{resource.get('resourceType')}/{resource['id']}" if resource.get("id") else None
    if own is not None and own in book:
        rewritten["id"] = book[own].reference.split("/", 1)[1]
        changed = changed or rewritten["id"] != resource["id"]
        if resource.get("resourceType") == "Consent" and changed:
            rewritten["meta"] = _with_source_reference(rewritten.get("meta"), own)
    return rewritten, changed


#: A meta extension keeping a Consent's ``Type/id`` as its source sent it: a DPO looks a Consent up
#: by the source's own id (``hub consent show``). Consents only: that is where someone must find the
#: source's document; other resources keep only their stable ids, so sources' internal ids do not
#: travel further than needed. Under ``meta``, so event ids (which leave ``meta`` out) do not change.
SOURCE_REFERENCE_URL = "urn:hub:fhir:StructureDefinition:source-reference"


def _with_source_reference(meta: Any, own: str) -> dict[str, Any]:
    kept = dict(meta) if isinstance(meta, dict) else {}
    others = [
        e
        for e in kept.get("extension") or ()
        if not (isinstance(e, dict) and e.get("url") == SOURCE_REFERENCE_URL)
    ]
    kept["extension"] = [*others, {"url": SOURCE_REFERENCE_URL, "valueString": own}]
    return kept
