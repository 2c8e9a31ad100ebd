"""The gateway's alerts and their new/read/dismissed state, in one SQLite file (WAL), with a fan-out.

``add`` is an idempotent upsert by ``alert_id``: an alert that arrives twice is one alert, and its state
(read, dismissed) is never reset by a new copy, so a dismissed alert stays quiet across redeliveries
and restarts. Listeners registered with :meth:`AlertStore.listen` learn about each *new* alert and each
state change; the HTTP app turns them into Server-Sent Events. Every SQL statement on the file is
here, :func:`forget_patients` (``hub erase``) included.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from hub.errors import ConfigError

#: Bumped when the table layout changes; older files are migrated by :func:`_migrate`.
SCHEMA_VERSION = 1
MAX_ID_LENGTH = 256
_PRACTITIONER_PREFIX = "Practitioner/"


class AlertState(StrEnum):
    """Where an alert stands for its GP."""

    NEW = "new"
    READ = "read"
    DISMISSED = "dismissed"


class StoreEvent(StrEnum):
    """What a listener is told about."""

    ALERT = "alert"  # an alert_id seen for the first time
    STATE = "state"  # an alert was read or dismissed


class InvalidAlert(ValueError):
    """A record that is not a usable alert; the message names the field, never its content."""


@dataclass(frozen=True)
class StoredAlert:
    """One alert as the gateway holds it: the record from ``hub.alerts.v1`` and its state."""

    alert_id: str
    practitioner: str
    patient_id: str
    record: Mapping[str, Any]
    state: AlertState
    received_at: datetime
    read_at: datetime | None
    dismissed_at: datetime | None

    @property
    def card(self) -> dict[str, Any]:
        """The alert's CDS Hooks card, as published."""
        card = self.record.get("card")
        return dict(card) if isinstance(card, Mapping) else {}

    def identifier_values(self) -> set[str]:
        """The patient's id and every identifier value the GP's software may know the patient by."""
        return {self.patient_id} | {value for _system, value in patient_identifiers(self.record)}

    def view(self) -> dict[str, Any]:
        """The JSON the gateway serves: state, timestamps and the alert record (docs/GP_INTEGRATION.md)."""
        return {
            "alert_id": self.alert_id,
            "state": self.state.value,
            "received_at": _iso(self.received_at),
            "read_at": _iso(self.read_at),
            "dismissed_at": _iso(self.dismissed_at),
            "alert": dict(self.record),
        }


@dataclass(frozen=True)
class AddResult:
    """What :meth:`AlertStore.add` did: ``created`` is False for an alert_id already known."""

    alert: StoredAlert
    created: bool


Listener = Callable[[StoreEvent, StoredAlert], None]


def practitioner_id(value: Any) -> str:
    """The RPPS of an alert's ``practitioner``: a string (``"Practitioner/"`` stripped) or an object with
    ``rpps``, ``id``, ``value`` or ``identifier.value``."""
    if isinstance(value, Mapping):
        identifier = value.get("identifier")
        candidates = [value.get("rpps"), value.get("id"), value.get("value")]
        if isinstance(identifier, Mapping):
            candidates.append(identifier.get("value"))
        value = next((c for c in candidates if isinstance(c, str) and c.strip()), None)
    if not isinstance(value, str) or not value.strip():
        raise InvalidAlert("practitioner: missing or not an identifier")
    text = value.strip().removeprefix(_PRACTITIONER_PREFIX)
    if not text or len(text) > MAX_ID_LENGTH:
        raise InvalidAlert("practitioner: empty or too long")
    return text


