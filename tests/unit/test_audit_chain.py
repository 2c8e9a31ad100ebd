"""The keyed audit chain and its verifier, pure: each tampering found as what it is and where it is,
full and incremental runs agree, clean chains pass, and a sealer never chains onto what it cannot verify."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from hub.audit.chain import (
    GENESIS,
    MAX_SEQ,
    ChainHead,
    Checkpoint,
    chain_fields,
    encode_checkpoint,
    legacy_hash,
    mac_input,
    record_mac,
    seal,
)
from hub.audit.chainkey import ChainKey, chain_key_from_settings, parse_chain_key
from hub.audit.cli import audit as audit_cli
from hub.audit.sealer import LEGACY_HEAD, Sealer, assess_takeover
from hub.audit.signing import (
    CheckpointSigner,
    new_private_pem,
    parse_private_key,
    parse_public_key,
    public_pem,
    signature_valid,
)
from hub.audit.verify import (
    ALTERED,
    CHECKPOINT_INVALID,
    CHECKPOINT_MISMATCH,
    FORGED,
    REMOVED,
    REPLAYED,
    TRUNCATED,
    UNSEALED,
    AuditRecord,
    ChainVerifier,
    Report,
    Verified,
)
from hub.errors import ConfigError, SecretUnavailable
from hub.logging import REDACTED, redact
from hub.records import (
    AUDIT_BREAK_HEADER,
    AUDIT_FORMAT_HEADER,
    AUDIT_HASH_HEADER,
    AUDIT_KEY_ID_HEADER,
    AUDIT_MAC_HEADER,
    AUDIT_PREV_HEADER,
    AUDIT_SEQ_HEADER,
)
from hub.settings import Settings

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())
KEY = ChainKey(bytes(range(32)))
#: A key that is not the hub's: what an attacker who made up his own would seal with.
OTHER_KEY = ChainKey(bytes(range(100, 132)))

Found = list[tuple[str, int | None]]


def audit_value(n: int) -> bytes:
    return json.dumps({"resourceType": "AuditEvent", "id": f"a-{n}"}).encode()


def chain(
    partition: int,
    count: int,
    *,
    head: ChainHead | None = None,
    first_offset: int = 0,
    key: ChainKey = KEY,
    first_n: int = 0,
) -> list[AuditRecord]:
    """``count`` sealed records of one partition, as the sealing stage writes them."""
    head = head or ChainHead.genesis()
    records = []
    for i in range(count):
        n = first_n + i
        record_key, value = f"src-{n % 3}".encode(), audit_value(n)
        sealed = seal(head, partition, record_key, value, key)
        head = sealed.head
        records.append(AuditRecord(partition, first_offset + i, record_key, value, sealed.headers))
    return records


def at_offset(record: AuditRecord, offset: int) -> AuditRecord:
    return AuditRecord(record.partition, offset, record.key, record.value, record.headers)


def renumbered(records: Sequence[AuditRecord]) -> list[AuditRecord]:
    """Offsets as Kafka gives them to what was appended: 0, 1, 2... per partition."""
    counts: dict[int, int] = {}
    out = []
    for record in records:
        out.append(at_offset(record, counts.get(record.partition, 0)))
        counts[record.partition] = counts.get(record.partition, 0) + 1
    return out


def head_of(record: AuditRecord) -> ChainHead:
    fields = chain_fields(record.headers)
    assert fields is not None
    return fields.head


def checkpoint_at(record: AuditRecord, signer: CheckpointSigner = SIGNER) -> Checkpoint:
    head = head_of(record)
    return signer.sign(
        Checkpoint(record.partition, head.seq, head.link, "2026-11-22T12:00:00Z", "", offset=record.offset)
    )


def run(records: Sequence[AuditRecord], checkpoints: Sequence[Checkpoint] = (), **kwargs: object) -> Report:
    verifier = ChainVerifier(checkpoints, SIGNER.public_key(), [KEY], **kwargs)  # type: ignore[arg-type]
    for record in records:
        verifier.add(record)
    return verifier.finish()


def verify(records: Sequence[AuditRecord], checkpoints: Sequence[Checkpoint] = (), **kwargs: object) -> Found:
    return [(p.kind, p.offset) for p in run(records, checkpoints, **kwargs).problems]


def unkeyed_forgery(after: AuditRecord, value: bytes, *, partition: int = 0) -> AuditRecord:
    """What someone who can write the topic but has no chain key appends: the next position, linked to
    the head, with the link recomputed as well as he can (SHA-256 of the record's canonical bytes)."""
    head = head_of(after)
    seq = head.seq + 1
    link = hashlib.sha256(mac_input(partition, seq, head.link, b"src-0", value)).hexdigest()
    headers = (
        (AUDIT_FORMAT_HEADER, b"2"),
        (AUDIT_SEQ_HEADER, str(seq).encode()),
        (AUDIT_PREV_HEADER, head.link.encode()),
        (AUDIT_MAC_HEADER, link.encode()),
        (AUDIT_KEY_ID_HEADER, KEY.key_id.encode()),
    )
    return AuditRecord(partition, after.offset + 1, b"src-0", value, headers)


def legacy_forgery(after: AuditRecord, value: bytes) -> AuditRecord:
    """The same, in the unkeyed format 1 whose hash anyone can compute right."""
    head = head_of(after)
    seq = head.seq + 1
    digest = legacy_hash(after.partition, seq, head.link, b"src-0", value)
    headers = (
        (AUDIT_SEQ_HEADER, str(seq).encode()),
        (AUDIT_PREV_HEADER, head.link.encode()),
        (AUDIT_HASH_HEADER, digest.encode()),
    )
    return AuditRecord(after.partition, after.offset + 1, b"src-0", value, headers)


def legacy_chain(partition: int, count: int) -> list[AuditRecord]:
    """A format-1 chain, as hubs before the chain key sealed it."""
    link, records = GENESIS, []
    for n in range(count):
        value = audit_value(n)
        digest = legacy_hash(partition, n + 1, link, b"k", value)
        headers = (
            (AUDIT_SEQ_HEADER, str(n + 1).encode()),
            (AUDIT_PREV_HEADER, link.encode()),
            (AUDIT_HASH_HEADER, digest.encode()),
        )
        records.append(AuditRecord(partition, n, b"k", value, headers))
        link = digest
    return records


# -- sealing ---------------------------------------------------------------------------------------


def test_sealing_is_deterministic_and_the_mac_binds_every_field_and_the_key() -> None:
    """The same record after the same head seals alike; position, partition, key, value, break reason and
    the chain key all count."""
    head = ChainHead(4, "ab" * 32)
    assert seal(head, 1, b"k", b"v", KEY) == seal(head, 1, b"k", b"v", KEY)

    def mac(**changes: object) -> str:
        fields: dict[str, object] = {"partition": 1, "seq": 5, "prev": head.link, "key": b"k", "value": b"v"}
        chain_key = changes.pop("chain_key", KEY)
        assert isinstance(chain_key, ChainKey)
        return record_mac(chain_key, **(fields | changes))  # type: ignore[arg-type]

    variants = {
        mac(),
        mac(partition=2),
        mac(seq=6),
        mac(prev=GENESIS),
        mac(key=None),
        mac(key=b""),
        mac(value=b"v "),
        mac(break_reason="record.forged"),
        mac(chain_key=OTHER_KEY),
    }
    assert len(variants) == 9
    # Length prefixes: moving a byte from the key to the value is another record.
    assert mac(key=b"kv", value=b"") != mac()
    sealed = seal(head, 1, b"k", b"v", KEY)
    names = [name for name, _ in sealed.headers]
    assert names == [
        AUDIT_FORMAT_HEADER,
        AUDIT_SEQ_HEADER,
        AUDIT_PREV_HEADER,
        AUDIT_MAC_HEADER,
        AUDIT_KEY_ID_HEADER,
    ]
    assert dict(sealed.headers)[AUDIT_KEY_ID_HEADER] == KEY.key_id.encode()
    assert AUDIT_BREAK_HEADER in dict(seal(head, 1, b"k", b"v", KEY, break_reason="format.legacy").headers)


def test_the_link_is_not_a_plain_hash_of_the_record() -> None:
    """Without the key the link cannot be recomputed: it is not SHA-256 of what it covers."""
    record = chain(0, 1)[0]
    fields = chain_fields(record.headers)
    assert fields is not None
    data = mac_input(0, 1, GENESIS, record.key, record.value)
    assert fields.link != hashlib.sha256(data).hexdigest()
    assert fields.link == KEY.mac(data)


def test_a_clean_chain_with_checkpoints_verifies() -> None:
    """Two partitions, each checkpointed at its head: no problem, everything counted as checkpointed."""
    records = chain(0, 5) + chain(1, 3)
    checkpoints = [checkpoint_at(records[4]), checkpoint_at(records[7]), checkpoint_at(records[2])]
    report = run(records, checkpoints)
    assert report.intact, report.problems
    assert report.partitions[0].checkpointed_seq == 5 and report.partitions[1].checkpointed_seq == 3
    assert report.notes == []


# -- each tampering, found as what it is -------------------------------------------------------------


def test_an_altered_record_is_altered_at_its_offset_only() -> None:
    """A value edited in place no longer verifies, but the next record links to it: altered, not forged."""
    records = chain(0, 5)
    edited = records[2]
    records[2] = AuditRecord(0, 2, edited.key, edited.value.replace(b"a-2", b"a-9"), edited.headers)
    assert verify(records, [checkpoint_at(records[4])]) == [(ALTERED, 2)]


def test_an_altered_key_or_chain_header_is_altered() -> None:
    """The key is covered, and so are the chain headers themselves (a position changed)."""
    records = chain(0, 3)
    r = records[1]
    records[1] = AuditRecord(0, 1, b"another-source", r.value, r.headers)
    assert verify(records) == [(ALTERED, 1)]
    records = chain(0, 3)
    r = records[1]
    moved = tuple((n, b"9" if n == AUDIT_SEQ_HEADER else v) for n, v in r.headers)
    records[1] = AuditRecord(0, 1, r.key, r.value, moved)
    assert verify(records) == [(ALTERED, 1)]


def test_an_altered_last_record_is_altered_when_a_checkpoint_vouches_for_it_else_forged() -> None:
    """Nothing links to the last record: only a signed checkpoint says it was sealed there."""
    records = chain(0, 4)
    last = records[3]
    records[3] = AuditRecord(0, 3, last.key, b'{"resourceType":"AuditEvent","id":"x"}', last.headers)
    assert verify(records, [checkpoint_at(last)]) == [(ALTERED, 3)]
    assert verify(records, [checkpoint_at(records[2])]) == [(FORGED, 3)]


def test_a_removed_record_is_removed_where_the_gap_is() -> None:
    """Taking a record out leaves a gap in the positions: reported at the record after the gap."""
    records = chain(0, 6)
    del records[3]
    assert verify(renumbered(records), [checkpoint_at(records[-1])]) == [(REMOVED, 3)]


def test_a_removed_first_record_is_found_and_retention_is_not_removal() -> None:
    """Without retention having moved the log start, a chain must begin at seq 1."""
    records = chain(0, 3)[1:]
    assert verify(records) == [(REMOVED, 1)]
    # The same start after retention deleted offset 0: a note, not a break.
    assert verify(records, log_start={0: 1}) == []


def test_a_replayed_record_is_replayed_not_removed_nor_truncated() -> None:
    """An old record appended again (same headers, same value) verifies, at a position already passed."""
    records = chain(0, 5)
    checkpoint = checkpoint_at(records[4])
    replayed = [*records, at_offset(records[1], 5)]
    assert verify(replayed, [checkpoint]) == [(REPLAYED, 5)]
    # The head itself, written again.
    assert verify([*records, at_offset(records[4], 5)], [checkpoint]) == [(REPLAYED, 5)]


def test_a_replayed_record_between_sealed_ones_leaves_the_chain_linked() -> None:
    """The sealer goes on past a replay: the records after it link to the one before it."""
    records = chain(0, 6)
    tampered = renumbered([*records[:4], records[0], *records[4:]])
    assert verify(tampered, [checkpoint_at(tampered[-1])]) == [(REPLAYED, 4)]


def test_a_forged_record_with_a_recomputed_unkeyed_link_is_forged() -> None:
    """Linked to the head and with a SHA-256 link: it does not verify, and nothing links to it."""
    records = chain(0, 4)
    checkpoint = checkpoint_at(records[3])
    forged = unkeyed_forgery(records[3], audit_value(99))
    assert verify([*records, forged], [checkpoint]) == [(FORGED, 4)]
    # Records the sealer went on with, linked to the last authentic one, stay valid around it.
    after = chain(0, 2, head=head_of(records[3]), first_offset=5, first_n=4)
    assert verify([*records, forged, *after], [checkpoint, checkpoint_at(after[-1])]) == [(FORGED, 4)]


def test_a_legacy_format_record_after_the_keyed_chain_is_forged() -> None:
    """An unkeyed format-1 record with a right SHA-256 is a downgrade anyone can write."""
    records = chain(0, 3)
    assert verify([*records, legacy_forgery(records[2], audit_value(9))]) == [(FORGED, 3)]


def test_a_record_sealed_with_another_key_is_forged() -> None:
    """A made-up key, named in the key-id header or posing as the hub's, does not make a record valid."""
    records = chain(0, 3)
    own = seal(head_of(records[2]), 0, b"k", audit_value(7), OTHER_KEY)
    assert verify([*records, AuditRecord(0, 3, b"k", audit_value(7), own.headers)]) == [(FORGED, 3)]
    posing = tuple((n, KEY.key_id.encode() if n == AUDIT_KEY_ID_HEADER else v) for n, v in own.headers)
    assert verify([*records, AuditRecord(0, 3, b"k", audit_value(7), posing)]) == [(FORGED, 3)]
    # The verifier that holds the other key too accepts it (a key rotation, both keys given).
    verifier = ChainVerifier([], None, [KEY, OTHER_KEY])
    for record in [*records, AuditRecord(0, 3, b"k", audit_value(7), own.headers)]:
        verifier.add(record)
    assert verifier.finish().intact


def test_a_forged_copy_of_a_sealed_records_headers_is_forged() -> None:
    """Headers copied from the head onto another value claim a position already passed."""
    records = chain(0, 3)
    copy = AuditRecord(0, 3, records[2].key, audit_value(42), records[2].headers)
    # Even with a checkpoint vouching for the copied link: that position is the authentic record's.
    assert verify([*records, copy], [checkpoint_at(records[2])]) == [(FORGED, 3)]


def test_a_truncated_tail_is_found_against_the_last_checkpoint() -> None:
    """The chain ends before a signed checkpoint's position: truncated; after it: a note only."""
    records = chain(0, 8)
    checkpoints = [checkpoint_at(records[2]), checkpoint_at(records[6])]
    assert verify(records[:5], checkpoints) == [(TRUNCATED, None)]
    report = run(records, checkpoints)
    assert report.intact
    assert report.notes == [
        "partition 0: 1 record(s) after the last checkpoint: their removal from the tail could not be "
        "detected yet"
    ]


def test_a_whole_partition_deleted_is_truncated() -> None:
    """A checkpointed partition with no records left at all."""
    records = chain(0, 3)
    assert verify([], [checkpoint_at(records[2])]) == [(TRUNCATED, None)]


def test_a_rewritten_chain_is_forged_without_the_key_and_caught_by_the_checkpoint_with_it() -> None:
    """Re-sealing everything after an edit needs the chain key; a key holder still fails the checkpoint."""
    records = chain(0, 5)
    checkpoints = [checkpoint_at(records[4])]
    rewritten = records[:2]
    for r in records[2:]:
        value = r.value.replace(b"a-2", b"a-X")
        rewritten.append(unkeyed_forgery(rewritten[-1], value))
    assert {kind for kind, _ in verify(rewritten, checkpoints)} == {FORGED, TRUNCATED}
    head = head_of(records[1])
    by_key_holder = records[:2]
    for r in records[2:]:
        value = r.value.replace(b"a-2", b"a-X")
        sealed = seal(head, 0, r.key, value, KEY)
        head = sealed.head
        by_key_holder.append(AuditRecord(0, r.offset, r.key, value, sealed.headers))
    assert verify(by_key_holder, checkpoints) == [(CHECKPOINT_MISMATCH, 4)]


def test_a_forged_or_foreign_checkpoint_is_rejected() -> None:
    """A changed signed field, or another key's signature, does not verify; the offset is only a hint."""
    records = chain(0, 3)
    good = checkpoint_at(records[2])
    moved = Checkpoint(good.partition, 9, good.head, good.at, good.key_id, good.signature)
    foreign = checkpoint_at(records[2], CheckpointSigner(Ed25519PrivateKey.generate()))
    assert verify(records, [moved]) == [(CHECKPOINT_INVALID, None)]
    assert verify(records, [foreign]) == [(CHECKPOINT_INVALID, None)]
    assert not signature_valid(moved, SIGNER.public_key())
    assert signature_valid(good, SIGNER.public_key())
    assert signature_valid(Checkpoint(**{**good.__dict__, "offset": 7}), SIGNER.public_key())


def test_a_record_written_around_the_sealer_is_unsealed() -> None:
    """A record without chain headers in the audit topic is reported; the chain around it still links."""
    records = chain(0, 3)
    records.insert(2, AuditRecord(0, 99, b"x", audit_value(7), ()))
    assert verify(records) == [(UNSEALED, 99)]


def test_a_redelivered_input_sealed_twice_keeps_the_chain_valid() -> None:
    """The same AuditEvent sealed again after a restart is a new position, not a break."""
    records = chain(0, 3)
    again = seal(head_of(records[-1]), 0, records[-1].key, records[-1].value, KEY)
    records.append(AuditRecord(0, 3, records[-1].key, records[-1].value, again.headers))
    assert verify(records) == []


# -- full and incremental runs -------------------------------------------------------------------------


def incremental_and_full(
    verified: list[AuditRecord],
    topic: list[AuditRecord],
    checkpoints: list[Checkpoint],
) -> tuple[Found, Found]:
    """Verify ``verified`` (intact, with the checkpoints there were then), then the topic as it is now,
    resuming from there and from the start."""
    first = run(verified, [c for c in checkpoints if c.seq <= len(verified)])
    assert first.intact, first.problems
    part = first.partitions[0]
    assert part.head is not None and part.head_offset is not None and part.head_format is not None
    state = {0: Verified(part.head_offset, part.head, part.head_format, part.checkpointed_seq)}
    end = {0: len(topic)}
    resumed = [r for r in topic if r.offset >= part.head_offset]
    incremental = verify(resumed, checkpoints, resume=state, witness=state, log_end=end)
    full = verify(topic, checkpoints, witness=state, log_end=end)
    return incremental, full


def test_incremental_and_full_verification_agree_on_each_tampering() -> None:
    """Tampering after what an earlier run verified: both runs report the same problems at the same places."""
    records = chain(0, 10)
    verified = records[:5]
    checkpoints = [checkpoint_at(records[3]), checkpoint_at(records[8])]
    altered = list(records)
    altered[6] = AuditRecord(0, 6, altered[6].key, audit_value(66), altered[6].headers)
    forged = [*records, unkeyed_forgery(records[9], audit_value(99))]
    cases: dict[str, tuple[list[AuditRecord], Found]] = {
        "altered": (altered, [(ALTERED, 6)]),
        "removed": (renumbered(records[:6] + records[7:]), [(REMOVED, 6)]),
        "replayed": (renumbered([*records, records[2]]), [(REPLAYED, 10)]),
        "forged": (forged, [(FORGED, 10)]),
        "truncated": (records[:7], [(TRUNCATED, None)]),
        "cut below what was verified": (records[:3], [(TRUNCATED, 3)]),
        "witness altered": (
            [
                *records[:4],
                AuditRecord(0, 4, records[4].key, audit_value(44), records[4].headers),
                *records[5:],
            ],
            [(ALTERED, 4)],
        ),
    }
    for name, (topic, expected) in cases.items():
        incremental, full = incremental_and_full(verified, topic, checkpoints)
        assert incremental == full == expected, (name, incremental, full)


def test_an_incremental_run_starts_from_the_verified_head_and_still_links_to_it() -> None:
    """Nothing new: intact; new records that do not follow the verified head: removed."""
    records = chain(0, 6)
    state = {0: Verified(2, head_of(records[2]))}
    assert verify(records[2:], resume=state, witness=state) == []
    assert verify([records[2], *records[4:]], resume=state, witness=state) == [(REMOVED, 4)]


# -- formats ----------------------------------------------------------------------------------------


def test_a_legacy_chain_verifies_with_a_note_and_the_keyed_chain_continues_it() -> None:
    """Format 1 (before the chain key) is read, said to be forgeable, and a break record links onto it."""
    legacy = legacy_chain(0, 3)
    report = run(legacy)
    assert report.intact
    assert any("unkeyed format 1" in note for note in report.notes)
    sealed = seal(head_of(legacy[-1]), 0, b"hub-audit", b"{}", KEY, break_reason=LEGACY_HEAD)
    keyed = [*legacy, AuditRecord(0, 3, b"hub-audit", b"{}", sealed.headers)]
    keyed += chain(0, 2, head=sealed.head, first_offset=4)
    assert verify(keyed) == []
    assert verify([*keyed, legacy_forgery(keyed[-1], audit_value(5))]) == [(FORGED, 6)]


def test_chain_headers_garbled_or_of_an_unknown_format_read_as_unsealed() -> None:
    """Headers that are not what a sealer writes are no chain at all."""
    record = chain(0, 1)[0]
    assert chain_fields(record.headers) is not None
    assert chain_fields(((AUDIT_SEQ_HEADER, b"1"), (AUDIT_HASH_HEADER, b"zz"))) is None
    assert chain_fields(()) is None
    for name, value in (
        (AUDIT_FORMAT_HEADER, b"3"),
        (AUDIT_SEQ_HEADER, str(MAX_SEQ + 1).encode()),
        (AUDIT_SEQ_HEADER, b"0"),
        (AUDIT_KEY_ID_HEADER, b"not-hex"),
        (AUDIT_BREAK_HEADER, b"Has Spaces"),
        (AUDIT_MAC_HEADER, b"\xff" * 64),
    ):
        garbled = (*((n, v) for n, v in record.headers if n != name), (name, value))
        assert chain_fields(garbled) is None, name


def test_checkpoint_json_round_trip_with_and_without_an_offset() -> None:
    """What the sealing stage writes is what the verifier and the next sealer read."""
    checkpoint = checkpoint_at(chain(2, 4)[3])
    assert checkpoint.offset == 3
    assert Checkpoint.from_json(json.loads(encode_checkpoint(checkpoint))) == checkpoint
    earlier = Checkpoint(**{**checkpoint.__dict__, "offset": None})
    assert "offset" not in json.loads(encode_checkpoint(earlier))
    assert Checkpoint.from_json(json.loads(encode_checkpoint(earlier))) == earlier
    assert Checkpoint.from_json({"kind": "something else"}) is None
    assert Checkpoint.from_json([1, 2]) is None
    assert Checkpoint.from_json({**checkpoint.as_json(), "offset": -1}) is None


# -- the sealer ---------------------------------------------------------------------------------------


def test_sealer_checkpoints_every_n_records_or_t_seconds() -> None:
    """Due after ``every_records`` records, or after ``every_seconds`` with at least one waiting."""
    sealer = Sealer(SIGNER, KEY, every_records=3, every_seconds=10.0)
    sealer.start(0, ChainHead.genesis(), now=0.0)
    assert not sealer.checkpoint_due(0, now=0.0)
    sealer.seal(0, b"k", b"1")
    sealer.seal(0, b"k", b"2")
    assert not sealer.checkpoint_due(0, now=1.0)
    assert sealer.checkpoint_due(0, now=10.0)
    sealed = sealer.seal(0, b"k", b"3")
    assert sealer.checkpoint_due(0, now=1.0)
    checkpoint = sealer.checkpoint(0, sealed.head, at=AT, now=1.0, offset=2)
    assert (checkpoint.seq, checkpoint.head, checkpoint.offset) == (3, sealed.head.link, 2)
    assert signature_valid(checkpoint, SIGNER.public_key())
    assert not sealer.checkpoint_due(0, now=100.0), "nothing waits after a checkpoint"
    assert sealer.due(now=100.0) == []


def test_sealer_without_a_signing_key_never_checkpoints() -> None:
    """No signing key: the chain is sealed, no checkpoint is ever due."""
    sealer = Sealer(None, KEY, every_records=1, every_seconds=1.0)
    sealer.start(0, ChainHead.genesis(), now=0.0)
    sealer.seal(0, None, b"x")
    assert not sealer.checkpoint_due(0, now=50.0)


def takeover_of(
    records: list[AuditRecord], checkpoints: Sequence[Checkpoint] = ()
) -> tuple[Sealer, str | None]:
    """A sealer taking partition 0 over after ``records``, as the stage does; it seals its first record."""
    takeover = assess_takeover(run(records, checkpoints), 0, read_from=0, end=len(records))
    sealer = Sealer(SIGNER, KEY, every_records=100, every_seconds=60.0)
    sealer.start(0, takeover.head, now=0.0)
    return sealer, takeover.break_reason


def seal_next(sealer: Sealer, records: list[AuditRecord], reason: str | None, n: int) -> list[AuditRecord]:
    """What the stage writes next: the break record when there is a reason, then the record of input ``n``."""
    out = list(records)
    if reason is not None:
        sealed = sealer.seal(0, b"hub-audit", b"{}", break_reason=reason)
        out.append(AuditRecord(0, len(out), b"hub-audit", b"{}", sealed.headers))
    sealed = sealer.seal(0, b"k", audit_value(n))
    out.append(AuditRecord(0, len(out), b"k", audit_value(n), sealed.headers))
    return out


def test_a_restarted_sealer_continues_a_clean_chain_without_a_break() -> None:
    """Recovered from the last record written, a new sealer's records verify with the old ones."""
    records = chain(0, 3)
    sealer, reason = takeover_of(records)
    assert reason is None
    assert verify(seal_next(sealer, records, reason, 3)) == []
    empty_sealer, empty_reason = takeover_of([])
    assert empty_reason is None and empty_sealer.head(0) == ChainHead.genesis()


def test_a_sealer_never_continues_from_a_forged_tail() -> None:
    """It links to the last authentic record, in a new segment whose first record names the reason."""
    records = chain(0, 4)
    forged = [*records, unkeyed_forgery(records[3], audit_value(9))]
    sealer, reason = takeover_of(forged)
    assert reason == FORGED
    assert sealer.head(0) == head_of(records[3]), "not the forged record's claims"
    after = seal_next(sealer, forged, reason, 5)
    fields = chain_fields(after[5].headers)
    assert fields is not None and fields.break_reason == FORGED and fields.prev == head_of(records[3]).link
    report = run(after, [checkpoint_at(after[-1])])
    assert [(p.kind, p.offset) for p in report.problems] == [(FORGED, 4)]
    assert any("starts a new segment" in note for note in report.notes)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("replayed", REPLAYED), ("unsealed", UNSEALED), ("altered", ALTERED), ("legacy", LEGACY_HEAD)],
)
def test_a_sealer_breaks_on_every_tail_it_cannot_verify(name: str, expected: str) -> None:
    """A replay, a record around the sealer, a changed record vouched for by a checkpoint, or a legacy
    head: each starts a new segment, and the chain with it verifies but for the tail record itself."""
    records = chain(0, 4)
    checkpoints: list[Checkpoint] = []
    if name == "replayed":
        records.append(at_offset(records[1], 4))
    elif name == "unsealed":
        records.append(AuditRecord(0, 4, b"x", audit_value(4), ()))
    elif name == "altered":
        checkpoints = [checkpoint_at(records[3])]
        records[3] = AuditRecord(0, 3, records[3].key, audit_value(33), records[3].headers)
    else:
        records = legacy_chain(0, 4)
    sealer, reason = takeover_of(records, checkpoints)
    assert reason == expected
    after = seal_next(sealer, records, reason, 9)
    kinds = {kind for kind, _ in verify(after, checkpoints)}
    assert kinds == (set() if name == "legacy" else {expected})


