"""The audit chain on a real broker: the pipeline's hub.audit.v1 verifies across a worker restart, and a
copy with one record changed, one removed, or its tail cut fails `hub audit verify` where it breaks."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer

from hub.audit.chain import Checkpoint, chain_fields
from hub.audit.signing import new_private_pem
from hub.ingest.signature import sign
from hub.kafka.clients import Record, read

from .conftest import PARTITIONS, HubEnv, start_worker, stop_worker

CreateTopics = Callable[..., None]


@pytest.fixture
def audit_key(hub_env: HubEnv) -> Path:
    """An Ed25519 checkpoint key for the worker, and checkpoints every 4 records or 2 seconds."""
    key = hub_env.work_dir / "audit-signing.key"
    key.write_text(new_private_pem(), encoding="utf-8")
    key.chmod(stat.S_IRUSR | stat.S_IWUSR)
    hub_env.environ["HUB_AUDIT_SIGNING_KEY_FILE"] = str(key)
    hub_env.environ["HUB_AUDIT_CHECKPOINT_RECORDS"] = "4"
    hub_env.environ["HUB_AUDIT_CHECKPOINT_SECONDS"] = "2"
    return key


def send_rejects(env: HubEnv, tag: str, count: int) -> None:
    """``count`` inputs signed with a wrong key, from three sources: each is rejected and audited."""
    sources = ("synthea", "gp-test", "hospital-stu3")
    records = []
    for n in range(count):
        source = sources[n % len(sources)]
        value = json.dumps({"resourceType": "Patient", "id": f"{tag}-{n}"}).encode()
        headers = [
            ("hub-source", source.encode()),
            (
                "hub-signature",
                sign(b"not-the-source-key-0123456789", source, value, int(time.time())).encode(),
            ),
            ("hub-message-id", f"{tag}-{n}".encode()),
        ]
        records.append((f"{tag}-{n}".encode(), value, headers))
    env.send(records)


def raw(env: HubEnv, topic: str, *, quiet: float = 1.0) -> list[Record]:
    """Every record of a topic, as stored (no decryption, headers kept)."""
    return list(read(env.bootstrap, [topic], idle_timeout=quiet))


def wait_for(env: HubEnv, topic: str, count: int, timeout: float = 120.0) -> list[Record]:
    deadline = time.monotonic() + timeout
    while True:
        records = raw(env, topic)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(1.0)


def checkpoints_cover_heads(env: HubEnv, timeout: float = 60.0) -> list[Checkpoint]:
    """Wait until each chain's head is vouched for by a checkpoint (the 2 s idle timer)."""
    deadline = time.monotonic() + timeout
    while True:
        heads: dict[int, int] = {}
        for record in raw(env, env.topics.audit):
            fields = chain_fields(record.headers)
            assert fields is not None, "every hub.audit.v1 record is sealed"
            heads[record.partition] = max(heads.get(record.partition, 0), fields.seq)
        checkpoints = [
            c
            for c in (Checkpoint.from_json(r.json_value()) for r in raw(env, env.topics.audit_checkpoints))
            if c is not None
        ]
        covered = {p: max((c.seq for c in checkpoints if c.partition == p), default=0) for p in heads}
        if covered == heads or time.monotonic() > deadline:
            assert covered == heads, (covered, heads)
            return checkpoints