def patient_identifiers(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``(system, value)`` pairs of ``record.patient.identifiers`` that are well formed."""
    patient = record.get("patient")
    identifiers = patient.get("identifiers") if isinstance(patient, Mapping) else None
    if not isinstance(identifiers, list):
        return []
    pairs: list[tuple[str, str]] = []
    for item in identifiers:
        if isinstance(item, Mapping) and isinstance(item.get("value"), str) and item["value"]:
            system = item.get("system")
            pairs.append((system if isinstance(system, str) else "", item["value"]))
    return pairs


def check_alert(record: Any) -> tuple[str, str, str]:
    """``(alert_id, practitioner, patient_id)`` of a usable alert record, or :class:`InvalidAlert`."""
    if not isinstance(record, Mapping):
        raise InvalidAlert("alert: not a JSON object")
    alert_id = record.get("alert_id")
    if not isinstance(alert_id, str) or not alert_id.strip() or len(alert_id) > MAX_ID_LENGTH:
        raise InvalidAlert("alert_id: missing, empty or too long")
    practitioner = practitioner_id(record.get("practitioner"))
    patient = record.get("patient")
    if not isinstance(patient, Mapping):
        raise InvalidAlert("patient: missing or not an object")
    patient_id = patient.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise InvalidAlert("patient.patient_id: missing or empty")
    identifiers = patient.get("identifiers", [])
    if not isinstance(identifiers, list):
        raise InvalidAlert("patient.identifiers: not a list")
    card = record.get("card")
    if not isinstance(card, Mapping):
        raise InvalidAlert("card: missing or not an object")
    if not isinstance(card.get("summary"), str):
        raise InvalidAlert("card.summary: missing or not a string")
    return alert_id, practitioner, patient_id


def _iso(moment: datetime | None) -> str | None:
    return (
        None
        if moment is None
        else moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _utc_now() -> datetime:
    return datetime.now(UTC)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id     TEXT PRIMARY KEY,
    practitioner TEXT NOT NULL,
    patient_id   TEXT NOT NULL,
    record       TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'read', 'dismissed')),
    received_at  TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    read_at      TEXT,
    dismissed_at TEXT
);
CREATE INDEX IF NOT EXISTS alerts_by_practitioner ON alerts (practitioner, state, patient_id);
CREATE TABLE IF NOT EXISTS alert_identifiers (
    alert_id TEXT NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    system   TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (alert_id, system, value)
);
CREATE INDEX IF NOT EXISTS alert_identifiers_by_value ON alert_identifiers (value);
"""

_COLUMNS = "alert_id, practitioner, patient_id, record, state, received_at, read_at, dismissed_at"
_QUALIFIED_COLUMNS = ", ".join(f"a.{column.strip()}" for column in _COLUMNS.split(","))


class AlertStore:
    """Alerts by alert_id with their state, in a SQLite file; safe to share between threads."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._db = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                # Patient identifiers live here: readable by the hub's user only (SQLite gives its
                # -wal and -shm files the same mode).
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            _migrate(db)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the gateway state file {path}: {exc}",
                hint="set HUB_GATEWAY_STATE_FILE to a writable path, or fix the file's permissions",
            ) from exc
        return db

    def close(self) -> None:
        """Close the file; the store is unusable afterwards."""
        with self._lock:
            self._db.close()

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event, alert)`` after each new alert and state change; returns an unsubscribe."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add(self, record: Mapping[str, Any]) -> AddResult:
        """Store one alert record (idempotent by alert_id; its state is kept); :class:`InvalidAlert` if
        it is not usable. A copy naming another practitioner than the stored one changes nothing."""
        alert_id, practitioner, patient_id = check_alert(record)
        now = _iso(self._clock())
        document = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._transaction() as db:
            existing = db.execute(
                "SELECT practitioner FROM alerts WHERE alert_id = ?", (alert_id,)
            ).fetchone()
            created = existing is None
            if created:
                db.execute(
                    "INSERT INTO alerts (alert_id, practitioner, patient_id, record, state, received_at,"
                    " updated_at) VALUES (?, ?, ?, ?, 'new', ?, ?)",
                    (alert_id, practitioner, patient_id, document, now, now),
                )
            elif existing[0] == practitioner:
                db.execute(
                    "UPDATE alerts SET patient_id = ?, record = ?, updated_at = ? WHERE alert_id = ?",
                    (patient_id, document, now, alert_id),
                )
            if created or existing[0] == practitioner:
                db.execute("DELETE FROM alert_identifiers WHERE alert_id = ?", (alert_id,))
                db.executemany(
                    "INSERT OR IGNORE INTO alert_identifiers (alert_id, system, value) VALUES (?, ?, ?)",
                    [(alert_id, system, value) for system, value in patient_identifiers(record)],
                )
            stored = self._get(db, alert_id)
        assert stored is not None  # noqa: S101 - written in the transaction above
        if created:
            self._notify(StoreEvent.ALERT, stored)
        return AddResult(stored, created)

    def is_empty(self) -> bool:
        """Whether no alert was ever stored (a new or replaced file)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM alerts LIMIT 1").fetchone() is None

    def counts(self) -> dict[str, int]:
        """How many alerts are in each state (for ``hub_gateway_alerts``): counts only, no ids."""
        with self._lock:
            found = dict(self._db.execute("SELECT state, count(*) FROM alerts GROUP BY state").fetchall())
        return {state.value: int(found.get(state.value, 0)) for state in AlertState}

    def get(self, alert_id: str) -> StoredAlert | None:
        """One alert by id, whatever its state."""
        with self._lock:
            return self._get(self._db, alert_id)

    def alerts(
        self, practitioner: str, *, patient: str | None = None, unread_only: bool = False
    ) -> list[StoredAlert]:
        """A practitioner's alerts that are not dismissed, oldest first; ``patient`` matches the alert's
        ``patient.patient_id`` or any of its ``patient.identifiers`` values."""
        sql = f"SELECT {_QUALIFIED_COLUMNS} FROM alerts a WHERE a.practitioner = ? AND a.state "  # noqa: S608
        sql += "= 'new'" if unread_only else "!= 'dismissed'"
        params: list[str] = [practitioner]
        if patient is not None:
            sql += (
                " AND (a.patient_id = ? OR EXISTS (SELECT 1 FROM alert_identifiers i"
                " WHERE i.alert_id = a.alert_id AND i.value = ?))"
            )
            params += [patient, patient]
        sql += " ORDER BY a.rowid"  # arrival order (received_at ties within a millisecond)
        with self._lock:
            return [_row_to_alert(row) for row in self._db.execute(sql, params)]

    def mark_read(self, alert_id: str, practitioner: str) -> StoredAlert | None:
        """Mark the practitioner's alert read (a dismissed one stays dismissed); None if not theirs."""
        return self._change(alert_id, practitioner, AlertState.READ)

    def dismiss(self, alert_id: str, practitioner: str) -> StoredAlert | None:
        """Dismiss the practitioner's alert for good; None if it is not theirs (or unknown)."""
        return self._change(alert_id, practitioner, AlertState.DISMISSED)

    def _change(self, alert_id: str, practitioner: str, target: AlertState) -> StoredAlert | None:
        now = _iso(self._clock())
        with self._transaction() as db:
            current = self._get(db, alert_id)
            if current is None or current.practitioner != practitioner:
                return None
            if target is AlertState.READ and current.state is AlertState.NEW:
                db.execute(
                    "UPDATE alerts SET state = 'read', read_at = ?, updated_at = ? WHERE alert_id = ?",
                    (now, now, alert_id),
                )
            elif target is AlertState.DISMISSED and current.state is not AlertState.DISMISSED:
                db.execute(
                    "UPDATE alerts SET state = 'dismissed', dismissed_at = ?, updated_at = ?"
                    " WHERE alert_id = ?",
                    (now, now, alert_id),
                )
            else:
                return current
            changed = self._get(db, alert_id)
        assert changed is not None  # noqa: S101 - updated in the transaction above
        self._notify(StoreEvent.STATE, changed)
        return changed

    @staticmethod
    def _get(db: sqlite3.Connection, alert_id: str) -> StoredAlert | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()  # noqa: S608
        return None if row is None else _row_to_alert(row)

    def _notify(self, event: StoreEvent, alert: StoredAlert) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event, alert)


