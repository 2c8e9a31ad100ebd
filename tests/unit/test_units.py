"""Observation quantities in canonical UCUM units (hub/normalise/units.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hub.normalise.units import ORIGINAL_QUANTITY_URL, UCUM_SYSTEM, convert_value, normalise_quantities


def observation(loinc: str, quantity: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A lab Observation coded in LOINC, with ``quantity`` as its valueQuantity."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }
    if quantity is not None:
        resource["valueQuantity"] = quantity
    return resource


def ucum(value: float, code: str, unit: str | None = None) -> dict[str, Any]:
    """A Quantity coded in UCUM."""
    return {"value": value, "unit": unit or code, "system": UCUM_SYSTEM, "code": code}


@pytest.mark.parametrize(
    ("loinc", "value", "from_unit", "to_unit", "expected"),
    [
        ("2345-7", 126, "mg/dL", "mmol/L", 6.99),
        ("2345-7", 6.99, "mmol/L", "mg/dL", 125.9),
        ("14749-6", 1.26, "g/L", "mmol/L", 6.99),
        ("4548-4", 53, "mmol/mol", "%", 7.0),
        ("4548-4", 8.0, "%", "mmol/mol", 64.0),
        ("59261-8", 7.0, "%", "mmol/mol", 53.0),
        ("2160-0", 1.0, "mg/dL", "umol/L", 88.4),
        ("2160-0", 88.4, "umol/L", "mg/dL", 1.0),
        ("38483-4", 9.0, "mg/L", "umol/L", 79.6),
        ("2093-3", 200, "mg/dL", "mmol/L", 5.17),
        ("2093-3", 5.17, "mmol/L", "mg/dL", 199.9),
        ("2093-3", 2.1, "g/L", "mmol/L", 5.43),
        ("2571-8", 150, "mg/dL", "mmol/L", 1.69),
        ("2571-8", 1.69, "mmol/L", "mg/dL", 149.7),
        ("29463-7", 154.0, "[lb_av]", "kg", 69.85),
        ("29463-7", 69.85, "kg", "[lb_av]", 154.0),
        ("29463-7", 3245, "g", "kg", 3.245),
        ("8302-2", 70.0, "[in_i]", "cm", 177.8),
        ("8302-2", 177.8, "cm", "[in_i]", 70.0),
        ("8302-2", 1.78, "m", "cm", 178.0),
        ("8306-3", 5.5, "[ft_i]", "cm", 168.0),
    ],
)
def test_known_conversions_both_ways(
    loinc: str, value: float, from_unit: str, to_unit: str, expected: float
) -> None:
    """Each conversion matches the clinical tables, rounded to the source unit's resolution."""
    assert convert_value(value, from_unit, to_unit, loinc) == expected


def test_conversion_is_exact_before_its_one_rounding() -> None:
    """The decimal the source wrote is converted exactly, then rounded once, half away from zero."""
    assert convert_value(1.785, "m", "cm", "8302-2") == 179.0  # 178.5 exactly; the float 1.785 is below it
    assert convert_value(0.5, "mg/dL", "umol/L", "2160-0") == 44.2  # 44.21 at 0.01 mg/dL = 0.88 umol/L
    assert convert_value(100, "[lb_av]", "kg", "29463-7") == 45.36  # 45.359237 at 0.1 lb = 0.045 kg
    assert convert_value(108, "mmol/mol", "%", "4548-4") == 12.03  # not 110 as two significant digits


def test_unknown_analyte_or_unit_converts_to_nothing() -> None:
    """A LOINC code or unit the hub does not convert gives None, not a guess."""
    assert convert_value(1, "mg/dL", "mmol/L", "8867-4") is None
    assert convert_value(1, "furlong", "cm", "8302-2") is None


def test_glucose_mg_dl_becomes_mmol_l_with_the_original_kept() -> None:
    """A converted valueQuantity is canonical UCUM, and the original rides along as an extension."""
    source = ucum(126, "mg/dL")
    result, steps = normalise_quantities(observation("2345-7", source))
    assert result["valueQuantity"] == {
        "value": 6.99,
        "unit": "mmol/L",
        "system": UCUM_SYSTEM,
        "code": "mmol/L",
        "extension": [{"url": ORIGINAL_QUANTITY_URL, "valueQuantity": source}],
    }
    assert result["code"]["coding"][0]["code"] == "2345-7"  # the LOINC code is never rewritten
    assert steps == ["unit:2345-7:mg/dL->mmol/L"]


def test_original_extension_leaves_out_the_sources_extensions() -> None:
    """The kept original is the Quantity without its extensions; the source's extensions stay in place."""
    theirs = {"url": "http://example.org/analyser", "valueString": "A1"}
    source = {**ucum(53, "mmol/mol"), "extension": [theirs]}
    result, _ = normalise_quantities(observation("4548-4", source))
    quantity = result["valueQuantity"]
    assert quantity["value"] == 7.0
    assert quantity["code"] == "%"
    assert quantity["extension"] == [
        theirs,
        {"url": ORIGINAL_QUANTITY_URL, "valueQuantity": ucum(53, "mmol/mol")},
    ]


