"""Same inputs, same outcome (issue 14): who receives what, and which alerts exist, do not depend on order.

The demo feed (five kinds of source software, the demo recipients and networks, as `hub run` has
them) goes through four fresh hubs on the real broker, running at once:

1. in the order the generator writes it (sources interleaved);
2. source by source, in one order of the sources;
3. source by source, in the reverse order;
4. as in 1, with one of two workers killed -9 a third of the way through and restarted later.

Each source's own order is kept (a source sends its messages in order; only the interleaving across
sources changes). What withdraws a basis is order-bound by design (docs/CONSENT.md, "Convergence"):
an objection, and a stay that ends more than the recency window before the decision (events decided
while the hub knew the stay as open were sent). So objections are left out of the feed, and the
policy's recency window is ten years, so that every stay of the feed counts; the unit tests in
tests/unit/test_share_convergence.py cover both exceptions.

Each run ends when the hub's consumer group has committed every record of every topic it reads;
then each recipient topic's set of event ids and the set of alert ids must be identical across runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from hub.demo.generator import DemoMessage, generate_feed
from hub.ingest.signature import sign
from hub.kafka.clients import read
from hub.topics import TopicNames

from .conftest import (
    PARTITIONS,
    PROJECT_ROOT,
    TEST_AUDIT_CHAIN_KEY,
    TEST_KEK,
    HubEnv,
    start_worker,
    stop_worker,
    worker_troubles,
)
from .test_faults_worker_kill import wait_for_log

PATIENTS = 16
SEED = 11
FEED_NOW = datetime(2026, 11, 1, tzinfo=UTC)
#: How long one run may take to settle (its inputs all processed and committed).
SETTLE_TIMEOUT = 240.0

Input = tuple[bytes, bytes, list[tuple[str, bytes]]]


def secret_of(source_id: str) -> bytes:
    return f"{source_id}-convergence-secret-0123456789".encode()


def is_objection(message: DemoMessage) -> bool:
    """A message carrying a deny Consent (an objection), alone or in a Bundle."""
    resources = [message.resource] + [
        entry.get("resource") or {} for entry in message.resource.get("entry") or ()
    ]
    return any(
        r.get("resourceType") == "Consent" and '"deny"' in json.dumps(r.get("provision") or {})
        for r in resources
    )


def demo_feed() -> list[DemoMessage]:
    return [m for m in generate_feed(patients=PATIENTS, seed=SEED, now=FEED_NOW) if not is_objection(m)]


def signed(message: DemoMessage) -> Input:
    value = message.body()
    headers = [
        ("hub-source", message.source_id.encode()),
        (
            "hub-signature",
            sign(secret_of(message.source_id), message.source_id, value, int(time.time())).encode(),
        ),
        ("hub-message-id", message.message_id.encode()),
        ("content-type", message.content_type.encode()),
    ]
    return (message.message_id.encode(), value, headers)


def by_source(feed: list[DemoMessage], *, reverse: bool) -> list[DemoMessage]:
    """The feed source after source, each source's messages in their order."""
    sources = sorted({m.source_id for m in feed}, reverse=reverse)
    return [m for source in sources for m in feed if m.source_id == source]


def demo_env(kafka_bootstrap: str, name: str, folder: Path) -> HubEnv:
    """A hub configured as `hub run` is (demo sources, recipients, networks), on its own topics."""
    folder.mkdir(parents=True)
    shutil.copytree(PROJECT_ROOT / "config" / "conceptmaps", folder / "conceptmaps")
    registry = json.loads((PROJECT_ROOT / "config" / "sources.demo.json").read_text())
    environ = {
        "HUB_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "HUB_TOPIC_PREFIX": f"{name}.",
        "HUB_APP_ID": name,
        "HUB_SOURCES_FILE": str(folder / "sources.json"),
        "HUB_RECIPIENTS_FILE": str(PROJECT_ROOT / "config" / "recipients.demo.json"),
        "HUB_NETWORKS_DIR": str(PROJECT_ROOT / "config" / "networks"),
        "HUB_PSEUDONYM_KEY": "convergence-test-pseudonym-key",
        "HUB_ALLOW_TEST_INS": "true",
        # A killed worker's partitions move after 12 s instead of 30 (docs/DEPLOY.md).
        "HUB_GROUP_SESSION_SECONDS": "12",
        "HUB_TOPIC_PARTITIONS": str(PARTITIONS),
        "HUB_LOG_LEVEL": "info",
        "HUB_LOG_JSON": "true",
        "HUB_KEK": TEST_KEK.hex(),
        "HUB_AUDIT_CHAIN_KEY": TEST_AUDIT_CHAIN_KEY.hex(),
        "HUB_KEY_STORE_FILE": str(folder / "keys" / "data-keys.sqlite3"),
        "HUB_TABLE_DIR": str(folder / "tables"),
        # Two workers on one host: each its own metrics port.
        "HUB_METRICS_PORT": "0",
    }
    policy = json.loads((PROJECT_ROOT / "config" / "policy.json").read_text())
    policy.update(recency_days=3660, version=policy["version"] + "-convergence-test")
    (folder / "policy.json").write_text(json.dumps(policy))
    environ["HUB_POLICY_FILE"] = str(folder / "policy.json")
    for source in registry["sources"]:
        variable = "HUB_CONVERGENCE_SECRET_" + source["id"].upper().replace("-", "_")
        environ[variable] = secret_of(source["id"]).decode()
        source["secrets"] = [{"env": variable}]
    (folder / "sources.json").write_text(json.dumps(registry))
    return HubEnv(environ, TopicNames(f"{name}."), kafka_bootstrap, folder, folder / "worker.log")


