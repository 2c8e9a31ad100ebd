"""``hub consent show``, the pure part: one patient's last share state from changelog records, as text.

The share stage keeps each patient's :class:`~hub.consent.state.PatientShareState` in the faust table
``share-state``; its changelog topic (``<app id>-share-state-changelog``, compacted) holds, for each
patient, records keyed by the JSON-encoded network patient id (``"pt-..."``, quotes included) whose
values are the state's JSON. The last record of a key is the state that decides; a tombstone (no
value) means the state was deleted. The ids of the patient's events some recipient waits for are in
``share-decided``, under ``<patient>#waiting`` (hub.consent.decisions.waiting_key), often inside a
record carrying a batch of entries (hub.table_batches); the state records of sessions 12 and 13 held
them in a field of their own (hub.consent.decisions.WAITING_FIELD), read while it is there.

What is shown is what the policy reads: identifiers (system and value), statuses, codes, periods and
instants. No name, no clinical content.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from hub.consent.decisions import WAITING_FIELD
from hub.consent.recipients import NETWORK_SYSTEM, Identifier
from hub.consent.state import ConsentRecord, Involvement, PatientShareState, Period, Provision
from hub.kafka.clients import Record
from hub.records import CRYPTO_ERROR_HEADER, decode_json, header
from hub.table_batches import batch_entries

LookupStatus = Literal["present", "absent", "deleted", "corrupt"]


@dataclass(frozen=True)
class StateLookup:
    """What the changelog says about one patient: its last state, or why there is none to show."""

    patient_id: str
    status: LookupStatus
    state: PatientShareState | None = None
    #: ``topic/partition/offset`` and time of the record that holds the last value.
    where: str | None = None
    timestamp_ms: int | None = None
    reason: str = ""
    #: How many of the patient's events some recipient waits for (decided again when the state changes).
    waiting: int = 0

    @property
    def found(self) -> bool:
        """True when a readable state decides for the patient."""
        return self.status == "present"


def key_of(record: Record) -> str | None:
    """The patient id a changelog record is keyed by (JSON string; raw text accepted), or None."""
    if record.key is None:
        return None
    try:
        key = decode_json(record.key)
    except (ValueError, UnicodeDecodeError):
        return record.key.decode(errors="replace")
    return key if isinstance(key, str) else None


def holds_key(record: Record, key: str) -> bool:
    """Whether a changelog record is of table key ``key``, or carries a batch with an entry of it."""
    return next(entries_of([record], key), None) is not None


def entries_of(records: Iterable[Record], key: str) -> Iterator[Record]:
    """The changelog records of table key ``key``, in topic order: a batch record's entries of that key
    as records of their own, with the batch record's coordinates. A batch record in a format this
    version cannot read (a newer hub's) is skipped, as a rebuilding worker skips it."""
    for record in records:
        try:
            entries = batch_entries(record.headers, record.value)
        except ValueError:
            continue
        if entries is None:
            if key_of(record) == key:
                yield record
            continue
        for entry_key, value in entries:
            entry = replace(record, key=entry_key, value=value, headers=())
            if key_of(entry) == key:
                yield entry


def last_state(
    records: Iterable[Record], patient_id: str, waiting_index: Iterable[Record] = ()
) -> StateLookup:
    """The last value of ``patient_id``'s key in changelog records (in topic order): last value wins.

    ``waiting_index``: the (opened) records of the patient's ``share-decided`` waiting index key. A
    patient with waiting events and no state record is decided on an empty state: shown as one.
    """
    last: Record | None = None
    for record in records:
        if key_of(record) == patient_id:
            last = record
    # The index's last record: its value now (a deletion: none waits).
    indexes = list(waiting_index)
    index = indexes[-1] if indexes else None
    if last is None:
        waiting = _waiting_count(index.value) if index is not None else 0
        if index is not None and waiting:
            return StateLookup(
                patient_id,
                "present",
                PatientShareState.empty(patient_id),
                where=f"{index.topic}/{index.partition}/{index.offset}",
                timestamp_ms=index.timestamp_ms,
                waiting=waiting,
            )
        return StateLookup(
            patient_id, "absent", reason="no share state: the hub has no event for this patient"
        )
    where = f"{last.topic}/{last.partition}/{last.offset}"
    # Opened as read (hub.ops.cli.opened): a state it could not decrypt carries the error's code.
    crypto_error = header(last.headers, CRYPTO_ERROR_HEADER)
    if crypto_error == "crypto.key_destroyed":
        return StateLookup(
            patient_id,
            "deleted",
            where=where,
            timestamp_ms=last.timestamp_ms,
            reason="the patient was erased",
        )
    if crypto_error is not None:
        return StateLookup(
            patient_id,
            "corrupt",
            where=where,
            timestamp_ms=last.timestamp_ms,
            reason=f"unreadable: {crypto_error}",
        )
    if last.value is None or last.value.strip() == b"null":
        return StateLookup(
            patient_id, "deleted", where=where, timestamp_ms=last.timestamp_ms, reason="the state was deleted"
        )
    state = PatientShareState.from_json(last.value)
    if state.corrupt:
        reason = state.corrupt_reason or "stored state unreadable"
        return StateLookup(
            patient_id, "corrupt", state, where=where, timestamp_ms=last.timestamp_ms, reason=reason
        )
    if state.patient_id != patient_id:
        return StateLookup(
            patient_id,
            "corrupt",
            state,
            where=where,
            timestamp_ms=last.timestamp_ms,
            reason="the stored state belongs to another patient",
        )
    return StateLookup(
        patient_id,
        "present",
        state,
        where=where,
        timestamp_ms=last.timestamp_ms,
        waiting=_waiting_in_record(last.value, index),
    )


def _waiting_in_record(value: bytes, index: Record | None) -> int:
    """How many events wait: as the state record lists them (sessions 12 and 13), else as the index."""
    document = decode_json(value)
    if isinstance(document, dict) and WAITING_FIELD in document:
        return _waiting_count_of(document[WAITING_FIELD])
    return _waiting_count(index.value if index is not None else None)


def _waiting_count(value: bytes | None) -> int:
    """How many event ids a waiting index value lists; 0 for none, a deletion or an unreadable value."""
    if value is None:
        return 0
    try:
        return _waiting_count_of(decode_json(value))
    except ValueError:
        return 0


def _waiting_count_of(ids: Any) -> int:
    return len(ids) if isinstance(ids, list) else 0


# -- text ---------------------------------------------------------------------------------------------


def _party(party: Identifier | None) -> str:
    return "-" if party is None else f"{party.system}|{party.value}"


def _instant(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _period(period: Period) -> str:
    if period.start is None and period.end is None:
        return "unbounded"
    start = "…" if period.start is None else _instant(period.start)
    end = "…" if period.end is None else _instant(period.end)
    return f"{start} → {end}"


def _involvement(item: Involvement, name: str) -> str:
    if item.open:
        state = "open"
    elif item.ended_at is not None:
        state = f"ended at {_instant(item.ended_at)}"
    else:
        state = "neither open nor ended (does not count)"
    return f"  {item.kind:<9} {name}  {state}  (as of {_instant(item.as_of)}; {item.key})"


def _provision(provision: Provision, depth: int) -> list[str]:
    indent = "    " + "  " * depth
    head = "exception " if depth else ""
    parts = [
        f"{head}{provision.type}",
        f"actors {', '.join(_party(actor) for actor in provision.actors) or 'anyone'}",
        f"labels {', '.join(sorted(provision.labels)) or '-'}",
        f"period {_period(provision.period)}",
    ]
    if provision.data_period.start or provision.data_period.end:
        parts.append(f"data period {_period(provision.data_period)}")
    if provision.classes:
        parts.append(f"classes {', '.join(provision.classes)}")
    if provision.actions:
        parts.append(f"actions {', '.join(provision.actions)}")
    if provision.unchecked:
        parts.append(f"unchecked {', '.join(provision.unchecked)}")
    lines = [indent + "  ".join(parts)]
    for child in provision.provisions:
        lines.extend(_provision(child, depth + 1))
    return lines


def _section(title: str, lines: Sequence[str]) -> list[str]:
    return [f"{title}:", *(lines or ["  none"])]


def _force(consent: ConsentRecord, at: datetime) -> str:
    """Whether a consent applies at ``at``: only an active one does, and within its period."""
    if not consent.in_force or consent.provision is None:
        return "not in force"
    period = consent.provision.period
    if period.end is not None and at >= period.end:
        return "expired"
    if period.start is not None and at < period.start:
        return "not yet in force"
    return "IN FORCE"


def render_state(lookup: StateLookup, *, now: datetime | None = None) -> list[str]:
    """The lines ``hub consent show`` prints: the state that decides, or why there is none.

    ``now`` (default: the clock) says whether each consent's period covers the present.
    """
    at = now or datetime.now(UTC)
    if lookup.status == "absent":
        return [f"patient {lookup.patient_id}: {lookup.reason}"]
    origin = f"changelog {lookup.where}" + (
        f", written {_instant(datetime.fromtimestamp(lookup.timestamp_ms / 1000, tz=UTC))}"
        if lookup.timestamp_ms is not None and lookup.timestamp_ms >= 0
        else ""
    )
    if lookup.status == "deleted":
        return [f"patient {lookup.patient_id}: no share state ({lookup.reason}; {origin})"]
    if lookup.status == "corrupt" or lookup.state is None:
        return [
            f"patient {lookup.patient_id}: share state CORRUPT ({lookup.reason}; {origin})",
            "every decision for this patient is a deny (rule state_unavailable) until the state is rebuilt",
        ]
    state = lookup.state
    lines = [f"share state of patient {state.patient_id} ({origin})"]
    lines += _section(
        "declared GPs",
        [
            f"  from {gp.source_id} (as of {_instant(gp.as_of)}): "
            + (", ".join(_party(party) for party in gp.parties) or "none (declaration emptied)")
            for gp in state.general_practitioners
        ],
    )
    teams: list[str] = []
    for team in state.care_teams:
        teams.append(
            f"  {team.key}  status {team.status or '-'}  period {_period(team.period)}"
            f"  from {team.source_id} (as of {_instant(team.as_of)})"
        )
        teams.extend(
            f"    member {_party(member.member)}  on behalf of {_party(member.on_behalf_of)}"
            f"  period {_period(member.period)}"
            for member in team.members
        )
        if not team.members:
            teams.append("    no member named by identifier")
    lines += _section("care teams", teams)
    lines += _section(
        "organisations involved",
        [
            _involvement(item, _party(item.organization))
            for item in state.involvements
            if item.organization.system != NETWORK_SYSTEM
        ],
    )
    lines += _section(
        "network enrolments",
        [
            _involvement(item, item.organization.value)
            for item in state.involvements
            if item.organization.system == NETWORK_SYSTEM
        ],
    )
    consents: list[str] = []
    for consent in state.consents:
        # How the source itself names the Consent, so that a DPO can find it there.
        as_sent = (
            f"as {consent.source_reference}"
            if consent.source_reference is not None
            else "(its own id not on record)"
        )
        consents.append(
            f"  {consent.key}  status {consent.status}"
            + f"  {_force(consent, at)}"
            + f"  scope {consent.scope}  from {consent.source_id} {as_sent}  event {consent.event_id}"
            f" (as of {_instant(consent.as_of)})"
        )
        if consent.provision is not None:
            consents.extend(_provision(consent.provision, 0))
    lines += _section("consents", consents)
    lines += _section(
        "events waiting for a basis",
        [f"  {lookup.waiting}, decided again at each change of this state"] if lookup.waiting else [],
    )
    return lines


def to_json(lookup: StateLookup) -> dict[str, Any]:
    """``hub consent show --json``: status, origin, and the stored state as the share stage reads it."""
    return {
        "patient_id": lookup.patient_id,
        "status": lookup.status,
        "where": lookup.where,
        "timestamp_ms": lookup.timestamp_ms,
        "reason": lookup.reason or None,
        "state": lookup.state.to_json() if lookup.state is not None and lookup.found else None,
        "waiting_events": lookup.waiting,
    }
