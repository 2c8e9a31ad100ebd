"""The ingest topic as a transit buffer whose cleartext leaves the broker's disks within a bound.

Sources sign, they do not encrypt, so ``hub.ingest.v1`` holds their bytes in the clear. Once the
workers' group has committed past a record, its content lives on only encrypted downstream: the
record can go. Deleting it (``DeleteRecords``) only moves the partition's log start offset, though:
the broker removes a segment file once the whole segment lies below it (its retention thread, every
``log.retention.check.interval.ms``, then ``file.delete.delay.ms`` later), and never the open
(active) segment, which it closes (rolls) only when something is appended after ``segment.ms``. A
quiet partition would keep its last inputs on disk until the topic's retention (7 days). So each
purge round also appends, to every processed partition whose segment is due, the one thing no
consumer ever receives: the marker of an empty, aborted transaction. The broker rolls the segment
for it, and the round deletes up to it. What follows (docs/SECURITY.md, "Erasure with a bound")::

    HUB_ERASURE_BOUND_SECONDS = 2 x segment.ms + segment.ms / 20 + HUB_INGEST_PURGE_SECONDS
                                + log.retention.check.interval.ms + file.delete.delay.ms

The hub derives ``segment.ms`` and ``file.delete.delay.ms`` of the ingest topic from the bound.
`hub erase` runs a round at once; every worker runs one every ``HUB_INGEST_PURGE_SECONDS``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hub.errors import BrokerError, ConfigError
from hub.logging import get_logger

log = get_logger(__name__)

#: Kafka's default ``log.retention.check.interval.ms``, assumed when the brokers' cannot be read.
DEFAULT_RETENTION_CHECK_MS = 300_000
#: Kafka's default ``file.delete.delay.ms``: kept unless the bound is short (a sixtieth of it at most).
MAX_FILE_DELETE_DELAY_MS = 60_000
#: A roll is due ``segment.ms`` plus a twentieth of it after the newest timestamp of the partition: the
#: twentieth is slack for the clocks of the hub's hosts and the brokers.
SLACK_FRACTION = 20
#: The shortest ``segment.ms`` the bound may leave: below it the broker would roll for every input.
MIN_SEGMENT_MS = 1_000
#: The DLQ's segments roll daily: a reject (sealed) leaves the disks at most a day after its
#: retention ends, instead of Kafka's default week.
DLQ_SEGMENT_MS = 24 * 3600 * 1000
#: How long a round waits for the broker to answer a probe, to write its markers.
_PROBE_SECONDS = 10.0
_MARKER_SECONDS = 30.0

#: Per process: the committed offset of each ingest partition when this process last rolled it. A
#: partition needs a roll again only once the group has processed something since (the markers are
#: never committed, so an idle partition is rolled once, not once per round). Empty at start: a
#: process does not know what came before it, so it rolls each partition once when due.
_ROLLED: dict[tuple[str, str, int], int] = {}
_ROLLED_LOCK = threading.Lock()
#: The transactional id of this process's markers (``<app id>-ingest-roll-<random>``): one per
#: process, so two workers never fence each other.
_ROLLER = uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class CleartextBound:
    """How ``HUB_ERASURE_BOUND_SECONDS`` is shared out between the steps that remove a processed input."""

    bound_ms: int
    #: ``HUB_INGEST_PURGE_SECONDS``: how often a worker deletes and rolls.
    purge_ms: int
    #: The brokers' ``log.retention.check.interval.ms``.
    check_ms: int

    @property
    def delete_delay_ms(self) -> int:
        """The ingest topic's ``file.delete.delay.ms``."""
        return min(MAX_FILE_DELETE_DELAY_MS, self.bound_ms // 60)

    @property
    def segment_ms(self) -> int:
        """The ingest topic's ``segment.ms``: what the bound leaves, shared as 2 + 1/20 segments."""
        rest = self.bound_ms - self.purge_ms - self.check_ms - self.delete_delay_ms
        return rest * SLACK_FRACTION // (2 * SLACK_FRACTION + 1)

    def topic_configs(self) -> dict[str, str]:
        """The ingest topic's configs that the bound rests on."""
        return {"segment.ms": str(self.segment_ms), "file.delete.delay.ms": str(self.delete_delay_ms)}


def cleartext_bound(*, bound_seconds: float, purge_seconds: float, check_ms: int) -> CleartextBound:
    """The bound's shares; ConfigError when the purge is off or the bound too short for the rest."""
    bound = CleartextBound(round(bound_seconds * 1000), round(purge_seconds * 1000), check_ms)
    if purge_seconds <= 0:
        raise ConfigError(
            "HUB_INGEST_PURGE_SECONDS is 0: nothing deletes processed ingest records, so their "
            f"cleartext cannot leave the broker's disks within HUB_ERASURE_BOUND_SECONDS ({bound_seconds:g})",
            hint="set HUB_INGEST_PURGE_SECONDS to a few minutes (300 by default)",
        )
    if bound.segment_ms < MIN_SEGMENT_MS:
        raise ConfigError(
            f"HUB_ERASURE_BOUND_SECONDS ({bound_seconds:g}) is too short for HUB_INGEST_PURGE_SECONDS "
            f"({purge_seconds:g}) and the brokers' log.retention.check.interval.ms ({check_ms}): "
            "the ingest topic's segments would roll for every input",
            hint="raise HUB_ERASURE_BOUND_SECONDS, or lower HUB_INGEST_PURGE_SECONDS or the brokers' "
            "log.retention.check.interval.ms",
        )
    return bound


def retention_check_ms(admin: Any) -> int | None:
    """The largest ``log.retention.check.interval.ms`` of the cluster's brokers; None if unreadable.

    Reading broker configs needs DESCRIBE_CONFIGS on the cluster (``hub acl sync`` grants it).
    """
    from kafka.admin import ConfigResource, ConfigResourceType  # noqa: PLC0415
    from kafka.errors import KafkaError  # noqa: PLC0415

    key = "log.retention.check.interval.ms"
    try:
        brokers = [str(b.get("node_id", b.get("broker_id"))) for b in admin.describe_cluster()["brokers"]]
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, broker, [key]) for broker in brokers],
            config_filter="all",
        ).get("broker", {})
        values = [int((described.get(broker, {}).get(key) or {})["value"]) for broker in brokers]
    except (KafkaError, KeyError, TypeError, ValueError):
        return None
    return max(values) if values else None


