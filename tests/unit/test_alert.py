"""GP alerts (hub/alerts/alert.py, schemas/alert.schema.json): deterministic ids, the CDS Hooks card,
and nothing about the patient beyond the network id and the identifiers of the GP's own systems."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.alerts import alert_id_for, build_alert
from hub.consent.recipients import RPPS_SYSTEM
from hub.networks import PatientFacts, apply_event, evaluate, load_networks
from hub.networks.criteria import Reason
from hub.networks.eligibility import Finding
from hub.networks.registry import CoordinationTeam, Network, Telecom
from hub.normalise.time import utc_iso
from hub.schemas import schema_errors

ROOT = Path(__file__).resolve().parents[2]
NETWORKS = load_networks(ROOT / "config" / "networks")
DIABETES = NETWORKS.get("diabete-guadeloupe")
ONCOLOGY = NETWORKS.get("onco-guadeloupe")
PATIENT = "pt-" + "c" * 24
GP = "10009900019"
OTHER_GP = "10009900027"
NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
GP_SYSTEM = "urn:hub:demo:demo-gp-cabinet-lamentin:patient"
HOSPITAL_SYSTEM = "urn:hub:demo:demo-hospital-chu-pointe-a-pitre:patient"
INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


def event_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def event(name: str, resource: dict[str, Any], *, days_ago: int, source: str = "gp") -> dict[str, Any]:
    at = utc_iso(NOW - timedelta(days=days_ago))
    return {
        "event_id": event_id(name),
        "patient_id": PATIENT,
        "kind": "x",
        "occurred_at": at,
        "recorded_at": at,
        "source": {"id": source, "organization": {}},
        "resource": resource,
    }


def patient_resource(local_system: str, local_value: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "system": local_system,
                "value": local_value,
                "type": {"text": "IPP"},
                "assigner": {"display": "X"},
            },
            {"system": INS_TEST, "value": "250069712012345"},
        ],
        "name": [{"family": "Bélizaire", "given": ["Josiane"]}],
        "telecom": [{"system": "phone", "value": "+33 6 39 98 12 34"}],
        "birthDate": "1947-03-09",
        "address": [
            {"use": "home", "line": ["12 chemin des Flamboyants"], "city": "Lamentin", "postalCode": "97129"}
        ],
        "generalPractitioner": [{"identifier": {"system": RPPS_SYSTEM, "value": GP}}],
    }


def diabetic_facts() -> PatientFacts:
    facts = PatientFacts.empty(PATIENT)
    for item in (
        event("gp-patient", patient_resource(GP_SYSTEM, "GP1-000042"), days_ago=300),
        event("hosp-patient", patient_resource(HOSPITAL_SYSTEM, "970000042"), days_ago=200, source="chu"),
        event(
            "dt2",
            {
                "resourceType": "Condition",
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "code": {"coding": [{"system": ICD10, "code": "E11.9", "display": "Diabète de type 2"}]},
            },
            days_ago=250,
        ),
        event(
            "hba1c",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "effectiveDateTime": utc_iso(NOW - timedelta(days=20)),
                "valueQuantity": {"value": 9.3, "unit": "%", "code": "%"},
            },
            days_ago=20,
        ),
    ):
        facts = apply_event(facts, item)
    return facts


def network(name: str) -> Network:
    found = NETWORKS.get(name)
    assert found is not None
    return found


def alert_for(finding: Finding, *, practitioner: str = GP, net: Network | None = None) -> dict[str, Any]:
    return build_alert(
        practitioner=practitioner,
        patient_id=PATIENT,
        patient_identifiers=diabetic_facts().identifiers_in([GP_SYSTEM]),
        network=net or network(finding.network_id),
        finding=finding,
        created_at=NOW,
    )


def eligible() -> Finding:
    finding = evaluate(network("diabete-guadeloupe"), diabetic_facts(), now=NOW)
    assert finding is not None and finding.status == "eligible"
    return finding


def enrolled() -> Finding:
    return Finding("onco-guadeloupe", "enrolled", (Reason("Followed by the network", (event_id("ep"),)),))


def test_alert_id_is_deterministic() -> None:
    """The same GP, patient, network and status always give the same alert id, in every field of the alert."""
    first, second = alert_for(eligible()), alert_for(eligible())
    assert first == second
    assert (
        first["alert_id"]
        == first["card"]["uuid"]
        == alert_id_for(GP, PATIENT, "diabete-guadeloupe", "eligible")
    )
    assert uuid.UUID(first["alert_id"]).version == 5


def test_alert_id_differs_by_status_practitioner_patient_and_network() -> None:
    """A change of status is a new alert; so is another GP, patient or network."""
    ids = {
        alert_id_for(GP, PATIENT, "diabete-guadeloupe", "eligible"),
        alert_id_for(GP, PATIENT, "diabete-guadeloupe", "enrolled"),
        alert_id_for(OTHER_GP, PATIENT, "diabete-guadeloupe", "eligible"),
        alert_id_for(GP, "pt-" + "d" * 24, "diabete-guadeloupe", "eligible"),
        alert_id_for(GP, PATIENT, "onco-guadeloupe", "eligible"),
    }
    assert len(ids) == 5


@pytest.mark.parametrize("make", [eligible, enrolled], ids=["eligible", "enrolled"])
def test_alert_and_card_validate_against_the_schema(make: Any) -> None:
    """Alerts of both statuses, card included, validate against alert.schema.json."""
    alert = alert_for(make())
    assert schema_errors("alert.schema.json", alert) == []
    assert alert["card"]["indicator"] == "info"
    assert alert["created_at"] == "2025-06-15T12:00:00.000Z"


def test_the_alert_carries_the_finding() -> None:
    """Network, status and reasons (criteria in words, event ids) come from the finding."""
    alert = alert_for(eligible())
    assert alert["network"] == {
        "id": "diabete-guadeloupe",
        "name": "Réseau diabète Guadeloupe",
        "kind": "thematic",
    }
    assert alert["status"] == "eligible"
    assert alert["reasons"] == [
        {"criterion": "Diabetes mellitus (ICD-10 E10-E14)", "event_ids": [event_id("dt2")]},
        {"criterion": "HbA1c above 8 % in the last 6 months", "event_ids": [event_id("hba1c")]},
        # The hospital's later Patient gives the same address: the first event that gave it is cited.
        {"criterion": "Lives in département 971", "event_ids": [event_id("gp-patient")]},
    ]


def test_no_patient_name_or_demographics_in_the_alert() -> None:
    """The alert names the patient by network id and by the GP's own identifiers only: no name, phone,
    birth date, address, INS, or another source's identifier, anywhere (card included)."""
    text = json.dumps(alert_for(eligible()), ensure_ascii=False)
    for leaked in (
        "Bélizaire", "Josiane", "39 98", "1947", "Flamboyants", "Lamentin", "97129", "250069712012345",
        "970000042", HOSPITAL_SYSTEM, "IPP", "assigner", "E11.9", "Diabète de type 2",
    ):  # fmt: skip
        assert leaked not in text, leaked
    alert = alert_for(eligible())
    assert alert["patient"] == {
        "patient_id": PATIENT,
        "identifiers": [{"system": GP_SYSTEM, "value": "GP1-000042"}],
    }


