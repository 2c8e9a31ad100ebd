"""What decides sharing for one patient: declared GPs, care teams, treating organisations, consents.

The state is built by :func:`apply` from the FHIR resources of the patient's pathway events, in the
order the share stage processes them, and lives in a faust table: :meth:`PatientShareState.to_json`
and :meth:`PatientShareState.from_json` carry it through the changelog. Unreadable state is never an
exception: it comes back marked ``corrupt`` so the policy denies, and says why in the audit record.

Every record keeps the instant of the version it came from (``as_of``); an older version of the same
resource arriving later (a replay, a late resend) is ignored, so a stale "active" cannot undo a
revocation or reopen a closed stay. A late revocation, though, still applies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

from hub.consent.recipients import Identifier
from hub.consent.sensitivity import label_categories
from hub.normalise.references import SOURCE_REFERENCE_URL
from hub.normalise.time import parse_fhir_datetime
from hub.pathway.network_id import NETWORK_ID_SYSTEM

#: Stable code of a Consent the hub cannot interpret; to be added to ``hub.errors.ErrorCode``.
CONSENT_UNINTERPRETABLE = "consent.uninterpretable"

#: Version of the JSON shape written by :meth:`PatientShareState.to_json`. Optional keys added since
#: (a consent's ``source_reference``) are read when present, so states stored before them still load.
STATE_FORMAT = 1


PERMIT: Final = "permit"
DENY: Final = "deny"
ProvisionType = Literal["permit", "deny"]

CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
#: Consent scopes that govern sharing between professionals; research and ADR consents do not.
SHARING_SCOPES = frozenset({"patient-privacy", "treatment"})
CONSENT_STATUSES = frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"})
#: A later version with one of these statuses withdraws the consent it replaces.
REVOKING_STATUSES = frozenset({"rejected", "inactive", "entered-in-error"})
#: policyRule codes (v3-ActCode consent directives) that give a provision without a type its decision.
_POLICY_RULE_TYPES: Mapping[str, ProvisionType] = {
    "OPTIN": PERMIT,
    "OPTINR": PERMIT,
    "OPTOUT": DENY,
    "OPTOUTE": DENY,
}
#: Actor roles (v3-ParticipationType) naming who receives information; other roles (author,
#: custodian...) would make the actor a filter on the data, which the hub does not apply.
_RECIPIENT_ROLES = frozenset({"IRCP", "PRCP"})
_RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
_CONSENT_ACTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentaction"

#: Involvements a state keeps besides the open ones: the latest ended (or never counting) ones. An
#: ended stay counts only for the recency window after it (`recency_days`, 90 in config/policy.json),
#: so forgetting the oldest changes a decision only for a patient with more stays than this in that
#: window; it keeps the state, rewritten whole on every change, bounded for patients with years of
#: encounters (docs/STATE.md).
MAX_CLOSED_INVOLVEMENTS = 200

_OPEN_ENCOUNTER = frozenset({"arrived", "triaged", "in-progress", "onleave"})
_ENDED_ENCOUNTER = frozenset({"finished", "unknown"})
_OPEN_EPISODE = frozenset({"active", "onhold"})
_ENDED_EPISODE = frozenset({"finished"})

#: Date-only values in consents and teams are read in UTC: the pathway carries no zone for them.
_DATE_ZONE = ZoneInfo("UTC")
_ONE_DAY = timedelta(days=1)


# -- data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A FHIR Period as instants; ``end`` is exclusive (a date-only end covers its whole day)."""

    start: datetime | None = None
    end: datetime | None = None

    def covers(self, moment: datetime) -> bool:
        """True when ``moment`` lies in the period; an open side is unbounded."""
        return (self.start is None or self.start <= moment) and (self.end is None or moment < self.end)

    def to_json(self) -> dict[str, str]:
        """``{start?, end?}`` with full-precision UTC instants."""
        return {
            name: _instant_json(moment)
            for name, moment in (("start", self.start), ("end", self.end))
            if moment is not None
        }


