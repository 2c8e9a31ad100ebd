"""One exception root and the stable error codes every stage, receipt, DLQ header and doc uses.

Bad input is a value (:class:`hub.ingest.outcome.Rejected` carrying an :class:`ErrorCode`), not an
exception. Exceptions are for bugs, bad configuration and infrastructure::

    HubError                       every error the hub raises on purpose
    ├── ConfigError                a configuration file or setting is wrong  (config.invalid)
    │   └── SecretUnavailable      a secret file or variable is missing  (config.secret_missing)
    ├── BrokerError                the Kafka broker cannot be started or reached  (broker.*)
    │   └── PrerequisiteMissing    Java or Maven is not installed  (broker.prerequisite_missing)
    └── CryptoError                an encrypted record or key cannot be used  (crypto.*)
        ├── EnvelopeInvalid        not a hub envelope, or an unknown version  (crypto.envelope_invalid)
        ├── DecryptFailed          tampered, or bound to another key/topic/record  (crypto.decrypt_failed)
        ├── KeyUnknown             the key store has no such key  (crypto.key_unknown)
        ├── KeyDestroyed           the key was destroyed: its records are erased  (crypto.key_destroyed)
        └── KekInvalid             the key-encryption key cannot unwrap the data key  (crypto.kek_invalid)

Codes are part of the public contract: never rename one, add new ones instead.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable, dotted error codes (DESIGN.md section 2)."""

    # Rejects of an ingest record: each lands in hub.receipts.v1 and hub.dlq.v1.
    SOURCE_UNKNOWN = "source.unknown"
    SIGNATURE_MISSING = "signature.missing"
    SIGNATURE_INVALID = "signature.invalid"
    SIGNATURE_EXPIRED = "signature.expired"
    PAYLOAD_MALFORMED = "payload.malformed"
    PAYLOAD_TOO_LARGE = "payload.too_large"
    FHIR_INVALID = "fhir.invalid"
    FHIR_VERSION_UNSUPPORTED = "fhir.version.unsupported"
    PATIENT_UNRESOLVED = "patient.unresolved"
    #: One input names two patients (or one patient with two contradicting identifiers).
    PATIENT_AMBIGUOUS = "patient.ambiguous"
    #: A Consent the share stage cannot interpret; it changes nothing and is audited.
    CONSENT_UNINTERPRETABLE = "consent.uninterpretable"
    #: The hub itself failed on this record (a bug); kept in the DLQ for replay after the fix.
    INTERNAL = "hub.internal_error"
    # Operating errors, raised as exceptions.
    CONFIG_INVALID = "config.invalid"
    CONFIG_SECRET_MISSING = "config.secret_missing"  # noqa: S105 - an error code, not a secret
    BROKER_UNAVAILABLE = "broker.unavailable"
    BROKER_PREREQUISITE_MISSING = "broker.prerequisite_missing"
    BROKER_START_FAILED = "broker.start_failed"
    # Encryption at rest and erasure (docs/SECURITY.md).
    CRYPTO_ENVELOPE_INVALID = "crypto.envelope_invalid"
    CRYPTO_DECRYPT_FAILED = "crypto.decrypt_failed"
    CRYPTO_KEY_UNKNOWN = "crypto.key_unknown"
    CRYPTO_KEY_DESTROYED = "crypto.key_destroyed"
    CRYPTO_KEK_INVALID = "crypto.kek_invalid"
    #: An input about a patient whose data key was destroyed (`hub erase`): the hub keeps nothing of it.
    PATIENT_ERASED = "patient.erased"


class HubError(Exception):
    """Root of every exception the hub raises on purpose; carries a stable code and a hint."""

    code: ErrorCode = ErrorCode.CONFIG_INVALID

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"[{self.code}] {self.message}"
        return f"{text}\n  what to do: {self.hint}" if self.hint else text


class ConfigError(HubError):
    """A configuration file or setting is invalid; the message names the file and field."""

    code = ErrorCode.CONFIG_INVALID


class SecretUnavailable(ConfigError):
    """A secret reference (file or environment variable) cannot be resolved."""

    code = ErrorCode.CONFIG_SECRET_MISSING


class BrokerError(HubError):
    """The Kafka broker cannot be started, stopped or reached."""

    code = ErrorCode.BROKER_UNAVAILABLE


class BrokerStartFailed(BrokerError):
    """The embedded broker process did not come up."""

    code = ErrorCode.BROKER_START_FAILED


class PrerequisiteMissing(BrokerError):
    """A tool the embedded broker needs (Java 17+, Maven) is missing."""

    code = ErrorCode.BROKER_PREREQUISITE_MISSING


class CryptoError(HubError):
    """An encrypted record or a data key cannot be used; messages name key ids, never content."""

    code = ErrorCode.CRYPTO_DECRYPT_FAILED


class EnvelopeInvalid(CryptoError):
    """The bytes are not a hub envelope, or one of a version this hub does not know."""

    code = ErrorCode.CRYPTO_ENVELOPE_INVALID


class DecryptFailed(CryptoError):
    """Authentication failed: tampered bytes, or a ciphertext moved to another key, topic or record."""

    code = ErrorCode.CRYPTO_DECRYPT_FAILED


class KeyUnknown(CryptoError):
    """The key store holds no key of that id."""

    code = ErrorCode.CRYPTO_KEY_UNKNOWN


class KeyDestroyed(CryptoError):
    """The data key was destroyed (erasure): what it encrypted can never be read again."""

    code = ErrorCode.CRYPTO_KEY_DESTROYED


class KekInvalid(CryptoError):
    """The configured key-encryption key did not wrap this data key (a wrong or rotated KEK)."""

    code = ErrorCode.CRYPTO_KEK_INVALID


__all__ = [
    "BrokerError",
    "BrokerStartFailed",
    "ConfigError",
    "CryptoError",
    "DecryptFailed",
    "EnvelopeInvalid",
    "ErrorCode",
    "HubError",
    "KekInvalid",
    "KeyDestroyed",
    "KeyUnknown",
    "PrerequisiteMissing",
    "SecretUnavailable",
]
