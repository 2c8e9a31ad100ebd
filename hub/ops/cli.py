"""``hub trace`` and ``hub consent show``: read topics to their end, without a consumer group, and print.

Both commands read from the beginning of each topic to the end offsets captured when they start:
complete (nothing published before the command is missed) and quick (no waiting for silence). A
progress bar goes to stderr; the result to stdout. Exit codes scripts can trust:

- 0: found (the trace, or a readable share state);
- 1: not found (no receipt, DLQ record, event or decision names the id; no state, deleted or corrupt);
- 2: configuration, broker or usage error: nothing could be said.

Encrypted records (``hub.crypto``) are opened with the operator's key access (``HUB_KEK`` or
``HUB_KEK_FILE`` and the key store) before anything looks at them; one that cannot be opened (an
erased patient's: ``crypto.key_destroyed``) is kept with no value and a ``hub-crypto-error`` header.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click

from hub.cli_support import reporting_errors
from hub.errors import BrokerError
from hub.settings import Settings

if TYPE_CHECKING:
    from rich.progress import Progress

    from hub.crypto.records import RecordOpener
    from hub.kafka.clients import Record

#: The command ran and the id or patient is unknown (or its state unusable).
EXIT_NOT_FOUND = 1
#: Same as ``hub.cli``: configuration, broker or usage error, nothing was done.

#: The faust table holding each patient's share state (``hub.streams.app.TABLES``).
SHARE_STATE_TABLE = "share-state"
_RECIPIENT_TOPIC_HEAD = "hub.pathway."
_RECIPIENT_TOPIC_TAIL = ".v1"
#: Added to a record read back that could not be opened: the error code, never the reason's details.
CRYPTO_ERROR_HEADER = "hub-crypto-error"


def record_opener(settings: Settings) -> RecordOpener:
    """The operator's opener of encrypted records; a SecretUnavailable says how to give it the KEK."""
    from hub.crypto.config import keyring_from_settings  # noqa: PLC0415
    from hub.crypto.records import RecordOpener  # noqa: PLC0415

    return RecordOpener(keyring_from_settings(settings))


def optional_opener(settings: Settings) -> RecordOpener | None:
    """The operator's opener when a KEK is configured; None: encrypted records stay as they are."""
    from hub.errors import SecretUnavailable  # noqa: PLC0415

    try:
        return record_opener(settings)
    except SecretUnavailable:
        return None


def opened(opener: RecordOpener | None, record: Record) -> Record:
    """``record`` with its plaintext, or without a value and with the crypto error's code."""
    if opener is None:
        return record
    from dataclasses import replace  # noqa: PLC0415

    from hub.errors import CryptoError  # noqa: PLC0415

    try:
        return opener.open_record(record)
    except CryptoError as exc:
        return replace(
            record, value=None, headers=(*record.headers, (CRYPTO_ERROR_HEADER, str(exc.code).encode()))
        )


def share_state_changelog(app_id: str) -> str:
    """faust's changelog topic of the share-state table (``hub.streams.app.changelog_topic``).

    Spelled here so that ``hub consent show`` does not import faust; a unit test keeps them equal.
    """
    return f"{app_id}-{SHARE_STATE_TABLE}-changelog"


# -- reading to the end ---------------------------------------------------------------------------------


def _consumer(bootstrap: str) -> Any:
    from kafka import KafkaConsumer  # noqa: PLC0415 - keep `hub --help` fast
    from kafka.errors import KafkaError  # noqa: PLC0415

    from hub.kafka.security import default_security  # noqa: PLC0415

    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            client_id="hub-ops",
            **default_security().kafka_python(),
        )
    except KafkaError as exc:
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap} ({type(exc).__name__})",
            hint="start one with `hub broker start`, or set HUB_BOOTSTRAP_SERVERS",
        ) from exc


def existing_topics(bootstrap: str) -> set[str]:
    """Every topic the broker lists."""
    from kafka.errors import KafkaError  # noqa: PLC0415

    consumer = _consumer(bootstrap)
    try:
        return set(consumer.topics())
    except KafkaError as exc:
        raise BrokerError(f"cannot list topics at {bootstrap}: {type(exc).__name__}") from exc
    finally:
        consumer.close()


def require_topics(existing: set[str], names: Iterable[str]) -> None:
    """Raise a BrokerError naming the missing topics (wrong prefix or app id, or a hub never started)."""
    missing = [name for name in names if name not in existing]
    if missing:
        raise BrokerError(
            f"topic{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found on the broker",
            hint="check HUB_TOPIC_PREFIX and HUB_APP_ID, or create the topics with `hub topics create`",
        )


