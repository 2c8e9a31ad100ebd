"""Bearer tokens issued once and stored as SHA-256 hashes only: one store for GPs, operators, recipients.

A token file (JSON, mode 0600) lists, per token, its holder (a GP's RPPS, an operator's name: the
field is named after the holder), the hex SHA-256 of the token and when it was issued. The token is
printed once by the issuing command and written nowhere. Tokens are 256-bit random strings, so a plain
hash is enough (no password stretching needed). :meth:`HashedTokenFile.verify` hashes the presented
token and compares it with *every* stored hash using :func:`hmac.compare_digest` (no early exit), so
its time does not depend on which hash, or how much of one, matched. The file is re-read when it
changes: issuing or revoking a token takes effect in a running server without a restart.

:class:`hub.gateway.tokens.TokenStore`, :class:`hub.console.tokens.OperatorTokens` and
:class:`hub.keyservice.credentials.RecipientCredentials` are this store with their own
:class:`TokenFileSpec` (holder field, name check, prefix, hints naming their command).
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from hub.errors import ConfigError

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class HashedToken(Protocol):
    """One issued token, without the token: a frozen dataclass whose fields are the file's fields."""

    @property
    def holder(self) -> str: ...

    @property
    def sha256(self) -> str: ...


E = TypeVar("E", bound=HashedToken)


@dataclass(frozen=True)
class TokenFileSpec(Generic[E]):
    """What differs between two token files; the file's layout and the store's behaviour do not."""

    #: The entry's dataclass, built as ``entry(holder, sha256, issued_at)``; its fields are written as is.
    entry: Callable[[str, str, str], E]
    #: The holder's field name in the file (``practitioner``, ``operator``).
    holder_field: str
    #: The holder's name, normalised, or a :class:`ConfigError` naming what is wrong.
    check: Callable[[str], str]
    #: A recognisable prefix (secret scanners), not a secret.
    prefix: str
    #: In messages: "the <label> <path>" (``gateway token file``).
    label: str
    #: The issuing command, with a placeholder holder, for hints (``hub gateway token issue <RPPS>``).
    issue_command: str
    #: The setting that moves the file, for the hint when it cannot be written.
    file_setting: str
    #: Written before ``tokens`` (a comment, a version), in this order; not read back.
    header: Mapping[str, object]
    #: The temporary file's name prefix, next to the file.
    temporary_prefix: str


class HashedTokenFile(Generic[E]):
    """A token hash file: issue, revoke, list, verify. Safe to share between threads."""

    def __init__(self, path: Path, spec: TokenFileSpec[E]) -> None:
        self.path = path
        self.spec = spec
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int], tuple[E, ...]] | None = None

    def _unreadable(self, why: object) -> ConfigError:
        return ConfigError(
            f"cannot read the {self.spec.label} {self.path}: {why}",
            hint=f"fix or remove it, then issue the tokens again with `{self.spec.issue_command}`",
        )

    def entries(self) -> tuple[E, ...]:
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

    def _load(self) -> tuple[E, ...]:
        try:
            document: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self._unreadable(exc) from exc
        items = document.get("tokens") if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise self._unreadable("field 'tokens' is missing or not a list")
        holder = self.spec.holder_field
        found = []
        for index, item in enumerate(items):
            if not (
                isinstance(item, dict)
                and isinstance(item.get(holder), str)
                and isinstance(item.get("sha256"), str)
                and SHA256_HEX.fullmatch(item["sha256"])
            ):
                raise self._unreadable(f"tokens[{index}] needs '{holder}' and a hex 'sha256'")
            found.append(self.spec.entry(item[holder], item["sha256"], str(item.get("issued_at", ""))))
        return tuple(found)

    def _save(self, entries: tuple[E, ...]) -> None:
        document = {
            **self.spec.header,
            # The entries are dataclasses (the Protocol cannot say so): their fields are the file's.
            "tokens": [dataclasses.asdict(entry) for entry in entries],  # type: ignore[call-overload]
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # mkstemp creates the file 0600; the rename makes the change atomic for a running server.
            fd, temporary = tempfile.mkstemp(prefix=self.spec.temporary_prefix, dir=self.path.parent)
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
                f"cannot write the {self.spec.label} {self.path}: {exc}",
                hint=f"set {self.spec.file_setting} (or HUB_STATE_DIR) to a writable place",
            ) from exc

    def issue(self, holder: str, *, now: datetime | None = None) -> str:
        """A new random token for the holder (returned once; only its hash is kept)."""
        holder = self.spec.check(holder)
        token = self.spec.prefix + secrets.token_urlsafe(32)
        issued = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0).isoformat()
        entry = self.spec.entry(holder, hash_token(token), issued.replace("+00:00", "Z"))
        self._save((*self.entries(), entry))
        return token

    def revoke(self, holder: str) -> int:
        """Revoke every token of the holder; returns how many there were."""
        holder = self.spec.check(holder)
        entries = self.entries()
        kept = tuple(entry for entry in entries if entry.holder != holder)
        if len(kept) != len(entries):
            self._save(kept)
        return len(entries) - len(kept)

    def verify(self, token: str | None) -> str | None:
        """The holder a presented token belongs to, or None (no, empty or unknown token)."""
        if not token:
            return None
        presented = hash_token(token).encode("ascii")
        found: str | None = None
        for entry in self.entries():
            # No early exit: every hash is compared, in constant time each.
            if hmac.compare_digest(presented, entry.sha256.encode("ascii")) and found is None:
                found = entry.holder
        return found


__all__ = ["HashedToken", "HashedTokenFile", "TokenFileSpec", "hash_token"]
