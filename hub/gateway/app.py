"""The alert gateway's aiohttp application: CDS Hooks, the SSE push stream, read/dismiss, the demo page.

Every answer is JSON, errors included (``{"error": <code>, "message": ...}``): a middleware turns an
unexpected exception into a 500 with a request id, logged by type and stack frames only, never with
the request body or the exception's text (either may quote clinical data). The access log names
method, path and status, never the query string (the SSE stream may carry ``?token=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.crypto.config import keyring_from_settings
from hub.crypto.records import RecordOpener
from hub.errors import HubError
from hub.gateway import cds, state_file, tokens_file
from hub.gateway.consumer import AlertConsumer
from hub.gateway.store import AlertStore, StoredAlert, StoreEvent
from hub.gateway.tokens import TokenStore
from hub.logging import get_logger
from hub.metrics import GATEWAY_ALERT_CHANGES, GATEWAY_ALERT_STATES, REGISTRY
from hub.serving import is_loopback, serve_runner
from hub.settings import Settings
from hub.topics import TopicNames

log = get_logger("hub.gateway.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"
HEARTBEAT_SECONDS = 15.0
#: Browsers wait this long before reconnecting an EventSource (the ``retry:`` field).
RECONNECT_MILLISECONDS = 5000
#: Events a slow SSE client may fall behind by before its stream is closed (it reconnects and resyncs).
STREAM_QUEUE_SIZE = 256
#: The demo page loads its own script and style only, and talks to this origin only.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Item = tuple[StoreEvent, StoredAlert] | None


class ApiError(Exception):
    """An answer other than 2xx, rendered by the error middleware as ``{"error", "message"}``."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "a valid practitioner bearer token is required (Authorization: Bearer <token>); "
        "tokens are issued with `hub gateway token issue <RPPS>`",
        headers={"WWW-Authenticate": 'Bearer realm="hub-gateway"'},
    )


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such alert for this practitioner")


class AlertBus:
    """In-process fan-out of store events to the SSE streams of each practitioner.

    :meth:`publish` may be called from any thread (the store's listener); delivery happens in the
    event loop. A stream whose queue is full is ended rather than silently losing events: the browser
    reconnects and receives the current unread alerts again.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[str, set[asyncio.Queue[_Item]]] = {}

    def subscribe(self, practitioner: str) -> asyncio.Queue[_Item]:
        """A queue that receives the practitioner's events until :meth:`unsubscribe`."""
        queue: asyncio.Queue[_Item] = asyncio.Queue(STREAM_QUEUE_SIZE)
        self._queues.setdefault(practitioner, set()).add(queue)
        return queue

    def unsubscribe(self, practitioner: str, queue: asyncio.Queue[_Item]) -> None:
        """Stop delivering to one queue."""
        queues = self._queues.get(practitioner, set())
        queues.discard(queue)
        if not queues:
            self._queues.pop(practitioner, None)

    def publish(self, event: StoreEvent, alert: StoredAlert) -> None:
        """Deliver an event to the alert's practitioner's streams (thread-safe)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._deliver, (event, alert), alert.practitioner)

    def _deliver(self, item: _Item, practitioner: str) -> None:
        for queue in list(self._queues.get(practitioner, ())):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self._end(queue)

    @staticmethod
    def _end(queue: asyncio.Queue[_Item]) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    def close_all(self) -> None:
        """End every stream (at shutdown)."""
        for queues in self._queues.values():
            for queue in queues:
                self._end(queue)

    def streams(self) -> int:
        """How many streams are open."""
        return sum(len(queues) for queues in self._queues.values())


@dataclass
class Gateway:
    """What the handlers share: the store, the tokens, the fan-out and (when serving) the consumer."""

    store: AlertStore
    tokens: TokenStore
    consumer: AlertConsumer | None = None
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    close_store: bool = False
    bus: AlertBus | None = None
    _unlisten: Callable[[], None] | None = field(default=None, repr=False)
    _uncount: Callable[[], None] | None = field(default=None, repr=False)


GATEWAY = web.AppKey("gateway", Gateway)


def _gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


# --- responses and errors ----------------------------------------------------------------------------


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        document,
        status=status,
        headers=headers,
        dumps=lambda value: json.dumps(value, ensure_ascii=False),
    )


def _error(error: ApiError) -> web.Response:
    return _json({"error": error.code, "message": error.message}, error.status, error.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error as JSON; an unexpected exception becomes a 500 with a request id."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(ApiError(exc.status, code, exc.reason, headers=headers))
    except HubError as exc:
        log.error("gateway.unavailable", method=request.method, path=request.path, code=str(exc.code))
        return _error(ApiError(503, "unavailable", f"the gateway cannot answer now ({exc.code})"))
    except Exception as exc:  # the last line of defence: no stack trace, no data, a request id
        request_id = uuid.uuid4().hex
        frames = [
            f"{frame.filename}:{frame.lineno} {frame.name}"
            for frame in traceback.extract_tb(exc.__traceback__)
        ]
        log.error(
            "gateway.request_failed",
            request_id=request_id,
            method=request.method,
            path=request.path,
            error=type(exc).__name__,
            frames=frames,
        )
        return _json(
            {
                "error": "internal_error",
                "message": "the gateway failed on this request; quote the request id to the hub's operators",
                "request_id": request_id,
            },
            500,
            {"X-Request-Id": request_id},
        )


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # The stream's URL may hold ?token=: never send it on as a Referer.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith(("/alerts", "/cds-services")):
        response.headers.setdefault("Cache-Control", "no-store")


class AccessLogger(AbstractAccessLogger):
    """One structlog line per request: method, path (never the query string), status, duration."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the line."""
        log.info(
            "gateway.request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time * 1000, 1),
        )


