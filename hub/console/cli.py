"""``hub console`` (serve the operators' console) and ``hub console token issue|revoke|list``."""

from __future__ import annotations

import asyncio

import click

from hub.cli_support import reporting_errors
from hub.settings import Settings


@click.group(invoke_without_command=True)
@click.option("--host", default=None, help="Address to listen on. Default: HUB_CONSOLE_HOST (127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port. Default: HUB_CONSOLE_PORT (8090)."
)
@click.pass_context
@reporting_errors
def console(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the operators' console: live charts of the hub (Ctrl-C stops it; docs/OPERATIONS.md).

    Loopback only by default; on any other address every remote request needs an operator token.
    """
    if ctx.invoked_subcommand is not None:
        return
    from hub.console.app import console_from_settings, create_app, serve  # noqa: PLC0415
    from hub.console.tokens import tokens_file  # noqa: PLC0415
    from hub.kafka.outage import watch_broker_of  # noqa: PLC0415
    from hub.logging import configure_logging  # noqa: PLC0415

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    watch_broker_of(settings)  # a broker outage: two events in the log, not a flood
    app = create_app(console_from_settings(settings))

    def ready(url: str) -> None:
        click.echo(f"Operators' console on {url}")
        click.echo(f"  watching broker {settings.bootstrap_servers}, app id {settings.app_id}")
        click.echo(f"  operator token hashes: {tokens_file(settings)}")
        click.echo("Press Ctrl-C to stop.")

    try:
        asyncio.run(
            serve(
                app,
                host or settings.console_host,
                settings.console_port if port is None else port,
                ready=ready,
            )
        )
    except KeyboardInterrupt:
        click.echo("\nConsole stopped.", err=True)


@console.group()
def token() -> None:
    """Operator tokens for remote access to the console (only their SHA-256 is stored)."""


@token.command("issue")
@click.argument("operator")
@reporting_errors
def token_issue(operator: str) -> None:
    """Issue a new token for OPERATOR and print it once (it is not stored)."""
    from hub.console.tokens import OperatorTokens, check_operator, tokens_file  # noqa: PLC0415

    path = tokens_file(Settings())
    issued = OperatorTokens(path).issue(operator)
    click.echo(
        f"Operator token for {check_operator(operator)} (shown once; only its hash is kept in {path}):"
    )
    click.echo(issued)


@token.command("revoke")
@click.argument("operator")
@reporting_errors
def token_revoke(operator: str) -> None:
    """Revoke every token of OPERATOR (a running console refuses them at once)."""
    from hub.console.tokens import OperatorTokens, tokens_file  # noqa: PLC0415

    count = OperatorTokens(tokens_file(Settings())).revoke(operator)
    click.echo(f"Revoked {count} token{'s' if count != 1 else ''} of operator {operator.strip()}.")


@token.command("list")
@reporting_errors
def token_list() -> None:
    """List the operators that hold tokens, and when each was issued (never a token)."""
    from hub.console.tokens import OperatorTokens, tokens_file  # noqa: PLC0415

    path = tokens_file(Settings())
    entries = OperatorTokens(path).entries()
    if not entries:
        click.echo(f"No operator tokens in {path}.")
    for entry in entries:
        click.echo(f"{entry.operator}  issued {entry.issued_at}  sha256 {entry.sha256[:12]}…")


__all__ = ["console"]
