"""What ingest sees (a record) and what it decides (accepted events or a reject with a code)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from hub.errors import ErrorCode, WarningCode
from hub.pathway.event import PathwayEvent
from hub.records import Headers
from hub.records import header as header_text

#: The most warnings one receipt lists; more become one ``warnings.truncated``. A receipt stays small
#: whatever the input, and the first warnings (the most important codes) are the ones a source acts on.
MAX_WARNINGS = 20


@dataclass(frozen=True)
class KafkaCoordinates:
    """Where a record sits in Kafka."""

    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, str | int]:
        """The ``{topic, partition, offset}`` object of receipts and provenance."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class IngestRecord:
    """One record of ``hub.ingest.v1`` as the pure core sees it: bytes, headers and position."""

    value: bytes | None
    headers: Headers
    origin: KafkaCoordinates
    timestamp: datetime

    def header(self, name: str) -> str | None:
        """A header's text, or None when absent (:func:`hub.records.header`: a source's, first occurrence)."""
        return header_text(self.headers, name)


@dataclass(frozen=True)
class Rejected:
    """A record that produces no events; ``detail`` never quotes clinical content."""

    code: ErrorCode
    detail: str
    source_id: str | None = None
    message_id: str | None = None


@dataclass(frozen=True)
class IngestWarning:
    """Something the hub ignored in an accepted input; ``detail`` names fields and counts, never values."""

    code: WarningCode
    detail: str

    def as_dict(self) -> dict[str, str]:
        """The ``{code, detail}`` object of receipts."""
        return {"code": str(self.code), "detail": self.detail}


def counted(count: int, one: str, many: str) -> str:
    """``1 entry``, ``2 entries``: warning details count what they name instead of listing it."""
    return f"{count} {one if count == 1 else many}"


_CODE_RANK = {code: rank for rank, code in enumerate(WarningCode)}


def bounded_warnings(warnings: Iterable[IngestWarning]) -> tuple[IngestWarning, ...]:
    """Each warning once, most important code first (then by detail), at most :data:`MAX_WARNINGS`.

    The order depends on the warnings alone, not on where they came from, so the same input always
    gets the same list; what is cut is counted in a last ``warnings.truncated``.
    """
    unique = sorted(set(warnings), key=lambda warning: (_CODE_RANK[warning.code], warning.detail))
    if len(unique) <= MAX_WARNINGS:
        return tuple(unique)
    more = len(unique) - MAX_WARNINGS
    cut = IngestWarning(WarningCode.WARNINGS_TRUNCATED, f"{more} more warning(s) not listed")
    return (*unique[:MAX_WARNINGS], cut)


@dataclass(frozen=True)
class IdentityLink:
    """An input showed that a source-local patient id and a qualified-INS id are one person."""

    local_id: str
    ins_id: str


@dataclass(frozen=True)
class Accepted:
    """A record turned into pathway events (possibly none, for reference-only resources).

    ``patient_id`` is the network id the events were made under (the INS one when the input
    carries a qualified INS); the identity stage may still route them to a linked, surviving id.
    """

    source_id: str
    message_id: str | None
    events: tuple[PathwayEvent, ...]
    patient_id: str | None = None
    link: IdentityLink | None = None
    #: (system, code) of local codes no ConceptMap of the source maps; counted per source.
    unmapped_codes: tuple[tuple[str, str], ...] = ()
    #: What the hub ignored in the input, for its receipt (:func:`bounded_warnings`: deduplicated, ordered).
    warnings: tuple[IngestWarning, ...] = ()
    #: How the input was decoded (``decoded:<media>/fhir-<version>``, a naive-time repair, the STU3/R5
    #: conversion rules), the steps every event's provenance starts with; kept for inputs without events.
    steps: tuple[str, ...] = ()


IngestOutcome = Accepted | Rejected
