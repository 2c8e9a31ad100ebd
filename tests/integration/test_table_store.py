"""The workers' RocksDB tables on a real broker: a restarted worker resumes from its own folder, reading
only the changelogs' tail, and still recognises duplicates; the folder holds sealed values only; the
dedupe changelogs follow the horizon, also when it changes (docs/STATE.md)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from hub.crypto.envelope import is_envelope
from hub.demo.generator import DEMO_SOURCES, generate_feed
from hub.ingest.signature import sign
from hub.kafka.admin import admin_client
from hub.kafka.clients import end_offsets, read_to_end
from hub.settings import Settings
from hub.streams.store import DECISION_TABLES, HORIZON_TABLES, BoundedOptions, table_options
from hub.streams.tables import BATCHED_CHANGELOG_TABLES, SEALED_TABLES, TABLES
from hub.table_batches import batch_entries
from hub.topics import TopicNames

from .conftest import HubEnv, start_worker, stop_worker

pytestmark = pytest.mark.integration

PATIENTS = 8
#: faust's own entry in each partition database: the changelog offset it holds data up to.
OFFSET_KEY = b"__faust\x00offset__"

Input = tuple[bytes, bytes, list[tuple[str, bytes]]]


def demo_inputs(env: HubEnv) -> tuple[list[Input], set[str]]:
    """The demo feed as the test GP source sends it, and the patients' names (never to be stored)."""
    registry = json.loads((env.work_dir / "sources.json").read_text())
    for source in registry["sources"]:
        if source["id"] == "gp-test":
            source["patient_identifier_systems"] += [s.patient_identifier_system for s in DEMO_SOURCES]
    (env.work_dir / "sources.json").write_text(json.dumps(registry))
    records, names = [], set()
    for message in generate_feed(patients=PATIENTS, seed=31, now=datetime(2026, 11, 1, tzinfo=UTC)):
        records.append(signed(env, message.message_id, message.body(), message.content_type))
        if message.content_type.startswith("application/fhir+json"):
            names |= patient_names(json.loads(message.body()))
    return records, names


def signed(env: HubEnv, message_id: str, value: bytes, content_type: str) -> Input:
    headers = [
        ("hub-source", b"gp-test"),
        ("hub-signature", sign(env.source("gp-test").secret, "gp-test", value, int(time.time())).encode()),
        ("hub-message-id", message_id.encode()),
        ("content-type", content_type.encode()),
    ]
    return message_id.encode(), value, headers


def patient_names(document: dict[str, Any]) -> set[str]:
    resources = [e["resource"] for e in document.get("entry", [])] if "entry" in document else [document]
    return {
        part
        for resource in resources
        if resource.get("resourceType") == "Patient"
        for name in resource.get("name", [])
        for part in [name.get("family", ""), *name.get("given", [])]
        if len(part) >= 5
    }


def receipts(env: HubEnv) -> dict[str, list[dict[str, Any]]]:
    by_message: dict[str, list[dict[str, Any]]] = {}
    for record in env.settle(env.topics.receipts, quiet=2.0):
        receipt = record.json_value()
        by_message.setdefault(receipt["message_id"], []).append(receipt)
    return by_message


