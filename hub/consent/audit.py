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

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from hub.consent.policy import FinalDecision
from hub.consent.recipients import Recipient
from hub.consent.state import PERMIT, ConsentRejected
from hub.identity.network_id import NETWORK_ID_SYSTEM
from hub.ingest.outcome import KafkaCoordinates, Rejected
from hub.normalise.time import utc_iso
from hub.topics import recipient_pathway

#: Namespace of every AuditEvent id, so ids are stable across processes, versions and machines.
AUDIT_ID_NAMESPACE = uuid.UUID("43aa72b5-0acb-449e-84ce-f608131e11cc")

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SUBTYPE_SYSTEM = "urn:hub:audit-event-subtype"
COMPONENT_SYSTEM = "urn:hub:component"
SOURCE_SYSTEM = "urn:hub:source"
RECIPIENT_SYSTEM = "urn:hub:recipient"
EVENT_ID_SYSTEM = "urn:hub:pathway-event-id"
KAFKA_RECORD_SYSTEM = "urn:hub:kafka-record"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

OUTCOME_SUCCESS = "0"
#: "The action was not successful due to some kind of minor failure (often equivalent to an HTTP 400
#: response)": a withheld event, a rejected record or a refused Consent is not done, by design.
OUTCOME_NOT_DONE = "4"

