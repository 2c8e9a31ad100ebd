"""Operator tokens for the console: issued once, stored as SHA-256 hashes only (like the GPs' tokens).

The file (JSON, mode 0600) lists, per token, the operator's name, the hex SHA-256 of the token and
when it was issued. The token is printed once by ``hub console token issue`` and written nowhere.
Tokens are 256-bit random strings, so a plain hash suffices; :meth:`OperatorTokens.verify` compares the
presented token's hash with every stored hash with :func:`hmac.compare_digest` (no early exit), so its
time does not depend on which hash, or how much of one, matched. The file is re-read when it changes.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.errors import ConfigError
from hub.gateway.tokens import hash_token
from hub.settings import Settings

TOKEN_PREFIX = "hubop_"  # noqa: S105 - a recognisable prefix (secret scanners), not a secret
OPERATOR_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def tokens_file(settings: Settings) -> Path:
    """``HUB_CONSOLE_TOKENS_FILE`` or ``<state_dir>/console/operator-tokens.json``."""
    if settings.console_tokens_file is not None:
        return settings.console_tokens_file.expanduser()
    return settings.state_dir.expanduser() / "console" / "operator-tokens.json"


def check_operator(name: str) -> str:
    """The operator's name, stripped, or a :class:`ConfigError`."""
    text = name.strip()
    if not OPERATOR_PATTERN.fullmatch(text):
        raise ConfigError(
            f"{name!r} is not an operator name",
            hint="use letters, digits and . _ @ - (up to 64), e.g. `hub console token issue alice`",
        )
    return text


@dataclass(frozen=True)
class OperatorToken:
    """One issued token, without the token."""

    operator: str
    sha256: str
    issued_at: str


class OperatorTokens:
    """The operator token hash file: issue, revoke, list, verify."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int], tuple[OperatorToken, ...]] | None = None

    def _unreadable(self, why: object) -> ConfigError:
        return ConfigError(
            f"cannot read the operator token file {self.path}: {why}",
            hint="fix or remove it, then issue tokens again with `hub console token issue <name>`",
        )

    def entries(self) -> tuple[OperatorToken, ...]:
        """Every issued token (hashes only); no file means none."""
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

    def _load(self) -> tuple[OperatorToken, ...]:
        try:
            document: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self._unreadable(exc) from exc
        items = document.get("tokens") if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise self._unreadable("field 'tokens' is missing or not a list")
        found = []
        for index, item in enumerate(items):
            if not (
                isinstance(item, dict)
                and isinstance(item.get("operator"), str)
                and isinstance(item.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", item["sha256"])
            ):
                raise self._unreadable(f"tokens[{index}] needs 'operator' and a hex 'sha256'")
            found.append(OperatorToken(item["operator"], item["sha256"], str(item.get("issued_at", ""))))
        return tuple(found)

    def _save(self, entries: tuple[OperatorToken, ...]) -> None:
        document = {
            "comment": "SHA-256 hashes of operator tokens; manage with `hub console token issue|revoke`",
            "tokens": [asdict(entry) for entry in entries],
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # mkstemp creates the file 0600; the rename makes the change atomic for a running console.
            fd, temporary = tempfile.mkstemp(prefix=".operator-tokens-", dir=self.path.parent)
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
                f"cannot write the operator token file {self.path}: {exc}",
                hint="set HUB_CONSOLE_TOKENS_FILE (or HUB_STATE_DIR) to a writable place",
            ) from exc

    def issue(self, operator: str, *, now: datetime | None = None) -> str:
        """A new random token for the operator (returned once; only its hash is kept)."""
        operator = check_operator(operator)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        issued = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0).isoformat()
        self._save(
            (*self.entries(), OperatorToken(operator, hash_token(token), issued.replace("+00:00", "Z")))
        )
        return token

    def revoke(self, operator: str) -> int:
        """Revoke every token of the operator; returns how many there were."""
        operator = check_operator(operator)
        entries = self.entries()
        kept = tuple(entry for entry in entries if entry.operator != operator)
        if len(kept) != len(entries):
            self._save(kept)
        return len(entries) - len(kept)

    def verify(self, token: str | None) -> str | None:
        """The operator a presented token belongs to, or None."""
        if not token:
            return None
        presented = hash_token(token).encode("ascii")
        found: str | None = None
        for entry in self.entries():
            # No early exit: every hash is compared, in constant time each.
            if hmac.compare_digest(presented, entry.sha256.encode("ascii")) and found is None:
                found = entry.operator
        return found


__all__ = ["TOKEN_PREFIX", "OperatorToken", "OperatorTokens", "check_operator", "tokens_file"]
