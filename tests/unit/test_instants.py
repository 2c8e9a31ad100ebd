"""FHIR date-times in UTC, and naive times repaired before validation (hub/normalise/instants.py)."""

from __future__ import annotations

import copy
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hub.normalise import instants
from hub.normalise.instants import fix_naive_times_before_validation, normalise_instants
from hub.normalise.time import parse_fhir_datetime

PARIS = ZoneInfo("Europe/Paris")
GUADELOUPE = ZoneInfo("America/Guadeloupe")


def observation(**fields: Any) -> dict[str, Any]:
    """A minimal valid R4 Observation with the given fields."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "HbA1c"},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-02T08:15:00+02:00", "2024-05-02T06:15:00Z"),
        ("2024-01-15T08:15:00+01:00", "2024-01-15T07:15:00Z"),
        ("2024-05-02T08:15:00-04:00", "2024-05-02T12:15:00Z"),
        ("2024-05-02T22:30:00-04:00", "2024-05-03T02:30:00Z"),
        ("2024-05-02T08:15:00.250-04:00", "2024-05-02T12:15:00.25Z"),
        ("2024-05-02T08:15:00.123456789+02:00", "2024-05-02T06:15:00.123456789Z"),
        ("2024-05-02T08:15:00.000+02:00", "2024-05-02T06:15:00Z"),
    ],
    ids=["+02:00", "+01:00", "-04:00 Guadeloupe", "across midnight", "fraction", "nanoseconds", "zero ms"],
)
def test_offsets_become_utc_in_shortest_exact_form(text: str, expected: str) -> None:
    """An offset time becomes Z with the source's fraction, trailing zeros dropped, no digit invented."""
    result, steps = normalise_instants(observation(effectiveDateTime=text), PARIS)
    assert result["effectiveDateTime"] == expected
    assert steps == ["instants-utc"]


def test_equal_instants_read_the_same_whatever_their_precision() -> None:
    """Two sources writing one instant differently get one text, so the event ids agree."""
    texts = ["2024-05-02T08:15:00+02:00", "2024-05-02T06:15:00.000Z", "2024-05-02T02:15:00.0-04:00"]
    results = {normalise_instants(observation(issued=text), PARIS)[0]["issued"] for text in texts}
    assert results == {"2024-05-02T06:15:00Z"}


def test_utc_values_are_kept() -> None:
    """A value already in UTC with a Z is kept as it is, and no step is recorded."""
    resource = observation(effectiveDateTime="2024-05-02T06:15:00Z", issued="2024-05-02T06:15:00.5Z")
    assert normalise_instants(resource, PARIS) == (resource, [])


@pytest.mark.parametrize("text", ["2024", "2024-05", "2024-05-03"])
def test_dates_are_not_instants(text: str) -> None:
    """A date without a time part stays as sent, even in a date-time field."""
    resource = observation(effectiveDateTime=text, effectivePeriod={"start": text})
    assert normalise_instants(resource, PARIS) == (resource, [])


def test_only_date_time_fields_are_touched() -> None:
    """birthDate, narrative, valueString and identifiers keep date-time-looking text unchanged."""
    text = "2024-05-02T08:15:00+02:00"
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "birthDate": "1960-04-12",
        "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'},
        "identifier": [{"system": "urn:local", "value": text}],
        "extension": [
            {"url": "http://example.org/note", "valueString": text},
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": text},
        ],
    }
    result, _ = normalise_instants(patient, PARIS)
    assert result["birthDate"] == "1960-04-12"
    assert result["text"] is patient["text"]
    assert result["identifier"] is patient["identifier"]
    assert result["extension"][0] is patient["extension"][0]
    assert result["extension"][1]["valueDateTime"] == "2024-05-02T06:15:00Z"


