"""The state of many patients for ``hub bench --state-patients N``, written in minutes, not hours.

Feeding 100,000 demo patients through the pipeline (about 800,000 inputs) takes hours on the 2-core
machine, so the state phase copies instead a state the real pipeline built: the tables of the run's
throughput phase (its ``--patients`` demo patients, every table entry as the worker left it).

- **Read**: each table's changelog topic of that phase, to its end, keeping the latest value of each
  key (a deletion removes it; a batch record's entries are read as records of their own,
  hub.table_batches): what the table holds. Sealed values (``hub.streams.tables.SEALED_TABLES``)
  are opened with the hub's own keyring.
- **Copy**: copy ``n`` of an entry has its patient renamed, ``pt-x`` becoming ``pt-x~n`` wherever the
  key names it (:func:`copy_key`, after ``hub.crypto.records.patient_of_table_key``), and its value
  sealed again under that patient's own data key (created in the key store, as the worker would),
  bound to the new changelog topic and key, as ``hub.crypto.records.SealedTable`` seals. Copy 0 is the
  template itself. Each record goes to the partition its template record was on, with its headers.
- **Write**: the records go to the changelog topics of a fresh app id; the worker started on them
  finds an empty folder and rebuilds its RocksDB tables from the changelogs, as a new worker does.
  Every entry is written as a record of its own, also those of the tables whose worker writes a
  batch's entries in one record (a worker reads both): the rebuild is timed on the larger count of
  records.

What this is, and is not: the tables hold as many keys and bytes as ``copies`` times the template's,
in the same tables, partitions and encryption, one data key per patient; a copy's values are the
template's (they still name the template's ids inside). No input of the measurement names a copy's
patient, so the hub never reads a copy's contents: what the copies weigh on is the worker's memory,
its disk, its restart and its lookups, which is what the state phase measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.serializers import codecs

from hub.crypto.keyring import Keyring
from hub.crypto.records import patient_of_table_key
from hub.records import headers_of
from hub.streams.app import INTERNAL_RECORD_LIMIT
from hub.streams.tables import SEALED_TABLES, TABLES
from hub.table_batches import batch_entries
from hub.topics import TopicNames

#: The largest record the benchmark reads or writes: a table's changelog record, an internal record.
MAX_RECORD_BYTES = INTERNAL_RECORD_LIMIT
#: Records are written in batches of this size (one in flight per partition).
BATCH_BYTES = 1024 * 1024
#: faust's codec of the tables' keys (``key_serializer="json"`` in hub.streams.app).
KEY_CODEC = "json"
#: Seconds between two progress lines.
PROGRESS_SECONDS = 5.0
#: Batch futures waited for together: bounds what the writer holds.
PENDING_BATCHES = 256


class StateFormatError(ValueError):
    """A changelog record that is not what the tables write: the copy would not be faithful."""


def copy_key(key: str, copy: int) -> str:
    """The key of ``key``'s entry in copy ``copy`` of the state; copy 0 is the key itself.

    The patient part (``pt-x`` in ``pt-x``, ``pt-x#held`` or ``<practice>|pt-x``, as
    ``patient_of_table_key`` reads it) becomes ``pt-x~<copy>``: a patient of its own, with its own
    data key, and a key no other copy has.
    """
    if copy == 0:
        return key
    head, bar, tail = key.rpartition("|")
    patient, hash_mark, rest = tail.partition("#")
    return f"{head}{bar}{patient}~{copy}{hash_mark}{rest}"


def copies_for(patients: int, template_patients: int) -> int:
    """How many copies of a ``template_patients`` state hold at least ``patients`` patients."""
    if patients <= 0 or template_patients <= 0:
        raise ValueError("patients and template patients must be positive")
    return -(-patients // template_patients)


def table_key(raw: bytes | None) -> str:
    """A changelog record's key as the table's key; StateFormatError unless faust's codec gives it back."""
    if raw is None:
        raise StateFormatError("a changelog record without a key")
    key = codecs.loads(KEY_CODEC, raw)
    if not isinstance(key, str) or codecs.dumps(KEY_CODEC, key) != raw:
        raise StateFormatError("a changelog key that is not a JSON string as faust writes it")
    return key


def key_bytes(key: str) -> bytes:
    """A table key as faust writes it in the changelog."""
    raw = codecs.dumps(KEY_CODEC, key)
    return raw if isinstance(raw, bytes) else str(raw).encode()


@dataclass(frozen=True)
class TableEntry:
    """One entry of a table: its partition, key and value (opened, for a sealed table)."""

    table: str
    partition: int
    key: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class StateWritten:
    """What :func:`write_state_copies` wrote."""

    copies: int
    records: int
    bytes: int
    seconds: float
    #: Records by table.
    by_table: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "copies": self.copies,
            "records_written": self.records,
            "bytes_written": self.bytes,
            "write_seconds": round(self.seconds, 1),
            "records_by_table": dict(self.by_table),
        }


