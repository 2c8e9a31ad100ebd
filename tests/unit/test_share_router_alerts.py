"""hub.streams.routing.ShareRouter hands each GP practice's copy, and only that, to the eligibility stage.

The alerts are decided from exactly the bytes the practice's topic receives (hub/alerts/stage.py: an
alert must never reveal what the GP may not see), and go after the records of the event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hub.consent.share import Share
from hub.records import Outgoing, decode_json
from hub.streams.routing import ShareRouter

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


class Stage:
    """A share stage that sends one copy to a GP practice, one to a hospital and one AuditEvent."""

    def handle(
        self, event: dict[str, Any], *, now: datetime | None = None, handover: dict[str, Any] | None = None
    ) -> list[Share]:
        return [
            Share("hub.audit-unsealed.v1", "pt-1", {"resourceType": "AuditEvent"}),
            Share("hub.pathway.gp-x.v1", "pt-1", {"event_id": event["event_id"], "for": "gp-x"}),
            Share("hub.pathway.chu.v1", "pt-1", {"event_id": event["event_id"], "for": "chu"}),
        ]

    def handle_merge(self, record: dict[str, Any]) -> list[Share]:
        return [Share("hub.pathway.gp-x.v1", "pt-1", {"event_id": "released", "for": "gp-x"})]


class Alerts:
    """The eligibility router's interface: records the copies it was handed, alerts on a practice's."""

    def __init__(self) -> None:
        self.handed: list[tuple[str, Any]] = []

    def route(self, topic: str, copy: dict[str, Any], *, now: datetime | None = None) -> list[Outgoing]:
        self.handed.append((topic, copy))
        if topic != "hub.pathway.gp-x.v1":
            return []
        return [Outgoing("hub.alerts.v1", b"10009900019", b'{"alert": true}')]


def test_a_practices_copy_makes_its_alerts_after_the_events_records() -> None:
    alerts = Alerts()
    router = ShareRouter(Stage(), alerts)  # type: ignore[arg-type]  # the two interfaces it uses
    sent = router.route({"event_id": "e1", "patient_id": "pt-1"}, now=NOW)
    assert [out.topic for out in sent] == [
        "hub.audit-unsealed.v1",
        "hub.pathway.gp-x.v1",
        "hub.pathway.chu.v1",
        "hub.alerts.v1",
    ]
    gp_copy = next(out for out in sent if out.topic == "hub.pathway.gp-x.v1")
    assert ("hub.pathway.gp-x.v1", decode_json(gp_copy.value or b"")) in alerts.handed
    assert ("hub.pathway.gp-x.v1", {"event_id": "e1", "for": "gp-x"}) in alerts.handed


def test_a_merge_that_releases_a_copy_to_a_practice_alerts_too() -> None:
    router = ShareRouter(Stage(), Alerts())  # type: ignore[arg-type]
    assert [out.topic for out in router.route_merge(b'{"type": "state"}')] == [
        "hub.pathway.gp-x.v1",
        "hub.alerts.v1",
    ]


def test_without_networks_or_practices_nothing_is_added() -> None:
    router = ShareRouter(Stage())  # type: ignore[arg-type]
    assert "hub.alerts.v1" not in [out.topic for out in router.route({"event_id": "e1"}, now=NOW)]