def test_every_kind_of_date_time_field_is_found() -> None:
    """Listed names, *DateTime/*Instant choices, Period bounds, Meta, Annotation, Timing lists, Bundle."""
    text = "2024-05-02T08:15:00+02:00"
    utc = "2024-05-02T06:15:00Z"
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": text,
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "meta": {"lastUpdated": text},
                    "authoredOn": text,
                    "note": [{"time": text, "text": text}],
                    "dosageInstruction": [{"timing": {"event": [text, "2024-05-03"]}}],
                    "dispenseRequest": {"validityPeriod": {"start": text, "end": text}},
                }
            },
            {"resource": {"resourceType": "Observation", "effectiveInstant": text, "valuePeriod": {}}},
        ],
    }
    result, steps = normalise_instants(bundle, PARIS)
    request = result["entry"][0]["resource"]
    assert result["timestamp"] == utc
    assert request["meta"]["lastUpdated"] == utc
    assert request["authoredOn"] == utc
    assert request["note"] == [{"time": utc, "text": text}]
    assert request["dosageInstruction"][0]["timing"]["event"] == [utc, "2024-05-03"]
    assert request["dispenseRequest"]["validityPeriod"] == {"start": utc, "end": utc}
    assert result["entry"][1]["resource"]["effectiveInstant"] == utc
    assert steps == ["instants-utc"]


@pytest.mark.parametrize(
    ("naive", "zone", "expected", "dst_step"),
    [
        ("2025-03-30T01:30:00", PARIS, "2025-03-30T00:30:00Z", None),
        ("2025-03-30T02:30:00", PARIS, "2025-03-30T01:30:00Z", "naive-time-nonexistent-shifted"),
        ("2025-03-30T03:30:00", PARIS, "2025-03-30T01:30:00Z", None),
        ("2025-10-26T01:30:00", PARIS, "2025-10-25T23:30:00Z", None),
        ("2025-10-26T02:30:00", PARIS, "2025-10-26T00:30:00Z", "naive-time-ambiguous-first"),
        ("2025-10-26T03:30:00", PARIS, "2025-10-26T02:30:00Z", None),
        ("2025-03-30T02:30:00", GUADELOUPE, "2025-03-30T06:30:00Z", None),
        ("2025-10-26T02:30:00.5", GUADELOUPE, "2025-10-26T06:30:00.5Z", None),
    ],
    ids=[
        "Paris before gap",
        "Paris in gap",
        "Paris after gap",
        "Paris before fold",
        "Paris in fold",
        "Paris after fold",
        "Guadeloupe March",
        "Guadeloupe October",
    ],
)
def test_naive_times_are_read_in_the_source_zone(
    naive: str, zone: ZoneInfo, expected: str, dst_step: str | None
) -> None:
    """Naive times use the source zone: a gap time moves forward by the gap, a fold time is the first."""
    result, steps = normalise_instants(observation(effectiveDateTime=naive), zone)
    assert result["effectiveDateTime"] == expected
    expected_steps = ["instants-utc", f"naive-time-read-in:{zone}"]
    if dst_step:
        expected_steps.append(f"{dst_step}:{zone}")
    assert steps == expected_steps


def test_naive_step_is_recorded_once_per_resource() -> None:
    """However many naive values a resource has, the naive-time step appears once, without values."""
    resource = observation(effectiveDateTime="2024-05-02T08:15:00", issued="2024-05-02T09:00:00")
    _, steps = normalise_instants(resource, GUADELOUPE)
    assert steps == ["instants-utc", "naive-time-read-in:America/Guadeloupe"]


def test_naive_reading_agrees_with_parse_fhir_datetime() -> None:
    """The pathway's occurred_at (parse_fhir_datetime) and the normalised resource name the same instant."""
    for naive in ("2025-03-30T02:30:00", "2025-10-26T02:30:00", "2024-07-01T12:00:00"):
        result, _ = normalise_instants(observation(effectiveDateTime=naive), PARIS)
        assert parse_fhir_datetime(result["effectiveDateTime"], PARIS) == parse_fhir_datetime(naive, PARIS)


