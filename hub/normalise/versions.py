"""STU3 (3.0) and R5 (5.0) resources converted to canonical R4, element by element.

The rules follow the official FHIR conversion maps, R3↔R4 and R4↔R5, as HL7's reference converter
(``org.hl7.fhir.convertors``, packages ``conv30_40`` and ``conv40_50``) implements them; each rule below
cites the map it comes from ("R3→R4", "R5→R4"). The converter is conservative:

- every source element is copied, moved to its R4 home, carried, dropped, or refused: an element no
  rule names is refused, so nothing is ever lost without a step saying so;
- an element with meaning and no R4 home is *carried* in HL7's cross-version extension
  (``http://hl7.org/fhir/3.0/StructureDefinition/extension-<Path>``, ``.../5.0/...`` from R5), with
  its value in the matching ``value[x]``, or, for a backbone element or a data type R4 lacks or
  changed, one nested extension per child element named by the child (see :meth:`_Element.carry`);
- an element is dropped only when it carries no clinical meaning; one whose meaning R4 cannot hold
  (a status or code without an R4 equivalent, a modifier element, a cardinality R4 narrowed) makes
  the resource :class:`Unconvertible` (the caller rejects it as ``fhir.version.unsupported``);
- a resource type that is no clinical data for a pathway (:mod:`hub.normalise.clinical_scope`) is
  refused as ``fhir.invalid``, in every version alike; any other type outside :data:`SUPPORTED_TYPES`
  is refused rather than guessed, and a Bundle is converted entry by entry, all or nothing;
- the result is validated with the R4B models (DESIGN.md section 4) before it is returned.

Details and steps name resource types and elements, never values: they reach receipts and logs. The
steps of carried and dropped elements have fixed forms that :func:`carried_element` and
:func:`dropped_element` read back, for receipts' warnings and ``hub sources check``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, NamedTuple, NoReturn

from pydantic import BaseModel, ValidationError

from hub.errors import ErrorCode
from hub.normalise import fast_validation
from hub.normalise.clinical_scope import not_clinical
from hub.normalise.fhir_errors import unreadable_detail, validation_detail
from hub.normalise.fhir_model import elements, model_lookup

STU3 = "3.0"
R5 = "5.0"
_VERSION_NAMES = {STU3: "STU3", R5: "R5"}
#: How steps name the map a rule comes from.
_RULES = {STU3: "R3→R4", R5: "R5→R4"}

#: R4 resource types that STU3 and R5 resources are converted to (STU3 ProcedureRequest → ServiceRequest,
#: DocumentManifest → DocumentReference).
SUPPORTED_TYPES: frozenset[str] = frozenset(
    {
        "Patient",
        "Practitioner",
        "Organization",
        "Encounter",
        "EpisodeOfCare",
        "Condition",
        "Observation",
        "Procedure",
        "MedicationRequest",
        "MedicationStatement",
        "AllergyIntolerance",
        "DiagnosticReport",
        "ServiceRequest",
        "DocumentReference",
        "CareTeam",
        "Consent",
        "Immunization",
        "MedicationDispense",
        "MedicationAdministration",
        "List",
        "Composition",
        "Task",
        "QuestionnaireResponse",
        "RiskAssessment",
        "CarePlan",
        "Goal",
        "Flag",
        "FamilyMemberHistory",
        "Specimen",
        "Device",
        "Binary",
        "Bundle",
    }
)

_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
_ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
_ALLERGY_TYPE = "http://hl7.org/fhir/allergy-intolerance-type"
_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_ADHERENCE = "http://hl7.org/fhir/CodeSystem/medication-statement-adherence"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_LOINC = "http://loinc.org"
_CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
_STU3_CONSENT_CATEGORY = "http://hl7.org/fhir/consentcategorycodes"
_ATTESTATION_MODE = "http://hl7.org/fhir/composition-attestation-mode"
_RELATIONSHIP_TYPE = "http://hl7.org/fhir/document-relationship-type"
_URI_SYSTEM = "urn:ietf:rfc:3986"
#: HL7's cross-version extensions: an element of the source version that R4 lacks, by its path.
_EXTENSION_BASE = {
    STU3: "http://hl7.org/fhir/3.0/StructureDefinition/extension-",
    R5: "http://hl7.org/fhir/5.0/StructureDefinition/extension-",
}
#: The forms of the steps that say an element was carried or dropped (read back by the functions below).
_CARRIED = re.compile(r"^(?:entry\[\d+\] )*(?P<element>[A-Za-z][A-Za-z0-9.]*) → cross-version extension \(")
_DROPPED = re.compile(r"^(?:entry\[\d+\] )*(?P<element>[A-Za-z][A-Za-z0-9.]*) dropped \((?P<why>.*)\)$")

#: Resource types the maps rename; a reference to any other type R4 lacks is refused.
_RENAMED_TYPES = {
    STU3: {
        "ProcedureRequest": "ServiceRequest",
        "ReferralRequest": "ServiceRequest",
        "BodySite": "BodyStructure",
        "Sequence": "MolecularSequence",
        # R5 retires DocumentManifest; the issue's reading: a manifest is one DocumentReference.
        "DocumentManifest": "DocumentReference",
    },
    R5: {"DeviceUsage": "DeviceUseStatement"},
}
#: R4B types absent from R4: the R4B models accept them, canonical R4 must not name them.
_R4B_ONLY_TYPES = frozenset(
    {
        "AdministrableProductDefinition",
        "Citation",
        "ClinicalUseDefinition",
        "EvidenceReport",
        "Ingredient",
        "ManufacturedItemDefinition",
        "MedicinalProductDefinition",
        "NutritionProduct",
        "PackagedProductDefinition",
        "RegulatedAuthorization",
        "SubscriptionStatus",
        "SubscriptionTopic",
    }
)
#: Extension value types R5 added; the R4B models accept some of them, R4 has none.
_R5_ONLY_VALUES = frozenset(
    {
        "valueInteger64",
        "valueCodeableReference",
        "valueRatioRange",
        "valueAvailability",
        "valueExtendedContactDetail",
        "valueMonetaryComponent",
        "valueVirtualServiceDetail",
    }
)
#: A resource type in a URL: ``Type``, ``Type/id``, ``Type/id/_history/v``, ``Type?search``, relative
#: or after a base URL.
_URL_TYPE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)(?=(?:/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?)?(?:\?.*)?$)"
)
_REFERENCE_KEYS = frozenset({"reference", "type", "identifier", "display", "id", "extension"})
_ELEMENT_BASE = ("id", "extension", "modifierExtension")
_UNSIGNED_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Converted:
    """The R4 resource, and what was done to it (short step strings that name elements, not values)."""

    resource: dict[str, Any]
    steps: tuple[str, ...]


@dataclass(frozen=True)
class Unconvertible:
    """Why the resource cannot be converted: names the resource type and element, never a value.

    ``code`` is the reject's: ``fhir.version.unsupported`` for what R4 cannot express, ``fhir.invalid``
    for a resource type that is no clinical data (refused in R4 as well).
    """

    detail: str
    code: ErrorCode = ErrorCode.FHIR_VERSION_UNSUPPORTED


class _Refused(Exception):
    """Unwinds a conversion from any depth; :func:`convert_to_r4` turns it into :class:`Unconvertible`."""

    def __init__(self, detail: str, code: ErrorCode = ErrorCode.FHIR_VERSION_UNSUPPORTED) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code

    def within(self, where: str) -> _Refused:
        """The same refusal, its detail placed inside ``where`` (``Bundle.entry[2]``...)."""
        return _Refused(f"{where}: {self.detail}", self.code)


def carried_element(step: str) -> str | None:
    """The element a conversion step carried in a cross-version extension (``Observation.triggeredBy``),
    or None for another step."""
    match = _CARRIED.match(step)
    return match["element"] if match else None


def dropped_element(step: str) -> tuple[str, str] | None:
    """The element a conversion step dropped and why (``("Observation.instantiatesCanonical", "R5 link
    to the observation's definition")``), or None for another step."""
    match = _DROPPED.match(step)
    return (match["element"], match["why"]) if match else None


class _Run:
    """One conversion: the source version and the steps taken (in order, without repeats)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.name = _VERSION_NAMES[version]
        self.prefix = ""
        self._steps: dict[str, None] = {}

    def note(self, step: str) -> None:
        self._steps.setdefault(f"{self.prefix}{step}", None)

    @property
    def steps(self) -> tuple[str, ...]:
        return tuple(self._steps)


class _Element:
    """One source element (a resource or a backbone element) read field by field into its R4 form.

    ``done()`` refuses any field left unread, so an element no rule names is never silently lost.
    ``keeps_base=False`` is for an element that disappears in R4 (its content moves elsewhere): its
    extensions would then have no home, so they are left unread and refused; its ``id`` is dropped.
    """

    def __init__(self, source: Mapping[str, Any], path: str, run: _Run, *, keeps_base: bool = True) -> None:
        self.source = source
        self.path = path
        self.run = run
        self.out: dict[str, Any] = {}
        self._unread = set(source)
        if keeps_base:
            self.keep(*_ELEMENT_BASE)
        else:
            self._unread.discard("id")

    def __contains__(self, name: str) -> bool:
        return name in self.source

    def take(self, name: str) -> Any:
        """The source value (None when absent), marked as handled; its ``_name`` is not."""
        self._unread.discard(name)
        return self.source.get(name)

    def keep(self, *names: str) -> None:
        """Copy elements whose R4 form is the same, with their primitive extensions (``_name``)."""
        for name in names:
            for key in (name, f"_{name}"):
                if key in self.source:
                    self.out[key] = self.source[key]
                    self._unread.discard(key)

    def move(self, name: str, target: str, rule: str) -> None:
        """An element whose content is unchanged but whose R4 name differs."""
        for key, target_key in ((name, target), (f"_{name}", f"_{target}")):
            if key in self.source:
                self.out[target_key] = self.source[key]
                self._unread.discard(key)
                self.run.note(f"{self.path}.{name} → {target} ({rule})")

    def drop(self, name: str, why: str) -> None:
        """An element with no R4 home and no clinical meaning."""
        for key in (name, f"_{name}"):
            if key in self.source:
                self._unread.discard(key)
                self.run.note(f"{self.path}.{name} dropped ({why})")

    def carry(self, *names: str, onto: _Element | None = None) -> None:
        """Elements with no R4 home, each in HL7's cross-version extension, on this element's R4 form (or
        on ``onto``'s, for an element that disappears in R4)."""
        for name in names:
            value = self.take(name)
            extras = self.take(f"_{name}")
            if extras is not None:
                # R4's Extension has no place for a value's own id and extensions.
                self.run.note(
                    f"{self.path}.{name}.extension dropped (R4 has no place for it on a carried value)"
                )
            if value is not None:
                self.carry_value(name, value, onto=onto)

    def carry_value(self, name: str, value: Any, *, onto: _Element | None = None) -> None:
        """``value`` (an item or a list of them) of the element ``name``, carried as :meth:`carry` does."""
        slot = _slot(self.path, name, self.run.version)
        if slot is None:
            self.fail(name, "R4 has no element for it")
        path = f"{self.path}.{slot.base}"
        url = f"{_EXTENSION_BASE[self.run.version]}{path}"
        carried = [_extension(item, slot.type_name, url, path, self.run) for item in _as_list(value)]
        holder = onto or self
        holder.out["extension"] = [*holder.out.get("extension", ()), *carried]
        self.run.note(f"{path} → cross-version extension ({_RULES[self.run.version]})")

    def refuse(self, name: str, why: str) -> None:
        if name in self.source or f"_{name}" in self.source:
            self.fail(name, why)

    def fail(self, name: str, why: str) -> NoReturn:
        raise _Refused(f"{self.path}.{name}: {why}")

    def done(self) -> dict[str, Any]:
        if self._unread:
            self.fail(min(self._unread).lstrip("_"), "R4 has no element for it")
        return self.out


_Fill = Callable[[_Element], None]


def _same(*codes: str) -> dict[str, str]:
    return {code: code for code in codes}


def _recode(el: _Element, name: str, codes: Mapping[str, str], rule: str = "") -> None:
    """A code copied into R4's value set; a code R4 has no equivalent for is refused."""
    el.keep(name)
    code = el.out.get(name)
    if code is None:
        return
    if not isinstance(code, str) or code not in codes:
        el.fail(name, "the code has no R4 equivalent")
    if codes[code] != code:
        el.out[name] = codes[code]
        el.run.note(f"{el.path}.{name} recoded into the R4 value set ({rule})")


def _listify(el: _Element, name: str, rule: str, target: str | None = None) -> None:
    """A 0..1 element that R4 made a list."""
    value = el.take(name)
    if value is not None:
        el.out[target or name] = [value]
        el.run.note(f"{el.path}.{name} → list {target or name} ({rule})")


def _one(el: _Element, name: str, rule: str, target: str | None = None) -> None:
    """A list that R4 holds as a single element: one item converts, more are refused."""
    items = el.take(name)
    if items is None:
        return
    if len(items) > 1:
        el.fail(name, "R4 holds only one")
    el.out[target or name] = items[0]
    el.run.note(f"{el.path}.{name} → single {target or name} ({rule})")


def _each(el: _Element, name: str, fill: _Fill, target: str | None = None) -> None:
    """Each item of a list of backbone elements, converted by ``fill``."""
    items = el.take(name)
    if items is None:
        return
    converted = []
    for item in items:
        sub = _Element(item, f"{el.path}.{name}", el.run)
        fill(sub)
        converted.append(sub.done())
    el.out[target or name] = converted


def _single(el: _Element, name: str, fill: _Fill, target: str | None = None) -> None:
    """A 0..1 backbone element, converted by ``fill``."""
    value = el.take(name)
    if value is not None:
        sub = _Element(value, f"{el.path}.{name}", el.run)
        fill(sub)
        el.out[target or name] = sub.done()


def _codes(concept: object, system: str) -> set[str]:
    """The codes of one system in a CodeableConcept."""
    if not isinstance(concept, Mapping):
        return set()
    return {
        coding["code"]
        for coding in concept.get("coding") or ()
        if coding.get("system") == system and isinstance(coding.get("code"), str)
    }


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ---------------------------------------------------------------------------------------------------
# Cross-version extensions


@dataclass(frozen=True)
class _Slot:
    """One element of a source model: its FHIR type, and its name without a choice's type suffix."""

    type_name: str
    base: str  # occurrenceDateTime → occurrence; the name itself for an element that is no choice


@cache  # bounded: keyed by the models' own type and element names
def _slots(type_name: str, version: str) -> dict[str, _Slot]:
    """The elements of a resource, data type or backbone element of a version, by JSON name."""
    try:
        model = model_lookup(version)(type_name)
    except (KeyError, ValueError):
        return {}
    choices = {
        field.alias or name: field.json_schema_extra.get("one_of_many")
        for name, field in model.model_fields.items()
        if isinstance(field.json_schema_extra, dict)
    }
    return {
        name: _Slot(element.type_name, str(choices.get(name) or name))
        for name, element in elements(model).items()
    }


# Bounded: the paths are the converters' own, built from element names the source model knows.
@lru_cache(maxsize=4096)
def _slot(path: str, name: str, version: str) -> _Slot | None:
    """The element ``name`` under ``path`` (``Immunization.reaction``), read along the source models."""
    resource_type, *steps = path.split(".")
    type_name = resource_type
    for step in steps:
        inner = _slots(type_name, version).get(step)
        if inner is None:
            return None
        type_name = inner.type_name
    return _slots(type_name, version).get(name)


def _kind(type_name: str) -> str:
    """A type as values are compared across versions: R4 made some STU3 uris urls (Attachment.url), which
    JSON writes alike; any other type stands for itself."""
    return "uri" if type_name == "url" else type_name


@cache  # bounded by the versions and their data type names
def _r4_as_is(type_name: str, version: str) -> bool:
    """Whether R4 has the data type with the same elements (names, types, repetition, recursively), so
    that a source value of it is an R4 value as it stands, and R4's Extension takes it as ``value[x]``."""
    if _r4_extension_value(type_name) is None:
        return False
    pending = [type_name]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or name == "Extension":  # extension values are checked by _finish
            continue
        seen.add(name)
        source, target = (elements(model_lookup(v)(name)) for v in (version, "4.0"))
        for element_name, element in source.items():
            other = target.get(element_name)
            if other is None or (_kind(other.type_name), other.repeats) != (
                _kind(element.type_name),
                element.repeats,
            ):
                return False
            if not element.primitive:
                pending.append(element.type_name)
    return True


@cache  # bounded by the data type names
def _r4_extension_value(type_name: str) -> str | None:
    """The ``value[x]`` key of R4's Extension for a type, or None when R4 has no such value type."""
    key = f"value{type_name[:1].upper()}{type_name[1:]}"
    r4_keys = set(elements(model_lookup("4.0")("Extension"))) - _R5_ONLY_VALUES
    return key if key in r4_keys else None


def _extension(value: Any, type_name: str, url: str, path: str, run: _Run) -> dict[str, Any]:
    """One source value as an R4 extension: ``value[x]`` for a primitive and a data type R4 has as it
    stands; else one nested extension per child element, named by the child (a choice by its name
    without the type), and the value's own extensions beside them, as HL7 builds complex extensions.
    An R5 CodeableReference that is only a concept or only a reference is that value, as HL7's R5→R4
    extensions type it."""
    if type_name == "integer64":
        # R4 has no integer64; a decimal holds the same integer exactly (R5 JSON writes it as a string).
        return {"url": url, "valueDecimal": int(value)}
    key = _r4_extension_value(type_name)
    if key is not None and (type_name[:1].islower() or _r4_as_is(type_name, run.version)):
        return {"url": url, key: value}
    if (
        type_name == "CodeableReference"
        and isinstance(value, dict)
        and set(value) in ({"concept"}, {"reference"})
    ):
        if "concept" in value:
            return {"url": url, "valueCodeableConcept": value["concept"]}
        return {"url": url, "valueReference": value["reference"]}
    if not isinstance(value, dict) or type_name == "Resource":
        raise _Refused(f"{path}: this value cannot be carried in an extension")
    if "modifierExtension" in value:
        raise _Refused(f"{path}.modifierExtension: a modifier extension cannot be carried in an extension")
    slots = _slots(type_name, run.version)
    nested = list(value.get("extension", ()))
    for name, child in value.items():
        if name.startswith("_"):
            # R4's Extension has no place for a value's own id and extensions.
            run.note(f"{path}.{name[1:]}.extension dropped (R4 has no place for it on a carried value)")
            continue
        if name in _ELEMENT_BASE:
            continue  # the id names nothing outside the element; its extensions are nested above
        slot = slots.get(name)
        if slot is None:
            raise _Refused(f"{path}.{name}: not an element of the source version")
        nested.extend(
            _extension(item, slot.type_name, slot.base, f"{path}.{slot.base}", run)
            for item in _as_list(child)
        )
    return {"url": url, "extension": nested}


# ---------------------------------------------------------------------------------------------------
# Data types


_DOSAGE_SAME = (
    "sequence",
    "text",
    "additionalInstruction",
    "patientInstruction",
    "timing",
    "site",
    "route",
    "method",
    "maxDosePerAdministration",
    "maxDosePerLifetime",
)
_STU3_DOSE_AND_RATE = ("doseQuantity", "doseRange", "rateRatio", "rateRange", "rateQuantity")


def _stu3_dosage(el: _Element) -> None:
    el.keep(*_DOSAGE_SAME, "asNeededBoolean", "asNeededCodeableConcept", "maxDosePerPeriod")
    # R3→R4 Dosage: dose[x] and rate[x] moved into the repeating doseAndRate.
    dose_and_rate = {name: el.take(name) for name in _STU3_DOSE_AND_RATE if name in el}
    if dose_and_rate:
        el.out["doseAndRate"] = [dose_and_rate]
        el.run.note(f"{el.path}.dose[x] and rate[x] → doseAndRate (R3→R4)")


def _r5_dosage(el: _Element) -> None:
    el.keep(*_DOSAGE_SAME, "doseAndRate")
    # R5→R4 Dosage: asNeeded (boolean) + asNeededFor (list) are R4's asNeeded[x] choice; a reason
    # implies "as needed" (an R5 Dosage invariant), so one reason is asNeededCodeableConcept.
    if "asNeededFor" in el:
        _one(el, "asNeededFor", "R5→R4", "asNeededCodeableConcept")
        el.take("asNeeded")
    else:
        el.move("asNeeded", "asNeededBoolean", "R5→R4")
    _one(el, "maxDosePerPeriod", "R5→R4")


def _r5_attachment(el: _Element) -> None:
    el.keep("contentType", "language", "data", "url", "hash", "title", "creation")
    size = el.take("size")
    if size is not None:
        # R5 made size an integer64, which JSON carries as a string; R4 has an unsignedInt.
        try:
            value = int(str(size))
        except ValueError:
            el.fail("size", "not an integer")
        if not 0 <= value <= _UNSIGNED_INT_MAX:
            el.fail("size", "too large for R4's unsignedInt")
        el.out["size"] = value
    for name in ("height", "width", "frames", "duration", "pages"):
        el.drop(name, "R5 presentation detail, no R4 element")


def _codeable_references(el: _Element, name: str) -> tuple[list[Any], list[Any]]:
    """The concepts and the references of an R5 list of CodeableReference."""
    concepts: list[Any] = []
    references: list[Any] = []
    for item in el.take(name) or ():
        sub = _Element(item, f"{el.path}.{name}", el.run, keeps_base=False)
        concept, reference = sub.take("concept"), sub.take("reference")
        sub.done()
        if concept is not None:
            concepts.append(concept)
        if reference is not None:
            references.append(reference)
    return concepts, references


def _split(el: _Element, name: str, concept_target: str | None, reference_target: str | None) -> None:
    """R5→R4: a CodeableReference list is R4's pair of CodeableConcept and Reference lists; a side
    without an R4 element (target None) is carried."""
    if name not in el:
        return
    concepts, references = _codeable_references(el, name)
    for items, target, side in (
        (concepts, concept_target, "concept"),
        (references, reference_target, "reference"),
    ):
        if not items:
            continue
        if target is None:
            el.carry_value(name, [{side: item} for item in items])
            continue
        el.out[target] = [*el.out.get(target, ()), *items]
        el.run.note(f"{el.path}.{name} → {target} (R5→R4 CodeableReference)")


def _concept_of(el: _Element, name: str, value: Mapping[str, Any]) -> Any:
    sub = _Element(value, f"{el.path}.{name}", el.run, keeps_base=False)
    concept, reference = sub.take("concept"), sub.take("reference")
    sub.done()
    if reference is not None:  # R4 holds only a code here
        el.carry_value(name, {"reference": reference})
    if concept is not None:
        el.run.note(f"{el.path}.{name} → CodeableConcept (R5→R4 CodeableReference)")
    return concept


def _single_concept(el: _Element, name: str, target: str | None = None) -> None:
    """R5→R4: a 0..1 CodeableReference that R4 holds as a CodeableConcept (its reference is carried)."""
    value = el.take(name)
    if value is not None:
        concept = _concept_of(el, name, value)
        if concept is not None:
            el.out[target or name] = concept


def _one_concept(el: _Element, name: str) -> None:
    """R5→R4: a CodeableReference list that R4 holds as one CodeableConcept."""
    items = el.take(name)
    if items is None:
        return
    if len(items) > 1:
        el.fail(name, "R4 holds only one")
    concept = _concept_of(el, name, items[0])
    if concept is not None:
        el.out[name] = concept


# ---------------------------------------------------------------------------------------------------
# STU3 → R4


def _stu3_context_to_encounter(el: _Element) -> None:
    """R3→R4: context became encounter, where R4 allows an Encounter only: a context that names an
    EpisodeOfCare is carried instead."""
    context = el.source.get("context")
    literal = context.get("reference") if isinstance(context, Mapping) else None
    named = _URL_TYPE.search(literal) if isinstance(literal, str) else None
    declared = context.get("type") if isinstance(context, Mapping) else None
    if "EpisodeOfCare" in (named["type"] if named else None, declared):
        el.carry("context")
    else:
        el.move("context", "encounter", "R3→R4")


def _stu3_requester(el: _Element) -> None:
    """R3→R4: requester {agent, onBehalfOf} became a Reference to the agent; onBehalfOf goes to HL7's
    cross-version extension, as the reference converter does for MedicationRequest."""
    requester = el.take("requester")
    if requester is None:
        return
    sub = _Element(requester, f"{el.path}.requester", el.run, keeps_base=False)
    el.out["requester"] = sub.take("agent")
    el.run.note(f"{el.path}.requester.agent → requester (R3→R4)")
    sub.carry("onBehalfOf", onto=el)
    sub.done()


def _stu3_patient(el: _Element) -> None:
    el.refuse("animal", "R4 has no animal patients")
    el.keep(
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "deceasedBoolean",
        "deceasedDateTime",
        "address",
        "maritalStatus",
        "multipleBirthBoolean",
        "multipleBirthInteger",
        "photo",
        "contact",
        "communication",
        "generalPractitioner",
        "managingOrganization",
        "link",
    )


def _stu3_practitioner(el: _Element) -> None:
    el.keep(
        "identifier",
        "active",
        "name",
        "telecom",
        "address",
        "gender",
        "birthDate",
        "photo",
        "qualification",
        "communication",
    )


def _stu3_organization(el: _Element) -> None:
    el.keep(
        "identifier", "active", "type", "name", "alias", "telecom", "address", "partOf", "contact", "endpoint"
    )


_ENCOUNTER_STATUS = _same(
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
)


def _stu3_encounter_diagnosis(el: _Element) -> None:
    el.keep("condition", "rank")
    el.move("role", "use", "R3→R4")


def _stu3_encounter(el: _Element) -> None:
    _recode(el, "status", _ENCOUNTER_STATUS)
    if "class" not in el:
        el.fail("class", "R4 requires the encounter class")
    el.keep(
        "identifier",
        "statusHistory",
        "class",
        "classHistory",
        "type",
        "priority",
        "subject",
        "episodeOfCare",
        "participant",
        "period",
        "length",
        "account",
        "hospitalization",
        "location",
        "serviceProvider",
        "partOf",
    )
    el.move("incomingReferral", "basedOn", "R3→R4")
    _listify(el, "appointment", "R3→R4")
    el.move("reason", "reasonCode", "R3→R4")
    _each(el, "diagnosis", _stu3_encounter_diagnosis)


_EPISODE_STATUS = _same(
    "planned", "waitlist", "active", "onhold", "finished", "cancelled", "entered-in-error"
)


def _stu3_episode_of_care(el: _Element) -> None:
    _recode(el, "status", _EPISODE_STATUS)
    el.keep(
        "identifier",
        "statusHistory",
        "type",
        "diagnosis",
        "patient",
        "managingOrganization",
        "period",
        "referralRequest",
        "careManager",
        "team",
        "account",
    )


_ONSET = ("onsetDateTime", "onsetAge", "onsetPeriod", "onsetRange", "onsetString")
_ABATEMENT = ("abatementDateTime", "abatementAge", "abatementPeriod", "abatementRange", "abatementString")
_STU3_CONDITION_CLINICAL = frozenset({"active", "recurrence", "inactive", "remission", "resolved"})
_STU3_CONDITION_VERIFICATION = frozenset(
    {"provisional", "differential", "confirmed", "refuted", "entered-in-error"}
)
_ABATED = frozenset({"inactive", "resolved", "remission"})


def _concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _stu3_status_concept(el: _Element, name: str, system: str, allowed: frozenset[str]) -> str | None:
    """R3→R4: a status code became a CodeableConcept in the matching HL7 code system."""
    code = el.take(name)
    if code is None:
        return None
    if code not in allowed:
        el.fail(name, "the code has no R4 equivalent")
    el.out[name] = _concept(system, code)
    el.run.note(f"{el.path}.{name} code → CodeableConcept (R3→R4)")
    return str(code)


def _stu3_condition_statuses(el: _Element) -> None:
    if el.source.get("verificationStatus") == "unknown":
        # condition-ver-status has no "unknown" in R4: the element's absence says the same.
        el.drop("verificationStatus", "the R4 code system has no unknown, absence means it")
        verification = None
    else:
        verification = _stu3_status_concept(
            el, "verificationStatus", _CONDITION_VERIFICATION, _STU3_CONDITION_VERIFICATION
        )
    clinical = _stu3_status_concept(el, "clinicalStatus", _CONDITION_CLINICAL, _STU3_CONDITION_CLINICAL)
    if verification == "entered-in-error" and clinical is not None:
        # R4 invariant con-5: no clinical status on a record entered in error.
        del el.out["clinicalStatus"]
        el.run.note(f"{el.path}.clinicalStatus dropped (R4 con-5, record entered in error)")
    abated = el.take("abatementBoolean")
    if abated is not None:
        # R4 dropped abatementBoolean: "true" is what the clinical status inactive/resolved/remission
        # already says (STU3 con-4), "false" says nothing; "true" with any other status is refused.
        if abated and clinical not in _ABATED:
            el.fail("abatementBoolean", "R4 can only say it through the clinical status")
        el.run.note(f"{el.path}.abatementBoolean dropped (R3→R4, carried by clinicalStatus)")


def _stu3_condition(el: _Element) -> None:
    el.keep(
        "identifier",
        "category",
        "severity",
        "code",
        "bodySite",
        "subject",
        *_ONSET,
        *_ABATEMENT,
        "asserter",
        "evidence",
        "note",
    )
    _stu3_condition_statuses(el)
    _stu3_context_to_encounter(el)
    el.move("assertedDate", "recordedDate", "R3→R4")
    _listify(el, "stage", "R3→R4")


_OBSERVATION_STATUS = _same(
    "registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"
)
_OBSERVATION_VALUES = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
)
_OBSERVATION_RELATED = {"has-member": "hasMember", "derived-from": "derivedFrom"}


def _stu3_observation_component(el: _Element) -> None:
    el.keep("code", *_OBSERVATION_VALUES, "valueSampledData", "dataAbsentReason", "referenceRange")
    el.carry("valueAttachment")  # R4 Observation values cannot be attachments
    _listify(el, "interpretation", "R3→R4")


def _stu3_observation_related(el: _Element) -> None:
    # R3→R4: related {type, target} became hasMember and derivedFrom; its other types
    # (sequel-to, replaces, qualified-by, interfered-by) have no R4 element and are carried.
    for item in el.take("related") or ():
        if item.get("type") not in _OBSERVATION_RELATED:
            el.carry_value("related", item)
            continue
        sub = _Element(item, f"{el.path}.related", el.run, keeps_base=False)
        kind, target = sub.take("type"), sub.take("target")
        sub.done()
        name = _OBSERVATION_RELATED[kind]
        el.out[name] = [*el.out.get(name, ()), target]
        el.run.note(f"{el.path}.related → {name} (R3→R4)")


def _stu3_observation(el: _Element) -> None:
    _recode(el, "status", _OBSERVATION_STATUS)
    el.keep(
        "identifier",
        "basedOn",
        "category",
        "code",
        "subject",
        "effectiveDateTime",
        "effectivePeriod",
        "issued",
        "performer",
        *_OBSERVATION_VALUES,
        "valueSampledData",
        "dataAbsentReason",
        "bodySite",
        "method",
        "specimen",
        "device",
        "referenceRange",
    )
    el.carry("valueAttachment")  # R4 Observation values cannot be attachments
    _stu3_context_to_encounter(el)
    _listify(el, "interpretation", "R3→R4")
    comment = el.take("comment")
    if comment is not None:
        el.out["note"] = [{"text": comment}]
        el.run.note(f"{el.path}.comment → note (R3→R4)")
    _stu3_observation_related(el)
    _each(el, "component", _stu3_observation_component)


_STU3_PROCEDURE_STATUS = {
    "preparation": "preparation",
    "in-progress": "in-progress",
    "suspended": "on-hold",
    "aborted": "stopped",
    "completed": "completed",
    "entered-in-error": "entered-in-error",
    "unknown": "unknown",
}


def _stu3_procedure_performer(el: _Element) -> None:
    el.keep("actor", "onBehalfOf")
    el.move("role", "function", "R3→R4")


def _stu3_procedure(el: _Element) -> None:
    el.keep(
        "identifier",
        "basedOn",
        "partOf",
        "category",
        "code",
        "subject",
        "performedDateTime",
        "performedPeriod",
        "location",
        "reasonCode",
        "reasonReference",
        "bodySite",
        "outcome",
        "report",
        "complication",
        "complicationDetail",
        "followUp",
        "note",
        "focalDevice",
        "usedReference",
        "usedCode",
    )
    el.carry("definition")  # a protocol Reference cannot become R4's canonical instantiatesCanonical
    _recode(el, "status", _STU3_PROCEDURE_STATUS, "R3→R4 Procedure status map")
    not_done = el.take("notDone")
    if not_done and el.out.get("status") != "entered-in-error":
        # R3→R4: the notDone flag became the status not-done.
        el.out["status"] = "not-done"
        el.run.note(f"{el.path}.notDone → status (R3→R4)")
    elif not_done is not None:
        el.run.note(f"{el.path}.notDone dropped (R3→R4, status says it)")
    el.move("notDoneReason", "statusReason", "R3→R4")
    _stu3_context_to_encounter(el)
    _each(el, "performer", _stu3_procedure_performer)


_STU3_REQUEST_STATUS = {
    "draft": "draft",
    "active": "active",
    "suspended": "on-hold",
    "cancelled": "revoked",
    "completed": "completed",
    "entered-in-error": "entered-in-error",
    "unknown": "unknown",
}
_REQUEST_INTENT = _same(
    "proposal",
    "plan",
    "directive",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
)
_REQUEST_PRIORITY = _same("routine", "urgent", "asap", "stat")


def _stu3_procedure_request(el: _Element) -> None:
    """R3→R4: ProcedureRequest became ServiceRequest."""
    el.keep(
        "identifier",
        "basedOn",
        "replaces",
        "requisition",
        "doNotPerform",
        "category",
        "code",
        "subject",
        "occurrenceDateTime",
        "occurrencePeriod",
        "occurrenceTiming",
        "asNeededBoolean",
        "asNeededCodeableConcept",
        "authoredOn",
        "performerType",
        "reasonCode",
        "reasonReference",
        "supportingInfo",
        "specimen",
        "bodySite",
        "note",
        "relevantHistory",
    )
    _recode(el, "status", _STU3_REQUEST_STATUS, "R3→R4 request status map")
    _recode(el, "intent", _REQUEST_INTENT)
    _recode(el, "priority", _REQUEST_PRIORITY)
    el.carry("definition")  # a protocol Reference cannot become R4's canonical instantiatesCanonical
    _stu3_context_to_encounter(el)
    _stu3_requester(el)
    _listify(el, "performer", "R3→R4")


_MEDICATION_REQUEST_STATUS = _same(
    "active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"
)


def _stu3_substitution(el: _Element) -> None:
    el.keep("reason")
    el.move("allowed", "allowedBoolean", "R3→R4")


def _stu3_medication_request(el: _Element) -> None:
    el.keep(
        "identifier",
        "basedOn",
        "groupIdentifier",
        "medicationCodeableConcept",
        "medicationReference",
        "subject",
        "supportingInformation",
        "authoredOn",
        "recorder",
        "reasonCode",
        "reasonReference",
        "note",
        "dispenseRequest",
        "priorPrescription",
        "detectedIssue",
        "eventHistory",
    )
    _recode(el, "status", _MEDICATION_REQUEST_STATUS)
    _recode(el, "intent", _REQUEST_INTENT)
    _recode(el, "priority", _REQUEST_PRIORITY)
    el.carry("definition")  # a protocol Reference cannot become R4's canonical instantiatesCanonical
    _stu3_context_to_encounter(el)
    _stu3_requester(el)
    _listify(el, "category", "R3→R4")
    _each(el, "dosageInstruction", _stu3_dosage)
    _single(el, "substitution", _stu3_substitution)


_STU3_STATEMENT_STATUS = _same("active", "completed", "entered-in-error", "intended", "stopped", "on-hold")


def _stu3_taken(el: _Element) -> None:
    """R3→R4 dropped ``taken`` (y | n | unk | na): R4 says it with the status.

    y: the status already says the medication is (or was) taken. n: status not-taken, with
    reasonNotTaken as statusReason, unless the status says it anyway (intended, entered-in-error).
    unk: status unknown ("the state of the medication use is not currently known"), rather than a
    status that would claim use. na: only where the status already implies no use.
    """
    taken = el.take("taken")
    status = el.out.get("status")
    settled = status in {"intended", "entered-in-error"}
    if taken == "n" and not settled:
        el.out["status"] = "not-taken"
    elif taken == "unk" and status != "entered-in-error":
        el.out["status"] = "unknown"
    elif taken == "na" and not settled:
        el.fail("taken", "not-applicable has no R4 equivalent for this status")
    if taken is not None:
        el.run.note(f"{el.path}.taken → status (R3→R4)")
    el.move("reasonNotTaken", "statusReason", "R3→R4")


def _stu3_medication_statement(el: _Element) -> None:
    el.keep(
        "identifier",
        "basedOn",
        "partOf",
        "context",
        "category",
        "medicationCodeableConcept",
        "medicationReference",
        "effectiveDateTime",
        "effectivePeriod",
        "dateAsserted",
        "informationSource",
        "subject",
        "derivedFrom",
        "reasonCode",
        "reasonReference",
        "note",
    )
    _recode(el, "status", _STU3_STATEMENT_STATUS)
    _stu3_taken(el)
    _each(el, "dosage", _stu3_dosage)


def _stu3_allergy_intolerance(el: _Element) -> None:
    el.keep(
        "identifier",
        "type",
        "category",
        "criticality",
        "code",
        "patient",
        *_ONSET,
        "recorder",
        "asserter",
        "lastOccurrence",
        "note",
        "reaction",
    )
    _stu3_status_concept(
        el, "clinicalStatus", _ALLERGY_CLINICAL, frozenset({"active", "inactive", "resolved"})
    )
    _stu3_status_concept(
        el,
        "verificationStatus",
        _ALLERGY_VERIFICATION,
        frozenset({"unconfirmed", "confirmed", "refuted", "entered-in-error"}),
    )
    el.move("assertedDate", "recordedDate", "R3→R4")


_REPORT_STATUS = _same(
    "registered",
    "partial",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "appended",
    "cancelled",
    "entered-in-error",
    "unknown",
)


def _stu3_report_performers(el: _Element) -> None:
    """R3→R4: performer {role, actor} became a Reference to the actor; the role goes to HL7's
    cross-version extension on that reference, as the reference converter does."""
    performers = el.take("performer")
    if performers is None:
        return
    converted = []
    for item in performers:
        sub = _Element(item, f"{el.path}.performer", el.run, keeps_base=False)
        # The role goes on the actor's reference: carried there, then the reference replaces the element.
        sub.keep("actor")
        sub.carry("role")
        performer = sub.done()
        actor = dict(performer.get("actor") or {})
        if "extension" in performer:
            actor["extension"] = [*actor.get("extension", ()), *performer["extension"]]
        converted.append(actor)
    el.out["performer"] = converted
    el.run.note(f"{el.path}.performer.actor → performer (R3→R4)")


def _stu3_diagnostic_report(el: _Element) -> None:
    _recode(el, "status", _REPORT_STATUS)
    el.keep(
        "identifier",
        "basedOn",
        "code",
        "subject",
        "effectiveDateTime",
        "effectivePeriod",
        "issued",
        "specimen",
        "result",
        "imagingStudy",
        "conclusion",
        "presentedForm",
    )
    _listify(el, "category", "R3→R4")
    _stu3_context_to_encounter(el)
    _stu3_report_performers(el)
    el.move("image", "media", "R3→R4")
    el.move("codedDiagnosis", "conclusionCode", "R3→R4")


_DOCUMENT_STATUS = _same("current", "superseded", "entered-in-error")
_DOC_STATUS = _same("preliminary", "final", "amended", "entered-in-error")


def _stu3_document_context(el: _Element) -> None:
    el.keep("event", "period", "facilityType", "practiceSetting", "sourcePatientInfo")
    _listify(el, "encounter", "R3→R4")
    related = el.take("related")
    if related is None:
        return
    # R3→R4: related {identifier, ref} became a plain Reference carrying both.
    references = []
    for item in related:
        sub = _Element(item, f"{el.path}.related", el.run, keeps_base=False)
        reference, identifier = dict(sub.take("ref") or {}), sub.take("identifier")
        sub.done()
        if identifier is not None:
            if "identifier" in reference:
                el.fail("related", "two identifiers for one R4 reference")
            reference["identifier"] = identifier
        references.append(reference)
    el.out["related"] = references
    el.run.note(f"{el.path}.related → Reference (R3→R4)")


def _stu3_document_reference(el: _Element) -> None:
    _recode(el, "status", _DOCUMENT_STATUS)
    _recode(el, "docStatus", _DOC_STATUS)
    el.keep(
        "masterIdentifier",
        "identifier",
        "type",
        "subject",
        "author",
        "authenticator",
        "custodian",
        "relatesTo",
        "description",
        "securityLabel",
        "content",
    )
    _listify(el, "class", "R3→R4", "category")
    el.move("indexed", "date", "R3→R4")
    el.carry("created")  # the document's own creation time
    _single(el, "context", _stu3_document_context)


_CARE_TEAM_STATUS = _same("proposed", "active", "suspended", "inactive", "entered-in-error")


def _stu3_care_team_participant(el: _Element) -> None:
    el.keep("member", "onBehalfOf", "period")
    _listify(el, "role", "R3→R4")


def _stu3_care_team(el: _Element) -> None:
    _recode(el, "status", _CARE_TEAM_STATUS)
    el.keep(
        "identifier",
        "category",
        "name",
        "subject",
        "period",
        "managingOrganization",
        "reasonCode",
        "reasonReference",
        "note",
    )
    _stu3_context_to_encounter(el)
    _each(el, "participant", _stu3_care_team_participant)


_CONSENT_STATUS = _same("draft", "proposed", "active", "rejected", "inactive", "entered-in-error")
#: STU3 consent categories that are not privacy consents (advance directives, research).
_STU3_NOT_PRIVACY = frozenset({"acd", "dnr", "hcd", "polst", "research", "rsdid", "rsreid"})
_PROVISION_SAME = ("period", "action", "securityLabel", "purpose", "dataPeriod", "data")


def _consent_actor(el: _Element) -> None:
    if "role" not in el or "reference" not in el:
        el.fail("actor", "R4 needs both the role and the reference")
    el.keep("role", "reference")


def _stu3_consent_except(el: _Element) -> None:
    el.keep("type", "class", *_PROVISION_SAME)
    _each(el, "actor", _consent_actor)
    codes = el.take("code")
    if codes is not None:
        # R3→R4: except.code (Coding) became provision.code (CodeableConcept).
        el.out["code"] = [{"coding": [coding]} for coding in codes]
        el.run.note(f"{el.path}.code → CodeableConcept (R3→R4)")


def _stu3_consent_scope(el: _Element) -> None:
    """R4 requires a scope that STU3 lacks. STU3 Consent records privacy choices ("permits or denies
    recipients ... to perform actions"), so the scope is patient-privacy, unless a category says the
    consent is an advance directive or a research consent."""
    categories = el.source.get("category")
    if not categories:
        el.fail("category", "R4 requires a category")
    if any(_codes(category, _STU3_CONSENT_CATEGORY) & _STU3_NOT_PRIVACY for category in categories):
        el.fail("category", "not a privacy consent, R4's scope cannot be chosen")
    el.keep("category")
    el.out["scope"] = _concept(_CONSENT_SCOPE, "patient-privacy")
    el.run.note(f"{el.path}.scope set to patient privacy (R3→R4, STU3 Consent is a privacy consent)")


def _stu3_consent_provision(el: _Element) -> None:
    """R3→R4: the rule elements of STU3 Consent became its root provision (with no type: the base
    policy is policyRule), and each except a nested provision, as the reference converter maps them."""
    rules = {name: el.take(name) for name in (*_PROVISION_SAME, "actor", "except") if name in el}
    if not rules:
        return
    root = _Element(rules, el.path, el.run, keeps_base=False)
    root.keep(*_PROVISION_SAME)
    _each(root, "actor", _consent_actor)
    _each(root, "except", _stu3_consent_except, "provision")
    el.out["provision"] = root.done()
    el.run.note(f"{el.path} rules and except → provision (R3→R4)")


def _stu3_consent(el: _Element) -> None:
    _recode(el, "status", _CONSENT_STATUS)
    el.keep("patient", "dateTime", "organization", "policy", "sourceAttachment", "sourceReference")
    _stu3_consent_scope(el)
    _listify(el, "identifier", "R3→R4")
    el.move("consentingParty", "performer", "R3→R4")
    identifier = el.take("sourceIdentifier")
    if identifier is not None:
        # R4 source[x] lost Identifier; a logical Reference carries it.
        el.out["sourceReference"] = {"identifier": identifier}
        el.run.note(f"{el.path}.sourceIdentifier → sourceReference (R3→R4)")
    rule = el.take("policyRule")
    if rule is not None:
        # R3→R4 as the reference converter maps it: the policy URI becomes a coding of RFC 3986.
        el.out["policyRule"] = _concept(_URI_SYSTEM, rule)
        el.run.note(f"{el.path}.policyRule uri → CodeableConcept (R3→R4)")
    _stu3_consent_provision(el)


# ---------------------------------------------------------------------------------------------------
# R5 → R4


def _r5_participants(el: _Element) -> None:
    """R5→R4: participant {function, actor} is R4's recorder (function author) and asserter
    (function informant), as the reference converter maps them; other participants are carried."""
    targets = {"author": "recorder", "informant": "asserter"}
    for item in el.take("participant") or ():
        codes = _codes(item.get("function"), _PARTICIPANT_TYPE)
        target = targets.get(codes.pop()) if len(codes) == 1 else None
        if target is None or target in el.out:  # another function, or a second author or informant
            el.carry_value("participant", item)
            continue
        sub = _Element(item, f"{el.path}.participant", el.run, keeps_base=False)
        sub.take("function")
        el.out[target] = sub.take("actor")
        sub.done()
        el.run.note(f"{el.path}.participant → {target} (R5→R4)")


def _r5_medication(el: _Element) -> None:
    """R5→R4: medication (CodeableReference) is R4's medication[x] choice."""
    medication = el.take("medication")
    if medication is None:
        return
    sub = _Element(medication, f"{el.path}.medication", el.run, keeps_base=False)
    concept, reference = sub.take("concept"), sub.take("reference")
    sub.done()
    if concept is not None and reference is not None:
        el.fail("medication", "R4 holds either a code or a reference")
    if concept is not None:
        el.out["medicationCodeableConcept"] = concept
    else:
        el.out["medicationReference"] = reference
    el.run.note(f"{el.path}.medication → medication[x] (R5→R4)")


def _r5_rendered_dosage(el: _Element, dosages: str) -> None:
    # The rendered text repeats the structured dosage; alone it is the only dosage, and carried.
    if dosages not in el:
        el.carry("renderedDosageInstruction")
    el.drop("renderedDosageInstruction", "R5 rendering of the structured dosage kept")


def _r5_patient(el: _Element) -> None:
    el.keep(
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "deceasedBoolean",
        "deceasedDateTime",
        "address",
        "maritalStatus",
        "multipleBirthBoolean",
        "multipleBirthInteger",
        "contact",
        "communication",
        "generalPractitioner",
        "managingOrganization",
        "link",
    )
    _each(el, "photo", _r5_attachment)


def _r5_practitioner(el: _Element) -> None:
    el.keep("identifier", "active", "name", "telecom", "address", "gender", "birthDate", "qualification")
    el.carry("deceasedBoolean", "deceasedDateTime")
    _each(el, "photo", _r5_attachment)
    communication = el.take("communication")
    if communication is not None:
        # R5→R4: communication {language, preferred} is R4's list of languages.
        languages = []
        for item in communication:
            sub = _Element(item, f"{el.path}.communication", el.run, keeps_base=False)
            languages.append(sub.take("language"))
            sub.drop("preferred", "R5 language preference, no R4 element")
            sub.done()
        el.out["communication"] = languages
        el.run.note(f"{el.path}.communication.language → communication (R5→R4)")


def _r5_organization_contact(el: _Element) -> None:
    el.keep("purpose", "telecom", "address")
    _one(el, "name", "R5→R4")
    el.carry("organization", "period")


def _r5_organization(el: _Element) -> None:
    el.keep("identifier", "active", "type", "name", "alias", "partOf", "endpoint")
    el.drop("description", "R5 free-text description of the organisation")
    el.drop("qualification", "R5 organisation accreditation, not clinical")
    contacts = el.take("contact")
    if contacts is None:
        return
    # R5 moved Organization.telecom and .address into contact: a contact that names no purpose,
    # person or organisation is the organisation's own, R4's telecom and address.
    people = []
    for item in contacts:
        if any(name in item for name in ("purpose", "name", "organization", "period")):
            sub = _Element(item, f"{el.path}.contact", el.run)
            _r5_organization_contact(sub)
            people.append(sub.done())
            continue
        sub = _Element(item, f"{el.path}.contact", el.run, keeps_base=False)
        telecom, address = sub.take("telecom"), sub.take("address")
        sub.done()
        if telecom:
            el.out["telecom"] = [*el.out.get("telecom", ()), *telecom]
        if address:
            el.out["address"] = [*el.out.get("address", ()), address]
        el.run.note(f"{el.path}.contact → telecom and address (R5→R4)")
    if people:
        el.out["contact"] = people


_R5_ENCOUNTER_STATUS = {
    "planned": "planned",
    "in-progress": "in-progress",
    # R5 on-hold: "begun, but on hold, e.g. because the patient is temporarily on leave" is R4 onleave.
    "on-hold": "onleave",
    # Discharged: the encounter ended for the patient, administration is still open: R4 finished.
    "discharged": "finished",
    "completed": "finished",
    "cancelled": "cancelled",
    "entered-in-error": "entered-in-error",
    "unknown": "unknown",
}  # R5 discontinued (ended prematurely) has no R4 code: refused.


def _r5_encounter_class(el: _Element) -> None:
    """R5→R4: class (list of CodeableConcept) is R4's single class Coding: the one coding, or the one
    v3 ActCode coding among several."""
    classes = el.take("class") or []
    if len(classes) != 1:
        el.fail("class", "R4 needs exactly one encounter class")
    codings = classes[0].get("coding") or []
    act = [coding for coding in codings if coding.get("system") == _ACT_CODE]
    chosen = act if len(act) == 1 else codings
    if len(chosen) != 1:
        el.fail("class", "R4 needs exactly one encounter class coding")
    el.out["class"] = chosen[0]
    el.run.note(f"{el.path}.class → class Coding (R5→R4, R4 holds one coding)")


def _r5_encounter_participant(el: _Element) -> None:
    el.keep("type", "period")
    el.move("actor", "individual", "R5→R4")


def _r5_encounter_location(el: _Element) -> None:
    el.keep("location", "status", "period")
    el.move("form", "physicalType", "R5→R4")


def _r5_encounter_reasons(el: _Element) -> None:
    """R5→R4: reason {use, value} is R4's reasonCode and reasonReference; the use (chief complaint,
    reason for visit...) only qualifies the reason, which R4 keeps."""
    for item in el.take("reason") or ():
        sub = _Element(item, f"{el.path}.reason", el.run, keeps_base=False)
        sub.drop("use", "R5 qualifier of the reason")
        _split(sub, "value", "reasonCode", "reasonReference")
        sub.done()
        for name in ("reasonCode", "reasonReference"):
            if name in sub.out:
                el.out[name] = [*el.out.get(name, ()), *sub.out[name]]


def _r5_diagnoses(el: _Element, use_target: str) -> None:
    """R5→R4: diagnosis {condition (CodeableReference list), use} is one R4 diagnosis per referenced
    condition; a diagnosis given as a code (R4 needs a reference to a Condition) is carried."""
    diagnoses = el.take("diagnosis")
    if diagnoses is None:
        return
    converted = []
    for item in diagnoses:
        sub = _Element(item, f"{el.path}.diagnosis", el.run, keeps_base=False)
        uses = sub.take("use")
        if isinstance(uses, list):
            if len(uses) > 1:
                sub.fail("use", "R4 holds only one")
            uses = uses[0] if uses else None
        concepts, references = _codeable_references(sub, "condition")
        sub.done()
        if concepts:
            el.carry_value("diagnosis", item)
            continue
        for reference in references:
            converted.append({"condition": reference, **({use_target: uses} if uses is not None else {})})
    el.out["diagnosis"] = converted
    el.run.note(f"{el.path}.diagnosis → diagnosis per condition (R5→R4)")


def _r5_encounter_hospitalization(el: _Element) -> None:
    """R5→R4: admission, with the diet and arrangements R5 moved up, is R4's hospitalization."""
    moved = ("dietPreference", "specialArrangement", "specialCourtesy")
    admission = dict(el.take("admission") or {})
    for name in moved:
        if name in el:
            admission[name] = el.take(name)
    if not admission:
        return
    sub = _Element(admission, f"{el.path}.admission", el.run)
    sub.keep(
        "preAdmissionIdentifier",
        "origin",
        "admitSource",
        "reAdmission",
        "destination",
        "dischargeDisposition",
        *moved,
    )
    el.out["hospitalization"] = sub.done()
    el.run.note(f"{el.path}.admission → hospitalization (R5→R4)")


def _r5_encounter(el: _Element) -> None:
    _recode(el, "status", _R5_ENCOUNTER_STATUS, "R5→R4")
    el.keep(
        "identifier",
        "type",
        "priority",
        "subject",
        "episodeOfCare",
        "basedOn",
        "appointment",
        "length",
        "account",
        "serviceProvider",
        "partOf",
    )
    _r5_encounter_class(el)
    _one_concept(el, "serviceType")
    el.carry("subjectStatus", "careTeam", "virtualService")
    el.move("actualPeriod", "period", "R5→R4")
    el.drop("plannedStartDate", "R5 planning date, no R4 element")
    el.drop("plannedEndDate", "R5 planning date, no R4 element")
    _each(el, "participant", _r5_encounter_participant)
    _r5_encounter_reasons(el)
    _r5_diagnoses(el, "use")
    _r5_encounter_hospitalization(el)
    _each(el, "location", _r5_encounter_location)


def _r5_episode_of_care(el: _Element) -> None:
    _recode(el, "status", _EPISODE_STATUS)
    el.keep(
        "identifier",
        "statusHistory",
        "type",
        "patient",
        "managingOrganization",
        "period",
        "referralRequest",
        "careManager",
        "account",
    )
    el.move("careTeam", "team", "R5→R4")
    el.carry("reason")
    _r5_diagnoses(el, "role")


def _r5_condition(el: _Element) -> None:
    el.keep(
        "identifier",
        "verificationStatus",
        "category",
        "severity",
        "code",
        "bodySite",
        "subject",
        "encounter",
        *_ONSET,
        *_ABATEMENT,
        "recordedDate",
        "stage",
        "note",
    )
    if "unknown" in _codes(el.source.get("clinicalStatus"), _CONDITION_CLINICAL):
        # R5 added "unknown" to condition-clinical; in R4 the element's absence says it.
        el.drop("clinicalStatus", "the R4 code system has no unknown, absence means it")
    else:
        el.keep("clinicalStatus")
    _r5_participants(el)
    concepts, references = _codeable_references(el, "evidence")
    evidence = [{"code": [concept]} for concept in concepts] + [{"detail": [ref]} for ref in references]
    if evidence:
        # R5→R4: evidence (CodeableReference) is R4's evidence {code, detail}.
        el.out["evidence"] = evidence
        el.run.note(f"{el.path}.evidence → evidence code and detail (R5→R4)")


def _r5_reference_range(el: _Element) -> None:
    el.keep("low", "high", "type", "appliesTo", "age", "text")
    el.carry("normalValue")


def _r5_observation_values(el: _Element) -> None:
    el.keep(*_OBSERVATION_VALUES, "dataAbsentReason", "interpretation")
    # Values R4 Observation cannot hold: attachments, references, and R5's changed SampledData.
    el.carry("valueAttachment", "valueReference", "valueSampledData")
    _each(el, "referenceRange", _r5_reference_range)


def _r5_observation_component(el: _Element) -> None:
    el.keep("code")
    _r5_observation_values(el)


def _r5_observation(el: _Element) -> None:
    _recode(el, "status", _OBSERVATION_STATUS)
    el.keep(
        "identifier",
        "basedOn",
        "partOf",
        "category",
        "code",
        "subject",
        "focus",
        "encounter",
        "effectiveDateTime",
        "effectivePeriod",
        "effectiveTiming",
        "effectiveInstant",
        "issued",
        "performer",
        "note",
        "bodySite",
        "method",
        "specimen",
        "device",
        "hasMember",
        "derivedFrom",
    )
    _r5_observation_values(el)
    el.drop("instantiatesCanonical", "R5 link to the observation's definition")
    el.drop("instantiatesReference", "R5 link to the observation's definition")
    el.carry("triggeredBy", "bodyStructure")
    _each(el, "component", _r5_observation_component)


_PROCEDURE_STATUS = _same(
    "preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error", "unknown"
)
_PERFORMED = ("DateTime", "Period", "String", "Age", "Range")


def _r5_procedure_performer(el: _Element) -> None:
    el.keep("function", "actor", "onBehalfOf")
    el.carry("period")


def _r5_procedure(el: _Element) -> None:
    _recode(el, "status", _PROCEDURE_STATUS)
    el.keep(
        "identifier",
        "instantiatesCanonical",
        "instantiatesUri",
        "basedOn",
        "partOf",
        "statusReason",
        "code",
        "subject",
        "encounter",
        "recorder",
        "location",
        "bodySite",
        "outcome",
        "report",
        "followUp",
        "note",
        "focalDevice",
    )
    _one(el, "category", "R5→R4")
    el.carry("focus", "supportingInfo", "occurrenceTiming")  # R4 performed[x] has no Timing
    for kind in _PERFORMED:
        el.move(f"occurrence{kind}", f"performed{kind}", "R5→R4")
    el.drop("recorded", "R5 date of the record, not of the procedure")
    el.move("reportedReference", "asserter", "R5→R4")
    el.drop("reportedBoolean", "R5 provenance flag, no R4 element")
    _each(el, "performer", _r5_procedure_performer)
    _split(el, "reason", "reasonCode", "reasonReference")
    _split(el, "complication", "complication", "complicationDetail")
    _split(el, "used", "usedCode", "usedReference")


_SERVICE_REQUEST_STATUS = _same(
    "draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"
)


def _r5_patient_instruction(el: _Element) -> None:
    instructions = el.take("patientInstruction")
    if instructions is None:
        return
    if len(instructions) != 1:
        el.fail("patientInstruction", "R4 holds only one instruction")
    sub = _Element(instructions[0], f"{el.path}.patientInstruction", el.run, keeps_base=False)
    text = sub.take("instructionMarkdown")
    sub.carry("instructionReference", onto=el)  # R4 holds the instruction as text only
    sub.done()
    el.out["patientInstruction"] = text
    el.run.note(f"{el.path}.patientInstruction → patientInstruction text (R5→R4)")


def _r5_service_request(el: _Element) -> None:
    _recode(el, "status", _SERVICE_REQUEST_STATUS)
    _recode(el, "intent", _REQUEST_INTENT)
    _recode(el, "priority", _REQUEST_PRIORITY)
    el.keep(
        "identifier",
        "instantiatesCanonical",
        "instantiatesUri",
        "basedOn",
        "replaces",
        "requisition",
        "doNotPerform",
        "category",
        "quantityQuantity",
        "quantityRatio",
        "quantityRange",
        "subject",
        "encounter",
        "occurrenceDateTime",
        "occurrencePeriod",
        "occurrenceTiming",
        "asNeededBoolean",
        "asNeededCodeableConcept",
        "authoredOn",
        "requester",
        "performerType",
        "performer",
        "insurance",
        "specimen",
        "bodySite",
        "note",
        "relevantHistory",
    )
    _single_concept(el, "code")
    el.carry("orderDetail", "focus", "bodyStructure")
    _split(el, "location", "locationCode", "locationReference")
    _split(el, "reason", "reasonCode", "reasonReference")
    _split(el, "supportingInfo", None, "supportingInfo")
    _r5_patient_instruction(el)


def _r5_dispense_request(el: _Element) -> None:
    el.keep(
        "initialFill",
        "dispenseInterval",
        "validityPeriod",
        "numberOfRepeatsAllowed",
        "quantity",
        "expectedSupplyDuration",
    )
    el.move("dispenser", "performer", "R5→R4")
    el.carry("dispenserInstruction", "doseAdministrationAid")


def _r5_reported(el: _Element) -> None:
    """R5→R4: reported (boolean) and informationSource are R4's reported[x]: the one source, which
    implies a reported record, or else the flag."""
    sources = el.source.get("informationSource")
    if sources:
        if el.source.get("reported") is False:
            el.fail("informationSource", "R4 cannot name a source of a record that is not reported")
        _one(el, "informationSource", "R5→R4", "reportedReference")
        el.take("reported")
    else:
        el.take("informationSource")
        el.move("reported", "reportedBoolean", "R5→R4")


def _r5_medication_request(el: _Element) -> None:
    _recode(el, "status", _MEDICATION_REQUEST_STATUS)  # R5 ended has no R4 code: refused.
    _recode(el, "intent", _REQUEST_INTENT)
    _recode(el, "priority", _REQUEST_PRIORITY)
    el.keep(
        "identifier",
        "basedOn",
        "priorPrescription",
        "groupIdentifier",
        "statusReason",
        "category",
        "doNotPerform",
        "subject",
        "encounter",
        "supportingInformation",
        "authoredOn",
        "requester",
        "performerType",
        "recorder",
        "courseOfTherapyType",
        "insurance",
        "note",
        "substitution",
        "eventHistory",
    )
    _r5_medication(el)
    _r5_reported(el)
    _one(el, "performer", "R5→R4")
    el.carry("device", "effectiveDosePeriod")
    el.drop("statusChanged", "R5 date of the last status change")
    _r5_rendered_dosage(el, "dosageInstruction")
    _each(el, "dosageInstruction", _r5_dosage)
    _split(el, "reason", "reasonCode", "reasonReference")
    _single(el, "dispenseRequest", _r5_dispense_request)


#: R5 adherence codes and the R4 status that says the same.
_ADHERENCE_STATUS = {
    "taking": "active",
    "taking-as-directed": "active",
    "not-taking": "not-taken",
    "on-hold": "on-hold",
    "on-hold-as-directed": "on-hold",
    "stopped": "stopped",
    "stopped-as-directed": "stopped",
    "unknown": "unknown",
}  # the *-not-as-directed codes say the patient departs from the plan: R4 cannot, so refused.


def _r5_statement_status(el: _Element) -> None:
    """R5 split R4's status in two: status says whether the record stands (recorded | entered-in-error
    | draft), adherence whether the medication is taken. R4's status is the adherence for a recorded
    statement; without adherence it is unknown, rather than a status that would claim use."""
    status = el.take("status")
    adherence = el.take("adherence")
    if status == "draft":
        el.fail("status", "R4 has no draft medication statements")
    if status == "entered-in-error":
        el.keep("status")
        if adherence is not None:
            el.run.note(f"{el.path}.adherence dropped (the record is entered in error)")
        return
    if adherence is None:
        el.out["status"] = "unknown"
        el.run.note(f"{el.path}.status → unknown (R5→R4, no adherence given)")
        return
    sub = _Element(adherence, f"{el.path}.adherence", el.run, keeps_base=False)
    codes, reason = _codes(sub.take("code"), _ADHERENCE), sub.take("reason")
    sub.done()
    mapped = _ADHERENCE_STATUS.get(codes.pop()) if len(codes) == 1 else None
    if mapped is None:
        el.fail("adherence", "the adherence code has no R4 status")
    el.out["status"] = mapped
    if reason is not None:
        el.out["statusReason"] = [reason]
    el.run.note(f"{el.path}.adherence → status and statusReason (R5→R4)")


def _r5_medication_statement(el: _Element) -> None:
    _r5_statement_status(el)
    el.keep(
        "identifier",
        "partOf",
        "subject",
        "effectiveDateTime",
        "effectivePeriod",
        "dateAsserted",
        "derivedFrom",
        "note",
    )
    _one(el, "category", "R5→R4")
    _r5_medication(el)
    el.move("encounter", "context", "R5→R4")
    _one(el, "informationSource", "R5→R4")
    el.carry("effectiveTiming", "relatedClinicalInformation")  # R4 effective[x] has no Timing
    _split(el, "reason", "reasonCode", "reasonReference")
    _r5_rendered_dosage(el, "dosage")
    _each(el, "dosage", _r5_dosage)


def _r5_reaction(el: _Element) -> None:
    el.keep("substance", "description", "onset", "severity", "exposureRoute", "note")
    _split(el, "manifestation", "manifestation", None)


def _r5_allergy_intolerance(el: _Element) -> None:
    el.keep(
        "identifier",
        "clinicalStatus",
        "category",
        "criticality",
        "code",
        "patient",
        "encounter",
        *_ONSET,
        "recordedDate",
        "lastOccurrence",
        "note",
    )
    # R5 added "presumed" (a high certainty) under unconfirmed (low certainty in R4): no R4 code.
    if "presumed" in _codes(el.source.get("verificationStatus"), _ALLERGY_VERIFICATION):
        el.fail("verificationStatus", "the code has no R4 equivalent")
    el.keep("verificationStatus")
    kind = el.take("type")
    if kind is not None:
        # R5→R4: type became a CodeableConcept; R4's is the code allergy | intolerance.
        codes = _codes(kind, _ALLERGY_TYPE) & {"allergy", "intolerance"}
        if len(codes) != 1:
            el.fail("type", "R4 needs the code allergy or intolerance")
        el.out["type"] = codes.pop()
        el.run.note(f"{el.path}.type CodeableConcept → code (R5→R4)")
    _r5_participants(el)
    _each(el, "reaction", _r5_reaction)


def _r5_diagnostic_report(el: _Element) -> None:
    _recode(el, "status", _REPORT_STATUS)  # R5 modified has no R4 code: refused.
    el.keep(
        "identifier",
        "basedOn",
        "category",
        "code",
        "subject",
        "encounter",
        "effectiveDateTime",
        "effectivePeriod",
        "issued",
        "performer",
        "resultsInterpreter",
        "specimen",
        "result",
        "media",
        "conclusion",
        "conclusionCode",
    )
    el.move("study", "imagingStudy", "R5→R4")
    el.carry("note", "composition", "supportingInfo")
    _each(el, "presentedForm", _r5_attachment)


def _r5_document_content(el: _Element) -> None:
    _single(el, "attachment", _r5_attachment)
    profiles = el.take("profile")
    if profiles is None:
        return
    # R5→R4: profile (list of coding | uri | canonical) is R4's single format Coding.
    if len(profiles) != 1:
        el.fail("profile", "R4 holds only one format")
    sub = _Element(profiles[0], f"{el.path}.profile", el.run, keeps_base=False)
    coding = sub.take("valueCoding")
    sub.done()
    if coding is None:
        el.fail("profile", "R4 holds the format as a Coding only")
    el.out["format"] = coding
    el.run.note(f"{el.path}.profile → format (R5→R4)")


_R4_RELATIONSHIPS = frozenset({"replaces", "transforms", "signs", "appends"})


def _r5_document_relates_to(el: _Element) -> None:
    """R5→R4: a relationship of one of R4's four codes keeps its place; another one is carried."""
    converted = []
    for item in el.take("relatesTo") or ():
        codes = _codes(item.get("code"), _RELATIONSHIP_TYPE) & _R4_RELATIONSHIPS
        if len(codes) != 1:
            el.carry_value("relatesTo", item)
            continue
        sub = _Element(item, f"{el.path}.relatesTo", el.run)
        sub.keep("target")
        sub.take("code")
        sub.out["code"] = codes.pop()
        converted.append(sub.done())
        el.run.note(f"{el.path}.relatesTo.code CodeableConcept → code (R5→R4)")
    if converted:
        el.out["relatesTo"] = converted


def _r5_document_attesters(el: _Element) -> None:
    """R5→R4: the official attester is R4's authenticator, as the reference converter maps it; other
    attesters are carried."""
    for item in el.take("attester") or ():
        if _codes(item.get("mode"), _ATTESTATION_MODE) != {"official"} or "authenticator" in el.out:
            el.carry_value("attester", item)
            continue
        sub = _Element(item, f"{el.path}.attester", el.run, keeps_base=False)
        sub.take("mode")
        party = sub.take("party")
        sub.carry("time", onto=el)
        sub.done()
        el.out["authenticator"] = party
        el.run.note(f"{el.path}.attester → authenticator (R5→R4)")


def _r5_document_context(el: _Element) -> None:
    """R5→R4: the context elements R5 moved up go back into R4's context."""
    context: dict[str, Any] = {}
    encounters = el.take("context")
    if encounters:
        context["encounter"] = encounters
    concepts, references = _codeable_references(el, "event")
    if references:  # R4 holds events as codes only
        el.carry_value("event", [{"reference": reference} for reference in references])
    if concepts:
        context["event"] = concepts
    for name in ("period", "facilityType", "practiceSetting"):
        if name in el:
            context[name] = el.take(name)
    if "basedOn" in el:
        # R4 context.related holds "related identifiers or resources", the orders included.
        context["related"] = el.take("basedOn")
    if context:
        el.out["context"] = context
        el.run.note(f"{el.path} context elements → context (R5→R4)")


def _r5_document_reference(el: _Element) -> None:
    _recode(el, "status", _DOCUMENT_STATUS)
    _recode(el, "docStatus", _DOC_STATUS)
    el.keep(
        "identifier",
        "type",
        "category",
        "subject",
        "date",
        "author",
        "custodian",
        "description",
        "securityLabel",
    )
    el.drop("version", "R5 version label of the document reference")
    el.carry("modality", "bodySite")
    _r5_document_attesters(el)
    _r5_document_relates_to(el)
    _each(el, "content", _r5_document_content)
    _r5_document_context(el)


def _r5_care_team_participant(el: _Element) -> None:
    el.keep("member", "onBehalfOf")
    _listify(el, "role", "R5→R4")
    el.move("coveragePeriod", "period", "R5→R4")
    el.carry("coverageTiming")  # R4 care team participants have a period only


def _r5_care_team(el: _Element) -> None:
    _recode(el, "status", _CARE_TEAM_STATUS)
    el.keep("identifier", "category", "name", "subject", "period", "managingOrganization", "telecom", "note")
    _split(el, "reason", "reasonCode", "reasonReference")
    _each(el, "participant", _r5_care_team_participant)


_R5_CONSENT_STATUS = _same("draft", "active", "inactive", "entered-in-error")  # not-done, unknown: no R4 code
#: Category codings that tell R4's Consent scope (v3 ActConsentType, privacy LOINC documents).
_SCOPE_BY_CATEGORY = {
    **{
        (_ACT_CODE, code): "patient-privacy"
        for code in ("ICOL", "IDSCL", "INFA", "INFAO", "INFASO", "IRDSCL")
    },
    **{(_ACT_CODE, code): "research" for code in ("RESEARCH", "RSDID", "RSREID")},
    **{(_LOINC, code): "patient-privacy" for code in ("57016-8", "57017-6", "64292-6")},
}


def _r5_consent_scope(el: _Element) -> None:
    """R4 requires the scope that R5 folded into category: a consentscope coding, or a category
    coding that can only be one scope; anything else is refused rather than guessed."""
    categories = el.source.get("category")
    if not categories:
        el.fail("category", "R4 requires a category")
    scopes = set()
    for category in categories:
        scopes |= _codes(category, _CONSENT_SCOPE)
        for coding in category.get("coding") or ():
            scope = _SCOPE_BY_CATEGORY.get((coding.get("system"), coding.get("code")))
            if scope is not None:
                scopes.add(scope)
    if len(scopes) != 1:
        el.fail("category", "no single R4 scope can be read from it")
    el.keep("category")
    el.out["scope"] = _concept(_CONSENT_SCOPE, scopes.pop())
    el.run.note(f"{el.path}.scope read from category (R5→R4)")


def _r5_consent_provision(el: _Element, decision: str) -> None:
    """One R5 provision as an R4 nested provision. R5 provisions carry no type: each level negates
    the one above it, starting from Consent.decision (R5 definition of decision)."""
    el.keep(*_PROVISION_SAME, "code")
    el.out["type"] = "deny" if decision == "permit" else "permit"
    _each(el, "actor", _consent_actor)
    classes = [*(el.take("resourceType") or ()), *(el.take("documentType") or ())]
    if classes:
        # R5 split R4's class into resourceType and documentType.
        el.out["class"] = classes
        el.run.note(f"{el.path}.resourceType and documentType → class (R5→R4)")
    el.refuse("expression", "R4 provisions have no computable expression")
    nested = el.take("provision")
    if nested is not None:
        el.out["provision"] = [_r5_provision(item, el, el.out["type"]) for item in nested]


def _r5_provision(item: Mapping[str, Any], parent: _Element, decision: str) -> dict[str, Any]:
    sub = _Element(item, f"{parent.path}.provision", parent.run)
    _r5_consent_provision(sub, decision)
    return sub.done()


def _r5_consent_rules(el: _Element) -> None:
    """R5→R4: the base decision is the type of R4's root provision (as R4's own examples and this hub
    write it), the period its period, and R5's provisions its nested provisions."""
    decision = el.take("decision")
    provisions = el.take("provision")
    root: dict[str, Any] = {}
    if decision is not None:
        root["type"] = decision
    elif provisions:
        el.fail("provision", "without a decision the provisions have no R4 type")
    if "period" in el:
        root["period"] = el.take("period")
    if provisions:
        root["provision"] = [_r5_provision(item, el, str(decision)) for item in provisions]
    if root:
        el.out["provision"] = root
        el.run.note(f"{el.path}.decision, period and provision → provision (R5→R4)")


def _r5_consent_verification(el: _Element) -> None:
    el.keep("verified", "verifiedWith")
    el.refuse("verificationType", "R4 verification has no type")
    el.refuse("verifiedBy", "R4 verification has no verifier")
    _one(el, "verificationDate", "R5→R4")


def _r5_consent_parties(el: _Element) -> None:
    # R4 performer is "either the grantor or the grantee"; R4 organization is the consent's custodian,
    # which R5 split into manager and controller (reference converter: both go to organization).
    for name, target in (
        ("grantor", "performer"),
        ("grantee", "performer"),
        ("manager", "organization"),
        ("controller", "organization"),
    ):
        references = el.take(name)
        if references is None:
            continue
        el.out[target] = [*el.out.get(target, ()), *references]
        el.run.note(f"{el.path}.{name} → {target} (R5→R4)")


def _r5_consent(el: _Element) -> None:
    _recode(el, "status", _R5_CONSENT_STATUS)
    el.keep("identifier")
    _r5_consent_scope(el)
    el.move("subject", "patient", "R5→R4")
    el.move("date", "dateTime", "R5→R4")
    _r5_consent_parties(el)
    if "sourceAttachment" in el and "sourceReference" in el:
        el.fail("sourceReference", "R4 holds one source")
    _one(el, "sourceReference", "R5→R4")
    if "sourceAttachment" in el:
        _each(el, "sourceAttachment", _r5_attachment)
        attachments = el.out.pop("sourceAttachment")
        if len(attachments) > 1:
            el.fail("sourceAttachment", "R4 holds one source")
        el.out["sourceAttachment"] = attachments[0]
        el.run.note(f"{el.path}.sourceAttachment → single sourceAttachment (R5→R4)")
    _one(el, "regulatoryBasis", "R5→R4", "policyRule")
    policy_basis = el.take("policyBasis")
    if policy_basis is not None:
        sub = _Element(policy_basis, f"{el.path}.policyBasis", el.run, keeps_base=False)
        url = sub.take("url")
        sub.refuse("reference", "R4 policies are URIs only")
        sub.done()
        el.out["policy"] = [{"uri": url}]
        el.run.note(f"{el.path}.policyBasis.url → policy (R5→R4)")
    el.refuse("policyText", "R4 Consent has no policy text reference")
    _each(el, "verification", _r5_consent_verification)
    _r5_consent_rules(el)


# ---------------------------------------------------------------------------------------------------
# STU3 → R4: medications given, vaccines, lists, documents, tasks, forms, risks, plans, goals, flags,
# family history, specimens, devices and binaries


def _stu3_not_done(el: _Element, flag: str, not_done_status: str) -> None:
    """R3→R4: a "not done" flag became a status (unless the record is entered in error, which says more)."""
    not_done = el.take(flag)
    if not_done and el.out.get("status") != "entered-in-error":
        el.out["status"] = not_done_status
    if not_done is not None:
        el.run.note(f"{el.path}.{flag} → status (R3→R4)")


_STU3_IMMUNIZATION_STATUS = _same("completed", "entered-in-error")


def _stu3_immunization_explanation(el: _Element) -> None:
    """R3→R4: explanation {reason, reasonNotGiven} became reasonCode and statusReason."""
    explanation = el.take("explanation")
    if explanation is None:
        return
    sub = _Element(explanation, f"{el.path}.explanation", el.run, keeps_base=False)
    reasons, not_given = sub.take("reason"), sub.take("reasonNotGiven")
    sub.done()
    if reasons:
        el.out["reasonCode"] = reasons
    if not_given:
        if len(not_given) > 1:
            el.fail("explanation", "R4 holds only one reason for not giving it")
        el.out["statusReason"] = not_given[0]
    el.run.note(f"{el.path}.explanation → reasonCode and statusReason (R3→R4)")


def _stu3_immunization_practitioner(el: _Element) -> None:
    el.keep("actor")
    el.move("role", "function", "R3→R4")


def _stu3_vaccination_protocols(el: _Element) -> None:
    """R3→R4: vaccinationProtocol became protocolApplied, which requires the dose number; a protocol
    without one, and the dose's status and description, which R4 lacks, are carried."""
    converted = []
    for item in el.take("vaccinationProtocol") or ():
        if "doseSequence" not in item:
            el.carry_value("vaccinationProtocol", item)
            continue
        sub = _Element(item, f"{el.path}.vaccinationProtocol", el.run)
        sub.keep("series", "authority", "targetDisease")
        sub.move("doseSequence", "doseNumberPositiveInt", "R3→R4")
        sub.move("seriesDoses", "seriesDosesPositiveInt", "R3→R4")
        sub.carry("description", "doseStatus", "doseStatusReason")
        converted.append(sub.done())
    if converted:
        el.out["protocolApplied"] = converted
        el.run.note(f"{el.path}.vaccinationProtocol → protocolApplied (R3→R4)")


def _stu3_immunization(el: _Element) -> None:
    _recode(el, "status", _STU3_IMMUNIZATION_STATUS)
    el.keep(
        "identifier",
        "vaccineCode",
        "patient",
        "encounter",
        "primarySource",
        "reportOrigin",
        "location",
        "manufacturer",
        "lotNumber",
        "expirationDate",
        "site",
        "route",
        "doseQuantity",
        "note",
        "reaction",
    )
    _stu3_not_done(el, "notGiven", "not-done")
    el.move("date", "occurrenceDateTime", "R3→R4")
    _stu3_immunization_explanation(el)
    _each(el, "practitioner", _stu3_immunization_practitioner, "performer")
    if "performer" in el.out:
        el.run.note(f"{el.path}.practitioner → performer (R3→R4)")
    _stu3_vaccination_protocols(el)


_STU3_DISPENSE_STATUS = _same(
    "preparation", "in-progress", "on-hold", "completed", "entered-in-error", "stopped"
)


def _stu3_performer_on_behalf(el: _Element) -> None:
    # R3→R4 dropped onBehalfOf from the dispense and administration performers.
    el.keep("actor")
    el.carry("onBehalfOf")


def _stu3_medication_dispense(el: _Element) -> None:
    _recode(el, "status", _STU3_DISPENSE_STATUS)
    el.keep(
        "identifier",
        "partOf",
        "category",
        "medicationCodeableConcept",
        "medicationReference",
        "subject",
        "context",
        "supportingInformation",
        "authorizingPrescription",
        "type",
        "quantity",
        "daysSupply",
        "whenPrepared",
        "whenHandedOver",
        "destination",
        "receiver",
        "note",
        "substitution",
        "detectedIssue",
        "eventHistory",
    )
    # R4 "declined": the dispense was not performed, which is what STU3's notDone says.
    _stu3_not_done(el, "notDone", "declined")
    el.move("notDoneReasonCodeableConcept", "statusReasonCodeableConcept", "R3→R4")
    el.move("notDoneReasonReference", "statusReasonReference", "R3→R4")
    _each(el, "performer", _stu3_performer_on_behalf)
    _each(el, "dosageInstruction", _stu3_dosage)


_STU3_ADMINISTRATION_STATUS = _same(
    "in-progress", "on-hold", "completed", "entered-in-error", "stopped", "unknown"
)


def _stu3_medication_administration(el: _Element) -> None:
    _recode(el, "status", _STU3_ADMINISTRATION_STATUS)
    el.keep(
        "identifier",
        "partOf",
        "category",
        "medicationCodeableConcept",
        "medicationReference",
        "subject",
        "context",
        "supportingInformation",
        "effectiveDateTime",
        "effectivePeriod",
        "reasonCode",
        "reasonReference",
        "device",
        "note",
        "dosage",
        "eventHistory",
    )
    el.carry("definition")  # a protocol Reference cannot become R4's canonical instantiates
    _stu3_not_done(el, "notGiven", "not-done")
    el.move("reasonNotGiven", "statusReason", "R3→R4")
    el.move("prescription", "request", "R3→R4")
    _each(el, "performer", _stu3_performer_on_behalf)


_LIST_STATUS = _same("current", "retired", "entered-in-error")
_LIST_MODE = _same("working", "snapshot", "changes")
_LIST_SAME = ("identifier", "title", "code", "encounter", "date", "source", "orderedBy", "note", "entry")


def _stu3_list(el: _Element) -> None:
    _recode(el, "status", _LIST_STATUS)
    _recode(el, "mode", _LIST_MODE)
    el.keep(*_LIST_SAME, "subject", "emptyReason")


_COMPOSITION_STATUS = _same("preliminary", "final", "amended", "entered-in-error")
_ATTESTATION_MODES = frozenset({"personal", "professional", "legal", "official"})


def _stu3_composition_attester(el: _Element) -> None:
    el.keep("time", "party")
    _one(el, "mode", "R3→R4")


def _stu3_composition(el: _Element) -> None:
    _recode(el, "status", _COMPOSITION_STATUS)
    el.keep(
        "identifier",
        "type",
        "subject",
        "encounter",
        "date",
        "author",
        "title",
        "confidentiality",
        "custodian",
        "relatesTo",
        "event",
        "section",
    )
    _listify(el, "class", "R3→R4", "category")
    _each(el, "attester", _stu3_composition_attester)


def _stu3_manifest_content(el: _Element) -> None:
    """R3→R4: each item of a manifest's content is an attachment of the DocumentReference: an attachment
    as it is, a reference as the address of the document (a reference without one is carried)."""
    converted = []
    for item in el.take("content") or ():
        sub = _Element(item, f"{el.path}.content", el.run, keeps_base=False)
        attachment = sub.take("pAttachment")
        reference = sub.source.get("pReference")
        if attachment is None and isinstance(reference, Mapping) and "reference" in reference:
            sub.take("pReference")
            attachment = {"url": reference["reference"]}
            if "display" in reference:
                attachment["title"] = reference["display"]
            el.run.note(f"{el.path}.content.pReference → content.attachment.url (R3→R4)")
        else:
            sub.carry("pReference", onto=el)
        sub.done()
        if attachment is not None:
            converted.append({"attachment": attachment})
    el.out["content"] = converted


def _stu3_document_manifest(el: _Element) -> None:
    """R3→R4, as R5 retires DocumentManifest: the manifest becomes one DocumentReference whose content
    lists the manifest's documents, and whose context relates what the manifest relates."""
    _recode(el, "status", _DOCUMENT_STATUS)
    el.keep("masterIdentifier", "identifier", "type", "subject", "author", "description")
    el.move("created", "date", "R3→R4")
    el.carry("recipient", "source")
    _stu3_manifest_content(el)
    related = el.take("related")
    if related is not None:
        context = _Element({"related": related}, el.path, el.run, keeps_base=False)
        _stu3_document_context(context)
        el.out["context"] = context.done()


_TASK_STATUS = _same(
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
)
#: R4's TaskIntent is RequestIntent without directive, with unknown.
_TASK_INTENT = _same("unknown", *(code for code in _REQUEST_INTENT if code != "directive"))
_TASK_SAME = (
    "identifier",
    "basedOn",
    "groupIdentifier",
    "partOf",
    "businessStatus",
    "code",
    "description",
    "focus",
    "for",
    "executionPeriod",
    "authoredOn",
    "lastModified",
    "owner",
    "note",
    "relevantHistory",
    "restriction",
)


#: STU3 Task priorities had "normal" where R4 (as every request) says "routine".
_STU3_TASK_PRIORITY = {"normal": "routine", "urgent": "urgent", "asap": "asap", "stat": "stat"}


def _stu3_task(el: _Element) -> None:
    _recode(el, "status", _TASK_STATUS)
    _recode(el, "intent", _TASK_INTENT)
    _recode(el, "priority", _STU3_TASK_PRIORITY, "R3→R4")
    el.keep(*_TASK_SAME, "statusReason", "performerType", "input", "output")
    el.move("definitionUri", "instantiatesUri", "R3→R4")
    el.carry("definitionReference")  # a Reference cannot become R4's canonical instantiatesCanonical
    _stu3_context_to_encounter(el)
    _stu3_requester(el)
    el.move("reason", "reasonCode", "R3→R4")


_QUESTIONNAIRE_RESPONSE_STATUS = _same("in-progress", "completed", "amended", "entered-in-error", "stopped")
_ANSWER_VALUES = (
    "valueBoolean",
    "valueDecimal",
    "valueInteger",
    "valueDate",
    "valueDateTime",
    "valueTime",
    "valueString",
    "valueUri",
    "valueCoding",
    "valueQuantity",
    "valueReference",
)


def _stu3_answer(el: _Element) -> None:
    el.keep(*_ANSWER_VALUES, "valueAttachment")
    _each(el, "item", _stu3_response_item)


def _stu3_response_item(el: _Element) -> None:
    el.keep("linkId", "definition", "text")
    el.carry("subject")  # R4 items cannot be about another subject than the response
    _each(el, "answer", _stu3_answer)
    _each(el, "item", _stu3_response_item)


def _stu3_questionnaire_response(el: _Element) -> None:
    _recode(el, "status", _QUESTIONNAIRE_RESPONSE_STATUS)
    el.keep("identifier", "basedOn", "subject", "authored", "author", "source")
    el.move("parent", "partOf", "R3→R4")
    _stu3_context_to_encounter(el)
    questionnaire = el.source.get("questionnaire")
    if (
        isinstance(questionnaire, Mapping)
        and set(questionnaire) <= {"reference", "display"}
        and ("reference" in questionnaire)
    ):
        # R3→R4 as the reference converter maps it: the reference's address is R4's canonical.
        el.take("questionnaire")
        el.out["questionnaire"] = questionnaire["reference"]
        el.run.note(f"{el.path}.questionnaire Reference → canonical (R3→R4)")
    else:
        el.carry("questionnaire")
    _each(el, "item", _stu3_response_item)


_RISK_SAME = (
    "basedOn",
    "parent",
    "method",
    "code",
    "subject",
    "occurrenceDateTime",
    "occurrencePeriod",
    "condition",
    "performer",
    "basis",
    "prediction",
    "mitigation",
)


def _stu3_risk_assessment(el: _Element) -> None:
    _recode(el, "status", _OBSERVATION_STATUS)
    el.keep(*_RISK_SAME)
    _listify(el, "identifier", "R3→R4")
    _stu3_context_to_encounter(el)
    _listify(el, "reasonCodeableConcept", "R3→R4", "reasonCode")
    _listify(el, "reasonReference", "R3→R4")
    comment = el.take("comment")
    if comment is not None:
        el.out["note"] = [{"text": comment}]
        el.run.note(f"{el.path}.comment → note (R3→R4)")


_CARE_PLAN_INTENT = _same("proposal", "plan", "order", "option")
_STU3_ACTIVITY_STATUS = _same(
    "not-started", "scheduled", "in-progress", "on-hold", "completed", "cancelled", "unknown"
)


def _stu3_activity_detail(el: _Element) -> None:
    _recode(el, "status", _STU3_ACTIVITY_STATUS)
    el.keep(
        "code",
        "reasonCode",
        "reasonReference",
        "goal",
        "scheduledTiming",
        "scheduledPeriod",
        "scheduledString",
        "location",
        "performer",
        "productCodeableConcept",
        "productReference",
        "dailyAmount",
        "quantity",
        "description",
    )
    # STU3's category (diet, drug...) is not R4's kind (a resource type); the definition is a Reference.
    el.carry("category", "definition")
    reason = el.take("statusReason")
    if reason is not None:
        el.out["statusReason"] = {"text": reason}
        el.run.note(f"{el.path}.statusReason string → CodeableConcept text (R3→R4)")
    el.move("prohibited", "doNotPerform", "R3→R4")


def _stu3_activity(el: _Element) -> None:
    el.keep("outcomeCodeableConcept", "outcomeReference", "progress", "reference")
    _single(el, "detail", _stu3_activity_detail)


def _stu3_care_plan(el: _Element) -> None:
    _recode(el, "status", _STU3_REQUEST_STATUS, "R3→R4 request status map")
    _recode(el, "intent", _CARE_PLAN_INTENT)
    el.keep(
        "identifier",
        "basedOn",
        "replaces",
        "partOf",
        "category",
        "title",
        "description",
        "subject",
        "period",
        "careTeam",
        "addresses",
        "supportingInfo",
        "goal",
        "note",
    )
    el.carry("definition")  # a Reference cannot become R4's canonical instantiatesCanonical
    _stu3_context_to_encounter(el)
    authors = el.take("author")
    if authors:
        # R4 has one author (the responsible party) and any number of contributors.
        if len(authors) == 1:
            el.out["author"] = authors[0]
        else:
            el.out["contributor"] = authors
        el.run.note(f"{el.path}.author → author or contributor (R3→R4)")
    _each(el, "activity", _stu3_activity)


_GOAL_ACHIEVEMENT = "http://terminology.hl7.org/CodeSystem/goal-achievement"
#: R3→R4: STU3's goal status is R4's lifecycle status, and for a goal under way its achievement.
_STU3_GOAL_STATUS: dict[str, tuple[str, str | None]] = {
    "proposed": ("proposed", None),
    "accepted": ("accepted", None),
    "planned": ("planned", None),
    "in-progress": ("active", "in-progress"),
    "on-target": ("active", "in-progress"),
    "ahead-of-target": ("active", "in-progress"),
    "behind-target": ("active", "in-progress"),
    "sustaining": ("active", "sustaining"),
    "achieved": ("completed", "achieved"),
    "on-hold": ("on-hold", None),
    "cancelled": ("cancelled", None),
    "entered-in-error": ("entered-in-error", None),
    "rejected": ("rejected", None),
}
#: Progress against the target that R4's achievement codes cannot say: the STU3 status is carried too.
_STU3_GOAL_PROGRESS = frozenset({"on-target", "ahead-of-target", "behind-target"})


def _stu3_goal(el: _Element) -> None:
    el.keep(
        "identifier",
        "category",
        "priority",
        "description",
        "subject",
        "startDate",
        "startCodeableConcept",
        "statusDate",
        "statusReason",
        "expressedBy",
        "addresses",
        "note",
        "outcomeCode",
        "outcomeReference",
    )
    status = el.source.get("status")
    if status not in _STU3_GOAL_STATUS:
        el.fail("status", "the code has no R4 equivalent")
    lifecycle, achievement = _STU3_GOAL_STATUS[status]
    el.move("status", "lifecycleStatus", "R3→R4")
    el.out["lifecycleStatus"] = lifecycle
    if achievement is not None:
        el.out["achievementStatus"] = _concept(_GOAL_ACHIEVEMENT, achievement)
        el.run.note(f"{el.path}.status → achievementStatus (R3→R4)")
    if status in _STU3_GOAL_PROGRESS:
        el.carry_value("status", status)
    _listify(el, "target", "R3→R4")


_FLAG_STATUS = _same("active", "inactive", "entered-in-error")


def _stu3_flag(el: _Element) -> None:
    _recode(el, "status", _FLAG_STATUS)
    el.keep("identifier", "period", "subject", "encounter", "author", "code")
    _listify(el, "category", "R3→R4")


_FAMILY_HISTORY_STATUS = _same("partial", "completed", "entered-in-error", "health-unknown")
_FAMILY_HISTORY_SAME = (
    "identifier",
    "patient",
    "date",
    "name",
    "relationship",
    "bornPeriod",
    "bornDate",
    "bornString",
    "ageAge",
    "ageRange",
    "ageString",
    "estimatedAge",
    "deceasedBoolean",
    "deceasedAge",
    "deceasedRange",
    "deceasedDate",
    "deceasedString",
    "reasonCode",
    "reasonReference",
    "note",
    "condition",
)
_GENDER = "http://hl7.org/fhir/administrative-gender"


def _stu3_family_member_history(el: _Element) -> None:
    _recode(el, "status", _FAMILY_HISTORY_STATUS)
    el.keep(*_FAMILY_HISTORY_SAME)
    el.carry("definition")  # a Reference cannot become R4's canonical instantiatesCanonical
    gender = el.take("gender")
    if gender is not None:
        el.out["sex"] = _concept(_GENDER, gender)
        el.run.note(f"{el.path}.gender → sex (R3→R4)")
    not_done, reason = el.take("notDone"), el.take("notDoneReason")
    if not_done:
        # R4 says that there is no history only by why there is none (dataAbsentReason).
        if reason is None:
            el.fail("notDone", "R4 can say it only with the reason, in dataAbsentReason")
        el.out["dataAbsentReason"] = reason
        el.run.note(f"{el.path}.notDone and notDoneReason → dataAbsentReason (R3→R4)")
    elif reason is not None:
        el.carry_value("notDoneReason", reason)
    elif not_done is not None:
        el.run.note(f"{el.path}.notDone → dataAbsentReason (R3→R4)")


_SPECIMEN_STATUS = _same("available", "unavailable", "unsatisfactory", "entered-in-error")


def _stu3_specimen(el: _Element) -> None:
    _recode(el, "status", _SPECIMEN_STATUS)
    el.keep(
        "identifier",
        "accessionIdentifier",
        "type",
        "subject",
        "receivedTime",
        "parent",
        "request",
        "collection",
        "processing",
        "container",
        "note",
    )


_STU3_DEVICE_STATUS = _same("active", "inactive", "entered-in-error", "unknown")
_UDI_ENTRY_TYPE = _same("barcode", "rfid", "manual", "card", "self-reported", "unknown")


def _stu3_udi(el: _Element) -> None:
    """R3→R4: udi became udiCarrier, and the name on its label a deviceName."""
    udi = el.take("udi")
    if udi is None:
        return
    sub = _Element(udi, f"{el.path}.udi", el.run)
    sub.keep("deviceIdentifier", "jurisdiction", "carrierHRF", "carrierAIDC", "issuer")
    _recode(sub, "entryType", _UDI_ENTRY_TYPE)
    name = sub.take("name")
    el.out["udiCarrier"] = [sub.done()]
    el.run.note(f"{el.path}.udi → udiCarrier (R3→R4)")
    if name is not None:
        el.out["deviceName"] = [{"name": name, "type": "udi-label-name"}]
        el.run.note(f"{el.path}.udi.name → deviceName (R3→R4)")


def _stu3_device(el: _Element) -> None:
    _recode(el, "status", _STU3_DEVICE_STATUS)
    el.keep(
        "identifier",
        "type",
        "lotNumber",
        "manufacturer",
        "manufactureDate",
        "expirationDate",
        "patient",
        "owner",
        "contact",
        "location",
        "url",
        "note",
        "safety",
    )
    el.move("model", "modelNumber", "R3→R4")
    version = el.take("version")
    if version is not None:
        el.out["version"] = [{"value": version}]
        el.run.note(f"{el.path}.version → version.value (R3→R4)")
    _stu3_udi(el)


def _stu3_binary(el: _Element) -> None:
    el.keep("contentType", "securityContext")
    el.move("content", "data", "R3→R4")


# ---------------------------------------------------------------------------------------------------
# R5 → R4: the same types


def _reference_of(el: _Element, name: str, target: str) -> None:
    """R5→R4: a 0..1 CodeableReference that R4 holds as a Reference; its concept is carried."""
    value = el.take(name)
    if value is None:
        return
    sub = _Element(value, f"{el.path}.{name}", el.run, keeps_base=False)
    concept, reference = sub.take("concept"), sub.take("reference")
    sub.done()
    if concept is not None:  # R4 holds only a reference here
        el.carry_value(name, {"concept": concept})
    if reference is not None:
        el.out[target] = reference
        el.run.note(f"{el.path}.{name} → {target} Reference (R5→R4 CodeableReference)")


_R5_IMMUNIZATION_STATUS = _same("completed", "entered-in-error", "not-done")


def _r5_reaction_of_immunization(el: _Element) -> None:
    el.keep("date", "reported")
    _reference_of(el, "manifestation", "detail")


def _positive_int_or_string(el: _Element, name: str) -> None:
    """R5→R4: a dose number R5 holds as a string is R4's positiveInt when it is one, else its string."""
    value = el.take(name)
    if value is None:
        return
    kind = "PositiveInt" if isinstance(value, str) and value.isdigit() and int(value) > 0 else "String"
    el.out[f"{name}{kind}"] = int(value) if kind == "PositiveInt" else value
    el.keep(f"_{name}")
    el.run.note(f"{el.path}.{name} → {name}[x] (R5→R4)")


def _r5_protocol_applied(el: _Element) -> None:
    el.keep("series", "authority", "targetDisease")
    _positive_int_or_string(el, "doseNumber")
    _positive_int_or_string(el, "seriesDoses")


def _r5_program_eligibility(el: _Element) -> None:
    """R5→R4: programEligibility {program, programStatus} is R4's list of eligibility statuses; the
    program they are about is carried."""
    statuses = []
    for item in el.take("programEligibility") or ():
        sub = _Element(item, f"{el.path}.programEligibility", el.run, keeps_base=False)
        statuses.append(sub.take("programStatus"))
        sub.carry("program", onto=el)
        sub.done()
    if statuses:
        el.out["programEligibility"] = statuses
        el.run.note(f"{el.path}.programEligibility.programStatus → programEligibility (R5→R4)")


def _r5_immunization(el: _Element) -> None:
    _recode(el, "status", _R5_IMMUNIZATION_STATUS)
    el.keep(
        "identifier",
        "statusReason",
        "vaccineCode",
        "lotNumber",
        "expirationDate",
        "patient",
        "encounter",
        "occurrenceDateTime",
        "occurrenceString",
        "primarySource",
        "location",
        "site",
        "route",
        "doseQuantity",
        "performer",
        "note",
        "isSubpotent",
        "subpotentReason",
        "fundingSource",
    )
    el.carry("basedOn", "administeredProduct", "supportingInformation")
    _reference_of(el, "manufacturer", "manufacturer")
    # R5's informationSource concept is R4's reportOrigin, as the reference converter maps it.
    _single_concept(el, "informationSource", "reportOrigin")
    _split(el, "reason", "reasonCode", "reasonReference")
    _r5_program_eligibility(el)
    _each(el, "reaction", _r5_reaction_of_immunization)
    _each(el, "protocolApplied", _r5_protocol_applied)


_DISPENSE_STATUS = _same(
    "preparation",
    "in-progress",
    "cancelled",
    "on-hold",
    "completed",
    "entered-in-error",
    "stopped",
    "declined",
    "unknown",
)


def _r5_dispense_substitution(el: _Element) -> None:
    el.keep("wasSubstituted", "type", "reason")
    _listify(el, "responsibleParty", "R5→R4")


def _r5_not_performed_reason(el: _Element) -> None:
    """R5→R4: notPerformedReason (CodeableReference) is R4's statusReason[x] choice; with both a code
    and a reference, R4 holds neither alone and it is carried."""
    reason = el.source.get("notPerformedReason")
    sides = set(reason) & {"concept", "reference"} if isinstance(reason, Mapping) else set()
    if len(sides) != 1:
        el.carry("notPerformedReason")
        return
    sub = _Element(el.take("notPerformedReason"), f"{el.path}.notPerformedReason", el.run, keeps_base=False)
    concept, reference = sub.take("concept"), sub.take("reference")
    sub.done()
    if concept is not None:
        el.out["statusReasonCodeableConcept"] = concept
    else:
        el.out["statusReasonReference"] = reference
    el.run.note(f"{el.path}.notPerformedReason → statusReason[x] (R5→R4)")


def _r5_medication_dispense(el: _Element) -> None:
    _recode(el, "status", _DISPENSE_STATUS)
    el.keep(
        "identifier",
        "partOf",
        "subject",
        "supportingInformation",
        "performer",
        "location",
        "authorizingPrescription",
        "type",
        "quantity",
        "daysSupply",
        "whenPrepared",
        "whenHandedOver",
        "destination",
        "receiver",
        "note",
        "eventHistory",
    )
    el.carry("basedOn", "recorded")
    el.drop("statusChanged", "R5 date of the last status change")
    _r5_not_performed_reason(el)
    _one(el, "category", "R5→R4")
    _r5_medication(el)
    el.move("encounter", "context", "R5→R4")
    _r5_rendered_dosage(el, "dosageInstruction")
    _each(el, "dosageInstruction", _r5_dosage)
    _single(el, "substitution", _r5_dispense_substitution)


_ADMINISTRATION_STATUS = _same(
    "in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped", "unknown"
)


def _r5_administration_performers(el: _Element) -> None:
    """R5→R4: a performer whose actor is a reference keeps its place; R4 requires that reference, so
    a performer named by a code only is carried."""
    converted = []
    for item in el.take("performer") or ():
        actor = item.get("actor")
        if not (isinstance(actor, Mapping) and set(actor) == {"reference"}):
            el.carry_value("performer", item)
            continue
        sub = _Element(item, f"{el.path}.performer", el.run)
        sub.keep("function")
        sub.take("actor")
        sub.out["actor"] = actor["reference"]
        converted.append(sub.done())
        el.run.note(f"{el.path}.performer.actor → actor Reference (R5→R4 CodeableReference)")
    if converted:
        el.out["performer"] = converted


def _r5_medication_administration(el: _Element) -> None:
    _recode(el, "status", _ADMINISTRATION_STATUS)
    el.keep(
        "identifier",
        "partOf",
        "statusReason",
        "subject",
        "supportingInformation",
        "request",
        "note",
        "dosage",
        "eventHistory",
    )
    el.carry("basedOn", "recorded", "isSubPotent", "subPotentReason")
    _one(el, "category", "R5→R4")
    _r5_medication(el)
    el.move("encounter", "context", "R5→R4")
    # R5 spells it "occurence"; R4's effective[x] has no Timing.
    el.move("occurenceDateTime", "effectiveDateTime", "R5→R4")
    el.move("occurencePeriod", "effectivePeriod", "R5→R4")
    el.carry("occurenceTiming")
    _r5_administration_performers(el)
    _split(el, "reason", "reasonCode", "reasonReference")
    _split(el, "device", None, "device")


def _r5_list(el: _Element) -> None:
    _recode(el, "status", _LIST_STATUS)
    _recode(el, "mode", _LIST_MODE)
    el.keep(*_LIST_SAME, "emptyReason")
    _one(el, "subject", "R5→R4")


def _r5_composition_attesters(el: _Element) -> None:
    """R5→R4: the attestation mode became a CodeableConcept; one of R4's four codes keeps its place,
    any other mode is carried with its attester."""
    converted = []
    for item in el.take("attester") or ():
        codes = _codes(item.get("mode"), "http://hl7.org/fhir/composition-attestation-mode")
        if len(codes) != 1 or not codes <= _ATTESTATION_MODES:
            el.carry_value("attester", item)
            continue
        sub = _Element(item, f"{el.path}.attester", el.run)
        sub.keep("time", "party")
        sub.take("mode")
        sub.out["mode"] = codes.pop()
        converted.append(sub.done())
        el.run.note(f"{el.path}.attester.mode CodeableConcept → code (R5→R4)")
    if converted:
        el.out["attester"] = converted


def _r5_composition_relates_to(el: _Element) -> None:
    """R5→R4: relatesTo became a RelatedArtifact; one of R4's four relationships to a referenced
    composition keeps its place, any other relation is carried, and so is one that names no composition
    by reference (R4's target is required; R5's resourceReference is not)."""
    converted = []
    for item in el.take("relatesTo") or ():
        if item.get("type") not in _R4_RELATIONSHIPS or set(item) != {"type", "resourceReference"}:
            el.carry_value("relatesTo", item)
            continue
        converted.append({"code": item["type"], "targetReference": item["resourceReference"]})
        el.run.note(f"{el.path}.relatesTo RelatedArtifact → code and targetReference (R5→R4)")
    if converted:
        el.out["relatesTo"] = converted


def _r5_composition_event(el: _Element) -> None:
    el.keep("period")
    _split(el, "detail", "code", "detail")


def _r5_composition(el: _Element) -> None:
    # R5's registered, partial, corrected, appended, cancelled, deprecated and unknown: no R4 code.
    _recode(el, "status", _COMPOSITION_STATUS)
    el.keep("type", "category", "encounter", "date", "author", "title", "custodian", "section")
    _one(el, "identifier", "R5→R4")
    _one(el, "subject", "R5→R4")
    el.carry("url", "version", "useContext", "name", "note")
    _r5_composition_attesters(el)
    _r5_composition_relates_to(el)
    _each(el, "event", _r5_composition_event)


def _r5_task_values(el: _Element, name: str) -> None:
    """Task input and output: a value R4 has as it stands keeps its place; one of a type R4 lacks or
    changed (integer64, CodeableReference, Availability...) is carried with its parameter."""
    items = el.take(name)
    if items is None:
        return
    kept = []
    for item in items:
        key = next((key for key in item if key.startswith("value")), None)
        slot = _slot(f"{el.path}.{name}", key, el.run.version) if key is not None else None
        type_name = slot.type_name if slot is not None else "Resource"
        if _r4_extension_value(type_name) is None or not (
            type_name[:1].islower() or _r4_as_is(type_name, R5)
        ):
            el.carry_value(name, item)
        else:
            kept.append(item)
    if kept:
        el.out[name] = kept


def _r5_task_reasons(el: _Element) -> None:
    """R5→R4: reason (CodeableReference list) is R4's single reasonCode and reasonReference; more
    reasons than that are carried."""
    concepts, references = _codeable_references(el, "reason")
    if concepts:
        el.out["reasonCode"] = concepts[0]
    if references:
        el.out["reasonReference"] = references[0]
    if concepts or references:
        el.run.note(f"{el.path}.reason → reasonCode and reasonReference (R5→R4 CodeableReference)")
    extra = [{"concept": item} for item in concepts[1:]] + [{"reference": item} for item in references[1:]]
    if extra:
        el.carry_value("reason", extra)


def _r5_task(el: _Element) -> None:
    _recode(el, "status", _TASK_STATUS)
    _recode(el, "intent", _TASK_INTENT)
    _recode(el, "priority", _REQUEST_PRIORITY)
    el.keep(
        *_TASK_SAME,
        "instantiatesCanonical",
        "instantiatesUri",
        "encounter",
        "requester",
        "location",
        "insurance",
    )
    if el.source.get("doNotPerform") is True:
        # A modifier: R4 would read the task as asking for the action.
        el.fail("doNotPerform", "R4 Task cannot ask for an action not to occur")
    if el.take("doNotPerform") is not None:
        el.run.note(f"{el.path}.doNotPerform false → absent (R5→R4, R4's own reading)")
    _single_concept(el, "statusReason")
    el.carry("requestedPeriod", "performer")
    _split(el, "requestedPerformer", "performerType", None)
    _r5_task_reasons(el)
    _r5_task_values(el, "input")
    _r5_task_values(el, "output")


def _r5_answer(el: _Element) -> None:
    el.keep(*_ANSWER_VALUES)
    _single(el, "valueAttachment", _r5_attachment)
    _each(el, "item", _r5_response_item)


def _r5_response_item(el: _Element) -> None:
    el.keep("linkId", "definition", "text")
    _each(el, "answer", _r5_answer)
    _each(el, "item", _r5_response_item)


def _r5_questionnaire_response(el: _Element) -> None:
    _recode(el, "status", _QUESTIONNAIRE_RESPONSE_STATUS)
    el.keep("basedOn", "partOf", "questionnaire", "subject", "encounter", "authored", "author", "source")
    _one(el, "identifier", "R5→R4")
    _each(el, "item", _r5_response_item)


def _r5_risk_assessment(el: _Element) -> None:
    _recode(el, "status", _OBSERVATION_STATUS)
    el.keep(*_RISK_SAME, "identifier", "encounter", "note")
    _split(el, "reason", "reasonCode", "reasonReference")


_R5_CARE_PLAN_STATUS = _same(
    "draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"
)


def _r5_care_plan_activity(el: _Element) -> None:
    el.keep("progress")
    el.move("plannedActivityReference", "reference", "R5→R4")
    _split(el, "performedActivity", "outcomeCodeableConcept", "outcomeReference")


def _r5_care_plan(el: _Element) -> None:
    _recode(el, "status", _R5_CARE_PLAN_STATUS)
    _recode(el, "intent", _CARE_PLAN_INTENT)  # R5 directive has no R4 code: refused.
    el.keep(
        "identifier",
        "instantiatesCanonical",
        "instantiatesUri",
        "basedOn",
        "replaces",
        "partOf",
        "category",
        "title",
        "description",
        "subject",
        "encounter",
        "period",
        "created",
        "contributor",
        "careTeam",
        "supportingInfo",
        "goal",
        "note",
    )
    el.move("custodian", "author", "R5→R4")
    _split(el, "addresses", None, "addresses")
    _each(el, "activity", _r5_care_plan_activity)


_GOAL_LIFECYCLE = _same(
    "proposed",
    "planned",
    "accepted",
    "active",
    "on-hold",
    "completed",
    "cancelled",
    "entered-in-error",
    "rejected",
)


def _r5_goal(el: _Element) -> None:
    _recode(el, "lifecycleStatus", _GOAL_LIFECYCLE)
    el.keep(
        "identifier",
        "achievementStatus",
        "category",
        "priority",
        "description",
        "subject",
        "startDate",
        "startCodeableConcept",
        "target",
        "statusDate",
        "statusReason",
        "addresses",
        "note",
    )
    el.carry("continuous")
    el.move("source", "expressedBy", "R5→R4")
    _split(el, "outcome", "outcomeCode", "outcomeReference")


def _r5_flag(el: _Element) -> None:
    _recode(el, "status", _FLAG_STATUS)
    el.keep("identifier", "category", "period", "subject", "encounter", "author", "code")


def _r5_family_member_history(el: _Element) -> None:
    _recode(el, "status", _FAMILY_HISTORY_STATUS)
    el.keep(
        *(name for name in _FAMILY_HISTORY_SAME if name not in {"reasonCode", "reasonReference"}),
        "instantiatesCanonical",
        "instantiatesUri",
        "dataAbsentReason",
        "sex",
    )
    el.carry("participant", "procedure")
    _split(el, "reason", "reasonCode", "reasonReference")


def _r5_specimen_collection(el: _Element) -> None:
    el.keep(
        "collector",
        "collectedDateTime",
        "collectedPeriod",
        "duration",
        "quantity",
        "method",
        "fastingStatusCodeableConcept",
        "fastingStatusDuration",
    )
    el.carry("device", "procedure")
    _single_concept(el, "bodySite")


def _r5_specimen_processing(el: _Element) -> None:
    el.keep("description", "additive", "timeDateTime", "timePeriod")
    el.move("method", "procedure", "R5→R4")


def _r5_specimen_container(el: _Element) -> None:
    # R5 moved the container's own description to the Device it references.
    el.keep("specimenQuantity")
    el.carry("device", "location")


def _r5_specimen(el: _Element) -> None:
    _recode(el, "status", _SPECIMEN_STATUS)
    el.keep(
        "identifier",
        "accessionIdentifier",
        "type",
        "subject",
        "receivedTime",
        "parent",
        "request",
        "condition",
        "note",
    )
    el.carry("combined", "role", "feature")
    _single(el, "collection", _r5_specimen_collection)
    _each(el, "processing", _r5_specimen_processing)
    _each(el, "container", _r5_specimen_container)


_R5_DEVICE_STATUS = _same("active", "inactive", "entered-in-error")
#: R5 device name types R4 has; R5's registered-name has no R4 code, and its name is carried.
_R4_DEVICE_NAME_TYPES = frozenset({"user-friendly-name", "patient-reported-name"})


def _r5_device_names(el: _Element) -> None:
    names = []
    for item in el.take("name") or ():
        if item.get("type") not in _R4_DEVICE_NAME_TYPES:
            el.carry_value("name", item)
            continue
        sub = _Element(item, f"{el.path}.name", el.run)
        sub.move("value", "name", "R5→R4")
        sub.keep("type")
        sub.drop("display", "R5 choice of the name to show")
        names.append(sub.done())
        el.run.note(f"{el.path}.name → deviceName (R5→R4)")
    if names:
        el.out["deviceName"] = names


def _r5_device_version(el: _Element) -> None:
    el.keep("type", "component", "value")
    el.carry("installDate")


def _r5_device_properties(el: _Element) -> None:
    """R5→R4: a property's value[x] is R4's list valueQuantity or valueCode; other values are carried."""
    properties = []
    for item in el.take("property") or ():
        value = next((key for key in ("valueQuantity", "valueCodeableConcept") if key in item), None)
        if value is None:
            el.carry_value("property", item)
            continue
        sub = _Element(item, f"{el.path}.property", el.run)
        sub.keep("type")
        target = "valueQuantity" if value == "valueQuantity" else "valueCode"
        sub.out[target] = [sub.take(value)]
        properties.append(sub.done())
        el.run.note(f"{el.path}.property.{value} → {target} (R5→R4)")
    if properties:
        el.out["property"] = properties


def _r5_udi_carrier(el: _Element) -> None:
    el.keep("deviceIdentifier", "issuer", "jurisdiction", "carrierAIDC", "carrierHRF")
    _recode(el, "entryType", _UDI_ENTRY_TYPE)  # R5 electronic-transmission has no R4 code: refused.


def _r5_device(el: _Element) -> None:
    _recode(el, "status", _R5_DEVICE_STATUS)
    el.keep(
        "identifier",
        "lotNumber",
        "manufacturer",
        "manufactureDate",
        "expirationDate",
        "serialNumber",
        "modelNumber",
        "partNumber",
        "owner",
        "contact",
        "location",
        "url",
        "note",
        "safety",
        "parent",
    )
    el.carry(
        "displayName",
        "availabilityStatus",
        "biologicalSourceEvent",
        "category",
        "conformsTo",
        "mode",
        "cycle",
        "duration",
        "endpoint",
        "gateway",
    )
    _one(el, "type", "R5→R4")
    _reference_of(el, "definition", "definition")
    _each(el, "udiCarrier", _r5_udi_carrier)
    _r5_device_names(el)
    _each(el, "version", _r5_device_version)
    _r5_device_properties(el)


def _r5_binary(el: _Element) -> None:
    el.keep("contentType", "securityContext", "data")


# ---------------------------------------------------------------------------------------------------
# Bundles and the resource frame


_BUNDLE_TYPE = _same(
    "document",
    "message",
    "transaction",
    "transaction-response",
    "batch",
    "batch-response",
    "history",
    "searchset",
    "collection",
)


def _renamed_url(el: _Element, name: str) -> None:
    """A URL naming a resource type: renamed where the maps rename the type."""
    url = el.take(name)
    if url is None:
        return
    el.out[name] = _rename_in_url(url, f"{el.path}.{name}", el.run) if isinstance(url, str) else url
    el.keep(f"_{name}")


def _bundle_request(el: _Element) -> None:
    el.keep("method", "ifNoneMatch", "ifModifiedSince", "ifMatch", "ifNoneExist")
    _renamed_url(el, "url")


def _bundle_response(el: _Element) -> None:
    el.keep("status", "etag", "lastModified")
    _renamed_url(el, "location")
    el.refuse("outcome", "an OperationOutcome cannot be converted yet")


def _bundle_entry(el: _Element) -> None:
    el.keep("link", "search")
    _renamed_url(el, "fullUrl")
    resource = el.take("resource")
    if resource is not None:
        el.out["resource"] = _convert_resource(resource, el.run)
    _single(el, "request", _bundle_request)
    _single(el, "response", _bundle_response)


def _bundle(el: _Element) -> None:
    """Bundles are all or nothing in this hub: one entry that cannot be converted refuses the Bundle."""
    _recode(el, "type", _BUNDLE_TYPE)
    el.keep("identifier", "timestamp", "total", "link")
    el.refuse("signature", "the Signature type differs between versions")
    el.refuse("issues", "an OperationOutcome cannot be converted yet")
    entries = el.take("entry")
    if entries is None:
        return
    converted = []
    prefix = el.run.prefix
    for index, entry in enumerate(entries):
        el.run.prefix = f"{prefix}entry[{index}] "
        try:
            sub = _Element(entry, "Bundle.entry", el.run)
            _bundle_entry(sub)
            converted.append(sub.done())
        except _Refused as refused:
            raise refused.within(f"Bundle.entry[{index}]") from None
        finally:
            el.run.prefix = prefix
    el.out["entry"] = converted


_STU3_CONVERTERS: dict[str, _Fill] = {
    "Patient": _stu3_patient,
    "Practitioner": _stu3_practitioner,
    "Organization": _stu3_organization,
    "Encounter": _stu3_encounter,
    "EpisodeOfCare": _stu3_episode_of_care,
    "Condition": _stu3_condition,
    "Observation": _stu3_observation,
    "Procedure": _stu3_procedure,
    "ProcedureRequest": _stu3_procedure_request,
    "MedicationRequest": _stu3_medication_request,
    "MedicationStatement": _stu3_medication_statement,
    "AllergyIntolerance": _stu3_allergy_intolerance,
    "DiagnosticReport": _stu3_diagnostic_report,
    "DocumentReference": _stu3_document_reference,
    "CareTeam": _stu3_care_team,
    "Consent": _stu3_consent,
    "Immunization": _stu3_immunization,
    "MedicationDispense": _stu3_medication_dispense,
    "MedicationAdministration": _stu3_medication_administration,
    "List": _stu3_list,
    "Composition": _stu3_composition,
    "DocumentManifest": _stu3_document_manifest,
    "Task": _stu3_task,
    "QuestionnaireResponse": _stu3_questionnaire_response,
    "RiskAssessment": _stu3_risk_assessment,
    "CarePlan": _stu3_care_plan,
    "Goal": _stu3_goal,
    "Flag": _stu3_flag,
    "FamilyMemberHistory": _stu3_family_member_history,
    "Specimen": _stu3_specimen,
    "Device": _stu3_device,
    "Binary": _stu3_binary,
    "Bundle": _bundle,
}
_R5_CONVERTERS: dict[str, _Fill] = {
    "Patient": _r5_patient,
    "Practitioner": _r5_practitioner,
    "Organization": _r5_organization,
    "Encounter": _r5_encounter,
    "EpisodeOfCare": _r5_episode_of_care,
    "Condition": _r5_condition,
    "Observation": _r5_observation,
    "Procedure": _r5_procedure,
    "ServiceRequest": _r5_service_request,
    "MedicationRequest": _r5_medication_request,
    "MedicationStatement": _r5_medication_statement,
    "AllergyIntolerance": _r5_allergy_intolerance,
    "DiagnosticReport": _r5_diagnostic_report,
    "DocumentReference": _r5_document_reference,
    "CareTeam": _r5_care_team,
    "Consent": _r5_consent,
    "Immunization": _r5_immunization,
    "MedicationDispense": _r5_medication_dispense,
    "MedicationAdministration": _r5_medication_administration,
    "List": _r5_list,
    "Composition": _r5_composition,
    "Task": _r5_task,
    "QuestionnaireResponse": _r5_questionnaire_response,
    "RiskAssessment": _r5_risk_assessment,
    "CarePlan": _r5_care_plan,
    "Goal": _r5_goal,
    "Flag": _r5_flag,
    "FamilyMemberHistory": _r5_family_member_history,
    "Specimen": _r5_specimen,
    "Device": _r5_device,
    "Binary": _r5_binary,
    "Bundle": _bundle,
}
_CONVERTERS = {STU3: _STU3_CONVERTERS, R5: _R5_CONVERTERS}


def _type_label(resource_type: object) -> str:
    if isinstance(resource_type, str) and resource_type.isalpha() and len(resource_type) <= 40:
        return resource_type
    return "a resource without a known type"


def _meta(el: _Element) -> None:
    meta = el.take("meta")
    if meta is None:
        return
    meta = dict(meta)
    profiles = meta.pop("profile", None), meta.pop("_profile", None)
    if profiles != (None, None):
        # The source version's profiles do not apply to the R4 form.
        el.run.note(f"{el.path}.meta.profile dropped (profiles of the source version)")
    if meta:
        el.out["meta"] = meta


def _contained(el: _Element) -> None:
    contained = el.take("contained")
    if contained is None:
        return
    try:
        el.out["contained"] = [_convert_resource(resource, el.run) for resource in contained]
    except _Refused as refused:
        raise refused.within(f"{el.path}.contained") from None


def _convert_resource(resource: Mapping[str, Any], run: _Run) -> dict[str, Any]:
    source_type = resource.get("resourceType")
    refusal = not_clinical(source_type) if isinstance(source_type, str) else None
    if refusal is not None:
        raise _Refused(refusal, ErrorCode.FHIR_INVALID)
    fill = _CONVERTERS[run.version].get(source_type) if isinstance(source_type, str) else None
    if fill is None:
        raise _Refused(f"{_type_label(source_type)} cannot be converted from {run.name} yet")
    target_type = _RENAMED_TYPES[run.version].get(str(source_type), str(source_type))
    el = _Element(resource, str(source_type), run)
    el.take("resourceType")
    if target_type != source_type:
        run.note(f"{source_type} → {target_type} ({run.name} map)")
    el.keep("implicitRules", "language", "text")
    _meta(el)
    _contained(el)
    fill(el)
    return {"resourceType": target_type, **el.done()}


# ---------------------------------------------------------------------------------------------------
# References, extensions, and the R4 check


# Bounded: the names come from the input (references, resourceType), and a sender can vary them.
@lru_cache(maxsize=1024)
def _is_r4_type(name: str) -> bool:
    from fhir.resources.R4B import get_fhir_model_class  # noqa: PLC0415 - heavy import, once
    from fhir.resources.R4B.resource import Resource  # noqa: PLC0415

    if name in _R4B_ONLY_TYPES:
        return False
    try:
        return issubclass(get_fhir_model_class(name), Resource)
    except (KeyError, ValueError):
        return False


@lru_cache(maxsize=1024)  # bounded, as _is_r4_type
def source_model(name: str, version: str) -> Any:
    """The model of a concrete resource type in the input's version (R4 and R4B: the R4B models), or
    None for a name that is no such type (a data type, an abstract type, a type of another version)."""
    from fhir.resources import get_fhir_model_class as r5_class  # noqa: PLC0415 - heavy import, once
    from fhir.resources.R4B import get_fhir_model_class as r4b_class  # noqa: PLC0415
    from fhir.resources.R4B.resource import Resource as R4BResource  # noqa: PLC0415
    from fhir.resources.resource import Resource as R5Resource  # noqa: PLC0415
    from fhir.resources.STU3 import get_fhir_model_class as stu3_class  # noqa: PLC0415
    from fhir.resources.STU3.resource import Resource as Stu3Resource  # noqa: PLC0415

    if not name.isalpha() or name in {"Resource", "DomainResource"}:
        return None
    lookup, base = {STU3: (stu3_class, Stu3Resource), R5: (r5_class, R5Resource)}.get(
        version, (r4b_class, R4BResource)
    )
    try:
        model_class = lookup(name)
    except (KeyError, ValueError):
        return None
    return model_class if issubclass(model_class, base) else None


def _r4_type(name: str, path: str, run: _Run) -> str:
    """The R4 name of a resource type a reference or URL names; a type the source version has and R4
    lacks is refused (a name that is no resource type at all is left alone)."""
    renamed = _RENAMED_TYPES[run.version].get(name)
    if renamed is not None:
        run.note(f"references to {name} → {renamed} ({run.name} map)")
        return renamed
    if not _is_r4_type(name) and source_model(name, run.version) is not None:
        raise _Refused(f"{path}: refers to a resource type R4 does not have")
    return name


def _rename_in_url(url: str, path: str, run: _Run) -> str:
    match = _URL_TYPE.search(url)
    if match is None:
        return url
    return url[: match.start("type")] + _r4_type(match["type"], path, run) + url[match.end("type") :]


def _nodes(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every JSON object under ``value``, with an element path (restarting at each resource)."""
    if isinstance(value, dict):
        resource_type = value.get("resourceType")
        path = resource_type if isinstance(resource_type, str) else path
        yield path, value
        for key, child in value.items():
            if isinstance(child, dict | list):
                yield from _nodes(child, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _nodes(item, path)


def _finish(resource: dict[str, Any], run: _Run) -> None:
    """What the type-by-type rules leave to one pass over the result: references (renamed types,
    types R4 lacks) and, from R5, extension values of types R4 lacks or changed."""
    for path, node in _nodes(resource, resource["resourceType"]):
        literal = node.get("reference")
        if isinstance(literal, str):
            node["reference"] = _rename_in_url(literal, path, run)
        declared = node.get("type")
        if isinstance(declared, str) and set(node) <= _REFERENCE_KEYS and declared.isalpha():
            node["type"] = _r4_type(declared, path, run)
        if run.version == R5 and isinstance(node.get("url"), str):
            _r5_extension_value(node, path, run)


def _r5_extension_value(extension: dict[str, Any], path: str, run: _Run) -> None:
    if _R5_ONLY_VALUES & set(extension):
        raise _Refused(f"{path}: a value type R4 does not have")
    for key, fill in (("valueAttachment", _r5_attachment), ("valueDosage", _r5_dosage)):
        if key in extension:
            sub = _Element(extension[key], f"{path}.{key}", run)
            fill(sub)
            extension[key] = sub.done()


def _referenced_type(reference: BaseModel | dict[str, Any]) -> str | None:
    """The R4 resource type a Reference names, when it names one (a model, or the same in a document)."""
    if isinstance(reference, dict):
        literal, declared = reference.get("reference"), reference.get("type")
    else:
        literal, declared = getattr(reference, "reference", None), getattr(reference, "type", None)
    match = _URL_TYPE.search(literal) if isinstance(literal, str) else None
    named = match["type"] if match else declared
    return named if isinstance(named, str) and _is_r4_type(named) else None


class _ModelField(NamedTuple):
    """What the reference check needs of one field of a model: where it stands among the model's fields,
    its FHIR name, and the resource types a reference in it may name (None: any)."""

    order: int
    label: str
    allowed: frozenset[str] | None


@cache  # one entry per model class: a fixed set
def _model_fields(model_class: type[BaseModel]) -> dict[str, _ModelField]:
    found: dict[str, _ModelField] = {}
    for order, (name, field) in enumerate(model_class.model_fields.items()):
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        types = extra.get("enum_reference_types")
        allowed = frozenset(str(kind) for kind in types) if isinstance(types, list) else None
        found[name] = _ModelField(
            order, field.alias or name, None if allowed and "Resource" in allowed else allowed
        )
    return found


def _reference_problem(model: BaseModel, path: str) -> str | None:
    """A reference to a resource type its R4 element does not allow: R5 widened many of them (an
    Encounter based on a CarePlan...), and STU3's context allowed an EpisodeOfCare where R4's
    encounter does not. The R4B models list the allowed types but do not check them.

    Only the fields validation set are looked at (a field left out holds None: nothing to check), in
    the model's field order, so that the first problem told is the same whatever the input's order.
    """
    from fhir.resources.R4B.resource import Resource  # noqa: PLC0415 - heavy import, once

    fields = _model_fields(type(model))
    for name in sorted(model.model_fields_set, key=lambda set_name: fields[set_name].order):
        value = getattr(model, name)
        where, allowed = f"{path}.{fields[name].label}", fields[name].allowed
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, BaseModel):
                continue
            if allowed is not None and (named := _referenced_type(item)) is not None and named not in allowed:
                return f"{where}: R4 does not allow a reference to that resource type here"
            inner_path = item.get_resource_type() if isinstance(item, Resource) else where
            problem = _reference_problem(item, inner_path)
            if problem is not None:
                return problem
    return None


class _Unsure(Exception):
    """The document walk met what it does not read as the model walk would: the models decide."""


@cache  # one entry per model class: a fixed set
def _field_names(model_class: type[BaseModel]) -> dict[str, str]:
    """A document member's field name: by alias (``_status``) and by name (``status__ext``), as the
    models' config takes both."""
    found = {name: name for name in model_class.model_fields}
    found.update({field.alias: name for name, field in model_class.model_fields.items() if field.alias})
    return found


def _document_reference_problem(node: dict[str, Any], model_class: Any, path: str) -> str | None:
    """:func:`_reference_problem` on a document the models accept, without building their model: the
    same fields in the same order, each element read from the document, each resource by its type."""
    from fhir.resources.R4B import get_fhir_model_class  # noqa: PLC0415 - heavy import, once

    fields, names = _model_fields(model_class), _field_names(model_class)
    elements = fast_validation.element_models(model_class)
    present = [(names[key], value) for key, value in node.items() if key != "resourceType" or key in names]
    if len({name for name, _ in present}) != len(present):
        raise _Unsure  # one field given under its alias and its name: which the model keeps is its own
    for name, value in sorted(present, key=lambda pair: fields[pair[0]].order):
        if name not in elements:
            continue  # a primitive: no model in it
        where, allowed = f"{path}.{fields[name].label}", fields[name].allowed
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict):
                continue
            if allowed is not None and (named := _referenced_type(item)) is not None and named not in allowed:
                return f"{where}: R4 does not allow a reference to that resource type here"
            if elements[name] == fast_validation.RESOURCE:
                problem = _document_reference_problem(
                    item, get_fhir_model_class(item["resourceType"]), item["resourceType"]
                )
            else:
                problem = _document_reference_problem(item, elements[name], where)
            if problem is not None:
                return problem
    return None


def _r4_problem(resource: dict[str, Any]) -> str | None:
    """What makes the converted resource invalid R4: a model validation error (element locations and
    error types), or a reference R4 does not allow."""
    from fhir.resources.R4B import get_fhir_model_class  # noqa: PLC0415 - heavy import, once

    resource_type = resource["resourceType"]
    if fast_validation.models_accept(resource, "4.0"):
        # Valid R4 to the models (their compiled first look): the references, read from the document.
        try:
            return _document_reference_problem(resource, get_fhir_model_class(resource_type), resource_type)
        except (_Unsure, KeyError):
            pass
    try:
        model = get_fhir_model_class(resource_type).model_validate(resource)
    except ValidationError as exc:
        return f"not valid R4 once converted: {validation_detail(exc, resource_type)}"
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{resource_type}: the converted resource is unreadable as R4 ({type(exc).__name__})"
    return _reference_problem(model, resource_type)


def validate_version(document: Mapping[str, Any], version: str) -> str | None:
    """Validate a raw STU3 or R5 resource with its own version's model: None, or what is wrong
    (``Type.element.path: what is wrong``, in words, never values)."""
    if version not in _VERSION_NAMES:
        return "only STU3 (3.0) and R5 (5.0) are validated here"
    resource_type = document.get("resourceType")
    model_class = source_model(resource_type, version) if isinstance(resource_type, str) else None
    if model_class is None:
        return "no known FHIR resourceType"
    if isinstance(document, dict) and fast_validation.models_accept(document, version):
        return None  # the models' compiled first look: it accepts only what they accept
    try:
        model_class.model_validate(document)
    except ValidationError as exc:
        return validation_detail(exc, str(resource_type))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # fhir.resources raises these instead of validating on some values of a wrong JSON type.
        return unreadable_detail(exc, document, version)
    except RecursionError:
        return "FHIR nesting is too deep"
    return None


def convert_to_r4(
    document: Mapping[str, Any], version: str, *, given_up: bool = False
) -> Converted | Unconvertible:
    """Convert a validated STU3 ("3.0") or R5 ("5.0") resource, or Bundle, to canonical R4.

    The input is not modified, unless the caller says it has ``given_up`` the document (ingest, which
    parsed it for this call alone): the result then shares its unchanged parts instead of a deep copy
    of it, and the document must not be used again. The result has been validated with the R4B models.
    """
    if version not in _VERSION_NAMES:
        return Unconvertible("only STU3 (3.0) and R5 (5.0) are converted to R4")
    run = _Run(version)
    try:
        # The rules copy unchanged elements by reference and the last pass renames references in place.
        source = document if given_up else copy.deepcopy(dict(document))
        resource = _convert_resource(source, run)
        _finish(resource, run)
    except _Refused as refused:
        return Unconvertible(refused.detail, refused.code)
    problem = _r4_problem(resource)
    return Unconvertible(problem) if problem is not None else Converted(resource, run.steps)
