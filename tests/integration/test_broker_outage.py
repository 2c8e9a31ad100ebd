"""A broker outage in a worker's log: one broker.unavailable, one broker.recovered, no flood.

The module runs its own embedded broker on fixed ports, stopped and started again on them while a
worker runs (``kafka_bootstrap`` is overridden here, so the shared ``hub_env`` fixture uses it).
Before folding, a minute of outage wrote thousands of aiokafka error lines (about 60 a second).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from hub.broker.embedded import BrokerLayout, EmbeddedBroker
from hub.kafka.clients import read
from hub.kafka.outage import CLIENT_LOGGERS
from hub.settings import Settings

from .conftest import HubEnv, start_worker, stop_worker
from .test_ingest_stage import observation, signed
from .test_lag_and_table_sizes import fetch, total, wait_for, watch_worker_metrics

pytestmark = pytest.mark.integration

#: Client connection errors the outage must have produced (and the worker folded) before the
#: broker comes back: without folding, each would have been a line of the log.
FLOOD = 300
#: Client lines (warning and above) the outage may still add: the few that are neither about a
#: connection nor about the coordinator it lost (folded while the outage lasts) pass as they are.
#: Before the coordinator's lines were folded, a slow run added 12 "coordinator dead" lines.
MAX_CLIENT_LINES = 10


def two_free_ports() -> tuple[int, int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(2)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        client, controller = (int(sock.getsockname()[1]) for sock in sockets)
        return client, controller


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker for this module on fixed ports, so a restart binds the address the clients retry."""
    client, controller = two_free_ports()
    layout = BrokerLayout(
        root=tmp_path_factory.mktemp("kafka-outage"), jars_dir=Settings().state_dir.expanduser() / "jars"
    )
    embedded = EmbeddedBroker(layout, port=client, controller_port=controller)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="module")
def kafka_bootstrap(broker: EmbeddedBroker) -> str:
    """Overrides the session broker for this module: hub_env uses the one this module stops."""
    assert broker.bootstrap is not None
    return broker.bootstrap


def log_events(path: Path, offset: int) -> list[dict[str, Any]]:
    """The JSON lines written to ``path`` after ``offset`` (a spinner's escape codes may precede one)."""
    found = []
    with path.open("rb") as log:
        log.seek(offset)
        for raw in log.read().decode("utf-8", "replace").splitlines():
            start = raw.find("{")
            if start < 0:
                continue
            try:
                found.append(json.loads(raw[start:]))
            except ValueError:
                continue
    return found


def metric(url: str, name: str) -> float:
    return total(fetch(url), name) or 0.0


def send_and_wait_for_receipt(env: HubEnv, message_id: str, timeout: float = 120.0) -> None:
    """Send one signed input and wait for its receipt: the worker processes."""
    value = json.dumps(observation({"reference": "Patient/outage"})).encode()
    env.send([(message_id.encode(), value, signed(env, "gp-test", value, message_id))])
    opener = env.opener()
    deadline = time.monotonic() + timeout
    for record in read(env.bootstrap, [env.topics.receipts], idle_timeout=timeout, deadline=deadline):
        receipt = opener.open_record(record).json_value()
        if receipt and receipt.get("message_id") == message_id:
            return
    raise AssertionError(f"no receipt for {message_id} within {timeout:.0f} s: the worker does not process")


def test_a_broker_outage_is_two_events_in_the_worker_log_not_a_flood(
    hub_env: HubEnv, broker: EmbeddedBroker
) -> None:
    """Stop the broker under a running worker, restart it: one unavailable, one recovered, few lines."""
    port = watch_worker_metrics(hub_env)
    url = f"http://127.0.0.1:{port}/metrics"
    assert hub_env.cli("topics", "create", timeout=60).returncode == 0
    worker = start_worker(hub_env)
    try:
        send_and_wait_for_receipt(hub_env, "outage-before")
        wait_for(lambda: fetch(url), lambda t: total(t, "hub_broker_connected") == 1)
        mark = hub_env.log_file.stat().st_size
        broker.stop()
        wait_for(lambda: fetch(url), lambda t: total(t, "hub_broker_connected") == 0, timeout=60)
        wait_for(
            lambda: fetch(url),
            lambda t: (total(t, "hub_kafka_client_errors_folded_total") or 0) >= FLOOD,
            timeout=180,
        )
        folded_while_down = metric(url, "hub_kafka_client_errors_folded_total")
        broker.start()
        wait_for(lambda: fetch(url), lambda t: total(t, "hub_broker_connected") == 1, timeout=180)
        send_and_wait_for_receipt(hub_env, "outage-after")
    finally:
        stop_worker(worker)
    events = log_events(hub_env.log_file, mark)
    broker_events = [e for e in events if e.get("logger") == "hub.kafka.outage"]
    names = [e["event"] for e in broker_events if e["event"] in ("broker.unavailable", "broker.recovered")]
    assert names == ["broker.unavailable", "broker.recovered"], broker_events
    unavailable, recovered = (next(e for e in broker_events if e["event"] == n) for n in names)
    assert unavailable["code"] == "broker.unavailable" and unavailable["level"] == "error"
    assert unavailable["bootstrap"] == hub_env.bootstrap and unavailable["reminder"] is False
    assert unavailable["suppressed_client_errors"] >= 1
    assert recovered["suppressed_client_errors"] >= folded_while_down >= FLOOD
    assert recovered["outage_seconds"] > 0
    client_lines = [
        e
        for e in events
        if str(e.get("logger", "")).split(".")[0] in CLIENT_LOGGERS
        and e.get("level") in ("warning", "error", "critical")
    ]
    assert len(client_lines) <= MAX_CLIENT_LINES, [e["event"] for e in client_lines]
