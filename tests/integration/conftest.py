"""Integration fixtures: a hub worker process on the session's real broker, with its own topics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from hub.crypto.keyring import Keyring
from hub.crypto.keys import LocalKeyProvider
from hub.crypto.records import RecordOpener
from hub.crypto.store import KeyStore
from hub.kafka.clients import Record, read
from hub.topics import TopicNames

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SYNTHEA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "synthea-r4"
PARTITIONS = 3
#: The workers' key-encryption key (hub.crypto); tests read the encrypted topics with it.
TEST_KEK = bytes(range(32))
#: The workers' audit chain key (hub.audit.chainkey); tests forge audit records without it.
TEST_AUDIT_CHAIN_KEY = bytes(range(32, 64))


@dataclass(frozen=True)
class TestSource:
    """A source registered for one test, with its secret in the worker's environment."""

    id: str
    secret: bytes
    patient_system: str
    time_zone: str = "Europe/Paris"
    kind: str = "hospital"
    fhir_version: str = "4.0"
    code_mappings: tuple[str, ...] = ()


CONCEPT_MAPS = PROJECT_ROOT / "tests" / "fixtures" / "conceptmaps"
SOURCES = (
    TestSource(
        "synthea", b"synthea-test-secret-0123456789abcdef", "https://github.com/synthetichealth/synthea"
    ),
    TestSource(
        "gp-test",
        b"gp-test-secret-0123456789abcdef012345",
        "urn:hub:test:gp:patient",
        "America/Guadeloupe",
        kind="gp",
        code_mappings=(str(CONCEPT_MAPS / "test-gp.conceptmap.json"),),
    ),
    TestSource(
        "hospital-stu3",
        b"hospital-stu3-secret-0123456789abcdef",
        "urn:hub:test:hospital:ipp",
        "Europe/Paris",
        fhir_version="3.0",
    ),
)


RPPS = "urn:oid:1.2.250.1.71.4.2.1"
FINESS = "urn:oid:1.2.250.1.71.4.2.2"
#: Three recipients: a hospital, a GP practice, and an organisation with no part in anyone's care.
RECIPIENTS = (
    {
        "id": "hosp-a",
        "kind": "hospital",
        "organization": {"system": FINESS, "value": "970100228"},
        "kafka_principal": "User:hosp-a",
        "subscription": {"kinds": ["*"]},
    },
    {
        "id": "gp-dr-x",
        "kind": "gp",
        "organization": {"system": "urn:hub:test:organization", "value": "cabinet-x"},
        "practitioners": [{"system": RPPS, "value": "10009900019"}],
        "kafka_principal": "User:gp-dr-x",
        "subscription": {"kinds": ["*"]},
    },
    {
        "id": "outsider",
        "kind": "hospital",
        "organization": {"system": FINESS, "value": "750000001"},
        "kafka_principal": "User:outsider",
        "subscription": {"kinds": ["*"]},
    },
)


