"""FHIR times as UTC instants and pathway kinds (hub/normalise/time.py, hub/normalise/pathway_kind.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.normalise.pathway_kind import occurred_at, pathway_kind
from hub.normalise.time import parse_fhir_datetime, utc_iso

PARIS = ZoneInfo("Europe/Paris")
GUADELOUPE = ZoneInfo("America/Guadeloupe")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")  # UTC+14


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        ("2024", GUADELOUPE, datetime(2024, 1, 1, 4, tzinfo=UTC)),
        ("2024-05", GUADELOUPE, datetime(2024, 5, 1, 4, tzinfo=UTC)),
        ("2024-05-02", GUADELOUPE, datetime(2024, 5, 2, 4, tzinfo=UTC)),
        ("2024-01-15", PARIS, datetime(2024, 1, 14, 23, tzinfo=UTC)),  # winter, UTC+1
        ("2024-07-01", PARIS, datetime(2024, 6, 30, 22, tzinfo=UTC)),  # summer, UTC+2
        ("2024-05-02T08:15:00+02:00", GUADELOUPE, datetime(2024, 5, 2, 6, 15, tzinfo=UTC)),
        ("2024-05-02T08:15:00Z", PARIS, datetime(2024, 5, 2, 8, 15, tzinfo=UTC)),
        ("2024-05-02T08:15:00.250-04:00", PARIS, datetime(2024, 5, 2, 12, 15, 0, 250_000, tzinfo=UTC)),
        ("2024-05-02T08:15:00", PARIS, datetime(2024, 5, 2, 6, 15, tzinfo=UTC)),  # naive: source zone
    ],
    ids=["year", "year-month", "date", "winter date", "summer date", "offset", "Z", "fraction", "naive time"],
)
def test_fhir_datetimes_become_utc(text: str, zone: ZoneInfo, expected: datetime) -> None:
    """Partial dates mean their first instant; naive values are read in the source's zone; results are UTC."""
    moment = parse_fhir_datetime(text, zone)
    assert moment == expected
    assert moment is not None
    assert moment.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13", "2024-02-30", "2024-05-02T25:00:00Z"])
def test_unreadable_times_are_none(text: str) -> None:
    """An unreadable value is None (the caller falls back), never an exception."""
    assert parse_fhir_datetime(text, PARIS) is None


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("0001-01-01", PARIS),
        ("0001-01-01T00:00:00+14:00", KIRITIMATI),
        ("9999-12-31T23:59:59-05:00", PARIS),
        ("9999-12-31T23:00:00", GUADELOUPE),
    ],
    ids=["year 1 in Paris", "year 1 at UTC+14", "offset past year 9999", "naive near year 9999, west"],
)
def test_times_outside_the_utc_range_are_none(text: str, zone: ZoneInfo) -> None:
    """Valid FHIR values that fall outside datetime's range once in UTC are None, not an OverflowError."""
    assert parse_fhir_datetime(text, zone) is None


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 5, 2, 8, 15, tzinfo=timezone(timedelta(hours=2))), "2024-05-02T06:15:00.000Z"),
        (datetime(2024, 5, 2, 6, 15, 0, 123_456, tzinfo=UTC), "2024-05-02T06:15:00.123Z"),
        (datetime(2024, 12, 31, 22, 30, tzinfo=GUADELOUPE), "2025-01-01T02:30:00.000Z"),
    ],
)
def test_utc_iso(moment: datetime, expected: str) -> None:
    """Instants are written one way: UTC, millisecond precision, ``Z``."""
    assert utc_iso(moment) == expected


# --- pathway kinds ---------------------------------------------------------------------------------------


def encounter(status: str, code: str | None, *, r5: bool = False) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Encounter", "status": status}
    if code is not None:
        coding = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}
        resource["class"] = [{"coding": [coding]}] if r5 else coding
    return resource


@pytest.mark.parametrize(
    ("resource", "kind"),
    [
        (encounter("in-progress", "IMP"), "encounter.admission"),
        (encounter("arrived", "EMER"), "encounter.admission"),
        (encounter("onleave", "ACUTE"), "encounter.admission"),
        (encounter("finished", "IMP"), "encounter.discharge"),
        (encounter("finished", "SS"), "encounter.discharge"),
        (encounter("finished", "IMP", r5=True), "encounter.discharge"),
        (encounter("planned", "IMP"), "encounter.visit"),
        (encounter("cancelled", "IMP"), "encounter.visit"),
        (encounter("finished", "AMB"), "encounter.visit"),
        (encounter("finished", "VR"), "encounter.visit"),
        (encounter("finished", None), "encounter.visit"),
    ],
    ids=["IMP in progress", "EMER arrived", "ACUTE on leave", "IMP finished", "short stay finished",
         "R5 class list", "IMP planned", "IMP cancelled", "ambulatory", "virtual", "no class"],
)  # fmt: skip
def test_encounter_kinds(resource: dict[str, Any], kind: str) -> None:
    """Stays in a facility are admissions while open and discharges when finished; the rest are visits."""
    assert pathway_kind(resource) == kind


