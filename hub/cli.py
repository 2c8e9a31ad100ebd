"""The `hub` console script: one entry point, every command; errors say what to do, never a trace."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hub.acl.cli import acl
from hub.audit.cli import audit
from hub.bench_cli import bench
from hub.broker.cli import broker
from hub.cli_support import EXIT_FAILURE, reporting_errors
from hub.console.cli import console as console_command
from hub.errors import BrokerError, ConfigError
from hub.gateway.cli import gateway
from hub.keys.cli import keys
from hub.keyservice.cli import recipients
from hub.logging import configure_logging
from hub.ops.cli import consent, trace
from hub.ops.dlq_cli import dlq
from hub.ops.erase_cli import erase
from hub.ops.sources_cli import sources
from hub.ops.status import status
from hub.records import SIGNATURE_HEADER, header_dict
from hub.settings import Settings

if TYPE_CHECKING:
    from hub.publish import ReceiptWait

out = Console()
err = Console(stderr=True)


@click.group()
@click.version_option(package_name="hub")
def main() -> None:
    """Integration hub for shared medical records on Apache Kafka."""
    # Log lines go to stderr from the start, for every command: structlog's default writes them to
    # stdout, where they broke the JSON a command prints (`hub erase --json` logging `ingest.rolled`).
    # The long-running services configure logging again from their settings.
    configure_logging("info", json=False)


@main.command()
@reporting_errors
def worker() -> None:
    """Run one ingest worker in the foreground (Ctrl-C stops it)."""
    from hub.streams.worker import run_worker  # noqa: PLC0415 - faust is slow to import

    run_worker(Settings())


@main.command()
@click.option("--source", "source_id", required=True, help="Registered source id to sign as.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the receipts.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for receipts.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@reporting_errors
def publish(source_id: str, wait: bool, timeout: float, paths: tuple[Path, ...]) -> None:
    """Sign FHIR files or folders as SOURCE and send them to hub.ingest.v1.

    Waits for the receipts on the source's own topic, hub.receipts.<SOURCE>.v1 (the one a source's
    principal may read). Exits 0 when every input was accepted (or a known duplicate), 1 when any
    was rejected or got no receipt in time, 2 when a file cannot be sent (unreadable, not JSON/XML,
    over HUB_MAX_PAYLOAD_BYTES: nothing is sent), the receipt topic cannot be read (nothing is
    sent) or the broker refused a record.
    """
    from hub.kafka.clients import end_offsets, producer  # noqa: PLC0415
    from hub.publish import (  # noqa: PLC0415
        ReceiptWait,
        checked_publications,
        deliver,
        fhir_files,
        refused_error,
    )
    from hub.sources.registry import load_sources  # noqa: PLC0415
    from hub.topics import TopicNames  # noqa: PLC0415

    settings = Settings()
    topics = TopicNames(settings.topic_prefix)
    source = load_sources(settings.sources_file).get(source_id)
    if source is None:
        raise ConfigError(
            f"source {source_id!r} is not in {settings.sources_file}",
            hint="register it there first (`hub config check` validates the file)",
        )
    files = list(fhir_files(list(paths)))
    # Every file is read and checked before the first is sent: a bad one stops the run with nothing sent.
    publications = [
        pub
        for path in files
        for pub in checked_publications(
            path, source_id=source.id, secret=source.secrets[0], max_bytes=settings.max_payload_bytes
        )
    ]
    receipts_topic = topics.source_receipts(source.id)
    start: dict[str, dict[int, int]] = {}
    if wait:
        start[receipts_topic] = end_offsets(settings.bootstrap_servers, receipts_topic)
        if not start[receipts_topic]:
            # Unknown, or not readable by this principal: Kafka does not say which. Waiting would
            # end in "receipts not seen" however the inputs fared; better to say so before sending.
            raise BrokerError(
                f"cannot read {receipts_topic}, where the hub puts {source.id}'s receipts (it does not "
                "exist, or this principal may not read it); nothing was sent",
                hint="the hub's workers create it for every registered source (`hub topics create`); "
                f"on the secured broker `hub acl sync` lets source-{source.id} read it; or publish with "
                "--no-wait",
            )
    # Room for any record within the hub's limit plus its headers: the broker, not the client, decides.
    sender = producer(settings.bootstrap_servers, max_request_size=2 * settings.max_payload_bytes)
    try:
        with _progress() as progress:
            task = progress.add_task("publishing", total=len(publications))
            delivery = deliver(sender, topics.ingest, publications, done=lambda: progress.advance(task))
    finally:
        sender.close()
    out.print(f"sent {len(delivery.acknowledged)} records from {len(files)} files to {topics.ingest}")
    if len(delivery.refused) > 1:  # the error below names the first
        for refused in delivery.refused:
            err.print(f"refused {refused.label}: {refused.reason}", markup=False)
    if delivery.refused:
        raise refused_error(delivery, topic=topics.ingest, max_bytes=settings.max_payload_bytes)
    if wait:
        failures = _await_receipts(settings, receipts_topic, start, ReceiptWait.of(delivery), timeout)
        sys.exit(EXIT_FAILURE if failures else 0)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )


def _await_receipts(
    settings: Settings,
    receipts_topic: str,
    start: dict[str, dict[int, int]],
    wait: ReceiptWait,
    timeout: float,
) -> int:
    """Follow the source's receipts until every record sent has one; print a summary; return the
    rejects plus the receipts not seen."""
    from hub.kafka.clients import read  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    with _progress() as progress:
        task = progress.add_task("receipts", total=len(wait.waiting))
        records = (
            iter(())
            if wait.done  # nothing was acknowledged: no receipt to wait for
            else read(
                settings.bootstrap_servers,
                [receipts_topic],
                start=start,
                idle_timeout=timeout,
                deadline=deadline,
            )
        )
        for record in records:
            taken = wait.take(record.json_value())
            if taken is None:  # another input's receipt, or a repeat of one already counted
                continue
            pub, receipt = taken
            if receipt.get("status") == "rejected":
                error = receipt.get("error") or {}
                err.print(f"rejected {pub.label}: {error.get('code')}: {error.get('detail')}", markup=False)
            progress.advance(task)
            if wait.done:
                break
    out.print(f"receipts: {wait.summary()}")
    if not wait.done:
        err.print(
            f"[yellow]{len(wait.waiting)} receipts not seen within {timeout:.0f} s[/yellow]: "
            "is a worker running? (`hub worker`)"
        )
    return wait.failures()


_TOPIC_ALIASES = {"ingest", "receipts", "dlq", "pathway", "audit", "alerts"}


@main.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record, not the newest.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep waiting for records.")
@click.option("--max", "limit", type=int, default=None, help="Stop after this many records.")
@reporting_errors
def tail(topic: str, from_beginning: bool, follow: bool, limit: int | None) -> None:
    """Print a topic's records as they arrive (TOPIC: a name, or ingest|receipts|dlq|pathway|...)."""
    from hub.kafka.clients import read  # noqa: PLC0415
    from hub.ops.cli import opened, optional_opener  # noqa: PLC0415
    from hub.topics import TopicNames  # noqa: PLC0415

    settings = Settings()
    names = TopicNames(settings.topic_prefix)
    name = getattr(names, topic) if topic in _TOPIC_ALIASES else topic
    opener = optional_opener(settings)  # encrypted records shown decrypted with the operator's KEK
    shown = 0
    try:
        for record in read(
            settings.bootstrap_servers,
            [name],
            from_beginning=from_beginning,
            idle_timeout=None if follow else 3.0,  # type: ignore[arg-type]
        ):
            _print_record(opened(opener, record))
            shown += 1
            if limit is not None and shown >= limit:
                break
    except KeyboardInterrupt:
        pass


