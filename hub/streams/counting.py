"""What the stages' agents count into :mod:`hub.metrics`: records, time, failures, and what outputs say.

The series are defined in :mod:`hub.metrics` (the ground floor: a gateway or console serves the same
registry without loading the pipeline); reading a stage's outputs to count them needs the records'
shapes (receipts, the DLQ's headers, pathway events, AuditEvents' share decisions, alerts), so it
lives here, with the agents that send them. :func:`observe` (or :func:`count_outputs`, before a
worker seals its outputs) reads the document a record was encoded from (``Outgoing.plain``), or
decodes the record's JSON when the stage did not keep it. Labels are codes only (:func:`hub.metrics.label`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hub.consent.audit import decision_labels
from hub.metrics import (
    ALERTS_TOTAL,
    DLQ_TOTAL,
    PATHWAY_EVENTS,
    RECEIPTS_TOTAL,
    SHARE_DECISIONS,
    STAGE_BATCH_RECORDS,
    STAGE_FAILURES,
    STAGE_OUTPUTS,
    STAGE_RECORDS,
    STAGE_SECONDS,
    label,
)
from hub.records import ERROR_CODE_HEADER, Outgoing, decode_json, header
from hub.topics import ALERTS, AUDIT_UNSEALED, DLQ, PATHWAY, RECEIPTS


def _topic_is(topic: str, name: str) -> bool:
    """Whether a (possibly prefixed) topic is the contract topic ``name``."""
    return topic == name or topic.endswith("." + name)


#: The topics whose records say something counted, by the contract name each is.
_COUNTED = (DLQ, RECEIPTS, PATHWAY, AUDIT_UNSEALED, ALERTS)
#: Topic -> the contract topic it is, or None: a worker writes a few dozen topics, each record counted.
_TOPIC_KINDS: dict[str, str | None] = {}
#: Label values -> their series: ``labels()`` takes a lock and builds a key for each record otherwise.
_SERIES: dict[tuple[int, tuple[str, ...]], Any] = {}
#: Bounds of the two caches: far above what a worker meets (its topics; codes, kinds, rules, networks).
_CACHED_MAX = 10_000


def _kind_of(topic: str) -> str | None:
    kind = _TOPIC_KINDS.get(topic, "")
    if kind == "":
        kind = next((name for name in _COUNTED if _topic_is(topic, name)), None)
        if len(_TOPIC_KINDS) < _CACHED_MAX:
            _TOPIC_KINDS[topic] = kind
    return kind


def _series(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once."""
    key = (id(metric), values)
    series = _SERIES.get(key)
    if series is None:
        series = metric.labels(*values)
        if len(_SERIES) < _CACHED_MAX:
            _SERIES[key] = series
    return series


def _inc(metric: Any, *values: str) -> None:
    _series(metric, *values).inc()


def _decode(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return decode_json(value)
    except ValueError:
        return None


def _count(out: Outgoing) -> None:
    kind = _kind_of(out.topic)
    if kind is None:
        return
    if kind == DLQ:
        _inc(DLQ_TOTAL, label(header(out.headers, ERROR_CODE_HEADER) or ""))
        return
    value = out.plain if out.plain is not None else _decode(out.value)
    if not isinstance(value, dict):
        return
    # Label values in the order each metric declares its labels (hub.metrics).
    if kind == RECEIPTS:
        error = value.get("error")
        code = error.get("code") if isinstance(error, dict) else ""
        _inc(RECEIPTS_TOTAL, label(value.get("status")), label(code))
    elif kind == PATHWAY:
        _inc(PATHWAY_EVENTS, label(value.get("kind")))
    elif kind == AUDIT_UNSEALED:  # stages audit here; hub.audit seals it
        for rule, verdict in decision_labels(value):
            _inc(SHARE_DECISIONS, label(rule), label(verdict))
    else:
        network = value.get("network")
        _inc(
            ALERTS_TOTAL,
            label(network.get("id") if isinstance(network, dict) else None),
            label(value.get("status")),
        )


def batch_taken(stage: str, records: int) -> None:
    """Count one batch a stage's agent took, by its size (``hub_stage_batch_records``)."""
    _series(STAGE_BATCH_RECORDS, stage).observe(records)


def observe(stage: str, outgoing: list[Outgoing], seconds: float, *, contents: bool = True) -> None:
    """Count one record a stage processed in ``seconds``, and (with ``contents``) what its outputs say.

    A worker that seals its outputs (encryption at rest) counts their contents with :func:`count_outputs`
    before sealing, since a sealed value cannot be read here, and passes ``contents=False``.
    """
    _inc(STAGE_RECORDS, stage)
    _series(STAGE_SECONDS, stage).observe(seconds)
    _series(STAGE_OUTPUTS, stage).inc(len(outgoing))
    if contents:
        count_outputs(outgoing)


def count_outputs(outgoing: Iterable[Outgoing]) -> None:
    """Count what plaintext outputs say: receipts, DLQ codes, pathway kinds, share decisions, alerts."""
    for out in outgoing:
        _count(out)


def failed(stage: str) -> None:
    """Count a record on which a stage raised."""
    _inc(STAGE_FAILURES, stage)
