"""What the agents send for one record: the pure cores' outcomes turned into Kafka records."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hub.alerts.stage import EligibilityStage
from hub.consent.audit import audit_reject
from hub.consent.share import ShareStage
from hub.errors import ErrorCode, HubError
from hub.identity.stage import IdentityStage, input_record, link_record
from hub.ingest.outcome import IngestOutcome, IngestRecord, Rejected
from hub.ingest.pipeline import IngestContext, message_id_of, printable_id, process_ingest
from hub.ingest.receipts import dlq_limit, dlq_record, receipt, receipt_key, receipt_topics
from hub.logging import get_logger
from hub.normalise.codes import UnmappedCounter
from hub.records import EVENT_ID_HEADER, SOURCE_HEADER, Outgoing, decode_json, encode_headers, encode_json
from hub.streams import counting
from hub.topics import TopicNames

log = get_logger(__name__)

#: How often ingest looks for a changed source registry or key file (a `hub keys rotate`, a new
#: source): a stat of a few files, so a rotated key is accepted within seconds, without a restart.
REGISTRY_CHECK_SECONDS = 2.0


def receipt_records(
    topics: TopicNames, key: str, value: Mapping[str, Any], *, registered: bool
) -> list[Outgoing]:
    """One receipt as Kafka records: the same bytes on ``hub.receipts.v1`` and, when its source is
    ``registered``, on that source's own ``hub.receipts.<source>.v1`` (hub.ingest.receipts)."""
    encoded = encode_json(value)
    where = receipt_topics(topics, value.get("source"), registered=registered)
    return [Outgoing(topic, key.encode(), encoded, plain=value) for topic in where]


