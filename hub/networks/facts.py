"""What eligibility needs to know about one patient, folded from pathway events; lives in a faust table.

:func:`apply_event` folds one pathway event dict (the ``hub.pathway.v1`` envelope, or a recipient's
copy of it) into a :class:`PatientFacts`. It is pure, idempotent (an event applied twice changes
nothing) and never raises on odd input: what it cannot read it ignores. :meth:`PatientFacts.to_json`
and :meth:`PatientFacts.from_json` carry the facts through the table's changelog.

Only what criteria and alerts need is kept, and it is bounded so that a patient with years of
results does not grow without limit:

- demographics from Patient resources: birth date, home address codes (postal and INSEE), the
  identifiers the sources know the patient by, and each source's declared GPs (RPPS);
- conditions (codes, clinical and verification status), at most :data:`MAX_CONDITIONS`;
- numeric observations by LOINC code, newest first, at most :data:`OBSERVATIONS_PER_CODE` per code
  and :data:`MAX_OBSERVATION_CODES` codes;
- encounters (class, status, period, service type), at most :data:`MAX_ENCOUNTERS`;
- enrolments: EpisodeOfCare resources managed by a network (``urn:hub:network``).

Each record keeps the event id that stated it (alerts cite them as reasons) and the instant of the
version it came from (``as_of``, the event's ``occurred_at``). Records with a stable key (a
resource identifier, else the source's resource id) are versions of one thing: an admission is
replaced by its discharge, an active episode by its finished one. A version older than the one
kept is ignored; on equal instants the one applied last wins (Kafka keeps one patient's order).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

from hub.consent.recipients import NETWORK_SYSTEM, RPPS_SYSTEM
from hub.normalise.time import parse_fhir_datetime
from hub.pathway.network_id import NETWORK_ID_SYSTEM

#: Version of the JSON shape written by :meth:`PatientFacts.to_json`.
FACTS_FORMAT = 1

OBSERVATIONS_PER_CODE = 10
MAX_OBSERVATION_CODES = 100
MAX_CONDITIONS = 200
MAX_ENCOUNTERS = 100
MAX_ENROLMENTS = 50
MAX_IDENTIFIERS = 30

LOINC = "http://loinc.org"
INSEE_CODE_URL = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"

#: Observation statuses whose value is a result: registered (none yet), preliminary (may change),
#: cancelled and entered-in-error are not.
_RESULT_STATUSES = frozenset({"final", "amended", "corrected"})
_OPEN_EPISODE = frozenset({"active", "onhold"})
#: Address uses that say where the patient lives (an address without ``use`` is taken as home).
_HOME_USES = frozenset({"home", ""})
_PATIENT_LINKED = "patient.linked"
#: Date-only values (and the rare naive time left after normalisation) are read in UTC.
_UTC_ZONE = ZoneInfo("UTC")


def _utc(text: Any) -> datetime | None:
    """A FHIR date/dateTime/instant (or the hub's ISO instants) as UTC, or None."""
    return parse_fhir_datetime(text, _UTC_ZONE) if isinstance(text, str) else None


# -- records ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConditionFact:
    """One Condition: its codings, statuses, and the event that stated it."""

    key: str
    event_id: str
    codes: tuple[tuple[str, str], ...]
    clinical_status: str | None
    verification_status: str | None
    as_of: datetime

    @property
    def active(self) -> bool:
        """Active, recurrence or relapse (or no clinical status), and neither refuted nor in error."""
        if self.verification_status in ("refuted", "entered-in-error"):
            return False
        return self.clinical_status in (None, "active", "recurrence", "relapse")


@dataclass(frozen=True)
class ObservationFact:
    """One numeric result under one LOINC code, in the unit the pathway gave it (canonical UCUM)."""

    key: str
    event_id: str
    value: float
    unit: str
    at: datetime


@dataclass(frozen=True)
class EncounterFact:
    """One encounter (a stay's admission and discharge are two versions of one key)."""

    key: str
    event_id: str
    classes: tuple[str, ...]
    status: str
    start: datetime | None
    end: datetime | None
    service_types: tuple[tuple[str, str], ...]
    as_of: datetime


@dataclass(frozen=True)
class EnrolmentFact:
    """An EpisodeOfCare managed by a network: the patient is followed while it is active."""

    key: str
    network_id: str
    event_id: str
    active: bool
    as_of: datetime


@dataclass(frozen=True)
class Address:
    """The codes of one home address: postal code and INSEE commune code, when given."""

    postal_code: str | None = None
    insee_code: str | None = None


@dataclass(frozen=True)
class Residence:
    """The patient's home addresses, from the latest Patient resource that gave any."""

    addresses: tuple[Address, ...]
    event_id: str
    as_of: datetime


@dataclass(frozen=True)
class BirthDate:
    """``Patient.birthDate`` as written (YYYY, YYYY-MM or YYYY-MM-DD)."""

    value: str
    event_id: str
    as_of: datetime


@dataclass(frozen=True)
class GpDeclaration:
    """The GPs (RPPS numbers) one source's Patient resource declares; empty when it withdrew them."""

    source_id: str
    rpps: tuple[str, ...]
    event_id: str
    as_of: datetime


@dataclass(frozen=True)
class PatientFacts:
    """Everything criteria and alerts read about one patient (network patient id)."""

    patient_id: str
    birth_date: BirthDate | None = None
    residence: Residence | None = None
    gps: tuple[GpDeclaration, ...] = ()
    #: ``(system, value)`` of the patient's identifiers in the sources, the hub's own id excluded.
    identifiers: tuple[tuple[str, str], ...] = ()
    conditions: tuple[ConditionFact, ...] = ()
    #: LOINC code → results, newest first.
    observations: Mapping[str, tuple[ObservationFact, ...]] = field(default_factory=dict)
    encounters: tuple[EncounterFact, ...] = ()
    enrolments: tuple[EnrolmentFact, ...] = ()

    @classmethod
    def empty(cls, patient_id: str) -> PatientFacts:
        """Facts of a patient the stage has not seen yet."""
        return cls(patient_id)

    @property
    def practitioners(self) -> tuple[str, ...]:
        """RPPS numbers of the patient's declared GPs, across sources, sorted."""
        return tuple(sorted({rpps for declaration in self.gps for rpps in declaration.rpps}))

    def identifiers_in(self, systems: Iterable[str]) -> list[dict[str, str]]:
        """The patient's identifiers in ``systems`` only (those a GP's own software knows), as FHIR
        ``{system, value}`` objects."""
        wanted = set(systems)
        return [{"system": s, "value": v} for s, v in self.identifiers if s in wanted]

    def active_enrolments(self, network_id: str) -> tuple[EnrolmentFact, ...]:
        """The episodes of care in which ``network_id`` follows the patient now."""
        return tuple(e for e in self.enrolments if e.network_id == network_id and e.active)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the faust table's value); :meth:`from_json` reads it back exactly."""
        return _facts_json(self)

    @classmethod
    def from_json(cls, data: Any) -> PatientFacts | None:
        """Facts from :meth:`to_json` output (a dict, or its JSON text); None when unreadable.

        Never raises: the stage starts again from :meth:`empty` and logs that it did.
        """
        try:
            document = json.loads(data) if isinstance(data, str | bytes | bytearray) else data
            return _facts_from_json(document)
        except (KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError):
            return None

    def merged_with(self, other: PatientFacts) -> PatientFacts:
        """These facts and another identity's of the same person (after ``patient.linked``), as one.

        Every record of ``other`` is applied as if its event arrived now: the later version wins.
        """
        merged = self
        if other.birth_date is not None and _newer(other.birth_date, merged.birth_date):
            merged = replace(merged, birth_date=other.birth_date)
        if other.residence is not None and _newer(other.residence, merged.residence):
            merged = replace(merged, residence=other.residence)
        for declaration in other.gps:
            merged = _declare_gps(merged, declaration)
        merged = replace(merged, identifiers=_identifiers(merged.identifiers, other.identifiers))
        for condition in other.conditions:
            merged = replace(
                merged, conditions=_bounded(_upsert(merged.conditions, condition), MAX_CONDITIONS)
            )
        for code, results in other.observations.items():
            for result in results:
                merged = replace(merged, observations=_add_observation(merged.observations, code, result))
        for encounter in other.encounters:
            merged = replace(
                merged, encounters=_bounded(_upsert(merged.encounters, encounter), MAX_ENCOUNTERS)
            )
        for enrolment in other.enrolments:
            merged = replace(
                merged, enrolments=_bounded(_upsert(merged.enrolments, enrolment), MAX_ENROLMENTS)
            )
        return merged


def replaced_patient_ids(event: Mapping[str, Any]) -> tuple[str, ...]:
    """The network ids a ``patient.linked`` event folds into its patient (merge their facts in)."""
    if event.get("kind") != _PATIENT_LINKED:
        return ()
    resource = event.get("resource")
    links = resource.get("link") if isinstance(resource, dict) else None
    found = []
    for link in links if isinstance(links, list) else ():
        other = link.get("other") if isinstance(link, dict) else None
        identifier = other.get("identifier") if isinstance(other, dict) else None
        if isinstance(identifier, dict) and identifier.get("system") == NETWORK_ID_SYSTEM:
            value = identifier.get("value")
            if isinstance(value, str) and value:
                found.append(value)
    return tuple(found)


# -- applying one event -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    event_id: str
    source_id: str
    occurred_at: datetime
    resource: Mapping[str, Any]


def apply_event(facts: PatientFacts, event: Mapping[str, Any]) -> PatientFacts:
    """``facts`` with one pathway event folded in; ``facts`` itself when the event changes nothing.

    An event about another patient, without event id or readable ``occurred_at``, or about a
    resource type criteria do not read, is ignored. ``patient.linked`` events carry no facts: merge
    the replaced ids' facts in with :meth:`PatientFacts.merged_with` (see :func:`replaced_patient_ids`).
    """
    parsed = _parse_event(facts, event)
    if parsed is None:
        return facts
    handler = _HANDLERS.get(str(parsed.resource.get("resourceType", "")))
    return facts if handler is None else handler(facts, parsed)


def _parse_event(facts: PatientFacts, event: Mapping[str, Any]) -> _Event | None:
    if not isinstance(event, Mapping) or event.get("patient_id") != facts.patient_id:
        return None
    if event.get("kind") == _PATIENT_LINKED:
        return None
    event_id, resource = event.get("event_id"), event.get("resource")
    occurred = _utc(event.get("occurred_at"))
    if not isinstance(event_id, str) or not event_id or not isinstance(resource, dict) or occurred is None:
        return None
    source = event.get("source")
    source_id = source.get("id") if isinstance(source, dict) else None
    return _Event(event_id, source_id if isinstance(source_id, str) else "", occurred, resource)


def _resource_key(event: _Event) -> str:
    """Identifier first (global), then the source's resource id, then the event (a one-off)."""
    resource = event.resource
    resource_type = str(resource.get("resourceType"))
    identifiers = resource.get("identifier")
    for identifier in identifiers if isinstance(identifiers, list) else ():
        if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
            return f"{resource_type}|identifier|{identifier['system']}|{identifier['value']}"
    if isinstance(resource.get("id"), str) and resource["id"]:
        return f"{resource_type}|id|{event.source_id}|{resource['id']}"
    return f"{resource_type}|event|{event.event_id}"


def _codings(value: Any) -> Iterator[tuple[str, str]]:
    """``(system, code)`` of each Coding of a CodeableConcept (or a list of them, or a bare Coding)."""
    for concept in value if isinstance(value, list) else [value]:
        if not isinstance(concept, dict):
            continue
        codings = concept.get("coding")
        for coding in codings if isinstance(codings, list) else [concept]:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str) and coding["code"]:
                system = coding.get("system")
                yield (system if isinstance(system, str) else ""), coding["code"]


