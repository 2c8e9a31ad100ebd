"""Scraping the workers' and the gateway's ``/metrics``: which answer, and what their samples say."""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hub.settings import Settings, metrics_ports

#: A target that does not answer this fast counts as down.
SCRAPE_SECONDS = 3.0


@dataclass(frozen=True)
class Target:
    """One process to scrape: a worker or the gateway, by its ``/metrics`` URL."""

    kind: str  # "worker" | "gateway"
    url: str
    #: Watched only while it answers: where a further worker of the host may serve (metrics_ports).
    optional: bool = False

    @property
    def name(self) -> str:
        """``kind host:port``, how the console and `hub status` name it."""
        return f"{self.kind} {urlsplit(self.url).netloc}"


@dataclass(frozen=True)
class Sample:
    """One sample: metric name (with its ``_total``/``_bucket`` suffix), labels, value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str:
        """A label's value ("" when absent)."""
        return dict(self.labels).get(key, "")


@dataclass(frozen=True)
class Scrape:
    """What one target answered: whether it is up and its samples."""

    target: Target
    up: bool
    error: str | None = None
    samples: tuple[Sample, ...] = field(default=(), repr=False)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels``."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.label(k) == v for k, v in labels.items())
        )

    def by(self, name: str, *keys: str) -> dict[tuple[str, ...], float]:
        """Samples named ``name`` summed by the values of ``keys``."""
        result: dict[tuple[str, ...], float] = {}
        for s in self.samples:
            if s.name == name:
                key = tuple(s.label(k) for k in keys)
                result[key] = result.get(key, 0.0) + s.value
        return result


def _local(host: str) -> str:
    """An address to reach a server listening on ``host`` from this machine."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - a listening address, turned into one we can dial
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def targets(settings: Settings) -> list[Target]:
    """The workers and the gateway.

    Workers: ``HUB_CONSOLE_WORKER_URLS``; else those of this app id that advertise their address
    in ``HUB_STATE_DIR`` (:func:`hub.metrics.advertised`: any port, ``HUB_METRICS_PORT=0`` too),
    and the ports a worker of this host takes from ``HUB_METRICS_PORT``
    (:func:`hub.settings.metrics_ports`): the first always when no worker advertises (no worker
    there is a worker down), the others while they answer.
    """
    from hub.metrics import advertised  # noqa: PLC0415 - only when no URL is configured

    urls = [url.strip() for url in settings.console_worker_urls.split(",") if url.strip()]
    host = _local(settings.metrics_host)
    if urls:
        found = [Target("worker", url) for url in urls]
    else:
        named = advertised(settings.state_dir, settings.app_id)
        found = [Target("worker", f"http://{_local(bound)}:{port}/metrics") for bound, port in named]
        # Both lists are this host's workers: one port is one worker, whatever host name reaches it.
        known = {port for _bound, port in named}
        found += [
            Target("worker", f"http://{host}:{port}/metrics", optional=n > 0 or bool(known))
            for n, port in enumerate(metrics_ports(settings.metrics_port))
            if port not in known
        ]
    gateway = settings.console_gateway_url.strip()
    if gateway.lower() != "none":
        found.append(
            Target(
                "gateway",
                gateway or f"http://{_local(settings.gateway_host)}:{settings.gateway_port}/metrics",
            )
        )
    return found


def parse(text: str) -> tuple[Sample, ...]:
    """Samples of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    return tuple(
        Sample(sample.name, tuple(sorted(sample.labels.items())), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )


def scrape(target: Target, timeout: float = SCRAPE_SECONDS) -> Scrape:
    """Fetch and parse one target; a target that does not answer (or not as Prometheus) is down."""
    if urlsplit(target.url).scheme not in ("http", "https"):
        return Scrape(target, False, "not an http(s) URL")
    try:
        with urllib.request.urlopen(target.url, timeout=timeout) as response:  # noqa: S310 - scheme checked
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return Scrape(target, False, f"HTTP {exc.code}")
    except (OSError, ValueError) as exc:
        return Scrape(target, False, type(exc).__name__)
    try:
        return Scrape(target, True, None, parse(text))
    except ValueError:
        return Scrape(target, False, "not Prometheus text")


def scrape_all(found: Iterable[Target], timeout: float = SCRAPE_SECONDS) -> list[Scrape]:
    """Scrape every target in turn; an optional target that does not answer is left out."""
    return [
        result
        for result in (scrape(target, timeout) for target in found)
        if result.up or not result.target.optional
    ]
