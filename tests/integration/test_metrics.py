"""A worker's /metrics on a real broker: receipts by status and code move when inputs arrive."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request

import pytest

from .conftest import HubEnv
from .test_ingest_stage import observation, signed

pytestmark = pytest.mark.integration


@pytest.fixture
def metrics_port(hub_env: HubEnv) -> int:
    """A free loopback port for the worker's metrics, set before the `worker` fixture starts it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    hub_env.environ["HUB_METRICS_PORT"] = str(port)
    return port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value, labels in any order; 0 when absent."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return 0.0


def test_receipts_by_status_and_code(
    hub_env: HubEnv, metrics_port: int, worker: subprocess.Popen[bytes]
) -> None:
    good = json.dumps(observation({"reference": "Patient/p-metrics-1"})).encode()
    unsigned = [h for h in signed(hub_env, "gp-test", good, "m-nosig") if h[0] != "hub-signature"]
    hub_env.send([(b"m-nosig", good, unsigned), (b"m-ok", good, signed(hub_env, "gp-test", good, "m-ok"))])
    assert len(hub_env.collect(hub_env.topics.receipts, 2)) == 2

    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        try:
            text = scrape(metrics_port)
        except OSError:
            text = ""
        if (
            sample(text, "hub_receipts_total", code="signature.missing", status="rejected") >= 1
            and sample(text, "hub_receipts_total", code="", status="accepted") >= 1
        ):
            break
        time.sleep(0.5)
    assert 'hub_receipts_total{code="signature.missing",status="rejected"} 1.0' in text, text
    assert sample(text, "hub_receipts_total", code="", status="accepted") >= 1
    assert sample(text, "hub_dlq_total", code="signature.missing") == 1
    assert sample(text, "hub_stage_records_total", stage="ingest") == 2
    assert sample(text, "hub_stage_seconds_count", stage="identity") >= 1
    assert sample(text, "hub_stage_batch_records_count", stage="ingest") >= 1
    assert "p-metrics-1" not in text
    log = hub_env.log_file.read_text(encoding="utf-8", errors="replace")
    assert "metrics.listening" in log and str(metrics_port) in log
