"""Prometheus metrics of a hub process: the registry and every series, each stage's and the gateway's.

Every metric lives in :data:`REGISTRY` (not prometheus_client's global one), served by
:func:`start_server` in a worker and by ``GET /metrics`` in the gateway. Labels are only stage names,
error codes, receipt statuses, pathway kinds, share rules and verdicts, network ids and alert statuses:
never a patient id, a source message id or anything clinical (docs/OPERATIONS.md).

A ground-floor module (docs/LAYOUT.md): it defines the series and imports nothing of the pipeline,
so the gateway serves ``GET /metrics`` without loading the stages or faust. The agents count what
they process, and what their outputs say, into these series with :mod:`hub.streams.counting`.
:func:`watch_tables` counts each faust table's keys (``hub_table_keys``); the gateway adds its alerts
by state and their read/dismiss changes. Consumer lag is measured from the broker by the console
(``hub.console``), not here: a stopped worker cannot report it.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from hub.logging import get_logger
from hub.settings import metrics_ports

log = get_logger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

#: Per-record processing time, from well under a millisecond (a reject) to seconds (a large bundle).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Label values longer than this are cut: a label is a code, never free text.
LABEL_MAX = 64

STAGE_RECORDS = Counter(
    "hub_stage_records", "Records a stage's agent processed.", ["stage"], registry=REGISTRY
)
STAGE_OUTPUTS = Counter(
    "hub_stage_outputs", "Records a stage's agent produced, by stage.", ["stage"], registry=REGISTRY
)
STAGE_SECONDS = Histogram(
    "hub_stage_seconds",
    "Time a stage spent on one record (routing and sending its outputs).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
#: Records in one batch an agent took: one at low load, up to the batch's maximum under a backlog.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200)
STAGE_BATCH_RECORDS = Histogram(
    "hub_stage_batch_records",
    "Records in each batch a stage's agent took (hub.streams.agents: larger under a backlog).",
    ["stage"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
STAGE_FAILURES = Counter(
    "hub_stage_failures",
    "Records on which a stage raised, or that Kafka refused for good (the partition moves on).",
    ["stage"],
    registry=REGISTRY,
)
RECEIPTS_TOTAL = Counter(
    "hub_receipts",
    "Receipts published, by status (accepted, duplicate, rejected) and error code (empty unless rejected).",
    ["status", "code"],
    registry=REGISTRY,
)
DLQ_TOTAL = Counter(
    "hub_dlq", "Inputs sent to the dead-letter topic, by error code.", ["code"], registry=REGISTRY
)
PATHWAY_EVENTS = Counter(
    "hub_pathway_events", "Events published on the pathway, by kind.", ["kind"], registry=REGISTRY
)
SHARE_DECISIONS = Counter(
    "hub_share_decisions",
    "Share decisions (one per event and recipient), by deciding rule and verdict.",
    ["rule", "verdict"],
    registry=REGISTRY,
)
ALERTS_TOTAL = Counter(
    "hub_alerts", "GP alerts published, by care network and status.", ["network", "status"], registry=REGISTRY
)


TABLE_KEYS = Gauge(
    "hub_table_keys",
    "Keys in a faust table held by this worker (its active partitions; an estimate with RocksDB).",
    ["table"],
    registry=REGISTRY,
)
#: How often a worker counts its tables' keys (a faust timer; cheap for memory, estimated for RocksDB).
TABLE_KEYS_SECONDS = 5.0
TABLE_CHANGELOG_RECORDS = Counter(
    "hub_table_changelog_records",
    "Changelog records a worker read into a table: its recovery (at start, after a rebalance) and standbys.",
    ["table"],
    registry=REGISTRY,
)

GATEWAY_ALERT_CHANGES = Counter(
    "hub_gateway_alert_changes",
    "Alerts the gateway stored (received), pushed to a GP's stream (pushed), or a GP read or dismissed.",
    ["change"],
    registry=REGISTRY,
)

BROKER_CONNECTED = Gauge(
    "hub_broker_connected",
    "0 while this process's Kafka clients cannot reach the broker (from broker.unavailable to "
    "broker.recovered in its log), 1 otherwise.",
    registry=REGISTRY,
)
CLIENT_ERRORS_FOLDED = Counter(
    "hub_kafka_client_errors_folded",
    "Kafka client connection-error log lines folded into broker.* events instead of written.",
    registry=REGISTRY,
)


class AlertStateCollector(Collector):
    """``hub_gateway_alerts{state}``: the gateway's stored alerts by state, read from its store at scrape.

    A gauge from the SQLite file (not a counter in memory): it survives gateway restarts. Only the
    gateway sets a source; in a worker it yields nothing.
    """

    def __init__(self) -> None:
        self.count: Callable[[], Mapping[str, int]] | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """The stored alerts by state (new, read, dismissed)."""
        count = self.count
        if count is None:
            return []
        family = GaugeMetricFamily(
            "hub_gateway_alerts",
            "Alerts the gateway holds, by state (new, read, dismissed).",
            labels=["state"],
        )
        for state, number in sorted(count().items()):
            family.add_metric([label(state)], float(number))
        return [family]


GATEWAY_ALERT_STATES = AlertStateCollector()
REGISTRY.register(GATEWAY_ALERT_STATES)


def _table_keys(table: Any) -> int:
    """A table's keys in this worker's active partitions.

    RocksDB: the sum of ``rocksdb.estimate-num-keys`` of the active partitions' databases, since
    counting exactly would read every key on each tick, less faust's own entry in each (the changelog
    offset the database holds data up to); memory: the exact count.
    """
    store = table.data
    databases = getattr(store, "_dbs_for_actives", None)
    if databases is not None:
        try:
            count = 0
            for db in databases():
                estimate = int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
                count += max(0, estimate - (db.get(store.offset_key) is not None))
            return count
        except (AttributeError, TypeError):  # another RocksDB binding: count them
            pass
    return len(table)


def changelog_reader(table: str) -> Callable[[Any], Awaitable[None]]:
    """faust's ``on_changelog_event`` of ``table``: counts each changelog record read into it.

    With RocksDB a restarted worker reads only what was written since it stopped; with memory, or a
    new folder, every record of its partitions' changelogs (docs/STATE.md).
    """
    counter = TABLE_CHANGELOG_RECORDS.labels(table=label(table))

    async def read(_event: Any) -> None:
        counter.inc()

    return read


def watch_tables(app: Any, interval: float = TABLE_KEYS_SECONDS) -> None:
    """Count the keys of every table of the faust ``app`` into ``hub_table_keys`` every ``interval``."""

    @app.timer(interval=interval)  # type: ignore[untyped-decorator]  # faust's is untyped
    async def count_table_keys() -> None:
        for name, table in list(app.tables.items()):
            TABLE_KEYS.labels(table=label(name)).set(_table_keys(table))


def label(value: object) -> str:
    """A label value: a string cut to :data:`LABEL_MAX` characters; anything else is empty."""
    return value[:LABEL_MAX] if isinstance(value, str) else ""


def start_server(host: str, port: int) -> tuple[str, int]:
    """Serve :data:`REGISTRY` on ``http://host:<port>/metrics`` in a thread; return the bound address.

    A taken port (another worker of this host) passes to the next of :func:`metrics_ports`; OSError
    when they are all taken or the address cannot be used.
    """
    ports = metrics_ports(port)
    for candidate in ports[:-1]:
        try:
            return _serve(host, candidate)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            log.info("metrics.port_taken", host=host, port=candidate)
    return _serve(host, ports[-1])


def _serve(host: str, port: int) -> tuple[str, int]:
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    bound_host, bound_port = server.server_address[:2]
    return str(bound_host), int(bound_port)


# --- where a worker's metrics are ---------------------------------------------------------------

#: Open (and locked) for as long as this process serves metrics: see :func:`advertise`.
_advertisements: list[IO[str]] = []


def advertisement_dir(state_dir: Path) -> Path:
    """The folder where running workers name their metrics address (one file per worker)."""
    return state_dir.expanduser() / "metrics"


def advertise(state_dir: Path, app_id: str, host: str, port: int) -> Path | None:
    """Name this worker's metrics address in ``<state_dir>/metrics/worker-<pid>.json``.

    The file is locked (``flock``) for as long as the process lives, so a reader can tell a running
    worker's file from one a killed worker left (the kernel drops the lock with the process); the
    file is removed at a normal exit. How `hub status` and the console find a worker whose port the
    system chose (``HUB_METRICS_PORT=0``). A folder that cannot be written is logged
    (``metrics.not_advertised``), never fatal: the worker still serves its metrics.
    """
    folder = advertisement_dir(state_dir)
    path = folder / f"worker-{os.getpid()}.json"
    staging = folder / f".worker-{os.getpid()}.json.tmp"
    document = {"app_id": app_id, "host": host, "port": port, "pid": os.getpid(),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _forget_stale(folder)
        handle = os.fdopen(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w")
        # Locked before it is visible under its name: a reader never takes a live worker for a dead one.
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.write(json.dumps(document))
        handle.flush()
        os.replace(staging, path)
    except OSError as exc:
        log.warning("metrics.not_advertised", folder=str(folder), error=type(exc).__name__)
        return None
    _advertisements.append(handle)
    atexit.register(path.unlink, missing_ok=True)
    return path


def advertised(state_dir: Path, app_id: str) -> list[tuple[str, int]]:
    """(host, port) of the metrics of every running worker of ``app_id`` that advertised them."""
    found: list[tuple[str, int]] = []
    for path in sorted(advertisement_dir(state_dir).glob("worker-*.json")):
        try:
            with path.open(encoding="utf-8") as handle:
                if not _held(handle):
                    continue  # its worker is gone
                document = json.loads(handle.read())
        except (OSError, ValueError):
            continue
        if not isinstance(document, dict) or document.get("app_id") != app_id:
            continue
        host, port = document.get("host"), document.get("port")
        if isinstance(host, str) and isinstance(port, int) and 0 < port < 65536:
            found.append((host, port))
    return found


def _held(handle: IO[str]) -> bool:
    """Whether another open file (a running worker's) holds the lock of ``handle``'s file."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _forget_stale(folder: Path) -> None:
    """Remove the files of workers that are gone (killed: no exit handler ran)."""
    for path in folder.glob("worker-*.json"):
        try:
            with path.open(encoding="utf-8") as handle:
                if not _held(handle):
                    path.unlink(missing_ok=True)
        except OSError:
            continue