def test_the_card_for_an_eligible_patient() -> None:
    """Summary under 140 characters, source is the network, detail lists the reasons, link to the team."""
    card = alert_for(eligible())["card"]
    assert card["summary"] == "Eligible for Réseau diabète Guadeloupe"
    assert card["source"]["label"] == "Réseau diabète Guadeloupe"
    assert card["source"]["url"] == "https://diabete-guadeloupe.example.org/adresser-un-patient"
    assert "- HbA1c above 8 % in the last 6 months" in card["detail"]
    assert "Cellule de coordination du réseau diabète" in card["detail"]
    assert card["links"] == [
        {
            "label": "Contact the coordination team",
            "url": "https://diabete-guadeloupe.example.org/adresser-un-patient",
            "type": "absolute",
        }
    ]


def test_the_card_for_an_enrolled_patient() -> None:
    """An enrolled patient's card says who follows them, without listing criteria."""
    card = alert_for(enrolled())["card"]
    assert card["summary"] == "Followed by Réseau régional de cancérologie de Guadeloupe"
    assert "followed by **Réseau régional de cancérologie de Guadeloupe**" in card["detail"]
    assert "- " not in card["detail"]


def test_a_long_name_keeps_the_summary_under_140_characters() -> None:
    """CDS Hooks summaries are shorter than 140 characters: a long name is cut with an ellipsis."""
    long = replace(network("diabete-guadeloupe"), name="Réseau " + "très " * 40 + "long")
    card = alert_for(eligible(), net=long)["card"]
    assert len(card["summary"]) == 139 and card["summary"].endswith("…")
    assert schema_errors("alert.schema.json", alert_for(eligible(), net=long)) == []


def test_configured_text_cannot_become_markup() -> None:
    """A label or name with markdown or HTML is shown literally in the card's detail."""
    finding = Finding("diabete-guadeloupe", "eligible", (Reason("<img src=x> *bold* [link](http://x)", ()),))
    detail = alert_for(finding)["card"]["detail"]
    assert "\\<img src=x\\> \\*bold\\* \\[link\\](http://x)" in detail
    assert re.search(r"(?<!\\)[<>*\[]", detail.replace("**", "")) is None


def test_the_link_falls_back_to_email_then_phone() -> None:
    """Without a url the link is mailto:, then tel:; without any contact there is no link."""
    base = network("diabete-guadeloupe")
    phone, email = Telecom("phone", "+33 1 99 00 10 01"), Telecom("email", "team@example.org")
    by_email = replace(base, coordination_team=CoordinationTeam("Team", (phone, email)))
    by_phone = replace(base, coordination_team=CoordinationTeam("Team", (phone,)))
    silent = replace(base, coordination_team=CoordinationTeam("Team"))
    assert alert_for(eligible(), net=by_email)["card"]["links"][0]["url"] == "mailto:team@example.org"
    assert alert_for(eligible(), net=by_phone)["card"]["links"][0]["url"] == "tel:+33199001001"
    card = alert_for(eligible(), net=silent)["card"]
    assert "links" not in card and "url" not in card["source"]
    for net in (by_email, by_phone, silent):
        assert schema_errors("alert.schema.json", alert_for(eligible(), net=net)) == []


def test_a_finding_of_another_network_or_a_naive_instant_is_a_bug() -> None:
    """Building an alert with a finding of another network, or at a naive instant, raises."""
    with pytest.raises(ValueError, match="onco-guadeloupe"):
        alert_for(enrolled(), net=network("diabete-guadeloupe"))
    with pytest.raises(ValueError, match="timezone-aware"):
        build_alert(
            practitioner=GP,
            patient_id=PATIENT,
            patient_identifiers=[],
            network=network("diabete-guadeloupe"),
            finding=eligible(),
            created_at=NOW.replace(tzinfo=None),
        )


def test_the_schema_refuses_an_alert_with_extra_patient_data() -> None:
    """The schema itself keeps names out: an extra field in patient is refused."""
    alert = alert_for(eligible())
    alert["patient"]["name"] = "Josiane Bélizaire"
    assert any(error.startswith("patient:") for error in schema_errors("alert.schema.json", alert))
