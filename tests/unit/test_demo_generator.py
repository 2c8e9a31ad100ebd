"""The synthetic demo feed: deterministic, valid FHIR in each source's own version and format, French
identifiers, no real INS, and the real-world quirks the hub normalises (naive times, late INS,
local codes and units, duplicates across sources)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.demo import (
    DEMO_SOURCES,
    DemoMessage,
    cross_source_duplicates,
    fr_nir_key,
    generate_feed,
    late_ins_cases,
    write_feed,
)
from hub.demo.dialects import model_class
from hub.demo.generator import (
    DST_GAP,
    DST_OVERLAP,
    DUPLICATE_OF,
    LATE_INS_UPDATE,
    LATE_INS_WITHOUT,
    NAIVE_TIME,
)
from hub.demo.identifiers import luhn_digit
from hub.normalise.codes import load_concept_maps
from hub.normalise.instants import fix_naive_times_before_validation
from hub.normalise.versions import Converted, convert_to_r4
from hub.publish import publications_for_file
from hub.schemas import schema_errors

ROOT = Path(__file__).resolve().parents[2]
SOURCES_FILE = ROOT / "config" / "sources.demo.json"
NOW = datetime(2025, 6, 15, 9, 30, tzinfo=UTC)
INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"
INS_REAL = "urn:oid:1.2.250.1.213.1.4.8"
RPPS = "urn:oid:1.2.250.1.71.4.2.1"
LOINC = "http://loinc.org"
SOURCES = {source.id: source for source in DEMO_SOURCES}
ZONES = {source.id: ZoneInfo(source.time_zone) for source in DEMO_SOURCES}
GP_SOURCES = {source.id: source for source in DEMO_SOURCES if source.kind == "gp"}
HOSPITALS = {source.id: source for source in DEMO_SOURCES if source.kind == "hospital"}
NAIVE_SOURCES = {source.id for source in DEMO_SOURCES if source.naive_times}
DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T")
AWARE = re.compile(r"(Z|[+-]\d{2}:\d{2})$")


@pytest.fixture(scope="module")
def feed() -> list[DemoMessage]:
    return list(generate_feed(patients=50, seed=11, now=NOW))


def resources(message: DemoMessage) -> Iterator[dict[str, Any]]:
    resource = message.resource
    if resource["resourceType"] == "Bundle":
        yield from (entry["resource"] for entry in resource["entry"])
    else:
        yield resource


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def is_reference(node: Any) -> bool:
    # A Reference has a string `reference` (Consent's actor.reference is a Reference, not one), or
    # a single Identifier (everywhere else `identifier` is a list).
    return isinstance(node, dict) and (
        isinstance(node.get("reference"), str) or isinstance(node.get("identifier"), dict)
    )


def date_times(message: DemoMessage) -> Iterator[str]:
    return (node for node in walk(message.resource) if isinstance(node, str) and DATE_TIME.match(node))


def repaired(message: DemoMessage) -> dict[str, Any]:
    """The message as the hub validates it: naive times read in the source's zone."""
    document, _changed = fix_naive_times_before_validation(message.resource, ZONES[message.source_id])
    return dict(document)


def registered_patients(messages: list[DemoMessage]) -> list[dict[str, Any]]:
    """The Patient of each GP registration bundle: one per synthetic patient."""
    return [
        resource
        for message in messages
        if message.source_id in GP_SOURCES
        for resource in resources(message)
        if resource["resourceType"] == "Patient"
    ]


def codes(concept: dict[str, Any], system: str) -> set[str]:
    return {coding["code"] for coding in concept.get("coding", ()) if coding.get("system") == system}


def ins_by_local_id(messages: list[DemoMessage]) -> dict[tuple[str, str], str]:
    """(source, local patient id) → INS, from every Patient that carries both."""
    found = {}
    for message in messages:
        system = SOURCES[message.source_id].patient_identifier_system
        for resource in resources(message):
            if resource["resourceType"] != "Patient":
                continue
            values = {i["system"]: i["value"] for i in resource["identifier"]}
            if system in values and INS_TEST in values:
                found[(message.source_id, values[system])] = values[INS_TEST]
    return found


