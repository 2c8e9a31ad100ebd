"""Issue 7 on a real broker: records encrypted at rest, and `hub erase` crypto-shreds one patient.

Two Synthea patients, each with a unique marker string planted in their name and in an Observation
note, go through a real worker and a real alert gateway. After `hub erase` of the first: no topic
(read from offset 0), log, key store or gateway file holds the marker in the clear, none of the
first patient's records decrypts (crypto.key_destroyed), and the second patient's still do.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from hub.crypto.envelope import is_envelope
from hub.crypto.keyids import RECIPIENT_SEPARATOR
from hub.errors import CryptoError, KeyDestroyed
from hub.ingest.signature import sign
from hub.kafka.clients import Record, read

from .conftest import RPPS, SYNTHEA_DIR, HubEnv

GP_RPPS = "10009900019"  # gp-dr-x's practitioner (tests/integration/conftest.py)
ICD10 = "http://hl7.org/fhir/sid/icd-10"

pytestmark = pytest.mark.skipif(
    not SYNTHEA_DIR.is_dir(), reason="the shared Synthea corpus is not beside the project"
)


def synthea_patient(path: Path, marker: str) -> dict[str, Any]:
    """A Synthea bundle with ``marker`` as the family name and in an Observation note; the patient lives
    in Guadeloupe, declares Dr X as GP and has an active cancer (so the GP is alerted)."""
    bundle: dict[str, Any] = copy.deepcopy(json.loads(path.read_text(encoding="utf-8")))
    patient_entry = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient = patient_entry["resource"]
    patient["name"][0]["family"] = marker
    patient["address"] = [{"use": "home", "postalCode": "97110", "city": "Pointe-à-Pitre", "country": "FR"}]
    patient["generalPractitioner"] = [{"identifier": {"system": RPPS, "value": GP_RPPS}}]
    observation = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    )
    observation["note"] = [{"text": f"patient says {marker}"}]
    bundle["entry"].append(
        {
            "resource": {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {"coding": [{"system": ICD10, "code": "C50.9"}]},
                "subject": {"reference": patient_entry["fullUrl"]},
                "recordedDate": "2026-11-20",
            },
            "request": {"method": "POST", "url": "Condition"},
        }
    )
    return bundle


def signed(
    env: HubEnv, value: bytes, message_id: str, *, secret: bytes | None = None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    key = secret if secret is not None else env.source("synthea").secret
    return (
        message_id.encode(),
        value,
        [
            ("hub-source", b"synthea"),
            ("hub-signature", sign(key, "synthea", value, int(time.time())).encode()),
            ("hub-message-id", message_id.encode()),
        ],
    )


@pytest.fixture
def purging_env(hub_env: HubEnv) -> HubEnv:
    """A worker that purges processed ingest records every 2 seconds."""
    hub_env.environ["HUB_INGEST_PURGE_SECONDS"] = "2"
    return hub_env


def test_the_worker_deletes_ingest_records_once_processed(
    purging_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """The ingest topic is a transit buffer: a processed input's clear bytes leave it within seconds."""
    env = purging_env
    body = json.dumps({"resourceType": "Patient", "id": "p-1", "name": [{"family": "Transitmark"}]}).encode()
    env.send([signed(env, body, "transit-1")])
    assert [r.json_value()["status"] for r in env.collect(env.topics.receipts, 1, timeout=120)] == [
        "accepted"
    ]
    # Without the purge the record stays for the topic's 7-day retention, and this loop times out.
    deadline = time.monotonic() + 60
    while any(
        b"Transitmark" in (r.value or b"") for r in read(env.bootstrap, [env.topics.ingest], idle_timeout=1.0)
    ):
        assert time.monotonic() < deadline, "the processed ingest record is still there"
        time.sleep(1.0)


@pytest.fixture
def erasure_env(hub_env: HubEnv) -> HubEnv:
    """The gateway's files under the test folder, and a short key cache so erasure reaches workers fast."""
    hub_env.environ["HUB_GATEWAY_STATE_FILE"] = str(hub_env.work_dir / "gateway" / "alerts.sqlite3")
    hub_env.environ["HUB_GATEWAY_TOKENS_FILE"] = str(hub_env.work_dir / "gateway" / "gp-tokens.json")
    hub_env.environ["HUB_KEY_CACHE_SECONDS"] = "1"
    return hub_env


