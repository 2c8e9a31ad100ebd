"""Key ids: what names a data key in the ``hub-key-id`` header, and which of them a recipient may hold.

Three families, all pseudonymous:

- ``pt-…``: a patient's own key: the unified pathway, the internal topics, alerts and table values;
- ``pt-…@<recipient id>``: the key of one (recipient, patient) pair, for that recipient's topic
  ``hub.pathway.<recipient>.v1`` only; the key service hands it to that recipient and nobody else;
- ``dlq.YYYY-MM.<hex>``: one reject in the dead-letter queue.

A recipient key opens nothing outside its recipient's topic by construction: it is a key of its own
(random, stored wrapped like any other), never derived from or equal to the patient's key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Between the patient and the recipient in a recipient key id. Neither network patient ids
#: (``pt-`` and base32) nor recipient ids (``[a-z0-9-]``) contain it.
RECIPIENT_SEPARATOR = "@"
#: Any key id the hub writes: 1 to 255 bytes of ASCII letters, digits and ``.``, ``_``, ``@``, ``-``.
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,254}")
#: A recipient key id: a network patient id (``hub.pathway.network_id``), ``@``, a recipient id
#: (schemas/recipients.schema.json).
RECIPIENT_KEY_ID = re.compile(r"(pt-[a-z2-7]{24})@([a-z0-9][a-z0-9-]{1,62})")


@dataclass(frozen=True)
class RecipientKeyId:
    """The two halves of a recipient key id."""

    patient_id: str
    recipient_id: str

    def __str__(self) -> str:
        return f"{self.patient_id}{RECIPIENT_SEPARATOR}{self.recipient_id}"


def recipient_key_id(patient_id: str, recipient_id: str) -> str:
    """The key id of ``recipient_id``'s copies of ``patient_id``'s events."""
    return str(RecipientKeyId(patient_id, recipient_id))


def well_formed(key_id: str) -> bool:
    """True when ``key_id`` could name a hub key (any family); says nothing about whether it exists."""
    return KEY_ID.fullmatch(key_id) is not None


def parse_recipient_key_id(key_id: str) -> RecipientKeyId | None:
    """The patient and recipient of a recipient key id; None for any other key id."""
    match = RECIPIENT_KEY_ID.fullmatch(key_id)
    return None if match is None else RecipientKeyId(match.group(1), match.group(2))


def recipient_keys_prefix(patient_id: str) -> str:
    """What every recipient key of ``patient_id`` starts with (erasure finds them by it)."""
    return patient_id + RECIPIENT_SEPARATOR


__all__ = [
    "KEY_ID",
    "RECIPIENT_KEY_ID",
    "RECIPIENT_SEPARATOR",
    "RecipientKeyId",
    "parse_recipient_key_id",
    "recipient_key_id",
    "recipient_keys_prefix",
    "well_formed",
]