# -- identifiers -------------------------------------------------------------------------------------


def test_nir_key_matches_published_examples() -> None:
    """The NIR key is 97 minus the first 13 digits modulo 97, on two published examples."""
    assert fr_nir_key("2550814168025") == "38"
    assert fr_nir_key("1841276451089") == "46"


def test_nir_key_reads_corsican_departments_as_numbers() -> None:
    """2A and 2B count as 19 and 18 when computing the key."""
    assert fr_nir_key("10101" + "2A" + "123456") == fr_nir_key("1010119123456")
    assert fr_nir_key("10101" + "2B" + "123456") == fr_nir_key("1010118123456")


@pytest.mark.parametrize("body", ["", "123", "12345678901234", "1234567890x12", "10101AA123456"])
def test_nir_key_rejects_malformed_bodies(body: str) -> None:
    """Only 13 digits (or a Corsican department) have a key."""
    with pytest.raises(ValueError, match="NIR body"):
        fr_nir_key(body)


# -- determinism -------------------------------------------------------------------------------------


def test_same_seed_and_now_give_the_same_feed(feed: list[DemoMessage]) -> None:
    """The feed is a function of (patients, seed, now) only."""
    assert list(generate_feed(patients=50, seed=11, now=NOW)) == feed


def test_another_seed_gives_another_feed(feed: list[DemoMessage]) -> None:
    """A different seed draws different patients."""
    assert list(generate_feed(patients=50, seed=12, now=NOW)) != feed


def test_naive_now_is_refused() -> None:
    """`now` must carry a time zone: the generator's own clock is never naive."""
    with pytest.raises(ValueError, match="timezone-aware"):
        generate_feed(patients=1, seed=1, now=NOW.replace(tzinfo=None))


# -- the sources -------------------------------------------------------------------------------------


def test_the_region_has_three_gp_systems_two_hospitals_and_a_lab(feed: list[DemoMessage]) -> None:
    """At least 3 GP and 2 hospital systems and a lab publish, each with its own patient id system."""
    kinds = Counter(source.kind for source in DEMO_SOURCES)
    assert kinds["gp"] >= 3
    assert kinds["hospital"] >= 2
    assert kinds["lab"] >= 1
    assert len({source.patient_identifier_system for source in DEMO_SOURCES}) == len(DEMO_SOURCES)
    assert {message.source_id for message in feed} == set(SOURCES)


def test_sources_speak_stu3_r4_and_r5_and_one_sends_xml(feed: list[DemoMessage]) -> None:
    """Each message has its source's FHIR version and media; STU3, R4 and R5 all occur, XML too."""
    for message in feed:
        source = SOURCES[message.source_id]
        assert (message.fhir_version, message.media) == (source.fhir_version, source.media)
        assert message.content_type == f"application/fhir+{message.media}; fhirVersion={message.fhir_version}"
    assert {(m.fhir_version, m.media) for m in feed} == {("3.0", "xml"), ("4.0", "json"), ("5.0", "json")}
    assert {s.fhir_version for s in GP_SOURCES.values()} >= {"4.0", "5.0"}
    assert {s.fhir_version for s in HOSPITALS.values()} >= {"3.0", "4.0"}


def test_the_demo_registry_describes_the_generators_sources() -> None:
    """config/sources.demo.json matches the schema and registers each demo source as it sends."""
    registry = json.loads(SOURCES_FILE.read_text(encoding="utf-8"))
    assert schema_errors("sources.schema.json", registry) == []
    registered = {entry["id"]: entry for entry in registry["sources"]}
    assert set(registered) == set(SOURCES)
    for source_id, entry in registered.items():
        source = SOURCES[source_id]
        assert entry["kind"] == source.kind
        assert entry["organization"] == source.organization_identifier
        assert entry["time_zone"] == source.time_zone
        assert entry["patient_identifier_systems"] == [source.patient_identifier_system]
        # No fhirVersion in what `make run` publishes: the registry's default says it.
        assert entry.get("default_fhir_version", "4.0") == source.fhir_version
        assert entry["code_mappings"] == [f"conceptmaps/{source_id}.conceptmap.json"]


