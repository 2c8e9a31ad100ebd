"""The AuditEvent of every key request: a release (outcome 0) or a refusal (4, or 8 when the hub failed).

DICOM 110106 *Export* (key material leaves the hub towards a recipient, or would have), subtype
``key-release`` or ``key-refusal``, action R. Agents: the key service (source role) and the requester
(destination role, the requestor): a recipient by id, or "unauthenticated client", with its network
address. Entities: the key by id (``urn:hub:data-key-id``; a malformed id is not copied, its length
is) with the decision in ``detail``, and the patient by network id when the key id names one. Never
key material, never a token: a credential appears as the first 12 hex digits of its SHA-256, as
``hub recipients credentials list`` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.consent.audit import (
    COMPONENT_SYSTEM,
    DCM,
    OUTCOME_NOT_DONE,
    OUTCOME_SUCCESS,
    RECIPIENT_SYSTEM,
    SUBTYPE_SYSTEM,
    audit_id,
)
from hub.crypto.keyids import parse_recipient_key_id, well_formed
from hub.identity.network_id import NETWORK_ID_SYSTEM
from hub.keyservice.access import KeyDecision
from hub.normalise.time import utc_iso

RELEASE_SUBTYPE = "key-release"
REFUSAL_SUBTYPE = "key-refusal"
KEY_ID_SYSTEM = "urn:hub:data-key-id"
#: The component that answers key requests (also the observer of `hub keys rotate`).
COMPONENT = "hub-keys"
#: FHIR AuditEvent outcome "serious failure": the hub could not answer (a wrong KEK), not a refusal.
OUTCOME_FAILED = "8"
#: The audit record's key when nobody was authenticated.
UNAUTHENTICATED = "unauthenticated"

_EXPORT = {"system": DCM, "code": "110106", "display": "Export"}
_SOURCE_ROLE = {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]}
_DESTINATION_ROLE = {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]}
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SYSTEM_OBJECT = {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"}
_SECURITY_RESOURCE = {"system": _OBJECT_ROLE, "code": "13", "display": "Security Resource"}
_PERSON = {"system": _ENTITY_TYPE, "code": "1", "display": "Person"}
_PATIENT_ROLE = {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"}
_APPLICATION_SERVER = {
    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
    "code": "4",
    "display": "Application Server",
}
#: FHIR R4 AuditEvent.agent.network.type: 2 is an IP address.
_IP_ADDRESS = "2"


@dataclass(frozen=True)
class KeyRequest:
    """One request as the audit records it: which key, who asked (if known) and from where."""

    request_id: str
    key_id: str
    #: The authenticated recipient; None when the credential was missing, wrong or revoked.
    recipient: str | None = None
    #: First 12 hex digits of the presented token's SHA-256; None when no token was presented.
    credential: str | None = None
    address: str | None = None

    @property
    def record_key(self) -> bytes:
        """The audit record's Kafka key: the recipient, or ``unauthenticated``."""
        return (self.recipient or UNAUTHENTICATED).encode()


def _detail(name: str, value: str) -> dict[str, str]:
    return {"type": name, "valueString": value}


def _requester(request: KeyRequest) -> dict[str, Any]:
    who: dict[str, Any] = (
        {"identifier": {"system": RECIPIENT_SYSTEM, "value": request.recipient}}
        if request.recipient
        else {"display": "unauthenticated client"}
    )
    agent: dict[str, Any] = {"type": _DESTINATION_ROLE, "who": who, "requestor": True}
    if request.address:
        agent["network"] = {"address": request.address, "type": _IP_ADDRESS}
    return agent


def _entities(request: KeyRequest, decision: KeyDecision) -> list[dict[str, Any]]:
    details = [
        _detail("status", str(decision.status)),
        _detail("reason", decision.reason),
        _detail("request_id", request.request_id),
    ]
    if decision.code is not None:
        details.append(_detail("code", str(decision.code)))
    if request.credential:
        details.append(_detail("credential", request.credential))
    # A malformed id is whatever the client sent: its length is enough to recognise a probe.
    what: dict[str, Any] = (
        {"identifier": {"system": KEY_ID_SYSTEM, "value": request.key_id}}
        if well_formed(request.key_id)
        else {"display": f"a malformed key id of {len(request.key_id.encode())} bytes"}
    )
    entities: list[dict[str, Any]] = [
        {"what": what, "type": _SYSTEM_OBJECT, "role": _SECURITY_RESOURCE, "detail": details}
    ]
    parsed = parse_recipient_key_id(request.key_id)
    if parsed is not None:
        entities.append(
            {
                "what": {
                    "type": "Patient",
                    "identifier": {"system": NETWORK_ID_SYSTEM, "value": parsed.patient_id},
                },
                "type": _PERSON,
                "role": _PATIENT_ROLE,
            }
        )
    return entities


def audit_key_access(request: KeyRequest, decision: KeyDecision, *, recorded: datetime) -> dict[str, Any]:
    """The AuditEvent of one key request and its answer."""
    if recorded.utcoffset() is None:
        raise ValueError("recorded must be timezone-aware")
    if decision.released:
        outcome, subtype = OUTCOME_SUCCESS, RELEASE_SUBTYPE
        description = f"released {request.key_id} to recipient {request.recipient}"
    else:
        outcome = OUTCOME_NOT_DONE if decision.status < 500 else OUTCOME_FAILED
        subtype = REFUSAL_SUBTYPE
        description = f"refused ({decision.status} {decision.code}): {decision.reason}"
    return {
        "resourceType": "AuditEvent",
        "id": audit_id("key-access", request.request_id),
        "type": _EXPORT,
        "subtype": [{"system": SUBTYPE_SYSTEM, "code": subtype}],
        "action": "R",
        "recorded": utc_iso(recorded),
        "outcome": outcome,
        "outcomeDesc": description,
        "agent": [
            {
                "type": _SOURCE_ROLE,
                "who": {"type": "Device", "identifier": {"system": COMPONENT_SYSTEM, "value": COMPONENT}},
                "requestor": False,
            },
            _requester(request),
        ],
        "source": {
            "observer": {"type": "Device", "identifier": {"system": COMPONENT_SYSTEM, "value": COMPONENT}},
            "type": [_APPLICATION_SERVER],
        },
        "entity": _entities(request, decision),
    }


__all__ = [
    "KEY_ID_SYSTEM",
    "REFUSAL_SUBTYPE",
    "RELEASE_SUBTYPE",
    "UNAUTHENTICATED",
    "KeyRequest",
    "audit_key_access",
]
