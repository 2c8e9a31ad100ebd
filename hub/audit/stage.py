"""The audit chains' one writer per partition (:class:`ChainWriter`, made by :func:`chain_writer`).

The agents that decide (identity, which decides each event it publishes, and share-merge) chain
their share decisions' AuditEvents with the writer as they send them; every other
stage writes its AuditEvents, unsealed, to ``hub.audit-unsealed.v1`` (same key, same partition
count), which the sealing agent (``concurrency=1``, hub.streams.agents) appends. Both say, with each
record, how to tell whether a rebalance has reassigned its partition meanwhile: such a record is not
chained (:meth:`ChainWriter.append`), since the partition's new owner chains it too. The writer is
the one writer of each ``hub.audit.v1`` partition the worker holds (co-partitioned with the
pathway). It sends each sealed record at once (``force=True``, not as a faust attachment), so
records reach the chain in the order they were sealed, and faust flushes the producer before it
commits an input offset: a committed input is always sealed. A checkpoint is sent only after the
record it vouches for is acknowledged, so ``hub audit verify`` never sees a checkpoint ahead of its
chain; it carries that record's offset, where the next sealer of the partition starts verifying.

When it takes a partition over, before sealing anything there, the stage verifies the partition from
its last signed checkpoint (from its start without one) with the chain key (:func:`recover_chains`)
and never chains onto a record it cannot verify: it then starts a new segment
(:func:`hub.audit.sealer.assess_takeover`) and logs ``audit.tail_unverifiable``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import faust
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from faust.exceptions import ConsumerNotStarted
from kafka import TopicPartition

from hub.audit.chain import ChainHead, Checkpoint, decode_checkpoint, encode_checkpoint
from hub.audit.chainkey import ChainKey, chain_key_from_settings
from hub.audit.events import BREAK_KEY, chain_break_event
from hub.audit.sealer import LEGACY_HEAD, Sealer, Takeover, assess_takeover
from hub.audit.signing import signature_valid, signer_from_settings
from hub.audit.verify import AuditRecord, ChainVerifier, Problem
from hub.errors import BatchOutdated, ErrorCode
from hub.kafka.clients import in_daemon_thread, new_consumer
from hub.logging import get_logger
from hub.records import encode_json, headers_of
from hub.settings import Settings
from hub.topics import TopicNames

log = get_logger(__name__)

#: How many checkpoint records to read back at a time when looking for a partition's last one.
_CHECKPOINT_WINDOW = 64
#: A read that makes no progress for this long means the broker is not answering.
_STALL_SECONDS = 30.0


class _Partitions:
    """The audit and checkpoint partitions of a take-over, read one at a time by one kafka-python client.

    They are all assigned at once and their log bounds asked for in two requests: assigning one
    partition after another changed the client's topics each time, and each change cost a metadata
    round (some 60 ms a partition here). The partitions not being read are paused, so nothing else
    is fetched.
    """

    def __init__(self, consumer: Any, topics: Iterable[str], partitions: Iterable[int]) -> None:
        self.consumer = consumer
        tps = [TopicPartition(topic, partition) for topic in topics for partition in partitions]
        consumer.assign(tps)
        consumer.pause(*tps)
        self.begin: dict[TopicPartition, int] = consumer.beginning_offsets(tps)
        self.end: dict[TopicPartition, int] = consumer.end_offsets(tps)

    def read(self, tp: TopicPartition, start: int, end: int) -> Iterator[Any]:
        """The records of ``tp`` from ``start`` up to (not including) ``end``."""
        consumer = self.consumer
        consumer.seek(tp, start)
        consumer.resume(tp)
        try:
            last_progress = time.monotonic()
            while consumer.position(tp) < end:
                if time.monotonic() - last_progress > _STALL_SECONDS:
                    raise TimeoutError(f"could not read {tp.topic}[{tp.partition}] up to offset {end}")
                for message in consumer.poll(timeout_ms=500).get(tp, []):
                    last_progress = time.monotonic()
                    if message.offset < end:
                        yield message
        finally:
            consumer.pause(tp)


def last_checkpoint(
    log_: _Partitions, topic: str, partition: int, public_key: Ed25519PublicKey
) -> Checkpoint | None:
    """The validly signed checkpoint of chain ``partition`` with the highest position and an offset.

    Reads ``topic`` partition ``partition`` backwards in small windows. Whoever can write the topic
    can add records to it, but not sign them; an old checkpoint written again only makes the
    sealer read more.
    """
    tp = TopicPartition(topic, partition)
    begin, end = log_.begin[tp], log_.end[tp]
    while end > begin:
        start = max(begin, end - _CHECKPOINT_WINDOW)
        found = [
            checkpoint
            for checkpoint in (decode_checkpoint(m.value) for m in log_.read(tp, start, end))
            if checkpoint is not None
            and checkpoint.partition == partition
            and checkpoint.offset is not None
            and signature_valid(checkpoint, public_key)
        ]
        if found:
            return max(found, key=lambda c: c.seq)
        end = start
    return None


def _verify_from(
    log_: _Partitions,
    topic: str,
    *,
    partition: int,
    chain_key: ChainKey,
    public_key: Ed25519PublicKey | None,
    anchor: Checkpoint | None,
) -> Takeover | None:
    """Verify one partition from ``anchor``'s record (or its start); None when that record is not
    the one the checkpoint signed for (its unsigned offset was wrong)."""
    tp = TopicPartition(topic, partition)
    begin, end = log_.begin[tp], log_.end[tp]
    anchored = anchor is not None and anchor.offset is not None and begin <= anchor.offset < end
    start = anchor.offset if anchored and anchor is not None and anchor.offset is not None else begin
    verifier = ChainVerifier(
        [] if anchor is None else [anchor],
        public_key,
        [chain_key],
        log_start={partition: start},
        log_end={partition: end},
    )
    for message in log_.read(tp, start, end):
        verifier.add(
            AuditRecord(
                partition,
                message.offset,
                message.key,
                message.value or b"",
                headers_of(message.headers),
            )
        )
    report = verifier.finish()
    if anchored and anchor is not None:
        part = report.partitions.get(partition)
        if part is None or part.first_offset != start or part.checkpointed_seq < anchor.seq:
            return None
    return assess_takeover(report, partition, read_from=start, end=end)


def _recover_one(
    log_: _Partitions,
    topics: TopicNames,
    partition: int,
    chain_key: ChainKey,
    public_key: Ed25519PublicKey | None,
) -> Takeover:
    anchor = (
        None if public_key is None else last_checkpoint(log_, topics.audit_checkpoints, partition, public_key)
    )
    takeover = _verify_from(
        log_, topics.audit, partition=partition, chain_key=chain_key, public_key=public_key, anchor=anchor
    )
    if takeover is None:
        log.warning(
            "audit.checkpoint_offset_ignored",
            partition=partition,
            seq=anchor.seq if anchor is not None else None,
            hint="the record at the checkpoint's offset is not the one it signed: the partition is read "
            "from its start",
        )
        takeover = _verify_from(
            log_,
            topics.audit,
            partition=partition,
            chain_key=chain_key,
            public_key=public_key,
            anchor=None,
        )
    if takeover is None:  # pragma: no cover - without an anchor there is nothing to mismatch
        raise RuntimeError("audit chain recovery without an anchor cannot mismatch")
    return takeover


def recover_chains(
    bootstrap: str,
    topics: TopicNames,
    partitions: Sequence[int],
    chain_key: ChainKey,
    public_key: Ed25519PublicKey | None,
) -> dict[int, Takeover]:
    """What a sealer taking over ``hub.audit.v1`` partitions goes on from, verified, per partition.

    Each from the record of the partition's last signed checkpoint when there is one (a bounded
    read: at most one checkpoint interval), else from the partition's first record. One client reads
    them all, one partition after another: its connection and the broker's metadata, most of a small
    partition's time, are had once (docs/PERFORMANCE.md, session 17).
    """
    consumer = new_consumer(bootstrap, enable_auto_commit=False, group_id=None)
    try:
        log_ = _Partitions(consumer, (topics.audit, topics.audit_checkpoints), partitions)
        return {
            partition: _recover_one(log_, topics, partition, chain_key, public_key)
            for partition in partitions
        }
    finally:
        consumer.close()


def _kinds(problems: Iterable[Problem]) -> dict[str, int]:
    return dict(Counter(problem.kind for problem in problems))


class ChainWriter:
    """The one writer of each ``hub.audit.v1`` partition this worker holds: seals, sends, checkpoints.

    Two agents append: the sealing agent (each stage's AuditEvents read from ``hub.audit-unsealed.v1``)
    and the deciding agents (their share decisions' AuditEvents, written here directly: the record is
    keyed by the patient, on the partition of the pathway event being decided, which the worker holds
    with the chain). A lock per partition keeps seal-then-send atomic, so records reach the log in the
    order they were chained. Before the first record of a partition, the partition is verified from
    its last signed checkpoint (:func:`recover_chains`, with the other partitions held here); a head
    is forgotten when the partition is revoked.
    """

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        topics: TopicNames,
        raw_topic: Callable[[str], faust.TopicT],
        *,
        chain_key: ChainKey | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        #: Without a chain key a worker does not start (SecretUnavailable): it would otherwise seal
        #: records anyone could forge.
        self.chain_key = chain_key or chain_key_from_settings(settings)
        self.signer = signer_from_settings(settings)
        if self.signer is None:
            # The chain still shows a changed, forged, replayed or removed record; only a cut tail is unseen.
            log.warning(
                "audit.checkpoints_off",
                hint="set HUB_AUDIT_SIGNING_KEY_FILE to an Ed25519 key to sign audit checkpoints",
            )
        self.public_key = None if self.signer is None else self.signer.public_key()
        self.sealer = Sealer(
            self.signer,
            self.chain_key,
            every_records=settings.audit_checkpoint_records,
            every_seconds=settings.audit_checkpoint_seconds,
        )
        self.audit = raw_topic(topics.audit)
        self.checkpoints = raw_topic(topics.audit_checkpoints)
        #: Per partition, the last sealed head and its delivery: a checkpoint waits for it.
        self.pending: dict[int, tuple[ChainHead, Awaitable[Any]]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        # The chain of partition p is written by the agents holding hub.audit-unsealed.v1 p and
        # hub.identity.v1 p (and hub.share-merge.v1 p): co-partitioned, so one worker holds them all.
        self.chained_from = {topics.audit_unsealed, topics.identity, topics.share_merge}
        #: How many times heads were forgotten: a take-over keeps other partitions' heads it read
        #: only if this did not change while it read.
        self._forgotten = 0

    async def append(
        self,
        partition: int,
        key: bytes | None,
        value: bytes,
        *,
        still_current: Callable[[], Awaitable[bool]] | None = None,
    ) -> Awaitable[Any]:
        """Chain one AuditEvent onto ``partition`` and send it; the future of its acknowledgement.

        ``still_current`` says whether the record being processed was read in the consumer group's
        current generation (once any rebalance going on has ended). It is asked with the partition's
        head in hand, just before sealing: when a rebalance came meanwhile, the partition may be
        another worker's now, chaining it too, and a record chained here would fork its chain. Then
        nothing is chained, the head is forgotten (read again from the log by the partition's next
        append here: it may be behind the other worker's already), and :class:`BatchOutdated` is
        raised: the caller leaves its record to be read again by whoever owns the partition now.
        """
        lock = self._locks.setdefault(partition, asyncio.Lock())
        async with lock:
            if not self.sealer.knows(partition):
                await self._take_over(partition)
            if still_current is not None and not await still_current():
                self.forget({partition})
                raise BatchOutdated("a rebalance reassigned the partition of the AuditEvent to chain")
            # No wait from here until the record is with the producer (faust sends at once with
            # force=True, the topic's metadata known): no rebalance can come in between.
            delivered = await self._send_sealed(partition, key, value)
            if self.sealer.checkpoint_due(partition, now=time.monotonic()):
                await self._send_checkpoint(partition)
        return delivered

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: another worker may chain them now, and a head held here would fork them."""
        self._forgotten += 1
        self.sealer.forget(partitions)
        for partition in partitions:
            self.pending.pop(partition, None)

    async def checkpoint_idle(self) -> None:
        """A quiet chain still gets its last records checkpointed within the interval."""
        for partition in self.sealer.due(now=time.monotonic()):
            if partition in self.pending:
                async with self._locks.setdefault(partition, asyncio.Lock()):
                    if partition in self.pending and self.sealer.checkpoint_due(
                        partition, now=time.monotonic()
                    ):
                        await self._send_checkpoint(partition)

    async def _send_checkpoint(self, partition: int) -> None:
        head, delivered = self.pending[partition]
        metadata = await delivered
        checkpoint = self.sealer.checkpoint(
            partition,
            head,
            at=datetime.now(UTC),
            now=time.monotonic(),
            offset=getattr(metadata, "offset", None),
        )
        await self.checkpoints.send(
            key=str(partition).encode(), value=encode_checkpoint(checkpoint), partition=partition, force=True
        )
        log.info("audit.checkpoint", partition=partition, seq=head.seq)

    async def _send_sealed(
        self, partition: int, key: bytes | None, value: bytes, *, break_reason: str | None = None
    ) -> Awaitable[Any]:
        sealed = self.sealer.seal(partition, key, value, break_reason=break_reason)
        delivered: Awaitable[Any] = await self.audit.send(
            key=key, value=value, partition=partition, headers=list(sealed.headers), force=True
        )
        self.pending[partition] = (sealed.head, delivered)
        return delivered

    def _start(self, partition: int, takeover: Takeover) -> None:
        """Hold a recovered head, and log what its read found."""
        self.sealer.start(partition, takeover.head, now=time.monotonic())
        if takeover.earlier:
            log.warning(
                "audit.chain_problems",
                partition=partition,
                problems=_kinds(takeover.earlier),
                read_from=takeover.read_from,
                hint="records before the chain's head do not verify: run `hub audit verify` to see each one",
            )
        if takeover.break_reason is None:
            log.info(
                "audit.chain_recovered",
                partition=partition,
                seq=takeover.head.seq,
                read_from=takeover.read_from,
            )

    def _assigned(self) -> set[int]:
        """The chain partitions this worker holds now (empty before the consumer's first assignment)."""
        try:
            assignment = self.app.consumer.assignment()
        except ConsumerNotStarted:  # an app driven without Kafka (tests): the asked partition only
            return set()
        return {tp.partition for tp in assignment if tp.topic in self.chained_from}

    async def _take_over(self, partition: int) -> None:
        """Recover ``partition``'s head, and those of the other chain partitions held here not yet known.

        One read for all: a worker started (or given its partitions) takes over every chain it holds
        at its first AuditEvent, for about the price of one (docs/PERFORMANCE.md, session 17). Another
        partition's head is kept only when no partition was forgotten meanwhile (a rebalance may have
        given it to another worker), none was started since (its own first append read it, later), and
        its tail verified: a tail that needs a segment break is read again by its own first append,
        which sends the break under that partition's lock.
        """
        # Anything this process still has in flight must be in the log before reading it back.
        await self.app.producer.flush()
        forgotten = self._forgotten
        partitions = sorted({partition} | {p for p in self._assigned() if not self.sealer.knows(p)})
        began = time.monotonic()
        takeovers = await in_daemon_thread(
            recover_chains,
            self.settings.bootstrap_servers,
            self.topics,
            partitions,
            self.chain_key,
            self.public_key,
        )
        kept = [partition]
        for other, takeover in takeovers.items():
            if other == partition or self._forgotten != forgotten or self.sealer.knows(other):
                continue
            if takeover.break_reason is None:
                self._start(other, takeover)
                kept.append(other)
        log.info(
            "audit.take_over",
            partitions=sorted(kept),
            read=partitions,
            seconds=round(time.monotonic() - began, 3),
        )
        takeover = takeovers[partition]
        self._start(partition, takeover)
        if takeover.break_reason is None:
            return
        offsets = [p.offset for p in takeover.unverifiable if p.offset is not None]
        # An upgrade from unkeyed chains is expected once per partition; anything else is an alarm.
        report = log.warning if takeover.break_reason == LEGACY_HEAD else log.error
        report(
            "audit.tail_unverifiable",
            code=str(ErrorCode.AUDIT_TAIL_UNVERIFIABLE),
            partition=partition,
            reason=takeover.break_reason,
            problems=_kinds(takeover.unverifiable),
            first_offset=min(offsets, default=None),
            last_offset=max(offsets, default=None),
            continues_from_offset=takeover.continues_from_offset,
            segment_seq=takeover.head.seq + 1,
            hint="the sealer did not chain onto these records and started a new segment: run "
            "`hub audit verify`, and find out who wrote to the audit topic",
        )
        event = chain_break_event(
            takeover, topic=self.topics.audit, chain_key_id=self.chain_key.key_id, recorded=datetime.now(UTC)
        )
        await self._send_sealed(partition, BREAK_KEY, encode_json(event), break_reason=takeover.break_reason)


def chain_writer(
    app: faust.App,
    settings: Settings,
    topics: TopicNames,
    raw_topic: Callable[[str], faust.TopicT],
    *,
    chain_key: ChainKey | None = None,
) -> ChainWriter:
    """The worker's chain writer, with its rebalance hook and its idle-checkpoint timer on ``app``.

    The deciding agents append their share decisions' AuditEvents with it, and the sealing agent
    (hub.streams.agents, ``Agents.add_sealing``) what the other stages write to
    ``hub.audit-unsealed.v1``.
    """
    writer = ChainWriter(app, settings, topics, raw_topic, chain_key=chain_key)

    def on_revoked(_sender: Any, /, *args: Any, signal: Any, **_kwargs: Any) -> None:
        revoked = args[0] if args else _kwargs.get("revoked", ())
        writer.forget({tp.partition for tp in revoked if tp.topic in writer.chained_from})

    app.on_partitions_revoked.connect(on_revoked)

    if writer.signer is not None:

        @app.timer(interval=max(1.0, settings.audit_checkpoint_seconds / 2))  # type: ignore[untyped-decorator]
        async def checkpoint_idle_chains() -> None:
            """A quiet chain still gets its last records checkpointed within the interval."""
            await writer.checkpoint_idle()

    return writer