def test_every_demo_sources_code_mappings_load() -> None:
    """Each source's code_mappings (relative to the registry file) load as ConceptMaps with targets."""
    registry = json.loads(SOURCES_FILE.read_text(encoding="utf-8"))
    for entry in registry["sources"]:
        mapper = load_concept_maps(SOURCES_FILE.parent / path for path in entry["code_mappings"])
        local_systems = {system for system, _code in mapper.targets}
        assert local_systems, entry["id"]
        assert all(system.startswith(f"urn:hub:demo:{entry['id']}:") for system in local_systems)


def test_each_sources_local_codes_are_all_in_its_concept_map(feed: list[DemoMessage]) -> None:
    """Every local code a source sends (in a system of its own) is mapped by its ConceptMap."""
    registry = json.loads(SOURCES_FILE.read_text(encoding="utf-8"))
    mappers = {
        entry["id"]: load_concept_maps(SOURCES_FILE.parent / path for path in entry["code_mappings"])
        for entry in registry["sources"]
    }
    for message in feed:
        own = f"urn:hub:demo:{message.source_id}:"
        for node in walk(message.resource):
            if isinstance(node, dict) and isinstance(node.get("coding"), list):
                for coding in node["coding"]:
                    if coding["system"].startswith(own):
                        key = (coding["system"], coding["code"])
                        assert key in mappers[message.source_id].targets, (message.message_id, key)


# -- validity ----------------------------------------------------------------------------------------


def test_every_message_validates_in_its_own_fhir_version(feed: list[DemoMessage]) -> None:
    """R4 messages validate with fhir.resources R4B, STU3 ones with STU3 and R5 ones with R5 (after the
    hub's naive-time repair for the source that writes naive times)."""
    for message in feed:
        document = repaired(message) if NAIVE_TIME in message.scenarios else message.resource
        model_class(message.fhir_version, document["resourceType"]).model_validate(document)


def test_naive_messages_do_not_validate_before_repair(feed: list[DemoMessage]) -> None:
    """The naive times are real FHIR errors: the R4 models refuse them until repaired."""
    naive = [message for message in feed if NAIVE_TIME in message.scenarios]
    assert naive
    with pytest.raises(ValueError, match="validation error"):
        model_class("4.0", naive[0].resource["resourceType"]).model_validate(naive[0].resource)


def test_every_stu3_and_r5_message_converts_to_canonical_r4(feed: list[DemoMessage]) -> None:
    """The hub's converter takes every STU3 and R5 demo message to valid R4."""
    others = [message for message in feed if message.fhir_version != "4.0"]
    assert {message.fhir_version for message in others} == {"3.0", "5.0"}
    for message in others:
        result = convert_to_r4(message.resource, message.fhir_version)
        assert isinstance(result, Converted), (message.message_id, result)


def test_stu3_messages_use_stu3_elements(feed: list[DemoMessage]) -> None:
    """STU3: plain-code Condition statuses, Coding class, `context`, ProcedureRequest, no ServiceRequest."""
    found = [r for m in feed if m.fhir_version == "3.0" for r in resources(m)]
    types = {r["resourceType"] for r in found}
    assert "ServiceRequest" not in types
    assert {"Patient", "Encounter", "Condition", "Observation", "ProcedureRequest"} <= types
    for resource in found:
        assert "encounter" not in resource
        if resource["resourceType"] == "Condition":
            assert (resource["clinicalStatus"], resource["verificationStatus"]) == ("active", "confirmed")
            assert "context" in resource
            assert "assertedDate" in resource
        if resource["resourceType"] == "Encounter":
            assert isinstance(resource["class"], dict)
        if resource["resourceType"] == "ProcedureRequest":
            assert set(resource["requester"]) == {"agent"}
    assert all(
        "type" not in node
        for m in feed
        if m.fhir_version == "3.0"
        for node in walk(m.resource)
        if is_reference(node)
    )


