"""The faust app: topics, tables and the ingest agent, built from settings by an entry point."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import faust

from hub.identity.stage import IdentityStage
from hub.ingest.outcome import IngestRecord, KafkaCoordinates
from hub.ingest.pipeline import IngestContext
from hub.logging import bind_kafka_coordinates, clear_bound
from hub.settings import Settings
from hub.streams.routing import IdentityRouter, IngestRouter, Outgoing
from hub.topics import TopicNames

#: Largest record between stages: one input's normalised events are bigger than the input.
INTERNAL_RECORD_LIMIT = 16 * 1024 * 1024


def ingest_record(message: Any) -> IngestRecord:
    """The pure core's view of a faust message."""
    headers = message.headers or ()
    pairs = headers.items() if isinstance(headers, dict) else headers
    return IngestRecord(
        value=message.value,
        headers=tuple((str(k), bytes(v) if v is not None else b"") for k, v in pairs),
        origin=KafkaCoordinates(message.topic, message.partition, message.offset),
        timestamp=datetime.fromtimestamp(message.timestamp, tz=UTC),
    )


def create_app(settings: Settings, context: IngestContext) -> faust.App:
    """A faust app with the ingest agent; call once per worker process."""
    topics = TopicNames(settings.topic_prefix)
    app = faust.App(
        settings.app_id,
        broker=f"hubkafka://{settings.bootstrap_servers}",
        store=settings.table_store,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        # The hub's payload limit is checked by the hub; Kafka must carry what it receives.
        producer_max_request_size=INTERNAL_RECORD_LIMIT,
        consumer_max_fetch_size=INTERNAL_RECORD_LIMIT,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # A faust table write needs its changelog; keep the defaults' at-least-once guarantee.
        processing_guarantee="at_least_once",
        # Tests and demos join groups often: don't wait the default 3 s before assigning.
        broker_rebalance_timeout=30.0,
        broker_session_timeout=30.0,
        stream_wait_empty=False,
        # Tables (the changelogs) store JSON keys and values; topics below say raw bytes.
        key_serializer="json",
        value_serializer="json",
    )

    def raw_topic(name: str) -> faust.TopicT:
        # Bytes in, bytes out: the pure core owns every encoding decision.
        return app.topic(
            name, partitions=settings.topic_partitions, key_serializer="raw", value_serializer="raw"
        )

    ingest_topic = raw_topic(topics.ingest)
    identity_topic = raw_topic(topics.identity)
    outputs = {
        name: raw_topic(name) for name in (topics.receipts, topics.dlq, topics.pathway, topics.identity)
    }

    def table(name: str) -> Any:
        # Co-partitioned with hub.identity.v1: each worker remembers only its own patients.
        return app.Table(name, default=None, partitions=settings.topic_partitions)

    ingest_router = IngestRouter(context, topics)
    identity_router = IdentityRouter(
        IdentityStage(
            aliases=table("identity-aliases"),
            seen_messages=table("identity-seen-messages"),
            seen_events=table("identity-seen-events"),
        ),
        topics,
    )

    async def send_all(outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            await outputs[out.topic].send(key=out.key, value=out.value, headers=list(out.headers))

    @app.agent(ingest_topic, concurrency=1)
    async def ingest(stream: Any) -> None:
        """Authenticate, validate and normalise each input; faust commits after the sends flush."""
        async for event in stream.events():
            message = event.message
            bind_kafka_coordinates(message.topic, message.partition, message.offset)
            try:
                await send_all(ingest_router.route(ingest_record(message), message.key))
            finally:
                clear_bound()

    @app.agent(identity_topic, concurrency=1)
    async def identity(stream: Any) -> None:
        """Resolve each input's patient, drop known facts, publish the pathway and the receipt."""
        async for event in stream.events():
            message = event.message
            bind_kafka_coordinates(message.topic, message.partition, message.offset)
            try:
                await send_all(identity_router.route(message.value))
            finally:
                clear_bound()

    return app
