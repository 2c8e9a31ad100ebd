"""The faust app: topics, tables and the thin agents of every stage, built from settings by an entry point."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust

from hub import metrics
from hub.alerts.stage import EligibilityStage
from hub.audit.chainkey import ChainKey
from hub.audit.stage import add_sealing_agent
from hub.consent import PolicyConfig, RecipientRegistry, load_policy
from hub.consent.share import ShareStage
from hub.crypto.config import keyring_from_settings
from hub.crypto.keyring import Keyring
from hub.crypto.records import RecordOpener, RecordSealer, SealedTable, patient_of_table_key
from hub.errors import CryptoError, ErrorCode, KeyDestroyed
from hub.identity.stage import IdentityStage
from hub.ingest.outcome import IngestRecord, KafkaCoordinates, Rejected
from hub.ingest.pipeline import IngestContext, message_id_of, printable_id
from hub.kafka.security import KafkaSecurity
from hub.logging import bind_kafka_coordinates, clear_bound, get_logger
from hub.networks import NetworkRegistry, reload
from hub.records import SOURCE_HEADER, Outgoing, encode_json, headers_of
from hub.settings import Settings
from hub.streams import counting
from hub.streams.batch_writes import BatchWrites
from hub.streams.batches import take_batches
from hub.streams.delivery import LAST_BACKOFF_SECONDS, deliver
from hub.streams.routing import (
    REGISTRY_CHECK_SECONDS,
    AlertRouter,
    IdentityRouter,
    IngestRouter,
    ShareRouter,
)
from hub.streams.store import STORE_URLS, claim_table_folder, table_options
from hub.topics import TopicNames

log = get_logger(__name__)

#: The faust tables of the worker; their changelog topics are created before faust starts (see
#: ``hub.streams.worker.create_contract_topics``): when faust creates them itself at start-up, the
#: consumer can miss them in its first metadata and wait on their recovery forever.
TABLES = (
    "identity-aliases",
    "identity-seen-messages",
    "identity-seen-events",
    "share-state",
    "share-decided",
    "eligibility-facts",
    "eligibility-alerted",
)


#: Tables whose values are sealed under the entry's patient key (hub.crypto.records.SealedTable);
#: ``identity-seen-messages`` holds source message ids and event ids only, in the clear.
SEALED_TABLES = frozenset(TABLES) - {"identity-seen-messages"}

#: How often the worker looks for edited network files.
NETWORKS_RELOAD_SECONDS = 30.0


def _folder_signature(folder: Path) -> tuple[tuple[str, float], ...]:
    """Names and modification times of a folder's JSON files: changes when a file is edited."""
    try:
        return tuple(sorted((p.name, p.stat().st_mtime) for p in folder.glob("*.json")))
    except OSError:
        return ()


#: A batch: at most this many records, or those that arrived within this time (a hop's added latency
#: at low load; hub.streams.app agent).
BATCH_MAX = 200
BATCH_WITHIN_SECONDS = 0.01
PRODUCER_LINGER_SECONDS = 0.002

#: Largest record between stages: one input's normalised events are bigger than the input.
INTERNAL_RECORD_LIMIT = 16 * 1024 * 1024


def ingest_record(message: Any) -> IngestRecord:
    """The pure core's view of a faust message."""
    return IngestRecord(
        value=message.value,
        headers=headers_of(message.headers),
        origin=KafkaCoordinates(message.topic, message.partition, message.offset),
        timestamp=datetime.fromtimestamp(message.timestamp, tz=UTC),
    )


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
            deleted, left = await asyncio.to_thread(
                purge_processed_ingest, settings.bootstrap_servers, topics.ingest, settings.app_id, wait=0.0
            )
        except HubError as exc:
            log.warning("ingest.purge_failed", code=str(exc.code))
        else:
            if deleted:
                log.info("ingest.purged", deleted=deleted, waiting=left)


