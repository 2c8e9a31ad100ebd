"""Consumer lag (the console's /metrics) and table sizes (a worker's /metrics) move with their cause."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from types import TracebackType

import pytest

from hub.console.scrape import parse

from .conftest import HubEnv
from .test_ingest_stage import observation, signed
from .test_share_stage import patient, publish

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def watch_worker_metrics(env: HubEnv) -> int:
    """Give the test's worker its own metrics port and point the console and `hub status` at it."""
    port = free_port()
    env.environ["HUB_METRICS_PORT"] = str(port)
    env.environ["HUB_CONSOLE_WORKER_URLS"] = f"http://127.0.0.1:{port}/metrics"
    env.environ.setdefault("HUB_CONSOLE_GATEWAY_URL", "none")
    env.environ["HUB_CONSOLE_REFRESH_SECONDS"] = "0.5"
    env.environ["HUB_CONSOLE_TOKENS_FILE"] = str(env.work_dir / "operator-tokens.json")
    return port


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test servers
        return str(response.read().decode())


def total(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels``; None when there is none."""
    found = [
        s.value
        for s in parse(text)
        if s.name == name and all(dict(s.labels).get(k) == v for k, v in labels.items())
    ]
    return sum(found) if found else None


def wait_for(read: Callable[[], str], ready: Callable[[str], bool], timeout: float = 90.0) -> str:
    """Poll ``read()`` until ``ready(text)``; fail with the last text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = read()
        except OSError:
            text = ""
        if text and ready(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"not reached within {timeout} s; last answer:\n{text[-3000:]}")


class ConsoleProcess:
    """`hub console --port 0` as an operator starts it, with the test's environment; stopped on exit."""

    def __init__(self, env: HubEnv) -> None:
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> ConsoleProcess:
        log = (self.env.work_dir / "console.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hub", "console", "--port", "0"],
            env=os.environ | self.env.environ,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        log.close()
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"Operators' console on (http://\S+/)", self.process.stdout.readline())
            if found:
                self.url = found.group(1)
                return self
        raise AssertionError("the console did not start")

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metrics(self) -> str:
        return fetch(self.url + "metrics")

    def state(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(fetch(self.url + "api/state"))
        return result


def test_lag_rises_with_unread_inputs_and_falls_when_the_worker_reads_them(
    hub_env: HubEnv, request: pytest.FixtureRequest
) -> None:
    """No worker: five inputs are five records of lag on the ingest topic; a worker starts: lag drops to 0."""
    watch_worker_metrics(hub_env)
    assert hub_env.cli("topics", "create", timeout=60).returncode == 0
    group, ingest = hub_env.environ["HUB_APP_ID"], hub_env.topics.ingest
    with ConsoleProcess(hub_env) as console:
        text = wait_for(
            console.metrics, lambda t: total(t, "hub_consumer_lag", group=group, topic=ingest) == 0
        )
        assert total(text, "hub_broker_up") == 1
        records = []
        for n in range(5):
            value = json.dumps(observation({"reference": f"Patient/p-lag-{n}"})).encode()
            records.append((f"lag-{n}".encode(), value, signed(hub_env, "gp-test", value, f"lag-{n}")))
        hub_env.send(records)
        wait_for(console.metrics, lambda t: total(t, "hub_consumer_lag", group=group, topic=ingest) == 5)

        request.getfixturevalue("worker")
        assert len(hub_env.collect(hub_env.topics.receipts, 5)) == 5
        text = wait_for(
            console.metrics,
            lambda t: (
                total(t, "hub_consumer_lag", group=group, topic=ingest) == 0
                and total(t, "hub_consumer_lag", group=group, topic=hub_env.topics.identity) == 0
            ),
        )
        # Committed offsets, per partition: the ingest topic's end offsets sum to the five inputs.
        assert total(text, "hub_consumer_group_members", group=group) == 1
        state = console.state()
        assert state["lag_partitions"], state
        assert "p-lag-" not in json.dumps(state) and "p-lag-" not in text


def test_table_sizes_follow_the_patients_the_worker_remembers(
    hub_env: HubEnv, request: pytest.FixtureRequest
) -> None:
    """Two patients registered: the share state and the identity tables gain keys; labels name tables only."""
    port = watch_worker_metrics(hub_env)
    request.getfixturevalue("worker")
    scrape = lambda: fetch(f"http://127.0.0.1:{port}/metrics")  # noqa: E731
    before = wait_for(scrape, lambda t: total(t, "hub_table_keys", table="share-state") is not None)
    assert total(before, "hub_table_keys", table="share-state") == 0
    seen_before = total(before, "hub_table_keys", table="identity-seen-messages") or 0
    publish(hub_env, patient("TBL-1", with_ins=False), "tbl-1")
    publish(hub_env, patient("TBL-2", with_ins=False), "tbl-2")
    assert len(hub_env.collect(hub_env.topics.receipts, 2)) == 2
    after = wait_for(
        scrape,
        lambda t: (
            (total(t, "hub_table_keys", table="share-state") or 0) >= 2
            and (total(t, "hub_table_keys", table="identity-seen-messages") or 0) >= seen_before + 2
        ),
    )
    assert total(after, "hub_table_keys", table="share-state") == 2
    assert "TBL-" not in after