#: What :func:`forget_patients` runs for each patient: the alerts' identifiers, then the alerts.
_FORGET_PATIENT = (
    "DELETE FROM alert_identifiers WHERE alert_id IN (SELECT alert_id FROM alerts WHERE patient_id = ?)",
    "DELETE FROM alerts WHERE patient_id = ?",
)


def forget_patients(path: Path, patient_ids: Iterable[str]) -> int:
    """Delete the patients' alerts from the store's file (``hub erase``); return how many were removed.

    Works on the file itself, beside a running gateway (its own connection waits up to 30 s for the
    gateway's write lock); no file, or a file without tables yet, removes nothing.
    """
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        # Overwrite freed pages, and fold the WAL back in: deleted alerts do not linger on disk.
        db.execute("PRAGMA secure_delete=ON")
        db.execute("BEGIN IMMEDIATE")
        removed = 0
        for patient_id in patient_ids:
            db.execute(_FORGET_PATIENT[0], (patient_id,))
            removed += db.execute(_FORGET_PATIENT[1], (patient_id,)).rowcount
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        db.close()


def _row_to_alert(row: tuple[Any, ...]) -> StoredAlert:
    alert_id, practitioner, patient_id, record, state, received_at, read_at, dismissed_at = row
    received = _parse_time(received_at)
    assert received is not None  # noqa: S101 - NOT NULL column
    return StoredAlert(
        alert_id=alert_id,
        practitioner=practitioner,
        patient_id=patient_id,
        record=json.loads(record),
        state=AlertState(state),
        received_at=received,
        read_at=_parse_time(read_at),
        dismissed_at=_parse_time(dismissed_at),
    )


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"written by a newer hub (schema {version} > {SCHEMA_VERSION})")
    db.executescript(_SCHEMA)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


__all__ = [
    "AddResult",
    "AlertState",
    "AlertStore",
    "InvalidAlert",
    "Listener",
    "StoreEvent",
    "StoredAlert",
    "check_alert",
    "forget_patients",
    "patient_identifiers",
    "practitioner_id",
]
