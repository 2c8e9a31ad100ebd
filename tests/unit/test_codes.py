"""Code normalisation from FHIR ConceptMaps: loading, adding standard codings, unmapped accounting."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from hub.demo.generator import generate_feed
from hub.errors import ConfigError
from hub.normalise.codes import (
    CIM10,
    ICD10,
    LOINC,
    MAPPED_FROM_URL,
    SNOMED_CT,
    STANDARD_SYSTEMS,
    UNMAPPED_URL,
    CodeMapper,
    TargetCoding,
    UnmappedCounter,
    is_shared_system,
    load_concept_maps,
)

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "tests" / "fixtures" / "conceptmaps"
EXAMPLE_MAPS = sorted((ROOT / "config" / "conceptmaps").glob("*.conceptmap.json"))
GP_MAP = MAPS / "test-gp.conceptmap.json"
LAB_MAP = MAPS / "test-lab.conceptmap.json"
GP_SYSTEM = "urn:test:gp:condition"
LAB_SYSTEM = "urn:test:lab:test"
GP_URL = "urn:hub:conceptmap:test-gp"
SNOMED_VERSION = "http://snomed.info/sct/900000000000207008/version/20250101"
UNMAPPED_MARK = {"url": UNMAPPED_URL, "valueBoolean": True}
DELETE = object()
FIRST_TARGET = ("group", 0, "element", 0, "target", 0)


@pytest.fixture(scope="module")
def mapper() -> CodeMapper:
    return load_concept_maps([GP_MAP, LAB_MAP])


def concept(*codings: tuple[str, str]) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code} for system, code in codings]}


def condition(code: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": concept(("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")),
        "code": code,
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


def codes(codeable: dict[str, Any]) -> list[tuple[str, str]]:
    return [(coding["system"], coding["code"]) for coding in codeable["coding"]]


def write_map(folder: Path, document: Any, name: str = "map.conceptmap.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def edited_gp_map(path: tuple[str | int, ...], value: Any) -> Any:
    """The valid test-gp map with the field at ``path`` set to ``value``, or removed for DELETE."""
    document: Any = json.loads(GP_MAP.read_text(encoding="utf-8"))
    if not path:
        return value
    *parents, last = path
    node = document
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return document


# -- loading ----------------------------------------------------------------------------------------


def test_valid_maps_load_into_an_immutable_lookup(mapper: CodeMapper) -> None:
    """A valid ConceptMap loads as (source system, code) -> target codings, with display, version and url."""
    assert mapper.targets[GP_SYSTEM, "DT2"] == (
        TargetCoding(ICD10, "E11.9", "Type 2 diabetes mellitus without complications", None, GP_URL),
        TargetCoding(SNOMED_CT, "44054006", "Diabetes mellitus type 2", SNOMED_VERSION, GP_URL),
    )
    assert mapper.targets[LAB_SYSTEM, "PAS"] == (
        TargetCoding(LOINC, "8480-6", "Systolic blood pressure", None, "urn:hub:conceptmap:test-lab"),
    )
    with pytest.raises(TypeError):
        mapper.targets[GP_SYSTEM, "NEW"] = ()  # type: ignore[index]


def test_only_equivalences_that_claim_no_more_than_the_source_are_loaded(mapper: CodeMapper) -> None:
    """equivalent, equal, wider and subsumes map; relatedto, narrower, specializes, inexact... do not."""
    assert {key[1] for key in mapper.targets if key[0] == GP_SYSTEM} == {"DT2", "HTA", "K-SEIN", "BPCO"}
    assert (GP_SYSTEM, "TOUX") not in mapper.targets


def test_targets_of_several_maps_merge_without_duplicates(mapper: CodeMapper) -> None:
    """A code given again by a later map, even in the CIM-10 spelling of ICD-10, is not added twice."""
    assert [(t.system, t.code) for t in mapper.targets[GP_SYSTEM, "HTA"]] == [(ICD10, "I10")]
    assert mapper.targets[GP_SYSTEM, "HTA"][0].concept_map == GP_URL


def test_the_mapper_knows_which_local_systems_its_maps_cover(mapper: CodeMapper, tmp_path: Path) -> None:
    """Each group's source system is covered, even one whose codes all map to nothing (an unmapped code
    of it is missing from a map, not of a system without one); other systems are not."""
    assert mapper.source_systems == {GP_SYSTEM, LAB_SYSTEM}
    assert mapper.covers(GP_SYSTEM)
    assert not mapper.covers("urn:test:gp:allergy")
    only_unmatched = edited_gp_map(
        ("group",),
        [
            {
                "source": "urn:test:gp:allergy",
                "target": ICD10,
                "element": [{"code": "X", "target": [{"equivalence": "unmatched"}]}],
            }
        ],
    )
    empty = load_concept_maps([write_map(tmp_path, only_unmatched)])
    assert (dict(empty.targets), empty.covers("urn:test:gp:allergy")) == ({}, True)
    assert not CodeMapper(MappingProxyType({})).covers(GP_SYSTEM)


def test_an_invalid_conceptmap_names_the_file_and_field() -> None:
    """A file the R4 ConceptMap model rejects (here R5's relationship) raises ConfigError: file and field."""
    path = MAPS / "invalid-r5-relationship.conceptmap.json"
    with pytest.raises(ConfigError) as caught:
        load_concept_maps([GP_MAP, path])
    assert str(path) in caught.value.message
    assert "group.0.element.0.target.0.relationship" in caught.value.message


def test_a_target_system_that_is_not_standard_is_refused() -> None:
    """A group whose target is not ICD-10, CIM-10, SNOMED CT, LOINC or ATC raises ConfigError."""
    path = MAPS / "invalid-target-system.conceptmap.json"
    with pytest.raises(ConfigError) as caught:
        load_concept_maps([path])
    assert str(path) in caught.value.message
    assert "group.0.target" in caught.value.message
    assert "urn:test:other-gp:condition" in caught.value.message


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ((*FIRST_TARGET, "equivalence"), "same-as", "group.0.element.0.target.0.equivalence"),
        ((*FIRST_TARGET, "dependsOn"), [{"property": "severity", "value": "mild"}], "dependsOn"),
        ((*FIRST_TARGET, "code"), DELETE, "group.0.element.0.target.0"),
        (("url",), DELETE, "url"),
        (("resourceType",), "Patient", "resource_type"),
        (("group", 0, "unmapped"), {"mode": "provided"}, "group.0.unmapped"),
        (("group", 0, "source"), DELETE, "group.0.source"),
        ((), [], "(root)"),
    ],
    ids=[
        "unknown-equivalence",
        "depends-on",
        "no-target-code",
        "no-url",
        "not-a-map",
        "unmapped-mode",
        "no-source",
        "not-an-object",
    ],
)
def test_other_faults_name_the_file_and_field(
    tmp_path: Path, path: tuple[str | int, ...], value: Any, field: str
) -> None:
    """Unknown equivalence, conditional or fallback map, missing code, url or source: file and field named."""
    written = write_map(tmp_path, edited_gp_map(path, value))
    with pytest.raises(ConfigError) as caught:
        load_concept_maps([written])
    assert str(written) in caught.value.message
    assert field in caught.value.message


