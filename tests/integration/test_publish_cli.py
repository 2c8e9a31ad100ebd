"""`hub publish` on a real broker with files too large: the hub's own limit refuses before sending, the
broker's refusal is reported as one; either way exit 2, the code, no traceback, and nothing counted as
sent that the broker did not acknowledge (issue 12, item 6).

The test's topics are created with the default HUB_MAX_PAYLOAD_BYTES (1 MiB), so the ingest topic takes
records up to 2 MiB (max.message.bytes, hub.streams.worker.create_contract_topics)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.kafka.clients import read

from .conftest import HubEnv
from .test_ingest_stage import observation

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def noted(size: int) -> dict[str, Any]:
    """An Observation of gp-test's patient with a note that makes its JSON about ``size`` bytes."""
    return observation({"identifier": {"system": "urn:hub:test:gp:patient", "value": "publish-1"}}) | {
        "note": [{"text": "n" * size}]
    }


@pytest.fixture
def topics(hub_env: HubEnv) -> HubEnv:
    """The test's topics, as the workers create them with the default limit."""
    result = hub_env.cli("topics", "create", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return hub_env


def ingested(env: HubEnv) -> list[bytes]:
    """The values on the test's ingest topic once nothing new comes for 3 s."""
    return [record.value or b"" for record in read(env.bootstrap, [env.topics.ingest], idle_timeout=3.0)]


def assert_failed_cleanly(result: Any, code: str) -> str:
    """Exit 2, ``error: [code]`` and what to do, no traceback, no record counted as sent."""
    output: str = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"error: [{code}]" in result.stderr and "what to do:" in result.stderr, output
    assert "Traceback" not in output
    assert "sent 1 records" not in output
    assert "is a worker running" not in output  # no wait for receipts of records never sent
    return output


def test_a_5_mb_file_is_refused_by_the_hubs_limit_before_sending(topics: HubEnv, tmp_path: Path) -> None:
    """5 MB, one resource (nothing to split): payload.too_large naming the limit; the topic stays empty."""
    path = tmp_path / "five-mb.json"
    path.write_text(json.dumps(noted(5 * MIB)), encoding="utf-8")
    output = assert_failed_cleanly(
        topics.cli("publish", "--source", "gp-test", str(path)), "payload.too_large"
    )
    assert "HUB_MAX_PAYLOAD_BYTES" in output and "nothing was sent" in output
    assert ingested(topics) == []


def test_a_3_mb_file_the_broker_refuses_is_reported_with_the_brokers_reason(
    topics: HubEnv, tmp_path: Path
) -> None:
    """A publisher whose HUB_MAX_PAYLOAD_BYTES (4 MiB) is larger than the workers' (1 MiB): the 3 MB file
    passes its own check, the topic (2 MiB) refuses it: broker.refused, the reason and what to do."""
    path = tmp_path / "three-mb.json"
    path.write_text(json.dumps(noted(3 * MIB)), encoding="utf-8")
    topics.environ["HUB_MAX_PAYLOAD_BYTES"] = str(4 * MIB)
    result = topics.cli("publish", "--source", "gp-test", "--timeout", "600", str(path), timeout=300)
    output = assert_failed_cleanly(result, "broker.refused")
    assert "the broker refused three-mb.json" in output
    assert "larger than the topic accepts" in output and "max.message.bytes" in output
    assert "sent 0 records" in result.stdout
    assert "split the Bundle" in output and "HUB_MAX_PAYLOAD_BYTES" in output
    assert ingested(topics) == []


def test_a_file_over_the_limit_only_by_its_indentation_is_compacted_and_sent(
    topics: HubEnv, tmp_path: Path
) -> None:
    """Over 1 MiB as written, under it once compacted: one record sent and acknowledged, the compact JSON."""
    document = noted(MIB // 2)
    path = tmp_path / "indented.json"
    path.write_text(json.dumps(document, indent=MIB // 16), encoding="utf-8")
    assert path.stat().st_size > MIB
    result = topics.cli("publish", "--no-wait", "--source", "gp-test", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 1 records from 1 files" in result.stdout
    [value] = ingested(topics)
    assert len(value) < MIB and json.loads(value) == document