def read_to_end(
    bootstrap: str,
    topics: Sequence[str],
    *,
    keep: Callable[[Record], bool] = lambda _record: True,
    progress: Progress | None = None,
    description: str = "reading",
    deadline: float | None = None,
    opener: RecordOpener | None = None,
) -> dict[str, list[Record]]:
    """The kept records of each topic, from its first offset to the end offsets taken at the start.

    With an ``opener``, encrypted records are opened (see :func:`opened`) before ``keep`` sees them.

    No consumer group: partitions are assigned and sought directly, nothing is committed. Stops when
    every partition's position reached its end offset (gaps from compaction or transaction markers
    included); a ``deadline`` (``time.monotonic()``) that passes first is a BrokerError.
    """
    from kafka.errors import KafkaError  # noqa: PLC0415

    result: dict[str, list[Record]] = {topic: [] for topic in topics}
    consumer = _consumer(bootstrap)
    try:
        begin, end = _assign(consumer, topics)
        done = dict(begin)
        task = (
            progress.add_task(description, total=sum(end[tp] - begin[tp] for tp in end)) if progress else None
        )
        while end:
            if deadline is not None and time.monotonic() > deadline:
                raise BrokerError(
                    f"reading {', '.join(topics)} took longer than allowed; the result would be incomplete",
                    hint="retry with a larger --timeout",
                )
            for raw in _records(consumer.poll(timeout_ms=500), end):
                record = opened(opener, raw)
                if keep(record):
                    result[record.topic].append(record)
            for tp, stop in list(end.items()):
                position = min(consumer.position(tp), stop)
                if progress is not None and task is not None:
                    progress.advance(task, position - done[tp])
                done[tp] = position
                if position >= stop:
                    del end[tp]
                    consumer.pause(tp)
        return result
    except KafkaError as exc:
        raise BrokerError(f"cannot read {', '.join(topics)}: {type(exc).__name__}") from exc
    finally:
        consumer.close()


def _assign(consumer: Any, topics: Sequence[str]) -> tuple[dict[Any, int], dict[Any, int]]:
    """Assign every non-empty partition of ``topics`` at its first offset; ``(begin, end)`` offsets."""
    from kafka import TopicPartition  # noqa: PLC0415

    partitions: list[Any] = []
    for topic in topics:
        found = consumer.partitions_for_topic(topic)
        if not found:
            require_topics(set(), [topic])
        partitions.extend(TopicPartition(topic, p) for p in sorted(found))
    first = consumer.beginning_offsets(partitions)
    last = consumer.end_offsets(partitions)
    end = {tp: last[tp] for tp in partitions if last[tp] > first[tp]}
    begin = {tp: first[tp] for tp in end}
    consumer.assign(list(end))
    for tp, offset in begin.items():
        consumer.seek(tp, offset)
    return begin, end


def _records(batch: dict[Any, list[Any]], end: dict[Any, int]) -> Iterator[Record]:
    """A poll's messages below each partition's end offset, as :class:`hub.kafka.clients.Record`."""
    from hub.kafka.clients import Record  # noqa: PLC0415

    for tp, messages in batch.items():
        stop = end.get(tp, -1)
        for message in messages:
            if message.offset >= stop:
                break
            yield Record(
                message.topic, message.partition, message.offset, message.timestamp,
                message.key, message.value,
                tuple((k, v or b"") for k, v in (message.headers or ())),
            )  # fmt: skip


def _progress() -> Progress:
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def recipient_topics(existing: Iterable[str], prefix: str, pathway: str) -> dict[str, str]:
    """``hub.pathway.<recipient>.v1`` topics under ``prefix``, mapped to their recipient id."""
    head = prefix + _RECIPIENT_TOPIC_HEAD
    found = {}
    for topic in existing:
        middle = topic[len(head) : -len(_RECIPIENT_TOPIC_TAIL)]
        if topic != pathway and topic.startswith(head) and topic.endswith(_RECIPIENT_TOPIC_TAIL) and middle:
            found[topic] = middle
    return dict(sorted(found.items()))


def _mentions(record: Record, needles: Iterable[bytes]) -> bool:
    """A cheap test before parsing JSON: the value contains one of the ids."""
    value = record.value or b""
    return any(needle in value for needle in needles)


# -- hub trace ------------------------------------------------------------------------------------------


