"""``hub dlq list`` and ``hub dlq replay``: the dead-letter queue, read to its end without a consumer group.

Exit codes scripts can trust:

- 0: rejects were listed, or replayed (or would be, with ``--dry-run``);
- 1: no reject matches the filters (nothing was done);
- 2: configuration, broker or usage error, or a replay without ``--yes`` that nobody confirmed.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from hub.cli_support import EXIT_FAILURE, EXIT_USAGE, reporting_errors
from hub.errors import BrokerError
from hub.records import CRYPTO_ERROR_HEADER, encode_json, header
from hub.settings import Settings

if TYPE_CHECKING:
    from hub.kafka.clients import Record
    from hub.topics import TopicNames

_FILTERS = [
    click.option("--code", default=None, help="Only rejects with this error code (e.g. source.unknown)."),
    click.option("--source", default=None, help="Only rejects whose hub-source header is this id."),
    click.option(
        "--since", default=None, help="Only rejects at or after this ISO 8601 instant (UTC if bare)."
    ),
    click.option(
        "--timeout", default=600.0, show_default=True, help="Give up (exit 2) when reading takes longer (s)."
    ),
]


def _filters(command: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_FILTERS):
        command = option(command)
    return command


def _read(
    settings: Settings,
    names: TopicNames,
    *,
    code: str | None,
    source: str | None,
    since: str | None,
    timeout: float,
) -> list[Record]:
    from hub.kafka.clients import existing_topics, read_to_end, require_topics  # noqa: PLC0415
    from hub.ops import dlq as d  # noqa: PLC0415
    from hub.ops.cli import _progress, record_opening  # noqa: PLC0415

    try:
        after = d.parse_since(since) if since is not None else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    bootstrap = settings.bootstrap_servers
    require_topics(existing_topics(bootstrap), [names.dlq, names.ingest, names.audit])
    with _progress() as progress:
        return read_to_end(
            bootstrap,
            [names.dlq],
            keep=lambda r: d.matches(r, code=code, source=source, since=after),
            progress=progress,
            description="DLQ",
            deadline=time.monotonic() + timeout,
            # Rejects are kept encrypted under the DLQ's monthly key: opened for listing and replay.
            opener=record_opening(settings),
        )[names.dlq]


@click.group()
def dlq() -> None:
    """The dead-letter queue (hub.dlq.v1): list rejects, replay them after a fix."""


@dlq.command("list")
@_filters
@click.option("--json", "as_json", is_flag=True, help="Print the rejects as a JSON array.")
@reporting_errors
def dlq_list(
    *, code: str | None, source: str | None, since: str | None, timeout: float, as_json: bool
) -> None:
    """One line per reject: origin, source, message id, code, detail, Kafka timestamp; never the body.

    Exits 0 when something is listed, 1 when no reject matches, 2 on a configuration or broker error.
    """
    from hub.ops import dlq as d  # noqa: PLC0415
    from hub.topics import TopicNames  # noqa: PLC0415

    settings = Settings()
    entries = [
        d.entry(r)
        for r in _read(
            settings,
            TopicNames(settings.topic_prefix),
            code=code,
            source=source,
            since=since,
            timeout=timeout,
        )
    ]
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False))
    else:
        for line in d.render(entries):
            click.echo(line)
    if not entries:
        click.echo("no reject matches", err=True)
        sys.exit(EXIT_FAILURE)


@dlq.command("replay")
@_filters
@click.option("--dry-run", is_flag=True, help="List what would be replayed; send nothing.")
@click.option("--yes", is_flag=True, help="Replay without asking (required when not interactive).")
@reporting_errors
def dlq_replay(
    *, code: str | None, source: str | None, since: str | None, timeout: float, dry_run: bool, yes: bool
) -> None:
    """Send matching rejects back to hub.ingest.v1, each audited (dlq-replay) and receipted again.

    The DLQ is append-only: replayed rejects stay listed. A reject whose signature is older than
    HUB_SIGNATURE_TOLERANCE_SECONDS is rejected again (signature.expired): the source must re-send.
    Exits 0 when rejects were replayed, 1 when none matches, 2 on an error or without confirmation.
    """
    from hub.ops import dlq as d  # noqa: PLC0415
    from hub.topics import TopicNames  # noqa: PLC0415

    settings = Settings()
    names = TopicNames(settings.topic_prefix)
    records = _read(settings, names, code=code, source=source, since=since, timeout=timeout)

    # A reject whose DLQ key was destroyed (or that does not authenticate) has no bytes to send back.
    unreadable = [r for r in records if header(r.headers, CRYPTO_ERROR_HEADER) is not None]
    if unreadable:
        click.echo(
            f"skipping {len(unreadable)} rejects that cannot be decrypted (shredded or altered)", err=True
        )
        records = [r for r in records if r not in unreadable]
    excerpts = [r for r in records if d.original_size(r) is not None]
    if excerpts:
        click.echo(
            f"skipping {len(excerpts)} rejects kept as excerpts only (larger than the DLQ carries): "
            "their sources must send them again",
            err=True,
        )
        records = [r for r in records if r not in excerpts]
    if not records:
        click.echo("no reject matches", err=True)
        sys.exit(EXIT_FAILURE)
    if dry_run:
        for line in d.render(d.entry(r) for r in records):
            click.echo(line)
        click.echo(f"would replay {len(records)} rejects to {names.ingest}")
        return
    if not yes:
        if not sys.stdin.isatty():
            click.echo(
                f"error: replaying {len(records)} rejects cannot be undone; add --yes to confirm", err=True
            )
            sys.exit(EXIT_USAGE)
        if not click.confirm(f"Replay {len(records)} rejects to {names.ingest}?", err=True):
            sys.exit(EXIT_USAGE)
    replayed = _replay(settings, names, records)
    click.echo(f"replayed {replayed} rejects to {names.ingest}")


def _replay(settings: Settings, names: TopicNames, records: list[Record]) -> int:
    """Produce each replay record, then its AuditEvent naming where it landed; return the count."""
    from kafka.errors import KafkaError  # noqa: PLC0415

    from hub.ingest.outcome import KafkaCoordinates  # noqa: PLC0415
    from hub.kafka.clients import producer  # noqa: PLC0415
    from hub.ops import dlq as d  # noqa: PLC0415
    from hub.ops.cli import _progress  # noqa: PLC0415

    sender = producer(settings.bootstrap_servers)
    try:
        with _progress() as progress:
            task = progress.add_task("replaying", total=len(records))
            for record in records:
                again = d.replay_record(record)
                sent = sender.send(
                    names.ingest, key=again.key, value=again.value, headers=list(again.headers)
                )
                meta = sent.get(timeout=60)
                where = KafkaCoordinates(meta.topic, meta.partition, meta.offset)
                entry = d.entry(record)
                audit = d.audit_replay(entry, replayed_to=where, recorded=datetime.now(UTC))
                sender.send(
                    names.audit_unsealed,
                    key=d.audit_key(entry),
                    value=encode_json(audit),
                )
                progress.advance(task)
            sender.flush()
    except KafkaError as exc:
        raise BrokerError(
            f"replay to {names.ingest} failed: {type(exc).__name__}",
            hint="records already sent are replayed and audited; rerun with narrower filters",
        ) from exc
    finally:
        sender.close()
    return len(records)
