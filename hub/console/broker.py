"""What the broker says about the hub: reachability, topics, consumer lag, and the latest rejects.

Blocking kafka-python calls, for ``hub status`` (once) and the console (each refresh, in one thread).
Lag is ``end offset - committed offset`` per group and partition; a partition the group never
committed counts from the log's first offset, since the hub's consumers start at the earliest record
(``auto_offset_reset=earliest``): what is there is what the group still has to read. DLQ entries carry
the error code, the source id, the time and the Kafka coordinates only: never the body, the detail
text or the message id (either may quote what the source sent).
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from hub.broker.embedded import probe_metadata, probe_tls
from hub.errors import HubError
from hub.ingest.pipeline import printable_id
from hub.kafka.security import default_security
from hub.normalise.time import utc_iso
from hub.records import ERROR_CODE_HEADER, SOURCE_HEADER, header, headers_of
from hub.topics import TopicNames

#: Rejects the console keeps and shows (newest first).
LATEST_REJECTS = 20
#: The broker must answer a metadata probe this fast to count as reachable.
PROBE_SECONDS = 3.0
#: kafka-python's per-request limit here: a stalled broker must not stall the console for minutes.
REQUEST_TIMEOUT_MS = 8000


def hub_groups(app_id: str, topics: TopicNames) -> dict[str, tuple[str, ...]]:
    """The hub's consumer groups and the topics each reads even before it has committed anything.

    The worker's group (faust uses the app id) reads ingest, identity and share-merge (the pathway is
    decided as identity publishes it; the unsealed AuditEvents show once committed); the gateway's
    reads the alerts.
    """
    return {
        TopicNames.worker_group(app_id): (topics.ingest, topics.identity, topics.share_merge),
        TopicNames.gateway_group(app_id): (topics.alerts,),
    }


@dataclass(frozen=True)
class PartitionLag:
    """One partition a group reads: its committed offset (None: never committed), end and lag."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


@dataclass(frozen=True)
class GroupState:
    """A consumer group as the broker describes it: state and member count."""

    group: str
    state: str
    members: int


@dataclass(frozen=True)
class Reject:
    """One DLQ record as the console shows it: code, source, time, where. Nothing the source wrote."""

    code: str
    source: str
    at: str
    where: str


