"""The alert gateway's state (hub/gateway/store.py) and GP tokens (hub/gateway/tokens.py), on files in a
temporary folder: idempotent alerts, read/dismiss that survive a restart, hash-only tokens."""

from __future__ import annotations

import copy
import json
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ConfigError
from hub.gateway import state_file, tokens_file
from hub.gateway.store import AlertState, AlertStore, InvalidAlert, StoredAlert, StoreEvent, forget_patients
from hub.gateway.tokens import TOKEN_PREFIX, TokenStore, hash_token
from hub.settings import Settings

GP_A = "10009900014"
GP_B = "10009900022"
LOCAL_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.9999"
CLOCK = datetime(2025, 3, 30, 8, 0, tzinfo=UTC)


def make_alert(
    alert_id: str = "alert-1",
    *,
    practitioner: str = GP_A,
    patient_id: str = "np-0001",
    local_id: str = "IPP-1",
    status: str = "eligible",
) -> dict[str, Any]:
    """An alert record as the eligibility stage publishes it on hub.alerts.v1."""
    return {
        "alert_id": alert_id,
        "practitioner": practitioner,
        "patient": {"patient_id": patient_id, "identifiers": [{"system": LOCAL_SYSTEM, "value": local_id}]},
        "network": {"id": "onco-gp", "name": "Réseau d'oncologie de Guadeloupe", "kind": "thematic"},
        "status": status,
        "reasons": [{"criterion": "condition ICD-10 C00-C97", "event_ids": ["ev-1"]}],
        "created_at": "2025-03-30T08:00:00.000Z",
        "card": {
            "uuid": f"card-{alert_id}",
            "summary": "Eligible for the oncology network",
            "indicator": "info",
            "source": {"label": "Réseau d'oncologie de Guadeloupe"},
            "detail": "A cancer diagnosis was recorded at discharge.",
            "links": [
                {"label": "Coordination team", "url": "https://onco.example/contact", "type": "absolute"}
            ],
        },
    }


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the store's file goes (its folder does not exist yet)."""
    return tmp_path / "gateway" / "alerts.sqlite3"


@pytest.fixture
def store(db_path: Path) -> AlertStore:
    """A fresh store on that file, with a fixed clock."""
    return AlertStore(db_path, clock=lambda: CLOCK)


def test_the_same_alert_twice_is_one_alert(store: AlertStore) -> None:
    """Adding the same alert_id again creates nothing: one alert, still new."""
    first = store.add(make_alert())
    again = store.add(make_alert())
    assert first.created is True
    assert again.created is False
    assert [a.alert_id for a in store.alerts(GP_A)] == ["alert-1"]
    assert again.alert.state is AlertState.NEW


def test_read_and_dismiss_survive_a_new_store_on_the_same_file(store: AlertStore, db_path: Path) -> None:
    """Read and dismissed states, with their times, are on disk: a new store object sees them."""
    store.add(make_alert("alert-1"))
    store.add(make_alert("alert-2", patient_id="np-0002", local_id="IPP-2"))
    store.mark_read("alert-1", GP_A)
    store.dismiss("alert-2", GP_A)
    store.close()
    reopened = AlertStore(db_path)
    first, second = reopened.get("alert-1"), reopened.get("alert-2")
    assert first is not None and second is not None
    assert (first.state, first.read_at) == (AlertState.READ, CLOCK)
    assert (second.state, second.dismissed_at) == (AlertState.DISMISSED, CLOCK)
    assert [a.alert_id for a in reopened.alerts(GP_A)] == ["alert-1"]


def test_a_dismissed_alert_stays_dismissed_when_it_arrives_again(store: AlertStore, db_path: Path) -> None:
    """A redelivered (or replayed) copy of a dismissed alert neither revives it nor notifies anyone."""
    store.add(make_alert())
    store.dismiss("alert-1", GP_A)
    heard: list[StoreEvent] = []
    store.listen(lambda event, _alert: heard.append(event))
    updated = make_alert()
    updated["reasons"].append({"criterion": "age >= 75", "event_ids": ["ev-2"]})
    result = store.add(updated)
    assert result.created is False
    assert result.alert.state is AlertState.DISMISSED
    assert heard == []
    assert AlertStore(db_path).alerts(GP_A) == []


def test_a_read_alert_is_not_made_new_again_and_read_after_dismiss_changes_nothing(store: AlertStore) -> None:
    """State only moves forward: new → read → dismissed; a late "read" leaves a dismissed alert alone."""
    store.add(make_alert())
    store.mark_read("alert-1", GP_A)
    store.add(make_alert())
    assert store.alerts(GP_A, unread_only=True) == []
    store.dismiss("alert-1", GP_A)
    after = store.mark_read("alert-1", GP_A)
    assert after is not None and after.state is AlertState.DISMISSED