_EXPORT = {"system": DCM, "code": "110106", "display": "Export"}
_IMPORT = {"system": DCM, "code": "110107", "display": "Import"}
_PATIENT_RECORD = {"system": DCM, "code": "110110", "display": "Patient Record"}
_SOURCE_ROLE = {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]}
_DESTINATION_ROLE = {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]}
_SYSTEM_OBJECT = {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"}
_PERSON = {"system": _ENTITY_TYPE, "code": "1", "display": "Person"}
_PATIENT_ROLE = {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"}
_DOMAIN_RESOURCE_ROLE = {"system": _OBJECT_ROLE, "code": "4", "display": "Domain Resource"}
_JOB_ROLE = {"system": _OBJECT_ROLE, "code": "20", "display": "Job"}
_DATA_DESTINATION_ROLE = {"system": _OBJECT_ROLE, "code": "16", "display": "Data Destination"}

#: Subtypes of the share stage's AuditEvents: one per pathway event now, one per decision before.
SHARE_DECISIONS = "share-decisions"
SHARE_DECISION = "share-decision"


def audit_id(kind: str, *parts: str) -> str:
    """The deterministic AuditEvent id of one audited act."""
    return str(uuid.uuid5(AUDIT_ID_NAMESPACE, "|".join((kind, *parts))))


def _subtype(code: str) -> list[dict[str, str]]:
    return [{"system": SUBTYPE_SYSTEM, "code": code}]


def _component(name: str) -> dict[str, Any]:
    return {"type": "Device", "identifier": {"system": COMPONENT_SYSTEM, "value": name}}


def _observer(name: str) -> dict[str, Any]:
    return {
        "observer": _component(name),
        "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }


def _detail(name: str, value: str) -> dict[str, str]:
    return {"type": name, "valueString": value}


def _source_agent(source_id: str | None, *, requestor: bool) -> dict[str, Any]:
    who: dict[str, Any] = (
        {"identifier": {"system": SOURCE_SYSTEM, "value": source_id}}
        if source_id
        else {"display": "unregistered source"}
    )
    return {"type": _SOURCE_ROLE, "who": who, "requestor": requestor}


def _event_id(event: Mapping[str, Any]) -> str:
    value = event.get("event_id")
    return value if isinstance(value, str) and value else "unreadable"


def _patient_entity(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The patient by network id only, or nothing when the envelope does not say."""
    patient_id = event.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id:
        return []
    return [
        {
            "what": {"type": "Patient", "identifier": {"system": NETWORK_ID_SYSTEM, "value": patient_id}},
            "type": _PERSON,
            "role": _PATIENT_ROLE,
        }
    ]


def _aware(recorded: datetime) -> str:
    if recorded.utcoffset() is None:
        raise ValueError("recorded must be timezone-aware")
    return utc_iso(recorded)


def _recipient_agent(recipient: Recipient | str) -> dict[str, Any]:
    if isinstance(recipient, str):
        return {
            "type": _DESTINATION_ROLE,
            "who": {"identifier": {"system": RECIPIENT_SYSTEM, "value": recipient}},
            "name": recipient,
            "requestor": False,
        }
    return {
        "type": _DESTINATION_ROLE,
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
    released_by: str | None = None,
) -> dict[str, Any]:
    """The one AuditEvent of a pathway event's share decisions: every recipient's verdict, rule, reason.

    ``decisions`` is not empty; a recipient is an id when unregistered. The id is stable for the
    event, the policy version and the recipients decided: a redelivered event yields the same id.
    ``released_by`` is the id of the event whose state change released this one to the recipients
    decided here, when it waited for a basis (a late release, docs/CONSENT.md "Convergence"); the
    detail ``released_by`` says so, and the id differs from the event's first decisions'.
    """
    event_id = _event_id(event)
    first = decisions[0][1]
    recipient_ids = [r if isinstance(r, str) else r.id for r, _ in decisions]
    common = [_detail("policy", first.policy), _detail("policy_version", first.policy_version)]
    if released_by is not None:
        common.append(_detail("released_by", released_by))
    if isinstance(event.get("kind"), str):
        common.append(_detail("kind", event["kind"]))
    source = event.get("source")
    if isinstance(source, dict) and isinstance(source.get("id"), str):
        common.append(_detail("source", source["id"]))
    per_recipient = [
        {
            "what": {"identifier": {"system": RECIPIENT_SYSTEM, "value": recipient_id}},
            "type": _SYSTEM_OBJECT,
            "role": _DATA_DESTINATION_ROLE,
            "detail": [
                _detail("verdict", decision.verdict),
                _detail("rule", decision.rule),
                _detail("reason", decision.reason),
                _detail("policy", decision.policy),
                _detail("policy_version", decision.policy_version),
                _detail("recipient", recipient_id),
                _detail("topic", recipient_pathway(recipient_id)),
            ],
        }
        for recipient_id, (_, decision) in zip(recipient_ids, decisions, strict=True)
    ]
    permitted = sum(1 for _, decision in decisions if decision.verdict == PERMIT)
    return {
        "resourceType": "AuditEvent",
        "id": audit_id(
            "share-decisions",
            event_id,
            first.policy_version,
            *sorted(recipient_ids),
            *(() if released_by is None else ("released-by", released_by)),
        ),
        "type": _EXPORT,
        "subtype": _subtype(SHARE_DECISIONS),
        "action": "R",
        "recorded": _aware(recorded),
        "outcome": OUTCOME_SUCCESS if permitted else OUTCOME_NOT_DONE,
        "outcomeDesc": f"sent to {permitted} of {len(decisions)} recipients",
        "purposeOfEvent": [{"coding": [{"system": _ACT_REASON, "code": "TREAT", "display": "treatment"}]}],
        "agent": [
            {"type": _SOURCE_ROLE, "who": _component("hub-share"), "requestor": False},
            *(_recipient_agent(recipient) for recipient, _ in decisions),
        ],
        "source": _observer("hub-share"),
        "entity": [
            {
                "what": {"identifier": {"system": EVENT_ID_SYSTEM, "value": event_id}},
                "type": _SYSTEM_OBJECT,
                "role": _DOMAIN_RESOURCE_ROLE,
                "detail": common,
            },
            *per_recipient,
            *_patient_entity(event),
        ],
    }


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
    ``policy_version`` and ``topic`` (and ``kind``, ``source`` when known). Reads both forms: one
    AuditEvent per event (``share-decisions``) and, written before it, one per decision.
    """
    if not isinstance(audit, dict):
        return []
    codes = {s.get("code") for s in audit.get("subtype") or () if isinstance(s, dict)}
    entities = audit.get("entity")
    if not isinstance(entities, list) or not entities or not codes & {SHARE_DECISIONS, SHARE_DECISION}:
        return []
    what = entities[0].get("what") if isinstance(entities[0], dict) else None
    identifier = what.get("identifier") if isinstance(what, dict) else None
    event_id = str(identifier.get("value", "")) if isinstance(identifier, dict) else ""
    common = {**_details_of(entities[0]), "event_id": event_id}
    if SHARE_DECISION in codes:
        return [common]
    return [
        {**common, **_details_of(entity)}
        for entity in entities[1:]
        if isinstance(entity, dict) and entity.get("role") == _DATA_DESTINATION_ROLE
    ]


def audit_reject(rejected: Rejected, *, origin: KafkaCoordinates, recorded: datetime) -> dict[str, Any]:
    """The AuditEvent of one rejected ingest record: source, Kafka coordinates, code; no clinical data."""
    details = [
        _detail("code", str(rejected.code)),
        _detail("detail", rejected.detail),
        _detail("topic", origin.topic),
        _detail("partition", str(origin.partition)),
        _detail("offset", str(origin.offset)),
    ]
    if rejected.message_id:
        details.append(_detail("message_id", rejected.message_id))
    return {
        "resourceType": "AuditEvent",
        "id": audit_id("reject", str(origin), str(rejected.code)),
        "type": _IMPORT,
        "subtype": _subtype("ingest-reject"),
        "action": "C",
        "recorded": _aware(recorded),
        "outcome": OUTCOME_NOT_DONE,
        "outcomeDesc": f"{rejected.code}: {rejected.detail}",
        "agent": [
            _source_agent(rejected.source_id, requestor=True),
            {"type": _DESTINATION_ROLE, "who": _component("hub-ingest"), "requestor": False},
        ],
        "source": _observer("hub-ingest"),
        "entity": [
            {
                "what": {"identifier": {"system": KAFKA_RECORD_SYSTEM, "value": str(origin)}},
                "type": _SYSTEM_OBJECT,
                "role": _JOB_ROLE,
                "detail": details,
            }
        ],
    }


def audit_consent_rejected(
    rejection: ConsentRejected, *, event: Mapping[str, Any], recorded: datetime
) -> dict[str, Any]:
    """The AuditEvent of a Consent the hub refused to apply (the patient's state did not change)."""
    event_id = _event_id(event)
    source = event.get("source")
    source_id = source.get("id") if isinstance(source, dict) else None
    return {
        "resourceType": "AuditEvent",
        "id": audit_id("consent-rejected", event_id),
        "type": _PATIENT_RECORD,
        "subtype": _subtype("consent-rejected"),
        "action": "U",
        "recorded": _aware(recorded),
        "outcome": OUTCOME_NOT_DONE,
        "outcomeDesc": f"{rejection.code}: {rejection.detail}",
        "agent": [
            _source_agent(source_id if isinstance(source_id, str) else None, requestor=True),
            {"type": _DESTINATION_ROLE, "who": _component("hub-share"), "requestor": False},
        ],
        "source": _observer("hub-share"),
        "entity": [
            {
                "what": {"identifier": {"system": EVENT_ID_SYSTEM, "value": event_id}},
                "type": _SYSTEM_OBJECT,
                "role": _DOMAIN_RESOURCE_ROLE,
                "detail": [_detail("code", rejection.code), _detail("detail", rejection.detail)],
            },
            *_patient_entity(event),
        ],
    }
