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
from typing import Any

#: Namespace of stable resource ids.
RESOURCE_ID_NAMESPACE = uuid.UUID("a3c5f0f2-7f1e-4a67-9f57-2c1c3f0b6d11")


def stable_id(source_id: str, address: str) -> str:
    """The hub's id for the resource a source knows at ``address`` (``Type/id`` or a full URL)."""
    return str(uuid.uuid5(RESOURCE_ID_NAMESPACE, f"{source_id}|{address}"))


def address_book(source_id: str, items: Iterable[tuple[str | None, Mapping[str, Any]]]) -> dict[str, str]:
    """Every way a Bundle's entries can be referenced (full URL, ``Type/id``) → ``Type/<stable id>``."""
    book: dict[str, str] = {}
    for full_url, resource in items:
        resource_type = str(resource.get("resourceType"))
        own = f"{resource_type}/{resource['id']}" if resource.get("id") else None
        address = own or full_url
        if address is None:
            continue
        reference = f"{resource_type}/{stable_id(source_id, address)}"
        book[address] = reference
        if full_url:
            book[full_url] = reference
    return book


def _relative(reference: str) -> bool:
    parts = reference.split("/")
    return len(parts) == 2 and parts[0].isalpha() and parts[0][:1].isupper() and bool(parts[1])


def with_stable_references(
    resource: dict[str, Any], *, source_id: str, book: Mapping[str, str]
) -> tuple[dict[str, Any], bool]:
    """The resource with its own stable id and its references rewritten; whether anything changed."""
    changed = False

    def rewrite(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    target = book.get(value)
                    if target is None and _relative(value):
                        target = f"{value.split('/')[0]}/{stable_id(source_id, value)}"
                    changed = changed or (target is not None and target != value)
                    out[key] = target or value
                else:
                    out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    rewritten: dict[str, Any] = rewrite(resource)
    own = f"{resource.get('resourceType')}/{resource['id']}" if resource.get("id") else None
    if own is not None and own in book:
        rewritten["id"] = book[own].split("/", 1)[1]
        changed = changed or rewritten["id"] != resource["id"]
    return rewritten, changed
