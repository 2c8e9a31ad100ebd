"""Recipient key access, the pure parts: key ids, who may obtain which key, the rate limit, the recipient
keys the sealer uses, their erasure, and the AuditEvent of every release and refusal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fhir.resources.R4B.auditevent import AuditEvent

from hub.crypto.envelope import open_envelope, parse
from hub.crypto.erase import destroy_patient_keys
from hub.crypto.keyids import (
    parse_recipient_key_id,
    recipient_key_id,
    recipient_keys_prefix,
    well_formed,
)
from hub.crypto.keyring import Keyring
from hub.crypto.keys import LocalKeyProvider
from hub.crypto.records import RecordOpener, RecordSealer
from hub.crypto.store import KeyStore, StoredKey
from hub.errors import DecryptFailed, ErrorCode, KeyDestroyed
from hub.kafka.clients import Record
from hub.keyservice.access import RateLimiter, decide
from hub.keyservice.audit import KeyRequest, audit_key_access
from hub.pathway.network_id import PatientKey
from hub.records import KEY_ID_HEADER
from hub.schemas import schema_errors
from hub.topics import TopicNames, recipient_of_topic

KEK = bytes(range(32))
PATIENT = PatientKey("ins", "urn:oid:1.2.250.1.213.1.4.10", "1").network_id(b"k")
OTHER_PATIENT = PatientKey("ins", "urn:oid:1.2.250.1.213.1.4.10", "2").network_id(b"k")
EVENT = b'{"event_id":"e1","resource":{"note":"MARKER-xyz"}}'
AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring(KeyStore(tmp_path / "keys.sqlite3"), LocalKeyProvider(KEK))


def test_key_ids_name_a_patient_and_a_recipient() -> None:
    """pt-…@<recipient>: parsed back into its halves; patient keys and DLQ keys are not recipient keys."""
    key_id = recipient_key_id(PATIENT, "hosp-a")
    assert key_id == f"{PATIENT}@hosp-a" and well_formed(key_id)
    parsed = parse_recipient_key_id(key_id)
    assert parsed is not None and (parsed.patient_id, parsed.recipient_id) == (PATIENT, "hosp-a")
    assert key_id.startswith(recipient_keys_prefix(PATIENT))
    for other in (PATIENT, "dlq.2026-11.0123abcd", "pt-a@hosp-a", f"{PATIENT}@Hosp-A", f"{PATIENT}@"):
        assert parse_recipient_key_id(other) is None, other
    for bad in ("", "../keys", "a b", "é", "x" * 256, f"{PATIENT}@hosp-a/x", "-leading"):
        assert not well_formed(bad), bad


def test_recipient_topics_are_recognised_under_the_prefix() -> None:
    """hub.pathway.<id>.v1 under the deployment prefix names its recipient; no other topic does."""
    assert recipient_of_topic("t1.hub.pathway.hosp-a.v1", "t1.") == "hosp-a"
    for topic in ("hub.pathway.v1", "t1.hub.pathway.v1", "hub.pathway.hosp-a.v1", "t1.hub.alerts.v1"):
        assert recipient_of_topic(topic, "t1.") is None, topic


def _stored(key_id: str, *, destroyed: bool = False, issued: bool = True) -> StoredKey:
    return StoredKey(
        key_id,
        "local:abc" if issued else "",
        None if destroyed else b"wrapped",
        "2026-11-20T12:00:00+00:00",
        "2026-11-21T12:00:00+00:00" if destroyed else None,
    )


MINE = recipient_key_id(PATIENT, "hosp-a")
THEIRS = recipient_key_id(PATIENT, "gp-dr-x")
NOT_PERMITTED = ErrorCode.KEYS_NOT_PERMITTED


@pytest.mark.parametrize(
    ("case", "key_id", "stored", "status", "code"),
    [
        ("its own key", MINE, _stored(MINE), 200, None),
        ("a malformed id", "not a key id", None, 400, ErrorCode.KEYS_KEY_ID_MALFORMED),
        ("another recipient's key", THEIRS, None, 403, NOT_PERMITTED),
        ("the patient's own key (unified pathway, tables)", PATIENT, None, 403, NOT_PERMITTED),
        ("a DLQ key", "dlq.2026-11.0123abcd", None, 403, NOT_PERMITTED),
        ("a patient never shared with it", MINE, None, 403, NOT_PERMITTED),
        ("an erased patient's tombstone, never issued", MINE, _stored(MINE, destroyed=True, issued=False),
         403, NOT_PERMITTED),
        ("an erased patient it received records of", MINE, _stored(MINE, destroyed=True), 410,
         ErrorCode.CRYPTO_KEY_DESTROYED),
    ],
)  # fmt: skip
def test_who_may_obtain_which_key(
    case: str, key_id: str, stored: StoredKey | None, status: int, code: ErrorCode | None
) -> None:
    """hosp-a gets only keys of its own topic that it received records under; erased: 410 only then."""
    read: list[str] = []

    def lookup(wanted: str) -> StoredKey | None:
        read.append(wanted)
        return stored

    decision = decide("hosp-a", key_id, lookup)
    assert (decision.status, decision.code) == (status, code), case
    assert decision.released is (status == 200)
    # Another recipient's key, or a key of another family, is refused from its id: the store is not read.
    assert read == ([key_id] if key_id == MINE else [])


def test_the_rate_limit_is_a_token_bucket_per_name() -> None:
    """A burst, then one request per 1/rate seconds; names do not share buckets; a burst's first refusal
    is flagged (it is the one audited), the next refusals are not."""
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.admit("a").allowed for _ in range(3)] == [True, True, True]
    first, second = limiter.admit("a"), limiter.admit("a")
    assert (first.allowed, first.first_refusal, first.retry_after) == (False, True, 0.5)
    assert (second.allowed, second.first_refusal) == (False, False)
    assert limiter.admit("b").allowed
    clock.now = 0.5
    assert limiter.admit("a").allowed and not limiter.admit("a").allowed
    clock.now = 10.0
    assert [limiter.admit("a").allowed for _ in range(4)] == [True, True, True, False]
    assert limiter.admit("a").first_refusal is False  # still the same burst
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0.0, 1)


def test_the_rate_limiter_forgets_idle_names_beyond_its_bound() -> None:
    """A flood of names cannot grow memory for ever: refilled buckets are dropped past max_names."""
    clock = Clock()
    limiter = RateLimiter(100.0, 1, clock=clock, max_names=10)
    for index in range(50):
        clock.now += 0.05
        limiter.admit(f"address:{index}")
    assert len(limiter._buckets) <= 30


def test_recipient_copies_are_sealed_under_the_recipient_key_only(keyring: Keyring) -> None:
    """The share stage's copy for hosp-a: hub-key-id pt-…@hosp-a, a key of its own; that key opens
    the copy but neither the unified pathway record nor another recipient's copy."""
    topics = TopicNames("t1.")
    mine, theirs = "t1.hub.pathway.hosp-a.v1", "t1.hub.pathway.gp-dr-x.v1"
    sealer = RecordSealer(keyring, topics, [mine, theirs])
    headers = (("hub-event-id", b"e1"),)
    copy, copy_headers = sealer.seal(mine, PATIENT.encode(), EVENT, headers)
    unified, unified_headers = sealer.seal(topics.pathway, PATIENT.encode(), EVENT, headers)
    other, other_headers = sealer.seal(theirs, PATIENT.encode(), EVENT, headers)
    assert copy is not None and unified is not None and other is not None
    assert dict(copy_headers)[KEY_ID_HEADER] == f"{PATIENT}@hosp-a".encode()
    assert dict(unified_headers)[KEY_ID_HEADER] == PATIENT.encode()
    assert dict(other_headers)[KEY_ID_HEADER] == f"{PATIENT}@gp-dr-x".encode()
    # The hub's own readers open all three with the machine's key access.
    assert (
        RecordOpener(keyring).open_record(Record(mine, 0, 0, 0, PATIENT.encode(), copy, copy_headers)).value
        == EVENT
    )
    # What the key service would release to hosp-a: the stored key of pt-…@hosp-a.
    stored = keyring.store.get(f"{PATIENT}@hosp-a")
    assert stored is not None and stored.wrapped is not None
    released = keyring.provider.unwrap(stored.wrapped, key_id=stored.key_id)
    assert open_envelope(released, parse(copy), topic=mine, record_id="e1") == EVENT
    for sealed, topic in ((unified, topics.pathway), (other, theirs)):
        envelope = parse(sealed)
        with pytest.raises(DecryptFailed):
            open_envelope(AESGCM(released), envelope, topic=topic, record_id="e1")
        # Not even relabelled with hosp-a's key id: the associated data names the real key id.
        with pytest.raises(DecryptFailed):
            open_envelope(released, parse(copy), topic=topic, record_id="e1")


