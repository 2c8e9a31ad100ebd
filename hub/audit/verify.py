"""Verifying the audit chains, pure: feed records in offset order, then read the report.

What it finds, per partition (each one chain):

- ``record.changed``: a record's key, value or chain headers no longer give its hash;
- ``record.removed``: a gap in the sequence numbers, or a record whose previous hash is not the hash
  of the record before it (one or more records taken out, or the order changed);
- ``record.unsealed``: a record without chain headers (written around the sealing stage);
- ``chain.truncated``: the chain ends before the position a signed checkpoint vouches for;
- ``checkpoint.mismatch``: the record at a checkpoint's position has another hash than the signed one;
- ``checkpoint.invalid``: a checkpoint whose Ed25519 signature does not verify (forged or changed).

A redelivered input sealed twice is two records with two positions: the chain stays valid, and the
duplicate AuditEvent id is the consumers' to de-duplicate (as for every hub topic).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hub.audit.chain import GENESIS, ChainFields, ChainHead, Checkpoint, chain_fields, record_hash
from hub.audit.signing import signature_valid

CHANGED = "record.changed"
REMOVED = "record.removed"
UNSEALED = "record.unsealed"
TRUNCATED = "chain.truncated"
CHECKPOINT_MISMATCH = "checkpoint.mismatch"
CHECKPOINT_INVALID = "checkpoint.invalid"


def _span(first: int, last: int) -> str:
    return f"seq {first} is" if first == last else f"seq {first} to {last} are"


@dataclass(frozen=True)
class AuditRecord:
    """One ``hub.audit.v1`` record as read back."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Problem:
    """Where a chain breaks and how."""

    kind: str
    partition: int
    offset: int | None
    detail: str

    def __str__(self) -> str:
        where = f"partition {self.partition}" + (f" offset {self.offset}" if self.offset is not None else "")
        return f"{self.kind} at {where}: {self.detail}"


@dataclass
class PartitionReport:
    """What was verified of one chain."""

    partition: int
    records: int = 0
    first_seq: int | None = None
    head: ChainHead | None = None
    head_offset: int | None = None
    #: The highest position a valid checkpoint vouches for and the chain matched.
    checkpointed_seq: int = 0


@dataclass
class Report:
    """The verdict: problems (empty when intact), per-partition figures, and notes."""

    partitions: dict[int, PartitionReport] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """True when no chain breaks anywhere."""
        return not self.problems


class ChainVerifier:
    """Streams records through the chain rules; ``start`` resumes chains verified before."""

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint],
        public_key: Ed25519PublicKey | None,
        *,
        start: Mapping[int, ChainHead] | None = None,
        log_start: Mapping[int, int] | None = None,
    ) -> None:
        self.report = Report()
        self._heads: dict[int, ChainHead] = dict(start or {})
        self._log_start = dict(log_start or {})
        #: Valid checkpoints by partition, then by position (the last one per position wins).
        self._checkpoints: dict[int, dict[int, Checkpoint]] = {}
        for checkpoint in checkpoints:
            if public_key is None or not signature_valid(checkpoint, public_key):
                self.report.problems.append(
                    Problem(
                        CHECKPOINT_INVALID,
                        checkpoint.partition,
                        None,
                        f"checkpoint of seq {checkpoint.seq} (key {checkpoint.key_id}) does not verify "
                        "with the audit public key",
                    )
                )
                continue
            self._checkpoints.setdefault(checkpoint.partition, {})[checkpoint.seq] = checkpoint

    def _partition(self, partition: int) -> PartitionReport:
        return self.report.partitions.setdefault(partition, PartitionReport(partition))

    def add(self, record: AuditRecord) -> None:
        """Check one record against the chain so far (records of a partition in offset order)."""
        part = self._partition(record.partition)
        fields = chain_fields(record.headers)
        if fields is None:
            self._problem(UNSEALED, record, "no valid hub-audit-* chain headers")
            return
        part.records += 1
        self._check_link(record, fields)
        if record_hash(record.partition, fields.seq, fields.prev, record.key, record.value) != fields.hash:
            self._problem(CHANGED, record, f"seq {fields.seq}: the record's content does not match its hash")
        checkpoint = self._checkpoints.get(record.partition, {}).get(fields.seq)
        if checkpoint is not None:
            if checkpoint.head != fields.hash:
                self._problem(
                    CHECKPOINT_MISMATCH,
                    record,
                    f"seq {fields.seq} differs from the checkpoint signed at {checkpoint.at}",
                )
            else:
                part.checkpointed_seq = max(part.checkpointed_seq, fields.seq)
        if part.first_seq is None:
            part.first_seq = fields.seq
        # Carry on from the record's own claims, so one fault is reported once, where it is.
        self._heads[record.partition] = ChainHead(fields.seq, fields.hash)
        part.head = self._heads[record.partition]
        part.head_offset = record.offset

    def _problem(self, kind: str, record: AuditRecord, detail: str) -> None:
        self.report.problems.append(Problem(kind, record.partition, record.offset, detail))

    def _check_link(self, record: AuditRecord, fields: ChainFields) -> None:
        """The record must follow the one before it: next position, previous hash."""
        head = self._heads.get(record.partition)
        if head is None:
            if fields.seq == 1 and fields.prev == GENESIS:
                return
            if 0 < self._log_start.get(record.partition, 0) == record.offset:
                # Retention deleted the start: the chain is checked from the first record kept.
                self.report.notes.append(
                    f"partition {record.partition}: read from seq {fields.seq} (earlier records are "
                    "no longer in the topic)"
                )
                return
            self._problem(
                REMOVED, record, f"the chain starts at seq {fields.seq}: {_span(1, fields.seq - 1)} missing"
            )
        elif fields.seq > head.seq + 1:
            self._problem(
                REMOVED, record, f"{_span(head.seq + 1, fields.seq - 1)} missing before seq {fields.seq}"
            )
        elif fields.seq != head.seq + 1 or fields.prev != head.hash:
            self._problem(
                REMOVED,
                record,
                f"seq {fields.seq} follows seq {head.seq} and does not link to it "
                "(a record was removed, replaced or reordered)",
            )

    def finish(self) -> Report:
        """The report, after the truncation checks against the last checkpoint of each chain."""
        for partition, by_seq in sorted(self._checkpoints.items()):
            last = max(by_seq.values(), key=lambda c: c.seq)
            head = self._heads.get(partition)
            part = self._partition(partition)
            if head is None or head.seq < last.seq:
                ends = "is empty" if head is None else f"ends at seq {head.seq} (offset {part.head_offset})"
                self.report.problems.append(
                    Problem(
                        TRUNCATED,
                        partition,
                        None,
                        f"the chain {ends}, but a checkpoint signed at {last.at} vouches for seq {last.seq}",
                    )
                )
        for partition, part in sorted(self.report.partitions.items()):
            if part.head is not None and part.head.seq > part.checkpointed_seq:
                self.report.notes.append(
                    f"partition {partition}: {part.head.seq - part.checkpointed_seq} record(s) after the "
                    "last checkpoint: their removal from the tail could not be detected yet"
                )
        return self.report
