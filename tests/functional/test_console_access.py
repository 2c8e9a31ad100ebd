"""The console over real HTTP (aiohttp's TestServer): loopback is served, a remote client needs an operator
token; the gateway's alert metrics move when alerts arrive, are pushed, read and dismissed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub import metrics
from hub.console.app import Console, check_binding, create_app, is_loopback
from hub.console.broker import BrokerWatch
from hub.console.tokens import OperatorTokens
from hub.errors import ConfigError
from hub.gateway.app import create_app as create_gateway
from hub.gateway.store import AlertStore
from hub.gateway.tokens import TokenStore
from hub.topics import TopicNames
from tests.functional.test_gateway_http import GP_A, make_alert

T = TypeVar("T")
#: A documentation address (RFC 5737): what a client on another machine looks like to the console.
REMOTE = "203.0.113.9"


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def closed_port() -> int:
    """A loopback port nothing listens on: the console's broker is down in these tests."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def console(folder: Path) -> Console:
    return Console(
        watch=BrokerWatch(f"127.0.0.1:{closed_port()}", "hub", TopicNames(), ()),
        targets=[],
        tokens=OperatorTokens(folder / "operator-tokens.json"),
        refresh_seconds=1.0,
    )


def as_remote(app: web.Application) -> web.Application:
    """Make every request look as if it came from another machine, as a peer address would.

    ``BaseRequest.clone(remote=...)`` is aiohttp's way of setting the client address (what a
    proxy-aware middleware does); no test may send traffic to a real non-loopback address.
    """

    @web.middleware
    async def from_elsewhere(
        request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        return await handler(request.clone(remote=REMOTE))

    app.middlewares.insert(0, from_elsewhere)
    return app


async def statuses(app: web.Application, requests: list[tuple[str, str, dict[str, str]]]) -> list[int]:
    async with TestClient(TestServer(app)) as client:
        found = []
        for method, path, headers in requests:
            response = await client.request(method, path, headers=headers, allow_redirects=False)
            await response.read()
            found.append(response.status)
        return found


PATHS = ["/", "/api/state", "/metrics", "/healthz"]


def test_a_remote_request_without_a_valid_operator_token_is_refused(tmp_path: Path) -> None:
    """From another address: no token, an unknown token, a revoked token → 401 on every data path."""
    tokens = OperatorTokens(tmp_path / "operator-tokens.json")
    revoked = tokens.issue("bob")
    tokens.revoke("bob")
    tokens.issue("alice")
    for headers in (
        {},
        {"Authorization": "Bearer hubop_not-a-token"},
        {"Authorization": f"Bearer {revoked}"},
    ):
        app = as_remote(create_app(console(tmp_path), refresh=False))
        assert run(statuses(app, [("GET", path, headers) for path in PATHS])) == [401] * len(PATHS)


def test_a_remote_request_with_a_valid_token_is_served_and_a_login_sets_the_cookie(tmp_path: Path) -> None:
    """A valid bearer token opens every path; POST /login turns a valid token into an HttpOnly cookie."""
    token = OperatorTokens(tmp_path / "operator-tokens.json").issue("alice")
    app = as_remote(create_app(console(tmp_path), refresh=False))
    bearer = {"Authorization": f"Bearer {token}"}
    # /healthz answers 503: the broker of this test is down, which the console reports as degraded.
    assert run(statuses(app, [("GET", p, bearer) for p in PATHS])) == [200, 200, 200, 503]

    async def login() -> tuple[int, int, str, int]:
        async with TestClient(TestServer(as_remote(create_app(console(tmp_path), refresh=False)))) as client:
            refused = await client.post("/login", data={"token": "wrong"}, allow_redirects=False)
            accepted = await client.post("/login", data={"token": token}, allow_redirects=False)
            cookie = accepted.headers.get("Set-Cookie", "")
            page = await client.get("/api/state")
            return refused.status, accepted.status, cookie, page.status

    refused, accepted, cookie, after = run(login())
    assert (refused, accepted, after) == (401, 303, 200)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_loopback_is_served_without_a_token(tmp_path: Path) -> None:
    """On the console's own machine no token is asked (the default binding is loopback only)."""
    app = create_app(console(tmp_path), refresh=False)
    assert run(statuses(app, [("GET", p, {}) for p in PATHS[:3]])) == [200, 200, 200]


def test_binding_to_a_non_loopback_address_needs_an_operator_token(tmp_path: Path) -> None:
    """``0.0.0.0`` or a public address without any issued token is refused at start; loopback never is."""
    tokens = OperatorTokens(tmp_path / "operator-tokens.json")
    check_binding("127.0.0.1", tokens)
    check_binding("::1", tokens)
    for host in ("0.0.0.0", "203.0.113.9", "::"):  # noqa: S104 - addresses under test, nothing binds
        with pytest.raises(ConfigError, match="operator token"):
            check_binding(host, tokens)
    tokens.issue("alice")
    check_binding("0.0.0.0", tokens)  # noqa: S104 - checked, not bound
    assert is_loopback("localhost") and not is_loopback(None)


def test_tokens_are_stored_as_hashes_only(tmp_path: Path) -> None:
    """The file holds the SHA-256, never the token; verify names the operator."""
    tokens = OperatorTokens(tmp_path / "operator-tokens.json")
    token = tokens.issue("alice")
    assert token.startswith("hubop_") and token not in tokens.path.read_text()
    assert tokens.verify(token) == "alice" and tokens.verify(token + "x") is None
    assert tokens.path.stat().st_mode & 0o077 == 0


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_gateway_alert_metrics_move_when_alerts_arrive_are_pushed_read_and_dismissed(tmp_path: Path) -> None:
    """received on a new alert only, pushed per SSE delivery, read and dismissed once each; the state gauge
    counts the store."""
    tokens = TokenStore(tmp_path / "gp-tokens.json")
    token = tokens.issue(GP_A)
    store = AlertStore(tmp_path / "alerts.sqlite3")
    before = {change: value("hub_gateway_alert_changes_total", change=change)
              for change in ("received", "pushed", "read", "dismissed")}  # fmt: skip

    async def scenario() -> str:
        async with TestClient(TestServer(create_gateway(store, tokens, heartbeat_seconds=0.2))) as client:
            store.add(make_alert("a-1"))
            store.add(make_alert("a-1"))  # a redelivery is not a new alert
            store.add(make_alert("a-2"))
            stream = await client.get("/alerts/stream", headers={"Authorization": f"Bearer {token}"})
            await stream.content.readuntil(b"id: a-2")
            stream.close()
            auth = {"Authorization": f"Bearer {token}"}
            for path in (
                "/alerts/a-1/read",
                "/alerts/a-1/read",
                "/alerts/a-2/dismiss",
                "/alerts/a-2/dismiss",
            ):
                assert (await client.post(path, headers=auth)).status == 200
            scraped = await client.get("/metrics")
            return await scraped.text()

    text = run(scenario())
    moved = {
        change: value("hub_gateway_alert_changes_total", change=change) - before[change] for change in before
    }
    assert moved == {"received": 2, "pushed": 2, "read": 1, "dismissed": 1}
    assert (
        'hub_gateway_alerts{state="read"} 1.0' in text and 'hub_gateway_alerts{state="dismissed"} 1.0' in text
    )
    assert "np-7c1f0e" not in text and "IPP-1" not in text