def bound_for(
    bootstrap: str, *, bound_seconds: float, purge_seconds: float, security: Any = None
) -> CleartextBound:
    """The bound's shares with the brokers' own retention check interval (Kafka's default if unreadable)."""
    from hub.kafka.admin import admin_client  # noqa: PLC0415

    admin = admin_client(bootstrap, security=security)
    try:
        check_ms = retention_check_ms(admin)
    finally:
        admin.close()
    if check_ms is None:
        log.warning(
            "erasure.check_interval_unknown",
            assumed_ms=DEFAULT_RETENTION_CHECK_MS,
            hint="grant DESCRIBE_CONFIGS on the cluster (`hub acl sync`); Kafka's default is assumed",
        )
        check_ms = DEFAULT_RETENTION_CHECK_MS
    return cleartext_bound(bound_seconds=bound_seconds, purge_seconds=purge_seconds, check_ms=check_ms)


@dataclass(frozen=True)
class IngestPurge:
    """What one purge round did to the ingest topic: offsets and times only."""

    #: Offsets deleted below (processed records, and the transaction markers after them).
    deleted: int
    #: Records not yet processed: in the clear until a worker processes them and a round follows.
    left: int
    #: Partitions whose open segment was closed by a marker in this round.
    rolled: tuple[int, ...] = ()
    #: Partitions that may still hold processed records in their open segment, and when (Unix ms)
    #: their roll falls due; a worker's round appends the marker within a purge interval after that.
    roll_due_ms: dict[int, int] = field(default_factory=dict)


def purge_processed_ingest(bootstrap: str, topic: str, group: str, *, wait: float) -> tuple[int, int]:
    """One round of :func:`purge_ingest`: ``(deleted, left)``, for the workers' timer."""
    done = purge_ingest(bootstrap, topic, group, wait=wait)
    return done.deleted, done.left


