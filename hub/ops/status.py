"""``hub status``: the hub's health on one screen — broker, topics, lag, workers, last errors.

Exit codes scripts can trust:

- 0: healthy — the broker answers, every hub topic exists, every worker (and the gateway, unless
  ``HUB_CONSOLE_GATEWAY_URL=none``) answers on ``/metrics``, no stage has failed, and no group's lag
  exceeds ``--max-lag`` when it is given;
- 1: unhealthy — the screen (or ``--json``) says which check failed;
- 2: the command could not run (configuration or usage error).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import click

from hub.cli_support import EXIT_FAILURE, reporting_errors
from hub.settings import Settings


@dataclass(frozen=True)
class Check:
    """One line of the verdict: what was checked, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str


@dataclass
class Status:
    """Everything ``hub status`` found."""

    checks: list[Check] = field(default_factory=list)
    broker: dict[str, Any] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Every check passed."""
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        """The status as JSON (no patient data: counts, codes, topics, groups and source ids)."""
        return {
            "healthy": self.healthy,
            "checks": [vars(check) for check in self.checks],
            "broker": self.broker,
            "workers": self.workers,
            "latest_rejects": self.rejects,
        }


def gather(
    settings: Settings, *, max_lag: int | None, rejects: int, step: Any = lambda _name: None
) -> Status:
    """Look at the broker, the targets and the DLQ; ``step(name)`` is called as each part starts."""
    from hub.console.app import console_from_settings  # noqa: PLC0415
    from hub.console.broker import latest_rejects  # noqa: PLC0415
    from hub.console.scrape import scrape  # noqa: PLC0415

    console = console_from_settings(settings)
    status = Status()
    step("broker and lag")
    view = console.watch.look()
    console.watch.close()
    status.broker = view.to_json()
    status.checks.append(
        Check(
            "broker",
            view.reachable,
            f"{view.brokers} broker(s) answer" if view.reachable else str(view.error),
        )
    )
    if view.reachable:
        present = len(view.expected_topics) - len(view.missing_topics)
        status.checks.append(
            Check(
                "topics",
                not view.missing_topics,
                f"{present}/{len(view.expected_topics)} present"
                + (f"; missing {', '.join(view.missing_topics)}" if view.missing_topics else ""),
            )
        )
        if max_lag is not None:
            for group, lag in sorted(view.group_lag().items()):
                status.checks.append(
                    Check(f"lag {group}", lag <= max_lag, f"{lag} record(s) behind (max {max_lag})")
                )
    for target in console.targets:
        if _unnamed_port(target.url):  # HUB_METRICS_PORT=0 and no worker advertised an address
            if not target.optional:
                status.checks.append(Check("worker (HUB_METRICS_PORT=0)", False, _none_advertised(settings)))
            continue
        step(f"scraping {target.name}")
        found = scrape(target)
        if target.optional and not found.up:  # no further worker on that port of the host
            continue
        failures = found.total("hub_stage_failures_total")
        records = found.total("hub_stage_records_total")
        status.workers.append(
            {
                "name": target.name,
                "kind": target.kind,
                "url": target.url,
                "up": found.up,
                "error": found.error,
                "records": records,
                "failures": failures,
            }
        )
        status.checks.append(
            Check(target.name, found.up, f"up, {records:.0f} records, {failures:.0f} failures" if found.up
                  else f"no answer at {target.url} ({found.error})")
        )  # fmt: skip
        if found.up and failures:
            status.checks.append(
                Check(f"{target.name} stages", False, f"{failures:.0f} record(s) raised; see its log")
            )
    if view.reachable and console.watch.topics.dlq not in view.missing_topics and rejects > 0:
        step("latest rejects")
        status.rejects = [
            vars(r) for r in latest_rejects(settings.bootstrap_servers, console.watch.topics.dlq, rejects)
        ]
    return status


def _unnamed_port(url: str) -> bool:
    """Port 0: where the console's targets put a worker of ``HUB_METRICS_PORT=0`` that named none."""
    try:
        return urlsplit(url).port == 0
    except ValueError:  # a malformed URL in HUB_CONSOLE_WORKER_URLS: its scrape says so
        return False


def _none_advertised(settings: Settings) -> str:
    from hub.metrics import advertisement_dir  # noqa: PLC0415

    return (
        f"no running worker of app id {settings.app_id} named its metrics address in "
        f"{advertisement_dir(settings.state_dir)} (HUB_METRICS_PORT=0): start one with the same "
        "HUB_STATE_DIR, or list the workers in HUB_CONSOLE_WORKER_URLS"
    )


def render(status: Status, settings: Settings) -> None:
    """Print the status on one screen (rich)."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    out = Console()
    verdict = "[bold green]healthy[/]" if status.healthy else "[bold red]unhealthy[/]"
    out.print(f"hub status: {verdict}  (broker {settings.bootstrap_servers}, app id {settings.app_id})")
    checks = Table(show_header=False, box=None, pad_edge=False)
    for check in status.checks:
        checks.add_row("[green]✓[/]" if check.ok else "[red]✗[/]", check.name, check.detail)
    out.print(checks)
    lag = status.broker.get("lag") or []
    if lag:
        table = Table(title="consumer lag", title_justify="left")
        for column in ("group", "topic", "partition", "committed", "end", "lag"):
            table.add_column(
                column, justify="right" if column in ("partition", "committed", "end", "lag") else "left"
            )
        for row in lag:
            committed = "-" if row["committed"] is None else str(row["committed"])
            style = "red" if row["lag"] else ""
            table.add_row(row["group"], row["topic"], str(row["partition"]), committed, str(row["end"]),
                          f"[{style}]{row['lag']}[/]" if style else "0")  # fmt: skip
        out.print(table)
    if status.rejects:
        table = Table(title="last errors (DLQ)", title_justify="left")
        for column in ("at", "code", "source", "where"):
            table.add_column(column)
        for reject in status.rejects:
            table.add_row(reject["at"], f"[red]{reject['code']}[/]", reject["source"], reject["where"])
        out.print(table)
    elif status.broker.get("reachable"):
        out.print("last errors (DLQ): none")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--max-lag", type=click.IntRange(0), default=None, help="Unhealthy when a group lags by more.")
@click.option(
    "--rejects", type=click.IntRange(0, 100), default=5, show_default=True, help="Latest DLQ records."
)
@reporting_errors
def status(as_json: bool, max_lag: int | None, rejects: int) -> None:
    """The hub's health on one screen: broker, topics, lag, workers, last errors.

    Exits 0 when healthy, 1 when a check failed (the output says which), 2 on a configuration error.
    """
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    settings = Settings()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("checking", total=None)
        found = gather(
            settings,
            max_lag=max_lag,
            rejects=rejects,
            step=lambda name: progress.update(task, description=f"checking {name}"),
        )
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2, ensure_ascii=False))
    else:
        render(found, settings)
    if not found.healthy:
        sys.exit(EXIT_FAILURE)


__all__ = ["Check", "Status", "gather", "render", "status"]