class IngestRouter:
    """Decides, for one ingest record, every record to send.

    A reject goes to the DLQ with its receipt, and an input about no patient gets its receipt
    here. An input with events goes on to the identity stage (``hub.identity.v1``), keyed by its
    patient, which publishes the events and the receipt; when the input links a local id to a
    qualified INS, a link record keyed by the local id goes first.

    ``create_receipt_topics`` makes the receipt topics of sources added to the registry while the
    worker runs (the broker creates no topic by itself), before their inputs are accepted.
    """

    def __init__(
        self,
        context: IngestContext,
        topics: TopicNames,
        *,
        create_receipt_topics: Callable[[Collection[str]], object] | None = None,
    ) -> None:
        self.context = context
        self.topics = topics
        self.create_receipt_topics = create_receipt_topics
        self.unmapped = UnmappedCounter()
        self._registry_checked = time.monotonic()

    def refresh_registry(self, *, force: bool = False) -> None:
        """Reload the source registry when its file or a key file changed; a bad file changes nothing.

        The files of a refused reload are not read again until they change again (no log flood).
        """
        now = time.monotonic()
        if not force and now - self._registry_checked < REGISTRY_CHECK_SECONDS:
            return
        self._registry_checked = now
        registry = self.context.registry
        if not registry.changed():
            return
        try:
            fresh = registry.reloaded()
        except HubError as exc:
            log.error("sources.reload_refused", code=str(exc.code), error=exc.message, hint=exc.hint)
            self.context = replace(self.context, registry=replace(registry, watched=registry.stamped()))
            return
        added = sorted(set(fresh.sources) - set(registry.sources))
        if added and self.create_receipt_topics is not None:
            try:
                # A blocking admin call on the agent's loop, but only when a source is added.
                self.create_receipt_topics(added)
            except HubError as exc:
                # An accepted input's receipt could not be sent without its topic: keep the registry
                # as it was (the new source's inputs are refused source.unknown, for a replay) and
                # try again at the next check, since the files still differ from the registry's.
                log.error(
                    "sources.receipt_topics_failed", code=str(exc.code), error=exc.message, hint=exc.hint
                )
                return
        self.context = replace(self.context, registry=fresh)
        log.info("sources.reloaded", sources=len(fresh))

    def _registered(self, source_id: str | None) -> bool:
        return source_id is not None and self.context.registry.get(source_id) is not None

    def _receipt(self, outcome: IngestOutcome, record: IngestRecord) -> list[Outgoing]:
        """The input's receipt records. ``at`` is the ingest record's timestamp, not the clock: the
        same input read again (a redelivery) gets the same bytes (hub.ingest.receipts.receipt)."""
        return receipt_records(
            self.topics,
            receipt_key(outcome),
            receipt(outcome, record.origin, at=record.timestamp),
            registered=self._registered(outcome.source_id),
        )

    def outcome_for(self, record: IngestRecord, *, now: datetime) -> IngestOutcome:
        """The pure outcome; a bug in the core becomes a reject so the partition keeps moving."""
        try:
            return process_ingest(record, self.context, now=now)
        except Exception as exc:
            log.error("ingest.internal_error", error=type(exc).__name__, origin=str(record.origin))
            return Rejected(
                ErrorCode.INTERNAL,
                f"hub failed on this record ({type(exc).__name__})",
                printable_id(record.header(SOURCE_HEADER)),
                message_id_of(record),
            )

    def route(
        self, record: IngestRecord, key: bytes | None, *, now: datetime | None = None
    ) -> list[Outgoing]:
        """Every record to produce for this input."""
        at = now or datetime.now(UTC)
        self.refresh_registry()
        outcome = self.outcome_for(record, now=at)
        if isinstance(outcome, Rejected):
            log.info("ingest.rejected", code=str(outcome.code), source=outcome.source_id)
            return self._rejected(record, key, outcome, at=at)
        self.unmapped.add(outcome.source_id, outcome.unmapped_codes)
        if outcome.patient_id is None:
            log.info("ingest.accepted", source=outcome.source_id, events=0)
            return self._receipt(outcome, record)
        log.info("ingest.accepted", source=outcome.source_id, events=len(outcome.events))
        if outcome.link is not None:
            # The link record carries the input: it reaches the INS id only after the link is known.
            return [
                Outgoing(
                    self.topics.identity,
                    outcome.link.local_id.encode(),
                    encode_json(link_record(outcome.link, outcome, record.origin, record.timestamp)),
                )
            ]
        return [
            Outgoing(
                self.topics.identity,
                outcome.patient_id.encode(),
                encode_json(input_record(outcome, record.origin, record.timestamp)),
            )
        ]

    def _rejected(
        self,
        record: IngestRecord,
        key: bytes | None,
        outcome: Rejected,
        *,
        at: datetime,
        excerpt_only: bool = False,
    ) -> list[Outgoing]:
        """A reject's DLQ record (whole when it fits), its AuditEvent and its receipt."""
        # The DLQ topic carries twice the payload limit (hub.streams.worker): an original within the
        # limit always fits whole, with its headers and the hub's.
        dead = dlq_record(
            record.value,
            record.headers,
            outcome,
            record.origin,
            limit=dlq_limit(self.context.max_payload_bytes),
            excerpt_only=excerpt_only,
        )
        if not dead.whole:
            log.warning("ingest.dlq_excerpt", code=str(outcome.code), source=outcome.source_id)
        return [
            Outgoing(self.topics.dlq, key, dead.value, dead.headers),
            # Every reject is audited too (DESIGN.md 2): which source, where, and the code.
            Outgoing(
                self.topics.audit_unsealed,
                receipt_key(outcome).encode(),
                encode_json(audit_reject(outcome, origin=record.origin, recorded=at)),
            ),
            *self._receipt(outcome, record),
        ]

    def replacing(
        self,
        record: IngestRecord,
        key: bytes | None,
        refused: Outgoing,
        error: str,
        *,
        now: datetime | None = None,
    ) -> list[Outgoing]:
        """What to send instead of a record Kafka refused for good (too large, say); [] when nothing can.

        A refused DLQ copy is sent again as an excerpt (its receipt went out with it). A refused
        identity record leaves the input without an outcome: it ends as a ``hub.internal_error``
        reject instead, kept in the DLQ for a replay once fixed. Receipts and AuditEvents are small
        and have no substitute: the caller retries them, holding the partition.
        """
        at = now or datetime.now(UTC)
        if refused.topic == self.topics.dlq:
            outcome = self.outcome_for(record, now=at)
            if not isinstance(outcome, Rejected):
                return []
            return [self._rejected(record, key, outcome, at=at, excerpt_only=True)[0]]
        if refused.topic == self.topics.identity:
            return self.internal_error(
                record, key, f"Kafka refused the hub's record for this input ({error})", now=at
            )
        return []

    def internal_error(
        self, record: IngestRecord, key: bytes | None, why: str, *, now: datetime | None = None
    ) -> list[Outgoing]:
        """The input ends as a ``hub.internal_error`` reject (the hub failed on it, not the sender),
        kept whole in the DLQ for a replay once the hub is fixed. ``why`` names no content."""
        failed = Rejected(
            ErrorCode.INTERNAL,
            f"{why}; the input is kept in the DLQ",
            printable_id(record.header(SOURCE_HEADER)),
            message_id_of(record),
        )
        log.error("ingest.internal_error", code=str(ErrorCode.INTERNAL), why=why)
        return self._rejected(record, key, failed, at=now or datetime.now(UTC))


