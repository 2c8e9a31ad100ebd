"""Per-recipient credentials of the key service: bearer tokens issued once, stored as SHA-256 hashes only.

The file (JSON, mode 0600) lists, per token, the recipient id, the hex SHA-256 of the token and when
it was issued; the token itself is shown once by ``hub recipients credentials issue`` (or written to
the file it is given) and kept nowhere else. Hashing, constant-time verification, the atomic save and
re-reading the file when it changes are :mod:`hub.tokens`, shared with the GPs' and the operators'
tokens: a revocation reaches a running key service at its next request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hub.errors import ConfigError
from hub.tokens import HashedTokenFile, TokenFileSpec

TOKEN_PREFIX = "hubrk_"  # noqa: S105 - a recognisable prefix (secret scanners), not a secret
FILE_VERSION = 1
#: The recipient id pattern of schemas/recipients.schema.json.
RECIPIENT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


def check_recipient(recipient: str) -> str:
    """The recipient id, stripped, or a :class:`ConfigError` naming what is wrong."""
    text = recipient.strip()
    if not RECIPIENT_PATTERN.fullmatch(text):
        raise ConfigError(
            f"{recipient!r} is not a recipient id",
            hint="give the id registered in the recipient registry, e.g. "
            "`hub recipients credentials issue demo-hospital-chu`",
        )
    return text


@dataclass(frozen=True)
class CredentialEntry:
    """One issued credential, without the token."""

    recipient: str
    sha256: str
    issued_at: str

    @property
    def holder(self) -> str:
        """The recipient (the name :mod:`hub.tokens` knows holders by)."""
        return self.recipient


SPEC = TokenFileSpec(
    entry=CredentialEntry,
    holder_field="recipient",
    check=check_recipient,
    prefix=TOKEN_PREFIX,
    label="recipient credentials file",
    issue_command="hub recipients credentials issue <recipient id>",
    file_setting="HUB_KEY_SERVICE_CREDENTIALS_FILE",
    header={
        "version": FILE_VERSION,
        "comment": "SHA-256 hashes of the recipients' key-service tokens; manage with "
        "`hub recipients credentials issue|revoke|list`",
    },
    temporary_prefix=".recipient-credentials-",
)


class RecipientCredentials(HashedTokenFile[CredentialEntry]):
    """The recipients' credential hash file: :meth:`verify` returns the recipient id, or None."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SPEC)


__all__ = ["TOKEN_PREFIX", "CredentialEntry", "RecipientCredentials", "check_recipient"]
