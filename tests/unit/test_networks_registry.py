"""The network registry (schemas/network.schema.json, hub/networks/registry.py): the six example
networks, errors that name the file and the field, and reload keeping the running set."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from hub.consent.recipients import load_recipients
from hub.errors import ConfigError, ErrorCode
from hub.networks import load_networks, reload
from hub.networks.criteria import AllOf, ConditionCriterion, ObservationCriterion, Territory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "networks"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


def network_document(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": "diab-test",
        "name": "Test diabetes network",
        "kind": "thematic",
        "territory": {"departments": ["971"]},
        "coordination_team": {"name": "Test team", "url": "https://team.example.org"},
        "criteria": {"condition": {"system": ICD10, "ranges": ["E10-E14"]}},
    }
    document.update(overrides)
    return document


def write(folder: Path, document: dict[str, Any], name: str | None = None) -> Path:
    path = folder / f"{name or document['id']}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def refusal(folder: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_networks(folder)
    assert caught.value.code == ErrorCode.CONFIG_INVALID
    return caught.value.message


def test_the_six_example_networks_load() -> None:
    """config/networks holds the six examples: two thematic-by-disease in 971, palliative, gerontology,
    a DAC and a CPTS, each file named after its id."""
    registry = load_networks(EXAMPLES)
    kinds = {network.id: network.kind for network in registry}
    assert kinds == {
        "diabete-guadeloupe": "thematic",
        "onco-guadeloupe": "thematic",
        "soins-palliatifs": "thematic",
        "gerontologie-rhone": "thematic",
        "dac-guadeloupe": "dac",
        "cpts-lyon-est": "cpts",
    }
    assert all(Path(network.origin).stem == network.id for network in registry)


def test_the_oncology_network_is_the_demo_network_recipient() -> None:
    """The demo network recipient (config/recipients.demo.json) names a network the registry has."""
    named = {r.network for r in load_recipients(ROOT / "config" / "recipients.demo.json") if r.network}
    assert named and named <= set(load_networks(EXAMPLES).networks)


def test_the_diabetes_network_reads_every_hba1c_code_in_percent() -> None:
    """HbA1c > 8 % holds for % and IFCC codes alike: all three thresholds are 8 in %."""
    network = load_networks(EXAMPLES).get("diabete-guadeloupe")
    assert network is not None and isinstance(network.criteria, AllOf)
    condition, observation = network.criteria.items
    assert isinstance(condition, ConditionCriterion) and condition.ranges == ("E10-E14",)
    assert isinstance(observation, ObservationCriterion)
    assert observation.thresholds == {"4548-4": (8.0, "%"), "17856-6": (8.0, "%"), "59261-8": (8.0, "%")}
    assert network.territory == Territory(departments=frozenset({"971"}))


def test_a_minimal_network_loads(tmp_path: Path) -> None:
    """A file with the required fields only is a network."""
    write(tmp_path, network_document())
    registry = load_networks(tmp_path)
    assert len(registry) == 1
    network = registry.get("diab-test")
    assert network is not None and network.coordination_team.contact_url == "https://team.example.org"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "club"}, "kind"),
        ({"id": "Diab Test"}, "id"),
        ({"territory": {}}, "territory"),
        ({"territory": {"postal_codes": ["971"]}}, "territory.postal_codes.0"),
        ({"criteria": {"condition": {"system": ICD10, "ranges": ["E10-"]}}}, "criteria.condition.ranges.0"),
        ({"criteria": {"condition": {"system": ICD10}}}, "criteria.condition"),
        ({"criteria": {"age": {"min": 75}, "not": {"age": {"max": 80}}}}, "criteria"),
        ({"criteria": {"all": [{"age": {"min": "75"}}]}}, "criteria.all.0.age.min"),
        ({"criteria": {"observation": {"loinc": "4548-4", "comparator": "=", "value": 8, "unit": "%"}}},
         "criteria.observation.comparator"),
        ({"criteria": {"encounter": {"class": "IMP", "lookback": "6 months"}}},
         "criteria.encounter.lookback"),
        ({"criteria": {"count": {"at_least": 3, "of": {"age": {"min": 1}}}}}, "criteria.count.of"),
    ],
)  # fmt: skip
def test_schema_errors_name_the_file_and_the_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    """A file off the schema is refused with its path and the field's dotted path in the message."""
    document = network_document(**change)
    path = write(tmp_path, document, name="diab-test")
    message = refusal(tmp_path)
    assert str(path) in message
    assert f"{field}: " in message


def test_a_missing_field_names_it(tmp_path: Path) -> None:
    """A missing required field is named in the message."""
    document = network_document()
    del document["coordination_team"]
    write(tmp_path, document)
    assert "'coordination_team' is a required property" in refusal(tmp_path)


def test_unknown_code_system_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    """A condition in a code system outside the hub's standard ones is refused, deep in the tree too."""
    local = {"condition": {"system": "urn:hub:demo:gp:condition", "codes": ["DT2"]}}
    criteria = {"all": [{"age": {"min": 18}}, {"any": [{"age": {"min": 75}}, local]}]}
    path = write(tmp_path, network_document(criteria=criteria))
    message = refusal(tmp_path)
    assert str(path) in message
    assert "criteria.all.1.any.1.condition.system: unknown code system 'urn:hub:demo:gp:condition'" in message


