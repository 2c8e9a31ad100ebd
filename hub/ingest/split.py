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
class PatientIdentity:
    """What one input says about who its patient is: a local identifier, a qualified INS, or both."""

    local: PatientKey | None = None
    ins: PatientKey | None = None

    @property
    def routing(self) -> PatientKey:
        """The key events travel under: the INS when known (it is the same in every source)."""
        key = self.ins or self.local
        if key is None:
            raise ValueError("an identity has at least one key")
        return key

    def merged(self, other: PatientIdentity) -> PatientIdentity | None:
        """Both views of one patient combined, or None when they contradict each other."""
        if None not in (self.local, other.local) and self.local != other.local:
            return None
        if None not in (self.ins, other.ins) and self.ins != other.ins:
            return None
        return PatientIdentity(self.local or other.local, self.ins or other.ins)


@dataclass(frozen=True)
class Entry:
    """One resource of an input, its position, and whether it is about the input's patient."""

    index: int | None  # position in the Bundle, None for a single resource
    resource: dict[str, Any]
    about_patient: bool
    full_url: str | None = None


@dataclass(frozen=True)
class Split:
    """An input's resources and the one patient they are about (None: reference data only)."""

    entries: tuple[Entry, ...]
    patient: PatientIdentity | None


def _own_identity(patient: dict[str, Any], source: Source, *, allow_test_ins: bool) -> PatientIdentity | None:
    ins = qualified_ins(patient, allow_test_ins=allow_test_ins)
    local = None
    for identifier in patient.get("identifier", ()):
        if identifier.get("system") in source.patient_identifier_systems and identifier.get("value"):
            local = PatientKey("local", source.id, str(identifier["value"]))
            break
    if local is None and patient.get("id"):
        local = PatientKey("local", source.id, str(patient["id"]))
    return None if local is None and ins is None else PatientIdentity(local, ins)


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
        self.by_full_url: dict[str, PatientIdentity | None] = {}
        self.by_id: dict[str, PatientIdentity | None] = {}
        self.by_identifier: dict[tuple[str, str], PatientIdentity | None] = {}
        for full_url, resource in resources:
            if resource.get("resourceType") != "Patient":
                continue
            identity = _own_identity(resource, source, allow_test_ins=allow_test_ins)
            if full_url:
                self.by_full_url[full_url] = identity
            if resource.get("id"):
                self.by_id[str(resource["id"])] = identity
            for identifier in resource.get("identifier", ()):
                if identifier.get("system") and identifier.get("value"):
                    self.by_identifier[(str(identifier["system"]), str(identifier["value"]))] = identity

    def _literal(self, literal: str) -> PatientIdentity | None:
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
        return PatientIdentity(local=PatientKey("local", self.source.id, resource_id))

    def _identifier(self, identifier: dict[str, Any]) -> PatientIdentity | None:
        system, value = str(identifier.get("system")), str(identifier["value"])
        if (system, value) in self.by_identifier:
            return self.by_identifier[(system, value)]
        # A sender may only transmit an INS once qualified, so an INS here links records.
        if system in ins_systems(allow_test_ins=self.allow_test_ins):
            return PatientIdentity(ins=PatientKey("ins", system, value))
        if system in self.source.patient_identifier_systems:
            return PatientIdentity(local=PatientKey("local", self.source.id, value))
        return None

    def resolve(self, reference: Any) -> PatientIdentity | Rejected | None:
        """Who a reference names; a literal reference and an identifier in one are combined.

        When the two contradict each other, the reference names two patients: ``patient.ambiguous``.
        """
        if not isinstance(reference, dict):
            return None
        literal = reference.get("reference")
        identifier = reference.get("identifier")
        by_literal = self._literal(literal) if isinstance(literal, str) else None
        by_identifier = (
            self._identifier(identifier) if isinstance(identifier, dict) and identifier.get("value") else None
        )
        if by_literal is None or by_identifier is None:
            return by_literal or by_identifier
        merged = by_literal.merged(by_identifier)
        if merged is None:
            return Rejected(ErrorCode.PATIENT_AMBIGUOUS, "reference and identifier name different patients")
        return merged

    def patient_of(self, resource: dict[str, Any]) -> PatientIdentity | Rejected | None:
        resource_type = str(resource["resourceType"])
        if resource_type == "Patient":
            identity = _own_identity(resource, self.source, allow_test_ins=self.allow_test_ins)
            if identity is None:
                return Rejected(ErrorCode.PATIENT_UNRESOLVED, "Patient has no id nor identifier")
            return identity
        field = PATIENT_FIELD.get(resource_type)
        if field is None:
            return None
        named = self.resolve(resource.get(field))
        if isinstance(named, Rejected):
            return Rejected(named.code, f"{resource_type}.{field}: {named.detail}")
        if named is None:
            return Rejected(
                ErrorCode.PATIENT_UNRESOLVED,
                f"{resource_type}.{field} names no patient this hub can identify",
            )
        return named


def split_entries(resource: dict[str, Any], source: Source, *, allow_test_ins: bool) -> Split | Rejected:
    """The input's resources and its one patient, or the reject that stops the whole input.

    An input is about one patient: its events travel together, in order, on that patient's
    partition, and its receipt can say whether it was all seen before.
    """
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
    patient: PatientIdentity | None = None
    for index, full_url, item in items:
        where = f"entry {index}: " if index is not None else ""
        if item.get("resourceType") == "Bundle":
            return Rejected(ErrorCode.FHIR_INVALID, f"entry {index} is a nested Bundle; send it alone")
        identity = resolver.patient_of(item)
        if isinstance(identity, Rejected):
            return Rejected(identity.code, where + identity.detail)
        if identity is not None:
            combined = identity if patient is None else patient.merged(identity)
            if combined is None:
                return Rejected(
                    ErrorCode.PATIENT_AMBIGUOUS,
                    f"{where}names another patient than the entries before it; send one patient per input",
                )
            patient = combined
        entries.append(Entry(index, item, identity is not None, full_url))
    return Split(tuple(entries), patient)
