"""Table writes held for the length of one batch, then written once per key; reads kept for the batch.

A faust table write is a changelog record, a RocksDB put and, for a sealed table, a JSON encoding and
an AES-GCM seal. The stages write the same keys again and again within a batch: a patient's sharing
state for each of their events, the index of the events waiting for a basis, a practice's facts. In
the benchmark (docs/PERFORMANCE.md) that was 3.3 ``share-state`` and 5.2 ``share-decided`` changelog
records per input. :class:`BatchWrites` keeps a batch's writes in memory, reads its own writes back,
and :meth:`BatchWrites.flush` writes each key once, with its last value, once Kafka has acknowledged
the batch's records. What the batch read from the table is kept until then too (the same keys are
read again and again).

Why this is safe:

- each agent's writes are its own until its batch is flushed or discarded (:data:`WRITER`); the
  agents that share tables (``share`` and ``share-merge``) read each other's pending writes, and
  flush in the order they began routing (hub.streams.agents ``Agents.add``), so a value derived from
  another agent's batch is never written before that batch;
- each key is written to the changelog partition of the event that last wrote it (faust takes the
  partition from the "current event"), which is the partition it would have had before;
- the flush comes after the batch's records are acknowledged by Kafka, and a batch not sent is
  discarded (:meth:`BatchWrites.discard`): after a crash the tables are never ahead of what was sent,
  only behind it, and the records read again are decided and sent again under the same ids (the
  stages are written for redelivery, DESIGN.md 4).

Values are held by reference, as a plain ``dict`` table holds them: a stage that changed a value after
writing it would change what is written; none does (they write new values), and the unit tests run
the stages on plain dicts, which behave the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Any

from faust.streams import current_event

from hub.errors import KeyDestroyed
from hub.logging import get_logger

log = get_logger(__name__)

#: A key deleted within the batch (``None`` is a value some tables hold).
_DELETED = object()

#: The agent whose batch is being routed (each agent runs in its own task, with its own value): whose
#: pending writes a write joins, and which a flush or discard concerns.
WRITER: ContextVar[str] = ContextVar("hub_table_writer", default="")


class BatchWrites(MutableMapping[str, Any]):
    """A table whose writes within a batch stay in memory until :meth:`flush` writes each key once.

    Two agents may write one table (``share`` and ``share-merge``): each has its own pending writes
    (:data:`WRITER`), flushed or discarded with its own batch. Reads see every agent's pending writes,
    the latest first, as they would have seen the table had each write gone straight to it.
    """

    def __init__(
        self,
        table: MutableMapping[str, Any],
        *,
        name: str,
        batching: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        self.table = table
        self.name = name
        #: Around a flush's writes, for a table whose changelog takes a batch's entries in one record
        #: per partition (hub.streams.changelog_batches): they are sent on leaving it.
        self.batching = batching or nullcontext
        #: writer → key → (value or _DELETED, the faust event being routed when it was written, order).
        self._pending: dict[str, dict[str, tuple[Any, Any, int]]] = {}
        self._order = 0
        #: key → the table's value as first read (None: absent), until the next flush. The share stage
        #: reads a patient's waiting decisions again at each change of their state; each read is a
        #: RocksDB get, a decryption and a JSON decoding.
        self._read: dict[str, Any] = {}

    def _stored(self, key: str) -> Any:
        if key in self._read:
            return self._read[key]
        value = self._read[key] = self.table.get(key)
        return value

    def _latest(self, key: str) -> tuple[Any, Any, int] | None:
        """The latest pending write of the key, by any agent (None: none)."""
        latest = None
        for writes in self._pending.values():
            entry = writes.get(key)
            if entry is not None and (latest is None or entry[2] > latest[2]):
                latest = entry
        return latest

    def get(self, key: str, default: Any = None) -> Any:
        """The latest pending write of the key, else the table's value."""
        pending = self._latest(key)
        value = self._stored(key) if pending is None else pending[0]
        return default if value is None or value is _DELETED else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _DELETED)
        if value is _DELETED:
            raise KeyError(key)
        return value

    def _write(self, key: str, value: Any) -> None:
        self._order += 1
        self._pending.setdefault(WRITER.get(), {})[key] = (value, current_event(), self._order)

    def __setitem__(self, key: str, value: Any) -> None:
        self._write(key, value)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._write(key, _DELETED)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _DELETED) is not _DELETED

    def __iter__(self) -> Iterator[str]:
        written = {key for writes in self._pending.values() for key in writes}
        for key in self.table:
            if key not in written:
                yield key
        for key in written:
            if self.get(key, _DELETED) is not _DELETED:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def pending(self) -> int:
        """Keys written by the current agent's batch and not yet flushed."""
        return len(self._pending.get(WRITER.get(), {}))

    def discard(self) -> None:
        """Forget the current agent's batch's writes: its records were not sent, it will be read again."""
        self._pending.pop(WRITER.get(), None)
        self._read.clear()

    def flush(self, stream: Any) -> int:
        """Write each key of the current agent's batch once, on its own event's partition; the number
        of keys written.

        A key whose patient was erased meanwhile is dropped (the patient is forgotten); any other
        failure is logged by code and table name, never content, and the other keys are still written.
        """
        pending = self._pending.pop(WRITER.get(), {})
        # Past the batch another worker may own the partition: nothing read is trusted after it.
        self._read.clear()
        try:
            with self.batching():
                written = self._write_pending(pending, stream)
        finally:
            stream._set_current_event(None)
        return written

    def _write_pending(self, pending: dict[str, tuple[Any, Any, int]], stream: Any) -> int:
        written = 0
        for key, (value, event, _) in pending.items():
            # faust writes a key's changelog to the partition of the stream's current event.
            stream._set_current_event(event)
            try:
                if value is _DELETED:
                    self.table.pop(key, None)
                else:
                    self.table[key] = value
            except KeyDestroyed:
                log.info("table.write_dropped", table=self.name, reason="key_destroyed")
                continue
            except Exception as exc:  # one key's failure must not lose the others
                log.error("table.write_failed", table=self.name, error=type(exc).__name__)
                continue
            written += 1
        return written
