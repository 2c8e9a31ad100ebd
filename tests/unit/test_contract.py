"""The machine-readable contract (schemas/) agrees with the code that produces and reads it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from hub.errors import ErrorCode
from hub.identity.network_id import NETWORK_ID_SYSTEM, PatientKey
from hub.ingest.outcome import Accepted, KafkaCoordinates, Rejected
from hub.ingest.receipts import dlq_headers, receipt
from hub.ingest.signature import sign
from hub.normalise.time import utc_iso
from hub.pathway.event import PathwayEvent, event_id_for
from hub.schemas import SCHEMAS_DIR, schema_errors
from hub.topics import CONTRACT_TOPICS, INGEST, RECIPIENT_PATHWAY_TEMPLATE

ASYNCAPI = SCHEMAS_DIR / "asyncapi.yaml"
JSON_SCHEMAS = sorted(SCHEMAS_DIR.glob("*.json"))

#: The codes a rejected ingest record can carry, in receipts and DLQ headers alike.
INGEST_REJECT_CODES = frozenset(
    {
        "source.unknown",
        "signature.missing",
        "signature.invalid",
        "signature.expired",
        "payload.malformed",
        "payload.too_large",
        "fhir.invalid",
        "fhir.version.unsupported",
        "patient.unresolved",
        "patient.ambiguous",
        "hub.internal_error",
    }
)

AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
ORIGIN = KafkaCoordinates(INGEST, 3, 42)


def _asyncapi() -> dict[str, Any]:
    document = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` value anywhere in a parsed YAML or JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _schema(name: str) -> dict[str, Any]:
    document = json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _event(**overrides: Any) -> PathwayEvent:
    patient_id = PatientKey("ins", "urn:oid:1.2.250.1.213.1.4.8", "1840512345678").network_id(b"k" * 32)
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {
            "reference": f"Patient/{patient_id}",
            "identifier": {"system": NETWORK_ID_SYSTEM, "value": patient_id},
        },
        "effectiveDateTime": "2024-05-01T08:30:00Z",
        "valueQuantity": {"value": 7.1, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }
    fields: dict[str, Any] = {
        "event_id": event_id_for(patient_id, resource),
        "patient_id": patient_id,
        "kind": "observation",
        "occurred_at": utc_iso(datetime(2024, 5, 1, 8, 30, tzinfo=UTC)),
        "recorded_at": utc_iso(AT),
        "source_id": "lab-biomed",
        "source_organization": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "123456789"},
        "resource": resource,
        "ingest": ORIGIN.as_dict(),
        "steps": ("decoded:json/fhir-4.0", "patient-id:ins"),
        "sensitivity": ("R",),
    }
    fields.update(overrides)
    return PathwayEvent(**fields)


def test_asyncapi_channels_are_the_contract_topics() -> None:
    """The channel addresses of asyncapi.yaml are hub.topics' contract topics plus the recipient template."""
    addresses = {channel["address"] for channel in _asyncapi()["channels"].values()}
    assert addresses == set(CONTRACT_TOPICS) | {RECIPIENT_PATHWAY_TEMPLATE}


def test_asyncapi_recipient_channel_declares_its_parameter() -> None:
    """The per-recipient channel declares the {recipient} parameter its address uses."""
    channels = _asyncapi()["channels"].values()
    (channel,) = [c for c in channels if c["address"] == RECIPIENT_PATHWAY_TEMPLATE]
    assert set(channel["parameters"]) == {"recipient"}


@pytest.mark.parametrize("path", JSON_SCHEMAS, ids=lambda p: p.name)
def test_json_schema_is_valid_draft_2020_12(path: Path) -> None:
    """Every JSON Schema in schemas/ is itself a valid Draft 2020-12 schema."""
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_asyncapi_file_refs_point_at_existing_files() -> None:
    """Every $ref from asyncapi.yaml to a local file names a file that exists in schemas/."""
    file_refs = [ref for ref in _refs(_asyncapi()) if not ref.startswith("#")]
    assert file_refs, "asyncapi.yaml references no schema file"
    for ref in file_refs:
        path, _, _ = ref.partition("#")
        assert (SCHEMAS_DIR / path).is_file(), f"{ref} does not exist"


def test_asyncapi_internal_refs_resolve() -> None:
    """Every $ref inside asyncapi.yaml (#/...) points at a node of the document."""
    document = _asyncapi()
    for ref in (r for r in _refs(document) if r.startswith("#/")):
        node: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]


def test_reject_codes_in_schemas_are_the_ingest_reject_codes() -> None:
    """Receipt error codes and DLQ hub-error-code are the ingest reject subset of ErrorCode."""
    members = {str(code) for code in ErrorCode}
    assert members >= INGEST_REJECT_CODES
    receipt_codes = _schema("receipt.schema.json")["$defs"]["error"]["properties"]["code"]["enum"]
    dlq_codes = _schema("dlq-headers.schema.json")["properties"]["hub-error-code"]["enum"]
    assert set(receipt_codes) == INGEST_REJECT_CODES
    assert set(dlq_codes) == INGEST_REJECT_CODES