# --- authentication ---------------------------------------------------------------------------------


def _presented_token(request: web.Request, *, allow_query: bool) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if allow_query:
        return request.query.get("token") or None
    return None


def authenticate(request: web.Request, *, allow_query: bool = False) -> str:
    """The practitioner whose token the request carries, or a 401."""
    practitioner = _gateway(request).tokens.verify(_presented_token(request, allow_query=allow_query))
    if practitioner is None:
        raise _unauthorized()
    return practitioner


# --- handlers ---------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness, and whether the Kafka consumer runs; counts nothing (no side channel)."""
    consumer = _gateway(request).consumer
    return _json({"status": "ok", "consumer": consumer.status.value if consumer else "disabled"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics, to loopback clients only: remote scrapes need an operator token (not yet)."""
    if not is_loopback(request.remote):
        raise ApiError(403, "forbidden", "metrics are served to loopback clients only")
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def page(request: web.Request) -> web.FileResponse:
    """The demo GP page."""
    return web.FileResponse(STATIC_DIR / "gp.html", headers={"Content-Security-Policy": PAGE_POLICY})


async def cds_discovery(request: web.Request) -> web.Response:
    """CDS Hooks discovery: the one service."""
    return _json(cds.discovery())


async def cds_patient_view(request: web.Request) -> web.Response:
    """CDS Hooks patient-view: the cards of this GP's alerts for this patient that are not dismissed."""
    practitioner = authenticate(request)
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "invalid_request", "the request body is not JSON (a CDS Hooks request)") from None
    try:
        hook_request = cds.parse_patient_view(body)
    except cds.CdsRequestError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    if not cds.user_matches(hook_request.user_id, practitioner):
        raise ApiError(403, "forbidden", "context.userId names another practitioner than the bearer token's")
    alerts = _gateway(request).store.alerts(practitioner, patient=hook_request.patient_id)
    log.info("gateway.patient_view", practitioner=practitioner, cards=len(alerts))
    return _json(cds.cards_response(alerts))


async def list_alerts(request: web.Request) -> web.Response:
    """The practitioner's alerts that are not dismissed (``?patient=`` narrows to one patient)."""
    practitioner = authenticate(request)
    patient = request.query.get("patient") or None
    alerts = _gateway(request).store.alerts(practitioner, patient=patient)
    return _json({"practitioner": practitioner, "alerts": [alert.view() for alert in alerts]})


async def list_patients(request: web.Request) -> web.Response:
    """The patients the practitioner has alerts (not dismissed) for, with counts."""
    practitioner = authenticate(request)
    patients: dict[str, dict[str, Any]] = {}
    for alert in _gateway(request).store.alerts(practitioner):
        patient = alert.record.get("patient", {})
        entry = patients.setdefault(
            alert.patient_id,
            {
                "patient_id": alert.patient_id,
                "identifiers": patient.get("identifiers", []),
                "alerts": 0,
                "unread": 0,
            },
        )
        entry["alerts"] += 1
        entry["unread"] += alert.state.value == "new"
    return _json({"practitioner": practitioner, "patients": list(patients.values())})


async def mark_read(request: web.Request) -> web.Response:
    """Mark one of the practitioner's alerts read."""
    practitioner = authenticate(request)
    store = _gateway(request).store
    before = store.get(request.match_info["alert_id"])
    alert = store.mark_read(request.match_info["alert_id"], practitioner)
    if alert is None:
        raise _not_found()
    if before is not None and alert.state is not before.state:
        GATEWAY_ALERT_CHANGES.labels(change="read").inc()
    return _json(alert.view())


async def dismiss(request: web.Request) -> web.Response:
    """Dismiss one of the practitioner's alerts for good."""
    practitioner = authenticate(request)
    store = _gateway(request).store
    before = store.get(request.match_info["alert_id"])
    alert = store.dismiss(request.match_info["alert_id"], practitioner)
    if alert is None:
        raise _not_found()
    if before is not None and alert.state is not before.state:
        GATEWAY_ALERT_CHANGES.labels(change="dismissed").inc()
    return _json(alert.view())


def sse_event(event: StoreEvent, alert: StoredAlert) -> bytes:
    """One Server-Sent Event: ``event: alert|state``, ``id: <alert_id>``, ``data: <alert view JSON>``."""
    data = json.dumps(alert.view(), ensure_ascii=False, separators=(",", ":"))
    return f"event: {event.value}\nid: {alert.alert_id}\ndata: {data}\n\n".encode()


async def alert_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the unread alerts now, then new alerts and state changes as they happen."""
    practitioner = authenticate(request, allow_query=True)
    gateway = _gateway(request)
    bus = gateway.bus
    if bus is None:
        raise ApiError(503, "unavailable", "the gateway is starting")
    # Subscribe before reading the store: an alert added in between arrives twice, never zero times.
    queue = bus.subscribe(practitioner)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        await response.write(f"retry: {RECONNECT_MILLISECONDS}\n: connected\n\n".encode())
        sent: set[str] = set()
        for alert in gateway.store.alerts(practitioner, unread_only=True):
            await response.write(sse_event(StoreEvent.ALERT, alert))
            GATEWAY_ALERT_CHANGES.labels(change="pushed").inc()
            sent.add(alert.alert_id)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), gateway.heartbeat_seconds)
            except TimeoutError:
                await response.write(b": heartbeat\n\n")
                continue
            if item is None:
                break
            event, alert = item
            if event is StoreEvent.ALERT and alert.alert_id in sent:
                continue
            sent.add(alert.alert_id)
            await response.write(sse_event(event, alert))
            if event is StoreEvent.ALERT:
                GATEWAY_ALERT_CHANGES.labels(change="pushed").inc()
    except ConnectionResetError:  # the client went away; aiohttp's own subclass included
        pass
    finally:
        bus.unsubscribe(practitioner, queue)
    return response


# --- lifecycle --------------------------------------------------------------------------------------


def _count_received(event: StoreEvent, _alert: StoredAlert) -> None:
    """``hub_gateway_alert_changes{change="received"}``: a new alert stored (redeliveries are not new)."""
    if event is StoreEvent.ALERT:
        GATEWAY_ALERT_CHANGES.labels(change="received").inc()


async def _on_startup(app: web.Application) -> None:
    gateway = app[GATEWAY]
    gateway.bus = AlertBus(asyncio.get_running_loop())
    gateway._unlisten = gateway.store.listen(gateway.bus.publish)
    gateway._uncount = gateway.store.listen(_count_received)
    GATEWAY_ALERT_STATES.count = gateway.store.counts
    if gateway.consumer is not None:
        gateway.consumer.start()


async def _on_shutdown(app: web.Application) -> None:
    bus = app[GATEWAY].bus
    if bus is not None:
        bus.close_all()


async def _on_cleanup(app: web.Application) -> None:
    gateway = app[GATEWAY]
    if gateway.consumer is not None:
        await gateway.consumer.stop()
    if gateway._unlisten is not None:
        gateway._unlisten()
        gateway._unlisten = None
    if gateway._uncount is not None:
        gateway._uncount()
        gateway._uncount = None
    if GATEWAY_ALERT_STATES.count == gateway.store.counts:
        GATEWAY_ALERT_STATES.count = None
    if gateway.close_store:
        gateway.store.close()


def create_app(
    store: AlertStore,
    tokens: TokenStore,
    *,
    consumer: AlertConsumer | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    close_store: bool = False,
) -> web.Application:
    """The gateway application over a store and a token file; ``consumer`` (when given) is started and
    stopped with the app; ``close_store`` closes the store at cleanup."""
    app = web.Application(middlewares=[json_errors], client_max_size=256 * 1024)
    app[GATEWAY] = Gateway(store, tokens, consumer, heartbeat_seconds, close_store)
    app.router.add_get("/", page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/cds-services", cds_discovery)
    app.router.add_post(f"/cds-services/{cds.SERVICE_ID}", cds_patient_view)
    app.router.add_get("/alerts", list_alerts)
    app.router.add_get("/alerts/patients", list_patients)
    app.router.add_get("/alerts/stream", alert_stream)
    app.router.add_post("/alerts/{alert_id}/read", mark_read)
    app.router.add_post("/alerts/{alert_id}/dismiss", dismiss)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.on_response_prepare.append(_security_headers)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    return app


def app_from_settings(settings: Settings, *, consume: bool = True) -> web.Application:
    """The gateway as ``hub gateway serve`` runs it: the state and token files from the settings, and a
    consumer of the alerts topic (unless ``consume`` is False)."""
    store = AlertStore(state_file(settings))
    consumer = (
        AlertConsumer(
            store,
            bootstrap_servers=settings.bootstrap_servers,
            topic=TopicNames(settings.topic_prefix).alerts,
            group=TopicNames.gateway_group(settings.app_id),
            # Alerts are encrypted at rest: the gateway opens them with the machine's key access.
            opener=RecordOpener(keyring_from_settings(settings)),
        )
        if consume
        else None
    )
    return create_app(store, TokenStore(tokens_file(settings)), consumer=consumer, close_store=True)


async def serve(
    app: web.Application, host: str, port: int, *, ready: Callable[[str], None] = lambda _url: None
) -> None:
    """Serve ``app`` on host:port until cancelled or SIGTERM; ``ready(url)`` once it listens.

    A port that cannot be bound is a :class:`ConfigError` naming it.
    """
    await serve_runner(
        web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=5.0),
        host,
        port,
        name="the alert gateway",
        busy_hint="is another gateway running? choose another port with HUB_GATEWAY_PORT or --port",
        ready=ready,
    )


__all__ = [
    "GATEWAY",
    "HEARTBEAT_SECONDS",
    "AccessLogger",
    "AlertBus",
    "ApiError",
    "Gateway",
    "app_from_settings",
    "create_app",
    "serve",
    "sse_event",
]
