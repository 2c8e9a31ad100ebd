"""The console's aiohttp application: the page, ``/api/state``, its own ``/metrics``, operator access.

A background task refreshes every ``HUB_CONSOLE_REFRESH_SECONDS``: it scrapes the workers and the
gateway and looks at the broker (lag, topics, new DLQ records) in one worker thread, since kafka-python
blocks. Requests from loopback are served; any other client must present an operator token (``Authorization:
Bearer`` or the cookie set by ``POST /login``) or is refused with 401 — before any handler runs, so a
refused request learns nothing. The console serves counts, codes, stages, rules, groups, topics and
source ids only: never a patient id or clinical content.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hub.console import state
from hub.console.broker import BrokerView, BrokerWatch, unreachable
from hub.console.scrape import Scrape, Target, scrape_all
from hub.console.tokens import OperatorTokens, tokens_file
from hub.errors import ConfigError
from hub.logging import get_logger
from hub.normalise.time import utc_iso
from hub.serving import is_loopback, serve_runner
from hub.settings import Settings
from hub.topics import TopicNames

log = get_logger("hub.console.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"
COOKIE = "hub_console_token"
#: The page loads its own script and style only, and talks to this origin only.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Reachable without a token: the login form and the static files (no data in either).
PUBLIC_PATHS = ("/login", "/static/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_binding(host: str, tokens: OperatorTokens) -> None:
    """Refuse a non-loopback address while no operator token exists: nobody could use it but attackers."""
    if not is_loopback(host) and not tokens.entries():
        raise ConfigError(
            f"the console would listen on {host}, which is not loopback, and no operator token exists",
            hint="issue one first with `hub console token issue <name>`, or keep HUB_CONSOLE_HOST=127.0.0.1",
        )


@dataclass
class Console:
    """What the handlers and the refresh task share."""

    watch: BrokerWatch
    targets: list[Target]
    tokens: OperatorTokens
    refresh_seconds: float
    history: state.History = field(default_factory=state.History)
    scrapes: list[Scrape] = field(default_factory=list)
    view: BrokerView | None = None
    document: dict[str, Any] | None = None
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "hub-console"))
    task: asyncio.Task[None] | None = None
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def _collect(self) -> tuple[list[Scrape], BrokerView]:
        """Blocking: scrape every target, look at the broker, read the DLQ's new records."""
        scrapes = scrape_all(self.targets)
        view = self.watch.look()
        if view.reachable:
            self.watch.read_dlq()
        return scrapes, view

    async def refresh(self) -> dict[str, Any]:
        """One refresh; returns the new state document."""
        loop = asyncio.get_running_loop()
        scrapes, view = await loop.run_in_executor(self.executor, self._collect)
        self.history.add(state.point(time.time(), scrapes, view))
        self.scrapes, self.view = scrapes, view
        self.document = state.snapshot(
            generated_at=utc_iso(datetime.now(UTC)),
            refresh_seconds=self.refresh_seconds,
            history=self.history,
            scrapes=scrapes,
            view=view,
            dlq_counts=self.watch.dlq_counts,
            dlq_sources=self.watch.dlq_sources,
            latest=list(self.watch.latest),
        )
        return self.document

    async def run(self) -> None:
        """Refresh until cancelled; a failed refresh is logged by type and retried at the next tick."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the loop must outlive one bad refresh
                log.error("console.refresh_failed", error=type(exc).__name__)
            await asyncio.sleep(self.refresh_seconds)


class LagCollector(Collector):
    """The console's own metrics, from the last refresh: consumer lag, broker and targets up."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """The gauges of the last refresh (nothing before the first)."""
        view = self.console.view
        if view is None:
            return []
        lag = GaugeMetricFamily(
            "hub_consumer_lag",
            "Records a hub consumer group has still to process (end offset - committed offset).",
            labels=["group", "topic", "partition"],
        )
        for row in view.lag:
            lag.add_metric([row.group, row.topic, str(row.partition)], row.lag)
        members = GaugeMetricFamily(
            "hub_consumer_group_members", "Members of a hub consumer group.", labels=["group"]
        )
        for group in view.groups:
            members.add_metric([group.group], group.members)
        broker = GaugeMetricFamily("hub_broker_up", "1 when the broker answered the console's last look.")
        broker.add_metric([], 1.0 if view.reachable else 0.0)
        missing = GaugeMetricFamily("hub_topics_missing", "Hub topics the broker does not have.")
        missing.add_metric([], float(len(view.missing_topics)))
        up = GaugeMetricFamily(
            "hub_target_up",
            "1 when a worker's or the gateway's /metrics answered.",
            labels=["kind", "target"],
        )
        for scrape in self.console.scrapes:
            up.add_metric([scrape.target.kind, scrape.target.url], 1.0 if scrape.up else 0.0)
        return [lag, members, broker, missing, up]


CONSOLE = web.AppKey("console", Console)


