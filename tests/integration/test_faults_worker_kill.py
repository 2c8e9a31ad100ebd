"""Fault: one of two workers (one consumer group, shared partitions) is killed -9 mid-stream, then restarted.

At-least-once with deterministic ids (DESIGN.md 4): nothing is lost, and whatever the survivor or the
restarted worker processes again comes out with the same ``event_id`` and the same receipt outcome, so
a consumer that keeps the ids it has seen de-duplicates exactly.

What this test found (issue 8), each fixed at its root and now checked here as a hard failure:

- an input processed under a source-local id, redelivered after that id was linked to a qualified
  INS, was forwarded to the INS id's partition (another worker) and published again under new event
  ids (hub/identity/stage.py; tests/unit/test_identity_redelivery.py);
- events lost. The identity stage writes its tables (seen messages, seen events) as it decides;
  faust sends those changelog records at once, but the stage's outputs only as the input's
  processing completes and its offset is committed. Killed in between, the restarted owner found
  the input already "seen" and published nothing: its receipt named events that never reached
  hub.pathway.v1. The tables now keep the ingest coordinates of the input that first brought each
  message and fact; the same input record read again (a redelivery, not a resend) publishes its
  events again under the same ids. Same for the link announcement, the share stage's merge
  request and held events (hub/consent/share.py) and the GP alerts (hub/alerts/stage.py); unit
  tests in tests/unit/test_identity_redelivery.py, test_share_stage.py, test_eligibility_redelivery.py;
- stalls. After a rebalance (a second worker joining, or the dead member's session expiring), some
  inputs never got a receipt: group Stable, no errors, every agent idle. faust drops the records
  it fetched but had not delivered when a rebalance stops the flow, and seeks back to the committed
  offsets to read them again; aiokafka's ``seek_to_committed`` skips partitions with no committed
  offset (typically ingest partitions early on), which kept their position past the dropped
  records. The hub's consumer rewinds those to their beginning (hub/streams/transport.py;
  tests/unit/test_transport_rewind.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hub.demo.generator import DEMO_SOURCES, generate_feed
from hub.ingest.signature import sign
from hub.kafka.clients import Record

from .conftest import HubEnv, start_worker, stop_worker

#: Inputs of the stream; batches are paced so the kill lands while records are in flight.
PATIENTS = 40
BATCH = 25
PACE_SECONDS = 0.3


def spawn_worker(env: HubEnv, name: str) -> subprocess.Popen[bytes]:
    """A `hub worker` of the test's app id (one consumer group), logging to its own file."""
    # Each worker its own metrics port: two on one host must not fight over the default one.
    return start_worker(env, log_file=env.work_dir / f"{name}.log", extra_env={"HUB_METRICS_PORT": "0"})


@pytest.fixture
def two_workers(hub_env: HubEnv) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Two workers of one app id on topics created first; every one still running is stopped after."""
    registry = json.loads((hub_env.work_dir / "sources.json").read_text())
    for source in registry["sources"]:
        if source["id"] == "gp-test":
            # The demo feed's identifier systems, registered under the test GP source.
            source["patient_identifier_systems"] += [s.patient_identifier_system for s in DEMO_SOURCES]
    (hub_env.work_dir / "sources.json").write_text(json.dumps(registry))
    result = hub_env.cli("topics", "create", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    workers = {"a": spawn_worker(hub_env, "worker-a"), "b": spawn_worker(hub_env, "worker-b")}
    try:
        yield workers
    finally:
        for process in workers.values():
            stop_worker(process)


def demo_inputs(env: HubEnv) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    feed = generate_feed(patients=PATIENTS, seed=23, now=datetime(2026, 11, 1, tzinfo=UTC))
    secret = env.source("gp-test").secret
    records = []
    for message in feed:
        value = message.body()
        headers = [
            ("hub-source", b"gp-test"),
            ("hub-signature", sign(secret, "gp-test", value, int(time.time())).encode()),
            ("hub-message-id", message.message_id.encode()),
            ("content-type", message.content_type.encode()),
        ]
        records.append((message.message_id.encode(), value, headers))
    return records


def receipts_by_message(env: HubEnv) -> dict[str, list[dict[str, Any]]]:
    by_message: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in env.settle(env.topics.receipts, quiet=2.0):
        receipt = record.json_value()
        by_message[receipt["message_id"]].append(receipt)
    return by_message


def wait_for_receipts(
    env: HubEnv, message_ids: set[str], workers: dict[str, subprocess.Popen[bytes]], *, timeout: float
) -> dict[str, list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout
    while True:
        got = receipts_by_message(env)
        dead = [name for name, process in workers.items() if process.poll() is not None]
        if message_ids <= set(got) or time.monotonic() > deadline or dead:
            return got


def where_lost(env: HubEnv, missing: set[str]) -> str:
    """How far the inputs without a receipt went: the identity topic, the DLQ, the pathway."""
    forwarded = set()
    partitions: Counter[int] = Counter()
    for record in env.settle(env.topics.identity, quiet=2.0):
        value = record.json_value() or {}
        inner = value.get("input", value)
        if inner.get("message_id") in missing:
            forwarded.add(inner["message_id"])
            partitions[record.partition] += 1
    dlq = {r.key.decode() for r in env.settle(env.topics.dlq, quiet=1.0) if r.key} & missing
    return (
        f"{len(forwarded)} of them reached {env.topics.identity} (so the identity stage lost them; "
        f"records per partition {dict(sorted(partitions.items()))}), "
        f"{len(dlq)} the DLQ; e.g. {sorted(missing - forwarded)[:3]} never left ingest"
    )


def problems(env: HubEnv) -> str:
    """The warnings and errors of both workers' logs, for a failure message."""
    lines = []
    for name in ("worker-a", "worker-b"):
        for line in (env.work_dir / f"{name}.log").read_text(errors="replace").splitlines():
            if '"level": "info"' not in line:
                lines.append(f"{name}: {line[:300]}")
    return "\n".join(lines[-40:])


