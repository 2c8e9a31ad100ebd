"""Observation quantities in canonical UCUM units, converted exactly, the original kept beside.

Which analyte a quantity measures comes from the LOINC codes of the Observation (or of its component);
the unit from the Quantity's UCUM ``code``, else from its ``unit`` text. Only the analytes below are
converted; an Observation about anything else passes through untouched. A known analyte in a unit that
cannot be converted keeps its value and says so in a ``unit-unknown`` step: nothing is guessed.

Steps name LOINC codes and UCUM codes, never values:
``unit:<loinc>:<from>-><to>`` (a value converted; the original is kept as an extension on the Quantity),
``unit-range:<loinc>:<from>-><to>`` (a reference range converted, without the original),
``unit-coded:<loinc>:<code>`` (a canonical quantity given its UCUM system and code),
``unit-unknown:<loinc>:<unit>`` (not converted),
``unit-unconvertible:<loinc>:<unit>`` (a known unit, but a value no float holds once converted, such
as 10^400 mg/dL: kept as sent).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

UCUM_SYSTEM = "http://unitsofmeasure.org"
LOINC_SYSTEM = "http://loinc.org"
#: Extension on a converted Quantity holding the Quantity as the source sent it (its extensions aside).
ORIGINAL_QUANTITY_URL = "urn:hub:fhir:StructureDefinition:original-quantity"


@dataclass(frozen=True)
class _Unit:
    """A unit of one analyte: ``canonical = scale * value + offset``, in exact rationals.

    ``places`` is the number of decimals the unit is usually reported with; it sets the rounding of
    values converted from it (see :func:`_rounded`).
    """

    scale: Fraction
    places: int
    offset: Fraction = Fraction(0)


@dataclass(frozen=True)
class _Analyte:
    canonical: str
    display: str
    units: Mapping[str, _Unit]  # by UCUM code, the canonical unit included


_SAME = Fraction(1)
# Molar masses and factors as the clinical conversion tables state them, written as decimal strings so
# that Fraction holds them exactly.
_GLUCOSE = _Analyte(
    "mmol/L",
    "mmol/L",
    {
        "mmol/L": _Unit(_SAME, 2),
        "mg/dL": _Unit(1 / Fraction("18.0156"), 0),  # 10 dL per L / 180.156 g/mol
        "g/L": _Unit(1000 / Fraction("180.156"), 2),  # how French labs report glycaemia
    },
)
# HbA1c: % NGSP (DCCT) is canonical because French GPs and the networks' criteria use it (HbA1c > 8 %).
# IFCC mmol/mol is not a scaling of it but another assay calibration: the NGSP-IFCC master equation
# NGSP = 0.09148 * IFCC + 2.152 links them, and the conversion is exact to that equation, no more.
_HBA1C = _Analyte(
    "%",
    "%",
    {
        "%": _Unit(_SAME, 1),
        "mmol/mol": _Unit(Fraction("0.09148"), 0, offset=Fraction("2.152")),
    },
)
_CREATININE = _Analyte(
    "umol/L",
    "µmol/L",
    {
        "umol/L": _Unit(_SAME, 0),
        "mg/dL": _Unit(Fraction("88.42"), 2),
        "mg/L": _Unit(Fraction("8.842"), 1),  # French labs
    },
)
_CHOLESTEROL = _Analyte(
    "mmol/L",
    "mmol/L",
    {
        "mmol/L": _Unit(_SAME, 2),
        "mg/dL": _Unit(1 / Fraction("38.67"), 0),
        "g/L": _Unit(100 / Fraction("38.67"), 2),  # French labs; 1 g/L = 100 mg/dL
    },
)
# Triglycerides have their own factor (mean molar mass of triolein-like triglycerides, 885.7 g/mol).
_TRIGLYCERIDES = _Analyte(
    "mmol/L",
    "mmol/L",
    {
        "mmol/L": _Unit(_SAME, 2),
        "mg/dL": _Unit(1 / Fraction("88.57"), 0),
        "g/L": _Unit(100 / Fraction("88.57"), 2),
    },
)
_BODY_WEIGHT = _Analyte(
    "kg",
    "kg",
    {
        "kg": _Unit(_SAME, 1),
        "g": _Unit(Fraction(1, 1000), 0),
        "[lb_av]": _Unit(Fraction("0.45359237"), 1),  # the international pound, exact by definition
    },
)
_BODY_HEIGHT = _Analyte(
    "cm",
    "cm",
    {
        "cm": _Unit(_SAME, 1),
        "m": _Unit(Fraction(100), 2),
        "mm": _Unit(Fraction(1, 10), 0),
        "[in_i]": _Unit(Fraction("2.54"), 1),  # the international inch, exact by definition
        "[ft_i]": _Unit(Fraction("30.48"), 1),
    },
)

_LOINC_CODES: tuple[tuple[_Analyte, tuple[str, ...]], ...] = (
    # Mass and molar glucose codes alike: the code says how the lab measured, the hub only the unit.
    (_GLUCOSE, ("2345-7", "2339-0", "41653-7", "1558-6", "15074-8", "14749-6", "14743-9", "14771-0")),
    (_HBA1C, ("4548-4", "17856-6", "59261-8")),
    (_CREATININE, ("2160-0", "38483-4", "14682-9", "59826-8")),
    (
        _CHOLESTEROL,
        ("2093-3", "14647-2", "2085-9", "14646-4", "13457-7", "18262-6", "2089-1", "22748-8", "39469-2"),
    ),
    (_TRIGLYCERIDES, ("2571-8", "14927-8")),
    (_BODY_WEIGHT, ("29463-7", "3141-9")),
    (_BODY_HEIGHT, ("8302-2", "8306-3", "8308-9", "3137-7")),
)
_ANALYTES: dict[str, _Analyte] = {code: analyte for analyte, codes in _LOINC_CODES for code in codes}

# Unit texts as software writes them, keyed by _unit_key(), to their UCUM codes.
_UNIT_SYNONYMS = {
    "mmol/l": "mmol/L",
    "mg/dl": "mg/dL",
    "g/l": "g/L",
    "mg/l": "mg/L",
    "umol/l": "umol/L",
    "%": "%",
    "%{hba1c}": "%",
    "%ngsp": "%",
    "mmol/mol": "mmol/mol",
    "kg": "kg",
    "g": "g",
    "[lb_av]": "[lb_av]",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "cm": "cm",
    "m": "m",
    "mm": "mm",
    "[in_i]": "[in_i]",
    "in": "[in_i]",
    "[ft_i]": "[ft_i]",
    "ft": "[ft_i]",
}
# A unit text is echoed in a step only when it looks like a unit, so a free-text field cannot carry a
# value (or anything else) into the provenance.
_STEP_UNIT = re.compile(r"[A-Za-z0-9%/.\[\]{}*^_-]{1,20}")


def _unit_key(text: str) -> str:
    # Micro sign (U+00B5) and Greek mu (U+03BC) both stand for UCUM's "u".
    return text.strip().lower().replace("\u00b5", "u").replace("\u03bc", "u").replace(" ", "")


def _ucum_code(analyte: _Analyte, quantity: Mapping[str, Any]) -> str | None:
    """The UCUM code of the quantity's unit if this analyte knows it: the UCUM code first, then texts."""
    code, system = quantity.get("code"), quantity.get("system")
    if isinstance(code, str) and system in (None, UCUM_SYSTEM) and code in analyte.units:
        return code
    for text in (quantity.get("unit"), code):
        if isinstance(text, str):
            found = _UNIT_SYNONYMS.get(_unit_key(text))
            if found in analyte.units:
                return found
    return None