async def new_reader(bootstrap: str, **options: Any) -> Any:
    """A started consumer of the benchmark: no group, earliest offset, records up to the hub's limit."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_RECORD_BYTES,
        fetch_max_bytes=4 * MAX_RECORD_BYTES,
        **options,
    )
    await consumer.start()
    return consumer


async def new_producer(bootstrap: str, **options: Any) -> Any:
    """A started producer of the benchmark: acks=all, idempotent, records up to MAX_RECORD_BYTES."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=MAX_RECORD_BYTES,
        **options,
    )
    await producer.start()
    return producer


async def read_table_state(
    bootstrap: str, app_id: str, partitions: int, keyring: Keyring
) -> list[TableEntry]:
    """Every table's entries of ``app_id`` (changelogs of ``partitions`` partitions), from its changelogs
    (latest value per key), sealed ones opened."""
    consumer = await new_reader(bootstrap)
    entries: list[TableEntry] = []
    try:
        for table in TABLES:
            topic = TopicNames.changelog(app_id, table)
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
            wanted = [tp for tp in tps if ends[tp] > 0]
            # (partition, key bytes) → (value bytes, headers): the latest of each key.
            latest: dict[tuple[int, bytes], tuple[bytes, tuple[tuple[str, bytes], ...]]] = {}
            if wanted:
                consumer.assign(wanted)
                await consumer.seek_to_beginning(*wanted)
                while [tp for tp in wanted if await consumer.position(tp) < ends[tp]]:
                    for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                        for record in records:
                            if record.offset >= ends[tp]:
                                continue
                            _keep_latest(latest, tp.partition, record)
            for (partition, raw_key), (raw_value, headers) in latest.items():
                key = table_key(raw_key)
                value = (
                    keyring.open(raw_value, topic=topic, record_id=key)
                    if table in SEALED_TABLES
                    else raw_value
                )
                entries.append(TableEntry(table, partition, key, value, headers))
    finally:
        await consumer.stop()
    return entries


def _keep_latest(
    latest: dict[tuple[int, bytes], tuple[bytes, tuple[tuple[str, bytes], ...]]], partition: int, record: Any
) -> None:
    """Apply one changelog record to ``latest``: a key's value or deletion, or each entry of a batch
    record (hub.streams.changelog_batches), as a rebuilding worker applies them."""
    entries = batch_entries(record.headers, record.value)
    if entries is None:
        if record.key is None:
            raise StateFormatError("a changelog record without a key")
        entries = [(bytes(record.key), None if record.value is None else bytes(record.value))]
        headers = headers_of(record.headers)
    else:
        headers = ()
    for key, value in entries:
        if value is None:
            latest.pop((partition, key), None)  # a deletion
        else:
            latest[(partition, key)] = (value, headers)


async def write_state_copies(
    bootstrap: str,
    entries: Sequence[TableEntry],
    app_id: str,
    copies: int,
    keyring: Keyring,
    *,
    progress: Callable[[str], None],
) -> StateWritten:
    """Write ``copies`` copies of ``entries`` to ``app_id``'s changelog topics (see the module's text)."""
    producer = await new_producer(bootstrap, max_batch_size=BATCH_BYTES)
    started = reported = time.monotonic()
    records = size = 0
    by_table: dict[str, int] = dict.fromkeys(TABLES, 0)
    builders: dict[tuple[str, int], Any] = {}
    pending: list[asyncio.Future[Any]] = []

    async def send(topic: str, partition: int) -> None:
        builder = builders.pop((topic, partition))
        pending.append(await producer.send_batch(builder, topic, partition=partition))
        if len(pending) >= PENDING_BATCHES:
            await asyncio.gather(*pending)
            pending.clear()

    try:
        topics = {table: TopicNames.changelog(app_id, table) for table in TABLES}
        for copy in range(copies):
            for entry in entries:
                topic = topics[entry.table]
                key = copy_key(entry.key, copy)
                value = (
                    keyring.seal(entry.value, key_id=patient_of_table_key(key), topic=topic, record_id=key)
                    if entry.table in SEALED_TABLES
                    else entry.value
                )
                raw_key = key_bytes(key)
                slot = (topic, entry.partition)
                for attempt in range(2):
                    builder = builders.get(slot)
                    if builder is None:
                        builder = builders[slot] = producer.create_batch()
                    if builder.append(key=raw_key, value=value, timestamp=None, headers=list(entry.headers)):
                        break
                    if attempt:  # a fresh batch refused it: larger than a batch can be
                        raise StateFormatError(f"a {entry.table} entry of {len(value):,} bytes")
                    await send(topic, entry.partition)
                records += 1
                size += len(raw_key) + len(value)
                by_table[entry.table] += 1
            if time.monotonic() - reported >= PROGRESS_SECONDS or copy == copies - 1:
                reported = time.monotonic()
                elapsed = reported - started
                left = elapsed / (copy + 1) * (copies - copy - 1)
                progress(
                    f"  copy {copy + 1:,}/{copies:,}: {records:,} records, {size / 1024 / 1024:,.0f} MB "
                    f"in {elapsed:.0f} s (about {left:.0f} s left)"
                )
        for topic, partition in list(builders):
            await send(topic, partition)
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return StateWritten(copies, records, size, time.monotonic() - started, by_table)
