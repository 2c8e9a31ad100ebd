"""Issue 5 end to end in a real browser: a GP sees the network pop-up appear live, and nothing else."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from hub.pathway.network_id import PatientKey
from tests.integration.conftest import PROJECT_ROOT, RPPS, HubEnv
from tests.integration.test_share_stage import publish

GP_RPPS = "10009900019"  # gp-dr-x in tests/integration/conftest.py
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"
SCREENSHOTS = PROJECT_ROOT / "test-output" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]  # fmt: skip


def network_id(ins: str) -> str:
    """The network patient id the hub gives a qualified test INS (the test worker's key)."""
    return PatientKey("ins", INS_SYSTEM, ins).network_id(b"integration-test-pseudonym-key")


def registration(local_id: str, ins: str, gp_rpps: str) -> dict[str, Any]:
    """A GP practice registers its patient: qualified INS, home in Pointe-à-Pitre, declared GP."""
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:hub:test:gp:patient", "value": local_id},
            {"system": INS_SYSTEM, "value": ins},
        ],
        "extension": [
            {
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
                "extension": [
                    {
                        "url": "identityReliability",
                        "valueCoding": {
                            "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
                            "code": "VALI",
                        },
                    }
                ],
            }
        ],
        "birthDate": "1961-03-02",
        "address": [{"use": "home", "postalCode": "97110", "country": "FR"}],
        "generalPractitioner": [{"identifier": {"system": RPPS, "value": gp_rpps}}],
    }


def discharge_with_cancer(patient: dict[str, Any]) -> dict[str, Any]:
    """A discharge with a breast cancer diagnosis naming the patient by INS, beside the Patient as
    registered (it qualifies the INS: an INS alone in a reference links nothing; the same Patient is
    the same fact, published once)."""
    [ins] = [i["value"] for i in patient["identifier"] if i["system"] == INS_SYSTEM]
    subject = {"identifier": {"system": INS_SYSTEM, "value": ins}}
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": patient},
            {
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                    "subject": subject,
                    "period": {"start": "2026-11-18T09:00:00-04:00", "end": "2026-11-21T16:00:00-04:00"},
                }
            },
            {
                "resource": {
                    "resourceType": "Condition",
                    "clinicalStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "code": "active",
                            }
                        ]
                    },
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C50.9"}]},
                    "subject": subject,
                    "recordedDate": "2026-11-21",
                }
            },
        ],
    }


class Gateway:
    """`hub gateway serve` as a process, on a free port, with its state under the test's folder."""

    def __init__(self, env: HubEnv) -> None:
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hub", "gateway", "serve", "--port", "0"],
            env=os.environ | self.env.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            found = re.search(r"Alert gateway on (http://\S+/)", line)
            if found:
                self.url = found.group(1)
                return
        raise AssertionError("the gateway did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def patient_view(self, token: str, patient_id: str) -> dict[str, Any]:
        body = json.dumps(
            {
                "hook": "patient-view",
                "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
                "context": {"userId": f"Practitioner/{GP_RPPS}", "patientId": patient_id},
            }
        ).encode()
        request = urllib.request.Request(  # noqa: S310 - our own gateway on loopback
            self.url + "cds-services/hub-network-alerts",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            result: dict[str, Any] = json.load(response)
            return result


@pytest.fixture
def gateway_env(hub_env: HubEnv) -> HubEnv:
    hub_env.environ["HUB_GATEWAY_STATE_FILE"] = str(hub_env.work_dir / "gateway" / "alerts.sqlite3")
    hub_env.environ["HUB_GATEWAY_TOKENS_FILE"] = str(hub_env.work_dir / "gateway" / "gp-tokens.json")
    return hub_env


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(reduced_motion="reduce", viewport={"width": 1200, "height": 800})
        yield context.new_page()
        browser.close()


def test_the_gp_sees_the_network_popup_live_and_nothing_about_a_patient_it_may_not_see(
    gateway_env: HubEnv, worker: subprocess.Popen[bytes], page: Page
) -> None:
    """Discharge with cancer for the GP's patient → pop-up within seconds; dismissed, it stays dismissed
    after a gateway restart. Another doctor's patient with the same diagnosis → no pop-up."""
    env = gateway_env
    issued = env.cli("gateway", "token", "issue", GP_RPPS)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip().splitlines()[-1]
    mine, theirs = "285039712300136", "185069712300142"
    publish(env, registration("GP-701", mine, GP_RPPS), "reg-mine")
    publish(env, registration("GP-702", theirs, "10009900027"), "reg-theirs")
    assert len(env.collect(env.topics.receipts, 2)) == 2

    gateway = Gateway(env)
    gateway.start()
    try:
        page.goto(gateway.url)
        page.fill("#login-rpps", GP_RPPS)
        page.fill("#login-token", token)
        page.click("#login-submit")
        expect(page.locator("#stream-status")).to_have_attribute("data-state", "live", timeout=20_000)

        # Another doctor's patient: the GP is outside the care team, sees nothing, gets no pop-up.
        page.fill("#patient-id", network_id(theirs))
        page.click("#patient-open")
        publish(env, discharge_with_cancer(registration("GP-702", theirs, "10009900027")), "discharge-theirs")
        assert len(env.collect(env.topics.receipts, 3)) == 3
        time.sleep(6)
        expect(page.locator("#alert-popup")).to_be_hidden()

        # The GP's own patient: the pop-up appears while the record is open.
        page.fill("#patient-id", network_id(mine))
        page.click("#patient-open")
        started = time.monotonic()
        publish(env, discharge_with_cancer(registration("GP-701", mine, GP_RPPS)), "discharge-mine")
        popup = page.locator("#alert-popup")
        expect(popup).to_be_visible(timeout=30_000)
        print(f"pop-up after {time.monotonic() - started:.1f} s")
        expect(popup).to_contain_text("cancérologie")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "gp-popup.png"))
        # "Mark as read" would keep the alert listed; "Dismiss" silences it for good.
        page.click("#alert-dismiss")
        expect(popup).to_be_hidden(timeout=10_000)
        assert gateway.patient_view(token, network_id(mine))["cards"] == []
    finally:
        gateway.stop()

    # A dismissed alert stays quiet after a restart; the other patient never had one.
    gateway.start()
    try:
        assert gateway.patient_view(token, network_id(mine))["cards"] == []
        assert gateway.patient_view(token, network_id(theirs))["cards"] == []
    finally:
        gateway.stop()
    assert Path(SCREENSHOTS / "gp-popup.png").stat().st_size > 0
