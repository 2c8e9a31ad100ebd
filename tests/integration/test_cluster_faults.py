"""A three-broker cluster: replicated topics, and no acknowledged input lost when the ingest leader is killed.

One embedded three-node KRaft cluster for the module (``kafka_bootstrap`` is overridden here, so the
shared ``hub_env`` and ``worker`` fixtures run the hub against it).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from hub.broker.cluster import EmbeddedCluster
from hub.demo.generator import DEMO_SOURCES, generate_feed
from hub.ingest.signature import sign
from hub.kafka.admin import admin_client
from hub.kafka.clients import producer, read
from hub.settings import Settings

from .conftest import HubEnv, worker_troubles

#: The stream's pace and length: long enough to straddle the kill, the outage and the restart.
RATE_PER_SECOND = 25
KILL_AFTER_SECONDS = 4.0
DOWN_FOR_SECONDS = 5.0
STREAM_AFTER_RESTART_SECONDS = 3.0
#: How long the dead node may keep leading in the metadata before the test calls failover broken.
FAILOVER_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """Three combined broker+controller nodes on free loopback ports, for this module."""
    embedded = EmbeddedCluster(
        tmp_path_factory.mktemp("kafka-cluster"), Settings().state_dir.expanduser() / "jars", nodes=3
    )
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="module")
def kafka_bootstrap(cluster: EmbeddedCluster) -> str:
    """Overrides the session broker for this module: hub_env and worker use the cluster."""
    return cluster.bootstrap


@pytest.fixture
def gp_test_accepts_demo_patients(hub_env: HubEnv) -> None:
    """The demo feed is signed as gp-test here: register the demo's patient identifier systems for it."""
    registry = json.loads((hub_env.work_dir / "sources.json").read_text())
    for source in registry["sources"]:
        if source["id"] == "gp-test":
            source["patient_identifier_systems"] += [s.patient_identifier_system for s in DEMO_SOURCES]
    (hub_env.work_dir / "sources.json").write_text(json.dumps(registry))


def partition_leaders(address: str, topic: str) -> dict[int, int]:
    """partition → leader of ``topic`` as the one broker at ``address`` sees it (Metadata v4, raw).

    kafka-python's admin client follows the cluster metadata to the dead node and gives up; this
    asks exactly one live broker.
    """
    host, _, port = address.rpartition(":")
    name = topic.encode()
    body = struct.pack(">ih", 1, len(name)) + name + struct.pack(">?", False)
    header = struct.pack(">hhih", 3, 4, 7, len(b"hub-test")) + b"hub-test"
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        sock.sendall(struct.pack(">i", len(header + body)) + header + body)
        size = struct.unpack(">i", _exactly(sock, 4))[0]
        data = _exactly(sock, size)
    offset = 8  # correlation id, throttle time
    (brokers,) = struct.unpack_from(">i", data, offset)
    offset += 4
    for _ in range(brokers):  # node_id, host, port, rack (nullable)
        offset += 4
        (length,) = struct.unpack_from(">h", data, offset)
        offset += 2 + length + 4
        (length,) = struct.unpack_from(">h", data, offset)
        offset += 2 + max(length, 0)
    (length,) = struct.unpack_from(">h", data, offset)  # cluster id (nullable)
    offset += 2 + max(length, 0) + 4  # + controller id
    offset += 4  # one topic
    error, length = struct.unpack_from(">hh", data, offset)
    offset += 4 + length + 1  # name, is_internal
    (partitions,) = struct.unpack_from(">i", data, offset)
    offset += 4
    leaders: dict[int, int] = {}
    for _ in range(partitions):
        _error, index, leader = struct.unpack_from(">hii", data, offset)
        offset += 10
        leaders[index] = leader
        for _array in range(2):  # replicas, isr
            (count,) = struct.unpack_from(">i", data, offset)
            offset += 4 + 4 * count
    assert error == 0, f"metadata error {error} for {topic}"
    return leaders


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the broker closed the connection"
        data += chunk
    return data


def describe_ingest(env: HubEnv) -> tuple[dict[int, int], dict[int, list[int]], str]:
    """(partition → leader, partition → ISR, min.insync.replicas) of the ingest topic."""
    admin = admin_client(env.bootstrap)
    try:
        (topic,) = admin.describe_topics([env.topics.ingest])
        leaders = {p["partition_index"]: p["leader_id"] for p in topic["partitions"]}
        isr = {p["partition_index"]: sorted(p["isr_nodes"]) for p in topic["partitions"]}
        replicas = {len(p["replica_nodes"]) for p in topic["partitions"]}
        assert replicas == {3}, f"replication factor {replicas}, expected 3"
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, env.topics.ingest)])
        min_isr = _config_value(configs, "min.insync.replicas")
        return leaders, isr, min_isr
    finally:
        admin.close()


def _config_value(described: Any, name: str) -> str:
    # {resource type: {resource name: {config key: {config data}}}} (kafka-python 3).
    for resources in described.values():
        for configs in resources.values():
            if name in configs:
                entry = configs[name]
                return str(entry.get("value") if isinstance(entry, dict) else entry)
    raise AssertionError(f"{name} not in {described!r}")