def erased_input(record: IngestRecord, topics: TopicNames, at: datetime) -> list[Outgoing]:
    """What ingest sends instead when an input's patient was erased: a reject's receipt and audit.

    Not its bytes to the DLQ: after `hub erase` the hub keeps nothing new of that patient.
    """
    from hub.consent.audit import audit_reject  # noqa: PLC0415
    from hub.ingest.receipts import receipt, receipt_key  # noqa: PLC0415
    from hub.streams.routing import receipt_records  # noqa: PLC0415

    rejected = Rejected(
        ErrorCode.PATIENT_ERASED,
        "this patient's data was erased; the hub keeps nothing new about them",
        printable_id(record.header(SOURCE_HEADER)),
        message_id_of(record),
    )
    key = receipt_key(rejected)
    return [
        Outgoing(
            topics.audit_unsealed,
            key.encode(),
            encode_json(audit_reject(rejected, origin=record.origin, recorded=at)),
        ),
        # Only an accepted input's record is sealed under its patient's key, so its source is a
        # registered one; ``at`` is the record's timestamp, as every receipt's (hub.ingest.receipts).
        *receipt_records(
            topics,
            key,
            receipt(rejected, record.origin, at=record.timestamp),
            registered=rejected.source_id is not None,
        ),
    ]


class StreamCrypto:
    """The agents' encryption at rest: open each record read, seal each record sent (``hub.crypto``)."""

    def __init__(self, keyring: Keyring, topics: TopicNames, recipient_topics: Iterable[str]) -> None:
        self.topics = topics
        self.keyring = keyring
        self.sealer = RecordSealer(keyring, topics, recipient_topics)
        self.opener = RecordOpener(keyring)

    def route(
        self, name: str, message: Any, route: Callable[[Any], list[Outgoing]], *, encrypted: bool
    ) -> list[Outgoing]:
        """Open the message (when its topic is ``encrypted``), route it, seal what it sends."""
        if encrypted and not self.opened(name, message):
            return []
        plain = route(message)
        # Sealed values cannot be read when counted: count what the outputs say before sealing.
        counting.count_outputs(plain)
        return self.sealed(name, message, plain)

    def sealed(self, name: str, message: Any, outgoing: list[Outgoing]) -> list[Outgoing]:
        """The outputs as sent: sealed where they carry clinical data; an erased patient's dropped."""
        sent: list[Outgoing] = []
        for out in outgoing:
            try:
                value, headers = self.sealer.seal(out.topic, out.key, out.value, out.headers)
            except KeyDestroyed:
                if name == "ingest":
                    # The whole input is about an erased patient: it ends as a reject, nothing else.
                    return erased_input(ingest_record(message), self.topics, datetime.now(UTC))
                log.info("crypto.record_dropped", code=str(ErrorCode.CRYPTO_KEY_DESTROYED), stage=name)
                continue
            sent.append(Outgoing(out.topic, out.key, value, headers))
        return sent

    def opened(self, name: str, message: Any) -> bool:
        """Replace the message's value by its plaintext; False (logged by code, never content) if unusable."""
        try:
            message.value = self.opener.open(
                message.topic, message.value, headers_of(message.headers), required=True
            )
        except CryptoError as exc:
            # A poison record never stops the partition; an erased patient's records are simply gone.
            level = log.info if isinstance(exc, KeyDestroyed) else log.error
            level("crypto.record_skipped", code=str(exc.code), stage=name)
            return False
        return True


def make_table(app: faust.App, settings: Settings, keyring: Keyring, name: str) -> BatchWrites:
    """One of the worker's tables; values of the SEALED_TABLES are sealed under their patient's key.

    Co-partitioned with the topic of its agent (hub.identity.v1 or hub.pathway.v1, both keyed by
    patient): each worker remembers only its own patients. Writes are held for a batch and written
    once per key (hub.streams.batch_writes): the agent using it flushes it.
    """
    stored: dict[str, Any] = {
        # RocksDB with bounded memory, the dedupe horizon as TTL (hub.streams.store); None for memory.
        "options": table_options(settings, name),
        # hub_table_changelog_records_total: what a start (or a standby copy) read from the changelog.
        "on_changelog_event": metrics.changelog_reader(name),
    }
    if name not in SEALED_TABLES:
        plain = app.Table(name, default=None, partitions=settings.topic_partitions, **stored)
        return BatchWrites(plain, name=name)
    # Sealed values are bytes: the changelog and the state store hold ciphertext only.
    raw = app.Table(
        name,
        default=None,
        partitions=settings.topic_partitions,
        # faust derives the "raw" serializer from value_type=bytes (tables take no value_serializer).
        value_type=bytes,
        **stored,
    )
    sealed = SealedTable(
        raw, keyring, topic=TopicNames.changelog(settings.app_id, name), key_id_of=patient_of_table_key
    )
    return BatchWrites(sealed, name=name)


