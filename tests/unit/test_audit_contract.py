"""What the sealing stage writes matches schemas/asyncapi.yaml and audit-event.schema.json: chain headers
(format 2), checkpoints with their offset, segment-break AuditEvents, audit keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.auditevent import AuditEvent
from jsonschema import Draft202012Validator, FormatChecker

from hub.audit.chain import ChainHead, encode_checkpoint, seal, unsigned_checkpoint
from hub.audit.chainkey import ChainKey
from hub.audit.events import chain_break_event
from hub.audit.sealer import Takeover
from hub.audit.signing import CheckpointSigner
from hub.audit.verify import FORGED, REPLAYED, Problem
from hub.schemas import SCHEMAS_DIR, schema_errors
from hub.sources.keys import Rotation, audit_key_rotation
from hub.topics import AUDIT, AUDIT_CHECKPOINTS, AUDIT_UNSEALED, INTERNAL_TOPICS

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KEY = ChainKey(bytes(range(32)))


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
    """The chain headers of the first record, a later one and a segment break validate; a record without
    them, or with the unkeyed format-1 headers only, does not."""
    schema = message("auditEvent")["headers"]["schema"]
    first = seal(ChainHead.genesis(), 0, b"pt-x", b"{}", KEY)
    later = seal(ChainHead(41, "ab" * 32), 0, None, b"{}", KEY)
    breaking = seal(ChainHead(41, "ab" * 32), 0, b"hub-audit", b"{}", KEY, break_reason="record.forged")
    for sealed in (first, later, breaking):
        assert validate(schema, {k: v.decode() for k, v in sealed.headers}) == []
    assert validate(schema, {}) != []
    legacy = {"hub-audit-seq": "1", "hub-audit-prev": "0" * 64, "hub-audit-hash": "ab" * 32}
    assert validate(schema, legacy) != []


def test_a_signed_checkpoint_matches_its_schema() -> None:
    """The JSON the sealing stage writes to hub.audit-checkpoints.v1 validates against asyncapi.yaml."""
    signer = CheckpointSigner(Ed25519PrivateKey.generate())
    head = seal(ChainHead.genesis(), 2, b"k", b"v", KEY).head
    checkpoint = signer.sign(unsigned_checkpoint(2, head, at=AT, key_id=signer.key_id, offset=17))
    document = json.loads(encode_checkpoint(checkpoint))
    assert document["offset"] == 17
    schema = message("auditCheckpoint")["payload"]["schema"]
    assert validate(schema, document) == []
    assert validate(schema, {**document, "seq": 0}) != []
    assert validate(schema, {**document, "offset": -1}) != []
    without_offset = {k: v for k, v in document.items() if k != "offset"}
    assert validate(schema, without_offset) == [], "checkpoints of earlier hubs have no offset"


def test_a_segment_break_audit_event_matches_the_audit_schemas_and_fhir() -> None:
    """What a sealer writes when it will not chain onto a tail: a FHIR R4 AuditEvent, a chainBreak of
    audit-event.schema.json, with offsets and kinds only."""
    linked = Takeover(
        3,
        ChainHead(12, "ab" * 32),
        FORGED,
        11,
        0,
        14,
        (Problem(FORGED, 3, 12, "x"), Problem(REPLAYED, 3, 13, "y")),
    )
    unlinked = Takeover(0, ChainHead(40, "0" * 64), FORGED, None, 9, 10, (Problem(FORGED, 0, 9, "z"),))
    for takeover in (linked, unlinked):
        event = chain_break_event(takeover, topic="t.hub.audit.v1", chain_key_id=KEY.key_id, recorded=AT)
        AuditEvent.model_validate(event)
        assert schema_errors("audit-event.schema.json", event) == []
    details = {
        d["type"]: d["valueString"]
        for d in chain_break_event(linked, topic="t", chain_key_id=KEY.key_id, recorded=AT)["entity"][0][
            "detail"
        ]
    }
    assert details["kinds"] == "record.forged=1,record.replayed=1"
    assert (details["first_unverifiable_offset"], details["last_unverifiable_offset"]) == ("12", "13")
    assert (details["continues_from_seq"], details["segment_starts_at_seq"]) == ("12", "13")
    assert (
        chain_break_event(linked, topic="t", chain_key_id=KEY.key_id, recorded=AT)["id"]
        == chain_break_event(
            linked, topic="t", chain_key_id=KEY.key_id, recorded=datetime(2027, 1, 1, tzinfo=UTC)
        )["id"]
    ), "a redelivered break has the same id"


def test_the_key_rotation_audit_event_matches_the_audit_schemas() -> None:
    """A key administration AuditEvent is a FHIR R4 AuditEvent with the hub's subtype system.

    It is an administration act of audit-event.schema.json too (tests/unit/test_contract.py).
    """
    rotation = Rotation("gp-a", "file", "/k", AT, "0123456789abcdef", "fedcba9876543210")
    event = audit_key_rotation(rotation, operator="alice", recorded=AT)
    AuditEvent.model_validate(event)
    assert event["subtype"] == [{"system": "urn:hub:audit-event-subtype", "code": "key-rotation"}]
    assert validate(message("unsealedAuditEvent")["payload"]["schema"], event) == []