@dataclass(frozen=True)
class Provision:
    """One Consent provision (the root or a nested exception), with the conditions the hub checks.

    ``unchecked`` names narrowing elements the hub cannot evaluate (``code``, ``data``, ``purpose``,
    a ``class`` or ``action`` outside FHIR's code systems): a permit carrying one is read as
    permitting nothing; a deny carrying one is applied as if it were absent (it then denies more).
    """

    type: ProvisionType
    actors: tuple[Identifier, ...] = ()
    labels: frozenset[str] = frozenset()
    period: Period = field(default_factory=Period)
    data_period: Period = field(default_factory=Period)
    classes: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()
    provisions: tuple[Provision, ...] = ()


@dataclass(frozen=True)
class ConsentRecord:
    """The latest version of one Consent; ``provision`` is None when it is not active.

    ``source_reference`` is how its source names it (``Consent/<id>`` as sent), so that a DPO can find
    it there; None when the event did not carry it (a Consent sent without id, an older state).
    """

    key: str
    source_id: str
    event_id: str
    status: str
    scope: str
    as_of: datetime
    provision: Provision | None
    source_reference: str | None = None

    @property
    def in_force(self) -> bool:
        """Only an active consent counts; draft, proposed and revoked ones do not."""
        return self.status == "active" and self.provision is not None


@dataclass(frozen=True)
class CareTeamMember:
    """A CareTeam participant: who (a practitioner or organisation), for whom, and when."""

    member: Identifier | None
    on_behalf_of: Identifier | None
    period: Period = field(default_factory=Period)


@dataclass(frozen=True)
class CareTeamRecord:
    """The latest version of one CareTeam."""

    key: str
    source_id: str
    status: str
    period: Period
    members: tuple[CareTeamMember, ...]
    as_of: datetime


@dataclass(frozen=True)
class Involvement:
    """An organisation treating the patient: an encounter (serviceProvider) or an episode of care.

    An episode managed by an identifier of system ``urn:hub:network`` is a network enrolment. Open:
    counts; ended (``ended_at``): counts for the recency window after it; neither (planned,
    cancelled, entered in error): never counts.
    """

    key: str
    kind: Literal["encounter", "episode"]
    organization: Identifier
    open: bool
    ended_at: datetime | None
    as_of: datetime


@dataclass(frozen=True)
class GpDeclaration:
    """The GPs one source's latest Patient declares (Patient.generalPractitioner), by identifier."""

    source_id: str
    parties: tuple[Identifier, ...]
    as_of: datetime


