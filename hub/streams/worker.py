"""Start one ingest worker process: settings → registry → topics → faust app → run until stopped."""

from __future__ import annotations

import functools
import gc
from collections.abc import Iterable
from pathlib import Path

import faust

from hub.consent import PolicyConfig, RecipientRegistry, load_policy, load_recipients
from hub.crypto.records import DLQ_RETENTION_MS, INGEST_RETENTION_MS
from hub.crypto.retention import DLQ_SEGMENT_MS, bound_for
from hub.ingest.pipeline import IngestContext
from hub.ingest.receipts import CONTRACT_RECORD_FACTOR
from hub.kafka.admin import align_topic_configs, ensure_topics, retrying, topic_ids
from hub.kafka.outage import watch_broker_of
from hub.kafka.security import KafkaSecurity
from hub.logging import configure_logging, get_logger
from hub.metrics import advertise, start_server
from hub.networks import load_networks
from hub.normalise.codes import load_concept_maps
from hub.settings import Settings
from hub.sources.registry import load_sources
from hub.streams.app import INTERNAL_RECORD_LIMIT, create_app
from hub.streams.store import changelog_configs, forget_foreign_tables, tune_malloc
from hub.streams.tables import TABLES
from hub.topics import TopicNames

log = get_logger(__name__)


def ingest_context(settings: Settings) -> IngestContext:
    """The pure core's context from settings; raises ConfigError with what to fix."""
    registry = load_sources(settings.sources_file)
    return IngestContext(
        registry=registry,
        code_mappers={
            source.id: load_concept_maps(source.code_mappings)
            for source in registry.sources.values()
            if source.code_mappings
        },
        pseudonym_key=settings.pseudonym_key_bytes(),
        max_payload_bytes=settings.max_payload_bytes,
        signature_tolerance_seconds=settings.signature_tolerance_seconds,
        allow_test_ins=settings.allow_test_ins,
    )


def share_config(settings: Settings) -> tuple[RecipientRegistry, PolicyConfig]:
    """The recipients (none without a file: deny by default) and the policy."""
    recipients = (
        load_recipients(settings.recipients_file)
        if settings.recipients_file is not None
        else RecipientRegistry({})
    )
    return recipients, load_policy(settings.policy_file)


def registered_source_ids(settings: Settings) -> list[str]:
    """The ids of the source registry (schema-checked; its secrets are not needed to name topics)."""
    from hub.acl.sync import source_ids  # noqa: PLC0415 - the registry's ids, as `hub acl` reads them

    return source_ids(settings.sources_file)


def create_receipt_topics(settings: Settings, source_ids: Iterable[str]) -> list[str]:
    """Create the missing receipt topics of these registered sources (``hub.receipts.<id>.v1``)."""
    names = TopicNames(settings.topic_prefix)
    return ensure_topics(
        settings.bootstrap_servers,
        [names.source_receipts(source_id) for source_id in source_ids],
        partitions=settings.topic_partitions,
        replication_factor=settings.replication_factor,
        security=KafkaSecurity.from_settings(settings),
        configs={"max.message.bytes": str(CONTRACT_RECORD_FACTOR * settings.max_payload_bytes)},
    )


def create_contract_topics(settings: Settings, source_ids: Iterable[str] | None = None) -> list[str]:
    """Create the contract's topics, every recipient's, every registered source's receipt topic
    (``source_ids``; default: those of HUB_SOURCES_FILE) and the internal ones; return those created."""
    names = TopicNames(settings.topic_prefix)
    recipients, _ = share_config(settings)
    sources = registered_source_ids(settings) if source_ids is None else list(source_ids)
    # Replication None: min(3, brokers) with min.insync.replicas=2 on a cluster (hub.kafka.admin).
    security = KafkaSecurity.from_settings(settings)
    # The sources' bytes in the clear: ingest is a transit buffer whose segments roll and leave the
    # disks within HUB_ERASURE_BOUND_SECONDS of processing (hub.crypto.retention); the DLQ (sealed) is
    # kept for replay, its segments rolled daily. Created first, so the call below skips them.
    bound = bound_for(
        settings.bootstrap_servers,
        bound_seconds=settings.erasure_bound_seconds,
        purge_seconds=settings.ingest_purge_seconds,
        security=security,
    )
    segments = {names.ingest: bound.topic_configs(), names.dlq: {"segment.ms": str(DLQ_SEGMENT_MS)}}
    created: list[str] = []
    for topic, retention_ms in ((names.ingest, INGEST_RETENTION_MS), (names.dlq, DLQ_RETENTION_MS)):
        created += ensure_topics(
            settings.bootstrap_servers,
            [topic],
            partitions=settings.topic_partitions,
            replication_factor=settings.replication_factor,
            security=security,
            configs={
                "max.message.bytes": str(CONTRACT_RECORD_FACTOR * settings.max_payload_bytes),
                "retention.ms": str(retention_ms),
                **segments[topic],
            },
        )
        # An older topic, or a changed bound: the segment configs the bound rests on are set again
        # (its retention stays as the operator may have set it).
        aligned = align_topic_configs(settings.bootstrap_servers, [topic], segments[topic], security=security)
        for changed in aligned:
            log.info("topics.configs_changed", topic=changed, configs=segments[topic])
    created += ensure_topics(
        settings.bootstrap_servers,
        [
            *names.contract(),
            *(names.prefix + recipient.topic for recipient in recipients),
            *(names.source_receipts(source_id) for source_id in sources),
        ],
        partitions=settings.topic_partitions,
        replication_factor=settings.replication_factor,
        security=security,
        # Bodies up to the hub's limit must fit, with headers, in one Kafka record.
        configs={"max.message.bytes": str(CONTRACT_RECORD_FACTOR * settings.max_payload_bytes)},
    )
    created += ensure_topics(
        settings.bootstrap_servers,
        names.internal(),
        partitions=settings.topic_partitions,
        replication_factor=settings.replication_factor,
        security=security,
        configs={"max.message.bytes": str(INTERNAL_RECORD_LIMIT)},
    )
    # Compacted, deletions kept for the horizon; the dedupe tables' also deleted past it
    # (hub.streams.store.changelog_configs).
    changelogs: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for table in TABLES:
        configs = tuple(sorted(changelog_configs(settings, table).items()))
        changelogs.setdefault(configs, []).append(TopicNames.changelog(settings.app_id, table))
    for configs, topics in changelogs.items():
        created += ensure_topics(
            settings.bootstrap_servers,
            topics,
            partitions=settings.topic_partitions,
            replication_factor=settings.replication_factor,
            security=security,
            configs={**dict(configs), "max.message.bytes": str(INTERNAL_RECORD_LIMIT)},
        )
        # An existing changelog keeps the configs it was created with: a changed horizon, or a
        # changelog made before the horizon existed, is brought in line here.
        aligned = align_topic_configs(settings.bootstrap_servers, topics, dict(configs), security=security)
        for topic in aligned:
            log.info("topics.configs_changed", topic=topic, configs=dict(configs))
    # faust's leader-election topic has one partition by design.
    return created + ensure_topics(
        settings.bootstrap_servers,
        [f"{settings.app_id}-__assignor-__leader"],
        partitions=1,
        replication_factor=settings.replication_factor,
        security=security,
    )


