"""The shared medical secret and consent, as pure functions the share stage calls.

Per pathway event: :func:`apply` it to the patient's :class:`PatientShareState` (a refused Consent
gives :class:`ConsentRejected` and an :func:`audit_consent_rejected` record), then for each
recipient :func:`decide` and send :func:`recipient_copy` when permitted; one :func:`audit_decisions`
records every recipient's decision about the event.
"""

from hub.consent.audit import audit_consent_rejected, audit_decisions, audit_reject, share_decisions
from hub.consent.minimise import recipient_copy
from hub.consent.policy import POLICY_VERSION, Decision, FinalDecision, PolicyConfig, decide, load_policy
from hub.consent.recipients import Recipient, RecipientRegistry, load_recipients
from hub.consent.state import (
    CONSENT_UNINTERPRETABLE,
    ConsentRejected,
    PatientShareState,
    StateUpdate,
    apply,
)

__all__ = [
    "CONSENT_UNINTERPRETABLE",
    "POLICY_VERSION",
    "ConsentRejected",
    "Decision",
    "FinalDecision",
    "PatientShareState",
    "PolicyConfig",
    "Recipient",
    "RecipientRegistry",
    "StateUpdate",
    "apply",
    "audit_consent_rejected",
    "audit_decisions",
    "audit_reject",
    "decide",
    "load_policy",
    "load_recipients",
    "recipient_copy",
    "share_decisions",
]
