"""Each registered source's receipts on its own topic, hub.receipts.<source>.v1, on a real broker: the
same bytes as on hub.receipts.v1, for sources registered at start and for one added while the worker runs.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from hub.kafka.admin import admin_client
from hub.kafka.clients import read

from .conftest import PROJECT_ROOT, HubEnv

pytestmark = pytest.mark.integration

SAMPLE = PROJECT_ROOT / "tests" / "fixtures" / "fhir" / "patient-ins-vali.json"


def values(env: HubEnv, topic: str) -> list[bytes]:
    """Every value of a topic once nothing new comes for 3 s."""
    return [record.value or b"" for record in read(env.bootstrap, [topic], idle_timeout=3.0)]


def wait_for_topic(env: HubEnv, topic: str, *, timeout: float) -> bool:
    """True once the broker lists ``topic`` (polled every half second), False after ``timeout``."""
    admin = admin_client(env.bootstrap)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if topic in admin.list_topics():
                return True
            time.sleep(0.5)
        return False
    finally:
        admin.close()


def test_hub_publish_waits_on_the_sources_own_topic_which_holds_the_same_receipt(
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """gp-test's receipt: `hub publish` sees it on hub.receipts.gp-test.v1, the same bytes as on
    hub.receipts.v1; no other source's topic gets it."""
    result = hub_env.cli("publish", "--source", "gp-test", "--timeout", "120", str(SAMPLE), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "receipts: 1 accepted" in result.stdout, result.stdout + result.stderr
    own = values(hub_env, hub_env.topics.source_receipts("gp-test"))
    assert own and json.loads(own[0])["source"] == "gp-test"
    assert set(own) <= set(values(hub_env, hub_env.topics.receipts))
    assert values(hub_env, hub_env.topics.source_receipts("synthea")) == []


def test_a_source_registered_while_the_worker_runs_gets_its_topic_and_its_receipts(
    hub_env: HubEnv, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """Add gp-late to the registry file: the running worker creates hub.receipts.gp-late.v1 without an
    input to prompt it, accepts gp-late's input, and `hub publish --source gp-late` sees its receipt."""
    late = hub_env.topics.source_receipts("gp-late")
    registry_file = Path(hub_env.environ["HUB_SOURCES_FILE"])
    registry = json.loads(registry_file.read_text(encoding="utf-8"))
    assert wait_for_topic(hub_env, hub_env.topics.source_receipts("gp-test"), timeout=60)
    assert not wait_for_topic(hub_env, late, timeout=0.1)
    (tmp_path / "gp-late.key").write_text("gp-late-secret-0123456789abcdef0123", encoding="utf-8")
    gp_test = next(source for source in registry["sources"] if source["id"] == "gp-test")
    registry["sources"].append(gp_test | {"id": "gp-late", "secrets": [{"file": "gp-late.key"}]})
    registry_file.write_text(json.dumps(registry), encoding="utf-8")

    assert wait_for_topic(hub_env, late, timeout=90), hub_env.log_file.read_text(errors="replace")[-3000:]
    result = hub_env.cli("publish", "--source", "gp-late", "--timeout", "120", str(SAMPLE), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "receipts: 1 accepted" in result.stdout, result.stdout + result.stderr
    [receipt] = [json.loads(value) for value in values(hub_env, late)]
    assert (receipt["source"], receipt["status"]) == ("gp-late", "accepted")
