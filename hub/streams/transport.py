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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka


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
    """The aiokafka consumer, on the rewinding consumer thread."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return RewindingConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport, with the idempotent producer and the rewinding consumer."""

    Producer = IdempotentProducer
    Consumer = RewindingConsumer
