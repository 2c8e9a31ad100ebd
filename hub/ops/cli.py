"""``hub trace`` and ``hub consent show``: read topics to their end, without a consumer group, and print.

Both commands read from the beginning of each topic to the end offsets captured when they start
(:func:`hub.kafka.clients.read_to_end`): complete (nothing published before the command is missed)
and quick (no waiting for silence). A progress bar goes to stderr; the result to stdout. Exit codes
scripts can trust:

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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import click

from hub.cli_support import reporting_errors
from hub.records import CRYPTO_ERROR_HEADER, encode_headers
from hub.settings import Settings
from hub.topics import TopicNames

if TYPE_CHECKING:
    from rich.progress import Progress

    from hub.crypto.records import RecordOpener
    from hub.kafka.clients import Record

#: The command ran and the id or patient is unknown (or its state unusable).
EXIT_NOT_FOUND = 1
#: Same as ``hub.cli``: configuration, broker or usage error, nothing was done.

#: The faust table holding each patient's share state (``hub.streams.tables.TABLES``; spelled here so that
#: ``hub consent show`` does not import faust, and a unit test keeps the two the same).
SHARE_STATE_TABLE = "share-state"
#: The faust table holding each event's share decisions and each patient's waiting index (the same).
SHARE_DECIDED_TABLE = "share-decided"


def record_opener(settings: Settings) -> RecordOpener:
    """The operator's opener of encrypted records; a SecretUnavailable says how to give it the KEK."""
    from hub.crypto.config import keyring_from_settings  # noqa: PLC0415
    from hub.crypto.records import RecordOpener  # noqa: PLC0415

    return RecordOpener(keyring_from_settings(settings))


def record_opening(settings: Settings) -> Callable[[Record], Record]:
    """What :func:`hub.kafka.clients.read_to_end` applies to each record it reads for an operator
    command: :func:`opened` with the operator's opener."""
    return functools.partial(opened, record_opener(settings))


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
        # The error code only, never the reason's details.
        failed = encode_headers({CRYPTO_ERROR_HEADER: str(exc.code)})
        return replace(record, value=None, headers=(*record.headers, *failed))


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


def recipient_topics(existing: Iterable[str], names: TopicNames) -> dict[str, str]:
    """``hub.pathway.<recipient>.v1`` topics under the prefix of ``names``, mapped to their recipient id."""
    found = {topic: recipient for topic in existing if (recipient := names.recipient_of(topic)) is not None}
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
    from hub.kafka.clients import existing_topics, read_to_end, require_topics  # noqa: PLC0415
    from hub.ops import trace as tr  # noqa: PLC0415

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
    copies_from = recipient_topics(existing, names)
    with _progress() as progress:
        read = functools.partial(
            read_to_end, bootstrap, progress=progress, deadline=deadline, opener=record_opening(settings)
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

    from hub.consent.decisions import waiting_key  # noqa: PLC0415
    from hub.kafka.clients import existing_topics, read_to_end, require_topics  # noqa: PLC0415
    from hub.ops.consent_view import (  # noqa: PLC0415
        entries_of,
        holds_key,
        key_of,
        last_state,
        render_state,
        to_json,
    )

    settings = Settings()
    topic = TopicNames.changelog(settings.app_id, SHARE_STATE_TABLE)
    decided_topic = TopicNames.changelog(settings.app_id, SHARE_DECIDED_TABLE)
    index_key = waiting_key(patient_id)
    bootstrap = settings.bootstrap_servers
    require_topics(existing_topics(bootstrap), [topic, decided_topic])
    deadline = time.monotonic() + timeout
    opening = record_opening(settings)
    with _progress() as progress:
        records = read_to_end(
            bootstrap,
            [topic],
            keep=lambda r: key_of(r) == patient_id,
            progress=progress,
            description="share state",
            deadline=deadline,
            opener=opening,
        )[topic]
        # Read as stored (a batch record's entries are sealed one by one), keeping only the records
        # with an entry of the index: only those are opened, not every decision of the look-back.
        decided = read_to_end(
            bootstrap,
            [decided_topic],
            keep=lambda r: holds_key(r, index_key),
            progress=progress,
            description="waiting events",
            deadline=deadline,
        )[decided_topic]
    lookup = last_state(records, patient_id, [opening(r) for r in entries_of(decided, index_key)])
    if as_json:
        click.echo(json.dumps(to_json(lookup), indent=2, ensure_ascii=False))
    else:
        for line in render_state(lookup):
            click.echo(line)
    if not lookup.found:
        sys.exit(EXIT_NOT_FOUND)
