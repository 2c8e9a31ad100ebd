"""The share stage: for each pathway event and each recipient, decide, audit, and send what is allowed.

Runs on ``hub.pathway.v1`` (keyed by network patient id), so a patient's consent and care-team state
(a faust table) and the events after a change are processed in order on one partition: an objection
applies to every event processed after it, on every recipient topic.

When identity finds that a local id is the same person as an INS id (``patient.linked``), the local
id's state lives on another partition. The INS id's state is then marked *awaiting* it (every
decision denies), a request goes to ``hub.share-merge.v1`` keyed by the local id, that partition
answers with its state keyed by the INS id, and the two are merged: nothing recorded under either
identity, an objection least of all, is ever skipped.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from hub.consent.audit import audit_consent_rejected, audit_decisions
from hub.consent.minimise import recipient_copy
from hub.consent.policy import PolicyConfig, decide
from hub.consent.recipients import RecipientRegistry
from hub.consent.state import ConsentRejected, PatientShareState, apply
from hub.logging import get_logger
from hub.normalise.time import parse_fhir_datetime

log = get_logger(__name__)

UTC_ZONE = ZoneInfo("UTC")

#: Events held per patient while a linked identity's state is merged (two hops): a bound, not a budget.
MAX_HELD_EVENTS = 10_000


@dataclass(frozen=True)
class Share:
    """One record to produce: a recipient copy (``topic`` is the recipient's) or an AuditEvent."""

    topic: str
    key: str
    value: dict[str, Any]


class ShareStage:
    """Applies each event to its patient's state, then decides per recipient; ``states`` is a table."""

    def __init__(
        self,
        recipients: RecipientRegistry,
        policy: PolicyConfig,
        states: MutableMapping[str, Any],
        *,
        topic_prefix: str,
        audit_topic: str,
        merge_topic: str,
    ) -> None:
        self.recipients = recipients
        self.policy = policy
        self.states = states
        self.topic_prefix = topic_prefix
        self.audit_topic = audit_topic
        self.merge_topic = merge_topic

    def state_of(self, patient_id: str) -> PatientShareState:
        """The patient's sharing state; a new patient starts empty, a corrupt entry denies everything."""
        stored = self.states.get(patient_id)
        return PatientShareState.empty(patient_id) if stored is None else PatientShareState.from_json(stored)

    def handle(self, event: dict[str, Any], *, now: datetime | None = None) -> list[Share]:
        """Every record to produce for one pathway event: audits first, copies after.

        While a linked identity's state is on its way, the patient's events are held (in order) and
        decided once it has arrived: a decision is never taken on half the facts, and nothing a
        recipient may see is lost to the wait.
        """
        at = now or datetime.now(UTC)
        patient_id = str(event.get("patient_id"))
        state = self.state_of(patient_id)
        merge_requests: list[Share] = []
        if event.get("kind") == "patient.linked":
            local_id = _replaced_id(event)
            if local_id is not None and not state.corrupt:
                if local_id not in state.awaiting:
                    state = replace(state, awaiting=(*state.awaiting, local_id))
                    self.states[patient_id] = state.to_json()
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
            return merge_requests
        return self._decide(event, state, at)

    def _decide(self, event: dict[str, Any], state: PatientShareState, at: datetime) -> list[Share]:
        patient_id = str(event.get("patient_id"))
        occurred = parse_fhir_datetime(str(event.get("occurred_at", "")), UTC_ZONE) or at
        # A patient.linked event carries a Patient that only says who is who: applied as a Patient,
        # it would read as "this source now declares no GP".
        resource = {} if event.get("kind") == "patient.linked" else event.get("resource") or {}
        update = apply(
            state,
            resource,
            event_id=str(event.get("event_id")),
            occurred_at=occurred,
            source_id=str((event.get("source") or {}).get("id")),
        )
        shares: list[Share] = []
        if isinstance(update, ConsentRejected):
            log.warning("share.consent_rejected", code=update.code, patient_id=patient_id)
            shares.append(
                Share(self.audit_topic, patient_id, audit_consent_rejected(update, event=event, recorded=at))
            )
        elif update.changed:
            state = update.state
            self.states[patient_id] = state.to_json()
        copies: list[Share] = []
        decisions = []
        for recipient in self.recipients:
            decision = decide(event, recipient, state, now=at, policy=self.policy)
            decisions.append((recipient, decision))
            if decision.permitted:
                copies.append(
                    Share(
                        self.topic_prefix + recipient.topic,
                        patient_id,
                        recipient_copy(event, recipient, decision),
                    )
                )
        if decisions:
            # One AuditEvent for the event, every recipient's decision in it (hub.consent.audit).
            shares.append(
                Share(self.audit_topic, patient_id, audit_decisions(decisions, event=event, recorded=at))
            )
        # Audit records go first: no copy ever leaves without its decision on record.
        return shares + copies

    def handle_merge(self, record: dict[str, Any]) -> list[Share]:
        """One step of merging a linked identity's state (see the module docstring).

        Safe to read again: merging is idempotent, and an answer that already released the held
        events (its worker died before their decisions left) decides them again, same event ids.
        """
        if record.get("type") == "request":
            stored = self.states.get(record["from"])
            return [Share(self.merge_topic, record["to"], {**record, "type": "state", "state": stored})]
        target = self.state_of(record["to"])
        released = self.states.get(_released_key(record["to"]))
        if record["from"] not in target.awaiting and released and released.get("from") == record["from"]:
            return [
                share
                for event in released.get("events") or []
                for share in self._decide(event, target, datetime.now(UTC))
            ]
        other = (
            PatientShareState.empty(record["to"])
            if record.get("state") is None
            else replace(PatientShareState.from_json(record["state"]), patient_id=record["to"], awaiting=())
        )
        merged = replace(
            target.merged_with(other), awaiting=tuple(i for i in target.awaiting if i != record["from"])
        )
        self.states[record["to"]] = merged.to_json()
        log.info("share.states_merged", patient_id=record["to"], linked=record["from"])
        if merged.awaiting:
            return []
        # Every identity has arrived: decide the events held meanwhile, in their order.
        held = self.states.get(_held_key(record["to"])) or []
        # Kept until the next release: this answer read again decides them again (see above).
        self.states[_released_key(record["to"])] = {"from": record["from"], "events": held}
        self.states.pop(_held_key(record["to"]), None)
        shares: list[Share] = []
        for event in held:
            shares.extend(self._decide(event, self.state_of(record["to"]), datetime.now(UTC)))
        return shares


def _held_key(patient_id: str) -> str:
    """Where a patient's held events wait, in the state table (same partition as the patient)."""
    return f"{patient_id}#held"


def _released_key(patient_id: str) -> str:
    """Where the events a merge last released are kept, in case its answer is read again."""
    return f"{patient_id}#released"


def _replaced_id(event: dict[str, Any]) -> str | None:
    """The local id a ``patient.linked`` event says is now this patient."""
    for link in (event.get("resource") or {}).get("link", ()):
        value = ((link.get("other") or {}).get("identifier") or {}).get("value")
        if isinstance(value, str):
            return value
    return None
