"""The worker's consumer hands out no record while it seeks (hub/streams/transport.py, RewindingConsumer).

When table recovery ends, faust resumes the stream partitions with the flow running, seeks them to their
committed offsets, clears the streams' buffers and resumes the flow (``Recovery.on_recovery_completed``).
A record its fetcher loop delivered in between was cleared and never read again, and the next record's
acknowledgement committed past it: ``hub bench --state-patients`` lost the first input of an ingest
partition that way (offset 0 never processed, offset 1 processed and committed).

Run on faust's own consumer logic (``_drain_messages``, ``getmany``, ``perform_seek``, ``ack``,
``_new_offset``), without a broker: :class:`PartitionLog` stands for aiokafka behind faust's consumer
thread (one partition's records, its fetch position, and fetches answered when the test says so), so
each interleaving is played step by step, never by timing. The same scenarios on faust's own aiokafka
consumer show the loss the hub's consumer prevents.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from yarl import URL

from hub.streams.transport import RewindingConsumer, Transport

TOPIC = "hub.ingest.v1"
PARTITION = TP(TOPIC, 0)
WAIT_SECONDS = 10.0


class PartitionLog:
    """One partition behind faust's consumer thread: its records, the fetch position, no committed offset.

    A fetch returns when the test answers it (:meth:`answer`) with what lies at the position then, as
    aiokafka does; a seek puts the position back at the beginning, as the hub's thread does for a
    partition never committed.
    """

    def __init__(self, records: int) -> None:
        self.records = [
            ConsumerRecord(TOPIC, 0, offset, 0, 0, b"k", b"v", None, 1, 1, ()) for offset in range(records)
        ]
        self.position = 0
        self.answers: asyncio.Queue[int] = asyncio.Queue()

    def answer(self, count: int) -> None:
        """The fetch waiting (or the next one) returns up to ``count`` records from the position."""
        self.answers.put_nowait(count)

    async def getmany(self, active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:
        count = await self.answers.get()
        if PARTITION not in active_partitions:
            return {}
        records = self.records[self.position : self.position + count]
        self.position += len(records)
        return {PARTITION: records} if records else {}

    async def seek_to_committed(self) -> dict[TP, int | None]:
        self.position = 0
        return {PARTITION: None}

    def assignment(self) -> set[TP]:
        return {PARTITION}

    def highwater(self, tp: TP) -> int:
        return len(self.records)


class Worker:
    """A consumer of ``consumer_class`` on a :class:`PartitionLog`, its fetcher loop running, and the
    streams' buffer: what was delivered and not yet taken by an agent (faust clears it on resume)."""

    def __init__(self, consumer_class: type[Any], log: PartitionLog) -> None:
        app = faust.App(f"test-offsets-{id(self)}", store="memory://", web_enabled=False)
        self.acking_topics: set[str] = cast(Any, app.topics)._acking_topics
        self.acking_topics.add(TOPIC)
        self.buffer: list[Any] = []
        self.hold_offset: int | None = None
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.consumer = consumer_class(
            Transport([URL("kafka://localhost:9092")], app),
            callback=self.deliver,
            on_partitions_revoked=None,
            on_partitions_assigned=None,
        )
        self.consumer._thread = log
        self.fetches_asked = 0
        waiting = self.consumer._wait_next_records

        async def counted(timeout: float) -> Any:
            # The fetcher loop is done with what it was given and asks for more (or for the flow).
            self.fetches_asked += 1
            return await waiting(timeout)

        self.consumer._wait_next_records = counted
        # Assigned, and resumed as faust's recovery resumes the stream partitions before it seeks.
        self.consumer._set_active_tps({PARTITION})
        self.consumer.resume_flow()
        self.loop_task = asyncio.ensure_future(
            self.consumer._drain_messages(SimpleNamespace(_stopped=asyncio.Event()))
        )

    async def deliver(self, message: Any) -> None:
        """faust's conductor: put the record in the streams' buffer (``hold_offset`` waits for release)."""
        if message.offset == self.hold_offset:
            self.held.set()
            await self.release.wait()
        self.buffer.append(message)

    async def until(self, condition: Callable[[], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "the fetcher loop did not get there"
            await asyncio.sleep(0.001)

    async def fetched(self, count: int) -> None:
        """Wait until the fetcher loop has asked for its ``count``-th fetch."""
        await self.until(lambda: self.fetches_asked >= count)

    def clear_and_resume(self) -> None:
        """What faust does after the seek: clear the streams' buffers, then resume the flow."""
        self.buffer.clear()
        self.consumer.resume_flow()

    def process_all(self) -> tuple[list[int], int | None]:
        """The agent processes and acknowledges what is buffered: (the offsets, the offset to commit)."""
        processed = [message.offset for message in self.buffer]
        for message in self.buffer:
            self.consumer.ack(message)
        return processed, self.consumer._new_offset(PARTITION)

    async def stop(self) -> None:
        self.loop_task.cancel()
        await asyncio.gather(self.loop_task, return_exceptions=True)


@pytest.fixture(autouse=True)
def collect_the_workers() -> Iterator[None]:
    """Collect each test's faust objects (cyclic: about 30 ms) here, not during a later test that
    times its steps (tests/unit/test_batches.py gives faust's take_events 50 ms between two puts)."""
    yield
    gc.collect()


def play(scenario: Callable[[Worker, PartitionLog], Awaitable[None]], consumer_class: type[Any]) -> Any:
    async def main() -> tuple[list[int], int | None]:
        log = PartitionLog(records=2)
        worker = Worker(consumer_class, log)
        try:
            await worker.fetched(1)
            await scenario(worker, log)
            return worker.process_all()
        finally:
            await worker.stop()

    return asyncio.run(main())


async def delivered_after_the_seek(worker: Worker, log: PartitionLog) -> None:
    """A fetch in flight returns offset 0 from the position just sought, before the buffers are cleared."""
    await worker.consumer.perform_seek()
    log.answer(1)
    await worker.fetched(2)
    worker.clear_and_resume()
    log.answer(2)
    await worker.fetched(3)


async def delivering_while_the_seek_runs(worker: Worker, log: PartitionLog) -> None:
    """Offset 1 is being delivered while the seek runs: its read offset is written after the seek's."""
    worker.hold_offset = 1
    log.answer(2)
    await worker.held.wait()
    await worker.consumer.perform_seek()
    worker.release.set()
    await worker.fetched(2)
    worker.clear_and_resume()
    log.answer(2)
    await worker.fetched(3)


SCENARIOS = [delivered_after_the_seek, delivering_while_the_seek_runs]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_every_record_is_processed_after_a_seek_and_none_is_committed_past(scenario: Any) -> None:
    processed, commit = play(scenario, RewindingConsumer)
    assert processed == [0, 1]
    assert commit == 2


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_faust_consumer_loses_offset_0_and_commits_past_it_which_is_why_the_hub_overrides_it(
    scenario: Any,
) -> None:
    """If this starts failing, faust fixed its seek: RewindingConsumer.perform_seek may then go."""
    processed, commit = play(scenario, faust_aiokafka.Consumer)
    assert processed == [1], "offset 0 was cleared from the buffers and never delivered again"
    assert commit == 2, "and committing offset 1 committed past it"


def test_faust_clears_the_buffers_and_resumes_the_flow_after_each_seek_of_its_recovery() -> None:
    """perform_seek leaves the flow stopped: faust resumes it, after clearing the buffers. If faust's
    recovery changes that order, this fails (faust-streaming is pinned)."""
    for method in (Recovery.on_recovery_completed, Recovery._resume_streams):
        source = inspect.getsource(method)
        seek = source.index("consumer.perform_seek()")
        clear = source.index("flow_control.resume()", seek)
        assert source.index("consumer.resume_flow()", clear) > clear
    assert "perform_seek" in vars(RewindingConsumer)


def committed_as_acknowledged(
    consumer_class: type[Any], records: int, acknowledged: list[int], *, acking: bool = True
) -> tuple[list[int | None], Any]:
    """Deliver ``records`` records, then acknowledge ``acknowledged`` one by one, committing after each
    as faust does: (the offset committed after each, the consumer)."""

    async def main() -> tuple[list[int | None], Any]:
        log = PartitionLog(records)
        worker = Worker(consumer_class, log)
        if not acking:
            worker.acking_topics.discard(TOPIC)
        try:
            await worker.fetched(1)
            log.answer(records)
            await worker.fetched(2)
            by_offset = {message.offset: message for message in worker.buffer}
            commits: list[int | None] = []
            for offset in acknowledged:
                worker.consumer.ack(by_offset[offset])
                commit = worker.consumer._new_offset(PARTITION)
                if commit is not None:
                    worker.consumer._committed_offset[PARTITION] = commit
                commits.append(commit)
            return commits, worker.consumer
        finally:
            await worker.stop()

    return asyncio.run(main())


def test_no_commit_passes_a_delivered_record_not_acknowledged_on_a_partition_never_committed() -> None:
    """Offset 0 delivered, its batch abandoned (hub.streams.batches): offset 1's acknowledgement waits."""
    assert committed_as_acknowledged(RewindingConsumer, 2, [1, 0])[0] == [None, 2]
    assert committed_as_acknowledged(faust_aiokafka.Consumer, 2, [1, 0])[0] == [2, None]


def test_no_commit_passes_the_record_just_after_the_committed_offset() -> None:
    """faust's check of a gap after the committed offset is off by one: it commits past offset 1."""
    assert committed_as_acknowledged(RewindingConsumer, 3, [0, 2, 1])[0] == [1, None, 3]
    assert committed_as_acknowledged(faust_aiokafka.Consumer, 3, [0, 2, 1])[0] == [1, 3, None]


def test_a_seek_reads_the_unfinished_records_again_so_they_no_longer_hold_the_commits() -> None:
    async def main() -> tuple[int | None, int | None]:
        log = PartitionLog(2)
        worker = Worker(RewindingConsumer, log)
        try:
            await worker.fetched(1)
            log.answer(2)
            await worker.fetched(2)
            worker.consumer.ack(worker.buffer[1])
            held = worker.consumer._new_offset(PARTITION)
            await worker.consumer.perform_seek()
            worker.clear_and_resume()
            log.answer(2)
            await worker.fetched(3)
            processed, commit = worker.process_all()
            assert processed == [0, 1]
            return held, commit
        finally:
            await worker.stop()

    assert asyncio.run(main()) == (None, 2)


def test_records_of_topics_without_acknowledgements_are_not_tracked() -> None:
    """Changelog records (table recovery reads hundreds of thousands) are never acknowledged."""
    _, consumer = committed_as_acknowledged(RewindingConsumer, 2, [], acking=False)
    assert consumer._unfinished == {}
