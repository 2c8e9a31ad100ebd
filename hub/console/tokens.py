"""Operator tokens for the console: issued once, stored as SHA-256 hashes only (like the GPs' tokens).

The file (JSON, mode 0600) lists, per token, the operator's name, the hex SHA-256 of the token and
when it was issued. The token is printed once by ``hub console token issue`` and written nowhere.
The store itself (constant-time verification against every hash, atomic save, re-read on change) is
:mod:`hub.tokens`, shared with the gateway; this module says what is particular to operators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hub.errors import ConfigError
from hub.settings import Settings
from hub.tokens import HashedTokenFile, TokenFileSpec

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

    @property
    def holder(self) -> str:
        """The operator (the name :mod:`hub.tokens` knows holders by)."""
        return self.operator


SPEC = TokenFileSpec(
    entry=OperatorToken,
    holder_field="operator",
    check=check_operator,
    prefix=TOKEN_PREFIX,
    label="operator token file",
    issue_command="hub console token issue <operator>",
    file_setting="HUB_CONSOLE_TOKENS_FILE",
    # No version field: files written before the store was shared have none, and nothing reads one.
    header={"comment": "SHA-256 hashes of operator tokens; manage with `hub console token issue|revoke`"},
    temporary_prefix=".operator-tokens-",
)


class OperatorTokens(HashedTokenFile[OperatorToken]):
    """The operator token hash file: issue, revoke, list, verify (:meth:`verify` returns the operator)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SPEC)


__all__ = ["TOKEN_PREFIX", "OperatorToken", "OperatorTokens", "check_operator", "tokens_file"]
