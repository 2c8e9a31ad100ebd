"""The session broker carries records end to end, and the embedded broker starts and stops cleanly."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from hub.broker.embedded import BrokerLayout, EmbeddedBroker, probe_metadata
from hub.kafka.clients import producer, read
from hub.settings import Settings


def own_layout(tmp_path: Path) -> BrokerLayout:
    # A broker directory of its own; jars come from the shared cache, as for the session broker.
    return BrokerLayout(root=tmp_path / "broker", jars_dir=Settings().state_dir.expanduser() / "jars")


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def round_trip(bootstrap: str, topic: str, group: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"value", key=b"key", headers=[("hub-test", b"1")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=60)
    finally:
        await consumer.stop()
    return record.key, record.value, list(record.headers)


def test_idempotent_producer_and_group_consumer_round_trip(
    kafka_bootstrap: str, unique_name: Callable[..., str], create_topics: Callable[..., None]
) -> None:
    """A record sent with acks=all and idempotence comes back, headers included, to a consumer group."""
    topic = unique_name("t")
    create_topics(kafka_bootstrap, [topic], partitions=3)
    key, value, headers = asyncio.run(round_trip(kafka_bootstrap, topic, unique_name("g")))
    assert (key, value, headers) == (b"key", b"value", [("hub-test", b"1")])


def test_stop_leaves_no_java_process_and_no_pid_file(tmp_path: Path) -> None:
    """stop() ends the broker's JVM and removes its pid file; the broker no longer answers."""
    broker = EmbeddedBroker(own_layout(tmp_path), port=0)
    bootstrap = broker.start()
    pid = broker.pid
    assert pid is not None
    assert broker.layout.pid_file.read_text().strip() == str(pid)
    assert probe_metadata(bootstrap) == 1

    assert broker.stop() == pid
    assert not process_exists(pid)
    assert not broker.layout.pid_file.exists()
    assert not broker.status().running


def test_second_start_reports_the_running_broker(tmp_path: Path) -> None:
    """Starting from a directory whose broker already runs returns that broker instead of a second one."""
    first = EmbeddedBroker(own_layout(tmp_path), port=0)
    with first:
        with EmbeddedBroker(own_layout(tmp_path), port=0) as second:
            assert second.bootstrap == first.bootstrap
            assert (second.started, second.pid) == (False, first.pid)
        assert first.status().running  # leaving the reused broker's context did not stop it
    assert not first.status().running


def test_a_read_with_an_idle_pause_reads_the_whole_backlog_first(
    kafka_bootstrap: str, unique_name: Callable[..., str], create_topics: Callable[..., None]
) -> None:
    """`read` (hub tail --no-follow, the tests' readers) ends on an idle pause only once caught up.

    A pause of zero ends the read at the first poll that brings nothing; before, a consumer whose first
    fetch came later than the pause returned part of a topic, or none of it, as if that were all.
    """
    topic = unique_name("t")
    create_topics(kafka_bootstrap, [topic], partitions=3)
    sender = producer(kafka_bootstrap)
    try:
        for index in range(300):
            sender.send(topic, key=str(index).encode(), value=str(index).encode())
        sender.flush(timeout=60)
    finally:
        sender.close()
    values = sorted(int(record.value or b"") for record in read(kafka_bootstrap, [topic], idle_timeout=0.0))
    assert values == list(range(300))
    # Started at the end, there is no backlog: the pause ends the read with nothing.
    assert list(read(kafka_bootstrap, [topic], from_beginning=False, idle_timeout=0.0)) == []
