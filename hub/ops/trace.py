"""``hub trace``, the pure part: from records already read, where one input or one event went.

A trace starts from a :class:`Target` (a pathway event id, an ingest record's coordinates, or a
source message id) and follows it through the hub's topics:

1. ``hub.receipts.v1`` and ``hub.dlq.v1``: the input's receipt (status, error code, event ids) and,
   for a reject, its DLQ record; :func:`select` then says which events and inputs to look for;
2. ``hub.pathway.v1``: each event's envelope (kind, patient id, instants, source), never its resource;
3. ``hub.audit.v1``: each share decision (verdict, rule, reason, policy version) per recipient, the
   reject's AuditEvent, a refused Consent's AuditEvent;
4. ``hub.pathway.<recipient>.v1``: whether the recipient holds a copy of the event;
5. ``hub.alerts.v1`` (when it exists): alerts citing one of the events.

Nothing clinical is kept: resources are never copied out of the records, only kinds and ids.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hub.audit_vocabulary import (
    CONSENT_REJECTED,
    EVENT_ID_SYSTEM,
    INGEST_REJECT,
    KAFKA_RECORD_SYSTEM,
    SHARE_RELEASES,
    SUBTYPE_SYSTEM,
)
from hub.consent.audit import share_decisions
from hub.kafka.clients import Record
from hub.records import ERROR_CODE_HEADER, MESSAGE_ID_HEADER, ORIGIN_HEADER, SOURCE_HEADER, header

TargetKind = Literal["event", "ingest", "message"]


# -- what to look for ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the operator asked about; ``value`` is an event id, ``topic/partition/offset`` or a message id."""

    kind: TargetKind
    value: str

    def describe(self) -> str:
        """``event <id>``, ``ingest record <coordinates>`` or ``message id <id>``."""
        return {"event": "event", "ingest": "ingest record", "message": "message id"}[self.kind] + (
            f" {self.value}"
        )


def parse_target(text: str | None, *, message_id: str | None, ingest_topic: str, prefix: str = "") -> Target:
    """The target of ``hub trace ID`` or ``hub trace --message-id X``; ValueError says what is wrong.

    ``ID`` is an event id (a UUID), ``topic/partition/offset`` or ``partition/offset`` (on
    ``ingest_topic``). A topic given without the configured ``prefix`` is read under it.
    """
    if message_id is not None:
        if text:
            raise ValueError("give an id or --message-id, not both")
        if not message_id:
            raise ValueError("--message-id is empty")
        return Target("message", message_id)
    if not text:
        raise ValueError("give an event id, an ingest record (topic/partition/offset) or --message-id")
    try:
        return Target("event", str(uuid.UUID(text)))
    except ValueError:
        pass
    parts = text.split("/")
    if len(parts) == 2:
        parts = [ingest_topic, *parts]
    if len(parts) == 3 and parts[0] and parts[1].isdigit() and parts[2].isdigit():
        topic = parts[0]
        if prefix and not topic.startswith(prefix):
            topic = prefix + topic
        return Target("ingest", f"{topic}/{int(parts[1])}/{int(parts[2])}")
    raise ValueError(
        f"{text!r} is neither an event id (UUID) nor an ingest record (topic/partition/offset or "
        "partition/offset); for a source message id use --message-id"
    )


def coordinates(value: Any) -> str | None:
    """``topic/partition/offset`` of a receipt's or a provenance's ``ingest`` object, or None."""
    if isinstance(value, dict) and all(name in value for name in ("topic", "partition", "offset")):
        return f"{value['topic']}/{value['partition']}/{value['offset']}"
    return None


def where(record: Record) -> str:
    """The coordinates of a record read back."""
    return f"{record.topic}/{record.partition}/{record.offset}"


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def receipt_matches(target: Target, receipt: Any) -> bool:
    """True when a receipt is the target's (its input, its message, or one listing the event)."""
    if not isinstance(receipt, dict):
        return False
    if target.kind == "event":
        return target.value in _strings(receipt.get("event_ids"))
    if target.kind == "ingest":
        return coordinates(receipt.get("ingest")) == target.value
    return receipt.get("message_id") == target.value


def dlq_matches(target: Target, record: Record) -> bool:
    """True when a DLQ record is the target's reject (by origin header or message id header)."""
    if target.kind == "ingest":
        return header(record.headers, ORIGIN_HEADER) == target.value
    if target.kind == "message":
        return header(record.headers, MESSAGE_ID_HEADER) == target.value
    return False