def test_every_ingest_reject_code_is_in_the_schemas() -> None:
    """Every code ingest can reject with (ErrorCode but config.*, broker.*, consent.*) is in both schemas."""
    raised_or_audited = ("config.", "broker.", "consent.")
    ingest_codes = {str(code) for code in ErrorCode if not code.value.startswith(raised_or_audited)}
    receipt_codes = _schema("receipt.schema.json")["$defs"]["error"]["properties"]["code"]["enum"]
    dlq_codes = _schema("dlq-headers.schema.json")["properties"]["hub-error-code"]["enum"]
    assert ingest_codes <= set(receipt_codes)
    assert ingest_codes <= set(dlq_codes)


def test_rejected_receipt_matches_schema() -> None:
    """A receipt of a Rejected outcome validates against receipt.schema.json."""
    outcome = Rejected(ErrorCode.FHIR_INVALID, "detail", "src", None)
    document = receipt(outcome, ORIGIN, at=AT)
    assert schema_errors("receipt.schema.json", document) == []


def test_rejected_receipt_of_unknown_source_matches_schema() -> None:
    """A receipt of a reject with no source and no message id (both null) validates."""
    document = receipt(Rejected(ErrorCode.SOURCE_UNKNOWN, "no hub-source header"), ORIGIN, at=AT)
    assert schema_errors("receipt.schema.json", document) == []


def test_accepted_and_duplicate_receipts_match_schema() -> None:
    """Receipts of an Accepted outcome, first time and as an identity-stage duplicate, validate."""
    event = _event()
    outcome = Accepted("src", "m1", (event,))
    accepted = receipt(outcome, ORIGIN, at=AT)
    duplicate = receipt(outcome, ORIGIN, at=AT, status="duplicate", event_ids=(event.event_id,))
    assert accepted["status"] == "accepted"
    assert duplicate["status"] == "duplicate"
    assert schema_errors("receipt.schema.json", accepted) == []
    assert schema_errors("receipt.schema.json", duplicate) == []


def test_pathway_event_matches_schema() -> None:
    """PathwayEvent.to_dict() validates against pathway-event.schema.json."""
    assert schema_errors("pathway-event.schema.json", _event().to_dict()) == []


def test_pathway_event_without_occurrence_or_labels_matches_schema() -> None:
    """An event with no sensitivity labels and no steps still validates (both are empty lists)."""
    document = _event(sensitivity=(), steps=()).to_dict()
    assert schema_errors("pathway-event.schema.json", document) == []


def test_recipient_copy_with_decision_matches_schema() -> None:
    """A per-recipient copy carrying decision {basis, policy, policy_version} validates."""
    document = _event().to_dict()
    document["decision"] = {"basis": "care_team", "policy": "default", "policy_version": "1"}
    assert schema_errors("pathway-event.schema.json", document) == []


def test_dlq_headers_match_schema() -> None:
    """dlq_headers(...) decoded to a name → str object validates against dlq-headers.schema.json."""
    original = (
        ("hub-source", b"src"),
        ("hub-signature", b"t=1,v1=bad"),
        ("content-type", b"application/fhir+json"),
        ("hub-message-id", b"m1"),
        ("traceparent", b"00-abc-def-01"),
    )
    rejected = Rejected(ErrorCode.SIGNATURE_INVALID, "hub-signature does not match", "src", "m1")
    headers = {name: value.decode() for name, value in dlq_headers(original, rejected, ORIGIN)}
    assert headers["hub-origin"] == "hub.ingest.v1/3/42"
    assert schema_errors("dlq-headers.schema.json", headers) == []


def test_signed_ingest_headers_match_schema() -> None:
    """Headers a source builds with hub.ingest.signature.sign validate against ingest-headers.schema.json."""
    headers = {
        "hub-source": "gp-cabinet-1",
        "hub-signature": sign(b"secret", "gp-cabinet-1", b"{}", 1_714_979_289),
        "content-type": "application/fhir+json; fhirVersion=4.0",
        "hub-message-id": "msg-0001",
    }
    assert schema_errors("ingest-headers.schema.json", headers) == []
    assert schema_errors("ingest-headers.schema.json", {"hub-source": "gp-cabinet-1"}) != []


def test_rejected_receipt_without_error_fails() -> None:
    """A receipt with status rejected and error null is invalid (the schema can fail)."""
    document = receipt(Rejected(ErrorCode.FHIR_INVALID, "detail", "src", None), ORIGIN, at=AT)
    document["error"] = None
    assert schema_errors("receipt.schema.json", document) != []


def test_accepted_receipt_with_error_fails() -> None:
    """A receipt with status accepted and an error, or an unknown field, is invalid."""
    document = receipt(Accepted("src", "m1", (_event(),)), ORIGIN, at=AT)
    assert schema_errors(
        "receipt.schema.json", {**document, "error": {"code": "fhir.invalid", "detail": "x"}}
    )
    assert schema_errors("receipt.schema.json", {**document, "extra": 1})


def test_pathway_event_with_bad_fields_fails() -> None:
    """A pathway event with a non-network patient id or a local-time instant is invalid."""
    assert schema_errors("pathway-event.schema.json", _event(patient_id="12345").to_dict())
    assert schema_errors(
        "pathway-event.schema.json", _event(occurred_at="2024-05-01T10:30:00+02:00").to_dict()
    )
