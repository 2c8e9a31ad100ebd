"""hub.streams.batch_writes: a batch's table writes are read back at once and written once per key.

The flush must write each key on the partition of the event that last wrote it (faust takes it from
the stream's current event), so the fake stream below records which event was current at each write.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from faust.streams import _current_event

from hub.errors import KeyDestroyed
from hub.streams.batch_writes import WRITER, BatchWrites


class RecordingStream:
    """The one faust stream method the flush uses; records the current event at each table write."""

    def __init__(self) -> None:
        self.current_event: Any = None

    def _set_current_event(self, event: Any = None) -> None:
        self.current_event = event


class RecordingTable(MutableMapping[str, Any]):
    """A table that records every write with the event current when it was made."""

    def __init__(self, stream: RecordingStream, data: dict[str, Any] | None = None) -> None:
        self.stream = stream
        self.data = dict(data or {})
        self.writes: list[tuple[str, Any, Any]] = []
        self.refuse: dict[str, type[Exception]] = {}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self.refuse:
            raise self.refuse[key]("refused")
        self.writes.append((key, value, self.stream.current_event))
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        self.writes.append((key, "<deleted>", self.stream.current_event))
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@pytest.fixture(autouse=True)
def no_current_event_left() -> Iterator[None]:
    """faust's current event is a context variable of the test process: what a test makes current
    (``routing``) must not be the current event of the tests that run after it in the same process
    (a table store then reads a partition from it)."""
    token = _current_event.set(None)
    yield
    _current_event.reset(token)


def routing(event: str) -> Any:
    """What the agent does before routing a record: make it the current event (faust's contextvar)."""
    return _current_event.set(_Ref(event))


class _Ref:
    """faust keeps a weak reference to the current event: calling it gives the event."""

    def __init__(self, event: str) -> None:
        self.event = event

    def __call__(self) -> str:
        return self.event


@pytest.fixture
def stream() -> RecordingStream:
    return RecordingStream()


def test_writes_are_read_back_before_the_flush_and_written_once_per_key_after(
    stream: RecordingStream,
) -> None:
    table = RecordingTable(stream, {"kept": 1})
    batched = BatchWrites(table, name="share-state")
    routing("event-1")
    batched["p1"] = {"n": 1}
    routing("event-2")
    batched["p1"] = {"n": 2}
    batched["p2"] = [1]
    routing("event-3")
    batched["p1"] = {"n": 3}

    assert batched.get("p1") == {"n": 3}
    assert batched["p2"] == [1]
    assert batched.get("kept") == 1
    assert table.writes == [], "nothing is written before the batch is flushed"
    assert batched.pending == 2

    assert batched.flush(stream) == 2
    # Each key once, with its last value, on the event that last wrote it.
    assert table.writes == [("p1", {"n": 3}, "event-3"), ("p2", [1], "event-2")]
    assert stream.current_event is None
    assert batched.pending == 0
    assert batched["p1"] == {"n": 3}


def test_a_key_deleted_in_the_batch_reads_as_absent_and_is_deleted_once(stream: RecordingStream) -> None:
    table = RecordingTable(stream, {"waiting": ["e1"], "other": 2})
    batched = BatchWrites(table, name="share-decided")
    routing("event-1")
    batched["waiting"] = ["e1", "e2"]
    assert batched.pop("waiting", None) == ["e1", "e2"]
    assert "waiting" not in batched
    assert batched.get("waiting") is None
    with pytest.raises(KeyError):
        batched["waiting"]
    with pytest.raises(KeyError):
        del batched["never-there"]
    assert sorted(batched) == ["other"]
    assert len(batched) == 1

    batched.flush(stream)
    assert table.writes == [("waiting", "<deleted>", "event-1")]
    assert "waiting" not in table.data


def test_a_key_written_after_its_deletion_is_written_with_its_new_value(stream: RecordingStream) -> None:
    table = RecordingTable(stream, {"k": 1})
    batched = BatchWrites(table, name="t")
    routing("event-1")
    del batched["k"]
    routing("event-2")
    batched["k"] = 2
    assert sorted(batched) == ["k"]
    batched.flush(stream)
    assert table.writes == [("k", 2, "event-2")]


def test_an_erased_patients_key_is_dropped_and_a_failing_key_does_not_lose_the_others(
    stream: RecordingStream,
) -> None:
    table = RecordingTable(stream)
    table.refuse = {"erased": KeyDestroyed, "broken": RuntimeError}
    batched = BatchWrites(table, name="share-state")
    routing("event-1")
    batched["erased"] = 1
    batched["broken"] = 2
    batched["fine"] = 3
    assert batched.flush(stream) == 1
    assert table.writes == [("fine", 3, "event-1")]
    assert batched.pending == 0, "a failed key is not retried forever"


def test_what_a_batch_read_is_read_once_and_forgotten_at_the_flush(stream: RecordingStream) -> None:
    reads: list[str] = []

    class Counting(RecordingTable):
        def __getitem__(self, key: str) -> Any:
            reads.append(key)
            return super().__getitem__(key)

    table = Counting(stream, {"decided": {"n": 1}})
    batched = BatchWrites(table, name="share-decided")
    routing("event-1")
    assert [batched.get("decided"), batched.get("decided"), batched.get("absent")] == [
        {"n": 1},
        {"n": 1},
        None,
    ]
    assert "absent" not in batched
    assert reads == ["decided", "absent"], "each key read from the table once in the batch"
    table.data["decided"] = {"n": 2}  # another owner of the partition, after this batch
    batched.flush(stream)
    assert batched.get("decided") == {"n": 2}, "nothing read is trusted past the batch"


def as_writer(name: str) -> Any:
    """What each agent's task does first: its writes are its own (hub.streams.agents)."""
    return WRITER.set(name)


def test_two_agents_writes_are_their_own_and_each_reads_the_others_latest(stream: RecordingStream) -> None:
    """share and share-merge write one table: each flushes (or discards) its own batch's writes only,
    and each reads the latest pending write of the key, whichever agent made it."""
    table = RecordingTable(stream, {"pt-x": {"v": 0}})
    batched = BatchWrites(table, name="share-state")
    token = as_writer("share")
    try:
        routing("e1")
        batched["pt-x"] = {"v": 1}
        batched["pt-y"] = {"v": 1}
        as_writer("share-merge")
        assert batched["pt-x"] == {"v": 1}, "the other agent's pending write is read"
        routing("m1")
        batched["pt-x"] = {"v": 2}
        batched["pt-z"] = {"v": 2}
        assert batched.pending == 2
        as_writer("share")
        assert batched["pt-x"] == {"v": 2}, "the latest write, by either agent"
        assert batched.flush(stream) == 2, "share writes its own two keys, not share-merge's"
        assert table.writes == [("pt-x", {"v": 1}, "e1"), ("pt-y", {"v": 1}, "e1")]
        assert batched["pt-x"] == {"v": 2}, "share-merge's write is still pending, and read"
        as_writer("share-merge")
        batched.discard()
        assert batched["pt-x"] == {"v": 1} and "pt-z" not in batched, "a discarded batch's writes are gone"
        assert batched.flush(stream) == 0
    finally:
        WRITER.reset(token)
