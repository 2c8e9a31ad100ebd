"""Network patient ids: a keyed hash of who the patient is, never the identifier itself.

A qualified INS links records across sources; without one, a patient is known per source by the
source's own identifier, so two sources give two ids until a later stage links them. Ids are
pseudonymous (HMAC with a hub secret), safe for Kafka keys and logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Literal

#: Identifier system under which the hub writes its own network patient id into resources.
NETWORK_ID_SYSTEM = "urn:hub:network-patient-id"

INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"
INS_NIA = "urn:oid:1.2.250.1.213.1.4.9"
INS_TEST_NIR = "urn:oid:1.2.250.1.213.1.4.10"
INS_DEMO_NIR = "urn:oid:1.2.250.1.213.1.4.11"
PRODUCTION_INS_SYSTEMS = frozenset({INS_NIR, INS_NIA})
TEST_INS_SYSTEMS = frozenset({INS_TEST_NIR, INS_DEMO_NIR})

#: FR Core: an INS may link records only when the identity is validated ("VALI").
IDENTITY_RELIABILITY_URL = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
QUALIFIED_RELIABILITY_CODE = "VALI"


@dataclass(frozen=True)
class PatientKey:
    """What a patient is known by: a qualified INS, or one source's local identifier."""

    basis: Literal["ins", "local"]
    namespace: str  # the INS system, or the source id
    value: str

    def network_id(self, key: bytes) -> str:
        """The pseudonymous network patient id for this key."""
        message = "\x1f".join((self.basis, self.namespace, self.value)).encode()
        digest = hmac.new(key, message, hashlib.sha256).digest()[:15]
        return "pt-" + base64.b32encode(digest).decode().lower()


def ins_systems(*, allow_test_ins: bool) -> frozenset[str]:
    """The INS systems accepted as linking identifiers."""
    return PRODUCTION_INS_SYSTEMS | TEST_INS_SYSTEMS if allow_test_ins else PRODUCTION_INS_SYSTEMS


def is_identity_validated(patient: dict[str, Any]) -> bool:
    """True when the Patient carries FR Core identity reliability ``VALI``."""
    for extension in patient.get("extension", ()):
        if extension.get("url") != IDENTITY_RELIABILITY_URL:
            continue
        for part in extension.get("extension", ()):
            coding = part.get("valueCoding") or {}
            if part.get("url") == "identityReliability" and coding.get("code") == (
                QUALIFIED_RELIABILITY_CODE
            ):
                return True
    return False
