"""The AuditEvent a sealer writes when it starts a new chain segment (subtype ``audit-chain-break``).

It is the first record of the segment, sealed with the ``hub-audit-break`` header, so what the sealer
found is itself authenticated and kept as long as the audit trail: DICOM 110113 *Security Alert*,
outcome 8 (serious failure), the chain (topic and partition) as entity, and in its details the
reason, where the sealer read, the records it would not chain onto (count, kinds, offsets) and the
authentic record it continues from. Offsets, positions and codes only: no AuditEvent content.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from hub.audit.sealer import Takeover
from hub.consent.audit import COMPONENT_SYSTEM, DCM, SUBTYPE_SYSTEM, audit_id
from hub.normalise.time import utc_iso

CHAIN_BREAK = "audit-chain-break"
#: The Kafka key of a break record (the sealer writes it to the partition it breaks, whatever the key).
BREAK_KEY = b"hub-audit"
#: Names an audit chain: ``<topic>/<partition>``.
AUDIT_CHAIN_SYSTEM = "urn:hub:audit-chain"
#: "The action was not successful due to some kind of major failure": the chain could not be continued.
OUTCOME_SERIOUS_FAILURE = "8"
_SEALER = {"type": "Device", "identifier": {"system": COMPONENT_SYSTEM, "value": "hub-audit"}}


def chain_break_event(
    takeover: Takeover, *, topic: str, chain_key_id: str, recorded: datetime
) -> dict[str, Any]:
    """The AuditEvent of one segment break, from what the sealer found (``takeover``)."""
    unverifiable = takeover.unverifiable
    kinds = Counter(problem.kind for problem in unverifiable)
    offsets = [problem.offset for problem in unverifiable if problem.offset is not None]
    continues = (
        f"seq {takeover.head.seq} at offset {takeover.continues_from_offset}"
        if takeover.continues_from_offset is not None
        else "no authentic record: a new segment at seq " + str(takeover.head.seq + 1)
    )
    details = [
        {"type": "reason", "valueString": takeover.break_reason or "unknown"},
        {"type": "partition", "valueString": str(takeover.partition)},
        {"type": "read_from_offset", "valueString": str(takeover.read_from)},
        {"type": "end_offset", "valueString": str(takeover.end)},
        {"type": "unverifiable_records", "valueString": str(len(unverifiable))},
        {"type": "chain_key_id", "valueString": chain_key_id},
        {"type": "segment_starts_at_seq", "valueString": str(takeover.head.seq + 1)},
    ]
    if kinds:
        details.append(
            {
                "type": "kinds",
                "valueString": ",".join(f"{kind}={count}" for kind, count in sorted(kinds.items())),
            }
        )
    if offsets:
        details.append({"type": "first_unverifiable_offset", "valueString": str(min(offsets))})
        details.append({"type": "last_unverifiable_offset", "valueString": str(max(offsets))})
    if takeover.continues_from_offset is not None:
        details.append({"type": "continues_from_seq", "valueString": str(takeover.head.seq)})
        details.append({"type": "continues_from_offset", "valueString": str(takeover.continues_from_offset)})
    return {
        "resourceType": "AuditEvent",
        "id": audit_id(
            CHAIN_BREAK,
            topic,
            str(takeover.partition),
            str(takeover.read_from),
            str(takeover.end),
            takeover.break_reason or "",
        ),
        "type": {"system": DCM, "code": "110113", "display": "Security Alert"},
        "subtype": [{"system": SUBTYPE_SYSTEM, "code": CHAIN_BREAK}],
        "action": "E",
        "recorded": utc_iso(recorded),
        "outcome": OUTCOME_SERIOUS_FAILURE,
        "outcomeDesc": f"{topic} partition {takeover.partition}: {len(unverifiable)} record(s) the sealer "
        f"could not verify ({takeover.break_reason}); the chain goes on in a new segment from {continues}",
        "agent": [
            {
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "who": _SEALER,
                "requestor": False,
            }
        ],
        "source": {
            "observer": _SEALER,
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": [
            {
                "what": {
                    "identifier": {"system": AUDIT_CHAIN_SYSTEM, "value": f"{topic}/{takeover.partition}"}
                },
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "13",
                    "display": "Security Resource",
                },
                "detail": details,
            }
        ],
    }
