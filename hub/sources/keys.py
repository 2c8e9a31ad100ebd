"""Source key rotation: previous keys with an end, where they are kept, and `hub keys rotate`'s pure part.

A source's current HMAC key stays where its registry reference points (a file, or an environment
variable). During a rotation the previous key is kept beside it until the overlap window ends:

- a file reference ``FILE``: ``FILE.previous``, JSON ``{"secret": ..., "valid_until": ...}``, mode 0600;
- an environment reference ``VAR``: ``VAR_PREVIOUS`` and ``VAR_PREVIOUS_VALID_UNTIL`` (ISO 8601 with
  an offset). A previous key without an end is refused: it would verify forever.

After ``valid_until`` the previous key verifies nothing: a record signed with it is rejected with
``signature.invalid``, as any wrong key is. Key ids (:func:`key_id`) name keys in audit records and
messages; they are a truncated keyed hash, from which the key cannot be recovered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hub.audit_vocabulary import (
    AUTHOR_ROLE,
    KEY_ROTATION,
    KEYS_COMPONENT,
    OUTCOME_SUCCESS,
    SECURITY_ALERT,
    SECURITY_RESOURCE_ROLE,
    SOURCE_SYSTEM,
    SYSTEM_OBJECT,
    agent,
    audit_event,
    audit_id,
    detail,
    entity,
    identified,
    observer,
)
from hub.errors import ConfigError, SecretUnavailable
from hub.normalise.time import utc_iso

PREVIOUS_FILE_SUFFIX = ".previous"
ENV_PREVIOUS_SUFFIX = "_PREVIOUS"
ENV_VALID_UNTIL_SUFFIX = "_PREVIOUS_VALID_UNTIL"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class RetiringKey:
    """A source key that still verifies signatures until ``valid_until`` (exclusive)."""

    secret: bytes = field(repr=False)
    valid_until: datetime

    def valid_at(self, now: datetime) -> bool:
        """True before the end of the overlap window."""
        return now < self.valid_until


def key_id(secret: bytes) -> str:
    """A short name for a key, safe to log and audit (a keyed hash prefix, not the key)."""
    return hashlib.sha256(b"hub.source-key-id\x00" + secret).hexdigest()[:16]


def parse_valid_until(text: str, *, where: str) -> datetime:
    """An ISO 8601 instant with its offset; a naive time is refused (whose clock would it be?)."""
    try:
        instant = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"{where}: {text!r} is not an ISO 8601 time", hint="write e.g. 2026-11-23T16:00:00+00:00"
        ) from exc
    if instant.utcoffset() is None:
        raise ConfigError(f"{where}: {text!r} has no UTC offset", hint="add one, e.g. +00:00 or Z")
    return instant


def parse_overlap(text: str) -> timedelta:
    """``30s``, ``15m``, ``24h``, ``7d``: how long the previous key stays valid after a rotation."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) <= 0:
        raise ConfigError(
            f"overlap {text!r} is not a positive duration", hint="write it as 30s, 15m, 24h or 7d"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def write_secret_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable and writable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class PreviousKeyFile:
    """The file beside a key file that holds the previous key and its end."""

    path: Path

    def read(self, *, where: str) -> RetiringKey | None:
        """The previous key, or None when no rotation left one."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SecretUnavailable(
                f"{where}: previous-key file {self.path} is unreadable",
                hint="delete it to retire the previous key now, or restore it from `hub keys rotate`",
            ) from exc
        if not isinstance(document, dict) or not isinstance(document.get("secret"), str):
            raise SecretUnavailable(
                f"{where}: previous-key file {self.path} has no secret",
                hint="delete it to retire the previous key now",
            )
        until = parse_valid_until(str(document.get("valid_until", "")), where=f"{self.path}: valid_until")
        return RetiringKey(document["secret"].strip().encode(), until)

    def write(self, key: RetiringKey) -> None:
        """Keep ``key`` as the previous key (0600)."""
        document = {"secret": key.secret.decode(), "valid_until": key.valid_until.isoformat()}
        write_secret_file(self.path, json.dumps(document) + "\n")


def file_previous(path: Path) -> PreviousKeyFile:
    """Where the previous key of the key file ``path`` is kept."""
    return PreviousKeyFile(path.with_name(path.name + PREVIOUS_FILE_SUFFIX))


def env_previous(variable: str, environ: Mapping[str, str], *, where: str) -> RetiringKey | None:
    """The previous key of an environment reference, from ``VAR_PREVIOUS`` and its end."""
    value = environ.get(variable + ENV_PREVIOUS_SUFFIX, "").strip()
    if not value:
        return None
    until = environ.get(variable + ENV_VALID_UNTIL_SUFFIX, "")
    if not until.strip():
        raise SecretUnavailable(
            f"{where}: {variable}{ENV_PREVIOUS_SUFFIX} is set without {variable}{ENV_VALID_UNTIL_SUFFIX}",
            hint=f"set {variable}{ENV_VALID_UNTIL_SUFFIX} to the end of the overlap window, or unset "
            f"{variable}{ENV_PREVIOUS_SUFFIX} to retire that key",
        )
    return RetiringKey(value.encode(), parse_valid_until(until, where=f"{variable}{ENV_VALID_UNTIL_SUFFIX}"))


def new_secret() -> str:
    """A fresh source key: 32 random bytes, hex (the form `hub run` and `openssl rand -hex 32` make)."""
    return secrets.token_hex(32)


@dataclass(frozen=True)
class Rotation:
    """What a rotation did, without any key: for the operator's screen and the AuditEvent."""

    source_id: str
    reference: str  # "file" or "env"
    location: str  # the key file's path, or the variable's name
    valid_until: datetime
    new_key_id: str
    previous_key_id: str


def rotate_file(
    source_id: str,
    path: Path,
    *,
    now: datetime,
    overlap: timedelta,
    force: bool = False,
    new: str | None = None,
) -> Rotation:
    """Move the key in ``path`` to its previous-key file until ``now + overlap``; write a new key.

    The previous-key file is written first: if the process dies between the two writes, the old
    key is simply valid twice, never lost. A rotation whose window is still open is refused unless
    ``force`` (which retires that older key at once).
    """
    try:
        current = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretUnavailable(
            f"key file {path} of source {source_id} cannot be read", hint="check the path and its permissions"
        ) from exc
    sidecar = file_previous(path)
    open_window = sidecar.read(where=source_id)
    if open_window is not None and open_window.valid_at(now) and not force:
        raise ConfigError(
            f"source {source_id}: the previous rotation's overlap window is open until "
            f"{open_window.valid_until.isoformat()}",
            hint="wait until then, or pass --force to retire that older key now",
        )
    until = now + overlap
    secret = new or new_secret()
    sidecar.write(RetiringKey(current.encode(), until))
    write_secret_file(path, secret + "\n")
    return Rotation(source_id, "file", str(path), until, key_id(secret.encode()), key_id(current.encode()))


def rotate_env(
    source_id: str,
    variable: str,
    environ: Mapping[str, str],
    *,
    now: datetime,
    overlap: timedelta,
    secret_out: Path,
    new: str | None = None,
) -> Rotation:
    """For a key in ``variable``: write a new key to ``secret_out`` (0600); the operator sets variables."""
    current = environ.get(variable, "").strip()
    if not current:
        raise SecretUnavailable(
            f"{variable} (the key of source {source_id}) is not set in this environment",
            hint=f"run the rotation where {variable} is set, so the previous key can be named",
        )
    secret = new or new_secret()
    write_secret_file(secret_out, secret + "\n")
    return Rotation(
        source_id, "env", variable, now + overlap, key_id(secret.encode()), key_id(current.encode())
    )


def env_instructions(rotation: Rotation, secret_out: Path) -> list[str]:
    """What the operator sets, in order, for an environment reference; no key appears in it."""
    variable = rotation.location
    return [
        f"{variable}{ENV_PREVIOUS_SUFFIX}=<the current value of {variable}>",
        f"{variable}{ENV_VALID_UNTIL_SUFFIX}={rotation.valid_until.isoformat()}",
        f"{variable}=<the content of {secret_out}>",
        "then restart the workers (a variable is read at start), and give the source its new key",
    ]


def audit_key_rotation(rotation: Rotation, *, operator: str, recorded: datetime) -> dict[str, Any]:
    """The AuditEvent of one rotation (a key administration act): who, which source, until when; no key."""
    details = [
        detail("reference", rotation.reference),
        detail("new_key_id", rotation.new_key_id),
        detail("previous_key_id", rotation.previous_key_id),
        detail("previous_valid_until", utc_iso(rotation.valid_until)),
    ]
    return audit_event(
        id=audit_id(KEY_ROTATION, rotation.source_id, rotation.new_key_id),
        type=SECURITY_ALERT,
        subtype=KEY_ROTATION,
        action="U",
        recorded=utc_iso(recorded),
        outcome=OUTCOME_SUCCESS,
        description=f"source {rotation.source_id}: new key {rotation.new_key_id}; previous key "
        f"{rotation.previous_key_id} valid until {utc_iso(rotation.valid_until)}",
        agents=[agent(AUTHOR_ROLE, {"display": f"operator {operator}"}, requestor=True)],
        source=observer(KEYS_COMPONENT),
        entities=[
            entity(
                identified(SOURCE_SYSTEM, rotation.source_id),
                type=SYSTEM_OBJECT,
                role=SECURITY_RESOURCE_ROLE,
                details=details,
            )
        ],
    )
