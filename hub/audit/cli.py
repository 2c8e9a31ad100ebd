"""``hub audit verify``: read the audit chains back and say whether, and where, they break.

Exit codes: 0 every chain verifies; 1 a chain breaks (each break printed with partition, offset and
what is wrong); 2 nothing could be verified (no broker, no such topic, no key for the checkpoints).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from kafka import TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hub.audit.chain import ChainHead, Checkpoint
from hub.audit.signing import parse_public_key, public_pem, read_key_file, signer_from_settings
from hub.audit.verify import TRUNCATED, AuditRecord, ChainVerifier, Problem, Report
from hub.cli_support import EXIT_FAILURE, reporting_errors
from hub.errors import BrokerError, ConfigError
from hub.settings import Settings
from hub.topics import TopicNames

out = Console()
err = Console(stderr=True)


def _bounded(
    bootstrap: str, topic: str, start: dict[int, int] | None = None
) -> tuple[dict[int, int], dict[int, int], Iterator[Any]]:
    """Log start and end offsets of every partition, and the records up to the end seen now."""
    from hub.kafka.clients import new_consumer  # noqa: PLC0415 - kafka-python is slow to import

    consumer = new_consumer(bootstrap, enable_auto_commit=False, group_id=None)
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        consumer.close()
        raise BrokerError(
            f"topic {topic} does not exist", hint="check the name; `hub topics create` makes it"
        )
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    begin = {tp.partition: o for tp, o in consumer.beginning_offsets(tps).items()}
    end = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    first = {p: max(begin[p], (start or {}).get(p, begin[p])) for p in begin}

    def records() -> Iterator[Any]:
        try:
            todo = [tp for tp in tps if first[tp.partition] < end[tp.partition]]
            consumer.assign(todo)
            for tp in todo:
                consumer.seek(tp, first[tp.partition])
            position = dict(first)
            last_progress = time.monotonic()
            while any(position[tp.partition] < end[tp.partition] for tp in todo):
                if time.monotonic() - last_progress > 60:
                    raise BrokerError(f"reading {topic} stalled", hint="check the broker, then run again")
                for batch in consumer.poll(timeout_ms=500).values():
                    for message in batch:
                        if message.offset >= end[message.partition]:
                            continue
                        position[message.partition] = message.offset + 1
                        last_progress = time.monotonic()
                        yield message
        finally:
            consumer.close()

    return first, end, records()


def _public_key(settings: Settings, path: Path | None) -> Any:
    if path is not None:
        return parse_public_key(read_key_file(path), where=str(path))
    signer = signer_from_settings(settings)
    return None if signer is None else signer.public_key()


def _state_file(settings: Settings, topic: str, given: Path | None) -> Path:
    return given or settings.state_dir / "audit" / f"verified-{topic}.json"


def _load_state(path: Path) -> dict[int, dict[str, Any]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"verification state {path} is unreadable", hint="run with --from-beginning to rebuild it"
        ) from exc
    return {int(p): v for p, v in document.get("partitions", {}).items()}


def _save_state(path: Path, report: Report, previous: dict[int, dict[str, Any]]) -> None:
    partitions = {str(p): v for p, v in previous.items()}
    for partition, part in report.partitions.items():
        if part.head is not None and part.head_offset is not None:
            partitions[str(partition)] = {
                "next_offset": part.head_offset + 1,
                "seq": part.head.seq,
                "hash": part.head.hash,
            }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"partitions": partitions}, indent=2) + "\n", encoding="utf-8")


def _read_checkpoints(bootstrap: str, topic: str) -> list[Checkpoint]:
    first, end, records = _bounded(bootstrap, topic)
    found: list[Checkpoint] = []
    with _progress() as progress:
        task = progress.add_task(f"reading {topic}", total=sum(end[p] - first[p] for p in end))
        for message in progress.track(records, task_id=task):
            checkpoint = _checkpoint(message.value)
            if checkpoint is not None:
                found.append(checkpoint)
    return found


def _checkpoint(value: bytes | None) -> Checkpoint | None:
    try:
        return Checkpoint.from_json(json.loads(value or b"null"))
    except ValueError:
        return None


def _progress() -> Progress:
    """A progress bar on stderr that leaves nothing behind when done."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


@click.group()
def audit() -> None:
    """The tamper-evident audit trail (hub.audit.v1): verify its hash chains."""


