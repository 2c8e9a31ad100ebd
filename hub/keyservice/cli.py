"""``hub keys serve`` (the key service) and ``hub recipients credentials issue|revoke|list``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from hub.cli_support import reporting_errors
from hub.errors import ConfigError
from hub.keyservice import credentials_file, local_ca
from hub.settings import Settings


@click.command("serve")
@click.option("--host", default=None, help="Address to listen on. Default: HUB_KEY_SERVICE_HOST (127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port. Default: HUB_KEY_SERVICE_PORT (8443)."
)
@reporting_errors
def serve(host: str | None, port: int | None) -> None:
    """Serve the key service over HTTPS: each recipient obtains the data keys of its own topic.

    Recipients authenticate with a credential from `hub recipients credentials issue`; every release
    and refusal is audited on hub.audit.v1 (docs/SECURITY.md, "Recipient key access").
    """
    from hub.kafka.outage import watch_broker_of  # noqa: PLC0415
    from hub.keyservice.app import app_from_settings, server_tls  # noqa: PLC0415 - aiohttp only here
    from hub.keyservice.app import serve as serve_app  # noqa: PLC0415
    from hub.logging import configure_logging  # noqa: PLC0415

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    watch_broker_of(settings)  # a broker outage: two events in the log, not a flood
    context, ca_file = server_tls(settings)
    app = app_from_settings(settings)

    def ready(url: str) -> None:
        click.echo(f"Key service on {url}  (GET {url}v1/keys/<hub-key-id>)")
        click.echo(f"  clients trust: {ca_file or 'the CA of HUB_KEY_SERVICE_CERT_FILE'}")
        click.echo(f"  credential hashes: {credentials_file(settings)}")
        click.echo("Press Ctrl-C to stop.")

    try:
        asyncio.run(
            serve_app(
                app,
                host or settings.key_service_host,
                settings.key_service_port if port is None else port,
                context,
                ready=ready,
            )
        )
    except KeyboardInterrupt:
        click.echo("\nKey service stopped.", err=True)


@click.group()
def recipients() -> None:
    """Recipients (hospitals, practices, network teams): their key-service credentials."""


@recipients.group()
def credentials() -> None:
    """Per-recipient bearer credentials of the key service (only their SHA-256 is stored)."""


def _registered(settings: Settings, recipient: str) -> str:
    """The recipient's topic, if the recipient registry lists it; a ConfigError otherwise."""
    from hub.consent.recipients import load_recipients  # noqa: PLC0415
    from hub.keyservice.credentials import check_recipient  # noqa: PLC0415

    recipient = check_recipient(recipient)
    if settings.recipients_file is None:
        raise ConfigError(
            "no recipient registry is configured: nobody receives anything, so nobody needs keys",
            hint="set HUB_RECIPIENTS_FILE (config/recipients.demo.json for the demo)",
        )
    registered = load_recipients(settings.recipients_file).get(recipient)
    if registered is None:
        raise ConfigError(
            f"recipient {recipient!r} is not in {settings.recipients_file}",
            hint="register it there first (`hub config check` validates the file)",
        )
    return settings.topic_prefix + registered.topic


def _write_secret(path: Path, token: str) -> None:
    # Created 0600 from the first byte: the token is a credential.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
    path.chmod(0o600)


@credentials.command("issue")
@click.argument("recipient")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the credential to this file (0600) instead of printing it.",
)
@reporting_errors
def issue(recipient: str, out: Path | None) -> None:
    """Issue a credential for RECIPIENT (a registered recipient id); shown once, only its hash is kept."""
    from hub.keyservice.credentials import RecipientCredentials  # noqa: PLC0415

    settings = Settings()
    topic = _registered(settings, recipient)
    path = credentials_file(settings)
    token = RecipientCredentials(path).issue(recipient)
    if out is None:
        click.echo(
            f"Key-service credential of {recipient.strip()} (shown once; only its hash is kept in {path}):"
        )
        click.echo(token)
    else:
        _write_secret(out, token)
        click.echo(
            f"Key-service credential of {recipient.strip()} written to {out} (0600); its hash is in {path}"
        )
    ca_file = local_ca(settings).ca_cert if settings.key_service_cert_file is None else None
    click.echo(
        f"  key service: https://{settings.key_service_host}:{settings.key_service_port}/v1/keys/<hub-key-id>"
    )
    click.echo(f"  trust:       {ca_file or 'the CA of HUB_KEY_SERVICE_CERT_FILE'}")
    click.echo(f"  its topic:   {topic} (consumer group {recipient.strip()} or {recipient.strip()}.*)")


@credentials.command("revoke")
@click.argument("recipient")
@reporting_errors
def revoke(recipient: str) -> None:
    """Revoke every credential of RECIPIENT (the key service refuses them at its next request)."""
    from hub.keyservice.credentials import RecipientCredentials  # noqa: PLC0415

    count = RecipientCredentials(credentials_file(Settings())).revoke(recipient)
    click.echo(f"Revoked {count} credential{'s' if count != 1 else ''} of recipient {recipient.strip()}.")


@credentials.command("list")
@reporting_errors
def list_credentials() -> None:
    """List the recipients that hold credentials, and when each was issued (never a credential)."""
    from hub.keyservice.credentials import RecipientCredentials  # noqa: PLC0415

    path = credentials_file(Settings())
    entries = RecipientCredentials(path).entries()
    if not entries:
        click.echo(f"No credentials in {path}.")
    for entry in entries:
        click.echo(f"{entry.recipient}  issued {entry.issued_at}  sha256 {entry.sha256[:12]}…")


__all__ = ["recipients", "serve"]
