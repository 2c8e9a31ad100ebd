"""Verifying the audit chains, pure: feed records in offset order, then read the report.

A record counts in its chain only when it is *authentic*: its MAC verifies under a chain key the
verifier holds (format 2), or, for a legacy format-1 record before the first keyed one, its SHA-256
is right. What it finds, per partition (each one chain), each at the offset where it is:

- ``record.altered``: a record sealed at this position whose key, value or chain headers were
  changed since: it does not verify, yet the next authentic record links to it or a signed
  checkpoint vouches for its link; also a record that is not the one an earlier run verified at
  that offset;
- ``record.forged``: a record that does not verify (wrong MAC, a chain key the verifier does not
  hold, or an unkeyed format-1 record after the keyed chain began) and that nothing authentic links
  to: written by someone without the chain key, however well its link is recomputed;
- ``record.replayed``: an authentic record at a position the chain had already passed: an earlier
  record written again (its original stays where it was);
- ``record.removed``: a gap in the positions, or an authentic record that does not link to the one
  before it (one or more records taken out, or reordered);
- ``record.unsealed``: a record without chain headers (written around the sealing stage);
- ``chain.truncated``: the chain ends before the position a signed checkpoint vouches for, or the
  partition ends before the offset an earlier run verified;
- ``checkpoint.mismatch``: the record at a checkpoint's position has another link than the signed one;
- ``checkpoint.invalid``: a checkpoint whose Ed25519 signature does not verify (forged or changed).

Records that do not verify never move the chain on: the records after them must link to the last
authentic one, so one forged record is one problem, and the sealer's segment breaks
(``hub-audit-break``) are notes, not problems (the records they skip are reported for themselves).
An incremental run (``resume``) starts from the head an earlier run verified and applies the same
rules to the same records as a run from the beginning, so both reach the same verdict on them; the
earlier run's position is a witness for both (``witness``).

A redelivered input sealed twice is two records with two positions: the chain stays valid, and the
duplicate AuditEvent id is the consumers' to de-duplicate (as for every hub topic).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hub.audit.chain import (
    AUTHENTIC,
    FORMAT,
    GENESIS,
    KEY_UNKNOWN,
    LEGACY_FORMAT,
    MAX_SEQ,
    ChainFields,
    ChainHead,
    Checkpoint,
    authentic,
    chain_fields,
)
from hub.audit.chainkey import ChainKey
from hub.audit.signing import signature_valid

ALTERED = "record.altered"
FORGED = "record.forged"
REPLAYED = "record.replayed"
REMOVED = "record.removed"
UNSEALED = "record.unsealed"
TRUNCATED = "chain.truncated"
CHECKPOINT_MISMATCH = "checkpoint.mismatch"
CHECKPOINT_INVALID = "checkpoint.invalid"
#: Positions claimed above this are not taken into account (a forged header could claim the last one
#: and leave a sealer nowhere to go on); a real chain never gets near it.
CLAIM_LIMIT = MAX_SEQ // 2
#: Every kind of problem, in the order the docs list them.
KINDS = (ALTERED, FORGED, REPLAYED, REMOVED, UNSEALED, TRUNCATED, CHECKPOINT_MISMATCH, CHECKPOINT_INVALID)


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


@dataclass(frozen=True)
class Verified:
    """A chain position an earlier run verified: where a resumed run goes on, and a witness."""

    offset: int
    head: ChainHead
    format: int = FORMAT
    checkpointed_seq: int = 0


@dataclass
class PartitionReport:
    """What was verified of one chain."""

    partition: int
    #: Records with chain headers read in this run.
    records: int = 0
    first_seq: int | None = None
    first_offset: int | None = None
    #: The last authentic record the chain reached, and where it is.
    head: ChainHead | None = None
    head_offset: int | None = None
    head_format: int | None = None
    #: The highest position a valid checkpoint vouches for and the chain matched.
    checkpointed_seq: int = 0
    #: The highest position an authentic record or a valid checkpoint holds (replays included).
    highest_seq: int = 0
    #: The highest position any record claims, authentic or not, up to :data:`CLAIM_LIMIT`.
    claimed_seq: int = 0
    legacy_records: int = 0
    breaks: int = 0
    #: The highest position of an altered record a checkpoint vouches for (reached, though not authentic).
    reached_seq: int = 0


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


@dataclass(frozen=True)
class _Suspect:
    """A record that does not verify, waiting to learn whether the chain runs through it."""

    record: AuditRecord
    fields: ChainFields
    why: str


class ChainVerifier:
    """Streams records through the chain rules.

    ``resume``: per partition, the position an earlier run verified; reading starts at that record,
    which is only checked to be unchanged. ``witness``: positions an earlier run verified, checked
    whether or not the run resumes from them. ``log_start``/``log_end``: each partition's first
    and next offsets as read (retention, a cut tail).
    """

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint],
        public_key: Ed25519PublicKey | None,
        chain_keys: Iterable[ChainKey],
        *,
        resume: Mapping[int, Verified] | None = None,
        witness: Mapping[int, Verified] | None = None,
        log_start: Mapping[int, int] | None = None,
        log_end: Mapping[int, int] | None = None,
    ) -> None:
        self.report = Report()
        self._keys = {key.key_id: key for key in chain_keys}
        self._resume = dict(resume or {})
        self._witness = dict(witness or {})
        self._log_start = dict(log_start or {})
        self._log_end = dict(log_end or {})
        self._pending: dict[int, list[_Suspect]] = {}
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
        for partition, verified in self._resume.items():
            part = self._partition(partition)
            part.head, part.head_offset, part.head_format = verified.head, verified.offset, verified.format
            part.checkpointed_seq = verified.checkpointed_seq
            part.highest_seq = verified.head.seq

    def _partition(self, partition: int) -> PartitionReport:
        return self.report.partitions.setdefault(partition, PartitionReport(partition))

    def _problem(self, kind: str, record: AuditRecord, detail: str) -> None:
        self.report.problems.append(Problem(kind, record.partition, record.offset, detail))

    def add(self, record: AuditRecord) -> None:
        """Check one record against the chain so far (records of a partition in offset order)."""
        part = self._partition(record.partition)
        witness = self._witness.get(record.partition)
        if witness is not None and record.offset == witness.offset:
            self._check_witness(record, witness)
            resumed = self._resume.get(record.partition)
            if resumed is not None and resumed.offset == record.offset:
                return  # verified by an earlier run: only checked to be the same record still
        fields = chain_fields(record.headers)
        if fields is None:
            self._problem(UNSEALED, record, "no valid hub-audit-* chain headers")
            return
        part.records += 1
        if fields.seq <= CLAIM_LIMIT:
            part.claimed_seq = max(part.claimed_seq, fields.seq)
        verdict = authentic(fields, record.partition, record.key, record.value, self._keys)
        if verdict == AUTHENTIC and fields.format == LEGACY_FORMAT and part.head_format == FORMAT:
            self._suspect(part, record, fields, "an unkeyed format-1 record after the keyed chain began")
        elif verdict == KEY_UNKNOWN:
            self._suspect(
                part,
                record,
                fields,
                f"it names chain key {fields.key_id}, which this verification does not hold",
            )
        elif verdict != AUTHENTIC:
            what = "hash" if fields.format == LEGACY_FORMAT else "MAC"
            self._suspect(part, record, fields, f"its {what} does not match its content")
        else:
            self._authentic(part, record, fields)

    def _check_witness(self, record: AuditRecord, witness: Verified) -> None:
        fields = chain_fields(record.headers)
        same = (
            fields is not None
            and fields.head == witness.head
            and authentic(fields, record.partition, record.key, record.value, self._keys) == AUTHENTIC
        )
        if not same:
            self._problem(
                ALTERED,
                record,
                f"not the record an earlier run verified at this offset (seq {witness.head.seq})",
            )

    def _suspect(self, part: PartitionReport, record: AuditRecord, fields: ChainFields, why: str) -> None:
        head = part.head
        if head is not None and fields.seq <= head.seq:
            # A position the chain already passed: nothing authentic can link to it any more.
            self._problem(
                FORGED,
                record,
                f"seq {fields.seq} does not verify ({why}) and claims a position the chain had "
                f"passed (seq {head.seq} at offset {part.head_offset})",
            )
            return
        self._pending.setdefault(record.partition, []).append(_Suspect(record, fields, why))

    def _settle(self, suspects: Iterable[_Suspect], *, linked_to: _Suspect | None = None) -> None:
        """What records that did not verify were, now that the chain went on past them (or ended)."""
        for suspect in suspects:
            seq = suspect.fields.seq
            vouched = self._checkpoints.get(suspect.record.partition, {}).get(seq)
            if suspect is linked_to:
                self._problem(
                    ALTERED,
                    suspect.record,
                    f"seq {seq} was sealed here (the next authentic record links to it), but {suspect.why}",
                )
            elif vouched is not None and vouched.head == suspect.fields.link:
                # The position was reached (the chain is not cut there), only its content changed.
                part = self._partition(suspect.record.partition)
                part.reached_seq = max(part.reached_seq, seq)
                self._problem(
                    ALTERED,
                    suspect.record,
                    f"seq {seq} was sealed here (a checkpoint signed at {vouched.at} vouches for its link), "
                    f"but {suspect.why}",
                )
            else:
                self._problem(
                    FORGED,
                    suspect.record,
                    f"seq {seq} does not verify ({suspect.why}), and nothing authentic links to it",
                )

    def _authentic(self, part: PartitionReport, record: AuditRecord, fields: ChainFields) -> None:
        """An authentic record: where it stands in the chain, then it becomes the head."""
        head = part.head
        part.highest_seq = max(part.highest_seq, fields.seq)
        suspects = self._pending.pop(record.partition, [])
        linked = head is not None and fields.seq == head.seq + 1 and fields.prev == head.link
        through = None if linked else next((s for s in suspects if s.fields.link == fields.prev), None)
        if not linked and head is not None and fields.seq <= head.seq:
            self._problem(
                REPLAYED,
                record,
                f"seq {fields.seq} is already in the chain (now at seq {head.seq}, offset "
                f"{part.head_offset}): an earlier record written again",
            )
            # Not a position of the chain: what waited before it still waits for the next record.
            if suspects:
                self._pending[record.partition] = suspects
            return
        self._settle(suspects, linked_to=through)
        if linked:
            pass
        elif through is not None:
            # The record before this one was sealed, then changed: the chain runs through it.
            position = fields.seq - 1
            after = 0 if head is None else head.seq
            if position > after + 1 and not (head is None and self._open(record.partition)):
                self._problem(
                    REMOVED, through.record, f"{_span(after + 1, position - 1)} missing before seq {position}"
                )
        elif fields.break_reason is not None:
            self._segment_start(record, fields, max(part.reached_seq, 0 if head is None else head.seq))
        elif head is None:
            self._chain_start(record, fields)
        elif fields.seq > head.seq + 1:
            self._problem(
                REMOVED, record, f"{_span(head.seq + 1, fields.seq - 1)} missing before seq {fields.seq}"
            )
        else:
            self._problem(
                REMOVED,
                record,
                f"seq {fields.seq} follows seq {head.seq} and does not link to it "
                "(a record was removed or replaced, or two sealers wrote this chain)",
            )
        self._accept(part, record, fields)

    def _segment_start(self, record: AuditRecord, fields: ChainFields, after: int) -> None:
        """A sealer's segment break that does not link to the chain before it (at seq ``after``)."""
        # Past positions a checkpoint vouches for: the chain before the new segment was cut.
        lost = [c for c in self._checkpoints.get(record.partition, {}).values() if after < c.seq < fields.seq]
        if lost:
            last = max(lost, key=lambda c: c.seq)
            self._problem(
                TRUNCATED,
                record,
                f"the chain before this new segment ends at seq {after}, but a checkpoint signed at "
                f"{last.at} vouches for seq {last.seq}",
            )
        self.report.notes.append(
            f"partition {record.partition} offset {record.offset}: seq {fields.seq} starts a new segment "
            f"without linking to the records before it ({fields.break_reason}); its AuditEvent "
            "says what the sealer found"
        )

    def _chain_start(self, record: AuditRecord, fields: ChainFields) -> None:
        """The first authentic record of a partition in this run."""
        if fields.seq == 1 and fields.prev == GENESIS:
            return
        if self._open(record.partition):
            # Retention deleted the start: the chain is checked from the first record kept.
            self.report.notes.append(
                f"partition {record.partition}: read from seq {fields.seq} (earlier records are "
                "no longer in the topic)"
            )
            return
        self._problem(
            REMOVED, record, f"the chain starts at seq {fields.seq}: {_span(1, fields.seq - 1)} missing"
        )

    def _open(self, partition: int) -> bool:
        """True when this run reads a partition from past its start (retention, or a sealer's anchor)."""
        return partition not in self._resume and self._log_start.get(partition, 0) > 0

    def _accept(self, part: PartitionReport, record: AuditRecord, fields: ChainFields) -> None:
        checkpoint = self._checkpoints.get(record.partition, {}).get(fields.seq)
        if checkpoint is not None:
            if checkpoint.head != fields.link:
                self._problem(
                    CHECKPOINT_MISMATCH,
                    record,
                    f"seq {fields.seq} differs from the checkpoint signed at {checkpoint.at}",
                )
            else:
                part.checkpointed_seq = max(part.checkpointed_seq, fields.seq)
        if part.first_seq is None:
            part.first_seq, part.first_offset = fields.seq, record.offset
        if fields.format == LEGACY_FORMAT:
            part.legacy_records += 1
        if fields.break_reason is not None:
            part.breaks += 1
            if part.head is not None and fields.prev == part.head.link:
                self.report.notes.append(
                    f"partition {record.partition} offset {record.offset}: seq {fields.seq} starts a new "
                    f"segment after records the sealer could not verify ({fields.break_reason}); its "
                    "AuditEvent says what it found"
                )
        part.head, part.head_offset, part.head_format = fields.head, record.offset, fields.format

    def finish(self) -> Report:
        """The report, after the records still unsettled and the truncation checks."""
        for suspects in self._pending.values():
            self._settle(suspects)
        self._pending.clear()
        truncated: set[int] = set()
        for partition, witness in sorted(self._witness.items()):
            end = self._log_end.get(partition)
            if end is not None and end <= witness.offset:
                truncated.add(partition)
                self.report.problems.append(
                    Problem(
                        TRUNCATED,
                        partition,
                        end,
                        f"the partition now ends at offset {end}, but an earlier run verified up to "
                        f"offset {witness.offset} (seq {witness.head.seq})",
                    )
                )
        for partition, by_seq in sorted(self._checkpoints.items()):
            last = max(by_seq.values(), key=lambda c: c.seq)
            part = self._partition(partition)
            part.highest_seq = max(part.highest_seq, last.seq)
            head = part.head
            reached = max(part.reached_seq, 0 if head is None else head.seq)
            if partition not in truncated and reached < last.seq:
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
            if part.legacy_records:
                self.report.notes.append(
                    f"partition {partition}: {part.legacy_records} record(s) in the unkeyed format 1 "
                    "(before the audit chain key): their links are checked, but anyone who could write "
                    "the topic then could have forged them"
                )
        # One problem per kind and place: a run from the start finds a changed witness record twice.
        unique: dict[object, Problem] = {}
        for problem in self.report.problems:
            place = (
                (problem.kind, problem.partition, problem.offset) if problem.offset is not None else problem
            )
            unique.setdefault(place, problem)
        self.report.problems = sorted(
            unique.values(), key=lambda p: (p.partition, p.offset is None, p.offset or 0)
        )
        return self.report
