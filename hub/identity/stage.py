"""The identity stage: one network patient per person, duplicates dropped, receipts for accepted inputs.

It reads ``hub.identity.v1``, keyed by the network id an input's events were made under (the
qualified-INS id when the input carried one, else the source-local id), so everything it
remembers is local to its partition:

- ``aliases``: a source-local id found (by a later input carrying a qualified INS) to be the same
  person as an INS id. Later events routed under the local id are published under the INS id,
  after one ``patient.linked`` event. The first INS seen for a local id wins: a later, different
  INS for it is refused as an identity conflict and logged, never silently merged.
- ``seen_messages``: ``(source, hub-message-id)`` → the event ids and the ingest coordinates of the
  input that first brought it, so a resent message is a duplicate.
- ``seen_events``: ``<event id>|<routing id>`` → the ingest coordinates of the input that first
  published that fact, so the same fact sent again, or by another source about the same INS, is
  published once; its input's receipt then says ``duplicate``.

Redelivery is not a duplicate. faust sends a table's changelog records as the stage writes them,
but the stage's outputs only as the input's processing completes and its offset is committed: a
worker killed in between leaves the tables saying "seen" for an input whose events never left.
The same input record read again (same ingest topic, partition and offset) is therefore processed
again and publishes the same events under the same ids (consumers de-duplicate by ``event_id``,
DESIGN.md 4); only another record (a resend, another source) is answered ``duplicate``. Its
receipt is the first one again, byte for byte: the same status and event ids, and ``at`` the ingest
record's timestamp (``recorded_at``), never the stage's clock (hub.ingest.receipts.receipt).
"""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.ingest.outcome import Accepted, IdentityLink, KafkaCoordinates
from hub.ingest.pipeline import with_patient
from hub.ingest.receipts import receipt
from hub.logging import get_logger
from hub.normalise.time import utc_iso
from hub.pathway.event import EVENT_ID_NAMESPACE, PathwayEvent
from hub.pathway.network_id import NETWORK_ID_SYSTEM

log = get_logger(__name__)

INPUT_RECORD = "input"
LINK_RECORD = "link"


@dataclass(frozen=True)
class Send:
    """One record the stage produces: to the pathway, or a receipt."""

    topic: str  # "pathway", "receipts", or "identity" (an input moved to its surviving patient)
    key: str
    value: dict[str, Any]


def input_record(outcome: Accepted, origin: KafkaCoordinates, recorded_at: datetime) -> dict[str, Any]:
    """What ingest forwards for an accepted input with events, keyed by ``outcome.patient_id``."""
    return {
        "type": INPUT_RECORD,
        "patient_id": outcome.patient_id,
        "source": outcome.source_id,
        "message_id": outcome.message_id,
        "ingest": origin.as_dict(),
        "recorded_at": utc_iso(recorded_at),
        "events": [event.to_dict() for event in outcome.events],
        # For the input's receipt, which this stage writes: what ingest ignored in it.
        "warnings": [warning.as_dict() for warning in outcome.warnings],
    }


def link_record(
    link: IdentityLink, outcome: Accepted, origin: KafkaCoordinates, recorded_at: datetime
) -> dict[str, Any]:
    """What ingest sends, keyed by ``link.local_id``, when an input reveals a qualified INS: the link,
    carrying the input itself, which goes on to the INS id only once the link is recorded."""
    organization = outcome.events[0].source_organization if outcome.events else {}
    return {
        "type": LINK_RECORD,
        "local_id": link.local_id,
        "ins_id": link.ins_id,
        "source": outcome.source_id,
        "organization": organization,
        "ingest": origin.as_dict(),
        "recorded_at": utc_iso(recorded_at),
        "input": input_record(outcome, origin, recorded_at),
    }