def _number(value: Any) -> Fraction | None:
    """A JSON number as the decimal the source wrote (a float's shortest repr), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return Fraction(str(value))


def _places(step: Fraction) -> int:
    """The fewest decimals whose last digit is no coarser than ``step``."""
    places = 0
    while Fraction(1, 10**places) > step:
        places += 1
    return places


def _rounded(value: Fraction, places: int) -> float:
    """``value`` rounded half away from zero (as labs round) to ``places`` decimals, as a float."""
    quantum = 10**places
    magnitude = Fraction(math.floor(abs(value) * quantum + Fraction(1, 2)), quantum)
    return float(magnitude if value >= 0 else -magnitude)


def _convert(value: Fraction, source: _Unit, target: _Unit) -> float | None:
    """``value`` from one unit of an analyte to another, computed exactly, then rounded once.

    Rounding rule: to the fewest decimals whose step is no coarser than one step of the source unit's
    usual resolution (``places``) expressed in the target unit. The result then keeps what the source
    measured without showing the noise of the exact rational: 126 mg/dL (resolution 1 mg/dL = 0.056
    mmol/L) gives 6.99 mmol/L, 154.0 lb (0.1 lb = 0.045 kg) 69.85 kg, 70.0 in (0.254 cm) 177.8 cm,
    53 mmol/mol (0.09 %) 7.00 %. A fixed count of significant digits was rejected because no single
    count fits an analyte's range (two digits turn an HbA1c of 108 mmol/mol into 110).
    FHIR decimals carry their precision in their text, but the hub's JSON numbers are floats (trailing
    zeros lost), so the resolution comes from the unit, not from the digits the source wrote.
    None when no float holds the result.
    """
    exact = (source.scale * value + source.offset - target.offset) / target.scale
    try:
        return _rounded(exact, _places(Fraction(1, 10**source.places) * source.scale / target.scale))
    except OverflowError:  # a valid FHIR decimal no float holds once converted (10^400 mg/dL)
        return None


def convert_value(value: float | Decimal, from_unit: str, to_unit: str, loinc_code: str) -> float | None:
    """``value`` of the analyte ``loinc_code`` from one unit to another (UCUM codes or usual texts),
    rounded as :func:`_convert` says; None when the analyte or a unit is not known, or when no float
    holds the result.

    For thresholds written in another unit than the canonical one (an HbA1c criterion in mmol/mol), and
    for showing a canonical value in a recipient's unit.
    """
    analyte = _ANALYTES.get(loinc_code)
    number = _number(value)
    if analyte is None or number is None:
        return None
    source = _ucum_code(analyte, {"unit": from_unit})
    target = _ucum_code(analyte, {"unit": to_unit})
    if source is None or target is None:
        return None
    return _convert(number, analyte.units[source], analyte.units[target])


def _loinc_codes(concept: Any) -> list[str]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return []
    return [
        str(coding["code"])
        for coding in codings
        if isinstance(coding, dict) and coding.get("system") == LOINC_SYSTEM and coding.get("code")
    ]


def _analyte(codes: Iterable[str]) -> tuple[str, _Analyte] | None:
    """The first of ``codes`` that names a known analyte, with it."""
    for code in codes:
        analyte = _ANALYTES.get(code)
        if analyte is not None:
            return code, analyte
    return None


def _step_unit(quantity: Mapping[str, Any]) -> str:
    text = quantity.get("code") or quantity.get("unit")
    if text is None:
        return "(none)"
    return text if isinstance(text, str) and _STEP_UNIT.fullmatch(text) else "(unreadable)"


def _quantity(
    quantity: dict[str, Any], found: tuple[str, _Analyte], steps: list[str], *, in_range: bool
) -> dict[str, Any]:
    """The quantity in the analyte's canonical unit, or ``quantity`` itself when nothing changes."""
    loinc, analyte = found
    number = _number(quantity.get("value"))
    if number is None:  # no value, nothing to convert (validation has refused a non-number)
        return quantity
    code = _ucum_code(analyte, quantity)
    if code is None:
        steps.append(f"unit-unknown:{loinc}:{_step_unit(quantity)}")
        return quantity
    converted = dict(quantity)
    converted.update(system=UCUM_SYSTEM, code=analyte.canonical)
    if code == analyte.canonical:
        if quantity.get("system") == UCUM_SYSTEM and quantity.get("code") == analyte.canonical:
            return quantity
        steps.append(f"unit-coded:{loinc}:{analyte.canonical}")
        # Filling in a missing system or code loses nothing; overwriting a source's own one (a local
        # system, a miscased code) does, so that quantity is kept as for a conversion.
        overwritten = quantity.get("system", UCUM_SYSTEM) != UCUM_SYSTEM or (
            quantity.get("code", analyte.canonical) != analyte.canonical
        )
        keep_original = not in_range and overwritten
    else:
        value = _convert(number, analyte.units[code], analyte.units[analyte.canonical])
        if value is None:  # beyond any float once converted: kept as sent, and said (no value)
            steps.append(f"unit-unconvertible:{loinc}:{code}")
            return quantity
        converted.update(value=value, unit=analyte.display)
        steps.append(f"{'unit-range' if in_range else 'unit'}:{loinc}:{code}->{analyte.canonical}")
        keep_original = not in_range
    if keep_original:
        original = {key: value for key, value in quantity.items() if key != "extension"}
        extension = {"url": ORIGINAL_QUANTITY_URL, "valueQuantity": original}
        converted["extension"] = [*quantity.get("extension", ()), extension]
    return converted


