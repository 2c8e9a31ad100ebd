"""The FHIR AuditEvent vocabulary of ``hub.audit.v1``, defined once: code systems, codings, parts and ids.

Every AuditEvent the hub writes is built from these names: share decisions, ingest rejects and refused
Consents (:mod:`hub.consent.audit`), key releases and refusals (:mod:`hub.keyservice.audit`), source
key rotations (:mod:`hub.sources.keys`), DLQ replays (:mod:`hub.ops.dlq`), erasures
(:mod:`hub.crypto.erase`) and audit-chain breaks (:mod:`hub.audit.events`). docs/CONSENT.md and
docs/SECURITY.md say how a record reads.

A ground-floor module (it imports nothing from the hub): the acts are recorded at every layer, from the
source registry up to the operator commands, and none of them should import the consent package (or
the audit chain's) to spell a DICOM code. Ids are deterministic (:func:`audit_id`): a redelivered act
yields the same AuditEvent id, so consumers de-duplicate.
"""

from __future__ import annotations

import uuid
from typing import Any

#: Namespace of every AuditEvent id, so ids are stable across processes, versions and machines.
AUDIT_ID_NAMESPACE = uuid.UUID("43aa72b5-0acb-449e-84ce-f608131e11cc")

# -- code systems -----------------------------------------------------------------------------------

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SECURITY_SOURCE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"

# -- the hub's identifier systems -------------------------------------------------------------------

SUBTYPE_SYSTEM = "urn:hub:audit-event-subtype"
COMPONENT_SYSTEM = "urn:hub:component"
SOURCE_SYSTEM = "urn:hub:source"
RECIPIENT_SYSTEM = "urn:hub:recipient"
EVENT_ID_SYSTEM = "urn:hub:pathway-event-id"
KAFKA_RECORD_SYSTEM = "urn:hub:kafka-record"
#: A data key, by id (hub.crypto.keyids).
KEY_ID_SYSTEM = "urn:hub:data-key-id"
#: The person who asked for an act (an operator's login).
OPERATOR_SYSTEM = "urn:hub:operator"
#: An audit chain: ``<topic>/<partition>``.
AUDIT_CHAIN_SYSTEM = "urn:hub:audit-chain"

# -- outcomes (AuditEvent.outcome) --------------------------------------------------------------------

OUTCOME_SUCCESS = "0"
#: "The action was not successful due to some kind of minor failure (often equivalent to an HTTP 400
#: response)": a withheld event, a rejected record or a refused Consent is not done, by design.
OUTCOME_NOT_DONE = "4"
#: "Some kind of major failure": the hub could not do it (a wrong KEK, a chain it could not continue).
OUTCOME_SERIOUS_FAILURE = "8"

# -- event types (AuditEvent.type) ----------------------------------------------------------------------

EXPORT = {"system": DCM, "code": "110106", "display": "Export"}
IMPORT = {"system": DCM, "code": "110107", "display": "Import"}
PATIENT_RECORD = {"system": DCM, "code": "110110", "display": "Patient Record"}
SECURITY_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}

# -- agent roles (AuditEvent.agent.type) ----------------------------------------------------------------

SOURCE_ROLE = {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]}
DESTINATION_ROLE = {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]}
APPLICATION_ROLE = {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]}
AUTHOR_ROLE = {
    "coding": [{"system": PARTICIPATION_TYPE_SYSTEM, "code": "AUT", "display": "author (originator)"}]
}

#: AuditEvent.source.type: the hub's components are application servers.
APPLICATION_SERVER = {"system": SECURITY_SOURCE_TYPE_SYSTEM, "code": "4", "display": "Application Server"}
#: AuditEvent.purposeOfEvent of a share decision.
TREATMENT = {"coding": [{"system": ACT_REASON_SYSTEM, "code": "TREAT", "display": "treatment"}]}

# -- entity types and roles (AuditEvent.entity.type, .role) ---------------------------------------------

PERSON = {"system": ENTITY_TYPE_SYSTEM, "code": "1", "display": "Person"}
SYSTEM_OBJECT = {"system": ENTITY_TYPE_SYSTEM, "code": "2", "display": "System Object"}
PATIENT_ROLE = {"system": OBJECT_ROLE_SYSTEM, "code": "1", "display": "Patient"}
DOMAIN_RESOURCE_ROLE = {"system": OBJECT_ROLE_SYSTEM, "code": "4", "display": "Domain Resource"}
SECURITY_RESOURCE_ROLE = {"system": OBJECT_ROLE_SYSTEM, "code": "13", "display": "Security Resource"}
DATA_DESTINATION_ROLE = {"system": OBJECT_ROLE_SYSTEM, "code": "16", "display": "Data Destination"}
JOB_ROLE = {"system": OBJECT_ROLE_SYSTEM, "code": "20", "display": "Job"}

