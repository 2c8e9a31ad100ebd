"""Split an input into resources and find the patient each one is about.

A Bundle is all-or-nothing: fhir.resources validates it whole, and one unresolvable patient
reference rejects it whole, so a source never has to work out which half of a transaction
landed. Resources that are about no patient (Organization, Practitioner, ...) are reference data:
they are accepted and make no pathway event. Resources that are no clinical data at all
(StructureDefinition, ValueSet, Questionnaire, Parameters, Group...: hub/normalise/clinical_scope.py)
are refused, wherever they stand in the input, as the version converter refuses them.

What the split leaves aside without rejecting the input becomes a warning of its receipt (an INS
that may not link, a resource about the patient that makes no event, an entry without a resource),
so a source learns what the hub did not use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hub.errors import ErrorCode, WarningCode
from hub.ingest.outcome import IngestWarning, Rejected, counted
from hub.normalise.clinical_scope import not_clinical
from hub.pathway.network_id import PatientKey, ins_systems, is_identity_validated
from hub.sources.registry import Source

SPLIT_BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "message", "document"})

#: The R4 element that names the patient, for each resource type in the patient compartment that makes
#: a pathway event (all a Reference, but Account.subject, a list).
PATIENT_FIELD: dict[str, str] = {
    **dict.fromkeys(
        (
            "Observation", "Condition", "Encounter", "Procedure", "DiagnosticReport",
            "MedicationRequest", "MedicationStatement", "MedicationAdministration",
            "MedicationDispense", "ServiceRequest", "DocumentReference", "Composition",
            "CarePlan", "CareTeam", "Goal", "ImagingStudy", "QuestionnaireResponse",
            "RiskAssessment", "ClinicalImpression", "Communication", "DeviceRequest",
            "Specimen", "Flag", "List", "Account", "Invoice",
        ),
        "subject",
    ),
    **dict.fromkeys(
        (
            "EpisodeOfCare", "AllergyIntolerance", "Immunization", "Claim",
            "ExplanationOfBenefit", "Consent", "FamilyMemberHistory", "NutritionOrder",
            "DetectedIssue", "Device",
        ),
        "patient",
    ),
    "Task": "for",
    "Coverage": "beneficiary",
}  # fmt: skip

#: Types that are reference data when they name no patient: a Device not affixed to a patient is
#: equipment (R5 Device has no patient at all), a Task for no patient is work on something else (a
#: claim, an order); neither is a fact of anyone's pathway.
PATIENT_OPTIONAL = frozenset({"Device", "Task"})

#: Resource types of the FHIR R4 Patient compartment (hl7.org/fhir/R4/compartmentdefinition-patient)
#: that make no pathway event, and Medication, whose content a reference to it (from a
#: MedicationRequest, say) does not carry: what they say about the patient reaches no recipient.
NO_EVENT_TYPES = frozenset(
    {
        "AdverseEvent", "Appointment", "AppointmentResponse", "AuditEvent", "Basic", "BodyStructure",
        "ChargeItem", "ClaimResponse", "CommunicationRequest", "CoverageEligibilityRequest",
        "CoverageEligibilityResponse", "DeviceUseStatement", "DocumentManifest", "EnrollmentRequest",
        "ImmunizationEvaluation", "ImmunizationRecommendation", "MeasureReport", "Media",
        "Medication", "MolecularSequence", "Person", "Provenance", "RelatedPerson", "RequestGroup",
        "ResearchSubject", "Schedule", "SupplyDelivery", "SupplyRequest", "VisionPrescription",
    }
)  # fmt: skip

#: Every INS system, test ones included: an identifier in one names a person by INS, whether or not
#: this hub may link on it.
_ANY_INS_SYSTEM = ins_systems(allow_test_ins=True)


@dataclass(frozen=True)
class Ins:
    """An INS an input names, and why it may not link (``refusal`` None: it is qualified, it links)."""

    key: PatientKey
    refusal: Literal["test-system", "not-validated"] | None


def read_ins(identifier: Mapping[str, Any], *, validated: bool, allow_test_ins: bool) -> Ins | None:
    """The hub's one INS rule, for ``Patient.identifier`` and ``Reference.identifier`` alike.

    An identifier in an INS system links records only when its system is accepted (the test systems
    .10 and .11 only with ``allow_test_ins``) and the identity carrying it is validated. FR Core
    states that on the Patient (identity reliability ``VALI``): ``validated`` is the Patient's, and
    False for a Reference, which has nowhere to state it. None when the identifier is no INS.
    """
    system, value = identifier.get("system"), identifier.get("value")
    if system not in _ANY_INS_SYSTEM or not value:
        return None
    key = PatientKey("ins", str(system), str(value))
    if system not in ins_systems(allow_test_ins=allow_test_ins):
        return Ins(key, "test-system")
    return Ins(key, None if validated else "not-validated")


_TEST_SYSTEM = (
    "a test INS (system …1.4.10 or …1.4.11) is not used to link: this hub links on production INS only"
)
_PATIENT_NOT_VALIDATED = "an INS is not used to link: the Patient has no FR Core identity reliability VALI"
_REFERENCE_NOT_VALIDATED = (
    "an INS is not used to link: a reference cannot state identity reliability, and no Patient of this "
    "input carries this INS with FR Core identity reliability VALI"
)
_SECOND_INS = "a second INS is not used to link: the Patient's first qualified INS links"
#: Why an INS on a Patient links nothing, by refusal; None: qualified, but another one links.
_ON_A_PATIENT = {"test-system": _TEST_SYSTEM, "not-validated": _PATIENT_NOT_VALIDATED, None: _SECOND_INS}


@dataclass(frozen=True)
class _IgnoredIns:
    """An INS left out of linking, with the receipt's explanation (which never quotes the INS)."""

    key: PatientKey
    detail: str


