"""The compiled first look (hub/normalise/fast_validation.py) never accepts what the models refuse.

Its one promise: ``models_accept(document, version)`` is True only where fhir.resources' models of that
version validate the document. Checked three ways, against the models themselves:

- every document of the demo feed (R4, R5, STU3) and of the Synthea seeds, which the models accept, is
  accepted by the compiled check too (else it would save nothing) ;
- the cases where the models are lenient or strict in a way of their own (a JSON string standing for an
  object, a member under its Python name, a null in a list of elements, two types of one choice element,
  a required element carried by its extension alone...) are answered as the models answer, or left to
  them ;
- a property test mutates those documents where the models look (members deleted, renamed to another
  type of a choice, given another JSON type, a null, a string of JSON...) and checks the promise on
  each, and that ``decode`` decides every mutated body exactly as it does with the models alone.

300 fixed examples in ``make test``; ``make fuzz`` draws many more at random.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.demo.generator import DEMO_SOURCES, generate_feed
from hub.ingest import decode as decoding
from hub.normalise import fast_validation
from hub.normalise.instants import fix_naive_times_before_validation
from hub.normalise.versions import source_model
from tests.fuzzing import paths_in
from tests.fuzzing import seeds as synthea_seeds

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PARIS = ZoneInfo("Europe/Paris")

Json = Any


@cache
def corpus() -> tuple[tuple[Json, str], ...]:
    """(document, version) pairs the models accept: the demo feed in its sources' versions, times
    repaired as ingest repairs them, and the Synthea seeds (R4)."""
    zones = {source.id: ZoneInfo(source.time_zone) for source in DEMO_SOURCES}
    found: list[tuple[Json, str]] = []
    for message in generate_feed(patients=12, seed=3, now=NOW):
        document, _ = fix_naive_times_before_validation(message.resource, zones[message.source_id])
        found.append((document, message.fhir_version))
    found += [(document, "4.0") for document in synthea_seeds()]
    return tuple(found)


def models_validate(document: Json, version: str) -> bool:
    """The models' own verdict (fhir.resources raises other exceptions than ValidationError on some
    values of a wrong JSON type: those are refusals too)."""
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        return False
    model_class = source_model(document["resourceType"], version)
    if model_class is None:
        return False
    try:
        model_class.model_validate(document)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return False
    return True


def test_the_compiled_check_accepts_every_corpus_document() -> None:
    versions = {version for _, version in corpus()}
    assert versions == {"3.0", "4.0", "5.0"}
    for document, version in corpus():
        assert models_validate(document, version), document["resourceType"]
        assert fast_validation.models_accept(document, version), (version, document["resourceType"])


OBSERVATION: Json = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-03-29T01:30:00+01:00",
    "valueQuantity": {"value": 8.4, "unit": "%", "system": "http://unitsofmeasure.org"},
}


def _with(**members: Json) -> Json:
    document = {**OBSERVATION, **members}
    return {key: value for key, value in document.items() if value is not _ABSENT}


_ABSENT = object()

#: Documents where the models have a way of their own, and what the compiled check must answer:
#: True (the models accept, and so does the check), False (the check leaves it to the models).
EDGE_CASES: dict[str, tuple[Json, bool]] = {
    "a valid Observation": (OBSERVATION, True),
    # The models parse a JSON string given for an object; the compiled check does not, and asks them.
    "an object given as a string of JSON": (_with(code=json.dumps(OBSERVATION["code"])), False),
    # validate_by_name, in the models' config: they take a member under its Python name too, and so
    # does the check, which keeps their config.
    "a member under its Python name": (_with(status__ext={"id": "s"}), True),
    "resource_type, which fhir_core's __init__ reads": (_with(resource_type="Observation"), False),
    "an element carrying a resourceType": (_with(subject={"resourceType": "Reference"}), False),
    "a null in a list of elements": (_with(category=[None]), False),
    "two types of one choice element": (_with(valueString="8.4 %"), False),
    "a required element missing": (_with(status=_ABSENT), False),
    "a required element carried by its extension": (
        _with(status=_ABSENT, _status={"extension": [{"url": "http://example.org/x", "valueCode": "x"}]}),
        True,
    ),
    "a required element with an empty extension": (_with(status=_ABSENT, _status={"extension": []}), False),
    "another resource type's member": (_with(birthDate="1970-01-01"), False),
    "a resourceType of another type": (_with(resourceType="Condition"), False),
    "an abstract resource contained": (
        _with(contained=[{"resourceType": "DomainResource", "id": "a"}]),
        False,
    ),
    "an unknown resource contained": (_with(contained=[{"resourceType": "Nothing", "id": "a"}]), False),
    "a valid contained resource": (_with(contained=[{"resourceType": "Patient", "id": "a"}]), True),
    "an invalid contained resource": (_with(contained=[{"resourceType": "Patient", "gender": 3}]), False),
    # The same schema as the models' for every primitive: what they coerce, it coerces alike.
    "a boolean given as a string": (_with(contained=[{"resourceType": "Patient", "active": "true"}]), True),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_are_answered_as_the_models_answer_or_left_to_them(case: str) -> None:
    document, expected = EDGE_CASES[case]
    accepted = fast_validation.models_accept(document, "4.0")
    assert accepted is expected
    if accepted:
        assert models_validate(document, "4.0")


# --- the property: mutations where the models look ------------------------------------------------

_REPLACEMENTS: tuple[Json, ...] = (
    None,
    "",
    "true",
    True,
    0,
    1.5,
    "5",
    "2026-13-01",
    [],
    {},
    [None],
    {"extension": []},
    {"id": "x"},
    {"fhir_comments": "c"},
    {"resourceType": "Patient"},
    {"url": "http://example.org/x"},
)
#: Renames that keep a member's value and change what the models read it as.
_RENAMES = {
    "valueQuantity": "valueString",
    "effectiveDateTime": "effectivePeriod",
    "onsetDateTime": "onsetString",
    "deceasedDateTime": "deceasedBoolean",
    "multipleBirthBoolean": "multipleBirthInteger",
    "reference": "display",
    "system": "system__ext",
    "status": "_status",
    "code": "resource_type",
}


def _apply(document: Json, path: tuple[Any, ...], change: Any) -> Json:
    """``document`` with ``change(parent, last step)`` applied where ``path`` ends (copies on the way)."""
    if len(path) == 1:
        copy = dict(document) if isinstance(document, dict) else list(document)
        change(copy, path[0])
        return copy
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[path[0]] = _apply(document[path[0]], path[1:], change)
    return copy


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Json, str]:
    document, version = draw(st.sampled_from(corpus()))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [path for path in paths_in(document) if path]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "rename", "string-of-json", "add", "wrap"]))

        def change(parent: Any, at: Any, action: str = action) -> None:
            value = parent[at]
            if action == "replace":
                parent[at] = draw(st.sampled_from(_REPLACEMENTS))
            elif action == "delete":
                del parent[at]
            elif action == "rename" and isinstance(parent, dict):
                parent[_RENAMES.get(at, f"_{at}")] = parent.pop(at)
            elif action == "string-of-json":
                parent[at] = json.dumps(value)
            elif action == "add" and isinstance(parent, dict):
                parent[draw(st.sampled_from(["fhir_comments", "resourceType", "id", "extension", "_id"]))] = (
                    value
                )
            elif action == "wrap":
                parent[at] = value[0] if isinstance(value, list) and value else [value]

        document = _apply(document, path, change)
    return document, version


@given(mutated())
def test_the_compiled_check_never_accepts_what_the_models_refuse(case: tuple[Json, str]) -> None:
    document, version = case
    if fast_validation.models_accept(document, version):
        assert models_validate(document, version)


@given(mutated())
def test_decode_decides_every_mutated_body_as_the_models_alone_decide(case: tuple[Json, str]) -> None:
    document, version = case
    body = json.dumps(document).encode()
    content_type = decoding.ContentType("json", version)
    with_check = decoding.decode(body, content_type, default_version=version, zone=PARIS)
    with mock.patch.object(fast_validation, "models_accept", return_value=False):
        models_alone = decoding.decode(body, content_type, default_version=version, zone=PARIS)
    assert repr(with_check) == repr(models_alone)


def test_a_model_the_compiler_does_not_know_leaves_every_input_to_the_models() -> None:
    """A library upgrade that changes a schema's shape: the version's first look is off (logged), and
    ingest still decides every input, with the models alone."""
    first_look = fast_validation._VersionValidator("4.0")
    with mock.patch.object(fast_validation, "_peel", side_effect=fast_validation.UnexpectedSchema("changed")):
        assert first_look.accepts(OBSERVATION) is False
    assert first_look.broken
    assert first_look.accepts(OBSERVATION) is False  # and it does not try to build again
    assert models_validate(OBSERVATION, "4.0")