@pytest.mark.parametrize(
    ("resource_type", "kind"),
    [
        ("Observation", "observation"),
        ("Condition", "condition"),
        ("Procedure", "procedure"),
        ("MedicationRequest", "medication"),
        ("MedicationStatement", "medication"),
        ("ServiceRequest", "referral"),
        ("DocumentReference", "document"),
        ("Composition", "document"),
        ("EpisodeOfCare", "episode"),
        ("Patient", "patient"),
        ("Flag", "flag"),
    ],
)
def test_kind_by_resource_type(resource_type: str, kind: str) -> None:
    """Each resource type maps to its pathway step; unlisted types use their lower-cased name."""
    assert pathway_kind({"resourceType": resource_type}) == kind


# --- when it happened ------------------------------------------------------------------------------------


def test_discharge_happens_at_period_end() -> None:
    """A discharge occurs when the stay ends (period.end), an admission when it starts."""
    stay = {
        **encounter("finished", "IMP"),
        "period": {"start": "2024-04-28T22:10:00+02:00", "end": "2024-05-03"},
    }
    assert occurred_at(stay, GUADELOUPE) == datetime(2024, 5, 3, 4, tzinfo=UTC)
    open_stay = {**encounter("in-progress", "IMP"), "period": {"start": "2024-04-28T22:10:00+02:00"}}
    assert occurred_at(open_stay, GUADELOUPE) == datetime(2024, 4, 28, 20, 10, tzinfo=UTC)


def test_discharge_without_end_uses_start() -> None:
    """A finished stay with no recorded end falls back to its start."""
    stay = {**encounter("finished", "IMP"), "period": {"start": "2024-04-28"}}
    assert occurred_at(stay, PARIS) == datetime(2024, 4, 27, 22, tzinfo=UTC)


OBSERVATION = {"resourceType": "Observation"}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({**OBSERVATION, "effectiveDateTime": "2024-05-02T08:15:00+02:00", "issued": "2024-05-03"},
         datetime(2024, 5, 2, 6, 15, tzinfo=UTC)),
        ({**OBSERVATION, "effectivePeriod": {"start": "2024-05-01"}, "issued": "2024-05-03"},
         datetime(2024, 4, 30, 22, tzinfo=UTC)),
        ({**OBSERVATION, "issued": "2024-05-03T10:00:00Z"}, datetime(2024, 5, 3, 10, tzinfo=UTC)),
        ({"resourceType": "Condition", "onsetDateTime": "2019-06"}, datetime(2019, 5, 31, 22, tzinfo=UTC)),
        ({"resourceType": "Condition", "recordedDate": "2020-02-01"}, datetime(2020, 1, 31, 23, tzinfo=UTC)),
        ({"resourceType": "MedicationRequest", "authoredOn": "2024-03-01"},
         datetime(2024, 2, 29, 23, tzinfo=UTC)),
        ({"resourceType": "Patient", "meta": {"lastUpdated": "2024-05-03T09:00:00+02:00"}},
         datetime(2024, 5, 3, 7, tzinfo=UTC)),
    ],
    ids=["effectiveDateTime first", "effectivePeriod.start", "issued", "onset", "recordedDate", "authoredOn",
         "meta.lastUpdated fallback"],
)  # fmt: skip
def test_occurred_at_picks_the_most_specific_time(resource: dict[str, Any], expected: datetime) -> None:
    """Each type's own time fields are tried most specific first, then meta.lastUpdated (Paris zone here)."""
    assert occurred_at(resource, PARIS) == expected


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient"},
        {"resourceType": "Observation", "effectiveDateTime": "not a date"},
        {"resourceType": "Observation", "effectivePeriod": "2024-05-01"},
        {"resourceType": "Observation", "effectiveDateTime": "0001-01-01"},
    ],
    ids=["no time", "unreadable", "wrong shape", "out of range"],
)
def test_occurred_at_unknown(resource: dict[str, Any]) -> None:
    """When the resource says nothing usable about when, occurred_at is None (recorded_at is used)."""
    assert occurred_at(resource, PARIS) is None