@pytest.mark.parametrize(
    ("loinc", "quantity", "expected_value", "expected_code", "step"),
    [
        ("2339-0", {"value": 126, "unit": "mg/dl"}, 6.99, "mmol/L", "unit:2339-0:mg/dL->mmol/L"),
        ("2339-0", {"value": 1.26, "unit": "G/L"}, 6.99, "mmol/L", "unit:2339-0:g/L->mmol/L"),
        ("14682-9", {"value": 1.0, "unit": "MG/DL"}, 88.4, "umol/L", "unit:14682-9:mg/dL->umol/L"),
        ("29463-7", {"value": 154.0, "unit": "lbs"}, 69.85, "kg", "unit:29463-7:[lb_av]->kg"),
        ("8302-2", {"value": 70.0, "unit": "in"}, 177.8, "cm", "unit:8302-2:[in_i]->cm"),
        (
            "8302-2",
            {"value": 70.0, "unit": "pouces", "system": "urn:local:units", "code": "IN"},
            177.8,
            "cm",
            "unit:8302-2:[in_i]->cm",
        ),
    ],
    ids=["mg/dl", "G/L", "MG/DL", "lbs", "in", "local code"],
)
def test_units_are_recognised_by_text_when_not_by_ucum_code(
    loinc: str, quantity: dict[str, Any], expected_value: float, expected_code: str, step: str
) -> None:
    """Without a UCUM code, the unit text (or a local code) is read case-insensitively through synonyms."""
    result, steps = normalise_quantities(observation(loinc, quantity))
    assert result["valueQuantity"]["value"] == expected_value
    assert result["valueQuantity"]["code"] == expected_code
    assert result["valueQuantity"]["system"] == UCUM_SYSTEM
    assert steps == [step]


def test_ucum_code_wins_over_the_unit_text() -> None:
    """The UCUM code is read first: a display text that disagrees with it does not decide."""
    result, steps = normalise_quantities(observation("2345-7", ucum(126, "mg/dL", unit="mmol/L")))
    assert result["valueQuantity"]["value"] == 6.99
    assert steps == ["unit:2345-7:mg/dL->mmol/L"]


@pytest.mark.parametrize("unit", ["\u00b5mol/L", "\u03bcmol/L", "umol/l"])
def test_micro_sign_spellings_are_one_unit(unit: str) -> None:
    """Micro sign, Greek mu and ASCII u all mean UCUM umol/L: already canonical, only coded."""
    result, steps = normalise_quantities(observation("14682-9", {"value": 80, "unit": unit}))
    assert result["valueQuantity"] == {"value": 80, "unit": unit, "system": UCUM_SYSTEM, "code": "umol/L"}
    assert steps == ["unit-coded:14682-9:umol/L"]


def test_canonical_quantity_is_untouched() -> None:
    """A quantity already in canonical UCUM comes back equal, with no extension and no step."""
    resource = observation("4548-4", ucum(7.4, "%"))
    result, steps = normalise_quantities(resource)
    assert result == resource
    assert steps == []


def test_canonical_quantity_gets_missing_system_and_code_only() -> None:
    """A canonical unit given only as text gains system and code; value and text stay; no extension."""
    result, steps = normalise_quantities(observation("29463-7", {"value": 72.5, "unit": "kg"}))
    assert result["valueQuantity"] == {"value": 72.5, "unit": "kg", "system": UCUM_SYSTEM, "code": "kg"}
    assert steps == ["unit-coded:29463-7:kg"]


def test_canonical_quantity_with_a_local_code_keeps_it_as_original() -> None:
    """Overwriting a source's own system and code loses it, so the original is kept as for a conversion."""
    source = {"value": 72.5, "unit": "kg", "system": "urn:local:units", "code": "KILO"}
    result, _ = normalise_quantities(observation("29463-7", source))
    assert result["valueQuantity"]["code"] == "kg"
    assert result["valueQuantity"]["extension"] == [{"url": ORIGINAL_QUANTITY_URL, "valueQuantity": source}]


@pytest.mark.parametrize(
    ("quantity", "step"),
    [
        (ucum(40, "mg/L"), "unit-unknown:2345-7:mg/L"),
        ({"value": 126}, "unit-unknown:2345-7:(none)"),
        ({"value": 126, "unit": "126 mg per decilitre"}, "unit-unknown:2345-7:(unreadable)"),
    ],
    ids=["unsupported UCUM unit", "no unit", "free text"],
)
def test_unknown_unit_passes_through_with_a_warning(quantity: dict[str, Any], step: str) -> None:
    """A known analyte in a unit that cannot be converted keeps its value; the step says so, no value."""
    resource = observation("2345-7", quantity)
    result, steps = normalise_quantities(resource)
    assert result == resource
    assert steps == [step]


def test_other_analytes_pass_through() -> None:
    """An Observation about an analyte without a canonical unit here (heart rate) is left as it is."""
    resource = observation("8867-4", ucum(72, "/min"))
    assert normalise_quantities(resource) == (resource, [])


