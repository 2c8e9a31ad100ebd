"""``hub bench``: the hub against the machine's own limit, from one run on a real broker.

One run measures, in this order (each phase on its own topic prefix and faust app id, so no phase
sees another's state):

1. **Raw passthrough**: an aiokafka consumer reads the records the hub is about to ingest and an
   aiokafka producer (``acks=all``, idempotent) writes them again, same partitions, same sizes, in
   one process. This is what the broker and the client library can do on this machine.
2. **Hub throughput**: one ``hub worker`` process with the demo sources and recipients consumes the
   same pre-loaded, signed demo feed. Time runs from the worker's first output record (the start of
   consumption, read from the record's Kafka timestamp) to the last receipt and to the last
   recipient-topic record (the end of the full pipeline: ingest, then identity and its share decisions).
3. **Latency**: the same worker, fed at a fixed rate of about half the sustained throughput of 2 with
   the next messages of the feed; from each ingest record's timestamp to its receipt, to the first
   recipient-topic copy of each of its events, and to an alert its events made.
4. **Worker peak memory**: ``VmHWM`` of the worker process after phases 2 and 3; then, the worker
   stopped, its table state: keys and bytes of each table (RocksDB, the default store); then the
   same worker started again on it with new inputs: how long until it handled them end to end
   (:class:`ProbeWatch`), how many changelog records it read, its RSS with the whole state.
5. **Scaling**: phases 1 and 2 again with two processes (two passthrough processes; two workers of
   one app id) on fresh topics.
6. **State** (``--state-patients N``): the state of phase 2-4 copied to N patients (``bench.state``);
   a worker rebuilding it from the changelogs, restarted on it, then fed new inputs with it in place.

The run ends with the targets of issue 13 (:func:`evaluate_targets`, :func:`render_targets`). The
pure helpers (percentiles, pacing, targets, readiness, the result document, the copies' keys) are
unit-tested without Kafka in ``tests/functional/test_bench_smoke.py``; everything else needs a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import platform
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from types import FrameType
from typing import Any

from aiokafka import TopicPartition
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError

from bench.sampling import SAMPLE_RATE, Sampler, summarise_file
from bench.state import (
    MAX_RECORD_BYTES,
    copies_for,
    new_producer,
    new_reader,
    read_table_state,
    write_state_copies,
)
from hub.broker.embedded import KAFKA_VERSION, BrokerLayout, EmbeddedBroker, tail
from hub.consent import load_recipients
from hub.crypto.config import keyring_from_settings
from hub.crypto.records import RecordOpener
from hub.demo.generator import generate_feed
from hub.errors import BrokerError, ErrorCode, HubError
from hub.ingest.signature import sign
from hub.kafka.admin import ensure_topics
from hub.records import (
    CONTENT_TYPE_HEADER,
    MESSAGE_ID_HEADER,
    SIGNATURE_HEADER,
    SOURCE_HEADER,
    decode_json,
    encode_headers,
)
from hub.run import DEMO_RECIPIENTS_FILE, DEMO_SOURCES_FILE, prepare_demo_environment
from hub.settings import Settings
from hub.sources.registry import load_sources
from hub.streams.tables import TABLES
from hub.streams.worker import create_contract_topics
from hub.topics import TopicNames

#: Version of the JSON document ``hub bench --output`` writes.
RESULT_SCHEMA = "hub-bench/2"
#: Header carrying the send time (ns since the epoch) of a latency-phase record.
SENT_AT_HEADER = "bench-sent-at"
#: Issue 13: the figures the benchmark must show on the 2-core machine (see :func:`evaluate_targets`).
TARGET_RATIO = 0.25
TARGET_CPU_MS_PER_INPUT = 1.5
TARGET_RECORDS_PER_INPUT = 12.0
TARGET_RECIPIENT_P99_MS = 100.0
TARGET_ALERT_P99_MS = 250.0
TARGET_SPEEDUP = 1.7
TARGET_PEAK_RSS_MB = 300.0
TARGET_RESTART_SECONDS = 30.0
TARGET_PATIENTS_IN_STATE = 100_000
#: The verdicts of the targets table: a measure the run skipped is never "met".
MET, MISSED, NOT_MEASURED = "yes", "no", "not measured"
#: Fraction of the feed kept for the latency phase; the rest is the throughput phase's input.
LATENCY_SHARE = 0.35
#: Offered load of the latency phase, as a fraction of the sustained hub throughput.
LOAD_FACTOR = 0.5
#: Seconds without a new output record after which a phase's pipeline counts as drained.
QUIET_SECONDS = 5.0
#: Seconds the worker's CPU is measured with no input, once the latency phase has drained: what a
#: worker of a quiet region costs (its timers, its consumer's fetches, its agents' waits).
IDLE_SECONDS = 10.0
#: A restarted worker is ready once its changelog reads have not moved for this long.
RESTART_SETTLE_SECONDS = 5.0
#: Fewer inputs than this say too little about memory per input to extrapolate to the target's size.
MIN_INPUTS_TO_EXTRAPOLATE = 2000
#: Raw passthrough runs per phase; the median one is reported.
RAW_REPEATS = 3
#: New inputs a restarted worker is timed on, end to end; from this many demo patients' feed at least.
PROBE_INPUTS = 10
PROBE_PATIENTS = 10
#: Seconds between two progress lines of a long wait.
PROGRESS_SECONDS = 5.0
#: A restarted worker that handles some new inputs but not the others for this long has lost them.
PROBE_STALL_SECONDS = 60.0
#: Appended to the message ids of the restarts' new inputs: the demo generator numbers its messages per
#: source, whatever the seed, so another seed's feed would repeat the first feed's ids (duplicates).
FRESH_ID_SUFFIX = "-new"
MEBIBYTE = 1024 * 1024

Progress = Callable[[str], None]


class BenchFailed(HubError):
    """The hub under test failed or stalled: a worker exited, or inputs went without a receipt."""

    code = ErrorCode.INTERNAL


# --- pure helpers (unit-tested) -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | int]:
    """``{count, p50, p95, p99, max}`` in milliseconds (rounded to 0.1 ms); ``{count: 0}`` when empty."""
    if not values_ms:
        return {"count": 0}
    return {
        "count": len(values_ms),
        "p50": round(percentile(values_ms, 50), 1),
        "p95": round(percentile(values_ms, 95), 1),
        "p99": round(percentile(values_ms, 99), 1),
        "max": round(max(values_ms), 1),
    }


def per_second(count: float, seconds: float) -> float:
    """A rate; 0 for an empty or instantaneous interval rather than a division by zero."""
    return count / seconds if seconds > 0 else 0.0


def messages_needed(rate: float, duration: float) -> int:
    """How many messages a paced sender needs to offer ``rate`` per second for ``duration`` seconds."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    return max(1, math.ceil(rate * duration))


def send_offset(index: int, rate: float) -> float:
    """Seconds after the start at which message ``index`` (from 0) is due at a constant ``rate``."""
    return index / rate


def pacing_delay(start: float, index: int, rate: float, now: float) -> float:
    """How long to sleep before sending message ``index``; 0 when it is due or late.

    Due times are absolute (``start + index / rate``), so a late send is followed by sends without
    sleep until the schedule is met again: the offered rate does not drift with the sender's delays.
    """
    return max(0.0, start + send_offset(index, rate) - now)


def split_feed(total: int, latency_share: float) -> tuple[int, int]:
    """(throughput messages, latency messages) of a feed of ``total``; each part has at least one."""
    if total < 2:
        raise ValueError(f"a feed of {total} messages cannot feed two phases")
    latency = min(total - 1, max(1, round(total * latency_share)))
    return total - latency, latency


def steady_rate(timestamps: Sequence[float], low: float = 10, high: float = 90) -> float:
    """Records per second between the ``low`` and ``high`` percentiles of their times (no warm-up/tail)."""
    if len(timestamps) < 3:
        return 0.0
    ordered = sorted(timestamps)
    first = math.floor((len(ordered) - 1) * low / 100)
    last = math.ceil((len(ordered) - 1) * high / 100)
    return per_second(last - first, ordered[last] - ordered[first])


def memory_estimate(
    *, ready_mb: float, peak_mb: float, inputs: int, inputs_per_patient: float, patients: int
) -> tuple[float, float]:
    """(RSS growth in MB per 1,000 inputs, RSS in MB for ``patients`` by linear extrapolation).

    The growth is the worker's peak RSS over its RSS when ready, per input it holds state for (the
    demo feed has ``inputs_per_patient`` per patient). With the memory store every table entry stays
    on the Python heap, so RSS grows with the inputs; with RocksDB (the default) the entries go to
    disk and RSS grows only until the databases' caches and write buffers are full: the JSON gives
    the extrapolation for the memory store only (docs/STATE.md).
    """
    growth = per_second(max(0.0, peak_mb - ready_mb) * 1000, inputs)
    return growth, ready_mb + growth * inputs_per_patient * patients / 1000


def table_footprint(tables_dir: Path, app_id: str) -> dict[str, dict[str, int]]:
    """Keys, live bytes and bytes on disk of each table, over the folders of ``app_id``'s workers.

    Read after the workers stopped: each partition database (RocksDB) is opened read-only and its
    entries counted, faust's offset entry aside. Live bytes are their keys and values, what the table
    holds once compacted; bytes on disk are the blocks its files take, as ``du`` counts them, which
    also holds superseded versions until RocksDB compacts them. Empty with the memory store.
    """
    from faust.stores.rocksdb import Store  # noqa: PLC0415 - faust is slow to import
    from rocksdict import AccessType, Options, Rdict  # noqa: PLC0415 - as faust's store opens them

    footprint: dict[str, dict[str, int]] = {}
    for path in sorted(tables_dir.glob(f"{app_id}-data*/v1/tables/*.db")):
        entry = footprint.setdefault(
            path.name.rsplit("-", 1)[0], {"keys": 0, "live_bytes": 0, "disk_bytes": 0}
        )
        entry["disk_bytes"] += sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                # Raw mode: keys and values are bytes (rocksdict types them as any value it stores).
                if isinstance(key, bytes) and isinstance(value, bytes) and key != Store.offset_key:
                    entry["keys"] += 1
                    entry["live_bytes"] += len(key) + len(value)
        finally:
            db.close()
    return footprint


