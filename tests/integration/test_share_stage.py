"""Issue 4 on a real broker: each recipient gets what the shared secret and consent allow, audited."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hub.consent.audit import share_decisions
from hub.ingest.signature import sign

from .conftest import FINESS, RECIPIENTS, RPPS, HubEnv

PATIENT_URL = "urn:uuid:3f9a0a6e-5555-4a8a-9b1e-0c1d2e3f4a5b"


def entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def admission() -> dict[str, Any]:
    """A GP's bundle: the patient declares Dr X as GP and is in hospital A; a diabetes diagnosis."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": PATIENT_URL,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:hub:test:gp:patient", "value": "GP-2001"}],
                    "generalPractitioner": [{"identifier": {"system": RPPS, "value": "10009900019"}}],
                    "birthDate": "1948-02-11",
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            entry(
                {
                    "resourceType": "Encounter",
                    "status": "in-progress",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                    "subject": {"reference": PATIENT_URL},
                    "serviceProvider": {"identifier": {"system": FINESS, "value": "970100228"}},
                    "period": {"start": "2026-11-20T08:00:00-04:00"},
                }
            ),
            entry(
                {
                    "resourceType": "Condition",
                    "subject": {"reference": PATIENT_URL},
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
                    "recordedDate": "2026-11-20",
                }
            ),
        ],
    }


def for_patient(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "subject" if "subject" in resource else "patient": {"reference": "Patient/GP-2001"}}


OBJECTION = {
    "resourceType": "Consent",
    "status": "active",
    "scope": {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
        ]
    },
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"reference": "Patient/GP-2001"},
    "dateTime": "2026-11-21T10:00:00-04:00",
    "policyRule": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]
    },
    "provision": {"type": "deny"},
}
RESULT = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
    "subject": {"reference": "Patient/GP-2001"},
    "effectiveDateTime": "2026-11-21T11:00:00-04:00",
    "valueQuantity": {"value": 8.6, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
}


