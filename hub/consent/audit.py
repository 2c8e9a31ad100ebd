"""FHIR R4 AuditEvents for ``hub.audit.v1``: share decisions, ingest rejects, refused Consents.

How a record reads (docs/CONSENT.md says it for a data-protection officer):

- ``type`` is DICOM 110106 *Export* for share decisions, 110107 *Import* for an ingest reject,
  110110 *Patient Record* for a refused Consent; ``subtype`` (``urn:hub:audit-event-subtype``) names
  which: ``share-decisions``, ``ingest-reject``, ``consent-rejected``.
- The share stage writes **one AuditEvent per pathway event** (``share-decisions``), with every
  recipient's decision in it (DESIGN.md §2 allows it, so that auditing does not multiply the records
  written): ``entity[0]`` is the event (``detail``: ``policy``, ``policy_version``, ``kind``,
  ``source``), then one entity per recipient (role *Data Destination*) whose ``detail`` holds
  ``verdict``, ``rule``, ``reason``, ``policy``, ``policy_version``, ``recipient``, ``topic``: the
  machine-readable decision. ``outcome`` is ``0`` (success) when at least one recipient was sent
  the event, ``4`` (minor failure: not done, as an HTTP 4xx) when it was withheld from every one.
  Records written before it (``share-decision``, one per event and recipient, the decision in
  ``entity[0]``) stay readable: :func:`share_decisions` reads both.
- An ingest reject or a refused Consent: ``outcome`` ``4``; ``outcomeDesc`` says why in words.
- The patient appears by network patient id only: never a name, never an INS.
- ``id`` is deterministic: a redelivered decision yields the same AuditEvent id, so consumers
  de-duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from hub.audit_vocabulary import (
    CONSENT_REJECTED,
    DATA_DESTINATION_ROLE,
    DESTINATION_ROLE,
    DOMAIN_RESOURCE_ROLE,
    EVENT_ID_SYSTEM,
    EXPORT,
    IMPORT,
    INGEST_COMPONENT,
    INGEST_REJECT,
    JOB_ROLE,
    KAFKA_RECORD_SYSTEM,
    OUTCOME_NOT_DONE,
    OUTCOME_SUCCESS,
    PATIENT_RECORD,
    RECIPIENT_SYSTEM,
    SHARE_COMPONENT,
    SHARE_DECISION,
    SHARE_DECISIONS,
    SHARE_RELEASES,
    SOURCE_ROLE,
    SYSTEM_OBJECT,
    TREATMENT,
    agent,
    audit_event,
    audit_id,
    component,
    detail,
    entity,
    identified,
    observer,
    patient_entity,
    source_who,
)
from hub.consent.policy import FinalDecision
from hub.consent.recipients import Recipient
from hub.consent.state import PERMIT, ConsentRejected
from hub.ingest.outcome import KafkaCoordinates, Rejected
from hub.normalise.time import utc_iso
from hub.pathway.network_id import NETWORK_ID_SYSTEM
from hub.topics import recipient_pathway


def _source_agent(source_id: str | None, *, requestor: bool) -> dict[str, Any]:
    return agent(SOURCE_ROLE, source_who(source_id), requestor=requestor)


def _event_id(event: Mapping[str, Any]) -> str:
    value = event.get("event_id")
    return value if isinstance(value, str) and value else "unreadable"


def _patient_entity(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The patient by network id only, or nothing when the envelope does not say."""
    patient_id = event.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id:
        return []
    return [patient_entity(NETWORK_ID_SYSTEM, patient_id)]


def _aware(recorded: datetime) -> str:
    if recorded.utcoffset() is None:
        raise ValueError("recorded must be timezone-aware")
    return utc_iso(recorded)


def _recipient_agent(recipient: Recipient | str) -> dict[str, Any]:
    if isinstance(recipient, str):
        return {
            "type": DESTINATION_ROLE,
            "who": {"identifier": {"system": RECIPIENT_SYSTEM, "value": recipient}},
            "name": recipient,
            "requestor": False,
        }
    return {
        "type": DESTINATION_ROLE,
        "who": {"type": "Organization", "identifier": recipient.organization.to_json()},
        "altId": recipient.kafka_principal,
        "name": recipient.id,
        "requestor": False,
    }


