"""``hub acl sync|show``: the secured broker's principals and ACLs, from the registries."""

from __future__ import annotations

from pathlib import Path

import click

from hub.acl.model import AclPlan
from hub.broker.embedded import BrokerLayout, read_bootstrap
from hub.broker.tls import ADMIN_USER, password_file
from hub.cli_support import reporting_errors
from hub.errors import ConfigError
from hub.kafka.security import PLAINTEXT, KafkaSecurity, read_password_file
from hub.settings import Settings

_files = click.Path(dir_okay=False, exists=True, path_type=Path)


def _plan(settings: Settings, sources: tuple[Path, ...], recipients: tuple[Path, ...]) -> AclPlan:
    from hub.acl.sync import plan_from_files  # noqa: PLC0415 - kafka-python only when needed

    sources_files = sources or (settings.sources_file,)
    recipients_files = recipients or ((settings.recipients_file,) if settings.recipients_file else ())
    if not recipients_files:
        click.echo(
            "No recipient registry (--recipients or HUB_RECIPIENTS_FILE): no recipient may read.", err=True
        )
    return plan_from_files(
        sources_files, recipients_files, topic_prefix=settings.topic_prefix, app_id=settings.app_id
    )


def _admin(settings: Settings, layout: BrokerLayout) -> tuple[str, KafkaSecurity]:
    """Where and as whom to connect: HUB_KAFKA_* when set, else the broker directory's hub-admin."""
    if settings.kafka_security_protocol != PLAINTEXT:
        return settings.bootstrap_servers, KafkaSecurity.from_settings(settings)
    secret = password_file(layout.credentials_dir, ADMIN_USER)
    if not secret.is_file() or not layout.tls.ca_cert.is_file():
        raise ConfigError(
            f"no secured broker in {layout.root} and no HUB_KAFKA_* credentials",
            hint="start one with `hub broker start --secure` (or pass its --data-dir), or set "
            "HUB_KAFKA_SECURITY_PROTOCOL=SASL_SSL with the hub-admin principal",
        )
    nodes = sorted(layout.root.glob("node-*/server.properties"))
    properties = nodes[0] if nodes else layout.properties_file
    bootstrap = read_bootstrap(properties) or settings.bootstrap_servers
    return bootstrap, KafkaSecurity.scram(ADMIN_USER, read_password_file(secret), layout.tls.ca_cert)


@click.group()
def acl() -> None:
    """Kafka principals and ACLs of the secured broker, derived from the source and recipient registries."""


_sources_option = click.option(
    "--sources",
    "sources",
    multiple=True,
    type=_files,
    help="Source registry (repeatable). Default: HUB_SOURCES_FILE.",
)
_recipients_option = click.option(
    "--recipients",
    "recipients",
    multiple=True,
    type=_files,
    help="Recipient registry (repeatable). Default: HUB_RECIPIENTS_FILE.",
)
_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The secured broker's directory (credentials/, tls/). Default: <HUB_STATE_DIR>/broker.",
)


@acl.command()
@_sources_option
@_recipients_option
@_data_dir_option
@reporting_errors
def sync(sources: tuple[Path, ...], recipients: tuple[Path, ...], data_dir: Path | None) -> None:
    """Create or remove SCRAM users and ACLs so the broker matches the registries (idempotent).

    Passwords are generated once and written 0600 to <data dir>/credentials/<user>.password; they are
    never printed. Connects as hub-admin (HUB_KAFKA_* when set, else the broker directory's).
    """
    from hub.acl.sync import run_sync, summary  # noqa: PLC0415

    settings = Settings()
    layout = BrokerLayout.from_settings(settings, root=data_dir)
    plan = _plan(settings, sources, recipients)
    bootstrap, security = _admin(settings, layout)
    result = run_sync(bootstrap, security, plan, layout.credentials_dir, report=click.echo)
    if not result.changed:
        click.echo("Nothing to change.")
    click.echo(summary(result))


@acl.command()
@_sources_option
@_recipients_option
@reporting_errors
def show(sources: tuple[Path, ...], recipients: tuple[Path, ...]) -> None:
    """Print the principals and ACLs the registries call for, without touching the broker."""
    plan = _plan(Settings(), sources, recipients)
    for principal in plan.principals:
        click.echo(
            f"{principal.name} ({principal.role}{' ' + principal.subject if principal.subject else ''})"
        )
        for binding in sorted(b for b in plan.bindings if b.principal == principal.name):
            click.echo(f"  {binding}")