@pytest.mark.parametrize(
    ("text", "field"),
    [("2024-02-30T08:00:00+01:00", "issued"), ("0001-01-01T00:30:00+14:00", "effectiveDateTime")],
    ids=["no such day", "before year 1 in UTC"],
)
def test_unreadable_values_are_kept_and_named(text: str, field: str) -> None:
    """A date-time that is no real instant is left as sent; a step names its field, not its value."""
    resource = observation(**{field: text})
    result, steps = normalise_instants(resource, PARIS)
    assert result == resource
    assert steps == [f"instant-unreadable:{field}"]


def test_input_is_not_mutated() -> None:
    """normalise_instants returns a new resource and shares what it did not change."""
    resource = observation(effectiveDateTime="2024-05-02T08:15:00+02:00", code={"text": "x"})
    before = copy.deepcopy(resource)
    result, _ = normalise_instants(resource, PARIS)
    assert resource == before
    assert result is not resource
    assert result["code"] is resource["code"]


@pytest.mark.parametrize(
    ("naive", "zone", "repaired"),
    [
        ("2024-05-02T08:15:00", GUADELOUPE, "2024-05-02T08:15:00-04:00"),
        ("2024-05-02T08:15:00.120", PARIS, "2024-05-02T08:15:00.120+02:00"),
        ("2024-01-15T08:15:00", PARIS, "2024-01-15T08:15:00+01:00"),
        ("2025-03-30T02:30:00", PARIS, "2025-03-30T03:30:00+02:00"),
        ("2025-10-26T02:30:00", PARIS, "2025-10-26T02:30:00+02:00"),
        ("1900-01-01T12:00:00", PARIS, "1900-01-01T11:50:39Z"),
    ],
    ids=["Guadeloupe", "fraction kept", "Paris winter", "Paris gap", "Paris fold", "Paris mean time"],
)
def test_naive_times_get_the_source_zones_offset(naive: str, zone: ZoneInfo, repaired: str) -> None:
    """Repair writes the zone's offset then (not UTC), gap times forward, fold times first, LMT in UTC."""
    document, changed = fix_naive_times_before_validation(observation(effectiveDateTime=naive), zone)
    assert document["effectiveDateTime"] == repaired
    assert changed is True


def test_repair_leaves_valid_documents_alone() -> None:
    """A document with offsets, Z and dates only is returned as it is, and reported unrepaired."""
    document = observation(
        effectiveDateTime="2024-05-02T08:15:00+02:00", issued="2024-05-02T06:15:00.000Z", meta={}
    )
    assert fix_naive_times_before_validation(document, PARIS) == (document, False)
    assert fix_naive_times_before_validation([1, "x", None], PARIS) == ([1, "x", None], False)


def _naive_bundle() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "timestamp": "2025-03-30T02:30:00",
        "entry": [
            {
                "fullUrl": "urn:uuid:6a1f4a4e-2b4e-4b8c-9d55-0d2b2f1a0001",
                "resource": {"resourceType": "Patient", "birthDate": "1958-03-30"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:6a1f4a4e-2b4e-4b8c-9d55-0d2b2f1a0002",
                "resource": observation(
                    subject={"reference": "urn:uuid:6a1f4a4e-2b4e-4b8c-9d55-0d2b2f1a0001"},
                    effectiveDateTime="2025-10-26T02:30:00",
                    issued="2025-10-26T09:00:00.250",
                    note=[{"time": "2025-10-26T09:05:00", "text": "relu le 2025-10-26T09:05:00"}],
                ),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "fullUrl": "urn:uuid:6a1f4a4e-2b4e-4b8c-9d55-0d2b2f1a0003",
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "AMB",
                    },
                    "period": {"start": "2025-10-26T01:45:00", "end": "2025-10-26T03:15:00"},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
        ],
    }