def audit_decisions(
    decisions: Sequence[tuple[Recipient | str, FinalDecision]],
    *,
    event: Mapping[str, Any],
    recorded: datetime,
) -> dict[str, Any]:
    """The one AuditEvent of a pathway event's share decisions: every recipient's verdict, rule, reason.

    ``decisions`` is not empty; a recipient is an id when unregistered. The id is stable for the
    event, the policy version and the recipients decided: a redelivered event yields the same id.
    Late releases are told by :func:`audit_releases` (before session 18 by an AuditEvent of this
    form with the detail ``released_by``, which :func:`share_decisions` still reads).
    """
    event_id = _event_id(event)
    first = decisions[0][1]
    recipient_ids = [_recipient_id(r) for r, _ in decisions]
    permitted = sum(1 for _, decision in decisions if decision.verdict == PERMIT)
    return _share_audit(
        audit_id(
            SHARE_DECISIONS,
            event_id,
            first.policy_version,
            *sorted(recipient_ids),
        ),
        SHARE_DECISIONS,
        recorded=recorded,
        outcome=OUTCOME_SUCCESS if permitted else OUTCOME_NOT_DONE,
        description=f"sent to {permitted} of {len(decisions)} recipients",
        recipients=[recipient for recipient, _ in decisions],
        entities=[*_decided_entities(event, decisions, None), *_patient_entity(event)],
    )


def _share_audit(
    audit_id_: str,
    subtype: str,
    *,
    recorded: datetime,
    outcome: str,
    description: str,
    recipients: Sequence[Recipient | str],
    entities: list[dict[str, Any]],
) -> dict[str, Any]:
    """An AuditEvent of the share stage (share decisions, late releases): an export for treatment by
    the hub to the ``recipients`` decided."""
    return audit_event(
        id=audit_id_,
        type=EXPORT,
        subtype=subtype,
        action="R",
        recorded=_aware(recorded),
        outcome=outcome,
        description=description,
        purpose=[TREATMENT],
        agents=[
            agent(SOURCE_ROLE, component(SHARE_COMPONENT), requestor=False),
            *(_recipient_agent(recipient) for recipient in recipients),
        ],
        source=observer(SHARE_COMPONENT),
        entities=entities,
    )


#: Released events in one ``share-releases`` AuditEvent at most: a patient's release of hundreds of
#: waiting events (up to MAX_WAITING_EVENTS) is told in several, each a bounded record.
RELEASES_PER_AUDIT = 50


def audit_releases(
    released: Sequence[tuple[Mapping[str, Any], Sequence[tuple[Recipient | str, FinalDecision]]]],
    *,
    released_by: str,
    recorded: datetime,
) -> list[dict[str, Any]]:
    """The AuditEvents of the late releases one event made: each released event and its recipients'
    verdict, rule and basis, ``RELEASES_PER_AUDIT`` events to an AuditEvent (subtype ``share-releases``).

    One record where one per released event was written before (a release is a patient's care team or
    consent changing, and it releases every event that waited for it: the demo mix wrote 2.50 audit
    records per input instead of 2.74-2.81, docs/PERFORMANCE.md session 18). Every fact a
    ``share-decisions`` AuditEvent of one released event held is here: the event entity (its id, kind,
    source, policy and ``released_by``) followed by one entity per recipient released. The id is
    stable for the releasing event, the policy version and the (event, recipient) pairs: a release
    read again yields the same ids.
    """
    audits: list[dict[str, Any]] = []
    for start in range(0, len(released), RELEASES_PER_AUDIT):
        part = released[start : start + RELEASES_PER_AUDIT]
        policy_version = part[0][1][0][1].policy_version
        pairs = sorted(
            f"{_event_id(event)}|{_recipient_id(r)}" for event, decisions in part for r, _ in decisions
        )
        recipients = {_recipient_id(r): r for _, decisions in part for r, _ in decisions}
        audits.append(
            _share_audit(
                audit_id(SHARE_RELEASES, released_by, policy_version, *pairs),
                SHARE_RELEASES,
                recorded=recorded,
                outcome=OUTCOME_SUCCESS,
                description=f"released {len(part)} waiting events to {len(recipients)} recipients",
                recipients=list(recipients.values()),
                entities=[
                    *(
                        item
                        for event, decisions in part
                        for item in _decided_entities(event, decisions, released_by)
                    ),
                    *_patient_entity(part[0][0]),
                ],
            )
        )
    return audits


