"""The workers' table store (hub/streams/store.py): RocksDB through rocksdict by default, bounded memory,
the de-duplication horizon in RocksDB and in the changelogs, one folder per worker of a host."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from faust.stores.memory import Store as MemoryStore

from hub.audit.chainkey import ChainKey
from hub.consent import load_recipients
from hub.crypto import Keyring, KeyStore, LocalKeyProvider
from hub.errors import ConfigError
from hub.ingest.pipeline import IngestContext
from hub.networks import load_networks
from hub.settings import Settings
from hub.sources.registry import SourceRegistry
from hub.streams import store
from hub.streams.app import create_app
from hub.streams.store import (
    DECISION_TABLES,
    HORIZON_TABLES,
    STORE_FORMAT,
    BoundedOptions,
    RocksDBStore,
    changelog_configs,
    claim_table_folder,
    forget_foreign_tables,
    memory_budget,
    table_options,
)
from hub.streams.tables import TABLES

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = IngestContext(registry=SourceRegistry({}), pseudonym_key=b"k" * 32)


def app_of(settings: Settings, tmp_path: Path) -> Any:
    """The worker's app with the demo recipients (GP practices) and networks: all six tables."""
    keyring = Keyring(KeyStore(tmp_path / "keys.sqlite3"), LocalKeyProvider(bytes(32)))
    return create_app(
        settings,
        CONTEXT,
        keyring=keyring,
        audit_chain_key=ChainKey(bytes(32)),
        recipients=load_recipients(ROOT / "config" / "recipients.demo.json"),
        networks=load_networks(settings.networks_dir),
    )


def test_by_default_every_table_is_in_rocksdb_within_one_memory_budget_and_the_dedupe_ones_expire(
    tmp_path: Path,
) -> None:
    """rocksdb:// (the hub's faust store, rocksdict): every database of the process opened with one
    block cache of HUB_TABLE_MEMORY_MB that the write buffers are charged to; a TTL of the horizon
    on the dedupe tables only."""
    settings = Settings(
        bootstrap_servers="127.0.0.1:1",
        table_dir=tmp_path / "tables",
        dedupe_horizon_days=30,
        table_memory_mb=64,
    )
    assert Settings.model_fields["table_store"].default == "rocksdb://"
    app = app_of(settings, tmp_path)
    assert set(app.tables) == set(TABLES)
    assert app.conf.tabledir == tmp_path / "tables" / "hub-data" / "v1" / "tables"
    cache, write_buffers = memory_budget(64 * 1024 * 1024)
    for name in TABLES:
        data = app.tables[name].data
        assert isinstance(data, RocksDBStore), name
        assert data.use_rocksdict, name
        # The dedupe tables forget past the horizon, the share stage's decisions past the policy's
        # look-back (30 days in config/policy.json) and a day; the others never.
        expected_ttl = 30 * 24 * 3600 if name in HORIZON_TABLES else None
        if name in DECISION_TABLES:
            expected_ttl = 31 * 24 * 3600
        assert data.rocksdb_options.ttl == expected_ttl, name
        assert data.rocksdb_options.budget_bytes == 64 * 1024 * 1024
    # Two databases opened with the store's options: each one's writes are charged to the one budget.
    seen = app.tables["identity-seen-events"].data.rocksdb_options
    aliases = app.tables["identity-aliases"].data.rocksdb_options
    assert write_buffers.enabled() and write_buffers.get_buffer_size() == 32 * 1024 * 1024
    usage = [write_buffers.get_usage()]
    databases = [seen.open(tmp_path / "seen-0.db"), aliases.open(tmp_path / "aliases-0.db")]
    for db in databases:
        for i in range(2000):
            db.put(f"key-{i}".encode(), b"x" * 100)
        usage.append(write_buffers.get_usage())
    assert usage[0] < usage[1] < usage[2] <= cache.get_usage(), usage
    for db in databases:
        db.close()


def test_a_test_may_choose_the_memory_store(tmp_path: Path) -> None:
    """memory:// keeps every table on the heap, with no RocksDB option."""
    settings = Settings(
        bootstrap_servers="127.0.0.1:1", table_dir=tmp_path / "tables", table_store="memory://"
    )
    app = app_of(settings, tmp_path)
    assert all(isinstance(app.tables[name].data, MemoryStore) for name in TABLES)


