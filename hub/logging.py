"""structlog JSON logging with Kafka coordinates bound and clinical data and secrets redacted.

Redaction sits before the renderer and runs on stdlib records too (faust, aiokafka), so a library's
log line cannot carry what ours may not. It works three ways: fields whose *name* says they hold
clinical content or secrets are replaced whole; registered secret strings are scrubbed from any text;
and number runs shaped like an INS/NIR are masked wherever they appear.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"

#: Field names (lower-case) whose values are clinical content, identity or secrets.
SENSITIVE_FIELD_NAMES = frozenset(
    {
        "address", "birthdate", "body", "family", "given", "identifier", "identifiers", "ins",
        "name", "patient_name", "payload", "resource", "secret", "secrets", "signature",
        "telecom", "text", "token", "value", "key_material", "password", "authorization",
    }
)  # fmt: skip

# A NIR is 13 digits plus a 2-digit key, often written with spaces: mask any such run.
_INS_PATTERN = re.compile(r"(?<!\d)[12]\s?\d{2}\s?\d{2}\s?(?:\d{2}|2[AB])\s?\d{3}\s?\d{3}(?:\s?\d{2})?(?!\d)")

_secrets_lock = threading.Lock()
_registered_secrets: set[str] = set()

#: Filters every handler of :func:`configure_logging` carries (hub.kafka.outage folds client errors).
_handler_filters: list[logging.Filter] = []


def register_secret(secret: str) -> None:
    """Scrub this exact string from every later log line (source HMAC keys, tokens)."""
    if len(secret) >= 4:
        with _secrets_lock:
            _registered_secrets.add(secret)


def _scrub_text(text: str) -> str:
    for secret in _registered_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _INS_PATTERN.sub(REDACTED, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if str(k).lower() in SENSITIVE_FIELD_NAMES else _scrub(v)) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # The renderer would print any other object by repr(), which quotes everything it holds
    # (an IngestRecord's body, a PathwayEvent's resource): scrub such objects field by field.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _scrub({f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.repr})
    model_dump = getattr(value, "model_dump", None)  # pydantic models, fhir.resources among them
    if callable(model_dump) and not isinstance(value, type):
        try:
            return _scrub(model_dump(mode="json"))
        except Exception:  # a log line must not fail, nor fall back to a repr that quotes the data
            return f"<{type(value).__name__}>"
    return _scrub_text(repr(value))


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """structlog processor: remove clinical content and secrets from one event."""
    for key in list(event_dict):
        if key.lower() in SENSITIVE_FIELD_NAMES:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]


def configure_logging(level: str = "info", *, json: bool = True, stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging once, in an entry point."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared_processors(),
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    for kept in _handler_filters:
        handler.addFilter(kept)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at info hides the hub's own lines; their warnings still show.
    for noisy in ("aiokafka", "kafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def add_log_filter(kept: logging.Filter) -> None:
    """Run ``kept`` on every line the root handlers write, now and after a later configure_logging.

    On the handler, not on a logger: a logger's filters do not see its children's lines
    (``aiokafka.consumer.fetcher`` under ``aiokafka``).
    """
    _handler_filters.append(kept)
    for handler in logging.getLogger().handlers:
        handler.addFilter(kept)


def remove_log_filter(kept: logging.Filter) -> None:
    """Undo :func:`add_log_filter` (tests)."""
    if kept in _handler_filters:
        _handler_filters.remove(kept)
    for handler in logging.getLogger().handlers:
        handler.removeFilter(kept)


def bind_kafka_coordinates(topic: str, partition: int, offset: int) -> None:
    """Bind the record being processed, so every line names topic/partition/offset."""
    structlog.contextvars.bind_contextvars(topic=topic, partition=partition, offset=offset)


def clear_bound(keys: Iterable[str] = ("topic", "partition", "offset", "event_id")) -> None:
    """Forget the record context once it is handled."""
    structlog.contextvars.unbind_contextvars(*keys)


def get_logger(name: str) -> Any:
    """A structlog logger for one module."""
    return structlog.stdlib.get_logger(name)
