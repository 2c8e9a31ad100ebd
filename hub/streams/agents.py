"""The worker's agents, made one way: batches in, each record opened, routed and sealed, the batch's
records sent and acknowledged by Kafka, then the tables written once per key, before the next batch.

``create_app`` (hub.streams.app) wires the stages with :class:`Agents`; this module holds what every
agent shares: encryption at rest on the way in and out (:class:`StreamCrypto`), the tables
(:func:`make_table`), delivery with its replacements, and the agent loop itself (:meth:`Agents.add`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import faust
from faust.exceptions import ConsumerNotStarted

from hub.audit.stage import ChainWriter
from hub.crypto.keyring import Keyring
from hub.crypto.records import RecordOpener, RecordSealer
from hub.errors import BatchOutdated, CryptoError, ErrorCode, KeyDestroyed
from hub.ingest.outcome import IngestRecord, KafkaCoordinates, Rejected
from hub.ingest.pipeline import message_id_of, printable_id
from hub.logging import bind_kafka_coordinates, clear_bound, get_logger
from hub.records import SOURCE_HEADER, Outgoing, encode_json, headers_of
from hub.settings import Settings
from hub.streams import counting
from hub.streams.batch_writes import WRITER, BatchWrites
from hub.streams.batches import Batch, read_in, take_batches
from hub.streams.delivery import LAST_BACKOFF_SECONDS, deliver
from hub.streams.tables import make_table
from hub.topics import TopicNames

log = get_logger(__name__)

#: A batch: at most this many records, or those that arrived within this time (a hop's added latency
#: at low load; :meth:`Agents.add`).
BATCH_MAX = 200
BATCH_WITHIN_SECONDS = 0.002
#: While the consumer knows of records waiting behind a batch (a backlog), its window stretches up to
#: this long after its first record, to fill it (hub.streams.batches; docs/PERFORMANCE.md, session 14).
BATCH_LONGEST_SECONDS = 0.020
#: A backlog: at least this many records known to wait behind a batch's partitions.
BATCH_BACKLOG = 50

#: How often a batch done during a rebalance looks whether it has ended (:meth:`Agents.settled_generation`).
REBALANCE_POLL_SECONDS = 0.05

#: The stages whose AuditEvents (the share decisions') are chained into ``hub.audit.v1`` as they are
#: sent, instead of going through ``hub.audit-unsealed.v1`` and the sealing agent: their records are
#: keyed by patient, so the partition of the record being routed is the partition of its AuditEvents'
#: chain, held by this worker. ``identity`` decides each event it publishes (hub.streams.routing).
CHAINING_STAGES = frozenset({"identity", "share-merge"})

#: ``route(message)``: the plain records one input gives.
Route = Callable[[Any], list[Outgoing]]
#: ``replacing(message, refused record, error)``: what to send instead of a record Kafka refused.
Replacing = Callable[[Any, Outgoing, str], list[Outgoing]]
#: ``failing(message, error)``: what a record on which routing raised ends as.
Failing = Callable[[Any, str], list[Outgoing]]


def read_before(events: Iterable[Any], generation: int | None) -> bool:
    """True if any of the events was read before the consumer group's ``generation`` (None: unknown).

    faust stamps each record with the generation it was fetched in, and skips a record of an older one
    when it reads its stream; a batch holds records read before the rebalance began.
    """
    events = list(events)
    return generation is None or len(read_in(events, generation)) < len(events)


def write_tables(name: str, stream: Any, events: Batch, tables: list[BatchWrites]) -> None:
    """Write the batch's table writes, or forget them if it is to be read again."""
    if not events.read_again:
        for table in tables:
            table.flush(stream)
        return
    # Its partitions were reassigned while it was processed: another worker may own them now, and has
    # rebuilt their tables from the changelogs without this batch's writes. Written now, they would
    # land in its changelogs after what it writes, and the next rebuild would mix two writers' values
    # (found by tests/integration/test_convergence.py under load: events a recipient waited for, no
    # longer in the patient's waiting index, never released). Not acknowledged either: read again
    # after the rewind that ends every rebalance, and decided by whoever owns the partition then (the
    # records already sent are sent again, under the same ids).
    for table in tables:
        table.discard()
    log.info("stage.batch_read_again", stage=name, records=len(events))


def ingest_record(message: Any) -> IngestRecord:
    """The pure core's view of a faust message."""
    return IngestRecord(
        value=message.value,
        headers=headers_of(message.headers),
        origin=KafkaCoordinates(message.topic, message.partition, message.offset),
        timestamp=datetime.fromtimestamp(message.timestamp, tz=UTC),
    )


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