def create_app(  # noqa: PLR0915 - one wiring function: every agent and table in one place
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
    """The faust app: ingest, identity and share agents; call once per worker process.

    Records that carry clinical data are sealed on their way out and opened on their way in
    (``hub.crypto.records``); without a ``keyring`` one is made from the settings' KEK and key store,
    and without an ``audit_chain_key`` the sealing stage reads it from the settings (hub.audit).
    ``create_receipt_topics`` makes the receipt topics of sources added while the worker runs.
    """
    topics = TopicNames(settings.topic_prefix)
    app = faust.App(
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
        # A batch's records leave together (hub.streams.app agent): a few ms of linger fills produce
        # requests (1.8 records a request without, docs/PERFORMANCE.md). No compression: recipients
        # read their topics with clients in any language, and lz4/zstd need a codec library in some
        # of them (kafka-python, kafkajs); a topic's compression.type can still be set on the broker.
        producer_linger=PRODUCER_LINGER_SECONDS,
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
            topics.audit_unsealed,
            topics.share_merge,
            topics.alerts,
            *(topics.prefix + recipient.topic for recipient in recipients),
            *(topics.source_receipts(source_id) for source_id in context.registry.sources),
        )
    }

    crypto = StreamCrypto(
        keyring or keyring_from_settings(settings),
        topics,
        (topics.prefix + recipient.topic for recipient in recipients),
    )
    # Every table, each flushed by the agent that wrote it at the end of its batch (make_table).
    tables: list[BatchWrites] = []

    def table(name: str) -> BatchWrites:
        made = make_table(app, settings, crypto.keyring, name)
        tables.append(made)
        return made

    ingest_router = IngestRouter(context, topics, create_receipt_topics=create_receipt_topics)
    identity_router = IdentityRouter(
        IdentityStage(
            aliases=table("identity-aliases"),
            seen_messages=table("identity-seen-messages"),
            seen_events=table("identity-seen-events"),
        ),
        topics,
    )

    share_router = ShareRouter(
        ShareStage(
            recipients,
            policy or load_policy(settings.policy_file),
            table("share-state"),
            topic_prefix=topics.prefix,
            audit_topic=topics.audit_unsealed,
            merge_topic=topics.share_merge,
            decided=table("share-decided"),
        )
    )

    async def send(out: Outgoing) -> Any:
        topic = outputs.get(out.topic)
        if topic is None:
            # A source's own receipt topic (hub.receipts.<source>.v1): sources come and go with the
            # registry, which the worker reloads while it runs.
            topic = outputs[out.topic] = raw_topic(out.topic)
        # force: sent now, not attached to the input for later (faust's default), so the agent
        # learns of each record's fate before it takes the next input (hub.streams.delivery).
        return await topic.send(key=out.key, value=out.value, headers=list(out.headers), force=True)

    async def deliver_batch(
        name: str,
        batch: list[tuple[Any, list[Outgoing]]],
        replacing: Callable[[Any, Outgoing, str], list[Outgoing]] | None,
    ) -> None:
        """Deliver a batch's records at once; a record refused for good is replaced as ``replacing`` says.

        With ``replacing`` (ingest), an input never goes without an outcome: a record with no
        substitute (a receipt), or a refused substitute, is resent until Kafka takes it, holding
        the partition (the lag shows it). Without it, a refused record is logged, counted and
        skipped: a poison record never stops a partition.
        """
        owner = {id(out): message for message, outs in batch for out in outs}
        records = [out for _, outs in batch for out in outs]
        for refused in await deliver(send, records, stage=name):
            counting.failed(name)
            log.error("stage.record_refused", stage=name, topic=refused.record.topic, error=refused.error)
            if replacing is None:
                continue
            message = owner[id(refused.record)]
            plain = replacing(message, refused.record, refused.error)
            counting.count_outputs(plain)
            again = crypto.sealed(name, message, plain) if plain else [refused.record]
            while await deliver(send, again, stage=name):
                log.error("stage.record_refused_again", stage=name, error=refused.error)
                await asyncio.sleep(LAST_BACKOFF_SECONDS)

    def agent(
        name: str,
        topic: faust.TopicT,
        route: Callable[[Any], list[Outgoing]],
        *,
        encrypted: bool = True,
        replacing: Callable[[Any, Outgoing, str], list[Outgoing]] | None = None,
        failing: Callable[[Any, str], list[Outgoing]] | None = None,
    ) -> None:
        """A thin agent: per batch of records, route each (open, decide, seal), then send them all.

        Batches (``take_batches``: up to BATCH_MAX records, or what came within BATCH_WITHIN_SECONDS) pay
        one round of acknowledgements and one producer linger for many inputs; a batch's offsets are
        acknowledged only after the body is done with it (never when the agent stops on it), and every
        record sent is acknowledged by Kafka before the next batch. concurrency=1: with more, faust can
        commit offsets past unfinished events (DESIGN.md 4). A record Kafka refuses for good is sent as
        ``replacing`` says, or else logged and counted. A record on which routing raises (a bug) ends as
        ``failing`` says (ingest: an internal-error reject) or is logged and skipped: it never stops the
        partition, and never takes the rest of its batch with it. Each record is counted in
        ``hub.metrics``
        (:mod:`hub.streams.counting`).
        """

        def routed(stream: Any, event: Any) -> list[Outgoing]:
            # faust's tables write a key's changelog to the partition of the "current event": in a
            # batch that is the record being routed, not the last one fetched.
            stream._set_current_event(event)
            message = event.message
            bind_kafka_coordinates(message.topic, message.partition, message.offset)
            try:
                return crypto.route(name, message, route, encrypted=encrypted)
            except Exception as exc:
                counting.failed(name)
                log.error("stage.record_failed", stage=name, error=type(exc).__name__)
                plain = failing(message, type(exc).__name__) if failing is not None else []
                counting.count_outputs(plain)
                return crypto.sealed(name, message, plain)
            finally:
                clear_bound()

        async def process(stream: Any) -> None:
            # Not faust's take_events: it acknowledges a batch the agent stopped on (hub.streams.batches).
            async for events in take_batches(stream, BATCH_MAX, BATCH_WITHIN_SECONDS):
                started = time.perf_counter()
                batch = [(event.message, routed(stream, event)) for event in events]
                # Each key the batch wrote, written once (hub.streams.batch_writes); no await between
                # routing and this, so no other agent sees a batch's writes half done.
                for written in tables:
                    written.flush(stream)
                stream._set_current_event(None)
                await deliver_batch(name, batch, replacing)
                # Each record gets its share of the batch's time (hub_stage_seconds is per record).
                each = (time.perf_counter() - started) / len(batch)
                for _, outgoing in batch:
                    counting.observe(name, outgoing, each, contents=False)

        app.agent(topic, name=name, concurrency=1)(process)

    # Authenticate, validate and normalise each input.
    agent(
        "ingest",
        ingest_topic,
        lambda m: ingest_router.route(ingest_record(m), m.key),
        encrypted=False,
        replacing=lambda m, refused, error: ingest_router.replacing(ingest_record(m), m.key, refused, error),
        failing=lambda m, error: ingest_router.internal_error(
            ingest_record(m), m.key, f"the hub failed on this input ({error})"
        ),
    )
    # Resolve each input's patient, drop known facts, publish the pathway and the receipt.
    agent("identity", identity_topic, lambda m: identity_router.route(m.value))
    # Decide each event for each recipient: audit every decision, send what is permitted.
    agent("share", pathway_topic, lambda m: share_router.route(m.value))
    # Carry a linked identity's sharing state to the surviving id (co-partitioned with the pathway).
    agent("share-merge", merge_topic, lambda m: share_router.route_merge(m.value))
    # Chain every stage's AuditEvents into hub.audit.v1, one writer per partition (hub.audit).
    add_sealing_agent(app, settings, topics, raw_topic, chain_key=audit_chain_key)

    # GP alerts, from each GP practice's own topic: only what that practice may see.
    practices = {r.id: r for r in recipients if r.kind == "gp"}
    if practices and networks is not None and len(networks):
        practice_topics = {rid: topics.prefix + r.topic for rid, r in practices.items()}
        alert_router = AlertRouter(
            EligibilityStage(
                practices,
                networks,
                context.registry,
                table("eligibility-facts"),
                table("eligibility-alerted"),
            ),
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

    @app.timer(interval=REGISTRY_CHECK_SECONDS)  # type: ignore[untyped-decorator]  # faust's is untyped
    async def refresh_sources() -> None:
        """Ingest looks at the registry as inputs come; this looks without them too, so that a source
        just registered has its receipt topic (which `hub publish` waits on) before its first input."""
        ingest_router.refresh_registry()

    schedule_ingest_purge(app, settings, topics)
    # hub_table_keys: every table's size, counted by a faust timer (docs/OPERATIONS.md).
    metrics.watch_tables(app)
    return app
