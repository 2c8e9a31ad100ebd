"""The ingest stage on a real broker: every input ends as events or a reject, with one receipt."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from hub.demo.generator import DEMO_SOURCES, generate_feed
from hub.ingest.signature import sign
from hub.schemas import schema_errors

from .conftest import SYNTHEA_DIR, HubEnv

Headers = list[tuple[str, bytes]]


def signed(env: HubEnv, source_id: str, value: bytes, message_id: str, **extra: str) -> Headers:
    secret = env.source(source_id).secret
    headers = [
        ("hub-source", source_id.encode()),
        ("hub-signature", sign(secret, source_id, value, int(time.time())).encode()),
        ("hub-message-id", message_id.encode()),
    ]
    return [*headers, *((k, v.encode()) for k, v in extra.items())]


def observation(subject: dict[str, Any], status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": subject,
        "effectiveDateTime": "2026-03-29T01:30:00+01:00",
        "valueQuantity": {"value": 8.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }


def mixed_inputs(env: HubEnv) -> tuple[list[tuple[bytes, bytes | None, Headers]], dict[str, str]]:
    """About 650 valid demo messages and 400 bad ones; returns records and message id → expectation."""
    records: list[tuple[bytes, bytes | None, Headers]] = []
    expected: dict[str, str] = {}

    def add(message_id: str, value: bytes | None, headers: Headers, expectation: str) -> None:
        records.append((message_id.encode(), value, headers))
        expected[message_id] = expectation

    feed = list(generate_feed(patients=100, seed=11, now=datetime(2026, 11, 1, tzinfo=UTC)))
    for message in feed:
        value = message.body()
        # The demo sources are registered in this test under one GP source id.
        add(
            f"ok-{message.message_id}",
            value,
            signed(
                env, "gp-test", value, f"ok-{message.message_id}", **{"content-type": message.content_type}
            ),
            "accepted",
        )

    good = json.dumps(observation({"reference": "Patient/p-1"})).encode()
    for n in range(40):
        add(
            f"unknown-{n}",
            good,
            [*signed(env, "gp-test", good, f"unknown-{n}")[1:], ("hub-source", b"nobody")],
            "source.unknown",
        )
        add(f"nosource-{n}", good, signed(env, "gp-test", good, f"nosource-{n}")[1:], "source.unknown")
        add(
            f"nosig-{n}",
            good,
            [h for h in signed(env, "gp-test", good, f"nosig-{n}") if h[0] != "hub-signature"],
            "signature.missing",
        )
        wrong = [
            ("hub-signature", sign(b"not-the-key-0123456789", "gp-test", good, int(time.time())).encode())
            if k == "hub-signature"
            else (k, v)
            for k, v in signed(env, "gp-test", good, f"badsig-{n}")
        ]
        add(f"badsig-{n}", good, wrong, "signature.invalid")
        old = [
            (
                "hub-signature",
                sign(env.source("gp-test").secret, "gp-test", good, int(time.time()) - 3600).encode(),
            )
            if k == "hub-signature"
            else (k, v)
            for k, v in signed(env, "gp-test", good, f"expired-{n}")
        ]
        add(f"expired-{n}", good, old, "signature.expired")
        add(f"empty-{n}", b"", signed(env, "gp-test", b"", f"empty-{n}"), "payload.malformed")
        junk = bytes(range(n, n + 40))
        add(f"junk-{n}", junk, signed(env, "gp-test", junk, f"junk-{n}"), "payload.malformed")
        notfhir = json.dumps({"hello": n}).encode()
        add(f"notfhir-{n}", notfhir, signed(env, "gp-test", notfhir, f"notfhir-{n}"), "fhir.invalid")
        invalid = json.dumps(observation({"reference": "Patient/p-1"}, status=f"bogus-{n}")).encode()
        add(f"invalid-{n}", invalid, signed(env, "gp-test", invalid, f"invalid-{n}"), "fhir.invalid")
        add(
            f"dstu2-{n}",
            good,
            signed(
                env,
                "gp-test",
                good,
                f"dstu2-{n}",
                **{"content-type": "application/fhir+json; fhirVersion=1.0"},
            ),
            "fhir.version.unsupported",
        )
    orphan = json.dumps(observation({"reference": "Group/g-1"})).encode()
    add("orphan", orphan, signed(env, "gp-test", orphan, "orphan"), "patient.unresolved")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:7a6c9e1e-2b55-4a8a-9b1e-0c1d2e3f4a5b",
                "resource": {"resourceType": "Patient", "id": "p-2"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": observation({"reference": "urn:uuid:7a6c9e1e-2b55-4a8a-9b1e-0c1d2e3f4a5b"}),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": observation(
                    {"reference": "urn:uuid:7a6c9e1e-2b55-4a8a-9b1e-0c1d2e3f4a5b"}, status="not-a-status"
                ),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    one_bad_entry = json.dumps(bundle).encode()
    add(
        "bundle-one-bad-entry",
        one_bad_entry,
        signed(env, "gp-test", one_bad_entry, "bundle-one-bad-entry"),
        "fhir.invalid",
    )
    huge = json.dumps(
        {**observation({"reference": "Patient/p-1"}), "note": [{"text": "x" * (1024 * 1024 + 10)}]}
    ).encode()
    for n in range(3):
        add(f"huge-{n}", huge, signed(env, "gp-test", huge, f"huge-{n}"), "payload.too_large")
    return records, expected


@pytest.fixture
def gp_test_accepts_demo_patients(hub_env: HubEnv) -> None:
    """Register the demo generator's identifier systems under the test GP source."""
    registry = json.loads((hub_env.work_dir / "sources.json").read_text())
    for source in registry["sources"]:
        if source["id"] == "gp-test":
            source["patient_identifier_systems"] += [s.patient_identifier_system for s in DEMO_SOURCES]
    (hub_env.work_dir / "sources.json").write_text(json.dumps(registry))