# -- the hub's components (AuditEvent.source.observer, Device agents) ----------------------------------

SHARE_COMPONENT = "hub-share"
INGEST_COMPONENT = "hub-ingest"
#: The key service, also the observer of `hub keys rotate`.
KEYS_COMPONENT = "hub-keys"
OPS_COMPONENT = "hub-ops"
AUDIT_COMPONENT = "hub-audit"

# -- subtypes (AuditEvent.subtype, system SUBTYPE_SYSTEM) -------------------------------------------------

#: The share stage's: one AuditEvent per pathway event now, one per decision before (still read).
SHARE_DECISIONS = "share-decisions"
SHARE_DECISION = "share-decision"
#: The share stage's late releases: the waiting events one event released, in one AuditEvent.
SHARE_RELEASES = "share-releases"
INGEST_REJECT = "ingest-reject"
CONSENT_REJECTED = "consent-rejected"
KEY_RELEASE = "key-release"
KEY_REFUSAL = "key-refusal"
KEY_ROTATION = "key-rotation"
DLQ_REPLAY = "dlq-replay"
PATIENT_ERASURE = "patient-erasure"
AUDIT_CHAIN_BREAK = "audit-chain-break"


def audit_event(
    *,
    id: str,
    type: dict[str, Any],
    subtype: str,
    action: str,
    recorded: str,
    outcome: str,
    description: str,
    agents: list[dict[str, Any]],
    source: dict[str, Any],
    entities: list[dict[str, Any]],
    purpose: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One AuditEvent, its elements always in the same order (the bytes of an act recorded twice are equal).

    Arguments are named after the FHIR elements (``description`` is ``outcomeDesc``, ``purpose``
    ``purposeOfEvent``, ``agents`` and ``entities`` the lists); ``recorded`` is the instant already
    written (UTC ISO 8601) and ``subtype`` one of the hub's subtype codes.
    """
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": id,
        "type": type,
        "subtype": [{"system": SUBTYPE_SYSTEM, "code": subtype}],
        "action": action,
        "recorded": recorded,
        "outcome": outcome,
        "outcomeDesc": description,
    }
    if purpose is not None:
        event["purposeOfEvent"] = purpose
    event.update(agent=agents, source=source, entity=entities)
    return event


def audit_id(kind: str, *parts: str) -> str:
    """The deterministic AuditEvent id of one audited act."""
    return str(uuid.uuid5(AUDIT_ID_NAMESPACE, "|".join((kind, *parts))))


def component(name: str) -> dict[str, Any]:
    """One of the hub's components as a Device reference (an agent's ``who``, an observer)."""
    return {"type": "Device", "identifier": {"system": COMPONENT_SYSTEM, "value": name}}


def observer(name: str) -> dict[str, Any]:
    """AuditEvent.source: the component that recorded the act, an application server."""
    return {"observer": component(name), "type": [APPLICATION_SERVER]}


def agent(role: dict[str, Any], who: dict[str, Any], *, requestor: bool) -> dict[str, Any]:
    """AuditEvent.agent: who took part, in which role, and whether they asked for the act."""
    return {"type": role, "who": who, "requestor": requestor}


def identified(system: str, value: str) -> dict[str, Any]:
    """A ``what`` or ``who`` named by an identifier."""
    return {"identifier": {"system": system, "value": value}}


def entity(
    what: dict[str, Any],
    *,
    type: dict[str, str],
    role: dict[str, str],
    details: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """AuditEvent.entity: what the act was about, of which type and in which role, with its details."""
    found: dict[str, Any] = {"what": what, "type": type, "role": role}
    if details is not None:
        found["detail"] = details
    return found


def patient_entity(system: str, patient_id: str) -> dict[str, Any]:
    """The patient an act was about, by pseudonymous id only (``system``: the network patient id's)."""
    return entity({"type": "Patient", **identified(system, patient_id)}, type=PERSON, role=PATIENT_ROLE)


def detail(name: str, value: str) -> dict[str, str]:
    """One AuditEvent.entity.detail: a name and a string value."""
    return {"type": name, "valueString": value}


def source_who(source_id: str | None) -> dict[str, Any]:
    """A source as an agent's ``who``: by registered id, or an unregistered one by description only."""
    return identified(SOURCE_SYSTEM, source_id) if source_id else {"display": "unregistered source"}