def records_waiting(consumer: Any, last_offsets: Mapping[Any, int]) -> int:
    """How many records the partitions hold after their last buffered offsets, as the consumer's last
    fetch of each said (its high watermark: the offset the next record will take)."""
    waiting = 0
    for tp, offset in last_offsets.items():
        try:
            highwater = consumer.highwater(tp)
        except (AssertionError, ConsumerNotStarted):
            # aiokafka asserts the partition is assigned (a rebalance revoked it meanwhile), and
            # faust's consumer may not run yet: nothing is known to wait there.
            continue
        if highwater is not None:
            waiting += max(highwater - offset - 1, 0)
    return waiting


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
        """Open the message (when its topic is ``encrypted``) and route it: what it sends, not sealed yet."""
        if encrypted and not self.opened(name, message):
            return []
        plain = route(message)
        # Sealed values cannot be read when counted: count what the outputs say before sealing.
        counting.count_outputs(plain)
        return plain

    def prepare(self, name: str, outgoing: Iterable[Outgoing]) -> None:
        """Make the keys a batch's records will be sealed under, the new ones in one commit.

        Only a head start (hub.crypto.keyring.Keyring.prepare): if it fails, each record's seal makes
        its key as before, and fails the same way if the store does.
        """
        try:
            self.keyring.prepare(self.sealer.keys_of(outgoing))
        except Exception as exc:
            log.warning("crypto.prepare_failed", stage=name, error=type(exc).__name__)

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


def route_batch(
    crypto: StreamCrypto,
    name: str,
    stream: Any,
    events: list[Any],
    route: Route,
    *,
    encrypted: bool,
    failing: Failing | None,
) -> list[tuple[Any, list[Outgoing]]]:
    """Each record of a batch with what it sends, sealed: opened and routed one by one, then sealed
    once all are routed, so that the keys of the whole batch are made in one commit (``prepare``).

    A record on which routing or sealing raises (a bug) ends as ``failing`` says (ingest: an
    internal-error reject) or with nothing sent; it never takes the rest of its batch with it.
    """

    def failed(message: Any, exc: Exception) -> list[Outgoing]:
        counting.failed(name)
        log.error("stage.record_failed", stage=name, error=type(exc).__name__)
        plain = failing(message, type(exc).__name__) if failing is not None else []
        counting.count_outputs(plain)
        return plain

    def routed(event: Any) -> list[Outgoing]:
        # faust's tables write a key's changelog to the partition of the "current event": in a
        # batch that is the record being routed, not the last one fetched.
        stream._set_current_event(event)
        message = event.message
        bind_kafka_coordinates(message.topic, message.partition, message.offset)
        try:
            return crypto.route(name, message, route, encrypted=encrypted)
        except Exception as exc:
            return failed(message, exc)
        finally:
            clear_bound()

    def sealed(message: Any, plain: list[Outgoing]) -> list[Outgoing]:
        bind_kafka_coordinates(message.topic, message.partition, message.offset)
        try:
            return crypto.sealed(name, message, plain)
        except Exception as exc:
            return crypto.sealed(name, message, failed(message, exc))
        finally:
            clear_bound()

    plain = [(event.message, routed(event)) for event in events]
    stream._set_current_event(None)
    crypto.prepare(name, (out for _, outs in plain for out in outs))
    return [(message, sealed(message, outs)) for message, outs in plain]


