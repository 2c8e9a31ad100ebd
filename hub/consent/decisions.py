"""What the share stage remembers of its decisions, so that who receives what does not depend on order.

Two facts make a recipient's final holding depend on arrival order unless the stage remembers:

- an event decided before the patient's GP, CareTeam, stay or Consent arrived is denied for want of
  a basis, while the same event decided after them is sent;
- an event read again after a worker died is decided against a state that may already hold what
  came after it.

So each decision is kept, per event, in the ``share-decided`` table (sealed, on the patient's
partition, for the policy's ``backfill_days``):

- ``<patient>#d:<event id>`` → :class:`DecisionRecord`: when it was decided, each recipient's decision,
  the recipients still waiting for a basis (``waiting``, with the event itself while any waits), the
  late releases made to this event (``late``) and those this event's state change made (``released``);
- ``<patient>#waiting`` (:func:`waiting_key`): the ids of the patient's events that some recipient
  waits for, oldest first. It changes with almost every event that waits; this table's changelog takes
  a batch's entries in one record (hub.streams.changelog_batches), where the patient's ``share-state``
  record, kept for good, is a changelog record per write. Sessions 12 and 13 kept it in that record
  instead (the field :data:`WAITING_FIELD`): read while it is there, it leaves the record when either
  is next written.

An event read again gets its recorded decisions back, not new ones; a change of the patient's state
decides the waiting events again, and sends those now permitted (a *late release*, audited with the
releasing event's id). This module is the record's format and nothing else: hub.consent.share decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hub.consent.policy import FinalDecision

#: Waiting events kept per patient: past this, the oldest stops waiting (docs/STATE.md).
MAX_WAITING_EVENTS = 500


def decided_key(patient_id: str, event_id: str) -> str:
    """The table key of one event's decisions (``hub.crypto.records.patient_of_table_key`` reads it)."""
    return f"{patient_id}#d:{event_id}"


#: The field of the patient's ``share-state`` record that listed the ids of their waiting events in
#: sessions 12 and 13 (read until the record is next written; :func:`waiting_key` since).
WAITING_FIELD = "waiting"


def waiting_key(patient_id: str) -> str:
    """The ``share-decided`` key of the ids of the patient's waiting events."""
    return f"{patient_id}#waiting"


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _decision_json(decision: FinalDecision) -> list[Any]:
    return [
        decision.verdict,
        decision.rule,
        decision.reason,
        decision.policy,
        decision.policy_version,
        decision.awaits_basis,
    ]


def _decision_from(raw: Any) -> FinalDecision:
    verdict, rule, reason, policy, policy_version, awaits = raw
    return FinalDecision(verdict, rule, reason, policy, policy_version, (), awaits_basis=bool(awaits))


@dataclass(frozen=True)
class LateRelease:
    """One recipient's late permit of a waiting event: the decision, when, and which event released it."""

    decision: FinalDecision
    at: datetime
    released_by: str


@dataclass(frozen=True)
class DecisionRecord:
    """One event's decisions, as first taken, and what became of its waiting recipients."""

    at: datetime
    decisions: Mapping[str, FinalDecision]
    waiting: tuple[str, ...] = ()
    #: The event itself while a recipient waits, and after a late release (to send it again).
    event: Mapping[str, Any] | None = None
    late: Mapping[str, LateRelease] = field(default_factory=dict)
    #: (event id, recipient id) pairs this event's state change released.
    released: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The table's value."""
        document: dict[str, Any] = {
            "at": _instant(self.at),
            "decisions": {rid: _decision_json(d) for rid, d in self.decisions.items()},
        }
        if self.waiting:
            document["waiting"] = list(self.waiting)
        if self.event is not None:
            document["event"] = self.event
        if self.late:
            document["late"] = {
                rid: [*_decision_json(late.decision), _instant(late.at), late.released_by]
                for rid, late in self.late.items()
            }
        if self.released:
            document["released"] = [list(pair) for pair in self.released]
        return document

    @classmethod
    def from_json(cls, document: Any) -> DecisionRecord | None:
        """The record, or None when the stored value cannot be read (it is then decided anew)."""
        try:
            late = {
                str(rid): LateRelease(_decision_from(raw[:6]), datetime.fromisoformat(raw[6]), str(raw[7]))
                for rid, raw in (document.get("late") or {}).items()
            }
            return cls(
                at=datetime.fromisoformat(document["at"]),
                decisions={str(rid): _decision_from(raw) for rid, raw in document["decisions"].items()},
                waiting=tuple(str(rid) for rid in document.get("waiting") or ()),
                event=document.get("event"),
                late=late,
                released=tuple((str(e), str(r)) for e, r in document.get("released") or ()),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
