"""The alert gateway over real HTTP (aiohttp's TestServer on a free port), fed through its store instead
of Kafka: CDS Hooks discovery and patient-view, tokens, read/dismiss, the SSE stream, restarts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application

from hub.gateway.app import create_app
from hub.gateway.consumer import AlertConsumer
from hub.gateway.store import AlertState, AlertStore
from hub.gateway.tokens import TokenStore

GP_A = "10009900014"
GP_B = "10009900022"
LOCAL_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.9999"
SERVICE = "/cds-services/hub-network-alerts"
T = TypeVar("T")


def make_alert(
    alert_id: str,
    *,
    practitioner: str = GP_A,
    patient_id: str = "np-7c1f0e",
    local_id: str = "IPP-1",
    status: str = "eligible",
) -> dict[str, Any]:
    """An oncology-network alert as the eligibility stage publishes it on hub.alerts.v1."""
    return {
        "alert_id": alert_id,
        "practitioner": practitioner,
        "patient": {"patient_id": patient_id, "identifiers": [{"system": LOCAL_SYSTEM, "value": local_id}]},
        "network": {"id": "onco-guadeloupe", "name": "Réseau d'oncologie de Guadeloupe", "kind": "thematic"},
        "status": status,
        "reasons": [{"criterion": "condition: ICD-10 C00-C97", "event_ids": ["ev-3f9a2c"]}],
        "created_at": "2025-03-30T12:15:00Z",
        "card": {
            "uuid": f"card-{alert_id}",
            "summary": "Eligible for the Réseau d'oncologie de Guadeloupe",
            "indicator": "info",
            "source": {"label": "Réseau d'oncologie de Guadeloupe", "url": "https://onco.example/"},
            "detail": "A cancer diagnosis (ICD-10 C50.9) was recorded at discharge on 2025-03-30.",
            "links": [
                {
                    "label": "Contact the coordination team",
                    "url": "https://onco.example/coordination",
                    "type": "absolute",
                }
            ],
        },
    }


class Gateway:
    """A state file, a token file with one token per GP, and apps built over them."""

    def __init__(self, folder: Path) -> None:
        self.state_path = folder / "alerts.sqlite3"
        self.tokens = TokenStore(folder / "gp-tokens.json")
        self.token_a = self.tokens.issue(GP_A)
        self.token_b = self.tokens.issue(GP_B)
        self.store = AlertStore(self.state_path)

    def app(self, *, heartbeat_seconds: float = 15.0) -> Application:
        """A gateway app on the current store (no Kafka consumer)."""
        return create_app(self.store, self.tokens, heartbeat_seconds=heartbeat_seconds)

    def restart(self) -> None:
        """Close the store and open the same file again, as a restarted gateway process would."""
        self.store.close()
        self.store = AlertStore(self.state_path)


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    """A gateway's files, with a token for GP A and for GP B."""
    return Gateway(tmp_path)


def auth(token: str) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {token}"}


def patient_view(patient_id: str | None, user: str | None = f"Practitioner/{GP_A}") -> dict[str, Any]:
    """A CDS Hooks patient-view request as GP software sends it."""
    context: dict[str, Any] = {}
    if user is not None:
        context["userId"] = user
    if patient_id is not None:
        context["patientId"] = patient_id
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": context,
    }


def run(app: Application, scenario: Callable[[TestClient[Any, Any]], Awaitable[T]]) -> T:
    """Serve ``app`` on a free loopback port for the length of ``scenario(client)``."""

    async def main() -> T:
        async with TestClient(TestServer(app)) as client:
            return await scenario(client)

    return asyncio.run(main())


