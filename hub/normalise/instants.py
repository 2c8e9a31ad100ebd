"""FHIR ``dateTime`` and ``instant`` values in UTC, and the repair of naive times before validation.

Which strings are instants. The walk goes through the whole JSON (contained resources and Bundle
entries included) and takes a string as a date-time when both hold:
- its key is a date-time field: one of :data:`DATE_TIME_FIELDS`, or a choice element ending in
  ``DateTime`` or ``Instant`` (``effectiveDateTime``, ``valueInstant``, ``deceasedDateTime``...); a list
  of strings under such a key (``Timing.event``) counts item by item;
- its text is a FHIR dateTime with a time part: ``YYYY-MM-DDThh:mm:ss[.fraction][Z|±hh:mm]``.
A date alone (``2024``, ``2024-05``, ``2024-05-03``) is not an instant and stays as it is; so does every
string under another key: ``birthDate`` (a date), ``text.div``, ``valueString``, ``note.text``...

Limits. Detection is by field name, not by the FHIR model, so it needs no validation and costs one walk;
but a date-time field whose name is not listed (an extension's ``valueDateTime`` is; a new resource's
oddly named element may not be) is left as sent, and a non-date-time element that shares a listed name
(``start``, ``date``...) is rewritten only if its text is a date-time with a time part, which such
elements (integers, dates) never are. A time without seconds (``T08:15``) is not FHIR and not read.

Naive times (a time without offset: invalid FHIR, sent by real software) are read in the source's time
zone with zoneinfo's ``fold=0``: a local time that does not exist (spring-forward gap, 02:30 in Paris
on 2025-03-30) moves forward by the gap, to 03:30+02:00, the same instant as 02:30 at the offset before
the change; an ambiguous one (fall-back, 02:30 in Paris on 2025-10-26) is its first occurrence, +02:00.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

#: Element names whose values are FHIR ``dateTime`` or ``instant`` (besides ``*DateTime``/``*Instant``).
DATE_TIME_FIELDS = frozenset(
    {
        "authored",  # QuestionnaireResponse
        "authoredOn",
        "created",
        "creation",  # Attachment
        "date",  # DocumentReference, Composition, ClinicalImpression... (Patient.birthDate is not it)
        "dateAsserted",
        "dateTime",  # Consent
        "end",  # Period, Appointment, Slot
        "event",  # Timing
        "issued",
        "lastModified",  # Task
        "lastOccurrence",  # AllergyIntolerance
        "lastUpdated",  # Meta
        "received",
        "receivedTime",  # Specimen
        "recorded",
        "recordedDate",
        "sent",
        "start",
        "time",  # Annotation
        "timestamp",  # Bundle
        "when",  # Signature
        "whenHandedOver",
        "whenPrepared",
    }
)
_CHOICE_SUFFIXES = ("DateTime", "Instant")

# ASCII digits only: FHIR's own regex is [0-9], and \d alone would also take other scripts' digits.
_DATE_TIME = re.compile(
    r"(?P<wall>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?P<fraction>\.\d{1,9})?(?P<offset>Z|[+-]\d{2}:\d{2})?",
    re.ASCII,
)


def is_date_time_field(key: str) -> bool:
    """Whether values under this JSON key are FHIR dateTime or instant values (see the module doc)."""
    return key in DATE_TIME_FIELDS or key.endswith(_CHOICE_SUFFIXES)


def is_naive_date_time(text: str) -> bool:
    """Whether ``text`` is a real date and time, with no UTC offset (which FHIR requires with a time)."""
    match = _DATE_TIME.fullmatch(text)
    if match is None or match["offset"] is not None:
        return False
    try:
        datetime.fromisoformat(match["wall"])
    except ValueError:  # 2024-02-30, or a leap second: a wrong value, not only a missing offset
        return False
    return True


def naive_time_step(zone: ZoneInfo) -> str:
    """The provenance step of a resource whose naive times were read in ``zone``."""
    return f"naive-time-read-in:{zone}"


# What reading one naive value involved; kept for the steps only once the value is rewritten.
_NAIVE, _NONEXISTENT, _AMBIGUOUS = "naive", "nonexistent", "ambiguous"


@dataclass
class _Report:
    """What one walk did, for the steps: notes and field names, never values."""

    rewritten: bool = False
    notes: set[str] = field(default_factory=set)
    unreadable: dict[str, None] = field(default_factory=dict)  # field names, in order, each once


def _offset(moment: datetime) -> timedelta:
    return moment.utcoffset() or timedelta(0)  # always set for an aware datetime


def _read_naive(wall: datetime, zone: ZoneInfo, notes: set[str]) -> datetime:
    """The wall-clock time ``wall`` in ``zone``, with the fold=0 rules of the module doc."""
    first = wall.replace(tzinfo=zone)  # fold=0
    before, after = _offset(first), _offset(first.replace(fold=1))
    notes.add(_NAIVE)
    if before < after:  # in a gap fold=0 applies the offset from before it: the clock jumps forward
        notes.add(_NONEXISTENT)
        return (wall + (after - before)).replace(tzinfo=zone)
    if before > after:
        notes.add(_AMBIGUOUS)
    return first


def _offset_text(offset: timedelta) -> str | None:
    """``±hh:mm``, or None for an offset with seconds (local mean time, e.g. Paris before 1911)."""
    seconds = int(offset.total_seconds())
    if seconds % 60:
        return None
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{'-' if seconds < 0 else '+'}{hours:02d}:{minutes:02d}"


def _wall_text(moment: datetime) -> str:
    # isoformat, not strftime: strftime("%Y") does not pad years before 1000 on every platform.
    return moment.replace(tzinfo=None).isoformat(timespec="seconds")


def _read(match: re.Match[str], zone: ZoneInfo, notes: set[str]) -> datetime:
    """The matched value as an aware datetime (its fraction aside); ValueError when it is no real time."""
    wall = datetime.fromisoformat(match["wall"])
    offset = match["offset"]
    if offset is None:
        return _read_naive(wall, zone, notes)
    return datetime.fromisoformat(match["wall"] + offset)


def _to_utc(text: str, zone: ZoneInfo, notes: set[str]) -> str | None:
    """``text`` as a UTC instant, or None when it is not a date-time with a time part.

    Written ``YYYY-MM-DDThh:mm:ss[.fraction]Z`` with the source's fraction, trailing zeros dropped:
    equal instants get equal text whatever precision each source wrote (event ids are hashes of the
    normalised resource, so the same fact from two sources must read the same), and no digit is
    invented. ``utc_iso``'s fixed milliseconds were not used because they would invent ``.000`` and cut
    the microseconds FHIR instants may carry. The fraction is carried as text, so nine digits survive.
    """
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        return None
    moment = _read(match, zone, notes).astimezone(UTC)
    fraction = (match["fraction"] or "").rstrip("0").rstrip(".")
    return f"{_wall_text(moment)}{fraction}Z"


def _with_local_offset(text: str, zone: ZoneInfo, notes: set[str]) -> str | None:
    """A naive ``text`` with the offset ``zone`` has then; None when ``text`` is not a naive date-time.

    The source's digits are kept (but for a time in a DST gap, moved forward), so the repaired value
    still reads as the source's local time; only an offset FHIR cannot write (seconds) falls back to UTC.
    """
    match = _DATE_TIME.fullmatch(text)
    if match is None or match["offset"] is not None:
        return None
    moment = _read(match, zone, notes)
    offset = _offset_text(_offset(moment))
    if offset is None:
        moment, offset = moment.astimezone(UTC), "Z"
    return f"{_wall_text(moment)}{match['fraction'] or ''}{offset}"


#: Rewrites one date-time text, noting what reading it involved; None when the text is not one to rewrite.
Rewrite = Callable[[str, ZoneInfo, set[str]], str | None]


def _value(key: str, text: str, rewrite: Rewrite, zone: ZoneInfo, report: _Report) -> str:
    notes: set[str] = set()
    try:
        new = rewrite(text, zone, notes)
    except (ValueError, OverflowError):  # 2024-02-30, a leap second, or beyond year 1..9999 once shifted
        report.unreadable[key] = None
        return text
    if new is None or new == text:
        return text
    report.rewritten = True
    report.notes |= notes
    return new


def _walk(node: Any, rewrite: Rewrite, zone: ZoneInfo, report: _Report) -> Any:
    """``node`` with its date-time values rewritten: a new container wherever something changed below,
    the same object wherever nothing did (so the input is never mutated and little is copied)."""
    if isinstance(node, list):
        items = [
            _walk(item, rewrite, zone, report) if isinstance(item, dict | list) else item for item in node
        ]
        return items if any(new is not old for new, old in zip(items, node, strict=True)) else node
    if not isinstance(node, dict):
        return node
    changed: dict[str, Any] = {}
    for key, child in node.items():
        # Most members are scalars under other names: nothing to rewrite, so no call is made for them
        # (ingest walks every input twice; the calls were about a third of these walks' cost).
        if not (key in DATE_TIME_FIELDS or key.endswith(_CHOICE_SUFFIXES)):
            if not isinstance(child, dict | list):
                continue
            new = _walk(child, rewrite, zone, report)
        elif isinstance(child, str):
            new = _value(key, child, rewrite, zone, report)
        elif isinstance(child, list):
            items = [
                _value(key, item, rewrite, zone, report)
                if isinstance(item, str)
                else _walk(item, rewrite, zone, report)
                for item in child
            ]
            new = items if any(a is not b for a, b in zip(items, child, strict=True)) else child
        else:  # a listed name holding an object (Composition.event is a list of them): look inside
            new = _walk(child, rewrite, zone, report)
        if new is not child:
            changed[key] = new
    return {**node, **changed} if changed else node


def normalise_instants(resource: dict[str, Any], zone: ZoneInfo) -> tuple[dict[str, Any], list[str]]:
    """The resource with every date-time with a time part in UTC, and the steps taken.

    ``zone`` is the source's time zone, for naive times. Steps, without values: ``instants-utc`` (some
    value rewritten), ``naive-time-read-in:<zone>`` (once), ``naive-time-nonexistent-shifted:<zone>``
    and ``naive-time-ambiguous-first:<zone>`` (the DST rules applied), ``instant-unreadable:<field>``
    (a value that looks like a date-time but is none, left as sent).
    """
    report = _Report()
    result: dict[str, Any] = dict(_walk(resource, _to_utc, zone, report))
    steps = [
        step
        for step, taken in (
            ("instants-utc", report.rewritten),
            (naive_time_step(zone), _NAIVE in report.notes),
            (f"naive-time-nonexistent-shifted:{zone}", _NONEXISTENT in report.notes),
            (f"naive-time-ambiguous-first:{zone}", _AMBIGUOUS in report.notes),
        )
        if taken
    ]
    steps.extend(f"instant-unreadable:{key}" for key in report.unreadable)
    return result, steps


#: A JSON string of the encoded document that may be a date-time with a time part: its text.
_DATE_TIME_STRING = re.compile(rb'"(\d{4}-\d{2}-\d{2}T[^"\\]*)"', re.ASCII)


def _may_rewrite(document: Any, rewrite: Rewrite, zone: ZoneInfo) -> bool:
    """False when :func:`_walk` would leave the document as it is: no string in it is one ``rewrite``
    changes (or fails on). Read from the document's JSON text, in C, instead of walking it in Python.

    Whatever the walk rewrites is a full match of the date-time pattern, whose characters JSON never
    escapes: it stands in the text between two quotes exactly as it is, and this finds every such
    string (and some that are not values under a date-time key, which only make it say True). Most
    inputs carry no naive time: the walk that repairs them is skipped for those (docs/PERFORMANCE.md,
    session 18).
    """
    try:
        text = orjson.dumps(document)
    except TypeError:  # an integer beyond 64 bits: let the walk look
        return True
    for match in _DATE_TIME_STRING.finditer(text):
        value = match[1].decode()
        try:
            if rewrite(value, zone, set()) not in (None, value):
                return True
        except (ValueError, OverflowError):
            return True
    return False


def fix_naive_times_before_validation(document: Any, zone: ZoneInfo) -> tuple[Any, bool]:
    """The parsed JSON ``document`` (a resource, a Bundle, anything) with its naive date-times given the
    offset of ``zone`` at that time, and whether any was repaired.

    fhir.resources refuses a dateTime without offset, so ingest repairs them before it validates; the
    offset written is the source zone's (``2024-05-02T08:15:00-04:00``), not UTC, so the document still
    says what the source said. The input is not mutated. A value that cannot be repaired (not a real
    date) is left as sent, for validation to refuse.
    """
    if not _may_rewrite(document, _with_local_offset, zone):
        return document, False
    report = _Report()
    return _walk(document, _with_local_offset, zone, report), report.rewritten
