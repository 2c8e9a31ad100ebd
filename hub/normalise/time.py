"""FHIR date and time values as UTC instants; naive values are read in the source's time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo


def parse_fhir_datetime(text: str, zone: ZoneInfo) -> datetime | None:
    """A FHIR ``date``/``dateTime``/``instant`` as an aware UTC datetime, or None if unreadable.

    Partial dates (``2024``, ``2024-05``) mean their first instant, in the source's zone.
    """
    try:
        if len(text) == 4:
            moment = datetime(int(text), 1, 1)  # noqa: DTZ001 - made aware just below
        elif len(text) == 7:
            moment = datetime(int(text[:4]), int(text[5:7]), 1)  # noqa: DTZ001 - made aware below
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01 east of UTC: valid FHIR, but before datetime.min in UTC
        return None


def utc_iso(moment: datetime) -> str:
    """ISO 8601 with a ``Z``, millisecond precision: the hub's one way of writing instants."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
