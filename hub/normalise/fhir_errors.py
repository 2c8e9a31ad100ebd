"""FHIR model validation errors told in words: the element's path, then what is wrong with it.

``Encounter.period.start: a time needs a UTC offset``, ``Observation.code: required element missing``.
Details reach receipts, DLQ headers and logs, so they carry element paths and fixed phrases only: never
the input's values (patient data), nor pydantic's messages, which can quote them. The input and the
messages are read to choose a phrase, never written out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from hub.normalise.fhir_model import VERSION_NAMES, elements, model_lookup
from hub.normalise.instants import is_naive_date_time

#: Errors listed in a detail; the rest are counted ("(+N more)").
ERRORS_SHOWN = 3

# pydantic's error types (https://docs.pydantic.dev/latest/errors/validation_errors/) and those of
# fhir_core (fhir.resources' base), as the FHIR reader understands them.
_PHRASES: dict[str, str] = {
    "missing": "required element missing",
    "model_field_validation.missing": "required element missing",
    "extra_forbidden": "unknown element",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "string_too_long": "too long",
    "string_pattern_mismatch": "not in the form its type requires",
    "list_type": "must be an array",
    "tuple_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "json_invalid": "must be an object",  # fhir.resources reads a string given for an object as JSON
    "json_type": "must be an object",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_parsing_size": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "decimal_type": "must be a number",
    "decimal_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "less_than": "out of its allowed range",
    "less_than_equal": "out of its allowed range",
    "greater_than": "out of its allowed range",
    "greater_than_equal": "out of its allowed range",
    "date_type": "not a valid date",
    "date_parsing": "not a valid date",
    "date_from_datetime_parsing": "not a valid date",
    "date_from_datetime_inexact": "not a valid date",
    "datetime_type": "not a valid date-time",
    "datetime_parsing": "not a valid date-time",
    "datetime_from_date_parsing": "not a valid date-time",
    "datetime_object_invalid": "not a valid date-time",
    "time_type": "not a valid time",
    "time_parsing": "not a valid time",
    "url_type": "not a valid URL",
    "url_parsing": "not a valid URL",
    "url_syntax_violation": "not a valid URL",
    "url_scheme": "not a valid URL",
    "url_too_long": "not a valid URL",
    "bytes_type": "not valid base64 data",
    "base64_decode": "not valid base64 data",
    "enum": "code not in its required value set",
    "literal_error": "code not in its required value set",
    "fhir-validation-wrong-resource-type": "wrong resource type",
}

_NAIVE = "a time needs a UTC offset"
#: Messages of the date-time types, whose most common fault (a time without offset) has its own phrase.
_DATE_TIME_MARKERS = frozenset({"DateTime value", "Instant value"})
# fhir_core raises ValueError with these messages (fhir_core/types.py and fhirabstractmodel.py); the
# first that the message contains decides. Timezone-aware errors come before the regex ones.
_VALUE_ERRORS: tuple[tuple[str, str], ...] = (
    ("must be timezone aware", _NAIVE),
    ("DateTime value", "not a valid date-time"),
    ("Instant value", "not a valid instant (a date and time with a UTC offset)"),
    ("Date value", "not a valid date"),
    ("Time value", "not a valid time"),
    ("Decimal value", "not a valid decimal number"),
)
# fhir_core's own error type for a value of the wrong kind, told apart by its message template.
_FORMAT_ERRORS: tuple[tuple[str, str], ...] = (
    ("should be derived from / based on Resource", "not a resource"),
    ("should be derived from / based on Element", "a resource where a data type belongs"),
    ("Expected resource_type", "wrong resource type"),
    ("One of field value is required", "has neither a value nor extensions"),
    ("Value is expected from the instance of", "must be an object"),
)
_CHOICE_TOO_MANY = "Any of one field value is expected"
_CHOICE_MISSING = "Expect any of field value"
_FIELD_NAMES = re.compile(r"'([A-Za-z][A-Za-z0-9]*)'")
#: What an element's name looks like; a key of the input that does not (spaces, other scripts, length)
#: could be anything, data included, and is not written out.
_ELEMENT = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,63}", re.ASCII)


def path_step(step: str | int) -> str:
    """One step of an element path as a detail may show it: an index, an element's name, or ``?``."""
    return str(step) if isinstance(step, int) or _ELEMENT.fullmatch(step) else "?"