def test_recipient_copy_headers_match_the_asyncapi_contract(keyring: Keyring) -> None:
    """A recipient copy's hub-key-id (pt-…@<recipient>) validates against encryptedRecordHeaders."""
    import yaml  # noqa: PLC0415
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    document = yaml.safe_load((Path(__file__).parents[2] / "schemas" / "asyncapi.yaml").read_text())
    validator = Draft202012Validator(document["components"]["schemas"]["encryptedRecordHeaders"])
    sealer = RecordSealer(keyring, TopicNames(), ["hub.pathway.hosp-a.v1"])
    _, headers = sealer.seal("hub.pathway.hosp-a.v1", PATIENT.encode(), EVENT, (("hub-event-id", b"e1"),))
    named = {name: value.decode() for name, value in headers}
    assert list(validator.iter_errors(named)) == []
    assert list(validator.iter_errors({**named, KEY_ID_HEADER: f"{PATIENT}@Hosp A"}))


def test_no_recipient_key_is_made_once_the_patient_is_erased(keyring: Keyring) -> None:
    """A worker still holding the patient's key cannot start a recipient key after `hub erase`."""
    topics = TopicNames()
    sealer = RecordSealer(keyring, topics, ["hub.pathway.hosp-a.v1"])
    keyring.seal(EVENT, key_id=PATIENT, topic=topics.pathway, record_id="e1")
    keyring.destroy(PATIENT, by="test")
    with pytest.raises(KeyDestroyed):
        sealer.seal("hub.pathway.hosp-a.v1", PATIENT.encode(), EVENT, (("hub-event-id", b"e1"),))
    assert keyring.store.get(f"{PATIENT}@hosp-a") is None


