"""The key store: wrapped data keys in one SQLite file, shared by the hub processes of one machine.

A key is created once (the first writer wins, so two workers never use two keys for one id) and can
be destroyed: its wrapped bytes are overwritten and removed, and a tombstone stays so that nothing
is ever encrypted under that id again. ``secure_delete`` overwrites freed pages and a WAL checkpoint
follows each destruction, so the wrapped key does not survive in the file or its journal. The file
and its ``-wal`` and ``-shm`` companions are 0600 (a folder the store makes is 0700). Beyond one
machine the store is the KMS's (docs/SECURITY.md): this file is the single-machine stand-in.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hub.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS data_keys (
    key_id TEXT PRIMARY KEY,
    kek_id TEXT NOT NULL,
    wrapped BLOB,
    created_at TEXT NOT NULL,
    destroyed_at TEXT,
    destroyed_by TEXT
)
"""

# Every destruction, in the order they were committed: a process that caches keys asks for the ones
# after the last it saw, in one query, instead of reading each cached key again (hub.crypto.keyring).
# Triggers rather than a write in :meth:`KeyStore.destroy`, so that whatever destroys a key in this
# file is logged, a tombstone inserted for an unused id as much as a key overwritten.
_DESTRUCTIONS = (
    """
CREATE TABLE IF NOT EXISTS key_destructions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL
)
""",
    """
CREATE TRIGGER IF NOT EXISTS key_destroyed_on_update AFTER UPDATE OF wrapped, destroyed_at ON data_keys
WHEN NEW.destroyed_at IS NOT NULL OR NEW.wrapped IS NULL
BEGIN INSERT INTO key_destructions (key_id) VALUES (NEW.key_id); END
""",
    """
CREATE TRIGGER IF NOT EXISTS key_destroyed_on_insert AFTER INSERT ON data_keys
WHEN NEW.destroyed_at IS NOT NULL OR NEW.wrapped IS NULL
BEGIN INSERT INTO key_destructions (key_id) VALUES (NEW.key_id); END
""",
)


_SELECT_KEY = "SELECT key_id, kek_id, wrapped, created_at, destroyed_at FROM data_keys WHERE key_id = ?"


@dataclass(frozen=True)
class StoredKey:
    """One row: a wrapped key, or the tombstone of a destroyed one (``wrapped`` is None)."""

    key_id: str
    kek_id: str
    wrapped: bytes | None
    created_at: str
    destroyed_at: str | None

    @property
    def destroyed(self) -> bool:
        """True once the key was destroyed."""
        return self.destroyed_at is not None

    @property
    def issued(self) -> bool:
        """True when a key was ever stored under this id; False for the tombstone of an unused id."""
        return bool(self.kek_id)


