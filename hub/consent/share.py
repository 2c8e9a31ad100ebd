"""The share stage: for each pathway event and each recipient, decide, audit, and send what is allowed.

Runs on ``hub.pathway.v1`` (keyed by network patient id), so a patient's consent and care-team state
(a faust table) and the events after a change are processed in order on one partition: an objection
applies to every event processed after it, on every recipient topic.

When identity finds that a local id is the same person as an INS id (``patient.linked``), the local
id's state lives on another partition. Since session 14 the local id's partition hands its state
over with the link itself (:meth:`ShareStage.hand_over`: identity records the link there and sends
the input on to the INS id, and the share stage decides in the same agent, so every event made under
the local id is decided by then and none is after); the INS id's partition merges it as the
``patient.linked`` event comes (:meth:`ShareStage.handle` with ``handover``), before anything the
input brings is decided: no round trip, nothing held.

A link without a hand-over (one sent on by an earlier version) takes the round trip: the INS id's
state is marked *awaiting* the local id (every decision denies), a request goes to
``hub.share-merge.v1`` keyed by the local id, that partition answers with its state keyed by the INS
id, and the two are merged: nothing recorded under either identity, an objection least of all, is
ever skipped. The local id's events not decided yet when the request is answered go on to the INS id
through ``hub.share-merge.v1`` and are decided there: under the local id they would wait for a state
that no longer changes.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from hub.consent.audit import audit_consent_rejected, audit_decisions, audit_releases
from hub.consent.decisions import (
    MAX_WAITING_EVENTS,
    WAITING_FIELD,
    DecisionRecord,
    LateRelease,
    decided_key,
    waiting_key,
)
from hub.consent.minimise import recipient_copy
from hub.consent.policy import EventView, FinalDecision, PolicyConfig, decide, may_have_basis, view_event
from hub.consent.recipients import Recipient, RecipientRegistry
from hub.consent.state import ConsentRejected, PatientShareState, apply
from hub.logging import get_logger
from hub.normalise.time import parse_fhir_datetime

log = get_logger(__name__)

UTC_ZONE = ZoneInfo("UTC")

#: Events held per patient while a linked identity's state is merged (two hops): a bound, not a budget.
MAX_HELD_EVENTS = 10_000
#: How many times an event goes on to the identity its patient's state was merged into (identities
#: linked one after another); past it, it is decided where it is (two identities linked to each other
#: must not pass an event back and forth for ever).
MAX_FORWARDS = 4


@dataclass(frozen=True)
class Share:
    """One record to produce: a recipient copy (``topic`` is the recipient's) or an AuditEvent."""

    topic: str
    key: str
    value: dict[str, Any]


class ShareStage:
    """Applies each event to its patient's state, then decides per recipient; ``states`` is a table.

    ``decided`` is the table of the decisions taken (hub.consent.decisions); without it, ``states``
    keeps them too (its keys never collide).
    """

    def __init__(
        self,
        recipients: RecipientRegistry,
        policy: PolicyConfig,
        states: MutableMapping[str, Any],
        *,
        topic_prefix: str,
        audit_topic: str,
        merge_topic: str,
        decided: MutableMapping[str, Any] | None = None,
    ) -> None:
        self.recipients = recipients
        self.policy = policy
        self.states = states
        self.decided = states if decided is None else decided
        self.topic_prefix = topic_prefix
        self.audit_topic = audit_topic
        self.merge_topic = merge_topic

    def state_of(self, patient_id: str) -> PatientShareState:
        """The patient's sharing state; a new patient starts empty, a corrupt entry denies everything."""
        stored = self.states.get(patient_id)
        return PatientShareState.empty(patient_id) if stored is None else PatientShareState.from_json(stored)

    def handle(
        self,
        event: dict[str, Any],
        *,
        now: datetime | None = None,
        forwarded: int = 0,
        handover: Mapping[str, Any] | None = None,
    ) -> list[Share]:
        """Every record to produce for one pathway event: audits first, copies after.

        ``handover``: with a ``patient.linked`` event, what the local id's partition handed over with
        the link (:meth:`hand_over`), merged before the event is decided. While a linked identity's
        state is on its way (a link without one), the patient's events are held (in order) and
        decided once it has arrived: a decision is never taken on half the facts, and nothing a
        recipient may see is lost to the wait.
        """
        at = now or datetime.now(UTC)
        patient_id = str(event.get("patient_id"))
        merged_into = self.states.get(_merged_into_key(patient_id))
        if isinstance(merged_into, str) and forwarded < MAX_FORWARDS:
            # This identity's state went to a linked one before this event was decided (its partition
            # of the pathway ran behind the merge's): decided there, on the state it now belongs to.
            return [
                Share(
                    self.merge_topic,
                    merged_into,
                    {
                        "type": "event",
                        "from": patient_id,
                        "to": merged_into,
                        "event": event,
                        "forwarded": forwarded + 1,
                    },
                )
            ]
        state = self.state_of(patient_id)
        merge_requests: list[Share] = []
        taken: list[Share] = []
        if event.get("kind") == "patient.linked":
            local_id = _replaced_id(event)
            if local_id is not None and not state.corrupt and handover and handover.get("from") == local_id:
                taken = self._take_over(patient_id, handover, at)
                state = self.state_of(patient_id)
            elif local_id is not None and not state.corrupt:
                if local_id not in state.awaiting:
                    state = replace(state, awaiting=(*state.awaiting, local_id))
                    self._store(patient_id, state=state)
                # Asked again when already awaited: this event read again after a worker died may
                # have recorded the wait without its request ever leaving (a merge is idempotent).
                merge_requests.append(
                    Share(self.merge_topic, local_id, {"type": "request", "from": local_id, "to": patient_id})
                )
        if state.awaiting:
            held_key = _held_key(patient_id)
            held = self.states.get(held_key) or []
            # An event read again (redelivered) is held once: it is decided once when released.
            if all(h.get("event_id") != event.get("event_id") for h in held):
                self.states[held_key] = [*held, event][-MAX_HELD_EVENTS:]
            return taken + merge_requests
        return taken + self._decide(event, state, at)

    def hand_over(self, local_id: str, ins_id: str) -> dict[str, Any]:
        """What the local id's partition knows of it, for the INS id identity has just linked it to:
        its sharing state and its waiting events (``state`` None and no ``waiting``: nothing to merge,
        said explicitly, so that the INS id's partition does not ask).

        Taken as identity records the link, in the same agent: every event made under the local id
        was decided before, and identity sends the later ones to the INS id. Should one still come
        here (an input read again), it goes on to the INS id as after a round-trip merge; a local id
        with nothing to hand over has no event to come again.
        """
        state = self.states.get(local_id)
        waiting = self.waiting_events(local_id)
        if state is not None or waiting:
            self.states[_merged_into_key(local_id)] = ins_id
        return {"from": local_id, "to": ins_id, "state": state, "waiting": waiting}

    def _take_over(self, patient_id: str, handover: Mapping[str, Any], at: datetime) -> list[Share]:
        """Merge a linked local id's hand-over into the patient's state; decide the waiting events of
        both again on the merged state (those of the local id become the patient's). Idempotent: the
        same hand-over read again merges to the same state and releases nothing new."""
        target = self.state_of(patient_id)
        changed = False
        if handover.get("state") is not None:
            merged = target.merged_with(_linked_state(patient_id, handover["state"]))
            if merged != target:
                self._store(patient_id, state=merged)
                changed = True
        waiting = handover.get("waiting") or []
        if waiting:
            self._adopt_waiting(patient_id, waiting)
            changed = True
        if not changed:
            return []  # nothing came with the link: nothing can be released by it
        log.info("share.states_merged", patient_id=patient_id, linked=handover.get("from"))
        state = self.state_of(patient_id)
        if state.awaiting:
            return []  # released when the identities still awaited arrive (their round trip)
        return self._release(patient_id, state, at, by=f"merge:{handover.get('from')}", released=[])

    def _decide(self, event: dict[str, Any], state: PatientShareState, at: datetime) -> list[Share]:
        patient_id = str(event.get("patient_id"))
        event_id = str(event.get("event_id"))
        occurred = parse_fhir_datetime(str(event.get("occurred_at", "")), UTC_ZONE) or at
        # A patient.linked event carries a Patient that only says who is who: applied as a Patient,
        # it would read as "this source now declares no GP".
        resource = {} if event.get("kind") == "patient.linked" else event.get("resource") or {}
        update = apply(
            state,
            resource,
            event_id=event_id,
            occurred_at=occurred,
            source_id=str((event.get("source") or {}).get("id")),
        )
        shares: list[Share] = []
        changed = False
        if isinstance(update, ConsentRejected):
            log.warning("share.consent_rejected", code=update.code, patient_id=patient_id)
            shares.append(
                Share(self.audit_topic, patient_id, audit_consent_rejected(update, event=event, recorded=at))
            )
        elif update.changed:
            state = update.state
            changed = True
            self._store(patient_id, state=state)
        key = decided_key(patient_id, event_id)
        stored = self.decided.get(key)
        record = DecisionRecord.from_json(stored) if stored is not None else None
        if record is not None:
            # Read again (a worker died before committing it): the decisions first taken, not new ones.
            return shares + self._replay(patient_id, event, record)
        view = view_event(event, self.policy)
        decisions = [
            (recipient, decide(event, recipient, state, now=at, policy=self.policy, view=view))
            for recipient in self.recipients
        ]
        if decisions:
            # One AuditEvent for the event, every recipient's decision in it (hub.consent.audit).
            shares.append(
                Share(self.audit_topic, patient_id, audit_decisions(decisions, event=event, recorded=at))
            )
        # Audit records go first: no copy ever leaves without its decision on record.
        shares.extend(self._copies(patient_id, event, decisions))
        waiting = tuple(recipient.id for recipient, decision in decisions if decision.awaits_basis)
        released: list[tuple[str, str]] = []
        if changed:
            # Only a change of the state can give a waiting recipient its basis (a CareTeam period
            # that starts later is the exception: its events are released by the next change).
            shares.extend(self._release(patient_id, state, at, by=event_id, released=released))
        self.decided[key] = DecisionRecord(
            at=at,
            decisions={recipient.id: decision for recipient, decision in decisions},
            waiting=waiting,
            event=event if waiting else None,
            released=tuple(released),
        ).to_json()
        if waiting:
            ids = [i for i in self._waiting_ids(patient_id) if i != event_id]
            self._store(patient_id, waiting=[*ids, event_id])
        return shares

    def _waiting_ids(self, patient_id: str) -> list[str]:
        """The ids of the patient's events some recipient waits for, oldest first."""
        stored = self.states.get(patient_id)
        if isinstance(stored, dict) and WAITING_FIELD in stored:
            # In the patient's record (sessions 12 and 13): read until the record is next written.
            return [str(event_id) for event_id in stored[WAITING_FIELD]]
        return list(self.decided.get(waiting_key(patient_id)) or [])

    def _store(
        self, patient_id: str, *, state: PatientShareState | None = None, waiting: list[str] | None = None
    ) -> None:
        """Write the patient's sharing state (``share-state``) or the ids of their waiting events
        (``share-decided``, ``<patient>#waiting``), or both.

        Two tables: the index changes with almost every event that waits for a basis, the state only
        with the events that change it. ``share-state`` is kept for good, so its changelog takes a
        record per key written; ``share-decided`` forgets by age and its changelog takes a batch's
        entries in one record (hub.streams.changelog_batches), where the index rides for free. An
        index that stops changing is forgotten past the look-back with the decisions it lists, whose
        events are then too old to be released anyway.
        """
        stored = self.states.get(patient_id)
        in_record = isinstance(stored, dict) and WAITING_FIELD in stored
        if in_record and waiting is None:
            # The index leaves the patient's record (sessions 12 and 13) as the record is written.
            waiting = self._waiting_ids(patient_id)
        if state is not None:
            self.states[patient_id] = state.to_json()
        elif in_record and isinstance(stored, dict):
            # Kept as stored, readable or not: a state that cannot be read still denies everything.
            self.states[patient_id] = {key: value for key, value in stored.items() if key != WAITING_FIELD}
        if waiting is not None:
            key = waiting_key(patient_id)
            if waiting:
                self.decided[key] = waiting[-MAX_WAITING_EVENTS:]
            elif self.decided.get(key) is not None:
                del self.decided[key]

    def _copies(
        self,
        patient_id: str,
        event: Mapping[str, Any],
        decisions: Sequence[tuple[Recipient, FinalDecision]],
    ) -> list[Share]:
        return [
            Share(self.topic_prefix + recipient.topic, patient_id, recipient_copy(event, recipient, decision))
            for recipient, decision in decisions
            if decision.permitted
        ]

    def _release(
        self,
        patient_id: str,
        state: PatientShareState,
        at: datetime,
        *,
        by: str,
        released: list[tuple[str, str]],
    ) -> list[Share]:
        """Decide the patient's waiting events again; send those now permitted (late releases).

        Each goes through every rule again (an objection recorded since stops it); a deny that can
        no longer change (an objection) ends the wait; events decided longer ago than the policy's
        look-back stop waiting. ``released`` receives the (event, recipient) pairs released.
        """
        index = self._waiting_ids(patient_id)
        hopeful: dict[str, bool] = {}
        still_waiting: list[str] = []
        releases: list[tuple[Mapping[str, Any], list[tuple[Recipient, FinalDecision]]]] = []
        copies: list[Share] = []
        for event_id in index:
            if event_id == by:
                continue
            stored = self.decided.get(decided_key(patient_id, event_id))
            record = DecisionRecord.from_json(stored) if stored is not None else None
            if record is None or record.event is None or at - record.at > self.policy.backfill:
                continue
            late, waiting = self._decide_waiting(record, record.event, state, at, hopeful)
            if late:
                releases.append((record.event, late))
                copies.extend(self._copies(patient_id, record.event, late))
                released.extend((event_id, recipient.id) for recipient, _ in late)
            if late or tuple(waiting) != record.waiting:
                self.decided[decided_key(patient_id, event_id)] = replace(
                    record,
                    waiting=tuple(waiting),
                    late={
                        **record.late,
                        **{r.id: LateRelease(d, at, by) for r, d in late},
                    },
                ).to_json()
            if waiting:
                still_waiting.append(event_id)
        if still_waiting != [i for i in index if i != by]:
            self._store(patient_id, waiting=still_waiting)
        # What was released is audited before any of it is sent (hub.audit chains it in this order).
        shares = self._release_audits(patient_id, releases, released_by=by, recorded=at) + copies
        if shares:
            log.info("share.released", patient_id=patient_id, records=len(shares))
        return shares

    def _decide_waiting(
        self,
        record: DecisionRecord,
        event: Mapping[str, Any],
        state: PatientShareState,
        at: datetime,
        hopeful: dict[str, bool],
    ) -> tuple[list[tuple[Recipient, FinalDecision]], list[str]]:
        """One waiting event decided again: the recipients now permitted, and those still waiting."""
        late: list[tuple[Recipient, FinalDecision]] = []
        waiting: list[str] = []
        view: EventView | None = None
        for recipient_id in record.waiting:
            recipient = self.recipients.get(recipient_id)
            if recipient is None:
                continue  # no longer registered: nothing to send it
            if recipient_id not in hopeful:
                hopeful[recipient_id] = may_have_basis(recipient, state, at, self.policy)
            if not hopeful[recipient_id]:
                waiting.append(recipient_id)  # cheap: most waiting recipients are still outside
                continue
            view = view or view_event(event, self.policy)
            decision = decide(event, recipient, state, now=at, policy=self.policy, view=view)
            if decision.permitted:
                late.append((recipient, decision))
            elif decision.awaits_basis:
                waiting.append(recipient_id)
        return late, waiting

    def _replay(self, patient_id: str, event: Mapping[str, Any], record: DecisionRecord) -> list[Share]:
        """The records an event's recorded decisions made, and the late releases it made, again."""
        decisions: list[tuple[Recipient | str, FinalDecision]] = [
            (self.recipients.get(rid) or rid, decision) for rid, decision in record.decisions.items()
        ]
        shares: list[Share] = []
        if decisions:
            shares.append(
                Share(
                    self.audit_topic,
                    patient_id,
                    audit_decisions(decisions, event=event, recorded=record.at),
                )
            )
        shares.extend(
            self._copies(patient_id, event, [(r, d) for r, d in decisions if isinstance(r, Recipient)])
        )
        by_event: dict[str, list[str]] = {}
        for event_id, recipient_id in record.released:
            by_event.setdefault(event_id, []).append(recipient_id)
        releases: list[tuple[Mapping[str, Any], list[tuple[Recipient, FinalDecision]]]] = []
        copies: list[Share] = []
        recorded: LateRelease | None = None
        for event_id, recipient_ids in by_event.items():
            stored = self.decided.get(decided_key(patient_id, event_id))
            released = DecisionRecord.from_json(stored) if stored is not None else None
            if released is None or released.event is None:
                continue
            late = [
                (recipient, released.late[rid])
                for rid in recipient_ids
                if rid in released.late and (recipient := self.recipients.get(rid)) is not None
            ]
            if not late:
                continue
            recorded = recorded or late[0][1]
            releases.append((released.event, [(r, item.decision) for r, item in late]))
            copies.extend(self._copies(patient_id, released.event, [(r, i.decision) for r, i in late]))
        if recorded is not None:
            shares += self._release_audits(
                patient_id, releases, released_by=recorded.released_by, recorded=recorded.at
            )
        return shares + copies

    def _release_audits(
        self,
        patient_id: str,
        releases: list[tuple[Mapping[str, Any], list[tuple[Recipient, FinalDecision]]]],
        *,
        released_by: str,
        recorded: datetime,
    ) -> list[Share]:
        """The AuditEvents of one event's late releases (hub.consent.audit.audit_releases), none when
        it released nothing."""
        if not releases:
            return []
        audits = audit_releases(releases, released_by=released_by, recorded=recorded)
        return [Share(self.audit_topic, patient_id, audit) for audit in audits]

    def waiting_events(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's waiting decision records, as stored (a linked identity's, for the merge)."""
        records = []
        for event_id in self._waiting_ids(patient_id):
            stored = self.decided.get(decided_key(patient_id, event_id))
            if stored is not None:
                records.append(stored)
        return records

    def _adopt_waiting(self, patient_id: str, records: Sequence[Any]) -> None:
        """Take a linked identity's waiting events as this patient's (decided again on release)."""
        before = self._waiting_ids(patient_id)
        ids = list(before)
        for stored in records:
            record = DecisionRecord.from_json(stored)
            if record is None or record.event is None or not record.waiting:
                continue
            event = {**record.event, "patient_id": patient_id}
            event_id = str(event.get("event_id"))
            key = decided_key(patient_id, event_id)
            if self.decided.get(key) is None:
                self.decided[key] = replace(record, event=event, released=()).to_json()
            if event_id not in ids:
                ids.append(event_id)
        if ids != before:
            self._store(patient_id, waiting=ids)

    def handle_merge(self, record: dict[str, Any]) -> list[Share]:
        """One step of merging a linked identity's state (see the module docstring).

        Safe to read again: merging is idempotent, and an answer that already released the held
        events (its worker died before their decisions left) gives the same decisions again.
        """
        if record.get("type") == "event":
            return self.handle(
                {**record["event"], "patient_id": record["to"]}, forwarded=int(record.get("forwarded") or 1)
            )
        if record.get("type") == "request":
            # From now on this identity's events are decided under the other one (see ``handle``):
            # those not decided yet would otherwise wait under a state nothing changes any more.
            self.states[_merged_into_key(record["from"])] = record["to"]
            stored = self.states.get(record["from"])
            return [
                Share(
                    self.merge_topic,
                    record["to"],
                    {
                        **record,
                        "type": "state",
                        "state": stored,
                        # The events the other identity's recipients wait for: decided again here.
                        "waiting": self.waiting_events(record["from"]),
                    },
                )
            ]
        target = self.state_of(record["to"])
        released = self.states.get(_released_key(record["to"]))
        if record["from"] not in target.awaiting and released and released.get("from") == record["from"]:
            return [
                share
                for event in released.get("events") or []
                for share in self._decide(event, target, datetime.now(UTC))
            ]
        other = _linked_state(record["to"], record.get("state"))
        merged = replace(
            target.merged_with(other), awaiting=tuple(i for i in target.awaiting if i != record["from"])
        )
        self._store(record["to"], state=merged)
        self._adopt_waiting(record["to"], record.get("waiting") or [])
        log.info("share.states_merged", patient_id=record["to"], linked=record["from"])
        if merged.awaiting:
            return []
        # Every identity has arrived: decide the events held meanwhile, in their order.
        held = self.states.get(_held_key(record["to"])) or []
        # Kept until the next release: this answer read again decides them again (see above).
        self.states[_released_key(record["to"])] = {"from": record["from"], "events": held}
        self.states.pop(_held_key(record["to"]), None)
        now = datetime.now(UTC)
        shares: list[Share] = []
        for event in held:
            shares.extend(self._decide(event, self.state_of(record["to"]), now))
        # The merged state may give the waiting events of either identity their basis.
        shares.extend(
            self._release(
                record["to"], self.state_of(record["to"]), now, by=f"merge:{record['from']}", released=[]
            )
        )
        return shares


def _linked_state(patient_id: str, stored: Any) -> PatientShareState:
    """A linked local id's stored state (None: it had none) as the patient's, to merge into theirs."""
    if stored is None:
        return PatientShareState.empty(patient_id)
    return replace(PatientShareState.from_json(stored), patient_id=patient_id, awaiting=())


def _held_key(patient_id: str) -> str:
    """Where a patient's held events wait, in the state table (same partition as the patient)."""
    return f"{patient_id}#held"


def _released_key(patient_id: str) -> str:
    """Where the events a merge last released are kept, in case its answer is read again."""
    return f"{patient_id}#released"


def _merged_into_key(patient_id: str) -> str:
    """Where an identity whose state was handed to a linked one names it, in the state table."""
    return f"{patient_id}#merged-into"


def _replaced_id(event: dict[str, Any]) -> str | None:
    """The local id a ``patient.linked`` event says is now this patient."""
    for link in (event.get("resource") or {}).get("link", ()):
        value = ((link.get("other") or {}).get("identifier") or {}).get("value")
        if isinstance(value, str):
            return value
    return None