def test_unreadable_files_raise_config_error(tmp_path: Path) -> None:
    """A missing file or one that is not JSON raises ConfigError naming it, not an OSError."""
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    for path in (tmp_path / "missing.json", tmp_path / "broken.json"):
        with pytest.raises(ConfigError) as caught:
            load_concept_maps([path])
        assert str(path) in caught.value.message


# -- mapping ----------------------------------------------------------------------------------------


def test_mapping_adds_the_standard_codings_and_keeps_the_original(mapper: CodeMapper) -> None:
    """The local coding stays first and unchanged; each standard target follows, marked as the hub's."""
    local = {"system": GP_SYSTEM, "code": "DT2", "display": "Diabète type 2", "userSelected": True}
    result = mapper.map_resource(condition({"coding": [local], "text": "Diabète"}))
    code = result.resource["code"]
    assert code["text"] == "Diabète"
    assert code["coding"] == [
        local,
        {
            "extension": [{"url": MAPPED_FROM_URL, "valueString": GP_URL}],
            "system": ICD10,
            "code": "E11.9",
            "display": "Type 2 diabetes mellitus without complications",
            "userSelected": False,
        },
        {
            "extension": [{"url": MAPPED_FROM_URL, "valueString": GP_URL}],
            "system": SNOMED_CT,
            "version": SNOMED_VERSION,
            "code": "44054006",
            "display": "Diabetes mellitus type 2",
            "userSelected": False,
        },
    ]
    assert result.steps == (
        f"code-mapped:{GP_SYSTEM}|DT2->{ICD10}|E11.9",
        f"code-mapped:{GP_SYSTEM}|DT2->{SNOMED_CT}|44054006",
    )
    assert result.unmapped == ()


