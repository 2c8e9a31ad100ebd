"""The faust app: every stage's agent wired to its topics and tables, built from settings by an entry point.

The agents are made one way (hub.streams.agents), the tables too (hub.streams.tables).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import faust

from hub import metrics
from hub.alerts.stage import EligibilityStage
from hub.audit.chainkey import ChainKey
from hub.audit.stage import chain_writer
from hub.consent import PolicyConfig, RecipientRegistry, load_policy
from hub.consent.share import ShareStage
from hub.crypto.config import keyring_from_settings
from hub.crypto.keyring import Keyring
from hub.identity.stage import IdentityStage
from hub.ingest.pipeline import IngestContext
from hub.kafka.clients import in_daemon_thread
from hub.kafka.security import KafkaSecurity
from hub.logging import get_logger
from hub.networks import NetworkRegistry, reload
from hub.settings import Settings
from hub.streams.agents import Agents, StreamCrypto, ingest_record
from hub.streams.routing import (
    REGISTRY_CHECK_SECONDS,
    AlertRouter,
    IdentityRouter,
    IngestRouter,
    ShareRouter,
)
from hub.streams.store import STORE_URLS, claim_table_folder
from hub.topics import TopicNames

log = get_logger(__name__)

#: How often the worker looks for edited network files.
NETWORKS_RELOAD_SECONDS = 30.0


def _folder_signature(folder: Path) -> tuple[tuple[str, float], ...]:
    """Names and modification times of a folder's JSON files: changes when a file is edited."""
    try:
        return tuple(sorted((p.name, p.stat().st_mtime) for p in folder.glob("*.json")))
    except OSError:
        return ()


PRODUCER_LINGER_SECONDS = 0.002
#: Bytes of records one produce batch (of one partition) may gather: aiokafka's default, 16 KiB, makes
#: any record for a partition whose open batch is full wait until that batch has left (an ack of
#: acks=all away), and faust's producer sends its buffer in order: every record behind it waits too.
PRODUCER_BATCH_BYTES = 1024 * 1024

#: Records one poll of the worker's consumer returns, at most.
MAX_POLL_RECORDS = 500

#: Largest record between stages: one input's normalised events are bigger than the input.
INTERNAL_RECORD_LIMIT = 16 * 1024 * 1024


def schedule_ingest_purge(app: faust.App, settings: Settings, topics: TopicNames) -> None:
    """Every ``ingest_purge_seconds``, delete the ingest records the group processed (hub.crypto.retention).

    The sources' bytes are in the clear on the ingest topic; once processed they live on only
    encrypted downstream. Every worker may run it: deleting below a committed offset twice is harmless.
    """
    if settings.ingest_purge_seconds <= 0:
        return

    @app.timer(interval=settings.ingest_purge_seconds)  # type: ignore[untyped-decorator]  # faust's is untyped
    async def purge_ingest() -> None:
        from hub.crypto.retention import purge_processed_ingest  # noqa: PLC0415
        from hub.errors import HubError  # noqa: PLC0415

        try:
            deleted, left = await in_daemon_thread(
                purge_processed_ingest, settings.bootstrap_servers, topics.ingest, settings.app_id, wait=0.0
            )
        except HubError as exc:
            log.warning("ingest.purge_failed", code=str(exc.code))
        else:
            if deleted:
                log.info("ingest.purged", deleted=deleted, waiting=left)


def faust_app(settings: Settings) -> faust.App:
    """The worker's faust app as the hub configures it: broker, security, store, producer, consumer."""
    return faust.App(
        settings.app_id,
        broker=f"hubkafka://{settings.bootstrap_servers}",
        # TLS and SASL (the worker's principal) as HUB_KAFKA_* say; None on a plaintext broker.
        broker_credentials=KafkaSecurity.from_settings(settings).faust_credentials(),
        # RocksDB (faust's store, within one memory budget) or memory (hub.streams.store).
        store=STORE_URLS[settings.table_store],
        # This worker's own folder (hub.streams.store): a RocksDB database is locked by one process.
        datadir=str(claim_table_folder(settings)),
        topic_partitions=settings.topic_partitions,
        # faust only creates topics the hub has not created first (create_contract_topics, which
        # follows the cluster's size when this is None).
        topic_replication_factor=settings.replication_factor or 1,
        producer_acks=-1,
        # A batch's records leave together (hub.streams.agents): a few ms of linger fills produce
        # requests (1.8 records a request without, docs/PERFORMANCE.md). No compression: recipients
        # read their topics with clients in any language, and lz4/zstd need a codec library in some
        # of them (kafka-python, kafkajs); a topic's compression.type can still be set on the broker.
        producer_linger=PRODUCER_LINGER_SECONDS,
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        # The hub's payload limit is checked by the hub; Kafka must carry what it receives.
        producer_max_request_size=INTERNAL_RECORD_LIMIT,
        consumer_max_fetch_size=INTERNAL_RECORD_LIMIT,
        # faust turns every record one poll returns into Python objects before applying any: unbounded,
        # a worker rebuilding its tables held hundreds of MB of them (docs/STATE.md, "Memory while
        # rebuilding"; with hub.streams.transport.FETCH_MAX_BYTES).
        broker_max_poll_records=MAX_POLL_RECORDS,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # A faust table write needs its changelog; keep the defaults' at-least-once guarantee.
        processing_guarantee="at_least_once",
        # Tests and demos join groups often: don't wait the default 3 s before assigning.
        broker_rebalance_timeout=settings.group_session_seconds,
        broker_session_timeout=settings.group_session_seconds,
        stream_wait_empty=False,
        # Tables (the changelogs) store JSON keys and values; topics below say raw bytes.
        key_serializer="json",
        value_serializer="json",
    )