def test_components_use_their_own_code_then_the_observations() -> None:
    """A component is measured by its own LOINC code; one without a LOINC code by the Observation's."""
    resource = observation(
        "2339-0",
        component=[
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                **_value(53, "mmol/mol"),
            },
            {"code": {"text": "glycémie à jeun"}, **_value(99, "mg/dL")},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, **_value(72, "/min")},
        ],
    )
    result, steps = normalise_quantities(resource)
    first, second, third = result["component"]
    assert first["valueQuantity"]["value"] == 7.0
    assert first["valueQuantity"]["code"] == "%"
    assert second["valueQuantity"]["value"] == 5.5
    assert second["valueQuantity"]["code"] == "mmol/L"
    assert third is resource["component"][2]  # another analyte: not the Observation's glucose
    assert steps == ["unit:4548-4:mmol/mol->%", "unit:2339-0:mg/dL->mmol/L"]


def _value(value: float, code: str) -> dict[str, Any]:
    return {"valueQuantity": ucum(value, code)}


def test_reference_ranges_convert_with_the_same_factor_and_no_original() -> None:
    """Range bounds are converted like the value (a step says so), without an original extension."""
    resource = observation(
        "2345-7",
        ucum(126, "mg/dL"),
        referenceRange=[{"low": ucum(70, "mg/dL"), "high": ucum(100, "mg/dL"), "text": "à jeun"}],
    )
    result, steps = normalise_quantities(resource)
    (reference,) = result["referenceRange"]
    assert reference == {
        "low": ucum(3.89, "mmol/L"),
        "high": ucum(5.55, "mmol/L"),
        "text": "à jeun",
    }
    assert steps == ["unit:2345-7:mg/dL->mmol/L", "unit-range:2345-7:mg/dL->mmol/L"]


def test_component_reference_ranges_use_the_components_analyte() -> None:
    """A component's own reference range is converted with the component's analyte."""
    component = {
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
        "valueQuantity": ucum(1.0, "mg/dL"),
        "referenceRange": [{"high": ucum(1.2, "mg/dL")}],
    }
    result, _ = normalise_quantities(observation("24323-8", component=[component]))
    assert result["component"][0]["referenceRange"] == [{"high": ucum(106.1, "umol/L", unit="µmol/L")}]


def test_given_loinc_codes_replace_the_lookup() -> None:
    """Codes passed in (from a source's ConceptMap) decide the analyte instead of Observation.code."""
    resource = observation("LOCAL-GLY", {"value": 126, "unit": "mg/dL"})
    resource["code"]["coding"][0]["system"] = "urn:local:codes"
    assert normalise_quantities(resource) == (resource, [])
    result, steps = normalise_quantities(resource, loinc_codes=["2345-7"])
    assert result["valueQuantity"]["value"] == 6.99
    assert steps == ["unit:2345-7:mg/dL->mmol/L"]


def test_input_is_not_mutated_and_unchanged_parts_are_shared() -> None:
    """The input is never changed; the result is a new dict sharing what it did not change."""
    resource = observation(
        "2345-7",
        ucum(126, "mg/dL"),
        referenceRange=[{"low": ucum(70, "mg/dL")}],
        component=[{"code": {"text": "x"}, "valueQuantity": ucum(99, "mg/dL")}],
    )
    before = copy.deepcopy(resource)
    result, _ = normalise_quantities(resource)
    assert resource == before
    assert result is not resource
    assert result["code"] is resource["code"]
    assert result["valueQuantity"] is not resource["valueQuantity"]


def test_non_observations_pass_through() -> None:
    """Resources other than Observation come back equal (a new dict), with no steps."""
    resource = {"resourceType": "Condition", "id": "c1", "onsetQuantity": ucum(12, "a")}
    result, steps = normalise_quantities(resource)
    assert result == resource
    assert result is not resource
    assert steps == []


def test_normalising_twice_changes_nothing_more() -> None:
    """Normalisation is idempotent: a normalised Observation has nothing left to convert."""
    once, _ = normalise_quantities(observation("2093-3", ucum(200, "mg/dL")))
    twice, steps = normalise_quantities(once)
    assert twice == once
    assert steps == []


@pytest.mark.parametrize(
    ("loinc", "huge", "unit"),
    [("2339-0", 10**400, "mg/dL"), ("8302-2", 1e308, "m")],
    ids=["integer", "float"],
)
def test_a_value_beyond_any_float_once_converted_is_kept_and_said(loinc: str, huge: float, unit: str) -> None:
    """A glucose of 10^400 mg/dL (a valid FHIR decimal) is no float once in mmol/L, nor 1e308 m once in
    cm: the conversion raised OverflowError, an internal error for the input (found by `make fuzz`).
    Kept as sent, the step saying so without the value; in a reference range alike."""
    resource = observation(loinc, ucum(huge, unit))
    result, steps = normalise_quantities(resource)
    assert result == resource
    assert steps == [f"unit-unconvertible:{loinc}:{unit}"]
    in_range = observation(loinc, referenceRange=[{"high": ucum(huge, unit)}])
    assert normalise_quantities(in_range) == (in_range, [f"unit-unconvertible:{loinc}:{unit}"])
    assert convert_value(huge, unit, "cm" if unit == "m" else "mmol/L", loinc) is None