def _print_record(record: Any) -> None:
    key = record.key.decode(errors="replace") if record.key else None
    out.rule(f"{record.topic}/{record.partition}/{record.offset}  key={key}", style="dim")
    # Never the signature: a MAC an onlooker has no use for.
    headers = {k: v for k, v in header_dict(record.headers).items() if k.lower() != SIGNATURE_HEADER}
    if headers:
        out.print_json(json.dumps(headers))
    value = record.json_value()
    if value is not None:
        out.print_json(json.dumps(value))
    else:
        out.print(f"<{len(record.value or b'')} bytes, not JSON>")


@main.group()
def topics() -> None:
    """The contract's Kafka topics."""


@topics.command("create")
@reporting_errors
def topics_create() -> None:
    """Create the missing contract topics with the configured partitions and replication."""
    from hub.streams.worker import create_contract_topics  # noqa: PLC0415

    settings = Settings()
    created = create_contract_topics(settings)
    out.print(f"created {len(created)} topics" + (f": {', '.join(created)}" if created else " (all existed)"))


@main.group()
def config() -> None:
    """Configuration files."""


@config.command("check")
@reporting_errors
def config_check() -> None:
    """Validate every configuration file against its schema and resolve every secret reference.

    The same loaders as the worker's: sources (with their ConceptMaps), recipients, policy, networks.
    """
    from hub.networks import load_networks  # noqa: PLC0415
    from hub.streams.worker import ingest_context, share_config  # noqa: PLC0415

    settings = Settings()
    context = ingest_context(settings)
    out.print(
        f"{settings.sources_file}: {len(context.registry)} sources, all secrets resolved, "
        f"{len(context.code_mappers)} with ConceptMaps; pseudonymisation key present"
    )
    recipients, policy = share_config(settings)
    where = settings.recipients_file or "no recipients file: nobody receives anything"
    out.print(f"{where}: {len(recipients)} recipients; policy {policy.label} ({settings.policy_file})")
    networks = load_networks(settings.networks_dir)
    out.print(f"{settings.networks_dir}: {len(networks)} networks")


@main.command()
@click.option("--patients", default=50, show_default=True, help="Synthetic patients in the demo feed.")
@click.option("--no-demo", is_flag=True, help="Start broker and worker only, without the demo feed.")
@reporting_errors
def run(patients: int, no_demo: bool) -> None:
    """Run everything on the embedded broker, with a demo feed (Ctrl-C stops it all)."""
    from hub.run import run_everything  # noqa: PLC0415

    run_everything(patients=patients, demo=not no_demo)


main.add_command(broker)
main.add_command(acl)
main.add_command(gateway)
main.add_command(erase)
main.add_command(trace)
main.add_command(consent)
main.add_command(dlq)
main.add_command(sources)
main.add_command(bench)
main.add_command(audit)
main.add_command(keys)
main.add_command(recipients)
main.add_command(console_command)
main.add_command(status)
