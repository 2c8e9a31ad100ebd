"""The sealing stage's state, pure: one chain head per partition, when each is due a checkpoint, and
what a sealer taking a partition over must do with what it finds there.

The writer that drives it (:class:`hub.audit.stage.ChainWriter`) is the single writer of each chain:
it appends the deciding agents' AuditEvents and what the sealing agent reads from
``hub.audit-unsealed.v1`` partition *p* to ``hub.audit.v1`` partition *p*. A head is only trusted
while the partition stays assigned; after a (re)assignment the stage verifies the partition's
records from the last signed checkpoint (or from the start) with the same rules as
``hub audit verify`` (:mod:`hub.audit.verify`), and :func:`assess_takeover` says what to do:

- the last record is authentic and links: continue from it (a restart or a redelivery continues the
  chain instead of forking it);
- anything else at the tail (a forged, replayed, altered or unsealed record, a legacy unkeyed head, a
  chain shorter than its last checkpoint): never chain onto it. The next record sealed is a *segment
  break*: an AuditEvent (subtype ``audit-chain-break``) saying what was found, with the
  ``hub-audit-break`` header, linked to the last authentic record when there is one. Sealing goes on
  after it, so nothing audited waits for an operator; the stage logs ``audit.tail_unverifiable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hub.audit.chain import GENESIS, LEGACY_FORMAT, ChainHead, Checkpoint, Sealed, seal, unsigned_checkpoint
from hub.audit.chainkey import ChainKey
from hub.audit.signing import CheckpointSigner
from hub.audit.verify import TRUNCATED, Problem, Report

#: The break reason when the head is authentic but in the legacy, unkeyed format (an upgraded hub).
LEGACY_HEAD = "format.legacy"
#: The break reason when no record read is authentic and none says why (not expected: a fallback).
UNVERIFIABLE = "record.unverifiable"


@dataclass
class _Chain:
    head: ChainHead
    checkpointed_seq: int
    last_checkpoint_at: float


@dataclass(frozen=True)
class Takeover:
    """What a sealer found in a partition it takes over, and where it goes on from.

    ``head`` is what the next record is sealed after. With a ``break_reason`` that record must be a
    segment break, and ``head`` links it to the last authentic record (``continues_from_offset``)
    or, when there is none, to nothing (the genesis link) at a position past every one known.
    """

    partition: int
    head: ChainHead
    break_reason: str | None
    continues_from_offset: int | None
    read_from: int
    end: int
    #: Records after the last authentic one: what the sealer will not chain onto.
    unverifiable: tuple[Problem, ...] = ()
    #: Problems found before it (records written around a sealer that went on past them).
    earlier: tuple[Problem, ...] = ()


def assess_takeover(report: Report, partition: int, *, read_from: int, end: int) -> Takeover:
    """Decide, from a verification of ``[read_from, end)`` of one partition, how a sealer goes on."""
    part = report.partitions.get(partition)
    head = part.head if part is not None else None
    head_offset = part.head_offset if part is not None else None
    mine = [p for p in report.problems if p.partition == partition]
    tail = tuple(
        p
        for p in mine
        if p.offset is not None and p.kind != TRUNCATED and (head_offset is None or p.offset > head_offset)
    )
    earlier = tuple(p for p in mine if p not in tail)
    cut = any(p.kind == TRUNCATED for p in mine)
    if end <= read_from and head is None:
        return Takeover(partition, ChainHead.genesis(), None, None, read_from, end)
    clean_tail = head is not None and head_offset == end - 1 and not tail
    legacy = part is not None and part.head_format == LEGACY_FORMAT
    if clean_tail and not legacy and not cut and head is not None:
        return Takeover(partition, head, None, head_offset, read_from, end, (), earlier)
    if tail:
        reason = tail[0].kind
    elif cut:
        reason = TRUNCATED
    elif legacy:
        reason = LEGACY_HEAD
    else:
        reason = UNVERIFIABLE
    highest = part.highest_seq if part is not None else 0
    if head is not None and highest <= head.seq:
        # The break links to the last authentic record: a record removed before it still shows.
        return Takeover(partition, head, reason, head_offset, read_from, end, tail, earlier)
    # Nothing authentic to link to (forgeries only, or records under a chain key this sealer does not
    # hold: a rotated key), or a checkpoint past the head (a cut chain): a position past every one
    # any record claims, so that positions never repeat and a verifier holding every key sees no replay.
    claimed = part.claimed_seq if part is not None else 0
    unlinked = ChainHead(max(highest, claimed, head.seq if head is not None else 0), GENESIS)
    return Takeover(partition, unlinked, reason, None, read_from, end, tail, earlier)


class Sealer:
    """Chains records per partition and says when a signed checkpoint is due.

    ``now`` arguments are monotonic seconds (``time.monotonic()``): checkpoints follow elapsed time,
    not the wall clock an operator may change.
    """

    def __init__(
        self,
        signer: CheckpointSigner | None,
        chain_key: ChainKey,
        *,
        every_records: int,
        every_seconds: float,
    ) -> None:
        if every_records < 1 or every_seconds <= 0:
            raise ValueError("checkpoint intervals must be positive")
        self.signer = signer
        self.chain_key = chain_key
        self.every_records = every_records
        self.every_seconds = every_seconds
        self._chains: dict[int, _Chain] = {}

    def knows(self, partition: int) -> bool:
        """True when this partition's head is held (assigned and recovered)."""
        return partition in self._chains

    def start(self, partition: int, head: ChainHead, *, now: float) -> None:
        """Hold a recovered head; what was sealed before it counts as not yet checkpointed."""
        self._chains[partition] = _Chain(head, 0, now)

    def forget(self, partitions: set[int]) -> None:
        """Drop heads of partitions no longer assigned: another worker seals them now."""
        for partition in partitions:
            self._chains.pop(partition, None)

    def head(self, partition: int) -> ChainHead:
        """The held head of a partition."""
        return self._chains[partition].head

    def seal(
        self, partition: int, key: bytes | None, value: bytes, *, break_reason: str | None = None
    ) -> Sealed:
        """Seal the next record of a partition's chain (a segment break with ``break_reason``)."""
        chain = self._chains[partition]
        sealed = seal(chain.head, partition, key, value, self.chain_key, break_reason=break_reason)
        chain.head = sealed.head
        return sealed

    def checkpoint_due(self, partition: int, *, now: float) -> bool:
        """True when records wait for a checkpoint and there are enough of them, or they waited enough."""
        chain = self._chains.get(partition)
        if self.signer is None or chain is None:
            return False
        waiting = chain.head.seq - chain.checkpointed_seq
        if waiting <= 0 or chain.head.seq == 0:
            return False
        return waiting >= self.every_records or now - chain.last_checkpoint_at >= self.every_seconds

    def due(self, *, now: float) -> list[int]:
        """Every held partition due a checkpoint."""
        return [p for p in sorted(self._chains) if self.checkpoint_due(p, now=now)]

    def checkpoint(
        self, partition: int, head: ChainHead, *, at: datetime, now: float, offset: int | None = None
    ) -> Checkpoint:
        """The signed checkpoint of ``head`` (a head this sealer produced, at ``offset``); resets the
        partition's clock."""
        if self.signer is None:
            raise RuntimeError("no audit signing key: checkpoints are off")
        chain = self._chains.get(partition)
        if chain is not None:
            chain.checkpointed_seq = max(chain.checkpointed_seq, head.seq)
            chain.last_checkpoint_at = now
        return self.signer.sign(
            unsigned_checkpoint(partition, head, at=at, key_id=self.signer.key_id, offset=offset)
        )