@dataclass
class HubEnv:
    """Everything a test needs to talk to its own worker: environment, topic names, clients."""

    environ: dict[str, str]
    topics: TopicNames
    bootstrap: str
    work_dir: Path
    log_file: Path

    @property
    def key_store_file(self) -> Path:
        """The test's key store (HUB_KEY_STORE_FILE)."""
        return Path(self.environ["HUB_KEY_STORE_FILE"])

    def opener(self) -> RecordOpener:
        """Opens the hub's encrypted records as an operator with the KEK can (a fresh key cache)."""
        return RecordOpener(Keyring(KeyStore(self.key_store_file), LocalKeyProvider(TEST_KEK)))

    def source(self, source_id: str) -> TestSource:
        return next(s for s in SOURCES if s.id == source_id)

    def send(self, records: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> int:
        """Produce (key, value, headers) records to the ingest topic; return how many."""
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            max_request_size=8 * 1024 * 1024,
        )
        count = 0
        for key, value, headers in records:
            producer.send(self.topics.ingest, key=key, value=value, headers=headers)
            count += 1
        producer.flush()
        producer.close()
        return count

    def collect(self, topic: str, count: int, *, timeout: float = 120.0) -> list[Record]:
        """Read a topic from the start until ``count`` records arrived or ``timeout`` passed."""
        records: list[Record] = []
        opener = self.opener()
        for record in read(
            self.bootstrap, [topic], idle_timeout=timeout, deadline=time.monotonic() + timeout
        ):
            records.append(opener.open_record(record))
            if len(records) >= count:
                break
        return records

    def settle(self, topic: str, *, quiet: float = 3.0) -> list[Record]:
        """Every record of a topic once nothing new arrives for ``quiet`` seconds (decrypted)."""
        opener = self.opener()
        return [opener.open_record(record) for record in read(self.bootstrap, [topic], idle_timeout=quiet)]

    def cli(self, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Run ``hub ARGS`` as a user would, with this test's environment."""
        return subprocess.run(
            [sys.executable, "-m", "hub", *args],
            env=os.environ | self.environ,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def hub_env(kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> HubEnv:
    """A source registry, secrets, pseudonym key and a unique topic prefix for one test."""
    name = unique_name("hub")
    sources_file = tmp_path / "sources.json"
    environ = {
        "HUB_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "HUB_TOPIC_PREFIX": f"{name}.",
        "HUB_APP_ID": name,
        "HUB_SOURCES_FILE": str(sources_file),
        "HUB_PSEUDONYM_KEY": "integration-test-pseudonym-key",
        "HUB_ALLOW_TEST_INS": "true",
        # A killed worker's partitions move after 12 s instead of 30 (docs/DEPLOY.md).
        "HUB_GROUP_SESSION_SECONDS": "12",
        "HUB_TOPIC_PARTITIONS": str(PARTITIONS),
        "HUB_LOG_LEVEL": "info",
        "HUB_LOG_JSON": "true",
        # Encryption at rest (hub.crypto): the test's KEK and its own key store.
        "HUB_KEK": TEST_KEK.hex(),
        # The audit chain key (hub.audit): the workers seal with it, `hub audit verify` checks with it.
        "HUB_AUDIT_CHAIN_KEY": TEST_AUDIT_CHAIN_KEY.hex(),
        "HUB_KEY_STORE_FILE": str(tmp_path / "keys" / "data-keys.sqlite3"),
        # The workers' RocksDB table folders (hub.streams.store), in the test's folder.
        "HUB_TABLE_DIR": str(tmp_path / "tables"),
    }
    registry: dict[str, Any] = {"sources": []}
    for source in SOURCES:
        variable = "HUB_TEST_SECRET_" + source.id.upper().replace("-", "_")
        environ[variable] = source.secret.decode()
        registry["sources"].append(
            {
                "id": source.id,
                "kind": source.kind,
                "organization": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "330781196"},
                "time_zone": source.time_zone,
                "patient_identifier_systems": [source.patient_system],
                "default_fhir_version": source.fhir_version,
                "code_mappings": list(source.code_mappings),
                "secrets": [{"env": variable}],
            }
        )
    sources_file.write_text(json.dumps(registry), encoding="utf-8")
    recipients_file = tmp_path / "recipients.json"
    recipients_file.write_text(json.dumps({"recipients": list(RECIPIENTS)}), encoding="utf-8")
    environ["HUB_RECIPIENTS_FILE"] = str(recipients_file)
    return HubEnv(environ, TopicNames(f"{name}."), kafka_bootstrap, tmp_path, tmp_path / "worker.log")


def start_worker(
    env: HubEnv, *, log_file: Path | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `hub worker` process on the test's environment, appending to ``log_file`` (the test's log).

    It runs in the test's folder, so anything it writes in its working directory stays there. Its
    tables are in RocksDB (the default store), in a folder of its own under the test's HUB_TABLE_DIR
    (``<app id>-data``, ``-data-2`` for a second worker running at once: hub.streams.store); a worker
    restarted after another stopped takes that folder back and resumes from it.
    """
    with (log_file or env.log_file).open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "hub", "worker"],
            env=os.environ | env.environ | (extra_env or {}),
            cwd=env.work_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (faust's orderly stop), then SIGKILL after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def worker_troubles(log_file: Path, *, last: int = 15) -> str:
    """The last warnings, errors and non-JSON lines (a start-up error's message) of a worker's log, for
    an assertion's message: what a failure in CI needs to be understood without the machine."""
    if not log_file.exists():
        return f"(no log at {log_file})"
    lines = []
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or entry.get("level") in ("warning", "error", "critical"):
            lines.append(line[:300])
    return "\n".join(lines[-last:]) or "(no warning or error logged)"


@pytest.fixture
def worker(hub_env: HubEnv) -> Iterator[subprocess.Popen[bytes]]:
    """One `hub worker` process for the test, on topics created first (as `hub run` does); stopped after."""
    result = hub_env.cli("topics", "create", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    process = start_worker(hub_env)
    try:
        yield process
    finally:
        stop_worker(process)
