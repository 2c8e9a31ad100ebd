"""The eligibility stage (hub/alerts/stage.py) when an event is read again after its worker died.

faust sends the ``eligibility-alerted`` table's changelog record as the stage writes it, but the
alert only when the event's processing completes: killed in between, the table says "alerted" for
an alert nobody got. The same event read again re-sends the alerts it made (same alert ids, which
receivers de-duplicate); the same finding reached through any other event still alerts only once.
"""

from __future__ import annotations

from typing import Any

from hub.alerts.stage import EligibilityStage
from hub.consent.recipients import RPPS_SYSTEM, parse_recipients
from hub.networks.registry import NetworkRegistry
from hub.sources.registry import SourceRegistry

from .test_eligibility import (
    DIABETES_NETWORK,
    NOW,
    condition_event,
    network,
    observation_event,
    patient_event,
)

GP_RPPS = "10009900019"
PRACTICES = {
    r.id: r
    for r in parse_recipients(
        {
            "recipients": [
                {
                    "id": "gp-x",
                    "kind": "gp",
                    "organization": {"system": "urn:test:org", "value": "cabinet-x"},
                    "practitioners": [{"system": RPPS_SYSTEM, "value": GP_RPPS}],
                    "kafka_principal": "User:gp-x",
                    "subscription": {"kinds": ["*"]},
                }
            ]
        },
        origin="test",
    )
}


def stage(alerted: dict[str, Any]) -> EligibilityStage:
    diabetes = network(DIABETES_NETWORK)
    return EligibilityStage(
        PRACTICES, NetworkRegistry({diabetes.id: diabetes}), SourceRegistry({}), {}, alerted
    )


def alert_ids(alerts: list[Any]) -> list[str]:
    return [a.value["alert_id"] for a in alerts]


def test_the_event_that_alerted_read_again_alerts_again_with_the_same_alert_id() -> None:
    """Killed after recording the alert, before sending it: the redelivered event sends it again."""
    alerted: dict[str, Any] = {}
    eligibility = stage(alerted)
    eligibility.handle("gp-x", patient_event(), now=NOW)
    eligibility.handle("gp-x", condition_event("c", "E11.9"), now=NOW)
    deciding = observation_event("o", 9.1)
    first = eligibility.handle("gp-x", deciding, now=NOW)  # recorded, then lost with the worker
    assert [a.practitioner for a in first] == [GP_RPPS]
    assert alerted, "the stage records what it alerted"
    again = eligibility.handle("gp-x", deciding, now=NOW)
    assert alert_ids(again) == alert_ids(first)


def test_the_same_finding_through_another_event_still_alerts_once() -> None:
    """Not a redelivery: another event (a later result, the patient again) finds nothing new to say."""
    alerted: dict[str, Any] = {}
    eligibility = stage(alerted)
    for item in (patient_event(), condition_event("c", "E11.9")):
        eligibility.handle("gp-x", item, now=NOW)
    assert eligibility.handle("gp-x", observation_event("o", 9.1), now=NOW)
    assert eligibility.handle("gp-x", observation_event("o2", 9.4), now=NOW) == []
    assert eligibility.handle("gp-x", patient_event("patient-again"), now=NOW) == []


def test_alerts_recorded_before_their_event_was_kept_are_never_sent_again() -> None:
    """An entry of the former layout (finding keys only): no event to match, so alerted once, as then."""
    alerted: dict[str, Any] = {}
    eligibility = stage(alerted)
    for item in (patient_event(), condition_event("c", "E11.9")):
        eligibility.handle("gp-x", item, now=NOW)
    deciding = observation_event("o", 9.1)
    eligibility.handle("gp-x", deciding, now=NOW)
    ((key, value),) = alerted.items()
    alerted[key] = sorted(value)
    assert eligibility.handle("gp-x", deciding, now=NOW) == []