def forget_foreign_tables_of(settings: Settings, tabledir: Path) -> None:
    """Before faust opens them: drop the folder's tables whose changelog is another topic now, or all
    of a folder an earlier store format wrote (hub.streams.store.forget_foreign_tables); faust then
    rebuilds them from the changelogs."""
    changelogs = {table: TopicNames.changelog(settings.app_id, table) for table in TABLES}
    ids = topic_ids(
        settings.bootstrap_servers, changelogs.values(), security=KafkaSecurity.from_settings(settings)
    )
    # A changelog not there yet (faust makes it at start) has no id: its table is left as it is.
    known = {table: ids[topic] for table, topic in changelogs.items() if topic in ids}
    removed = forget_foreign_tables(tabledir, known)
    if removed:
        log.warning(
            "tables.rebuilt",
            tables=removed,
            reason="changelog topic not the one the folder copies, or a folder of an earlier store format",
        )


#: The garbage collector's thresholds (Python's: 700, 10, 10): a young collection after this many new
#: objects. The stages make few reference cycles (full collections found nearly nothing to free), and
#: a worker makes hundreds of thousands of short-lived objects a second under load.
GC_THRESHOLDS = (10_000, 10, 10)


def freeze_startup_objects() -> None:
    """Keep what start-up made (modules, FHIR models, the app: most of the heap, and it lives as long
    as the process) out of the garbage collector's full collections.

    Each full collection walked all of them: 110-160 ms with the event loop stopped, every 3-5 s under
    load, and nearly all found nothing to free (docs/PERFORMANCE.md, session 7): a pause every agent
    and every record in flight waits through.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_worker(settings: Settings) -> None:
    """Run a worker in the foreground; returns when it is stopped (SIGINT/SIGTERM)."""
    malloc = tune_malloc()  # before RocksDB's and the clients' threads start (hub.streams.store)
    configure_logging(settings.log_level, json=settings.log_json)
    watch_broker_of(settings)  # a broker outage: two events in the log, not a flood (hub.kafka.outage)
    context = ingest_context(settings)
    # A broker away as the worker starts (one node of a cluster killed, a broker restarting) delays
    # the start instead of ending it: the admin requests below are the only ones that do not wait.
    created = retrying(
        "create topics", lambda: create_contract_topics(settings, source_ids=context.registry.sources)
    )
    log.info("worker.starting", sources=len(context.registry), topics_created=created, malloc_tuned=malloc)
    recipients, policy = share_config(settings)
    networks = load_networks(settings.networks_dir)
    app = create_app(
        settings,
        context,
        recipients=recipients,
        policy=policy,
        networks=networks,
        create_receipt_topics=functools.partial(create_receipt_topics, settings),
    )
    if settings.table_store == "rocksdb://":
        tabledir = Path(app.conf.tabledir)
        retrying("check table folders", lambda: forget_foreign_tables_of(settings, tabledir))
    try:
        host, port = start_server(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        # A taken port (a second worker on the host) must not stop the stream: the scrape fails instead.
        log.warning(
            "metrics.unavailable",
            host=settings.metrics_host,
            port=settings.metrics_port,
            error=type(exc).__name__,
            hint="set HUB_METRICS_PORT to a free port, or 0 for any",
        )
    else:
        log.info("metrics.listening", host=host, port=port, url=f"http://{host}:{port}/metrics")
        advertise(settings.state_dir, settings.app_id, host, port)  # how `hub status` finds port 0
    freeze_startup_objects()
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        # Keep the hub's structlog configuration (with redaction) instead of mode's own.
        override_logging=False,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