@dataclass(frozen=True)
class PatientShareState:
    """Everything that decides what may be shared about one patient."""

    patient_id: str
    general_practitioners: tuple[GpDeclaration, ...] = ()
    care_teams: tuple[CareTeamRecord, ...] = ()
    involvements: tuple[Involvement, ...] = ()
    consents: tuple[ConsentRecord, ...] = ()
    #: True when the stored state could not be read: every decision for the patient is a deny.
    corrupt: bool = False
    corrupt_reason: str = ""
    #: Linked local ids whose state has not been merged in yet: until it has, every decision is a
    #: deny (an objection recorded under the other identity must not be missed).
    awaiting: tuple[str, ...] = ()

    def merged_with(self, other: PatientShareState) -> PatientShareState:
        """This state and another identity's of the same person, as one; the later version of a
        record wins, as when applying resources one by one. A corrupt side makes the result corrupt."""
        if self.corrupt or other.corrupt:
            return PatientShareState.corrupted(self.patient_id, "a linked identity's state is corrupt")
        merged = self
        for team in other.care_teams:
            merged = replace(merged, care_teams=_upsert(merged.care_teams, team)[0])
        for involvement in other.involvements:
            merged = replace(merged, involvements=_upsert(merged.involvements, involvement)[0])
        merged = replace(merged, involvements=_bounded_involvements(merged.involvements))
        for consent in other.consents:
            merged = replace(merged, consents=_upsert(merged.consents, consent)[0])
        for gp in other.general_practitioners:
            current = next((g for g in merged.general_practitioners if g.source_id == gp.source_id), None)
            if current is None or current.as_of < gp.as_of:
                others = tuple(g for g in merged.general_practitioners if g.source_id != gp.source_id)
                merged = replace(merged, general_practitioners=(*others, gp))
        return merged

    @classmethod
    def empty(cls, patient_id: str) -> PatientShareState:
        """The state of a patient the hub has just met: no team, no consent."""
        return cls(patient_id)

    @classmethod
    def corrupted(cls, patient_id: str, reason: str) -> PatientShareState:
        """A state that could not be read; ``reason`` never quotes the stored content."""
        return cls(patient_id, corrupt=True, corrupt_reason=reason)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the faust table's value); :meth:`from_json` reads it back exactly."""
        document: dict[str, Any] = {"v": STATE_FORMAT, "patient_id": self.patient_id}
        if self.corrupt:
            document["corrupt"] = self.corrupt_reason
            return document
        if self.awaiting:
            document["awaiting"] = list(self.awaiting)
        document["general_practitioners"] = [
            {
                "source": gp.source_id,
                "as_of": _instant_json(gp.as_of),
                "parties": [party.to_json() for party in gp.parties],
            }
            for gp in self.general_practitioners
        ]
        document["care_teams"] = [
            {
                "key": team.key,
                "source": team.source_id,
                "status": team.status,
                "period": team.period.to_json(),
                "as_of": _instant_json(team.as_of),
                "members": [
                    {
                        "member": _party_json(member.member),
                        "on_behalf_of": _party_json(member.on_behalf_of),
                        "period": member.period.to_json(),
                    }
                    for member in team.members
                ],
            }
            for team in self.care_teams
        ]
        document["involvements"] = [
            {
                "key": item.key,
                "kind": item.kind,
                "organization": item.organization.to_json(),
                "open": item.open,
                "ended_at": None if item.ended_at is None else _instant_json(item.ended_at),
                "as_of": _instant_json(item.as_of),
            }
            for item in self.involvements
        ]
        document["consents"] = [_consent_json(consent) for consent in self.consents]
        return document

    @classmethod
    def from_json(cls, data: Any) -> PatientShareState:
        """The state from :meth:`to_json` output (a dict, or its JSON text); never raises.

        Anything unreadable gives a state marked corrupt, with the patient id when it can be read.
        """
        try:
            document = json.loads(data) if isinstance(data, str | bytes | bytearray) else data
        except (ValueError, UnicodeDecodeError):
            return cls.corrupted("", "stored state is not JSON")
        patient_id = document.get("patient_id") if isinstance(document, dict) else None
        patient_id = patient_id if isinstance(patient_id, str) else ""
        try:
            return _state_from_json(document)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # The exception text may quote stored values: only its type is kept.
            return cls.corrupted(patient_id, f"stored state unreadable ({type(exc).__name__})")


@dataclass(frozen=True)
class StateUpdate:
    """The result of applying one resource: the state to store, and what was done, in words."""

    state: PatientShareState
    changed: bool
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsentRejected:
    """A Consent the hub cannot interpret: refused with a stable code; the state is unchanged.

    ``detail`` names the faulty element and never quotes clinical content.
    """

    detail: str
    code: str = CONSENT_UNINTERPRETABLE


# -- apply --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    event_id: str
    occurred_at: datetime
    source_id: str


def apply(
    state: PatientShareState,
    resource: Mapping[str, Any],
    *,
    event_id: str,
    occurred_at: datetime,
    source_id: str,
) -> StateUpdate | ConsentRejected:
    """Fold one pathway event's resource into the patient's state; pure, never raises on bad input.

    Patient, CareTeam, Encounter, EpisodeOfCare and Consent change the state; other resources leave
    it as it is. A Consent that cannot be interpreted gives :class:`ConsentRejected`.
    """
    if state.corrupt:
        return StateUpdate(state, False, ("state is corrupt and is not updated; rebuild it",))
    resource_type = str(resource.get("resourceType", ""))
    handler = _HANDLERS.get(resource_type)
    if handler is None:
        return StateUpdate(state, False, (f"{resource_type or 'resource'}: no effect on sharing",))
    return handler(state, resource, _Context(event_id, occurred_at, source_id))


