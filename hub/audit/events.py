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
from hub.audit_vocabulary import (
    APPLICATION_ROLE,
    AUDIT_CHAIN_BREAK,
    AUDIT_CHAIN_SYSTEM,
    AUDIT_COMPONENT,
    OUTCOME_SERIOUS_FAILURE,
    SECURITY_ALERT,
    SECURITY_RESOURCE_ROLE,
    SYSTEM_OBJECT,
    agent,
    audit_event,
    audit_id,
    component,
    detail,
    entity,
    identified,
    observer,
)
from hub.normalise.time import utc_iso

#: The Kafka key of a break record, the sealer's component name (it writes the record to the partition
#: it breaks, whatever the key).
BREAK_KEY = AUDIT_COMPONENT.encode()


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
        detail("reason", takeover.break_reason or "unknown"),
        detail("partition", str(takeover.partition)),
        detail("read_from_offset", str(takeover.read_from)),
        detail("end_offset", str(takeover.end)),
        detail("unverifiable_records", str(len(unverifiable))),
        detail("chain_key_id", chain_key_id),
        detail("segment_starts_at_seq", str(takeover.head.seq + 1)),
    ]
    if kinds:
        details.append(detail("kinds", ",".join(f"{kind}={count}" for kind, count in sorted(kinds.items()))))
    if offsets:
        details.append(detail("first_unverifiable_offset", str(min(offsets))))
        details.append(detail("last_unverifiable_offset", str(max(offsets))))
    if takeover.continues_from_offset is not None:
        details.append(detail("continues_from_seq", str(takeover.head.seq)))
        details.append(detail("continues_from_offset", str(takeover.continues_from_offset)))
    return audit_event(
        id=audit_id(
            AUDIT_CHAIN_BREAK,
            topic,
            str(takeover.partition),
            str(takeover.read_from),
            str(takeover.end),
            takeover.break_reason or "",
        ),
        type=SECURITY_ALERT,
        subtype=AUDIT_CHAIN_BREAK,
        action="E",
        recorded=utc_iso(recorded),
        outcome=OUTCOME_SERIOUS_FAILURE,
        description=f"{topic} partition {takeover.partition}: {len(unverifiable)} record(s) the sealer "
        f"could not verify ({takeover.break_reason}); the chain goes on in a new segment from {continues}",
        agents=[agent(APPLICATION_ROLE, component(AUDIT_COMPONENT), requestor=False)],
        source=observer(AUDIT_COMPONENT),
        entities=[
            entity(
                identified(AUDIT_CHAIN_SYSTEM, f"{topic}/{takeover.partition}"),
                type=SYSTEM_OBJECT,
                role=SECURITY_RESOURCE_ROLE,
                details=details,
            )
        ],
    )