@dataclass(frozen=True)
class Selection:
    """The events (by id) and inputs (by coordinates) a trace follows after the receipts are read."""

    event_ids: frozenset[str] = frozenset()
    inputs: frozenset[str] = frozenset()

    def wants_event(self, event: Any) -> bool:
        """A pathway event listed by a receipt, or produced from one of the inputs."""
        if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
            return False
        if event["event_id"] in self.event_ids:
            return True
        provenance = event.get("provenance")
        origin = coordinates(provenance.get("ingest")) if isinstance(provenance, dict) else None
        return origin is not None and origin in self.inputs

    def with_events(self, event_ids: Iterable[str]) -> Selection:
        """The same selection with more event ids (those found on the pathway by their input)."""
        return Selection(self.event_ids | frozenset(event_ids), self.inputs)

    def wants_audit(self, audit: Any) -> bool:
        """An AuditEvent about one of the events, or the reject of one of the inputs."""
        subject = audit_subject(audit)
        if subject is None:
            return False
        system, value = subject
        if system == KAFKA_RECORD_SYSTEM:
            return value in self.inputs
        return system == EVENT_ID_SYSTEM and not self.event_ids.isdisjoint(audited_events(audit))

    def wants_copy(self, copy: Any) -> bool:
        """A recipient copy of one of the events."""
        return isinstance(copy, dict) and copy.get("event_id") in self.event_ids

    def wants_alert(self, alert: Any) -> bool:
        """An alert whose reasons cite one of the events."""
        return bool(set(alert_event_ids(alert)) & self.event_ids)


def select(target: Target, receipts: Iterable[Any], dlq: Iterable[Record] = ()) -> Selection:
    """What to look for downstream: the event itself, or the events and inputs of the matching receipts.

    ``receipts`` are receipt values (JSON); those not matching the target are ignored.
    """
    if target.kind == "event":
        return Selection(frozenset({target.value}))
    matching = [receipt for receipt in receipts if receipt_matches(target, receipt)]
    event_ids = {event_id for receipt in matching for event_id in _strings(receipt.get("event_ids"))}
    inputs = {coordinates(receipt.get("ingest")) for receipt in matching}
    inputs |= {header(record.headers, ORIGIN_HEADER) for record in dlq if dlq_matches(target, record)}
    if target.kind == "ingest":
        inputs.add(target.value)
    return Selection(frozenset(event_ids), frozenset(value for value in inputs if value))


# -- AuditEvents --------------------------------------------------------------------------------------


def audit_subject(audit: Any) -> tuple[str, str] | None:
    """``(system, value)`` of an AuditEvent's first entity: an event id or a Kafka record."""
    try:
        identifier = audit["entity"][0]["what"]["identifier"]
        system, value = identifier["system"], identifier["value"]
    except (KeyError, IndexError, TypeError):
        return None
    return (system, value) if isinstance(system, str) and isinstance(value, str) else None


def audited_events(audit: Any) -> set[str]:
    """The pathway events an AuditEvent is about: its first entity's, and for late releases
    (``share-releases``) every event it released."""
    subject = audit_subject(audit)
    events = {subject[1]} if subject is not None and subject[0] == EVENT_ID_SYSTEM else set()
    if audit_subtype(audit) == SHARE_RELEASES:  # read only there: a trace reads the whole audit topic
        events |= {decision["event_id"] for decision in share_decisions(audit)}
    return events


def audit_subtype(audit: Any) -> str | None:
    """``share-decisions``, ``share-releases``, ``ingest-reject``, ``consent-rejected``... (its code)."""
    subtypes = audit.get("subtype") if isinstance(audit, dict) else None
    for coding in subtypes if isinstance(subtypes, list) else ():
        if isinstance(coding, dict) and coding.get("system") == SUBTYPE_SYSTEM:
            return _text(coding.get("code"))
    return None


def alert_event_ids(alert: Any) -> list[str]:
    """Event ids an alert cites in ``reasons[].event_ids`` (the planned alert value)."""
    reasons = alert.get("reasons") if isinstance(alert, dict) else None
    return [
        event_id
        for reason in (reasons if isinstance(reasons, list) else ())
        if isinstance(reason, dict)
        for event_id in _strings(reason.get("event_ids"))
    ]


