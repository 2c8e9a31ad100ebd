"""`hub status` on a real broker: exit 0 when healthy, 1 when a worker is absent or the broker is down."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from hub.metrics import advertised

from .conftest import HubEnv, start_worker
from .test_ingest_stage import observation, signed
from .test_lag_and_table_sizes import fetch, free_port, wait_for, watch_worker_metrics

pytestmark = pytest.mark.integration

#: Clinical content of the reject the healthy hub receives: it must never appear in the status.
SECRET_VALUE = "p-status-zephyrine"


def test_a_running_hub_is_healthy_and_its_last_errors_name_codes_and_sources_only(
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """Worker up, topics present: exit 0, the lag per partition and the last reject's code and source."""
    port = int(hub_env.environ.get("HUB_METRICS_PORT", "0"))
    wait_for(lambda: fetch(f"http://127.0.0.1:{port}/metrics"), lambda t: "hub_" in t, timeout=60)
    good = json.dumps(observation({"reference": f"Patient/{SECRET_VALUE}"})).encode()
    unsigned = [h for h in signed(hub_env, "gp-test", good, "st-nosig") if h[0] != "hub-signature"]
    hub_env.send([(b"st-nosig", good, unsigned), (b"st-ok", good, signed(hub_env, "gp-test", good, "st-ok"))])
    assert len(hub_env.collect(hub_env.topics.receipts, 2)) == 2

    shown = hub_env.cli("status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "healthy" in shown.stdout and "unhealthy" not in shown.stdout
    assert "signature.missing" in shown.stdout and "gp-test" in shown.stdout
    assert SECRET_VALUE not in shown.stdout + shown.stderr

    as_json = hub_env.cli("status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["healthy"] is True
    assert {c["name"] for c in report["checks"] if c["ok"]} >= {"broker", "topics"}
    ingest_lag = [r for r in report["broker"]["lag"] if r["topic"] == hub_env.topics.ingest]
    assert len(ingest_lag) == 3  # one row per partition of the test's topics
    assert report["latest_rejects"][0]["code"] == "signature.missing"
    assert set(report["latest_rejects"][0]) == {"code", "source", "at", "where"}
    assert SECRET_VALUE not in as_json.stdout


@pytest.fixture(autouse=True)
def _metrics_port(hub_env: HubEnv) -> None:
    """Every test here watches its own worker's metrics port (set before the worker fixture starts)."""
    watch_worker_metrics(hub_env)


def test_an_absent_worker_makes_the_hub_unhealthy(hub_env: HubEnv) -> None:
    """Topics created but no worker: exit 1 and the worker's check says it does not answer."""
    assert hub_env.cli("topics", "create", timeout=60).returncode == 0
    shown = hub_env.cli("status", "--json")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    checks = {c["name"]: c for c in json.loads(shown.stdout)["checks"]}
    assert checks["broker"]["ok"] and checks["topics"]["ok"]
    worker = next(c for name, c in checks.items() if name.startswith("worker "))
    assert not worker["ok"] and "no answer" in worker["detail"]


def test_a_broker_that_does_not_answer_makes_the_hub_unhealthy(hub_env: HubEnv) -> None:
    """Nothing listens at the bootstrap address: exit 1 within seconds, the broker check failed."""
    hub_env.environ["HUB_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
    shown = hub_env.cli("status", timeout=60)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "unhealthy" in shown.stdout
    assert "✗  broker" in shown.stdout or "✗ broker" in shown.stdout, shown.stdout


def test_a_worker_on_a_port_the_system_chose_is_found_and_a_killed_one_is_missed(hub_env: HubEnv) -> None:
    """HUB_METRICS_PORT=0: `hub status` reaches the worker at the port it advertised in the state
    folder (exit 0); once the worker is killed -9, its left file is ignored and the check fails (1)."""
    hub_env.environ["HUB_METRICS_PORT"] = "0"
    hub_env.environ.pop("HUB_CONSOLE_WORKER_URLS")
    state_dir = hub_env.work_dir / "state"
    hub_env.environ["HUB_STATE_DIR"] = str(state_dir)
    assert hub_env.cli("topics", "create", timeout=60).returncode == 0
    process = start_worker(hub_env)
    try:
        deadline = time.monotonic() + 120
        while not advertised(state_dir, hub_env.environ["HUB_APP_ID"]):
            assert process.poll() is None and time.monotonic() < deadline, "the worker named no address"
            time.sleep(0.2)
        ((_host, port),) = advertised(state_dir, hub_env.environ["HUB_APP_ID"])
        shown = hub_env.cli("status", "--json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        report = json.loads(shown.stdout)
        assert [w["url"] for w in report["workers"]] == [f"http://127.0.0.1:{port}/metrics"]
        assert report["workers"][0]["up"] and port != 0
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    shown = hub_env.cli("status", "--json")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    checks = {c["name"]: c for c in json.loads(shown.stdout)["checks"]}
    missing = checks["worker (HUB_METRICS_PORT=0)"]
    assert not missing["ok"] and str(state_dir / "metrics") in missing["detail"]
