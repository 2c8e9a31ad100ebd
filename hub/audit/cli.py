"""``hub audit verify``: read the audit chains back and say whether, where and how they break.

Exit codes: 0 every chain verifies; 1 a chain breaks (each break printed with partition, offset and
its kind: altered, forged, replayed, removed, unsealed, truncated...); 2 nothing could be verified
(no broker, no such topic, no chain key, no key for the checkpoints).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from kafka import TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hub.audit.chain import ChainHead, Checkpoint, decode_checkpoint
from hub.audit.chainkey import ChainKey, chain_key_configured, chain_key_from_settings, read_chain_key_file
from hub.audit.signing import parse_public_key, public_pem, read_key_file, signer_from_settings
from hub.audit.verify import AuditRecord, ChainVerifier, Report, Verified
from hub.cli_support import EXIT_FAILURE, reporting_errors
from hub.errors import BrokerError, ConfigError, SecretUnavailable
from hub.records import headers_of
from hub.settings import Settings
from hub.topics import TopicNames

out = Console()
err = Console(stderr=True)
#: The format of the verification state file (offset, seq, link, format of each verified head).
STATE_VERSION = 2


def _bounded(
    bootstrap: str, topic: str, start: dict[int, int] | None = None
) -> tuple[dict[int, int], dict[int, int], dict[int, int], Iterator[Any]]:
    """Log start and end offsets of every partition, where reading starts (``start`` or the log
    start, whichever is later), and the records from there up to the end seen now."""
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
            last_progress = time.monotonic()
            # The consumer's position, not the last offset seen: offsets may skip (control records).
            while any(consumer.position(tp) < end[tp.partition] for tp in todo):
                if time.monotonic() - last_progress > 60:
                    raise BrokerError(f"reading {topic} stalled", hint="check the broker, then run again")
                for batch in consumer.poll(timeout_ms=500).values():
                    for message in batch:
                        last_progress = time.monotonic()
                        if message.offset < end[message.partition]:
                            yield message
        finally:
            consumer.close()

    return begin, end, first, records()


def _public_key(settings: Settings, path: Path | None) -> Any:
    if path is not None:
        return parse_public_key(read_key_file(path), where=str(path))
    signer = signer_from_settings(settings)
    return None if signer is None else signer.public_key()


def _chain_keys(settings: Settings, paths: tuple[Path, ...]) -> list[ChainKey]:
    """The chain keys given with --chain-key, and the configured one; at least one."""
    keys = [read_chain_key_file(path) for path in paths]
    if chain_key_configured(settings):
        keys.append(chain_key_from_settings(settings))
    if not keys:
        raise SecretUnavailable(
            "no audit chain key: without it a record anyone wrote to the audit topic cannot be told "
            "from a sealed one",
            hint="pass --chain-key FILE, or set HUB_AUDIT_CHAIN_KEY_FILE (the workers' key)",
        )
    return keys


def _state_file(settings: Settings, topic: str, given: Path | None) -> Path:
    return given or settings.state_dir / "audit" / f"verified-{topic}.json"


def _load_state(path: Path) -> dict[int, Verified] | None:
    """What an earlier intact run verified, per partition; None for a state of an earlier format."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"verification state {path} is unreadable", hint="run with --from-beginning to rebuild it"
        ) from exc
    if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
        return None
    try:
        return {
            int(p): Verified(
                int(v["offset"]),
                ChainHead(int(v["seq"]), str(v["link"])),
                int(v["format"]),
                int(v.get("checkpointed_seq", 0)),
            )
            for p, v in document["partitions"].items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"verification state {path} is unreadable", hint="run with --from-beginning to rebuild it"
        ) from exc