# -- the trace ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptView:
    """One receipt: where the input was, what became of it; ``reject_audited`` only for a reject."""

    where: str
    ingest: str | None
    source: str | None
    message_id: str | None
    status: str
    code: str | None
    detail: str | None
    at: str | None
    event_ids: tuple[str, ...]
    reject_audited: bool | None = None


@dataclass(frozen=True)
class RejectView:
    """One DLQ record of the input (the original bytes stay in the DLQ; only headers are shown)."""

    where: str
    origin: str | None
    code: str | None
    source: str | None
    message_id: str | None


@dataclass(frozen=True)
class DecisionView:
    """One share decision from its AuditEvent; ``copy`` is None when the recipient's topic was not read."""

    recipient: str
    verdict: str
    rule: str
    reason: str
    policy: str
    policy_version: str
    recorded: str | None
    copy: bool | None


@dataclass(frozen=True)
class EventView:
    """One pathway event: envelope only (no resource), with every recipient's decision."""

    event_id: str
    on_pathway: bool
    kind: str | None = None
    patient_id: str | None = None
    occurred_at: str | None = None
    recorded_at: str | None = None
    source: str | None = None
    ingest: str | None = None
    where: str | None = None
    decisions: tuple[DecisionView, ...] = ()
    #: Registered recipients without a decision on record (registered later, or not processed yet).
    undecided: tuple[str, ...] = ()
    #: Recipients holding a copy without a decision on record: never expected, always worth a look.
    unaudited_copies: tuple[str, ...] = ()
    #: A Consent event the share stage refused to apply: the AuditEvent's outcome, code first.
    refusals: tuple[str, ...] = ()


@dataclass(frozen=True)
class AlertView:
    """One alert citing an event: id, status, network, criteria (no patient data)."""

    where: str
    alert_id: str | None
    status: str | None
    network: str | None
    criteria: tuple[str, ...]
    event_ids: tuple[str, ...]


@dataclass(frozen=True)
class Trace:
    """Everything found about a target; :attr:`found` is False when no topic knows it."""

    target: Target
    receipts: tuple[ReceiptView, ...] = ()
    rejects: tuple[RejectView, ...] = ()
    events: tuple[EventView, ...] = ()
    alerts: tuple[AlertView, ...] = ()
    #: Recipient topics that were read (a copy can only be checked on those).
    recipient_topics_read: tuple[str, ...] = field(default=())

    @property
    def found(self) -> bool:
        """True when a receipt, a DLQ record, an event or a decision names the target."""
        return bool(
            self.receipts
            or self.rejects
            or any(event.on_pathway or event.decisions or event.refusals for event in self.events)
        )

    def to_json(self) -> dict[str, Any]:
        """The trace as JSON-ready data (``hub trace --json``)."""
        document = asdict(self)
        document["found"] = self.found
        return document


def _json(record: Record) -> Any:
    return record.json_value()


def _receipt_view(record: Record, receipt: dict[str, Any], audited_rejects: set[str]) -> ReceiptView:
    error = receipt.get("error") if isinstance(receipt.get("error"), dict) else {}
    ingest = coordinates(receipt.get("ingest"))
    status = str(receipt.get("status", "unknown"))
    return ReceiptView(
        where=where(record),
        ingest=ingest,
        source=_text(receipt.get("source")),
        message_id=_text(receipt.get("message_id")),
        status=status,
        code=_text(error.get("code")) if error else None,
        detail=_text(error.get("detail")) if error else None,
        at=_text(receipt.get("at")),
        event_ids=tuple(_strings(receipt.get("event_ids"))),
        reject_audited=(ingest in audited_rejects) if status == "rejected" else None,
    )


def _decision(
    audit: dict[str, Any], details: Mapping[str, str], copies: Mapping[str, set[str]] | None, event_id: str
) -> DecisionView:
    recipient = details.get("recipient", "?")
    copy = None if copies is None or recipient not in copies else event_id in copies[recipient]
    return DecisionView(
        recipient=recipient,
        verdict=details.get("verdict", "?"),
        rule=details.get("rule", "?"),
        reason=details.get("reason", ""),
        policy=details.get("policy", ""),
        policy_version=details.get("policy_version", "?"),
        recorded=_text(audit.get("recorded")),
        copy=copy,
    )