class IdentityRouter:
    """The identity stage's sends as Kafka records: pathway events keyed by patient, receipts by source.

    With ``share``, each pathway event is decided as it is published, in the same batch: its
    AuditEvent, recipient copies and alerts follow it. Both stages work on the patient's partition
    (``hub.identity.v1`` and ``hub.pathway.v1`` are keyed alike, with the same partition count), so
    the share stage takes the event as identity made it instead of reading ``hub.pathway.v1`` back:
    a Kafka hop less between an input and its recipients, and no read, decryption and decoding of
    each event (docs/PERFORMANCE.md, session 11). ``hub.pathway.v1`` is still written, for its readers.
    """

    def __init__(self, stage: IdentityStage, topics: TopicNames, share: ShareRouter | None = None) -> None:
        self.stage = stage
        self.topics = topics
        self.share = share

    def route(self, value: bytes) -> list[Outgoing]:
        """Every record to produce for one ``hub.identity.v1`` record.

        An input identity sends on to the INS id a local id was just linked to carries the share
        stage's hand-over of the local id (``handover``: its state and waiting events, taken here, on
        the local id's partition); the INS id's partition merges it as the ``patient.linked`` event
        is decided (hub.consent.share), instead of asking for it over ``hub.share-merge.v1``.
        """
        record = decode_json(value)
        sends = self.stage.handle(record)
        handover = record.get("handover")
        out = []
        for send in sends:
            if send.topic == "pathway":
                out.append(
                    Outgoing(
                        self.topics.pathway,
                        send.key.encode(),
                        encode_json(send.value),
                        encode_headers({EVENT_ID_HEADER: send.value["event_id"]}),
                        plain=send.value,
                    )
                )
                if self.share is not None:
                    # After the event: on the pathway it comes before what was decided about it.
                    linked = send.value.get("kind") == "patient.linked"
                    out += self._decided(self.share, send.value, handover if linked else None)
            elif send.topic == "identity":
                forwarded = send.value
                link = forwarded.get("linked")
                if self.share is not None and isinstance(link, dict):
                    handed = self._handed_over(self.share, link)
                    if handed is not None:
                        forwarded = {**forwarded, "handover": handed}
                out.append(Outgoing(self.topics.identity, send.key.encode(), encode_json(forwarded)))
            else:
                # The stage answers accepted inputs only, whose source ingest found registered.
                out += receipt_records(self.topics, send.key, send.value, registered=True)
        return out

    @staticmethod
    def _handed_over(share: ShareRouter, link: dict[str, Any]) -> dict[str, Any] | None:
        """The share stage's hand-over of a newly linked local id; None when taking it raises (a bug):
        the input still goes on, and the INS id's partition asks for the state instead (the round
        trip over ``hub.share-merge.v1``), as before hand-overs existed."""
        try:
            return share.hand_over(str(link["local_id"]), str(link["ins_id"]))
        except Exception as exc:
            _share_failed(exc)
            return None

    @staticmethod
    def _decided(
        share: ShareRouter, event: dict[str, Any], handover: dict[str, Any] | None = None
    ) -> list[Outgoing]:
        """The share stage's records for one event; none when deciding it raises (a bug).

        As when the share stage had its own agent: a bug costs that event its decisions (logged and
        counted, like any record a stage fails on), never the input its receipt or its other events.
        """
        try:
            return share.route(event, handover=handover)
        except Exception as exc:
            _share_failed(exc)
            return []


