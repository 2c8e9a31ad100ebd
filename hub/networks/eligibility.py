"""Whether one patient is followed by, or eligible for, one network: the findings alerts are made of.

A patient **enrolled** in a network (an active EpisodeOfCare it manages) is reported as such,
whatever the criteria and the address say: the GP should know who already follows them. Otherwise a
patient is **eligible** when the network's criteria hold *and* a home address lies in its
territory; without a known address there is no finding. The facts must come only from events the
alert's reader may see (the caller's guarantee), so a finding never reveals anything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from hub.networks.criteria import Context, Reason, ResidenceCriterion
from hub.networks.facts import PatientFacts
from hub.networks.registry import Network

Status = Literal["eligible", "enrolled"]


@dataclass(frozen=True)
class Finding:
    """One network's verdict on one patient, with the reasons an alert shows."""

    network_id: str
    status: Status
    reasons: tuple[Reason, ...]

    @property
    def key(self) -> str:
        """``<network id>|<status>``: what ``already_alerted`` remembers, so one situation alerts once."""
        return f"{self.network_id}|{self.status}"

    def to_json(self) -> dict[str, Any]:
        """``{network, status, reasons}``."""
        return {
            "network": self.network_id,
            "status": self.status,
            "reasons": [reason.to_json() for reason in self.reasons],
        }


def evaluate(network: Network, facts: PatientFacts, *, now: datetime) -> Finding | None:
    """The network's finding for this patient at ``now`` (aware), or None when there is none."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    enrolments = facts.active_enrolments(network.id)
    if enrolments:
        reason = Reason(f"Followed by {network.name}", tuple(e.event_id for e in enrolments))
        return Finding(network.id, "enrolled", (reason,))
    context = Context(now, network.territory)
    residence = ResidenceCriterion().evaluate(facts, context)
    if not residence.matched:
        return None
    match = network.criteria.evaluate(facts, context)
    if not match.matched:
        return None
    reasons = tuple(dict.fromkeys((*match.reasons, *residence.reasons)))
    return Finding(network.id, "eligible", reasons)


def new_findings(
    networks: Iterable[Network], facts: PatientFacts, already_alerted: Set[str], *, now: datetime
) -> list[Finding]:
    """Findings whose :attr:`Finding.key` is not in ``already_alerted``, in the networks' order.

    Keep one ``already_alerted`` set per patient and per alert reader (the GP, or the GP practice
    whose events the facts were built from), and add each key once its alerts are sent.
    """
    found = []
    for network in networks:
        finding = evaluate(network, facts, now=now)
        if finding is not None and finding.key not in already_alerted:
            found.append(finding)
    return found
