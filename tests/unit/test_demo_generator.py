"""The synthetic demo feed: deterministic, valid FHIR R4, French identifiers, aware times, no real INS."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from hub.demo import DEMO_SOURCES, DemoMessage, fr_nir_key, generate_feed, write_feed
from hub.demo.identifiers import luhn_digit

NOW = datetime(2025, 6, 15, 9, 30, tzinfo=UTC)
INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"
INS_REAL = "urn:oid:1.2.250.1.213.1.4.8"
RPPS = "urn:oid:1.2.250.1.71.4.2.1"
GP_SOURCES = {source.id: source for source in DEMO_SOURCES if source.kind == "gp"}
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


def registered_patients(messages: list[DemoMessage]) -> list[dict[str, Any]]:
    """The Patient of each GP registration bundle: one per synthetic patient."""
    return [
        resource
        for message in messages
        if message.source_id in GP_SOURCES
        for resource in resources(message)
        if resource["resourceType"] == "Patient"
    ]


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


def test_same_seed_and_now_give_the_same_feed(feed: list[DemoMessage]) -> None:
    """The feed is a function of (patients, seed, now) only."""
    assert list(generate_feed(patients=50, seed=11, now=NOW)) == feed


def test_another_seed_gives_another_feed(feed: list[DemoMessage]) -> None:
    """A different seed draws different patients."""
    assert list(generate_feed(patients=50, seed=12, now=NOW)) != feed


def test_naive_now_is_refused() -> None:
    """`now` must carry a time zone: the feed has no naive times."""
    with pytest.raises(ValueError, match="timezone-aware"):
        generate_feed(patients=1, seed=1, now=NOW.replace(tzinfo=None))


def test_every_message_validates_as_fhir_r4(feed: list[DemoMessage]) -> None:
    """Every Bundle and every single resource parses with fhir.resources R4B."""
    for message in feed:
        resource = message.resource
        if resource["resourceType"] == "Bundle":
            Bundle.model_validate(resource)
        else:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_message_ids_are_unique_and_named_after_their_source(feed: list[DemoMessage]) -> None:
    """Message ids are `<source>-<n>`, unique, from the demo sources only."""
    source_ids = {source.id for source in DEMO_SOURCES}
    assert len({message.message_id for message in feed}) == len(feed)
    for message in feed:
        assert message.source_id in source_ids
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
    """A message without a bundle names its patient by the source's own id or the test INS."""
    allowed = {source.patient_identifier_system for source in DEMO_SOURCES} | {INS_TEST}
    singles = [message for message in feed if message.resource["resourceType"] != "Bundle"]
    assert {message.resource["resourceType"] for message in singles} >= {"Observation", "Encounter"}
    for message in singles:
        resource = message.resource
        patient = resource.get("subject") or resource["patient"]
        assert set(patient) == {"type", "identifier"}
        assert patient["identifier"]["system"] in allowed


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
    """RPPS numbers are 11 digits and FINESS 9, each ending with its Luhn key."""
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
    hospital = next(source for source in DEMO_SOURCES if source.kind == "hospital")
    finess = hospital.organization_finess_or_id
    assert re.fullmatch(r"\d{9}", finess)
    assert finess[-1] == luhn_digit(finess[:-1])


def test_every_instant_is_aware_and_within_two_years_before_now(feed: list[DemoMessage]) -> None:
    """Every date-time has an offset and lies in the two years before `now`."""
    instants = [node for message in feed for node in walk(message.resource) if isinstance(node, str)]
    date_times = [text for text in instants if DATE_TIME.match(text)]
    assert date_times
    for text in date_times:
        assert AWARE.search(text), text
        assert NOW - timedelta(days=731) <= datetime.fromisoformat(text) <= NOW, text


def test_sources_write_times_on_their_own_clock(feed: list[DemoMessage]) -> None:
    """The Guadeloupe practice writes UTC-04:00; the Lyon sources write +01:00 or +02:00."""
    offsets: dict[str, set[str]] = {}
    for message in feed:
        for node in walk(message.resource):
            if isinstance(node, str) and DATE_TIME.match(node):
                offsets.setdefault(message.source_id, set()).add(node[-6:])
    assert offsets["demo-gp-cabinet-lamentin"] == {"-04:00"}
    assert offsets["demo-gp-maison-sante-lyon"] <= {"+01:00", "+02:00"}


def test_feed_mixes_the_expected_clinical_content(feed: list[DemoMessage]) -> None:
    """Visits, stays, ICD-10 problems, lab results in several units, referrals, consents appear."""
    found = [resource for message in feed for resource in resources(message)]
    classes = {r["class"]["code"] for r in found if r["resourceType"] == "Encounter"}
    assert classes == {"AMB", "IMP"}
    discharges = [r for r in found if r["resourceType"] == "Encounter" and "hospitalization" in r]
    assert discharges
    assert all(r["status"] == "finished" and "end" in r["period"] for r in discharges)
    icd10 = {
        coding["code"]
        for r in found
        if r["resourceType"] == "Condition"
        for coding in r["code"]["coding"]
        if coding["system"] == "http://hl7.org/fhir/sid/icd-10"
    }
    assert {"E11.9", "I10"} <= icd10
    units = {r["valueQuantity"]["code"] for r in found if r["resourceType"] == "Observation"}
    assert {"%", "mg/dL"} <= units
    assert units & {"mmol/L", "umol/L", "[lb_av]", "mmol/mol"}
    assert {"ServiceRequest", "Consent"} <= {r["resourceType"] for r in found}


def test_the_first_consent_of_a_feed_is_an_objection(feed: list[DemoMessage]) -> None:
    """Every feed with a consent exercises the objection rule at least once."""
    consents = [m.resource for m in feed if m.resource["resourceType"] == "Consent"]
    assert consents
    assert any(consent["provision"]["type"] == "deny" for consent in consents)


def test_about_three_patients_in_ten_are_diabetic() -> None:
    """Type 2 diabetes (E11.9) is on the GP problem list of roughly 30 % of patients."""
    messages = list(generate_feed(patients=200, seed=5, now=NOW))
    diabetic = {
        resource["subject"]["reference"]
        for message in messages
        if message.source_id in GP_SOURCES and message.resource["resourceType"] == "Bundle"
        for resource in resources(message)
        if resource["resourceType"] == "Condition"
        and "reference" in resource["subject"]
        and any(coding["code"] == "E11.9" for coding in resource["code"]["coding"])
    }
    assert 0.2 <= len(diabetic) / 200 <= 0.4


def test_write_feed_writes_one_file_per_message(tmp_path: Path, feed: list[DemoMessage]) -> None:
    """Messages land in `<source>/<message id>.json` and read back unchanged."""
    assert write_feed(tmp_path, feed) == len(feed)
    for message in feed:
        path = tmp_path / message.source_id / f"{message.message_id}.json"
        assert json.loads(path.read_text(encoding="utf-8")) == message.resource


def test_write_feed_refuses_names_that_leave_the_directory(tmp_path: Path) -> None:
    """A source or message id that is not a plain file name is refused."""
    with pytest.raises(ValueError, match="plain file name"):
        write_feed(tmp_path, [DemoMessage("..", "x", {})])
