"""Issue 3 on a real broker: two systems, two FHIR versions, one person, one clean pathway."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from typing import Any

from fhir.resources.STU3 import get_fhir_model_class as stu3_model

from hub.ingest.signature import sign
from hub.schemas import schema_errors

from .conftest import HubEnv

INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"  # the test NIR system: never a real identity
INS_VALUE = "185057800608436"
VALIDATED = {
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


def gp_bundle() -> dict[str, Any]:
    """The GP system's R4 visit: Patient (local id + qualified INS), a local-coded diagnosis, an HbA1c."""
    patient_url = "urn:uuid:0b7c7d1e-1111-4a8a-9b1e-0c1d2e3f4a5b"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": {
                    "resourceType": "Patient",
                    "extension": [VALIDATED],
                    "identifier": [
                        {"system": "urn:hub:test:gp:patient", "value": "GP-1001"},
                        {"system": INS_SYSTEM, "value": INS_VALUE},
                    ],
                    "name": [{"family": "Zephyrin", "given": ["Marie-Galante"]}],
                    "gender": "female",
                    "birthDate": "1950-05-03",
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Condition",
                    "subject": {"reference": patient_url},
                    "code": {"coding": [{"system": "urn:test:gp:condition", "code": "DT2"}]},
                    # Naive local time, as some practice software sends: read in America/Guadeloupe.
                    "recordedDate": "2025-03-30T02:30:00",
                },
                "request": {"method": "POST", "url": "Condition"},
            },
            {
                "resource": hba1c({"reference": patient_url}),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def hba1c(subject: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "59261-8"}]},
        "subject": subject,
        "effectiveDateTime": "2025-03-28T08:15:00-04:00",
        "valueQuantity": {
            "value": 75,
            "unit": "mmol/mol",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/mol",
        },
    }


def stu3_xml(resource: dict[str, Any]) -> bytes:
    """A STU3 resource as the hospital's software writes it: FHIR XML."""
    model = stu3_model(resource["resourceType"]).model_validate(resource)
    return bytes(model.model_dump_xml())


def hospital_patient(with_ins: bool) -> dict[str, Any]:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "H-77",
        "identifier": [{"system": "urn:hub:test:hospital:ipp", "value": "H-77"}],
        "gender": "female",
        "birthDate": "1950-05-03",
    }
    if with_ins:
        patient["extension"] = [VALIDATED]
        patient["identifier"].append({"system": INS_SYSTEM, "value": INS_VALUE})
    return patient


