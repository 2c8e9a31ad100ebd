"""The key service's aiohttp application: ``GET /v1/keys/{key_id}`` over TLS, every answer audited first.

One request, in order: authenticate the bearer credential; take a token from the rate-limit bucket
of that credential's recipient (or, without a valid credential, of the client's address); decide
(:func:`hub.keyservice.access.decide`); unwrap the key when released; send the AuditEvent and wait
for the broker's acknowledgement; answer. A release that cannot be audited is not made (503). Every
answer is JSON (``{"error", "message"}`` for a refusal) with ``Cache-Control: no-store``: how long
a client may keep a key is the reply's ``cache_seconds``, not an HTTP cache's business. Nothing
secret is logged: no token, no key; refusal reasons go to the audit trail, never to the client.
"""

from __future__ import annotations

import base64
import functools
import math
import ssl
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from hub.broker.tls import ensure_server_certificate
from hub.crypto.config import keyring_from_settings
from hub.crypto.keyids import well_formed
from hub.crypto.keys import KeyProvider
from hub.crypto.store import KeyStore
from hub.errors import BrokerError, ConfigError, ErrorCode, KekInvalid
from hub.kafka.security import KafkaSecurity
from hub.keyservice import CERTIFICATE_NAME, credentials_file, local_ca
from hub.keyservice.access import MESSAGES, KeyDecision, RateLimiter, decide
from hub.keyservice.audit import KeyRequest, audit_key_access
from hub.keyservice.credentials import RecipientCredentials
from hub.logging import get_logger
from hub.records import encode_json
from hub.serving import serve_runner
from hub.settings import Settings
from hub.tokens import hash_token
from hub.topics import TopicNames

log = get_logger("hub.keyservice.app")

#: The algorithm a released key is for, in every reply.
ALGORITHM = "AES-256-GCM"
#: Addresses a listening socket binds to without naming the machine: not certificate names.
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - compared with, never bound here

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuditSink(Protocol):
    """Where AuditEvents go; :meth:`send` returns once the event is stored (acknowledged)."""

    async def send(self, key: bytes, event: Mapping[str, Any]) -> None:
        """Store one AuditEvent, or raise :class:`hub.errors.BrokerError`."""
        ...

    async def close(self) -> None:
        """Release what the sink holds (at the application's cleanup)."""
        ...


