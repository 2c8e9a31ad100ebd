"""The stages' producer on librdkafka (confluent-kafka): records handed over in C, acknowledged on asyncio.

faust's producer is aiokafka's, whose produce path (building requests, the sender task, one future
and one coroutine per record) is Python on the worker's one event loop: 14 % of a worker's busy
samples in session 16's profile, the largest single part of "moving records" (docs/PERFORMANCE.md).
librdkafka batches, encodes and sends in its own threads; the worker's loop serves its delivery
reports, which settle the records' asyncio futures.

faust keeps its own producer for what it writes itself (the tables' changelogs, whose acknowledged
offsets its stores track); the stages' records, the audit chain and its checkpoints go here. No
topic is written by both, so each partition's records keep the order they were sent in.

Same guarantees as the producer it replaces (hub.streams.transport.IdempotentProducer): ``acks=all``
and idempotence, so a retried send neither duplicates nor reorders a partition's records; keys are
partitioned as by Kafka's Java client and aiokafka (murmur2), so a record goes to the partition it
always went to, co-partitioned with the tables. A worker awaits every record's acknowledgement
before it acknowledges the input (hub.streams.delivery), so nothing is committed that this producer
has not delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import confluent_kafka
from aiokafka import TopicPartition

from hub.kafka.security import KafkaSecurity
from hub.logging import get_logger
from hub.settings import Settings

log = get_logger(__name__)

#: How often the loop asks librdkafka for delivery reports while records are in flight: what it adds,
#: at most, to a record's acknowledgement (a local broker acknowledges in 2-5 ms with ``acks=all``).
PUMP_SECONDS = 0.001
#: ... and while none is: librdkafka's logs and errors wait at most this long.
IDLE_SECONDS = 1.0


@dataclass(frozen=True)
class Delivered:
    """Where an acknowledged record is: what faust reads of aiokafka's ``RecordMetadata`` (a table's
    changelog offset, kept in its store) and the audit chain's checkpoints record."""

    topic: str
    partition: int
    offset: int
    timestamp: int

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class NativeSendError(Exception):
    """A record librdkafka could not deliver, with its error's name (no content) and whether it is
    worth sending again."""

    def __init__(self, error: confluent_kafka.KafkaError) -> None:
        super().__init__(error.name())
        self.name = str(error.name())
        # librdkafka retries transient errors itself until the message timeout: what it reports is
        # retriable only when the cluster may still take it later (a timeout, a broker gone).
        self.retriable = bool(error.retriable()) or error.code() in _TRANSIENT
        self.fatal = bool(error.fatal())


#: Reported as not retriable, yet what a broker down for a while gives: resent like any transient error.
_TRANSIENT = frozenset(
    {
        confluent_kafka.KafkaError._MSG_TIMED_OUT,
        confluent_kafka.KafkaError._TIMED_OUT,
        confluent_kafka.KafkaError._TRANSPORT,
        confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
        confluent_kafka.KafkaError.NOT_ENOUGH_REPLICAS,
        confluent_kafka.KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        confluent_kafka.KafkaError.REQUEST_TIMED_OUT,
        # A topic or partition not known yet (metadata behind): aiokafka's error for it is retriable.
        confluent_kafka.KafkaError._UNKNOWN_TOPIC,
        confluent_kafka.KafkaError._UNKNOWN_PARTITION,
        confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
        confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
        confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
    }
)


def producer_config(
    bootstrap: str,
    security: KafkaSecurity | None,
    *,
    linger_seconds: float,
    batch_bytes: int,
    max_request_bytes: int,
) -> dict[str, Any]:
    """librdkafka's settings for the stages' producer, as the aiokafka one is set (hub.streams.app)."""
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        # Kafka's Java client's (and aiokafka's) partitioning of keyed records: the same partitions.
        "partitioner": "murmur2_random",
        "linger.ms": linger_seconds * 1000.0,
        "batch.size": batch_bytes,
        "message.max.bytes": max_request_bytes,
        # Records of the hub's largest (16 MiB) fit in librdkafka's queue with room for a batch's others.
        "queue.buffering.max.kbytes": 4 * max_request_bytes // 1024,
        "compression.type": "none",
        # Its log lines through the hub's logging (served by the loop's poll): redacted, JSON, and a
        # broker outage folded into two events like the other clients' (hub.kafka.outage).
        "logger": logging.getLogger("librdkafka"),
        **(security.librdkafka() if security is not None else {}),
    }


