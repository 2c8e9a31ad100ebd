"""Issue 5 on a real broker: GP alerts from what the GP may see, once per situation."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import pytest

from hub.schemas import schema_errors

from .conftest import PROJECT_ROOT, RPPS, HubEnv
from .test_share_stage import publish

GP_RPPS = "10009900019"  # gp-dr-x's practitioner in tests/integration/conftest.py


@pytest.fixture
def with_hiv_network(hub_env: HubEnv) -> None:
    """The shipped networks, plus a test network whose only criterion is an HIV diagnosis (B20-B24)."""
    folder = hub_env.work_dir / "networks"
    shutil.copytree(PROJECT_ROOT / "config" / "networks", folder)
    network = json.loads((folder / "onco-guadeloupe.json").read_text())
    network.update(id="vih-guadeloupe", name="Réseau VIH (test)", description="Test network: HIV only.")
    network["criteria"] = {
        "condition": {"system": "http://hl7.org/fhir/sid/icd-10", "ranges": ["B20-B24"], "label": "HIV"}
    }
    network.pop("$schema", None)
    (folder / "vih-guadeloupe.json").write_text(json.dumps(network))
    hub_env.environ["HUB_NETWORKS_DIR"] = str(folder)


def patient_bundle(local_id: str, postal_code: str, *conditions: dict[str, Any]) -> dict[str, Any]:
    url = f"urn:uuid:5d0c0c0c-0000-4000-8000-{abs(hash(local_id)) % 10**12:012d}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": url,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:hub:test:gp:patient", "value": local_id}],
                    "birthDate": "1956-07-14",
                    "address": [{"use": "home", "postalCode": postal_code, "country": "FR"}],
                    "generalPractitioner": [{"identifier": {"system": RPPS, "value": GP_RPPS}}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            *(
                {
                    "resource": {**c, "subject": {"reference": url}},
                    "request": {"method": "POST", "url": "Condition"},
                }
                for c in conditions
            ),
        ],
    }


def condition(code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]},
        "recordedDate": "2026-11-20",
    }


def enrolment(local_id: str) -> dict[str, Any]:
    return {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "patient": {"reference": f"Patient/{local_id}"},
        "managingOrganization": {"identifier": {"system": "urn:hub:network", "value": "onco-guadeloupe"}},
        "period": {"start": "2026-11-21"},
    }


def alerts(env: HubEnv) -> list[dict[str, Any]]:
    return [r.json_value() for r in env.settle(env.topics.alerts, quiet=4.0)]


def test_alerts_follow_territory_enrolment_and_what_the_gp_may_see(
    hub_env: HubEnv, with_hiv_network: None, worker: subprocess.Popen[bytes]
) -> None:
    """In territory → one alert to the GP; out of territory → none; repeats → none; enrolled → an
    `enrolled` alert; an HIV diagnosis the GP may not see → no alert at all."""
    publish(hub_env, patient_bundle("GP-501", "97110", condition("C50.9")), "in-territory")
    publish(hub_env, patient_bundle("GP-502", "69003", condition("C34.9")), "out-of-territory")
    publish(hub_env, patient_bundle("GP-503", "97139", condition("B20")), "hiv")
    assert len(hub_env.collect(hub_env.topics.receipts, 3)) == 3
    publish(
        hub_env,
        {**condition("C50.9"), "recordedDate": "2026-11-21", "subject": {"reference": "Patient/GP-501"}},
        "again",
    )
    publish(hub_env, enrolment("GP-501"), "enrolled")
    assert len(hub_env.collect(hub_env.topics.receipts, 5)) == 5
    time.sleep(2)
    raised = alerts(hub_env)
    assert worker.poll() is None, "the worker died"
    for alert in raised:
        assert schema_errors("alert.schema.json", alert) == []
        assert alert["practitioner"] == GP_RPPS
    by_status = sorted((a["network"]["id"], a["status"]) for a in raised)
    # GP-501 (Pointe-à-Pitre, breast cancer): eligible once, then enrolled; the repeat diagnosis
    # raised nothing new; GP-502 lives in Lyon, out of the network's territory.
    assert by_status == [("onco-guadeloupe", "eligible"), ("onco-guadeloupe", "enrolled")]
    # The HIV diagnosis is sensitive: without consent covering it the GP never saw it, so the HIV
    # network, whose only criterion it is, raised nothing: not even the alert's existence leaks.
    assert not any(a["network"]["id"] == "vih-guadeloupe" for a in raised)
    patients = {a["patient"]["patient_id"] for a in raised}
    assert len(patients) == 1
    assert len({a["alert_id"] for a in raised}) == 2
