"""kafka-python clients for the CLI, configured as DESIGN.md section 4 asks (acks=all, idempotent).

Every client takes ``security`` (None: the process's own, :func:`hub.kafka.security.default_security`).
:func:`read` follows topics; :func:`read_to_end` reads them whole, to the end offsets taken when it
starts (the operator commands: ``hub trace``, ``hub consent show``, ``hub dlq``, ``hub erase``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from hub.errors import BrokerError
from hub.kafka.security import KafkaSecurity, resolve

if TYPE_CHECKING:
    from rich.progress import Progress

T = TypeVar("T")


async def in_daemon_thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` in a daemon thread, awaited: a blocking kafka-python call of a worker.

    Not ``asyncio.to_thread``: its threads are joined when the process exits, so a worker asked to
    stop while one of them waited on the broker (a request times out after 30 s) went on running
    that long after it had closed everything (a SIGTERM'ed worker seen hanging 30 s in CI). What runs
    here is safe to abandon (deleting processed ingest records, reading a chain back).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = call(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task, which decides
            error = exc
            loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name=f"hub-{getattr(call, '__name__', 'call')}", daemon=True).start()
    return await future


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

    Stops after ``idle_timeout`` seconds without a record once every record that was there when the
    read began has been read (None: follow forever), or at ``deadline`` (a ``time.monotonic()``
    value), whichever comes first.
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
        # Idle only counts once caught up: a cold consumer's first fetches can take longer than the
        # pause on a busy broker, and stopping then would pass a topic's backlog off as its end.
        backlog = consumer.end_offsets(tps) if idle_timeout is not None else {}
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if idle_timeout is not None and not backlog and now - last > idle_timeout:
                return
            batch = consumer.poll(timeout_ms=200)
            for messages in batch.values():
                for m in messages:
                    last = time.monotonic()
                    yield Record(
                        m.topic, m.partition, m.offset, m.timestamp, m.key, m.value,
                        tuple((k, v or b"") for k, v in (m.headers or ())),
                    )  # fmt: skip
            for tp, stop in list(backlog.items()):
                if consumer.position(tp) >= stop:  # gaps (compaction, transaction markers) included
                    del backlog[tp]
    except KafkaError as exc:
        raise BrokerError(f"cannot read {list(topics)}: {type(exc).__name__}") from exc
    finally:
        consumer.close()


# -- reading topics to their end ------------------------------------------------------------------------


def existing_topics(bootstrap: str, *, security: KafkaSecurity | None = None) -> set[str]:
    """Every topic the broker lists."""
    consumer = new_consumer(
        bootstrap, security=security, enable_auto_commit=False, group_id=None, client_id="hub-ops"
    )
    try:
        return set(consumer.topics())
    except KafkaError as exc:
        raise BrokerError(f"cannot list topics at {bootstrap}: {type(exc).__name__}") from exc
    finally:
        consumer.close()


def require_topics(existing: set[str], names: Iterable[str]) -> None:
    """Raise a BrokerError naming the missing topics (wrong prefix or app id, or a hub never started)."""
    missing = [name for name in names if name not in existing]
    if missing:
        raise BrokerError(
            f"topic{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found on the broker",
            hint="check HUB_TOPIC_PREFIX and HUB_APP_ID, or create the topics with `hub topics create`",
        )


def read_to_end(
    bootstrap: str,
    topics: Sequence[str],
    *,
    keep: Callable[[Record], bool] = lambda _record: True,
    progress: Progress | None = None,
    description: str = "reading",
    deadline: float | None = None,
    opener: Callable[[Record], Record] | None = None,
    security: KafkaSecurity | None = None,
) -> dict[str, list[Record]]:
    """The kept records of each topic, from its first offset to the end offsets taken at the start.

    ``opener`` turns each record into the one ``keep`` and the result see: the operator commands open
    encrypted records with it (``hub.ops.cli.record_opening``); without it records stay as read.

    No consumer group: partitions are assigned and sought directly, nothing is committed. Stops when
    every partition's position reached its end offset (gaps from compaction or transaction markers
    included); a ``deadline`` (``time.monotonic()``) that passes first is a BrokerError.
    """
    result: dict[str, list[Record]] = {topic: [] for topic in topics}
    consumer = new_consumer(
        bootstrap, security=security, enable_auto_commit=False, group_id=None, client_id="hub-ops"
    )
    try:
        begin, end = _assign(consumer, topics)
        done = dict(begin)
        task = (
            progress.add_task(description, total=sum(end[tp] - begin[tp] for tp in end)) if progress else None
        )
        while end:
            if deadline is not None and time.monotonic() > deadline:
                raise BrokerError(
                    f"reading {', '.join(topics)} took longer than allowed; the result would be incomplete",
                    hint="retry with a larger --timeout",
                )
            for raw in _below_end(consumer.poll(timeout_ms=500), end):
                record = opener(raw) if opener is not None else raw
                if keep(record):
                    result[record.topic].append(record)
            for tp, stop in list(end.items()):
                position = min(consumer.position(tp), stop)
                if progress is not None and task is not None:
                    progress.advance(task, position - done[tp])
                done[tp] = position
                if position >= stop:
                    del end[tp]
                    consumer.pause(tp)
        return result
    except KafkaError as exc:
        raise BrokerError(f"cannot read {', '.join(topics)}: {type(exc).__name__}") from exc
    finally:
        consumer.close()


def _assign(consumer: Any, topics: Sequence[str]) -> tuple[dict[Any, int], dict[Any, int]]:
    """Assign every non-empty partition of ``topics`` at its first offset; ``(begin, end)`` offsets."""
    partitions: list[Any] = []
    for topic in topics:
        found = consumer.partitions_for_topic(topic)
        if not found:
            require_topics(set(), [topic])
        partitions.extend(TopicPartition(topic, p) for p in sorted(found))
    first = consumer.beginning_offsets(partitions)
    last = consumer.end_offsets(partitions)
    end = {tp: last[tp] for tp in partitions if last[tp] > first[tp]}
    begin = {tp: first[tp] for tp in end}
    consumer.assign(list(end))
    for tp, offset in begin.items():
        consumer.seek(tp, offset)
    return begin, end


def _below_end(batch: dict[Any, list[Any]], end: dict[Any, int]) -> Iterator[Record]:
    """A poll's messages below each partition's end offset, as :class:`Record`."""
    for tp, messages in batch.items():
        stop = end.get(tp, -1)
        for message in messages:
            if message.offset >= stop:
                break
            yield Record(
                message.topic, message.partition, message.offset, message.timestamp,
                message.key, message.value,
                tuple((k, v or b"") for k, v in (message.headers or ())),
            )  # fmt: skip