def _share_failed(exc: Exception) -> None:
    """A bug in the share stage, inside the identity agent: logged (its type only) and counted."""
    counting.failed("share")
    log.error("stage.record_failed", stage="share", error=type(exc).__name__)


class ShareRouter:
    """The share stage's records: AuditEvents keyed by patient, recipient copies keyed by patient.

    With ``alerts``, each copy a GP practice receives goes straight on to the eligibility stage, in
    the same batch: its alerts are decided from exactly what that practice may see, without reading
    the practice's topic back (one read, one decryption and one decoding less per copy).
    """

    def __init__(self, stage: ShareStage, alerts: AlertRouter | None = None) -> None:
        self.stage = stage
        self.alerts = alerts

    def route(
        self,
        event: dict[str, Any],
        *,
        now: datetime | None = None,
        handover: dict[str, Any] | None = None,
    ) -> list[Outgoing]:
        """Every record to produce for one pathway event, as identity publishes it (``handover``: a
        linked local id's, with its ``patient.linked`` event: hub.consent.share.ShareStage.handle)."""
        return self._with_alerts(
            [
                Outgoing(share.topic, share.key.encode(), encode_json(share.value), plain=share.value)
                for share in self.stage.handle(event, now=now, handover=handover)
            ],
            now=now,
        )

    def hand_over(self, local_id: str, ins_id: str) -> dict[str, Any]:
        """The share stage's hand-over of a local id just linked to an INS id (ShareStage.hand_over)."""
        return self.stage.hand_over(local_id, ins_id)

    def route_merge(self, value: bytes) -> list[Outgoing]:
        """Every record to produce for one ``hub.share-merge.v1`` record."""
        return self._with_alerts(
            [
                Outgoing(share.topic, share.key.encode(), encode_json(share.value), plain=share.value)
                for share in self.stage.handle_merge(decode_json(value))
            ]
        )

    def _with_alerts(self, outgoing: list[Outgoing], *, now: datetime | None = None) -> list[Outgoing]:
        """The records, then the alerts their GP practices' copies make (after them: a copy first).

        Each copy is handed over as the document its record was encoded from (``Outgoing.plain``):
        the same content the practice's topic receives, without decoding it again.
        """
        if self.alerts is None:
            return outgoing
        alerts = [
            alert
            for out in outgoing
            if isinstance(out.plain, dict)
            for alert in self.alerts.route(out.topic, out.plain, now=now)
        ]
        return [*outgoing, *alerts]


class AlertRouter:
    """The eligibility stage's alerts as Kafka records on ``hub.alerts.v1``, keyed by the GP's RPPS."""

    def __init__(
        self, stage: EligibilityStage, topics: TopicNames, practice_topics: Mapping[str, str]
    ) -> None:
        self.stage = stage
        self.topics = topics
        self.practice_of_topic = {topic: practice for practice, topic in practice_topics.items()}

    def route(self, topic: str, copy: dict[str, Any], *, now: datetime | None = None) -> list[Outgoing]:
        """Every alert one GP practice's copy makes; none for a record of another topic."""
        practice = self.practice_of_topic.get(topic)
        if practice is None:
            return []
        return [
            Outgoing(
                self.topics.alerts, alert.practitioner.encode(), encode_json(alert.value), plain=alert.value
            )
            for alert in self.stage.handle(practice, copy, now=now)
        ]
