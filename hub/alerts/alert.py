"""The ``hub.alerts.v1`` value: one GP, one patient, one network, one status, and its CDS Hooks card.

An alert says nothing the finding does not: the network, the status, the criteria that held in the
network's own words, the ids of the events that made them hold, and the patient's identifiers in the
systems the GP's own software uses. Never a name, a birth date, an address or a clinical code from
the record. The caller guarantees that the finding was computed from events this GP may see.

The card's indicator is ``info`` for both statuses: neither is a hazard to act on now (CDS Hooks
keeps ``warning`` and ``critical`` for those), and a GP's software that shows warnings louder should
not shout about a network. ``alert_id`` is a UUID v5 of (practitioner, patient, network, status), so
the same situation always gives the same alert, and a change of status gives a new one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from hub.consent.recipients import NETWORK_SYSTEM
from hub.networks.eligibility import Finding
from hub.networks.registry import KIND_WORDS, Network
from hub.normalise.time import utc_iso

#: Namespace of every alert id, so ids are stable across processes, versions and machines.
ALERT_NAMESPACE = uuid.UUID("a83a3307-e85c-49e1-85c1-07b7747076fe")
#: CDS Hooks: a card's summary is shorter than 140 characters.
SUMMARY_MAX = 140
CONTACT_LABEL = "Contact the coordination team"
_MARKDOWN_SPECIAL = frozenset("\\`*_[]<>#|")


def alert_id_for(practitioner: str, patient_id: str, network_id: str, status: str) -> str:
    """The deterministic id of the alert for this GP, patient, network and status."""
    return str(uuid.uuid5(ALERT_NAMESPACE, "\x1f".join((practitioner, patient_id, network_id, status))))


def build_alert(
    *,
    practitioner: str,
    patient_id: str,
    patient_identifiers: Iterable[Mapping[str, Any]],
    network: Network,
    finding: Finding,
    created_at: datetime,
) -> dict[str, Any]:
    """The alert for GP ``practitioner`` (RPPS) about ``finding``; ``patient_identifiers`` are those
    known to the GP's software (see :meth:`hub.networks.facts.PatientFacts.identifiers_in`)."""
    if finding.network_id != network.id:
        raise ValueError(f"finding of {finding.network_id} given with network {network.id}")
    if created_at.utcoffset() is None:
        raise ValueError("created_at must be timezone-aware")
    alert_id = alert_id_for(practitioner, patient_id, network.id, finding.status)
    return {
        "alert_id": alert_id,
        "practitioner": practitioner,
        "patient": {
            "patient_id": patient_id,
            # Only system and value: whatever else an identifier carries stays out.
            "identifiers": [
                {"system": str(identifier["system"]), "value": str(identifier["value"])}
                for identifier in patient_identifiers
            ],
        },
        "network": {"id": network.id, "name": network.name, "kind": network.kind},
        "status": finding.status,
        "reasons": [reason.to_json() for reason in finding.reasons],
        "created_at": utc_iso(created_at),
        "card": build_card(alert_id=alert_id, network=network, finding=finding),
    }


def build_card(*, alert_id: str, network: Network, finding: Finding) -> dict[str, Any]:
    """The CDS Hooks card of an alert (``patient-view``): summary, indicator, source, detail, link."""
    verb = "Followed by" if finding.status == "enrolled" else "Eligible for"
    summary = f"{verb} {network.name}"
    if len(summary) >= SUMMARY_MAX:
        summary = summary[: SUMMARY_MAX - 2] + "…"
    team = network.coordination_team
    source: dict[str, Any] = {
        "label": network.name,
        "topic": {"system": NETWORK_SYSTEM, "code": network.id, "display": network.name},
    }
    if team.url:
        source["url"] = team.url
    card: dict[str, Any] = {
        "uuid": alert_id,
        "summary": summary,
        "indicator": "info",
        "source": source,
        "detail": _detail(network, finding),
    }
    contact = team.contact_url
    if contact is not None:
        card["links"] = [{"label": CONTACT_LABEL, "url": contact, "type": "absolute"}]
    return card


def _md(text: str) -> str:
    """Configured text as literal markdown: a network's name or label never becomes markup or HTML."""
    return "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in text)


def _detail(network: Network, finding: Finding) -> str:
    team = network.coordination_team
    name, kind = _md(network.name), _md(KIND_WORDS.get(network.kind, network.kind))
    if finding.status == "enrolled":
        lines = [f"This patient is followed by **{name}** ({kind}).", ""]
        action = "Coordinate their care with the network's coordination team"
    else:
        lines = [f"This patient meets the eligibility criteria of **{name}** ({kind}):", ""]
        lines.extend(f"- {_md(reason.criterion)}" for reason in finding.reasons)
        lines.append("")
        action = "To propose enrolment, contact the network's coordination team"
    contacts = [f"**{_md(team.name)}**"]
    contacts.extend(f"{_md(t.system)}: {_md(t.value)}" for t in team.telecom)
    lines.append(f"{action}: " + " · ".join(contacts) + ".")
    return "\n".join(lines)