def test_r5_messages_use_r5_elements(feed: list[DemoMessage]) -> None:
    """R5: Encounter class is a list of CodeableConcept with actualPeriod, ServiceRequest.code a
    CodeableReference, Consent a decision."""
    found = [r for m in feed if m.fhir_version == "5.0" for r in resources(m)]
    encounters = [r for r in found if r["resourceType"] == "Encounter"]
    assert encounters
    for encounter in encounters:
        assert isinstance(encounter["class"], list)
        assert "actualPeriod" in encounter
        assert "period" not in encounter
        assert encounter["status"] == "completed"
    for request in (r for r in found if r["resourceType"] == "ServiceRequest"):
        assert set(request["code"]) == {"concept"}
    for consent in (r for r in found if r["resourceType"] == "Consent"):
        assert consent["decision"] == "deny"
        assert "patient" not in consent


def test_xml_messages_round_trip_through_the_stu3_models(tmp_path: Path, feed: list[DemoMessage]) -> None:
    """The XML the STU3 hospital sends reads back (model_validate_xml) as the resource it was made from."""
    xml = [message for message in feed if message.media == "xml"]
    assert xml
    write_feed(tmp_path, xml)
    for message in xml:
        body = (tmp_path / message.source_id / f"{message.message_id}.xml").read_bytes()
        assert body.startswith(b"<?xml")
        model = model_class(message.fhir_version, message.resource["resourceType"])
        assert model.model_validate_xml(body) == model.model_validate(message.resource)


# -- references and messages ------------------------------------------------------------------------


def test_message_ids_are_unique_and_named_after_their_source(feed: list[DemoMessage]) -> None:
    """Message ids are `<source>-<n>`, unique, from the demo sources only."""
    assert len({message.message_id for message in feed}) == len(feed)
    for message in feed:
        assert message.source_id in SOURCES
        assert re.fullmatch(rf"{re.escape(message.source_id)}-\d+", message.message_id)


def test_bundle_entries_are_transaction_entries_with_uuid_full_urls(feed: list[DemoMessage]) -> None:
    """Each entry has a urn:uuid fullUrl and a POST/PUT request on its own type."""
    for message in feed:
        if message.resource["resourceType"] != "Bundle":
            continue
        assert message.resource["type"] == "transaction"
        for entry in message.resource["entry"]:
            assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", entry["fullUrl"])
            assert entry["request"]["method"] in {"POST", "PUT"}
            assert entry["request"]["url"] == entry["resource"]["resourceType"]


def test_literal_references_resolve_inside_their_bundle(feed: list[DemoMessage]) -> None:
    """A `reference` is always a urn:uuid of an entry of the same bundle."""
    for message in feed:
        full_urls = {entry["fullUrl"] for entry in message.resource.get("entry", [])}
        for node in walk(message.resource):
            if is_reference(node) and "reference" in node:
                assert node["reference"] in full_urls, message.message_id


def test_references_carry_no_display(feed: list[DemoMessage]) -> None:
    """No reference carries a display, so no name travels in a reference."""
    for message in feed:
        for node in walk(message.resource):
            if is_reference(node):
                assert "display" not in node, message.message_id


def test_single_resources_name_the_patient_by_identifier(feed: list[DemoMessage]) -> None:
    """A message without a bundle names its patient by the source's own id or the test INS; a single
    Patient is a hospital's late INS update."""
    allowed = {source.patient_identifier_system for source in DEMO_SOURCES} | {INS_TEST}
    singles = [message for message in feed if message.resource["resourceType"] != "Bundle"]
    assert {message.resource["resourceType"] for message in singles} >= {
        "Observation",
        "Encounter",
        "Patient",
    }
    for message in singles:
        resource = message.resource
        if resource["resourceType"] == "Patient":
            assert LATE_INS_UPDATE in message.scenarios
            continue
        patient = resource.get("subject") or resource["patient"]
        assert set(patient) <= {"type", "identifier"}
        assert patient["identifier"]["system"] in allowed


