"""Per-practitioner bearer tokens for the alert gateway: issued once, stored as SHA-256 hashes only.

The token file (JSON, mode 0600, under the state dir by default) holds, per token, the practitioner's
RPPS, the hex SHA-256 of the token and when it was issued; the token itself is printed once by
``hub gateway token issue`` and never written anywhere. Tokens are 256-bit random strings, so a plain
hash is enough (no password stretching needed). Verification hashes the presented token and compares
it with *every* stored hash using :func:`hmac.compare_digest`, so its time does not depend on which
hash, or how much of one, matched. The file is re-read when it changes: issuing or revoking a token
takes effect in a running gateway without a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.errors import ConfigError

TOKEN_PREFIX = "hubgp_"  # noqa: S105 - a recognisable prefix (secret scanners), not a secret
FILE_VERSION = 1
#: RPPS numbers are 11 digits; other practitioner identifiers are accepted if they are this tame.
PRACTITIONER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_practitioner(practitioner: str) -> str:
    """The practitioner identifier, stripped, or a :class:`ConfigError` naming what is wrong."""
    text = practitioner.strip().removeprefix("Practitioner/")
    if not PRACTITIONER_PATTERN.fullmatch(text):
        raise ConfigError(
            f"{practitioner!r} is not a practitioner identifier",
            hint="give the GP's RPPS number (11 digits), e.g. `hub gateway token issue 10009900014`",
        )
    return text


@dataclass(frozen=True)
class TokenEntry:
    """One issued token, without the token."""

    practitioner: str
    sha256: str
    issued_at: str


class TokenStore:
    """The token hash file: issue, revoke, verify."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int], tuple[TokenEntry, ...]] | None = None

    def entries(self) -> tuple[TokenEntry, ...]:
        """Every issued token (hashes only); an absent file means none."""
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._cached = None
                return ()
            except OSError as exc:
                raise self._unreadable(exc) from exc
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if self._cached is None or self._cached[0] != signature:
                self._cached = (signature, self._load())
            return self._cached[1]

    def _unreadable(self, exc: Exception | str) -> ConfigError:
        return ConfigError(
            f"cannot read the gateway token file {self.path}: {exc}",
            hint="fix or remove it, then issue the tokens again with `hub gateway token issue <RPPS>`",
        )

    def _load(self) -> tuple[TokenEntry, ...]:
        try:
            document: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self._unreadable(exc) from exc
        tokens = document.get("tokens") if isinstance(document, dict) else None
        if not isinstance(tokens, list):
            raise self._unreadable("field 'tokens' is missing or not a list")
        entries = []
        for index, item in enumerate(tokens):
            if not (
                isinstance(item, dict)
                and isinstance(item.get("practitioner"), str)
                and isinstance(item.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", item["sha256"])
            ):
                raise self._unreadable(f"tokens[{index}] needs 'practitioner' and a hex 'sha256'")
            entries.append(TokenEntry(item["practitioner"], item["sha256"], str(item.get("issued_at", ""))))
        return tuple(entries)

    def _save(self, entries: tuple[TokenEntry, ...]) -> None:
        document = {
            "version": FILE_VERSION,
            "comment": "SHA-256 hashes of GP bearer tokens; manage with `hub gateway token issue|revoke`",
            "tokens": [dataclasses.asdict(entry) for entry in entries],
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # mkstemp creates the file 0600; the rename makes the change atomic for a running gateway.
            fd, temporary = tempfile.mkstemp(prefix=".gp-tokens-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(document, handle, indent=2)
                    handle.write("\n")
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise ConfigError(
                f"cannot write the gateway token file {self.path}: {exc}",
                hint="set HUB_GATEWAY_TOKENS_FILE (or HUB_STATE_DIR) to a writable place",
            ) from exc

    def issue(self, practitioner: str, *, now: datetime | None = None) -> str:
        """A new random token for the practitioner (returned once; only its hash is kept)."""
        practitioner = check_practitioner(practitioner)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        issued = (
            (now or datetime.now(UTC))
            .astimezone(UTC)
            .replace(microsecond=0)
            .isoformat()
            .replace("+00:00", "Z")
        )
        entries = self.entries()
        self._save((*entries, TokenEntry(practitioner, hash_token(token), issued)))
        return token

    def revoke(self, practitioner: str) -> int:
        """Revoke every token of the practitioner; returns how many there were."""
        practitioner = check_practitioner(practitioner)
        entries = self.entries()
        kept = tuple(entry for entry in entries if entry.practitioner != practitioner)
        if len(kept) != len(entries):
            self._save(kept)
        return len(entries) - len(kept)

    def verify(self, token: str | None) -> str | None:
        """The practitioner a presented token belongs to, or None (no, empty or unknown token)."""
        if not token:
            return None
        presented = hash_token(token).encode("ascii")
        found: str | None = None
        for entry in self.entries():
            # No early exit: every hash is compared, in constant time each.
            if hmac.compare_digest(presented, entry.sha256.encode("ascii")) and found is None:
                found = entry.practitioner
        return found


__all__ = ["TOKEN_PREFIX", "TokenEntry", "TokenStore", "check_practitioner", "hash_token"]
