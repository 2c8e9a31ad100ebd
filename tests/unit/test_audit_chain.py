"""The audit hash chain and its verifier, pure: each tamper case found, and where; clean chains pass."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.audit.chain import (
    GENESIS,
    HASH_HEADER,
    SEQ_HEADER,
    ChainHead,
    Checkpoint,
    chain_fields,
    encode_checkpoint,
    head_of,
    record_hash,
    seal,
)
from hub.audit.sealer import Sealer
from hub.audit.signing import (
    CheckpointSigner,
    new_private_pem,
    parse_private_key,
    parse_public_key,
    public_pem,
    signature_valid,
)
from hub.audit.verify import (
    CHANGED,
    CHECKPOINT_INVALID,
    CHECKPOINT_MISMATCH,
    REMOVED,
    TRUNCATED,
    UNSEALED,
    AuditRecord,
    ChainVerifier,
)
from hub.errors import ConfigError

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())


def audit_value(n: int) -> bytes:
    return json.dumps({"resourceType": "AuditEvent", "id": f"a-{n}"}).encode()


def chain(
    partition: int, count: int, *, head: ChainHead | None = None, first_offset: int = 0
) -> list[AuditRecord]:
    """``count`` sealed records of one partition, as the sealing stage writes them."""
    head = head or ChainHead.genesis()
    records = []
    for n in range(count):
        key, value = f"src-{n % 3}".encode(), audit_value(n)
        sealed = seal(head, partition, key, value)
        head = sealed.head
        records.append(AuditRecord(partition, first_offset + n, key, value, sealed.headers))
    return records


def checkpoint_at(record: AuditRecord, signer: CheckpointSigner = SIGNER) -> Checkpoint:
    head = head_of(record.headers)
    assert head is not None
    return signer.sign(Checkpoint(record.partition, head.seq, head.hash, "2026-11-22T12:00:00Z", ""))


def verify(
    records: list[AuditRecord], checkpoints: list[Checkpoint], **kwargs: object
) -> list[tuple[str, int | None]]:
    verifier = ChainVerifier(checkpoints, SIGNER.public_key(), **kwargs)  # type: ignore[arg-type]
    for record in records:
        verifier.add(record)
    return [(p.kind, p.offset) for p in verifier.finish().problems]


def test_sealing_is_deterministic_and_binds_every_field() -> None:
    """The same record after the same head seals alike; position, partition, key and value all count."""
    head = ChainHead(4, "ab" * 32)
    assert seal(head, 1, b"k", b"v") == seal(head, 1, b"k", b"v")
    base = record_hash(1, 5, head.hash, b"k", b"v")
    variants = {
        base,
        record_hash(2, 5, head.hash, b"k", b"v"),
        record_hash(1, 6, head.hash, b"k", b"v"),
        record_hash(1, 5, GENESIS, b"k", b"v"),
        record_hash(1, 5, head.hash, None, b"v"),
        record_hash(1, 5, head.hash, b"", b"v"),
        record_hash(1, 5, head.hash, b"k", b"v "),
    }
    assert len(variants) == 7
    # Length prefixes: moving a byte from the key to the value is another record.
    assert record_hash(1, 5, head.hash, b"kv", b"") != record_hash(1, 5, head.hash, b"k", b"v")


def test_a_clean_chain_with_checkpoints_verifies() -> None:
    """Two partitions, each checkpointed at its head: no problem, everything counted as checkpointed."""
    records = chain(0, 5) + chain(1, 3)
    checkpoints = [checkpoint_at(records[4]), checkpoint_at(records[7]), checkpoint_at(records[2])]
    verifier = ChainVerifier(checkpoints, SIGNER.public_key())
    for record in records:
        verifier.add(record)
    report = verifier.finish()
    assert report.intact, report.problems
    assert report.partitions[0].checkpointed_seq == 5 and report.partitions[1].checkpointed_seq == 3
    assert report.notes == []


def test_a_changed_record_is_found_at_its_offset_only() -> None:
    """A value edited in place no longer gives its hash; the records after it still link."""
    records = chain(0, 5)
    edited = records[2]
    records[2] = AuditRecord(
        0, edited.offset, edited.key, edited.value.replace(b"a-2", b"a-9"), edited.headers
    )
    assert verify(records, [checkpoint_at(records[4])]) == [(CHANGED, 2)]


def test_a_changed_key_or_chain_header_is_found() -> None:
    """The key is covered, and so are the chain headers themselves."""
    records = chain(0, 3)
    r = records[1]
    records[1] = AuditRecord(0, r.offset, b"another-source", r.value, r.headers)
    assert verify(records, []) == [(CHANGED, 1)]
    records = chain(0, 3)
    r = records[1]
    forged = tuple((n, b"9" if n == SEQ_HEADER else v) for n, v in r.headers)
    records[1] = AuditRecord(0, r.offset, r.key, r.value, forged)
    problems = verify(records, [])
    assert (CHANGED, 1) in problems and (REMOVED, 1) in problems


def test_a_removed_record_is_found_where_the_gap_is() -> None:
    """Taking a record out leaves a gap in the positions: reported at the record after the gap."""
    records = chain(0, 6)
    del records[3]
    assert verify(records, [checkpoint_at(records[-1])]) == [(REMOVED, 4)]


def test_a_removed_first_record_is_found() -> None:
    """Without retention having moved the log start, a chain must begin at seq 1."""
    records = chain(0, 3)[1:]
    assert verify(records, []) == [(REMOVED, 1)]
    # The same start after retention deleted offset 0: a note, not a break.
    assert verify(records, [], log_start={0: 1}) == []


def test_a_truncated_tail_is_found_against_the_last_checkpoint() -> None:
    """The chain ends before a signed checkpoint's position: truncated; after it: a note only."""
    records = chain(0, 8)
    checkpoints = [checkpoint_at(records[2]), checkpoint_at(records[6])]
    assert verify(records[:5], checkpoints) == [(TRUNCATED, None)]
    verifier = ChainVerifier(checkpoints, SIGNER.public_key())
    for record in records:
        verifier.add(record)
    report = verifier.finish()
    assert report.intact
    assert report.notes == [
        "partition 0: 1 record(s) after the last checkpoint: their removal from the tail could not be "
        "detected yet"
    ]