def hospital_admission_bundle() -> dict[str, Any]:
    """The hospital's STU3 admission: its own Patient (no INS yet), an inpatient stay, a STU3 Condition."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5e1d2c3b-2222-4a8a-9b1e-0c1d2e3f4a5b",
                "resource": hospital_patient(with_ins=False),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://hl7.org/fhir/v3/ActCode", "code": "IMP"},
                    "subject": {"reference": "urn:uuid:5e1d2c3b-2222-4a8a-9b1e-0c1d2e3f4a5b"},
                    "period": {"start": "2025-04-02T10:00:00+02:00", "end": "2025-04-06T15:00:00+02:00"},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
            {
                "resource": {
                    "resourceType": "Condition",
                    "clinicalStatus": "active",
                    "verificationStatus": "confirmed",
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C50.9"}]},
                    "subject": {"reference": "urn:uuid:5e1d2c3b-2222-4a8a-9b1e-0c1d2e3f4a5b"},
                    "assertedDate": "2025-04-03",
                },
                "request": {"method": "POST", "url": "Condition"},
            },
        ],
    }


def send_as(env: HubEnv, source_id: str, value: bytes, message_id: str, content_type: str) -> None:
    secret = env.source(source_id).secret
    env.send(
        [
            (
                message_id.encode(),
                value,
                [
                    ("hub-source", source_id.encode()),
                    ("hub-signature", sign(secret, source_id, value, int(time.time())).encode()),
                    ("hub-message-id", message_id.encode()),
                    ("content-type", content_type.encode()),
                ],
            )
        ]
    )


def receipts_for(env: HubEnv, count: int) -> dict[str, dict[str, Any]]:
    records = env.collect(env.topics.receipts, count, timeout=120)
    assert len(records) == count, f"{len(records)} receipts, expected {count}"
    return {r.json_value()["message_id"]: r.json_value() for r in records}


def test_a_gp_and_a_hospital_on_different_versions_make_one_patient(  # noqa: PLR0915 - one scenario, end to end
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """R4 GP (local id + INS) and STU3 XML hospital (own id, INS later): one patient, linked, normalised."""
    json_r4 = "application/fhir+json; fhirVersion=4.0"
    xml_stu3 = "application/fhir+xml; fhirVersion=3.0"
    send_as(hub_env, "gp-test", json.dumps(gp_bundle()).encode(), "gp-visit-1", json_r4)
    send_as(hub_env, "hospital-stu3", stu3_xml(hospital_admission_bundle()), "chu-adm-1", xml_stu3)
    first = receipts_for(hub_env, 2)
    assert {m: r["status"] for m, r in first.items()} == {"gp-visit-1": "accepted", "chu-adm-1": "accepted"}

    # Later the hospital qualifies the identity, then sends a result naming only its own id.
    send_as(hub_env, "hospital-stu3", stu3_xml(hospital_patient(with_ins=True)), "chu-ins-1", xml_stu3)
    receipts_for(hub_env, 3)
    later_result = copy.deepcopy(hba1c({"reference": "Patient/H-77"}))
    later_result["effectiveDateTime"] = "2025-05-02T09:00:00+02:00"
    send_as(hub_env, "hospital-stu3", stu3_xml(later_result), "chu-lab-1", xml_stu3)
    # The GP resends its visit under a new message id: every fact in it is already known.
    send_as(hub_env, "gp-test", json.dumps(gp_bundle()).encode(), "gp-visit-1-resent", json_r4)
    # The hospital forwards the GP's HbA1c, in its own version and naming the patient its own way.
    send_as(hub_env, "hospital-stu3", stu3_xml(hba1c({"reference": "Patient/H-77"})), "chu-copy-1", xml_stu3)
    receipts = receipts_for(hub_env, 6)
    assert worker.poll() is None, "the worker died"
    assert {m: r["status"] for m, r in receipts.items()} == {
        "gp-visit-1": "accepted",
        "chu-adm-1": "accepted",
        "chu-ins-1": "accepted",
        "chu-lab-1": "accepted",
        "gp-visit-1-resent": "duplicate",
        "chu-copy-1": "accepted",
    }
    assert receipts["gp-visit-1-resent"]["event_ids"] == receipts["gp-visit-1"]["event_ids"]
    # The hospital's copy names the patient by its own id only: an event of its own, whose id does
    # not depend on whether the link was processed first (docs/CONSENT.md, "Convergence"); one fact
    # is one id when both sources name the qualified INS.
    assert not set(receipts["chu-copy-1"]["event_ids"]) & set(receipts["gp-visit-1"]["event_ids"])

    events = [r.json_value() for r in hub_env.settle(hub_env.topics.pathway)]
    for event in events:
        assert schema_errors("pathway-event.schema.json", event) == []
    ins_id = next(e["patient_id"] for e in events if e["source"]["id"] == "gp-test")
    by_message = {m: set(r["event_ids"]) for m, r in receipts.items()}
    # Each source's local id is linked once to the INS id: the GP's at once, the hospital's later.
    linked = [e for e in events if e["kind"] == "patient.linked"]
    assert len(linked) == 2 and {e["patient_id"] for e in linked} == {ins_id}
    replaced = {e["resource"]["link"][0]["other"]["identifier"]["value"] for e in linked}

    # Before the link, the hospital's admission lives under its local id; after it, under the INS id.
    admission = [e for e in events if e["event_id"] in by_message["chu-adm-1"]]
    assert len({e["patient_id"] for e in admission}) == 1
    assert admission[0]["patient_id"] in replaced
    later = [
        e
        for e in events
        if e["event_id"] in by_message["chu-lab-1"] | by_message["chu-ins-1"] | by_message["chu-copy-1"]
    ]
    assert later and {e["patient_id"] for e in later} == {ins_id}
    assert any("patient-id:linked" in e["provenance"]["steps"] for e in later)

    # One event per fact: the resent visit added nothing.
    assert len(events) == len({e["event_id"] for e in events})
    assert len({e["patient_id"] for e in events}) == 2  # the INS id, and the hospital's id before the link
    gp_events = [e for e in events if e["event_id"] in by_message["gp-visit-1"]]
    assert len(gp_events) == 3

    # Codes: the GP's local diagnosis keeps its coding and gains ICD-10.
    condition = next(e for e in gp_events if e["kind"] == "condition")
    systems = {c["system"] for c in condition["resource"]["code"]["coding"]}
    assert {"urn:test:gp:condition", "http://hl7.org/fhir/sid/icd-10"} <= systems
    # Times: the naive local time was read in Guadeloupe (UTC-4) and written in UTC.
    assert condition["resource"]["recordedDate"] == "2025-03-30T06:30:00Z"
    # Units: HbA1c in mmol/mol becomes % (NGSP), the original kept beside it.
    result = next(e for e in gp_events if e["kind"] == "observation")
    quantity = result["resource"]["valueQuantity"]
    assert quantity["code"] == "%" and quantity["value"] == 9.01  # 0.09148 x 75 + 2.152 (IFCC to NGSP)
    assert quantity["extension"][0]["valueQuantity"]["value"] == 75
    assert result["occurred_at"] == "2025-03-28T12:15:00.000Z"
    # The STU3 hospital data arrived as R4.
    hospital_condition = next(e for e in admission if e["kind"] == "condition")
    assert hospital_condition["resource"]["clinicalStatus"]["coding"][0]["code"] == "active"
    assert any(step.startswith("decoded:xml/fhir-3.0") for step in hospital_condition["provenance"]["steps"])
    discharge = next(e for e in admission if e["resource"]["resourceType"] == "Encounter")
    assert discharge["kind"] == "encounter.discharge"
    assert discharge["occurred_at"] == "2025-04-06T13:00:00.000Z"