def test_queries_by_practitioner_and_patient(store: AlertStore) -> None:
    """A GP sees their own alerts only; a patient matches by patient_id or by any identifier value."""
    store.add(make_alert("a-1", patient_id="np-0001", local_id="IPP-1"))
    store.add(make_alert("a-2", patient_id="np-0002", local_id="IPP-2", status="enrolled"))
    store.add(make_alert("b-1", practitioner=GP_B, patient_id="np-0001", local_id="IPP-1"))
    assert [a.alert_id for a in store.alerts(GP_A)] == ["a-1", "a-2"]
    assert [a.alert_id for a in store.alerts(GP_B)] == ["b-1"]
    assert [a.alert_id for a in store.alerts(GP_A, patient="np-0001")] == ["a-1"]
    assert [a.alert_id for a in store.alerts(GP_A, patient="IPP-2")] == ["a-2"]
    assert store.alerts(GP_A, patient="IPP-9") == []
    assert store.alerts(GP_A, patient=LOCAL_SYSTEM) == []
    store.mark_read("a-1", GP_A)
    assert [a.alert_id for a in store.alerts(GP_A, unread_only=True)] == ["a-2"]


def test_forgetting_patients_removes_their_alerts_and_identifiers_only(
    store: AlertStore, db_path: Path
) -> None:
    """hub erase's deletion, on the file beside an open store: the erased patients' alerts go, with the
    identifiers they were found by; another patient's stay; no file, or an empty one, removes nothing."""
    store.add(make_alert("a-1", patient_id="np-0001", local_id="IPP-1"))
    store.add(make_alert("b-1", practitioner=GP_B, patient_id="np-0001", local_id="IPP-1"))
    store.add(make_alert("a-2", patient_id="np-0002", local_id="IPP-2"))
    assert forget_patients(db_path, ["np-0001", "np-0009"]) == 2
    assert [a.alert_id for a in store.alerts(GP_A)] == ["a-2"]
    assert store.alerts(GP_B) == []
    assert store.alerts(GP_A, patient="IPP-1") == []
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT DISTINCT alert_id FROM alert_identifiers").fetchall() == [("a-2",)]
    assert forget_patients(db_path.parent / "absent.sqlite3", ["np-0002"]) == 0
    empty = db_path.parent / "empty.sqlite3"
    sqlite3.connect(empty).close()
    assert forget_patients(empty, ["np-0002"]) == 0


def test_only_the_alerts_own_practitioner_changes_its_state(store: AlertStore) -> None:
    """Another GP's read or dismiss finds nothing and changes nothing; an unknown id finds nothing."""
    store.add(make_alert())
    assert store.mark_read("alert-1", GP_B) is None
    assert store.dismiss("alert-1", GP_B) is None
    assert store.dismiss("no-such-alert", GP_A) is None
    alert = store.get("alert-1")
    assert alert is not None and alert.state is AlertState.NEW


def test_a_copy_naming_another_practitioner_does_not_move_the_alert(store: AlertStore) -> None:
    """alert_id is per practitioner: a record reusing it for another GP cannot take the alert over."""
    store.add(make_alert())
    store.add(make_alert(practitioner=GP_B))
    assert [a.alert_id for a in store.alerts(GP_A)] == ["alert-1"]
    assert store.alerts(GP_B) == []


@pytest.mark.parametrize(
    ("practitioner", "expected"),
    [
        (f"Practitioner/{GP_A}", GP_A),
        ({"rpps": GP_A, "name": "Dr Céleste"}, GP_A),
        ({"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": GP_A}}, GP_A),
    ],
)
def test_practitioner_forms_are_read_as_the_rpps(store: AlertStore, practitioner: Any, expected: str) -> None:
    """A reference, an object with rpps, or an identifier all name the same GP."""
    record = make_alert()
    record["practitioner"] = practitioner
    assert store.add(record).alert.practitioner == expected


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda a: a.pop("alert_id"), "alert_id"),
        (lambda a: a.update(practitioner=""), "practitioner"),
        (lambda a: a["patient"].pop("patient_id"), "patient.patient_id"),
        (lambda a: a["patient"].update(identifiers="IPP-1"), "patient.identifiers"),
        (lambda a: a.pop("card"), "card"),
        (lambda a: a["card"].pop("summary"), "card.summary"),
    ],
)
def test_an_unusable_record_is_refused_naming_the_field(store: AlertStore, change: Any, field: str) -> None:
    """A record missing what the gateway needs is refused with the field's name, and nothing is stored."""
    record = make_alert()
    change(record)
    with pytest.raises(InvalidAlert, match=f"^{field}:"):
        store.add(record)
    assert store.alerts(GP_A) == []


def test_listeners_hear_new_alerts_and_state_changes_only(store: AlertStore) -> None:
    """One event per new alert and per real state change; repeats and no-ops are silent."""
    heard: list[tuple[StoreEvent, str, AlertState]] = []

    def listener(event: StoreEvent, alert: StoredAlert) -> None:
        heard.append((event, alert.alert_id, alert.state))

    unsubscribe = store.listen(listener)
    store.add(make_alert())
    store.add(make_alert())
    store.mark_read("alert-1", GP_A)
    store.mark_read("alert-1", GP_A)
    store.dismiss("alert-1", GP_B)
    store.dismiss("alert-1", GP_A)
    unsubscribe()
    store.add(make_alert("alert-2"))
    assert heard == [
        (StoreEvent.ALERT, "alert-1", AlertState.NEW),
        (StoreEvent.STATE, "alert-1", AlertState.READ),
        (StoreEvent.STATE, "alert-1", AlertState.DISMISSED),
    ]