def _recipient_id(recipient: Recipient | str) -> str:
    return recipient if isinstance(recipient, str) else recipient.id


def _decided_entities(
    event: Mapping[str, Any],
    decisions: Sequence[tuple[Recipient | str, FinalDecision]],
    released_by: str | None,
) -> list[dict[str, Any]]:
    """An event's entity (its id, with the policy, ``released_by``, kind and source as details), then
    one entity per recipient decided: its verdict, rule, reason, policy and topic."""
    first = decisions[0][1]
    common = [detail("policy", first.policy), detail("policy_version", first.policy_version)]
    if released_by is not None:
        common.append(detail("released_by", released_by))
    if isinstance(event.get("kind"), str):
        common.append(detail("kind", event["kind"]))
    source = event.get("source")
    if isinstance(source, dict) and isinstance(source.get("id"), str):
        common.append(detail("source", source["id"]))
    per_recipient = [
        entity(
            identified(RECIPIENT_SYSTEM, recipient_id),
            type=SYSTEM_OBJECT,
            role=DATA_DESTINATION_ROLE,
            details=[
                detail("verdict", decision.verdict),
                detail("rule", decision.rule),
                detail("reason", decision.reason),
                detail("policy", decision.policy),
                detail("policy_version", decision.policy_version),
                detail("recipient", recipient_id),
                detail("topic", recipient_pathway(recipient_id)),
            ],
        )
        for recipient_id, decision in ((_recipient_id(r), d) for r, d in decisions)
    ]
    return [
        entity(
            identified(EVENT_ID_SYSTEM, _event_id(event)),
            type=SYSTEM_OBJECT,
            role=DOMAIN_RESOURCE_ROLE,
            details=common,
        ),
        *per_recipient,
    ]


def _details_of(entity: Any) -> dict[str, str]:
    details = entity.get("detail") if isinstance(entity, dict) else None
    return {
        item["type"]: str(item.get("valueString", ""))
        for item in (details if isinstance(details, list) else ())
        if isinstance(item, dict) and isinstance(item.get("type"), str)
    }


def share_decisions(audit: Any) -> list[dict[str, str]]:
    """Every share decision an AuditEvent records, one dict per recipient; [] for any other record.

    Each dict has ``event_id``, ``recipient``, ``verdict``, ``rule``, ``reason``, ``policy``,
    ``policy_version`` and ``topic`` (and ``kind``, ``source``, ``released_by`` when known). Reads every
    form: one AuditEvent per event (``share-decisions``), the late releases one event made
    (``share-releases``), and, written before both, one per decision (``share-decision``).
    """
    if not isinstance(audit, dict):
        return []
    codes = {s.get("code") for s in audit.get("subtype") or () if isinstance(s, dict)}
    entities = audit.get("entity")
    if (
        not isinstance(entities, list)
        or not entities
        or not codes & {SHARE_DECISIONS, SHARE_DECISION, SHARE_RELEASES}
    ):
        return []
    if SHARE_RELEASES in codes:
        return _released(entities)
    what = entities[0].get("what") if isinstance(entities[0], dict) else None
    identifier = what.get("identifier") if isinstance(what, dict) else None
    event_id = str(identifier.get("value", "")) if isinstance(identifier, dict) else ""
    common = {**_details_of(entities[0]), "event_id": event_id}
    if SHARE_DECISION in codes:
        return [common]
    return [
        {**common, **_details_of(entity)}
        for entity in entities[1:]
        if isinstance(entity, dict) and entity.get("role") == DATA_DESTINATION_ROLE
    ]


