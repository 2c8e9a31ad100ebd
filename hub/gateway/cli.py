"""``hub gateway serve`` and ``hub gateway token issue|revoke|list``: the GP alert gateway."""

from __future__ import annotations

import asyncio

import click

from hub.cli_support import reporting_errors
from hub.gateway import state_file, tokens_file
from hub.settings import Settings

#: Same as ``hub.cli``: configuration, broker or usage error, nothing was done.


@click.group()
def gateway() -> None:
    """The GP alert gateway: CDS Hooks cards, a push stream and the demo GP page (docs/GP_INTEGRATION.md)."""


@gateway.command()
@click.option("--host", default=None, help="Address to listen on. Default: HUB_GATEWAY_HOST (127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port. Default: HUB_GATEWAY_PORT (8080)."
)
@click.option("--no-consume", is_flag=True, help="Serve the stored alerts without consuming hub.alerts.v1.")
@reporting_errors
def serve(host: str | None, port: int | None, no_consume: bool) -> None:
    """Serve the gateway in the foreground, consuming hub.alerts.v1 (Ctrl-C stops it)."""
    from hub.gateway.app import app_from_settings  # noqa: PLC0415 - aiohttp is only needed here
    from hub.gateway.app import serve as serve_app  # noqa: PLC0415
    from hub.kafka.outage import watch_broker_of  # noqa: PLC0415
    from hub.logging import configure_logging  # noqa: PLC0415

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    watch_broker_of(settings)  # a broker outage: two events in the log, not a flood
    app = app_from_settings(settings, consume=not no_consume)

    def ready(url: str) -> None:
        click.echo(f"Alert gateway on {url}  (demo GP page: {url}, CDS Hooks: {url}cds-services)")
        click.echo(f"  alerts and their state: {state_file(settings)}")
        click.echo(f"  token hashes:           {tokens_file(settings)}")
        click.echo("Press Ctrl-C to stop.")

    try:
        asyncio.run(
            serve_app(
                app,
                host or settings.gateway_host,
                settings.gateway_port if port is None else port,
                ready=ready,
            )
        )
    except KeyboardInterrupt:
        click.echo("\nAlert gateway stopped.", err=True)


@gateway.group()
def token() -> None:
    """Per-practitioner bearer tokens (only their SHA-256 is stored)."""


@token.command("issue")
@click.argument("rpps")
@reporting_errors
def token_issue(rpps: str) -> None:
    """Issue a new token for the GP with this RPPS and print it once (it is not stored)."""
    from hub.gateway.tokens import TokenStore, check_practitioner  # noqa: PLC0415

    path = tokens_file(Settings())
    issued = TokenStore(path).issue(rpps)
    click.echo(
        f"Token for practitioner {check_practitioner(rpps)} (shown once; only its hash is kept in {path}):"
    )
    click.echo(issued)


@token.command("revoke")
@click.argument("rpps")
@reporting_errors
def token_revoke(rpps: str) -> None:
    """Revoke every token of the GP with this RPPS (a running gateway refuses them at once)."""
    from hub.gateway.tokens import TokenStore  # noqa: PLC0415

    path = tokens_file(Settings())
    count = TokenStore(path).revoke(rpps)
    click.echo(f"Revoked {count} token{'s' if count != 1 else ''} of practitioner {rpps.strip()}.")


@token.command("list")
@reporting_errors
def token_list() -> None:
    """List the practitioners that hold tokens, and when each token was issued (never a token)."""
    from hub.gateway.tokens import TokenStore  # noqa: PLC0415

    path = tokens_file(Settings())
    entries = TokenStore(path).entries()
    if not entries:
        click.echo(f"No tokens in {path}.")
    for entry in entries:
        click.echo(f"{entry.practitioner}  issued {entry.issued_at}  sha256 {entry.sha256[:12]}…")


__all__ = ["gateway"]
