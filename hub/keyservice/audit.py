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

from hub.audit_vocabulary import (
    DESTINATION_ROLE,
    EXPORT,
    KEY_ID_SYSTEM,
    KEY_REFUSAL,
    KEY_RELEASE,
    KEYS_COMPONENT,
    OUTCOME_NOT_DONE,
    OUTCOME_SERIOUS_FAILURE,
    OUTCOME_SUCCESS,
    RECIPIENT_SYSTEM,
    SECURITY_RESOURCE_ROLE,
    SOURCE_ROLE,
    SYSTEM_OBJECT,
    agent,
    audit_event,
    audit_id,
    component,
    detail,
    entity,
    identified,
    observer,
    patient_entity,
)
from hub.crypto.keyids import parse_recipient_key_id, well_formed
from hub.keyservice.access import KeyDecision
from hub.normalise.time import utc_iso
from hub.pathway.network_id import NETWORK_ID_SYSTEM

#: The audit record's key when nobody was authenticated.
UNAUTHENTICATED = "unauthenticated"
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


def _requester(request: KeyRequest) -> dict[str, Any]:
    who: dict[str, Any] = (
        {"identifier": {"system": RECIPIENT_SYSTEM, "value": request.recipient}}
        if request.recipient
        else {"display": "unauthenticated client"}
    )
    requester = agent(DESTINATION_ROLE, who, requestor=True)
    if request.address:
        requester["network"] = {"address": request.address, "type": _IP_ADDRESS}
    return requester


def _entities(request: KeyRequest, decision: KeyDecision) -> list[dict[str, Any]]:
    details = [
        detail("status", str(decision.status)),
        detail("reason", decision.reason),
        detail("request_id", request.request_id),
    ]
    if decision.code is not None:
        details.append(detail("code", str(decision.code)))
    if request.credential:
        details.append(detail("credential", request.credential))
    # A malformed id is whatever the client sent: its length is enough to recognise a probe.
    what: dict[str, Any] = (
        identified(KEY_ID_SYSTEM, request.key_id)
        if well_formed(request.key_id)
        else {"display": f"a malformed key id of {len(request.key_id.encode())} bytes"}
    )
    entities = [entity(what, type=SYSTEM_OBJECT, role=SECURITY_RESOURCE_ROLE, details=details)]
    parsed = parse_recipient_key_id(request.key_id)
    if parsed is not None:
        entities.append(patient_entity(NETWORK_ID_SYSTEM, parsed.patient_id))
    return entities


def audit_key_access(request: KeyRequest, decision: KeyDecision, *, recorded: datetime) -> dict[str, Any]:
    """The AuditEvent of one key request and its answer."""
    if recorded.utcoffset() is None:
        raise ValueError("recorded must be timezone-aware")
    if decision.released:
        outcome, code = OUTCOME_SUCCESS, KEY_RELEASE
        description = f"released {request.key_id} to recipient {request.recipient}"
    else:
        # A 5xx is the hub failing to answer (a wrong KEK), not a refusal.
        outcome = OUTCOME_NOT_DONE if decision.status < 500 else OUTCOME_SERIOUS_FAILURE
        code = KEY_REFUSAL
        description = f"refused ({decision.status} {decision.code}): {decision.reason}"
    return audit_event(
        id=audit_id("key-access", request.request_id),
        type=EXPORT,
        subtype=code,
        action="R",
        recorded=utc_iso(recorded),
        outcome=outcome,
        description=description,
        agents=[agent(SOURCE_ROLE, component(KEYS_COMPONENT), requestor=False), _requester(request)],
        source=observer(KEYS_COMPONENT),
        entities=_entities(request, decision),
    )


__all__ = [
    "UNAUTHENTICATED",
    "KeyRequest",
    "audit_key_access",
]
