"""The per-recipient copy of a permitted event: what the subscription asks for, and why it was sent.

Deciding (hub.consent.policy) is separate from redacting (here): this module never decides whether
an event may go, it only shapes a copy of one that may.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.consent.policy import FinalDecision
from hub.consent.recipients import FieldsLevel, Recipient

#: The envelope of hub.pathway.v1 (schemas/pathway-event.schema.json); anything else is not copied.
ENVELOPE_FIELDS = (
    "event_id",
    "patient_id",
    "kind",
    "occurred_at",
    "recorded_at",
    "source",
    "sensitivity",
    "resource",
    "provenance",
)

#: Free text can name anyone and say anything, and the hub labels structured data only: the
#: narrative, contained resources (often a whole Patient) and notes stay home unless asked for.
FREE_TEXT_FIELDS = ("text", "contained", "note")

#: What a summary keeps: what the fact is, its status, its dates and its value.
SUMMARY_FIELDS = frozenset(
    {
        "resourceType", "id", "identifier", "status", "intent", "clinicalStatus",
        "verificationStatus", "category", "class", "type", "code", "subject", "patient",
        "period", "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued",
        "onsetDateTime", "onsetPeriod", "abatementDateTime", "recordedDate", "authoredOn",
        "occurrenceDateTime", "performedDateTime", "performedPeriod", "dateTime",
        "valueQuantity", "valueCodeableConcept", "valueBoolean", "valueInteger", "valueRange",
        "valueRatio", "valueDateTime", "valuePeriod", "interpretation", "medicationCodeableConcept",
    }
)  # fmt: skip


def minimise_resource(resource: Mapping[str, Any], level: FieldsLevel) -> dict[str, Any]:
    """``resource`` at one minimisation level (full, structured or summary): a new top-level dict.

    The values are the event's own, not copies: a recipient copy is encoded as it is made and never
    changed (hub.consent.share), and copying every nested value was a tenth of the share stage's time.
    """
    if level == "full":
        return dict(resource)
    if level == "structured":
        return {name: value for name, value in resource.items() if name not in FREE_TEXT_FIELDS}
    summary = {name: value for name, value in resource.items() if name in SUMMARY_FIELDS}
    meta = resource.get("meta")
    if isinstance(meta, dict) and meta.get("security"):
        # Security labels travel with the data: they tell the recipient how to handle it.
        summary["meta"] = {"security": meta["security"]}
    return summary


def recipient_copy(event: Mapping[str, Any], recipient: Recipient, decision: FinalDecision) -> dict[str, Any]:
    """The value for ``hub.pathway.<recipient>.v1``: the envelope, the minimised resource, the decision.

    It shares its nested values with ``event`` (see :func:`minimise_resource`): encode it, do not
    change it. Raises ValueError for a denied decision: sending one would be a bug in the caller.
    """
    if not decision.permitted:
        raise ValueError(f"a {decision.rule} deny has no recipient copy")
    shared = {name: event[name] for name in ENVELOPE_FIELDS if name in event}
    shared["resource"] = minimise_resource(event["resource"], recipient.subscription.fields)
    shared["decision"] = {
        "basis": decision.rule,
        "policy": decision.policy,
        "policy_version": decision.policy_version,
    }
    return shared
