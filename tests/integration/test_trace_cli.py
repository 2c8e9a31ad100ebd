"""`hub trace` and `hub consent show` on a real broker, against a running worker (issues 4 and 6)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hub.consent.audit import share_decisions
from hub.ingest.signature import sign

from .conftest import FINESS, RECIPIENTS, SYNTHEA_DIR, HubEnv
from .test_share_stage import admission, publish

#: The organisation every test source is registered with (conftest), i.e. the producer of each event.
PRODUCER = {"system": FINESS, "value": "330781196"}
#: A recipient of the producing organisation: permitted by `producer_organization`, whoever the patient.
PRODUCER_RECIPIENT = {
    "id": "synthea-org",
    "kind": "hospital",
    "organization": PRODUCER,
    "kafka_principal": "User:synthea-org",
    "subscription": {"kinds": ["*"]},
}


def rows(stdout: str) -> dict[str, dict[str, list[str]]]:
    """Decision rows of `hub trace` output: event id -> recipient -> [verdict, rule, version, copy]."""
    found: dict[str, dict[str, list[str]]] = {}
    current = ""
    for line in stdout.splitlines():
        if line.startswith("event "):
            current = line.split()[1]
            found[current] = {}
        elif (
            line.startswith("  ")
            and current
            and len(line.split()) >= 5
            and not line.startswith("  recipient")
        ):
            cells = line.split()
            if cells[1] in ("permit", "deny"):
                found[current][cells[0]] = cells[1:5]
    return found


def wait_for_sharing(
    env: HubEnv,
    events: int,
    recipients: list[dict[str, Any]],
    copies: dict[str, int],
    *,
    released: int = 0,
) -> None:
    """Until the share stage audited every event (one AuditEvent each, every recipient's decision in
    it) and ``released`` late releases (one AuditEvent and one decision each), and the expected
    copies are out."""
    audits = env.collect(env.topics.audit, events + released)
    assert sum(len(share_decisions(r.json_value())) for r in audits) == events * len(recipients) + released
    for recipient, count in copies.items():
        topic = f"{env.topics.prefix}hub.pathway.{recipient}.v1"
        assert len(env.collect(topic, count)) == count


def audited(env: HubEnv) -> dict[tuple[str, str], tuple[str, str]]:
    """(event id, recipient) -> (verdict, rule), from the audit topic itself."""
    decisions = {}
    for record in env.settle(env.topics.audit, quiet=1.0):
        for decision in share_decisions(record.json_value()):
            decisions[(decision["event_id"], decision["recipient"])] = (decision["verdict"], decision["rule"])
    return decisions


def test_trace_shows_each_recipients_decision_and_consent_show_the_state_that_decides(
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    publish(hub_env, admission(), "adm-1")
    [receipt] = [r.json_value() for r in hub_env.collect(hub_env.topics.receipts, 1)]
    assert receipt["status"] == "accepted"
    event_ids = receipt["event_ids"]
    # As in test_share_stage: the GP gets the three events, the hospital the stay (the Patient entry
    # by a late release), the outsider nothing.
    wait_for_sharing(hub_env, len(event_ids), list(RECIPIENTS), {"gp-dr-x": 3, "hosp-a": 3}, released=1)
    events = {e["event_id"]: e for e in (r.json_value() for r in hub_env.settle(hub_env.topics.pathway))}
    expected = audited(hub_env)
    condition = next(i for i in event_ids if events[i]["kind"] == "condition")
    patient_id = events[condition]["patient_id"]

    by_event = hub_env.cli("trace", condition)
    assert by_event.returncode == 0, by_event.stdout + by_event.stderr
    shown = rows(by_event.stdout)
    assert list(shown) == [condition]
    for recipient in RECIPIENTS:
        verdict, rule = expected[(condition, recipient["id"])]
        assert shown[condition][recipient["id"]][:2] == [verdict, rule]
        assert shown[condition][recipient["id"]][3] == ("yes" if verdict == "permit" else "no")
    assert shown[condition]["outsider"][:2] == ["deny", "deny_by_default"]
    assert shown[condition]["gp-dr-x"][:2] == ["permit", "care_team"]
    assert "receipt " in by_event.stdout and "accepted" in by_event.stdout and "adm-1" in by_event.stdout

    by_message = hub_env.cli("trace", "--message-id", "adm-1")
    assert by_message.returncode == 0, by_message.stdout + by_message.stderr
    shown = rows(by_message.stdout)
    assert set(shown) == set(event_ids)
    assert {(e, r): cells[:2] for e, by in shown.items() for r, cells in by.items()} == {
        key: list(value) for key, value in expected.items()
    }
    # The same input by its ingest coordinates, and as JSON for scripts.
    ingest = receipt["ingest"]
    by_input = hub_env.cli("trace", "--json", f"{ingest['partition']}/{ingest['offset']}")
    assert by_input.returncode == 0, by_input.stdout + by_input.stderr
    document = json.loads(by_input.stdout)
    assert document["found"] is True
    assert [e["event_id"] for e in document["events"]] == event_ids
    for text in (by_event.stdout, by_message.stdout, by_input.stdout):
        assert "E11.9" not in text and "1948-02-11" not in text, "clinical content printed"

    state = hub_env.cli("consent", "show", patient_id)
    assert state.returncode == 0, state.stdout + state.stderr
    assert f"share state of patient {patient_id}" in state.stdout
    assert "urn:oid:1.2.250.1.71.4.2.1|10009900019" in state.stdout.split("care teams:")[0], "the declared GP"
    involved = state.stdout.split("organisations involved:")[1].split("network enrolments:")[0]
    assert f"encounter {FINESS}|970100228  open" in involved
    assert "consents:\n  none" in state.stdout

    # Unknown ids: exit 1; an id that is no id: exit 2 (usage).
    assert hub_env.cli("trace", "00000000-0000-5000-8000-000000000000").returncode == 1
    unknown = hub_env.cli("trace", "--message-id", "never-sent")
    assert unknown.returncode == 1 and "not found" in unknown.stdout
    assert hub_env.cli("consent", "show", "pt-unknown").returncode == 1
    assert hub_env.cli("trace", "not-an-id").returncode == 2
    assert worker.poll() is None, "the worker died"


def synthea_observation() -> tuple[dict[str, Any], str]:
    """A transaction bundle of one Synthea patient and one of its measurements; and the measurement's name."""
    smallest = min(SYNTHEA_DIR.glob("*.json"), key=lambda path: path.stat().st_size)
    bundle = json.loads(Path(smallest).read_text(encoding="utf-8"))
    patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    observation = next(
        e
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation" and "valueQuantity" in e["resource"]
    )
    resource = {k: v for k, v in observation["resource"].items() if k != "encounter"}
    return (
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [patient, {**observation, "resource": resource}],
        },
        resource["code"]["coding"][0]["display"],
    )