def decision_labels(audit: Any) -> list[tuple[str, str]]:
    """``(rule, verdict)`` of every share decision an AuditEvent records, as :func:`share_decisions`
    finds them, without building each decision: the metrics count every AuditEvent a worker writes."""
    if not isinstance(audit, dict):
        return []
    codes = {s.get("code") for s in audit.get("subtype") or () if isinstance(s, dict)}
    entities = audit.get("entity")
    if not isinstance(entities, list) or not entities:
        return []
    if SHARE_DECISION in codes:
        deciding = entities[:1]
    elif codes & {SHARE_DECISIONS, SHARE_RELEASES}:
        deciding = [e for e in entities if isinstance(e, dict) and e.get("role") == DATA_DESTINATION_ROLE]
    else:
        return []
    found = []
    for item in deciding:
        said = {"rule": "", "verdict": ""}
        details = item.get("detail") if isinstance(item, dict) else None
        for one in details if isinstance(details, list) else ():
            if isinstance(one, dict) and one.get("type") in said:
                said[one["type"]] = str(one.get("valueString", ""))
        found.append((said["rule"], said["verdict"]))
    return found


def _released(entities: list[Any]) -> list[dict[str, str]]:
    """The decisions of a ``share-releases`` AuditEvent: each recipient entity with the details of the
    event entity before it."""
    found: list[dict[str, str]] = []
    common: dict[str, str] | None = None
    for item in entities:
        if not isinstance(item, dict):
            continue
        if item.get("role") == DATA_DESTINATION_ROLE:
            if common is not None:
                found.append({**common, **_details_of(item)})
            continue
        what = item.get("what")
        identifier = what.get("identifier") if isinstance(what, dict) else None
        if isinstance(identifier, dict) and identifier.get("system") == EVENT_ID_SYSTEM:
            common = {**_details_of(item), "event_id": str(identifier.get("value", ""))}
        else:
            common = None  # the patient, or anything else: no recipient belongs to it
    return found


def audit_reject(rejected: Rejected, *, origin: KafkaCoordinates, recorded: datetime) -> dict[str, Any]:
    """The AuditEvent of one rejected ingest record: source, Kafka coordinates, code; no clinical data."""
    details = [
        detail("code", str(rejected.code)),
        detail("detail", rejected.detail),
        detail("topic", origin.topic),
        detail("partition", str(origin.partition)),
        detail("offset", str(origin.offset)),
    ]
    if rejected.message_id:
        details.append(detail("message_id", rejected.message_id))
    return audit_event(
        id=audit_id("reject", str(origin), str(rejected.code)),
        type=IMPORT,
        subtype=INGEST_REJECT,
        action="C",
        recorded=_aware(recorded),
        outcome=OUTCOME_NOT_DONE,
        description=f"{rejected.code}: {rejected.detail}",
        agents=[
            _source_agent(rejected.source_id, requestor=True),
            agent(DESTINATION_ROLE, component(INGEST_COMPONENT), requestor=False),
        ],
        source=observer(INGEST_COMPONENT),
        entities=[
            entity(
                identified(KAFKA_RECORD_SYSTEM, str(origin)),
                type=SYSTEM_OBJECT,
                role=JOB_ROLE,
                details=details,
            )
        ],
    )


def audit_consent_rejected(
    rejection: ConsentRejected, *, event: Mapping[str, Any], recorded: datetime
) -> dict[str, Any]:
    """The AuditEvent of a Consent the hub refused to apply (the patient's state did not change)."""
    event_id = _event_id(event)
    source = event.get("source")
    source_id = source.get("id") if isinstance(source, dict) else None
    return audit_event(
        id=audit_id(CONSENT_REJECTED, event_id),
        type=PATIENT_RECORD,
        subtype=CONSENT_REJECTED,
        action="U",
        recorded=_aware(recorded),
        outcome=OUTCOME_NOT_DONE,
        description=f"{rejection.code}: {rejection.detail}",
        agents=[
            _source_agent(source_id if isinstance(source_id, str) else None, requestor=True),
            agent(DESTINATION_ROLE, component(SHARE_COMPONENT), requestor=False),
        ],
        source=observer(SHARE_COMPONENT),
        entities=[
            entity(
                identified(EVENT_ID_SYSTEM, event_id),
                type=SYSTEM_OBJECT,
                role=DOMAIN_RESOURCE_ROLE,
                details=[detail("code", rejection.code), detail("detail", rejection.detail)],
            ),
            *_patient_entity(event),
        ],
    )
