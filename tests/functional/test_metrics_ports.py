"""Several workers on one host, one HUB_METRICS_PORT: each serves its metrics on the next free port, and
the console and `hub status` find every one of them (hub.metrics.start_server, hub.console.scrape)."""

from __future__ import annotations

import errno
import socket
import urllib.request

import pytest

from hub import settings as settings_module
from hub.console.scrape import Target, scrape_all, targets
from hub.metrics import start_server
from hub.settings import METRICS_PORT_SPAN, Settings


def free_port() -> int:
    """A loopback port free now, with at least one free port after it (the second server's)."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_two_metrics_servers_on_the_same_configured_port_both_serve() -> None:
    """The second finds the port taken and serves on the next one; both answer with the metrics."""
    port = free_port()
    first = start_server("127.0.0.1", port)
    second = start_server("127.0.0.1", port)
    assert first == ("127.0.0.1", port)
    assert second[0] == "127.0.0.1" and port < second[1] < port + METRICS_PORT_SPAN
    for _host, bound in (first, second):
        assert "process_start_time_seconds" in fetch(bound)


def test_the_console_finds_every_worker_of_the_host_and_only_those_that_answer() -> None:
    """Without HUB_CONSOLE_WORKER_URLS: the configured port always, the next ones only when they answer."""
    port = free_port()
    bound = {start_server("127.0.0.1", port)[1] for _ in range(2)}
    config = Settings(metrics_port=port, console_worker_urls="", console_gateway_url="none")
    found = targets(config)
    assert [t.url for t in found] == [
        f"http://127.0.0.1:{p}/metrics" for p in range(port, port + METRICS_PORT_SPAN)
    ]
    assert [t.optional for t in found] == [False] + [True] * (METRICS_PORT_SPAN - 1)
    scrapes = scrape_all(found, timeout=2.0)
    assert {f"http://127.0.0.1:{p}/metrics" for p in bound} <= {s.target.url for s in scrapes if s.up}
    assert all(s.up or not s.target.optional for s in scrapes)


def test_a_configured_worker_that_does_not_answer_is_still_reported_down() -> None:
    """The first port is not optional: no worker there is a worker down, as before."""
    port = free_port()
    [scraped] = scrape_all([Target("worker", f"http://127.0.0.1:{port}/metrics")], timeout=2.0)
    assert not scraped.up


def test_explicit_worker_urls_are_watched_as_given() -> None:
    config = Settings(console_worker_urls="http://10.0.0.5:9464/metrics", console_gateway_url="none")
    assert targets(config) == [Target("worker", "http://10.0.0.5:9464/metrics")]


def test_when_every_port_of_the_span_is_taken_the_error_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker then logs metrics.unavailable and keeps processing (hub.streams.worker)."""
    monkeypatch.setattr(settings_module, "METRICS_PORT_SPAN", 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as caught:
            start_server("127.0.0.1", int(taken.getsockname()[1]))
    assert caught.value.errno == errno.EADDRINUSE


def test_port_zero_takes_any_free_port() -> None:
    _host, port = start_server("127.0.0.1", 0)
    assert port > 0 and "process_start_time_seconds" in fetch(port)