def _unique_audits(audit: Iterable[Record], selection: Selection) -> list[dict[str, Any]]:
    """Wanted AuditEvents in topic order, a redelivered one (same id) kept once."""
    seen: dict[str, dict[str, Any]] = {}
    for record in audit:
        value = _json(record)
        if isinstance(value, dict) and selection.wants_audit(value):
            seen[str(value.get("id") or where(record))] = value
    return list(seen.values())


def build_trace(
    target: Target,
    *,
    receipts: Sequence[Record] = (),
    dlq: Sequence[Record] = (),
    pathway: Sequence[Record] = (),
    audit: Sequence[Record] = (),
    alerts: Sequence[Record] = (),
    copies: Mapping[str, Sequence[Record]] | None = None,
    recipients: Sequence[str] = (),
) -> Trace:
    """The trace of ``target`` from the records of each topic (unfiltered or pre-filtered alike).

    ``copies`` maps a recipient id to the records of its topic (a recipient absent from it: topic not
    read); ``recipients`` are the registered ones, each expected to have a decision per event.
    """
    receipt_values = [(record, _json(record)) for record in receipts]
    matching = [(record, value) for record, value in receipt_values if receipt_matches(target, value)]
    rejects = [record for record in dlq if dlq_matches(target, record)]
    selection = select(target, [value for _, value in matching], rejects)
    found_events: dict[str, tuple[Record, dict[str, Any]]] = {}
    for record in pathway:
        value = _json(record)
        if selection.wants_event(value) and str(value["event_id"]) not in found_events:
            found_events[str(value["event_id"])] = (record, value)
    selection = selection.with_events(found_events)
    audits = _unique_audits(audit, selection)
    audited_rejects = {
        subject[1]
        for value in audits
        if audit_subtype(value) == INGEST_REJECT and (subject := audit_subject(value)) is not None
    }
    copied: dict[str, set[str]] | None = None
    if copies is not None:
        copied = {
            recipient: {
                str(value["event_id"]) for record in records if selection.wants_copy(value := _json(record))
            }
            for recipient, records in copies.items()
        }
    receipt_views = tuple(_receipt_view(record, value, audited_rejects) for record, value in matching)
    # Events in the order the receipts list them, then those found on the pathway only.
    order: list[str] = []
    if target.kind == "event":
        order.append(target.value)
    else:
        for view in receipt_views:
            order.extend(event_id for event_id in view.event_ids if event_id not in order)
    order.extend(event_id for event_id in found_events if event_id not in order)
    events = tuple(
        _event_view(event_id, found_events.get(event_id), audits, copied, recipients) for event_id in order
    )
    alert_views = tuple(
        _alert_view(record, value)
        for record in alerts
        if selection.wants_alert(value := _json(record)) and isinstance(value, dict)
    )
    return Trace(
        target=target,
        receipts=receipt_views,
        rejects=tuple(_reject_view(record) for record in rejects),
        events=events,
        alerts=alert_views,
        recipient_topics_read=tuple(sorted(copies or {})),
    )


def _reject_view(record: Record) -> RejectView:
    return RejectView(
        where=where(record),
        origin=header(record.headers, ORIGIN_HEADER),
        code=header(record.headers, ERROR_CODE_HEADER),
        source=header(record.headers, SOURCE_HEADER),
        message_id=header(record.headers, MESSAGE_ID_HEADER),
    )


def _event_view(
    event_id: str,
    found: tuple[Record, dict[str, Any]] | None,
    audits: list[dict[str, Any]],
    copies: dict[str, set[str]] | None,
    recipients: Sequence[str],
) -> EventView:
    about = [value for value in audits if event_id in audited_events(value)]
    decisions = sorted(
        (
            _decision(value, details, copies, event_id)
            for value in about
            for details in share_decisions(value)
            if details.get("event_id", event_id) == event_id  # a release names several events
        ),
        key=lambda decision: (decision.recipient, decision.recorded or ""),
    )
    refusals = tuple(
        str(value.get("outcomeDesc", "refused"))
        for value in about
        if audit_subtype(value) == CONSENT_REJECTED
    )
    decided = {decision.recipient for decision in decisions}
    undecided = tuple(recipient for recipient in recipients if recipient not in decided)
    unaudited = tuple(
        sorted(
            recipient
            for recipient, ids in (copies or {}).items()
            if event_id in ids and recipient not in decided
        )
    )
    if found is None:
        return EventView(
            event_id,
            on_pathway=False,
            decisions=tuple(decisions),
            undecided=undecided if decisions else (),
            unaudited_copies=unaudited,
            refusals=refusals,
        )
    record, event = found
    source = event.get("source")
    provenance = event.get("provenance")
    return EventView(
        event_id,
        on_pathway=True,
        kind=_text(event.get("kind")),
        patient_id=_text(event.get("patient_id")),
        occurred_at=_text(event.get("occurred_at")),
        recorded_at=_text(event.get("recorded_at")),
        source=_text(source.get("id")) if isinstance(source, dict) else None,
        ingest=coordinates(provenance.get("ingest")) if isinstance(provenance, dict) else None,
        where=where(record),
        decisions=tuple(decisions),
        undecided=undecided if decisions else (),
        unaudited_copies=unaudited,
        refusals=refusals,
    )