class NativeProducer:
    """Sends records with librdkafka; their delivery reports are served on the loop that sent them.

    No thread of ours: librdkafka sends in its own, and the loop asks it for delivery reports (a
    non-blocking ``poll``) every :data:`PUMP_SECONDS` while records are in flight, every
    :data:`IDLE_SECONDS` otherwise (its logs and errors come that way too). A thread blocked in
    ``poll`` cost the worker more than it saved: each report woke it, took the interpreter's lock
    from the loop and woke the loop in turn (10 % of a worker's CPU, docs/PERFORMANCE.md, session 17).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = confluent_kafka.Producer(config)
        self._unsettled: set[asyncio.Future[Delivered]] = set()
        self._pump: asyncio.Task[None] | None = None
        #: Set by each send: the loop's next look for reports comes within PUMP_SECONDS, not IDLE_SECONDS.
        self._sent = asyncio.Event()
        self._closed = False

    async def _serve_reports(self) -> None:
        # Delivery callbacks run inside poll(), on this loop: they settle the futures directly.
        while not self._closed:
            self._producer.poll(0)
            if self._unsettled:
                await asyncio.sleep(PUMP_SECONDS)
                continue
            self._sent.clear()
            with contextlib.suppress(TimeoutError):  # a send wakes it at once
                await asyncio.wait_for(self._sent.wait(), IDLE_SECONDS)

    def _on_delivery(self, future: asyncio.Future[Delivered], error: Any, message: Any) -> None:
        self._unsettled.discard(future)
        if future.done():
            return
        if error is not None:
            future.set_exception(NativeSendError(error))
        else:
            _, timestamp = message.timestamp()
            future.set_result(Delivered(message.topic(), message.partition(), message.offset(), timestamp))

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> asyncio.Future[Delivered]:
        """Hand one record over; the future of its acknowledgement.

        Raises :class:`NativeSendError` at once for a record librdkafka refuses before sending it
        (larger than ``message.max.bytes``, an unknown partition).
        """
        if self._closed:
            raise RuntimeError("the producer is closed")
        if self._pump is None:
            self._pump = asyncio.create_task(self._serve_reports(), name="hub-producer-reports")
        future: asyncio.Future[Delivered] = asyncio.get_running_loop().create_future()
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    partition=-1 if partition is None else partition,
                    headers=list(headers),
                    on_delivery=partial(self._on_delivery, future),
                )
            except BufferError:  # librdkafka's queue is full: serve reports, let its threads send
                self._producer.poll(0)
                await asyncio.sleep(PUMP_SECONDS)
                continue
            except confluent_kafka.KafkaException as exc:
                raise NativeSendError(exc.args[0]) from None
            break
        self._unsettled.add(future)
        self._sent.set()
        return future

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged or has failed."""
        pending = [f for f in self._unsettled if not f.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self, timeout: float = 10.0) -> None:
        """Wait (up to ``timeout`` seconds) for what is in flight, then stop serving reports.

        What is not acknowledged by then is not lost: the inputs it came from were not acknowledged
        either, and are read again by the next worker of their partitions.
        """
        pending = [f for f in self._unsettled if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        left = len(self._producer)
        if left:
            log.warning("producer.closed_with_records_queued", records=left)


def worker_producer(
    settings: Settings, *, linger_seconds: float, batch_bytes: int, max_request_bytes: int
) -> NativeProducer | None:
    """The worker's producer when the settings choose librdkafka (None: aiokafka's)."""
    if settings.worker_producer != "librdkafka":
        return None
    return NativeProducer(
        producer_config(
            settings.bootstrap_servers,
            KafkaSecurity.from_settings(settings),
            linger_seconds=linger_seconds,
            batch_bytes=batch_bytes,
            max_request_bytes=max_request_bytes,
        )
    )