def test_the_view_carries_the_record_and_the_state(store: AlertStore) -> None:
    """The served JSON: alert_id, state, UTC times ending in Z, and the record as published."""
    record = make_alert()
    store.add(copy.deepcopy(record))
    view = store.mark_read("alert-1", GP_A)
    assert view is not None
    assert view.view() == {
        "alert_id": "alert-1",
        "state": "read",
        "received_at": "2025-03-30T08:00:00.000Z",
        "read_at": "2025-03-30T08:00:00.000Z",
        "dismissed_at": None,
        "alert": record,
    }


def test_the_file_is_private_and_in_wal_mode(store: AlertStore, db_path: Path) -> None:
    """The state file holds patient identifiers: mode 0600, journal in WAL mode."""
    store.add(make_alert())
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_unopenable_state_file_is_a_config_error(tmp_path: Path) -> None:
    """A state file path that cannot be a file fails with a message naming it and what to set."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(ConfigError, match="HUB_GATEWAY_STATE_FILE"):
        AlertStore(folder)


def test_gateway_files_default_under_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HUB_GATEWAY_* files both live in <state_dir>/gateway; the gateway binds loopback:8080."""
    monkeypatch.setenv("HUB_STATE_DIR", str(tmp_path))
    for name in ("HUB_GATEWAY_STATE_FILE", "HUB_GATEWAY_TOKENS_FILE", "HUB_GATEWAY_HOST", "HUB_GATEWAY_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert state_file(settings) == tmp_path / "gateway" / "alerts.sqlite3"
    assert tokens_file(settings) == tmp_path / "gateway" / "gp-tokens.json"
    assert (settings.gateway_host, settings.gateway_port) == ("127.0.0.1", 8080)


# --- tokens -------------------------------------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> TokenStore:
    """A token file that does not exist yet."""
    return TokenStore(tmp_path / "gateway" / "gp-tokens.json")


def test_a_token_is_stored_as_its_hash_only(tokens: TokenStore) -> None:
    """The file (mode 0600) holds the practitioner and the token's SHA-256, never the token."""
    token = tokens.issue(GP_A)
    text = tokens.path.read_text(encoding="utf-8")
    assert token.startswith(TOKEN_PREFIX)
    assert token not in text
    assert token[len(TOKEN_PREFIX) :] not in text
    entries = json.loads(text)["tokens"]
    assert [(e["practitioner"], e["sha256"]) for e in entries] == [(GP_A, hash_token(token))]
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600


def test_verification_names_the_tokens_practitioner_and_nothing_else(tokens: TokenStore) -> None:
    """Each token verifies as its own GP; a wrong, empty or missing token as nobody."""
    token_a = tokens.issue(GP_A)
    token_b = tokens.issue(GP_B)
    assert tokens.verify(token_a) == GP_A
    assert tokens.verify(token_b) == GP_B
    assert tokens.verify(token_a + "x") is None
    assert tokens.verify(hash_token(token_a)) is None
    assert tokens.verify("") is None
    assert tokens.verify(None) is None


def test_each_issue_is_a_new_token_and_revoke_ends_them_all(tokens: TokenStore) -> None:
    """Two issues give two working tokens (two workstations); revoke ends both, not the other GP's."""
    first, second = tokens.issue(GP_A), tokens.issue(GP_A)
    other = tokens.issue(GP_B)
    assert first != second
    assert tokens.revoke(GP_A) == 2
    assert tokens.verify(first) is None
    assert tokens.verify(second) is None
    assert tokens.verify(other) == GP_B
    assert tokens.revoke(GP_A) == 0


def test_a_running_gateway_sees_tokens_issued_after_it_started(tokens: TokenStore) -> None:
    """Another TokenStore on the same file (the CLI) issues and revokes; this one follows the file."""
    assert tokens.verify("hubgp_anything") is None
    cli = TokenStore(tokens.path)
    token = cli.issue(GP_A)
    assert tokens.verify(token) == GP_A
    cli.revoke(GP_A)
    assert tokens.verify(token) is None


@pytest.mark.parametrize("practitioner", ["", "   ", "10009900014; rm -rf /", "../../etc", "x" * 65])
def test_a_malformed_practitioner_is_refused(tokens: TokenStore, practitioner: str) -> None:
    """Tokens are issued for plausible identifiers only (an RPPS is 11 digits)."""
    with pytest.raises(ConfigError, match="not a practitioner identifier"):
        tokens.issue(practitioner)


def test_a_corrupt_token_file_is_a_config_error_naming_it(tokens: TokenStore) -> None:
    """A token file that is not the hub's JSON fails with its path and what to do, not a traceback."""
    tokens.path.parent.mkdir(parents=True)
    tokens.path.write_text('{"tokens": [{"practitioner": "x", "sha256": "not-hex"}]}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"gp-tokens\.json"):
        tokens.verify("hubgp_anything")
