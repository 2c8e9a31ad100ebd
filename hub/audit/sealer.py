"""The sealing stage's state, pure: one chain head per partition and when each is due a checkpoint.

The stage that drives it (:mod:`hub.audit.stage`) is the single writer of each chain: it reads
``hub.audit-unsealed.v1`` partition *p* with ``concurrency=1`` and writes ``hub.audit.v1`` partition
*p*. A head is only trusted while the partition stays assigned; after a (re)assignment it is read
back from the last sealed record of the output partition (:func:`hub.audit.stage.recover_head`), so
a restart or a redelivery continues the chain instead of forking it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hub.audit.chain import ChainHead, Checkpoint, Sealed, seal, unsigned_checkpoint
from hub.audit.signing import CheckpointSigner


@dataclass
class _Chain:
    head: ChainHead
    checkpointed_seq: int
    last_checkpoint_at: float


class Sealer:
    """Chains records per partition and says when a signed checkpoint is due.

    ``now`` arguments are monotonic seconds (``time.monotonic()``): checkpoints follow elapsed time,
    not the wall clock an operator may change.
    """

    def __init__(self, signer: CheckpointSigner | None, *, every_records: int, every_seconds: float) -> None:
        if every_records < 1 or every_seconds <= 0:
            raise ValueError("checkpoint intervals must be positive")
        self.signer = signer
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

    def seal(self, partition: int, key: bytes | None, value: bytes) -> Sealed:
        """Seal the next record of a partition's chain."""
        chain = self._chains[partition]
        sealed = seal(chain.head, partition, key, value)
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

    def checkpoint(self, partition: int, head: ChainHead, *, at: datetime, now: float) -> Checkpoint:
        """The signed checkpoint of ``head`` (a head this sealer produced); resets the partition's clock."""
        if self.signer is None:
            raise RuntimeError("no audit signing key: checkpoints are off")
        chain = self._chains.get(partition)
        if chain is not None:
            chain.checkpointed_seq = max(chain.checkpointed_seq, head.seq)
            chain.last_checkpoint_at = now
        return self.signer.sign(unsigned_checkpoint(partition, head, at=at, key_id=self.signer.key_id))