def _status_code(value: Any) -> str | None:
    """A status CodeableConcept's code (R4), or a plain code string (as STU3 wrote it)."""
    if isinstance(value, str):
        return value
    return next((code for _, code in _codings(value)), None)


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def as_of(self) -> datetime: ...


_Versioned = TypeVar("_Versioned", bound=_Keyed)


def _upsert(records: tuple[_Versioned, ...], record: _Versioned) -> tuple[_Versioned, ...]:
    """Records with ``record`` in place of its key's current version, unless that one is newer."""
    current = next((item for item in records if item.key == record.key), None)
    if current is not None and (current.as_of > record.as_of or current == record):
        return records
    return (*[item for item in records if item.key != record.key], record)


def _bounded(records: tuple[_Versioned, ...], limit: int) -> tuple[_Versioned, ...]:
    """At most ``limit`` records: the oldest versions are forgotten first."""
    if len(records) <= limit:
        return records
    return tuple(sorted(records, key=lambda item: item.as_of)[-limit:])


def _newer(record: BirthDate | Residence, current: BirthDate | Residence | None) -> bool:
    return current is None or record.as_of >= current.as_of


def _apply_patient(facts: PatientFacts, event: _Event) -> PatientFacts:
    resource = event.resource
    updated = facts
    birth = resource.get("birthDate")
    if isinstance(birth, str) and birth:
        record = BirthDate(birth, event.event_id, event.occurred_at)
        if _newer(record, facts.birth_date) and (facts.birth_date is None or facts.birth_date.value != birth):
            updated = replace(updated, birth_date=record)
    addresses = _home_addresses(resource.get("address"))
    if addresses:
        residence = Residence(addresses, event.event_id, event.occurred_at)
        current = facts.residence
        if _newer(residence, current) and (current is None or current.addresses != addresses):
            updated = replace(updated, residence=residence)
    rpps = _declared_rpps(resource.get("generalPractitioner"))
    current_gp = next((gp for gp in facts.gps if gp.source_id == event.source_id), None)
    if rpps or current_gp is not None:
        # A source's later Patient without GP withdraws that source's declaration.
        updated = _declare_gps(
            updated, GpDeclaration(event.source_id, rpps, event.event_id, event.occurred_at)
        )
    found = []
    identifiers = resource.get("identifier")
    for identifier in identifiers if isinstance(identifiers, list) else ():
        if not isinstance(identifier, dict):
            continue
        system, value = identifier.get("system"), identifier.get("value")
        if (
            isinstance(system, str)
            and isinstance(value, str)
            and system not in ("", NETWORK_ID_SYSTEM)
            and value
        ):
            found.append((system, value))
    merged = _identifiers(updated.identifiers, found)
    return updated if merged == updated.identifiers else replace(updated, identifiers=merged)


