"""The sealing stage: a thin faust agent that chains ``hub.audit-unsealed.v1`` into ``hub.audit.v1``.

Every stage writes its AuditEvents, unsealed, to ``hub.audit-unsealed.v1`` (same key, same partition
count); this agent, ``concurrency=1``, is the one writer of each ``hub.audit.v1`` partition. It sends
each sealed record at once (``force=True``, not as a faust attachment), so records reach the chain in
the order they were sealed, and faust flushes the producer before it commits an input offset: a
committed input is always sealed. A checkpoint is sent only after the record it vouches for is
acknowledged, so ``hub audit verify`` never sees a checkpoint ahead of its chain; it carries that
record's offset, where the next sealer of the partition starts verifying.

When it takes a partition over, before sealing anything there, the stage verifies the partition from
its last signed checkpoint (from its start without one) with the chain key (:func:`recover_chain`)
and never chains onto a record it cannot verify: it then starts a new segment
(:func:`hub.audit.sealer.assess_takeover`) and logs ``audit.tail_unverifiable``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import faust
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from kafka import TopicPartition

from hub.audit.chain import ChainHead, Checkpoint, decode_checkpoint, encode_checkpoint
from hub.audit.chainkey import ChainKey, chain_key_from_settings
from hub.audit.events import BREAK_KEY, chain_break_event
from hub.audit.sealer import LEGACY_HEAD, Sealer, Takeover, assess_takeover
from hub.audit.signing import signature_valid, signer_from_settings
from hub.audit.verify import AuditRecord, ChainVerifier, Problem
from hub.errors import ErrorCode
from hub.kafka.clients import new_consumer
from hub.logging import get_logger
from hub.records import encode_json, headers_of
from hub.settings import Settings
from hub.topics import TopicNames

log = get_logger(__name__)

#: How many checkpoint records to read back at a time when looking for a partition's last one.
_CHECKPOINT_WINDOW = 64
#: A read that makes no progress for this long means the broker is not answering.
_STALL_SECONDS = 30.0


def _read(consumer: Any, tp: TopicPartition, start: int, end: int) -> Iterator[Any]:
    """The records of one assigned partition from ``start`` up to (not including) ``end``."""
    consumer.seek(tp, start)
    last_progress = time.monotonic()
    while consumer.position(tp) < end:
        if time.monotonic() - last_progress > _STALL_SECONDS:
            raise TimeoutError(f"could not read {tp.topic}[{tp.partition}] up to offset {end}")
        for message in consumer.poll(timeout_ms=500).get(tp, []):
            last_progress = time.monotonic()
            if message.offset < end:
                yield message


def last_checkpoint(
    bootstrap: str, topic: str, partition: int, public_key: Ed25519PublicKey
) -> Checkpoint | None:
    """The validly signed checkpoint of chain ``partition`` with the highest position and an offset.

    Reads ``topic`` partition ``partition`` backwards in small windows. Whoever can write the topic
    can add records to it, but not sign them; an old checkpoint written again only makes the
    sealer read more.
    """
    consumer = new_consumer(bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        begin = consumer.beginning_offsets([tp])[tp]
        end = consumer.end_offsets([tp])[tp]
        while end > begin:
            start = max(begin, end - _CHECKPOINT_WINDOW)
            found = [
                checkpoint
                for checkpoint in (decode_checkpoint(m.value) for m in _read(consumer, tp, start, end))
                if checkpoint is not None
                and checkpoint.partition == partition
                and checkpoint.offset is not None
                and signature_valid(checkpoint, public_key)
            ]
            if found:
                return max(found, key=lambda c: c.seq)
            end = start
        return None
    finally:
        consumer.close()


def _verify_from(
    bootstrap: str,
    topic: str,
    *,
    partition: int,
    chain_key: ChainKey,
    public_key: Ed25519PublicKey | None,
    anchor: Checkpoint | None,
) -> Takeover | None:
    """Verify one partition from ``anchor``'s record (or its start); None when that record is not
    the one the checkpoint signed for (its unsigned offset was wrong)."""
    consumer = new_consumer(bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        begin = consumer.beginning_offsets([tp])[tp]
        end = consumer.end_offsets([tp])[tp]
        anchored = anchor is not None and anchor.offset is not None and begin <= anchor.offset < end
        start = anchor.offset if anchored and anchor is not None and anchor.offset is not None else begin
        verifier = ChainVerifier(
            [] if anchor is None else [anchor],
            public_key,
            [chain_key],
            log_start={partition: start},
            log_end={partition: end},
        )
        for message in _read(consumer, tp, start, end):
            verifier.add(
                AuditRecord(
                    partition,
                    message.offset,
                    message.key,
                    message.value or b"",
                    headers_of(message.headers),
                )
            )
    finally:
        consumer.close()
    report = verifier.finish()
    if anchored and anchor is not None:
        part = report.partitions.get(partition)
        if part is None or part.first_offset != start or part.checkpointed_seq < anchor.seq:
            return None
    return assess_takeover(report, partition, read_from=start, end=end)


def recover_chain(
    bootstrap: str,
    topics: TopicNames,
    partition: int,
    chain_key: ChainKey,
    public_key: Ed25519PublicKey | None,
) -> Takeover:
    """What a sealer taking over one ``hub.audit.v1`` partition goes on from, verified.

    From the record of the partition's last signed checkpoint when there is one (a bounded read:
    at most one checkpoint interval), else from the partition's first record.
    """
    anchor = (
        None
        if public_key is None
        else last_checkpoint(bootstrap, topics.audit_checkpoints, partition, public_key)
    )
    takeover = _verify_from(
        bootstrap,
        topics.audit,
        partition=partition,
        chain_key=chain_key,
        public_key=public_key,
        anchor=anchor,
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
            bootstrap,
            topics.audit,
            partition=partition,
            chain_key=chain_key,
            public_key=public_key,
            anchor=None,
        )
    if takeover is None:  # pragma: no cover - without an anchor there is nothing to mismatch
        raise RuntimeError("audit chain recovery without an anchor cannot mismatch")
    return takeover


def _kinds(problems: Iterable[Problem]) -> dict[str, int]:
    return dict(Counter(problem.kind for problem in problems))


def add_sealing_agent(  # noqa: PLR0915 - one wiring function: the agent, its hooks and its timer
    app: faust.App,
    settings: Settings,
    topics: TopicNames,
    raw_topic: Callable[[str], faust.TopicT],
    *,
    chain_key: ChainKey | None = None,
) -> None:
    """Register the sealing agent, its idle-checkpoint timer and its rebalance hook on ``app``.

    Without ``chain_key`` it comes from the settings, and a worker without one does not start
    (SecretUnavailable): it would otherwise seal records anyone could forge.
    """
    chain_key = chain_key or chain_key_from_settings(settings)
    signer = signer_from_settings(settings)
    if signer is None:
        # The chain still shows a changed, forged, replayed or removed record; only a cut tail goes unseen.
        log.warning(
            "audit.checkpoints_off",
            hint="set HUB_AUDIT_SIGNING_KEY_FILE to an Ed25519 key to sign audit checkpoints",
        )
    public_key = None if signer is None else signer.public_key()
    sealer = Sealer(
        signer,
        chain_key,
        every_records=settings.audit_checkpoint_records,
        every_seconds=settings.audit_checkpoint_seconds,
    )
    unsealed = raw_topic(topics.audit_unsealed)
    audit = raw_topic(topics.audit)
    checkpoints = raw_topic(topics.audit_checkpoints)
    #: Per partition, the last sealed head and its delivery: a checkpoint waits for it.
    pending: dict[int, tuple[ChainHead, Awaitable[Any]]] = {}

    async def send_checkpoint(partition: int) -> None:
        head, delivered = pending[partition]
        metadata = await delivered
        checkpoint = sealer.checkpoint(
            partition,
            head,
            at=datetime.now(UTC),
            now=time.monotonic(),
            offset=getattr(metadata, "offset", None),
        )
        await checkpoints.send(
            key=str(partition).encode(), value=encode_checkpoint(checkpoint), partition=partition, force=True
        )
        log.info("audit.checkpoint", partition=partition, seq=head.seq)

    async def send_sealed(
        partition: int, key: bytes | None, value: bytes, *, break_reason: str | None = None
    ) -> None:
        sealed = sealer.seal(partition, key, value, break_reason=break_reason)
        delivered = await audit.send(
            key=key, value=value, partition=partition, headers=list(sealed.headers), force=True
        )
        pending[partition] = (sealed.head, delivered)

    async def take_over(partition: int) -> None:
        # Anything this process still has in flight must be in the log before reading it back.
        await app.producer.flush()
        takeover = await asyncio.to_thread(
            recover_chain, settings.bootstrap_servers, topics, partition, chain_key, public_key
        )
        sealer.start(partition, takeover.head, now=time.monotonic())
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
            takeover, topic=topics.audit, chain_key_id=chain_key.key_id, recorded=datetime.now(UTC)
        )
        value = encode_json(event)
        await send_sealed(partition, BREAK_KEY, value, break_reason=takeover.break_reason)

    async def seal_records(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            partition = message.partition
            if not sealer.knows(partition):
                await take_over(partition)
            await send_sealed(partition, message.key, message.value or b"")
            if sealer.checkpoint_due(partition, now=time.monotonic()):
                await send_checkpoint(partition)

    app.agent(unsealed, name="audit-seal", concurrency=1)(seal_records)

    def on_revoked(_sender: Any, /, *args: Any, signal: Any, **_kwargs: Any) -> None:
        # Another worker may seal these now: a head held here would fork the chain on return.
        revoked = args[0] if args else _kwargs.get("revoked", ())
        gone = {tp.partition for tp in revoked if tp.topic == topics.audit_unsealed}
        sealer.forget(gone)
        for partition in gone:
            pending.pop(partition, None)

    app.on_partitions_revoked.connect(on_revoked)

    if signer is not None:

        @app.timer(interval=max(1.0, settings.audit_checkpoint_seconds / 2))  # type: ignore[untyped-decorator]
        async def checkpoint_idle_chains() -> None:
            """A quiet chain still gets its last records checkpointed within the interval."""
            for partition in sealer.due(now=time.monotonic()):
                if partition in pending:
                    await send_checkpoint(partition)
