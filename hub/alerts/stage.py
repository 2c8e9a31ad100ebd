"""The eligibility stage: GP alerts from what each GP practice may see, and nothing else.

It is handed each GP practice's copy of an event as the share stage makes it (what that practice's
topic ``hub.pathway.<practice>.v1`` receives), never the unified pathway: a patient's facts are kept
per (practice, patient) and built only from events the consent policy let through to that practice,
so an alert, its reasons and its very existence cannot reveal
what the GP may not see. When a patient newly meets a network's criteria (and lives in its
territory) or is enrolled in it, each of the patient's declared GPs who works in that practice gets
one alert on ``hub.alerts.v1`` (keyed by RPPS); the same situation never alerts twice, except when
the very event that alerted is read again after its worker died (``eligibility-alerted`` keeps which
event alerted each finding): the table may say "alerted" for an alert that never left, so it is
sent again, same alert id (receivers de-duplicate by ``alert_id``).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.alerts.alert import build_alert
from hub.consent.recipients import Recipient
from hub.logging import get_logger
from hub.networks import NetworkRegistry, PatientFacts, apply_event, new_findings
from hub.sources.registry import SourceRegistry

log = get_logger(__name__)

RPPS = "urn:oid:1.2.250.1.71.4.2.1"


@dataclass(frozen=True)
class AlertOut:
    """One alert to publish, keyed by the GP's RPPS."""

    practitioner: str
    value: dict[str, Any]


def practice_identifier_systems(practice: Recipient, sources: SourceRegistry) -> tuple[str, ...]:
    """The patient identifier systems of the practice's own software: the sources of its organisation."""
    return tuple(
        system
        for source in sources.sources.values()
        if (source.organization_system, source.organization_value)
        == (practice.organization.system, practice.organization.value)
        for system in source.patient_identifier_systems
    )


class EligibilityStage:
    """Handles one GP practice's copy of an event; ``facts`` and ``alerted`` are tables."""

    def __init__(
        self,
        practices: Mapping[str, Recipient],
        networks: NetworkRegistry,
        sources: SourceRegistry,
        facts: MutableMapping[str, Any],
        alerted: MutableMapping[str, Any],
    ) -> None:
        self.practices = practices
        self.networks = networks
        self.systems = {rid: practice_identifier_systems(r, sources) for rid, r in practices.items()}
        self.facts = facts
        self.alerted = alerted

    def handle(
        self, practice_id: str, event: dict[str, Any], *, now: datetime | None = None
    ) -> list[AlertOut]:
        """The alerts one event makes, for the GPs of ``practice_id``."""
        practice = self.practices.get(practice_id)
        patient_id = event.get("patient_id")
        if practice is None or not isinstance(patient_id, str):
            return []
        key = f"{practice_id}|{patient_id}"
        stored = self.facts.get(key)
        facts = (PatientFacts.from_json(stored) if stored is not None else None) or PatientFacts.empty(
            patient_id
        )
        updated = apply_event(facts, event)
        if updated is not facts:
            self.facts[key] = updated.to_json()
        alerted = _alerted_by(self.alerted.get(key))
        event_id = event.get("event_id")
        # A finding this very event alerted is alerted again when the event is read again (its worker
        # died after writing the table, maybe before the alert left): same alert id, receivers
        # de-duplicate. Found through any other event, it stays alerted once.
        already = {finding for finding, by in alerted.items() if by is None or by != event_id}
        at = now or datetime.now(UTC)
        findings = new_findings(self.networks, updated, already, now=at)
        if not findings:
            return []
        own_gps = {p.value for p in practice.practitioners if p.system == RPPS}
        practitioners = [rpps for rpps in updated.practitioners if rpps in own_gps]
        alerts = [
            AlertOut(
                rpps,
                build_alert(
                    practitioner=rpps,
                    patient_id=patient_id,
                    patient_identifiers=updated.identifiers_in(self.systems[practice_id]),
                    network=network,
                    finding=finding,
                    created_at=at,
                ),
            )
            for finding in findings
            if (network := self.networks.get(finding.network_id)) is not None
            for rpps in practitioners
        ]
        if practitioners:
            # Remembered only once someone was told: a finding with no GP yet alerts when one is declared.
            self.alerted[key] = {**alerted, **{finding.key: event_id for finding in findings}}
            log.info("alerts.raised", practice=practice_id, count=len(alerts))
        return alerts


def _alerted_by(stored: Any) -> dict[str, str | None]:
    """``finding key → id of the event that alerted it`` (a bare list, written before: unknown event)."""
    if isinstance(stored, dict):
        return {str(k): v if isinstance(v, str) else None for k, v in stored.items()}
    return dict.fromkeys(stored or (), None)