class _Versioned(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def as_of(self) -> datetime: ...


_Keyed = TypeVar("_Keyed", bound=_Versioned)


def _upsert(records: tuple[_Keyed, ...], record: _Keyed) -> tuple[tuple[_Keyed, ...], bool]:
    """Records with ``record`` in place of its key's earlier version; False when ``record`` is stale.

    Withdrawn versions are kept (not removed) so that they go on guarding against stale ones.
    """
    current = next((item for item in records if item.key == record.key), None)
    if current is not None and current.as_of > record.as_of:
        return records, False
    kept = tuple(item for item in records if item.key != record.key)
    return (*kept, record), True


def _bounded_involvements(items: tuple[Involvement, ...]) -> tuple[Involvement, ...]:
    """Every open involvement and the :data:`MAX_CLOSED_INVOLVEMENTS` latest others, in their order.

    A forgotten one no longer guards against a stale version of itself: an old "in progress" of a
    stay forgotten years ago would count again until its end is sent again.
    """
    closed = [item for item in items if not item.open]
    if len(closed) <= MAX_CLOSED_INVOLVEMENTS:
        return items
    by_age = sorted(closed, key=lambda item: item.ended_at or item.as_of)
    forgotten = {item.key for item in by_age[: len(closed) - MAX_CLOSED_INVOLVEMENTS]}
    return tuple(item for item in items if item.key not in forgotten)


def _resource_key(resource: Mapping[str, Any], context: _Context) -> tuple[str, bool]:
    """A stable key for the versions of one resource, and whether it comes from the resource itself.

    Identifier first (global), then the source's id, then the event id (a one-off resource).
    """
    resource_type = str(resource["resourceType"])
    for identifier in resource.get("identifier", ()) if isinstance(resource.get("identifier"), list) else ():
        if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
            return f"{resource_type}|identifier|{identifier['system']}|{identifier['value']}", True
    if isinstance(resource.get("id"), str) and resource["id"]:
        return f"{resource_type}|id|{context.source_id}|{resource['id']}", True
    return f"{resource_type}|event|{context.event_id}", False


def _reference_identifier(reference: Any) -> Identifier | None:
    """The identifier a FHIR Reference names, or None (a literal reference names no one the hub knows)."""
    if not isinstance(reference, dict):
        return None
    identifier = reference.get("identifier")
    if isinstance(identifier, dict):
        system, value = identifier.get("system"), identifier.get("value")
        if isinstance(system, str) and system and isinstance(value, str) and value:
            return Identifier(system, value)
    return None


def _apply_patient(state: PatientShareState, resource: Mapping[str, Any], context: _Context) -> StateUpdate:
    parties: list[Identifier] = []
    steps: list[str] = []
    references = resource.get("generalPractitioner")
    for index, reference in enumerate(references if isinstance(references, list) else ()):
        party = _reference_identifier(reference)
        if party is None:
            steps.append(f"generalPractitioner[{index}] has no identifier: it cannot name a recipient")
        else:
            parties.append(party)
    current = next((gp for gp in state.general_practitioners if gp.source_id == context.source_id), None)
    if current is not None and current.as_of > context.occurred_at:
        return StateUpdate(state, False, (*steps, "Patient older than the one already applied: ignored"))
    if current is None and not parties:
        return StateUpdate(state, False, (*steps, "Patient declares no GP by identifier"))
    others = tuple(gp for gp in state.general_practitioners if gp.source_id != context.source_id)
    # An emptied declaration is kept, like withdrawn records, to go on guarding against stale ones.
    declared = GpDeclaration(context.source_id, tuple(parties), context.occurred_at)
    steps.append(f"declared GPs from {context.source_id}: {len(parties)}")
    return StateUpdate(replace(state, general_practitioners=(*others, declared)), True, tuple(steps))


def _apply_care_team(state: PatientShareState, resource: Mapping[str, Any], context: _Context) -> StateUpdate:
    key, _ = _resource_key(resource, context)
    status = str(resource.get("status", ""))
    steps: list[str] = []
    members: list[CareTeamMember] = []
    try:
        team_period = _period(resource.get("period"))
    except _Refused:
        team_period = Period()
        steps.append("CareTeam period unreadable: no member counts")
    else:
        participants = resource.get("participant")
        for index, participant in enumerate(participants if isinstance(participants, list) else ()):
            member = _care_team_member(participant)
            if member is None:
                steps.append(f"participant[{index}] names no one by identifier or has a bad period")
            else:
                members.append(member)
    record = CareTeamRecord(key, context.source_id, status, team_period, tuple(members), context.occurred_at)
    teams, fresh = _upsert(state.care_teams, record)
    if not fresh:
        return StateUpdate(state, False, ("CareTeam older than the version already applied: ignored",))
    steps.append(f"CareTeam {status or 'without status'}: {len(members)} members")
    return StateUpdate(replace(state, care_teams=teams), True, tuple(steps))


def _care_team_member(participant: Any) -> CareTeamMember | None:
    if not isinstance(participant, dict):
        return None
    member = _reference_identifier(participant.get("member"))
    on_behalf_of = _reference_identifier(participant.get("onBehalfOf"))
    if member is None and on_behalf_of is None:
        return None
    try:
        period = _period(participant.get("period"))
    except _Refused:
        return None
    return CareTeamMember(member, on_behalf_of, period)


def _involvement_update(
    state: PatientShareState,
    resource: Mapping[str, Any],
    context: _Context,
    *,
    kind: Literal["encounter", "episode"],
    organization_field: str,
    open_statuses: frozenset[str],
    ended_statuses: frozenset[str],
) -> StateUpdate:
    key, _ = _resource_key(resource, context)
    status = str(resource.get("status", ""))
    organization = _reference_identifier(resource.get(organization_field))
    name = "Encounter" if kind == "encounter" else "EpisodeOfCare"
    if organization is None:
        return StateUpdate(
            state, False, (f"{name}.{organization_field} names no organisation by identifier",)
        )
    if status in open_statuses:
        record = Involvement(key, kind, organization, True, None, context.occurred_at)
    elif status in ended_statuses:
        period = resource.get("period")
        end_text = period.get("end") if isinstance(period, dict) else None
        ended = _instant(end_text, upper=True) if isinstance(end_text, str) else None
        # No readable end: the event's own time is the latest instant the stay is known to have lasted.
        record = Involvement(
            key, kind, organization, False, ended or context.occurred_at, context.occurred_at
        )
    else:
        # Planned, cancelled, entered in error...: kept, neither open nor ended, so it never counts.
        record = Involvement(key, kind, organization, False, None, context.occurred_at)
    involvements, fresh = _upsert(state.involvements, record)
    if not fresh:
        return StateUpdate(state, False, (f"{name} older than the version already applied: ignored",))
    involvements = _bounded_involvements(involvements)
    effect = "open" if record.open else "ended" if record.ended_at else "does not count"
    return StateUpdate(replace(state, involvements=involvements), True, (f"{name} {status}: {effect}",))


def _apply_encounter(state: PatientShareState, resource: Mapping[str, Any], context: _Context) -> StateUpdate:
    return _involvement_update(
        state,
        resource,
        context,
        kind="encounter",
        organization_field="serviceProvider",
        open_statuses=_OPEN_ENCOUNTER,
        ended_statuses=_ENDED_ENCOUNTER,
    )


def _apply_episode(state: PatientShareState, resource: Mapping[str, Any], context: _Context) -> StateUpdate:
    return _involvement_update(
        state,
        resource,
        context,
        kind="episode",
        organization_field="managingOrganization",
        open_statuses=_OPEN_EPISODE,
        ended_statuses=_ENDED_EPISODE,
    )


def _apply_consent(
    state: PatientShareState, resource: Mapping[str, Any], context: _Context
) -> StateUpdate | ConsentRejected:
    parsed = parse_consent(
        resource,
        patient_id=state.patient_id,
        event_id=context.event_id,
        occurred_at=context.occurred_at,
        source_id=context.source_id,
    )
    if isinstance(parsed, ConsentRejected):
        return parsed
    if parsed is None:
        return StateUpdate(state, False, ("Consent scope does not govern sharing: ignored",))
    consents, fresh = _upsert(state.consents, parsed)
    if not fresh and parsed.status in REVOKING_STATUSES:
        # A revocation errs on the patient's side: it applies even when it arrives after a newer
        # version, and keeps that version's instant so no older "active" can follow it.
        newest = max(consent.as_of for consent in state.consents if consent.key == parsed.key)
        consents, fresh = _upsert(state.consents, replace(parsed, as_of=newest))
    if not fresh:
        return StateUpdate(state, False, ("Consent older than the version already applied: ignored",))
    effect = f"{parsed.provision.type} in force" if parsed.in_force and parsed.provision else "not in force"
    return StateUpdate(replace(state, consents=consents), True, (f"Consent {parsed.status}: {effect}",))


_Handler = Callable[[PatientShareState, Mapping[str, Any], _Context], StateUpdate | ConsentRejected]
_HANDLERS: Mapping[str, _Handler] = {
    "Patient": _apply_patient,
    "CareTeam": _apply_care_team,
    "Encounter": _apply_encounter,
    "EpisodeOfCare": _apply_episode,
    "Consent": _apply_consent,
}


# -- consent parsing -----------------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside the parsers only, and turned into a value at their boundary."""


def parse_consent(
    resource: Mapping[str, Any],
    *,
    patient_id: str,
    event_id: str,
    occurred_at: datetime,
    source_id: str,
) -> ConsentRecord | ConsentRejected | None:
    """A Consent as the hub applies it; None when its scope does not govern sharing (research, ADR).

    Refused (:class:`ConsentRejected`): no patient or another patient, unknown status, no scope, a
    revocation that does not say which consent it revokes, and, for an active consent: no decision
    (neither ``provision.type`` nor an OPTIN/OPTOUT ``policyRule``), a nested provision without a type,
    an actor not named by identifier or in a non-recipient role, an unknown security label, a
    malformed period.
    """
    try:
        return _parse_consent(resource, patient_id, _Context(event_id, occurred_at, source_id))
    except _Refused as refused:
        return ConsentRejected(str(refused))


def _parse_consent(resource: Mapping[str, Any], patient_id: str, context: _Context) -> ConsentRecord | None:
    patient = resource.get("patient")
    if not isinstance(patient, dict) or not (patient.get("reference") or patient.get("identifier")):
        raise _Refused("Consent.patient is missing")
    named = _reference_identifier(patient)
    if named is not None and named.system == NETWORK_ID_SYSTEM and named.value != patient_id:
        raise _Refused("Consent.patient names another patient than the state it is applied to")
    status = resource.get("status")
    if status not in CONSENT_STATUSES:
        raise _Refused("Consent.status is missing or unknown")
    scopes = {
        code for system, code in _concept_codes(resource.get("scope")) if system == CONSENT_SCOPE_SYSTEM
    }
    if not scopes:
        raise _Refused("Consent.scope is missing or not from the consentscope code system")
    sharing = scopes & SHARING_SCOPES
    if not sharing:
        return None
    key, own_key = _resource_key(resource, context)
    if status != "active":
        if not own_key and status in REVOKING_STATUSES:
            raise _Refused(f"a {status} Consent must carry the identifier or id of the consent it revokes")
        provision = None
    else:
        provision = _provision(resource.get("provision") or {}, "provision", _root_type(resource))
    return ConsentRecord(
        key,
        context.source_id,
        context.event_id,
        str(status),
        min(sharing),
        context.occurred_at,
        provision,
        source_reference(resource),
    )


def source_reference(resource: Mapping[str, Any]) -> str | None:
    """The resource's ``Type/id`` as its source sent it (:data:`SOURCE_REFERENCE_URL`), or None."""
    meta = resource.get("meta")
    extensions = meta.get("extension") if isinstance(meta, dict) else None
    for extension in extensions if isinstance(extensions, list) else ():
        if isinstance(extension, dict) and extension.get("url") == SOURCE_REFERENCE_URL:
            value = extension.get("valueString")
            return value if isinstance(value, str) and value else None
    return None


def _root_type(resource: Mapping[str, Any]) -> Any:
    """The root decision: ``provision.type``, else the one an OPTIN/OPTOUT ``policyRule`` implies."""
    provision = resource.get("provision")
    if isinstance(provision, dict) and "type" in provision:
        return provision["type"]
    rules = [code for _, code in _concept_codes(resource.get("policyRule")) if code in _POLICY_RULE_TYPES]
    if not rules:
        raise _Refused("Consent says neither permit nor deny (no provision.type, no OPTIN/OPTOUT policyRule)")
    return _POLICY_RULE_TYPES[rules[0]]


def _provision(raw: Any, where: str, inherited: Any) -> Provision:
    if not isinstance(raw, dict):
        raise _Refused(f"{where} is not an object")
    kind = raw.get("type", inherited)
    if kind not in (PERMIT, DENY):
        raise _Refused(f"{where}.type is missing or neither permit nor deny")
    actors = tuple(_actor(actor, f"{where}.actor[{n}]") for n, actor in enumerate(_list(raw, "actor", where)))
    labels: set[str] = set()
    for n, coding in enumerate(_list(raw, "securityLabel", where)):
        categories = label_categories(coding) if isinstance(coding, dict) else None
        if categories is None:
            raise _Refused(f"{where}.securityLabel[{n}] is not a sensitivity label the hub knows")
        labels |= categories
    unchecked = [name for name in ("code", "data", "purpose") if raw.get(name)]
    classes = []
    for coding in _list(raw, "class", where):
        if isinstance(coding, dict) and coding.get("system") == _RESOURCE_TYPES_SYSTEM and coding.get("code"):
            classes.append(str(coding["code"]))
        else:
            unchecked.append("class")
    actions = []
    for concept in _list(raw, "action", where):
        codes = [code for system, code in _concept_codes(concept) if system == _CONSENT_ACTION_SYSTEM]
        if codes:
            actions.extend(codes)
        else:
            unchecked.append("action")
    nested = tuple(
        # A nested provision is an exception: FHIR requires its own type, so none is inherited.
        _provision(child, f"{where}.provision[{n}]", None)
        for n, child in enumerate(_list(raw, "provision", where))
    )
    return Provision(
        type=kind,
        actors=actors,
        labels=frozenset(labels),
        period=_period(raw.get("period"), where=f"{where}.period"),
        data_period=_period(raw.get("dataPeriod"), where=f"{where}.dataPeriod"),
        classes=tuple(classes),
        actions=tuple(dict.fromkeys(actions)),
        unchecked=tuple(dict.fromkeys(unchecked)),
        provisions=nested,
    )


def _list(raw: Mapping[str, Any], name: str, where: str) -> list[Any]:
    value = raw.get(name, [])
    if not isinstance(value, list):
        raise _Refused(f"{where}.{name} is not a list")
    return value


def _actor(actor: Any, where: str) -> Identifier:
    if not isinstance(actor, dict):
        raise _Refused(f"{where} is not an object")
    roles = [code for _, code in _concept_codes(actor.get("role"))]
    if roles and not set(roles) & _RECIPIENT_ROLES:
        raise _Refused(f"{where}.role is not a recipient role (IRCP, PRCP)")
    party = _reference_identifier(actor.get("reference"))
    if party is None:
        raise _Refused(f"{where}.reference names no one by identifier (system and value)")
    return party


def _concept_codes(value: Any) -> Iterator[tuple[str, str]]:
    """``(system, code)`` of each Coding in a CodeableConcept or a list of them; system may be ''."""
    for concept in value if isinstance(value, list) else [value]:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding", ()) if isinstance(concept.get("coding"), list) else ():
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                yield str(coding.get("system", "")), coding["code"]


def _instant(text: str, *, upper: bool = False) -> datetime | None:
    """A FHIR date/dateTime as UTC; with ``upper``, a partial date gives the instant just after it."""
    moment = parse_fhir_datetime(text, _DATE_ZONE)
    if moment is None or not upper or len(text) > 10:
        return moment
    if len(text) == 4:
        return moment.replace(year=moment.year + 1)
    if len(text) == 7:
        month = moment.month % 12 + 1
        return moment.replace(year=moment.year + (moment.month == 12), month=month)
    return moment + _ONE_DAY


def _period(raw: Any, *, where: str = "period") -> Period:
    if raw is None:
        return Period()
    if not isinstance(raw, dict):
        raise _Refused(f"{where} is not an object")
    bounds: dict[str, datetime | None] = {"start": None, "end": None}
    for name in bounds:
        text = raw.get(name)
        if text is None:
            continue
        moment = _instant(text, upper=name == "end") if isinstance(text, str) else None
        if moment is None:
            raise _Refused(f"{where}.{name} is not a FHIR dateTime")
        bounds[name] = moment
    start, end = bounds["start"], bounds["end"]
    if start is not None and end is not None and end <= start:
        raise _Refused(f"{where} ends before it starts")
    return Period(start, end)


# -- JSON ---------------------------------------------------------------------------------------------


def _instant_json(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _instant_from(text: Any) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError("naive instant in stored state")
    return moment


def _party_json(party: Identifier | None) -> dict[str, str] | None:
    return None if party is None else party.to_json()


def _party_from(raw: Any) -> Identifier:
    return Identifier(_text(raw["system"]), _text(raw["value"]))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string in stored state")
    return value


def _period_from(raw: Mapping[str, Any]) -> Period:
    start, end = raw.get("start"), raw.get("end")
    return Period(
        None if start is None else _instant_from(start),
        None if end is None else _instant_from(end),
    )


def _consent_json(consent: ConsentRecord) -> dict[str, Any]:
    document = {
        "key": consent.key,
        "source": consent.source_id,
        "event_id": consent.event_id,
        "status": consent.status,
        "scope": consent.scope,
        "as_of": _instant_json(consent.as_of),
        "provision": None if consent.provision is None else _provision_json(consent.provision),
    }
    if consent.source_reference is not None:  # absent, not null: a consent without one is stored as before
        document["source_reference"] = consent.source_reference
    return document


def _provision_json(provision: Provision) -> dict[str, Any]:
    return {
        "type": provision.type,
        "actors": [actor.to_json() for actor in provision.actors],
        "labels": sorted(provision.labels),
        "period": provision.period.to_json(),
        "data_period": provision.data_period.to_json(),
        "classes": list(provision.classes),
        "actions": list(provision.actions),
        "unchecked": list(provision.unchecked),
        "provisions": [_provision_json(child) for child in provision.provisions],
    }


def _provision_from(raw: Mapping[str, Any]) -> Provision:
    kind = raw["type"]
    if kind not in (PERMIT, DENY):
        raise ValueError("unknown provision type in stored state")
    return Provision(
        type=kind,
        actors=tuple(_party_from(actor) for actor in raw["actors"]),
        labels=frozenset(_text(label) for label in raw["labels"]),
        period=_period_from(raw["period"]),
        data_period=_period_from(raw["data_period"]),
        classes=tuple(_text(name) for name in raw["classes"]),
        actions=tuple(_text(name) for name in raw["actions"]),
        unchecked=tuple(_text(name) for name in raw["unchecked"]),
        provisions=tuple(_provision_from(child) for child in raw["provisions"]),
    )


def _state_from_json(document: Any) -> PatientShareState:
    if document.get("v") != STATE_FORMAT:
        raise ValueError("unknown state format")
    patient_id = _text(document["patient_id"])
    if "corrupt" in document:
        return PatientShareState.corrupted(patient_id, _text(document["corrupt"]))
    return PatientShareState(
        patient_id=patient_id,
        awaiting=tuple(_text(local_id) for local_id in document.get("awaiting", ())),
        general_practitioners=tuple(
            GpDeclaration(
                _text(gp["source"]), tuple(_party_from(p) for p in gp["parties"]), _instant_from(gp["as_of"])
            )
            for gp in document["general_practitioners"]
        ),
        care_teams=tuple(
            CareTeamRecord(
                key=_text(team["key"]),
                source_id=_text(team["source"]),
                status=_text(team["status"]),
                period=_period_from(team["period"]),
                members=tuple(
                    CareTeamMember(
                        None if member["member"] is None else _party_from(member["member"]),
                        None if member["on_behalf_of"] is None else _party_from(member["on_behalf_of"]),
                        _period_from(member["period"]),
                    )
                    for member in team["members"]
                ),
                as_of=_instant_from(team["as_of"]),
            )
            for team in document["care_teams"]
        ),
        involvements=tuple(_involvement_from(item) for item in document["involvements"]),
        consents=tuple(
            ConsentRecord(
                key=_text(consent["key"]),
                source_id=_text(consent["source"]),
                event_id=_text(consent["event_id"]),
                status=_text(consent["status"]),
                scope=_text(consent["scope"]),
                as_of=_instant_from(consent["as_of"]),
                provision=None if consent["provision"] is None else _provision_from(consent["provision"]),
                source_reference=(
                    None if consent.get("source_reference") is None else _text(consent["source_reference"])
                ),
            )
            for consent in document["consents"]
        ),
    )


def _involvement_from(raw: Mapping[str, Any]) -> Involvement:
    kind = raw["kind"]
    if kind not in ("encounter", "episode") or not isinstance(raw["open"], bool):
        raise ValueError("unknown involvement in stored state")
    ended = raw["ended_at"]
    return Involvement(
        key=_text(raw["key"]),
        kind=kind,
        organization=_party_from(raw["organization"]),
        open=raw["open"],
        ended_at=None if ended is None else _instant_from(ended),
        as_of=_instant_from(raw["as_of"]),
    )