@dataclass(frozen=True)
class NewKey:
    """A wrapped key to store (:meth:`KeyStore.create_many`), and the key it depends on, if any."""

    key_id: str
    kek_id: str
    wrapped: bytes
    unless_destroyed: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def wal_files(path: Path) -> tuple[Path, Path]:
    """The write-ahead log and shared-memory index SQLite keeps beside a database in WAL mode."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


class KeyStore:
    """Wrapped data keys by key id; safe for several processes (SQLite locking) and threads (a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # 0600 before SQLite opens it: SQLite gives the -wal and -shm files it creates beside the
            # store the store's own mode, and the WAL holds wrapped keys (and, until a checkpoint,
            # the pages a destruction overwrote).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            path.chmod(0o600)
            self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute(_SCHEMA)
            for statement in _DESTRUCTIONS:
                self._db.execute(statement)
            # Files made before the store was 0600 (or by another tool) are brought in line too.
            for companion in wal_files(path):
                if companion.exists():
                    companion.chmod(0o600)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the key store {path}: {exc}",
                hint="check HUB_KEY_STORE_FILE (or HUB_STATE_DIR) and the folder's permissions",
            ) from exc

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def get(self, key_id: str) -> StoredKey | None:
        """The key or its tombstone, or None when the id was never used."""
        return self.get_many([key_id]).get(key_id)

    def get_many(self, key_ids: Iterable[str]) -> dict[str, StoredKey]:
        """The keys or tombstones stored under ``key_ids``; ids never used are left out."""
        found: dict[str, StoredKey] = {}
        with self._lock:
            for key_id in dict.fromkeys(key_ids):
                row = self._db.execute(_SELECT_KEY, (key_id,)).fetchone()
                if row is not None:
                    found[key_id] = StoredKey(row[0], row[1], row[2], row[3], row[4])
        return found

    def create_many(self, keys: Iterable[NewKey]) -> dict[str, StoredKey]:
        """Store new wrapped keys in one transaction (one commit, one sync to disk for them all): the
        only way a key is made.

        Each unless its id exists (the store's key is returned, maybe another process's), and not
        when the key it depends on (``unless_destroyed``) is destroyed: the check and the insert are
        one transaction, so a key created while ``hub erase`` runs is either seen by it or refused,
        never left behind. Returns what the store holds for each key not refused; a refused one is
        left out.
        """
        keys = list(keys)
        refused: set[str] = set()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key in keys:
                    if key.unless_destroyed is not None and (
                        self._db.execute(
                            "SELECT 1 FROM data_keys WHERE key_id = ? AND destroyed_at IS NOT NULL",
                            (key.unless_destroyed,),
                        ).fetchone()
                        is not None
                    ):
                        refused.add(key.key_id)
                        continue
                    self._db.execute(
                        "INSERT OR IGNORE INTO data_keys (key_id, kek_id, wrapped, created_at) "
                        "VALUES (?, ?, ?, ?)",
                        (key.key_id, key.kek_id, key.wrapped, _now()),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get_many(key.key_id for key in keys if key.key_id not in refused)

    def destroy(self, key_id: str, *, by: str) -> bool:
        """Destroy the key (or forbid the id if unused); True when a usable key was destroyed."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT wrapped IS NOT NULL FROM data_keys WHERE key_id = ?", (key_id,)
                ).fetchone()
                at = _now()
                if row is None:
                    self._db.execute(
                        "INSERT INTO data_keys (key_id, kek_id, wrapped, created_at, destroyed_at, "
                        "destroyed_by) VALUES (?, '', NULL, ?, ?, ?)",
                        (key_id, at, at, by),
                    )
                else:
                    # Overwrite first, then drop the value: secure_delete zeroes the freed space.
                    self._db.execute(
                        "UPDATE data_keys SET wrapped = zeroblob(length(wrapped)) WHERE key_id = ?",
                        (key_id,),
                    )
                    self._db.execute(
                        "UPDATE data_keys SET wrapped = NULL, destroyed_at = coalesce(destroyed_at, ?), "
                        "destroyed_by = coalesce(destroyed_by, ?) WHERE key_id = ?",
                        (at, by, key_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            # Old page images live in the WAL until a checkpoint copies and truncates it.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return bool(row and row[0])

    def destroyed_since(self, seen: int | None) -> tuple[list[str], int]:
        """The key ids destroyed after the destruction numbered ``seen`` (None: none of them, only
        where the log stands now), and the number of the last destruction to pass next time."""
        with self._lock:
            if seen is None:
                row = self._db.execute("SELECT coalesce(max(seq), 0) FROM key_destructions").fetchone()
                return [], int(row[0])
            rows = self._db.execute(
                "SELECT seq, key_id FROM key_destructions WHERE seq > ? ORDER BY seq", (seen,)
            ).fetchall()
        return [str(key_id) for _, key_id in rows], int(rows[-1][0]) if rows else seen

    def key_ids(self, prefix: str = "") -> list[str]:
        """Every key id starting with ``prefix``, destroyed ones included."""
        with self._lock:
            return [
                row[0]
                for row in self._db.execute(
                    "SELECT key_id FROM data_keys WHERE substr(key_id, 1, ?) = ? ORDER BY key_id",
                    (len(prefix), prefix),
                )
            ]
