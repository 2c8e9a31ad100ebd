"""The stages' producer on librdkafka (hub.kafka.native_producer), on a real broker: keyed records go to
the partitions aiokafka (faust's producer, and Kafka's Java client) sends them to, so the tables stay
co-partitioned with their events; what it acknowledges is in the log as sent; a record too large for
Kafka is refused for good, not resent forever."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from hub.kafka.clients import read
from hub.kafka.native_producer import NativeProducer, NativeSendError, producer_config
from hub.records import Outgoing
from hub.streams.delivery import deliver, is_permanent

CreateTopics = Callable[..., None]
PARTITIONS = 6


def native(bootstrap: str, *, max_request_bytes: int = 1024 * 1024) -> NativeProducer:
    return NativeProducer(
        producer_config(
            bootstrap,
            None,
            linger_seconds=0.002,
            batch_bytes=1024 * 1024,
            max_request_bytes=max_request_bytes,
        )
    )


def test_keyed_records_go_where_aiokafka_sends_them(
    kafka_bootstrap: str, create_topics: CreateTopics, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("partitions")
    create_topics(kafka_bootstrap, [topic], partitions=PARTITIONS)
    keys = [f"pt-{n:04d}".encode() for n in range(300)]

    async def main() -> tuple[list[int], list[int]]:
        reference = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
        await reference.start()
        try:
            theirs = [(await (await reference.send(topic, b"{}", key=key))).partition for key in keys]
        finally:
            await reference.stop()
        producer = native(kafka_bootstrap)
        try:
            futures = [await producer.send(topic, key, b"{}") for key in keys]
            ours = [delivered.partition for delivered in await asyncio.gather(*futures)]
        finally:
            await producer.close()
        return theirs, ours

    theirs, ours = asyncio.run(main())
    assert len(set(theirs)) == PARTITIONS, "the keys spread over every partition"
    assert ours == theirs


def test_what_it_acknowledges_is_in_the_log_as_sent_and_too_large_is_refused_for_good(
    kafka_bootstrap: str, create_topics: CreateTopics, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("delivered")
    create_topics(kafka_bootstrap, [topic], partitions=2)
    records = [
        Outgoing(topic, f"k{n}".encode(), f'{{"n":{n}}}'.encode(), (("hub-event-id", f"e{n}".encode()),))
        for n in range(50)
    ]
    too_large = Outgoing(topic, b"big", b"x" * (2 * 1024 * 1024))

    async def main() -> list[str]:
        producer = native(kafka_bootstrap)
        try:

            async def send(out: Outgoing) -> asyncio.Future[object]:
                return await producer.send(out.topic, out.key, out.value, headers=out.headers)  # type: ignore[return-value]

            refused = await deliver(send, [*records[:25], too_large, *records[25:]], stage="test")
            await producer.flush()
        finally:
            await producer.close()
        return [r.error for r in refused if r.record is too_large]

    assert asyncio.run(main()) == ["NativeSendError"]
    found = [r for r in read(kafka_bootstrap, [topic], idle_timeout=5.0) if r.topic == topic]
    assert sorted((r.key, r.value, r.headers) for r in found) == sorted(
        (r.key, r.value, r.headers) for r in records
    )
    for partition in {r.partition for r in found}:
        ours = [r for r in found if r.partition == partition]
        assert [r.offset for r in ours] == sorted(r.offset for r in ours)


def test_a_record_larger_than_it_sends_is_permanent(kafka_bootstrap: str) -> None:
    async def main() -> None:
        producer = native(kafka_bootstrap)
        try:
            with pytest.raises(NativeSendError) as raised:
                await producer.send("any", b"k", b"x" * (2 * 1024 * 1024))
            assert is_permanent(raised.value)
        finally:
            await producer.close()

    asyncio.run(main())