def test_a_sealer_with_nothing_authentic_to_link_to_starts_past_every_known_position() -> None:
    """Only forged records (or a chain cut below its checkpoint): an unlinked segment that never reuses a
    position, so the verifier sees no replay and still reports the cut."""
    # A lone record at offset 0 claiming seq 8, linked as if after a seq 7 the partition never had.
    forged = [unkeyed_forgery(at_offset(chain(0, 7)[6], -1), b"x")]
    sealer, reason = takeover_of(forged)
    assert reason == FORGED and sealer.head(0) == ChainHead(8, GENESIS), "past every position claimed"
    assert verify(seal_next(sealer, forged, reason, 1)) == [(FORGED, 0)]

    records = chain(0, 6)
    checkpoint = checkpoint_at(records[5])
    cut = records[:3]
    sealer, reason = takeover_of(cut, [checkpoint])
    assert reason == TRUNCATED
    assert sealer.head(0) == ChainHead(6, GENESIS), "past the checkpoint's position"
    assert verify(seal_next(sealer, cut, reason, 6), [checkpoint]) == [(TRUNCATED, 3)]


def test_after_a_chain_key_rotation_the_sealer_starts_a_segment_that_both_keys_verify() -> None:
    """The sealer holds the new key only: the old records are unverifiable to it, so a new segment past
    their positions; a verifier given both keys finds nothing wrong, one given the new key only names
    the key the old records claim."""
    old = chain(0, 4, key=OTHER_KEY)
    sealer, reason = takeover_of(old)
    assert reason == FORGED and sealer.head(0) == ChainHead(4, GENESIS)
    after = seal_next(sealer, old, reason, 4)
    verifier = ChainVerifier([], None, [KEY, OTHER_KEY])
    for record in after:
        verifier.add(record)
    report = verifier.finish()
    assert report.intact, report.problems
    assert any("starts a new segment without linking" in note for note in report.notes)
    problems = run(after).problems
    assert [(p.kind, p.offset) for p in problems] == [(FORGED, n) for n in range(4)]
    assert OTHER_KEY.key_id in problems[0].detail


