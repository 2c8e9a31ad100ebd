"""``hub broker start|stop|status``: the embedded Kafka broker from the command line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import NoReturn

import click

from hub.broker.embedded import DEFAULT_PORT, KAFKA_VERSION, BrokerLayout, EmbeddedBroker, tail
from hub.cli_support import reporting_errors
from hub.errors import BrokerError
from hub.settings import Settings

#: Same as ``hub.cli``: configuration, broker or usage error, nothing was done.
#: LSB convention for "status": the program is not running.
EXIT_NOT_RUNNING = 3


def _progress(line: str) -> None:
    click.echo(line, err=True)


def _layout(data_dir: Path | None) -> BrokerLayout:
    return BrokerLayout.from_settings(Settings(), root=data_dir)


def _describe(bootstrap: str, pid: int | None, layout: BrokerLayout) -> None:
    click.echo(f"Kafka {KAFKA_VERSION} broker running at {bootstrap} (pid {pid})")
    click.echo(f"  data: {layout.data_dir}")
    click.echo(f"  log:  {layout.log_file}")
    if bootstrap != Settings().bootstrap_servers:
        # The hub's commands read HUB_BOOTSTRAP_SERVERS; say so when it would point elsewhere.
        click.echo(f"  for the hub: export HUB_BOOTSTRAP_SERVERS={bootstrap}")


_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Broker directory (data, log, pid file). Default: <HUB_STATE_DIR>/broker, i.e. ~/.cache/hub/broker.",
)


@click.group()
def broker() -> None:
    """Run a local single-node Apache Kafka broker (KRaft) for development and tests."""


@broker.command()
@_data_dir_option
@click.option(
    "--port",
    type=click.IntRange(0, 65534),
    default=DEFAULT_PORT,
    show_default=True,
    help="Client port; the controller listens on PORT+1. 0 picks free ports.",
)
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl-C stops the broker.")
@reporting_errors
def start(data_dir: Path | None, port: int, foreground: bool) -> None:
    """Start the broker, or report the one already running from this directory."""
    layout = _layout(data_dir)
    embedded = EmbeddedBroker(layout, port=port, progress=_progress)
    if foreground:
        _run_in_foreground(embedded)
        return
    bootstrap = embedded.start()
    if not embedded.started:
        click.echo("Already running; not starting a second broker.")
    _describe(bootstrap, embedded.pid, layout)
    click.echo("  stop: hub broker stop" + (f" --data-dir {data_dir}" if data_dir else ""))


def _interrupt(_signum: int, _frame: FrameType | None) -> NoReturn:
    # SIGTERM (kill, service managers) and SIGHUP (terminal closed) stop the broker the way Ctrl-C
    # does; by default they would end the hub at once and leave the JVM running on its own.
    raise KeyboardInterrupt


def _run_in_foreground(embedded: EmbeddedBroker) -> None:
    layout = embedded.layout
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        bootstrap = embedded.start()
        if not embedded.started:
            raise BrokerError(
                f"a broker already runs from {layout.root} (pid {embedded.pid})",
                hint="use it as it is, or `hub broker stop` it first to run one in the foreground",
            )
        _describe(bootstrap, embedded.pid, layout)
        click.echo("Press Ctrl-C to stop.")
        code = embedded.wait()
        raise BrokerError(
            f"the Kafka broker exited by itself (exit code {code}); last lines of "
            f"{layout.log_file}:\n{tail(layout.log_file)}",
            hint=f"read {layout.log_file}",
        )
    except KeyboardInterrupt:
        click.echo("\nStopping the Kafka broker...", err=True)
    finally:
        if embedded.started and embedded.stop() is not None:
            click.echo("Kafka broker stopped.", err=True)


@broker.command()
@_data_dir_option
@reporting_errors
def stop(data_dir: Path | None) -> None:
    """Stop the broker (SIGTERM, then SIGKILL after 30 s)."""
    layout = _layout(data_dir)
    pid = EmbeddedBroker(layout, progress=_progress).stop()
    if pid is None:
        click.echo(f"No Kafka broker was running from {layout.root}.")
    else:
        click.echo(f"Stopped the Kafka broker (pid {pid}).")


@broker.command()
@_data_dir_option
@reporting_errors
def status(data_dir: Path | None) -> None:
    """Exit 0 if the broker runs and answers, 3 if not."""
    layout = _layout(data_dir)
    found = EmbeddedBroker(layout, progress=_progress).status()
    if found.running and found.bootstrap is not None and found.pid is not None:
        _describe(found.bootstrap, found.pid, layout)
        return
    if found.pid is not None:
        click.echo(
            f"The Kafka broker process (pid {found.pid}) is up but does not answer on "
            f"{found.bootstrap}: still starting, or stuck (see {found.log_file})."
        )
    else:
        click.echo(f"No Kafka broker running from {layout.root} (log: {found.log_file}).")
    sys.exit(EXIT_NOT_RUNNING)
