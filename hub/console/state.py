"""The console's picture of the hub, built from scrapes and broker views: pure, no I/O.

:class:`History` keeps the last points (time, per-stage record counters, per-group lag) and turns
counters into rates; :func:`snapshot` builds the JSON the page draws. Everything in it is a count, a
code, a stage, a rule, a group, a topic or a source id: never a patient id or clinical content.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from hub.console.broker import BrokerView, Reject
from hub.console.scrape import Scrape

#: The worker's stages, in pipeline order (``hub.streams.app``).
STAGES = ("ingest", "identity", "share-merge")
#: Points kept: at the default 2 s refresh, ten minutes.
HISTORY_POINTS = 300


@dataclass(frozen=True)
class Point:
    """One refresh: when, each stage's record counter summed over workers, each group's total lag."""

    at: float
    stage_records: Mapping[str, float]
    lag: Mapping[str, int]


class History:
    """The last :data:`HISTORY_POINTS` points, and the rates between them."""

    def __init__(self, size: int = HISTORY_POINTS) -> None:
        self.points: deque[Point] = deque(maxlen=size)

    def add(self, point: Point) -> None:
        """Append one point (the oldest falls off)."""
        self.points.append(point)

    def series(self) -> dict[str, Any]:
        """``{t, throughput: {stage: [records/s]}, lag: {group: [records|None]}}``, one value per interval.

        A counter that went down (a worker restarted) gives 0 for that interval, not a negative rate.
        """
        points = list(self.points)
        pairs = list(pairwise(points))
        stages = [s for s in STAGES if any(s in p.stage_records for p in points)]
        stages += sorted({s for p in points for s in p.stage_records} - set(stages))
        groups = sorted({g for p in points for g in p.lag})
        return {
            "t": [round(b.at, 3) for _, b in pairs],
            "throughput": {
                stage: [
                    round(
                        max(0.0, b.stage_records.get(stage, 0.0) - a.stage_records.get(stage, 0.0))
                        / max(b.at - a.at, 1e-6),
                        3,
                    )
                    for a, b in pairs
                ]
                for stage in stages
            },
            # None where the broker did not answer: lag unknown is not lag 0.
            "lag": {group: [b.lag.get(group) for _, b in pairs] for group in groups},
        }


def point(at: float, scrapes: Iterable[Scrape], view: BrokerView) -> Point:
    """The point of one refresh."""
    records: dict[str, float] = {}
    for scrape in scrapes:
        if scrape.up and scrape.target.kind == "worker":
            for (stage,), value in scrape.by("hub_stage_records_total", "stage").items():
                records[stage] = records.get(stage, 0.0) + value
    return Point(at, records, view.group_lag())


def _sum_by(scrapes: Iterable[Scrape], kind: str, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    total: dict[tuple[str, ...], float] = {}
    for scrape in scrapes:
        if scrape.up and scrape.target.kind == kind:
            for key, value in scrape.by(name, *keys).items():
                total[key] = total.get(key, 0.0) + value
    return total


def snapshot(
    *,
    generated_at: str,
    refresh_seconds: float,
    history: History,
    scrapes: Sequence[Scrape],
    view: BrokerView,
    dlq_counts: Mapping[str, int],
    dlq_sources: Mapping[str, int],
    latest: Iterable[Reject],
) -> dict[str, Any]:
    """The JSON document of ``GET /api/state``."""
    receipts = {status: 0.0 for status in ("accepted", "duplicate", "rejected")}
    for (status,), value in _sum_by(scrapes, "worker", "hub_receipts_total", "status").items():
        receipts[status] = receipts.get(status, 0.0) + value
    share: dict[str, dict[str, float]] = {}
    for (rule, verdict), value in _sum_by(
        scrapes, "worker", "hub_share_decisions_total", "rule", "verdict"
    ).items():
        share.setdefault(rule, {"permit": 0.0, "deny": 0.0})[verdict] = value
    states = _sum_by(scrapes, "gateway", "hub_gateway_alerts", "state")
    gateway_up = any(s.up for s in scrapes if s.target.kind == "gateway")
    alerts = {
        "sent": sum(_sum_by(scrapes, "worker", "hub_alerts_total", "network").values()),
        "unread": states.get(("new",), 0.0),
        "read": states.get(("read",), 0.0),
        "dismissed": states.get(("dismissed",), 0.0),
    }
    tables = {
        table: value for (table,), value in _sum_by(scrapes, "worker", "hub_table_keys", "table").items()
    }
    failures = sum(_sum_by(scrapes, "worker", "hub_stage_failures_total", "stage").values())
    return {
        "generated_at": generated_at,
        "refresh_seconds": refresh_seconds,
        "health": {
            "broker": {
                "ok": view.reachable,
                "detail": f"{view.brokers} broker(s) at {view.bootstrap}" if view.reachable else view.error,
            },
            "topics": {
                "ok": view.reachable and not view.missing_topics,
                "expected": len(view.expected_topics),
                "missing": list(view.missing_topics),
            },
            "targets": [
                {"name": s.target.name, "kind": s.target.kind, "up": s.up, "error": s.error} for s in scrapes
            ],
            "stage_failures": failures,
            "groups": [{"group": g.group, "state": g.state, "members": g.members} for g in view.groups],
        },
        "series": history.series(),
        "lag_partitions": [
            {"group": r.group, "topic": r.topic, "partition": r.partition, "lag": r.lag} for r in view.lag
        ],
        "receipts": receipts,
        "dlq_by_code": dict(sorted(dlq_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "dlq_by_source": dict(sorted(dlq_sources.items(), key=lambda kv: (-kv[1], kv[0]))),
        "latest_rejects": [
            {"code": r.code, "source": r.source, "at": r.at, "where": r.where} for r in latest
        ],
        "share": dict(sorted(share.items())),
        "alerts": alerts,
        "gateway_up": gateway_up,
        "tables": dict(sorted(tables.items())),
    }


def healthy(document: Mapping[str, Any]) -> bool:
    """Whether a snapshot is all green: broker, topics, every target up, no stage failure."""
    health = document["health"]
    return bool(
        health["broker"]["ok"]
        and health["topics"]["ok"]
        and all(t["up"] for t in health["targets"])
        and not health["stage_failures"]
    )
