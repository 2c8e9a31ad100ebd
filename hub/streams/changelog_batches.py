"""Changelog records that carry a batch of table entries: the writes of the tables that forget by age.

faust writes one changelog record per table write. The de-duplication tables
(``identity-seen-messages``, ``identity-seen-events``: hub.streams.store.HORIZON_TABLES) get an entry
for every input and every published fact, and the share stage's decisions (``share-decided``,
DECISION_TABLES) one for every event decided: 6.3 changelog records per input in the benchmark
(docs/PERFORMANCE.md, session 13), each a faust send, a share of a produce request and a record for
the broker to store. :class:`BatchedChangelogTable` writes each entry to its store as faust does, but
sends the entries a batch wrote on one partition as one changelog record (the format of
hub.table_batches), and reads such a record back into its entries when it rebuilds the table
(recovery, standby copies).

Why this is safe for these tables, and not for the others:

- what bounds their changelogs is retention, not compaction: they are ``compact,delete`` with the
  horizon (or the look-back) as retention (hub.streams.store), so a record leaves the changelog once
  older than that, whichever key it has, and its entries with it, as they did when each entry had a
  record of its own (the store forgets them at the same age: RocksDB's TTL). Compaction keeps every
  batch record (each has a key of its own); what it dropped before, a key's older value, now stays
  until the retention drops it: a decision rewritten (released late) weighs twice for at most the
  look-back, an entry of the dedupe tables is written once;
- a rebuild applies records in offset order, the entries of a batch record in the order written: a
  key's latest value, or its deletion, is what the store keeps, as with records of one key; records
  written per key before this format are still read as they were;
- the bytes each entry carries are those its own record would have carried (the key as faust encodes
  it, the value sealed under its patient's key), so the store holds the same bytes either way, and an
  erased patient's entries stay unreadable.

A table that keeps its entries for good (a patient's sharing state, the identity links) is bounded by
compaction alone, which batch records would defeat: those keep faust's record per key.

Batches stay under :data:`hub.table_batches.BATCH_RECORD_BYTES`; a larger batch is sent as several records.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust

from hub.logging import get_logger
from hub.records import TABLE_BATCH_FORMAT, TABLE_BATCH_HEADER
from hub.table_batches import BATCH_KEY_PREFIX, Entry, batch_entries, pack_entries

log = get_logger(__name__)


@dataclass(frozen=True)
class _EntryMessage:
    """What faust's stores read of a changelog message, for one entry of a batch record."""

    tp: Any
    offset: int
    partition: int
    key: bytes
    value: bytes | None


@dataclass(frozen=True)
class _EntryEvent:
    """What faust's stores read of a changelog event (the RocksDB store the message's bytes, the memory
    store the decoded key and value), for one entry of a batch record."""

    message: _EntryMessage
    key: Any
    value: Any


class BatchedChangelogTable(faust.Table[Any, Any]):
    """A faust table whose writes within :meth:`batching` go to the changelog as one record per partition.

    Outside :meth:`batching` it is faust's table (one record per write). The agent's table flush
    (hub.streams.batch_writes) writes a batch's keys within it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Partition → the entries written within the current batch, in the order written.
        self._unsent: dict[int, list[Entry]] = {}
        self._batching = False

    @contextmanager
    def batching(self) -> Iterator[None]:
        """Within: each write goes to the store now, and to the changelog with the others on leaving."""
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            unsent, self._unsent = self._unsent, {}
            for partition, entries in unsent.items():
                for value in pack_entries(entries):
                    self._send_batch(partition, value)

    def _send_batch(self, partition: int, value: bytes) -> None:
        self.changelog_topic.send_soon(
            key=f"{BATCH_KEY_PREFIX}{uuid.uuid4().hex}",
            value=value,
            partition=partition,
            headers=[(TABLE_BATCH_HEADER, TABLE_BATCH_FORMAT.encode())],
            key_serializer=self.key_serializer,
            value_serializer="raw",
            # faust's: once acknowledged, the store keeps this offset as the one it holds data up to.
            callback=self._on_changelog_sent,
            eager_partitioning=True,
        )

    def _entry_key(self, key: Any) -> bytes:
        return bytes(
            self.app.serializers.dumps_key(self.key_type, key, serializer=self.key_serializer) or b""
        )

    def _partition(self, key: Any) -> int:
        """The partition of the event being written (faust's: the table is co-partitioned with it)."""
        partition = self.partition_for_key(key)
        if partition is None:  # only a table using the producer's partitioner has none
            raise TypeError("a batched changelog table writes on its event's partition")
        return partition

    def on_key_set(self, key: Any, value: Any) -> None:
        if not self._batching:
            super().on_key_set(key, value)
            return
        encoded = self.app.serializers.dumps_value(self.value_type, value, serializer=self.value_serializer)
        self._unsent.setdefault(self._partition(key), []).append(
            (self._entry_key(key), bytes(encoded or b""))
        )
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        if not self._batching:
            super().on_key_del(key)
            return
        self._unsent.setdefault(self._partition(key), []).append((self._entry_key(key), None))
        self._sensor_on_del(self, key)

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        """Apply changelog events to the store, each batch record as the records of its entries."""
        super().apply_changelog_batch(list(self._entries_of(batch)))

    def _entries_of(self, batch: Iterable[Any]) -> Iterator[Any]:
        serializers = self.app.serializers
        for event in batch:
            message = event.message
            try:
                entries = batch_entries(message.headers, message.value)
            except ValueError as exc:
                # Raised here, faust's recovery would log it and drop the other records of its buffer.
                log.error(
                    "table.batch_unreadable",
                    table=self.name,
                    partition=message.partition,
                    offset=message.offset,
                    reason=str(exc),
                )
                continue
            if entries is None:
                yield event
                continue
            for key, value in entries:
                yield _EntryEvent(
                    message=_EntryMessage(message.tp, message.offset, message.partition, key, value),
                    key=serializers.loads_key(self.key_type, key, serializer=self.key_serializer),
                    value=None
                    if value is None
                    else serializers.loads_value(self.value_type, value, serializer=self.value_serializer),
                )
