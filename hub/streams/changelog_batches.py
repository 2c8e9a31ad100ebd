"""Changelog records that carry a batch of table entries: the writes of the tables that forget by age.

faust writes one changelog record per table write. The de-duplication tables
(``identity-seen-messages``, ``identity-seen-events``: hub.streams.store.HORIZON_TABLES) get an entry
for every input and every published fact, and the share stage's decisions (``share-decided``,
DECISION_TABLES) one for every event decided: 6.3 changelog records per input in the benchmark
(docs/PERFORMANCE.md, session 13), each a faust send, a share of a produce request and a record for
the broker to store. :class:`BatchedChangelogTable` writes each entry to its store as faust does, but
sends the entries a batch wrote on one partition as one changelog record
(:data:`hub.records.TABLE_BATCH_HEADER`, the value packed by :func:`pack_entries`), and reads such a
record back into its entries when it rebuilds the table (recovery, standby copies).

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

Batches stay under :data:`BATCH_RECORD_BYTES`; a larger batch is sent as several records.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust

from hub.logging import get_logger
from hub.records import TABLE_BATCH_FORMAT, TABLE_BATCH_HEADER, header, headers_of

log = get_logger(__name__)

#: A packed batch stays under this size: several fit in one produce batch of a partition
#: (hub.streams.app.PRODUCER_BATCH_BYTES), and far under Kafka's default largest record (1 MiB).
BATCH_RECORD_BYTES = 256 * 1024
#: Each entry: the key's length, the value's length (DELETED_LENGTH: a deletion), then both.
_LENGTHS = struct.Struct(">II")
#: The value length that marks a deleted key (no value follows).
DELETED_LENGTH = 0xFFFFFFFF
#: Prefix of a batch record's key (a JSON string, as the table's keys are, followed by a random id):
#: each record keeps a key of its own, so compaction never drops one batch for another.
BATCH_KEY_PREFIX = "~batch:"

#: One entry as its changelog record would carry it: the encoded key, the encoded value (None: deleted).
Entry = tuple[bytes, bytes | None]


def pack_entries(entries: Iterable[Entry], limit: int = BATCH_RECORD_BYTES) -> list[bytes]:
    """The entries packed into batch values of at most ``limit`` bytes (an entry larger alone gets one
    of its own), in the order given."""
    packed: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for key, value in entries:
        entry = (
            _LENGTHS.pack(len(key), DELETED_LENGTH if value is None else len(value)) + key + (value or b"")
        )
        if parts and size + len(entry) > limit:
            packed.append(b"".join(parts))
            parts, size = [], 0
        parts.append(entry)
        size += len(entry)
    if parts:
        packed.append(b"".join(parts))
    return packed


def unpack_entries(data: bytes) -> list[Entry]:
    """The entries of a batch value; ValueError if it is cut short or malformed."""
    entries: list[Entry] = []
    view = memoryview(data)
    at = 0
    while at < len(view):
        if at + _LENGTHS.size > len(view):
            raise ValueError("a table batch record ends inside an entry's lengths")
        key_length, value_length = _LENGTHS.unpack_from(view, at)
        at += _LENGTHS.size
        deleted = value_length == DELETED_LENGTH
        end = at + key_length + (0 if deleted else value_length)
        if end > len(view):
            raise ValueError("a table batch record ends inside an entry")
        key = bytes(view[at : at + key_length])
        entries.append((key, None if deleted else bytes(view[at + key_length : end])))
        at = end
    return entries


def batch_entries(headers: Any, value: bytes | None) -> list[Entry] | None:
    """The entries of a changelog record if its headers (faust's or a Kafka client's) mark it as a
    batch record (None: a record of one key).

    ValueError if it is one this version cannot read: another format (a newer hub wrote it), or cut
    short.
    """
    found = header(headers_of(headers), TABLE_BATCH_HEADER)
    if found is None:
        return None
    if found != TABLE_BATCH_FORMAT:
        raise ValueError(f"table batch format {found!r}, this version reads {TABLE_BATCH_FORMAT!r}")
    return unpack_entries(bytes(value or b""))


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