@audit.command()
@click.option(
    "--from-beginning", is_flag=True, help="Re-verify everything, not only what is new since last time."
)
@click.option(
    "--topic", default=None, help="Audit topic to verify (default: hub.audit.v1 under HUB_TOPIC_PREFIX)."
)
@click.option("--checkpoint-topic", default=None, help="Topic of the signed checkpoints (default: hub's).")
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Ed25519 public key of the checkpoints (default: from HUB_AUDIT_SIGNING_KEY[_FILE]).",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the last verified position is kept (default: under HUB_STATE_DIR).",
)
@reporting_errors
def verify(
    from_beginning: bool,
    topic: str | None,
    checkpoint_topic: str | None,
    public_key: Path | None,
    state_path: Path | None,
) -> None:
    """Check every partition's hash chain and the signed checkpoints; say where a chain breaks.

    Finds a changed record, a removed record and a cut tail (against the last checkpoint, and against
    what an earlier run verified). Exits 0 when intact, 1 when a chain breaks, 2 when it cannot verify.
    """
    settings = Settings()
    names = TopicNames(settings.topic_prefix)
    topic = topic or names.audit
    checkpoints = _read_checkpoints(settings.bootstrap_servers, checkpoint_topic or names.audit_checkpoints)
    key = _public_key(settings, public_key)
    if checkpoints and key is None:
        raise ConfigError(
            f"{len(checkpoints)} signed checkpoints, and no audit public key to check them",
            hint="pass --public-key FILE (`hub audit public-key` prints it) "
            "or set HUB_AUDIT_SIGNING_KEY_FILE",
        )
    state_file = _state_file(settings, topic, state_path)
    state = {} if from_beginning else _load_state(state_file)
    start = {p: int(v["next_offset"]) for p, v in state.items()}
    first, end, records = _bounded(settings.bootstrap_servers, topic, start)
    early: list[Problem] = []
    for partition, saved in sorted(state.items()):
        if end.get(partition, 0) < int(saved["next_offset"]):
            early.append(
                Problem(
                    TRUNCATED,
                    partition,
                    end.get(partition, 0),
                    f"the partition now ends at offset {end.get(partition, 0)}, but an earlier run verified "
                    f"up to offset {int(saved['next_offset']) - 1} (seq {saved['seq']})",
                )
            )
    # Where retention deleted records past the saved position, the chain restarts from the log start.
    resumable = {p: v for p, v in state.items() if first.get(p, 0) == int(v["next_offset"])}
    verifier = ChainVerifier(
        checkpoints,
        key,
        start={p: ChainHead(int(v["seq"]), str(v["hash"])) for p, v in resumable.items()},
        log_start={p: o for p, o in first.items() if p not in resumable},
    )
    total = sum(max(0, end[p] - first[p]) for p in end)
    with _progress() as progress:
        task = progress.add_task(f"verifying {topic}", total=total)
        for message in records:
            verifier.add(
                AuditRecord(
                    message.partition,
                    message.offset,
                    message.key,
                    message.value or b"",
                    tuple((k, v or b"") for k, v in (message.headers or ())),
                )
            )
            progress.advance(task)
    report = verifier.finish()
    report.problems[:0] = early
    _print(report, topic, total, len(checkpoints))
    if not report.intact:
        sys.exit(EXIT_FAILURE)
    _save_state(state_file, report, state)


def _print(report: Report, topic: str, read: int, checkpoints: int) -> None:
    for partition, part in sorted(report.partitions.items()):
        head = f"seq {part.head.seq}" if part.head else "empty"
        out.print(
            f"{topic}[{partition}]: {part.records} records read, head {head}, "
            f"checkpointed up to seq {part.checkpointed_seq}"
        )
    for note in report.notes:
        out.print(f"note: {note}")
    if report.intact:
        out.print(f"[green]intact[/green]: {read} records, {checkpoints} signed checkpoints")
        return
    for problem in report.problems:
        err.print(f"chain breaks: {problem}")
    err.print(
        f"[red]TAMPERED[/red]: {len(report.problems)} break(s) in {topic}",
        "— what to do: keep the topic as it is and compare it with a backup or a copy of the checkpoints",
    )


@audit.command("public-key")
@reporting_errors
def public_key_command() -> None:
    """Print the audit checkpoints' Ed25519 public key (PEM), for auditors' `--public-key`."""
    signer = signer_from_settings(Settings())
    if signer is None:
        raise ConfigError("no audit signing key configured", hint="set HUB_AUDIT_SIGNING_KEY_FILE")
    click.echo(public_pem(signer.public_key()), nl=False)
