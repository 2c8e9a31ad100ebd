"""FHIR's structure and datatype rules that fhir.resources' models let through, as plain checks.

The structure check (hub/ingest/decode.py) applies them while it walks an input, in the input's own
version and whichever its format (XML is read into the JSON form first), before model validation:

- ``id``: 1 to 64 of ``A-Z a-z 0-9 - .`` (Resource.id and every other ``id``-typed element; fhir_core
  allows 255 characters). Element.id is a ``string``, with no such rule;
- ``base64Binary`` (Attachment.data, Binary.data, Signature.data...): RFC 4648 base64, whitespace
  allowed between its characters as the spec's regex allows; pydantic's decoder skips what is not
  base64 and so takes corrupt data;
- ``xhtml`` (Narrative.div): hub/ingest/narrative.py;
- extensions: a ``url`` that is not empty, and a value or child extensions, not both (ext-1);
- ele-1: an element has a value or children besides its ``id``; an empty string is no value;
- a JSON object names each of its members once (json.loads alone keeps the last value silently).

Each check returns a phrase (or None) for a detail ``Type.path: phrase``; none quotes the value.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from hub.ingest.narrative import narrative_problem

REPEATED = "must not repeat (a JSON object names each member once)"
EMPTY = "must not be empty (leave the element out)"
NO_PRIMITIVE_VALUE = "has neither a value nor extensions"
_MISSING = "required element missing"

_ID = re.compile(r"[A-Za-z0-9\-.]+", re.ASCII)
_ID_MAX = 64
#: base64Binary's regex is ``(\s*([0-9a-zA-Z\+/=]){4}\s*)+`` (R4 prints it without the "/" by mistake):
#: XML Schema's whitespace may stand between the characters, and is not part of the data.
_NOT_BASE64_DATA = str.maketrans("", "", " \t\r\n")
#: The FHIR types with a rule here; any other primitive is left to the models.
CHECKED_TYPES = frozenset({"id", "base64Binary", "xhtml"})
#: The members that hold extensions: these two names, and only they, in every FHIR version.
EXTENSION_LISTS = frozenset({"extension", "modifierExtension"})


class RepeatedMembers(dict[str, Any]):
    """A JSON object in which a member is named more than once; ``repeated`` is the first such name."""

    repeated: str


def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for json.loads: the object, marked when a name repeats, so that the structure
    check names it. ``birthDate`` and ``_birthDate`` are two names: FHIR JSON's primitive pairs pass."""
    members = dict(pairs)
    if len(members) == len(pairs):
        return members
    seen: set[str] = set()
    marked = RepeatedMembers(members)
    for name, _ in pairs:
        if name in seen:
            marked.repeated = name
            break
        seen.add(name)
    return marked


def _base64_problem(text: str) -> str | None:
    try:
        # strict_mode refuses what the lenient decoder skips or guesses: characters outside base64,
        # padding inside the data, data after the padding. Text beyond ASCII raises ValueError.
        binascii.a2b_base64(text.translate(_NOT_BASE64_DATA), strict_mode=True)
    except ValueError:  # binascii.Error is one
        return "not valid base64 data"
    return None


def _id_problem(text: str) -> str | None:
    if len(text) > _ID_MAX:
        return "too long (an id has at most 64 characters)"
    # The models' own phrase for the same fault, so that a detail does not depend on which check ran.
    return None if _ID.fullmatch(text) else "not in the form its type requires"


def primitive_problem(type_name: str, text: str) -> str | None:
    """What is wrong with the value of a primitive of one of :data:`CHECKED_TYPES`, or None."""
    if type_name == "id":
        return _id_problem(text)
    if type_name == "base64Binary":
        return _base64_problem(text)
    return narrative_problem(text)


def extension_problem(extension: dict[str, Any]) -> tuple[str | None, str] | None:
    """What is wrong with one extension: (the member at fault, or None for the extension, phrase)."""
    url = extension.get("url")
    if url is None:
        return "url", _MISSING
    if url == "":
        return "url", "must not be empty"
    # A value is value[x], given as a value or as a primitive's _value[x] (extensions on the value).
    has_value = any(name.startswith(("value", "_value")) for name in extension)
    has_extensions = "extension" in extension
    if has_value and has_extensions:
        return None, "has both a value and extensions (give one or the other)"
    if not has_value and not has_extensions:
        return None, NO_PRIMITIVE_VALUE
    return None


def element_problem(element: dict[str, Any]) -> str | None:
    """ele-1 for a data type or backbone element: a value or children besides its ``id``."""
    if not element:
        return EMPTY
    if len(element) == 1 and "id" in element:
        return "has nothing but an id (leave the element out)"
    return None