def test_an_entry_past_the_ttl_is_gone_after_compaction_and_other_tables_keep_theirs(tmp_path: Path) -> None:
    """The store's own RocksDB options, with the TTL shortened to a second: RocksDB drops the entry
    at compaction (reads may still find it before); a table without TTL keeps it."""
    settings = Settings(bootstrap_servers="127.0.0.1:1", table_dir=tmp_path / "tables")
    app = app_of(settings, tmp_path)
    seen = app.tables["identity-seen-messages"].data.rocksdb_options
    aliases = app.tables["identity-aliases"].data.rocksdb_options
    seen.ttl = 1
    databases = {
        "seen": seen.open(tmp_path / "seen-0.db"),
        "aliases": aliases.open(tmp_path / "aliases-0.db"),
    }
    for db in databases.values():
        db.put(b'"gp-test\\u001fm-1"', b"{}")
    time.sleep(2.1)
    for db in databases.values():
        db.compact_range(None, None)
    assert databases["seen"].get(b'"gp-test\\u001fm-1"') is None
    assert databases["aliases"].get(b'"gp-test\\u001fm-1"') == b"{}"
    for db in databases.values():
        db.close()


#: faust's own entry in each database: the changelog offset it holds data up to.
OFFSET_KEY = b"__faust\x00offset__"


def test_databases_reopened_in_one_process_keep_every_entry_and_their_offset_through_a_compaction(
    tmp_path: Path,
) -> None:
    """What a restarted worker does with its folder: every table's databases opened again in one
    process, then compacted (RocksDB does it by itself once a database has 4 files).

    Opened with a database's own OPTIONS file, every TTL database but the process's first got RocksDB's
    TTL filter twice, the inner one reading a value's last 4 bytes as its write time: the compaction
    dropped faust's offset (``b"6147"`` reads as 1999) and every entry whose value ends like it, and
    the worker read the whole changelog partition again (hub.streams.store.BoundedOptions).
    """
    settings = Settings(bootstrap_servers="127.0.0.1:1", table_dir=tmp_path / "tables")
    tables = sorted(HORIZON_TABLES | DECISION_TABLES | {"identity-aliases"})
    options = {}
    for table in tables:
        stored = table_options(settings, table) or {}
        options[table] = BoundedOptions(
            stored["memory_budget_bytes"], ttl=stored.get("ttl"), use_rocksdict=True
        )
    # Values ending in digits, as faust's offset does, and in JSON: both must survive.
    written = {
        f"{table}-{partition}": {
            **{
                f'"key-{i}"'.encode(): f'{{"at":"2026-12-0{i % 9 + 1}","n":{i}}}'.encode() for i in range(200)
            },
            **{f'"digits-{i}"'.encode(): f"{6000 + i}".encode() for i in range(200)},
            OFFSET_KEY: b"6147",
        }
        for table in tables
        for partition in range(2)
    }
    for name, entries in written.items():
        db = options[name.rsplit("-", 1)[0]].open(tmp_path / f"{name}.db")
        for key, value in entries.items():
            db.put(key, value)
        db.close()

    databases = {name: options[name.rsplit("-", 1)[0]].open(tmp_path / f"{name}.db") for name in written}
    for db in databases.values():
        db.compact_range(None, None)
    kept = {name: dict(db.items()) for name, db in databases.items()}
    for db in databases.values():
        db.close()
    for name, entries in written.items():
        lost = sorted(set(entries) - set(kept[name]))
        assert not lost, f"{name}: {len(lost)} of {len(entries)} entries dropped, e.g. {lost[:3]}"
        assert kept[name] == entries, name


def test_the_dedupe_changelogs_are_deleted_past_the_horizon_and_the_others_only_compacted() -> None:
    """Else a worker rebuilding a dedupe table from its changelog would bring forgotten entries back."""
    settings = Settings(dedupe_horizon_days=400)
    horizon_ms = str(400 * 24 * 3600 * 1000)
    for name in TABLES:
        expected = (
            {"cleanup.policy": "compact,delete", "retention.ms": horizon_ms}
            if name in HORIZON_TABLES
            else {"cleanup.policy": "compact,delete", "retention.ms": str(31 * 24 * 3600 * 1000)}
            if name in DECISION_TABLES
            else {"cleanup.policy": "compact"}
        )
        # Deletions are kept as long: a folder that catches up after a while still finds them.
        assert changelog_configs(settings, name) == {**expected, "delete.retention.ms": horizon_ms}, name


