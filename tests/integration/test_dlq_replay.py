"""`hub dlq replay` on a real broker: a reject fixed by configuration becomes accepted, audited, receipted."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from hub.ingest.signature import sign

from .conftest import HubEnv, start_worker, stop_worker
from .test_ingest_stage import observation

NEW_SOURCE = "late-registered"
NEW_SECRET = b"late-registered-secret-0123456789abcdef"
NEW_SYSTEM = "urn:hub:test:late:patient"


@pytest.fixture
def restarted(hub_env: HubEnv) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes the test starts itself, stopped after it."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        stop_worker(process)


def register_new_source(env: HubEnv) -> None:
    variable = "HUB_TEST_SECRET_LATE_REGISTERED"
    env.environ[variable] = NEW_SECRET.decode()
    registry = json.loads((env.work_dir / "sources.json").read_text())
    registry["sources"].append(
        {
            "id": NEW_SOURCE,
            "kind": "hospital",
            "organization": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "330781196"},
            "time_zone": "Europe/Paris",
            "patient_identifier_systems": [NEW_SYSTEM],
            "default_fhir_version": "4.0",
            "code_mappings": [],
            "secrets": [{"env": variable}],
        }
    )
    (env.work_dir / "sources.json").write_text(json.dumps(registry))


def test_a_reject_fixed_by_registering_its_source_is_replayed_into_accepted_events(
    hub_env: HubEnv, worker: subprocess.Popen[bytes], restarted: list[subprocess.Popen[bytes]]
) -> None:
    value = json.dumps(observation({"identifier": {"system": NEW_SYSTEM, "value": "L-1"}})).encode()
    headers = [
        ("hub-source", NEW_SOURCE.encode()),
        ("hub-signature", sign(NEW_SECRET, NEW_SOURCE, value, int(time.time())).encode()),
        ("hub-message-id", b"late-1"),
    ]
    hub_env.send([(b"late-1", value, headers)])
    [first] = [r.json_value() for r in hub_env.collect(hub_env.topics.receipts, 1)]
    assert (first["status"], first["error"]["code"]) == ("rejected", "source.unknown")
    assert len(hub_env.collect(hub_env.topics.dlq, 1)) == 1

    nothing_yet = hub_env.cli("dlq", "replay", "--code", "source.unknown")
    assert nothing_yet.returncode == 2, nothing_yet.stdout + nothing_yet.stderr
    assert "--yes" in nothing_yet.stderr
    assert hub_env.cli("dlq", "list", "--code", "fhir.invalid").returncode == 1

    stop_worker(worker)
    register_new_source(hub_env)
    restarted.append(start_worker(hub_env))

    result = hub_env.cli("dlq", "replay", "--code", "source.unknown", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replayed 1 rejects" in result.stdout

    receipts = [r.json_value() for r in hub_env.collect(hub_env.topics.receipts, 2, timeout=180)]
    assert restarted[0].poll() is None, "the restarted worker died"
    assert [(r["message_id"], r["status"]) for r in receipts] == [
        ("late-1", "rejected"),
        ("late-1", "accepted"),
    ]
    assert receipts[1]["event_ids"]
    origin = f"{first['ingest']['topic']}/{first['ingest']['partition']}/{first['ingest']['offset']}"
    assert receipts[1]["ingest"] != first["ingest"]

    ingest = hub_env.settle(hub_env.topics.ingest, quiet=1.0)
    [replayed] = [r for r in ingest if dict(r.headers).get("hub-replay-of") == origin.encode()]
    assert replayed.value == value
    assert list(replayed.headers) == [*headers, ("hub-replay-of", origin.encode())]

    audits = [r.json_value() for r in hub_env.settle(hub_env.topics.audit, quiet=1.0)]
    [audit] = [a for a in audits if a["subtype"][0]["code"] == "dlq-replay"]
    assert audit["type"]["code"] == "110107"
    assert audit["entity"][0]["what"]["identifier"]["value"] == origin
    details = {x["type"]: x["valueString"] for x in audit["entity"][0]["detail"]}
    assert details["replayed_to"] == "{topic}/{partition}/{offset}".format(**receipts[1]["ingest"])
    assert "L-1" not in json.dumps(audit), "no clinical content in the audit record"

    listed = hub_env.cli("dlq", "list", "--code", "source.unknown")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    [line] = listed.stdout.splitlines()
    assert line.startswith(f"{origin}  {NEW_SOURCE}  late-1  source.unknown")
    assert "L-1" not in listed.stdout and "Observation" not in listed.stdout
