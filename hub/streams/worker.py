"""Start one ingest worker process: settings → registry → topics → faust app → run until stopped."""

from __future__ import annotations

import faust

from hub.ingest.pipeline import IngestContext
from hub.kafka.admin import ensure_topics
from hub.logging import configure_logging, get_logger
from hub.normalise.codes import load_concept_maps
from hub.settings import Settings
from hub.sources.registry import load_sources
from hub.streams.app import INTERNAL_RECORD_LIMIT, create_app
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


def create_contract_topics(settings: Settings) -> list[str]:
    """Create the contract's and the internal topics; return those created."""
    names = TopicNames(settings.topic_prefix)
    created = ensure_topics(
        settings.bootstrap_servers,
        names.contract(),
        partitions=settings.topic_partitions,
        replication_factor=settings.replication_factor,
        # Bodies up to the hub's limit must fit, with headers, in one Kafka record.
        configs={"max.message.bytes": str(2 * settings.max_payload_bytes)},
    )
    return created + ensure_topics(
        settings.bootstrap_servers,
        names.internal(),
        partitions=settings.topic_partitions,
        replication_factor=settings.replication_factor,
        configs={"max.message.bytes": str(INTERNAL_RECORD_LIMIT)},
    )


def run_worker(settings: Settings) -> None:
    """Run a worker in the foreground; returns when it is stopped (SIGINT/SIGTERM)."""
    configure_logging(settings.log_level, json=settings.log_json)
    context = ingest_context(settings)
    created = create_contract_topics(settings)
    log.info("worker.starting", sources=len(context.registry), topics_created=created)
    app = create_app(settings, context)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        # Keep the hub's structlog configuration (with redaction) instead of mode's own.
        override_logging=False,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
