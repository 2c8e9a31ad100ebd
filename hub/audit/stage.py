"""The sealing stage: a thin faust agent that chains ``hub.audit-unsealed.v1`` into ``hub.audit.v1``.

Every stage writes its AuditEvents, unsealed, to ``hub.audit-unsealed.v1`` (same key, same partition
count); this agent, ``concurrency=1``, is the one writer of each ``hub.audit.v1`` partition. It sends
each sealed record at once (``force=True``, not as a faust attachment), so records reach the chain in
the order they were sealed, and faust flushes the producer before it commits an input offset: a
committed input is always sealed. A checkpoint is sent only after the record it vouches for is
acknowledged, so ``hub audit verify`` never sees a checkpoint ahead of its chain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import faust
from kafka import TopicPartition

from hub.audit.chain import ChainHead, encode_checkpoint, head_of
from hub.audit.sealer import Sealer
from hub.audit.signing import signer_from_settings
from hub.kafka.clients import new_consumer
from hub.logging import get_logger
from hub.settings import Settings
from hub.topics import TopicNames

log = get_logger(__name__)

#: How many records to read back at a time when looking for a partition's last sealed record.
_RECOVERY_WINDOW = 64


def recover_head(bootstrap: str, topic: str, partition: int) -> ChainHead:
    """The head left by the last sealed record of one ``hub.audit.v1`` partition (genesis if none).

    Reads backwards from the end in small windows: a stray unsealed record at the tail (written
    around the sealer) is skipped rather than starting a second chain.
    """
    consumer = new_consumer(bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        begin = consumer.beginning_offsets([tp])[tp]
        end = consumer.end_offsets([tp])[tp]
        while end > begin:
            window_start = max(begin, end - _RECOVERY_WINDOW)
            consumer.seek(tp, window_start)
            last: ChainHead | None = None
            position = window_start
            deadline = time.monotonic() + 30.0
            while position < end and time.monotonic() < deadline:
                for message in consumer.poll(timeout_ms=500).get(tp, []):
                    position = message.offset + 1
                    if message.offset < end:
                        head = head_of(tuple((k, v or b"") for k, v in (message.headers or ())))
                        last = head or last
            if position < end:
                raise TimeoutError(f"could not read {topic}[{partition}] up to offset {end}")
            if last is not None:
                return last
            end = window_start
        return ChainHead.genesis()
    finally:
        consumer.close()


def add_sealing_agent(
    app: faust.App,
    settings: Settings,
    topics: TopicNames,
    raw_topic: Callable[[str], faust.TopicT],
) -> None:
    """Register the sealing agent, its idle-checkpoint timer and its rebalance hook on ``app``."""
    signer = signer_from_settings(settings)
    if signer is None:
        # The chain still shows a changed or removed record; only a cut tail goes unseen.
        log.warning(
            "audit.checkpoints_off",
            hint="set HUB_AUDIT_SIGNING_KEY_FILE to an Ed25519 key to sign audit checkpoints",
        )
    sealer = Sealer(
        signer,
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
        await delivered
        checkpoint = sealer.checkpoint(partition, head, at=datetime.now(UTC), now=time.monotonic())
        await checkpoints.send(
            key=str(partition).encode(), value=encode_checkpoint(checkpoint), partition=partition, force=True
        )
        log.info("audit.checkpoint", partition=partition, seq=head.seq)

    async def seal_records(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            partition = message.partition
            if not sealer.knows(partition):
                # Anything this process still has in flight must be in the log before reading it back.
                await app.producer.flush()
                head = await asyncio.to_thread(
                    recover_head, settings.bootstrap_servers, topics.audit, partition
                )
                sealer.start(partition, head, now=time.monotonic())
                log.info("audit.chain_recovered", partition=partition, seq=head.seq)
            sealed = sealer.seal(partition, message.key, message.value or b"")
            delivered = await audit.send(
                key=message.key,
                value=message.value or b"",
                partition=partition,
                headers=list(sealed.headers),
                force=True,
            )
            pending[partition] = (sealed.head, delivered)
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