def test_a_whole_partition_deleted_is_truncated() -> None:
    """A checkpointed partition with no records left at all."""
    records = chain(0, 3)
    assert verify([], [checkpoint_at(records[2])]) == [(TRUNCATED, None)]


def test_a_rewritten_chain_is_caught_by_the_checkpoint() -> None:
    """An attacker who edits a record and re-seals everything after it still fails the signed checkpoint."""
    records = chain(0, 5)
    checkpoints = [checkpoint_at(records[4])]
    head = head_of(records[1].headers)
    assert head is not None
    rewritten = records[:2]
    for r in records[2:]:
        value = r.value.replace(b"a-2", b"a-X")
        sealed = seal(head, 0, r.key, value)
        head = sealed.head
        rewritten.append(AuditRecord(0, r.offset, r.key, value, sealed.headers))
    assert verify(rewritten, checkpoints) == [(CHECKPOINT_MISMATCH, 4)]


def test_a_forged_or_foreign_checkpoint_is_rejected() -> None:
    """A changed signed field, or another key's signature, does not verify."""
    records = chain(0, 3)
    good = checkpoint_at(records[2])
    moved = Checkpoint(good.partition, 9, good.head, good.at, good.key_id, good.signature)
    foreign = checkpoint_at(records[2], CheckpointSigner(Ed25519PrivateKey.generate()))
    assert verify(records, [moved]) == [(CHECKPOINT_INVALID, None)]
    assert verify(records, [foreign]) == [(CHECKPOINT_INVALID, None)]
    assert not signature_valid(moved, SIGNER.public_key())
    assert signature_valid(good, SIGNER.public_key())


def test_a_record_written_around_the_sealer_is_unsealed() -> None:
    """A record without chain headers in the audit topic is reported; the chain around it still links."""
    records = chain(0, 3)
    records.insert(2, AuditRecord(0, 99, b"x", audit_value(7), ()))
    assert verify(records, []) == [(UNSEALED, 99)]


def test_a_redelivered_input_sealed_twice_keeps_the_chain_valid() -> None:
    """The same AuditEvent sealed again after a restart is a new position, not a break."""
    records = chain(0, 3)
    head = head_of(records[-1].headers)
    assert head is not None
    again = seal(head, 0, records[-1].key, records[-1].value)
    records.append(AuditRecord(0, 3, records[-1].key, records[-1].value, again.headers))
    assert verify(records, []) == []


