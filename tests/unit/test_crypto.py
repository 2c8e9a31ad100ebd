"""The crypto core: envelopes bound to key, topic and record; keys wrapped, cached and destroyed."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from hub.crypto.config import kek_bytes, keyring_from_settings
from hub.crypto.envelope import is_envelope, parse
from hub.crypto.keyids import recipient_key_id
from hub.crypto.keyring import Keyring
from hub.crypto.keys import LocalKeyProvider, parse_kek
from hub.crypto.records import RecordOpener, RecordSealer, SealedTable
from hub.crypto.store import KeyStore, StoredKey
from hub.errors import (
    ConfigError,
    DecryptFailed,
    EnvelopeInvalid,
    ErrorCode,
    KekInvalid,
    KeyDestroyed,
    KeyUnknown,
    SecretUnavailable,
)
from hub.kafka.clients import Record
from hub.records import ENC_HEADER, KEY_ID_HEADER, RECORD_ID_HEADER, Outgoing
from hub.settings import Settings
from hub.topics import TopicNames

KEK = bytes(range(32))
OTHER_KEK = bytes(range(1, 33))
PLAIN = b'{"event_id":"e1","resource":{"note":"MARKER-xyz"}}'


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys.sqlite3")


@pytest.fixture
def keyring(store: KeyStore) -> Keyring:
    return Keyring(store, LocalKeyProvider(KEK))


def test_round_trip_and_envelope_is_self_describing(keyring: Keyring) -> None:
    """A sealed value opens in its context; the envelope names its key id and hides the plaintext."""
    sealed = keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    assert is_envelope(sealed)
    assert not is_envelope(PLAIN)
    assert parse(sealed).key_id == "pt-a"
    assert b"MARKER" not in sealed
    assert keyring.open(sealed, topic="t", record_id="e1") == PLAIN


def test_each_seal_uses_a_fresh_nonce(keyring: Keyring) -> None:
    """Two seals of the same plaintext differ (a reused GCM nonce would leak their XOR)."""
    first = keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    second = keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    assert parse(first).nonce != parse(second).nonce


@pytest.mark.parametrize("position", [-1, -20, 30])
def test_tampered_ciphertext_fails(keyring: Keyring, position: int) -> None:
    """One flipped bit anywhere in the ciphertext or tag: crypto.decrypt_failed."""
    sealed = bytearray(keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1"))
    sealed[position] ^= 1
    with pytest.raises(DecryptFailed) as caught:
        keyring.open(bytes(sealed), topic="t", record_id="e1")
    assert caught.value.code == ErrorCode.CRYPTO_DECRYPT_FAILED


@pytest.mark.parametrize(("topic", "record_id"), [("other-topic", "e1"), ("t", "e2")])
def test_ciphertext_moved_to_another_topic_or_record_fails(
    keyring: Keyring, topic: str, record_id: str
) -> None:
    """The associated data binds topic and record id: the same bytes elsewhere do not open."""
    sealed = keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    with pytest.raises(DecryptFailed):
        keyring.open(sealed, topic=topic, record_id=record_id)


def test_ciphertext_moved_to_another_patient_key_fails(keyring: Keyring) -> None:
    """Rewriting the envelope's key id to another patient's: the other key and the AAD both refuse it."""
    keyring.seal(b"x", key_id="pt-b", topic="t", record_id="e1")  # pt-b exists
    sealed = keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    moved = sealed.replace(b"pt-a", b"pt-b", 1)
    with pytest.raises(DecryptFailed):
        keyring.open(moved, topic="t", record_id="e1")


def test_destroyed_key_has_its_own_code_and_forbids_new_records(keyring: Keyring, store: KeyStore) -> None:
    """After destroy: opening says crypto.key_destroyed, sealing refuses, the store keeps no key bytes."""
    sealed = keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    assert keyring.destroy("pt-a", by="test") is True
    with pytest.raises(KeyDestroyed) as caught:
        keyring.open(sealed, topic="t", record_id="e1")
    assert caught.value.code == ErrorCode.CRYPTO_KEY_DESTROYED
    with pytest.raises(KeyDestroyed):
        keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e2")
    stored = store.get("pt-a")
    assert stored is not None and stored.wrapped is None and stored.destroyed


def test_destroying_an_unused_id_forbids_it(keyring: Keyring) -> None:
    """Erasing a patient the store never saw leaves a tombstone: nothing is encrypted under it later."""
    assert keyring.destroy("pt-new", by="test") is False
    with pytest.raises(KeyDestroyed):
        keyring.seal(PLAIN, key_id="pt-new", topic="t", record_id="e1")


def test_destroy_reaches_another_process_keyring_after_its_cache_ttl(store: KeyStore, tmp_path: Path) -> None:
    """A worker's cached key stops working once its TTL passes after another process destroyed it."""
    clock = Clock()
    worker = Keyring(store, LocalKeyProvider(KEK), ttl_seconds=5.0, clock=clock)
    sealed = worker.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    operator = Keyring(KeyStore(tmp_path / "keys.sqlite3"), LocalKeyProvider(KEK))
    operator.destroy("pt-a", by="test")
    assert worker.open(sealed, topic="t", record_id="e1") == PLAIN  # within the TTL
    clock.now = 5.1
    with pytest.raises(KeyDestroyed):
        worker.open(sealed, topic="t", record_id="e1")