class SteadyStream:
    """Sends signed demo inputs at a fixed rate from a thread; records which were acknowledged."""

    def __init__(self, env: HubEnv) -> None:
        self.env = env
        self.acked: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="steady-stream", daemon=True)
        self._feed = iter(generate_feed(patients=400, seed=8, now=datetime(2026, 11, 1, tzinfo=UTC)))

    def __enter__(self) -> SteadyStream:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    def _run(self) -> None:
        # The project's producer: acks=all and idempotence (hub.kafka.clients).
        sender = producer(self.env.bootstrap)
        secret = self.env.source("gp-test").secret
        interval = 1.0 / RATE_PER_SECOND
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                message = next(self._feed)
                value = message.body()
                message_id = f"fault-{message.message_id}"
                headers = [
                    ("hub-source", b"gp-test"),
                    ("hub-signature", sign(secret, "gp-test", value, int(time.time())).encode()),
                    ("hub-message-id", message_id.encode()),
                    ("content-type", message.content_type.encode()),
                ]
                future = sender.send(
                    self.env.topics.ingest, key=message_id.encode(), value=value, headers=headers
                )
                future.add_callback(self._on_ack, message_id)
                future.add_errback(self._on_error, message_id)
                self.sent += 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            sender.flush(timeout=150)
        finally:
            sender.close()

    def _on_ack(self, message_id: str, _metadata: Any) -> None:
        with self._lock:
            self.acked[message_id] = time.monotonic()

    def _on_error(self, message_id: str, exc: BaseException) -> None:
        with self._lock:
            self.failed[message_id] = type(exc).__name__


def test_killing_the_ingest_leader_mid_stream_loses_no_acknowledged_input(
    hub_env: HubEnv, gp_test_accepts_demo_patients: None, worker: Any, cluster: EmbeddedCluster
) -> None:
    """kill -9 the ingest partitions' leader mid-stream, restart it: every acked input has a receipt."""
    leaders, isr, min_isr = describe_ingest(hub_env)
    assert min_isr == "2" and all(len(nodes) == 3 for nodes in isr.values()), (isr, min_isr)
    victim = Counter(leaders.values()).most_common(1)[0][0]
    led = sorted(p for p, leader in leaders.items() if leader == victim)

    with SteadyStream(hub_env) as stream:
        time.sleep(KILL_AFTER_SECONDS)
        acked_before_kill = len(stream.acked)
        killed_at = time.monotonic()
        pid = cluster.kill_node(victim)
        time.sleep(DOWN_FOR_SECONDS)
        # Asked of the live nodes only: kafka-python's admin client gives up on a dead one. The
        # controller fences the dead node after broker.session.timeout.ms; on a busy machine, later.
        alive = next(f"127.0.0.1:{n.port}" for n in cluster.spec().nodes if n.node_id != victim)
        new_leaders = partition_leaders(alive, hub_env.topics.ingest)
        deadline = time.monotonic() + FAILOVER_TIMEOUT
        while victim in new_leaders.values() and time.monotonic() < deadline:
            time.sleep(0.5)
            new_leaders = partition_leaders(alive, hub_env.topics.ingest)
        cluster.start_node(victim)
        restarted_at = time.monotonic()
        time.sleep(STREAM_AFTER_RESTART_SECONDS)
    acked_during_outage = sum(killed_at <= at < restarted_at for at in stream.acked.values())
    acked_after_restart = sum(at >= restarted_at for at in stream.acked.values())

    wanted = set(stream.acked)
    receipts: dict[str, dict[str, Any]] = {}
    for record in read(hub_env.bootstrap, [hub_env.topics.receipts], idle_timeout=60.0,
                       deadline=time.monotonic() + 150.0):  # fmt: skip
        receipt = record.json_value()
        if receipt and receipt.get("message_id") in wanted:
            receipts.setdefault(receipt["message_id"], receipt)
            if len(receipts) == len(wanted):
                break
    missing = wanted - set(receipts)
    statuses = Counter(receipt["status"] for receipt in receipts.values())
    print(
        f"\nchecked: killed node {victim} (pid {pid}; leader of ingest partitions {led}; leaders then "
        f"{new_leaders}) after {acked_before_kill} acks, restarted it {restarted_at - killed_at:.0f} s "
        "later; "
        f"sent {stream.sent}, acknowledged {len(wanted)} ({acked_during_outage} during the outage, "
        f"{acked_after_restart} after the restart), send errors {len(stream.failed)}; "
        f"receipts for {len(receipts)}/{len(wanted)} acknowledged inputs {dict(statuses)}; "
        f"missing {len(missing)}"
    )
    assert acked_before_kill > 0 and acked_after_restart > 0, "the kill must fall mid-stream"
    assert victim not in set(new_leaders.values()), f"node {victim} still leads {new_leaders} while down"
    troubles = worker_troubles(hub_env.log_file)
    assert worker.poll() is None, f"the worker ended ({worker.returncode}):\n{troubles}"
    assert not missing, (
        f"{len(missing)} acknowledged inputs have no receipt, e.g. {sorted(missing)[:5]}; the worker's "
        f"log:\n{troubles}"
    )
    codes = Counter(r["error"]["code"] for r in receipts.values() if r["status"] == "rejected")
    assert statuses["rejected"] == 0, codes
    # Everything unacknowledged failed loudly at the producer: nothing vanished silently either.
    assert stream.sent == len(wanted) + len(stream.failed)