def test_verification_resumes_from_a_known_head() -> None:
    """An incremental run starts where the last one stopped, and still links to it."""
    records = chain(0, 6)
    head = head_of(records[2].headers)
    assert head is not None
    assert verify(records[3:], [], start={0: head}) == []
    assert verify(records[4:], [], start={0: head}) == [(REMOVED, 4)]


def test_chain_headers_garbled_read_as_unsealed() -> None:
    """Headers that are not what the sealer writes are no chain at all."""
    assert chain_fields(((SEQ_HEADER, b"1"), (HASH_HEADER, b"zz"))) is None
    assert chain_fields(()) is None
    record = chain(0, 1)[0]
    assert chain_fields(record.headers) is not None


def test_checkpoint_json_round_trip() -> None:
    """What the sealing stage writes is what the verifier reads."""
    checkpoint = checkpoint_at(chain(2, 4)[3])
    assert Checkpoint.from_json(json.loads(encode_checkpoint(checkpoint))) == checkpoint
    assert Checkpoint.from_json({"kind": "something else"}) is None


def test_sealer_checkpoints_every_n_records_or_t_seconds() -> None:
    """Due after ``every_records`` records, or after ``every_seconds`` with at least one waiting."""
    sealer = Sealer(SIGNER, every_records=3, every_seconds=10.0)
    sealer.start(0, ChainHead.genesis(), now=0.0)
    assert not sealer.checkpoint_due(0, now=0.0)
    sealer.seal(0, b"k", b"1")
    sealer.seal(0, b"k", b"2")
    assert not sealer.checkpoint_due(0, now=1.0)
    assert sealer.checkpoint_due(0, now=10.0)
    sealed = sealer.seal(0, b"k", b"3")
    assert sealer.checkpoint_due(0, now=1.0)
    checkpoint = sealer.checkpoint(0, sealed.head, at=AT, now=1.0)
    assert (checkpoint.seq, checkpoint.head) == (3, sealed.head.hash)
    assert signature_valid(checkpoint, SIGNER.public_key())
    assert not sealer.checkpoint_due(0, now=100.0), "nothing waits after a checkpoint"
    assert sealer.due(now=100.0) == []


def test_sealer_without_a_key_never_checkpoints() -> None:
    """No key: the chain is sealed, no checkpoint is ever due."""
    sealer = Sealer(None, every_records=1, every_seconds=1.0)
    sealer.start(0, ChainHead.genesis(), now=0.0)
    sealer.seal(0, None, b"x")
    assert not sealer.checkpoint_due(0, now=50.0)


def test_a_restarted_sealer_continues_the_chain_without_forking() -> None:
    """Recovered from the last record written, a new sealer's records verify with the old ones."""
    first = Sealer(SIGNER, every_records=100, every_seconds=60.0)
    first.start(1, ChainHead.genesis(), now=0.0)
    records = []
    for n in range(3):
        sealed = first.seal(1, b"k", audit_value(n))
        records.append(AuditRecord(1, n, b"k", audit_value(n), sealed.headers))
    recovered = head_of(records[-1].headers)
    assert recovered is not None
    second = Sealer(SIGNER, every_records=100, every_seconds=60.0)
    second.start(1, recovered, now=0.0)
    # The last input is redelivered (its offset was not committed) and sealed again.
    for n in (2, 3):
        sealed = second.seal(1, b"k", audit_value(n))
        records.append(AuditRecord(1, len(records), b"k", audit_value(n), sealed.headers))
    assert verify(records, []) == []
    second.forget({1})
    assert not second.knows(1)


def test_keys_load_from_pem_and_hex_and_errors_never_repeat_the_text() -> None:
    """PEM PKCS#8 or a hex seed; a wrong key names where it came from, not what it holds."""
    pem = new_private_pem()
    key = parse_private_key(pem, where="f")
    seed_hex = "11" * 32
    assert parse_private_key(seed_hex, where="env").public_key() is not None
    assert parse_public_key(public_pem(key.public_key()), where="p") is not None
    with pytest.raises(ConfigError) as caught:
        parse_private_key("not-a-key-but-a-secret-looking-string", where="HUB_AUDIT_SIGNING_KEY")
    assert "secret-looking" not in str(caught.value)
    assert "HUB_AUDIT_SIGNING_KEY" in str(caught.value)
