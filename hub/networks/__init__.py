"""Care networks and eligibility, as pure functions the eligibility stage calls.

Per pathway event: :func:`apply_event` it to the patient's :class:`PatientFacts` (after a
``patient.linked`` event, merge the :func:`replaced_patient_ids`' facts in), then
:func:`new_findings` over the :class:`NetworkRegistry` from :func:`load_networks` (or
:func:`reload`), and :func:`hub.alerts.build_alert` for each finding and each of the patient's GPs.
"""

from hub.networks.criteria import Criterion, Match, Reason, Territory, parse_criterion
from hub.networks.eligibility import Finding, evaluate, new_findings
from hub.networks.facts import PatientFacts, apply_event, replaced_patient_ids
from hub.networks.registry import (
    CoordinationTeam,
    Network,
    NetworkRegistry,
    load_networks,
    parse_network,
    reload,
)

__all__ = [
    "CoordinationTeam",
    "Criterion",
    "Finding",
    "Match",
    "Network",
    "NetworkRegistry",
    "PatientFacts",
    "Reason",
    "Territory",
    "apply_event",
    "evaluate",
    "load_networks",
    "new_findings",
    "parse_criterion",
    "parse_network",
    "reload",
    "replaced_patient_ids",
]
