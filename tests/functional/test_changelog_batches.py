"""The de-duplication tables' changelog records that carry a batch of entries (hub.streams.changelog_batches).

The packing, and how a worker rebuilding a table applies such records with faust's own stores
(RocksDB and memory): as the records of their entries would have been, in offset order, next to the
records of one key written before this format. The write side, on a real broker, is in
tests/integration/test_table_store.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from hub.audit.chainkey import ChainKey
from hub.crypto import Keyring, KeyStore, LocalKeyProvider
from hub.ingest.pipeline import IngestContext
from hub.records import TABLE_BATCH_FORMAT, TABLE_BATCH_HEADER
from hub.settings import Settings
from hub.sources.registry import SourceRegistry
from hub.streams.app import create_app
from hub.streams.changelog_batches import BatchedChangelogTable
from hub.streams.tables import BATCHED_CHANGELOG_TABLES
from hub.table_batches import BATCH_KEY_PREFIX, batch_entries, pack_entries, unpack_entries

CONTEXT = IngestContext(registry=SourceRegistry({}), pseudonym_key=b"k" * 32)
BATCH_HEADERS = ((TABLE_BATCH_HEADER, TABLE_BATCH_FORMAT.encode()),)


def test_entries_pack_and_unpack_in_order_with_deletions_and_empty_values() -> None:
    entries = [(b'"a"', b"1"), (b'"b"', None), (b'"c"', b""), (b'"a"', b"\x00\xff" * 50)]
    [packed] = pack_entries(entries)
    assert unpack_entries(packed) == entries
    assert pack_entries([]) == []


def test_a_large_batch_is_cut_into_records_under_the_limit_and_an_oversized_entry_gets_its_own() -> None:
    entries = [(f'"k{i}"'.encode(), b"v" * 100) for i in range(50)]
    packed = pack_entries(entries, limit=1000)
    assert len(packed) > 1
    assert all(len(value) <= 1000 for value in packed)
    assert [entry for value in packed for entry in unpack_entries(value)] == entries
    big = [(b'"small"', b"s"), (b'"big"', b"x" * 5000), (b'"after"', b"a")]
    assert [unpack_entries(value) for value in pack_entries(big, limit=1000)] == [[e] for e in big]


@pytest.mark.parametrize("cut", [3, 9, 12])
def test_a_record_cut_short_is_refused(cut: int) -> None:
    [packed] = pack_entries([(b'"key"', b"value")])
    with pytest.raises(ValueError, match="ends inside"):
        unpack_entries(packed[:cut])


def test_only_a_record_with_the_header_is_a_batch_and_another_format_is_refused() -> None:
    [packed] = pack_entries([(b'"key"', b"value")])
    assert batch_entries([], b"value") is None
    assert batch_entries({"content-type": b"x"}, b"value") is None
    assert batch_entries(list(BATCH_HEADERS), packed) == [(b'"key"', b"value")]
    assert batch_entries({TABLE_BATCH_HEADER: b"1"}, packed) == [(b'"key"', b"value")]
    with pytest.raises(ValueError, match="format '2'"):
        batch_entries([(TABLE_BATCH_HEADER, b"2")], packed)


@dataclass(frozen=True)
class ChangelogMessage:
    """The fields of a faust changelog message that its stores read."""

    tp: TP
    offset: int
    partition: int
    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class ChangelogEvent:
    """A changelog event as faust's recovery hands it to a table: the message, and its key and value
    decoded by the changelog topic's codecs (JSON key, raw value: these tables hold bytes)."""

    message: ChangelogMessage
    key: Any
    value: Any


def record(topic: str, offset: int, key: bytes, value: bytes | None, headers: Any = ()) -> ChangelogEvent:
    message = ChangelogMessage(TP(topic, 1), offset, 1, key, value, tuple(headers))
    return ChangelogEvent(message, key.decode().strip('"'), value)


def rebuilt(table_store: str, tmp_path: Path, name: str) -> dict[str, bytes]:
    """The table ``name`` of a worker's app after applying, as a rebuild would, a record of one key,
    a batch record (that key again, a new one, a deletion) and a batch record this version cannot read."""
    settings = Settings(
        bootstrap_servers="127.0.0.1:1",
        table_dir=tmp_path / "tables",
        table_store=table_store,
        app_id=f"hub-{table_store[:3]}",
    )
    keyring = Keyring(KeyStore(tmp_path / f"keys-{table_store[:3]}.sqlite3"), LocalKeyProvider(bytes(32)))
    app = create_app(settings, CONTEXT, keyring=keyring, audit_chain_key=ChainKey(bytes(32)))
    table = app.tables[name]
    assert isinstance(table, BatchedChangelogTable)
    topic = table.changelog_topic.get_topic_name()
    [batch] = pack_entries([(b'"first"', b"second value"), (b'"added"', b"added value"), (b'"gone"', None)])
    [future] = pack_entries([(b'"later"', b"unread")])
    table.apply_changelog_batch(
        [
            record(topic, 0, b'"first"', b"first value"),
            record(topic, 1, b'"gone"', b"to be deleted"),
            record(topic, 2, f'"{BATCH_KEY_PREFIX}1"'.encode(), batch, BATCH_HEADERS),
            record(topic, 3, f'"{BATCH_KEY_PREFIX}2"'.encode(), future, [(TABLE_BATCH_HEADER, b"9")]),
            record(topic, 4, b'"after"', b"after value"),
        ]
    )
    store = table.data
    found = {key: bytes(store[key]) for key in ("first", "added", "gone", "later", "after") if key in store}
    if table_store == "rocksdb://":
        # The store holds data up to the last record applied: a restart reads from there.
        assert store.persisted_offset(TP(topic, 1)) == 4
    return found


@pytest.mark.parametrize("table_store", ["rocksdb://", "memory://"])
@pytest.mark.parametrize("name", sorted(BATCHED_CHANGELOG_TABLES))
def test_a_rebuild_applies_a_batch_record_as_the_records_of_its_entries_in_offset_order(
    table_store: str, name: str, tmp_path: Path
) -> None:
    assert rebuilt(table_store, tmp_path, name) == {
        "first": b"second value",
        "added": b"added value",
        "after": b"after value",
    }