def copy_topic(
    env: HubEnv,
    create_topics: CreateTopics,
    name: str,
    records: list[Record],
    *,
    skip: frozenset[int] | set[int] = frozenset(),
    change: int | None = None,
) -> str:
    """Re-produce ``records`` into a new topic, same partitions, keys, headers: one changed or skipped."""
    topic = f"{env.topics.prefix}scratch.{name}"
    create_topics(env.bootstrap, [topic], partitions=PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", enable_idempotence=True)
    for index, record in enumerate(records):
        if index in skip:
            continue
        value = record.value or b""
        if index == change:
            value = value.replace(b'"outcome":"4"', b'"outcome":"0"')
            assert value != record.value
        producer.send(
            topic, key=record.key, value=value, headers=list(record.headers), partition=record.partition
        )
    producer.flush()
    producer.close()
    return topic


def verify(env: HubEnv, *args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return env.cli("audit", "verify", "--state", str(state), *args, timeout=120)


def test_the_pipelines_audit_chain_verifies_and_each_tamper_is_found_where_it_is(
    hub_env: HubEnv, audit_key: Path, create_topics: CreateTopics, request: pytest.FixtureRequest
) -> None:
    worker = request.getfixturevalue("worker")
    send_rejects(hub_env, "before", 9)
    assert len(wait_for(hub_env, hub_env.topics.audit, 9)) == 9
    checkpoints_cover_heads(hub_env)

    # A restart: the new worker reads each chain's head back from hub.audit.v1 and goes on from it.
    stop_worker(worker)
    again = start_worker(hub_env)
    try:
        send_rejects(hub_env, "after", 9)
        audit = wait_for(hub_env, hub_env.topics.audit, 18)
        assert len(audit) >= 18, "every reject is audited (a redelivered one may be sealed twice)"
        checkpoints = checkpoints_cover_heads(hub_env)
    finally:
        stop_worker(again)
    audit = raw(hub_env, hub_env.topics.audit)
    assert all(r.json_value()["resourceType"] == "AuditEvent" for r in audit), "values stay FHIR"
    by_partition: dict[int, list[int]] = {}
    for record in audit:
        fields = chain_fields(record.headers)
        assert fields is not None
        by_partition.setdefault(record.partition, []).append(fields.seq)
    for seqs in by_partition.values():
        assert seqs == list(range(1, len(seqs) + 1)), "one chain per partition, no fork at the restart"
    assert len(checkpoints) >= len(by_partition)

    clean = verify(hub_env, "--from-beginning", state=hub_env.work_dir / "clean.json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"intact: {len(audit)} records" in clean.stdout
    incremental = verify(hub_env, state=hub_env.work_dir / "clean.json")
    assert incremental.returncode == 0 and "intact: 0 records" in incremental.stdout, incremental.stdout

    # Tampered copies (a Kafka record cannot be edited in place), each checked against the real checkpoints.
    partition = max(by_partition, key=lambda p: len(by_partition[p]))
    indexes = [i for i, r in enumerate(audit) if r.partition == partition]
    cases = {
        "copy": ({}, None),
        "changed": ({"change": indexes[2]}, "record.changed"),
        "removed": ({"skip": {indexes[3]}}, "record.removed"),
        "truncated": ({"skip": set(indexes[-2:])}, "chain.truncated"),
    }
    for name, (tamper, kind) in cases.items():
        topic = copy_topic(hub_env, create_topics, name, audit, **tamper)  # type: ignore[arg-type]
        result = verify(
            hub_env,
            "--topic", topic, "--checkpoint-topic", hub_env.topics.audit_checkpoints,
            "--public-key", str(audit_key),
            state=hub_env.work_dir / f"{name}.json",
        )  # fmt: skip
        if kind is None:
            assert result.returncode == 0, result.stdout + result.stderr
            continue
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert "TAMPERED" in result.stderr
        [line] = [x for x in result.stderr.splitlines() if x.startswith("chain breaks:")]
        assert kind in line and f"partition {partition}" in line, line
        if name != "truncated":
            # Offsets in the copy: the changed record is the partition's third; after the removed
            # fourth, the gap shows at the next record, now the fourth (offset 3).
            assert f"offset {2 if name == 'changed' else 3}:" in line, line

    # The copy verified once; the same state against a shorter topic is a cut tail even without a checkpoint.
    shorter = copy_topic(hub_env, create_topics, "shorter", audit, skip={indexes[-1]})
    no_checkpoints = f"{hub_env.topics.prefix}scratch.no-checkpoints"
    create_topics(hub_env.bootstrap, [no_checkpoints], partitions=PARTITIONS)
    cut = verify(
        hub_env,
        "--topic",
        shorter,
        "--checkpoint-topic",
        no_checkpoints,
        state=hub_env.work_dir / "copy.json",
    )
    assert cut.returncode == 1 and "an earlier run verified up to offset" in cut.stderr, cut.stderr