def _choice_name(message: str) -> str | None:
    """``value[x]`` from fhir_core's list of a choice's elements (``valueBoolean``, ``valueString``...)."""
    names = _FIELD_NAMES.findall(message)
    if len(names) < 2:
        return None
    # zip stops at the shortest name: the shared part is at most that long.
    chars = enumerate(zip(*names, strict=False))
    shared = next((n for n, at_n in chars if len(set(at_n)) > 1), min(map(len, names)))
    prefix = names[0][:shared]
    # The shared part can run into the type names (valueDate, valueDateTime): cut back to the last
    # capital, where a type name starts, unless every name has its type's capital right after it.
    if not all(len(name) > len(prefix) and name[len(prefix)].isupper() for name in names):
        capitals = [n for n, char in enumerate(prefix) if char.isupper()]
        prefix = prefix[: capitals[-1]] if capitals else prefix
    return f"{prefix}[x]" if prefix else None


def _path(resource_type: str, loc: tuple[int | str, ...], extra: str | None = None) -> str:
    # fhir_core puts a "root" step after the element it failed to read; other non-element steps are
    # pydantic's (union members, validators), not places in the resource.
    parts = [resource_type]
    parts += [str(p) for p in loc if isinstance(p, int) or (p != "root" and _ELEMENT.fullmatch(p))]
    if extra:
        parts.append(extra)
    return ".".join(parts)


def _value_error_phrase(message: str, value: Any) -> str:
    for marker, phrase in _VALUE_ERRORS:
        if marker in message:
            naive = marker in _DATE_TIME_MARKERS and isinstance(value, str) and is_naive_date_time(value)
            return _NAIVE if naive else phrase
    return "not a valid value"


def _described(error: Any, resource_type: str) -> str:
    """One error as ``path: phrase``."""
    kind, message, loc = str(error["type"]), str(error.get("msg", "")), tuple(error["loc"])
    if kind == "value_error" and (_CHOICE_TOO_MANY in message or _CHOICE_MISSING in message):
        phrase = (
            "only one of its types may be given"
            if _CHOICE_TOO_MANY in message
            else "required element missing"
        )
        return f"{_path(resource_type, loc, _choice_name(message))}: {phrase}"
    if kind == "value_error":
        phrase = _value_error_phrase(message, error.get("input"))
    elif kind == "model_validation_format":
        phrase = next((p for marker, p in _FORMAT_ERRORS if marker in message), "not valid here")
    else:
        phrase = _PHRASES.get(kind, f"not valid here ({kind})")
    return f"{_path(resource_type, loc)}: {phrase}"


def validation_detail(exc: ValidationError, resource_type: str) -> str:
    """The first errors of a model validation as ``Type.path: phrase``, then ``(+N more)``."""
    errors = exc.errors(include_url=False)
    shown = [_described(error, resource_type) for error in errors[:ERRORS_SHOWN]]
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def _non_string_url(document: Mapping[str, Any], version: str) -> str | None:
    """The path of the first ``url``-typed element whose value is not a string, walking the document
    along its models."""
    lookup = model_lookup(version)
    # (node, its model or None for a resource, known by its resourceType, path)
    stack: list[tuple[Mapping[str, Any], Any, str]] = [(document, None, "")]
    while stack:
        node, model_class, path = stack.pop()
        if model_class is None:
            try:
                model_class = lookup(str(node.get("resourceType")))
            except (KeyError, ValueError):
                continue
            path = path or str(node.get("resourceType"))
        fields = elements(model_class)
        for key, value in node.items():
            element = fields.get(key)
            if element is None:
                continue
            repeated = element.repeats and isinstance(value, list)
            for n, item in enumerate(value) if repeated else [(None, value)]:
                at = f"{path}.{key}" if n is None else f"{path}.{key}.{n}"
                if element.type_name == "url" and not isinstance(item, str):
                    return at
                if isinstance(item, dict) and not element.primitive:
                    inner = None if element.type_name == "Resource" else lookup(element.type_name)
                    stack.append((item, inner, at))
    return None


def unreadable_detail(exc: Exception, document: Mapping[str, Any], version: str) -> str:
    """What to say when a model raises ``exc`` instead of reporting validation errors.

    The one such fault known (fhir_core 1.1): a ``url``-typed element (Attachment.url...) holding
    something else than a string, on which fhir_core calls string methods; it is named. Any other
    names the resource type only.
    """
    where = _non_string_url(document, version)
    if where is not None:
        return f"{where}: must be a string"
    resource_type = path_step(str(document.get("resourceType")))
    return f"{resource_type}: cannot be read as FHIR {VERSION_NAMES[version]} ({type(exc).__name__})"
