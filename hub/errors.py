"""One exception root and the stable error codes every stage, receipt, DLQ header and doc uses.

Bad input is a value (:class:`hub.ingest.outcome.Rejected` carrying an :class:`ErrorCode`), not an
exception. Exceptions are for bugs, bad configuration and infrastructure::

    HubError                       every error the hub raises on purpose
    ├── ConfigError                a configuration file or setting is wrong  (config.invalid)
    │   └── SecretUnavailable      a secret file or variable is missing  (config.secret_missing)
    ├── BrokerError                the Kafka broker cannot be started or reached  (broker.*)
    │   ├── PrerequisiteMissing    Java or Maven is not installed  (broker.prerequisite_missing)
    │   └── BrokerRefused          the broker would not take a record `hub publish` sent  (broker.refused)
    ├── PayloadRefused             a file `hub publish` will not send: the hub would refuse it
    │                              (payload.too_large, payload.malformed)
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
    #: The broker answered a produce request with an error (a record larger than the topic takes...).
    BROKER_REFUSED = "broker.refused"
    # Encryption at rest and erasure (docs/SECURITY.md).
    CRYPTO_ENVELOPE_INVALID = "crypto.envelope_invalid"
    CRYPTO_DECRYPT_FAILED = "crypto.decrypt_failed"
    CRYPTO_KEY_UNKNOWN = "crypto.key_unknown"
    CRYPTO_KEY_DESTROYED = "crypto.key_destroyed"
    CRYPTO_KEK_INVALID = "crypto.kek_invalid"
    #: An input about a patient whose data key was destroyed (`hub erase`): the hub keeps nothing of it.
    PATIENT_ERASED = "patient.erased"
    # The key service's refusals (docs/SECURITY.md, "Recipient key access"): answers, not exceptions;
    # an erased patient's key is refused with crypto.key_destroyed.
    #: No credential, or one that is wrong or revoked (HTTP 401).
    KEYS_CREDENTIAL_INVALID = "keys.credential_invalid"
    #: The requested key id is not a key id at all (HTTP 400).
    KEYS_KEY_ID_MALFORMED = "keys.key_id_malformed"
    #: Not this recipient's key, or not one it ever received records under; one code for every
    #: reason, so the answer never says whether a patient exists (HTTP 403).
    KEYS_NOT_PERMITTED = "keys.not_permitted"
    #: Too many requests with one credential, or from one address failing to authenticate (HTTP 429).
    KEYS_RATE_LIMITED = "keys.rate_limited"
    # The audit chain (docs/SECURITY.md, "Tamper-evident audit"): logged, never a reject.
    #: A sealer taking over a partition of hub.audit.v1 found records at its tail it cannot verify (not
    #: sealed with the chain key, replayed, altered, unsealed, or a chain shorter than its checkpoint):
    #: it does not chain onto them and starts a new segment whose first record says what it found.
    AUDIT_TAIL_UNVERIFIABLE = "audit.tail_unverifiable"


class WarningCode(StrEnum):
    """Stable, dotted codes of what the hub ignored in an input it accepted (docs/INGEST.md, Warnings).

    They travel in the ``warnings`` of ``accepted`` and ``duplicate`` receipts and in ``hub sources
    check``, so a source learns why, say, its patients do not link. Like error codes, never renamed.
    Listed most important first: receipts keep that order when they cut a long list.

    ``ins.unqualified``     an INS not used to link (no identity reliability VALI, a test INS this hub
                            does not accept, an INS in a reference that no Patient of the input qualifies)
    ``resource.ignored``    a resource about the patient of a type the hub makes no pathway event of
    ``entry.no_resource``   a Bundle entry without a resource (a DELETE request): nothing applied
    ``element.dropped``     an STU3/R5 element the conversion to R4 left out (no clinical meaning)
    ``element.carried``     an STU3/R5 element R4 lacks, carried in HL7's cross-version extension
    ``code.system_unknown`` codings in a system the hub does not know and no ConceptMap of the source maps
    ``code.unmapped``       a local code the source's ConceptMaps for its system do not list
    ``unit.unknown``        a quantity in a unit the hub cannot convert to its canonical unit
    ``instant.unreadable``  a date-time the hub cannot read, passed on as sent
    ``warnings.truncated``  more warnings than a receipt lists
    """

    INS_UNQUALIFIED = "ins.unqualified"
    RESOURCE_IGNORED = "resource.ignored"
    ENTRY_NO_RESOURCE = "entry.no_resource"
    ELEMENT_DROPPED = "element.dropped"
    ELEMENT_CARRIED = "element.carried"
    CODE_SYSTEM_UNKNOWN = "code.system_unknown"
    CODE_UNMAPPED = "code.unmapped"
    UNIT_UNKNOWN = "unit.unknown"
    INSTANT_UNREADABLE = "instant.unreadable"
    WARNINGS_TRUNCATED = "warnings.truncated"


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


class BrokerRefused(BrokerError):
    """The broker did not acknowledge a record: the message gives its reason, never the record's content."""

    code = ErrorCode.BROKER_REFUSED


class PayloadRefused(HubError):
    """A file the hub would refuse as a payload (``code``: its ingest reject code), refused before sending."""

    def __init__(self, code: ErrorCode, message: str, *, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.code = code


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


class BatchOutdated(HubError):
    """A rebalance reassigned a batch's partitions while it was sent: the rest of it is not sent.

    Never shown to a user: the agent reads the batch again (hub.streams.agents), for whoever owns the
    partitions now.
    """

    code = ErrorCode.INTERNAL


class KekInvalid(CryptoError):
    """The configured key-encryption key did not wrap this data key (a wrong or rotated KEK)."""

    code = ErrorCode.CRYPTO_KEK_INVALID


__all__ = [
    "BatchOutdated",
    "BrokerError",
    "BrokerRefused",
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
    "PayloadRefused",
    "PrerequisiteMissing",
    "SecretUnavailable",
    "WarningCode",
]