def test_erasure_destroys_the_patients_recipient_keys_and_spares_the_others(keyring: Keyring) -> None:
    """destroy_patient_keys: the patient's key and each pt-…@<recipient> key; another patient's stay."""
    sealer = RecordSealer(keyring, TopicNames(), ["hub.pathway.hosp-a.v1", "hub.pathway.gp-dr-x.v1"])
    for patient in (PATIENT, OTHER_PATIENT):
        for topic in ("hub.pathway.v1", "hub.pathway.hosp-a.v1", "hub.pathway.gp-dr-x.v1"):
            sealer.seal(topic, patient.encode(), EVENT, (("hub-event-id", b"e1"),))
    assert destroy_patient_keys(keyring, [PATIENT], by="dpo") == 3
    store = keyring.store
    for key_id in (PATIENT, f"{PATIENT}@hosp-a", f"{PATIENT}@gp-dr-x"):
        stored = store.get(key_id)
        assert stored is not None and stored.destroyed and stored.issued and stored.wrapped is None
    assert decide("hosp-a", f"{PATIENT}@hosp-a", store.get).status == 410
    for key_id in (OTHER_PATIENT, f"{OTHER_PATIENT}@hosp-a"):
        stored = store.get(key_id)
        assert stored is not None and not stored.destroyed
    # An id that was never used leaves a tombstone that says nothing to a recipient.
    assert destroy_patient_keys(keyring, ["pt-" + "q" * 24], by="dpo") == 0
    assert decide("hosp-a", f"pt-{'q' * 24}@hosp-a", store.get).status == 403


