"""Issue 6 in a real browser: the operators' console draws live charts of a running hub, and no clinical
content ever reaches the page."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser.test_gp_popup import (
    CHROMIUM_ARGS,
    GP_RPPS,
    SCREENSHOTS,
    Gateway,
    discharge_with_cancer,
    network_id,
    registration,
)
from tests.integration.conftest import HubEnv
from tests.integration.test_ingest_stage import signed
from tests.integration.test_lag_and_table_sizes import ConsoleProcess, fetch, wait_for, watch_worker_metrics
from tests.integration.test_share_stage import publish

MINE, THEIRS = "285039712300136", "185069712300142"
#: What the hub's inputs say about patients: none of it may appear on the console.
CLINICAL = [MINE, THEIRS, network_id(MINE), network_id(THEIRS), "GP-801", "GP-802", "C50.9", "97110",
            "Zéphyrine", "1961-03-02", "mmol"]  # fmt: skip


@pytest.fixture
def console_env(hub_env: HubEnv) -> HubEnv:
    hub_env.environ["HUB_GATEWAY_STATE_FILE"] = str(hub_env.work_dir / "gateway" / "alerts.sqlite3")
    hub_env.environ["HUB_GATEWAY_TOKENS_FILE"] = str(hub_env.work_dir / "gateway" / "gp-tokens.json")
    watch_worker_metrics(hub_env)
    return hub_env


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(reduced_motion="reduce", viewport={"width": 1280, "height": 1000})
        yield context.new_page()
        browser.close()


def rejected_input(env: HubEnv) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """An unsigned observation with a patient's name and value in it: rejected, kept in the DLQ."""
    body = json.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "Zéphyrine glucose 7.3 mmol"},
            "subject": {"display": "Zéphyrine"},
        }
    ).encode()
    headers = [h for h in signed(env, "gp-test", body, "console-nosig") if h[0] != "hub-signature"]
    return b"console-nosig", body, headers


def gp_call(gateway: Gateway, token: str, method: str, path: str) -> Any:
    request = urllib.request.Request(  # noqa: S310 - our own gateway on loopback
        gateway.url + path.lstrip("/"), method=method, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return json.load(response)


def points(page: Page, selector: str) -> int:
    return int(page.locator(selector).get_attribute("data-points") or 0)


def test_the_console_charts_a_running_hub_without_clinical_content(
    console_env: HubEnv, worker: subprocess.Popen[bytes], page: Page
) -> None:
    """Real worker, gateway and traffic: throughput, receipts, DLQ codes and rejects, share decisions,
    alerts sent and read, table sizes and health all drawn with data; nothing clinical on the page."""
    env = console_env
    issued = env.cli("gateway", "token", "issue", GP_RPPS)
    assert issued.returncode == 0, issued.stderr
    gp_token = issued.stdout.strip().splitlines()[-1]
    gateway = Gateway(env)
    gateway.start()
    env.environ["HUB_CONSOLE_GATEWAY_URL"] = gateway.url + "metrics"
    try:
        with ConsoleProcess(env) as console:
            page.goto(console.url)
            expect(page.locator("#overall")).not_to_have_text("connecting…", timeout=20_000)

            # Traffic: two patients, a discharge that makes the GP's patient eligible, and a reject.
            publish(env, registration("GP-801", MINE, GP_RPPS), "c-reg-mine")
            publish(env, registration("GP-802", THEIRS, "10009900027"), "c-reg-theirs")
            env.send([rejected_input(env)])
            publish(env, discharge_with_cancer(registration("GP-801", MINE, GP_RPPS)), "c-discharge-mine")
            assert len(env.collect(env.topics.receipts, 4)) == 4

            # The GP's software reads the alert, as the pop-up's "mark as read" does.
            alerts = wait_for(
                lambda: json.dumps(gp_call(gateway, gp_token, "GET", "/alerts")),
                lambda text: bool(json.loads(text)["alerts"]),
            )
            alert_id = json.loads(alerts)["alerts"][0]["alert_id"]
            gp_call(gateway, gp_token, "POST", f"/alerts/{alert_id}/read")

            expect(page.locator("#overall")).to_have_attribute("data-state", "ok", timeout=30_000)
            for name in ("broker", "topics"):
                expect(page.locator(f'.tile[data-name="{name}"]')).to_have_attribute("data-ok", "true")
            expect(page.locator('.tile[data-name^="worker "]')).to_have_attribute("data-ok", "true")
            expect(page.locator('.tile[data-name^="gateway "]')).to_have_attribute("data-ok", "true")

            # Every chart has data drawn, not only a frame.
            deadline = time.monotonic() + 60
            charts = ("#chart-throughput", "#chart-receipts", "#chart-dlq", "#chart-share", "#chart-alerts",
                      "#chart-tables")  # fmt: skip
            while time.monotonic() < deadline and not all(points(page, c) > 0 for c in charts):
                time.sleep(0.5)
            assert {c: points(page, c) for c in charts if points(page, c) == 0} == {}
            assert page.locator("#chart-throughput path.line[data-series=ingest]").count() == 1
            assert (
                float(
                    page.locator('#chart-receipts rect[data-label="accepted"]').get_attribute("data-value")
                    or 0
                )
                >= 3
            )
            assert (
                float(
                    page.locator('#chart-receipts rect[data-label="rejected"]').get_attribute("data-value")
                    or 0
                )
                >= 1
            )
            expect(page.locator('#chart-dlq rect[data-label="signature.missing"]')).to_have_count(1)
            expect(page.locator('#chart-dlq-sources rect[data-label="gp-test"]')).to_have_count(1)
            expect(page.locator("#latest-rejects li").first).to_contain_text("signature.missing")
            expect(page.locator("#latest-rejects li").first).to_contain_text("gp-test")
            assert page.locator("#chart-share rect.permit").count() >= 1
            expect(page.locator('#chart-alerts rect[data-label="sent"]')).not_to_have_attribute(
                "data-value", "0"
            )
            expect(page.locator('#chart-alerts rect[data-label="read"]')).to_have_attribute("data-value", "1")
            expect(page.locator('#chart-tables rect[data-label="share-state"]')).not_to_have_attribute(
                "data-value", "0"
            )

            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "console.png"), full_page=True)

            shown = page.content() + page.inner_text("body") + fetch(console.url + "api/state")
            shown += fetch(console.url + "metrics")
            assert [text for text in CLINICAL if text in shown] == []
    finally:
        gateway.stop()
    assert (SCREENSHOTS / "console.png").stat().st_size > 10_000
