"""Table writes held for the length of one batch, then written once per key; reads kept for the batch.

A faust table write is a changelog record, a RocksDB put and, for a sealed table, a JSON encoding and
an AES-GCM seal. The stages write the same keys again and again within a batch: a patient's sharing
state for each of their events, the index of the events waiting for a basis, a practice's facts. In
the benchmark (docs/PERFORMANCE.md) that was 3.3 ``share-state`` and 5.2 ``share-decided`` changelog
records per input. :class:`BatchWrites` keeps a batch's writes in memory, reads its own writes back,
and :meth:`BatchWrites.flush` writes each key once, with its last value, when the batch is decided.
What the batch read from the table is kept until then too (the same keys are read again and again).

Why this is safe:

- the agents that share tables (``share`` and ``share-merge``) take turns for a whole batch, from its
  routing to its flush (hub.streams.agents ``Agents.add``): no other agent ever reads, or writes, a
  batch's writes before they are flushed;
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

from collections.abc import Iterator, MutableMapping
from typing import Any

from faust.streams import current_event

from hub.errors import KeyDestroyed
from hub.logging import get_logger

log = get_logger(__name__)

#: A key deleted within the batch (``None`` is a value some tables hold).
_DELETED = object()


class BatchWrites(MutableMapping[str, Any]):
    """A table whose writes within a batch stay in memory until :meth:`flush` writes each key once."""

    def __init__(self, table: MutableMapping[str, Any], *, name: str) -> None:
        self.table = table
        self.name = name
        #: key → (value or _DELETED, the faust event being routed when it was written).
        self._pending: dict[str, tuple[Any, Any]] = {}
        #: key → the table's value as first read in this batch (None: absent), until the flush. The
        #: share stage reads a patient's waiting decisions again at each change of their state; each
        #: read is a RocksDB get, a decryption and a JSON decoding.
        self._read: dict[str, Any] = {}

    def _stored(self, key: str) -> Any:
        if key in self._read:
            return self._read[key]
        value = self._read[key] = self.table.get(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """The batch's own write of the key, else the table's value."""
        pending = self._pending.get(key)
        value = self._stored(key) if pending is None else pending[0]
        return default if value is None or value is _DELETED else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _DELETED)
        if value is _DELETED:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._pending[key] = (value, current_event())

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._pending[key] = (_DELETED, current_event())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _DELETED) is not _DELETED

    def __iter__(self) -> Iterator[str]:
        for key in self.table:
            if key not in self._pending:
                yield key
        for key, (value, _) in self._pending.items():
            if value is not _DELETED:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def pending(self) -> int:
        """Keys written in the current batch and not yet flushed."""
        return len(self._pending)

    def discard(self) -> None:
        """Forget the batch's writes and reads: its records were not sent, it will be read again."""
        self._pending.clear()
        self._read.clear()

    def flush(self, stream: Any) -> int:
        """Write each key of the batch once, on its own event's partition; the number of keys written.

        A key whose patient was erased meanwhile is dropped (the patient is forgotten); any other
        failure is logged by code and table name, never content, and the other keys are still written.
        """
        written = 0
        pending, self._pending = self._pending, {}
        # Past the batch another worker may own the partition: nothing read is trusted after it.
        self._read.clear()
        try:
            for key, (value, event) in pending.items():
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
        finally:
            stream._set_current_event(None)
        return written