@dataclass(frozen=True)
class BrokerView:
    """One look at the broker; ``reachable`` False means every other field is empty."""

    bootstrap: str
    reachable: bool
    error: str | None = None
    brokers: int = 0
    expected_topics: tuple[str, ...] = ()
    missing_topics: tuple[str, ...] = ()
    lag: tuple[PartitionLag, ...] = ()
    groups: tuple[GroupState, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The view as JSON."""
        return asdict(self)

    def group_lag(self) -> dict[str, int]:
        """Total lag per group."""
        totals: dict[str, int] = {}
        for item in self.lag:
            totals[item.group] = totals.get(item.group, 0) + item.lag
        return totals


def unreachable(bootstrap: str, error: str) -> BrokerView:
    """The view of a broker that did not answer."""
    return BrokerView(bootstrap, reachable=False, error=error)


def probe(bootstrap: str, timeout: float = PROBE_SECONDS) -> tuple[int, str | None]:
    """``(brokers, None)`` if the first bootstrap address answers a metadata request, else ``(0, why)``."""
    first = bootstrap.split(",", maxsplit=1)[0].strip()
    security = default_security()
    try:
        if not security.uses_tls:
            return probe_metadata(first, timeout=timeout), None
        # A secured broker answers nothing in plaintext and lists its brokers only after SASL: the
        # handshake proves it is up, the admin client (with this process's credentials) counts them.
        if security.ca_file is not None:
            probe_tls(first, security.ca_file, timeout=timeout)
        from hub.kafka.admin import broker_count  # noqa: PLC0415 - kafka-python is slow to import

        return broker_count(bootstrap, security=security), None
    except (OSError, ValueError, HubError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def compute_lag(
    group: str,
    committed: dict[tuple[str, int], int],
    begin: dict[tuple[str, int], int],
    end: dict[tuple[str, int], int],
) -> list[PartitionLag]:
    """Lag of each ``(topic, partition)`` in ``end`` for one group (pure; negative never)."""
    rows = []
    for key in sorted(end):
        topic, partition = key
        done = committed.get(key)
        start = done if done is not None and done >= 0 else begin.get(key, 0)
        rows.append(
            PartitionLag(group, topic, partition, done if done is not None and done >= 0 else None,
                         end[key], max(0, end[key] - start))
        )  # fmt: skip
    return rows


class BrokerWatch:
    """Long-lived kafka-python clients that look at the broker for the hub; use from one thread only.

    :meth:`look` returns a :class:`BrokerView`; :meth:`read_dlq` reads the DLQ records published since
    the previous call (from the beginning the first time) into counts by code and the latest rejects.
    A failed call closes the clients; the next one reconnects.
    """

    def __init__(self, bootstrap: str, app_id: str, topics: TopicNames, expected: Sequence[str]) -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id
        self.topics = topics
        self.expected = tuple(expected)
        self.dlq_counts: Counter[str] = Counter()
        self.dlq_sources: Counter[str] = Counter()
        self.latest: deque[Reject] = deque(maxlen=LATEST_REJECTS)
        self._admin: Any = None
        self._consumer: Any = None
        self._dlq: Any = None
        self._dlq_partitions: set[int] = set()

    def _clients(self) -> tuple[Any, Any]:
        from kafka import KafkaAdminClient, KafkaConsumer  # noqa: PLC0415 - keep `hub --help` fast

        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id="hub-console",
                request_timeout_ms=REQUEST_TIMEOUT_MS,
                **default_security().kafka_python(),
            )
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                client_id="hub-console",
                request_timeout_ms=REQUEST_TIMEOUT_MS + 1000,
                **default_security().kafka_python(),
            )
        return self._admin, self._consumer

    def close(self) -> None:
        """Close every client (they reopen on the next call)."""
        for client in (self._admin, self._consumer, self._dlq):
            if client is not None:
                with contextlib.suppress(Exception):  # closing a broken client must not hide the cause
                    client.close()
        self._admin = self._consumer = self._dlq = None
        self._dlq_partitions = set()

    def look(self) -> BrokerView:
        """Reachability, missing topics, groups and lag, in a few requests."""
        from kafka import TopicPartition  # noqa: PLC0415
        from kafka.errors import KafkaError  # noqa: PLC0415

        brokers, error = probe(self.bootstrap)
        if error is not None:
            self.close()
            return unreachable(self.bootstrap, error)
        try:
            admin, consumer = self._clients()
            existing = set(admin.list_topics())
            missing = tuple(name for name in self.expected if name not in existing)
            groups = hub_groups(self.app_id, self.topics)
            offsets = admin.list_group_offsets(list(groups))
            described = admin.describe_groups(list(groups))
            lag: list[PartitionLag] = []
            for group, reads in groups.items():
                committed = {
                    (tp.topic, tp.partition): int(meta.offset)
                    for tp, meta in offsets.get(group, {}).items()
                    if tp.topic in existing
                }
                topics = sorted({*(t for t in reads if t in existing), *(t for t, _ in committed)})
                partitions = [
                    TopicPartition(topic, p)
                    for topic in topics
                    for p in sorted(consumer.partitions_for_topic(topic) or ())
                ]
                begin = {
                    (tp.topic, tp.partition): int(o)
                    for tp, o in consumer.beginning_offsets(partitions).items()
                }
                end = {(tp.topic, tp.partition): int(o) for tp, o in consumer.end_offsets(partitions).items()}
                lag += compute_lag(group, committed, begin, end)
            states = tuple(
                GroupState(group, str(info.get("group_state") or "Unknown"), len(info.get("members") or ()))
                for group, info in sorted(described.items())
            )
        except KafkaError as exc:
            self.close()
            return unreachable(self.bootstrap, type(exc).__name__)
        return BrokerView(self.bootstrap, True, None, brokers, self.expected, missing, tuple(lag), states)

    def read_dlq(self, max_records: int = 5000) -> None:
        """Read what the DLQ received since the last call (at most ``max_records`` this time)."""
        from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415
        from kafka.errors import KafkaError  # noqa: PLC0415

        try:
            if self._dlq is None:
                self._dlq = KafkaConsumer(
                    bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                    client_id="hub-console-dlq", auto_offset_reset="earliest",
                    request_timeout_ms=REQUEST_TIMEOUT_MS + 1000, **default_security().kafka_python(),
                )  # fmt: skip
            partitions = set(self._dlq.partitions_for_topic(self.topics.dlq) or ())
            if partitions != self._dlq_partitions:
                # New partitions start at their beginning; known ones keep their position.
                self._dlq.assign([TopicPartition(self.topics.dlq, p) for p in sorted(partitions)])
                self._dlq_partitions = partitions
            if not partitions:
                return
            read = 0
            while read < max_records:
                batch = self._dlq.poll(timeout_ms=200, max_records=500)
                if not batch:
                    break
                for messages in batch.values():
                    for message in messages:
                        self.count_reject(message.topic, message.partition, message.offset,
                                          message.timestamp, message.headers or ())  # fmt: skip
                        read += 1
        except KafkaError:
            self.close()

    def count_reject(
        self, topic: str, partition: int, offset: int, timestamp_ms: int, headers: Iterable[tuple[str, Any]]
    ) -> Reject:
        """Count one DLQ record and keep it among the latest."""
        reject = reject_of(topic, partition, offset, timestamp_ms, headers)
        self.dlq_counts[reject.code] += 1
        self.dlq_sources[reject.source] += 1
        self.latest.appendleft(reject)
        return reject


def reject_of(
    topic: str, partition: int, offset: int, timestamp_ms: int, headers: Iterable[tuple[str, Any]]
) -> Reject:
    """The operator's view of one DLQ record: its code, its (printable) source id, when and where."""
    pairs = headers_of(headers)
    code = printable_id(header(pairs, ERROR_CODE_HEADER)) or "(none)"
    source = printable_id(header(pairs, SOURCE_HEADER)) or "(unknown)"
    at = utc_iso(datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC))
    return Reject(code[:64], source[:64], at, f"{topic}/{partition}/{offset}")