def _requests() -> dict[str, tuple[KeyRequest, object]]:
    mine = recipient_key_id(PATIENT, "hosp-a")
    return {
        "release": (
            KeyRequest("r1", mine, "hosp-a", "0123456789ab", "127.0.0.1"),
            decide("hosp-a", mine, _stored),
        ),
        "another recipient's key": (
            KeyRequest("r2", recipient_key_id(PATIENT, "gp-dr-x"), "hosp-a", "0123456789ab", "10.0.0.7"),
            decide("hosp-a", recipient_key_id(PATIENT, "gp-dr-x"), lambda k: None),
        ),
        "malformed": (
            KeyRequest("r3", "../../etc/passwd MARKER", "hosp-a", None, "::1"),
            decide("hosp-a", "../../etc/passwd MARKER", lambda k: None),
        ),
        "erased": (
            KeyRequest("r4", mine, "hosp-a", "0123456789ab", None),
            decide("hosp-a", mine, lambda k: _stored(k, destroyed=True)),
        ),
    }


@pytest.mark.parametrize("case", list(_requests()))
def test_key_access_audit_events_match_the_schema_and_fhir(case: str) -> None:
    """Every release and refusal is a keyAccess record of audit-event.schema.json and a FHIR AuditEvent;
    it names the requester, the key and the patient, never a token or a malformed id's text."""
    request, decision = _requests()[case]
    audit = audit_key_access(request, decision, recorded=AT)  # type: ignore[arg-type]
    assert schema_errors("audit-event.schema.json", audit) == []
    AuditEvent.model_validate(audit)
    text = json.dumps(audit)
    assert "MARKER" not in text and "passwd" not in text
    released = case == "release"
    assert audit["outcome"] == ("0" if released else "4")
    assert audit["subtype"][0]["code"] == ("key-release" if released else "key-refusal")
    # A release can not be recorded as a refusal, nor the reverse.
    assert schema_errors("audit-event.schema.json", {**audit, "outcome": "4" if released else "0"})


def test_an_unauthenticated_request_is_audited_without_a_recipient() -> None:
    """401: the requester is an unauthenticated client at its address; the record key says so."""
    from hub.keyservice.access import KeyDecision  # noqa: PLC0415

    request = KeyRequest("r5", MINE, None, "fedcba987654", "192.0.2.1")
    audit = audit_key_access(
        request,
        KeyDecision(401, ErrorCode.KEYS_CREDENTIAL_INVALID, "unknown or revoked credential"),
        recorded=AT,
    )
    assert schema_errors("audit-event.schema.json", audit) == []
    requester = audit["agent"][1]
    assert requester["who"] == {"display": "unauthenticated client"}
    assert requester["network"] == {"address": "192.0.2.1", "type": "2"}
    assert request.record_key == b"unauthenticated"
    with pytest.raises(ValueError, match="aware"):
        audit_key_access(request, decide("hosp-a", MINE, lambda k: None), recorded=datetime(2026, 1, 1))  # noqa: DTZ001


def test_the_key_service_and_the_broker_certificates_come_from_one_ca(tmp_path: Path) -> None:
    """A CA made for the key service is the one `hub broker start --secure` then uses (never replaced),
    so a hospital trusts one ca.pem; a certificate names the listening host, and is issued again when
    that changes."""
    from cryptography import x509  # noqa: PLC0415

    from hub.broker.tls import TlsFiles, ensure_server_certificate, ensure_tls  # noqa: PLC0415

    files = TlsFiles(tmp_path / "tls")
    cert, key = ensure_server_certificate(files, "key-service", ["localhost", "127.0.0.1"])
    ca = files.ca_cert.read_bytes()
    assert not files.exists()  # no broker certificate yet: the broker is not made secure by this
    ensure_tls(files)
    assert files.ca_cert.read_bytes() == ca and files.exists()
    authority = x509.load_pem_x509_certificate(ca)
    for path in (cert, files.broker_cert):
        x509.load_pem_x509_certificate(path.read_bytes()).verify_directly_issued_by(authority)
    assert key.stat().st_mode & 0o777 == 0o600
    assert ensure_server_certificate(files, "key-service", ["localhost", "127.0.0.1"]) == (cert, key)
    first = cert.read_bytes()
    ensure_server_certificate(files, "key-service", ["localhost", "127.0.0.1", "keys.hub.example"])
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert cert.read_bytes() != first and "keys.hub.example" in names.value.get_values_for_type(x509.DNSName)