def _alert_view(record: Record, alert: dict[str, Any]) -> AlertView:
    network = alert.get("network")
    reasons = alert.get("reasons")
    return AlertView(
        where=where(record),
        alert_id=_text(alert.get("alert_id")),
        status=_text(alert.get("status")),
        network=_text(network.get("id")) if isinstance(network, dict) else None,
        criteria=tuple(
            str(reason["criterion"])
            for reason in (reasons if isinstance(reasons, list) else ())
            if isinstance(reason, dict) and "criterion" in reason
        ),
        event_ids=tuple(alert_event_ids(alert)),
    )


# -- text ---------------------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    ]


def _copy_text(copy: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[copy]


def _named(what: str, value: str | None) -> str:
    """``source gp-x`` / ``message m-1``, or ``no source id`` / ``no message id`` when the input had none
    (no header, or one the receipt did not echo)."""
    return f"{what} {value}" if value is not None else f"no {what} id"


def render(trace: Trace) -> list[str]:
    """The lines ``hub trace`` prints: ids, kinds, codes, rules and reasons; never clinical content."""
    if not trace.found:
        return [f"{trace.target.describe()}: not found (no receipt, DLQ record, event or decision names it)"]
    lines = [f"trace of {trace.target.describe()}"]
    if not trace.receipts:
        lines.append("receipt: none found")
    for receipt in trace.receipts:
        lines.append(
            f"receipt {receipt.where}: {receipt.status}"
            + (f" {receipt.code}" if receipt.code else "")
            + f"  input {receipt.ingest}  {_named('source', receipt.source)}"
            + f"  {_named('message', receipt.message_id)}"
            + f"  at {receipt.at}"
        )
        if receipt.detail:
            lines.append(f"  error: {receipt.detail}")
        if receipt.reject_audited:
            lines.append("  reject AuditEvent: recorded")
        lines.append(f"  events: {', '.join(receipt.event_ids) if receipt.event_ids else 'none'}")
    for reject in trace.rejects:
        lines.append(
            f"DLQ {reject.where}: {reject.code}  input {reject.origin}  {_named('source', reject.source)}"
        )
    for event in trace.events:
        lines.extend(_render_event(event))
    for alert in trace.alerts:
        lines.append(
            f"alert {alert.alert_id} ({alert.where}): {alert.status}  network {alert.network}"
            f"  criteria {', '.join(alert.criteria) or '-'}"
        )
    return lines


def _render_event(event: EventView) -> list[str]:
    if event.on_pathway:
        lines = [
            f"event {event.event_id}  {event.kind}",
            f"  patient {event.patient_id}  occurred {event.occurred_at}  source {event.source}"
            f"  input {event.ingest}  pathway {event.where}",
        ]
    else:
        lines = [f"event {event.event_id}: not on the pathway (published by an earlier input, or lost)"]
    lines.extend(f"  Consent refused: {refusal}" for refusal in event.refusals)
    if not event.decisions:
        lines.append("  decisions: none on record (the share stage has not processed this event yet)")
    else:
        rows = [("recipient", "verdict", "rule", "policy version", "copy", "reason")]
        rows.extend(
            (d.recipient, d.verdict, d.rule, d.policy_version, _copy_text(d.copy), d.reason)
            for d in event.decisions
        )
        lines.extend("  " + line for line in table(rows))
    lines.extend(f"  {recipient}: no decision on record" for recipient in event.undecided)
    lines.extend(
        f"  {recipient}: holds a copy WITHOUT a decision on record" for recipient in event.unaudited_copies
    )
    return lines


def dumps(trace: Trace) -> str:
    """The trace as indented JSON."""
    return json.dumps(trace.to_json(), indent=2, ensure_ascii=False)