def linked_event(record: dict[str, Any]) -> PathwayEvent:
    """The ``patient.linked`` event: the local id is replaced by the INS id from now on."""
    local_id, ins_id = record["local_id"], record["ins_id"]
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": NETWORK_ID_SYSTEM, "value": ins_id}],
        "link": [
            {
                "other": {
                    "reference": f"Patient/{local_id}",
                    "identifier": {"system": NETWORK_ID_SYSTEM, "value": local_id},
                },
                "type": "replaces",
            }
        ],
    }
    return PathwayEvent(
        event_id=str(uuid.uuid5(EVENT_ID_NAMESPACE, f"patient.linked|{local_id}|{ins_id}")),
        patient_id=ins_id,
        kind="patient.linked",
        occurred_at=record["recorded_at"],
        recorded_at=record["recorded_at"],
        source_id=record["source"],
        source_organization=record["organization"],
        resource=resource,
        ingest=record["ingest"],
        steps=("identity:qualified-ins-links-local-id",),
    )


def _under(event: dict[str, Any], surviving: str) -> dict[str, Any]:
    """An event made under a local id, moved to the id that local id was linked to.

    It keeps its id, made at ingest from the patient id its input names: were the id made again
    under the surviving id, the same input would give one id when its link was processed first and
    another when it was not, and what recipients hold would depend on arrival order (docs/CONSENT.md,
    "Convergence"). The same fact sent by two sources that both name the qualified INS still has one id.
    """
    resource = with_patient(event["resource"], surviving)
    return {
        **event,
        "patient_id": surviving,
        "resource": resource,
        "provenance": {**event["provenance"], "steps": [*event["provenance"]["steps"], "patient-id:linked"]},
    }


def seen_event_key(event_id: str, routing_id: str) -> str:
    """The ``identity-seen-events`` key of a fact: sealed under (and erased with) its routing id's key."""
    return f"{event_id}|{routing_id}"


def _memo(record: dict[str, Any]) -> str | None:
    """The ``identity-seen-messages`` key of an input, when its source gave it a hub-message-id."""
    return f"{record['source']}\x1f{record['message_id']}" if record.get("message_id") else None


def _first_message(stored: Any) -> tuple[list[str], dict[str, Any] | None]:
    """A seen message's event ids and first ingest coordinates (a bare list: written before these).

    Its ``patient_id`` is the routing id it was processed under (messages of two ids linked later
    may share one partition, so one table).
    """
    if isinstance(stored, dict):
        return list(stored.get("event_ids") or []), stored.get("ingest")
    return list(stored or []), None