class KafkaAuditSink:
    """AuditEvents to ``hub.audit-unsealed.v1``, where the sealing stage chains them into ``hub.audit.v1``.

    The producer is idempotent with acks=all and is started on first use (and again after a failure),
    so the service starts, and refuses with 503, while the broker is away.
    """

    def __init__(self, bootstrap_servers: str, topic: str, security: KafkaSecurity) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.security = security
        self._producer: Any = None

    async def send(self, key: bytes, event: Mapping[str, Any]) -> None:
        """Send and wait for the broker's acknowledgement."""
        from aiokafka import AIOKafkaProducer  # noqa: PLC0415 - only the serving process needs it
        from aiokafka.errors import KafkaError  # noqa: PLC0415

        value = encode_json(event)
        try:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap_servers,
                    client_id="hub-keys",
                    acks="all",
                    enable_idempotence=True,
                    request_timeout_ms=10_000,
                    **self.security.aiokafka(),
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()  # a client that never connected still holds resources
                    raise
                self._producer = producer
            await self._producer.send_and_wait(self.topic, value=value, key=key)
        except KafkaError as exc:
            await self.close()
            raise BrokerError(
                f"the key service cannot write to {self.topic} ({type(exc).__name__})",
                hint="is the broker running (`hub broker status`)?",
            ) from exc

    async def close(self) -> None:
        """Stop the producer (it is made again on the next send)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


@dataclass
class KeyService:
    """What the handler needs: credentials, the key store and KEK, the audit, the rate limit."""

    credentials: RecipientCredentials
    store: KeyStore
    provider: KeyProvider
    audit: AuditSink
    limiter: RateLimiter
    cache_seconds: int


SERVICE = web.AppKey("key_service", KeyService)


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    response = web.json_response(document, status=status, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _refusal(decision: KeyDecision, headers: dict[str, str] | None = None) -> web.Response:
    return _json(
        {
            "error": str(decision.code),
            "message": MESSAGES.get(decision.status, "the key service cannot answer"),
        },
        decision.status,
        headers,
    )


def _presented_token(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


async def _audited(service: KeyService, key_request: KeyRequest, decision: KeyDecision) -> bool:
    """Send the AuditEvent; False when it could not be stored (the caller answers 503 instead)."""
    event = audit_key_access(key_request, decision, recorded=datetime.now(UTC))
    try:
        await service.audit.send(key_request.record_key, event)
    except BrokerError as exc:
        log.error("key_service.audit_failed", code=str(exc.code), status=decision.status)
        return False
    log.info(
        "key_service.answer",
        status=decision.status,
        code=str(decision.code) if decision.code else None,
        recipient=key_request.recipient,
        # A malformed id is whatever the client sent: not copied into the log.
        key_id=key_request.key_id if well_formed(key_request.key_id) else None,
    )
    return True


def _unavailable() -> web.Response:
    return _json(
        {
            "error": str(ErrorCode.BROKER_UNAVAILABLE),
            "message": "the key service cannot audit now: retry later",
        },
        503,
        {"Retry-After": "5"},
    )


async def get_key(request: web.Request) -> web.Response:
    """``GET /v1/keys/{key_id}``: the data key, if this credential's recipient may have it."""
    service = request.app[SERVICE]
    token = _presented_token(request)
    recipient = service.credentials.verify(token)
    key_request = KeyRequest(
        request_id=uuid.uuid4().hex,
        key_id=request.match_info["key_id"],
        recipient=recipient,
        credential=hash_token(token)[:12] if token else None,
        address=request.remote,
    )
    # Failed logins are limited by address: a flood of wrong tokens is throttled like any other.
    admission = service.limiter.admit(f"recipient:{recipient}" if recipient else f"address:{request.remote}")
    if not admission.allowed:
        throttled = KeyDecision(429, ErrorCode.KEYS_RATE_LIMITED, "over the rate limit (first of a burst)")
        # One AuditEvent per burst, not per request: a flood must not flood the audit trail too.
        if admission.first_refusal and not await _audited(service, key_request, throttled):
            return _unavailable()
        return _refusal(throttled, {"Retry-After": str(max(1, math.ceil(admission.retry_after)))})
    if recipient is None:
        why = "no credential presented" if token is None else "unknown or revoked credential"
        decision = KeyDecision(401, ErrorCode.KEYS_CREDENTIAL_INVALID, why)
        if not await _audited(service, key_request, decision):
            return _unavailable()
        return _refusal(decision, {"WWW-Authenticate": 'Bearer realm="hub-keys"'})
    lookup = functools.cache(service.store.get)
    decision = decide(recipient, key_request.key_id, lookup)
    material = b""
    if decision.released:
        stored = lookup(key_request.key_id)
        assert stored is not None and stored.wrapped is not None  # noqa: S101 - decide() said so
        try:
            material = service.provider.unwrap(stored.wrapped, key_id=key_request.key_id)
        except KekInvalid:
            decision = KeyDecision(
                503, ErrorCode.CRYPTO_KEK_INVALID, "the configured KEK cannot unwrap this key"
            )
    if not await _audited(service, key_request, decision):
        return _unavailable()
    if not decision.released:
        return _refusal(decision)
    return _json(
        {
            "key_id": key_request.key_id,
            "algorithm": ALGORITHM,
            "key_material": base64.b64encode(material).decode("ascii"),
            "cache_seconds": service.cache_seconds,
        }
    )


