"""The faust app: topics, tables and the thin agents of every stage, built from settings by an entry point."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust

from hub import metrics
from hub.alerts.stage import EligibilityStage
from hub.consent import PolicyConfig, RecipientRegistry, load_policy
from hub.consent.share import ShareStage
from hub.identity.stage import IdentityStage
from hub.ingest.outcome import IngestRecord, KafkaCoordinates
from hub.ingest.pipeline import IngestContext
from hub.logging import bind_kafka_coordinates, clear_bound
from hub.networks import NetworkRegistry, reload
from hub.settings import Settings
from hub.streams.routing import AlertRouter, IdentityRouter, IngestRouter, Outgoing, ShareRouter
from hub.topics import TopicNames

#: The faust tables of the worker; their changelog topics are created before faust starts (see
#: ``hub.streams.worker.create_contract_topics``): when faust creates them itself at start-up, the
#: consumer can miss them in its first metadata and wait on their recovery forever.
TABLES = (
    "identity-aliases",
    "identity-seen-messages",
    "identity-seen-events",
    "share-state",
    "eligibility-facts",
    "eligibility-alerted",
)


#: How often the worker looks for edited network files.
NETWORKS_RELOAD_SECONDS = 30.0


def _folder_signature(folder: Path) -> tuple[tuple[str, float], ...]:
    """Names and modification times of a folder's JSON files: changes when a file is edited."""
    try:
        return tuple(sorted((p.name, p.stat().st_mtime) for p in folder.glob("*.json")))
    except OSError:
        return ()


def changelog_topic(app_id: str, table: str) -> str:
    """faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


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


def create_app(
    settings: Settings,
    context: IngestContext,
    *,
    recipients: RecipientRegistry | None = None,
    policy: PolicyConfig | None = None,
    networks: NetworkRegistry | None = None,
) -> faust.App:
    """The faust app: ingest, identity and share agents; call once per worker process."""
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
    pathway_topic = raw_topic(topics.pathway)
    merge_topic = raw_topic(topics.share_merge)
    recipients = recipients or RecipientRegistry({})
    outputs = {
        name: raw_topic(name)
        for name in (
            topics.receipts,
            topics.dlq,
            topics.pathway,
            topics.identity,
            topics.audit,
            topics.share_merge,
            topics.alerts,
            *(topics.prefix + recipient.topic for recipient in recipients),
        )
    }

    def table(name: str) -> Any:
        # Co-partitioned with the topic of its agent (hub.identity.v1 or hub.pathway.v1, both keyed
        # by patient): each worker remembers only its own patients.
        return app.Table(name, default=None, partitions=settings.topic_partitions)

    ingest_router = IngestRouter(context, topics)
    identity_router = IdentityRouter(
        IdentityStage(
            aliases=table(TABLES[0]),
            seen_messages=table(TABLES[1]),
            seen_events=table(TABLES[2]),
        ),
        topics,
    )

    share_router = ShareRouter(
        ShareStage(
            recipients,
            policy or load_policy(settings.policy_file),
            table(TABLES[3]),
            topic_prefix=topics.prefix,
            audit_topic=topics.audit,
            merge_topic=topics.share_merge,
        )
    )

    def agent(name: str, topic: faust.TopicT, route: Callable[[Any], list[Outgoing]]) -> None:
        """A thin agent: for each record, bind its coordinates, route it, send the result.

        concurrency=1: with more, faust can commit offsets past unfinished events (DESIGN.md 4).
        Each record is counted in ``hub.metrics`` (stage, latency, what its outputs say).
        """

        async def process(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                bind_kafka_coordinates(message.topic, message.partition, message.offset)
                started = time.perf_counter()
                try:
                    outgoing = route(message)
                    for out in outgoing:
                        await outputs[out.topic].send(key=out.key, value=out.value, headers=list(out.headers))
                except Exception:
                    metrics.failed(name)
                    raise
                else:
                    metrics.observe(name, outgoing, time.perf_counter() - started)
                finally:
                    clear_bound()

        app.agent(topic, name=name, concurrency=1)(process)

    # Authenticate, validate and normalise each input.
    agent("ingest", ingest_topic, lambda m: ingest_router.route(ingest_record(m), m.key))
    # Resolve each input's patient, drop known facts, publish the pathway and the receipt.
    agent("identity", identity_topic, lambda m: identity_router.route(m.value))
    # Decide each event for each recipient: audit every decision, send what is permitted.
    agent("share", pathway_topic, lambda m: share_router.route(m.value))
    # Carry a linked identity's sharing state to the surviving id (co-partitioned with the pathway).
    agent("share-merge", merge_topic, lambda m: share_router.route_merge(m.value))

    # GP alerts, from each GP practice's own topic: only what that practice may see.
    practices = {r.id: r for r in recipients if r.kind == "gp"}
    if practices and networks is not None and len(networks):
        practice_topics = {rid: topics.prefix + r.topic for rid, r in practices.items()}
        alert_router = AlertRouter(
            EligibilityStage(practices, networks, context.registry, table(TABLES[4]), table(TABLES[5])),
            topics,
            practice_topics,
        )
        eligibility = alert_router.stage
        watched = {"signature": _folder_signature(settings.networks_dir)}

        @app.timer(interval=NETWORKS_RELOAD_SECONDS)  # type: ignore[untyped-decorator]  # faust's is untyped
        async def reload_networks() -> None:
            """Networks are files a network team edits: pick changes up; a bad file changes nothing."""
            signature = _folder_signature(settings.networks_dir)
            if signature != watched["signature"]:
                watched["signature"] = signature
                eligibility.networks = reload(settings.networks_dir, eligibility.networks)

        agent(
            "eligibility",
            app.topic(
                *practice_topics.values(),
                partitions=settings.topic_partitions,
                key_serializer="raw",
                value_serializer="raw",
            ),
            lambda m: alert_router.route(m.topic, m.value),
        )

    return app
