"""From one ``hub.ingest.v1`` record to pathway events or one reject: the pure ingest core."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from hub.errors import ErrorCode, WarningCode
from hub.ingest import decode as decoding
from hub.ingest import signature
from hub.ingest.outcome import (
    Accepted,
    IdentityLink,
    IngestOutcome,
    IngestRecord,
    IngestWarning,
    Rejected,
    bounded_warnings,
    counted,
)
from hub.ingest.split import PATIENT_FIELD, Entry, split_entries
from hub.normalise.codes import CodeMapper
from hub.normalise.fhir_model import VERSION_NAMES
from hub.normalise.instants import normalise_instants
from hub.normalise.pathway_kind import occurred_at, pathway_kind
from hub.normalise.references import address_book, with_stable_references
from hub.normalise.time import utc_iso
from hub.normalise.units import normalise_quantities
from hub.normalise.versions import carried_element, dropped_element
from hub.pathway.event import PathwayEvent, event_id_for
from hub.pathway.network_id import NETWORK_ID_SYSTEM
from hub.records import CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER, SIGNATURE_HEADER, SOURCE_HEADER
from hub.sources.registry import Source, SourceRegistry

_PRINTABLE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
#: A code system a warning may name: a URI of printable ASCII, short. Anything else is described, not
#: echoed, since receipts never carry arbitrary text from the input.
_ECHOED_SYSTEM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[!-~]{1,200}$")
#: Steps of the unit and instant normalisers (hub.normalise.units, .instants) that leave a value as sent.
_UNIT_UNKNOWN = "unit-unknown:"
_INSTANT_UNREADABLE = "instant-unreadable:"


@dataclass(frozen=True)
class IngestContext:
    """What ingest needs besides the record: registry, limits, code maps and the pseudonym key."""

    registry: SourceRegistry
    pseudonym_key: bytes = field(repr=False)
    max_payload_bytes: int = 1024 * 1024
    signature_tolerance_seconds: int = 300
    allow_test_ins: bool = False
    #: Each source's ConceptMaps, loaded once (``hub.normalise.codes.load_concept_maps``).
    code_mappers: Mapping[str, CodeMapper] = field(default_factory=dict)


def printable_id(text: str | None) -> str | None:
    """A header value fit to echo in a receipt, or None: receipts never echo arbitrary bytes."""
    return text if text is not None and _PRINTABLE_ID.match(text) else None


def message_id_of(record: IngestRecord) -> str | None:
    """The source's idempotency key; one with unusual characters is kept as its hash."""
    raw = record.header(MESSAGE_ID_HEADER)
    if raw is None or printable_id(raw) is not None:
        return raw
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def with_patient(resource: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """The resource with its patient named by network id (the source's own reference is local)."""
    copy = dict(resource)
    network_identifier = {"system": NETWORK_ID_SYSTEM, "value": patient_id}
    if copy["resourceType"] == "Patient":
        others = [i for i in copy.get("identifier", ()) if i.get("system") != NETWORK_ID_SYSTEM]
        copy["identifier"] = [*others, network_identifier]
    else:
        field_name = PATIENT_FIELD[copy["resourceType"]]
        reference = {"reference": f"Patient/{patient_id}", "identifier": network_identifier}
        # Account.subject is a list; split accepts it with the patient as its one item.
        copy[field_name] = [reference] if isinstance(copy.get(field_name), list) else reference
    return copy


def _security_labels(resource: dict[str, Any]) -> tuple[str, ...]:
    labels = (resource.get("meta") or {}).get("security", ())
    return tuple(sorted({str(label["code"]) for label in labels if label.get("code")}))


@dataclass(frozen=True)
class _Normalised:
    resource: dict[str, Any]
    steps: tuple[str, ...]
    unmapped: tuple[tuple[str, str], ...]


#: The mapper of a source without ConceptMaps: it maps nothing, but still marks and reports local codes.
_NO_MAPS = CodeMapper(MappingProxyType({}))


def normalise_resource(resource: dict[str, Any], source: Source, mapper: CodeMapper | None) -> _Normalised:
    """Codes, units and instants of one validated R4 resource, as the source's profile says.

    Codes come first: a local test code the source's ConceptMap maps to LOINC names the analyte whose
    unit is then converted. Without a mapper, local codes are still marked unmapped and reported.
    """
    mapping = (mapper or _NO_MAPS).map_resource(resource)
    resource, unit_steps = normalise_quantities(mapping.resource)
    resource, instant_steps = normalise_instants(resource, source.time_zone)
    return _Normalised(resource, (*mapping.steps, *unit_steps, *instant_steps), mapping.unmapped)


def _codes_detail(code: WarningCode, resource_type: str, system: str, count: int) -> str:
    codes = f"{resource_type}: {counted(count, 'code', 'codes')}"
    if not system:
        return f"{codes} without a code system; kept as sent and marked unmapped"
    named = f"of {system}" if _ECHOED_SYSTEM.match(system) else "of a code system that is not a plain URI"
    why = (
        "not in this source's ConceptMaps for that system"
        if code is WarningCode.CODE_UNMAPPED
        else "a code system the hub does not know and no ConceptMap of this source maps"
    )
    return f"{codes} {named}, {why}; kept as sent and marked unmapped"


def _normalisation_warnings(
    normalised: Iterable[tuple[str, _Normalised]], mapper: CodeMapper | None
) -> list[IngestWarning]:
    """What normalisation left as sent, per resource type, counted: local codes without a standard one
    (``code.unmapped`` when a ConceptMap of the source covers the code's system, else
    ``code.system_unknown``), quantities in an unknown unit, unreadable date-times.

    A code is named by its system only: in a receipt, the code itself would say what the patient has.
    """
    codes: Counter[tuple[WarningCode, str, str]] = Counter()
    units: Counter[str] = Counter()
    instants: Counter[tuple[str, str]] = Counter()
    for resource_type, result in normalised:
        for system, _code in result.unmapped:
            known = mapper is not None and mapper.covers(system)
            code = WarningCode.CODE_UNMAPPED if known else WarningCode.CODE_SYSTEM_UNKNOWN
            codes[code, resource_type, system] += 1
        for step in result.steps:
            if step.startswith(_UNIT_UNKNOWN):
                units[resource_type] += 1
            elif step.startswith(_INSTANT_UNREADABLE):
                instants[resource_type, step.removeprefix(_INSTANT_UNREADABLE)] += 1
    warnings = [
        IngestWarning(code, _codes_detail(code, resource_type, system, count))
        for (code, resource_type, system), count in codes.items()
    ]
    warnings.extend(
        IngestWarning(
            WarningCode.UNIT_UNKNOWN,
            f"{resource_type}: {counted(count, 'quantity', 'quantities')} in a unit the hub cannot "
            "convert to its canonical unit; passed on as sent",
        )
        for resource_type, count in units.items()
    )
    warnings.extend(
        IngestWarning(
            WarningCode.INSTANT_UNREADABLE,
            f"{resource_type}.{field_name}: {counted(count, 'value', 'values')} not readable as a "
            "date-time; passed on as sent",
        )
        for (resource_type, field_name), count in instants.items()
    )
    return warnings


def _conversion_warnings(decoded: decoding.Decoded) -> list[IngestWarning]:
    """What the STU3/R5 conversion did not keep in an R4 element, per element, counted over the entries:
    elements dropped (they carry no clinical meaning) and elements carried in HL7's cross-version
    extensions, which a recipient reading plain R4 may not look at. Names elements, never values."""
    carried: Counter[str] = Counter()
    dropped: Counter[tuple[str, str]] = Counter()
    for step in decoded.steps:
        element = carried_element(step)
        if element is not None:
            carried[element] += 1
        gone = dropped_element(step)
        if gone is not None:
            dropped[gone] += 1
    version = VERSION_NAMES.get(decoded.fhir_version, decoded.fhir_version)
    warnings = [
        IngestWarning(
            WarningCode.ELEMENT_DROPPED,
            f"{element} ({counted(count, 'resource', 'resources')}): dropped in the conversion from "
            f"{version} to R4 ({why})",
        )
        for (element, why), count in dropped.items()
    ]
    warnings.extend(
        IngestWarning(
            WarningCode.ELEMENT_CARRIED,
            f"{element} ({counted(count, 'resource', 'resources')}): R4 has no element for it; carried in "
            f"HL7's {version} cross-version extension, which a recipient reading plain R4 may ignore",
        )
        for element, count in carried.items()
    )
    return warnings


def _event(
    entry: Entry,
    patient_id: str,
    *,
    source: Source,
    record: IngestRecord,
    decoded: decoding.Decoded,
    normalised: _Normalised,
    basis: str,
) -> PathwayEvent:
    resource = with_patient(normalised.resource, patient_id)
    steps = list(decoded.steps)
    if entry.index is not None:
        steps.append(f"bundle-entry:{entry.index}")
    steps.extend(normalised.steps)
    steps.append(f"patient-id:{basis}")
    when = occurred_at(resource, source.time_zone)
    if when is None:
        steps.append("occurred-at:unknown, recorded-at used")
    return PathwayEvent(
        event_id=event_id_for(patient_id, resource),
        patient_id=patient_id,
        kind=pathway_kind(resource),
        occurred_at=utc_iso(when or record.timestamp),
        recorded_at=utc_iso(record.timestamp),
        source_id=source.id,
        source_organization={
            "system": source.organization_system,
            "value": source.organization_value,
        },
        resource=resource,
        ingest=record.origin.as_dict(),
        steps=tuple(steps),
        sensitivity=_security_labels(resource),
    )


def process_ingest(record: IngestRecord, context: IngestContext, *, now: datetime) -> IngestOutcome:
    """Authenticate, decode, validate and split one record; never raises on bad input."""
    claimed_source = record.header(SOURCE_HEADER)
    message_id = message_id_of(record)
    source = context.registry.get(claimed_source) if claimed_source else None
    if source is None:
        detail = "no hub-source header" if not claimed_source else "hub-source is not registered"
        return Rejected(ErrorCode.SOURCE_UNKNOWN, detail, printable_id(claimed_source), message_id)

    def reject(code: ErrorCode, detail: str) -> Rejected:
        return Rejected(code, detail, source.id, message_id)

    value = record.value or b""
    if len(value) > context.max_payload_bytes:
        return reject(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"body is {len(value)} bytes, limit {context.max_payload_bytes}; split the Bundle",
        )
    bad_signature = signature.verify(
        record.header(SIGNATURE_HEADER),
        # A rotated-out key verifies only until the end of its overlap window (hub.sources.keys).
        secrets=source.keys_at(now),
        source_id=source.id,
        value=value,
        now=int(now.timestamp()),
        tolerance_seconds=context.signature_tolerance_seconds,
    )
    if bad_signature is not None:
        return reject(*bad_signature)
    if not value.strip():
        return reject(ErrorCode.PAYLOAD_MALFORMED, "empty body")
    content_type = decoding.parse_content_type(record.header(CONTENT_TYPE_HEADER))
    if isinstance(content_type, Rejected):
        return reject(content_type.code, content_type.detail)
    decoded = decoding.decode(
        value, content_type, default_version=source.default_fhir_version, zone=source.time_zone
    )
    if isinstance(decoded, Rejected):
        return reject(decoded.code, decoded.detail)
    split = split_entries(decoded.resource, source, allow_test_ins=context.allow_test_ins)
    if isinstance(split, Rejected):
        return reject(split.code, split.detail)
    converting = _conversion_warnings(decoded)
    if split.patient is None:
        warnings = bounded_warnings([*split.warnings, *converting])
        return Accepted(source.id, message_id, (), warnings=warnings, steps=decoded.steps)

    key = context.pseudonym_key
    patient_id = split.patient.routing.network_id(key)
    link = None
    if split.patient.local is not None and split.patient.linking_ins is not None:
        link = IdentityLink(split.patient.local.network_id(key), patient_id)
    mapper = context.code_mappers.get(source.id)
    book = address_book(source.id, ((e.full_url, e.resource) for e in split.entries))
    events: dict[str, PathwayEvent] = {}
    unmapped: list[tuple[str, str]] = []
    normalised_all: list[tuple[str, _Normalised]] = []
    for entry in split.entries:
        if not entry.about_patient:
            continue
        resource, rewritten = with_stable_references(entry.resource, source_id=source.id, book=book)
        normalised = normalise_resource(resource, source, mapper)
        if rewritten:
            normalised = replace(normalised, steps=("references-stable", *normalised.steps))
        unmapped.extend(normalised.unmapped)
        normalised_all.append((str(resource["resourceType"]), normalised))
        event = _event(
            entry,
            patient_id,
            source=source,
            record=record,
            decoded=decoded,
            normalised=normalised,
            basis=split.patient.routing.basis,
        )
        events.setdefault(event.event_id, event)  # one event per fact, even inside one Bundle
    warnings = bounded_warnings(
        [*split.warnings, *converting, *_normalisation_warnings(normalised_all, mapper)]
    )
    return Accepted(
        source.id,
        message_id,
        tuple(events.values()),
        patient_id,
        link,
        tuple(unmapped),
        warnings,
        decoded.steps,
    )