@pytest.fixture
def producer_recipient(hub_env: HubEnv) -> HubEnv:
    """The test's recipients plus one of the producing organisation; set before the worker starts."""
    recipients_file = hub_env.work_dir / "recipients-with-producer.json"
    recipients_file.write_text(
        json.dumps({"recipients": [*RECIPIENTS, PRODUCER_RECIPIENT]}), encoding="utf-8"
    )
    hub_env.environ["HUB_RECIPIENTS_FILE"] = str(recipients_file)
    return hub_env


@pytest.mark.skipif(not SYNTHEA_DIR.is_dir(), reason="the shared Synthea corpus is not beside the project")
def test_trace_follows_one_synthea_observation_from_ingest_to_a_recipient_topic(
    producer_recipient: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    env = producer_recipient  # requested before `worker`: the worker reads the recipients above
    recipients = [*RECIPIENTS, PRODUCER_RECIPIENT]
    bundle, measurement = synthea_observation()
    value = json.dumps(bundle).encode()
    secret = env.source("synthea").secret
    env.send(
        [
            (
                b"synthea-obs-1",
                value,
                [
                    ("hub-source", b"synthea"),
                    ("hub-signature", sign(secret, "synthea", value, int(time.time())).encode()),
                    ("hub-message-id", b"synthea-obs-1"),
                ],
            )
        ]
    )
    [receipt] = [r.json_value() for r in env.collect(env.topics.receipts, 1)]
    assert receipt["status"] == "accepted", receipt
    wait_for_sharing(env, len(receipt["event_ids"]), recipients, {"synthea-org": len(receipt["event_ids"])})
    events = {e["event_id"]: e for e in (r.json_value() for r in env.settle(env.topics.pathway))}
    observation = next(i for i in receipt["event_ids"] if events[i]["kind"] == "observation")

    # From ingest: the input's coordinates, as an operator reads them off a receipt or the ingest log.
    ingest = receipt["ingest"]
    traced = env.cli("trace", f"{ingest['topic']}/{ingest['partition']}/{ingest['offset']}")
    assert traced.returncode == 0, traced.stdout + traced.stderr
    assert "accepted" in traced.stdout and "synthea-obs-1" in traced.stdout
    assert f"event {observation}  observation" in traced.stdout
    shown = rows(traced.stdout)[observation]
    # ... to a recipient topic: the producing organisation's copy is there.
    assert shown["synthea-org"] == ["permit", "producer_organization", shown["synthea-org"][2], "yes"]
    # Synthea patients are in no one else's care team: a deny per recipient, with its rule.
    for recipient in ("hosp-a", "gp-dr-x", "outsider"):
        assert shown[recipient][0] == "deny" and shown[recipient][3] == "no"
        assert shown[recipient][1] == "deny_by_default"
    assert measurement not in traced.stdout, "clinical content printed"

    # Nothing about this patient changes sharing (no GP, no team, no consent): an empty state, which
    # keeps the events the denied recipients wait for (decided again if a basis arrives).
    state = env.cli("consent", "show", events[observation]["patient_id"])
    assert state.returncode == 0, state.stdout + state.stderr
    for section in ("declared GPs", "care teams", "consents"):
        assert f"{section}:\n  none\n" in state.stdout, state.stdout
    assert "events waiting for a basis:\n  2, decided again" in state.stdout, state.stdout
    assert worker.poll() is None, "the worker died"