def recipient_topics(env: HubEnv) -> list[str]:
    """The demo recipients' topics."""
    recipients = json.loads((PROJECT_ROOT / "config" / "recipients.demo.json").read_text())["recipients"]
    return [f"{env.topics.prefix}hub.pathway.{r['id']}.v1" for r in recipients]


def lagging(env: HubEnv) -> list[str]:
    """The partitions the hub's group reads and has not committed to their end (or why unknown)."""
    group = env.environ["HUB_APP_ID"]
    # Not the pathway: the identity agent decides each event as it publishes it, nothing reads it back.
    inputs = [
        env.topics.ingest,
        env.topics.identity,
        env.topics.share_merge,
        env.topics.audit_unsealed,
    ]
    admin = KafkaAdminClient(bootstrap_servers=env.bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=env.bootstrap)
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in inputs
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = consumer.end_offsets(partitions)
        committed = admin.list_group_offsets({group: None}).get(group) or {}
    except KafkaError as exc:
        # The group's coordinator is not known yet (the group has just formed): ask again.
        return [f"offsets unknown ({type(exc).__name__})"]
    finally:
        consumer.close()
        admin.close()
    if len(partitions) != len(inputs) * PARTITIONS:
        return [f"{len(partitions)} partitions known of {len(inputs) * PARTITIONS}"]
    return [
        f"{tp.topic.removeprefix(env.topics.prefix)}/{tp.partition}: {_offset(committed.get(tp))} of {end}"
        for tp, end in ends.items()
        if end > _offset(committed.get(tp))
    ]


def settled(env: HubEnv, *, timeout: float) -> list[str]:
    """[] once the hub's group has committed every record of every topic it reads, three times in a
    row a second apart; else what still lags. (An input is committed only once every record it gave
    was acknowledged by Kafka: the rows after the first are a margin.)"""
    deadline = time.monotonic() + timeout
    streak = 0
    behind: list[str] = []
    while time.monotonic() < deadline:
        behind = lagging(env)
        streak = 0 if behind else streak + 1
        if streak >= 3:
            return []
        time.sleep(1.0)
    return behind or ["never settled three times in a row"]


def _offset(committed: Any) -> int:
    """A committed offset as kafka-python gives it (an OffsetAndMetadata, or an int), 0 when none."""
    if committed is None:
        return 0
    return int(getattr(committed, "offset", committed))


def outcome(env: HubEnv) -> dict[str, frozenset[str]]:
    """Each recipient topic's event ids (by recipient id) and the alert ids.

    What each id stands for (patient, kind, source) is written to ``outcome.json`` in the run's
    folder, for whoever reads a failure.
    """
    result: dict[str, frozenset[str]] = {}
    described: dict[str, dict[str, str]] = {}
    # The hub has committed every input: every topic is complete. Read together, in one pass.
    opener = env.opener()
    records: dict[str, list[dict[str, Any]]] = {}
    for record in read(env.bootstrap, [*recipient_topics(env), env.topics.alerts], idle_timeout=1.0):
        records.setdefault(record.topic, []).append(opener.open_record(record).json_value())
    for topic in recipient_topics(env):
        recipient = topic.removeprefix(f"{env.topics.prefix}hub.pathway.").removesuffix(".v1")
        events = records.get(topic, [])
        result[recipient] = frozenset(e["event_id"] for e in events)
        described[recipient] = {
            e[
                "event_id"
            ]: f"{e['patient_id']} {e['kind']} from {e['source']['id']} ({e['decision']['basis']})"
            for e in events
        }
    alerts = records.get(env.topics.alerts, [])
    result["alerts"] = frozenset(a["alert_id"] for a in alerts)
    described["alerts"] = {
        a["alert_id"]: f"{a['patient']['patient_id']} {a['network']['id']} {a['status']} {a['practitioner']}"
        for a in alerts
    }
    (env.work_dir / "outcome.json").write_text(json.dumps(described, indent=1, sort_keys=True))
    return result