@dataclass(frozen=True)
class Target:
    """One row of the targets table of issue 13: what the run measured and whether it met the target.

    ``met`` is :data:`MET`, :data:`MISSED` or :data:`NOT_MEASURED`: a measure the run skipped (no
    scaling phase, no alert in the latency window) or measured at another size than the target's
    (a state of fewer than 100,000 patients) is never met. ``value`` is the figure compared, if any.
    """

    measure: str
    target: str
    measured: str
    met: str
    note: str = ""
    value: float | None = None


@dataclass(frozen=True)
class Limit:
    """A target's bound: ``value <comparison> bound``, shown with its unit."""

    comparison: str
    bound: float
    unit: str = ""

    def __str__(self) -> str:
        return f"{self.comparison} {self.bound:g}{self.unit}"

    def met_by(self, value: float) -> bool:
        return {">=": value >= self.bound, "<=": value <= self.bound, "<": value < self.bound}[
            self.comparison
        ]


def _compared(measure: str, limit: Limit, value: float | None, measured: str, note: str = "") -> Target:
    if value is None:
        return Target(measure, str(limit), measured, NOT_MEASURED, note)
    return Target(measure, str(limit), measured, MET if limit.met_by(value) else MISSED, note, value)


def _at_size(measure: str, limit: Limit, value: float, measured: str, *, patients: int, where: str) -> Target:
    """A row about a state of :data:`TARGET_PATIENTS_IN_STATE` patients: not measured at a smaller one."""
    if patients < TARGET_PATIENTS_IN_STATE:
        return Target(
            measure,
            str(limit),
            measured,
            NOT_MEASURED,
            f"{where} with {patients:,} patients in state; the target is for "
            f"{TARGET_PATIENTS_IN_STATE:,}: run with --state-patients {TARGET_PATIENTS_IN_STATE}",
            value,
        )
    return _compared(measure, limit, value, measured)


def evaluate_targets(result: Mapping[str, Any]) -> list[Target]:
    """The targets table of issue 13 from a result document (see :func:`result_document`)."""
    hub, raw = result["hub"], result["raw_passthrough"]
    latency = result.get("latency") or {}
    rows = [
        _compared(
            "hub inputs/s / raw passthrough records/s",
            Limit(">=", TARGET_RATIO),
            hub["ratio_to_raw"],
            f"{hub['ratio_to_raw']:.3f} ({hub['inputs_per_s']:,.1f} / {raw['records_per_s']:,.0f})",
        ),
        _compared(
            "worker CPU per input (demo mix)",
            Limit("<=", TARGET_CPU_MS_PER_INPUT, " ms"),
            hub["worker_cpu_ms_per_input"],
            f"{hub['worker_cpu_ms_per_input']:.2f} ms",
        ),
        _compared(
            "records written per input",
            Limit("<=", TARGET_RECORDS_PER_INPUT),
            hub["records_written_per_input"],
            f"{hub['records_written_per_input']:.1f}",
        ),
    ]
    for what, key, bound in (
        ("recipient topic", "recipient_ms", TARGET_RECIPIENT_P99_MS),
        ("alert", "alert_ms", TARGET_ALERT_P99_MS),
    ):
        measure, limit = f"p99 ingest -> {what}, at half the sustained load", Limit("<", bound, " ms")
        summary = latency.get(key) or {"count": 0}
        fixed_rate = (result.get("config") or {}).get("latency_rate")
        if summary["count"] and fixed_rate:
            # Taken at a load the run was told, not at the target's: shown, never compared.
            measured = f"{summary['p99']:.1f} ms (n={summary['count']:,})"
            note = f"at {fixed_rate:g} inputs/s (--latency-rate), not half the sustained load"
            rows.append(Target(measure, str(limit), measured, NOT_MEASURED, note, summary["p99"]))
        elif summary["count"]:
            measured = f"{summary['p99']:.1f} ms (n={summary['count']:,})"
            rows.append(_compared(measure, limit, summary["p99"], measured))
        else:
            note = "no sample in the latency window" if latency else "no latency phase"
            rows.append(_compared(measure, limit, None, "-", note))
    scaling = result.get("scaling")
    speedup = Limit(">=", TARGET_SPEEDUP, "x")
    if scaling:
        measured = (
            f"{scaling['speedup']:.2f}x ({hub['inputs_per_s']:,.1f} -> "
            f"{scaling['hub']['inputs_per_s']:,.1f} inputs/s)"
        )
        busy, cores = scaling["hub"].get("machine_cores_busy"), (result.get("machine") or {}).get("cpus")
        # Two workers and the broker on one machine: say how much of it the two-worker run had left.
        note = (
            f"the two workers' run kept {busy:.2f} of the machine's {cores} cores busy"
            if busy and cores and not speedup.met_by(scaling["speedup"])
            else ""
        )
        rows.append(_compared("throughput, 1 -> 2 workers", speedup, scaling["speedup"], measured, note))
    else:
        rows.append(_compared("throughput, 1 -> 2 workers", speedup, None, "-", "skipped (--skip-scaling)"))
    state = result.get("state")
    if state:
        patients, where = state["patients_in_state"], "state phase"
        peak, restart = state["worker_peak_rss_mb"], state["restart"]["seconds_to_ready"]
        # The larger of the worker rebuilding the state and the one restarted on it, then loaded.
        during = (
            " (rebuilding it)"
            if state["rebuild"]["peak_rss_mb"] >= state["worker_peak_rss_mb_loaded"]
            else ""
        )
    else:
        memory = result["memory"]
        patients, where = memory["patients_in_state"], "throughput phase's worker"
        peak, restart = memory["worker_peak_rss_mb"], memory["restart"]["seconds_to_ready"]
        during = ""
    rows.append(
        _at_size(
            f"worker peak RSS with {TARGET_PATIENTS_IN_STATE:,} patients in state",
            Limit("<=", TARGET_PEAK_RSS_MB, " MB"),
            peak,
            f"{peak:,.0f} MB at {patients:,} patients{during}",
            patients=patients,
            where=where,
        )
    )
    rows.append(
        _at_size(
            "restart to ready with that state",
            Limit("<=", TARGET_RESTART_SECONDS, " s"),
            restart,
            f"{restart:,.1f} s at {patients:,} patients",
            patients=patients,
            where=where,
        )
    )
    return rows


def render_targets(targets: Sequence[Mapping[str, Any]]) -> str:
    """The targets as a Markdown table (measure | target | measured | met?), notes numbered below it."""
    header = ("measure", "target", "measured", "met?")
    notes: list[str] = []
    rows: list[tuple[str, str, str, str]] = []
    for target in targets:
        met = target["met"]
        if target["note"]:
            notes.append(target["note"])
            met = f"{met} ({len(notes)})"
        rows.append((target["measure"], target["target"], target["measured"], met))
    widths = [max(len(row[n]) for row in (header, *rows)) for n in range(4)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    lines = [line(header), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *map(line, rows)]
    lines.extend(f"({number}) {note}" for number, note in enumerate(notes, start=1))
    return "\n".join(lines)


def result_document(
    *,
    command: str,
    config: Mapping[str, Any],
    raw: Mapping[str, Any],
    hub: Mapping[str, Any],
    latency: Mapping[str, Any] | None,
    memory: Mapping[str, Any],
    scaling: Mapping[str, Any] | None,
    state: Mapping[str, Any] | None = None,
    profile: Mapping[str, Any] | None = None,
    samples: Mapping[str, Any] | None = None,
    machine: Mapping[str, Any] | None = None,
    started_at: datetime | None = None,
) -> dict[str, Any]:
    """The JSON document of one run; ``targets`` (the table ``hub bench`` ends with) comes from the rest."""
    document: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "command": command,
        "started_at": (started_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "machine": dict(machine if machine is not None else machine_info()),
        "config": dict(config),
        "raw_passthrough": dict(raw),
        "hub": dict(hub),
        "latency": dict(latency) if latency is not None else None,
        "memory": dict(memory),
        "scaling": dict(scaling) if scaling is not None else None,
        "state": dict(state) if state is not None else None,
        "profile": dict(profile) if profile is not None else None,
        "samples": dict(samples) if samples is not None else None,
    }
    document["targets"] = [asdict(target) for target in evaluate_targets(document)]
    return document


def machine_info() -> dict[str, Any]:
    """What the figures depend on: cores, CPU model, memory, Python, Kafka."""
    model = ""
    memory_mb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_mb": memory_mb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kafka": KAFKA_VERSION,
    }


def _fmt(value: float, unit: str = "") -> str:
    text = f"{value:,.0f}" if value >= 100 else f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"
    return f"{text} {unit}".rstrip()


def _latency_row(label: str, summary: Mapping[str, Any] | None) -> tuple[str, str]:
    if not summary or not summary.get("count"):
        return label, "no sample"
    return label, (
        f"p50 {summary['p50']:.0f} / p95 {summary['p95']:.0f} / p99 {summary['p99']:.0f} ms "
        f"(n={summary['count']:,})"
    )


