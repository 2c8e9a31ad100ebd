"""``hub keys rotate|status``: rotate a source's HMAC key with an overlap window; never print a key.

``hub keys serve``, the recipients' key service, is :mod:`hub.keyservice.cli`'s, grouped here.

A rotation is a key administration act: it is audited on ``hub.audit.v1`` (through the sealing
stage) with key ids, never key material. Exit codes: 0 done; 1 rotated but the AuditEvent could not
be sent (the output says so); 2 nothing done (unknown source, no broker, unreadable key, open window).
"""

from __future__ import annotations

import getpass
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from hub.cli_support import EXIT_FAILURE, reporting_errors
from hub.errors import ConfigError
from hub.keyservice.cli import serve
from hub.records import encode_json
from hub.schemas import read_json_config
from hub.settings import Settings
from hub.sources.keys import (
    Rotation,
    audit_key_rotation,
    env_instructions,
    key_id,
    parse_overlap,
    rotate_env,
    rotate_file,
)
from hub.topics import TopicNames

#: How often a worker looks for a changed registry or key file (hub.streams.routing).
RELOAD_HINT = "running workers pick a changed key file up within a few seconds"


def _current_reference(sources_file: Path, source_id: str) -> dict[str, str]:
    """The registry's reference to the key ``source_id`` signs with now (the first without an end)."""
    document = read_json_config(sources_file, what="source registry", hint="set HUB_SOURCES_FILE")
    for raw in document.get("sources", []) if isinstance(document, dict) else []:
        if isinstance(raw, dict) and raw.get("id") == source_id:
            for ref in raw.get("secrets", []):
                if isinstance(ref, dict) and "valid_until" not in ref:
                    return {k: str(v) for k, v in ref.items()}
    raise ConfigError(
        f"source {source_id!r} is not in {sources_file} (or has no current key)",
        hint="check the id with `hub config check`",
    )


def _send_audit(settings: Settings, rotation: Rotation, sender: Any) -> None:
    names = TopicNames(settings.topic_prefix)
    event = audit_key_rotation(rotation, operator=getpass.getuser(), recorded=datetime.now(UTC))
    sender.send(
        names.audit_unsealed,
        key=rotation.source_id.encode(),
        value=encode_json(event),
    ).get(timeout=30)
    sender.flush()


@click.group()
def keys() -> None:
    """Keys: the sources' HMAC keys (rotate, status; never shown) and the recipients' key service (serve)."""


keys.add_command(serve)


@keys.command()
@click.argument("source_id")
@click.option(
    "--overlap",
    default="24h",
    show_default=True,
    help="How long the previous key stays valid (30s, 15m, 24h, 7d).",
)
@click.option(
    "--secret-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="For a key in an environment variable: the file (0600) to write the new key to.",
)
@click.option("--force", is_flag=True, help="Rotate even while the previous rotation's window is open.")
@reporting_errors
def rotate(source_id: str, overlap: str, secret_out: Path | None, force: bool) -> None:
    """Give SOURCE_ID a new key; its previous key stays valid for the overlap window, then is refused.

    For a key file the new key replaces the file's content (0600) and the previous key moves to
    FILE.previous with its end. For a key in an environment variable, the new key is written to
    --secret-out and the variables to set are printed. The key itself is never printed.
    """
    from hub.kafka.clients import producer  # noqa: PLC0415 - kafka-python is slow to import

    settings = Settings()
    window = parse_overlap(overlap)
    ref = _current_reference(settings.sources_file, source_id)
    # The broker first: a rotation that cannot be audited is not started.
    sender = producer(settings.bootstrap_servers)
    now = datetime.now(UTC)
    if "file" in ref:
        path = (settings.sources_file.parent / ref["file"]).resolve()
        rotation = rotate_file(source_id, path, now=now, overlap=window, force=force)
    else:
        if secret_out is None:
            sender.close()
            raise ConfigError(
                f"the key of {source_id} is the environment variable {ref['env']}",
                hint="pass --secret-out FILE: the new key is written there (0600), never printed",
            )
        rotation = rotate_env(
            source_id, ref["env"], os.environ, now=now, overlap=window, secret_out=secret_out
        )
    click.echo(
        f"source {source_id}: new key {rotation.new_key_id}; previous key {rotation.previous_key_id} "
        f"stays valid until {rotation.valid_until.isoformat()}"
    )
    if rotation.reference == "file":
        click.echo(f"  new key written to {rotation.location} (0600); previous key kept beside it until then")
        click.echo(f"  {RELOAD_HINT}; give the source its new key before the window ends")
    elif secret_out is not None:
        click.echo(f"  new key written to {secret_out} (0600). Set, in the workers' environment:")
        for line in env_instructions(rotation, secret_out):
            click.echo(f"    {line}")
    try:
        _send_audit(settings, rotation, sender)
    except Exception as exc:  # the key is rotated already: say so, and that the audit is missing
        click.echo(
            f"error: the rotation is done but its AuditEvent was not sent ({type(exc).__name__})\n"
            "  what to do: check the broker; record this rotation in the audit by hand",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
    finally:
        sender.close()
    click.echo("  audited on hub.audit.v1 (key-rotation)")


@keys.command()
@reporting_errors
def status() -> None:
    """Each source's keys by id, with the end of any overlap window (never the keys)."""
    from hub.sources.registry import load_sources  # noqa: PLC0415

    settings = Settings()
    registry = load_sources(settings.sources_file)
    now = datetime.now(UTC)
    for source in sorted(registry.sources.values(), key=lambda s: s.id):
        current = ", ".join(key_id(k) for k in source.secrets)
        line = f"{source.id}: current {current}"
        for retiring in source.retiring:
            state = "valid" if retiring.valid_at(now) else "retired"
            line += f"; previous {key_id(retiring.secret)} {state} until {retiring.valid_until.isoformat()}"
        click.echo(line)
