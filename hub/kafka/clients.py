"""kafka-python clients for the CLI, configured as DESIGN.md section 4 asks (acks=all, idempotent).

Every client takes ``security`` (None: the process's own, :func:`hub.kafka.security.default_security`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from hub.errors import BrokerError
from hub.kafka.security import KafkaSecurity, resolve


def producer(
    bootstrap: str, *, max_request_size: int = 4 * 1024 * 1024, security: KafkaSecurity | None = None
) -> Any:
    """A producer whose acknowledged sends survive a broker failover."""
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=max_request_size,
            client_id="hub-cli",
            **resolve(security).kafka_python(),
        )
    except KafkaError as exc:  # kafka-python 3 raises a connection error subclass
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap}",
            hint="start one with `hub broker start`, or set HUB_BOOTSTRAP_SERVERS",
        ) from exc


def new_consumer(bootstrap: str, *, security: KafkaSecurity | None = None, **options: Any) -> Any:
    """A kafka-python consumer with this process's security (``options`` as KafkaConsumer takes them)."""
    try:
        return KafkaConsumer(bootstrap_servers=bootstrap, **(options | resolve(security).kafka_python()))
    except KafkaError as exc:  # kafka-python 3 raises a connection error subclass
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap} ({type(exc).__name__})",
            hint="start one with `hub broker start`, or set HUB_BOOTSTRAP_SERVERS (and HUB_KAFKA_* on a "
            "secured broker)",
        ) from exc


def end_offsets(bootstrap: str, topic: str, *, security: KafkaSecurity | None = None) -> dict[int, int]:
    """The next offset of every partition of a topic (where a reader from 'now' starts)."""
    consumer = new_consumer(bootstrap, security=security, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


@dataclass(frozen=True)
class Record:
    """One record as read back by the CLI."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def json_value(self) -> Any:
        """The value as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.value) if self.value else None
        except (ValueError, UnicodeDecodeError):
            return None


def read(  # noqa: PLR0912 - one loop with its stop conditions reads better than three helpers
    bootstrap: str,
    topics: Iterable[str],
    *,
    start: dict[str, dict[int, int]] | None = None,
    from_beginning: bool = True,
    idle_timeout: float = 5.0,
    deadline: float | None = None,
    security: KafkaSecurity | None = None,
) -> Iterator[Record]:
    """Read records without a consumer group: from ``start`` offsets, the beginning or the end.

    Stops after ``idle_timeout`` seconds without a record (None: follow forever) or at ``deadline``
    (a ``time.monotonic()`` value).
    """
    consumer = new_consumer(bootstrap, security=security, enable_auto_commit=False, group_id=None)
    try:
        tps: list[TopicPartition] = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                raise BrokerError(f"topic {topic} does not exist", hint="check the name with `hub status`")
            tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
        consumer.assign(tps)
        for tp in tps:
            if start is not None and tp.partition in start.get(tp.topic, {}):
                consumer.seek(tp, start[tp.topic][tp.partition])
            elif from_beginning:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek_to_end(tp)
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if idle_timeout is not None and now - last > idle_timeout:
                return
            batch = consumer.poll(timeout_ms=200)
            for messages in batch.values():
                for m in messages:
                    last = time.monotonic()
                    yield Record(
                        m.topic, m.partition, m.offset, m.timestamp, m.key, m.value,
                        tuple((k, v or b"") for k, v in (m.headers or ())),
                    )  # fmt: skip
    except KafkaError as exc:
        raise BrokerError(f"cannot read {list(topics)}: {type(exc).__name__}") from exc
    finally:
        consumer.close()
