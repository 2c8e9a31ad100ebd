"""Fault: a patient's objection arrives in the middle of a sustained stream about that patient.

"After" is the order the hub itself keeps for one patient: the position of the Consent's event in the
patient's partition of ``hub.pathway.v1`` (everything about one patient is co-partitioned and decided in
that order, DESIGN.md 1). No event after it may reach any recipient's topic, and every such event must
have a deny AuditEvent with the rule ``objection`` for each recipient; another patient's stream, on the
same topics at the same time, keeps flowing.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import defaultdict
from typing import Any

from hub.consent.audit import share_decisions
from hub.ingest.signature import sign
from hub.kafka.clients import Record

from .conftest import RECIPIENTS, HubEnv
from .test_share_stage import OBJECTION, admission

#: Observations per patient; the objection goes out after OBJECTION_AT of the objecting patient's.
PER_PATIENT = 200
OBJECTION_AT = 80
BATCH = 40


def patient_admission(local_id: str) -> dict[str, Any]:
    """The GP's admission bundle of test_share_stage for another local id: GP and hospital in care."""
    bundle = admission()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource["identifier"][0]["value"] = local_id
    return bundle


def result(local_id: str, n: int) -> dict[str, Any]:
    """One HbA1c result; ``n`` makes it a distinct fact (time and value), hence a distinct event id."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": f"Patient/{local_id}"},
        "effectiveDateTime": f"2026-11-21T{8 + n // 60:02d}:{n % 60:02d}:00-04:00",
        "valueQuantity": {
            "value": round(6.0 + n / 100, 2),
            "unit": "%",
            "system": "http://unitsofmeasure.org",
            "code": "%",
        },
    }


def record(
    env: HubEnv, resource: dict[str, Any], message_id: str
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    value = json.dumps(resource).encode()
    signature = sign(env.source("gp-test").secret, "gp-test", value, int(time.time()))
    headers = [
        ("hub-source", b"gp-test"),
        ("hub-signature", signature.encode()),
        ("hub-message-id", message_id.encode()),
    ]
    return message_id.encode(), value, headers


def test_no_event_after_an_objection_reaches_a_recipient_under_sustained_load(
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """An objection amid 400 results: nothing after it in the patient's order reaches anyone, all audited."""
    objecting, other = "GP-2001", "GP-2002"
    hub_env.send([record(hub_env, patient_admission(p), f"adm-{p}") for p in (objecting, other)])
    # The care team must be known before the stream, or early results would be denied for a reason
    # other than the objection and the "before" half of the test would prove nothing.
    assert len(hub_env.collect(hub_env.topics.receipts, 2, timeout=120)) == 2

    stream = []
    for n in range(PER_PATIENT):
        stream.append(record(hub_env, result(objecting, n), f"r-{objecting}-{n}"))
        stream.append(record(hub_env, result(other, n), f"r-{other}-{n}"))
        if n == OBJECTION_AT:
            objection = {**OBJECTION, "patient": {"reference": f"Patient/{objecting}"}}
            stream.append(record(hub_env, objection, "objection"))
    started = time.monotonic()
    for start in range(0, len(stream), BATCH):
        hub_env.send(stream[start : start + BATCH])
    receipts = hub_env.collect(hub_env.topics.receipts, 2 + len(stream), timeout=180)
    assert worker.poll() is None, "the worker died"
    assert len(receipts) == 2 + len(stream), f"{len(receipts)} receipts for {2 + len(stream)} inputs"
    by_message = {r.json_value()["message_id"]: r.json_value() for r in receipts}
    assert {r["status"] for r in by_message.values()} == {"accepted"}
    patient_of = {}
    for message_id, receipt in by_message.items():
        for event_id in receipt["event_ids"]:
            patient_of[event_id] = (
                objecting if objecting in message_id or message_id == "objection" else other
            )
    (consent_event,) = by_message["objection"]["event_ids"]

    # The hub's own order for the objecting patient: its partition of hub.pathway.v1.
    pathway: list[Record] = hub_env.settle(hub_env.topics.pathway, quiet=3.0)
    events = [r.json_value() for r in pathway]
    objecting_id = next(e["patient_id"] for e in events if e["event_id"] == consent_event)
    order = [e["event_id"] for e in events if e["patient_id"] == objecting_id]
    position = order.index(consent_event)
    before, after = set(order[:position]), set(order[position + 1 :])
    # Inputs travel on several ingest partitions, so the hub's order differs from the send order; the
    # objection must still land with a good part of the stream after it, or the test proves little.
    assert len(after) >= (PER_PATIENT - OBJECTION_AT) // 2, f"only {len(after)} events after the objection"

    audits: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for audit_record in hub_env.settle(hub_env.topics.audit, quiet=2.0):
        for decision in share_decisions(audit_record.json_value()):
            if decision["event_id"] in patient_of:
                audits[decision["event_id"], decision["recipient"]].append(decision)
    received = {
        r["id"]: [c.json_value() for c in hub_env.settle(f"{hub_env.topics.prefix}hub.pathway.{r['id']}.v1")]
        for r in RECIPIENTS
    }
    elapsed = time.monotonic() - started
    for recipient in RECIPIENTS:
        rid = recipient["id"]
        got = {copy["event_id"] for copy in received[rid] if copy["patient_id"] == objecting_id}
        leaked = got & (after | {consent_event})
        assert not leaked, f"{len(leaked)} events after the objection reached {rid}"
        for event_id in after:
            verdicts = {(d["verdict"], d["rule"]) for d in audits[event_id, rid]}
            assert verdicts == {("deny", "objection")}, f"{event_id} for {rid}: {verdicts}"
    # The test could not pass by blocking everything: the care team got the patient's results before
    # the objection, and the other patient's whole stream.
    gp_got = {copy["event_id"] for copy in received["gp-dr-x"]}
    assert before - gp_got == set(), "the declared GP missed results from before the objection"
    others = {e for e, p in patient_of.items() if p == other}
    assert others <= gp_got, "the other patient's stream stopped with the objection"
    print(
        f"{len(stream)} inputs under load in {elapsed:.0f} s; objecting patient: {len(before)} events before "
        f"the objection (all sent to the declared GP), {len(after)} after: 0 on any of "
        f"{len(RECIPIENTS)} recipient topics, {len(after) * len(RECIPIENTS)} deny AuditEvents with rule "
        f"'objection'; other patient: {len(others & gp_got)}/{len(others)} events reached the GP"
    )