def test_bundle_entries_are_repaired_and_then_validate() -> None:
    """fhir.resources refuses naive times; once repaired, every entry of the Bundle validates as R4B."""
    bundle = _naive_bundle()
    with pytest.raises(ValidationError):
        Bundle.model_validate(bundle)
    repaired, changed = fix_naive_times_before_validation(bundle, PARIS)
    assert changed is True
    Bundle.model_validate(repaired)
    observation_entry = repaired["entry"][1]["resource"]
    assert repaired["timestamp"] == "2025-03-30T03:30:00+02:00"
    assert observation_entry["effectiveDateTime"] == "2025-10-26T02:30:00+02:00"
    assert observation_entry["issued"] == "2025-10-26T09:00:00.250+01:00"
    assert observation_entry["note"][0] == {
        "time": "2025-10-26T09:05:00+01:00",
        "text": "relu le 2025-10-26T09:05:00",
    }
    assert repaired["entry"][0]["resource"] is bundle["entry"][0]["resource"]
    assert repaired["entry"][2]["resource"]["period"] == {
        "start": "2025-10-26T01:45:00+02:00",
        "end": "2025-10-26T03:15:00+01:00",
    }
    assert bundle == _naive_bundle()  # the input is not mutated


def test_repaired_then_normalised_equals_normalised_directly() -> None:
    """Repairing before validation does not change the instants the hub ends up with."""
    bundle = _naive_bundle()
    repaired, _ = fix_naive_times_before_validation(bundle, PARIS)
    via_repair, _ = normalise_instants(repaired, PARIS)
    direct, _ = normalise_instants(bundle, PARIS)
    assert via_repair == direct
    assert direct["timestamp"] == "2025-03-30T01:30:00Z"


# -- the walk skipped when no naive time is in the document (hub.normalise.instants._may_rewrite) -------

_DATE_KEYS = st.sampled_from(["effectiveDateTime", "issued", "start", "event", "valueInstant", "note", "id"])
_DATE_TEXTS = st.one_of(
    st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?\Z"
    ),
    st.sampled_from(["2024-05-02T08:15:00", "2024-02-30T10:00:00", "2025-03-30T02:30:00", "2024-05-02"]),
    st.sampled_from(['x"2024-05-02T08:15:00', "2024-05-02T08:15:00\\", "2024-05-02T08:15:00\u0000"]),
    st.text(max_size=12),
)
_LEAVES = st.one_of(_DATE_TEXTS, st.integers(-(2**70), 2**70), st.booleans(), st.none())
_DOCUMENTS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_DATE_KEYS, inner, max_size=4)),
    max_leaves=20,
)


@given(
    document=st.dictionaries(_DATE_KEYS, _DOCUMENTS, max_size=5), zone=st.sampled_from([PARIS, GUADELOUPE])
)
def test_the_naive_time_walk_is_skipped_only_where_it_would_change_nothing(
    document: dict[str, Any], zone: ZoneInfo
) -> None:
    """Whatever the document, the repair gives what the walk gives; where the JSON text shows no naive
    time, the walk itself would have returned the document untouched (the same object)."""
    report = instants._Report()
    walked = instants._walk(document, instants._with_local_offset, zone, report)
    assert fix_naive_times_before_validation(document, zone) == (walked, report.rewritten)
    if not instants._may_rewrite(document, instants._with_local_offset, zone):
        assert walked is document and not report.rewritten and not report.unreadable


def test_a_document_without_naive_times_is_returned_as_it_is_without_a_walk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The common case, an input whose times all carry an offset: no walk at all; one naive time: the walk."""
    walks: list[Any] = []
    walk = instants._walk

    def counted(*args: Any) -> Any:
        walks.append(args)
        return walk(*args)

    monkeypatch.setattr(instants, "_walk", counted)
    document = observation(effectiveDateTime="2024-05-02T08:15:00+02:00", issued="2024-05-02T09:00:00Z")
    assert fix_naive_times_before_validation(document, PARIS) == (document, False)
    assert walks == []
    naive = observation(effectiveDateTime="2024-05-02T08:15:00")
    repaired, rewritten = fix_naive_times_before_validation(naive, PARIS)
    assert rewritten and repaired["effectiveDateTime"] == "2024-05-02T08:15:00+02:00"
    assert walks and walks[0][0] is naive  # walked from its root (and into its elements)
