"""Split an input into resources and find the patient each one is about.

A Bundle is all-or-nothing: fhir.resources validates it whole, and one unresolvable patient
reference rejects it whole, so a source never has to work out which half of a transaction
landed. Resources that are about no patient (Organization, Practitioner, ...) are reference data:
they are accepted and make no pathway event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.errors import ErrorCode
from hub.identity.network_id import PatientKey, ins_systems, qualified_ins
from hub.ingest.outcome import Rejected
from hub.sources.registry import Source

SPLIT_BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "message", "document"})

#: The field that names the patient, for each resource type in the patient compartment.
PATIENT_FIELD: dict[str, str] = {
    **dict.fromkeys(
        (
            "Observation", "Condition", "Encounter", "Procedure", "DiagnosticReport",
            "MedicationRequest", "MedicationStatement", "MedicationAdministration",
            "MedicationDispense", "ServiceRequest", "DocumentReference", "Composition",
            "CarePlan", "CareTeam", "Goal", "ImagingStudy", "QuestionnaireResponse",
            "RiskAssessment", "ClinicalImpression", "Communication", "DeviceRequest",
            "Specimen", "Flag", "List", "DetectedIssue",
        ),
        "subject",
    ),
    **dict.fromkeys(
        (
            "EpisodeOfCare", "AllergyIntolerance", "Immunization", "Claim",
            "ExplanationOfBenefit", "Consent", "FamilyMemberHistory", "NutritionOrder",
            "Account", "Invoice",
        ),
        "patient",
    ),
    "Coverage": "beneficiary",
}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One resource of an input, its position, and the patient it is about (None: no patient)."""

    index: int | None  # position in the Bundle, None for a single resource
    resource: dict[str, Any]
    patient: PatientKey | None


def _patient_own_key(patient: dict[str, Any], source: Source, *, allow_test_ins: bool) -> PatientKey | None:
    ins = qualified_ins(patient, allow_test_ins=allow_test_ins)
    if ins is not None:
        return ins
    for identifier in patient.get("identifier", ()):
        if identifier.get("system") in source.patient_identifier_systems and identifier.get("value"):
            return PatientKey("local", source.id, str(identifier["value"]))
    if patient.get("id"):
        return PatientKey("local", source.id, str(patient["id"]))
    return None


class _Resolver:
    """Resolves patient references against the Bundle first, then the source's identifiers."""

    def __init__(
        self,
        resources: list[tuple[str | None, dict[str, Any]]],
        source: Source,
        allow_test_ins: bool,
    ) -> None:
        self.source = source
        self.allow_test_ins = allow_test_ins
        self.by_full_url: dict[str, PatientKey | None] = {}
        self.by_id: dict[str, PatientKey | None] = {}
        for full_url, resource in resources:
            if resource.get("resourceType") != "Patient":
                continue
            key = _patient_own_key(resource, source, allow_test_ins=allow_test_ins)
            if full_url:
                self.by_full_url[full_url] = key
            if resource.get("id"):
                self.by_id[str(resource["id"])] = key

    def resolve(self, reference: Any) -> PatientKey | None:
        if not isinstance(reference, dict):
            return None
        literal = reference.get("reference")
        if isinstance(literal, str):
            if literal in self.by_full_url:
                return self.by_full_url[literal]
            if literal.startswith("urn:"):
                return None  # points into the Bundle, and nothing there is a Patient
            # A version-specific reference (Patient/123/_history/2) names the same patient.
            path = literal.partition("/_history/")[0].rstrip("/")
            resource_type, _, resource_id = path.rpartition("/")
            if resource_type.rpartition("/")[2] != "Patient" or not resource_id:
                return None
            if resource_id in self.by_id:
                return self.by_id[resource_id]
            return PatientKey("local", self.source.id, resource_id)
        identifier = reference.get("identifier")
        if isinstance(identifier, dict) and identifier.get("value"):
            system, value = identifier.get("system"), str(identifier["value"])
            # A sender may only transmit an INS once qualified, so an INS here links records.
            if system in ins_systems(allow_test_ins=self.allow_test_ins):
                return PatientKey("ins", str(system), value)
            if system in self.source.patient_identifier_systems:
                return PatientKey("local", self.source.id, value)
        return None

    def patient_of(self, resource: dict[str, Any]) -> PatientKey | Rejected | None:
        resource_type = str(resource["resourceType"])
        if resource_type == "Patient":
            key = _patient_own_key(resource, self.source, allow_test_ins=self.allow_test_ins)
            if key is None:
                return Rejected(ErrorCode.PATIENT_UNRESOLVED, "Patient has no id nor identifier")
            return key
        field = PATIENT_FIELD.get(resource_type)
        if field is None:
            return None
        key = self.resolve(resource.get(field))
        if key is None:
            return Rejected(
                ErrorCode.PATIENT_UNRESOLVED,
                f"{resource_type}.{field} names no patient this hub can identify",
            )
        return key


def split_entries(
    resource: dict[str, Any], source: Source, *, allow_test_ins: bool
) -> list[Entry] | Rejected:
    """The input's resources with their patients, or the reject that stops the whole input."""
    if resource["resourceType"] == "Bundle":
        bundle_type = resource.get("type")
        if bundle_type not in SPLIT_BUNDLE_TYPES:
            return Rejected(
                ErrorCode.FHIR_INVALID,
                f"Bundle of type {str(bundle_type)[:20]!r} cannot be ingested; "
                f"use one of {', '.join(sorted(SPLIT_BUNDLE_TYPES))}",
            )
        items: list[tuple[int | None, str | None, dict[str, Any]]] = [
            (index, entry.get("fullUrl"), entry["resource"])
            for index, entry in enumerate(resource.get("entry", ()))
            if "resource" in entry  # a DELETE request carries no resource and makes no event
        ]
    else:
        items = [(None, None, resource)]
    resolver = _Resolver([(url, res) for _, url, res in items], source, allow_test_ins)
    entries: list[Entry] = []
    for index, _, item in items:
        if item.get("resourceType") == "Bundle":
            return Rejected(ErrorCode.FHIR_INVALID, f"entry {index} is a nested Bundle; send it alone")
        patient = resolver.patient_of(item)
        if isinstance(patient, Rejected):
            where = f"entry {index}: " if index is not None else ""
            return Rejected(patient.code, where + patient.detail)
        entries.append(Entry(index, item, patient))
    return entries