def latest_rejects(bootstrap: str, dlq_topic: str, count: int = 5) -> list[Reject]:
    """The ``count`` newest DLQ records (by time), reading only the tail of each partition."""
    from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, client_id="hub-status",
        request_timeout_ms=REQUEST_TIMEOUT_MS + 1000, **default_security().kafka_python(),
    )  # fmt: skip
    try:
        tps = [TopicPartition(dlq_topic, p) for p in sorted(consumer.partitions_for_topic(dlq_topic) or ())]
        if not tps:
            return []
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        wanted = {tp: end[tp] for tp in tps if end[tp] > begin[tp]}
        consumer.assign(list(wanted))
        for tp, stop in wanted.items():
            consumer.seek(tp, max(begin[tp], stop - count))
        found: list[Reject] = []
        remaining = dict(wanted)
        for _ in range(50):
            if not remaining:
                break
            for tp, messages in consumer.poll(timeout_ms=200).items():
                for message in messages:
                    found.append(reject_of(message.topic, message.partition, message.offset,
                                           message.timestamp, message.headers or ()))  # fmt: skip
                    if message.offset + 1 >= remaining.get(tp, 0):
                        remaining.pop(tp, None)
        return sorted(found, key=lambda r: (r.at, r.where), reverse=True)[:count]
    finally:
        consumer.close()