def _save_state(path: Path, report: Report, previous: dict[int, Verified]) -> None:
    verified = dict(previous)
    for partition, part in report.partitions.items():
        if part.head is not None and part.head_offset is not None and part.head_format is not None:
            verified[partition] = Verified(
                part.head_offset, part.head, part.head_format, part.checkpointed_seq
            )
    partitions = {
        str(p): {
            "offset": v.offset,
            "seq": v.head.seq,
            "link": v.head.link,
            "format": v.format,
            "checkpointed_seq": v.checkpointed_seq,
        }
        for p, v in sorted(verified.items())
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"version": STATE_VERSION, "partitions": partitions}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _read_checkpoints(bootstrap: str, topic: str) -> list[Checkpoint]:
    _begin, end, first, records = _bounded(bootstrap, topic)
    found: list[Checkpoint] = []
    with _progress() as progress:
        task = progress.add_task(f"reading {topic}", total=sum(end[p] - first[p] for p in end))
        for message in progress.track(records, task_id=task):
            checkpoint = decode_checkpoint(message.value)
            if checkpoint is not None:
                found.append(checkpoint)
    return found


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
    """The tamper-evident audit trail (hub.audit.v1): verify its keyed chains."""


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
    "--chain-key",
    "chain_key_paths",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="File of an audit chain key (repeatable: an earlier key too, after a rotation; "
    "default: HUB_AUDIT_CHAIN_KEY[_FILE]).",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the last verified position is kept (default: under HUB_STATE_DIR).",
)
@reporting_errors
def verify(  # noqa: PLR0917 - click passes each option as an argument
    from_beginning: bool,
    topic: str | None,
    checkpoint_topic: str | None,
    public_key: Path | None,
    chain_key_paths: tuple[Path, ...],
    state_path: Path | None,
) -> None:
    """Check every partition's keyed chain and the signed checkpoints; say where and how it breaks.

    Reports each record altered, forged (not sealed with the chain key), replayed, removed or
    unsealed, and a cut tail (against the last checkpoint, and against what an earlier run verified).
    Exits 0 when intact, 1 when a chain breaks, 2 when it cannot verify.
    """
    settings = Settings()
    names = TopicNames(settings.topic_prefix)
    topic = topic or names.audit
    chain_keys = _chain_keys(settings, chain_key_paths)
    checkpoints = _read_checkpoints(settings.bootstrap_servers, checkpoint_topic or names.audit_checkpoints)
    key = _public_key(settings, public_key)
    if checkpoints and key is None:
        raise ConfigError(
            f"{len(checkpoints)} signed checkpoints, and no audit public key to check them",
            hint="pass --public-key FILE (`hub audit public-key` prints it) "
            "or set HUB_AUDIT_SIGNING_KEY_FILE",
        )
    state_file = _state_file(settings, topic, state_path)
    saved = _load_state(state_file)
    if saved is None:
        out.print(f"note: {state_file} was written by an earlier hub: verifying from the beginning")
        saved = {}
    # Both runs check what an earlier run verified (the witness); only an incremental one starts there.
    start = {} if from_beginning else {p: v.offset for p, v in saved.items()}
    begin, end, first, records = _bounded(settings.bootstrap_servers, topic, start)
    resume = {p: v for p, v in saved.items() if p in start and first.get(p) == v.offset}
    verifier = ChainVerifier(
        checkpoints,
        key,
        chain_keys,
        resume=resume,
        witness=saved,
        log_start={p: o for p, o in begin.items() if p not in resume},
        log_end=end,
    )
    total = sum(max(0, end[p] - first[p]) for p in end)
    # The record an incremental run starts at was verified before: it is only checked to be the same.
    rechecked = sum(1 for p, v in resume.items() if end.get(p, 0) > v.offset)
    with _progress() as progress:
        task = progress.add_task(f"verifying {topic}", total=total)
        for message in records:
            verifier.add(
                AuditRecord(
                    message.partition,
                    message.offset,
                    message.key,
                    message.value or b"",
                    headers_of(message.headers),
                )
            )
            progress.advance(task)
    report = verifier.finish()
    _print(report, topic, total - rechecked, len(checkpoints))
    if not report.intact:
        sys.exit(EXIT_FAILURE)
    _save_state(state_file, report, saved)


def _print(report: Report, topic: str, read: int, checkpoints: int) -> None:
    for partition, part in sorted(report.partitions.items()):
        head = f"seq {part.head.seq}" if part.head else "empty"
        out.print(
            f"{topic}[{partition}]: {part.records} records read, head {head}, "
            f"checkpointed up to seq {part.checkpointed_seq}",
            soft_wrap=True,
        )
    # One line per note and per problem, whatever the terminal's width: operators grep them.
    for note in report.notes:
        out.print(f"note: {note}", soft_wrap=True, markup=False)
    if report.intact:
        out.print(f"[green]intact[/green]: {read} records, {checkpoints} signed checkpoints")
        return
    for problem in report.problems:
        err.print(f"chain breaks: {problem}", soft_wrap=True, markup=False)
    kinds = Counter(problem.kind for problem in report.problems)
    err.print(
        f"[red]TAMPERED[/red]: {len(report.problems)} break(s) in {topic} "
        f"({', '.join(f'{kind} {count}' for kind, count in sorted(kinds.items()))})",
        "— what to do: keep the topic as it is, compare it with a backup or a copy of the checkpoints, "
        "and find out who wrote to it (docs/SECURITY.md, Tamper-evident audit)",
        soft_wrap=True,
    )


@audit.command("public-key")
@reporting_errors
def public_key_command() -> None:
    """Print the audit checkpoints' Ed25519 public key (PEM), for auditors' `--public-key`."""
    signer = signer_from_settings(Settings())
    if signer is None:
        raise ConfigError("no audit signing key configured", hint="set HUB_AUDIT_SIGNING_KEY_FILE")
    click.echo(public_pem(signer.public_key()), nl=False)
