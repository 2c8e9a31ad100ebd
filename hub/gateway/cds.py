"""CDS Hooks 2.0 for the gateway, as plain functions: discovery, the patient-view request, the cards.

The hub offers one service, ``hub-network-alerts`` on the ``patient-view`` hook, without prefetch: the
cards come from the alerts already computed for that GP. CDS Hooks normally authenticates the *client*
with a JWT; the hub instead takes the practitioner's own bearer token (docs/GP_INTEGRATION.md), and
``context.userId``, when it names a Practitioner, must be that token's practitioner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hub.gateway.store import StoredAlert

SERVICE_ID = "hub-network-alerts"
HOOK = "patient-view"
INDICATORS = frozenset({"info", "warning", "critical"})
DEFAULT_SOURCE_LABEL = "Hub de coordination (réseaux de santé)"
#: Keys of the extension each card carries, so GP software can call read/dismiss on it.
EXTENSION_ALERT_ID = "hub-alert-id"
EXTENSION_STATE = "hub-alert-state"
EXTENSION_NETWORK = "hub-network"


class CdsRequestError(ValueError):
    """A CDS Hooks request the service cannot answer: an HTTP status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PatientViewRequest:
    """The parts of a patient-view request the service uses."""

    hook_instance: str | None
    patient_id: str
    user_id: str | None


def discovery() -> dict[str, Any]:
    """The ``GET /cds-services`` document."""
    return {
        "services": [
            {
                "id": SERVICE_ID,
                "hook": HOOK,
                "title": "Care network alerts",
                "description": (
                    "Tells the GP that this patient is followed by a care network (diabetes, oncology, "
                    "palliative care, gerontology, DAC, CPTS) or has become eligible for one, with the "
                    "reasons and a link to the network's coordination team. Needs no prefetch; "
                    "authenticate with the practitioner's hub bearer token."
                ),
            }
        ]
    }


def parse_patient_view(body: Any) -> PatientViewRequest:
    """The patient-view request in ``body`` (decoded JSON), or :class:`CdsRequestError` (400)."""
    if not isinstance(body, Mapping):
        raise CdsRequestError(
            400, "invalid_request", "the request body must be a JSON object (a CDS Hooks request)"
        )
    hook = body.get("hook")
    if hook is not None and hook != HOOK:
        raise CdsRequestError(
            400, "unsupported_hook", f"this service answers the '{HOOK}' hook only, not {str(hook)[:40]!r}"
        )
    context = body.get("context")
    patient_id = context.get("patientId") if isinstance(context, Mapping) else None
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise CdsRequestError(
            400,
            "missing_patient_context",
            "a patient-view request needs context.patientId: the id of the patient open in the GP's "
            "software (its local id or one of the patient's identifiers)",
        )
    user_id = context.get("userId") if isinstance(context, Mapping) else None
    hook_instance = body.get("hookInstance")
    return PatientViewRequest(
        hook_instance=hook_instance if isinstance(hook_instance, str) else None,
        patient_id=patient_id.strip(),
        user_id=user_id if isinstance(user_id, str) and user_id.strip() else None,
    )


def user_matches(user_id: str | None, practitioner: str) -> bool:
    """Whether ``context.userId`` agrees with the token's practitioner.

    ``Practitioner/<rpps>`` or a bare ``<rpps>`` must name the same practitioner; an absent userId, or
    one of another resource type (``PractitionerRole/…``, whose ids are local to the GP's software),
    leaves the token as the only authority.
    """
    if user_id is None:
        return True
    resource, _, ident = user_id.strip().rpartition("/")
    if resource and resource.split("/")[-1] != "Practitioner":
        return True
    return ident == practitioner


def card_of(alert: StoredAlert) -> dict[str, Any]:
    """The alert's card as served: the published card, completed where CDS Hooks requires a field, with
    the gateway's extension (alert id, state, network)."""
    card = alert.card
    if not isinstance(card.get("uuid"), str) or not card["uuid"]:
        card["uuid"] = alert.alert_id
    if card.get("indicator") not in INDICATORS:
        card["indicator"] = "info"
    source = card.get("source")
    if not isinstance(source, Mapping) or not isinstance(source.get("label"), str):
        card["source"] = {"label": DEFAULT_SOURCE_LABEL}
    extension = dict(card["extension"]) if isinstance(card.get("extension"), Mapping) else {}
    extension[EXTENSION_ALERT_ID] = alert.alert_id
    extension[EXTENSION_STATE] = alert.state.value
    network = alert.record.get("network")
    if isinstance(network, Mapping):
        extension[EXTENSION_NETWORK] = {k: network[k] for k in ("id", "name", "kind") if k in network}
    card["extension"] = extension
    return card


def cards_response(alerts: Iterable[StoredAlert]) -> dict[str, Any]:
    """The patient-view response: one card per alert, in the order given."""
    return {"cards": [card_of(alert) for alert in alerts]}


__all__ = [
    "HOOK",
    "SERVICE_ID",
    "CdsRequestError",
    "PatientViewRequest",
    "card_of",
    "cards_response",
    "discovery",
    "parse_patient_view",
    "user_matches",
]