def decisions_of(audits: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every share decision the AuditEvents record: event_id, recipient, verdict, rule..."""
    return [decision for audit in audits for decision in share_decisions(audit)]


def publish(env: HubEnv, resource: dict[str, Any], message_id: str) -> None:
    value = json.dumps(resource).encode()
    secret = env.source("gp-test").secret
    env.send(
        [
            (
                message_id.encode(),
                value,
                [
                    ("hub-source", b"gp-test"),
                    ("hub-signature", sign(secret, "gp-test", value, int(time.time())).encode()),
                    ("hub-message-id", message_id.encode()),
                ],
            )
        ]
    )


def test_each_recipient_gets_what_it_may_and_an_objection_stops_what_follows(
    hub_env: HubEnv, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """Care team (declared GP, treating hospital) receives, an outsider never; after an objection, nobody."""
    publish(hub_env, admission(), "adm-1")
    assert len(hub_env.collect(hub_env.topics.receipts, 1)) == 1
    publish(hub_env, OBJECTION, "objection-1")
    publish(hub_env, RESULT, "result-after-objection")
    receipts = [r.json_value() for r in hub_env.collect(hub_env.topics.receipts, 3)]
    assert [r["status"] for r in receipts] == ["accepted"] * 3
    ids = {r["message_id"]: set(r["event_ids"]) for r in receipts}

    events = [r.json_value() for r in hub_env.settle(hub_env.topics.pathway)]
    audits = [r.json_value() for r in hub_env.settle(hub_env.topics.audit)]
    assert worker.poll() is None, "the worker died"
    # One AuditEvent per event, with exactly one decision per recipient in it, permit or deny; and
    # one more for a late release (docs/CONSENT.md, "Convergence"): the Patient entry, decided before
    # the hospital's encounter made it a treating organisation, is released to it by that encounter.
    patient_event = next(e["event_id"] for e in events if e["kind"] == "patient")
    share_audits = [audit for audit in audits if share_decisions(audit)]
    first = [a for a in share_audits if "released_by" not in share_decisions(a)[0]]
    assert Counter(audit["entity"][0]["what"]["identifier"]["value"] for audit in first) == Counter(
        e["event_id"] for e in events
    )
    decisions = Counter((d["event_id"], d["recipient"]) for d in decisions_of(first))
    expected = {(e["event_id"], r["id"]) for e in events for r in RECIPIENTS}
    assert set(decisions) == expected
    assert set(decisions.values()) == {1}
    released = [d for a in share_audits if a not in first for d in share_decisions(a)]
    encounter_event = next(e["event_id"] for e in events if e["kind"].startswith("encounter."))
    assert [(d["event_id"], d["recipient"], d["verdict"], d["rule"], d["released_by"]) for d in released] == [
        (patient_event, "hosp-a", "permit", "care_team", encounter_event)
    ]
    # The share agents chain their AuditEvents themselves (hub.audit.stage.ChainWriter): none goes
    # through hub.audit-unsealed.v1 and the sealing agent, and the chain they wrote verifies.
    unsealed = [r.json_value() for r in hub_env.settle(hub_env.topics.audit_unsealed, quiet=0.5)]
    assert not [audit for audit in unsealed if share_decisions(audit)]
    verified = hub_env.cli("audit", "verify", "--state", str(tmp_path / "verified.json"))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    received = {
        r["id"]: {
            c.json_value()["event_id"]
            for c in hub_env.settle(f"{hub_env.topics.prefix}hub.pathway.{r['id']}.v1")
        }
        for r in RECIPIENTS
    }
    # The hospital joins the care team with its encounter: it gets the whole admission, the Patient
    # entry (processed first) by a late release.
    assert received["hosp-a"] == ids["adm-1"], "the treating hospital: the stay, nothing after"
    assert received["gp-dr-x"] == ids["adm-1"], "the declared GP gets the admission, nothing after"
    assert received["outsider"] == set(), "outside the care team, without consent: nothing"
    # The result published after the objection reached nobody, and the audit says which rule.
    after = ids["result-after-objection"]
    rules = {d["rule"] for d in decisions_of(audits) if d["event_id"] in after}
    assert rules == {"objection"}
    # Recipient copies carry the decision that let them through.
    copy = hub_env.settle(f"{hub_env.topics.prefix}hub.pathway.gp-dr-x.v1")[0].json_value()
    assert copy["decision"]["basis"] == "care_team"


INS = {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "277037500100123"}


def patient(local_id: str, *, with_ins: bool) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:hub:test:gp:patient", "value": local_id}],
        "generalPractitioner": [{"identifier": {"system": RPPS, "value": "10009900019"}}],
    }
    if with_ins:
        resource["identifier"].append(INS)
        resource["extension"] = [
            {
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
                "extension": [
                    {
                        "url": "identityReliability",
                        "valueCoding": {
                            "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
                            "code": "VALI",
                        },
                    }
                ],
            }
        ]
    return resource


def test_an_objection_made_under_a_local_id_still_holds_after_the_identity_is_linked(
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """Objection recorded before the INS was known; after the link, nothing about the person leaves."""
    publish(hub_env, patient("GP-3001", with_ins=False), "p-local")
    publish(hub_env, {**OBJECTION, "patient": {"reference": "Patient/GP-3001"}}, "objection-local")
    assert len(hub_env.collect(hub_env.topics.receipts, 2)) == 2
    publish(hub_env, patient("GP-3001", with_ins=True), "p-qualified")
    assert len(hub_env.collect(hub_env.topics.receipts, 3)) == 3
    time.sleep(3)  # the merge of the two identities' states takes two hops on hub.share-merge.v1
    # Named by INS, beside the qualified Patient that carries it: an INS alone in a reference links nothing.
    by_ins = {**RESULT, "subject": {"identifier": INS}}
    later = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient("GP-3001", with_ins=True)}, {"resource": by_ins}],
    }
    publish(hub_env, later, "result-by-ins")
    receipts = {
        r.json_value()["message_id"]: r.json_value() for r in hub_env.collect(hub_env.topics.receipts, 4)
    }
    assert {r["status"] for r in receipts.values()} == {"accepted"}
    time.sleep(2)
    audits = [r.json_value() for r in hub_env.settle(hub_env.topics.audit)]
    after_link = set(receipts["p-qualified"]["event_ids"]) | set(receipts["result-by-ins"]["event_ids"])
    received = {
        r["id"]: {
            c.json_value()["event_id"]
            for c in hub_env.settle(f"{hub_env.topics.prefix}hub.pathway.{r['id']}.v1")
        }
        for r in RECIPIENTS
    }
    assert all(not (ids & after_link) for ids in received.values()), "an objected patient's data left"
    # The result's own event (its Patient entry repeats the fact p-qualified published).
    result_ids = set(receipts["result-by-ins"]["event_ids"]) - set(receipts["p-qualified"]["event_ids"])
    assert len(result_ids) == 1
    result_rules = {d["rule"] for d in decisions_of(audits) if d["event_id"] in result_ids}
    assert result_rules == {"objection"}, "the objection made under the local id decides, once merged"
