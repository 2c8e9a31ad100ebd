"""Resource types that are no clinical data for a patient's pathway, refused alike in every FHIR version.

The hub carries what GP and hospital systems record about patients (clinical and administrative
resources) and the reference data they point at (Organization, Practitioner, Binary, ...). Definitions,
terminologies, server descriptions, operation payloads and groups of people are none of these: they
would reach no recipient, so an input holding one (itself, a Bundle entry or a contained resource) is
refused with a detail that says why, whether it was sent as STU3, R4, R4B or R5.
"""

from __future__ import annotations

from collections.abc import Mapping

_CATEGORIES: dict[str, tuple[str, ...]] = {
    "a conformance resource, not clinical data for a patient's pathway": (
        "CapabilityStatement", "CompartmentDefinition", "DataElement", "ExampleScenario", "ExpansionProfile",
        "GraphDefinition", "ImplementationGuide", "MessageDefinition", "OperationDefinition",
        "SearchParameter", "StructureDefinition", "StructureMap", "TerminologyCapabilities",
    ),
    "a terminology resource, not clinical data for a patient's pathway": (
        "CodeSystem", "ConceptMap", "NamingSystem", "ValueSet",
    ),
    "a knowledge or definition resource, not clinical data for a patient's pathway": (
        "ActivityDefinition", "ChargeItemDefinition", "ConditionDefinition", "EventDefinition",
        "Library", "Measure", "ObservationDefinition", "PlanDefinition", "Questionnaire",
        "ServiceDefinition", "SpecimenDefinition",
    ),
    "a test resource, not clinical data for a patient's pathway": ("TestPlan", "TestReport", "TestScript"),
    "an operation's parameters or outcome, not clinical data for a patient's pathway": (
        "OperationOutcome", "Parameters",
    ),
    "a group of subjects (a cohort, a household), not one patient's record": ("Group",),
}  # fmt: skip

#: Each refused type, with what it is and why it is refused.
NOT_CLINICAL: Mapping[str, str] = {
    resource_type: why for why, types in _CATEGORIES.items() for resource_type in types
}


def not_clinical(resource_type: str) -> str | None:
    """The refusal's detail for a type that is no clinical data (names the type, never a value), or None."""
    why = NOT_CLINICAL.get(resource_type)
    return f"{resource_type}: {why}" if why is not None else None
