"""Feeds the gateway's store from ``hub.alerts.v1``: one aiokafka consumer in the gateway's event loop.

At-least-once: offsets are committed after the batch is in the store, and the store is idempotent by
alert_id, so a redelivered alert changes nothing (and a dismissed one stays dismissed). The group's
committed offsets follow the state file; when that file is new or empty (first start, or a lost file)
the consumer rewinds to the beginning of the topic once, so committed offsets never hide alerts that
the file does not hold. A record that is
not a usable alert is logged by its coordinates and the reason, never its content, and skipped: a
poison record never stops the partition. Alerts are encrypted at rest (``hub.crypto``): the consumer opens
them with the gateway's key access; an erased patient's alert (``crypto.key_destroyed``) is skipped
like any unusable record. When no broker answers, the consumer keeps retrying with a
growing pause while the HTTP side serves the alerts already stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from hub.gateway.store import AlertStore, InvalidAlert
from hub.logging import bind_kafka_coordinates, clear_bound, get_logger
from hub.records import Headers, decode_json, headers_of

if TYPE_CHECKING:
    from hub.crypto.records import RecordOpener

log = get_logger("hub.gateway.consumer")

BATCH_TIMEOUT_MS = 1000
MAX_RECORDS = 500
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


class ConsumerStatus(StrEnum):
    """What ``/healthz`` reports about the consumer."""

    STARTING = "starting"
    RUNNING = "running"
    RETRYING = "retrying"  # no broker answers (yet); alerts already stored are still served
    STOPPED = "stopped"


class AlertConsumer:
    """Consumes the alerts topic into the store until :meth:`stop`."""

    def __init__(
        self,
        store: AlertStore,
        *,
        bootstrap_servers: str,
        topic: str,
        group: str,
        opener: RecordOpener | None = None,
    ) -> None:
        self.store = store
        self.opener = opener
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group = group
        self.status = ConsumerStatus.STOPPED
        self.stored = 0
        self.skipped = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start consuming in the background (returns at once)."""
        if self._task is None:
            self.status = ConsumerStatus.STARTING
            self._task = asyncio.create_task(self._run(), name="hub-gateway-consumer")

    async def stop(self) -> None:
        """Stop consuming and close the Kafka client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.status = ConsumerStatus.STOPPED

    def _client(self) -> Any:
        from aiokafka import AIOKafkaConsumer  # noqa: PLC0415 - only the serving process needs it
        from aiokafka.abc import ConsumerRebalanceListener  # noqa: PLC0415

        from hub.kafka.security import default_security  # noqa: PLC0415

        store, topic = self.store, self.topic
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group,
            client_id=self.group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            # TLS and SASL as HUB_KAFKA_* say (the gateway's own principal on a secured broker).
            **default_security().aiokafka(),
        )

        class RewindAnEmptyStore(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
            async def on_partitions_revoked(self, revoked: Any) -> None:
                return None

            async def on_partitions_assigned(self, assigned: Any) -> None:
                if assigned and store.is_empty():
                    log.info("gateway.consumer_rewind", topic=topic, reason="the state file holds no alert")
                    await consumer.seek_to_beginning(*assigned)

        consumer.subscribe([topic], listener=RewindAnEmptyStore())
        return consumer

    async def _run(self) -> None:
        from aiokafka.errors import KafkaError  # noqa: PLC0415

        pause = RETRY_FIRST_SECONDS
        while True:
            consumer = self._client()
            try:
                await consumer.start()
                self.status = ConsumerStatus.RUNNING
                log.info("gateway.consumer_started", topic=self.topic, group=self.group)
                pause = RETRY_FIRST_SECONDS
                await self._consume(consumer)
            except KafkaError as exc:
                self.status = ConsumerStatus.RETRYING
                log.warning(
                    "gateway.consumer_unavailable",
                    topic=self.topic,
                    bootstrap=self.bootstrap_servers,
                    error=type(exc).__name__,
                    retry_in_s=pause,
                    hint="is the broker running (`hub broker status`)? does the topic exist?",
                )
            except Exception as exc:  # a bug or a store failure: log, let the batch be redelivered, retry
                self.status = ConsumerStatus.RETRYING
                log.error("gateway.consumer_failed", error=type(exc).__name__, retry_in_s=pause)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_SECONDS)

    async def _consume(self, consumer: Any) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=BATCH_TIMEOUT_MS, max_records=MAX_RECORDS)
            for records in batches.values():
                for record in records:
                    headers = headers_of(record.headers)
                    self.handle(record.topic, record.partition, record.offset, record.value, headers)
            if batches:
                await consumer.commit()

    def handle(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        headers: Headers = (),
    ) -> bool:
        """Store one record's alert; False (logged without content) when it is not a usable alert."""
        from hub.errors import CryptoError  # noqa: PLC0415

        bind_kafka_coordinates(topic, partition, offset)
        try:
            if self.opener is not None:
                value = self.opener.open(topic, value, headers)
            alert = decode_json(value) if value else None
            if not isinstance(alert, dict):
                raise InvalidAlert("alert: not a JSON object")
            self.store.add(alert)
        except (ValueError, InvalidAlert, CryptoError) as exc:
            self.skipped += 1
            reason = (
                str(exc)
                if isinstance(exc, InvalidAlert)
                else str(exc.code)
                if isinstance(exc, CryptoError)
                else "not JSON"
            )
            log.warning("gateway.alert_unreadable", reason=reason)
            return False
        finally:
            clear_bound()
        self.stored += 1
        return True


__all__ = ["AlertConsumer", "ConsumerStatus"]