def test_a_standard_coding_already_present_is_not_added_again(mapper: CodeMapper) -> None:
    """A target already present (as ICD-10 or its CIM-10 spelling) is not duplicated; the rest is added."""
    for icd_system in (ICD10, CIM10):
        result = mapper.map_resource(condition(concept((GP_SYSTEM, "DT2"), (icd_system, "E11.9"))))
        assert codes(result.resource["code"]) == [
            (GP_SYSTEM, "DT2"),
            (icd_system, "E11.9"),
            (SNOMED_CT, "44054006"),
        ]
        assert result.steps == (f"code-mapped:{GP_SYSTEM}|DT2->{SNOMED_CT}|44054006",)


def test_a_resource_with_nothing_to_change_is_returned_as_is(mapper: CodeMapper) -> None:
    """When every target is present and every concept is standard, the very same object comes back."""
    resource = condition(concept((GP_SYSTEM, "HTA"), (ICD10, "I10")))
    result = mapper.map_resource(resource)
    assert result.resource is resource
    assert result.steps == ()
    assert result.unmapped == ()


def test_a_local_code_without_map_is_marked_and_reported(mapper: CodeMapper) -> None:
    """A concept with no standard coding and no map keeps its codings, is marked unmapped and reported."""
    resource = condition(
        {"extension": [{"url": "urn:other", "valueString": "kept"}], **concept((GP_SYSTEM, "TOUX"))}
    )
    result = mapper.map_resource(resource)
    assert result.resource["code"] == {
        "extension": [{"url": "urn:other", "valueString": "kept"}, UNMAPPED_MARK],
        "coding": [{"system": GP_SYSTEM, "code": "TOUX"}],
    }
    assert result.unmapped == ((GP_SYSTEM, "TOUX"),)
    assert result.steps == (f"code-unmapped:{GP_SYSTEM}|TOUX",)


def test_a_concept_with_a_standard_coding_is_not_unmapped(mapper: CodeMapper) -> None:
    """An unknown local code beside a standard one needs no map: nothing is marked or reported."""
    result = mapper.map_resource(condition(concept((GP_SYSTEM, "TOUX"), (SNOMED_CT, "49727002"))))
    assert "extension" not in result.resource["code"]
    assert result.unmapped == ()


def test_a_resource_seen_again_keeps_one_mark_and_loses_it_once_mapped(mapper: CodeMapper) -> None:
    """A republished resource is not marked twice, and a stale unmapped mark goes once a map applies."""
    marked_again = mapper.map_resource(
        condition({"extension": [UNMAPPED_MARK], **concept((GP_SYSTEM, "TOUX"))})
    )
    assert marked_again.resource["code"]["extension"] == [UNMAPPED_MARK]
    assert marked_again.unmapped == ((GP_SYSTEM, "TOUX"),)
    now_mapped = mapper.map_resource(condition({"extension": [UNMAPPED_MARK], **concept((GP_SYSTEM, "HTA"))}))
    assert "extension" not in now_mapped.resource["code"]
    assert codes(now_mapped.resource["code"]) == [(GP_SYSTEM, "HTA"), (ICD10, "I10")]


def test_meta_security_labels_and_tags_are_untouched(mapper: CodeMapper) -> None:
    """meta holds security labels and tags, not clinical codes: never mapped, marked or counted."""
    meta = {
        "security": [{"system": "urn:test:gp:confidentiality", "code": "PSY"}],
        "tag": [{"system": GP_SYSTEM, "code": "DT2"}],
        "extension": [{"url": "urn:x", "valueCodeableConcept": concept((GP_SYSTEM, "TOUX"))}],
    }
    resource = condition(concept((ICD10, "I10")), meta=meta)
    result = mapper.map_resource(resource)
    assert result.resource is resource
    assert result.resource["meta"] == meta
    assert result.unmapped == ()