def test_a_thousand_mixed_inputs_each_get_exactly_one_receipt(
    hub_env: HubEnv, gp_test_accepts_demo_patients: None, worker: subprocess.Popen[bytes]
) -> None:
    """Over 1,000 good and bad inputs: one receipt each, with the expected outcome; a DLQ copy per reject."""
    records, expected = mixed_inputs(hub_env)
    assert len(records) >= 1000
    hub_env.send(records)

    receipts = hub_env.collect(hub_env.topics.receipts, len(records), timeout=240)
    assert worker.poll() is None, "the worker died"
    assert len(receipts) == len(records), f"{len(receipts)} receipts for {len(records)} inputs"
    got: dict[str, str] = {}
    for record in receipts:
        receipt = record.json_value()
        assert schema_errors("receipt.schema.json", receipt) == []
        outcome = receipt["error"]["code"] if receipt["status"] == "rejected" else receipt["status"]
        # The demo feed repeats some facts across sources on purpose: those inputs are duplicates.
        outcome = "accepted" if outcome == "duplicate" else outcome
        assert receipt["message_id"] not in got, "two receipts for one input"
        got[receipt["message_id"]] = outcome
    assert got == expected
    print("receipts by outcome:", dict(Counter(got.values())))

    rejects = {m: code for m, code in expected.items() if code != "accepted"}
    dlq = hub_env.collect(hub_env.topics.dlq, len(rejects), timeout=60)
    assert len(dlq) == len(rejects)
    originals = {key.decode(): (value, headers) for key, value, headers in records}
    for record in dlq:
        headers = dict(record.headers)
        message_id = record.key.decode()
        value, original_headers = originals[message_id]
        assert (record.value or b"") == (value or b""), "DLQ must keep the original bytes"
        assert list(record.headers[: len(original_headers)]) == original_headers
        assert headers["hub-error-code"].decode() == rejects[message_id]
        assert headers["hub-origin"].decode().startswith(hub_env.topics.ingest + "/")
        assert (
            schema_errors(
                "dlq-headers.schema.json", {k: v.decode(errors="replace") for k, v in record.headers}
            )
            == []
        )

    accepted_ids = {e for r in receipts for e in r.json_value()["event_ids"]}
    events = hub_env.settle(hub_env.topics.pathway)
    event_ids = [r.json_value()["event_id"] for r in events if r.json_value()["kind"] != "patient.linked"]
    assert len(event_ids) == len(set(event_ids)), "one pathway event per fact"
    assert set(event_ids) == accepted_ids
    for record in events[:300]:
        assert schema_errors("pathway-event.schema.json", record.json_value()) == []
        assert record.key.decode() == record.json_value()["patient_id"]


def test_a_resent_message_is_a_duplicate_and_publishes_nothing_again(
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """The same hub-message-id twice: the second receipt says duplicate with the same event ids. The
    Patient's INS has a provisional identity (PROV): both receipts say it was not used to link."""
    patient = {
        "resourceType": "Patient",
        "extension": [
            {
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
                "extension": [
                    {
                        "url": "identityReliability",
                        "valueCoding": {
                            "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
                            "code": "PROV",
                        },
                    }
                ],
            }
        ],
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "269029999900188"},
            {"system": "urn:hub:test:gp:patient", "value": "GP-42"},
        ],
        "gender": "female",
    }
    value = json.dumps(patient).encode()
    hub_env.send([(b"m-1", value, signed(hub_env, "gp-test", value, "m-1"))])
    first = hub_env.collect(hub_env.topics.receipts, 1, timeout=120)
    hub_env.send([(b"m-1", value, signed(hub_env, "gp-test", value, "m-1"))])
    both = hub_env.collect(hub_env.topics.receipts, 2, timeout=60)
    assert [r.json_value()["status"] for r in both] == ["accepted", "duplicate"]
    assert both[1].json_value()["event_ids"] == first[0].json_value()["event_ids"]
    for receipt in (r.json_value() for r in both):
        assert [w["code"] for w in receipt["warnings"]] == ["ins.unqualified"]
        assert "269029999900188" not in json.dumps(receipt)
        assert schema_errors("receipt.schema.json", receipt) == []
    assert len(hub_env.settle(hub_env.topics.pathway)) == 1


@pytest.mark.skipif(not SYNTHEA_DIR.is_dir(), reason="the shared Synthea corpus is not beside the project")
def test_the_synthea_corpus_publishes_with_zero_rejects(
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """All 30 Synthea bundles through `hub publish`: every receipt accepted, large bundles split."""
    result = hub_env.cli("publish", "--source", "synthea", "--timeout", "300", str(SYNTHEA_DIR))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rejected" not in result.stdout
    receipts = hub_env.settle(hub_env.topics.receipts)
    assert len(receipts) >= 30
    assert {r.json_value()["status"] for r in receipts} == {"accepted"}
    log = hub_env.log_file.read_text()
    for secret in (hub_env.source("synthea").secret.decode(), "Lamont", "Emard"):
        assert secret not in log, "clinical data or secrets reached the worker log"