@dataclass(frozen=True)
class PatientIdentity:
    """What one input says about who its patient is: a local identifier, an INS, or both.

    An INS may be named without being qualified (``ins_qualified`` False): it then never links nor
    routes anything, but an input naming two different INS for its patient is still ambiguous.
    """

    local: PatientKey | None = None
    ins: PatientKey | None = None
    ins_qualified: bool = False

    def __post_init__(self) -> None:
        if self.ins_qualified and self.ins is None:
            raise ValueError("only an INS can be qualified")

    @property
    def linking_ins(self) -> PatientKey | None:
        """The INS that links records and routes events: a qualified one only."""
        return self.ins if self.ins_qualified else None

    @property
    def routing(self) -> PatientKey:
        """The key events travel under: the qualified INS when known (it is the same in every source)."""
        key = self.linking_ins or self.local
        if key is None:
            raise ValueError("an identity is routed by a qualified INS or a local identifier")
        return key

    def merged(self, other: PatientIdentity) -> PatientIdentity | None:
        """Both views of one patient combined, or None when they contradict each other.

        An INS one view names unqualified is qualified by the other view carrying it qualified: an INS
        in a reference links when a Patient of the same input carries it with identity reliability VALI.
        """
        if None not in (self.local, other.local) and self.local != other.local:
            return None
        if None not in (self.ins, other.ins) and self.ins != other.ins:
            return None
        return PatientIdentity(
            self.local or other.local, self.ins or other.ins, self.ins_qualified or other.ins_qualified
        )


@dataclass(frozen=True)
class Entry:
    """One resource of an input, its position, and whether it is about the input's patient."""

    index: int | None  # position in the Bundle, None for a single resource
    resource: dict[str, Any]
    about_patient: bool
    full_url: str | None = None


@dataclass(frozen=True)
class Split:
    """An input's resources, the one patient they are about (None: reference data only), and what the
    split left aside (unordered; the pipeline bounds and orders an input's warnings once)."""

    entries: tuple[Entry, ...]
    patient: PatientIdentity | None
    warnings: tuple[IngestWarning, ...] = ()