def _range(reference: Any, found: tuple[str, _Analyte], steps: list[str]) -> Any:
    if not isinstance(reference, dict):
        return reference
    changed = {}
    for bound in ("low", "high"):
        quantity = reference.get(bound)
        if isinstance(quantity, dict):
            new = _quantity(quantity, found, steps, in_range=True)
            if new is not quantity:
                changed[bound] = new
    return {**reference, **changed} if changed else reference


def _measured(
    element: dict[str, Any], found: tuple[str, _Analyte] | None, steps: list[str]
) -> dict[str, Any]:
    """An Observation or component with its valueQuantity and reference ranges converted; ``element``
    itself when nothing changes."""
    if found is None:
        return element
    changed: dict[str, Any] = {}
    value = element.get("valueQuantity")
    if isinstance(value, dict):
        new_value = _quantity(value, found, steps, in_range=False)
        if new_value is not value:
            changed["valueQuantity"] = new_value
    ranges = element.get("referenceRange")
    if isinstance(ranges, list):
        new_ranges = [_range(reference, found, steps) for reference in ranges]
        if any(new is not old for new, old in zip(new_ranges, ranges, strict=True)):
            changed["referenceRange"] = new_ranges
    return {**element, **changed} if changed else element


def _component_analyte(
    component: dict[str, Any], observation: tuple[str, _Analyte] | None
) -> tuple[str, _Analyte] | None:
    codes = _loinc_codes(component.get("code"))
    return _analyte(codes) if codes else observation


def normalise_quantities(
    resource: dict[str, Any], loinc_codes: Iterable[str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The resource with its Observation quantities in canonical UCUM units, and the steps taken.

    Never mutates ``resource``: the result is a new dict that shares every part left unchanged.
    ``loinc_codes``, when given (codes a source's ConceptMap translated its local code into), replaces
    the LOINC codes read from ``Observation.code``. A component is measured by its own LOINC codes; one
    without any falls back to the Observation's (a component with a LOINC code the hub does not convert
    is another analyte, so it does not fall back).
    """
    if resource.get("resourceType") != "Observation":
        return dict(resource), []
    steps: list[str] = []
    codes = list(loinc_codes) if loinc_codes is not None else _loinc_codes(resource.get("code"))
    found = _analyte(codes)
    result = dict(_measured(resource, found, steps))
    components = resource.get("component")
    if isinstance(components, list):
        new_components = [
            _measured(component, _component_analyte(component, found), steps)
            if isinstance(component, dict)
            else component
            for component in components
        ]
        if any(new is not old for new, old in zip(new_components, components, strict=True)):
            result["component"] = new_components
    return result, list(dict.fromkeys(steps))  # each step once, in the order first taken