def test_each_worker_of_a_host_takes_its_own_folder_and_a_restarted_one_takes_a_free_one_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RocksDB locks a database for one process: the second worker of an app gets ``-data-2``; once
    the first exits (its lock released), the next worker takes ``-data`` again."""
    settings = Settings(table_dir=tmp_path, app_id="app")
    first, second = claim_table_folder(settings), claim_table_folder(settings)
    assert (first, second) == (tmp_path / "app-data", tmp_path / "app-data-2")
    store._held.pop(first).close()  # what the kernel does when the worker exits, even after kill -9
    assert claim_table_folder(settings) == first
    monkeypatch.setattr(store, "MAX_FOLDERS", 2)
    with pytest.raises(ConfigError, match="HUB_TABLE_DIR"):
        claim_table_folder(settings)


def test_a_folder_built_from_another_changelog_of_the_same_name_is_rebuilt(tmp_path: Path) -> None:
    """A changelog deleted and made again (a new broker, topics re-created) has a new topic id: the
    databases built from the old one say offsets that mean nothing there, so they are removed and
    faust rebuilds them; tables whose changelog is the same keep theirs."""
    tables = tmp_path / "v1" / "tables"
    for name in ("identity-seen-messages-0.db", "identity-seen-messages-1.db", "share-state-0.db"):
        (tables / name).mkdir(parents=True)
    (tables / "share-state-backups").mkdir()
    ids = {"identity-seen-messages": "id-1", "share-state": "id-2"}
    # A folder that kept no record of its changelogs cannot tell: rebuilt.
    assert forget_foreign_tables(tables, ids) == ["identity-seen-messages", "share-state"]
    for name in ("identity-seen-messages-0.db", "share-state-0.db"):
        (tables / name).mkdir()
    assert forget_foreign_tables(tables, ids) == []
    assert forget_foreign_tables(tables, {**ids, "share-state": "id-3"}) == ["share-state"]
    assert sorted(p.name for p in tables.iterdir()) == [
        "changelogs.json",
        "identity-seen-messages-0.db",
        "share-state-backups",
    ]


def test_a_folder_written_by_an_earlier_store_format_is_rebuilt(tmp_path: Path) -> None:
    """Folders of the store before STORE_FORMAT 2 may have lost entries at a compaction (the TTL filter
    applied twice): their tables are removed once, then the folder is kept."""
    tables = tmp_path / "v1" / "tables"
    (tables / "identity-seen-events-0.db").mkdir(parents=True)
    ids = {"identity-seen-events": "id-1"}
    # The earlier format: the changelogs' ids only.
    (tables / "changelogs.json").write_text('{"identity-seen-events": "id-1"}', encoding="utf-8")
    assert forget_foreign_tables(tables, ids) == ["identity-seen-events"]
    assert json.loads((tables / "changelogs.json").read_text(encoding="utf-8")) == {
        "format": STORE_FORMAT,
        "changelogs": ids,
    }
    (tables / "identity-seen-events-0.db").mkdir()
    assert forget_foreign_tables(tables, ids) == []


def test_a_tables_changelog_offset_is_written_once_a_second_and_at_revocation_and_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """faust writes a partition's changelog offset to its database for every record Kafka acknowledges;
    the hub's store writes the latest at most every OFFSET_WRITE_SECONDS, and when the partition is
    revoked or the store stops. The store answers with the latest either way."""
    from faust.types import TP  # noqa: PLC0415

    clock = [1000.0]
    monkeypatch.setattr(store.time, "monotonic", lambda: clock[0])
    settings = Settings(bootstrap_servers="127.0.0.1:1", table_dir=tmp_path / "tables")
    table = app_of(settings, tmp_path).tables["share-state"]
    data = table.data
    assert isinstance(data, RocksDBStore)
    tp = TP(table.changelog_topic.get_topic_name(), 0)
    other = TP(tp.topic, 1)

    def in_database(partition: TP) -> int | None:
        value = data._db_for_partition(partition.partition).get(data.offset_key)
        return int(value) if value is not None else None

    data.set_persisted_offset(tp, 1)  # the first: written at once
    for offset in range(2, 200):  # a burst within the second: remembered, not written
        data.set_persisted_offset(tp, offset)
    data.set_persisted_offset(other, 7)
    assert (in_database(tp), in_database(other)) == (1, None)
    assert (data.persisted_offset(tp), data.persisted_offset(other)) == (199, 7)
    clock[0] += store.OFFSET_WRITE_SECONDS
    data.set_persisted_offset(tp, 200)  # a second later: every partition's latest written
    assert (in_database(tp), in_database(other), data.unwritten_offsets) == (200, 7, {})

    data.set_persisted_offset(tp, 201)
    data.set_persisted_offset(other, 8)
    data.revoke_partitions(table, {other})  # the revoked partition's offset goes with it
    assert (in_database(tp), in_database(other)) == (200, 8)
    asyncio.run(data.stop())  # and the rest when the store stops
    assert in_database(tp) == 201 and not data.unwritten_offsets
