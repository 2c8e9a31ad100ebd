"""What the hub would make of a source's sample files, without Kafka: the pure part of ``hub sources check``.

Each file is signed with the source's own registry secret and split exactly as ``hub publish`` would
(:func:`hub.publish.publications_for_file`), and each part goes through the real ingest core
(:func:`hub.ingest.pipeline.process_ingest`). The report is read back from the outcome and from the
events' provenance steps, so it shows what a hospital subscribing to the pathway would receive:

- the outcome (accepted, or rejected with its error code and detail);
- the events (kind, resource type, when it happened) and their canonical normalised resources;
- codes left unmapped (counted), unit conversions, naive-time repairs, FHIR version conversion rules,
  and which STU3/R5 elements the conversion carried in a cross-version extension or dropped;
- the warnings the receipt would carry: what the hub ignored (an INS that may not link, a resource
  type that makes no event, codes without a standard one, values passed on as sent);
- the patient: the basis of the network id (qualified INS or source-local id), and whether the input
  would link a local id to an INS id (a ``patient.linked`` event, the first time the hub sees it).

Nothing is stored and nothing is sent: network ids are computed to be shown, then forgotten.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from hub.errors import ConfigError
from hub.ingest.decode import CONVERTED_VERSIONS
from hub.ingest.outcome import Accepted, IngestRecord, IngestWarning, KafkaCoordinates, Rejected
from hub.ingest.pipeline import IngestContext, process_ingest, with_patient
from hub.normalise.versions import carried_element, dropped_element
from hub.pathway.event import PathwayEvent
from hub.publish import fhir_files, publications_for_file
from hub.records import CONTENT_TYPE_HEADER

#: The pseudo topic named in the provenance of checked events: nothing is read from Kafka.
CHECK_TOPIC = "hub-sources-check"

#: Steps the ingest core adds per resource, after the steps of decoding (which every event of one input
#: carries alike: ``decoded:``, the naive-time repair before validation, and the version conversion).
_PER_RESOURCE_PREFIXES = (
    "bundle-entry:",
    "code-mapped:",
    "code-unmapped:",
    "unit",  # unit:, unit-range:, unit-coded:, unit-unknown:, unit-unconvertible:
    "instants-utc",
    "instant-unreadable:",
    "naive-time-",
    "patient-id:",
    "occurred-at:",
)
_DECODED = "decoded:"
_NAIVE_TIME = "naive-time-"
_INSTANT_UNREADABLE = "instant-unreadable:"
_PATIENT_ID = "patient-id:"
_OCCURRED_UNKNOWN = "occurred-at:unknown"
_CODE_MAPPED = "code-mapped:"
#: The Bundle position the version converter puts before each entry's rules: ``entry[3] ``.
_ENTRY_PREFIX = re.compile(r"^(?:entry\[\d+\] )+")


@dataclass(frozen=True)
class Count:
    """One thing seen, and how often (events carrying a step, entries a rule applied to, codes)."""

    item: str
    count: int


@dataclass(frozen=True)
class EventReport:
    """One pathway event the part would publish."""

    event_id: str
    kind: str
    resource_type: str
    occurred_at: str
    #: False when the resource says nowhere when it happened and the record time is used instead.
    occurred_at_from_resource: bool
    #: The canonical normalised R4 resource, as the pathway event carries it.
    resource: Mapping[str, Any]
    #: The label of an earlier part of this check with the same event id (the hub publishes it once).
    repeat_of: str | None = None


@dataclass(frozen=True)
class IdentityReport:
    """Who the part is about, as network ids (pseudonymous; computed with the check's key)."""

    patient_id: str
    basis: Literal["ins", "local"]
    #: The source-local network id this input links to ``patient_id`` (it carries both), or None.
    links_local_id: str | None = None
    #: The INS id an earlier part of this check linked ``patient_id`` to: the hub publishes the events
    #: under that id (the ``events`` of the report already are), or None.
    routed_to: str | None = None
    #: The label of the part that made the link ``routed_to`` or ``conflicts_with`` names.
    linked_by: str | None = None
    #: The INS id an earlier part already linked ``links_local_id`` to, when this part names another
    #: one: the hub keeps the first link and logs ``identity.conflict``; this link is not made.
    conflicts_with: str | None = None

    @property
    def links(self) -> bool:
        """Whether the hub would link ``links_local_id`` to ``patient_id`` (a ``patient.linked`` event)."""
        return self.links_local_id is not None and self.conflicts_with is None


@dataclass(frozen=True)
class PartReport:
    """One record as ``hub publish`` would send it: a whole file, or one part of a split Bundle."""

    label: str
    size: int
    content_type: str
    message_id: str
    status: Literal["accepted", "rejected"]
    code: str | None = None
    detail: str | None = None
    #: ``json/fhir-4.0``: the media and FHIR version the hub read the body as (accepted parts with events).
    read_as: str | None = None
    events: tuple[EventReport, ...] = ()
    identity: IdentityReport | None = None
    #: ``system|code`` of local codes no ConceptMap of the source maps, per occurrence.
    unmapped: tuple[Count, ...] = ()
    #: ``system|code->system|code`` codings added from the source's ConceptMaps, per event.
    mapped: tuple[Count, ...] = ()
    #: ``unit:``, ``unit-range:``, ``unit-coded:``, ``unit-unknown:`` and ``unit-unconvertible:`` steps,
    #: by events carrying them.
    units: tuple[Count, ...] = ()
    #: ``naive-time-*`` and ``instant-unreadable:*`` steps, by events carrying them.
    instants: tuple[Count, ...] = ()
    #: How many events carry a ``naive-time-*`` step (naive times read in the source's zone).
    events_with_naive_times: int = 0
    #: Version conversion rules (STU3/R5 to R4), entry positions left out, by entries they applied to.
    conversions: tuple[Count, ...] = ()
    #: Elements (``Observation.triggeredBy``) the conversion carried in a cross-version extension, by entries.
    carried: tuple[Count, ...] = ()
    #: Elements the conversion dropped, with why (``Observation.instantiatesCanonical (R5 link to ...)``).
    dropped: tuple[Count, ...] = ()
    #: The label of an earlier part with the same body (the same ``hub-message-id``): a resend.
    resend_of: str | None = None
    #: The warnings the part's receipt would carry (none for a reject).
    warnings: tuple[IngestWarning, ...] = ()

    @property
    def rejected(self) -> bool:
        """Whether the hub would reject this record."""
        return self.status == "rejected"

    @property
    def converted(self) -> bool:
        """Whether the body was read as STU3 or R5 and converted to R4."""
        return self.read_as is not None and self.read_as.rpartition("fhir-")[2] in CONVERTED_VERSIONS

    @property
    def unit_conversions(self) -> int:
        """Values converted to the canonical unit (``unit:`` steps), summed over events."""
        return sum(c.count for c in self.units if c.item.startswith("unit:"))

    @property
    def repeats(self) -> int:
        """Events already made by an earlier part of this check."""
        return sum(1 for event in self.events if event.repeat_of is not None)


@dataclass(frozen=True)
class FileReport:
    """One file and the records made from it."""

    path: Path
    parts: tuple[PartReport, ...]

    @property
    def rejected(self) -> bool:
        """Whether any part would be rejected."""
        return any(part.rejected for part in self.parts)

    @property
    def events(self) -> int:
        """Events over all parts."""
        return sum(len(part.events) for part in self.parts)


@dataclass(frozen=True)
class Totals:
    """The summary line of a check."""

    files: int
    parts: int
    accepted: int
    rejected: int
    events: int
    repeats: int
    unmapped: int  # occurrences
    unmapped_distinct: int
    unit_conversions: int
    naive_time_events: int
    warnings: int  # the receipts' warnings, over parts
    converted_parts: int  # parts read as STU3 or R5 and converted
    links: int  # parts that would link a local id to an INS id
    conflicts: int  # parts that name another INS for a local id already linked

    @property
    def ok(self) -> bool:
        """Whether nothing would be rejected."""
        return self.rejected == 0


def _counts(items: Iterable[str]) -> tuple[Count, ...]:
    """Each item with how often it was seen, in the order first seen."""
    return tuple(Count(item, n) for item, n in Counter(items).items())


def _split_steps(steps: Sequence[str]) -> tuple[list[str], list[str]]:
    """An event's steps cut into its input's decoding steps and its resource's own ones.

    Decoding steps come first and are the same for every event of one input: ``decoded:<media>/fhir-<v>``,
    then the naive-time repair before validation when taken, then the version conversion rules.
    """
    start = 2 if len(steps) > 1 and steps[1].startswith(_NAIVE_TIME) else 1
    for index in range(start, len(steps)):
        if steps[index].startswith(_PER_RESOURCE_PREFIXES):
            return list(steps[:index]), list(steps[index:])
    return list(steps), []


class _Memory:
    """What the identity stage would remember between the parts of one check, in their order."""

    def __init__(self) -> None:
        self.events: dict[str, str] = {}  # event id -> label of the part that made it first
        self.messages: dict[str, str] = {}  # message id -> label
        self.aliases: dict[str, tuple[str, str]] = {}  # local id -> (INS id, label of the linking part)

    def identity(
        self, outcome: Accepted, basis: Literal["ins", "local"], label: str
    ) -> IdentityReport | None:
        if outcome.patient_id is None:
            return None
        link = outcome.link
        conflict: tuple[str, str] | None = None
        if link is not None:
            known = self.aliases.setdefault(link.local_id, (link.ins_id, label))
            if known[0] != link.ins_id:
                conflict = known  # the first INS wins
        routed = self.aliases.get(outcome.patient_id)
        return IdentityReport(
            patient_id=outcome.patient_id,
            basis=basis,
            links_local_id=link.local_id if link is not None else None,
            routed_to=routed[0] if routed is not None else None,
            linked_by=(routed or conflict or (None, None))[1],
            conflicts_with=conflict[0] if conflict is not None else None,
        )

    def event(self, event: PathwayEvent, identity: IdentityReport | None) -> EventReport:
        """The event as the identity stage would publish it: under the surviving id when linked (its
        id unchanged: hub.identity.stage._under)."""
        resource = event.resource
        event_id = event.event_id
        if identity is not None and identity.routed_to is not None:
            resource = with_patient(resource, identity.routed_to)
        return EventReport(
            event_id=event_id,
            kind=event.kind,
            resource_type=str(resource["resourceType"]),
            occurred_at=event.occurred_at,
            occurred_at_from_resource=not any(s.startswith(_OCCURRED_UNKNOWN) for s in event.steps),
            resource=resource,
            repeat_of=self.events.get(event_id),
        )

    def remember(self, events: Iterable[EventReport], label: str) -> None:
        """The part's events, for the parts after it (the hub publishes each event id once)."""
        for event in events:
            self.events.setdefault(event.event_id, label)


def _accepted_part(outcome: Accepted, base: dict[str, Any], memory: _Memory, label: str) -> PartReport:
    # The input's decoding steps, the same as every event's first ones, and known without events too.
    decoding = list(outcome.steps)
    units: list[str] = []
    instants: list[str] = []
    mapped: list[str] = []
    basis: Literal["ins", "local"] = "local"
    naive_events = 0
    for event in outcome.events:
        input_steps, own = _split_steps(event.steps)
        units.extend(s for s in dict.fromkeys(own) if s.startswith("unit"))
        instant_steps = [
            s for s in dict.fromkeys([*input_steps, *own]) if s.startswith((_NAIVE_TIME, _INSTANT_UNREADABLE))
        ]
        instants.extend(instant_steps)
        naive_events += any(s.startswith(_NAIVE_TIME) for s in instant_steps)
        mapped.extend(s.removeprefix(_CODE_MAPPED) for s in own if s.startswith(_CODE_MAPPED))
        if f"{_PATIENT_ID}ins" in own:
            basis = "ins"
    identity = memory.identity(outcome, basis, label)
    events = tuple(memory.event(event, identity) for event in outcome.events)
    memory.remember(events, label)
    read_as = next((s.removeprefix(_DECODED) for s in decoding if s.startswith(_DECODED)), None)
    conversions = [
        _ENTRY_PREFIX.sub("", step) for step in decoding if not step.startswith((_DECODED, _NAIVE_TIME))
    ]
    dropped = [gone for step in conversions if (gone := dropped_element(step)) is not None]
    return PartReport(
        **base,
        status="accepted",
        read_as=read_as,
        events=events,
        identity=identity,
        unmapped=_counts(f"{system}|{code}" for system, code in outcome.unmapped_codes),
        mapped=_counts(mapped),
        units=_counts(units),
        instants=_counts(instants),
        events_with_naive_times=naive_events,
        conversions=_counts(conversions),
        carried=_counts(element for step in conversions if (element := carried_element(step)) is not None),
        dropped=_counts(f"{element} ({why})" for element, why in dropped),
        warnings=outcome.warnings,
    )


def check_files(
    paths: Sequence[Path],
    *,
    source_id: str,
    context: IngestContext,
    max_bytes: int,
    fhir_version: str | None = None,
    now: datetime,
) -> list[FileReport]:
    """What the hub would do with each file (folders: their .json and .xml files, recursively, sorted).

    Each file is signed with the source's first registry secret at ``now`` and split at ``max_bytes`` as
    ``hub publish`` does (the sender's limit; the hub's own is ``context.max_payload_bytes``). ``.xml``
    files are sent as FHIR XML. ``fhir_version`` ("3.0", "4.0", "4.3", "5.0") is sent as the
    content-type's ``fhirVersion``; without it the source's default applies. Files are checked in the
    order given, and what the identity stage would remember (links, event and message ids) carries from
    one to the next. Raises ConfigError when the source is not registered or a file cannot be read.
    """
    source = context.registry.get(source_id)
    if source is None:
        known = ", ".join(sorted(context.registry.sources)) or "none"
        raise ConfigError(
            f"source {source_id!r} is not registered",
            hint=f"register it in the source registry first (registered: {known})",
        )
    memory = _Memory()
    reports: list[FileReport] = []
    for path in fhir_files(list(paths)):
        try:
            publications = publications_for_file(
                path,
                source_id=source.id,
                secret=source.secrets[0],
                max_bytes=max_bytes,
                now=int(now.timestamp()),
                fhir_version=fhir_version,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path} ({exc.strerror or type(exc).__name__})",
                hint="check the path and its permissions",
            ) from exc
        parts: list[PartReport] = []
        for offset, publication in enumerate(publications):
            record = IngestRecord(
                publication.value,
                publication.headers,
                KafkaCoordinates(CHECK_TOPIC, 0, offset),
                now,
            )
            outcome = process_ingest(record, context, now=now)
            message_id = publication.key.decode()
            base: dict[str, Any] = {
                "label": publication.label,
                "size": len(publication.value),
                "content_type": record.header(CONTENT_TYPE_HEADER) or "",
                "message_id": message_id,
                "resend_of": memory.messages.get(message_id),
            }
            memory.messages.setdefault(message_id, publication.label)
            if isinstance(outcome, Rejected):
                parts.append(
                    PartReport(**base, status="rejected", code=str(outcome.code), detail=outcome.detail)
                )
            else:
                parts.append(_accepted_part(outcome, base, memory, publication.label))
        reports.append(FileReport(path, tuple(parts)))
    return reports


def totals(reports: Sequence[FileReport]) -> Totals:
    """The figures of the summary line."""
    parts = [part for report in reports for part in report.parts]
    unmapped: Counter[str] = Counter()
    for part in parts:
        unmapped.update({c.item: c.count for c in part.unmapped})
    return Totals(
        files=len(reports),
        parts=len(parts),
        accepted=sum(1 for part in parts if not part.rejected),
        rejected=sum(1 for part in parts if part.rejected),
        events=sum(len(part.events) for part in parts),
        repeats=sum(part.repeats for part in parts),
        unmapped=sum(unmapped.values()),
        unmapped_distinct=len(unmapped),
        unit_conversions=sum(part.unit_conversions for part in parts),
        naive_time_events=sum(part.events_with_naive_times for part in parts),
        warnings=sum(len(part.warnings) for part in parts),
        converted_parts=sum(1 for part in parts if part.converted),
        links=sum(1 for part in parts if part.identity is not None and part.identity.links),
        conflicts=sum(1 for part in parts if part.identity is not None and part.identity.conflicts_with),
    )