def purge_ingest(
    bootstrap: str,
    topic: str,
    group: str,
    *,
    wait: float,
    clock: Callable[[], float] = time.time,
) -> IngestPurge:
    """Delete what the worker group has processed, and roll each processed partition whose roll is due.

    Waits up to ``wait`` seconds for the group to process up to the end offsets seen at the start,
    so inputs just sent are deleted too. Everything below a partition's first unprocessed record is
    deleted: processed records, and transaction markers (they are not data and are never
    committed). A roll is due once the partition's newest timestamp is ``segment.ms`` (and the slack)
    old: then the marker's append makes the broker close the segment, whatever it holds.
    """
    from kafka import TopicPartition  # noqa: PLC0415
    from kafka.errors import KafkaError  # noqa: PLC0415

    from hub.kafka.admin import admin_client  # noqa: PLC0415
    from hub.kafka.clients import new_consumer  # noqa: PLC0415

    consumer = new_consumer(bootstrap, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest")
    admin = admin_client(bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return IngestPurge(0, 0)
        first = consumer.beginning_offsets(partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + wait
        while True:
            committed = _committed(admin, group, partitions)
            start = {tp: max(first[tp], committed[tp]) for tp in partitions}
            clear_to = _first_unprocessed(consumer, start, end)
            if all(clear_to[tp] >= end[tp] for tp in partitions) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        deleted = _delete_below(admin, first, clear_to)
        left = sum(end[tp] - clear_to[tp] for tp in partitions)
        processed = [tp for tp in partitions if clear_to[tp] >= end[tp] > 0]
        with _ROLLED_LOCK:
            unrolled = [tp for tp in processed if _ROLLED.get(_key(bootstrap, tp)) != committed[tp]]
        if not unrolled:
            return IngestPurge(deleted, left)
        segment_ms = _segment_ms(admin, topic)
        newest = admin.list_partition_offsets({tp: _max_timestamp() for tp in unrolled})
        # A partition without a timestamp has no record left on disk: nothing to roll.
        empty = [tp for tp in unrolled if newest[tp].timestamp < 0]
        with _ROLLED_LOCK:
            _ROLLED.update({_key(bootstrap, tp): committed[tp] for tp in empty})
        unrolled = [tp for tp in unrolled if tp not in empty]
        due_at = {tp: newest[tp].timestamp + segment_ms + segment_ms // SLACK_FRACTION for tp in unrolled}
        now_ms = round(clock() * 1000)
        due = [tp for tp in unrolled if due_at[tp] < now_ms]
        waiting = {tp.partition: due_at[tp] for tp in unrolled if tp not in due}
        if not due or not _roll(bootstrap, group, due, consumer):
            return IngestPurge(deleted, left, roll_due_ms=waiting)
        with _ROLLED_LOCK:
            _ROLLED.update({_key(bootstrap, tp): committed[tp] for tp in due})
        # Below the markers now: the closed segments lie wholly under the log start, and go.
        after = consumer.end_offsets(due)
        marked = {tp: clear_to[tp] for tp in due}
        deleted += _delete_below(admin, marked, _first_unprocessed(consumer, marked, after))
        log.info("ingest.rolled", partitions=[tp.partition for tp in due])
        return IngestPurge(deleted, left, tuple(tp.partition for tp in due), waiting)
    except KafkaError as exc:
        raise BrokerError(f"cannot purge processed records of {topic}: {type(exc).__name__}") from exc
    finally:
        consumer.close()
        admin.close()


def _key(bootstrap: str, tp: Any) -> tuple[str, str, int]:
    return bootstrap, tp.topic, tp.partition


def _max_timestamp() -> Any:
    from kafka.admin import OffsetSpec  # noqa: PLC0415

    return OffsetSpec.MAX_TIMESTAMP


def _committed(admin: Any, group: str, partitions: list[Any]) -> dict[Any, int]:
    """The group's committed offset of each partition (0 when it never committed)."""
    offsets = admin.list_group_offsets({group: partitions}).get(group, {})
    return {tp: max(0, getattr(offsets.get(tp), "offset", -1)) for tp in partitions}


def _first_unprocessed(consumer: Any, start: dict[Any, int], end: dict[Any, int]) -> dict[Any, int]:
    """Per partition, the offset of the first record in ``[start, end)``, or ``end`` when there is none.

    Transaction markers between are not records: the consumer steps over them. A partition the broker
    does not answer for in time keeps ``start`` (nothing after it is taken as processed).
    """
    found = {tp: max(start[tp], end[tp]) for tp in start if start[tp] >= end[tp]}
    pending = {tp for tp in start if start[tp] < end[tp]}
    if not pending:
        return found
    consumer.assign(sorted(pending, key=lambda tp: tp.partition))
    for tp in pending:
        consumer.seek(tp, start[tp])
    deadline = time.monotonic() + _PROBE_SECONDS
    while pending:
        for tp, records in consumer.poll(timeout_ms=200).items():
            offsets = [record.offset for record in records if record.offset >= start[tp]]
            if tp in pending and offsets:
                found[tp] = min(offsets[0], end[tp])
                pending.discard(tp)
                consumer.pause(tp)
        for tp in list(pending):
            if consumer.position(tp) >= end[tp]:
                found[tp] = end[tp]
                pending.discard(tp)
        if pending and time.monotonic() >= deadline:
            found |= {tp: start[tp] for tp in pending}
            break
    consumer.assign([])
    return found


def _delete_below(admin: Any, first: dict[Any, int], targets: dict[Any, int]) -> int:
    """DeleteRecords below each target past the partition's first offset; return how many offsets."""
    wanted = {tp: offset for tp, offset in targets.items() if offset > first[tp]}
    if wanted:
        admin.delete_records(wanted, timeout_ms=30_000)
    return sum(offset - first[tp] for tp, offset in wanted.items())


def _segment_ms(admin: Any, topic: str) -> int:
    """The topic's ``segment.ms`` as the broker applies it."""
    from kafka.admin import ConfigResource, ConfigResourceType  # noqa: PLC0415

    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, ["segment.ms"])], config_filter="all"
    ).get("topic", {})
    return int(described[topic]["segment.ms"]["value"])


def _roll(bootstrap: str, group: str, partitions: list[Any], consumer: Any) -> bool:
    """Append a transaction marker to each partition and wait until it is there; False if it failed.

    A failure is logged, not raised: the round's deletions stand, and the next round tries again.
    """
    from kafka.errors import KafkaError  # noqa: PLC0415

    before = consumer.end_offsets(partitions)
    try:
        append_transaction_markers(bootstrap, f"{group}-ingest-roll-{_ROLLER}", partitions)
        deadline = time.monotonic() + _MARKER_SECONDS
        # The coordinator writes the markers after it answered the abort: wait for them to land.
        while any(consumer.end_offsets(partitions)[tp] <= before[tp] for tp in partitions):
            if time.monotonic() >= deadline:
                raise BrokerError("the transaction markers did not reach the ingest partitions in time")
            time.sleep(0.1)
    except (KafkaError, BrokerError) as exc:
        log.warning(
            "ingest.roll_failed",
            partitions=[tp.partition for tp in partitions],
            error=type(exc).__name__,
            hint="the worker principal needs WRITE on its transactional ids (`hub acl sync`)",
        )
        return False
    return True


def append_transaction_markers(
    bootstrap: str, transactional_id: str, partitions: Iterable[Any], *, security: Any = None
) -> None:
    """Open a transaction over ``partitions``, write nothing, abort it: each gets an ABORT marker.

    The marker is a control record: every Kafka client steps over it, whatever its isolation level,
    so no consumer receives anything, while the broker appends a batch, and an append is what makes
    it roll a segment older than ``segment.ms``. kafka-python adds a partition to a transaction only
    when a record is sent to it; its transaction manager (kafka-python is pinned to 3.0) is asked
    directly here, and its sender woken to send the AddPartitionsToTxn request.
    """
    from kafka import KafkaProducer  # noqa: PLC0415

    from hub.kafka.security import resolve  # noqa: PLC0415

    wanted = list(partitions)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id,
        client_id="hub-ingest-roll",
        **resolve(security).kafka_python(),
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        manager = producer._transaction_manager  # kafka-python internals: see the docstring
        for tp in wanted:
            manager.maybe_add_partition_to_transaction(tp)
        producer._sender.wakeup()
        deadline = time.monotonic() + _MARKER_SECONDS
        while not all(manager.is_partition_added(tp) for tp in wanted):
            if manager.has_error():
                raise manager.last_error
            if time.monotonic() >= deadline:
                raise BrokerError("the transaction coordinator did not add the ingest partitions in time")
            time.sleep(0.01)
        producer.abort_transaction()
    finally:
        producer.close(timeout=10)
