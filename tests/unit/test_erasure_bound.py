"""Erasure with a bound (docs/SECURITY.md): how the bound is shared out, which rejects name the patient,
the key store's private companions, and what the worker principal may do for it."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.acl.model import Binding, Pattern, Resource, plan_acls
from hub.broker.embedded import render_server_properties
from hub.crypto.erase import named_patients
from hub.crypto.retention import MIN_SEGMENT_MS, SLACK_FRACTION, cleartext_bound
from hub.crypto.store import KeyStore, NewKey, wal_files
from hub.errors import ConfigError

KEY = b"unit-pseudonym-key"


def test_the_bound_is_shared_between_two_segments_the_purge_the_check_and_the_delete_delay() -> None:
    """2 x segment.ms + slack + purge + check + delete delay never exceeds the bound; the production
    default (1 h, 300 s purge, Kafka's 300 s check) leaves segments of about 24 minutes."""
    for bound_s, purge_s, check_ms in ((3600, 300, 300_000), (40, 1, 1000), (86_400, 60, 60_000)):
        bound = cleartext_bound(bound_seconds=bound_s, purge_seconds=purge_s, check_ms=check_ms)
        spent = (
            2 * bound.segment_ms
            + bound.segment_ms // SLACK_FRACTION
            + bound.purge_ms
            + bound.check_ms
            + bound.delete_delay_ms
        )
        assert bound_s * 1000 - 3 <= spent <= bound_s * 1000, (bound_s, spent)
    default = cleartext_bound(bound_seconds=3600, purge_seconds=300, check_ms=300_000)
    assert default.delete_delay_ms == 60_000  # Kafka's own default, kept for a long bound
    assert 23 * 60_000 < default.segment_ms < 24 * 60_000
    assert default.topic_configs() == {
        "segment.ms": str(default.segment_ms),
        "file.delete.delay.ms": "60000",
    }


def test_a_bound_that_cannot_hold_is_a_configuration_error() -> None:
    """No purge, or a bound shorter than the purge and the check leave room for, is refused with a hint."""
    with pytest.raises(ConfigError, match="HUB_INGEST_PURGE_SECONDS is 0"):
        cleartext_bound(bound_seconds=3600, purge_seconds=0, check_ms=300_000)
    with pytest.raises(ConfigError, match="too short") as refused:
        cleartext_bound(bound_seconds=600, purge_seconds=300, check_ms=300_000)
    assert refused.value.hint and "HUB_ERASURE_BOUND_SECONDS" in refused.value.hint
    assert cleartext_bound(bound_seconds=5, purge_seconds=1, check_ms=1000).segment_ms >= MIN_SEGMENT_MS


def test_a_reject_in_fhir_xml_names_the_same_patients_as_in_json() -> None:
    """Erasure shreds a reject in XML as in JSON: identifiers, the Patient's id, Patient references."""
    patient = {
        "resourceType": "Patient",
        "id": "H-77",
        "identifier": [
            {"system": "urn:src:ipp", "value": "H-77"},
            {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "185057800608436"},
        ],
    }
    as_xml = (
        b'<Patient xmlns="http://hl7.org/fhir"><id value="H-77"/>'
        b'<identifier><system value="urn:src:ipp"/><value value="H-77"/></identifier>'
        b'<identifier><system value="urn:oid:1.2.250.1.213.1.4.10"/><value value="185057800608436"/>'
        b"</identifier></Patient>"
    )
    from_json = named_patients(json.dumps(patient).encode(), "chu", pseudonym_key=KEY)
    assert from_json and named_patients(as_xml, "chu", pseudonym_key=KEY) == from_json
    observation = (
        b'<Observation xmlns="http://hl7.org/fhir"><subject><reference value="Patient/H-78"/></subject>'
        b"</Observation>"
    )
    referenced = named_patients(
        json.dumps({"resourceType": "Observation", "subject": {"reference": "Patient/H-78"}}).encode(),
        "chu",
        pseudonym_key=KEY,
    )
    assert named_patients(observation, "chu", pseudonym_key=KEY) == referenced
    # Neither JSON nor well-formed XML (nor XML with entities it does not resolve): nobody.
    assert named_patients(b"MSH|^~\\&|LAB|...", "chu", pseudonym_key=KEY) == set()
    assert (
        named_patients(
            b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>", "chu", pseudonym_key=KEY
        )
        == set()
    )


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """022, so that files made with the default mode would be world-readable: the test can fail."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
def test_the_key_stores_wal_and_shm_files_are_as_private_as_the_store(tmp_path: Path) -> None:
    """The store, its -wal and its -shm are 0600 from their creation (they hold wrapped keys)."""
    path = tmp_path / "keys" / "data-keys.sqlite3"
    store = KeyStore(path)
    try:
        store.create_many([NewKey("pt-one", kek_id="kek-1", wrapped=b"\x01" * 60)])
        store.destroy("pt-one", by="dpo")
        wal, shm = wal_files(path)
        assert wal.exists() and shm.exists()  # WAL mode, while the store is open
        assert {p.name: _mode(p) for p in (path, wal, shm)} == {p.name: 0o600 for p in (path, wal, shm)}
        assert _mode(path.parent) == 0o700
    finally:
        store.close()


@pytest.mark.usefixtures("permissive_umask")
def test_a_key_store_made_with_open_companions_is_closed_on_open(tmp_path: Path) -> None:
    """A store whose files were made world-readable (by an older hub, or sqlite3 by hand) is made 0600."""
    path = tmp_path / "data-keys.sqlite3"
    other = sqlite3.connect(path)  # kept open, so its -wal and -shm stay
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    try:
        assert all(_mode(p) == 0o644 for p in (path, *wal_files(path)))  # the umask: the test can fail
        store = KeyStore(path)
        try:
            assert all(_mode(p) == 0o600 for p in (path, *wal_files(path)))
        finally:
            store.close()
    finally:
        other.close()


def test_the_worker_may_roll_the_ingest_segments_and_set_the_bounds_configs() -> None:
    """hub-worker: WRITE/DESCRIBE its transactional ids (<app id>*), ALTER_CONFIGS ingest and DLQ only,
    DESCRIBE_CONFIGS the cluster (the brokers' retention check interval)."""
    plan = plan_acls(sources=["gp-test"], recipients=[], topic_prefix="t.", app_id="hub")
    worker = {b for b in plan.bindings if b.principal == "User:hub-worker"}
    assert {
        Binding("User:hub-worker", Resource.TRANSACTIONAL_ID, Pattern.PREFIXED, "hub", "WRITE"),
        Binding("User:hub-worker", Resource.TRANSACTIONAL_ID, Pattern.PREFIXED, "hub", "DESCRIBE"),
        Binding("User:hub-worker", Resource.TOPIC, Pattern.LITERAL, "t.hub.ingest.v1", "ALTER_CONFIGS"),
        Binding("User:hub-worker", Resource.TOPIC, Pattern.LITERAL, "t.hub.dlq.v1", "ALTER_CONFIGS"),
        Binding("User:hub-worker", Resource.CLUSTER, Pattern.LITERAL, "kafka-cluster", "DESCRIBE_CONFIGS"),
    } <= worker
    altered = {b.name for b in worker if b.operation == "ALTER_CONFIGS" and b.pattern is Pattern.LITERAL}
    assert altered == {"t.hub.ingest.v1", "t.hub.dlq.v1"}
    assert not any(
        b.resource is Resource.TRANSACTIONAL_ID for b in plan.bindings if b.principal != "User:hub-worker"
    )


def test_extra_broker_settings_come_last_and_win(tmp_path: Path) -> None:
    """A test broker's short retention check overrides nothing silently: it is written last."""
    text = render_server_properties(
        port=1,
        controller_port=2,
        data_dir=tmp_path,
        extra=(("log.retention.check.interval.ms", "1000", "a test's short check"),),
    )
    assert text.rstrip().endswith("# a test's short check\nlog.retention.check.interval.ms=1000")


def test_the_erasure_audit_says_until_when_the_ingest_cleartext_stays() -> None:
    """The AuditEvent carries ingest_cleartext_until and the unattributed rejects, and stays a valid
    AuditEvent for hub.audit-unsealed.v1 (schemas/asyncapi.yaml)."""
    import yaml  # noqa: PLC0415
    from fhir.resources.R4B.auditevent import AuditEvent  # noqa: PLC0415
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    from hub.crypto.erase import ErasureReport, audit_erasure  # noqa: PLC0415
    from hub.schemas import SCHEMAS_DIR  # noqa: PLC0415

    report = ErasureReport(
        ["pt-one"],
        1,
        0,
        4,
        0,
        1,
        ["note"],
        dlq_records_unattributed=2,
        ingest_cleartext_until="2026-11-22T11:00:00Z",
    )
    audit = audit_erasure(report, requested_by="dpo", recorded=datetime(2026, 11, 22, 10, tzinfo=UTC))
    details = {d["type"]: d["valueString"] for d in audit["entity"][0]["detail"]}
    assert details["ingest_cleartext_until"] == "2026-11-22T11:00:00Z"
    assert details["dlq_records_unattributed"] == "2"
    assert report.to_json()["ingest_cleartext_until"] == "2026-11-22T11:00:00Z"
    AuditEvent.model_validate(audit)
    document = yaml.safe_load((SCHEMAS_DIR / "asyncapi.yaml").read_text(encoding="utf-8"))
    schema = document["components"]["messages"]["unsealedAuditEvent"]["payload"]["schema"]
    assert [e.message for e in Draft202012Validator(schema).iter_errors(audit)] == []