def wait_for_log(path: Path, marker: str, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and marker in path.read_text(errors="replace"):
            return True
        time.sleep(0.5)
    return False


def test_a_worker_killed_mid_stream_loses_nothing_and_redelivers_with_the_same_ids(
    hub_env: HubEnv, two_workers: dict[str, subprocess.Popen[bytes]]
) -> None:
    """kill -9 one of two workers mid-stream, restart it: a receipt per input, every event, same ids."""
    records = demo_inputs(hub_env)
    message_ids = {key.decode() for key, _, _ in records}
    # Both workers must have joined the group, or the kill would hit a worker owning nothing.
    for name in ("worker-a", "worker-b"):
        assert wait_for_log(hub_env.work_dir / f"{name}.log", "worker.starting", timeout=60), name
    started = time.monotonic()
    killed_at = len(records) // 3
    restarted_at = 2 * len(records) // 3
    for start in range(0, len(records), BATCH):
        hub_env.send(records[start : start + BATCH])
        time.sleep(PACE_SECONDS)
        if start <= killed_at < start + BATCH:
            # Mid-stream: wait until the hub is visibly processing, then kill without warning.
            assert hub_env.collect(hub_env.topics.receipts, 1, timeout=90), "no receipt before the kill"
            os.kill(two_workers["b"].pid, signal.SIGKILL)
            two_workers["b"].wait(timeout=10)
            print(f"killed worker b (pid {two_workers['b'].pid}) with -9 after input {start + BATCH}")
        if start <= restarted_at < start + BATCH:
            two_workers["b"] = spawn_worker(hub_env, "worker-b")
            print(f"restarted worker b after input {start + BATCH}")

    got = wait_for_receipts(hub_env, message_ids, two_workers, timeout=60)
    elapsed = time.monotonic() - started
    assert two_workers["a"].poll() is None, "the surviving worker died"
    assert two_workers["b"].poll() is None, "the restarted worker died"
    missing = message_ids - set(got)

    # A redelivered input may get a second receipt (at-least-once); it must name the same events.
    repeated = {m: r for m, r in got.items() if len(r) > 1}
    for message_id, receipts in repeated.items():
        event_sets = {tuple(sorted(r["event_ids"])) for r in receipts}
        assert len(event_sets) == 1, f"{message_id}: a redelivery changed the event ids: " + "; ".join(
            f"{r['status']} {r['ingest']} {r['event_ids']}" for r in receipts
        )
        assert {r["status"] for r in receipts} <= {"accepted", "duplicate"}
    statuses = Counter(r[0]["status"] for r in got.values())
    assert "rejected" not in statuses, statuses
    # At least once, the same bytes (docs/INGEST.md, Receipts): every copy of one input's receipt (one
    # `ingest` coordinates, the de-duplication key) is byte for byte the first.
    copies_by_input: dict[str, set[bytes]] = defaultdict(set)
    for record in hub_env.settle(hub_env.topics.receipts, quiet=2.0):
        copies_by_input[json.dumps(record.json_value()["ingest"], sort_keys=True)].add(record.value or b"")
    differing = {where: copies for where, copies in copies_by_input.items() if len(copies) > 1}
    assert not differing, f"{len(differing)} inputs got receipts that differ, e.g. " + "; ".join(
        sorted(copy.decode() for copy in next(iter(differing.values())))
    )

    # Every event a receipt names is on the pathway; a repeat carries the same id and content.
    expected = {e for receipts in got.values() for r in receipts for e in r["event_ids"]}
    pathway: list[Record] = hub_env.settle(hub_env.topics.pathway, quiet=3.0)
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in pathway:
        event = record.json_value()
        by_id[event["event_id"]].append(event)
    lost_events = expected - set(by_id)
    duplicates = {e: copies for e, copies in by_id.items() if len(copies) > 1}
    for event_id, copies in duplicates.items():
        # The same fact: same patient, kind, time and resource (recorded_at is the input's timestamp).
        facts = {json.dumps([c["patient_id"], c["kind"], c["occurred_at"], c["resource"]]) for c in copies}
        assert len(facts) == 1, f"{event_id}: two different facts under one id"
    # What a consumer sees after keeping the first copy of each id: exactly the events, once each.
    seen: set[str] = set()
    deduplicated = [
        e for e in (r.json_value()["event_id"] for r in pathway) if not (e in seen or seen.add(e))
    ]
    assert len(deduplicated) == len(set(by_id))
    # Nothing lost (DESIGN.md 4): every input has its receipt, every event a receipt names is published.
    assert not missing, (
        f"{len(missing)} of {len(message_ids)} inputs without a receipt after {elapsed:.0f} s "
        f"({where_lost(hub_env, missing)})\n{problems(hub_env)}"
    )
    assert not lost_events, (
        f"{len(lost_events)} events named by receipts never reached the pathway, "
        f"e.g. {sorted(lost_events)[:3]}\n{problems(hub_env)}"
    )
    print(
        f"{len(records)} inputs, {sum(len(r) for r in got.values())} receipts "
        f"({len(repeated)} inputs receipted twice or more), statuses {dict(statuses)}; "
        f"{len(pathway)} pathway records, {len(by_id)} distinct event ids, "
        f"{sum(len(c) - 1 for c in duplicates.values())} redelivered copies, all de-duplicated by event_id; "
        f"{len(expected)} ids named by receipts, none missing; {elapsed:.0f} s"
    )