# -- identities --------------------------------------------------------------------------------------


def test_about_four_patients_in_five_carry_a_qualified_ins() -> None:
    """200 patients generate, and roughly 80 % of them have a qualified test INS."""
    patients = registered_patients(list(generate_feed(patients=200, seed=3, now=NOW)))
    assert len(patients) == 200
    with_ins = [p for p in patients if any(i["system"] == INS_TEST for i in p["identifier"])]
    assert 0.7 <= len(with_ins) / len(patients) <= 0.9
    for patient in patients:
        reliability = patient["extension"][0]["extension"][0]["valueCoding"]["code"]
        assert reliability == ("VALI" if patient in with_ins else "PROV")


def test_every_ins_is_nir_shaped_with_a_correct_key(feed: list[DemoMessage]) -> None:
    """Each INS is 15 digits whose last two are the key of the first 13, sex digit matching gender."""
    values = [
        (node["value"], resource)
        for message in feed
        for resource in resources(message)
        for node in walk(resource)
        if isinstance(node, dict) and node.get("system") == INS_TEST and "value" in node
    ]
    assert values
    for value, resource in values:
        assert re.fullmatch(r"[12]\d{14}", value)
        assert value[13:] == fr_nir_key(value[:13])
        if resource["resourceType"] == "Patient":
            assert value[0] == ("1" if resource["gender"] == "male" else "2")


def test_the_real_ins_system_is_never_used(feed: list[DemoMessage]) -> None:
    """Synthetic numbers must never sit in the real INS-NIR system."""
    assert f'"{INS_REAL}"' not in json.dumps([message.resource for message in feed])


def test_rpps_and_finess_numbers_have_a_luhn_key(feed: list[DemoMessage]) -> None:
    """RPPS numbers are 11 digits and each hospital's FINESS 9, each ending with its Luhn key."""
    rpps = {
        node["value"]
        for message in feed
        for node in walk(message.resource)
        if isinstance(node, dict) and node.get("system") == RPPS
    }
    assert rpps
    for value in rpps:
        assert re.fullmatch(r"\d{11}", value)
        assert value[-1] == luhn_digit(value[:-1])
    finess = {hospital.organization_finess_or_id for hospital in HOSPITALS.values()}
    assert len(finess) == len(HOSPITALS) >= 2
    for value in finess:
        assert re.fullmatch(r"\d{9}", value)
        assert value[-1] == luhn_digit(value[:-1])


def test_a_hospital_sends_the_ins_late_for_several_patients(feed: list[DemoMessage]) -> None:
    """The STU3 XML hospital first sends some patients with its own id only, then the same Patient with
    the qualified INS: the INS a GP practice also sent, so the hub can link the identities."""
    cases = late_ins_cases(feed)
    assert len(cases) >= 3
    order = {message.message_id: n for n, message in enumerate(feed)}
    by_id = {message.message_id: message for message in feed}
    gp_ins = {ins for (source, _local), ins in ins_by_local_id(feed).items() if source in GP_SOURCES}
    for case in cases:
        assert (SOURCES[case.source_id].fhir_version, SOURCES[case.source_id].media) == ("3.0", "xml")
        assert case.without_ins
        assert all(order[m] < order[case.update] for m in case.without_ins)
        assert case.ins in gp_ins
        for message_id in case.without_ins:
            (patient,) = (r for r in resources(by_id[message_id]) if r["resourceType"] == "Patient")
            assert [i["value"] for i in patient["identifier"]] == [case.local_id]
            assert patient["extension"][0]["extension"][0]["valueCoding"]["code"] == "PROV"
        update = by_id[case.update].resource
        assert [i["value"] for i in update["identifier"]] == [case.local_id, case.ins]
        assert update["extension"][0]["extension"][0]["valueCoding"]["code"] == "VALI"
    tagged = {m.message_id for m in feed if LATE_INS_WITHOUT in m.scenarios or LATE_INS_UPDATE in m.scenarios}
    assert tagged == {m for case in cases for m in (*case.without_ins, case.update)}


