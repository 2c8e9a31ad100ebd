"""Erasure's pure part: who is erased (every linked id), which rejects name them, what is audited."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from hub.crypto.erase import (
    ErasureReport,
    aliases_from_changelog,
    audit_erasure,
    linked_ids,
    named_patients,
    resolve_patient,
)
from hub.pathway.network_id import INS_NIR, INS_TEST_NIR, PatientKey

KEY = b"unit-pseudonym-key"


def test_a_network_id_is_taken_as_is_and_an_ins_is_pseudonymised_as_ingest_does() -> None:
    """pt-… unchanged; SYSTEM|VALUE and a bare VALUE (in --ins-system) give the INS network id."""
    assert resolve_patient("pt-abc", pseudonym_key=KEY) == "pt-abc"
    expected = PatientKey("ins", INS_TEST_NIR, "185057800608436").network_id(KEY)
    assert resolve_patient(f"{INS_TEST_NIR}|185057800608436", pseudonym_key=KEY) == expected
    assert resolve_patient("185057800608436", pseudonym_key=KEY, ins_system=INS_TEST_NIR) == expected
    assert resolve_patient("185057800608436", pseudonym_key=KEY) == PatientKey(
        "ins", INS_NIR, "185057800608436"
    ).network_id(KEY)
    with pytest.raises(ValueError, match="network patient id"):
        resolve_patient("urn:x|", pseudonym_key=KEY)


def test_every_id_linked_to_the_person_is_erased_with_it() -> None:
    """From the INS id or from one local id: the INS id and all its local ids; strangers stay."""
    aliases = {"pt-gp": "pt-ins", "pt-chu": "pt-ins", "pt-other": "pt-ins2"}
    assert linked_ids("pt-ins", aliases) == ["pt-chu", "pt-gp", "pt-ins"]
    assert linked_ids("pt-gp", aliases) == ["pt-chu", "pt-gp", "pt-ins"]
    assert linked_ids("pt-alone", aliases) == ["pt-alone"]


def test_aliases_follow_the_changelog_last_value_and_tombstones() -> None:
    """The opened identity-aliases changelog: JSON keys and values; a later null removes an alias."""
    records = [
        (b'"pt-gp"', b'"pt-ins"'),
        (b'"pt-chu"', b'"pt-ins"'),
        (b'"pt-chu"', None),
        (b"not json", b'"x"'),
    ]
    assert aliases_from_changelog(records) == {"pt-gp": "pt-ins"}


def test_a_reject_names_the_patients_ingest_would_have_derived() -> None:
    """A Patient's source identifier, its INS and a Patient/<id> reference are found; nobody in junk."""
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:src:ipp", "value": "H-77"},
            {"system": INS_TEST_NIR, "value": "185057800608436"},
        ],
    }
    found = named_patients(json.dumps(patient).encode(), "chu", pseudonym_key=KEY)
    assert PatientKey("local", "chu", "H-77").network_id(KEY) in found
    assert PatientKey("ins", INS_TEST_NIR, "185057800608436").network_id(KEY) in found
    observation = {"resourceType": "Observation", "subject": {"reference": "Patient/H-78/_history/2"}}
    assert PatientKey("local", "chu", "H-78").network_id(KEY) in named_patients(
        json.dumps(observation).encode(), "chu", pseudonym_key=KEY
    )
    assert named_patients(b"<Patient/>", "chu", pseudonym_key=KEY) == set()
    assert named_patients(None, "chu", pseudonym_key=KEY) == set()


def test_the_erasure_audit_names_who_and_which_ids_and_nothing_clinical() -> None:
    """Action D on the patient record, the requestor, every erased id; counts only; aware time required."""
    report = ErasureReport(["pt-ins", "pt-gp"], 2, 1, 10, 0, 1, ["note"])
    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    audit = audit_erasure(report, requested_by="dpo@example", recorded=at)
    assert audit["action"] == "D" and audit["subtype"][0]["code"] == "patient-erasure"
    assert audit["agent"][0]["who"]["identifier"]["value"] == "dpo@example"
    assert [e["what"]["identifier"]["value"] for e in audit["entity"]] == ["pt-ins", "pt-gp"]
    details = {d["type"]: d["valueString"] for d in audit["entity"][0]["detail"]}
    assert details["keys_destroyed"] == "2" and details["dlq_records_shredded"] == "1"
    assert audit_erasure(report, requested_by="dpo@example", recorded=at)["id"] == audit["id"]
    with pytest.raises(ValueError, match="timezone-aware"):
        audit_erasure(report, requested_by="x", recorded=datetime(2026, 11, 22))  # noqa: DTZ001 - the point


def test_the_erasure_audit_is_a_fhir_audit_event_for_the_unsealed_topic() -> None:
    """A FHIR R4 AuditEvent, valid for hub.audit-unsealed.v1 (schemas/asyncapi.yaml) and an
    administration act of audit-event.schema.json (tests/unit/test_contract.py checks the latter)."""
    import yaml  # noqa: PLC0415
    from fhir.resources.R4B.auditevent import AuditEvent  # noqa: PLC0415
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    from hub.schemas import SCHEMAS_DIR  # noqa: PLC0415

    report = ErasureReport(["pt-ins"], 1, 0, 0, 0, 0, [])
    audit = audit_erasure(report, requested_by="dpo", recorded=datetime(2026, 11, 22, tzinfo=UTC))
    AuditEvent.model_validate(audit)
    document = yaml.safe_load((SCHEMAS_DIR / "asyncapi.yaml").read_text(encoding="utf-8"))
    schema = document["components"]["messages"]["unsealedAuditEvent"]["payload"]["schema"]
    assert [e.message for e in Draft202012Validator(schema).iter_errors(audit)] == []
