"""What the sealing stage writes matches schemas/asyncapi.yaml: chain headers, checkpoints, audit keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.auditevent import AuditEvent
from jsonschema import Draft202012Validator, FormatChecker

from hub.audit.chain import ChainHead, encode_checkpoint, seal, unsigned_checkpoint
from hub.audit.signing import CheckpointSigner
from hub.schemas import SCHEMAS_DIR
from hub.sources.keys import Rotation, audit_key_rotation
from hub.topics import AUDIT, AUDIT_CHECKPOINTS, AUDIT_UNSEALED, INTERNAL_TOPICS

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((SCHEMAS_DIR / "asyncapi.yaml").read_text(encoding="utf-8"))
    return document


def message(name: str) -> dict[str, Any]:
    found: dict[str, Any] = asyncapi()["components"]["messages"][name]
    return found


def validate(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    return [error.message for error in validator.iter_errors(instance)]


def test_the_audit_topics_are_declared_where_the_code_writes() -> None:
    """The two new topics are internal channels; hub.audit.v1 stays the contract's."""
    addresses = {c["address"]: c for c in asyncapi()["channels"].values()}
    assert {AUDIT, AUDIT_UNSEALED, AUDIT_CHECKPOINTS} <= set(addresses)
    assert {AUDIT_UNSEALED, AUDIT_CHECKPOINTS} <= set(INTERNAL_TOPICS)
    assert AUDIT not in INTERNAL_TOPICS


def test_sealed_headers_match_the_audit_event_headers_schema() -> None:
    """The chain headers of the first and of a later record validate; a record without them does not."""
    schema = message("auditEvent")["headers"]["schema"]
    first = seal(ChainHead.genesis(), 0, b"pt-x", b"{}")
    later = seal(ChainHead(41, "ab" * 32), 0, None, b"{}")
    for sealed in (first, later):
        assert validate(schema, {k: v.decode() for k, v in sealed.headers}) == []
    assert validate(schema, {}) != []


def test_a_signed_checkpoint_matches_its_schema() -> None:
    """The JSON the sealing stage writes to hub.audit-checkpoints.v1 validates against asyncapi.yaml."""
    signer = CheckpointSigner(Ed25519PrivateKey.generate())
    head = seal(ChainHead.genesis(), 2, b"k", b"v").head
    checkpoint = signer.sign(unsigned_checkpoint(2, head, at=AT, key_id=signer.key_id))
    document = json.loads(encode_checkpoint(checkpoint))
    assert validate(message("auditCheckpoint")["payload"]["schema"], document) == []
    assert validate(message("auditCheckpoint")["payload"]["schema"], {**document, "seq": 0}) != []


def test_the_key_rotation_audit_event_matches_the_audit_schemas() -> None:
    """A key administration AuditEvent is a FHIR R4 AuditEvent with the hub's subtype system.

    It is an administration act of audit-event.schema.json too (tests/unit/test_contract.py).
    """
    rotation = Rotation("gp-a", "file", "/k", AT, "0123456789abcdef", "fedcba9876543210")
    event = audit_key_rotation(rotation, operator="alice", recorded=AT)
    AuditEvent.model_validate(event)
    assert event["subtype"] == [{"system": "urn:hub:audit-event-subtype", "code": "key-rotation"}]
    assert validate(message("unsealedAuditEvent")["payload"]["schema"], event) == []