def test_gp_practices_resend_lab_results_identical_in_clinical_content(feed: list[DemoMessage]) -> None:
    """Some lab results come again from the patient's GP inside a later visit bundle: same LOINC code,
    value, unit and instant, about the same INS, on the GP's clock and in the GP's FHIR version."""
    duplicates = cross_source_duplicates(feed)
    assert len(duplicates) >= 5
    by_id = {message.message_id: message for message in feed}
    order = {message.message_id: n for n, message in enumerate(feed)}
    ins_of = ins_by_local_id(feed)
    tags = [(m.message_id, tag) for m in feed for tag in m.scenarios if tag.startswith(DUPLICATE_OF)]
    assert {(d.repeat, DUPLICATE_OF + d.original) for d in duplicates} == set(tags)
    for duplicate in duplicates:
        original, repeat = by_id[duplicate.original], by_id[duplicate.repeat]
        assert SOURCES[original.source_id].kind == "lab"
        assert repeat.source_id in GP_SOURCES
        assert order[duplicate.original] < order[duplicate.repeat]
        lab = list(resources(original))[duplicate.original_entry or 0]
        gp = repeat.resource["entry"][duplicate.repeat_entry]["resource"]
        assert lab["valueQuantity"] == gp["valueQuantity"]
        assert LOINC in {c["system"] for c in gp["code"]["coding"]}
        assert codes(lab["code"], LOINC) == codes(gp["code"], LOINC) == {duplicate.loinc}
        effective = datetime.fromisoformat(gp["effectiveDateTime"])
        assert effective.replace(tzinfo=effective.tzinfo or ZONES[repeat.source_id]) == duplicate.effective
        assert datetime.fromisoformat(lab["effectiveDateTime"]) == duplicate.effective
        # The same person: the INS each source's own Patient record carries.
        gp_id = gp["subject"]["identifier"]["value"] if "identifier" in gp["subject"] else None
        lab_subject = lab["subject"].get("identifier", {})
        lab_ins = (
            lab_subject["value"]
            if lab_subject.get("system") == INS_TEST
            else ins_of.get((original.source_id, lab_subject.get("value", "")))
        )
        if lab_ins is None:  # first report: the Patient is in the lab's bundle
            lab_ins = ins_of[(original.source_id, _bundle_patient_id(original))]
        if gp_id is not None:
            assert ins_of[(repeat.source_id, gp_id)] == lab_ins


def _bundle_patient_id(message: DemoMessage) -> str:
    system = SOURCES[message.source_id].patient_identifier_system
    (patient,) = (r for r in resources(message) if r["resourceType"] == "Patient")
    return str(next(i["value"] for i in patient["identifier"] if i["system"] == system))


# -- time --------------------------------------------------------------------------------------------


def test_only_the_naive_source_writes_naive_times(feed: list[DemoMessage]) -> None:
    """demo-gp-maison-sante-lyon writes every date-time without offset; every other source writes one."""
    assert {"demo-gp-maison-sante-lyon"} == NAIVE_SOURCES
    for message in feed:
        naive = [text for text in date_times(message) if not AWARE.search(text)]
        if message.source_id in NAIVE_SOURCES:
            assert NAIVE_TIME in message.scenarios
            assert naive == list(date_times(message)), message.message_id
        else:
            assert NAIVE_TIME not in message.scenarios
            assert naive == [], message.message_id


def test_every_instant_lies_within_two_years_before_now(feed: list[DemoMessage]) -> None:
    """Every date-time (naive ones read on the source's clock) lies in the two years before `now`."""
    found = 0
    for message in feed:
        for text in date_times(message):
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=ZONES[message.source_id])
            assert NOW - timedelta(days=731) <= moment <= NOW, (message.message_id, text)
            found += 1
    assert found


