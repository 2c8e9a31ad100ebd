"""hub.metrics and hub.streams.counting: each counter moves when the records a stage produced say so;
no patient data in labels."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hub import metrics
from hub.consent.audit import audit_decisions, audit_reject, audit_releases
from hub.consent.policy import Decision, FinalDecision
from hub.errors import ErrorCode
from hub.gateway.app import create_app
from hub.gateway.store import AlertStore
from hub.gateway.tokens import TokenStore
from hub.ingest.outcome import KafkaCoordinates, Rejected
from hub.ingest.receipts import dlq_headers, receipt
from hub.records import Outgoing
from hub.serving import is_loopback
from hub.streams import counting
from hub.topics import TopicNames

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PATIENT = "pt-" + "d" * 24
MESSAGE_ID = "msg-secret-0042"
ORIGIN = KafkaCoordinates("t.hub.ingest.v1", 1, 7)
TOPICS = TopicNames("t.")


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


def rejected_outputs() -> list[Outgoing]:
    rejected = Rejected(ErrorCode.SIGNATURE_MISSING, "no hub-signature header", "gp-test", MESSAGE_ID)
    return [
        Outgoing(TOPICS.dlq, b"k", b"body", tuple(dlq_headers((), rejected, ORIGIN))),
        Outgoing(
            TOPICS.audit_unsealed, b"gp-test", _json(audit_reject(rejected, origin=ORIGIN, recorded=AT))
        ),
        Outgoing(TOPICS.receipts, b"gp-test", _json(receipt(rejected, ORIGIN, at=AT))),
    ]


def accepted_receipt() -> Outgoing:
    document = {
        "ingest": ORIGIN.as_dict(),
        "source": "gp-test",
        "message_id": MESSAGE_ID,
        "status": "accepted",
        "error": None,
        "event_ids": ["e-1"],
        "at": "2026-11-22T12:00:00.000Z",
    }
    return Outgoing(TOPICS.receipts, b"gp-test", _json(document))


def pathway_event() -> Outgoing:
    event = {"event_id": "e-1", "patient_id": PATIENT, "kind": "observation", "resource": {}}
    return Outgoing(TOPICS.pathway, PATIENT.encode(), _json(event))


def share_decision() -> Outgoing:
    decision = FinalDecision(
        "deny", "care-team", "not in the care team", "policy", "1", (Decision("deny", "care-team", "x"),)
    )
    event = {"event_id": "e-1", "patient_id": PATIENT, "kind": "observation", "source": {"id": "gp-test"}}
    audit = audit_decisions([("outsider", decision)], event=event, recorded=AT)
    return Outgoing(TOPICS.audit_unsealed, PATIENT.encode(), _json(audit))


def alert() -> Outgoing:
    document = {
        "alert_id": "a-1",
        "practitioner": "10009900019",
        "patient": {"patient_id": PATIENT, "identifiers": [{"system": "urn:x", "value": "255086920100146"}]},
        "network": {"id": "hiv-guadeloupe", "name": "HIV", "kind": "pathology"},
        "status": "eligible",
    }
    return Outgoing(TOPICS.alerts, b"10009900019", _json(document))


@pytest.fixture
def everything() -> Iterator[None]:
    counting.observe("ingest", rejected_outputs(), 0.002)
    counting.observe("identity", [accepted_receipt(), pathway_event()], 0.004)
    counting.observe("share", [share_decision()], 0.001)
    counting.observe("eligibility", [alert()], 0.003)
    yield


def test_a_reject_counts_its_receipt_and_dlq_code() -> None:
    receipts = value("hub_receipts_total", status="rejected", code="signature.missing")
    dlq = value("hub_dlq_total", code="signature.missing")
    records = value("hub_stage_records_total", stage="ingest")
    latencies = value("hub_stage_seconds_count", stage="ingest")
    counting.observe("ingest", rejected_outputs(), 0.002)
    assert value("hub_receipts_total", status="rejected", code="signature.missing") == receipts + 1
    assert value("hub_dlq_total", code="signature.missing") == dlq + 1
    assert value("hub_stage_records_total", stage="ingest") == records + 1
    assert value("hub_stage_seconds_count", stage="ingest") == latencies + 1
    # An ingest-reject AuditEvent is not a share decision.
    assert value("hub_share_decisions_total", rule="", verdict="") == 0


def test_an_accepted_receipt_and_a_pathway_event() -> None:
    accepted = value("hub_receipts_total", status="accepted", code="")
    kinds = value("hub_pathway_events_total", kind="observation")
    counting.observe("identity", [accepted_receipt(), pathway_event()], 0.004)
    assert value("hub_receipts_total", status="accepted", code="") == accepted + 1
    assert value("hub_pathway_events_total", kind="observation") == kinds + 1


def test_a_share_decision_by_rule_and_verdict() -> None:
    before = value("hub_share_decisions_total", rule="care-team", verdict="deny")
    counting.observe("share", [share_decision()], 0.001)
    assert value("hub_share_decisions_total", rule="care-team", verdict="deny") == before + 1


def test_late_releases_count_every_decision_they_hold() -> None:
    """A share-releases AuditEvent of two events, one released to two recipients: three decisions."""
    permit = FinalDecision(
        "permit", "care_team", "in the care team", "policy", "1", (Decision("permit", "care_team", "x"),)
    )
    events = [
        {"event_id": f"e-{n}", "patient_id": PATIENT, "kind": "observation", "source": {"id": "gp-test"}}
        for n in (1, 2)
    ]
    (audit,) = audit_releases(
        [(events[0], [("hospital", permit)]), (events[1], [("hospital", permit), ("gp", permit)])],
        released_by="e-0",
        recorded=AT,
    )
    before = value("hub_share_decisions_total", rule="care_team", verdict="permit")
    counting.observe("identity", [Outgoing(TOPICS.audit_unsealed, PATIENT.encode(), _json(audit))], 0.001)
    assert value("hub_share_decisions_total", rule="care_team", verdict="permit") == before + 3


def test_an_alert_by_network_and_status() -> None:
    before = value("hub_alerts_total", network="hiv-guadeloupe", status="eligible")
    counting.observe("eligibility", [alert()], 0.003)
    assert value("hub_alerts_total", network="hiv-guadeloupe", status="eligible") == before + 1


def test_records_of_other_topics_and_unreadable_values_count_only_as_stage_outputs() -> None:
    before = value("hub_stage_outputs_total", stage="identity")
    receipts = sum(s.value for m in metrics.REGISTRY.collect() if m.name == "hub_receipts" for s in m.samples)
    counting.observe(
        "identity",
        [Outgoing(TOPICS.identity, b"k", b"{}"), Outgoing(TOPICS.receipts, b"k", b"not json")],
        0.001,
    )
    assert value("hub_stage_outputs_total", stage="identity") == before + 2
    after = sum(s.value for m in metrics.REGISTRY.collect() if m.name == "hub_receipts" for s in m.samples)
    assert after == receipts


def test_each_batch_is_counted_by_its_size() -> None:
    batches = value("hub_stage_batch_records_count", stage="identity")
    small = value("hub_stage_batch_records_bucket", stage="identity", le="5.0")
    counting.batch_taken("identity", 3)
    counting.batch_taken("identity", 120)
    assert value("hub_stage_batch_records_count", stage="identity") == batches + 2
    assert value("hub_stage_batch_records_bucket", stage="identity", le="5.0") == small + 1


def test_a_failure_is_counted() -> None:
    before = value("hub_stage_failures_total", stage="share")
    counting.failed("share")
    assert value("hub_stage_failures_total", stage="share") == before + 1


@pytest.mark.usefixtures("everything")
def test_no_patient_or_message_id_in_any_label() -> None:
    forbidden = (PATIENT, MESSAGE_ID, "255086920100146", "10009900019", "gp-test", "outsider")
    labels = [label for m in metrics.REGISTRY.collect() for s in m.samples for label in s.labels.values()]
    assert labels
    assert not [label for label in labels if any(f in label for f in forbidden)]


def test_the_gateway_serves_metrics_to_loopback_clients_only(tmp_path: Path) -> None:
    app = create_app(AlertStore(tmp_path / "alerts.sqlite3"), TokenStore(tmp_path / "tokens.json"))

    async def scrape() -> tuple[int, str, str]:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            response = await client.get("/metrics")
            return response.status, response.headers["Content-Type"], await response.text()

    status, content_type, text = asyncio.run(scrape())
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "process_cpu_seconds_total" in text or "python_info" in text
    assert is_loopback("127.0.0.1") and is_loopback("::1")
    assert not is_loopback("192.0.2.10") and not is_loopback(None) and not is_loopback("not-an-address")
