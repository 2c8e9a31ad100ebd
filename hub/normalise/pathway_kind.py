"""Which pathway step a resource is, and when it happened."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hub.normalise.time import parse_fhir_datetime

#: Encounter classes (v3 ActCode) that mean a stay in a facility, so admission/discharge apply.
_INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC", "SS", "EMER", "PRENC"})
_OPEN_ENCOUNTER_STATUSES = frozenset({"arrived", "triaged", "in-progress", "onleave"})

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

_KIND_BY_TYPE = {
    "Patient": "patient",
    "Condition": "condition",
    "Observation": "observation",
    "Procedure": "procedure",
    "MedicationRequest": "medication",
    "MedicationStatement": "medication",
    "MedicationAdministration": "medication",
    "MedicationDispense": "medication",
    "ServiceRequest": "referral",
    "DocumentReference": "document",
    "Composition": "document",
    "DiagnosticReport": "report",
    "EpisodeOfCare": "episode",
    "Consent": "consent",
    "CareTeam": "care_team",
    "AllergyIntolerance": "allergy",
    "Immunization": "immunization",
    "CarePlan": "care_plan",
}

# Where each resource type says when it happened, most specific first.
_TIME_FIELDS: dict[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    "Condition": ("onsetDateTime", "onsetPeriod.start", "recordedDate"),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod.start", "issued"),
    "MedicationRequest": ("authoredOn",),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod.start", "dateAsserted"),
    "ServiceRequest": ("authoredOn", "occurrenceDateTime"),
    "Immunization": ("occurrenceDateTime", "recorded"),
    "MedicationAdministration": ("effectiveDateTime", "effectivePeriod.start"),
    "MedicationDispense": ("whenHandedOver", "whenPrepared"),
    "AllergyIntolerance": ("onsetDateTime", "recordedDate"),
    "FamilyMemberHistory": ("date",),
    "RiskAssessment": ("occurrenceDateTime", "occurrencePeriod.start"),
    "QuestionnaireResponse": ("authored",),
    "Task": ("executionPeriod.start", "authoredOn"),
    "Goal": ("startDate", "statusDate"),
    "Flag": ("period.start",),
    "List": ("date",),
    "Specimen": ("collection.collectedDateTime", "collection.collectedPeriod.start", "receivedTime"),
    "EpisodeOfCare": ("period.start",),
    "CareTeam": ("period.start",),
    "CarePlan": ("period.start", "created"),
    "Consent": ("dateTime", "provision.period.start"),
    "DocumentReference": ("date",),
    "Composition": ("date",),
    "Claim": ("created", "billablePeriod.start"),
    "ExplanationOfBenefit": ("created", "billablePeriod.start"),
}


def _encounter_classes(resource: dict[str, Any]) -> set[str]:
    cls = resource.get("class")
    codings = cls if isinstance(cls, list) else [cls] if isinstance(cls, dict) else []
    codes: set[str] = set()
    for coding in codings:
        codes.add(str(coding.get("code", "")))
        codes.update(str(c.get("code", "")) for c in coding.get("coding", ()))
    return codes


def pathway_kind(resource: dict[str, Any]) -> str:
    """The ``kind`` of the pathway event this resource makes."""
    resource_type = str(resource["resourceType"])
    if resource_type == "Encounter":
        if _encounter_classes(resource) & _INPATIENT_CLASSES:
            if resource.get("status") in _OPEN_ENCOUNTER_STATUSES:
                return "encounter.admission"
            if resource.get("status") == "finished":
                return "encounter.discharge"
        return "encounter.visit"
    # Types without a pathway name of their own keep their FHIR name, in the kinds' snake_case.
    return _KIND_BY_TYPE.get(resource_type) or _CAMEL_BOUNDARY.sub("_", resource_type).lower()


def _lookup(resource: dict[str, Any], dotted: str) -> Any:
    value: Any = resource
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def occurred_at(resource: dict[str, Any], zone: ZoneInfo) -> datetime | None:
    """When the fact happened, in UTC, or None when the resource does not say."""
    resource_type = str(resource["resourceType"])
    if resource_type == "Encounter":
        fields: tuple[str, ...] = (
            ("period.end", "period.start")
            if pathway_kind(resource) == "encounter.discharge"
            else ("period.start",)
        )
    else:
        fields = _TIME_FIELDS.get(resource_type, ())
    for dotted in (*fields, "meta.lastUpdated"):
        text = _lookup(resource, dotted)
        if isinstance(text, str):
            moment = parse_fhir_datetime(text, zone)
            if moment is not None:
                return moment
    return None