def run_hub(env: HubEnv, inputs: list[Input], *, kill_at: int | None = None) -> dict[str, frozenset[str]]:
    """Send ``inputs`` to a fresh hub (two workers when one is killed), wait until settled, read."""
    result = env.cli("topics", "create", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    names = ["worker-a", "worker-b"] if kill_at is not None else ["worker-a"]
    workers = {n: start_worker(env, log_file=env.work_dir / f"{n}.log") for n in names}
    try:
        for name in names:
            assert wait_for_log(env.work_dir / f"{name}.log", "worker.starting", timeout=90), name
        if kill_at is None:
            env.send(inputs)
        else:
            env.send(inputs[:kill_at])
            assert env.collect(env.topics.receipts, 1, timeout=90), "no receipt before the kill"
            os.kill(workers["worker-b"].pid, signal.SIGKILL)
            workers["worker-b"].wait(timeout=10)
            env.send(inputs[kill_at : 2 * kill_at])
            workers["worker-b"] = start_worker(env, log_file=env.work_dir / "worker-b.log")
            env.send(inputs[2 * kill_at :])
        behind = settled(env, timeout=SETTLE_TIMEOUT)
        assert not behind, f"not settled in {SETTLE_TIMEOUT:.0f} s: {behind[:10]}"
        for name, process in workers.items():
            assert process.poll() is None, f"{name} died:\n{worker_troubles(env.work_dir / f'{name}.log')}"
        return outcome(env)
    finally:
        for process in workers.values():
            stop_worker(process)


@pytest.fixture
def fresh_env(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> Iterator[Callable[[str], HubEnv]]:
    yield lambda label: demo_env(kafka_bootstrap, unique_name(f"conv-{label}"), tmp_path / label)


def differences(a: dict[str, frozenset[str]], b: dict[str, frozenset[str]]) -> str:
    return "; ".join(
        f"{key}: {len(a[key] - b[key])} only in the first, {len(b[key] - a[key])} only in the second"
        for key in sorted(a)
        if a[key] != b[key]
    )


def test_three_interleavings_and_a_killed_worker_give_every_recipient_the_same_events_and_alerts(
    fresh_env: Callable[[str], HubEnv],
) -> None:
    feed = demo_feed()
    orders = {
        "generated": feed,
        "by-source": by_source(feed, reverse=False),
        "by-source-reversed": by_source(feed, reverse=True),
    }
    assert len({tuple(m.message_id for m in order) for order in orders.values()}) == 3
    # The four hubs run at once (their own topics, groups and folders): the outcome must not depend
    # on timing either, and the test takes the longest run's time, not the sum.
    with ThreadPoolExecutor(max_workers=len(orders) + 1) as pool:
        running = {
            "killed": pool.submit(
                run_hub, fresh_env("killed"), [signed(m) for m in feed], kill_at=len(feed) // 3
            )
        }
        running |= {
            label: pool.submit(run_hub, fresh_env(label), [signed(m) for m in order])
            for label, order in orders.items()
        }
        outcomes = {label: run.result() for label, run in running.items()}
    reference = outcomes["generated"]
    # The comparison can fail: the GP practices and hospitals receive events, and alerts exist.
    assert sum(len(ids) for key, ids in reference.items() if key != "alerts") > 100, reference
    assert reference["alerts"], "the demo feed raises alerts"
    differing = {label: differences(reference, got) for label, got in outcomes.items() if got != reference}
    assert not differing, f"runs differ from the generated order's (details in outcome.json): {differing}"
    print(
        f"{len(feed)} inputs in 3 orders and with a kill: "
        + ", ".join(f"{k} {len(v)}" for k, v in sorted(reference.items()))
    )