async def next_event(response: ClientResponse, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
    """The next Server-Sent Event (comments skipped): its event name and its JSON data."""
    name, data = "message", ""
    while True:
        line = (await asyncio.wait_for(response.content.readline(), timeout)).decode().rstrip("\r\n")
        if not line:
            if data:
                return name, json.loads(data)
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data += value


def test_discovery_lists_the_patient_view_service(gateway: Gateway) -> None:
    """GET /cds-services: one service, hub-network-alerts, on patient-view, with no prefetch."""

    async def scenario(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
        response = await client.get("/cds-services")
        return response.status, await response.json()

    status, body = run(gateway.app(), scenario)
    assert status == 200
    [service] = body["services"]
    assert service["id"] == "hub-network-alerts"
    assert service["hook"] == "patient-view"
    assert service["title"] and service["description"]
    assert "prefetch" not in service


def test_patient_view_returns_this_gps_cards_for_this_patient(gateway: Gateway) -> None:
    """The token's GP gets its cards for the patient (by hub id or local id), not other GPs' or patients'."""
    gateway.store.add(make_alert("a-onco"))
    gateway.store.add(make_alert("a-other-patient", patient_id="np-99aa00", local_id="IPP-2"))
    gateway.store.add(make_alert("b-onco", practitioner=GP_B))

    async def scenario(client: TestClient[Any, Any]) -> list[list[dict[str, Any]]]:
        found = []
        for patient, user, token in [
            ("IPP-1", f"Practitioner/{GP_A}", gateway.token_a),
            ("np-7c1f0e", None, gateway.token_a),
            ("IPP-3", f"Practitioner/{GP_A}", gateway.token_a),
            ("IPP-1", f"Practitioner/{GP_B}", gateway.token_b),
        ]:
            response = await client.post(SERVICE, json=patient_view(patient, user), headers=auth(token))
            assert response.status == 200
            assert response.content_type == "application/json"
            found.append((await response.json())["cards"])
        return found

    by_local_id, by_hub_id, unknown_patient, other_gp = run(gateway.app(), scenario)
    assert [c["uuid"] for c in by_local_id] == ["card-a-onco"]
    assert by_hub_id == by_local_id
    assert unknown_patient == []
    assert [c["uuid"] for c in other_gp] == ["card-b-onco"]
    [card] = by_local_id
    assert card["summary"] == "Eligible for the Réseau d'oncologie de Guadeloupe"
    assert card["indicator"] == "info"
    assert card["source"]["label"] == "Réseau d'oncologie de Guadeloupe"
    assert card["links"][0]["url"] == "https://onco.example/coordination"
    assert card["extension"]["hub-alert-id"] == "a-onco"
    assert card["extension"]["hub-alert-state"] == "new"


def test_patient_view_without_patient_context_is_a_400_without_a_trace(gateway: Gateway) -> None:
    """No context.patientId → 400 missing_patient_context with a plain message; never a stack trace."""

    async def scenario(client: TestClient[Any, Any]) -> list[tuple[int, str]]:
        answers = []
        for body in (patient_view(None), {"hook": "patient-view"}, patient_view("   ")):
            response = await client.post(SERVICE, json=body, headers=auth(gateway.token_a))
            answers.append((response.status, await response.text()))
        return answers

    for status, text in run(gateway.app(), scenario):
        assert status == 400
        body = json.loads(text)
        assert body["error"] == "missing_patient_context"
        assert "context.patientId" in body["message"]
        assert "Traceback" not in text
        assert 'File "' not in text


def test_a_request_that_is_not_a_cds_hooks_request_is_a_400(gateway: Gateway) -> None:
    """A body that is not JSON, not an object, or for another hook gets a 400 with its own code."""

    async def scenario(client: TestClient[Any, Any]) -> list[tuple[int, str]]:
        answers = []
        for data in (
            b"{not json",
            b"[1, 2]",
            json.dumps({"hook": "order-sign", "context": {"patientId": "x"}}),
        ):
            response = await client.post(SERVICE, data=data, headers=auth(gateway.token_a))
            answers.append((response.status, (await response.json())["error"]))
        return answers

    assert run(gateway.app(), scenario) == [
        (400, "invalid_request"),
        (400, "invalid_request"),
        (400, "unsupported_hook"),
    ]


def test_no_token_or_a_wrong_token_is_a_401(gateway: Gateway) -> None:
    """Without a token, with an unknown or revoked one: 401 JSON on every GP endpoint, and no alert."""
    gateway.store.add(make_alert("a-onco"))
    gateway.tokens.issue("10009900030")
    revoked = gateway.tokens.issue("10009900048")
    gateway.tokens.revoke("10009900048")
    wrong = [{}, auth("hubgp_not-a-token"), auth(revoked), {"Authorization": gateway.token_a}]

    async def scenario(client: TestClient[Any, Any]) -> list[tuple[int, dict[str, Any], str | None]]:
        answers = []
        for headers in wrong:
            for method, path in [
                ("POST", SERVICE),
                ("GET", "/alerts/stream"),
                ("GET", "/alerts"),
                ("GET", "/alerts/patients"),
                ("POST", "/alerts/a-onco/read"),
                ("POST", "/alerts/a-onco/dismiss"),
            ]:
                body = patient_view("IPP-1") if path == SERVICE else None
                response = await client.request(method, path, json=body, headers=headers)
                answers.append(
                    (response.status, await response.json(), response.headers.get("WWW-Authenticate"))
                )
        response = await client.get("/alerts/stream?token=hubgp_not-a-token")
        answers.append((response.status, await response.json(), response.headers.get("WWW-Authenticate")))
        return answers

    answers = run(gateway.app(), scenario)
    assert len(answers) == 25
    for status, body, challenge in answers:
        assert status == 401
        assert body["error"] == "unauthorized"
        assert body["message"]
        assert challenge == 'Bearer realm="hub-gateway"'
    stored = gateway.store.get("a-onco")
    assert stored is not None and stored.state is AlertState.NEW


def test_a_user_id_naming_another_practitioner_is_a_403(gateway: Gateway) -> None:
    """context.userId must be the token's practitioner: GP B's token cannot ask as GP A."""
    gateway.store.add(make_alert("a-onco"))

    async def scenario(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
        response = await client.post(
            SERVICE, json=patient_view("IPP-1", f"Practitioner/{GP_A}"), headers=auth(gateway.token_b)
        )
        return response.status, await response.json()

    status, body = run(gateway.app(), scenario)
    assert status == 403
    assert body["error"] == "forbidden"
    assert "cards" not in body


def test_another_gp_cannot_read_or_dismiss_someone_elses_alert(gateway: Gateway) -> None:
    """GP B gets 404 for GP A's alert (as for an unknown one), and the alert stays as it was."""
    gateway.store.add(make_alert("a-onco"))

    async def scenario(client: TestClient[Any, Any]) -> list[tuple[int, dict[str, Any]]]:
        answers = []
        for path in ("/alerts/a-onco/read", "/alerts/a-onco/dismiss", "/alerts/no-such-alert/dismiss"):
            response = await client.post(path, headers=auth(gateway.token_b))
            answers.append((response.status, await response.json()))
        return answers

    for status, body in run(gateway.app(), scenario):
        assert status == 404
        assert body["error"] == "not_found"
    stored = gateway.store.get("a-onco")
    assert stored is not None and stored.state is AlertState.NEW


def test_read_then_dismiss_return_the_new_state(gateway: Gateway) -> None:
    """The GP's own read and dismiss answer 200 with the alert's new state; dismissed cards are gone."""
    gateway.store.add(make_alert("a-onco"))

    async def scenario(client: TestClient[Any, Any]) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
        read = await client.post("/alerts/a-onco/read", headers=auth(gateway.token_a))
        assert read.status == 200
        dismissed = await client.post("/alerts/a-onco/dismiss", headers=auth(gateway.token_a))
        assert dismissed.status == 200
        cards = await client.post(SERVICE, json=patient_view("IPP-1"), headers=auth(gateway.token_a))
        return await read.json(), await dismissed.json(), (await cards.json())["cards"]

    read, dismissed, cards = run(gateway.app(), scenario)
    assert (read["alert_id"], read["state"], read["dismissed_at"]) == ("a-onco", "read", None)
    assert read["read_at"].endswith("Z")
    assert dismissed["state"] == "dismissed"
    assert dismissed["dismissed_at"].endswith("Z")
    assert cards == []


def test_sse_stream_sends_unread_alerts_then_one_added_after_connect(gateway: Gateway) -> None:
    """Unread alerts first, then new alerts and state changes live, heartbeats between; no other GP's."""
    gateway.store.add(make_alert("a-waiting"))
    gateway.store.add(make_alert("a-seen", patient_id="np-99aa00", local_id="IPP-2"))
    gateway.store.mark_read("a-seen", GP_A)

    async def scenario(client: TestClient[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
        response = await client.get(f"/alerts/stream?token={gateway.token_a}")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [await next_event(response)]
        gateway.store.add(make_alert("b-other-gp", practitioner=GP_B))
        gateway.store.add(make_alert("a-live", patient_id="np-5e5e5e", local_id="IPP-5"))
        events.append(await next_event(response))
        heartbeat = (await asyncio.wait_for(response.content.readline(), 5)).decode()
        gateway.store.dismiss("a-live", GP_A)
        events.append(await next_event(response))
        response.close()
        assert heartbeat == ": heartbeat\n"
        return events

    events = run(gateway.app(heartbeat_seconds=0.2), scenario)
    assert [(name, data["alert_id"], data["state"]) for name, data in events] == [
        ("alert", "a-waiting", "new"),
        ("alert", "a-live", "new"),
        ("state", "a-live", "dismissed"),
    ]
    assert events[1][1]["alert"]["card"]["summary"] == "Eligible for the Réseau d'oncologie de Guadeloupe"


def test_sse_stream_accepts_the_authorization_header(gateway: Gateway) -> None:
    """GP software that can set headers authenticates the stream like every other endpoint."""
    gateway.store.add(make_alert("a-waiting"))

    async def scenario(client: TestClient[Any, Any]) -> tuple[str, dict[str, Any]]:
        response = await client.get("/alerts/stream", headers=auth(gateway.token_a))
        event = await next_event(response)
        response.close()
        return event

    name, data = run(gateway.app(), scenario)
    assert (name, data["alert_id"]) == ("alert", "a-waiting")


def test_a_dismissed_alert_stays_gone_after_a_restart(gateway: Gateway) -> None:
    """Dismiss, restart (a new store and app on the same file), redeliver the alert: no card, no push."""
    gateway.store.add(make_alert("a-onco"))

    async def dismiss(client: TestClient[Any, Any]) -> int:
        return (await client.post("/alerts/a-onco/dismiss", headers=auth(gateway.token_a))).status

    assert run(gateway.app(), dismiss) == 200
    gateway.restart()
    assert gateway.store.add(make_alert("a-onco")).created is False

    async def after(client: TestClient[Any, Any]) -> tuple[list[Any], list[Any]]:
        cards = await client.post(SERVICE, json=patient_view("IPP-1"), headers=auth(gateway.token_a))
        listed = await client.get("/alerts", headers=auth(gateway.token_a))
        return (await cards.json())["cards"], (await listed.json())["alerts"]

    assert run(gateway.app(), after) == ([], [])


def test_patients_and_alerts_lists_are_the_gps_own(gateway: Gateway) -> None:
    """GET /alerts/patients and /alerts?patient= (used by the demo page) list the GP's own alerts."""
    gateway.store.add(make_alert("a-onco"))
    gateway.store.add(make_alert("a-diab", local_id="IPP-1"))
    gateway.store.add(make_alert("b-onco", practitioner=GP_B, patient_id="np-b", local_id="IPP-B"))
    gateway.store.mark_read("a-diab", GP_A)

    async def scenario(client: TestClient[Any, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        patients = await client.get("/alerts/patients", headers=auth(gateway.token_a))
        alerts = await client.get("/alerts", params={"patient": "IPP-1"}, headers=auth(gateway.token_a))
        return await patients.json(), await alerts.json()

    patients, alerts = run(gateway.app(), scenario)
    assert patients["practitioner"] == GP_A
    assert [(p["patient_id"], p["alerts"], p["unread"]) for p in patients["patients"]] == [
        ("np-7c1f0e", 2, 1)
    ]
    assert [(a["alert_id"], a["state"]) for a in alerts["alerts"]] == [("a-onco", "new"), ("a-diab", "read")]


def _shape(value: Any) -> Any:
    """A JSON value's structure: keys and types, the first item standing for a list."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_the_documented_patients_list_has_the_shape_the_gateway_answers(gateway: Gateway) -> None:
    """docs/GP_INTEGRATION.md's example of GET /alerts/patients: same keys, and counts are numbers."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "GP_INTEGRATION.md").read_text("utf-8")
    section = doc.split("- `GET /alerts/patients`", 1)[1]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    gateway.store.add(make_alert("a-onco"))
    gateway.store.add(make_alert("a-diab"))

    async def scenario(client: TestClient[Any, Any]) -> Any:
        return await (await client.get("/alerts/patients", headers=auth(gateway.token_a))).json()

    answered = run(gateway.app(), scenario)
    assert _shape(answered) == _shape(example)
    assert answered["patients"][0]["alerts"] == 2


def test_an_unexpected_error_is_a_500_json_with_a_request_id(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug becomes {"error": "internal_error", "request_id"} without the exception's text or a trace."""

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("patient IPP-1 has C50.9")

    monkeypatch.setattr(gateway.store, "alerts", broken)

    async def scenario(client: TestClient[Any, Any]) -> tuple[int, str, str | None]:
        response = await client.post(SERVICE, json=patient_view("IPP-1"), headers=auth(gateway.token_a))
        return response.status, await response.text(), response.headers.get("X-Request-Id")

    status, text, request_id = run(gateway.app(), scenario)
    assert status == 500
    body = json.loads(text)
    assert body["error"] == "internal_error"
    assert body["request_id"] == request_id
    for leak in ("C50.9", "IPP-1", "RuntimeError", "Traceback"):
        assert leak not in text


def test_unknown_paths_and_methods_answer_json(gateway: Gateway) -> None:
    """A 404 or 405 from the router is JSON too, like every other answer."""

    async def scenario(client: TestClient[Any, Any]) -> list[tuple[int, str]]:
        missing = await client.get("/no-such-page")
        wrong_method = await client.get(f"/alerts/a-onco/dismiss?token={gateway.token_a}")
        return [
            (missing.status, (await missing.json())["error"]),
            (wrong_method.status, (await wrong_method.json())["error"]),
        ]

    assert run(gateway.app(), scenario) == [(404, "not_found"), (405, "method_not_allowed")]


def test_the_demo_page_and_health_are_served(gateway: Gateway) -> None:
    """GET / is the demo page (stable ids, strict CSP) with its script and style; /healthz counts nothing."""

    async def scenario(client: TestClient[Any, Any]) -> tuple[str, str, int, int, dict[str, Any]]:
        page = await client.get("/")
        script = await client.get("/static/gp.js")
        style = await client.get("/static/gp.css")
        health = await client.get("/healthz")
        return (
            await page.text(),
            page.headers["Content-Security-Policy"],
            script.status,
            style.status,
            await health.json(),
        )

    html, policy, script, style, health = run(gateway.app(), scenario)
    for marker in (
        'id="alert-popup"',
        'role="dialog"',
        'id="alert-read"',
        'id="alert-dismiss"',
        'id="login-form"',
    ):
        assert marker in html
    assert "script-src 'self'" in policy
    assert (script, style) == (200, 200)
    assert health == {"status": "ok", "consumer": "disabled"}


def test_the_consumer_stores_alerts_and_skips_unreadable_records(gateway: Gateway) -> None:
    """Each record of hub.alerts.v1 goes to the store; one that is not an alert is counted and skipped."""
    consumer = AlertConsumer(gateway.store, bootstrap_servers="unused:9092", topic="hub.alerts.v1", group="g")
    records = [
        json.dumps(make_alert("a-onco")).encode(),
        b"\xff not json",
        b"[]",
        json.dumps({"alert_id": "no-card", "practitioner": GP_A, "patient": {"patient_id": "p"}}).encode(),
        None,
        json.dumps(make_alert("a-onco")).encode(),
    ]
    handled = [consumer.handle("hub.alerts.v1", 0, offset, value) for offset, value in enumerate(records)]
    assert handled == [True, False, False, False, False, True]
    assert (consumer.stored, consumer.skipped) == (2, 4)
    assert [a.alert_id for a in gateway.store.alerts(GP_A)] == ["a-onco"]