def render_table(result: Mapping[str, Any]) -> str:
    """The human-readable summary ``hub bench`` prints."""
    raw, hub, latency, memory = result["raw_passthrough"], result["hub"], result["latency"], result["memory"]
    rows: list[tuple[str, str]] = [
        (
            "raw passthrough (1 process)",
            f"{_fmt(raw['records_per_s'], 'records/s')}, {_fmt(raw['mb_per_s'], 'MB/s')} "
            f"({raw['records']:,} records, {raw['bytes'] / MEBIBYTE:.1f} MB)",
        ),
        (
            "hub, 1 worker: inputs",
            f"{_fmt(hub['inputs_per_s'], 'inputs/s')} to the last recipient record, "
            f"{_fmt(hub['inputs_per_s_to_receipts'], '/s')} to the last receipt "
            f"(steady {_fmt(hub['steady_inputs_per_s'], '/s')})",
        ),
        (
            "hub, 1 worker: pathway events",
            f"{_fmt(hub['pathway_events_per_s'], 'events/s')} ({hub['pathway_events']:,} events, "
            f"{hub['recipient_copies']:,} recipient copies, {hub['alerts']:,} alerts)",
        ),
        (
            "hub, 1 worker: records written",
            f"{hub['records_written_per_input']:.1f} per input, "
            f"{_fmt(hub['records_written_per_s'], 'records/s')} (all topics and changelogs)",
        ),
        (
            "hub, 1 worker: CPU",
            f"{hub['worker_cpu_ms_per_input']:.1f} ms of worker CPU per input, worker busy "
            f"{hub['worker_cpu_utilisation']:.0%} of the run; CPU s: broker {hub['broker_cpu_seconds']:.0f}, "
            f"other processes and steal {hub['other_cpu_seconds']:.0f}; "
            f"{hub.get('machine_cores_busy', 0):.2f} cores of the machine busy",
        ),
        ("hub / raw (inputs/s)", f"{hub['ratio_to_raw']:.3f}"),
    ]
    if latency:
        rows.append(
            (
                "latency offered load",
                f"{_fmt(latency['offered_inputs_per_s'], 'inputs/s')} for {latency['seconds']:.0f} s "
                f"({latency['sent']:,} inputs)"
                + (
                    f"; worker busy {latency['worker_busy_while_offered']:.0%} meanwhile, "
                    f"{latency['worker_cpu_ms_per_input']:.1f} ms of CPU per input "
                    f"({latency.get('worker_event_loop_cpu_share', 0):.0%} in its event loop's thread)"
                    if "worker_busy_while_offered" in latency
                    else ""
                ),
            )
        )
        rows.append(_latency_row("  ingest -> receipt", latency["receipt_ms"]))
        rows.append(_latency_row("  ingest -> recipient topic", latency["recipient_ms"]))
        rows.append(_latency_row("  ingest -> alert", latency["alert_ms"]))
    rows.append(
        (
            "worker peak RSS (VmHWM)",
            f"{memory['worker_peak_rss_mb']:.0f} MB ({memory['patients_in_state']:,} patients in state; "
            f"{memory['worker_rss_ready_mb']:.0f} MB when ready, before any input; "
            f"{memory['worker_rss_end_mb']:.0f} MB at the end)",
        )
    )
    if memory.get("worker_idle_cpu_percent") is not None:
        rows.append(("worker CPU while idle", f"{memory['worker_idle_cpu_percent']:.1f} % of a core"))
    rows.append(("worker restarted on its state", _restart_text(memory["restart"])))
    tables = memory["tables"]
    rows.append(
        (
            f"table state ({memory['table_store']})",
            f"{memory['table_disk_mb']:.1f} MB on disk, {memory['table_disk_kb_per_1000_inputs']:,.0f} kB "
            f"per 1,000 inputs; {sum(t['keys'] for t in tables.values()):,} keys, "
            f"{sum(t['live_bytes'] for t in tables.values()) / MEBIBYTE:.1f} MB live",
        )
    )
    scaling = result.get("scaling")
    if scaling:
        rows.append(
            (
                "raw passthrough (2 processes)",
                f"{_fmt(scaling['raw_passthrough']['records_per_s'], 'records/s')}",
            )
        )
        rows.append(
            (
                "hub, 2 workers: inputs",
                f"{_fmt(scaling['hub']['inputs_per_s'], 'inputs/s')} "
                f"(x{scaling['speedup']:.2f} of 1 worker; /raw {scaling['hub']['ratio_to_raw']:.3f})",
            )
        )
    state = result.get("state")
    if state:
        rows.extend(_state_rows(state, hub))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
    lines.append("")
    lines.append("targets (issue 13):")
    lines.append(render_targets(result["targets"]))
    return "\n".join(lines)


def _restart_text(restart: Mapping[str, Any]) -> str:
    return (
        f"ready in {restart['seconds_to_ready']:.1f} s ({restart['probe_inputs']} new inputs end to end; "
        f"receipts in {restart['seconds_to_receipts']:.1f} s), {restart['changelog_records_read']:,} "
        f"changelog records read, {restart['rss_mb']:.0f} MB RSS then"
    )