def _own_identity(
    patient: dict[str, Any], source: Source, *, allow_test_ins: bool
) -> tuple[PatientIdentity | None, list[_IgnoredIns]]:
    """A Patient's identity, and each INS it carries that may not link."""
    validated = is_identity_validated(patient)
    named = [
        ins
        for identifier in patient.get("identifier", ())
        if (ins := read_ins(identifier, validated=validated, allow_test_ins=allow_test_ins)) is not None
    ]
    # The first qualified INS links; without one, the first INS named still counts for ambiguity.
    chosen = next((ins for ins in named if ins.refusal is None), named[0] if named else None)
    ignored = [
        _IgnoredIns(ins.key, "Patient.identifier: " + _ON_A_PATIENT[ins.refusal])
        for ins in named
        if ins.refusal is not None or ins is not chosen
    ]
    local = None
    for identifier in patient.get("identifier", ()):
        if identifier.get("system") in source.patient_identifier_systems and identifier.get("value"):
            local = PatientKey("local", source.id, str(identifier["value"]))
            break
    if local is None and patient.get("id"):
        local = PatientKey("local", source.id, str(patient["id"]))
    if local is None and chosen is None:
        return None, ignored
    if chosen is None:
        return PatientIdentity(local), ignored
    return PatientIdentity(local, chosen.key, chosen.refusal is None), ignored


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
        #: Every INS of the input left out of linking, in the order found.
        self.ignored: list[_IgnoredIns] = []
        for full_url, resource in resources:
            if resource.get("resourceType") != "Patient":
                continue
            identity, ignored = _own_identity(resource, source, allow_test_ins=allow_test_ins)
            self.ignored.extend(ignored)
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

    def _identifier(self, identifier: dict[str, Any], where: str) -> PatientIdentity | None:
        system, value = str(identifier.get("system")), str(identifier["value"])
        if (system, value) in self.by_identifier:
            return self.by_identifier[(system, value)]
        # No Patient of the input carries this INS, so nothing states its reliability: it names the
        # patient (and may contradict another INS) but links nothing.
        ins = read_ins(identifier, validated=False, allow_test_ins=self.allow_test_ins)
        if ins is not None:
            why = _TEST_SYSTEM if ins.refusal == "test-system" else _REFERENCE_NOT_VALIDATED
            self.ignored.append(_IgnoredIns(ins.key, f"{where}: {why}"))
            return PatientIdentity(ins=ins.key)
        if system in self.source.patient_identifier_systems:
            return PatientIdentity(local=PatientKey("local", self.source.id, value))
        return None

    def resolve(self, reference: Any, where: str) -> PatientIdentity | Rejected | None:
        """Who a reference (at ``where``, e.g. ``Observation.subject``) names; a literal reference and an
        identifier in one are combined.

        When the two contradict each other, the reference names two patients: ``patient.ambiguous``.
        """
        if not isinstance(reference, dict):
            return None
        literal = reference.get("reference")
        identifier = reference.get("identifier")
        by_literal = self._literal(literal) if isinstance(literal, str) else None
        by_identifier = (
            self._identifier(identifier, f"{where}.identifier")
            if isinstance(identifier, dict) and identifier.get("value")
            else None
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
            identity, _ignored = _own_identity(resource, self.source, allow_test_ins=self.allow_test_ins)
            if identity is None:
                return Rejected(ErrorCode.PATIENT_UNRESOLVED, "Patient has no id nor identifier")
            return identity
        field = PATIENT_FIELD.get(resource_type)
        if field is None:
            return None
        reference = resource.get(field)
        if reference is None and resource_type in PATIENT_OPTIONAL:
            return None
        if isinstance(reference, list):
            # Account.subject: the account's one subject is its patient; several would need a choice.
            if len(reference) > 1:
                return Rejected(
                    ErrorCode.PATIENT_UNRESOLVED,
                    f"{resource_type}.{field} names several subjects; send one patient's account",
                )
            reference = reference[0] if reference else None
        named = self.resolve(reference, f"{resource_type}.{field}")
        if isinstance(named, Rejected):
            return Rejected(named.code, f"{resource_type}.{field}: {named.detail}")
        if named is None:
            return Rejected(
                ErrorCode.PATIENT_UNRESOLVED,
                f"{resource_type}.{field} names no patient this hub can identify",
            )
        return named


def _entry_warnings(
    entries: list[dict[str, Any]], items: list[tuple[int | None, str | None, dict[str, Any]]]
) -> list[IngestWarning]:
    """Bundle entries without a resource, and resources of a type that makes no event, counted."""
    requests = Counter(
        str((entry.get("request") or {}).get("method") or "none")
        for entry in entries
        if "resource" not in entry
    )
    types = Counter(
        str(item["resourceType"]) for _, _, item in items if item.get("resourceType") in NO_EVENT_TYPES
    )
    return [
        *(
            IngestWarning(
                WarningCode.ENTRY_NO_RESOURCE,
                f"{counted(count, 'Bundle entry', 'Bundle entries')} without a resource (request "
                f"{method}): the hub applies no request, nothing was changed",
            )
            for method, count in requests.items()
        ),
        *(
            IngestWarning(
                WarningCode.RESOURCE_IGNORED,
                f"{resource_type} ({counted(count, 'entry', 'entries')}): the hub makes no pathway event "
                "of this resource type, so no recipient receives it",
            )
            for resource_type, count in types.items()
        ),
    ]


def _not_clinical_problem(items: list[tuple[int | None, str | None, dict[str, Any]]]) -> Rejected | None:
    """The first resource of the input, or contained in one, that is no clinical data."""
    for index, _, item in items:
        where = f"entry {index}: " if index is not None else ""
        for resource in (item, *item.get("contained", ())):
            refusal = not_clinical(str(resource.get("resourceType")))
            if refusal is not None:
                inside = "contained " if resource is not item else ""
                return Rejected(ErrorCode.FHIR_INVALID, f"{where}{inside}{refusal}")
    return None


def split_entries(resource: dict[str, Any], source: Source, *, allow_test_ins: bool) -> Split | Rejected:
    """The input's resources and its one patient, or the reject that stops the whole input.

    An input is about one patient: its events travel together, in order, on that patient's
    partition, and its receipt can say whether it was all seen before. An input holding a resource that
    is no clinical data is refused whole (``fhir.invalid``), as Bundles are all or nothing.
    """
    bundle_entries: list[dict[str, Any]] = []
    if resource["resourceType"] == "Bundle":
        bundle_type = resource.get("type")
        if bundle_type not in SPLIT_BUNDLE_TYPES:
            return Rejected(
                ErrorCode.FHIR_INVALID,
                f"Bundle of type {str(bundle_type)[:20]!r} cannot be ingested; "
                f"use one of {', '.join(sorted(SPLIT_BUNDLE_TYPES))}",
            )
        bundle_entries = list(resource.get("entry", ()))
        items: list[tuple[int | None, str | None, dict[str, Any]]] = [
            (index, entry.get("fullUrl"), entry["resource"])
            for index, entry in enumerate(bundle_entries)
            if "resource" in entry  # a DELETE request carries no resource and makes no event
        ]
    else:
        items = [(None, None, resource)]
    not_clinical_input = _not_clinical_problem(items)
    if not_clinical_input is not None:
        return not_clinical_input
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
    linking = patient.linking_ins if patient is not None else None
    # Notes about the INS that links after all (one Patient entry qualifies what another left out) go.
    ignored = [note for note in resolver.ignored if note.key != linking]
    if patient is not None and patient.local is None and linking is None:
        why = next((note.detail for note in ignored if note.key == patient.ins), "")
        return Rejected(
            ErrorCode.PATIENT_UNRESOLVED,
            f"the input names its patient by an INS alone, and it may not link ({why}); send the Patient "
            "with FR Core identity reliability VALI in the same input, or name the patient by the "
            "source's own identifier",
        )
    warnings = [IngestWarning(WarningCode.INS_UNQUALIFIED, note.detail) for note in ignored]
    warnings.extend(_entry_warnings(bundle_entries, items))
    return Split(tuple(entries), patient, tuple(warnings))
