"""The machine-readable contract (schemas/) agrees with the code that produces and reads it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.R4B.auditevent import AuditEvent
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from hub.consent import policy as rules
from hub.consent.audit import audit_consent_rejected, audit_decisions, audit_reject, audit_releases
from hub.consent.minimise import recipient_copy
from hub.consent.policy import POLICY_VERSION, Decision, FinalDecision, PolicyConfig
from hub.consent.recipients import FINESS_SYSTEM, Identifier, Recipient, RecipientRegistry, Subscription
from hub.consent.share import ShareStage
from hub.consent.state import ConsentRejected, PatientShareState
from hub.crypto.erase import ErasureReport, audit_erasure
from hub.errors import ErrorCode, WarningCode
from hub.identity.stage import IdentityStage, input_record, link_record, linked_event
from hub.ingest.outcome import (
    MAX_WARNINGS,
    Accepted,
    IdentityLink,
    IngestWarning,
    KafkaCoordinates,
    Rejected,
    bounded_warnings,
)
from hub.ingest.receipts import dlq_headers, receipt
from hub.ingest.signature import sign
from hub.normalise.time import utc_iso
from hub.ops.dlq import DlqEntry, audit_replay
from hub.pathway.event import PathwayEvent, event_id_for
from hub.pathway.network_id import NETWORK_ID_SYSTEM, PatientKey
from hub.schemas import SCHEMAS_DIR, schema_errors
from hub.sources.keys import Rotation, audit_key_rotation
from hub.streams.routing import IdentityRouter, ShareRouter
from hub.topics import (
    AUDIT,
    CONTRACT_TOPICS,
    INGEST,
    INTERNAL_TOPICS,
    RECIPIENT_PATHWAY_TEMPLATE,
    SHARE_MERGE,
    SOURCE_RECEIPTS_TEMPLATE,
    TopicNames,
)

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
        "patient.erased",
        "hub.internal_error",
    }
)

AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
ORIGIN = KafkaCoordinates(INGEST, 3, 42)
KEY = b"k" * 32
#: Where asyncapi.yaml sits for $ref resolution: beside the JSON Schemas, whose $id share this base.
ASYNCAPI_URI = "https://hub.example.org/schemas/asyncapi.yaml"
POLICY = "hub-secret-partage@2026-12-06.1"
HOSPITAL = Recipient(
    id="demo-hospital-chu",
    kind="hospital",
    organization=Identifier(FINESS_SYSTEM, "690999990"),
    kafka_principal="User:demo-hospital-chu",
    subscription=Subscription(kinds=("*",), fields="summary"),
)


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


def _payload_validator(message: str) -> Draft202012Validator:
    """A validator for the payload schema of ``components.messages.<message>`` in asyncapi.yaml.

    Inline schemas there use ``#/components/...`` and ``./<file>.schema.json`` refs, so the whole
    document and every JSON Schema in schemas/ are registered, the document beside the files.
    """
    files = [json.loads(path.read_text(encoding="utf-8")) for path in JSON_SCHEMAS]
    registry: Registry[Any] = Registry().with_resources(
        [(ASYNCAPI_URI, DRAFT202012.create_resource(_asyncapi()))]
        + [(schema["$id"], DRAFT202012.create_resource(schema)) for schema in files if "$id" in schema]
    )
    pointer = f"{ASYNCAPI_URI}#/components/messages/{message}/payload/schema"
    return Draft202012Validator({"$ref": pointer}, registry=registry)


def _payload_errors(message: str, document: Any) -> list[str]:
    return [error.message for error in _payload_validator(message).iter_errors(document)]


def _decision(verdict: Any, rule: str, reason: str = "because") -> FinalDecision:
    return FinalDecision(verdict, rule, reason, POLICY, POLICY_VERSION, (Decision(verdict, rule, reason),))


def _event(**overrides: Any) -> PathwayEvent:
    patient_id = PatientKey("ins", "urn:oid:1.2.250.1.213.1.4.8", "1840512345678").network_id(KEY)
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
    """The channel addresses of asyncapi.yaml are hub.topics' contract and internal topics plus the
    recipient and source-receipt templates."""
    addresses = {channel["address"] for channel in _asyncapi()["channels"].values()}
    templates = {RECIPIENT_PATHWAY_TEMPLATE, SOURCE_RECEIPTS_TEMPLATE}
    assert addresses == set(CONTRACT_TOPICS) | set(INTERNAL_TOPICS) | templates


def test_asyncapi_internal_channels_say_so() -> None:
    """Each internal topic's channel says it is not for outside consumers, and so do its messages,
    whose payload schemas are inline (no file of the public contract describes them)."""
    document = _asyncapi()
    internal = [c for c in document["channels"].values() if c["address"] in INTERNAL_TOPICS]
    assert len(internal) == len(INTERNAL_TOPICS)
    for channel in internal:
        assert "internal: not for outside consumers" in channel["description"].lower()
        for ref in channel["messages"].values():
            message = document["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
            assert "internal: not for outside consumers" in message["description"].lower()
            assert "$ref" not in message["payload"]["schema"]


def test_asyncapi_recipient_channel_declares_its_parameter() -> None:
    """The per-recipient channel declares the {recipient} parameter its address uses."""
    channels = _asyncapi()["channels"].values()
    (channel,) = [c for c in channels if c["address"] == RECIPIENT_PATHWAY_TEMPLATE]
    assert set(channel["parameters"]) == {"recipient"}


def test_asyncapi_source_receipts_channel_declares_its_parameter_and_carries_the_receipt() -> None:
    """hub.receipts.{source}.v1 declares {source} and carries the same receipt message as hub.receipts.v1."""
    channels = {c["address"]: c for c in _asyncapi()["channels"].values()}
    channel = channels[SOURCE_RECEIPTS_TEMPLATE]
    assert set(channel["parameters"]) == {"source"}
    assert channel["messages"] == channels["hub.receipts.v1"]["messages"]


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
    """Every code ingest can reject with (ErrorCode but config.*, broker.*, consent.*, crypto.*, keys.*,
    audit.*) is in both schemas."""
    raised_or_audited = ("config.", "broker.", "consent.", "crypto.", "keys.", "audit.")
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


WARNINGS = (
    IngestWarning(
        WarningCode.INS_UNQUALIFIED,
        "Patient.identifier: an INS is not used to link: the Patient has no identity reliability VALI",
    ),
    IngestWarning(WarningCode.CODE_UNMAPPED, "Condition: 1 code of urn:test:gp:condition, not in …"),
)


def test_warning_codes_in_the_schema_are_the_warning_codes() -> None:
    """The receipt schema lists every WarningCode, in the same order (most important first)."""
    listed = _schema("receipt.schema.json")["$defs"]["warning"]["properties"]["code"]["enum"]
    assert listed == [str(code) for code in WarningCode]


def test_every_warning_code_is_documented_with_what_to_do() -> None:
    """docs/INGEST.md's Warnings table has one row per WarningCode: what was ignored, what to do."""
    text = (SCHEMAS_DIR.parent / "docs" / "INGEST.md").read_text(encoding="utf-8")
    section = text.partition("\n## Warnings\n")[2].partition("\n## ")[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    assert [row[0].strip("| `") for row in rows] == [str(code) for code in WarningCode]
    assert all(len(row) == 3 and all(cell.strip(" |") for cell in row) for row in rows)


def test_receipts_with_warnings_match_schema() -> None:
    """Accepted and duplicate receipts with warnings validate, through asyncapi.yaml's receipt message
    too; a reject with warnings, an unknown code, an unbounded list or an extra field does not. A receipt
    of an older hub, without the field, is still valid: the field is new, never required."""
    outcome = Accepted("src", "m1", (_event(),), warnings=WARNINGS)
    accepted = receipt(outcome, ORIGIN, at=AT)
    assert accepted["warnings"] == [warning.as_dict() for warning in WARNINGS]
    duplicate = receipt(outcome, ORIGIN, at=AT, status="duplicate", warnings=accepted["warnings"])
    many = bounded_warnings(
        IngestWarning(WarningCode.CODE_SYSTEM_UNKNOWN, f"Observation: 1 code of urn:test:{n}")
        for n in range(40)
    )
    full = receipt(Accepted("src", "m1", (), warnings=many), ORIGIN, at=AT)
    for document in (accepted, duplicate, full):
        assert schema_errors("receipt.schema.json", document) == []
        assert _payload_errors("receipt", document) == []
    assert len(full["warnings"]) == MAX_WARNINGS + 1
    assert schema_errors("receipt.schema.json", {k: v for k, v in accepted.items() if k != "warnings"}) == []
    rejected = receipt(Rejected(ErrorCode.FHIR_INVALID, "detail", "src", None), ORIGIN, at=AT)
    assert rejected["warnings"] == []
    invalid = [
        {**rejected, "warnings": accepted["warnings"]},
        {**accepted, "warnings": [{"code": "ins.unknown", "detail": "x"}]},
        {**accepted, "warnings": [{"code": "ins.unqualified", "detail": ""}]},
        {**accepted, "warnings": [{**accepted["warnings"][0], "value": "1840512345678"}]},
        {**full, "warnings": [*full["warnings"], accepted["warnings"][0]]},
    ]
    for document in invalid:
        assert schema_errors("receipt.schema.json", document) != [], document["warnings"]


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


def _released_as_written_before(audit: dict[str, Any], released_by: str) -> dict[str, Any]:
    """A late release as hubs before session 18 wrote it (still on their topics): a share-decisions
    AuditEvent whose event entity carries the detail ``released_by``."""
    event, *rest = audit["entity"]
    details = [*event["detail"], {"type": "released_by", "valueString": released_by}]
    return {**audit, "entity": [{**event, "detail": details}, *rest]}


AUDIT_CASES = {
    "permit": lambda: audit_decisions(
        [(HOSPITAL, _decision("permit", rules.CARE_TEAM, "the recipient is the patient's declared GP"))],
        event=_event().to_dict(),
        recorded=AT,
    ),
    "late release": lambda: _released_as_written_before(
        audit_decisions(
            [(HOSPITAL, _decision("permit", rules.CARE_TEAM, "the recipient is the patient's declared GP"))],
            event=_event().to_dict(),
            recorded=AT,
        ),
        "00000000-0000-5000-8000-000000000002",
    ),
    "late releases of one event": lambda: audit_releases(
        [
            (_event().to_dict(), [(HOSPITAL, _decision("permit", rules.CARE_TEAM, "in the care team"))]),
            (
                _event(event_id="00000000-0000-5000-8000-000000000003").to_dict(),
                [(HOSPITAL, _decision("permit", rules.EXPLICIT_CONSENT, "the patient consents"))],
            ),
        ],
        released_by="00000000-0000-5000-8000-000000000002",
        recorded=AT,
    )[0],
    "deny": lambda: audit_decisions(
        [(HOSPITAL, _decision("deny", rules.OBJECTION, "the patient objects to sharing with everyone"))],
        event=_event().to_dict(),
        recorded=AT,
    ),
    "unknown recipient": lambda: audit_decisions(
        [
            (
                "gone-recipient",
                _decision("deny", rules.DENY_BY_DEFAULT, "unknown recipient: not in the recipient registry"),
            )
        ],
        event=_event().to_dict(),
        recorded=AT,
    ),
    "unreadable event": lambda: audit_decisions(
        [(HOSPITAL, _decision("deny", rules.DENY_BY_DEFAULT, "the event envelope cannot be read"))],
        event={"kind": 3},
        recorded=AT,
    ),
    "consent rejected": lambda: audit_consent_rejected(
        ConsentRejected("provision.period.end is before its start"),
        event=_event(kind="consent").to_dict(),
        recorded=AT,
    ),
    "ingest reject": lambda: audit_reject(
        Rejected(ErrorCode.SIGNATURE_INVALID, "HMAC does not match", "lab-biomed", "lab-biomed-000042"),
        origin=ORIGIN,
        recorded=AT,
    ),
    "reject of an unregistered source": lambda: audit_reject(
        Rejected(ErrorCode.SOURCE_UNKNOWN, "hub-source is not registered"), origin=ORIGIN, recorded=AT
    ),
}


@pytest.mark.parametrize("case", AUDIT_CASES)
def test_audit_events_match_schema_and_fhir(case: str) -> None:
    """Every AuditEvent hub.consent.audit builds validates against audit-event.schema.json, against
    the auditEvent message of asyncapi.yaml, and as a FHIR AuditEvent."""
    audit = AUDIT_CASES[case]()
    assert schema_errors("audit-event.schema.json", audit) == []
    assert _payload_errors("auditEvent", audit) == []
    AuditEvent.model_validate(audit)


ADMINISTRATION_CASES: dict[str, Any] = {
    "dlq replay": lambda: audit_replay(
        DlqEntry("hub.dlq.v1/0/7", str(ORIGIN), "lab-biomed", "m-1", "source.unknown", "not registered", "t"),
        replayed_to=KafkaCoordinates("hub.ingest.v1", 1, 42),
        recorded=AT,
    ),
    "key rotation": lambda: audit_key_rotation(
        Rotation("gp-a", "file", "/k", AT, "0123456789abcdef", "fedcba9876543210"),
        operator="alice",
        recorded=AT,
    ),
    "patient erasure": lambda: audit_erasure(
        ErasureReport(["pt-one", "pt-two"], 2, 1, 3, 0), requested_by="dpo", recorded=AT
    ),
}


@pytest.mark.parametrize("case", ADMINISTRATION_CASES)
def test_administration_acts_match_the_audit_schema(case: str) -> None:
    """The operator commands' AuditEvents (replay, key rotation, erasure) are administration acts of
    audit-event.schema.json, and FHIR AuditEvents; one can neither claim failure nor pose as a share."""
    audit = ADMINISTRATION_CASES[case]()
    assert schema_errors("audit-event.schema.json", audit) == []
    AuditEvent.model_validate(audit)
    assert schema_errors("audit-event.schema.json", {**audit, "outcome": "4"})
    share = [{"system": "urn:hub:audit-event-subtype", "code": "share-decisions"}]
    assert schema_errors("audit-event.schema.json", {**audit, "subtype": share})


def test_audit_schema_can_fail() -> None:
    """An outcome contradicting the verdict, a missing rule, or a patient named by INS is invalid."""
    permit = AUDIT_CASES["permit"]()
    assert schema_errors("audit-event.schema.json", {**permit, "outcome": "4"})
    event, entity, patient = permit["entity"]
    no_rule = {**entity, "detail": [d for d in entity["detail"] if d["type"] != "rule"]}
    assert schema_errors("audit-event.schema.json", {**permit, "entity": [event, no_rule, patient]})
    assert schema_errors("audit-event.schema.json", {**permit, "entity": [event, patient]}), "no decision"
    by_ins = {
        **patient,
        "what": {
            "type": "Patient",
            "identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "184051234567812"},
        },
    }
    assert schema_errors("audit-event.schema.json", {**permit, "entity": [event, entity, by_ins]})
    reject = AUDIT_CASES["ingest reject"]()
    assert schema_errors("audit-event.schema.json", {**reject, "outcome": "0"})
    releases = AUDIT_CASES["late releases of one event"]()
    assert schema_errors("audit-event.schema.json", {**releases, "outcome": "4"}), "a release is sent"
    patient_only = [e for e in releases["entity"] if e["role"]["code"] != "16"]
    assert schema_errors("audit-event.schema.json", {**releases, "entity": patient_only}), "no recipient"


def test_audit_schema_knows_every_rule_and_reject_code() -> None:
    """The schema's rule names are the policy's, and its ingest-reject codes the receipts' codes."""
    defs = _schema("audit-event.schema.json")["$defs"]
    detail_rules = defs["recipientDecisionEntity"]["properties"]["detail"]["items"]["allOf"]
    (rule_enum,) = [
        rule["then"]["properties"]["valueString"]["enum"]
        for rule in detail_rules
        if rule["if"]["properties"]["type"]["const"] == "rule"
    ]
    policy_rules = {
        rules.DENY_BY_DEFAULT, rules.STATE_UNAVAILABLE, rules.OBJECTION, rules.CARE_TEAM,
        rules.EXPLICIT_CONSENT, rules.PRODUCER_ORGANIZATION, rules.SENSITIVITY, rules.SUBSCRIPTION_FILTER,
    }  # fmt: skip
    assert set(rule_enum) == policy_rules
    code = defs["kafkaRecordEntity"]["properties"]["detail"]["prefixItems"][0]
    assert set(code["properties"]["valueString"]["enum"]) == INGEST_REJECT_CODES


def test_recipient_copy_matches_schema_and_carries_the_decision() -> None:
    """recipient_copy(...) validates against pathway-event.schema.json and the recipient message of
    asyncapi.yaml, with its decision; the unified topic's message refuses it (no decision there)."""
    event = _event().to_dict()
    copy = recipient_copy(event, HOSPITAL, _decision("permit", rules.CARE_TEAM))
    assert copy["decision"] == {"basis": rules.CARE_TEAM, "policy": POLICY, "policy_version": POLICY_VERSION}
    assert schema_errors("pathway-event.schema.json", copy) == []
    assert _payload_errors("recipientPathwayEvent", copy) == []
    assert _payload_errors("recipientPathwayEvent", event) != []
    assert _payload_errors("pathwayEvent", event) == []
    assert _payload_errors("pathwayEvent", copy) != []


def test_identity_records_match_the_inline_schemas() -> None:
    """input_record(...) and link_record(...) (carrying its input) validate against their inline
    asyncapi.yaml schemas, as do the inputs the identity stage sends on from a link (``linked`` the
    link's own fields, or null), and the patient.linked event it makes from a link is a valid
    pathway event."""
    local_id = PatientKey("local", "urn:hub:demo:gp:patient", "GP1-000001").network_id(KEY)
    event = _event()
    identity_link = IdentityLink(local_id, event.patient_id)
    outcome = Accepted(
        "lab-biomed", "m1", (event,), patient_id=event.patient_id, link=identity_link, warnings=WARNINGS
    )
    record = input_record(outcome, ORIGIN, AT)
    assert record["type"] == "input"
    assert record["warnings"] == [warning.as_dict() for warning in WARNINGS]
    assert _payload_errors("identityInput", record) == []
    assert _payload_errors("identityInput", {k: v for k, v in record.items() if k != "warnings"}) == []
    assert _payload_errors("identityInput", {**record, "warnings": [{"code": "x", "detail": "y"}]}) != []
    assert _payload_errors("identityInput", {**record, "events": []}) != []
    assert _payload_errors("identityInput", {**record, "type": "link"}) != []
    link = json.loads(json.dumps(link_record(identity_link, outcome, ORIGIN, AT)))
    assert link["input"] == json.loads(json.dumps(record))
    assert _payload_errors("identityLink", link) == []
    assert _payload_errors("identityLink", {**link, "ins_id": "1840512345678"}) != []
    assert _payload_errors("identityLink", {k: v for k, v in link.items() if k != "input"}) != []
    assert _payload_errors("identityLink", {**link, "input": {**record, "linked": None}}) != []
    stage = IdentityStage({}, {}, {})
    [first] = stage.handle(link)
    # The same link from a later ingest record (read again from the same record, it is announced again).
    later = {**link["ingest"], "offset": link["ingest"]["offset"] + 1}
    [again] = stage.handle({**link, "ingest": later, "input": {**link["input"], "ingest": later}})
    announced = first.value["linked"]
    assert (announced["local_id"], again.value["linked"]) == (local_id, None)
    assert _payload_errors("identityInput", first.value) == []
    assert _payload_errors("identityInput", again.value) == []
    assert _payload_errors("identityInput", {**record, "linked": link}) != []
    assert _payload_errors("identityInput", {**record, "linked": {**announced, "ins_id": "x"}}) != []
    linked = linked_event(announced).to_dict()
    assert linked["kind"] == "patient.linked"
    assert _payload_errors("pathwayEvent", linked) == []


def share_stage(states: dict[str, Any]) -> ShareStage:
    """A share stage without recipients, on ``states`` (its merges and hand-overs are what is checked)."""
    return ShareStage(
        RecipientRegistry({}),
        PolicyConfig(id="hub-secret-partage", version="1", recency=timedelta(days=90), sensitive_codes={}),
        states,
        topic_prefix="",
        audit_topic=AUDIT,
        merge_topic=SHARE_MERGE,
    )


def test_share_merge_records_match_the_inline_schemas() -> None:
    """The share stage's merge request (on patient.linked) and its answer validate against their
    inline asyncapi.yaml schemas."""
    local_id = PatientKey("local", "urn:hub:demo:gp:patient", "GP1-000001").network_id(KEY)
    event = _event()
    outcome = Accepted("lab-biomed", "m1", (event,), patient_id=event.patient_id)
    linked = linked_event(link_record(IdentityLink(local_id, event.patient_id), outcome, ORIGIN, AT))
    states: dict[str, Any] = {local_id: PatientShareState.empty(local_id).to_json()}
    stage = share_stage(states)
    (request,) = [s for s in stage.handle(linked.to_dict(), now=AT) if s.topic == SHARE_MERGE]
    assert request.key == local_id
    assert _payload_errors("shareMergeRequest", request.value) == []
    (answer,) = stage.handle_merge(request.value)
    assert answer.key == event.patient_id
    assert _payload_errors("shareMergeState", answer.value) == []
    assert _payload_errors("shareMergeState", {**answer.value, "state": None}) == []
    assert _payload_errors("shareMergeState", {**answer.value, "state": "corrupt"}) != []
    # A pathway event of the local id decided after the hand-over goes on to the surviving id.
    late = _event(patient_id=local_id).to_dict()
    (forward,) = stage.handle(late, now=AT)
    assert (forward.topic, forward.key) == (SHARE_MERGE, event.patient_id)
    assert _payload_errors("shareMergeEvent", forward.value) == []
    assert _payload_errors("shareMergeEvent", {**forward.value, "forwarded": 5}) != []


def test_an_input_sent_on_with_a_link_carries_a_hand_over_that_matches_its_inline_schema() -> None:
    """The identity agent sends the input of a newly recorded link on to the INS-based id with the
    share stage's hand-over of the local id (hub.streams.routing.IdentityRouter): valid as written,
    with a state or with none."""
    local_id = PatientKey("local", "urn:hub:demo:gp:patient", "GP1-000001").network_id(KEY)
    event = _event()
    outcome = Accepted("lab-biomed", "m1", (event,), patient_id=event.patient_id)
    link = json.loads(json.dumps(link_record(IdentityLink(local_id, event.patient_id), outcome, ORIGIN, AT)))
    states: dict[str, Any] = {local_id: PatientShareState.empty(local_id).to_json()}
    sharing = share_stage(states)
    router = IdentityRouter(IdentityStage({}, {}, {}), TopicNames(""), ShareRouter(sharing))
    [forwarded] = router.route(json.dumps(link).encode())
    record = json.loads(forwarded.value or b"")
    assert record["handover"]["state"] == states[local_id]
    assert _payload_errors("identityInput", record) == []
    unseen = PatientKey("local", "urn:hub:demo:gp:patient", "GP1-000009").network_id(KEY)
    nothing = sharing.hand_over(unseen, event.patient_id)
    assert (nothing["state"], nothing["waiting"]) == (None, [])
    assert _payload_errors("identityInput", {**record, "handover": nothing}) == []
    assert _payload_errors("identityInput", {**record, "handover": {**nothing, "to": "x"}}) != []
    assert _payload_errors("identityInput", {**record, "handover": {**record["handover"], "state": 1}}) != []