@click.command()
@click.argument("ident", metavar="[ID]", required=False)
@click.option("--message-id", default=None, help="Trace by the source's message id (header hub-message-id).")
@click.option("--json", "as_json", is_flag=True, help="Print the trace as JSON.")
@click.option(
    "--timeout", default=600.0, show_default=True, help="Give up (exit 2) when reading takes longer (s)."
)
@reporting_errors
def trace(ident: str | None, message_id: str | None, as_json: bool, timeout: float) -> None:
    """Where one input or event went: receipt, events, each recipient's decision, copies, alerts.

    ID is a pathway event id (UUID), an ingest record TOPIC/PARTITION/OFFSET, or PARTITION/OFFSET on
    the ingest topic. Prints kinds and ids only, never clinical content. Exits 0 when found, 1 when
    no topic knows the id, 2 on a configuration or broker error.
    """
    from hub.consent import load_recipients  # noqa: PLC0415
    from hub.ops import trace as tr  # noqa: PLC0415
    from hub.topics import TopicNames  # noqa: PLC0415

    settings = Settings()
    names = TopicNames(settings.topic_prefix)
    try:
        target = tr.parse_target(ident, message_id=message_id, ingest_topic=names.ingest, prefix=names.prefix)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    registered = (
        [recipient.id for recipient in load_recipients(settings.recipients_file)]
        if settings.recipients_file is not None
        else []
    )
    bootstrap = settings.bootstrap_servers
    deadline = time.monotonic() + timeout
    existing = existing_topics(bootstrap)
    require_topics(existing, [names.receipts, names.dlq, names.pathway, names.audit])
    copies_from = recipient_topics(existing, names.prefix, names.pathway)
    with _progress() as progress:
        read = functools.partial(
            read_to_end, bootstrap, progress=progress, deadline=deadline, opener=record_opener(settings)
        )
        first = read(
            [names.receipts, names.dlq],
            keep=lambda r: (
                tr.receipt_matches(target, r.json_value())
                if r.topic == names.receipts
                else tr.dlq_matches(target, r)
            ),
            description="receipts and DLQ",
        )
        selection = tr.select(target, [r.json_value() for r in first[names.receipts]], first[names.dlq])
        pathway: list[Record] = []
        later: dict[str, list[Record]] = {}
        if selection.event_ids or selection.inputs:
            ids = [event_id.encode() for event_id in selection.event_ids]
            pathway = read(
                [names.pathway],
                keep=lambda r: (
                    (bool(selection.inputs) or _mentions(r, ids)) and selection.wants_event(r.json_value())
                ),
                description="pathway",
            )[names.pathway]
            selection = selection.with_events(str(r.json_value()["event_id"]) for r in pathway)
            needles = [value.encode() for value in (*selection.event_ids, *selection.inputs)]

            def keep(record: Record) -> bool:
                if not _mentions(record, needles):
                    return False
                value = record.json_value()
                if record.topic == names.audit:
                    return selection.wants_audit(value)
                if record.topic == names.alerts:
                    return selection.wants_alert(value)
                return selection.wants_copy(value)

            optional = [names.alerts] if names.alerts in existing else []
            later = read(
                [names.audit, *optional, *copies_from],
                keep=keep,
                description=f"audit, alerts and {len(copies_from)} recipient topics",
            )
    result = tr.build_trace(
        target,
        receipts=first[names.receipts],
        dlq=first[names.dlq],
        pathway=pathway,
        audit=later.get(names.audit, []),
        alerts=later.get(names.alerts, []),
        copies={recipient: later.get(topic, []) for topic, recipient in copies_from.items()},
        recipients=registered,
    )
    if as_json:
        click.echo(tr.dumps(result))
    else:
        for line in tr.render(result):
            click.echo(line)
    if not result.found:
        sys.exit(EXIT_NOT_FOUND)


# -- hub consent show -----------------------------------------------------------------------------------


@click.group()
def consent() -> None:
    """The share state that decides what each recipient receives about a patient."""


@consent.command("show")
@click.argument("patient_id")
@click.option("--json", "as_json", is_flag=True, help="Print the stored state as JSON.")
@click.option(
    "--timeout", default=600.0, show_default=True, help="Give up (exit 2) when reading takes longer (s)."
)
@reporting_errors
def consent_show(patient_id: str, as_json: bool, timeout: float) -> None:
    """Show PATIENT_ID's declared GPs, care teams, treating organisations, networks and consents.

    PATIENT_ID is the network patient id (``pt-...``) found in pathway events and AuditEvents.
    Identifiers and codes only, never names. Exits 0 when a readable state exists, 1 when there is
    none (or it was deleted, or is corrupt), 2 on a configuration or broker error.
    """
    import json  # noqa: PLC0415

    from hub.ops.consent_view import key_of, last_state, render_state, to_json  # noqa: PLC0415

    settings = Settings()
    topic = share_state_changelog(settings.app_id)
    bootstrap = settings.bootstrap_servers
    require_topics(existing_topics(bootstrap), [topic])
    with _progress() as progress:
        records = read_to_end(
            bootstrap,
            [topic],
            keep=lambda r: key_of(r) == patient_id,
            progress=progress,
            description="share state",
            deadline=time.monotonic() + timeout,
            opener=record_opener(settings),
        )[topic]
    lookup = last_state(records, patient_id)
    if as_json:
        click.echo(json.dumps(to_json(lookup), indent=2, ensure_ascii=False))
    else:
        for line in render_state(lookup):
            click.echo(line)
    if not lookup.found:
        sys.exit(EXIT_NOT_FOUND)