def _declare_gps(facts: PatientFacts, declaration: GpDeclaration) -> PatientFacts:
    current = next((gp for gp in facts.gps if gp.source_id == declaration.source_id), None)
    if current is not None and (current.as_of > declaration.as_of or current.rpps == declaration.rpps):
        return facts
    others = tuple(gp for gp in facts.gps if gp.source_id != declaration.source_id)
    return replace(facts, gps=(*others, declaration))


def _identifiers(
    known: tuple[tuple[str, str], ...], found: Iterable[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    merged = tuple(dict.fromkeys((*known, *found)))
    return merged[-MAX_IDENTIFIERS:]


def _declared_rpps(references: Any) -> tuple[str, ...]:
    """RPPS numbers named by identifier in ``Patient.generalPractitioner`` (literal references name
    no one the hub can address)."""
    found = []
    for reference in references if isinstance(references, list) else ():
        identifier = reference.get("identifier") if isinstance(reference, dict) else None
        if isinstance(identifier, dict) and identifier.get("system") == RPPS_SYSTEM:
            value = identifier.get("value")
            if isinstance(value, str) and value:
                found.append(value)
    return tuple(sorted(set(found)))


def _home_addresses(addresses: Any) -> tuple[Address, ...]:
    found = []
    for address in addresses if isinstance(addresses, list) else ():
        if not isinstance(address, dict) or str(address.get("use", "")) not in _HOME_USES:
            continue
        postal = address.get("postalCode")
        postal = postal.strip() if isinstance(postal, str) and postal.strip() else None
        insee = _insee_code(address.get("extension"))
        if postal or insee:
            found.append(Address(postal, insee))
    return tuple(dict.fromkeys(found))


def _insee_code(extensions: Any) -> str | None:
    """The FR Core INSEE commune code of an address (valueCoding, or valueCode/valueString)."""
    for extension in extensions if isinstance(extensions, list) else ():
        if not isinstance(extension, dict) or extension.get("url") != INSEE_CODE_URL:
            continue
        coding = extension.get("valueCoding")
        value = coding.get("code") if isinstance(coding, dict) else None
        value = value or extension.get("valueCode") or extension.get("valueString")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _apply_condition(facts: PatientFacts, event: _Event) -> PatientFacts:
    resource = event.resource
    record = ConditionFact(
        key=_resource_key(event),
        event_id=event.event_id,
        codes=tuple(dict.fromkeys(_codings(resource.get("code")))),
        clinical_status=_status_code(resource.get("clinicalStatus")),
        verification_status=_status_code(resource.get("verificationStatus")),
        as_of=event.occurred_at,
    )
    conditions = _bounded(_upsert(facts.conditions, record), MAX_CONDITIONS)
    return facts if conditions == facts.conditions else replace(facts, conditions=conditions)


def _apply_observation(facts: PatientFacts, event: _Event) -> PatientFacts:
    resource = event.resource
    codes = [code for system, code in _codings(resource.get("code")) if system == LOINC]
    status = resource.get("status")
    key = _resource_key(event)
    if status not in _RESULT_STATUSES:
        # A withdrawn result (entered-in-error, cancelled) takes its earlier versions with it.
        return _drop_observation(facts, codes, key) if status in ("entered-in-error", "cancelled") else facts
    quantity = resource.get("valueQuantity")
    if not isinstance(quantity, dict) or not codes:
        return facts
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return facts
    unit = quantity.get("code") or quantity.get("unit")
    effective = resource.get("effectivePeriod")
    at = (
        _utc(resource.get("effectiveDateTime"))
        or _utc(effective.get("start") if isinstance(effective, dict) else None)
        or _utc(resource.get("effectiveInstant"))
        or _utc(resource.get("issued"))
        or event.occurred_at
    )
    record = ObservationFact(key, event.event_id, float(value), unit if isinstance(unit, str) else "", at)
    observations = facts.observations
    for code in dict.fromkeys(codes):
        observations = _add_observation(observations, code, record)
    return facts if observations is facts.observations else replace(facts, observations=observations)


def _add_observation(
    observations: Mapping[str, tuple[ObservationFact, ...]], code: str, record: ObservationFact
) -> Mapping[str, tuple[ObservationFact, ...]]:
    current = observations.get(code, ())
    if any(item.event_id == record.event_id for item in current):
        return observations
    if any(item.key == record.key and item.at > record.at for item in current):
        return observations  # a later version of this result is kept
    kept = [item for item in current if item.key != record.key]
    ranked = sorted([*kept, record], key=lambda item: item.at, reverse=True)
    results = tuple(ranked[:OBSERVATIONS_PER_CODE])
    if results == current:
        return observations
    updated = {**observations, code: results}
    if len(updated) > MAX_OBSERVATION_CODES:
        # Forget the code whose newest result is the oldest.
        stale = min(updated, key=lambda name: updated[name][0].at)
        del updated[stale]
    return updated


def _drop_observation(facts: PatientFacts, codes: list[str], key: str) -> PatientFacts:
    observations = dict(facts.observations)
    changed = False
    for code in codes:
        kept = tuple(item for item in observations.get(code, ()) if item.key != key)
        if kept != observations.get(code, ()):
            changed = True
            if kept:
                observations[code] = kept
            else:
                del observations[code]
    return replace(facts, observations=observations) if changed else facts


def _apply_encounter(facts: PatientFacts, event: _Event) -> PatientFacts:
    resource = event.resource
    period = resource.get("period")
    period = period if isinstance(period, dict) else {}
    record = EncounterFact(
        key=_resource_key(event),
        event_id=event.event_id,
        classes=tuple(dict.fromkeys(code for _, code in _codings(resource.get("class")))),
        status=str(resource.get("status", "")),
        start=_utc(period.get("start")),
        end=_utc(period.get("end")),
        service_types=tuple(dict.fromkeys(_codings(resource.get("serviceType")))),
        as_of=event.occurred_at,
    )
    encounters = _bounded(_upsert(facts.encounters, record), MAX_ENCOUNTERS)
    return facts if encounters == facts.encounters else replace(facts, encounters=encounters)


def _apply_episode(facts: PatientFacts, event: _Event) -> PatientFacts:
    manager = event.resource.get("managingOrganization")
    identifier = manager.get("identifier") if isinstance(manager, dict) else None
    if not isinstance(identifier, dict) or identifier.get("system") != NETWORK_SYSTEM:
        return facts
    network_id = identifier.get("value")
    if not isinstance(network_id, str) or not network_id:
        return facts
    record = EnrolmentFact(
        key=_resource_key(event),
        network_id=network_id,
        event_id=event.event_id,
        active=event.resource.get("status") in _OPEN_EPISODE,
        as_of=event.occurred_at,
    )
    enrolments = _bounded(_upsert(facts.enrolments, record), MAX_ENROLMENTS)
    return facts if enrolments == facts.enrolments else replace(facts, enrolments=enrolments)


_HANDLERS = {
    "Patient": _apply_patient,
    "Condition": _apply_condition,
    "Observation": _apply_observation,
    "Encounter": _apply_encounter,
    "EpisodeOfCare": _apply_episode,
}


# -- JSON ---------------------------------------------------------------------------------------------


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _optional_instant(moment: datetime | None) -> str | None:
    return None if moment is None else _instant(moment)


def _instant_from(text: Any) -> datetime:
    if not isinstance(text, str):
        raise TypeError("expected an instant")
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError("naive instant in stored facts")
    return moment


def _optional_instant_from(text: Any) -> datetime | None:
    return None if text is None else _instant_from(text)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string in stored facts")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _pairs(raw: Any) -> tuple[tuple[str, str], ...]:
    return tuple((_text(system), _text(code)) for system, code in raw)


def _facts_json(facts: PatientFacts) -> dict[str, Any]:
    birth, residence = facts.birth_date, facts.residence
    return {
        "v": FACTS_FORMAT,
        "patient_id": facts.patient_id,
        "birth_date": None
        if birth is None
        else {"value": birth.value, "event_id": birth.event_id, "as_of": _instant(birth.as_of)},
        "residence": None
        if residence is None
        else {
            "addresses": [
                {"postal_code": a.postal_code, "insee_code": a.insee_code} for a in residence.addresses
            ],
            "event_id": residence.event_id,
            "as_of": _instant(residence.as_of),
        },
        "gps": [
            {
                "source": gp.source_id,
                "rpps": list(gp.rpps),
                "event_id": gp.event_id,
                "as_of": _instant(gp.as_of),
            }
            for gp in facts.gps
        ],
        "identifiers": [{"system": system, "value": value} for system, value in facts.identifiers],
        "conditions": [
            {
                "key": c.key,
                "event_id": c.event_id,
                "codes": [list(pair) for pair in c.codes],
                "clinical_status": c.clinical_status,
                "verification_status": c.verification_status,
                "as_of": _instant(c.as_of),
            }
            for c in facts.conditions
        ],
        "observations": {
            code: [
                {"key": o.key, "event_id": o.event_id, "value": o.value, "unit": o.unit, "at": _instant(o.at)}
                for o in results
            ]
            for code, results in facts.observations.items()
        },
        "encounters": [
            {
                "key": e.key,
                "event_id": e.event_id,
                "classes": list(e.classes),
                "status": e.status,
                "start": _optional_instant(e.start),
                "end": _optional_instant(e.end),
                "service_types": [list(pair) for pair in e.service_types],
                "as_of": _instant(e.as_of),
            }
            for e in facts.encounters
        ],
        "enrolments": [
            {
                "key": e.key,
                "network": e.network_id,
                "event_id": e.event_id,
                "active": e.active,
                "as_of": _instant(e.as_of),
            }
            for e in facts.enrolments
        ],
    }


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number in stored facts")
    return float(value)


def _facts_from_json(document: Any) -> PatientFacts:
    if document.get("v") != FACTS_FORMAT:
        raise ValueError("unknown facts format")
    birth, residence = document["birth_date"], document["residence"]
    enrolments = []
    for e in document["enrolments"]:
        if not isinstance(e["active"], bool):
            raise TypeError("expected a boolean in stored facts")
        enrolments.append(
            EnrolmentFact(
                _text(e["key"]),
                _text(e["network"]),
                _text(e["event_id"]),
                e["active"],
                _instant_from(e["as_of"]),
            )
        )
    return PatientFacts(
        patient_id=_text(document["patient_id"]),
        birth_date=None
        if birth is None
        else BirthDate(_text(birth["value"]), _text(birth["event_id"]), _instant_from(birth["as_of"])),
        residence=None
        if residence is None
        else Residence(
            tuple(
                Address(_optional_text(a["postal_code"]), _optional_text(a["insee_code"]))
                for a in residence["addresses"]
            ),
            _text(residence["event_id"]),
            _instant_from(residence["as_of"]),
        ),
        gps=tuple(
            GpDeclaration(
                _text(gp["source"]),
                tuple(_text(rpps) for rpps in gp["rpps"]),
                _text(gp["event_id"]),
                _instant_from(gp["as_of"]),
            )
            for gp in document["gps"]
        ),
        identifiers=tuple((_text(i["system"]), _text(i["value"])) for i in document["identifiers"]),
        conditions=tuple(
            ConditionFact(
                _text(c["key"]),
                _text(c["event_id"]),
                _pairs(c["codes"]),
                _optional_text(c["clinical_status"]),
                _optional_text(c["verification_status"]),
                _instant_from(c["as_of"]),
            )
            for c in document["conditions"]
        ),
        observations={
            _text(code): tuple(
                ObservationFact(
                    _text(o["key"]),
                    _text(o["event_id"]),
                    _number(o["value"]),
                    _text(o["unit"]),
                    _instant_from(o["at"]),
                )
                for o in results
            )
            for code, results in document["observations"].items()
        },
        encounters=tuple(
            EncounterFact(
                _text(e["key"]),
                _text(e["event_id"]),
                tuple(_text(c) for c in e["classes"]),
                _text(e["status"]),
                _optional_instant_from(e["start"]),
                _optional_instant_from(e["end"]),
                _pairs(e["service_types"]),
                _instant_from(e["as_of"]),
            )
            for e in document["encounters"]
        ),
        enrolments=tuple(enrolments),
    )