@pytest.mark.parametrize(
    "system",
    [
        "http://terminology.hl7.org/CodeSystem/condition-category",
        "http://terminology.hl7.org/CodeSystem/v2-0203",
        "http://hl7.org/fhir/administrative-gender",
        "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
        "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante",
        *sorted(STANDARD_SYSTEMS),
    ],
)
def test_fhir_own_and_national_systems_are_not_unmapped(mapper: CodeMapper, system: str) -> None:
    """FHIR's own code systems, French national ones and the standards need no map: never counted."""
    assert is_shared_system(system)
    result = mapper.map_resource(condition(concept((ICD10, "I10")), category=[concept((system, "x"))]))
    assert result.unmapped == ()


@pytest.mark.parametrize(
    "system", ["http://hl7.org/fhir/sid/icd-9-cm", "urn:oid:1.2.3", "", "http://loinc.org/x"]
)
def test_outside_and_local_systems_are_unmapped(mapper: CodeMapper, system: str) -> None:
    """FHIR's names for outside terminologies (fhir/sid/...), local and missing systems count as unmapped."""
    assert not is_shared_system(system)
    result = mapper.map_resource(condition(concept((system, "x"))))
    assert result.unmapped == ((system, "x"),)


def test_nested_concepts_are_mapped_everywhere(mapper: CodeMapper) -> None:
    """Concepts in components, evidence, extensions, contained resources and bundle entries are all walked."""
    observation = {
        "resourceType": "Observation",
        "code": concept((LOINC, "85354-9")),
        "component": [
            {"code": concept((LAB_SYSTEM, "PAS")), "valueQuantity": {"value": 142}},
            {"code": concept((LAB_SYSTEM, "PAD")), "valueQuantity": {"value": 91}},
        ],
    }
    problem = condition(
        concept((GP_SYSTEM, "HTA")),
        evidence=[{"code": [concept((GP_SYSTEM, "K-SEIN"))]}],
        extension=[{"url": "urn:x", "valueCodeableConcept": concept((GP_SYSTEM, "BPCO"))}],
        contained=[observation],
    )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": problem}]}
    result = mapper.map_resource(bundle)
    mapped = result.resource["entry"][0]["resource"]
    assert codes(mapped["code"])[-1] == (ICD10, "I10")
    assert codes(mapped["evidence"][0]["code"][0])[-1] == (ICD10, "C50.9")
    assert codes(mapped["extension"][0]["valueCodeableConcept"])[-1] == (ICD10, "J44.9")
    components = mapped["contained"][0]["component"]
    assert [codes(c["code"])[-1] for c in components] == [(LOINC, "8480-6"), (LOINC, "8462-4")]
    assert len(result.steps) == 5
    assert result.unmapped == ()


def test_the_input_is_not_mutated_and_unchanged_parts_are_shared(mapper: CodeMapper) -> None:
    """Mapping copies only along the changed paths: the input is intact, untouched subtrees are reused."""
    resource = condition(
        concept((GP_SYSTEM, "DT2")),
        category=[concept((GP_SYSTEM, "TOUX"))],
        note=[{"text": "suivi"}],
    )
    before = copy.deepcopy(resource)
    result = mapper.map_resource(resource)
    assert resource == before
    assert result.resource is not resource
    assert result.resource["code"]["coding"][0] is resource["code"]["coding"][0]
    for unchanged in ("subject", "clinicalStatus", "note"):
        assert result.resource[unchanged] is resource[unchanged]


def test_an_empty_mapper_still_reports_local_codes() -> None:
    """A source without ConceptMaps still gets its local-only concepts marked and counted."""
    result = load_concept_maps([]).map_resource(condition(concept((GP_SYSTEM, "DT2"))))
    assert result.unmapped == ((GP_SYSTEM, "DT2"),)


# -- counter ----------------------------------------------------------------------------------------