@pytest.fixture
def gateway(erasure_env: HubEnv, worker: subprocess.Popen[bytes]) -> Iterator[Path]:
    """`hub gateway serve` on a free port, consuming the alerts; yields its log file."""
    log_file = erasure_env.work_dir / "gateway.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub", "gateway", "serve", "--port", "0"],
            env=os.environ | erasure_env.environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "Alert gateway on" not in log_file.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, log_file.read_text(
                errors="replace"
            )
            time.sleep(0.2)
        yield log_file
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gateway_alerts(env: HubEnv) -> dict[str, int]:
    """Alerts per patient id in the gateway's SQLite store."""
    path = Path(env.environ["HUB_GATEWAY_STATE_FILE"])
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=10)
    try:
        return dict(db.execute("SELECT patient_id, count(*) FROM alerts GROUP BY patient_id").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()


def wait_for(condition: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1.0)


def our_topics(env: HubEnv) -> list[str]:
    """Every topic of this test's hub, from the broker's own list (topics and faust changelogs)."""
    admin = KafkaAdminClient(bootstrap_servers=env.bootstrap)
    try:
        listed = admin.list_topics()
    finally:
        admin.close()
    app_id = env.environ["HUB_APP_ID"]
    # The session broker holds other tests' topics too; this test's are under its prefix or app id.
    return sorted(t for t in listed if t.startswith((env.topics.prefix, app_id + "-")))


def everything(env: HubEnv, topics: list[str]) -> list[Record]:
    """Every record of ``topics``, each read from its first offset."""
    return list(read(env.bootstrap, topics, idle_timeout=5.0))


def contains(record: Record, needle: bytes) -> bool:
    return any(
        needle in part for part in (record.key or b"", record.value or b"", *(v for _, v in record.headers))
    )


def test_erase_shreds_one_patient_everywhere_and_spares_the_other(  # noqa: PLR0915 - one scenario, end to end
    erasure_env: HubEnv, worker: subprocess.Popen[bytes], gateway: Path
) -> None:
    """After `hub erase`: the marker is nowhere in the clear; the patient's records say crypto.key_destroyed;
    the other patient's records still decrypt; the erasure is audited; the gateway forgot the alerts."""
    env = erasure_env
    files = sorted(SYNTHEA_DIR.glob("*.json"), key=lambda p: p.stat().st_size)[:2]
    marker, other = f"Erasemark{uuid.uuid4().hex[:12]}", f"Keepmark{uuid.uuid4().hex[:12]}"
    first = json.dumps(synthea_patient(files[0], marker)).encode()
    second = json.dumps(synthea_patient(files[1], other)).encode()
    # The first patient's Patient again, with a wrong signature: the DLQ keeps it, encrypted.
    rejected = json.dumps(
        next(e["resource"] for e in json.loads(first)["entry"] if e["resource"]["resourceType"] == "Patient")
    ).encode()
    env.send(
        [
            signed(env, first, "erase-first"),
            signed(env, second, "erase-second"),
            signed(env, rejected, "erase-reject", secret=b"not-the-synthea-secret-0123456789"),
        ]
    )
    receipts = {
        r.json_value()["message_id"]: r.json_value() for r in env.collect(env.topics.receipts, 3, timeout=240)
    }
    assert {m: r["status"] for m, r in receipts.items()} == {
        "erase-first": "accepted",
        "erase-second": "accepted",
        "erase-reject": "rejected",
    }
    alerts = [r.json_value() for r in env.settle(env.topics.alerts, quiet=5.0)]
    patient_of = {}
    for event in (r.json_value() for r in env.settle(env.topics.pathway)):
        text = json.dumps(event)
        for name, needle in (("first", marker), ("second", other)):
            if needle in text:
                patient_of[name] = event["patient_id"]
    # The markers did reach the pathway (decrypted here with the operator's key): the scan below can fail.
    assert set(patient_of) == {"first", "second"}, patient_of
    erased, kept = patient_of["first"], patient_of["second"]
    assert {a["patient"]["patient_id"] for a in alerts} == {erased, kept}
    wait_for(lambda: set(gateway_alerts(env)) == {erased, kept}, "the gateway to store both patients' alerts")
    topics = our_topics(env)
    before = everything(env, topics)
    # Before erasure the ingest topic holds the sources' bytes in the clear; nothing else does.
    assert {r.topic for r in before if contains(r, marker.encode())} == {env.topics.ingest}
    assert worker.poll() is None, "the worker died"

    result = env.cli(
        "erase", erased, "--yes", "--by", "dpo@test", "--json", "--wait-ingest", "60", timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert erased in report["patient_ids"] and kept not in report["patient_ids"]
    assert report["keys_destroyed"] >= 1
    assert report["gateway_alerts_removed"] >= 1
    assert report["ingest_records_left"] == 0
    assert report["dlq_records_shredded"] == 1  # the reject names the patient: its own key is destroyed
    assert marker not in result.stdout + result.stderr
    time.sleep(2.0)  # HUB_KEY_CACHE_SECONDS=1: the workers' cached keys have expired

    after = everything(env, topics)
    assert not [f"{r.topic}/{r.partition}/{r.offset}" for r in after if contains(r, marker.encode())]
    opener = env.opener()
    shredded, readable_other, sealed_topics = 0, 0, set()
    for record in after:
        if not is_envelope(record.value):
            continue
        sealed_topics.add(record.topic)
        # A recipient's copies are under the (recipient, patient) key pt-…@<recipient>: its patient's.
        key_id = (
            dict(record.headers).get("hub-key-id", b"").decode() or _changelog_key_id(record)
        ).partition(RECIPIENT_SEPARATOR)[0]
        try:
            plain = opener.open_record(record)
        except KeyDestroyed:
            erased_here = key_id in report["patient_ids"] or record.topic == env.topics.dlq
            assert erased_here, f"{record.topic}: {key_id} was not erased"
            shredded += 1
            continue
        except CryptoError as exc:  # pragma: no cover - a failure to report
            raise AssertionError(f"{record.topic}/{record.offset}: {exc}") from exc
        assert key_id not in report["patient_ids"], (
            f"{record.topic}/{record.offset} of {key_id} still decrypts"
        )
        assert marker.encode() not in (plain.value or b"")
        readable_other += other.encode() in (plain.value or b"")
    assert shredded > 0 and readable_other > 0
    expected_sealed = {
        env.topics.identity,
        env.topics.pathway,
        env.topics.alerts,
        env.topics.dlq,
        f"{env.topics.prefix}hub.pathway.gp-dr-x.v1",
        f"{env.environ['HUB_APP_ID']}-share-state-changelog",
        f"{env.environ['HUB_APP_ID']}-eligibility-facts-changelog",
    }
    assert expected_sealed <= sealed_topics, expected_sealed - sealed_topics
    # Nothing of the erased patient is left in the gateway; the other patient's alerts stay.
    assert set(gateway_alerts(env)) == {kept}

    # Files: key store, logs, gateway store, and every worker's RocksDB table folder.
    paths = [*env.key_store_file.parent.iterdir(), env.log_file, gateway]
    paths += list(Path(env.environ["HUB_GATEWAY_STATE_FILE"]).parent.iterdir())
    paths += [p for p in Path(env.environ["HUB_TABLE_DIR"]).rglob("*") if p.is_file()]
    for path in paths:
        assert marker.encode() not in path.read_bytes(), path

    # The erasure is audited on hub.audit.v1 (via the audit stage): who, which patient, no data.
    def erasure_audits() -> list[dict[str, Any]]:
        return [
            a
            for a in (r.json_value() for r in env.settle(env.topics.audit, quiet=2.0))
            if isinstance(a, dict) and any(s.get("code") == "patient-erasure" for s in a.get("subtype", []))
        ]

    wait_for(lambda: bool(erasure_audits()), "the erasure's AuditEvent on hub.audit.v1", timeout=90)
    [audit] = erasure_audits()
    assert audit["agent"][0]["who"]["identifier"]["value"] == "dpo@test"
    assert erased in json.dumps(audit["entity"]) and marker not in json.dumps(audit)

    # The same person sent again: rejected (patient.erased); the hub keeps nothing new of them.
    env.send([signed(env, first, "erase-first-again")])
    again = [r.json_value() for r in env.collect(env.topics.receipts, 4, timeout=120)]
    [receipt] = [r for r in again if r["message_id"] == "erase-first-again"]
    assert (receipt["status"], receipt["error"]["code"]) == ("rejected", "patient.erased")


def _changelog_key_id(record: Record) -> str:
    """A faust changelog record has no headers: its key id is the table key's patient."""
    key = json.loads(record.key or b"null")
    return re.split(r"[#]", str(key).rsplit("|", 1)[-1])[0]