def wait_for_receipts(env: HubEnv, message_ids: set[str], *, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = receipts(env)
        if message_ids <= set(got) or time.monotonic() > deadline:
            return got


def metrics_url(log_file: Path, *, timeout: float = 90.0) -> str:
    """The URL the worker logged in ``metrics.listening`` (HUB_METRICS_PORT=0: any free port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_file.read_text(errors="replace").splitlines():
            if '"metrics.listening"' in line:
                return str(json.loads(line)["url"])
        time.sleep(0.5)
    raise AssertionError(f"no metrics.listening in {log_file}")


def changelog_records_read(url: str) -> dict[str, int]:
    """hub_table_changelog_records_total per table, from the worker's /metrics."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - the worker's loopback URL
        text = response.read().decode()
    found = re.findall(r'^hub_table_changelog_records_total\{table="([^"]+)"\} (\S+)$', text, re.MULTILINE)
    return {table: int(float(value)) for table, value in found}


def changelog_records(env: HubEnv) -> dict[str, int]:
    """The records on each table's changelog (end offsets summed over partitions)."""
    app_id = env.environ["HUB_APP_ID"]
    return {
        table: sum(end_offsets(env.bootstrap, TopicNames.changelog(app_id, table)).values())
        for table in TABLES
    }


def run_worker(
    env: HubEnv, name: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A worker logging to ``<name>.log``, and its metrics URL once it serves them."""
    log_file = env.work_dir / f"{name}.log"
    process = start_worker(env, log_file=log_file, extra_env={"HUB_METRICS_PORT": "0", **(extra_env or {})})
    return process, metrics_url(log_file)


def table_folder(env: HubEnv) -> Path:
    """The first worker's folder: ``<HUB_TABLE_DIR>/<app id>-data`` (faust puts its tables in v1/tables)."""
    return Path(env.environ["HUB_TABLE_DIR"]) / f"{env.environ['HUB_APP_ID']}-data"


def stored_entries(folder: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every (key, value) of every table database in ``folder``, opened as the worker opens them."""
    settings = Settings()
    entries: dict[str, list[tuple[bytes, bytes]]] = {table: [] for table in TABLES}
    for path in sorted(folder.glob("v1/tables/*.db")):
        table = path.name.rsplit("-", 1)[0]
        options = table_options(settings, table) or {}
        db = BoundedOptions(options["memory_budget_bytes"], ttl=options.get("ttl"), use_rocksdict=True).open(
            path
        )
        try:
            entries[table] += [(k, v) for k, v in db.items() if k != OFFSET_KEY]
        finally:
            db.close()
    return entries


def assert_batched_changelogs_match_the_folder(env: HubEnv, folder: Path) -> None:
    """The changelogs of the tables that forget by age hold batch records only, fewer than their
    entries, and their entries are exactly what the worker's folder holds (the same keys and bytes)."""
    app_id = env.environ["HUB_APP_ID"]
    stored = stored_entries(folder)
    for table in sorted(BATCHED_CHANGELOG_TABLES):
        records = read_to_end(env.bootstrap, [TopicNames.changelog(app_id, table)])[
            TopicNames.changelog(app_id, table)
        ]
        unpacked = [batch_entries(record.headers, record.value) for record in records]
        assert records and None not in unpacked, f"{table}: a record of one key"
        entries: dict[bytes, bytes] = {}
        for key, value in (entry for batch in unpacked for entry in batch or []):
            if value is None:
                entries.pop(key, None)  # a deletion
            else:
                entries[key] = value
        assert len(entries) > len(records), (table, len(entries), len(records))
        assert dict(stored[table]) == entries, table


def string_leaves(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(string_leaves(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(string_leaves(v) for v in node)) if node else set()
    return {node} if isinstance(node, str) else set()


def assert_sealed_only(env: HubEnv, folder: Path, names: set[str]) -> None:
    """Every sealed table's value is an envelope, and no file of ``folder`` holds a string of their
    plaintext (beyond what keys and the unsealed table hold in the clear by design) or a name."""
    entries = stored_entries(folder)
    stored = {table for table, pairs in entries.items() if pairs}
    assert {"identity-seen-messages", "identity-seen-events", "share-state"} <= stored, stored
    app_id = env.environ["HUB_APP_ID"]
    keyring = env.opener().keyring
    in_the_clear: set[str] = set()
    plaintexts: set[str] = set()
    for table, pairs in entries.items():
        for key, value in pairs:
            in_the_clear.add(key.decode())
            if table not in SEALED_TABLES:
                in_the_clear.add(value.decode())
                continue
            assert is_envelope(value), f"{table}: a value in the clear"
            plain = keyring.open(value, topic=TopicNames.changelog(app_id, table), record_id=json.loads(key))
            plaintexts |= string_leaves(json.loads(plain))
    # Identifiers, dates and instants (not words like "active", which RocksDB's own files contain).
    markers = {
        leaf
        for leaf in plaintexts
        if len(leaf) >= 8 and any(c.isdigit() for c in leaf) and not any(leaf in c for c in in_the_clear)
    }
    assert markers, "no plaintext to look for: the check would prove nothing"
    files = [path for path in folder.rglob("*") if path.is_file()]
    for path in files:
        content = path.read_bytes()
        for marker in markers | names:
            assert marker.encode() not in content, f"{marker!r} in the clear in {path}"
    print(
        f"{len(files)} files, {sum(len(p) for p in entries.values())} entries: {len(markers)} strings "
        f"of sealed values (e.g. {sorted(markers)[:3]}) and {len(names)} patient names, found in none"
    )


def assert_changelog_configs(env: HubEnv, horizon_days: int) -> None:
    """The dedupe changelogs compacted and deleted past the horizon, the others compacted only; every
    changelog keeps its deletions (tombstones) for the horizon."""
    app_id = env.environ["HUB_APP_ID"]
    admin = admin_client(env.bootstrap)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, TopicNames.changelog(app_id, t)) for t in TABLES],
            config_filter="all",
        )["topic"]
    finally:
        admin.close()
    for table in TABLES:
        configs = {k: v["value"] for k, v in described[TopicNames.changelog(app_id, table)].items()}
        horizon_ms = str(horizon_days * 24 * 3600 * 1000)
        assert configs["delete.retention.ms"] == horizon_ms, table
        if table in HORIZON_TABLES:
            assert configs["cleanup.policy"] == "compact,delete", table
            assert configs["retention.ms"] == horizon_ms, table
        elif table in DECISION_TABLES:
            # The share stage's decisions: the policy's look-back (30 days) and a day.
            assert configs["cleanup.policy"] == "compact,delete", table
            assert configs["retention.ms"] == str(31 * 24 * 3600 * 1000), table
        else:
            assert configs["cleanup.policy"] == "compact", table


def resend_to_a_worker(
    env: HubEnv, name: str, again: Input, extra_env: dict[str, str], *, expected: str = "duplicate"
) -> dict[str, int]:
    """Start a worker, resend an input (signed anew): its receipt says ``expected``; return what the
    worker read of the changelogs."""
    message_id = again[0].decode()
    process, url = run_worker(env, name, extra_env)
    try:
        # A receipt's `at` is its input's Kafka timestamp, in whole milliseconds: compare at that grain.
        before = datetime.now(UTC)
        sent_at = before.replace(microsecond=before.microsecond // 1000 * 1000)
        env.send([signed(env, message_id, again[1], dict(again[2])["content-type"].decode())])
        deadline = time.monotonic() + 180
        new: list[dict[str, Any]] = []
        while not new and time.monotonic() < deadline:
            # The resend's receipt: its input was produced after sent_at (same host, same clock).
            got = receipts(env).get(message_id, [])
            new = [r for r in got if datetime.fromisoformat(r["at"]) >= sent_at]
        # One record, one outcome: at-least-once may deliver it twice (a rebalance), same outcome.
        assert {(json.dumps(r["ingest"]), r["status"]) for r in new} == {
            (json.dumps(new[0]["ingest"]), expected)
        }, got
        return changelog_records_read(url)
    finally:
        stop_worker(process)


def test_a_restarted_worker_resumes_from_its_folder_and_the_folder_holds_ciphertext_only(
    hub_env: HubEnv,
) -> None:
    """Run, stop (SIGTERM), look into the folder, restart with a shorter horizon, restart elsewhere.

    1. The worker processes the feed; its folder holds every table, each sealed value an envelope, and
       no plaintext of them (nor a patient's name) in any file.
    2. Restarted on the same folder, it reads (almost) nothing of the changelogs, and a resent input
       is still a duplicate; the new horizon reaches the dedupe changelogs' retention.
    3. A worker on an empty folder reads every changelog record: what the restart did not need.
    4. The changelogs deleted and made again: the first folder no longer copies them; its worker
       drops its tables and rebuilds them (empty) rather than go on from stale ones.
    """
    records, names = demo_inputs(hub_env)
    result = hub_env.cli("topics", "create", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_changelog_configs(hub_env, Settings().dedupe_horizon_days)
    message_ids = {key.decode() for key, _, _ in records}
    process, url = run_worker(hub_env, "first")
    try:
        hub_env.send(records)
        got = wait_for_receipts(hub_env, message_ids)
        assert message_ids <= set(got), f"{len(message_ids - set(got))} inputs without a receipt"
        # Fresh changelogs: the first start had nothing to read.
        assert sum(changelog_records_read(url).values()) == 0
    finally:
        stop_worker(process)
    written = changelog_records(hub_env)

    assert_sealed_only(hub_env, table_folder(hub_env), names)
    assert_batched_changelogs_match_the_folder(hub_env, table_folder(hub_env))

    again = records[0]
    read_after_restart = resend_to_a_worker(hub_env, "restarted", again, {"HUB_DEDUPE_HORIZON_DAYS": "30"})
    print(f"changelog records written {written}; read after the restart {read_after_restart}")
    assert sum(read_after_restart.values()) <= sum(written.values()) // 20, (read_after_restart, written)
    assert_changelog_configs(hub_env, 30)

    written = changelog_records(hub_env)
    elsewhere = {"HUB_TABLE_DIR": str(hub_env.work_dir / "elsewhere")}
    read_from_empty = resend_to_a_worker(hub_env, "elsewhere", again, elsewhere)
    print(f"changelog records written {written}; read into an empty folder {read_from_empty}")
    assert {t: read_from_empty.get(t, 0) for t in TABLES} == written

    recreate_changelogs(hub_env)
    resend_to_a_worker(hub_env, "recreated", again, {}, expected="accepted")
    log = (hub_env.work_dir / "recreated.log").read_text(errors="replace")
    [rebuilt] = [json.loads(line) for line in log.splitlines() if '"tables.rebuilt"' in line]
    assert {"identity-seen-messages", "identity-seen-events", "share-state"} <= set(rebuilt["tables"])


def recreate_changelogs(env: HubEnv) -> None:
    """Delete the tables' changelog topics, wait until they are gone, and create them again."""
    app_id = env.environ["HUB_APP_ID"]
    changelogs = [TopicNames.changelog(app_id, table) for table in TABLES]
    admin = admin_client(env.bootstrap)
    try:
        admin.delete_topics(changelogs)
        deadline = time.monotonic() + 60
        while set(changelogs) & set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        admin.close()
    result = env.cli("topics", "create", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


#: Records written to each dedupe changelog's partition 0 before the worker starts: more than 999, so
#: that faust's offset entry has four digits (a TTL filter applied twice reads them as a 1999 date).
REBUILT_RECORDS = 1_100


def write_changelog_entries(env: HubEnv, tables: list[str], count: int) -> None:
    """``count`` entries of each table, written to partition 0 of its changelog as faust writes them
    (JSON key and value); no input of the test names them."""
    app_id = env.environ["HUB_APP_ID"]
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", enable_idempotence=True)
    for table in tables:
        for i in range(count):
            key = json.dumps(f"rebuilt-{table}-{i}").encode()
            producer.send(TopicNames.changelog(app_id, table), key=key, value=b'{"n": %d}' % i, partition=0)
    producer.flush()
    producer.close()


def compact_as_rocksdb_will(folder: Path) -> dict[str, int]:
    """Every database of the folder opened in one process as the worker opens them, then compacted (what
    RocksDB does by itself once a database has 4 files); asserts that each keeps every entry, faust's
    offset included. Returns the entries of each database."""
    settings = Settings()
    databases = {}
    for path in sorted(folder.glob("v1/tables/*.db")):
        options = table_options(settings, path.name.rsplit("-", 1)[0]) or {}
        databases[path.name] = BoundedOptions(
            options["memory_budget_bytes"], ttl=options.get("ttl"), use_rocksdict=True
        ).open(path)
    try:
        before = {name: dict(db.items()) for name, db in databases.items()}
        for db in databases.values():
            db.compact_range(None, None)
        after = {name: dict(db.items()) for name, db in databases.items()}
    finally:
        for db in databases.values():
            db.close()
    for name, entries in before.items():
        lost = sorted(set(entries) - set(after[name]))
        assert not lost, (
            f"{name}: the compaction dropped {len(lost)} of {len(entries)} entries, e.g. {lost[:3]}"
        )
    return {name: len(entries) for name, entries in after.items()}


def test_a_worker_restarted_on_a_folder_rebuilt_from_the_changelogs_reads_none_of_them_again(
    hub_env: HubEnv,
) -> None:
    """A worker on an empty folder rebuilds its tables from the changelogs; its folder survives a
    compaction whole; restarted on it, the worker reads no changelog record again.

    ``hub bench --state-patients`` found the restart reading a whole dedupe or decision partition
    again: reopened with their OPTIONS file, the TTL databases got RocksDB's TTL filter twice, and the
    first compaction dropped faust's offset entry (hub.streams.store.BoundedOptions).
    """
    records, _ = demo_inputs(hub_env)
    result = hub_env.cli("topics", "create", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rebuilt = ["identity-seen-messages", "identity-seen-events"]
    write_changelog_entries(hub_env, rebuilt, REBUILT_RECORDS)

    # The new input's receipt: the worker only takes inputs once its tables are rebuilt.
    read = resend_to_a_worker(hub_env, "rebuild", records[0], {}, expected="accepted")
    assert {table: read.get(table, 0) for table in rebuilt} == dict.fromkeys(rebuilt, REBUILT_RECORDS), read

    kept = compact_as_rocksdb_will(table_folder(hub_env))
    for table in rebuilt:
        # The rebuilt entries and faust's offset, in the partition they were written to.
        assert kept[f"{table}-0.db"] >= REBUILT_RECORDS + 1, kept

    read_after_restart = resend_to_a_worker(hub_env, "restarted", records[0], {}, expected="duplicate")
    assert sum(read_after_restart.values()) == 0, read_after_restart
