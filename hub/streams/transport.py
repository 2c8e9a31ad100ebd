"""faust's aiokafka transport with an idempotent, ``acks=all`` producer (DESIGN.md section 4), whose
consumer rewinds every partition after a rebalance, including those without a committed offset.

faust only turns idempotence on inside transactions (``exactly_once``), which the hub does not use;
without it a retried send can duplicate or reorder a patient's events. Registered as the
``hubkafka://`` broker scheme through the ``faust.transports`` entry point in pyproject.toml.

The rewind (found by tests/integration/test_faults_worker_kill.py): at a rebalance faust stops the
flow, clears its agents' buffers and drops the records it had fetched but not yet delivered, then
relies on "seek to committed" to read them again. aiokafka's ``seek_to_committed`` skips a partition
with no committed offset (or offset 0), so such a partition kept its fetch position past the dropped
records: the group was Stable, no error, every agent idle, and those inputs never got a receipt.
Here such a partition goes back to its beginning instead, as a new consumer would
(``auto_offset_reset=earliest``): at-least-once, the stages publish the same ids again.

The seek hands out nothing (found by ``hub bench --state-patients``, tests/unit/test_transport_offsets.py):
when table recovery ends, faust seeks with the flow running and clears the streams' buffers after, so
a record delivered around the seek was cleared and never read again; the consumer stops the flow
before it seeks (:meth:`RewindingConsumer.perform_seek`). And no commit goes past a record delivered
since the last seek and not acknowledged (:meth:`RewindingConsumer._new_offset`), which faust allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from hub.logging import get_logger

log = get_logger(__name__)


class IdempotentProducer(faust_aiokafka.Producer):
    """Every send waits for all in-sync replicas and carries a producer sequence number."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


def never_committed(
    committed: Mapping[TopicPartition, int | None], changelogs: set[str]
) -> list[TopicPartition]:
    """The stream partitions that ``seek_to_committed`` left where they were: no committed offset, or 0.

    Changelog partitions are excluded: table recovery positions them itself.
    """
    return sorted(
        (tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs),
        key=lambda tp: (tp.topic, tp.partition),
    )


class RewindingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Seeks every stream partition back to its committed offset, or to its beginning when it has none."""

    async def seek_to_committed(self) -> Mapping[TopicPartition, int]:
        return await self.call_thread(self._seek_to_committed)  # type: ignore[no-any-return]

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka takes fetch_max_bytes at construction only, and faust builds the consumer: set what
        # start() reads (aiokafka pinned <0.15; tests/unit/test_transport.py checks it is read).
        consumer._fetch_max_bytes = FETCH_MAX_BYTES
        return consumer

    async def _seek_to_committed(self) -> Mapping[TopicPartition, int]:
        consumer = self._ensure_consumer()
        committed: Mapping[TopicPartition, int] = await consumer.seek_to_committed()
        rewind = never_committed(committed, set(self.app.tables.changelog_topics))
        if rewind:
            await consumer.seek_to_beginning(*rewind)
        return committed


#: What one fetch brings back, all partitions together (aiokafka's default, 50 MiB, which faust never
#: sets): a worker rebuilding its tables held up to 140 MB of fetched changelog records at once
#: (docs/STATE.md, "Memory while rebuilding"). Not a record size limit: Kafka still returns a first
#: batch larger than this, so a 16 MiB internal record still passes.
FETCH_MAX_BYTES = 4 * 1024 * 1024


class RewindingConsumer(faust_aiokafka.Consumer):
    """The aiokafka consumer, on the rewinding consumer thread, handing out no record while it seeks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set when no record is out with faust's fetcher loop: the last one handed out was delivered
        #: to the streams and its read offset written (the loop asks for the next one only then).
        self._handed_over = asyncio.Event()
        self._handed_over.set()
        #: Per partition of a topic with acknowledgements, the offsets delivered to the streams since
        #: the last seek and not acknowledged yet: no commit goes past the lowest (:meth:`_new_offset`).
        self._unfinished: dict[TP, set[int]] = {}
        #: The offset each partition's commits are held at, logged once.
        self._held_at: dict[TP, int] = {}
        deliver = self.callback

        async def delivering(message: Message) -> None:
            if self.app.topics.acks_enabled_for(message.topic):
                self._unfinished.setdefault(message.tp, set()).add(message.offset)
            await deliver(message)

        self.callback = delivering

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return RewindingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        try:
            await super()._drain_messages(fetcher)
        finally:
            # A loop stopped while it delivered a record (a rebalance stops the fetcher) delivers nothing.
            self._handed_over.set()

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        async for tp, message in super().getmany(timeout):
            self._handed_over.clear()
            try:
                yield tp, message
            finally:
                self._handed_over.set()

    async def perform_seek(self) -> None:
        """Stop the flow, wait for the record being delivered, then seek: nothing is delivered after.

        faust seeks when its table recovery ends (``on_recovery_completed``, ``_resume_streams``) with the
        stream partitions already resumed and the flow running, then clears the streams' buffers
        (``flow_control.resume()``) and resumes the flow. A record delivered between the seek and that
        clear was dropped and never read again: the fetch position and faust's read offset were past it,
        and the next record's acknowledgement committed past it (faust's ``_new_offset`` only checks
        that acknowledged offsets follow each other). A record being delivered while the seek ran
        wrote its read offset after the seek had reset it, and the record read again below it was
        dropped as already read. Either way ``hub bench --state-patients`` lost offset 0 of an ingest
        partition and processed offset 1, on a worker rebuilding its tables: its first fetch after
        the rewind came back in about 6 ms, against well under 1 ms from the seek to the clear on an
        idle event loop. Every caller resumes the flow once the buffers are cleared (faust's
        ``getmany`` calls this only when the flow is already stopped).
        """
        self.stop_flow()
        await self._handed_over.wait()
        await super().perform_seek()
        # Every partition is read again from its committed offset: what was delivered and not finished
        # comes again, and no longer holds the commits back.
        self._unfinished.clear()
        self._held_at.clear()

    def ack(self, message: Message) -> bool:
        unfinished = self._unfinished.get(message.tp)
        if unfinished is not None:
            unfinished.discard(message.offset)
        return bool(super().ack(message))

    def _new_offset(self, tp: TP) -> int | None:
        """faust's offset to commit, never past a record delivered since the last seek and not acknowledged.

        faust commits the first run of consecutive acknowledged offsets without checking that it starts
        where the partition's processing stands: with no committed offset (or 0) an unacknowledged
        first record is committed past, and else one just after the committed offset is (its check is
        off by one). An agent that stopped or failed on a batch (hub.streams.batches) or a record
        cleared from the buffers must be read again, so the acknowledged offsets above the lowest such
        record are kept until it is acknowledged or a seek reads it again.
        """
        unfinished = self._unfinished.get(tp)
        acked = self._acked[tp]
        if not unfinished or not acked:
            return super()._new_offset(tp)
        first = min(unfinished)
        held = [offset for offset in acked if offset > first]
        if not held:
            return super()._new_offset(tp)
        if self._held_at.get(tp) != first:
            self._held_at[tp] = first
            log.warning("consumer.commit_held", topic=tp.topic, partition=tp.partition, offset=first)
        acked[:] = [offset for offset in acked if offset < first]
        try:
            return super()._new_offset(tp)
        finally:
            acked.extend(held)


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport, with the idempotent producer and the rewinding consumer."""

    Producer = IdempotentProducer
    Consumer = RewindingConsumer