def test_the_counter_counts_unmapped_codes_by_source_and_system() -> None:
    """UnmappedCounter adds each unmapped code under (source id, system); a snapshot is a detached copy."""
    counter = UnmappedCounter()
    assert counter.snapshot() == {}
    counter.add("gp-a", [(GP_SYSTEM, "TOUX"), (GP_SYSTEM, "FIEVRE"), ("urn:other", "1")])
    counter.add("gp-b", [(GP_SYSTEM, "TOUX")])
    counter.add("gp-a", [])
    first = counter.snapshot()
    counter.add("gp-a", [(GP_SYSTEM, "TOUX")])
    assert first == {("gp-a", GP_SYSTEM): 2, ("gp-a", "urn:other"): 1, ("gp-b", GP_SYSTEM): 1}
    assert counter.snapshot()[("gp-a", GP_SYSTEM)] == 3


# -- the example maps on the demo feed -------------------------------------------------------------


def concepts(node: Any) -> Iterator[dict[str, Any]]:
    """Every CodeableConcept under ``node`` outside meta."""
    if isinstance(node, dict):
        if isinstance(node.get("coding"), list):
            yield node
            return
        for key, child in node.items():
            if key != "meta":
                yield from concepts(child)
    elif isinstance(node, list):
        for child in node:
            yield from concepts(child)


def strip_standard(resource: dict[str, Any], local_systems: set[str]) -> dict[str, Any]:
    """A copy of ``resource`` as a source with only its local codes would send it."""
    stripped = copy.deepcopy(resource)
    for codeable in concepts(stripped):
        if any(coding.get("system") in local_systems for coding in codeable["coding"]):
            codeable["coding"] = [c for c in codeable["coding"] if c.get("system") not in STANDARD_SYSTEMS]
    return stripped


def standard_codes(resource: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (coding["system"], coding["code"])
        for codeable in concepts(resource)
        for coding in codeable["coding"]
        if coding.get("system") in STANDARD_SYSTEMS
    }


@pytest.fixture(scope="module")
def demo_feed() -> list[Any]:
    return list(generate_feed(patients=20, seed=1, now=datetime(2025, 6, 15, tzinfo=UTC)))


def test_there_is_one_example_map_per_demo_source(demo_feed: list[Any]) -> None:
    """config/conceptmaps holds one <source id>.conceptmap.json for every source of the demo feed."""
    assert {path.name.removesuffix(".conceptmap.json") for path in EXAMPLE_MAPS} == {
        message.source_id for message in demo_feed
    }


@pytest.mark.parametrize("path", EXAMPLE_MAPS, ids=lambda path: path.name)
def test_each_example_map_restores_the_demo_feeds_standard_codes(path: Path, demo_feed: list[Any]) -> None:
    """Each example map loads, and gives a local-only demo message back every standard code it had."""
    source_id = path.name.removesuffix(".conceptmap.json")
    assert json.loads(path.read_text(encoding="utf-8"))["url"] == f"urn:hub:conceptmap:{source_id}"
    mapper = load_concept_maps([path])
    local_systems = {system for system, _code in mapper.targets}
    mapped_steps = 0
    for message in (m for m in demo_feed if m.source_id == source_id):
        result = mapper.map_resource(strip_standard(message.resource, local_systems))
        assert standard_codes(message.resource) <= standard_codes(result.resource)
        assert not [code for code in result.unmapped if code[0] in local_systems]
        mapped_steps += sum(step.startswith("code-mapped:") for step in result.steps)
    assert mapped_steps > 0


def test_with_the_example_maps_the_demo_feed_has_no_unmapped_code(demo_feed: list[Any]) -> None:
    """The demo feed as published, mapped with its source's example map, leaves nothing unmapped."""
    mappers = {path.name.removesuffix(".conceptmap.json"): load_concept_maps([path]) for path in EXAMPLE_MAPS}
    added = 0
    for message in demo_feed:
        result = mappers[message.source_id].map_resource(message.resource)
        assert result.unmapped == (), message.message_id
        added += len(result.steps)
    assert added > 0  # conditions gain SNOMED CT, oncology referrals a SNOMED CT referral code
