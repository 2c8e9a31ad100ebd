"""Issue 15 on a real broker: a hospital reads its own topic with its own Kafka client, in Java.

The consumer is examples/java-consumer/HubConsumer.java, run as a hospital would run it: the Apache
Kafka client from Maven Central and the JDK's AES-GCM, with nothing but its topic, its key-service
credential and the CA file in its environment. It must open exactly what `hub tail` (the operator,
with the hub's KEK) shows on that topic; another recipient's credential must open nothing; after
`hub erase` the key service answers crypto.key_destroyed and no topic holds the patient in the clear.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from hub.broker.embedded import BrokerLayout, find_java, resolve_classpath
from hub.ingest.signature import sign
from hub.kafka.clients import read
from hub.settings import Settings

from .conftest import FINESS, PROJECT_ROOT, RPPS, HubEnv

EXAMPLE = PROJECT_ROOT / "examples" / "java-consumer"
VECTORS = PROJECT_ROOT / "docs" / "envelope-vectors.json"
HOSPITAL_FINESS = "970100228"  # hosp-a (tests/integration/conftest.py)
#: How long the Java consumer waits for a new record before it stops (after joining its group).
IDLE_EXIT_SECONDS = "5"


@pytest.fixture(scope="module")
def java_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """kafka-clients 4.4.0 (the broker's release) and its logging binding, from the example's own pom:
    resolved by Maven once and cached with the broker's jars, the way hub.broker resolves Kafka."""
    # resolve_classpath needs only the pom's folder and the shared jar cache of a layout.
    layout = BrokerLayout(
        root=tmp_path_factory.mktemp("java-consumer"),
        jars_dir=Settings().state_dir.expanduser() / "jars",
        deploy_dir=EXAMPLE,
    )
    return resolve_classpath(layout)


def java(
    classpath: str, *args: str, environ: dict[str, str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """The example consumer, started as its README says, with only ``environ`` (and PATH, HOME)."""
    executable = find_java()
    assert executable is not None, "Java 17 is a prerequisite of the project (README)"
    return subprocess.run(
        [executable, "-cp", classpath, str(EXAMPLE / "HubConsumer.java"), *args],
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")} | environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_java_consumer_opens_the_published_test_vectors(java_classpath: str) -> None:
    """docs/envelope-vectors.json, opened by an implementation written from the docs alone."""
    result = java(java_classpath, "--check-vectors", str(VECTORS), environ={})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 vectors passed" in result.stdout


@dataclass(frozen=True)
class KeyService:
    """A running `hub keys serve`: its URL and the CA file its clients trust."""

    url: str
    ca_file: Path


@contextlib.contextmanager
def serving_keys(env: HubEnv, extra_env: dict[str, str] | None = None) -> Iterator[KeyService]:
    """`hub keys serve --port 0` (its certificate from the local CA of HUB_KEY_SERVICE_CA_DIR, by
    default one in the test's folder), with ``extra_env`` (a Kafka principal) on top of the test's."""
    env.environ.setdefault("HUB_KEY_SERVICE_CA_DIR", str(env.work_dir / "ca"))
    env.environ["HUB_KEY_SERVICE_CREDENTIALS_FILE"] = str(env.work_dir / "keyservice" / "credentials.json")
    log_file = env.work_dir / "key-service.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub", "keys", "serve", "--port", "0"],
            env=os.environ | env.environ | (extra_env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not (
            found := re.search(r"Key service on (https://\S+?)/ ", log_file.read_text(errors="replace"))
        ):
            assert process.poll() is None and time.monotonic() < deadline, log_file.read_text(
                errors="replace"
            )
            time.sleep(0.2)
        yield KeyService(found.group(1), Path(env.environ["HUB_KEY_SERVICE_CA_DIR"]) / "ca.pem")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def key_service(hub_env: HubEnv) -> Iterator[KeyService]:
    """The key service of the test's hub, on the session's (plaintext) broker."""
    with serving_keys(hub_env) as service:
        yield service


def credential(env: HubEnv, recipient: str) -> Path:
    """`hub recipients credentials issue RECIPIENT --out FILE`, as the operator hands one to a hospital."""
    path = env.work_dir / f"{recipient}.token"
    result = env.cli("recipients", "credentials", "issue", recipient, "--out", str(path), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert path.read_text().startswith("hubrk_") and path.read_text().strip() not in result.stdout
    return path


def admission(marker: str) -> bytes:
    """A GP's bundle: a patient in hospital A (so hosp-a is in the care team), a diagnosis, a result."""
    patient_url = "urn:uuid:7a0e5c1e-15f0-4b8e-9a51-6d1f2c3b4a59"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:hub:test:gp:patient", "value": f"GP-{marker}"}],
                "generalPractitioner": [{"identifier": {"system": RPPS, "value": "10009900019"}}],
                "birthDate": "1951-06-02",
            },
        },
        {
            "resource": {
                "resourceType": "Encounter",
                "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": patient_url},
                "serviceProvider": {"identifier": {"system": FINESS, "value": HOSPITAL_FINESS}},
                "period": {"start": "2026-11-20T08:00:00-04:00"},
            }
        },
        {
            "resource": {
                "resourceType": "Condition",
                "subject": {"reference": patient_url},
                "code": {
                    "coding": [
                        {"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9", "display": marker}
                    ]
                },
                "recordedDate": "2026-11-20",
            }
        },
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "subject": {"reference": patient_url},
                "effectiveDateTime": "2026-11-20T11:00:00-04:00",
                "valueQuantity": {
                    "value": 8.1,
                    "unit": "%",
                    "system": "http://unitsofmeasure.org",
                    "code": "%",
                },
            }
        },
    ]
    for entry in entries:
        entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