class Agents:
    """Makes the worker's thin agents and the tables they write; one per faust app.

    The agents send to topics the worker created before faust started (the contract's, the
    recipients', each source's receipts: hub.streams.worker), by their names.
    """

    def __init__(self, app: faust.App, settings: Settings, crypto: StreamCrypto) -> None:
        self.app = app
        self.settings = settings
        self.crypto = crypto
        #: The tables, by the group of agents that writes them (:meth:`table`).
        self.groups: dict[str, list[BatchWrites]] = {}
        #: Per group, the batches routed and not yet written (or discarded), in the order they began.
        self.unwritten: dict[str, list[asyncio.Future[None]]] = {}
        #: The audit chains' writer: the CHAINING_STAGES chain their AuditEvents with it directly.
        self.chain: ChainWriter | None = None

    def table(self, name: str, *, writers: str) -> BatchWrites:
        """A table of the worker (:func:`make_table`), written by the agents added with ``writes=writers``.

        Each of those agents' batches holds its writes from its routing until its records are
        acknowledged (hub.streams.batch_writes); the others read them meanwhile, and write theirs only
        after it (:meth:`add`).
        """
        made = make_table(self.app, self.settings, self.crypto.keyring, name)
        self.groups.setdefault(writers, []).append(made)
        return made

    async def settled_generation(self) -> int | None:
        """The consumer group generation once no rebalance is going on (None: the worker stops first).

        faust raises ``app.rebalancing`` as partitions are revoked and lowers it once the new
        assignment's tables are recovered and its partitions rewound; ``consumer_generation_id`` is
        the generation of the last assignment.
        """
        while self.app.rebalancing:
            if self.app.should_stop:
                return None
            await asyncio.sleep(REBALANCE_POLL_SECONDS)
        return int(self.app.consumer_generation_id)

    def take(self, stream: Any) -> AsyncIterator[Batch]:
        """The stream's batches: cut after BATCH_WITHIN_SECONDS, or up to BATCH_LONGEST_SECONDS while
        at least BATCH_BACKLOG records wait behind them (:func:`records_waiting`)."""
        return take_batches(
            stream,
            BATCH_MAX,
            BATCH_WITHIN_SECONDS,
            longest=BATCH_LONGEST_SECONDS,
            behind=lambda last_offsets: records_waiting(self.app.consumer, last_offsets) >= BATCH_BACKLOG,
        )

    async def current(self, message: Any) -> bool:
        """Whether ``message`` was read in the current generation, once any rebalance has ended."""
        return bool(message.generation_id == await self.settled_generation())

    async def outdated(self, events: list[Any]) -> bool:
        """True if a batch's table writes must not be written: its partitions were reassigned meanwhile.

        Only a batch read before the current generation is read again: the rewind that ended that
        generation's rebalance came after its records were read, so they are sure to come again. A
        batch read since would never come again, its commits held for good (a later batch that read
        the pending writes of one read again is written: what it took from them is decided again,
        to the same effect, when those records come again).
        """
        return read_before(events, await self.settled_generation())

    async def send(self, out: Outgoing) -> Any:
        """Hand one record to the producer; the future of its acknowledgement.

        Straight to the producer, not through faust's ``Topic.send``: the records are bytes already,
        and faust's path (a pending message, a future message, its channel, sensors) took 7.0 s of the
        agents' 56.8 s in session 4's profile (docs/PERFORMANCE.md).
        """
        producer = await self.app.maybe_start_producer()
        return await producer.send(
            out.topic, out.key, out.value, partition=None, timestamp=None, headers=list(out.headers)
        )

    async def deliver_batch(
        self, name: str, batch: list[tuple[Any, list[Outgoing]]], replacing: Replacing | None
    ) -> None:
        """Deliver a batch's records at once; a record refused for good is replaced as ``replacing`` says.

        With ``replacing`` (ingest), an input never goes without an outcome: a record with no
        substitute (a receipt), or a refused substitute, is resent until Kafka takes it, holding
        the partition (the lag shows it). Without it, a refused record is logged, counted and
        skipped: a poison record never stops a partition.
        """
        owner = {id(out): message for message, outs in batch for out in outs}
        records = [out for _, outs in batch for out in outs]
        chain = self.chain if name in CHAINING_STAGES else None

        async def send(out: Outgoing) -> Any:
            message = owner.get(id(out))
            if chain is None or message is None or out.topic != self.crypto.topics.audit_unsealed:
                return await self.send(out)
            # Chained here, on the partition of the event decided (hub.audit.stage.ChainWriter). When
            # a rebalance reassigned it meanwhile, the writer raises BatchOutdated: the batch stops
            # (its records after this one unsent, so no copy leaves without its decision) and is
            # read again by the partition's owner (read before the rebalance's rewind, it is sure
            # to be read again after it).
            return await chain.append(
                message.partition, out.key, out.value or b"", still_current=partial(self.current, message)
            )

        for refused in await deliver(send, records, stage=name):
            counting.failed(name)
            log.error("stage.record_refused", stage=name, topic=refused.record.topic, error=refused.error)
            if replacing is None:
                continue
            message = owner[id(refused.record)]
            plain = replacing(message, refused.record, refused.error)
            counting.count_outputs(plain)
            again = self.crypto.sealed(name, message, plain) if plain else [refused.record]
            while await deliver(self.send, again, stage=name):
                log.error("stage.record_refused_again", stage=name, error=refused.error)
                await asyncio.sleep(LAST_BACKOFF_SECONDS)

    def add_sealing(self, topic: faust.TopicT, chain: ChainWriter) -> None:
        """The sealing agent: chains what the other stages write to ``hub.audit-unsealed.v1`` with
        ``chain``, the writer the deciding agents chain their own AuditEvents with.

        In batches, acknowledged once chained; an AuditEvent whose partition a rebalance reassigned
        while it waited is not chained (the new owner chains that partition: :meth:`ChainWriter.append`)
        and its batch stops there, unacknowledged, to be read again by the partition's owner. The
        records of the batch chained before it are chained again then: two records, two positions, a
        valid chain, and one AuditEvent id for consumers to de-duplicate (hub.audit.verify).
        """
        self.chain = chain

        async def seal(stream: Any) -> None:
            async for events in self.take(stream):
                counting.batch_taken("audit-seal", len(events))
                for event in events:
                    message = event.message
                    try:
                        await chain.append(
                            message.partition,
                            message.key,
                            message.value or b"",
                            still_current=partial(self.current, message),
                        )
                    except BatchOutdated:
                        log.info("stage.batch_read_again", stage="audit-seal", records=len(events))
                        events.read_again = True
                        break

        self.app.agent(topic, name="audit-seal", concurrency=1)(seal)

    def add(
        self,
        name: str,
        topic: faust.TopicT,
        route: Route,
        *,
        encrypted: bool = True,
        writes: str | None = None,
        replacing: Replacing | None = None,
        failing: Failing | None = None,
    ) -> None:
        """A thin agent: per batch of records, route each (open, decide, seal), send them all, then
        write the tables of its group ``writes`` (:meth:`table`).

        Batches (:meth:`take`: up to BATCH_MAX records, or what came within BATCH_WITHIN_SECONDS, longer
        under a backlog) pay one round of acknowledgements and one producer linger for many inputs; a
        batch's offsets are acknowledged only after the body is done with it (never when the agent
        stops on it, nor when a rebalance reassigned its partitions meanwhile: :func:`write_tables`),
        and every record sent is acknowledged by Kafka before the next batch. The tables the batch wrote are
        written once per key (hub.streams.batch_writes) after its records are acknowledged: after a
        crash the tables are never ahead of what was sent. A table that says "released" or "decided"
        while the records it stands for were lost loses them for good: the event read again finds
        nothing left to send. Behind, the tables only make the records read again decide as they did
        and send them again, under the same ids (DESIGN.md 4). concurrency=1:
        with more, faust can commit offsets past unfinished events (DESIGN.md 4). A record Kafka
        refuses for good is sent as ``replacing`` says, or else logged and counted. A record on which
        routing raises (a bug) ends as ``failing`` says (ingest: an internal-error reject) or is logged
        and skipped: it never stops the partition, and never takes the rest of its batch with it.
        Each record is counted in ``hub.metrics`` (:mod:`hub.streams.counting`).
        """
        crypto = self.crypto

        tables = self.groups.get(writes, []) if writes is not None else []
        unwritten = self.unwritten.setdefault(writes, []) if writes is not None else []

        async def process(stream: Any) -> None:
            # This task's writes are its own until its batch is written (hub.streams.batch_writes).
            WRITER.set(name)
            # Not faust's take_events: it acknowledges a batch the agent stopped on (hub.streams.batches).
            async for events in self.take(stream):
                started = time.perf_counter()
                counting.batch_taken(name, len(events))
                # The group's batches begun before this one: this one may have read their writes, so
                # it writes its own after them (share and share-merge; no wait while routing).
                earlier = list(unwritten)
                written = asyncio.get_running_loop().create_future()
                unwritten.append(written)
                batch: list[tuple[Any, list[Outgoing]]] = []
                try:
                    # Read before a rebalance that came after the batch was cut (take_batches leaves
                    # out what was stale at the cut): its rewind reads them again, to be decided on
                    # the tables as they are now.
                    if tables and read_before(events, self.app.consumer_generation_id):
                        events.read_again = True
                    else:
                        batch = route_batch(
                            crypto, name, stream, events, route, encrypted=encrypted, failing=failing
                        )
                        try:
                            await self.deliver_batch(name, batch, replacing)
                        except BatchOutdated:
                            events.read_again = True
                    if earlier:
                        await asyncio.wait(earlier)
                    if tables and not events.read_again:
                        events.read_again = await self.outdated(events)
                except BaseException:
                    # Not sent (the agent stops, or fails): the batch is read again, its writes with it.
                    for table in tables:
                        table.discard()
                    raise
                else:
                    write_tables(name, stream, events, tables)
                finally:
                    unwritten.remove(written)
                    written.set_result(None)
                # Each record gets its share of the batch's time (hub_stage_seconds is per record).
                each = (time.perf_counter() - started) / max(len(batch), 1)
                for _, outgoing in batch:
                    counting.observe(name, outgoing, each, contents=False)

        self.app.agent(topic, name=name, concurrency=1)(process)
