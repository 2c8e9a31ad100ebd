"""The pathway event envelope of ``hub.pathway.v1`` (schemas/pathway-event.schema.json)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from hub.records import canonical_json, encode_json

#: Namespace of every event id, so ids are stable across processes, versions and machines.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c1b52-4c8e-4d43-9a55-6d0a3c1f2b7e")

#: Resource fields that differ between copies of one clinical fact and so stay out of its id.
_VOLATILE_FIELDS = frozenset({"id", "meta", "text"})


LOINC = "http://loinc.org"


def _measurement_fact(resource: dict[str, Any]) -> Any:
    """What makes two Observations one measurement: analyte, instant and value, nothing else.

    A lab result copied into a GP's record comes back with the GP's identifiers, local codes,
    encounter and performer; after normalisation (LOINC, canonical UCUM unit, UTC instant) its
    analyte, instant and value still match the lab's, and that is the fact. Observations without
    those three parts fall back to the whole content.
    """
    loinc = sorted(
        str(coding.get("code"))
        for coding in (resource.get("code") or {}).get("coding", ())
        if coding.get("system") == LOINC and coding.get("code")
    )
    quantity = resource.get("valueQuantity") or {}
    instant = resource.get("effectiveDateTime") or resource.get("effectiveInstant")
    if not loinc or "value" not in quantity or not isinstance(instant, str) or "T" not in instant:
        return None
    return {
        "loinc": loinc,
        "instant": instant,
        "value": quantity["value"],
        "unit": quantity.get("code") or quantity.get("unit"),
        "status": resource.get("status"),
    }


def event_id_for(patient_id: str, resource: dict[str, Any]) -> str:
    """One id per clinical fact: the same normalised fact about the same patient, whoever sent it."""
    fact = _measurement_fact(resource) if resource.get("resourceType") == "Observation" else None
    if fact is None:
        fact = {k: v for k, v in resource.items() if k not in _VOLATILE_FIELDS}
    digest = hashlib.sha256(canonical_json(fact)).hexdigest()
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{patient_id}|{resource['resourceType']}|{digest}"))


@dataclass(frozen=True)
class PathwayEvent:
    """One normalised fact in one patient's pathway."""

    event_id: str
    patient_id: str
    kind: str
    occurred_at: str
    recorded_at: str
    source_id: str
    source_organization: dict[str, str]
    resource: dict[str, Any]
    ingest: dict[str, str | int]
    steps: tuple[str, ...] = ()
    sensitivity: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """The JSON envelope of the contract (DESIGN.md section 2)."""
        return {
            "event_id": self.event_id,
            "patient_id": self.patient_id,
            "kind": self.kind,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "source": {"id": self.source_id, "organization": self.source_organization},
            "sensitivity": list(self.sensitivity),
            "resource": self.resource,
            "provenance": {"ingest": self.ingest, "steps": list(self.steps)},
        }

    def to_json(self) -> bytes:
        """Compact JSON bytes for Kafka."""
        return encode_json(self.to_dict())