def create_app(
    settings: Settings,
    context: IngestContext,
    *,
    recipients: RecipientRegistry | None = None,
    policy: PolicyConfig | None = None,
    networks: NetworkRegistry | None = None,
    keyring: Keyring | None = None,
    audit_chain_key: ChainKey | None = None,
    create_receipt_topics: Callable[[Collection[str]], object] | None = None,
) -> faust.App:
    """The faust app: ingest, identity, share (with GP alerts), share-merge and sealing agents.

    Records that carry clinical data are sealed on their way out and opened on their way in
    (``hub.crypto.records``); without a ``keyring`` one is made from the settings' KEK and key store,
    and without an ``audit_chain_key`` the sealing stage reads it from the settings (hub.audit).
    ``create_receipt_topics`` makes the receipt topics of sources added while the worker runs.
    """
    topics = TopicNames(settings.topic_prefix)
    app = faust_app(settings)

    def raw_topic(name: str) -> faust.TopicT:
        # Bytes in, bytes out: the pure core owns every encoding decision.
        return app.topic(
            name, partitions=settings.topic_partitions, key_serializer="raw", value_serializer="raw"
        )

    recipients = recipients or RecipientRegistry({})
    recipient_topics = [topics.prefix + recipient.topic for recipient in recipients]
    crypto = StreamCrypto(keyring or keyring_from_settings(settings), topics, recipient_topics)
    agents = Agents(app, settings, crypto)

    # Authenticate, validate and normalise each input.
    ingest = IngestRouter(context, topics, create_receipt_topics=create_receipt_topics)
    agents.add(
        "ingest",
        raw_topic(topics.ingest),
        lambda m: ingest.route(ingest_record(m), m.key),
        encrypted=False,
        replacing=lambda m, refused, error: ingest.replacing(ingest_record(m), m.key, refused, error),
        failing=lambda m, error: ingest.internal_error(
            ingest_record(m), m.key, f"the hub failed on this input ({error})"
        ),
    )
    # One agent per patient's partition resolves each input's patient, drops known facts, publishes
    # the pathway and the receipt, and decides each event for each recipient as it publishes it:
    # audits every decision, sends what is permitted; a GP practice's copy goes on to its alerts,
    # from exactly what that practice may see (hub.streams.routing.IdentityRouter).
    alerts = alert_router(
        agents, settings=settings, topics=topics, context=context, recipients=recipients, networks=networks
    )
    share = ShareRouter(
        ShareStage(
            recipients,
            policy or load_policy(settings.policy_file),
            agents.table("share-state", writers="patient"),
            topic_prefix=topics.prefix,
            audit_topic=topics.audit_unsealed,
            merge_topic=topics.share_merge,
            decided=agents.table("share-decided", writers="patient"),
        ),
        alerts,
    )
    identity = IdentityRouter(
        IdentityStage(
            agents.table("identity-aliases", writers="patient"),
            agents.table("identity-seen-messages", writers="patient"),
            agents.table("identity-seen-events", writers="patient"),
        ),
        topics,
        share,
    )
    agents.add("identity", raw_topic(topics.identity), lambda m: identity.route(m.value), writes="patient")
    # Carry a linked identity's sharing state to the surviving id (co-partitioned with the pathway).
    agents.add(
        "share-merge", raw_topic(topics.share_merge), lambda m: share.route_merge(m.value), writes="patient"
    )
    # Chain every stage's AuditEvents into hub.audit.v1, one writer per partition (hub.audit): the
    # deciding agents' as they send them, the other stages' from hub.audit-unsealed.v1.
    agents.add_sealing(
        raw_topic(topics.audit_unsealed),
        chain_writer(app, settings, topics, raw_topic, chain_key=audit_chain_key),
    )

    @app.timer(interval=REGISTRY_CHECK_SECONDS)  # type: ignore[untyped-decorator]  # faust's is untyped
    async def refresh_sources() -> None:
        """Ingest looks at the registry as inputs come; this looks without them too, so that a source
        just registered has its receipt topic (which `hub publish` waits on) before its first input."""
        ingest.refresh_registry()

    schedule_ingest_purge(app, settings, topics)
    # hub_table_keys: every table's size, counted by a faust timer (docs/OPERATIONS.md).
    metrics.watch_tables(app)
    return app


def alert_router(
    agents: Agents,
    *,
    settings: Settings,
    topics: TopicNames,
    context: IngestContext,
    recipients: RecipientRegistry,
    networks: NetworkRegistry | None,
) -> AlertRouter | None:
    """The eligibility stage the deciding agents hand GP practices' copies to (None: no practice or network).

    Its tables are written by the agents that decide, on the partition of the patient's pathway events
    (the practices' topics are keyed by patient as the pathway is, with the same partition count).
    """
    practices = {r.id: r for r in recipients if r.kind == "gp"}
    if not practices or networks is None or not len(networks):
        return None
    practice_topics = {rid: topics.prefix + r.topic for rid, r in practices.items()}
    alerts = AlertRouter(
        EligibilityStage(
            practices,
            networks,
            context.registry,
            agents.table("eligibility-facts", writers="patient"),
            agents.table("eligibility-alerted", writers="patient"),
        ),
        topics,
        practice_topics,
    )
    eligibility = alerts.stage
    watched = {"signature": _folder_signature(settings.networks_dir)}

    @agents.app.timer(interval=NETWORKS_RELOAD_SECONDS)  # type: ignore[untyped-decorator]  # faust's is untyped
    async def reload_networks() -> None:
        """Networks are files a network team edits: pick changes up; a bad file changes nothing."""
        signature = _folder_signature(settings.networks_dir)
        if signature != watched["signature"]:
            watched["signature"] = signature
            eligibility.networks = reload(settings.networks_dir, eligibility.networks)

    return alerts
