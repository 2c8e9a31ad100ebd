"""The recipient registry (schemas/recipients.schema.json, hub/consent/recipients.py): the demo file,
subscriptions, and errors that name the file and the field."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from hub.consent.recipients import (
    FINESS_SYSTEM,
    NETWORK_SYSTEM,
    RPPS_SYSTEM,
    Identifier,
    Subscription,
    load_recipients,
)
from hub.consent.sensitivity import CodeSet
from hub.demo.generator import _GPS, _NURSES, DEMO_SOURCES, generate_feed
from hub.errors import ConfigError, ErrorCode
from hub.normalise.codes import CIM10
from hub.normalise.pathway_kind import _KIND_BY_TYPE, pathway_kind

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "recipients.demo.json"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


def recipient_entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "chu-pap",
        "kind": "hospital",
        "organization": {"system": FINESS_SYSTEM, "value": "970100000"},
        "kafka_principal": "User:chu-pap",
        "subscription": {"kinds": ["encounter.*", "condition"]},
    }
    entry.update(overrides)
    return entry


def write(folder: Path, *recipients: dict[str, Any]) -> Path:
    path = folder / "recipients.json"
    path.write_text(json.dumps({"recipients": list(recipients)}), encoding="utf-8")
    return path


#: Every pathway kind the hub makes: one per resource type it names, the three encounter steps, and
#: the identity stage's patient.linked; other resource types keep their FHIR name (snake_case).
KNOWN_KINDS = frozenset(
    {
        *_KIND_BY_TYPE.values(),
        *(
            pathway_kind({"resourceType": "Encounter", "class": {"code": cls}, "status": status})
            for cls, status in (("IMP", "in-progress"), ("IMP", "finished"), ("AMB", "finished"))
        ),
        "patient.linked",
    }
)
DEMO_GP_PRACTICES = tuple(source.id for source in DEMO_SOURCES if source.kind == "gp")


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a parsed document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _rpps(reference: Any) -> str | None:
    """The RPPS number a reference names by identifier, or None."""
    identifier = reference.get("identifier") if isinstance(reference, dict) else None
    if isinstance(identifier, dict) and identifier.get("system") == RPPS_SYSTEM:
        return str(identifier["value"])
    return None


@cache
def practice_rpps_in_demo_feed() -> dict[str, frozenset[str]]:
    """Per GP source of the demo feed, the RPPS numbers of the practice's own professionals as the
    feed names them: Practitioner resources, declared GPs (Patient.generalPractitioner) and CareTeam
    members acting on behalf of the practice (a nurse, never the hospital's specialists)."""
    organizations = {source.id: source.organization_identifier for source in DEMO_SOURCES}
    found: dict[str, set[str]] = defaultdict(set)
    for message in generate_feed(patients=50, seed=7, now=datetime(2026, 11, 22, 12, tzinfo=UTC)):
        if message.source_id not in DEMO_GP_PRACTICES:
            continue
        named: list[str | None] = []
        for node in _walk(message.resource):
            if node.get("resourceType") == "Practitioner":
                named.extend(
                    i.get("value") for i in node.get("identifier", ()) if i.get("system") == RPPS_SYSTEM
                )
            named.extend(_rpps(gp) for gp in node.get("generalPractitioner", ()))
            if node.get("onBehalfOf", {}).get("identifier") == organizations[message.source_id]:
                named.append(_rpps(node.get("member")))
        found[message.source_id].update(value for value in named if value)
    return {source: frozenset(values) for source, values in found.items()}


def test_demo_registry_matches_the_demo_feed() -> None:
    """The demo recipients are both demo hospitals (same FINESS as their sources), the three GP
    practices with the RPPS the demo generator gives their GPs and nurse, and the oncology network team."""
    registry = load_recipients(DEMO)
    assert [r.id for r in registry] == [
        "demo-hospital-chu",
        "demo-hospital-chu-pointe-a-pitre",
        "demo-gp-cabinet-lamentin",
        "demo-gp-maison-sante-lyon",
        "demo-gp-cabinet-basse-terre",
        "onco-guadeloupe-team",
    ]
    sources = {source.id: source for source in DEMO_SOURCES}
    assert DEMO_GP_PRACTICES == (
        "demo-gp-cabinet-lamentin",
        "demo-gp-maison-sante-lyon",
        "demo-gp-cabinet-basse-terre",
    )
    for practice in DEMO_GP_PRACTICES:
        recipient = registry.get(practice)
        assert recipient is not None
        assert recipient.kind == "gp"
        assert recipient.organization.to_json() == sources[practice].organization_identifier
        staff = {Identifier(RPPS_SYSTEM, p.rpps) for p in (*_GPS[practice], _NURSES[practice])}
        assert set(recipient.practitioners) == staff
    sources_file = json.loads((ROOT / "config" / "sources.demo.json").read_text(encoding="utf-8"))
    registered = {s["id"]: s["organization"] for s in sources_file["sources"]}
    for hospital_id, finess in (
        ("demo-hospital-chu", "690999990"),
        ("demo-hospital-chu-pointe-a-pitre", "971999990"),
    ):
        hospital = registry.get(hospital_id)
        assert hospital is not None
        assert hospital.kind == "hospital"
        assert hospital.organization == Identifier(FINESS_SYSTEM, finess)
        assert hospital.organization.to_json() == sources[hospital_id].organization_identifier
        assert hospital.organization.to_json() == registered[hospital_id]
    network = registry.get("onco-guadeloupe-team")
    assert network is not None
    assert (network.kind, network.network) == ("network", "onco-guadeloupe")
    assert Identifier(NETWORK_SYSTEM, "onco-guadeloupe") in network.parties
    assert network.topic == "hub.pathway.onco-guadeloupe-team.v1"
    assert registry.get("unknown") is None


@pytest.mark.parametrize("practice", DEMO_GP_PRACTICES)
def test_demo_practice_lists_every_rpps_its_feed_names(practice: str) -> None:
    """Every RPPS number the demo generator writes for a practice's own professionals (its GPs as
    Practitioner and declared GP, its nurse in home care teams) is listed by that practice's recipient,
    so the consent policy recognises them."""
    recipient = load_recipients(DEMO).get(practice)
    assert recipient is not None
    in_feed = practice_rpps_in_demo_feed().get(practice, frozenset())
    assert in_feed, f"the demo feed names no professional of {practice}"
    listed = {p.value for p in recipient.practitioners if p.system == RPPS_SYSTEM}
    assert in_feed <= listed, f"{practice} does not list {sorted(in_feed - listed)}"


def test_demo_subscriptions_ask_for_known_kinds() -> None:
    """Every demo recipient's subscription names kinds the hub makes: an exact kind, a family with at
    least one member (encounter.*), or everything."""
    for recipient in load_recipients(DEMO):
        for kind in recipient.subscription.kinds:
            if kind == "*":
                continue
            if kind.endswith(".*"):
                assert any(k.startswith(kind[:-1]) for k in KNOWN_KINDS), f"{recipient.id}: {kind}"
            else:
                assert kind in KNOWN_KINDS, f"{recipient.id}: {kind}"


@pytest.mark.parametrize(
    ("kinds", "kind", "wanted"),
    [
        (("condition",), "condition", True),
        (("condition",), "observation", False),
        (("encounter.*",), "encounter.discharge", True),
        (("encounter.*",), "encounter", False),
        (("encounter.*",), "encounters.x", False),
        (("*",), "patient.linked", True),
    ],
)
def test_subscription_kinds(kinds: tuple[str, ...], kind: str, wanted: bool) -> None:
    """A kind is wanted when listed, when its family (encounter.*) is, or when everything (*) is."""
    assert Subscription(kinds=kinds).wants_kind(kind) is wanted


@pytest.mark.parametrize(
    ("codings", "wanted"),
    [
        (((ICD10, "C50.9"),), True),
        (((ICD10, "C509"),), True),
        (((CIM10, "C50.9"),), True),
        (((ICD10, "D05.1"),), True),
        (((ICD10, "E11.9"),), False),
        (((ICD10, "C98"),), False),
        (((ICD10, "E11.9"), ("http://loinc.org", "4548-4")), False),
        (((ICD10, "E11.9"), ("http://snomed.info/sct", "254837009")), True),
        ((), True),
    ],
    ids=[
        "C50.9",
        "no dot",
        "CIM-10",
        "prefix bound",
        "outside",
        "past the range",
        "none of two",
        "one of two",
        "no codes",
    ],
)
def test_subscription_code_sets(codings: tuple[tuple[str, str], ...], wanted: bool) -> None:
    """Code sets match exact codes and ICD-style ranges (dots ignored); events without codes pass."""
    subscription = Subscription(
        kinds=("*",),
        codes=(
            CodeSet.from_config({"system": ICD10, "ranges": ["C00-C97", "D05"]}),
            CodeSet.from_config({"system": "http://snomed.info/sct", "codes": ["254837009"]}),
        ),
    )
    assert subscription.wants_codes(codings) is wanted


def test_full_entry_loads(tmp_path: Path) -> None:
    """Every field of a recipient is read, with structured as the default minimisation level."""
    entry = recipient_entry(
        kind="gp",
        practitioners=[{"system": RPPS_SYSTEM, "value": "10009900019"}],
        subscription={
            "kinds": ["*"],
            "codes": [{"system": ICD10, "codes": ["E11.9"], "ranges": ["E10-E14"]}],
        },
    )
    recipient = load_recipients(write(tmp_path, entry)).get("chu-pap")
    assert recipient is not None
    assert recipient.subscription.fields == "structured"
    assert recipient.subscription.codes == (CodeSet(ICD10, frozenset({"E11.9"}), (("E10", "E14"),)),)
    assert recipient.parties == {
        Identifier(FINESS_SYSTEM, "970100000"),
        Identifier(RPPS_SYSTEM, "10009900019"),
    }


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (recipient_entry(id="CHU PAP"), "recipients.0.id"),
        (recipient_entry(id="hub.pathway"), "recipients.0.id"),
        (recipient_entry(kind="pharmacy"), "recipients.0.kind"),
        (recipient_entry(kafka_principal="chu-pap"), "recipients.0.kafka_principal"),
        ({k: v for k, v in recipient_entry().items() if k != "kafka_principal"}, "kafka_principal"),
        (recipient_entry(organization={"system": FINESS_SYSTEM}), "recipients.0.organization"),
        (recipient_entry(subscription={"kinds": []}), "recipients.0.subscription.kinds"),
        (recipient_entry(subscription={"kinds": ["Condition"]}), "recipients.0.subscription.kinds.0"),
        (recipient_entry(subscription={"kinds": ["*"], "codes": [{"system": ICD10}]}), "codes.0"),
        (recipient_entry(subscription={"kinds": ["*"], "fields": "all"}), "recipients.0.subscription.fields"),
        (recipient_entry(secret="x"), "recipients.0"),
    ],
    ids=[
        "id with space", "id with dot", "unknown kind", "principal without User:", "no principal",
        "organization without value", "no kinds", "kind not dotted lower case", "code set without codes",
        "unknown fields level", "unknown property",
    ],
)  # fmt: skip
def test_schema_errors_name_file_and_field(tmp_path: Path, entry: dict[str, Any], field: str) -> None:
    """A registry that breaks the schema is a ConfigError (config.invalid) naming the file and the field."""
    path = write(tmp_path, entry)
    with pytest.raises(ConfigError) as raised:
        load_recipients(path)
    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert str(path) in str(raised.value)
    assert field in str(raised.value)


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        (
            (recipient_entry(), recipient_entry(kafka_principal="User:other")),
            "recipients.1 (chu-pap): duplicate recipient id",
        ),
        (
            (recipient_entry(), recipient_entry(id="other")),
            "recipients.1 (other).kafka_principal: User:chu-pap is already",
        ),
        ((recipient_entry(kind="network"),), "recipients.0 (chu-pap).network: a network recipient must name"),
        (
            (
                recipient_entry(
                    subscription={"kinds": ["*"], "codes": [{"system": ICD10, "ranges": ["C97-C00"]}]}
                ),
            ),
            "recipients.0 (chu-pap).subscription.codes.0.ranges",
        ),
        (
            (
                recipient_entry(
                    subscription={"kinds": ["*"], "codes": [{"system": ICD10, "ranges": ["C0-C97"]}]}
                ),
            ),
            "bounds must have one length",
        ),
    ],
    ids=["duplicate id", "shared principal", "network without id", "range out of order", "uneven bounds"],
)
def test_consistency_errors_name_file_and_field(
    tmp_path: Path, entries: tuple[dict[str, Any], ...], words: str
) -> None:
    """Errors the schema cannot see (duplicates, a shared principal, ranges) also name file and field."""
    path = write(tmp_path, *entries)
    with pytest.raises(ConfigError) as raised:
        load_recipients(path)
    assert words in str(raised.value)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read recipient registry"),
        (b"{not json", "is not JSON (line 1"),
        (b"\xff\xfe", "not UTF-8"),
    ],
    ids=["missing file", "not JSON", "not UTF-8"],
)
def test_unreadable_file(tmp_path: Path, content: bytes | None, words: str) -> None:
    """A missing, non-JSON or non-UTF-8 file is a ConfigError saying so, with a hint."""
    path = tmp_path / "recipients.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        load_recipients(path)
    assert words in str(raised.value)
    assert raised.value.hint