def test_sources_write_times_on_their_own_clock(feed: list[DemoMessage]) -> None:
    """Guadeloupe sources write UTC-04:00; the Paris ones +01:00 or +02:00; Lyon's practice none."""
    offsets: dict[str, set[str]] = {}
    for message in feed:
        for text in date_times(message):
            offsets.setdefault(message.source_id, set()).add(text[-6:] if AWARE.search(text) else "naive")
    for source in DEMO_SOURCES:
        if source.naive_times:
            assert offsets[source.id] == {"naive"}
        elif source.time_zone == "America/Guadeloupe":
            assert offsets[source.id] == {"-04:00"}, source.id
        else:
            assert offsets[source.id] <= {"+01:00", "+02:00"}, source.id


def test_naive_times_fall_in_a_dst_gap_and_a_dst_overlap(feed: list[DemoMessage]) -> None:
    """A Europe/Paris practice writes 02:30 on a spring-forward day (no such time) and on a fall-back day
    (twice that time); the hub's repair gives the instants the generator meant, end after start."""
    for tag, nonexistent in ((DST_GAP, True), (DST_OVERLAP, False)):
        (message,) = [m for m in feed if tag in m.scenarios]
        zone = ZONES[message.source_id]
        assert str(zone) == "Europe/Paris"
        start = message.resource["period"]["start"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T02:30:00", start)
        wall = datetime.fromisoformat(start)
        first, second = wall.replace(tzinfo=zone), wall.replace(tzinfo=zone, fold=1)
        round_trip = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        assert (round_trip != wall) is nonexistent  # a time in the gap does not come back
        assert (first.utcoffset() != second.utcoffset()) is True  # either way, the offset is ambiguous
        period = repaired(message)["period"]
        # Timestamps: `==` between zones is always False for a time in a gap or an overlap (PEP 495).
        assert datetime.fromisoformat(period["start"]).timestamp() == first.timestamp()
        assert datetime.fromisoformat(period["end"]) - datetime.fromisoformat(period["start"]) == timedelta(
            minutes=20
        )


# -- clinical content ---------------------------------------------------------------------------------


def encounter_classes(resource: dict[str, Any]) -> set[str]:
    cls = resource["class"]
    concepts = cls if isinstance(cls, list) else [{"coding": [cls]}]
    return {coding["code"] for concept in concepts for coding in concept["coding"]}


def test_feed_mixes_the_expected_clinical_content(feed: list[DemoMessage]) -> None:
    """Visits, stays, emergencies, ICD-10 problems, lab results in several units, referrals, consents."""
    found = [resource for message in feed for resource in resources(message)]
    classes = set().union(*(encounter_classes(r) for r in found if r["resourceType"] == "Encounter"))
    assert classes == {"AMB", "IMP", "EMER", "HH"}
    discharges = [r for r in found if r["resourceType"] == "Encounter" and "hospitalization" in r]
    assert discharges
    assert all(r["status"] == "finished" and "end" in r["period"] for r in discharges)
    icd10 = {
        code
        for r in found
        if r["resourceType"] == "Condition"
        for code in codes(r["code"], "http://hl7.org/fhir/sid/icd-10")
    }
    assert {"E11.9", "I10"} <= icd10
    units = {r["valueQuantity"]["code"] for r in found if r["resourceType"] == "Observation"}
    assert {"%", "mg/dL", "mmol/L", "umol/L", "[lb_av]", "mmol/mol", "g/L", "mg/L", "kg"} <= units
    assert {"ServiceRequest", "ProcedureRequest", "Consent", "CareTeam"} <= {r["resourceType"] for r in found}


def test_each_source_measures_in_its_own_units(feed: list[DemoMessage]) -> None:
    """What a source measures itself (not the lab's results it copies) comes in that source's units."""
    expected = {
        "demo-gp-cabinet-lamentin": {"g/L", "kg"},
        "demo-gp-maison-sante-lyon": {"mg/dL", "kg"},
        "demo-gp-cabinet-basse-terre": {"mmol/L", "[lb_av]"},
        "demo-hospital-chu": {"g/L", "mg/L", "kg", "%"},
        "demo-hospital-chu-pointe-a-pitre": {"mmol/L", "umol/L", "kg", "mmol/mol"},
    }
    own: dict[str, set[str]] = {}
    for message in feed:
        if message.source_id not in expected:
            continue
        for resource in resources(message):
            if resource["resourceType"] != "Observation":
                continue
            if resource["performer"][0].get("identifier", {}).get("value") != "demo-org-lab-bio":
                own.setdefault(message.source_id, set()).add(resource["valueQuantity"]["code"])
    assert set(own) == set(expected)
    for source_id, units in own.items():
        # HbA1c at the hospitals is for admitted diabetics only, which a feed may lack.
        assert expected[source_id] - {"%", "mmol/mol"} <= units <= expected[source_id], source_id


def test_the_first_consent_of_a_feed_is_an_objection(feed: list[DemoMessage]) -> None:
    """Every feed with a consent exercises the objection rule at least once (R4 deny, R5 decision)."""
    consents = [m.resource for m in feed if m.resource["resourceType"] == "Consent"]
    assert consents
    decisions = [c["decision"] if "decision" in c else c["provision"]["type"] for c in consents]
    assert "deny" in decisions


def test_about_three_patients_in_ten_are_diabetic() -> None:
    """Type 2 diabetes (E11.9, or SNOMED CT 44054006 where the GP writes SNOMED) is on the GP problem
    list of roughly 30 % of patients."""
    messages = list(generate_feed(patients=200, seed=5, now=NOW))
    diabetic = {
        (message.source_id, resource["subject"]["reference"])
        for message in messages
        if message.source_id in GP_SOURCES and message.resource["resourceType"] == "Bundle"
        for resource in resources(message)
        if resource["resourceType"] == "Condition"
        and "reference" in resource["subject"]
        and {"E11.9", "44054006"} & {coding["code"] for coding in resource["code"]["coding"]}
    }
    assert 0.2 <= len(diabetic) / 200 <= 0.4


# -- files and publication ----------------------------------------------------------------------------


def test_write_feed_writes_one_file_per_message(tmp_path: Path, feed: list[DemoMessage]) -> None:
    """Messages land in `<source>/<message id>.json` or `.xml` and read back unchanged."""
    assert write_feed(tmp_path, feed) == len(feed)
    assert sum(1 for path in tmp_path.rglob("*") if path.is_file()) == len(feed)
    for message in feed:
        path = tmp_path / message.source_id / f"{message.message_id}.{message.media}"
        if message.media == "json":
            assert json.loads(path.read_text(encoding="utf-8")) == message.resource
        else:
            model = model_class(message.fhir_version, message.resource["resourceType"])
            assert model.model_validate_xml(path.read_bytes()) == model.model_validate(message.resource)


def test_write_feed_refuses_names_that_leave_the_directory(tmp_path: Path) -> None:
    """A source or message id that is not a plain file name is refused."""
    with pytest.raises(ValueError, match="plain file name"):
        write_feed(tmp_path, [DemoMessage("..", "x", {})])


def test_publish_names_the_fhir_version_only_when_asked(tmp_path: Path, feed: list[DemoMessage]) -> None:
    """publications_for_file keeps a bare content-type by default; fhir_version adds the parameter."""
    xml = next(message for message in feed if message.media == "xml")
    write_feed(tmp_path, [xml])
    path = tmp_path / xml.source_id / xml.file_name

    def content_type(**extra: Any) -> bytes:
        (publication,) = publications_for_file(
            path, source_id=xml.source_id, secret=b"0123456789abcdef", max_bytes=1 << 20, now=1, **extra
        )
        return dict(publication.headers)["content-type"]

    assert content_type() == b"application/fhir+xml"
    assert content_type(fhir_version="3.0") == b"application/fhir+xml; fhirVersion=3.0"
