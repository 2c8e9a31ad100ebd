"""Erasure with a bound, on the broker's own disk: after `hub erase` and HUB_ERASURE_BOUND_SECONDS, no
file of the broker holds the patient's cleartext (docs/SECURITY.md, "Erasure with a bound").

The module runs its own embedded broker, whose folder the test reads, with a one-second retention
check (Kafka's default is five minutes) and a 40-second bound, so the test takes seconds, not hours.
A unique marker is planted in a patient's name and in an Observation note, in a reject that names the
patient and in one that names nobody.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from hub.broker.embedded import BrokerLayout, EmbeddedBroker
from hub.crypto.store import wal_files
from hub.errors import HubError
from hub.ingest.signature import sign
from hub.pathway.network_id import PatientKey
from hub.settings import Settings

from .conftest import HubEnv

#: The bound under test, and the worker's purge interval; with the broker's one-second retention check
#: they leave the ingest topic segment.ms of about 18 s (hub.crypto.retention.CleartextBound).
BOUND_SECONDS = 40
PURGE_SECONDS = 1


@pytest.fixture(scope="module")
def erasure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """This module's own embedded broker: ``(bootstrap, its folder)``. Its disk is what the test reads,
    so it is never the session's broker (which may be a container or another machine's)."""
    layout = BrokerLayout(
        root=tmp_path_factory.mktemp("erasure-kafka"), jars_dir=Settings().state_dir.expanduser() / "jars"
    )
    broker = EmbeddedBroker(
        layout,
        port=0,
        extra_settings=(
            ("log.retention.check.interval.ms", "1000", "the erasure bound test: segments go within 1 s"),
            ("log.initial.task.delay.ms", "0", "the retention thread starts at once, not 30 s after start"),
        ),
    )
    try:
        bootstrap = broker.start()
    except HubError as exc:
        pytest.fail(f"the erasure bound test needs its own embedded broker, which cannot start:\n{exc}")
    try:
        yield bootstrap, layout.root
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def kafka_bootstrap(erasure_broker: tuple[str, Path]) -> str:
    """The broker of this module (overrides the session's for hub_env and worker)."""
    return erasure_broker[0]


@pytest.fixture
def bound_env(hub_env: HubEnv) -> HubEnv:
    """A worker that purges and rolls every second under a 40-second bound; the gateway's files (which
    `hub erase` cleans) under the test folder; a short key cache."""
    hub_env.environ["HUB_INGEST_PURGE_SECONDS"] = str(PURGE_SECONDS)
    hub_env.environ["HUB_ERASURE_BOUND_SECONDS"] = str(BOUND_SECONDS)
    hub_env.environ["HUB_KEY_CACHE_SECONDS"] = "1"
    hub_env.environ["HUB_GATEWAY_STATE_FILE"] = str(hub_env.work_dir / "gateway" / "alerts.sqlite3")
    return hub_env


def signed(env: HubEnv, document: Any, message_id: str, *, secret: bytes | None = None) -> Any:
    value = document if isinstance(document, bytes) else json.dumps(document).encode()
    key = secret if secret is not None else env.source("synthea").secret
    headers = [
        ("hub-source", b"synthea"),
        ("hub-signature", sign(key, "synthea", value, int(time.time())).encode()),
        ("hub-message-id", message_id.encode()),
    ]
    return message_id.encode(), value, headers


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` (the broker's data, log and settings) whose bytes contain ``needle``."""
    found = []
    for path in sorted(root.rglob("*")):
        try:
            if path.is_file() and needle in path.read_bytes():
                found.append(str(path.relative_to(root)))
        except FileNotFoundError:  # a segment the broker deleted while we listed
            continue
    return found


def test_no_cleartext_of_an_erased_patient_is_left_on_the_brokers_disk_past_the_bound(
    bound_env: HubEnv, worker: subprocess.Popen[bytes], erasure_broker: tuple[str, Path]
) -> None:
    """The marker is on the broker's disk (ingest only) once sent; `hub erase` reports a time within the
    bound; once the bound has passed, no file under the broker's folder holds it."""
    env, root = bound_env, erasure_broker[1]
    marker = f"Boundmark{uuid.uuid4().hex[:12]}"
    local_id = f"p-{uuid.uuid4().hex[:8]}"
    patient = {"resourceType": "Patient", "id": local_id, "name": [{"family": marker}]}
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": f"Patient/{local_id}"},
        "effectiveDateTime": "2026-03-29T01:30:00+01:00",
        "valueQuantity": {"value": 8.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
        "note": [{"text": f"patient says {marker}"}],
    }
    wrong = b"not-the-synthea-secret-0123456789"
    env.send(
        [
            signed(env, patient, "bound-patient"),
            signed(env, observation, "bound-observation"),
            # Rejects keep the original bytes, sealed: one names the patient, one names nobody.
            signed(env, patient, "bound-reject-named", secret=wrong),
            signed(env, f"not FHIR at all: {marker}".encode(), "bound-reject-unnamed", secret=wrong),
        ]
    )
    # Acknowledged by the broker, so in its segment files now: the scan below can fail. Only the
    # ingest topic holds the cleartext; whatever the worker wrote since (DLQ, pathway) is sealed.
    holding = files_holding(root, marker.encode())
    assert holding, "the marker should be in the ingest topic's segment files once sent"
    ingest_dirs = f"kafka-logs/{env.topics.ingest}-"
    assert all(path.startswith(ingest_dirs) for path in holding), holding

    receipts = {r.json_value()["message_id"]: r.json_value() for r in env.collect(env.topics.receipts, 4)}
    assert {m: r["status"] for m, r in receipts.items()} == {
        "bound-patient": "accepted",
        "bound-observation": "accepted",
        "bound-reject-named": "rejected",
        "bound-reject-unnamed": "rejected",
    }
    # The Observation reached the pathway (read here with the operator's key): downstream, sealed.
    deadline = time.monotonic() + 120
    while not any(marker in json.dumps(r.json_value()) for r in env.settle(env.topics.pathway, quiet=2.0)):
        assert time.monotonic() < deadline, "the Observation never reached the pathway"
    assert all(path.startswith(ingest_dirs) for path in files_holding(root, marker.encode()))

    pseudonym_key = Settings(pseudonym_key=SecretStr(env.environ["HUB_PSEUDONYM_KEY"])).pseudonym_key_bytes()
    patient_id = PatientKey("local", "synthea", local_id).network_id(pseudonym_key)
    erased_at = datetime.now(UTC)
    result = env.cli("erase", patient_id, "--yes", "--by", "dpo@test", "--json", "--wait-ingest", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ingest_records_left"] == 0  # (the worker's purge may have deleted them already)
    assert (report["dlq_records_shredded"], report["dlq_records_unattributed"]) == (1, 1)
    until = datetime.fromisoformat(report["ingest_cleartext_until"])
    deadline_at = erased_at + timedelta(seconds=BOUND_SECONDS)
    assert until <= deadline_at + timedelta(seconds=1), (until, deadline_at)  # the report's ISO rounding
    assert marker not in result.stdout + result.stderr

    # The claim under test is a time: wait it out, then look at every file once.
    time.sleep(max(0.0, (deadline_at - datetime.now(UTC)).total_seconds()))
    assert worker.poll() is None, "the worker died: nothing rolled the ingest segments"
    assert files_holding(root, marker.encode()) == []

    # The key store's companions are as private as the store (the worker keeps them open).
    for path in (env.key_store_file, *wal_files(env.key_store_file)):
        assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600, path