async def healthz(_request: web.Request) -> web.Response:
    """Liveness; says nothing about keys or recipients."""
    return _json({"status": "ok"})


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON; an unexpected exception is a 500 with a request id, logged by frames only."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"error": _HTTP_CODES.get(exc.status, "http_error"), "message": exc.reason}, exc.status)
    except Exception as exc:  # the last line of defence: no stack text, no data
        request_id = uuid.uuid4().hex
        frames = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
        log.error(
            "key_service.request_failed", request_id=request_id, error=type(exc).__name__, frames=frames
        )
        return _json(
            {"error": "internal_error", "message": "quote the request id", "request_id": request_id}, 500
        )


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, route (never the path: it holds what the client sent), status."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the line."""
        resource = request.match_info.route.resource if isinstance(request, web.Request) else None
        log.info(
            "key_service.request",
            method=request.method,
            route=resource.canonical if resource is not None else None,
            status=response.status,
            duration_ms=round(time * 1000, 1),
        )


async def _on_cleanup(app: web.Application) -> None:
    service = app[SERVICE]
    await service.audit.close()
    service.store.close()


def create_app(service: KeyService) -> web.Application:
    """The key service application over ``service``; the store (and a Kafka sink) close with the app."""
    app = web.Application(middlewares=[json_errors], client_max_size=4096)
    app[SERVICE] = service
    app.router.add_get("/v1/keys/{key_id}", get_key)
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(_on_cleanup)
    return app


def certificate_names(host: str) -> list[str]:
    """The names the local CA's certificate carries: loopback, and the listening host if it names one."""
    names = ["localhost", "127.0.0.1"]
    if host not in _WILDCARDS and host not in names:
        names.append(host)
    return names


def server_tls(settings: Settings) -> tuple[ssl.SSLContext, Path | None]:
    """The TLS context, and the CA file clients trust (None when the operator gave a certificate).

    With ``HUB_KEY_SERVICE_CERT_FILE`` and ``HUB_KEY_SERVICE_KEY_FILE`` those are served; otherwise the
    local CA (:func:`hub.keyservice.local_ca`) issues one, made once and reused.
    """
    cert, key = settings.key_service_cert_file, settings.key_service_key_file
    ca_file: Path | None = None
    if (cert is None) != (key is None):
        raise ConfigError(
            "HUB_KEY_SERVICE_CERT_FILE and HUB_KEY_SERVICE_KEY_FILE go together",
            hint="set both (your certificate chain and its key), or neither (the local CA issues one)",
        )
    if cert is None or key is None:
        files = local_ca(settings)
        cert, key = ensure_server_certificate(
            files, CERTIFICATE_NAME, certificate_names(settings.key_service_host)
        )
        ca_file = files.ca_cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the key service's certificate {cert}: {type(exc).__name__}",
            hint="check HUB_KEY_SERVICE_CERT_FILE and HUB_KEY_SERVICE_KEY_FILE (PEM)",
        ) from exc
    return context, ca_file


def app_from_settings(settings: Settings) -> web.Application:
    """The key service as ``hub keys serve`` runs it: the machine's key store and KEK, the credentials
    file, and the audit on the settings' broker."""
    keyring = keyring_from_settings(settings)
    return create_app(
        KeyService(
            credentials=RecipientCredentials(credentials_file(settings)),
            store=keyring.store,
            provider=keyring.provider,
            audit=KafkaAuditSink(
                settings.bootstrap_servers,
                TopicNames(settings.topic_prefix).audit_unsealed,
                KafkaSecurity.from_settings(settings),
            ),
            limiter=RateLimiter(settings.key_service_rate_per_second, settings.key_service_burst),
            cache_seconds=settings.key_service_client_cache_seconds,
        )
    )


async def serve(
    app: web.Application,
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    ready: Callable[[str], None] = lambda _url: None,
) -> None:
    """Serve ``app`` over TLS on host:port until cancelled or SIGTERM; ``ready(url)`` once it listens."""
    await serve_runner(
        web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=5.0),
        host,
        port,
        name="the key service",
        busy_hint="is another key service running? choose another port with HUB_KEY_SERVICE_PORT or --port",
        ready=ready,
        ssl_context=context,
    )


__all__ = [
    "ALGORITHM",
    "SERVICE",
    "AuditSink",
    "KafkaAuditSink",
    "KeyService",
    "app_from_settings",
    "certificate_names",
    "create_app",
    "get_key",
    "serve",
    "server_tls",
]