class IdentityStage:
    """Handles one ``hub.identity.v1`` record at a time; the mappings are faust tables in the worker."""

    def __init__(
        self,
        aliases: MutableMapping[str, str],
        seen_messages: MutableMapping[str, Any],
        seen_events: MutableMapping[str, Any],
    ) -> None:
        self.aliases = aliases
        self.seen_messages = seen_messages
        self.seen_events = seen_events

    def handle(self, record: dict[str, Any]) -> list[Send]:
        """Every record to produce for one identity-stage record, in order.

        A function of the record and the tables only (no clock): read again after a worker died,
        the record makes the same sends, its receipt the same bytes.
        """
        if record.get("type") == LINK_RECORD:
            return self._link(record)
        return self._input(record)

    def _link(self, record: dict[str, Any]) -> list[Send]:
        """Record the link on the local id's partition, then send the input on to the INS id's.

        The ``patient.linked`` event is published by the INS id's partition, just before the input's
        events: on the pathway the link always comes first, so the share stage merges the local id's
        state (an objection made under it, say) before deciding anything the input brings.
        """
        local_id, ins_id = record["local_id"], record["ins_id"]
        current = self.aliases.get(local_id)
        # Which link record made the link: read again after a worker died, it announces it again.
        marker = seen_event_key(linked_event(record).event_id, local_id)
        newly_linked = current is None
        if newly_linked:
            self.aliases[local_id] = ins_id
            self.seen_events[marker] = record["ingest"]
            log.info("identity.linked", local_id=local_id, ins_id=ins_id)
        elif current != ins_id:
            log.warning("identity.conflict", local_id=local_id, linked_to=current, claimed=ins_id)
        elif self.seen_events.get(marker) == record["ingest"]:
            newly_linked = True  # redelivered: its announcement may never have left
        link = {k: v for k, v in record.items() if k != "input"}
        forwarded = {**record["input"], "linked": link if newly_linked else None}
        return [Send("identity", ins_id, forwarded)]

    def _input(self, record: dict[str, Any]) -> list[Send]:
        announced = record.get("linked")
        if announced:
            # Here, on the INS id's partition, the link goes out before the input's own events.
            announcement = [Send("pathway", announced["ins_id"], linked_event(announced).to_dict())]
            return announcement + self._input({**record, "linked": None})
        routing_id = record["patient_id"]
        surviving = self.aliases.get(routing_id, routing_id)
        origin = KafkaCoordinates(**record["ingest"])
        if surviving != routing_id:
            # An input this partition already processed before the link (redelivered after a worker
            # died, or sent again) made its events under this id: the surviving id's partition,
            # often on another worker, never saw it and would publish its facts again under new ids.
            first = self._first_seen(record, routing_id)
            if first is None:
                # Everything about one person is decided on the surviving id's partition, where its
                # seen facts and messages live: send the input there, once.
                return [Send("identity", surviving, {**record, "patient_id": surviving})]
            redelivered, first_ids = first
            if not redelivered:
                return [self._receipt(record, origin, "duplicate", first_ids)]
            # The very record processed here before the link: publish what it published then.
        # An input moved here from a linked local id: its events take this id (and keep their ids).
        events = [_under(e, routing_id) if e["patient_id"] != routing_id else e for e in record["events"]]
        record = {**record, "events": events}
        all_ids = [event["event_id"] for event in record["events"]]
        memo = _memo(record)
        if memo is not None and memo in self.seen_messages:
            first_ids, first_origin = _first_message(self.seen_messages[memo])
            if first_origin != record["ingest"]:
                return [self._receipt(record, origin, "duplicate", first_ids)]
        sends: list[Send] = []
        published: set[str] = set()
        for event in record["events"]:
            event_id = event["event_id"]
            key = seen_event_key(event_id, routing_id)
            first_origin = self.seen_events.get(key)
            if first_origin is None:
                self.seen_events[key] = record["ingest"]
            elif first_origin != record["ingest"] or event_id in published:
                # Published by another input (or twice in this one): a duplicate fact.
                continue
            # New, or this input's own fact read again after a worker died: (re)published, same id.
            published.add(event_id)
            sends.append(Send("pathway", routing_id, event))
        if memo is not None:
            self.seen_messages[memo] = {
                "event_ids": all_ids,
                "ingest": record["ingest"],
                "patient_id": routing_id,
            }
        status = "accepted" if sends or not all_ids else "duplicate"
        sends.append(self._receipt(record, origin, status, all_ids))
        return sends

    def _first_seen(self, record: dict[str, Any], routing_id: str) -> tuple[bool, list[str]] | None:
        """Whether this partition saw the input: (the very same record again?, its first event ids)."""
        memo = _memo(record)
        stored = self.seen_messages.get(memo) if memo is not None else None
        if stored is not None:
            first_ids, first_origin = _first_message(stored)
            redelivered = first_origin == record["ingest"]
            made_under = stored.get("patient_id", routing_id) if isinstance(stored, dict) else routing_id
            if redelivered and made_under != routing_id:
                # Processed after the link, on the surviving id (whose partition may be this one):
                # read again, it goes there again and comes out under the same ids.
                return None
            return redelivered, first_ids
        ids = [event["event_id"] for event in record["events"]]
        origins = [self.seen_events.get(seen_event_key(i, routing_id)) for i in ids]
        if not ids or any(o is None for o in origins):
            return None
        # Redelivered when this very record first published any of them (the rest came from others).
        return any(o == record["ingest"] for o in origins), ids

    @staticmethod
    def _receipt(record: dict[str, Any], origin: KafkaCoordinates, status: str, event_ids: list[str]) -> Send:
        accepted = Accepted(record["source"], record.get("message_id"), ())
        # A record written before ingest forwarded warnings has none to report.
        warnings = record.get("warnings") or []
        # The ingest record's timestamp, as ingest forwarded it: the same on every redelivery.
        at = datetime.fromisoformat(record["recorded_at"])
        return Send(
            "receipts",
            record["source"],
            receipt(accepted, origin, at=at, status=status, event_ids=event_ids, warnings=warnings),
        )