def _state_rows(state: Mapping[str, Any], hub: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The state phase's rows of the summary (``--state-patients``)."""
    loaded = state["hub"]
    tables = state["tables"]
    return [
        (
            "state: patients in state",
            f"{state['patients_in_state']:,}: {state['copies']:,} copies of the throughput phase's state of "
            f"{state['template_patients']:,} patients ({state['records_written']:,} changelog records, "
            f"{state['bytes_written'] / MEBIBYTE:,.0f} MB, written in {state['write_seconds']:.0f} s)",
        ),
        ("state: first start, rebuilt from the changelogs", _restart_text(state["rebuild"])),
        ("state: worker restarted on it", _restart_text(state["restart"])),
        (
            "state: hub, 1 worker, with the state",
            f"{_fmt(loaded['inputs_per_s'], 'inputs/s')} (without: {_fmt(hub['inputs_per_s'], '/s')}), "
            f"{loaded['worker_cpu_ms_per_input']:.1f} ms of worker CPU per input, "
            f"{loaded['inputs']:,} new inputs",
        ),
        (
            "state: worker peak RSS (VmHWM)",
            f"{state['worker_peak_rss_mb']:.0f} MB (rebuilding {state['rebuild']['peak_rss_mb']:.0f} MB, "
            f"restarted and loaded {state['worker_peak_rss_mb_loaded']:.0f} MB)",
        ),
        (
            "state: tables",
            f"{state['table_disk_mb']:,.0f} MB on disk; {sum(t['keys'] for t in tables.values()):,} keys, "
            f"{sum(t['live_bytes'] for t in tables.values()) / MEBIBYTE:,.0f} MB live",
        ),
    ]


# --- the feed ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedMessage:
    """One demo message, serialised once, signed at send time."""

    source_id: str
    message_id: str
    content_type: str
    body: bytes


def prepare_feed(patients: int, seed: int, now: datetime) -> list[FeedMessage]:
    """The demo generator's feed for ``patients``, in time order, bodies serialised."""
    return [
        FeedMessage(m.source_id, m.message_id, m.content_type, m.body())
        for m in generate_feed(patients=patients, seed=seed, now=now)
    ]


def signed(
    message: FeedMessage, secret: bytes, *, extra: Sequence[tuple[str, bytes]] = ()
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) as ``hub publish`` sends them, signed now."""
    stamp = int(time.time())
    return (
        message.message_id.encode(),
        message.body,
        [
            *encode_headers(
                (
                    (SOURCE_HEADER, message.source_id),
                    (SIGNATURE_HEADER, sign(secret, message.source_id, message.body, stamp)),
                    (CONTENT_TYPE_HEADER, message.content_type),
                    (MESSAGE_ID_HEADER, message.message_id),
                )
            ),
            *extra,
        ],
    )


# --- Kafka helpers -------------------------------------------------------------------------------


def _record_bytes(record: Any) -> int:
    headers = sum(len(k) + len(v or b"") for k, v in record.headers or ())
    return len(record.key or b"") + len(record.value or b"") + headers


#: Partition ids by topic; the benchmark's topics never change their partition count.
_PARTITIONS: dict[str, tuple[int, ...]] = {}


def _partitions(bootstrap: str, topics: Sequence[str]) -> list[Any]:
    """The partitions of the topics (aiokafka's consumer has no public metadata lookup by name)."""
    missing = [topic for topic in topics if topic not in _PARTITIONS]
    if missing:
        lookup = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        try:
            for topic in missing:
                partitions = lookup.partitions_for_topic(topic)
                if not partitions:
                    raise BrokerError(f"topic {topic} does not exist on {bootstrap}")
                _PARTITIONS[topic] = tuple(sorted(partitions))
        finally:
            lookup.close()
    return [TopicPartition(topic, p) for topic in topics for p in _PARTITIONS[topic]]


class Reader:
    """Offsets, counts and edge timestamps of topics, without a consumer group."""

    def __init__(self, bootstrap: str, consumer: Any) -> None:
        self.bootstrap = bootstrap
        self.consumer = consumer

    @classmethod
    async def open(cls, bootstrap: str) -> Reader:
        return cls(bootstrap, await new_reader(bootstrap))

    async def close(self) -> None:
        await self.consumer.stop()

    async def ends(self, topics: Sequence[str]) -> dict[Any, int]:
        tps = _partitions(self.bootstrap, topics)
        return dict(await self.consumer.end_offsets(tps))

    async def count(self, topics: Sequence[str], since: Mapping[Any, int] | None = None) -> int:
        """Records in the topics (the hub writes without transactions: end offset = record count).

        With ``since`` (end offsets taken earlier), the records written after them.
        """
        ends = await self.ends(topics)
        return sum(end - (since or {}).get(tp, 0) for tp, end in ends.items())

    async def _records_at(self, wanted: Mapping[Any, int]) -> list[Any]:
        """The record at the given offset of each partition."""
        if not wanted:
            return []
        self.consumer.assign(list(wanted))
        for tp, offset in wanted.items():
            self.consumer.seek(tp, offset)
        found: dict[Any, Any] = {}
        deadline = time.monotonic() + 30
        while len(found) < len(wanted) and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset == wanted[tp] and tp not in found:
                        found[tp] = record
                if tp in found:
                    self.consumer.pause(tp)
        self.consumer.resume(*wanted)
        return list(found.values())

    async def first_timestamp(self, topics: Sequence[str], since: Mapping[Any, int] | None = None) -> float:
        """Seconds since the epoch of the earliest first record of the topics' partitions.

        With ``since`` (end offsets taken earlier), the first record written after them.
        """
        tps = _partitions(self.bootstrap, topics)
        begins = await self.consumer.beginning_offsets(tps)
        if since:
            begins = {tp: max(begins[tp], since.get(tp, 0)) for tp in tps}
        ends = await self.consumer.end_offsets(tps)
        records = await self._records_at({tp: begins[tp] for tp in tps if ends[tp] > begins[tp]})
        return min(r.timestamp for r in records) / 1000 if records else math.nan

    async def last_timestamp(self, topics: Sequence[str]) -> float:
        """Seconds since the epoch of the latest last record of the topics' partitions."""
        tps = _partitions(self.bootstrap, topics)
        begins = await self.consumer.beginning_offsets(tps)
        ends = await self.consumer.end_offsets(tps)
        records = await self._records_at({tp: ends[tp] - 1 for tp in tps if ends[tp] > begins[tp]})
        return max(r.timestamp for r in records) / 1000 if records else math.nan

    async def settle(self, topics: Sequence[str], *, quiet: float, check: Callable[[], None]) -> int:
        """Wait until the topics gain no record for ``quiet`` seconds; return their record count."""
        count, since = await self.count(topics), time.monotonic()
        while time.monotonic() - since < quiet:
            await asyncio.sleep(0.5)
            check()
            now_count = await self.count(topics)
            if now_count != count:
                count, since = now_count, time.monotonic()
        return count


async def preload(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Produce records (key, value, headers), ``acks=all``, idempotent, and wait for every ack."""
    producer = await new_producer(bootstrap)
    try:
        futures = [
            await producer.send(topic, value=value, key=key, headers=headers)
            for key, value, headers in records
        ]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# --- phase 1: raw passthrough --------------------------------------------------------------------


@dataclass(frozen=True)
class Passthrough:
    """One raw consume → produce run: wall-clock start and end (epoch seconds), records and bytes."""

    processes: int
    records: int
    bytes: int
    started: float
    ended: float
    #: records/s of every run when this is the median of several (see :func:`median_run`).
    rates: tuple[float, ...] = ()

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def as_dict(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "records": self.records,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(per_second(self.records, self.seconds), 1),
            "mb_per_s": round(per_second(self.bytes / MEBIBYTE, self.seconds), 2),
            "runs_records_per_s": list(self.rates),
        }

    @staticmethod
    def combined(parts: Sequence[Passthrough]) -> Passthrough:
        """Several processes' runs as one: all records over the span from the first start to the last end."""
        return Passthrough(
            processes=sum(p.processes for p in parts),
            records=sum(p.records for p in parts),
            bytes=sum(p.bytes for p in parts),
            started=min(p.started for p in parts),
            ended=max(p.ended for p in parts),
        )


async def passthrough(bootstrap: str, source: str, target: str, partitions: Sequence[int]) -> Passthrough:
    """Consume ``partitions`` of ``source`` from the start and produce each record to the same
    partition of ``target``; time from the first fetched batch to the last acknowledgement."""
    consumer = await new_reader(bootstrap)
    producer = await new_producer(bootstrap)
    try:
        tps = [TopicPartition(source, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        expected = sum(ends.values())
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count = size = 0
        started = math.nan
        futures = []
        while count < expected:
            batch = await consumer.getmany(timeout_ms=1000)
            if batch and math.isnan(started):
                started = time.time()
            for tp, records in batch.items():
                for record in records:
                    futures.append(
                        await producer.send(
                            target,
                            value=record.value,
                            key=record.key,
                            partition=tp.partition,
                            headers=list(record.headers or ()),
                        )
                    )
                    count += 1
                    size += _record_bytes(record)
        await producer.flush()
        await asyncio.gather(*futures)
        return Passthrough(1, count, size, started, time.time())
    finally:
        await producer.stop()
        await consumer.stop()


def passthrough_process(bootstrap: str, source: str, target: str, partitions: Sequence[int]) -> Passthrough:
    """:func:`passthrough` in a process of its own (the entry point of the 2-process run)."""
    return asyncio.run(passthrough(bootstrap, source, target, partitions))


async def passthrough_in_processes(
    bootstrap: str, source: str, target: str, partitions: int, processes: int
) -> Passthrough:
    """The raw passthrough with the partitions dealt over ``processes`` processes."""
    if processes == 1:
        return await passthrough(bootstrap, source, target, range(partitions))
    shares = [list(range(partitions))[n::processes] for n in range(processes)]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        # Start the processes (interpreter and imports) before the clock of any of them starts.
        await asyncio.gather(*(loop.run_in_executor(pool, time.sleep, 0.1) for _ in range(processes)))
        parts = await asyncio.gather(
            *(loop.run_in_executor(pool, passthrough_process, bootstrap, source, target, s) for s in shares)
        )
    return Passthrough.combined(parts)


def median_run(runs: Sequence[Passthrough]) -> Passthrough:
    """The run with the median rate (the upper one of an even count), with every run's rate attached."""
    if not runs:
        raise ValueError("no runs")
    ordered = sorted(runs, key=lambda r: per_second(r.records, r.seconds))
    return replace(
        ordered[len(ordered) // 2], rates=tuple(round(per_second(r.records, r.seconds), 1) for r in runs)
    )


# --- worker processes ----------------------------------------------------------------------------


def _proc_status_kb(pid: int, field_name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid: int | None, *, thread: int | None = None) -> float:
    """User plus system CPU time a process (or one of its threads) has used so far; 0 when it cannot
    be read."""
    if pid is None:
        return 0.0
    stat = Path(f"/proc/{pid}/stat") if thread is None else Path(f"/proc/{pid}/task/{thread}/stat")
    with contextlib.suppress(OSError, ValueError, IndexError):
        # Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
        fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def system_busy_seconds() -> float:
    """CPU time all cores have spent busy since boot (``/proc/stat``), 0 when it cannot be read."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(v) for v in Path("/proc/stat").read_text(encoding="utf-8").split("\n", 1)[0].split()[1:9]
        )
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return 0.0


@dataclass
class Worker:
    """One ``hub worker`` process started by the benchmark."""

    process: subprocess.Popen[bytes]
    log_file: Path
    profile_file: Path | None = None

    @classmethod
    def start(cls, environ: Mapping[str, str], log_file: Path, profile_file: Path | None = None) -> Worker:
        command = [sys.executable, "-m", "hub", "worker"]
        if profile_file is not None:
            command = [sys.executable, "-m", "cProfile", "-o", str(profile_file), "-m", "hub", "worker"]
        with log_file.open("wb") as log:
            process = subprocess.Popen(  # noqa: S603 - the hub's own worker, fixed arguments
                command,
                env=dict(environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: Ctrl-C reaches the benchmark, which then stops it in order.
                start_new_session=True,
            )
        return cls(process, log_file, profile_file)

    def check(self) -> None:
        """Raise with the end of the worker's log if it has exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchFailed(
                f"worker pid {self.process.pid} exited (code {code}); end of {self.log_file}:\n"
                + tail(self.log_file, 30),
                hint="the worker's log is above (and kept with the broker's in the directory named below)",
            )

    def rss_mb(self) -> float:
        return (_proc_status_kb(self.process.pid, "VmRSS") or 0) / 1024

    def changelog_records_read(self) -> int | None:
        """``hub_table_changelog_records_total`` over its tables, from its /metrics; None before it serves."""
        by_table = self.changelog_records_by_table()
        return None if by_table is None else sum(by_table.values())

    def changelog_records_by_table(self) -> dict[str, int] | None:
        """``hub_table_changelog_records_total`` of each table, from its /metrics; None before it serves.

        Its URL is the one it logged (``metrics.listening``: the benchmark gives it a free port).
        """
        urls = [
            json.loads(line)["url"]
            for line in self.log_file.read_text(errors="replace").splitlines()
            if '"metrics.listening"' in line
        ]
        if not urls:
            return None
        try:
            with urllib.request.urlopen(urls[-1], timeout=5) as response:  # noqa: S310 - its loopback URL
                text = response.read().decode()
        except OSError:
            return None
        pattern = r'^hub_table_changelog_records_total\{table="([^"]*)"[^}]*\} (\S+)$'
        return {table: round(float(value)) for table, value in re.findall(pattern, text, re.MULTILINE)}

    def peak_rss_mb(self) -> float:
        return (_proc_status_kb(self.process.pid, "VmHWM") or 0) / 1024

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def event_loop_cpu_seconds(self) -> float:
        """CPU of its main thread, where faust runs the agents' event loop (its consumer has a thread
        of its own)."""
        return cpu_seconds(self.process.pid, thread=self.process.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (faust stops in order; cProfile writes its file), SIGKILL after ``timeout``."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- phase 2: hub throughput ---------------------------------------------------------------------


def wait_for_leaders(bootstrap: str, topics: Sequence[str], timeout: float = 60.0) -> None:
    """Return once every partition of the topics has a leader (new topics take a moment)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="hub-bench")
    try:
        deadline = time.monotonic() + timeout
        while True:
            described = admin.describe_topics(list(topics))
            ready = len(described) == len(set(topics)) and all(
                not topic.get("error_code") and all(p.get("leader_id", -1) >= 0 for p in topic["partitions"])
                for topic in described
            )
            if ready:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the partitions of {len(topics)} new topics have no leader after {timeout:.0f} s"
                )
            time.sleep(0.2)
    finally:
        admin.close()


def group_assignment(bootstrap: str, group: str, topic: str) -> list[set[int]] | None:
    """The partitions of ``topic`` held by each member of a Stable consumer group, or None."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="hub-bench")
    try:
        described = admin.describe_groups([group])
    except KafkaError:
        return None  # no coordinator yet, or the group does not exist yet
    finally:
        admin.close()
    info = described.get(group) if isinstance(described, dict) else None
    if not info or info.get("group_state") != "Stable":
        return None
    return [
        {
            partition
            for assigned in (member.get("member_assignment") or {}).get("assigned_partitions", ())
            if assigned.get("topic") == topic
            for partition in assigned.get("partitions", ())
        }
        for member in info.get("members", ())
    ]


@dataclass(frozen=True)
class Phase:
    """One phase's topics and faust app id on the broker."""

    bootstrap: str
    prefix: str
    app_id: str
    partitions: int
    recipient_topics: tuple[str, ...]

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.prefix)

    @property
    def source_topic(self) -> str:
        """The signed feed, loaded once before the passthrough (the hub's own input comes later)."""
        return self.prefix + "bench.source"

    @property
    def passthrough_topic(self) -> str:
        return self.prefix + "bench.passthrough"

    @property
    def written_topics(self) -> list[str]:
        """Every topic a worker writes: the contract's but ingest, internal, recipients', changelogs."""
        topics = self.topics
        return [
            *(name for name in topics.contract() if name != topics.ingest),
            *topics.internal(),
            *self.recipient_topics,
            *(TopicNames.changelog(self.app_id, table) for table in TABLES),
        ]

    def settings(self) -> Settings:
        return Settings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=self.prefix,
            app_id=self.app_id,
            topic_partitions=self.partitions,
            sources_file=DEMO_SOURCES_FILE,
            recipients_file=DEMO_RECIPIENTS_FILE,
        )

    def environ(self, demo: Mapping[str, str]) -> dict[str, str]:
        return {
            **os.environ,
            **demo,
            "HUB_BOOTSTRAP_SERVERS": self.bootstrap,
            "HUB_TOPIC_PREFIX": self.prefix,
            "HUB_APP_ID": self.app_id,
            "HUB_TOPIC_PARTITIONS": str(self.partitions),
            # The feed is signed when loaded; a long run must not see it expire.
            "HUB_SIGNATURE_TOLERANCE_SECONDS": "86400",
            "HUB_LOG_JSON": "true",
            # Metrics stay on, as in production; each worker on a port of its own.
            "HUB_METRICS_PORT": "0",
        }

    async def written_by_topic(
        self, reader: Reader, since: Mapping[Any, int] | None = None
    ) -> dict[str, int]:
        """Records in each written topic (after ``since``), by name without the phase's prefix;
        recipient topics summed."""
        counts: dict[str, int] = {}
        for topic in self.written_topics:
            if topic in self.recipient_topics:
                name = f"hub.pathway.<recipient>.v1 ({len(self.recipient_topics)} topics)"
            else:
                name = topic.removeprefix(self.prefix).removeprefix(self.app_id + "-")
            counts[name] = counts.get(name, 0) + await reader.count([topic], since)
        return dict(sorted(counts.items(), key=lambda item: -item[1]))

    @classmethod
    def create(cls, bootstrap: str, name: str, partitions: int) -> Phase:
        """Fresh topics: the hub's (as ``hub topics create`` makes them), the source and the passthrough."""
        unique = f"bench-{name}-{uuid.uuid4().hex[:8]}"
        recipients = load_recipients(DEMO_RECIPIENTS_FILE)
        phase = cls(
            bootstrap,
            unique + ".",
            unique,
            partitions,
            tuple(unique + "." + r.topic for r in recipients),
        )
        settings = phase.settings()
        created = create_contract_topics(settings)
        created += ensure_topics(
            bootstrap,
            [phase.source_topic, phase.passthrough_topic],
            partitions=partitions,
            replication_factor=settings.replication_factor,
            configs={"max.message.bytes": str(MAX_RECORD_BYTES)},
        )
        wait_for_leaders(bootstrap, created)
        return phase

    async def wait_until_assigned(self, workers: Sequence[Worker], *, timeout: float) -> None:
        """Until the workers' group is Stable, every worker holds ingest partitions, and all are held.

        Loading the input only then keeps a late joiner's rebalance out of the measured interval.
        """
        deadline = time.monotonic() + timeout
        settled = 0
        while settled < 2:
            for worker in workers:
                worker.check()
            if time.monotonic() > deadline:
                raise BenchFailed(
                    f"the workers of {self.app_id} hold no stable assignment after {timeout:.0f} s",
                    hint="read the workers' logs in the directory named below",
                )
            members = await asyncio.to_thread(
                group_assignment, self.bootstrap, self.app_id, self.topics.ingest
            )
            ok = (
                members is not None
                and len(members) == len(workers)
                and all(members[: min(len(workers), self.partitions)])
                and set().union(*members) == set(range(self.partitions))
            )
            settled = settled + 1 if ok else 0
            await asyncio.sleep(1.0)


@dataclass
class ReceiptTracker:
    """The first receipt of each expected input: its Kafka timestamp (s) and status."""

    expected: frozenset[str]
    first: dict[str, tuple[float, str]] = field(default_factory=dict)
    total: int = 0

    def add(self, timestamp_ms: int, value: bytes) -> None:
        receipt = decode_json(value)
        message_id = receipt.get("message_id")
        self.total += 1
        if message_id in self.expected and message_id not in self.first:
            self.first[message_id] = (timestamp_ms / 1000, str(receipt.get("status")))

    @property
    def complete(self) -> bool:
        return len(self.first) == len(self.expected)


async def _track(consumer: Any, tracker: ReceiptTracker, stop: asyncio.Event) -> None:
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            for record in records:
                tracker.add(record.timestamp, record.value)


@dataclass(frozen=True)
class HubRun:
    """What one hub run of the loaded feed produced, and when (epoch seconds)."""

    workers: int
    inputs: int
    statuses: dict[str, int]
    receipts_total: int
    pathway_events: int
    recipient_copies: int
    alerts: int
    #: Every record the workers wrote: outputs, internal topics and table changelogs.
    records_written: int
    started: float
    last_receipt: float
    last_recipient: float
    steady_inputs_per_s: float
    raw_records_per_s: float
    #: Records written by topic (recipient topics summed, prefixes left out).
    written_by_topic: tuple[tuple[str, int], ...] = ()
    #: CPU seconds the workers and the embedded broker used from the load to the drained pipeline.
    worker_cpu_seconds: float = 0.0
    broker_cpu_seconds: float = 0.0
    #: CPU the rest of the machine used meanwhile (other processes, hypervisor steal): what competed.
    other_cpu_seconds: float = 0.0
    #: Cores of the machine busy from the load to the last first-receipt (the benchmark's own reading
    #: included): near the machine's core count, the run was bound by the machine, not the hub.
    machine_cores_busy: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        to_recipient = self.last_recipient - self.started
        to_receipt = self.last_receipt - self.started
        inputs_per_s = per_second(self.inputs, to_recipient)
        return {
            "workers": self.workers,
            "inputs": self.inputs,
            "receipts": dict(sorted(self.statuses.items())),
            "receipts_redelivered": self.receipts_total - self.inputs,
            "pathway_events": self.pathway_events,
            "recipient_copies": self.recipient_copies,
            "alerts": self.alerts,
            "records_written": self.records_written,
            "records_written_per_input": round(per_second(self.records_written, self.inputs), 2),
            "records_written_per_s": round(per_second(self.records_written, to_recipient), 1),
            "records_written_by_topic": dict(self.written_by_topic),
            "seconds_to_last_receipt": round(to_receipt, 3),
            "seconds_to_last_recipient_record": round(to_recipient, 3),
            "inputs_per_s": round(inputs_per_s, 1),
            "inputs_per_s_to_receipts": round(per_second(self.inputs, to_receipt), 1),
            "steady_inputs_per_s": round(self.steady_inputs_per_s, 1),
            "pathway_events_per_s": round(per_second(self.pathway_events, to_recipient), 1),
            "recipient_copies_per_s": round(per_second(self.recipient_copies, to_recipient), 1),
            "ratio_to_raw": round(per_second(inputs_per_s, self.raw_records_per_s), 4),
            "worker_cpu_seconds": round(self.worker_cpu_seconds, 1),
            "worker_cpu_ms_per_input": round(per_second(self.worker_cpu_seconds * 1000, self.inputs), 2),
            # Of the cores the workers could use (one each: a Python process runs on one at a time).
            "worker_cpu_utilisation": round(
                per_second(self.worker_cpu_seconds, to_recipient * self.workers), 3
            ),
            "broker_cpu_seconds": round(self.broker_cpu_seconds, 1),
            "other_cpu_seconds": round(self.other_cpu_seconds, 1),
            "machine_cores_busy": round(self.machine_cores_busy, 2),
        }


def _cpu_snapshot(workers: Sequence[Worker], broker_pid: int | None) -> tuple[float, float, float, float]:
    """CPU seconds so far of (the workers, the broker, this process, the whole machine)."""
    return (
        sum(w.cpu_seconds() for w in workers),
        cpu_seconds(broker_pid),
        cpu_seconds(os.getpid()),
        system_busy_seconds(),
    )


async def measure_hub(
    phase: Phase,
    workers: Sequence[Worker],
    feed: Sequence[FeedMessage],
    records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]],
    raw: Passthrough,
    *,
    progress: Progress,
    timeout: float,
    broker_pid: int | None = None,
) -> HubRun:
    """Load ``records`` into the ingest topic, wait for every input's receipt and a drained pipeline.

    Time runs from the first record a worker wrote (its first input's identity record or receipt:
    the start of consumption) to the last first-receipt and to the last recipient-topic record.
    Records already on the topics (a state written before, earlier inputs) are not counted.
    """
    topics = phase.topics
    tracker = ReceiptTracker(frozenset(m.message_id for m in feed))
    reader = await Reader.open(phase.bootstrap)
    consumer = await new_reader(phase.bootstrap)
    stop = asyncio.Event()
    since = await reader.ends(list({*phase.written_topics, topics.receipts, topics.identity}))

    def check() -> None:
        for worker in workers:
            worker.check()

    try:
        tps = _partitions(phase.bootstrap, [topics.receipts])
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        tracking = asyncio.create_task(_track(consumer, tracker, stop))
        cpu_start = _cpu_snapshot(workers, broker_pid)
        wall_start = time.monotonic()
        await preload(phase.bootstrap, topics.ingest, records)
        progress(f"  loaded {len(records):,} inputs into {topics.ingest}")
        deadline = time.monotonic() + timeout
        reported = time.monotonic()
        while not tracker.complete:
            check()
            if time.monotonic() > deadline:
                raise BenchFailed(
                    f"only {len(tracker.first)} of {len(feed)} inputs have a receipt after {timeout:.0f} s",
                    hint="fewer --patients, or read the worker's log in the directory named below",
                )
            if time.monotonic() - reported >= 5:
                progress(f"  receipts {len(tracker.first):,}/{len(feed):,}")
                reported = time.monotonic()
            await asyncio.sleep(0.25)
        # The machine's load while the inputs were handled (the quiet drain below would dilute it).
        machine_cores_busy = per_second(system_busy_seconds() - cpu_start[3], time.monotonic() - wall_start)
        progress("  every input has its receipt; waiting for the pipeline to drain")
        outputs = [topics.pathway, *phase.recipient_topics, topics.alerts, topics.audit]
        await reader.settle(outputs, quiet=QUIET_SECONDS, check=check)
        cpu_end = _cpu_snapshot(workers, broker_pid)
        stop.set()
        await tracking
        firsts = [at for at, _ in tracker.first.values()]
        return HubRun(
            workers=len(workers),
            inputs=len(feed),
            statuses=dict(Counter(status for _, status in tracker.first.values())),
            receipts_total=await reader.count([topics.receipts], since),
            pathway_events=await reader.count([topics.pathway], since),
            recipient_copies=await reader.count(phase.recipient_topics, since),
            alerts=await reader.count([topics.alerts], since),
            records_written=await reader.count(phase.written_topics, since),
            started=await reader.first_timestamp([topics.identity, topics.receipts], since),
            last_receipt=max(firsts),
            last_recipient=await reader.last_timestamp(phase.recipient_topics),
            steady_inputs_per_s=steady_rate(firsts),
            raw_records_per_s=per_second(raw.records, raw.seconds),
            written_by_topic=tuple((await phase.written_by_topic(reader, since)).items()),
            worker_cpu_seconds=cpu_end[0] - cpu_start[0],
            broker_cpu_seconds=cpu_end[1] - cpu_start[1],
            other_cpu_seconds=max(
                0.0,
                (cpu_end[3] - cpu_start[3])
                - sum(e - b for e, b in zip(cpu_end[:3], cpu_start[:3], strict=True)),
            ),
            machine_cores_busy=machine_cores_busy,
        )
    finally:
        stop.set()
        await consumer.stop()
        await reader.close()


# --- phase 3: latency ----------------------------------------------------------------------------


@dataclass
class Arrivals:
    """What the latency consumer saw, with the time it saw it (epoch seconds)."""

    receipts: dict[str, tuple[float, list[str]]] = field(default_factory=dict)
    copies: list[tuple[float, bytes]] = field(default_factory=list)
    alerts: list[tuple[float, bytes]] = field(default_factory=list)
    last_output: float = 0.0


def latencies(sent: Mapping[str, float], arrivals: Arrivals) -> tuple[list[float], list[float], list[float]]:
    """(receipt, recipient, alert) latencies in ms, matched by message id and event ids.

    - receipt: per input, from its ingest timestamp to its receipt;
    - recipient: per event, from its input's ingest timestamp to the first copy on any recipient topic;
    - alert: per alert, from the ingest timestamp of the newest input among its reasons' events.
    """
    receipt_ms: list[float] = []
    sent_of_event: dict[str, float] = {}
    for message_id, (seen, event_ids) in arrivals.receipts.items():
        if message_id in sent:
            receipt_ms.append((seen - sent[message_id]) * 1000)
            sent_of_event.update((event_id, sent[message_id]) for event_id in event_ids)
    first_copy: dict[str, float] = {}
    for seen, value in arrivals.copies:
        event_id = decode_json(value).get("event_id")
        if event_id in sent_of_event and seen < first_copy.get(event_id, math.inf):
            first_copy[event_id] = seen
    recipient_ms = [(seen - sent_of_event[event_id]) * 1000 for event_id, seen in first_copy.items()]
    alert_ms: list[float] = []
    for seen, value in arrivals.alerts:
        reasons = decode_json(value).get("reasons") or []
        causes = [
            sent_of_event[e] for reason in reasons for e in reason.get("event_ids", ()) if e in sent_of_event
        ]
        if causes:
            alert_ms.append((seen - max(causes)) * 1000)
    return receipt_ms, recipient_ms, alert_ms


def _opened(opener: RecordOpener, record: Any) -> bytes:
    return opener.open(record.topic, record.value, record.headers) or b"{}"


async def _collect(
    consumer: Any, phase: Phase, arrivals: Arrivals, stop: asyncio.Event, opener: RecordOpener
) -> None:
    # Recipient copies and alerts are sealed (hub.crypto): opened as a recipient or the gateway would.
    receipts, alerts = phase.topics.receipts, phase.topics.alerts
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=100)
        seen = time.time()
        for tp, records in batch.items():
            for record in records:
                if tp.topic == receipts:
                    receipt = decode_json(record.value)
                    arrivals.receipts[receipt.get("message_id")] = (
                        seen,
                        list(receipt.get("event_ids") or ()),
                    )
                elif tp.topic == alerts:
                    arrivals.alerts.append((seen, _opened(opener, record)))
                else:
                    arrivals.copies.append((seen, _opened(opener, record)))
                arrivals.last_output = seen


async def measure_latency(
    phase: Phase,
    worker: Worker,
    messages: Sequence[FeedMessage],
    secrets: Mapping[str, bytes],
    *,
    rate: float,
    duration: float,
    progress: Progress,
    opener: RecordOpener,
) -> dict[str, Any]:
    """Offer ``rate`` inputs/s for ``duration`` s and match every output back to its input."""
    count = min(len(messages), messages_needed(rate, duration))
    if count < messages_needed(rate, duration):
        progress(
            f"  the feed holds {count} messages for the latency phase: {count / rate:.0f} s at this rate"
        )
    topics = phase.topics
    consumer = await new_reader(phase.bootstrap, fetch_max_wait_ms=100)
    producer = await new_producer(phase.bootstrap)
    arrivals = Arrivals()
    stop = asyncio.Event()
    try:
        tps = _partitions(phase.bootstrap, [topics.receipts, *phase.recipient_topics, topics.alerts])
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        collector = asyncio.create_task(_collect(consumer, phase, arrivals, stop, opener))
        sent: dict[str, float] = {}
        cpu_start, loop_start = worker.cpu_seconds(), worker.event_loop_cpu_seconds()
        start = time.monotonic()
        for index, message in enumerate(messages[:count]):
            delay = pacing_delay(start, index, rate, time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
            now_ns = time.time_ns()
            key, value, headers = signed(
                message, secrets[message.source_id], extra=[(SENT_AT_HEADER, str(now_ns).encode())]
            )
            # The ingest record's timestamp is the send time: latency runs from it.
            sent[message.message_id] = (now_ns // 1_000_000) / 1000
            await producer.send(
                topics.ingest, value=value, key=key, headers=headers, timestamp_ms=now_ns // 1_000_000
            )
        await producer.flush()
        offered_seconds = time.monotonic() - start
        cpu_offered = worker.cpu_seconds() - cpu_start
        progress(f"  sent {count:,} inputs in {offered_seconds:.1f} s; waiting for their receipts")
        deadline = time.monotonic() + max(60.0, duration)
        while sum(1 for m in sent if m in arrivals.receipts) < count and time.monotonic() < deadline:
            worker.check()
            await asyncio.sleep(0.25)
        cpu_handled = worker.cpu_seconds() - cpu_start
        loop_handled = worker.event_loop_cpu_seconds() - loop_start
        while time.time() - arrivals.last_output < QUIET_SECONDS / 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        stop.set()
        await collector
    finally:
        stop.set()
        await producer.stop()
        await consumer.stop()
    receipt_ms, recipient_ms, alert_ms = latencies(sent, arrivals)
    return {
        "offered_inputs_per_s": round(rate, 1),
        "achieved_inputs_per_s": round(per_second(count, offered_seconds), 1),
        "seconds": round(offered_seconds, 1),
        "sent": count,
        # How far from its limit "half the sustained load" kept the worker: a batch of one input
        # costs more than one of a backlog's, so half the inputs can take more than half the CPU.
        "worker_busy_while_offered": round(per_second(cpu_offered, offered_seconds), 3),
        "worker_cpu_ms_per_input": round(per_second(cpu_handled * 1000, count), 2),
        # The rest is faust's consumer thread (fetching) and the worker's other threads.
        "worker_event_loop_cpu_share": round(per_second(loop_handled, cpu_handled), 3),
        "receipts_seen": len(receipt_ms),
        "receipt_ms": latency_summary(receipt_ms),
        "recipient_ms": latency_summary(recipient_ms),
        "alert_ms": latency_summary(alert_ms),
    }


@dataclass
class ProbeWatch:
    """When a (re)started worker is ready: the new inputs it was given, handled end to end.

    Ready once every input has its receipt and a recipient topic has a new record (nothing else
    writes to one meanwhile). Inputs all receipted but none shared for :data:`PROBE_STALL_SECONDS`:
    ready as of the last receipt (``shared`` False). Some receipted and the others not for that long:
    the worker handles inputs but lost those, and :class:`BenchFailed` names them.
    """

    expected: frozenset[str]
    label: str
    #: Records on the recipient topics before the worker started.
    copies_before: int
    receipted: dict[str, float] = field(default_factory=dict)
    receipts_at: float = math.nan
    ready_at: float = math.nan
    shared: bool = False

    def receipt(self, value: bytes, now: float) -> None:
        message_id = decode_json(value).get("message_id")
        if message_id in self.expected:
            self.receipted.setdefault(message_id, now)

    def check(self, copies: int, now: float) -> None:
        if math.isnan(self.receipts_at):
            if len(self.receipted) == len(self.expected):
                self.receipts_at = max(self.receipted.values())
            elif self.receipted and now - max(self.receipted.values()) > PROBE_STALL_SECONDS:
                missing = sorted(self.expected - set(self.receipted))
                raise BenchFailed(
                    f"{self.label}: {len(missing)} of {len(self.expected)} new inputs have no receipt "
                    f"{now - max(self.receipted.values()):.0f} s after the others' ({', '.join(missing)})",
                    hint="the worker skipped them: its log and the broker's are in the directory below",
                )
        if math.isnan(self.receipts_at):
            return
        if copies > self.copies_before:
            self.ready_at, self.shared = now, True
        elif now - self.receipts_at > PROBE_STALL_SECONDS:
            self.ready_at = self.receipts_at


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What ``hub bench`` was asked for."""

    patients: int = 500
    seed: int = 7
    #: Seconds of the latency phase's fixed offered load.
    duration: float = 25.0
    #: The latency phase's offered inputs/s; None: half of the throughput phase's (the target's load).
    latency_rate: float | None = None
    partitions: int = 6
    #: An existing broker; None starts an embedded one on free ports in a temporary directory.
    bootstrap: str | None = None
    skip_scaling: bool = False
    #: Run the single worker under cProfile, writing this file.
    profile: Path | None = None
    #: Sample the single worker with py-spy in the throughput phase, writing this file (bench/sampling.py).
    sample: Path | None = None
    #: Seconds to wait for a phase's receipts before giving up.
    timeout: float = 600.0
    #: Patients in the state phase (0: no state phase): copies of the throughput phase's state.
    state_patients: int = 0


QUICK = BenchConfig(patients=40, duration=5.0, partitions=3, skip_scaling=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _timed(progress: Progress) -> Progress:
    start = time.monotonic()
    return lambda line: progress(f"[{time.monotonic() - start:6.1f} s] {line}")


def profile_summary(path: Path, limit: int = 20) -> dict[str, Any]:
    """The top ``limit`` functions of a cProfile file by cumulative and by own time."""
    stats = pstats.Stats(str(path), stream=io.StringIO())

    def top(sort: str) -> list[dict[str, Any]]:
        functions = stats.sort_stats(sort).get_stats_profile().func_profiles
        rows = sorted(
            functions.items(),
            key=lambda item: item[1].cumtime if sort == "cumulative" else item[1].tottime,
            reverse=True,
        )[:limit]
        return [
            {
                "function": f"{Path(p.file_name).name}:{p.line_number}({name})",
                "ncalls": p.ncalls,
                "tottime": round(p.tottime, 3),
                "cumtime": round(p.cumtime, 3),
            }
            for name, p in rows
        ]

    return {
        "file": str(path),
        "total_seconds": round(stats.total_tt, 3),  # type: ignore[attr-defined]
        "top_cumulative": top("cumulative"),
        "top_tottime": top("tottime"),
    }


def render_profile(summary: Mapping[str, Any]) -> str:
    """The profile's top functions as a text table."""
    lines = [f"profile of the single worker ({summary['file']}, {summary['total_seconds']:.1f} s profiled)"]
    for key, title in (("top_cumulative", "by cumulative time"), ("top_tottime", "by own time")):
        lines.append(f"  top {len(summary[key])} {title}:")
        lines.append(f"    {'cumtime':>8} {'tottime':>8} {'ncalls':>12}  function")
        lines.extend(
            f"    {row['cumtime']:8.2f} {row['tottime']:8.2f} {row['ncalls']:>12}  {row['function']}"
            for row in summary[key]
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the benchmark the way Ctrl-C does: through its clean-up."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Bench:
    """One benchmark run: the broker, the processes it started, and the phases."""

    def __init__(
        self,
        config: BenchConfig,
        *,
        progress: Progress,
        work_dir: Path,
        broker_pid: int | None = None,
        machine: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.broker_pid = broker_pid
        #: Read before the benchmark started anything (the load average says what else was running).
        self.machine = dict(machine or {})
        self.progress = progress
        self.work_dir = work_dir
        self.workers: list[Worker] = []
        self.starts = 0
        #: The throughput phase's py-spy summary, with ``sample`` (bench/sampling.py).
        self.samples: dict[str, Any] | None = None
        # The workers' data keys and table state stay in the benchmark's folder (removed at the end).
        self.demo = {
            **prepare_demo_environment().environ,
            "HUB_KEY_STORE_FILE": str(work_dir / "keys" / "data-keys.sqlite3"),
            "HUB_TABLE_DIR": str(work_dir / "tables"),
        }
        # The workers' keys: to open what they seal, and to seal the state phase's copies.
        self.keyring = keyring_from_settings(
            Settings(
                kek_file=Path(self.demo["HUB_KEK_FILE"]),
                key_store_file=Path(self.demo["HUB_KEY_STORE_FILE"]),
            )
        )
        self.opener = RecordOpener(self.keyring)
        registry = load_sources(DEMO_SOURCES_FILE)
        self.secrets = {source.id: source.secrets[0] for source in registry.sources.values()}

    def start_workers(self, phase: Phase, count: int, *, profile: Path | None) -> list[Worker]:
        # A log of its own for each start: a restarted worker's must not overwrite the one before.
        self.starts += 1
        started = [
            Worker.start(
                phase.environ(self.demo),
                self.work_dir / f"{phase.app_id}-worker-{n}-start-{self.starts}.log",
                profile if n == 0 else None,
            )
            for n in range(count)
        ]
        self.workers.extend(started)
        return started

    def stop_workers(self) -> None:
        while self.workers:
            self.workers.pop().stop()

    async def hub_phase(
        self,
        name: str,
        feed: Sequence[FeedMessage],
        *,
        workers: int,
        profile: Path | None = None,
        sample: Path | None = None,
    ) -> tuple[Phase, Passthrough, HubRun, list[Worker], float]:
        """Fresh topics; the raw passthrough of the signed feed; then the hub on the same records.

        Returns the phase, the passthrough, the hub run, the workers (still running) and their RSS
        once they held their partitions, before any input.
        """
        config = self.config
        assert config.bootstrap is not None
        phase = Phase.create(config.bootstrap, name, config.partitions)
        self.progress(f"{name}: loading {len(feed):,} signed demo messages into {phase.source_topic}")
        await preload(
            phase.bootstrap, phase.source_topic, [signed(m, self.secrets[m.source_id]) for m in feed]
        )
        self.progress(f"{name}: raw passthrough, {workers} process(es), best of {RAW_REPEATS} by median")
        # A few hundred milliseconds each: the median of a few runs is steadier than one.
        runs = [
            await passthrough_in_processes(
                phase.bootstrap, phase.source_topic, phase.passthrough_topic, config.partitions, workers
            )
            for _ in range(RAW_REPEATS)
        ]
        raw = median_run(runs)
        self.progress(
            f"{name}: raw passthrough {per_second(raw.records, raw.seconds):,.0f} records/s; "
            f"starting {workers} worker(s)" + (" under cProfile" if profile else "")
        )
        started = self.start_workers(phase, workers, profile=profile)
        await phase.wait_until_assigned(started, timeout=120)
        rss_ready = sum(w.rss_mb() for w in started)
        self.progress(f"{name}: the worker(s) hold every ingest partition ({rss_ready:.0f} MB RSS)")
        # Signed again now: the same bodies and sizes as the passthrough's, fresh signatures.
        records = [signed(m, self.secrets[m.source_id]) for m in feed]
        sampler = None
        if sample is not None:
            sampler = Sampler.attach(started[0].process.pid, sample, self.work_dir / "py-spy.log")
            self.progress(f"{name}: py-spy samples the worker ({SAMPLE_RATE}/s) into {sample}")
        try:
            run = await measure_hub(
                phase,
                started,
                feed,
                records,
                raw,
                progress=self.progress,
                timeout=config.timeout,
                broker_pid=self.broker_pid,
            )
        finally:
            written = sampler.stop() if sampler is not None else None
        summary = run.as_dict()
        if written is not None:
            self.samples = summarise_file(written, cpu_ms_per_input=summary["worker_cpu_ms_per_input"])
        self.progress(
            f"{name}: {summary['inputs_per_s']:,.1f} inputs/s, {summary['pathway_events_per_s']:,.1f} "
            f"pathway events/s, ratio to raw {summary['ratio_to_raw']:.3f}"
        )
        return phase, raw, run, started, rss_ready

    async def start_until_ready(
        self,
        phase: Phase,
        probes: Sequence[FeedMessage],
        *,
        label: str,
        timeout: float,
        changelog_records: int | None = None,
    ) -> tuple[Worker, dict[str, Any]]:
        """Start one worker on ``phase`` and time it until it has handled new inputs end to end.

        The ``probes`` (inputs no worker has seen) are loaded as the process starts; :class:`ProbeWatch`
        says when it is ready. The time includes the start of the process, joining the group and
        whatever the worker reads of its changelogs first (faust handles no input before its tables
        are recovered). Then, once its changelog reads are still for :data:`RESTART_SETTLE_SECONDS`,
        how many it read and its RSS. ``changelog_records``: how many there are, for the progress.
        """
        topics = phase.topics
        reader = await Reader.open(phase.bootstrap)
        consumer = await new_reader(phase.bootstrap)
        try:
            watch = ProbeWatch(
                frozenset(m.message_id for m in probes), label, await reader.count(phase.recipient_topics)
            )
            tps = _partitions(phase.bootstrap, [topics.receipts])
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            started = reported = time.monotonic()
            [worker] = self.start_workers(phase, 1, profile=None)
            await preload(
                phase.bootstrap, topics.ingest, [signed(m, self.secrets[m.source_id]) for m in probes]
            )
            while math.isnan(watch.ready_at):
                worker.check()
                if time.monotonic() - started > timeout:
                    raise BenchFailed(
                        f"{label}: the worker handled {len(watch.receipted)} of {len(probes)} new inputs "
                        f"in {timeout:.0f} s",
                        hint="read its log in the directory named below",
                    )
                if time.monotonic() - reported >= PROGRESS_SECONDS:
                    reported = time.monotonic()
                    read = await asyncio.to_thread(worker.changelog_records_read)
                    of = f" of {changelog_records:,}" if changelog_records is not None else ""
                    self.progress(
                        f"  {label}: {reported - started:.0f} s, "
                        + (f"{read:,}{of} changelog records read" if read is not None else "starting")
                        + f", {worker.rss_mb():.0f} MB RSS"
                    )
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        watch.receipt(record.value, time.monotonic())
                watch.check(await reader.count(phase.recipient_topics), time.monotonic())
            read = await self._settled_changelog_reads(worker)
        finally:
            await consumer.stop()
            await reader.close()
        by_table = await asyncio.to_thread(worker.changelog_records_by_table)
        result = {
            "seconds_to_ready": round(watch.ready_at - started, 1),
            "seconds_to_receipts": round(watch.receipts_at - started, 1),
            "probe_inputs": len(probes),
            "probe_shared": watch.shared,
            "changelog_records_read": read,
            "changelog_records_read_by_table": by_table or {},
            "rss_mb": round(worker.rss_mb(), 1),
            "peak_rss_mb": round(worker.peak_rss_mb(), 1),
        }
        self.progress(
            f"{label}: ready in {result['seconds_to_ready']:.1f} s, {read:,} changelog records read, "
            f"{result['rss_mb']:.0f} MB RSS"
        )
        return worker, result

    @staticmethod
    async def _settled_changelog_reads(worker: Worker) -> int:
        """The worker's changelog records read, once still for :data:`RESTART_SETTLE_SECONDS`."""
        read, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < RESTART_SETTLE_SECONDS:
            worker.check()
            now_read = await asyncio.to_thread(worker.changelog_records_read)
            if now_read is None or now_read != read:
                read, stable_since = (now_read if now_read is not None else -1), time.monotonic()
            await asyncio.sleep(0.5)
        return read

    async def restart(
        self, phase: Phase, probes: Sequence[FeedMessage], *, timeout: float = 600.0
    ) -> dict[str, Any]:
        """The stopped worker started again on its table folder, timed until it handled new inputs."""
        self.progress(f"restart: the same worker again, on its table folder, with {len(probes)} new inputs")
        _, result = await self.start_until_ready(phase, probes, label="restart", timeout=timeout)
        self.stop_workers()
        return result

    async def state_phase(
        self,
        template: Phase,
        fresh: Sequence[FeedMessage],
        raw: Passthrough,
        *,
        inputs_in_template: int,
    ) -> dict[str, Any]:
        """``--state-patients``: the throughput phase's state copied to N patients (bench.state), then a
        worker rebuilding it from the changelogs, restarted on it, and fed new inputs with it in place."""
        config = self.config
        assert config.bootstrap is not None
        copies = copies_for(config.state_patients, config.patients)
        phase = Phase.create(config.bootstrap, "state", config.partitions)
        self.progress(f"state: reading the tables of {template.app_id} from their changelogs")
        entries = await read_table_state(config.bootstrap, template.app_id, config.partitions, self.keyring)
        self.progress(
            f"state: {len(entries):,} table entries for {config.patients:,} patients; writing {copies:,} "
            f"copies ({copies * config.patients:,} patients) to the changelogs of {phase.app_id}"
        )
        written = await write_state_copies(
            config.bootstrap, entries, phase.app_id, copies, self.keyring, progress=self.progress
        )
        rebuild_probes, restart_probes = fresh[:PROBE_INPUTS], fresh[PROBE_INPUTS : 2 * PROBE_INPUTS]
        loaded = fresh[2 * PROBE_INPUTS :]
        # Hours at most: rebuilding is bounded by what was written, shown as it goes.
        rebuild_timeout = max(config.timeout, 3600.0)
        self.progress(
            "state: first start, on an empty folder: the worker rebuilds its tables from the changelogs"
        )
        _, rebuild = await self.start_until_ready(
            phase,
            rebuild_probes,
            label="state rebuild",
            timeout=rebuild_timeout,
            changelog_records=written.records,
        )
        self.progress("state: stopping the worker")
        self.stop_workers()
        self.progress("state: restart on that folder")
        worker, restart = await self.start_until_ready(
            phase, restart_probes, label="state restart", timeout=rebuild_timeout
        )
        self.progress(f"state: {len(loaded):,} new inputs at full speed, the state in place")
        records = [signed(m, self.secrets[m.source_id]) for m in loaded]
        run = await measure_hub(
            phase,
            [worker],
            loaded,
            records,
            raw,
            progress=self.progress,
            timeout=config.timeout,
            broker_pid=self.broker_pid,
        )
        peak_loaded = worker.peak_rss_mb()
        hub = run.as_dict()
        self.progress(
            f"state: {hub['inputs_per_s']:,.1f} inputs/s with the state, "
            f"{hub['worker_cpu_ms_per_input']:.1f} ms CPU per input, peak RSS {peak_loaded:.0f} MB"
        )
        self.stop_workers()
        self.progress("state: counting the table folder's keys and bytes")
        tables = table_footprint(self.work_dir / "tables", phase.app_id)
        return {
            "method": "copies of the throughput phase's tables (bench/state.py)",
            "template_patients": config.patients,
            "template_inputs": inputs_in_template,
            "template_entries": len(entries),
            "patients_in_state": copies * config.patients,
            **written.as_dict(),
            "rebuild": rebuild,
            "restart": restart,
            "hub": hub,
            "worker_peak_rss_mb_loaded": round(peak_loaded, 1),
            # The largest a worker with the state grew: rebuilding it, or restarted on it under load.
            "worker_peak_rss_mb": round(max(rebuild["peak_rss_mb"], peak_loaded), 1),
            "table_disk_mb": round(sum(t["disk_bytes"] for t in tables.values()) / MEBIBYTE, 1),
            "tables": tables,
        }

    async def run(self, command: str) -> dict[str, Any]:
        config = self.config
        started_at = datetime.now(UTC)
        machine = self.machine or machine_info()
        self.progress(f"generating the demo feed for {config.patients:,} patients (seed {config.seed})")
        feed = prepare_feed(config.patients, config.seed, started_at)
        throughput_count, latency_count = split_feed(len(feed), LATENCY_SHARE)
        throughput_feed, latency_feed = feed[:throughput_count], feed[throughput_count:]
        self.progress(
            f"{len(feed):,} messages: {throughput_count:,} for throughput, {latency_count:,} kept for latency"
        )
        # New inputs for the restarts (and the state phase's load): other patients, never sent before.
        fresh_patients = config.patients if config.state_patients else min(config.patients, PROBE_PATIENTS)
        fresh = [
            replace(m, message_id=m.message_id + FRESH_ID_SUFFIX)
            for m in prepare_feed(fresh_patients, config.seed + 1, started_at)
        ]

        phase, raw, run, workers, rss_at_start = await self.hub_phase(
            "one", throughput_feed, workers=1, profile=config.profile, sample=config.sample
        )
        hub = run.as_dict()
        rate = config.latency_rate or max(1.0, hub["inputs_per_s"] * LOAD_FACTOR)
        self.progress(f"latency: {rate:,.1f} inputs/s for {config.duration:.0f} s")
        latency = await measure_latency(
            phase,
            workers[0],
            latency_feed,
            self.secrets,
            rate=rate,
            duration=config.duration,
            progress=self.progress,
            opener=self.opener,
        )
        peak = workers[0].peak_rss_mb()
        # Now, idle with every input in state: what stays resident, apart from the load's peak, and the
        # CPU it spends with nothing to do.
        rss_end = workers[0].rss_mb()
        self.progress(f"idle: the worker's CPU for {IDLE_SECONDS:.0f} s without input")
        idle_from = workers[0].cpu_seconds()
        await asyncio.sleep(IDLE_SECONDS)
        idle_cpu_percent = 100 * (workers[0].cpu_seconds() - idle_from) / IDLE_SECONDS
        table_store = Settings().table_store
        growth, estimate = memory_estimate(
            ready_mb=rss_at_start,
            peak_mb=peak,
            inputs=throughput_count + latency["sent"],
            inputs_per_patient=len(feed) / config.patients,
            patients=TARGET_PATIENTS_IN_STATE,
        )
        memory = {
            "worker_peak_rss_mb": round(peak, 1),
            "worker_rss_ready_mb": round(rss_at_start, 1),
            "worker_rss_end_mb": round(rss_end, 1),
            "worker_idle_cpu_percent": round(idle_cpu_percent, 1),
            "patients_in_state": config.patients,
            "inputs_in_state": throughput_count + latency["sent"],
            "rss_growth_mb_per_1000_inputs": round(growth, 2),
            # A few hundred inputs mostly measure warm-up (buffers, imports): no extrapolation from them.
            # Nor with RocksDB, whose entries leave the heap: the growth is the load in flight and the
            # caches filling, and a line through it says nothing at 100,000 patients (the state phase
            # measures that).
            "estimated_rss_mb_at_target_patients": (
                round(estimate)
                if throughput_count + latency["sent"] >= MIN_INPUTS_TO_EXTRAPOLATE
                and table_store == "memory://"
                else None
            ),
        }
        self.progress("stopping the worker")
        self.stop_workers()
        # Once stopped: its RocksDB databases are closed, and what they hold is on disk.
        tables = table_footprint(self.work_dir / "tables", phase.app_id)
        disk_bytes = sum(t["disk_bytes"] for t in tables.values())
        memory |= {
            "table_store": table_store,
            "table_disk_mb": round(disk_bytes / MEBIBYTE, 1),
            # Bytes per input are kB per 1,000 inputs.
            "table_disk_kb_per_1000_inputs": round(per_second(disk_bytes, memory["inputs_in_state"])),
            "tables": tables,
            "restart": await self.restart(phase, fresh[:PROBE_INPUTS]),
        }
        profile = None
        if config.profile is not None:
            if config.profile.exists():
                profile = profile_summary(config.profile)
            else:
                self.progress(f"cProfile wrote no {config.profile}: the worker did not exit cleanly")

        scaling = None
        if not config.skip_scaling:
            _, raw2, run2, _, _ = await self.hub_phase("two", throughput_feed, workers=2)
            self.stop_workers()
            hub2 = run2.as_dict()
            scaling = {
                "raw_passthrough": raw2.as_dict(),
                "hub": hub2,
                "speedup": round(per_second(hub2["inputs_per_s"], hub["inputs_per_s"]), 3),
            }
        state = None
        if config.state_patients:
            # Last: its gigabytes of changelogs would weigh on the broker under the phases above.
            state = await self.state_phase(
                phase,
                fresh[PROBE_INPUTS:][: 2 * PROBE_INPUTS + throughput_count],
                raw,
                inputs_in_template=throughput_count + latency["sent"] + PROBE_INPUTS,
            )
        return result_document(
            command=command,
            config={
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
                "messages": len(feed),
                "throughput_messages": throughput_count,
                "latency_messages": latency_count,
                "table_store": Settings().table_store,
            },
            state=state,
            raw=raw.as_dict(),
            hub=hub,
            latency=latency,
            memory=memory,
            scaling=scaling,
            profile=profile,
            samples=self.samples,
            machine=machine,
            started_at=started_at,
        )


def run_bench(
    config: BenchConfig, *, command: str = "hub bench", progress: Progress = _stderr
) -> dict[str, Any]:
    """Run the benchmark; start (and always stop) an embedded broker unless ``config.bootstrap`` is set."""
    timed = _timed(progress)
    machine = machine_info()
    work_dir = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    broker: EmbeddedBroker | None = None
    bench: Bench | None = None
    keep = False
    try:
        with _terminate_as_interrupt():
            if config.bootstrap is None:
                timed(f"starting an embedded Kafka {KAFKA_VERSION} broker in {work_dir}")
                layout = BrokerLayout(
                    root=work_dir / "broker", jars_dir=Settings().state_dir.expanduser().resolve() / "jars"
                )
                broker = EmbeddedBroker(layout, port=0, progress=timed)
                bootstrap = broker.start()
                timed(f"broker at {bootstrap}")
                config = BenchConfig(**{**asdict(config), "bootstrap": bootstrap})
            bench = Bench(
                config,
                progress=timed,
                work_dir=work_dir,
                broker_pid=broker.pid if broker is not None else None,
                machine=machine,
            )
            result = asyncio.run(bench.run(command))
    except Exception:
        keep = True
        raise
    finally:
        if bench is not None:
            bench.stop_workers()
        if broker is not None and broker.started:
            timed("stopping the broker")
            broker.stop()
        if keep:
            timed(f"worker and broker logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return result