class CountingStore(KeyStore):
    """The key store, counting the reads of keys and of the destruction log."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.key_reads = 0
        self.log_reads = 0

    def get_many(self, key_ids: Iterable[str]) -> dict[str, StoredKey]:
        self.key_reads += 1
        return super().get_many(key_ids)

    def destroyed_since(self, seen: int | None) -> tuple[list[str], int]:
        self.log_reads += 1
        return super().destroyed_since(seen)


def test_cached_keys_are_checked_against_the_store_in_one_query_per_ttl(tmp_path: Path) -> None:
    """Past the TTL the keyring asks the store once which keys were destroyed, not for every key again;
    the one destroyed meanwhile by another process stops working, the others go on from the cache."""
    clock = Clock()
    store = CountingStore(tmp_path / "keys.sqlite3")
    worker = Keyring(store, LocalKeyProvider(KEK), ttl_seconds=5.0, clock=clock)
    patients = [f"pt-{n}" for n in range(50)]
    worker.prepare((patient, None) for patient in patients)
    sealed = {patient: worker.seal(PLAIN, key_id=patient, topic="t", record_id="e1") for patient in patients}
    Keyring(KeyStore(tmp_path / "keys.sqlite3"), LocalKeyProvider(KEK)).destroy("pt-7", by="test")
    clock.now = 5.1
    store.key_reads = store.log_reads = 0
    opened = {}
    for patient, value in sealed.items():
        try:
            opened[patient] = worker.open(value, topic="t", record_id="e1")
        except KeyDestroyed:
            opened[patient] = b""
    assert opened == {patient: b"" if patient == "pt-7" else PLAIN for patient in patients}
    # One look at the destruction log for the whole cache; the store read once more: for pt-7 alone.
    assert (store.log_reads, store.key_reads) == (1, 1)


def test_a_destruction_written_by_any_process_reaches_the_log(tmp_path: Path) -> None:
    """The log is kept by triggers in the file: a key destroyed by SQL that knows nothing of it (an
    earlier version's ``hub erase``), and a tombstone for an id never used, both reach a worker."""
    path = tmp_path / "keys.sqlite3"
    clock = Clock()
    worker = Keyring(KeyStore(path), LocalKeyProvider(KEK), ttl_seconds=5.0, clock=clock)
    sealed = worker.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    with sqlite3.connect(path) as earlier_version:
        earlier_version.execute(
            "UPDATE data_keys SET wrapped = NULL, destroyed_at = '2026-12-08T00:00:00+00:00' "
            "WHERE key_id = 'pt-a'"
        )
    KeyStore(path).destroy("pt-never-seen", by="test")
    assert worker.open(sealed, topic="t", record_id="e1") == PLAIN  # within the TTL
    clock.now = 5.1
    with pytest.raises(KeyDestroyed):
        worker.open(sealed, topic="t", record_id="e1")
    assert KeyStore(path).destroyed_since(0)[0] == ["pt-a", "pt-never-seen"]


def test_a_store_made_before_the_destruction_log_gets_it_when_opened(tmp_path: Path) -> None:
    """A key store file of an earlier version (no log, no triggers) is given both at its first opening."""
    path = tmp_path / "keys.sqlite3"
    with sqlite3.connect(path) as earlier_version:
        earlier_version.execute(
            "CREATE TABLE data_keys (key_id TEXT PRIMARY KEY, kek_id TEXT NOT NULL, wrapped BLOB, "
            "created_at TEXT NOT NULL, destroyed_at TEXT, destroyed_by TEXT)"
        )
    store = KeyStore(path)
    assert store.destroyed_since(None) == ([], 0)
    Keyring(store, LocalKeyProvider(KEK)).seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    store.destroy("pt-a", by="test")
    assert store.destroyed_since(0) == (["pt-a"], 1)
    assert store.destroyed_since(1) == ([], 1)


def test_a_cached_key_is_unwrapped_again_after_unwrap_seconds(tmp_path: Path) -> None:
    """However often it is used, a key is read and unwrapped again once cached ``unwrap_seconds``: a
    KEK revoked in a KMS stops a running worker within that time."""
    clock = Clock()
    store = CountingStore(tmp_path / "keys.sqlite3")
    worker = Keyring(store, LocalKeyProvider(KEK), ttl_seconds=5.0, unwrap_seconds=300.0, clock=clock)
    sealed = worker.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    store.key_reads = 0
    for second in range(0, 300, 4):
        clock.now = float(second)
        worker.open(sealed, topic="t", record_id="e1")
    assert store.key_reads == 0
    clock.now = 301.0
    worker.open(sealed, topic="t", record_id="e1")
    assert store.key_reads == 1


def test_destroyed_key_bytes_are_not_left_in_the_store_file(keyring: Keyring, store: KeyStore) -> None:
    """secure_delete and the WAL checkpoint: the wrapped key is found nowhere in the files after destroy."""
    keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    stored = store.get("pt-a")
    assert stored is not None and stored.wrapped is not None
    wrapped = stored.wrapped
    keyring.destroy("pt-a", by="test")
    for path in store.path.parent.iterdir():
        assert wrapped not in path.read_bytes(), path


def test_wrong_kek_cannot_unwrap(store: KeyStore) -> None:
    """A keyring with another KEK over the same store: crypto.kek_invalid, never a wrong plaintext."""
    sealed = Keyring(store, LocalKeyProvider(KEK)).seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    with pytest.raises(KekInvalid) as caught:
        Keyring(store, LocalKeyProvider(OTHER_KEK)).open(sealed, topic="t", record_id="e1")
    assert caught.value.code == ErrorCode.CRYPTO_KEK_INVALID


def test_unknown_key_and_bad_envelopes(keyring: Keyring) -> None:
    """An id the store never had, a truncated envelope and an unknown version each have their code."""
    sealed = keyring.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    with pytest.raises(KeyUnknown):
        keyring.open(sealed.replace(b"pt-a", b"pt-z", 1), topic="t", record_id="e1")
    with pytest.raises(EnvelopeInvalid):
        keyring.open(sealed[:20], topic="t", record_id="e1")
    with pytest.raises(EnvelopeInvalid):
        keyring.open(b"HE\x02" + sealed[3:], topic="t", record_id="e1")


def test_kek_from_env_and_from_file_are_the_same_key(tmp_path: Path) -> None:
    """HUB_KEK (hex) and HUB_KEK_FILE (base64) give one KEK: what one seals, the other opens."""
    kek_file = tmp_path / "kek.key"
    kek_file.write_text(base64.b64encode(KEK).decode() + "\n", encoding="utf-8")
    store_file = tmp_path / "k.sqlite3"
    from_env = Settings(kek=KEK.hex(), key_store_file=store_file)  # type: ignore[arg-type]
    from_file = Settings(kek_file=kek_file, key_store_file=store_file)
    assert kek_bytes(from_env) == kek_bytes(from_file) == KEK
    sealed = keyring_from_settings(from_env).seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    assert keyring_from_settings(from_file).open(sealed, topic="t", record_id="e1") == PLAIN


def test_missing_or_malformed_kek_is_a_configuration_error(tmp_path: Path) -> None:
    """No KEK: config.secret_missing with a hint; a short or non-key value: config.invalid."""
    with pytest.raises(SecretUnavailable):
        kek_bytes(Settings())
    with pytest.raises(SecretUnavailable):
        kek_bytes(Settings(kek_file=tmp_path / "absent"))
    for bad in ("too-short", base64.b64encode(b"x" * 16).decode()):
        with pytest.raises(ConfigError):
            parse_kek(bad)


def test_record_sealer_headers_say_scheme_and_key_never_content(keyring: Keyring) -> None:
    """A pathway record: headers name scheme, patient key id and event id; a receipt stays clear."""
    topics = TopicNames("p.")
    sealer = RecordSealer(keyring, topics)
    value, headers = sealer.seal(topics.pathway, b"pt-a", PLAIN, (("hub-event-id", b"e1"),))
    assert value is not None and is_envelope(value)
    named = dict(headers)
    assert named[ENC_HEADER] == b"aes-256-gcm/v1"
    assert named[KEY_ID_HEADER] == b"pt-a"
    assert named[RECORD_ID_HEADER] == b"e1"
    assert b"MARKER" not in b"".join(v for _, v in headers)
    assert sealer.seal(topics.receipts, b"src", b"{}", ()) == (b"{}", ())
    record = Record(topics.pathway, 0, 0, 0, b"pt-a", value, headers)
    assert RecordOpener(keyring).open_record(record).value == PLAIN
    # Read as if it had been copied to another recipient's topic: refused.
    with pytest.raises(DecryptFailed):
        RecordOpener(keyring).open_record(Record("p.hub.pathway.x.v1", 0, 0, 0, b"pt-a", value, headers))


def test_alert_and_dlq_keys(keyring: Keyring) -> None:
    """An alert is sealed under its patient's key (not the GP's); the DLQ under a monthly key."""
    topics = TopicNames()
    sealer = RecordSealer(keyring, topics)
    alert = json.dumps({"alert_id": "a1", "patient": {"patient_id": "pt-a"}}).encode()
    _, headers = sealer.seal(topics.alerts, b"10009900019", alert, ())
    assert dict(headers)[KEY_ID_HEADER] == b"pt-a"
    _, dlq_headers = sealer.seal(topics.dlq, None, b"raw", (("hub-origin", b"hub.ingest.v1/0/3"),))
    assert dict(dlq_headers)[KEY_ID_HEADER].startswith(b"dlq.")
    assert dict(dlq_headers)[RECORD_ID_HEADER] == b"hub.ingest.v1/0/3"


def test_opener_refuses_cleartext_where_encryption_is_required(keyring: Keyring) -> None:
    """An internal topic only the hub writes: a cleartext record is refused, not trusted."""
    with pytest.raises(EnvelopeInvalid):
        RecordOpener(keyring).open("hub.pathway.v1", b"{}", (), required=True)


def test_sealed_table_holds_ciphertext_and_forgets_erased_patients(keyring: Keyring) -> None:
    """Table values are sealed per patient and bound to the changelog; a destroyed key reads as absent."""
    backing: dict[str, object] = {}
    table = SealedTable(backing, keyring, topic="app-share-state-changelog")
    table["pt-a"] = {"note": "MARKER-xyz"}
    table["pt-a#held"] = [1]
    table["gp-x|pt-b"] = {"ok": True}
    assert all(isinstance(v, bytes) and b"MARKER" not in v for v in backing.values())
    assert table["pt-a"] == {"note": "MARKER-xyz"}
    assert "pt-a" in table and table.get("absent") is None
    assert parse(backing["pt-a#held"]).key_id == "pt-a"  # type: ignore[arg-type]
    assert parse(backing["gp-x|pt-b"]).key_id == "pt-b"  # type: ignore[arg-type]
    keyring.destroy("pt-a", by="test")
    assert table.get("pt-a") is None and "pt-a" not in table
    assert table.pop("pt-a#held", None) is None
    assert table["gp-x|pt-b"] == {"ok": True}


def test_sealed_headers_match_the_asyncapi_contract(keyring: Keyring) -> None:
    """The headers of a sealed pathway record and a sealed reject validate against encryptedRecordHeaders."""
    import yaml  # noqa: PLC0415
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    document = yaml.safe_load((Path(__file__).parents[2] / "schemas" / "asyncapi.yaml").read_text())
    validator = Draft202012Validator(document["components"]["schemas"]["encryptedRecordHeaders"])
    topics = TopicNames()
    sealer = RecordSealer(keyring, topics)
    patient = "pt-" + "a" * 24
    for topic, key, headers in (
        (topics.pathway, patient.encode(), (("hub-event-id", b"e1"),)),
        (topics.dlq, None, (("hub-origin", b"hub.ingest.v1/0/3"),)),
    ):
        _, sealed = sealer.seal(topic, key, PLAIN, headers)
        found = {k: v.decode() for k, v in sealed}
        assert list(validator.iter_errors(found)) == [], topic


# -- Keys made a batch at a time (Keyring.prepare) -----------------------------------------------------------


def commits_while(store: KeyStore, action: Callable[[], object]) -> int:
    """How many transactions ``store`` committed (each one a sync to disk) while ``action`` ran."""
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        action()
    finally:
        store._db.set_trace_callback(None)
    return sum(statement.strip().upper() == "COMMIT" for statement in statements)


def test_a_batch_of_new_keys_is_made_in_one_commit_and_sealing_then_reads_no_store(
    keyring: Keyring, store: KeyStore
) -> None:
    """Sealing alone commits once per new key; prepared first, the batch's keys take one commit."""
    topics = TopicNames("p.")
    recipient_topic = "p.hub.pathway.hosp-a.v1"
    sealer = RecordSealer(keyring, topics, [recipient_topic])
    batch = [
        Outgoing(topics.pathway, f"pt-{n}".encode(), PLAIN, (("hub-event-id", b"e1"),)) for n in range(20)
    ]
    batch += [Outgoing(recipient_topic, out.key, out.value, out.headers) for out in batch]
    assert commits_while(store, lambda: sealer.seal(topics.pathway, b"pt-one", PLAIN, ())) == 1

    assert commits_while(store, lambda: keyring.prepare(sealer.keys_of(batch))) == 1
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    sealed = [sealer.seal(out.topic, out.key, out.value, out.headers) for out in batch]
    store._db.set_trace_callback(None)
    assert statements == []
    # The recipient's copies are under the (recipient, patient) keys, made with the patient's as parent.
    assert {dict(headers)[KEY_ID_HEADER] for _, headers in sealed[20:]} == {
        recipient_key_id(f"pt-{n}", "hosp-a").encode() for n in range(20)
    }
    opener = RecordOpener(Keyring(store, LocalKeyProvider(KEK)))
    for out, (value, headers) in zip(batch, sealed, strict=True):
        assert opener.open(out.topic, value, headers) == PLAIN


def test_prepare_takes_the_stores_key_and_leaves_destroyed_ones_to_refuse(
    keyring: Keyring, store: KeyStore, tmp_path: Path
) -> None:
    """Another process's key wins over a new one; an erased patient's keys, and keys of a recipient
    for that patient, are not made: sealing under them still raises KeyDestroyed."""
    other = Keyring(KeyStore(tmp_path / "keys.sqlite3"), LocalKeyProvider(KEK))
    by_other = other.seal(PLAIN, key_id="pt-a", topic="t", record_id="e1")
    keyring.destroy("pt-erased", by="test")
    for_recipient = recipient_key_id("pt-erased", "hosp-a")
    keyring.prepare([("pt-a", None), ("pt-erased", None), (for_recipient, "pt-erased"), ("pt-b", None)])
    assert keyring.open(by_other, topic="t", record_id="e1") == PLAIN
    for key_id, parent in [("pt-erased", None), (for_recipient, "pt-erased")]:
        with pytest.raises(KeyDestroyed):
            keyring.seal(PLAIN, key_id=key_id, topic="t", record_id="e1", parent=parent)
    assert store.get(for_recipient) is None
    assert (
        other.open(keyring.seal(PLAIN, key_id="pt-b", topic="t", record_id="e2"), topic="t", record_id="e2")
        == PLAIN
    )