def _presented_token(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE) or None


def _login_page(status: int) -> web.FileResponse:
    return web.FileResponse(
        STATIC_DIR / "login.html", status=status, headers={"Content-Security-Policy": PAGE_POLICY}
    )


def _refused(request: web.Request) -> web.StreamResponse:
    """401: the login form for the page, JSON for everything else."""
    if request.method == "GET" and request.path == "/":
        return _login_page(401)
    return web.json_response(
        {"error": "unauthorized", "message": "an operator token is required from this address"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="hub-console"'},
    )


@web.middleware
async def operators_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loopback clients pass; others need a valid operator token, else 401 before any handler."""
    if is_loopback(request.remote) or request.path.startswith(PUBLIC_PATHS):
        return await handler(request)
    if request.app[CONSOLE].tokens.verify(_presented_token(request)) is None:
        log.info("console.refused", path=request.path)
        return _refused(request)
    return await handler(request)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", "no-store")


async def page(request: web.Request) -> web.FileResponse:
    """The console page."""
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})


async def api_state(request: web.Request) -> web.Response:
    """The last refresh's state document (a fresh one if none yet)."""
    console = request.app[CONSOLE]
    document = console.document or await console.refresh()
    return web.json_response(document, dumps=lambda value: json.dumps(value, ensure_ascii=False))


async def metrics(request: web.Request) -> web.Response:
    """The console's own Prometheus metrics (lag, broker up, targets up)."""
    response = web.Response(body=generate_latest(request.app[CONSOLE].registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def healthz(request: web.Request) -> web.Response:
    """200 with ``status: ok`` when the last refresh was all green, else 503 with ``status: degraded``."""
    document = request.app[CONSOLE].document
    ok = document is not None and state.healthy(document)
    return web.json_response({"status": "ok" if ok else "degraded"}, status=200 if ok else 503)


async def login_form(request: web.Request) -> web.FileResponse:
    """The token form."""
    return _login_page(200)


async def login(request: web.Request) -> web.StreamResponse:
    """Check a posted token; a valid one becomes an HttpOnly, SameSite=Strict cookie."""
    form = await request.post()
    token = form.get("token")
    operator = request.app[CONSOLE].tokens.verify(token if isinstance(token, str) else None)
    if operator is None:
        log.info("console.login_refused")
        return _login_page(401)
    log.info("console.login", operator=operator)
    response = web.HTTPSeeOther("/")
    response.set_cookie(COOKIE, str(token), httponly=True, samesite="Strict", path="/")
    raise response


async def _on_startup(app: web.Application) -> None:
    console = app[CONSOLE]
    console.task = asyncio.get_running_loop().create_task(console.run())


async def _on_cleanup(app: web.Application) -> None:
    console = app[CONSOLE]
    if console.task is not None:
        console.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await console.task
    await asyncio.get_running_loop().run_in_executor(console.executor, console.watch.close)
    console.executor.shutdown(wait=False)


def create_app(console: Console, *, refresh: bool = True) -> web.Application:
    """The console over a :class:`Console`; ``refresh`` starts the background refresh with the app."""
    app = web.Application(middlewares=[operators_only], client_max_size=16 * 1024)
    app[CONSOLE] = console
    console.registry.register(LagCollector(console))
    app.router.add_get("/", page)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.on_response_prepare.append(_headers)
    if refresh:
        app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    return app


def console_from_settings(settings: Settings) -> Console:
    """The console as ``hub console`` runs it: every contract, internal and recipient topic expected."""
    from hub.consent import load_recipients  # noqa: PLC0415
    from hub.console.scrape import targets  # noqa: PLC0415

    names = TopicNames(settings.topic_prefix)
    recipients = (
        list(load_recipients(settings.recipients_file)) if settings.recipients_file is not None else []
    )
    expected = [*names.contract(), *names.internal(), *(names.prefix + r.topic for r in recipients)]

    return Console(
        watch=BrokerWatch(settings.bootstrap_servers, settings.app_id, names, expected),
        targets=targets(settings),
        tokens=OperatorTokens(tokens_file(settings)),
        refresh_seconds=settings.console_refresh_seconds,
    )


async def serve(
    app: web.Application, host: str, port: int, *, ready: Callable[[str], None] = lambda _url: None
) -> None:
    """Serve until cancelled or SIGTERM; ``ready(url)`` once listening. Non-loopback needs a token."""
    check_binding(host, app[CONSOLE].tokens)
    await serve_runner(
        web.AppRunner(app, access_log=None, shutdown_timeout=3.0),
        host,
        port,
        name="the console",
        busy_hint="is another console running? choose another port with HUB_CONSOLE_PORT or --port",
        ready=ready,
    )


__all__ = [
    "CONSOLE",
    "Console",
    "LagCollector",
    "check_binding",
    "console_from_settings",
    "create_app",
    "is_loopback",
    "serve",
    "unreachable",
]