def test_unknown_code_system_in_a_count_is_refused(tmp_path: Path) -> None:
    """The condition a count counts is checked as well."""
    of = {"condition": {"system": "http://example.org/codes", "codes": ["A", "B", "C"]}}
    write(tmp_path, network_document(criteria={"count": {"at_least": 2, "of": of}}))
    assert "criteria.count.of.condition.system: unknown code system" in refusal(tmp_path)


def test_unknown_service_type_system_is_refused(tmp_path: Path) -> None:
    """An encounter's service type must be in a standard or FHIR code system."""
    service = {"system": "urn:local:services", "codes": ["CARDIO"]}
    write(tmp_path, network_document(criteria={"encounter": {"class": "IMP", "service_type": service}}))
    assert "criteria.encounter.service_type.system: unknown code system" in refusal(tmp_path)


def test_ranges_apply_to_icd10_only(tmp_path: Path) -> None:
    """A range of SNOMED CT codes is meaningless and refused."""
    criteria = {"condition": {"system": "http://snomed.info/sct", "ranges": ["A00-B99"]}}
    write(tmp_path, network_document(criteria=criteria))
    assert "criteria.condition.ranges: ranges apply to ICD-10 codes only" in refusal(tmp_path)


def test_a_range_out_of_order_is_refused(tmp_path: Path) -> None:
    """E14-E10 is refused with the range's field."""
    write(tmp_path, network_document(criteria={"condition": {"system": ICD10, "ranges": ["E14-E10"]}}))
    assert "criteria.condition.ranges.0: range 'E14-E10'" in refusal(tmp_path)


def test_a_unit_the_hub_cannot_convert_is_refused(tmp_path: Path) -> None:
    """An HbA1c threshold in g/L names the field and the LOINC code."""
    observation = {"loinc": "4548-4", "comparator": ">", "value": 8, "unit": "g/L"}
    write(tmp_path, network_document(criteria={"observation": observation}))
    assert "criteria.observation.unit: 'g/L' is not a unit the hub knows for LOINC 4548-4" in refusal(
        tmp_path
    )


def test_age_bounds_out_of_order_are_refused(tmp_path: Path) -> None:
    """min > max can never hold: refused."""
    write(tmp_path, network_document(criteria={"age": {"min": 80, "max": 75}}))
    assert "criteria.age: min is greater than max" in refusal(tmp_path)


def test_a_count_larger_than_its_list_is_refused(tmp_path: Path) -> None:
    """Three of two codes can never hold: refused."""
    of = {"condition": {"system": ICD10, "ranges": ["E10-E14", "I10"]}}
    write(tmp_path, network_document(criteria={"count": {"at_least": 3, "of": of}}))
    assert "criteria.count.at_least: 3 is more than the 2 codes and ranges listed" in refusal(tmp_path)


def test_the_file_name_is_the_id(tmp_path: Path) -> None:
    """A file whose name is not its id is refused (so no two files can claim one id)."""
    path = write(tmp_path, network_document(), name="diabetes")
    message = refusal(tmp_path)
    assert str(path) in message and "'diab-test' is not the file's name" in message


def test_a_file_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    """A syntax error gives the file, line and column."""
    path = tmp_path / "broken.json"
    path.write_text('{"id": "broken",\n', encoding="utf-8")
    message = refusal(tmp_path)
    assert str(path) in message and "is not JSON (line" in message


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    """No folder, no networks: ConfigError naming it."""
    assert str(tmp_path / "nowhere") in refusal(tmp_path / "nowhere")


def test_reload_keeps_the_running_networks_when_a_file_is_refused(tmp_path: Path) -> None:
    """One bad file among good ones: reload returns the running registry itself and reports the error."""
    write(tmp_path, network_document())
    running = load_networks(tmp_path)
    bad = network_document(id="onco-test", criteria={"condition": {"system": "urn:x", "codes": ["K1"]}})
    write(tmp_path, bad)
    reported: list[ConfigError] = []
    assert reload(tmp_path, running, on_error=reported.append) is running
    [error] = reported
    assert "onco-test.json" in error.message and "criteria.condition.system" in error.message


def test_reload_takes_a_valid_change(tmp_path: Path) -> None:
    """A valid edit (a new territory) is in force after reload."""
    write(tmp_path, network_document())
    running = load_networks(tmp_path)
    write(tmp_path, network_document(territory={"departments": ["971", "972"]}))
    reloaded = reload(tmp_path, running)
    network = reloaded.get("diab-test")
    assert reloaded is not running
    assert network is not None and network.territory.departments == frozenset({"971", "972"})


def test_every_example_validates_after_a_round_trip(tmp_path: Path) -> None:
    """The examples are plain JSON a network team can copy: each one loads alone from a copy."""
    for path in sorted(EXAMPLES.glob("*.json")):
        document = copy.deepcopy(json.loads(path.read_text(encoding="utf-8")))
        folder = tmp_path / path.stem
        folder.mkdir()
        write(folder, document)
        assert len(load_networks(folder)) == 1