# -- keys -------------------------------------------------------------------------------------------


def test_chain_keys_load_from_hex_and_base64_and_errors_never_repeat_the_text() -> None:
    """64 hex digits or base64 of 32 bytes; a wrong one names where it came from, not what it holds."""
    raw = bytes(range(32))
    assert parse_chain_key(raw.hex(), where="f").key_id == KEY.key_id
    assert parse_chain_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", where="f").key_id == KEY.key_id
    assert KEY.key_id not in raw.hex() and len(KEY.key_id) == 16
    assert KEY.key_id in repr(KEY) and raw.hex() not in repr(KEY)
    for wrong in ("not-a-key-but-a-secret-looking-string", "00" * 16):
        with pytest.raises(ConfigError) as caught:
            parse_chain_key(wrong, where="HUB_AUDIT_CHAIN_KEY")
        assert wrong not in str(caught.value) and "HUB_AUDIT_CHAIN_KEY" in str(caught.value)


def test_a_loaded_chain_key_never_reaches_a_log_line() -> None:
    """Loading the key registers it with the log redaction, as the hub's other secrets."""
    text = bytes(range(7, 39)).hex()
    parse_chain_key(text, where="HUB_AUDIT_CHAIN_KEY")
    scrubbed = redact(None, "info", {"event": "x", "hint": f"the key is {text}"})
    assert text not in str(scrubbed) and REDACTED in str(scrubbed)


def test_a_hub_without_a_chain_key_refuses_to_seal_or_verify() -> None:
    """Deny by default: no key, no chain (the worker does not start)."""
    with pytest.raises(SecretUnavailable) as caught:
        chain_key_from_settings(Settings(audit_chain_key=None, audit_chain_key_file=None))
    assert "HUB_AUDIT_CHAIN_KEY" in (caught.value.hint or "")
    assert (
        chain_key_from_settings(Settings(audit_chain_key=SecretStr(bytes(range(32)).hex()))).key_id
        == KEY.key_id
    )


def test_hub_audit_verify_without_a_chain_key_verifies_nothing_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Exit 2 before reading anything: without the key a forged record would pass for a sealed one."""
    monkeypatch.delenv("HUB_AUDIT_CHAIN_KEY", raising=False)
    monkeypatch.delenv("HUB_AUDIT_CHAIN_KEY_FILE", raising=False)
    monkeypatch.setenv("HUB_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = CliRunner().invoke(audit_cli, ["verify", "--state", str(tmp_path / "state.json")])
    assert result.exit_code == 2
    assert "config.secret_missing" in result.output and "--chain-key" in result.output


def test_signing_keys_load_from_pem_and_hex_and_errors_never_repeat_the_text() -> None:
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
