"""Per-practitioner bearer tokens for the alert gateway: issued once, stored as SHA-256 hashes only.

The token file (JSON, mode 0600, under the state dir by default) holds, per token, the practitioner's
RPPS, the hex SHA-256 of the token and when it was issued; the token itself is printed once by
``hub gateway token issue`` and never written anywhere. Hashing, constant-time verification, the
atomic save and re-reading the file when it changes are :mod:`hub.tokens`, shared with the console's
operator tokens; this module says what is particular to GPs (the ``practitioner`` field, the RPPS check,
the ``hubgp_`` prefix, hints naming ``hub gateway token``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hub.errors import ConfigError
from hub.tokens import HashedTokenFile, TokenFileSpec, hash_token

TOKEN_PREFIX = "hubgp_"  # noqa: S105 - a recognisable prefix (secret scanners), not a secret
FILE_VERSION = 1
#: RPPS numbers are 11 digits; other practitioner identifiers are accepted if they are this tame.
PRACTITIONER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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

    @property
    def holder(self) -> str:
        """The practitioner (the name :mod:`hub.tokens` knows holders by)."""
        return self.practitioner


SPEC = TokenFileSpec(
    entry=TokenEntry,
    holder_field="practitioner",
    check=check_practitioner,
    prefix=TOKEN_PREFIX,
    label="gateway token file",
    issue_command="hub gateway token issue <RPPS>",
    file_setting="HUB_GATEWAY_TOKENS_FILE",
    header={
        "version": FILE_VERSION,
        "comment": "SHA-256 hashes of GP bearer tokens; manage with `hub gateway token issue|revoke`",
    },
    temporary_prefix=".gp-tokens-",
)


class TokenStore(HashedTokenFile[TokenEntry]):
    """The GP token hash file: issue, revoke, verify (:meth:`verify` returns the practitioner)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SPEC)


__all__ = ["TOKEN_PREFIX", "TokenEntry", "TokenStore", "check_practitioner", "hash_token"]
