"""The keyed audit chain on a real broker: the pipeline's hub.audit.v1 verifies across a worker restart;
copies with a record altered, removed, replayed or forged, or with the tail cut, fail `hub audit verify`
where and as what they are, incrementally and from the beginning alike; and a record forged onto the
real hub.audit.v1 by a plain producer is reported as forged, and not chained onto by the next sealer."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kafka import KafkaProducer

from hub.audit.chain import Checkpoint, chain_fields, mac_input
from hub.audit.signing import new_private_pem
from hub.ingest.signature import sign
from hub.kafka.clients import Record, end_offsets, read
from hub.records import (
    AUDIT_BREAK_HEADER,
    AUDIT_FORMAT_HEADER,
    AUDIT_KEY_ID_HEADER,
    AUDIT_MAC_HEADER,
    AUDIT_PREV_HEADER,
    AUDIT_SEQ_HEADER,
)

from .conftest import PARTITIONS, HubEnv, start_worker, stop_worker

CreateTopics = Callable[..., None]
#: A record as a producer sends it: partition, key, value, headers.
Sent = tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]


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


def snapshot(env: HubEnv, topic: str, timeout: float = 60.0) -> list[Record]:
    """Every record of a topic up to its end offsets now, as stored (headers kept), in offset order."""
    ends = end_offsets(env.bootstrap, topic)
    want = sum(ends.values())
    found: list[Record] = []
    if want:
        for record in read(env.bootstrap, [topic], idle_timeout=timeout, deadline=time.monotonic() + timeout):
            if record.offset < ends[record.partition]:
                found.append(record)
            if len(found) >= want:
                break
    assert len(found) == want, f"read {len(found)} of {want} records of {topic}"
    return sorted(found, key=lambda r: (r.partition, r.offset))


def wait_for(env: HubEnv, topic: str, count: int, timeout: float = 120.0) -> list[Record]:
    """The topic once it holds at least ``count`` records (or as it is at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        records = snapshot(env, topic)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def sealed_heads(env: HubEnv) -> dict[int, int]:
    """Each chain's highest position in hub.audit.v1 (only the sealer's records count)."""
    heads: dict[int, int] = {}
    for record in snapshot(env, env.topics.audit):
        fields = chain_fields(record.headers)
        assert fields is not None, "every hub.audit.v1 record of the pipeline is sealed"
        heads[record.partition] = max(heads.get(record.partition, 0), fields.seq)
    return heads


def checkpoints_cover_heads(env: HubEnv, timeout: float = 60.0) -> list[Checkpoint]:
    """Wait until each chain's head is vouched for by a checkpoint (the 2 s idle timer)."""
    deadline = time.monotonic() + timeout
    while True:
        heads = sealed_heads(env)
        checkpoints = [
            c
            for c in (
                Checkpoint.from_json(r.json_value()) for r in snapshot(env, env.topics.audit_checkpoints)
            )
            if c is not None
        ]
        covered = {p: max((c.seq for c in checkpoints if c.partition == p), default=0) for p in heads}
        if covered == heads or time.monotonic() > deadline:
            assert covered == heads, (covered, heads)
            return checkpoints
        time.sleep(0.5)


def produce(env: HubEnv, topic: str, records: list[Sent]) -> None:
    """Append (partition, key, value, headers) records with a plain producer: anyone with write access."""
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", enable_idempotence=True)
    for partition, key, value, headers in records:
        producer.send(topic, key=key, value=value, headers=headers, partition=partition)
    producer.flush()
    producer.close()


def unkeyed_forgery(after: Record, value: bytes) -> Sent:
    """The record someone without the chain key appends after ``after``: the next position, linked to
    it, its key id copied, and the link recomputed as SHA-256 of the record's canonical bytes."""
    fields = chain_fields(after.headers)
    assert fields is not None and fields.key_id is not None
    seq = fields.seq + 1
    link = hashlib.sha256(mac_input(after.partition, seq, fields.link, after.key, value)).hexdigest()
    headers = [
        (AUDIT_FORMAT_HEADER, b"2"),
        (AUDIT_SEQ_HEADER, str(seq).encode()),
        (AUDIT_PREV_HEADER, fields.link.encode()),
        (AUDIT_MAC_HEADER, link.encode()),
        (AUDIT_KEY_ID_HEADER, fields.key_id.encode()),
    ]
    return after.partition, after.key, value, headers


def as_sent(record: Record) -> Sent:
    return record.partition, record.key, record.value or b"", list(record.headers)


def subtype(record: Record) -> str | None:
    """The subtype code of an AuditEvent record (None for anything else, a forgery's value say)."""
    value = record.json_value()
    subtypes = value.get("subtype") if isinstance(value, dict) else None
    return subtypes[0].get("code") if isinstance(subtypes, list) and subtypes else None


def verify(env: HubEnv, *args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return env.cli("audit", "verify", "--state", str(state), *args, timeout=180)


def breaks(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The `chain breaks:` lines of a verification, each one problem."""
    return sorted(line for line in result.stderr.splitlines() if line.startswith("chain breaks:"))


def test_the_pipelines_chain_verifies_and_each_tampering_is_reported_as_what_it_is_where_it_is(
    hub_env: HubEnv, audit_key: Path, create_topics: CreateTopics, request: pytest.FixtureRequest
) -> None:
    worker = request.getfixturevalue("worker")
    send_rejects(hub_env, "before", 9)
    assert len(wait_for(hub_env, hub_env.topics.audit, 9)) >= 9
    checkpoints_cover_heads(hub_env)

    # A restart: the new worker verifies each chain from its last checkpoint and goes on from its head.
    stop_worker(worker)
    restarted_log = hub_env.work_dir / "restarted-worker.log"
    again = start_worker(hub_env, log_file=restarted_log)
    try:
        send_rejects(hub_env, "after", 9)
        audit = wait_for(hub_env, hub_env.topics.audit, 18)
        assert len(audit) >= 18, "every reject is audited (a redelivered one may be sealed twice)"
        checkpoints = checkpoints_cover_heads(hub_env)
    finally:
        stop_worker(again)
    audit = snapshot(hub_env, hub_env.topics.audit)
    assert all(r.json_value()["resourceType"] == "AuditEvent" for r in audit), "values stay FHIR"
    by_partition: dict[int, list[int]] = {}
    for record in audit:
        fields = chain_fields(record.headers)
        assert fields is not None and fields.format == 2 and fields.break_reason is None
        by_partition.setdefault(record.partition, []).append(fields.seq)
    for seqs in by_partition.values():
        assert seqs == list(range(1, len(seqs) + 1)), (
            "one chain per partition, no fork, no break at a restart"
        )
    assert len(checkpoints) >= len(by_partition)
    assert all(c.offset is not None for c in checkpoints), "each checkpoint says where its record is"
    log = hub_env.log_file.read_text(encoding="utf-8", errors="replace")
    restarted = restarted_log.read_text(encoding="utf-8", errors="replace")
    for text in (log, restarted):
        assert "audit.chain_recovered" in text and "audit.tail_unverifiable" not in text
    take_overs = [json.loads(line) for line in restarted.splitlines() if '"audit.take_over"' in line]
    # At its first AuditEvent (again after a rebalance, should one come in the middle of that read).
    assert any(t["partitions"] == list(range(PARTITIONS)) for t in take_overs), (
        f"the restarted worker takes over every chain it holds in one read: {take_overs}"
    )

    clean = verify(hub_env, "--from-beginning", state=hub_env.work_dir / "clean.json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"intact: {len(audit)} records" in clean.stdout
    incremental = verify(hub_env, state=hub_env.work_dir / "clean.json")
    assert incremental.returncode == 0 and "intact: 0 records" in incremental.stdout, incremental.stdout

    check_tampered_copies(hub_env, audit, audit_key, create_topics)


def check_tampered_copies(
    env: HubEnv, audit: list[Record], audit_key: Path, create_topics: CreateTopics
) -> None:
    """Tampered copies of ``audit`` (a Kafka record cannot be edited in place), each checked against the
    real checkpoints. Each copy is first verified up to a point (what an earlier run saw), then the rest is
    appended with the tampering in it: an incremental run and a run from the beginning must agree."""
    by_partition: dict[int, int] = {}
    for record in audit:
        by_partition[record.partition] = by_partition.get(record.partition, 0) + 1
    partition = max(by_partition, key=lambda p: by_partition[p])
    ours = [r for r in audit if r.partition == partition]
    assert len(ours) >= 6, "the test needs six records in one chain"
    split = audit.index(ours[2])
    changed = (ours[3].value or b"").replace(b'"outcome":"4"', b'"outcome":"0"')
    assert changed != ours[3].value
    forgery = unkeyed_forgery(ours[-1], (ours[-1].value or b"").replace(b'"outcome":"4"', b'"outcome":"0"'))
    rest = audit[split:]
    cases: dict[str, tuple[list[Sent], str, int | None]] = {
        "altered": (
            [(r.partition, r.key, changed, list(r.headers)) if r is ours[3] else as_sent(r) for r in rest],
            "record.altered",
            3,
        ),
        "removed": ([as_sent(r) for r in rest if r is not ours[3]], "record.removed", 3),
        "replayed": ([*map(as_sent, rest), as_sent(ours[1])], "record.replayed", len(ours)),
        "forged": ([*map(as_sent, rest), forgery], "record.forged", len(ours)),
        "truncated": ([as_sent(r) for r in rest if r not in ours[-2:]], "chain.truncated", None),
    }
    # An earlier run verified the first part, when no checkpoint vouched for more than it.
    then = f"{env.topics.prefix}scratch.checkpoints-then"
    create_topics(env.bootstrap, [then], partitions=PARTITIONS)

    def check(name: str, appended: list[Sent], kind: str, offset: int | None) -> None:
        topic = f"{env.topics.prefix}scratch.{name}"
        create_topics(env.bootstrap, [topic], partitions=PARTITIONS)
        produce(env, topic, [as_sent(r) for r in audit[:split]])
        earlier = env.work_dir / f"{name}-incremental.json"
        first = verify(env, "--topic", topic, "--checkpoint-topic", then, state=earlier)
        assert first.returncode == 0, (name, first.stdout, first.stderr)
        full_state = env.work_dir / f"{name}-full.json"
        shutil.copy(earlier, full_state)
        produce(env, topic, appended)
        args = (
            "--topic",
            topic,
            "--checkpoint-topic",
            env.topics.audit_checkpoints,
            "--public-key",
            str(audit_key),
        )
        resumed = verify(env, *args, state=earlier)
        full = verify(env, "--from-beginning", *args, state=full_state)
        for result in (resumed, full):
            assert result.returncode == 1, (name, result.stdout, result.stderr)
            assert "TAMPERED" in result.stderr
            [line] = breaks(result)
            assert kind in line and f"partition {partition}" in line, (name, line)
            if offset is not None:
                assert f"offset {offset}:" in line, (name, line)
        assert breaks(resumed) == breaks(full), f"{name}: an incremental run and a full one disagree"

    # The cases are independent (a topic and state files each): checked at once, each `hub audit
    # verify` a process of its own.
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        for checked in [pool.submit(check, name, *case) for name, case in cases.items()]:
            checked.result()

    # The copy verified once; the same state against a shorter topic is a cut tail even without a
    # checkpoint, for an incremental run and a full one alike.
    copy = f"{env.topics.prefix}scratch.copy"
    create_topics(env.bootstrap, [copy], partitions=PARTITIONS)
    produce(env, copy, [as_sent(r) for r in audit])
    assert verify(env, "--topic", copy, state=env.work_dir / "copy.json").returncode == 0
    shorter = f"{env.topics.prefix}scratch.shorter"
    create_topics(env.bootstrap, [shorter], partitions=PARTITIONS)
    produce(env, shorter, [as_sent(r) for r in audit if r is not ours[-1]])
    for extra in ((), ("--from-beginning",)):
        state = env.work_dir / f"copy{len(extra)}.json"
        shutil.copy(env.work_dir / "copy.json", state)
        cut = verify(env, *extra, "--topic", shorter, "--checkpoint-topic", then, state=state)
        assert cut.returncode == 1 and "an earlier run verified up to offset" in cut.stderr, cut.stderr


def test_a_record_forged_onto_the_audit_topic_is_reported_and_never_chained_onto(
    hub_env: HubEnv, audit_key: Path, request: pytest.FixtureRequest
) -> None:
    """A plain producer appends a record linked to the head with a recomputed (unkeyed) link: `hub audit
    verify` says forged; the next sealer does not continue from it, starts a new segment that records
    the break, says so in its log, and loses no audit record."""
    worker = request.getfixturevalue("worker")
    send_rejects(hub_env, "before", 9)
    assert len(wait_for(hub_env, hub_env.topics.audit, 9)) >= 9
    checkpoints_cover_heads(hub_env)
    stop_worker(worker)
    state = hub_env.work_dir / "verified.json"
    clean = verify(hub_env, state=state)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    before = snapshot(hub_env, hub_env.topics.audit)

    # The forgery, onto the partition of the longest chain, right after its head.
    partition = max({r.partition for r in before}, key=lambda p: sum(r.partition == p for r in before))
    head = [r for r in before if r.partition == partition][-1]
    head_fields = chain_fields(head.headers)
    assert head_fields is not None
    forged_value = b'{"resourceType":"AuditEvent","id":"forged"}'
    forgery = unkeyed_forgery(head, forged_value)
    produce(hub_env, hub_env.topics.audit, [forgery])
    forged_offset = head.offset + 1

    # (a) `hub audit verify` flags it as forged, the same incrementally and from the beginning.
    full_state = hub_env.work_dir / "full.json"
    shutil.copy(state, full_state)
    incremental = verify(hub_env, state=state)
    full = verify(hub_env, "--from-beginning", state=full_state)
    expected = [
        f"chain breaks: record.forged at partition {partition} offset {forged_offset}: seq "
        f"{head_fields.seq + 1} does not verify (its MAC does not match its content), "
        "and nothing authentic links to it"
    ]
    for result in (incremental, full):
        assert result.returncode == 1, result.stdout + result.stderr
        assert breaks(result) == expected, result.stderr

    # (b) A sealer taking over does not continue from it: a new segment, linked to the last authentic
    # record, whose first record says what it found.
    again = start_worker(hub_env)
    try:
        send_rejects(hub_env, "after", 9)
        wait_for(hub_env, hub_env.topics.audit, len(before) + 1 + 1 + 9)
        checkpoints_cover_heads(hub_env)
    finally:
        stop_worker(again)
    check_the_break_after(hub_env, head, forgery)

    # Nothing audited was lost: every reject has its AuditEvent, sealed; the forged record is still the
    # only problem, and the new segment is a note.
    after = snapshot(hub_env, hub_env.topics.audit)
    rejects = {r.json_value()["id"] for r in after if subtype(r) == "ingest-reject"}
    assert len(rejects) == 18
    final = verify(hub_env, "--from-beginning", state=hub_env.work_dir / "final.json")
    assert final.returncode == 1
    assert breaks(final) == expected, final.stderr
    assert "starts a new segment after records the sealer could not verify (record.forged)" in final.stdout


def check_the_break_after(env: HubEnv, head: Record, forgery: Sent) -> None:
    """The record after the forgery is the sealer's segment break, linked to ``head``; nothing links to
    the forgery; the worker logged the alarm with its code."""
    partition, forged_offset = head.partition, head.offset + 1
    head_fields = chain_fields(head.headers)
    assert head_fields is not None
    forged_link = dict(forgery[3])[AUDIT_MAC_HEADER].decode()
    ours = [r for r in snapshot(env, env.topics.audit) if r.partition == partition]
    forged_value = forgery[2]
    assert ours[forged_offset].value == forged_value, "the forged record is still there"
    following = ours[forged_offset + 1]
    fields = chain_fields(following.headers)
    assert fields is not None
    assert dict(following.headers).get(AUDIT_BREAK_HEADER) == b"record.forged", "a break follows the forgery"
    assert (fields.seq, fields.prev) == (head_fields.seq + 1, head_fields.link), (
        "linked to the authentic head"
    )
    links = [chain_fields(r.headers) for r in ours]
    assert all(f is not None and f.prev != forged_link for f in links), "nothing is chained onto the forgery"
    event = following.json_value()
    assert event["subtype"][0]["code"] == "audit-chain-break" and event["outcome"] == "8"
    details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
    assert details["reason"] == "record.forged"
    assert (details["first_unverifiable_offset"], details["continues_from_offset"]) == (
        str(forged_offset),
        str(head.offset),
    )
    log = env.log_file.read_text(encoding="utf-8", errors="replace")
    [alarm] = [json.loads(line) for line in log.splitlines() if '"audit.tail_unverifiable"' in line]
    assert alarm["code"] == "audit.tail_unverifiable" and alarm["partition"] == partition
    assert alarm["level"] == "error" and alarm["reason"] == "record.forged"
