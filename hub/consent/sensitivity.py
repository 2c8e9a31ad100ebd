"""Sensitivity categories of one event, from its security labels and from configured code sets."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hub.normalise.codes import CIM10, ICD10

HIV = "hiv"
PSYCHIATRY = "psychiatry"
SEXUAL_REPRODUCTIVE = "sexual_reproductive"
GENETICS = "genetics"
SUBSTANCE_USE = "substance_use"
#: Not a clinical theme: the source marked the resource confidential ("R"/"V"), whatever it holds.
RESTRICTED = "restricted"
CATEGORIES: tuple[str, ...] = (HIV, PSYCHIATRY, SEXUAL_REPRODUCTIVE, GENETICS, SUBSTANCE_USE, RESTRICTED)

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"

#: HL7 v3 sensitivity codes (ActInformationSensitivityPolicy) and confidentiality codes, by category.
#: SPI ("specially protected": substance use, psychiatric, mental and behavioural health) is both.
#: SDV (sexual assault, domestic violence) and STD sit with sexual health; SCA (sickle cell) with
#: genetics. TBOO, SOC and other codes name no category here: they mark nothing on their own.
LABEL_CATEGORIES: Mapping[tuple[str, str], frozenset[str]] = {
    (ACT_CODE, "HIV"): frozenset({HIV}),
    (ACT_CODE, "PSY"): frozenset({PSYCHIATRY}),
    (ACT_CODE, "MH"): frozenset({PSYCHIATRY}),
    (ACT_CODE, "BH"): frozenset({PSYCHIATRY}),
    (ACT_CODE, "SEX"): frozenset({SEXUAL_REPRODUCTIVE}),
    (ACT_CODE, "STD"): frozenset({SEXUAL_REPRODUCTIVE}),
    (ACT_CODE, "SDV"): frozenset({SEXUAL_REPRODUCTIVE}),
    (ACT_CODE, "GDIS"): frozenset({GENETICS}),
    (ACT_CODE, "SCA"): frozenset({GENETICS}),
    (ACT_CODE, "ETH"): frozenset({SUBSTANCE_USE}),
    (ACT_CODE, "SPI"): frozenset({PSYCHIATRY, SUBSTANCE_USE}),
    (CONFIDENTIALITY, "R"): frozenset({RESTRICTED}),
    (CONFIDENTIALITY, "V"): frozenset({RESTRICTED}),
}
_LABEL_CODES = {code: categories for (_, code), categories in LABEL_CATEGORIES.items()}

#: Two spellings of one code system: a set written for ICD-10 also reads the French CIM-10 edition.
_SAME_SYSTEM = {CIM10: ICD10}

#: Where a resource carries the codes that say what it is about (diagnosis, test, drug, reason).
_CLINICAL_CODE_FIELDS = ("code", "valueCodeableConcept", "reasonCode", "medicationCodeableConcept")


def _range_key(code: str) -> str:
    return code.replace(".", "").upper()


@dataclass(frozen=True)
class CodeSet:
    """Codes of one system: exact ``codes`` and ICD-style ``ranges`` (``C00-C97``; ``Z15`` is a prefix)."""

    system: str
    codes: frozenset[str] = frozenset()
    ranges: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> CodeSet:
        """From a schema-valid ``{system, codes?, ranges?}`` object; a range's bounds must be in order."""
        ranges = []
        for text in raw.get("ranges", ()):
            low, _, high = str(text).partition("-")
            low, high = _range_key(low), _range_key(high or low)
            if len(low) != len(high) or low > high:
                raise ValueError(f"range {text!r}: bounds must have one length and be in order")
            ranges.append((low, high))
        system = str(raw["system"])
        return cls(_SAME_SYSTEM.get(system, system), frozenset(map(str, raw.get("codes", ()))), tuple(ranges))

    def contains(self, system: str, code: str) -> bool:
        """True when ``system|code`` is one of the codes or falls in one of the ranges."""
        if _SAME_SYSTEM.get(system, system) != self.system:
            return False
        if code in self.codes:
            return True
        key = _range_key(code)
        return any(low <= key[: len(low)] <= high for low, high in self.ranges)


def _codings(value: Any) -> Iterator[tuple[str, str]]:
    """``(system, code)`` of every Coding in a CodeableConcept, or a list of them."""
    concepts = value if isinstance(value, list) else [value]
    for concept in concepts:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding", ()):
            if isinstance(coding, dict) and coding.get("system") and coding.get("code"):
                yield str(coding["system"]), str(coding["code"])


def clinical_codings(resource: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The codings that say what a resource is about: its code, value, reasons, drug, components."""
    found = [pair for name in _CLINICAL_CODE_FIELDS for pair in _codings(resource.get(name))]
    for component in resource.get("component", ()):
        if isinstance(component, dict):
            found.extend(_codings(component.get("code")))
            found.extend(_codings(component.get("valueCodeableConcept")))
    return tuple(dict.fromkeys(found))


def label_categories(coding: Mapping[str, Any]) -> frozenset[str] | None:
    """The categories one security-label Coding names; None when the hub does not know the label.

    A label without a system is read by its code alone: the sensitivity codes are unambiguous, and
    ignoring one would under-protect.
    """
    code, system = coding.get("code"), coding.get("system")
    if not isinstance(code, str):
        return None
    if system is None:
        return _LABEL_CODES.get(code)
    return LABEL_CATEGORIES.get((str(system), code))


def categories_of(
    resource: Mapping[str, Any], sensitive_codes: Mapping[str, tuple[CodeSet, ...]]
) -> frozenset[str]:
    """Every sensitivity category of one resource: from ``meta.security`` and from its clinical codes."""
    found: set[str] = set()
    meta = resource.get("meta")
    labels = meta.get("security", ()) if isinstance(meta, dict) else ()
    for label in labels if isinstance(labels, list) else ():
        if isinstance(label, dict):
            found |= label_categories(label) or frozenset()
    codings = clinical_codings(resource)
    for category, code_sets in sensitive_codes.items():
        if any(code_set.contains(system, code) for code_set in code_sets for system, code in codings):
            found.add(category)
    return frozenset(found)
