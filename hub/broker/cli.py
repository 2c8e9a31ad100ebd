"""``hub broker start|stop|status``: the embedded Kafka broker from the command line."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

import click

from hub.broker.cluster import EmbeddedCluster, is_cluster
from hub.broker.embedded import DEFAULT_PORT, KAFKA_VERSION, BrokerLayout, EmbeddedBroker, tail
from hub.broker.tls import ADMIN_USER, password_file
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
    _for_the_hub(bootstrap, layout)


def _for_the_hub(bootstrap: str, layout: BrokerLayout) -> None:
    if layout.tls.exists():
        # Secured: say how to connect as the operator, never what the password is.
        click.echo("  secured: SASL/SCRAM-SHA-512 over TLS, ACLs deny by default (docs/SECURITY.md)")
        click.echo(f"  CA certificate: {layout.tls.ca_cert}")
        click.echo("  as the operator (then `hub acl sync` creates every other principal):")
        click.echo(f"    export HUB_BOOTSTRAP_SERVERS={bootstrap}")
        click.echo("    export HUB_KAFKA_SECURITY_PROTOCOL=SASL_SSL")
        click.echo(f"    export HUB_KAFKA_SSL_CAFILE={layout.tls.ca_cert}")
        click.echo(f"    export HUB_KAFKA_SASL_USERNAME={ADMIN_USER}")
        click.echo(
            f"    export HUB_KAFKA_SASL_PASSWORD_FILE={password_file(layout.credentials_dir, ADMIN_USER)}"
        )
    elif bootstrap != Settings().bootstrap_servers:
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
    help="Client port; the controller listens on PORT+1 (a cluster's node i on PORT+2(i-1)). "
    "0 picks free ports.",
)
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl-C stops the broker.")
@click.option(
    "--secure",
    is_flag=True,
    help="SASL/SCRAM-SHA-512 over TLS, ACLs (deny by default); certificates and passwords are generated "
    "under the data dir. A directory once secured always restarts secured.",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Run a KRaft cluster of this many broker+controller nodes "
    "(3: replication 3, min.insync.replicas 2).",
)
@reporting_errors
def start(data_dir: Path | None, port: int, foreground: bool, secure: bool, nodes: int) -> None:
    """Start the broker (or a cluster), or report the one already running from this directory."""
    layout = _layout(data_dir)
    if nodes > 1 or is_cluster(layout.root):
        _start_cluster(layout, port, nodes, secure=secure, foreground=foreground)
        return
    embedded = EmbeddedBroker(layout, port=port, progress=_progress, secure=secure)
    if foreground:
        _run_in_foreground(embedded)
        return
    bootstrap = embedded.start()
    if not embedded.started:
        click.echo("Already running; not starting a second broker.")
    _describe(bootstrap, embedded.pid, layout)
    click.echo("  stop: hub broker stop" + (f" --data-dir {data_dir}" if data_dir else ""))


def _cluster(
    layout: BrokerLayout, nodes: int | None = None, port: int = 0, *, secure: bool = False
) -> EmbeddedCluster:
    # nodes None: as many as the directory's cluster.json says.
    return EmbeddedCluster(
        layout.root, layout.jars_dir, nodes=nodes, port=port, secure=secure, progress=_progress
    )


def _start_cluster(layout: BrokerLayout, port: int, nodes: int, *, secure: bool, foreground: bool) -> None:
    # `hub broker start` (nodes 1) on a cluster directory restarts the cluster it holds.
    cluster = _cluster(layout, nodes if nodes > 1 else None, port, secure=secure)
    if foreground:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _interrupt)
    try:
        cluster.start()
        _describe_cluster(cluster)
        if not foreground:
            click.echo(f"  stop: hub broker stop --data-dir {layout.root}")
            return
        click.echo("Press Ctrl-C to stop.")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        click.echo("\nStopping the Kafka cluster...", err=True)
        cluster.stop()
        click.echo("Kafka cluster stopped.", err=True)


def _describe_cluster(cluster: EmbeddedCluster) -> bool:
    """Print every node's state; True if all answer."""
    statuses = cluster.status()
    click.echo(f"Kafka {KAFKA_VERSION} cluster of {len(statuses)} nodes in {cluster.root}")
    for node_id, found in statuses:
        state = "running" if found.running else ("not answering" if found.pid else "stopped")
        click.echo(
            f"  node {node_id}: {found.bootstrap or '-'} {state} "
            f"(pid {found.pid or '-'}, log {found.log_file})"
        )
    _for_the_hub(cluster.bootstrap, BrokerLayout(root=cluster.root, jars_dir=cluster.jars_dir))
    return all(found.running for _, found in statuses)


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
    """Stop the broker, or every node of a cluster (SIGTERM, then SIGKILL after 30 s)."""
    layout = _layout(data_dir)
    if is_cluster(layout.root):
        pids = _cluster(layout).stop()
        click.echo(
            f"Stopped {len(pids)} Kafka node(s)."
            if pids
            else f"No Kafka node was running from {layout.root}."
        )
        return
    pid = EmbeddedBroker(layout, progress=_progress).stop()
    if pid is None:
        click.echo(f"No Kafka broker was running from {layout.root}.")
    else:
        click.echo(f"Stopped the Kafka broker (pid {pid}).")


@broker.command()
@_data_dir_option
@reporting_errors
def status(data_dir: Path | None) -> None:
    """Exit 0 if the broker (every node of a cluster) runs and answers, 3 if not."""
    layout = _layout(data_dir)
    if is_cluster(layout.root):
        if not _describe_cluster(_cluster(layout)):
            sys.exit(EXIT_NOT_RUNNING)
        return
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