def publish(env: HubEnv, value: bytes, message_id: str) -> None:
    secret = env.source("gp-test").secret
    headers = [
        ("hub-source", b"gp-test"),
        ("hub-signature", sign(secret, "gp-test", value, int(time.time())).encode()),
        ("hub-message-id", message_id.encode()),
    ]
    env.send([(message_id.encode(), value, headers)])


def tail(env: HubEnv, topic: str, extra_env: dict[str, str] | None = None) -> dict[tuple[int, int], Any]:
    """What `hub tail TOPIC --from-beginning --no-follow` shows, by (partition, offset): the value."""
    # A wide terminal: rich must not wrap the pretty-printed JSON.
    result = subprocess.run(
        [sys.executable, "-m", "hub", "tail", topic, "--from-beginning", "--no-follow"],
        env=os.environ | env.environ | (extra_env or {}) | {"COLUMNS": "100000"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shown: dict[tuple[int, int], Any] = {}
    rule = re.compile(rf"^─* ?{re.escape(topic)}/(\d+)/(\d+)  key=\S+ ?─*$", re.MULTILINE)
    marks = list(rule.finditer(result.stdout))
    decoder = json.JSONDecoder()
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(result.stdout)
        text, documents, at = result.stdout[mark.end() : end], [], 0
        while (at := len(text) - len(text[at:].lstrip())) < len(text):
            document, at = decoder.raw_decode(text, at)
            documents.append(document)
        shown[(int(mark.group(1)), int(mark.group(2)))] = documents[-1]  # headers first, then the value
    return shown


def run_consumer(
    classpath: str,
    env: HubEnv,
    service: KeyService,
    topic: str,
    *,
    group: str,
    token: Path,
    kafka: dict[str, str] | None = None,
) -> tuple[dict[tuple[int, int], Any], list[str]]:
    """The hospital's consumer in a group of its own (``group`` and a random suffix; ``kafka``: its Kafka
    login): what it opened, by (partition, offset), and the codes of what it skipped."""
    result = java(
        classpath,
        "--idle-exit",
        IDLE_EXIT_SECONDS,
        environ={
            "KAFKA_BOOTSTRAP_SERVERS": env.bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_GROUP_ID": f"{group}.{uuid.uuid4().hex[:8]}",
            "KEY_SERVICE_URL": service.url,
            "KEY_SERVICE_TOKEN_FILE": str(token),
            "KEY_SERVICE_CA_FILE": str(service.ca_file),
            **(kafka or {}),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    opened = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        assert record["topic"] == topic
        opened[(record["partition"], record["offset"])] = record["event"]
    skipped = [line.rsplit(": ", 1)[1] for line in result.stderr.splitlines() if line.startswith("skipped ")]
    return opened, skipped


def settled(env: HubEnv, topic: str, *, at_least: int, timeout: float = 120.0) -> int:
    """How many records ``topic`` holds once it has ``at_least`` and nothing new arrives for 3 s."""
    deadline = time.monotonic() + timeout
    while (count := len(env.settle(topic, quiet=3.0))) < at_least:
        assert time.monotonic() < deadline, f"{topic} has {count} records, not {at_least}"
    return count


def key_audits(env: HubEnv) -> list[dict[str, Any]]:
    """The key service's AuditEvents on hub.audit.v1 (chained by the worker's sealing stage)."""
    return [
        audit
        for audit in (r.json_value() for r in env.settle(env.topics.audit, quiet=2.0))
        if isinstance(audit, dict) and audit["subtype"][0]["code"] in {"key-release", "key-refusal"}
    ]


def test_a_hospitals_java_consumer_opens_its_own_stream_and_nothing_else(
    hub_env: HubEnv, worker: subprocess.Popen[bytes], key_service: KeyService, java_classpath: str
) -> None:
    """The Java consumer with hosp-a's credential opens exactly what `hub tail` shows on hosp-a's topic;
    with the outsider's it opens nothing (403); every release and refusal is audited; after `hub erase`
    it gets crypto.key_destroyed and no topic holds the patient in the clear."""
    env = hub_env
    marker = f"Keymark{uuid.uuid4().hex[:10]}"
    topic = f"{env.topics.prefix}hub.pathway.hosp-a.v1"
    hosp_a, outsider = credential(env, "hosp-a"), credential(env, "outsider")
    publish(env, admission(marker), "recipient-consumer-1")
    [receipt] = [r.json_value() for r in env.collect(env.topics.receipts, 1, timeout=180)]
    assert receipt["status"] == "accepted", receipt
    count = settled(env, topic, at_least=3)

    shown = tail(env, topic)
    # hosp-a's consumer, and another recipient's credential on hosp-a's records (as if it could read
    # the topic), run at once: two JVMs in their own groups.
    with ThreadPoolExecutor(max_workers=2) as pool:
        own = pool.submit(run_consumer, java_classpath, env, key_service, topic, group="hosp-a", token=hosp_a)
        other = pool.submit(
            run_consumer, java_classpath, env, key_service, topic, group="outsider", token=outsider
        )
        (opened, skipped), (stolen, refused) = own.result(), other.result()
    assert len(shown) == count and skipped == []
    assert opened == shown, "the Java consumer and `hub tail` disagree"
    assert any(marker in json.dumps(event) for event in opened.values())
    assert {event["decision"]["basis"] for event in opened.values()} == {"care_team"}
    patient_id = next(iter(opened.values()))["patient_id"]
    # The outsider's opens nothing.
    assert stolen == {} and refused == ["keys.not_permitted"] * count

    def audited() -> tuple[set[str], set[str]]:
        audits = key_audits(env)
        released = {a["agent"][1]["who"]["identifier"]["value"] for a in audits if a["outcome"] == "0"}
        refusals = {a["agent"][1]["who"]["identifier"]["value"] for a in audits if a["outcome"] == "4"}
        return released, refusals

    deadline = time.monotonic() + 60
    while audited() != ({"hosp-a"}, {"outsider"}):
        assert time.monotonic() < deadline, audited()

    # Erasure: the key service refuses the patient's keys; the hub holds no plaintext of them.
    result = env.cli("erase", patient_id, "--yes", "--json", "--wait-ingest", "60", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["keys_destroyed"] >= 2  # the patient's key and hosp-a's key, at least
    after, destroyed = run_consumer(java_classpath, env, key_service, topic, group="hosp-a", token=hosp_a)
    assert after == {} and destroyed == ["crypto.key_destroyed"] * count
    admin = KafkaAdminClient(bootstrap_servers=env.bootstrap)
    try:
        ours = [
            t
            for t in admin.list_topics()
            if t.startswith((env.topics.prefix, env.environ["HUB_APP_ID"] + "-"))
        ]
    finally:
        admin.close()
    clear = [
        f"{r.topic}/{r.partition}/{r.offset}"
        for r in read(env.bootstrap, ours, idle_timeout=5.0)
        if marker.encode() in (r.value or b"")
    ]
    assert clear == [], f"the erased patient is still in the clear: {clear}"
    assert worker.poll() is None, "the worker died"
